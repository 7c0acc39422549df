//! Who may ask for a run. With `webhook.secretFile` set, `POST /reconcile` must carry
//! GitHub's `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the body, keyed by the
//! secret) or GitLab's `X-Gitlab-Token: <secret>`; anything else is refused (401) and
//! triggers nothing. Both are compared in constant time.
use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The header GitHub signs a delivery's body in.
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// The header GitLab sends the webhook's secret token in.
pub const GITLAB_TOKEN: &str = "x-gitlab-token";

/// Why `webhook.secretFile` gives no secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {}: {error}", path.display())]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

/// A webhook secret, read from its file. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The secret in `path`, without the line end an editor leaves.
    pub fn read(path: &Path) -> Result<Secret, SecretError> {
        let text =
            reconciler_core::limits::read(path, reconciler_core::limits::MAX_FILE_BYTES as u64)
                .map_err(|error| SecretError::Unreadable { path: path.to_owned(), error })?;
        let secret = text.trim_ascii_end();
        if secret.is_empty() {
            return Err(SecretError::Empty { path: path.to_owned() });
        }
        Ok(Secret(secret.to_vec()))
    }

    /// GitHub's `X-Hub-Signature-256` value for `body`: what a client signs a request with.
    /// (`None` never happens: HMAC takes a key of any length.)
    pub fn sign(&self, body: &[u8]) -> Option<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(body);
        Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
    }

    /// What checks a delivery whose headers are `headers`: its body is fed to it as it
    /// arrives, so a large one is never held whole.
    pub fn check(&self, headers: &HeaderMap) -> Result<Check, Refused> {
        if let Some(value) = headers.get(GITHUB_SIGNATURE) {
            let signature = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("sha256="))
                .and_then(|hex| hex::decode(hex).ok())
                .ok_or(Refused::MalformedSignature)?;
            let mac = Hmac::<Sha256>::new_from_slice(&self.0).map_err(|_| Refused::BadSignature)?;
            return Ok(Check::GitHub { mac: Box::new(mac), signature });
        }
        if let Some(token) = headers.get(GITLAB_TOKEN) {
            // Equal-length digests, so that the comparison takes the same time whatever the
            // token's length.
            let given = Sha256::digest(token.as_bytes());
            let expected = Sha256::digest(&self.0);
            return if bool::from(given.ct_eq(&expected)) {
                Ok(Check::Passed)
            } else {
                Err(Refused::BadToken)
            };
        }
        Err(Refused::Missing)
    }
}

/// A delivery being checked.
pub enum Check {
    /// Its body still to be signed.
    GitHub { mac: Box<Hmac<Sha256>>, signature: Vec<u8> },
    /// Nothing left to check (the body is read and dropped).
    Passed,
}

impl Check {
    pub fn update(&mut self, chunk: &[u8]) {
        if let Check::GitHub { mac, .. } = self {
            mac.update(chunk);
        }
    }

    pub fn finish(self) -> Result<(), Refused> {
        match self {
            Check::GitHub { mac, signature } => {
                mac.verify_slice(&signature).map_err(|_| Refused::BadSignature)
            }
            Check::Passed => Ok(()),
        }
    }
}

/// Why a delivery was refused: said in the 401's body and the metric's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Missing,
    MalformedSignature,
    BadSignature,
    BadToken,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Missing => {
                "unauthorized: webhook.secretFile is set; send X-Hub-Signature-256 (GitHub) or \
                 X-Gitlab-Token (GitLab)\n"
            }
            Refused::MalformedSignature => {
                "unauthorized: X-Hub-Signature-256 is not sha256=<hex digest>\n"
            }
            Refused::BadSignature => "unauthorized: X-Hub-Signature-256 does not match the body\n",
            Refused::BadToken => "unauthorized: X-Gitlab-Token is not the secret\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret(b"It's a Secret to Everybody".to_vec())
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    fn checked(headers: &HeaderMap, body: &[u8]) -> Result<(), Refused> {
        let mut check = secret().check(headers)?;
        for chunk in body.chunks(3) {
            check.update(chunk);
        }
        check.finish()
    }

    #[test]
    fn githubs_documented_example_signature_passes() {
        // From GitHub's "Validating webhook deliveries".
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let body = b"Hello, World!";
        assert_eq!(checked(&headers(GITHUB_SIGNATURE, signature), body), Ok(()));
        assert_eq!(
            checked(&headers(GITHUB_SIGNATURE, signature), b"Hello, World?"),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            checked(&headers(GITHUB_SIGNATURE, "sha1=757107"), body),
            Err(Refused::MalformedSignature)
        );
    }

    #[test]
    fn gitlab_tokens_and_missing_headers() {
        let token = "It's a Secret to Everybody";
        assert_eq!(checked(&headers(GITLAB_TOKEN, token), b"{}"), Ok(()));
        assert_eq!(checked(&headers(GITLAB_TOKEN, "It's a Secret"), b"{}"), Err(Refused::BadToken));
        assert_eq!(checked(&HeaderMap::new(), b"{}"), Err(Refused::Missing));
    }
}
