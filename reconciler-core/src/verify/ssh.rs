//! SSH signatures, checked against an allowed-signers file (git's
//! `gpg.ssh.allowedSignersFile` format, see ssh-keygen(1)): a key listed for the signer's email,
//! in the `git` namespace, at the time the signed object claims (as git passes it to
//! `ssh-keygen -Overify-time`): a key past its `valid-before` vouches for nothing signed after it.
use ssh_key::{public::KeyData, HashAlg, PublicKey, SshSig};

use super::{read_and_parse, LineProblem, Signed, Unverified, VerifyError, GIT_NAMESPACE};
use std::path::Path;

/// An allowed-signers file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedSigners {
    /// Where it was read from, for messages.
    pub file: String,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    line: usize,
    /// The principals pattern-list (emails, `*` and `?` wildcards, `!` negations).
    principals: String,
    /// The `namespaces=` pattern-list; any namespace without one.
    namespaces: Option<String>,
    /// `valid-after=` and `valid-before=`, in Unix seconds.
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: KeyData,
}

impl AllowedSigners {
    /// Reads and parses the allowed-signers file at `path`.
    pub fn read(path: &Path) -> Result<AllowedSigners, VerifyError> {
        read_and_parse(path, AllowedSigners::parse)
    }

    /// Parses `text`, an allowed-signers file; an error names `file` and the line.
    pub fn parse(file: &str, text: &str) -> Result<AllowedSigners, VerifyError> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let entry = parse_entry(number, line).map_err(|problem| VerifyError::BadLine {
                file: file.to_owned(),
                line: number,
                problem,
            })?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(VerifyError::NoSigner { file: file.to_owned() });
        }
        Ok(AllowedSigners { file: file.to_owned(), entries })
    }

    /// Checks `signed`; on success, the key's fingerprint.
    pub(super) fn check(&self, signed: &Signed<'_>) -> Result<String, Unverified> {
        let signature =
            SshSig::from_pem(signed.signature).map_err(|e| Unverified::Malformed(e.to_string()))?;
        if signature.namespace() != GIT_NAMESPACE {
            return Err(Unverified::WrongNamespace(signature.namespace().to_owned()));
        }
        let key = PublicKey::from(signature.public_key().clone());
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let listed: Vec<&Entry> =
            self.entries.iter().filter(|e| &e.key == signature.public_key()).collect();
        // A key may be listed on several lines; the first that allows this signer decides.
        let mut refusal = None;
        for entry in &listed {
            let why = if !patterns_match(&entry.principals, signed.email) {
                Unverified::OtherPrincipal {
                    fingerprint: fingerprint.clone(),
                    role: signed.role,
                    email: signed.email.to_owned(),
                    line: entry.line,
                }
            } else if !entry.namespaces.as_deref().is_none_or(|n| patterns_match(n, GIT_NAMESPACE))
            {
                Unverified::NotForGit { fingerprint: fingerprint.clone(), line: entry.line }
            } else if entry.valid_after.is_some_and(|after| signed.time < after)
                || entry.valid_before.is_some_and(|before| signed.time > before)
            {
                Unverified::OutsideValidity {
                    fingerprint: fingerprint.clone(),
                    time: signed.time,
                    line: entry.line,
                }
            } else {
                return key
                    .verify(GIT_NAMESPACE, signed.data, &signature)
                    .map(|()| fingerprint.clone())
                    .map_err(|_| Unverified::BadSignature { fingerprint: fingerprint.clone() });
            };
            refusal.get_or_insert(why);
        }
        Err(refusal.unwrap_or(Unverified::UnknownKey { fingerprint }))
    }
}

fn parse_entry(line: usize, text: &str) -> Result<Entry, LineProblem> {
    let fields = split_fields(text)?;
    let [principals, rest @ ..] = fields.as_slice() else {
        return Err(LineProblem::NoPrincipals);
    };
    let (options, key) = match rest {
        [first, ..] if is_key_type(first) => (None, rest),
        [options, key @ ..] => (Some(options.as_str()), key),
        [] => return Err(LineProblem::NoKey),
    };
    let [key_type, base64, ..] = key else {
        return Err(LineProblem::NoKeyTypeAndKey);
    };
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}"))
        .map_err(LineProblem::UnreadableKey)?;
    let mut entry = Entry {
        line,
        principals: principals.clone(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: key.key_data().clone(),
    };
    for option in options.map(split_options).transpose()?.into_iter().flatten() {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name.to_ascii_lowercase(), Some(value.trim_matches('"'))),
            None => (option.to_ascii_lowercase(), None),
        };
        match (name.as_str(), value) {
            ("namespaces", Some(value)) => entry.namespaces = Some(value.to_owned()),
            ("valid-after", Some(value)) => entry.valid_after = Some(parse_time(value)?),
            ("valid-before", Some(value)) => entry.valid_before = Some(parse_time(value)?),
            ("cert-authority", None) => return Err(LineProblem::CertAuthority),
            _ => return Err(LineProblem::UnknownOption(option)),
        }
    }
    Ok(entry)
}

fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-") || field.starts_with("ecdsa-") || field.starts_with("sk-")
}

/// Space-separated fields, where spaces inside double quotes do not separate.
fn split_fields(text: &str) -> Result<Vec<String>, LineProblem> {
    let mut fields: Vec<String> = split_outside_quotes(text, char::is_whitespace)?
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect();
    // A quoted principals field is its content.
    if let Some(first) = fields.first_mut() {
        *first = first.trim_matches('"').to_owned();
    }
    Ok(fields)
}

/// Comma-separated options, where commas inside double quotes do not separate.
fn split_options(text: &str) -> Result<Vec<String>, LineProblem> {
    split_outside_quotes(text, |c| c == ',')
}

/// `text` split at the characters `separates` says, except inside double quotes (kept).
fn split_outside_quotes(
    text: &str,
    separates: impl Fn(char) -> bool,
) -> Result<Vec<String>, LineProblem> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        match parts.last_mut() {
            Some(_) if separates(c) && !quoted => parts.push(String::new()),
            Some(part) => part.push(c),
            None => {}
        }
    }
    if quoted {
        return Err(LineProblem::UnclosedQuote);
    }
    Ok(parts)
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`: UTC with `Z`, else the system's time zone (as
/// ssh-keygen reads it).
fn parse_time(text: &str) -> Result<i64, LineProblem> {
    let bad = || LineProblem::BadTime(text.to_owned());
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    // Digits only, so every slice parses; a missing one (no time, no seconds) is 0.
    let number = |range: std::ops::Range<usize>| -> i8 {
        digits.get(range).and_then(|d| d.parse().ok()).unwrap_or(0)
    };
    let year: i16 = digits[..4].parse().map_err(|_| bad())?;
    let civil = jiff::civil::DateTime::new(
        year,
        number(4..6),
        number(6..8),
        number(8..10),
        number(10..12),
        number(12..14),
        0,
    )
    .map_err(|_| bad())?;
    let zone = if utc { jiff::tz::TimeZone::UTC } else { jiff::tz::TimeZone::system() };
    let zoned = civil.to_zoned(zone).map_err(|_| bad())?;
    Ok(zoned.timestamp().as_second())
}

/// Whether `value` matches the pattern-list `list` (ssh_config(5) PATTERNS): some pattern
/// matches, and no negated (`!`) one does.
fn patterns_match(list: &str, value: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',').map(str::trim) {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard_match(negated, value) => return false,
            Some(_) => {}
            None => matched |= wildcard_match(pattern, value),
        }
    }
    matched
}

/// `*` (any run) and `?` (any one character) wildcards, case-sensitive.
fn wildcard_match(pattern: &str, value: &str) -> bool {
    let (pattern, value): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), value.chars().collect());
    // Backtracking over the last `*` only: linear in practice, never exponential.
    let (mut p, mut v, mut star, mut mark) = (0, 0, None, 0);
    while v < value.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == value[v]) {
            p += 1;
            v += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = v;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            v = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHtVL3aGbtKb5fzRqqYhUqnIu4wYUbYUo/c6pH2oVD+G";

    #[test]
    fn lines_with_options_quotes_and_comments_parse() {
        let text = format!(
            "# who may sign\n\n\"alice@example.com,bob@example.com\" {KEY} laptop\n\
             *@example.org namespaces=\"git,file\",valid-after=20260101,valid-before=\"20270101Z\" {KEY}\n"
        );
        let signers = AllowedSigners::parse("signers", &text).unwrap();
        assert_eq!(signers.entries.len(), 2);
        assert_eq!(signers.entries[0].principals, "alice@example.com,bob@example.com");
        assert_eq!(signers.entries[1].namespaces.as_deref(), Some("git,file"));
        assert_eq!(signers.entries[1].valid_before, Some(1_798_761_600));
        assert_eq!(signers.entries[1].line, 4);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let err = |text: &str| AllowedSigners::parse("signers", text).unwrap_err().to_string();
        assert_eq!(err(""), "signers: lists no signer");
        assert!(err(&format!("a@b cert-authority {KEY}")).starts_with("signers:1: cert-authority"));
        assert!(
            err(&format!("\na@b valid-before=tomorrow {KEY}")).starts_with("signers:2: `tomorrow`")
        );
        assert!(err("a@b ssh-ed25519 not-base64").starts_with("signers:1: the key cannot be read"));
        assert!(err(&format!("a@b verify-required {KEY}")).contains("unknown option"));
    }

    #[test]
    fn pattern_lists_match_as_ssh_does() {
        assert!(patterns_match("alice@example.com", "alice@example.com"));
        assert!(!patterns_match("alice@example.com", "bob@example.com"));
        assert!(patterns_match("*@example.com,!mallory@example.com", "bob@example.com"));
        assert!(!patterns_match("*@example.com,!mallory@example.com", "mallory@example.com"));
        assert!(patterns_match("git,file", "git"));
        assert!(!patterns_match("file", "git"));
        assert!(patterns_match("a?c*", "abcdef"));
        assert!(!patterns_match("*.example.com", "example.com"));
    }
}
