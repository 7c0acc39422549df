//! What both readers of a snapshot share (a directory, a commit's tree): which files are
//! definition files, and the collection of what is read, under the limits of
//! [`crate::limits`].
use std::path::Path;

use super::snapshot::{FileProblem, Snapshot, SourceFile};
use crate::limits;

/// `.yaml` or `.yml`, in any case (`web.YAML` is a definition file too, not silently skipped).
pub(super) fn is_yaml(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Why a symbolic link is not read.
pub(super) const LINK_NOT_FOLLOWED: &str = "a symbolic link, which reconciler does not follow";

/// The files of one snapshot as they are read, with the limits of [`crate::limits`] applied
/// before each file is read.
#[derive(Default)]
pub(super) struct Collector {
    snapshot: Snapshot,
    bytes: u64,
    over_total: bool,
}

impl Collector {
    pub(super) fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.snapshot.problems.push(FileProblem { path: path.to_owned(), message: message.into() });
    }

    pub(super) fn skip(&mut self, path: String, reason: &str) {
        self.snapshot.skipped.push(FileProblem { path, message: reason.to_owned() });
    }

    /// Whether a definition file of `size` bytes may be read; records why not otherwise.
    pub(super) fn admit(&mut self, path: &str, size: u64) -> bool {
        if size > limits::MAX_FILE_BYTES as u64 {
            self.problem(path, limits::too_large(size));
            return false;
        }
        let count = self.snapshot.files.len();
        if count >= limits::MAX_FILES || self.bytes + size > limits::MAX_SOURCE_BYTES {
            if !self.over_total {
                self.over_total = true;
                let message = format!(
                    "the definitions exceed {} files or {} in all; this file and the ones \
                     after it were not read",
                    limits::MAX_FILES,
                    limits::mib(limits::MAX_SOURCE_BYTES)
                );
                self.problem(path, message);
            }
            return false;
        }
        self.bytes += size;
        true
    }

    pub(super) fn push(&mut self, path: String, bytes: Vec<u8>, blob: Option<String>) {
        match String::from_utf8(bytes) {
            Ok(text) => self.snapshot.files.push(SourceFile { path, text: Some(text), blob }),
            Err(_) => self.problem(&path, "not UTF-8"),
        }
    }

    pub(super) fn push_reused(&mut self, path: String, blob: String) {
        self.snapshot.files.push(SourceFile { path, text: None, blob: Some(blob) });
    }

    pub(super) fn finish(mut self, revision: Option<String>) -> Snapshot {
        self.snapshot.revision = revision;
        self.snapshot.files.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
        self.snapshot
    }
}
