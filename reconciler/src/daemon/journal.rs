//! What the daemon remembers across restarts, in a small JSON file in the cache directory: the
//! revision that failed (with its errors), and the revision a run started on and has not
//! finished. So a commit that is refused stays refused after a restart, and a commit that
//! kills the daemon while it is being checked (whatever the cause) is refused after the
//! second time instead of crash-looping the node.
//!
//! The file is a cache, never trusted blindly: one that is unreadable, damaged, of another
//! format or written for another source or pin path is ignored and written anew.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use reconciler_core::{private_dir, validate::Diagnostic};

const FORMAT_VERSION: u32 = 1;

/// Runs on one revision that may start without finishing before it counts as failed.
const STARTS_BEFORE_FAILED: u32 = 2;

/// A revision that failed, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub revision: String,
    pub error: String,
    pub diagnostics: Vec<Diagnostic>,
    pub at: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Contents {
    format_version: u32,
    /// Whose journal this is.
    source: String,
    pin_path: String,
    /// The revision a run is checking or applying, and how many runs started on it.
    attempt: Option<(String, u32)>,
    failure: Option<Failure>,
    /// The last rollout started: (its revision, the revision before), so a restart resumes
    /// it, or undoes it, from the right one.
    #[serde(default)]
    rollout: Option<(String, String)>,
}

/// The journal of one daemon (one source and pin path).
pub struct Journal {
    path: PathBuf,
    contents: Contents,
}

impl Journal {
    /// The journal in `cache_dir` for `source` and `pin_path`, or a new one.
    pub fn open(cache_dir: &Path, source: &str, pin_path: &Path) -> Journal {
        let pin_path = pin_path.display().to_string();
        let name: String =
            pin_path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let path = cache_dir.join(format!("daemon{name}.json"));
        let fresh = Contents {
            format_version: FORMAT_VERSION,
            source: source.to_owned(),
            pin_path: pin_path.clone(),
            ..Contents::default()
        };
        // A journal in a directory others can change is theirs, not ours: not read.
        let private = path.parent().is_some_and(|dir| private_dir::check(dir).is_ok());
        let read = private
            .then(|| {
                reconciler_core::limits::read_to_string(
                    &path,
                    reconciler_core::limits::MAX_FILE_BYTES as u64,
                )
                .ok()
            })
            .flatten()
            .and_then(|text| serde_json::from_str::<Contents>(&text).ok())
            .filter(|c| {
                c.format_version == FORMAT_VERSION && c.source == source && c.pin_path == pin_path
            });
        Journal { path, contents: read.unwrap_or(fresh) }
    }

    /// The revision that failed, if any; a revision that runs kept starting on without
    /// finishing becomes one here.
    pub fn failure(&mut self, now: &str) -> Option<&Failure> {
        if let Some((revision, starts)) = &self.contents.attempt {
            if *starts >= STARTS_BEFORE_FAILED {
                let error = format!(
                    "the daemon stopped {starts} times while checking or applying revision \
                     {revision} (a crash, or killed); it is not tried again until a new \
                     commit arrives"
                );
                let failure = Failure {
                    revision: revision.clone(),
                    error,
                    diagnostics: Vec::new(),
                    at: now.to_owned(),
                };
                self.contents.attempt = None;
                self.contents.failure = Some(failure);
                self.save();
            }
        }
        self.contents.failure.as_ref()
    }

    /// A run starts checking `revision`; written before the work, so a crash leaves it.
    pub fn start(&mut self, revision: &str) {
        let starts = match &self.contents.attempt {
            Some((r, starts)) if r == revision => starts + 1,
            _ => 1,
        };
        self.contents.attempt = Some((revision.to_owned(), starts));
        self.save();
    }

    /// The run ended without a verdict on the revision (a fetch or data plane error).
    pub fn interrupted(&mut self) {
        if self.contents.attempt.take().is_some() {
            self.save();
        }
    }

    /// The revision is refused; remembered until a good one is applied.
    pub fn failed(&mut self, failure: Failure) {
        self.contents.attempt = None;
        self.contents.failure = Some(failure);
        self.save();
    }

    /// A revision is applied or adopted, or the rules changed: nothing has failed (any more).
    pub fn clear(&mut self) {
        if self.contents.attempt.is_some() || self.contents.failure.is_some() {
            self.contents.attempt = None;
            self.contents.failure = None;
            self.save();
        }
    }

    /// A rollout of `revision` from `previous` starts (written before its first apply).
    pub fn rollout(&mut self, revision: &str, previous: &str) {
        self.contents.rollout = Some((revision.to_owned(), previous.to_owned()));
        self.save();
    }

    /// The revision the last rollout of `revision` started from, if one did.
    pub fn rolled_out_from(&self, revision: &str) -> Option<&str> {
        let (rolled, previous) = self.contents.rollout.as_ref()?;
        (rolled == revision).then_some(previous.as_str())
    }

    /// Writes the journal whole (a new file renamed over the old, in a directory only this
    /// user can change, never through a planted link), so a crash never leaves half of one.
    /// A journal that cannot be written is logged, not fatal: it only makes a restart forget.
    fn save(&self) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                private_dir::ensure(dir).map_err(std::io::Error::other)?;
            }
            private_dir::write_atomically(&self.path, &serde_json::to_vec_pretty(&self.contents)?)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), "writing the daemon's journal: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, "git://x/repo.git", Path::new("/sys/fs/bpf/reconciler"))
    }

    #[test]
    fn a_failure_survives_a_restart_until_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let failure = Failure {
            revision: "abc".into(),
            error: "1 invalid definition(s)".into(),
            diagnostics: Vec::new(),
            at: "now".into(),
        };
        open(dir.path()).failed(failure.clone());
        assert_eq!(open(dir.path()).failure("later"), Some(&failure));
        open(dir.path()).clear();
        assert_eq!(open(dir.path()).failure("later"), None);
    }

    #[test]
    fn a_revision_that_kills_two_runs_is_failed() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).start("abc");
        // One unfinished run may have been a kill -9 of a healthy daemon: try again.
        assert_eq!(open(dir.path()).failure("t"), None);
        open(dir.path()).start("abc");
        let mut journal = open(dir.path());
        let failure = journal.failure("t").unwrap();
        assert_eq!(failure.revision, "abc");
        assert!(failure.error.contains("stopped 2 times"), "{failure:?}");
        // A run that ends without a verdict clears the attempt.
        let mut journal = open(dir.path());
        journal.start("def");
        journal.interrupted();
        assert_eq!(open(dir.path()).contents.attempt, None);
    }

    #[test]
    fn a_damaged_or_foreign_journal_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).start("abc");
        let path = open(dir.path()).path;
        std::fs::write(&path, b"{\"format_version\": 1, \"attempt\": [").unwrap();
        assert_eq!(open(dir.path()).contents.attempt, None);
        open(dir.path()).start("abc");
        let other =
            Journal::open(dir.path(), "git://y/other.git", Path::new("/sys/fs/bpf/reconciler"));
        assert_eq!(other.contents.attempt, None);
    }

    #[test]
    fn a_journal_in_a_directory_another_user_owns_is_neither_read_nor_written() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        open(&dir).start("abc");
        open(&dir).start("abc");
        // Someone else's directory (made first, say in /tmp), with that journal in it and a
        // link planted where the next write would go.
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let precious = root.path().join("precious");
        std::fs::write(&precious, "precious").unwrap();
        let path = open(&dir).path;
        let partial = path.with_extension(format!("partial.{}", std::process::id()));
        std::os::unix::fs::symlink(&precious, partial).unwrap();
        let mut journal = open(&dir);
        assert_eq!(journal.failure("t"), None, "a planted journal was believed");
        journal.start("def");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");
    }
}
