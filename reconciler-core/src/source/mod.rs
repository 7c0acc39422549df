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
//! Here: the entry points. `spec` says what a source is, `snapshot` what it yields, `error`
//! why it failed; `dir` reads directories, `cache` keeps and fetches a URL's bare repository,
//! `signature` checks that a commit is signed, `tree` reads a commit's files, `compare` the
//! two sides of a pull request's review, and `collect` bounds what both readers read.
mod cache;
mod collect;
mod compare;
mod dir;
mod error;
mod signature;
mod snapshot;
mod spec;
mod tree;

pub use cache::set_server_timeouts;
use cache::with_cache;
pub use compare::{changed_since, compared, CompareMode, Compared};
pub use dir::{read_paths, read_paths_with, Walk};
pub use error::SourceError;
pub use signature::signature_checks;
pub use snapshot::{FileProblem, Snapshot, SourceFile};
pub use spec::{default_cache_dir, FetchTimeouts, GitSpec, SourceSpec};

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
    snapshot_from_cache(spec, rev, true)
}

/// [`snapshot_at`] from the cache alone, never from the network: for what must not wait on
/// a git server (the daemon's health changes, planned from the revision the maps record).
pub fn cached_snapshot_at(spec: &GitSpec, rev: &str) -> Result<Snapshot, SourceError> {
    snapshot_from_cache(spec, rev, false)
}

fn snapshot_from_cache(spec: &GitSpec, rev: &str, fetch: bool) -> Result<Snapshot, SourceError> {
    with_cache(spec, |cache| {
        let commit = match cache.resolve(Some(rev)) {
            Err(SourceError::UnknownRef { .. }) if fetch => {
                cache.fetch(spec)?;
                cache.resolve(Some(rev))?
            }
            resolved => resolved?,
        };
        cache.snapshot(commit, spec.subdir.as_deref(), &|_| false)
    })
}
