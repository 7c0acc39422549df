//! Why a source could not be read, and whether trying again may help.
use std::path::{Path, PathBuf};

use crate::verify::Unverified;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // The causes are part of the message, not `#[source]`s: a chain would print them twice.
    #[error("fetching {url}: {error}")]
    Fetch { url: String, error: git2::Error },
    #[error("fetching {url}: no such repository (nothing at that path)")]
    NoSuchRepository { url: String },
    #[error("fetching {url}: not done within {after:?} (source.timeout)")]
    Timeout { url: String, after: std::time::Duration },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("cache directory {0}")]
    CacheDir(crate::private_dir::PrivateDirError),
    #[error("git cache {}: {error}", path.display())]
    Cache { path: PathBuf, error: git2::Error },
    #[error("{url} has no commit at HEAD (an empty repository, or its default branch has none)")]
    Empty { url: String },
    #[error("ref `{reference}` is neither a branch, a tag nor a commit of {url}")]
    UnknownRef { reference: String, url: String },
    #[error("ref `{reference}` is a commit id prefix shared by several objects of {url}")]
    AmbiguousRef { reference: String, url: String },
    #[error("subdirectory `{}` not found at {revision}", subdir.display())]
    SubdirNotFound { subdir: PathBuf, revision: String },
    #[error("{}: neither a regular file nor a directory", path.display())]
    NotAFile { path: PathBuf },
    #[error("commit {revision} is not verified: {reason}")]
    Unverified { revision: String, reason: Unverified },
    #[error(
        "{revision}: {what} is {size} bytes; at most {max} are read (a commit or tag is a few \
         hundred bytes, a tree of definitions at most a few MiB)"
    )]
    ObjectTooLarge { revision: String, what: &'static str, size: usize, max: usize },
    #[error(
        "fetching {url}: out of memory copying the objects of {revision} (an object too large \
         to read whole: libgit2 copies a local repository's objects whole); refused until the \
         remote's tip moves"
    )]
    FetchTooLarge { url: String, revision: String },
    #[error("git repository at {}: {error}", path.display())]
    Repository { path: PathBuf, error: git2::Error },
    #[error(
        "commits {base} and {head} of {url} share no history (no merge base): there is no \
         merge to plan; compare two revisions of one history"
    )]
    NoMergeBase { url: String, base: String, head: String },
}

impl SourceError {
    /// Whether trying again soon may succeed (network, servers, disks, the local cache) as
    /// opposed to a problem with what the repository or the spec says, which only a new
    /// commit or configuration changes.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Fetch { .. }
                | SourceError::NoSuchRepository { .. }
                | SourceError::Timeout { .. }
                | SourceError::Io { .. }
                | SourceError::CacheDir(_)
                | SourceError::Cache { .. }
        )
    }

    /// The revision a permanent error is about, when it is about one.
    pub fn revision(&self) -> Option<&str> {
        match self {
            SourceError::SubdirNotFound { revision, .. }
            | SourceError::Unverified { revision, .. }
            | SourceError::ObjectTooLarge { revision, .. }
            | SourceError::FetchTooLarge { revision, .. } => Some(revision),
            _ => None,
        }
    }
}

/// The error of an I/O failure at `path`.
pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_owned();
    |error| SourceError::Io { path, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_too_large_is_a_failed_revision_not_a_transient_error() {
        let errors = [
            SourceError::ObjectTooLarge {
                revision: "abc".into(),
                what: "the commit object",
                size: 1 << 30,
                max: 1 << 20,
            },
            SourceError::FetchTooLarge { url: "/srv/services".into(), revision: "abc".into() },
        ];
        for error in errors {
            assert!(!error.is_transient(), "{error}");
            assert_eq!(error.revision(), Some("abc"), "{error}");
        }
    }
}
