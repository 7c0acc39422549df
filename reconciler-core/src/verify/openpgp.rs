//! OpenPGP signatures, checked against a keyring (armored public keys as `gpg --export --armor`
//! writes them, and revocation certificates as gpg keeps them in `openpgp-revocs.d`) the way
//! gpg checks them before `git verify-commit` accepts one: the issuing key or subkey may sign
//! (its newest self-signature's key flags), was created before the signature, is not revoked
//! (by a revocation in its block, or a certificate of its own anywhere in the keyring) and has
//! not expired; for a subkey, its primary key likewise; and the signature has not expired.
//! Like git, a key that has expired since vouches for nothing, not even what it signed while
//! valid: the time in a signature is the signer's word, and whoever holds an old key can claim
//! any time for it.
use std::{io::BufReader, path::Path};

use pgp::{
    armor::Dearmor,
    composed::{Deserializable as _, DetachedSignature, SignedPublicKey},
    packet::{Packet, PacketParser, Signature, SignatureType},
    types::{KeyDetails as _, Timestamp},
};

use super::{read_and_parse, show_time, Signed, Unverified, VerifyError};

/// Why a key may not vouch for a signature (after "it is signed by OpenPGP key F, ").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("which is revoked")]
    Revoked,
    #[error("whose primary key {0} is revoked")]
    PrimaryRevoked(String),
    #[error("which expired at {}", show_time(*.0))]
    Expired(i64),
    #[error("whose primary key {fingerprint} expired at {}", show_time(*at))]
    PrimaryExpired { fingerprint: String, at: i64 },
    #[error(
        "which was created at {}, after the signature's time {}",
        show_time(*created),
        show_time(*signed)
    )]
    CreatedAfter { created: i64, signed: i64 },
    #[error("which may not sign (its self-signature's key flags do not include signing)")]
    CannotSign,
    #[error("and the signature expired at {}", show_time(*.0))]
    SignatureExpired(i64),
}

/// OpenPGP public keys, parsed, and the revocation certificates given beside them.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyring {
    /// Where it was read from, for messages.
    pub file: String,
    keys: Vec<SignedPublicKey>,
    revocations: Vec<Signature>,
}

/// What a key's or subkey's self-signatures say of it, in Unix seconds.
struct Standing {
    created: i64,
    expires: Option<i64>,
    can_sign: bool,
    revoked: bool,
}

impl Keyring {
    /// Reads and parses the keyring at `path`.
    pub fn read(path: &Path) -> Result<Keyring, VerifyError> {
        read_and_parse(path, Keyring::parse)
    }

    /// Parses `text`, armored public keys (one block of several, or several blocks one after
    /// another) and revocation certificates; each key's self-signatures must verify.
    pub fn parse(file: &str, text: &str) -> Result<Keyring, VerifyError> {
        const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
        const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
        let mut keyring =
            Keyring { file: file.to_owned(), keys: Vec::new(), revocations: Vec::new() };
        // Each block from its first line to its last: text around blocks (gpg writes an
        // explanation before a revocation certificate) is no armor.
        for block in text.match_indices(BEGIN).map(|(start, _)| &text[start..]) {
            let end = block.find(END).map_or(block.len(), |e| e + END.len());
            keyring.add_block(&block.as_bytes()[..end])?;
        }
        if keyring.keys.is_empty() {
            return Err(VerifyError::NoPublicKey { file: file.to_owned() });
        }
        Ok(keyring)
    }

    /// Adds the keys of one armored block, or its signatures if it holds no key (a revocation
    /// certificate is a lone signature packet in a public key block).
    fn add_block(&mut self, block: &[u8]) -> Result<(), VerifyError> {
        let not_a_keyring = |e: pgp::errors::Error| VerifyError::NotAKeyring {
            file: self.file.clone(),
            error: e.into(),
        };
        let packets = PacketParser::new(BufReader::new(Dearmor::new(block)));
        let mut signatures = Vec::new();
        for packet in packets {
            match packet.map_err(not_a_keyring)? {
                Packet::Signature(signature) => signatures.push(signature),
                _ => {
                    signatures.clear();
                    break;
                }
            }
        }
        if !signatures.is_empty() {
            self.revocations.extend(signatures);
            return Ok(());
        }
        let (parsed, _) = SignedPublicKey::from_armor_many(block).map_err(not_a_keyring)?;
        for key in parsed {
            let key = key.map_err(|e| VerifyError::UnreadableKey {
                file: self.file.clone(),
                error: e.into(),
            })?;
            key.verify_bindings().map_err(|e| VerifyError::NotSelfSigned {
                file: self.file.clone(),
                fingerprint: format!("{:X}", key.fingerprint()),
                error: e.into(),
            })?;
            self.keys.push(key);
        }
        Ok(())
    }

    /// Checks `signed` at `now` (Unix seconds); on success, the primary key's fingerprint.
    pub(super) fn check(&self, signed: &Signed<'_>, now: i64) -> Result<String, Unverified> {
        let (signature, _) = DetachedSignature::from_string(signed.signature)
            .map_err(|e| Unverified::Malformed(e.to_string()))?;
        let signature = &signature.signature;
        // A standalone or timestamp signature signs no data (pgp hashes the first byte only):
        // one would vouch for every commit of its signer.
        if !matches!(signature.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
            let kind = signature.typ().map_or_else(|| "unknown".into(), |t| format!("{t:?}"));
            return Err(Unverified::Malformed(format!(
                "a signature of type {kind}, not one of data (binary or text)"
            )));
        }
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
            let fingerprint = format!("{:X}", key.fingerprint());
            if !self.names_signer(key, signed.email) {
                let (role, email) = (signed.role, signed.email.to_owned());
                return Err(Unverified::NotForSigner { fingerprint, role, email });
            }
            let invalid = |problem| Unverified::InvalidKey {
                fingerprint: subkey
                    .map_or(fingerprint.clone(), |s| format!("{:X}", s.key.fingerprint())),
                problem,
            };
            self.may_vouch(key, subkey, signature, now).map_err(invalid)?;
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
            .map(|f| format!("{f:X}"))
            .or_else(|| ids.first().map(ToString::to_string))
            .unwrap_or_else(|| "(none named)".into());
        Err(Unverified::NotInKeyring { fingerprint: issuer })
    }

    /// Whether one of `key`'s user IDs that is not revoked has `email` (exactly).
    fn names_signer(&self, key: &SignedPublicKey, email: &str) -> bool {
        key.details.users.iter().any(|user| {
            let revoked =
                user.signatures.iter().any(|s| s.typ() == Some(SignatureType::CertRevocation));
            !revoked && email_of(&String::from_utf8_lossy(user.id.id())) == email
        })
    }

    /// Whether `key` (or its `subkey`, if that issued it) may vouch for `signature` at `now`.
    fn may_vouch(
        &self,
        key: &SignedPublicKey,
        subkey: Option<&pgp::composed::SignedPublicSubKey>,
        signature: &Signature,
        now: i64,
    ) -> Result<(), KeyProblem> {
        let signed = signature.created().map_or(0, |t| i64::from(t.as_secs()));
        let primary = self.primary_standing(key);
        let primary_fingerprint = || format!("{:X}", key.fingerprint());
        let issuer = match subkey {
            Some(subkey) => {
                if primary.revoked {
                    return Err(KeyProblem::PrimaryRevoked(primary_fingerprint()));
                }
                if let Some(expired) = primary.expires.filter(|&at| at <= now.max(signed)) {
                    return Err(KeyProblem::PrimaryExpired {
                        fingerprint: primary_fingerprint(),
                        at: expired,
                    });
                }
                subkey_standing(subkey)
            }
            None => primary,
        };
        if issuer.revoked {
            return Err(KeyProblem::Revoked);
        }
        if let Some(expired) = issuer.expires.filter(|&at| at <= now.max(signed)) {
            return Err(KeyProblem::Expired(expired));
        }
        if issuer.created > signed {
            return Err(KeyProblem::CreatedAfter { created: issuer.created, signed });
        }
        if !issuer.can_sign {
            return Err(KeyProblem::CannotSign);
        }
        match signature.signature_expiration_time().map(|d| i64::from(d.as_secs())) {
            Some(lifetime) if lifetime > 0 && signed + lifetime <= now => {
                Err(KeyProblem::SignatureExpired(signed + lifetime))
            }
            _ => Ok(()),
        }
    }

    /// The primary key's standing: its newest self-signature (direct or on a user ID), and any
    /// revocation in its block or among the keyring's certificates that it made itself.
    fn primary_standing(&self, key: &SignedPublicKey) -> Standing {
        let details = &key.details;
        let certifications =
            details.users.iter().flat_map(|u| &u.signatures).filter(|s| s.is_certification());
        let newest = details.direct_signatures.iter().chain(certifications).max_by_key(created);
        let revoked = !details.revocation_signatures.is_empty()
            || self.revocations.iter().any(|r| {
                r.typ() == Some(SignatureType::KeyRevocation)
                    && r.verify_key(&key.primary_key).is_ok()
            });
        standing(key.primary_key.created_at(), newest, revoked)
    }
}

/// A subkey's standing: its newest binding signature, and any revocation (the keyring's
/// parse verified each of them).
fn subkey_standing(subkey: &pgp::composed::SignedPublicSubKey) -> Standing {
    let of_type = |typ| subkey.signatures.iter().filter(move |s| s.typ() == Some(typ));
    let newest = of_type(SignatureType::SubkeyBinding).max_by_key(created);
    let revoked = of_type(SignatureType::SubkeyRevocation).next().is_some();
    standing(subkey.key.created_at(), newest, revoked)
}

/// A key created at `created`, as its newest self-signature says (an expiration time of 0 is
/// none).
fn standing(created: Timestamp, newest: Option<&Signature>, revoked: bool) -> Standing {
    let created = i64::from(created.as_secs());
    let lifetime = newest.and_then(Signature::key_expiration_time).map(|d| d.as_secs());
    Standing {
        created,
        expires: lifetime.filter(|&l| l > 0).map(|l| created + i64::from(l)),
        can_sign: newest.is_some_and(|s| s.key_flags().sign()),
        revoked,
    }
}

/// A signature's creation time, for picking the newest.
fn created(signature: &&Signature) -> u32 {
    signature.created().map_or(0, Timestamp::as_secs)
}

/// The email of an OpenPGP user ID (`Name <email>`, or a bare email).
fn email_of(user_id: &str) -> &str {
    match (user_id.rfind('<'), user_id.rfind('>')) {
        (Some(open), Some(close)) if open < close => &user_id[open + 1..close],
        _ => user_id.trim(),
    }
}
