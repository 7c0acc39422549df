//! Signed commits: which commits may steer the data plane. With `source.verify` (or
//! `--allowed-signers`/`--keyring`), a commit is applied only when it (`mode: head`), or an
//! annotated tag pointing at it (`mode: tag`), carries a good signature: SSH, by a key that an
//! allowed-signers file lists (`ssh`), or OpenPGP, by a valid signing key of a keyring
//! (`openpgp`). Unlike Flux, and stricter than git (which names the signer and leaves the rest
//! to the reader), the signer must be the committer (a tag's: the tagger): a key listed for
//! alice@example.com does not vouch for a commit whose committer is bob@example.com. Emails are compared exactly
//! (case-sensitively) for both kinds, as ssh-keygen compares principals: a key for
//! Alice@example.com does not vouch for alice@example.com.
mod openpgp;
mod ssh;

use std::path::{Path, PathBuf};

pub use openpgp::{KeyProblem, Keyring};
pub use ssh::AllowedSigners;

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
            let keyring =
                self.keyring.as_ref().ok_or(Unverified::NoVerifier("OpenPGP", "keyring"))?;
            keyring.check(signed, jiff::Timestamp::now().as_second())
        } else {
            Err(Unverified::OtherKind)
        }
    }
}

/// A signature being checked: the armored text, the bytes it signs, and who and when the
/// signed object says made it (a commit's committer, a tag's tagger).
pub struct Signed<'a> {
    pub signature: &'a str,
    pub data: &'a [u8],
    pub email: &'a str,
    /// Whose `email` it is, for messages: `committer` or `tagger`.
    pub role: &'static str,
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
        "it is signed by OpenPGP key {fingerprint}, none of whose user IDs is its {role} {email}"
    )]
    NotForSigner { fingerprint: String, role: &'static str, email: String },
    #[error("it is signed by OpenPGP key {fingerprint}, {problem}")]
    InvalidKey { fingerprint: String, problem: KeyProblem },
    #[error("its signature cannot be read: {0}")]
    Malformed(String),
    #[error("it is signed for namespace `{0}`, not `{GIT_NAMESPACE}`")]
    WrongNamespace(String),
    #[error("it is signed by key {fingerprint}, which the allowed signers do not list")]
    UnknownKey { fingerprint: String },
    #[error(
        "it is signed by key {fingerprint}, which the allowed signers list (line {line}) for \
         other principals than its {role} {email}"
    )]
    OtherPrincipal { fingerprint: String, role: &'static str, email: String, line: usize },
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

/// The file at `path` (at most `MAX_FILE_BYTES`), parsed by `parse` (given its name).
fn read_and_parse<T>(
    path: &Path,
    parse: fn(&str, &str) -> Result<T, VerifyError>,
) -> Result<T, VerifyError> {
    let text = crate::limits::read_to_string(path, crate::limits::MAX_FILE_BYTES as u64)
        .map_err(|error| VerifyError::Read { path: path.to_owned(), error })?;
    parse(&path.display().to_string(), &text)
}
