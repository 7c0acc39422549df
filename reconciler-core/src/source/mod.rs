//! Where service definitions come from: a plain directory, or one commit of a git repository.
//!
//! A git source is fetched into a bare cache repository (one per URL under a cache directory)
//! and its files are read from the resolved commit's tree, never from a working copy, so what
//! is applied is exactly what was committed, and a revision names it.
//!
//! Transports are libgit2's: local paths, `file://`, `git://`, `https://` (credentials from git's
//! credential helpers), `ssh://` and scp-like `user@host:path` (a key file or the ssh agent; host
//! keys are checked against `~/.ssh/known_hosts`). Not supported: `~/.ssh/config` (host aliases,
//! `ProxyCommand`), passphrase-protected key files, client certificates, shallow or partial
//! fetches, and submodules (their entries are skipped).
//!
//! Here: the spec, the snapshot, the errors and the entry points; `dir` reads directories,
//! `cache` keeps and fetches a URL's bare repository, `signature` checks that a commit is
//! signed, `tree` reads a commit's files, and `collect` bounds what both readers read.
use std::path::{Path, PathBuf};

use crate::verify::{Unverified, Verify};

mod cache;
mod collect;
mod dir;
mod signature;
mod tree;

use cache::with_cache;
pub use dir::read_paths;

/// Where service definitions come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// A plain directory, read as it is (no git).
    Dir(PathBuf),
    Git(GitSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct GitSpec {
    /// A local path (absolute or relative; a working repo or a bare one), file://, git://,
    /// https://, ssh://, or scp-like user@host:path.
    pub url: String,
    /// Branch, tag or commit id (full or abbreviated hex). None = the remote's HEAD.
    pub reference: Option<String>,
    /// Only files under this subdirectory of the repository (e.g. "services"); None = whole tree.
    pub subdir: Option<PathBuf>,
    /// Directory holding the fetch caches (one bare repository per URL, created on demand).
    pub cache_dir: PathBuf,
    /// ssh private key file; without it ssh uses the ssh agent.
    pub ssh_key: Option<PathBuf>,
    /// Who must have signed the commit (or a tag of it) for it to be read at all.
    pub verify: Option<Verify>,
}

/// The definition files of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The full commit id (40 or 64 hex chars) for git; None for a Dir source.
    pub revision: Option<String>,
    /// The .yaml/.yml files under the subdir (recursively), sorted by path.
    pub files: Vec<SourceFile>,
    /// Definition files that were not read, and why (a symbolic link, over a limit, not
    /// UTF-8); validation reports each, so a revision with any is invalid.
    pub problems: Vec<FileProblem>,
    /// What a directory reader passed over, and why: symbolic links that are not definition
    /// files (never followed), and other filesystems mounted inside the tree (not entered).
    pub skipped: Vec<FileProblem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path as people should see it in error messages: relative to the repository root for git
    /// (e.g. "services/team-a/web.yaml"), the directory as given joined with the relative path
    /// for Dir (e.g. "examples/policies/team-web/web.yaml").
    pub path: String,
    /// The file's text; `None` when it was not read because the caller already holds what
    /// its blob validates to (see [`fetch_reusing`]).
    pub text: Option<String>,
    /// The git blob id (the content's address) of a file read from git.
    pub blob: Option<String>,
}

impl SourceFile {
    /// A file read from anywhere but git.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile { path: path.into(), text: Some(text.into()), blob: None }
    }
}

/// A definition file that was not read, or a path that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    pub path: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // The causes are part of the message, not `#[source]`s: a chain would print them twice.
    #[error("fetching {url}: {error}")]
    Fetch { url: String, error: git2::Error },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
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
}

impl SourceError {
    /// Whether trying again soon may succeed (network, servers, disks, the local cache) as
    /// opposed to a problem with what the repository or the spec says, which only a new
    /// commit or configuration changes.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Fetch { .. } | SourceError::Io { .. } | SourceError::Cache { .. }
        )
    }

    /// The revision a permanent error is about, when it is about one.
    pub fn revision(&self) -> Option<&str> {
        match self {
            SourceError::SubdirNotFound { revision, .. }
            | SourceError::Unverified { revision, .. } => Some(revision),
            _ => None,
        }
    }
}

/// Starts libgit2 on another thread. Its initialisation loads the system's CA certificates
/// for https remotes (~30 ms, even for a local repository); begun at launch, it overlaps
/// reading the configuration and the memo instead of delaying the first fetch.
pub fn start_git_early() {
    // Enabling the object cache (the default already) is the lightest public call that
    // initialises git2 and libgit2.
    std::thread::spawn(|| git2::opts::enable_caching(true));
}

/// Fetches (git) or reads (dir) and returns one snapshot.
pub fn fetch(spec: &SourceSpec) -> Result<Snapshot, SourceError> {
    fetch_reusing(spec, &|_| false)
}

/// [`fetch`], leaving unread (no `text`) the git blobs that `known` (by blob id) says the
/// caller already holds; the limits still count them.
pub fn fetch_reusing(
    spec: &SourceSpec,
    known: &dyn Fn(&str) -> bool,
) -> Result<Snapshot, SourceError> {
    match spec {
        SourceSpec::Dir(dir) => read_paths(std::slice::from_ref(dir)),
        SourceSpec::Git(git) => with_cache(git, |cache| {
            cache.fetch(git)?;
            let commit = cache.resolve(git.reference.as_deref())?;
            if let Some(verify) = &git.verify {
                cache.verify(commit, verify)?;
            }
            cache.snapshot(commit, git.subdir.as_deref(), known)
        }),
    }
}

/// For a Git spec: the snapshot of another revision `rev` (branch, tag or commit) of the same
/// repository, read from the cache that `fetch` filled; fetches first if `rev` is not there.
pub fn snapshot_at(spec: &GitSpec, rev: &str) -> Result<Snapshot, SourceError> {
    with_cache(spec, |cache| {
        let commit = match cache.resolve(Some(rev)) {
            Err(SourceError::UnknownRef { .. }) => {
                cache.fetch(spec)?;
                cache.resolve(Some(rev))?
            }
            resolved => resolved?,
        };
        cache.snapshot(commit, spec.subdir.as_deref(), &|_| false)
    })
}

/// The default cache directory: $RECONCILER_CACHE_DIR, else $XDG_CACHE_HOME/reconciler, else
/// $HOME/.cache/reconciler, else /var/cache/reconciler.
pub fn default_cache_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("RECONCILER_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|dir| dir.join("reconciler")))
        .or_else(|| var("HOME").map(|dir| dir.join(".cache/reconciler")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/reconciler"))
}

/// The error of an I/O failure at `path`.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_owned();
    |error| SourceError::Io { path, error }
}
