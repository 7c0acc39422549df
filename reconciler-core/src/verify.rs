//! Signed commits: which commits may steer the data plane. With `source.verify` (or
//! `--allowed-signers`/`--keyring`), a commit is applied only when it (`mode: head`), or an
//! annotated tag pointing at it (`mode: tag`), carries a good signature: SSH, by a key that an
//! allowed-signers file lists (git's `gpg.ssh.allowedSignersFile` format, see ssh-keygen(1))
//! for the signer's email, in the `git` namespace, at the time the signature claims; or
//! OpenPGP, by a key of a keyring one of whose user IDs is the signer's email. Unlike Flux,
//! principals and validity windows count: a key listed for alice@example.com does not vouch
//! for a commit whose committer is bob@example.com, and a key past its `valid-before` vouches
//! for nothing signed after it.
use std::path::{Path, PathBuf};

use pgp::{
    composed::{Deserializable as _, DetachedSignature, SignedPublicKey},
    types::KeyDetails as _,
};
use ssh_key::{public::KeyData, HashAlg, PublicKey, SshSig};

/// The namespace git signs commits and tags in.
const GIT_NAMESPACE: &str = "git";

/// What must be signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The commit itself.
    #[default]
    Head,
    /// An annotated tag pointing at the commit (any one of them).
    Tag,
}

impl std::str::FromStr for Mode {
    type Err = VerifyError;

    fn from_str(text: &str) -> Result<Mode, VerifyError> {
        match text {
            "head" => Ok(Mode::Head),
            "tag" => Ok(Mode::Tag),
            other => Err(VerifyError::UnknownMode(other.to_owned())),
        }
    }
}

/// Why the verification settings cannot be used: a mode that is none, or an allowed-signers
/// file or keyring that cannot be read.
// The causes are part of the message, not `#[source]`s: a chain would print them twice. pgp's
// errors are boxed: they are large, and every result of this module would carry their size.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("`{0}` is neither `head` nor `tag`")]
    UnknownMode(String),
    #[error("reading {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{file}: not an armored OpenPGP keyring: {error}")]
    NotAKeyring { file: String, error: Box<pgp::errors::Error> },
    #[error("{file}: a key cannot be read: {error}")]
    UnreadableKey { file: String, error: Box<pgp::errors::Error> },
    #[error("{file}: key {fingerprint} is not self-signed: {error}")]
    NotSelfSigned { file: String, fingerprint: String, error: Box<pgp::errors::Error> },
    #[error("{file}: holds no public key")]
    NoPublicKey { file: String },
    #[error("{file}:{line}: {problem}")]
    BadLine { file: String, line: usize, problem: LineProblem },
    #[error("{file}: lists no signer")]
    NoSigner { file: String },
}

/// What is wrong with one line of an allowed-signers file.
#[derive(Debug, thiserror::Error)]
pub enum LineProblem {
    #[error("expected principals, options, key type and key")]
    NoPrincipals,
    #[error("no key after the principals")]
    NoKey,
    #[error("expected a key type and a base64 key")]
    NoKeyTypeAndKey,
    #[error("the key cannot be read: {0}")]
    UnreadableKey(ssh_key::Error),
    #[error(
        "cert-authority (keys signed by a certificate authority) is not supported; list the \
         signers' keys"
    )]
    CertAuthority,
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("`{0}` is not a time as YYYYMMDD[HHMM[SS]][Z]")]
    BadTime(String),
    #[error("a double quote is not closed")]
    UnclosedQuote,
}

/// How commits are verified: the mode and who may sign (at least one of the two).
#[derive(Clone, Debug, PartialEq)]
pub struct Verify {
    pub mode: Mode,
    pub signers: Option<AllowedSigners>,
    pub keyring: Option<Keyring>,
}

impl Verify {
    /// Checks `signed` by the kind of its signature; on success, the key's fingerprint.
    pub fn check(&self, signed: &Signed<'_>) -> Result<String, Unverified> {
        let armor = signed.signature.trim_start();
        if armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
            self.signers
                .as_ref()
                .ok_or(Unverified::NoVerifier("SSH", "allowedSigners"))?
                .check(signed)
        } else if armor.starts_with("-----BEGIN PGP SIGNATURE-----") {
            self.keyring.as_ref().ok_or(Unverified::NoVerifier("OpenPGP", "keyring"))?.check(signed)
        } else {
            Err(Unverified::OtherKind)
        }
    }
}

/// OpenPGP public keys, parsed (an armored keyring, as `gpg --export --armor` writes it).
#[derive(Clone, Debug, PartialEq)]
pub struct Keyring {
    /// Where it was read from, for messages.
    pub file: String,
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Reads and parses the keyring at `path`.
    pub fn read(path: &Path) -> Result<Keyring, VerifyError> {
        read_and_parse(path, Keyring::parse)
    }

    /// Parses `text`, armored public keys (one block of several, or several blocks one
    /// after another); each key's self-signatures must verify.
    pub fn parse(file: &str, text: &str) -> Result<Keyring, VerifyError> {
        const BLOCK: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
        let mut keys = Vec::new();
        for block in text.match_indices(BLOCK).map(|(start, _)| &text[start..]) {
            let end = block[BLOCK.len()..].find(BLOCK).map_or(block.len(), |e| e + BLOCK.len());
            let (parsed, _) = SignedPublicKey::from_armor_many(&block.as_bytes()[..end])
                .map_err(|e| VerifyError::NotAKeyring { file: file.to_owned(), error: e.into() })?;
            for key in parsed {
                let key = key.map_err(|e| VerifyError::UnreadableKey {
                    file: file.to_owned(),
                    error: e.into(),
                })?;
                key.verify_bindings().map_err(|e| VerifyError::NotSelfSigned {
                    file: file.to_owned(),
                    fingerprint: key.fingerprint().to_string(),
                    error: e.into(),
                })?;
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(VerifyError::NoPublicKey { file: file.to_owned() });
        }
        Ok(Keyring { file: file.to_owned(), keys })
    }

    fn check(&self, signed: &Signed<'_>) -> Result<String, Unverified> {
        let (signature, _) = DetachedSignature::from_string(signed.signature)
            .map_err(|e| Unverified::Malformed(e.to_string()))?;
        let signature = &signature.signature;
        let fingerprints = signature.issuer_fingerprint();
        let ids = signature.issuer_key_id();
        let issued = |fingerprint: pgp::types::Fingerprint, id: pgp::types::KeyId| {
            fingerprints.contains(&&fingerprint) || ids.contains(&&id)
        };
        for key in &self.keys {
            let primary = issued(key.fingerprint(), key.legacy_key_id());
            let subkey = key
                .public_subkeys
                .iter()
                .find(|s| !primary && issued(s.key.fingerprint(), s.key.legacy_key_id()));
            if !primary && subkey.is_none() {
                continue;
            }
            let fingerprint = key.fingerprint().to_string();
            let author = key.details.users.iter().any(|user| {
                let id = String::from_utf8_lossy(user.id.id());
                email_of(&id).eq_ignore_ascii_case(signed.email)
            });
            if !author {
                return Err(Unverified::NotForAuthor {
                    fingerprint,
                    email: signed.email.to_owned(),
                });
            }
            let verified = match subkey {
                Some(subkey) => signature.verify(&subkey.key, signed.data),
                None => signature.verify(&key.primary_key, signed.data),
            };
            return verified
                .map(|()| fingerprint.clone())
                .map_err(|_| Unverified::BadSignature { fingerprint });
        }
        let issuer = fingerprints
            .first()
            .map(ToString::to_string)
            .or_else(|| ids.first().map(ToString::to_string))
            .unwrap_or_else(|| "(none named)".into());
        Err(Unverified::NotInKeyring { fingerprint: issuer })
    }
}

/// The email of an OpenPGP user ID (`Name <email>`, or a bare email).
fn email_of(user_id: &str) -> &str {
    match (user_id.rfind('<'), user_id.rfind('>')) {
        (Some(open), Some(close)) if open < close => &user_id[open + 1..close],
        _ => user_id.trim(),
    }
}

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

/// A signature being checked: the armored text, the bytes it signs, and who and when the
/// signed object says made it (a commit's committer, a tag's tagger).
pub struct Signed<'a> {
    pub signature: &'a str,
    pub data: &'a [u8],
    pub email: &'a str,
    pub time: i64,
}

/// Why a commit was not accepted. Shown in `/status` and errors, counted as `unverified`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("it is not signed")]
    Unsigned,
    #[error("{what} is {size} bytes; at most {max} are checked (a signature is a few KiB)")]
    TooLarge { what: &'static str, size: usize, max: usize },
    #[error("no annotated tag points at it")]
    NoSignedTag,
    #[error("its signature is neither SSH nor OpenPGP (X.509 is not accepted)")]
    OtherKind,
    #[error("it has an {0} signature, and no {1} is given to check it")]
    NoVerifier(&'static str, &'static str),
    #[error("it is signed by OpenPGP key {fingerprint}, which the keyring does not hold")]
    NotInKeyring { fingerprint: String },
    #[error(
        "it is signed by OpenPGP key {fingerprint}, none of whose user IDs is its author {email}"
    )]
    NotForAuthor { fingerprint: String, email: String },
    #[error("its signature cannot be read: {0}")]
    Malformed(String),
    #[error("it is signed for namespace `{0}`, not `{GIT_NAMESPACE}`")]
    WrongNamespace(String),
    #[error("it is signed by key {fingerprint}, which the allowed signers do not list")]
    UnknownKey { fingerprint: String },
    #[error(
        "it is signed by key {fingerprint}, which the allowed signers list (line {line}) for \
         other principals than its author {email}"
    )]
    OtherPrincipal { fingerprint: String, email: String, line: usize },
    #[error(
        "it is signed by key {fingerprint}, which the allowed signers (line {line}) do not allow \
         in namespace `{GIT_NAMESPACE}`"
    )]
    NotForGit { fingerprint: String, line: usize },
    #[error(
        "it is signed by key {fingerprint} at {}, outside the key's validity (line {line})",
        show_time(*time)
    )]
    OutsideValidity { fingerprint: String, time: i64, line: usize },
    #[error("its signature by key {fingerprint} does not match its content")]
    BadSignature { fingerprint: String },
}

/// Unix seconds as an RFC 3339 time (the number itself if out of range).
fn show_time(time: i64) -> String {
    jiff::Timestamp::from_second(time).map_or_else(|_| time.to_string(), |t| t.to_string())
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
    fn check(&self, signed: &Signed<'_>) -> Result<String, Unverified> {
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

/// The file at `path` (at most `MAX_FILE_BYTES`), parsed by `parse` (given its name).
fn read_and_parse<T>(
    path: &Path,
    parse: fn(&str, &str) -> Result<T, VerifyError>,
) -> Result<T, VerifyError> {
    let text = crate::limits::read_to_string(path, crate::limits::MAX_FILE_BYTES as u64)
        .map_err(|error| VerifyError::Read { path: path.to_owned(), error })?;
    parse(&path.display().to_string(), &text)
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
