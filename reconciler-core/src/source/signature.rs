//! Whether a commit is signed as `source.verify` asks: its own signature (`mode: head`), or
//! an annotated tag's that points at it (`mode: tag`); the signatures are checked by `verify`.
use git2::{ErrorCode, Oid};

use super::{cache::Cache, error::SourceError};
use crate::{
    limits::{MAX_SIGNATURE_BYTES, MAX_SIGNED_OBJECT_BYTES},
    verify::{Mode, Signed, Unverified, Verify},
};

impl Cache {
    /// Whether `commit` (or, in tag mode, an annotated tag pointing at it) is signed as
    /// `verify` asks.
    pub(super) fn verify(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        match verify.mode {
            Mode::Head => self.verify_commit(commit, verify),
            Mode::Tag => self.verify_tags(commit, verify),
        }
    }

    /// The commit's own signature, by its committer.
    fn verify_commit(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        self.refuse_large(commit, "the commit object")?;
        let (signature, data) = match self.repo.extract_signature(&commit, None) {
            Ok(found) => found,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(refused(commit, Unverified::Unsigned));
            }
            Err(e) => return Err(self.cache_error()(e)),
        };
        let committer =
            self.repo.find_commit(commit).map_err(self.cache_error())?.committer().to_owned();
        signature_within_limit(commit, signature.len())?;
        let signed = Signed {
            signature: std::str::from_utf8(&signature).unwrap_or_default(),
            data: &data,
            email: committer.email().unwrap_or_default(),
            time: committer.when().seconds(),
        };
        verify.check(&signed).map(drop).map_err(|reason| refused(commit, reason))
    }

    /// The signatures of the annotated tags pointing at the commit, by their taggers: one
    /// good one is enough; else the first tag's reason counts.
    fn verify_tags(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let mut refusal = None;
        let tags = self.repo.references_glob("refs/tags/*").map_err(self.cache_error())?;
        for reference in tags.flatten() {
            // Lightweight tags carry no signature; they are not tag objects.
            let Ok(tag) = reference.peel_to_tag() else { continue };
            if tag.target_id() != commit {
                continue;
            }
            let (size, _) = odb.read_header(tag.id()).map_err(self.cache_error())?;
            if size > MAX_SIGNED_OBJECT_BYTES {
                let max = MAX_SIGNED_OBJECT_BYTES;
                refusal.get_or_insert(Unverified::TooLarge { what: "the tag object", size, max });
                continue;
            }
            let raw = odb.read(tag.id()).map_err(self.cache_error())?;
            let Some((data, signature)) = split_signature(raw.data()) else {
                refusal.get_or_insert(Unverified::Unsigned);
                continue;
            };
            if signature.len() > MAX_SIGNATURE_BYTES {
                let (size, max) = (signature.len(), MAX_SIGNATURE_BYTES);
                refusal.get_or_insert(Unverified::TooLarge { what: "its signature", size, max });
                continue;
            }
            let tagger = tag.tagger().map(|t| t.to_owned());
            let signed = Signed {
                signature,
                data,
                email: tagger.as_ref().and_then(|t| t.email().ok()).unwrap_or_default(),
                time: tagger.as_ref().map_or(0, |t| t.when().seconds()),
            };
            match verify.check(&signed) {
                Ok(_) => return Ok(()),
                Err(reason) => {
                    refusal.get_or_insert(reason);
                }
            }
        }
        Err(refused(commit, refusal.unwrap_or(Unverified::NoSignedTag)))
    }
}

impl Cache {
    /// Refuses `object` unread when its header says it is over [`MAX_SIGNED_OBJECT_BYTES`].
    fn refuse_large(&self, object: Oid, what: &'static str) -> Result<(), SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let (size, _) = odb.read_header(object).map_err(self.cache_error())?;
        if size > MAX_SIGNED_OBJECT_BYTES {
            let max = MAX_SIGNED_OBJECT_BYTES;
            return Err(refused(object, Unverified::TooLarge { what, size, max }));
        }
        Ok(())
    }
}

/// Refuses `commit` when its signature block is over [`MAX_SIGNATURE_BYTES`], unparsed.
fn signature_within_limit(commit: Oid, size: usize) -> Result<(), SourceError> {
    if size > MAX_SIGNATURE_BYTES {
        let max = MAX_SIGNATURE_BYTES;
        return Err(refused(commit, Unverified::TooLarge { what: "its signature", size, max }));
    }
    Ok(())
}

/// The error for `commit`, refused for `reason`.
fn refused(commit: Oid, reason: Unverified) -> SourceError {
    SourceError::Unverified { revision: commit.to_string(), reason }
}

/// A signed tag object's content, split into what is signed and the armored signature git
/// appends to the message.
fn split_signature(raw: &[u8]) -> Option<(&[u8], &str)> {
    let start = raw.windows(12).rposition(|w| w == b"\n-----BEGIN ")? + 1;
    Some((&raw[..start], std::str::from_utf8(&raw[start..]).ok()?))
}
