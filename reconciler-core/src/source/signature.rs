//! Whether a commit is signed as `source.verify` asks: its own signature (`mode: head`), or
//! an annotated tag's that points at it (`mode: tag`); the signatures are checked by `verify`.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, PoisonError,
};

use git2::{ErrorCode, Oid};

use super::{cache::Cache, error::SourceError};
use crate::{
    limits::{MAX_SIGNATURE_BYTES, MAX_SIGNED_OBJECT_BYTES},
    verify::{Mode, Signed, Unverified, Verify},
};

/// The last refusal: a fetch that finds the same commit (in tag mode, with the same tags)
/// under the same settings refuses it again unchecked, until another commit arrives. A check
/// reads objects up to [`MAX_SIGNED_OBJECT_BYTES`] and parses signatures, and the daemon
/// fetches at every interval. One per process: a daemon follows one source.
static LAST_REFUSAL: Mutex<Option<Refusal>> = Mutex::new(None);

/// Commits (or, in tag mode, commits' tags) this process has checked, refusals it remembered
/// not counted.
static CHECKS: AtomicU64 = AtomicU64::new(0);

struct Refusal {
    commit: Oid,
    tags: Vec<Oid>,
    verify: Verify,
    reason: Unverified,
}

/// How many commits this process has checked the signatures of (a refusal remembered from an
/// earlier fetch is not checked again, and not counted).
pub fn signature_checks() -> u64 {
    CHECKS.load(Ordering::Relaxed)
}

impl Cache {
    /// Whether `commit` (or, in tag mode, an annotated tag pointing at it) is signed as
    /// `verify` asks; a commit refused at an earlier fetch is refused again unchecked.
    pub(super) fn verify(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        let tags = match verify.mode {
            Mode::Head => Vec::new(),
            Mode::Tag => self.tags_pointing_at(commit)?,
        };
        let mut last = LAST_REFUSAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = last.as_ref() {
            if known.commit == commit && known.tags == tags && known.verify == *verify {
                return Err(refused(commit, known.reason.clone()));
            }
        }
        CHECKS.fetch_add(1, Ordering::Relaxed);
        let checked = match verify.mode {
            Mode::Head => self.verify_commit(commit, verify),
            Mode::Tag => self.verify_tags(commit, &tags, verify),
        };
        if let Err(SourceError::Unverified { reason, .. }) = &checked {
            let reason = reason.clone();
            *last = Some(Refusal { commit, tags, verify: verify.clone(), reason });
        }
        checked
    }

    /// The annotated tags pointing at `commit`, by id. Lightweight tags are no tag objects
    /// and carry no signature; a tag object over [`MAX_SIGNED_OBJECT_BYTES`] (its size from
    /// its header) is left unread, as it could vouch for nothing.
    fn tags_pointing_at(&self, commit: Oid) -> Result<Vec<Oid>, SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let references = self.repo.references_glob("refs/tags/*").map_err(self.cache_error())?;
        let mut tags = Vec::new();
        for id in references.flatten().filter_map(|reference| reference.target()) {
            let (size, kind) = odb.read_header(id).map_err(self.cache_error())?;
            if kind != git2::ObjectType::Tag || size > MAX_SIGNED_OBJECT_BYTES {
                continue;
            }
            // A tag that does not parse vouches for nothing; it is the repository's, not the
            // cache's, fault.
            if self.repo.find_tag(id).is_ok_and(|tag| tag.target_id() == commit) {
                tags.push(id);
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// The commit's own signature, by its committer.
    fn verify_commit(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        // The commit object's size was checked when it was resolved (`Cache::peel`).
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
            role: "committer",
            time: committer.when().seconds(),
        };
        verify.check(&signed).map(drop).map_err(|reason| refused(commit, reason))
    }

    /// The signatures of `tags` (those pointing at the commit), by their taggers: one good
    /// one is enough; else the first tag's reason counts.
    fn verify_tags(&self, commit: Oid, tags: &[Oid], verify: &Verify) -> Result<(), SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let mut refusal = None;
        // Each within the size limit (`tags_pointing_at`).
        for &id in tags {
            let tag = self.repo.find_tag(id).map_err(self.cache_error())?;
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
                role: "tagger",
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
