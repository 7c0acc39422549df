//! The bare repository that caches one URL: opened (or rebuilt) under a lock, fetched into,
//! and asked which commit a reference names.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use git2::{
    AutotagOption, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, FetchPrune,
    ObjectType, Oid, RemoteCallbacks, Repository,
};

use super::{
    error::{io_error, SourceError},
    spec::{FetchTimeouts, GitSpec},
};
use crate::limits::MAX_SIGNED_OBJECT_BYTES;

/// Runs `work` on the cache of `spec`'s URL while holding that cache's lock, so concurrent
/// processes sharing a cache directory take turns instead of failing on git's lock files.
///
/// A cache that fails in a way the repository's content cannot explain (a broken object, ref
/// or config, or a fetch error that a corrupt local repository also causes) is rebuilt once
/// from nothing, beside the old one; the rebuilt one replaces it only if it works, so a git
/// server that is down costs a second failed fetch, never the cache.
pub(super) fn with_cache<T>(
    spec: &GitSpec,
    work: impl Fn(&Cache) -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let url = absolute_url(&spec.url)?;
    crate::private_dir::ensure(&spec.cache_dir).map_err(SourceError::CacheDir)?;
    let path = spec.cache_dir.join(cache_name(&url));
    let _lock = lock_cache(&path)?;
    let first = Cache::open(url.clone(), path.clone()).and_then(|cache| work(&cache));
    match first {
        Err(SourceError::Fetch { .. } | SourceError::Cache { .. }) if path.exists() => {}
        // Missing content, unknown refs, network trouble on a fresh cache: not the cache's fault.
        done => return done,
    }
    let rebuilt = path.with_extension("rebuild");
    let _ = std::fs::remove_dir_all(&rebuilt);
    match Cache::open(url, rebuilt.clone()).and_then(|cache| work(&cache)) {
        Ok(value) => {
            let replace = std::fs::remove_dir_all(&path)
                .and_then(|()| std::fs::rename(&rebuilt, &path))
                .map_err(io_error(&path));
            replace.map(|()| value)
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&rebuilt);
            first
        }
    }
}

/// Blocks until this process holds the lock of the cache at `path` (a file beside it).
fn lock_cache(path: &Path) -> Result<std::fs::File, SourceError> {
    let lock_path = path.with_extension("lock");
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    file.lock().map_err(io_error(&lock_path))?;
    Ok(file)
}

/// The bare repository caching one URL.
pub(super) struct Cache {
    pub(super) repo: Repository,
    /// Refs deleted as too large to read, by name, with what they named.
    dropped: std::cell::RefCell<std::collections::BTreeMap<String, Oid>>,
    /// The URL as libgit2 gets it (local paths made absolute).
    url: String,
    path: PathBuf,
}

/// The URL and remote tip of the last fetch that ran out of memory (see
/// `Cache::too_large_to_fetch`); one per process, as a daemon follows one source.
static TOO_LARGE: Mutex<Option<(String, Oid)>> = Mutex::new(None);

/// Where the remote's HEAD lands, so `reference: None` follows the remote's default branch.
const REMOTE_HEAD: &str = "refs/remotes/origin/HEAD";

impl Cache {
    fn open(url: String, path: PathBuf) -> Result<Cache, SourceError> {
        let repo = match Repository::open_bare(&path) {
            Err(e) if e.code() == ErrorCode::NotFound => Repository::init_bare(&path),
            opened => opened,
        }
        .map_err(|error| SourceError::Cache { path: path.clone(), error })?;
        Ok(Cache { repo, dropped: Default::default(), url, path })
    }

    pub(super) fn cache_error(&self) -> impl Fn(git2::Error) -> SourceError + '_ {
        |error| SourceError::Cache { path: self.path.clone(), error }
    }

    /// Fetches every branch and tag, within `spec.timeouts`: the progress callbacks end a
    /// fetch that is still going when `total` has passed (a server that trickles), and
    /// libgit2 gives up on a connect or a read as [`set_server_timeouts`] said.
    pub(super) fn fetch(&self, spec: &GitSpec) -> Result<(), SourceError> {
        let timeouts = spec.timeouts;
        let deadline = Instant::now() + timeouts.total;
        let fetch_error = |error| match Instant::now() >= deadline {
            true => SourceError::Timeout { url: self.url.clone(), after: timeouts.total },
            false => SourceError::Fetch { url: self.url.clone(), error },
        };
        // libgit2 takes a missing local path for a URL it cannot parse ("unsupported URL
        // protocol"); a path that may yet be mounted stays a transient error.
        let local = self.url.strip_prefix("file://").unwrap_or(&self.url);
        if local.starts_with('/') && !Path::new(local).exists() {
            return Err(SourceError::NoSuchRepository { url: self.url.clone() });
        }
        let mut remote = self.repo.remote_anonymous(&self.url).map_err(fetch_error)?;
        let mut callbacks = callbacks(spec.ssh_key.as_deref());
        callbacks.transfer_progress(move |_| Instant::now() < deadline);
        callbacks.sideband_progress(move |_| Instant::now() < deadline);
        let mut options = FetchOptions::new();
        // Forced refspecs follow force-pushes; pruning forgets deleted branches and tags.
        options
            .remote_callbacks(callbacks)
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        let refspecs = [
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
            &format!("+HEAD:{REMOTE_HEAD}"),
        ];
        // A local repository's tip, read before the fetch (a cheap read of its refs): the
        // revision to blame if the fetch runs out of memory (see `too_large_to_fetch`).
        let tip = local.starts_with('/').then(|| Cache::local_tip(local, spec)).flatten();
        self.drop_oversized_refs()?;
        let mut too_large = TOO_LARGE.lock().unwrap_or_else(PoisonError::into_inner);
        let known = too_large.as_ref().filter(|(url, _)| *url == self.url).map(|(_, known)| *known);
        if let Some(tip) = tip.filter(|tip| known == Some(*tip)) {
            return Err(self.too_large_to_fetch(tip));
        }
        match (remote.fetch(&refspecs, Some(&mut options), None), tip) {
            // Over the network the fetch streams, and a commit too large to read is the
            // revision's failure when it is resolved (`peel`): memory that ran out there is
            // the machine's trouble, transient.
            (Err(e), Some(tip)) if e.class() == ErrorClass::NoMemory => {
                *too_large = Some((self.url.clone(), tip));
                return Err(self.too_large_to_fetch(tip));
            }
            (fetched, _) => fetched.map_err(fetch_error)?,
        }
        self.drop_oversized_refs()
    }

    /// Deletes every ref of the cache that names a commit (or a tag on the way to one) too
    /// large to read ([`Cache::peel`]), remembering it for `resolve`, which refuses it as the
    /// failed revision it is. libgit2 reads the commits the refs name (a fetch's negotiation
    /// walks from them), so one such ref left would make every later fetch read it whole.
    fn drop_oversized_refs(&self) -> Result<(), SourceError> {
        let references = self.repo.references().map_err(self.cache_error())?;
        let (mut oversized, mut roots) = (Vec::new(), BTreeSet::new());
        for reference in references.flatten() {
            let (Ok(name), Some(target)) = (reference.name(), reference.target()) else {
                continue;
            };
            match self.peel(target) {
                Err(SourceError::ObjectTooLarge { .. }) => {
                    oversized.push((name.to_owned(), target))
                }
                Ok(commit) if self.has_oversized_parent(commit)? => {
                    roots.insert(commit);
                }
                _ => {}
            }
        }
        self.graft_roots(roots)?;
        let mut dropped = self.dropped.borrow_mut();
        for (name, target) in oversized {
            if let Ok(mut reference) = self.repo.find_reference(&name) {
                reference.delete().map_err(self.cache_error())?;
            }
            dropped.insert(name, target);
        }
        Ok(())
    }

    /// The error for a fetch that ran out of memory: libgit2's local transport copies each
    /// object whole, so a commit of hundreds of MB fails every fetch where memory is bounded
    /// (fetches over the network stream, and only the commit is refused, by `peel`). A failed
    /// revision (the remote's `tip`), not a transient error, and remembered: until the
    /// remote's tip moves, a fetch only reads the remote's refs.
    fn too_large_to_fetch(&self, tip: Oid) -> SourceError {
        SourceError::FetchTooLarge { url: self.url.clone(), revision: tip.to_string() }
    }

    /// Whether a parent of `commit` is too large to read.
    fn has_oversized_parent(&self, commit: Oid) -> Result<bool, SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        // A commit that does not parse is the repository's, not the cache's, fault: its
        // revision fails when it is read for a snapshot, not every fetch here.
        let Ok(commit) = self.repo.find_commit(commit) else { return Ok(false) };
        for parent in commit.parent_ids() {
            match odb.read_header(parent) {
                Ok((size, _)) if size > MAX_SIGNED_OBJECT_BYTES => return Ok(true),
                // A parent the cache lacks is a shallow boundary already.
                _ => {}
            }
        }
        Ok(false)
    }

    /// Adds `roots` to the cache's `shallow` file: git's way of saying a commit's history is
    /// not here, which libgit2 honours too, so no walk (a fetch's negotiation) goes past a
    /// root into a parent too large to read.
    fn graft_roots(&self, roots: BTreeSet<Oid>) -> Result<(), SourceError> {
        if roots.is_empty() {
            return Ok(());
        }
        let path = self.repo.path().join("shallow");
        let mut all: BTreeSet<String> =
            std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned).collect();
        let before = all.len();
        all.extend(roots.iter().map(Oid::to_string));
        if all.len() == before {
            return Ok(());
        }
        let text: String = all.iter().map(|line| format!("{line}\n")).collect();
        crate::private_dir::write_atomically(&path, text.as_bytes()).map_err(io_error(&path))
    }

    /// What the local repository at `path` names for `spec` (a branch, a tag, else its
    /// HEAD), read from its refs without peeling anything (libgit2's local transport peels,
    /// reading the objects whole, which is what ran out of memory).
    fn local_tip(path: &str, spec: &GitSpec) -> Option<Oid> {
        let repo = Repository::open(path).ok()?;
        let names = match spec.reference.as_deref() {
            Some(name) => vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")],
            None => vec!["HEAD".to_owned()],
        };
        let target = |name: &String| repo.find_reference(name).ok()?.resolve().ok()?.target();
        names.iter().find_map(target)
    }

    /// A branch, else a tag, else a commit id or unique prefix; None is the remote's HEAD.
    /// No object is read whole on the way (see [`Cache::commit_of`]).
    pub(super) fn resolve(&self, reference: Option<&str>) -> Result<Oid, SourceError> {
        let Some(reference) = reference else {
            if let Some(&dropped) = self.dropped.borrow().get(REMOTE_HEAD) {
                return self.peel(dropped);
            }
            return match self.repo.find_reference(REMOTE_HEAD) {
                Ok(head) => self.commit_of(&head),
                Err(e) if e.code() == ErrorCode::NotFound => {
                    Err(SourceError::Empty { url: self.url.clone() })
                }
                Err(e) => Err(self.cache_error()(e)),
            };
        };
        for name in [format!("refs/remotes/origin/{reference}"), format!("refs/tags/{reference}")] {
            if let Some(&dropped) = self.dropped.borrow().get(&name) {
                return self.peel(dropped);
            }
            match self.repo.find_reference(&name) {
                Ok(found) => return self.commit_of(&found),
                // Not a valid ref name (e.g. "a..b") is as good as not found.
                Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => {}
                Err(e) => return Err(self.cache_error()(e)),
            }
        }
        let unknown =
            || SourceError::UnknownRef { reference: reference.to_owned(), url: self.url.clone() };
        let hex =
            (4..=64).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(unknown());
        }
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let prefix = Oid::from_str(reference).map_err(|_| unknown())?;
        match odb.exists_prefix(prefix, reference.len()) {
            Ok(id) => self.peel(id).map_err(|e| match e {
                // The id of a tree or blob names no commit.
                SourceError::UnknownRef { .. } => unknown(),
                other => other,
            }),
            Err(e) if e.code() == ErrorCode::Ambiguous => Err(SourceError::AmbiguousRef {
                reference: reference.to_owned(),
                url: self.url.clone(),
            }),
            // Not found, or too long for this repository's ids.
            Err(_) => Err(unknown()),
        }
    }

    /// The commit `reference` names, through annotated tags.
    fn commit_of(&self, reference: &git2::Reference<'_>) -> Result<Oid, SourceError> {
        let direct = reference.resolve().map_err(self.cache_error())?;
        let target = direct.target().ok_or_else(|| SourceError::UnknownRef {
            reference: String::from_utf8_lossy(reference.name_bytes()).into_owned(),
            url: self.url.clone(),
        })?;
        self.peel(target)
    }

    /// The commit `id` is or (through annotated tags) points at, each object judged by its
    /// header before it is read: a commit or tag over [`MAX_SIGNED_OBJECT_BYTES`] is refused
    /// unread, as a failed revision (a pushed commit of hundreds of MB would otherwise be
    /// read whole at every fetch, and fail every fetch where memory is bounded).
    pub(super) fn peel(&self, mut id: Oid) -> Result<Oid, SourceError> {
        let odb = self.repo.odb().map_err(self.cache_error())?;
        // Tags of tags of tags...: a chain longer than any a person makes is refused.
        for _ in 0..8 {
            let (size, kind) = odb.read_header(id).map_err(self.cache_error())?;
            let what = match kind {
                ObjectType::Commit => "the commit object",
                ObjectType::Tag => "a tag object on the way to it",
                // A ref to a blob or tree names no commit; one too large is refused as one
                // (libgit2 reads every ref's object when it negotiates a fetch).
                _ if size > MAX_SIGNED_OBJECT_BYTES => "the object it names (no commit)",
                _ => break,
            };
            if size > MAX_SIGNED_OBJECT_BYTES {
                let (revision, max) = (id.to_string(), MAX_SIGNED_OBJECT_BYTES);
                return Err(SourceError::ObjectTooLarge { revision, what, size, max });
            }
            if kind == ObjectType::Commit {
                return Ok(id);
            }
            id = self.repo.find_tag(id).map_err(self.cache_error())?.target_id();
        }
        Err(SourceError::UnknownRef { reference: id.to_string(), url: self.url.clone() })
    }
}

/// Sets libgit2's connect timeout to `timeouts.connect` and its timeout of any one read
/// or write to `timeouts.total`, for every fetch of this process (without them a server that
/// accepts and never answers holds a fetch for ever).
///
/// # Safety
///
/// libgit2 keeps these in globals without synchronisation: call it before any other thread
/// of the process starts.
pub unsafe fn set_server_timeouts(timeouts: FetchTimeouts) {
    let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: as the caller promises. They cannot fail (git2's own words).
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(millis(timeouts.connect));
        let _ = git2::opts::set_server_timeout_in_milliseconds(millis(timeouts.total));
    }
}

/// libgit2 needs absolute paths for local remotes; URLs (`scheme://`) and scp-like
/// `host:path` (a colon before the first slash, as git decides) pass unchanged.
fn absolute_url(url: &str) -> Result<String, SourceError> {
    if url.split('/').next().is_some_and(|first| first.contains(':')) {
        return Ok(url.to_owned());
    }
    std::path::absolute(url)
        .map(|path| path.to_string_lossy().into_owned())
        .map_err(|error| SourceError::Io { path: url.into(), error })
}

/// A readable tail of the URL plus a hash of all of it, so distinct URLs never share a cache.
fn cache_name(url: &str) -> String {
    // FNV-1a 64: stable across Rust versions and platforms, unlike std's DefaultHasher.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let words: Vec<&str> = url
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|word| !word.is_empty())
        .collect();
    let readable = words.join("-");
    // ASCII only, so any byte offset is a char boundary.
    let tail = &readable[readable.len().saturating_sub(40)..];
    format!("{}-{hash:016x}", tail.trim_start_matches(['-', '.']))
}

/// ssh: the key file if given, else the agent; https: git's credential helpers.
fn callbacks(ssh_key: Option<&Path>) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    // libgit2 asks again after every rejected credential; give up rather than loop forever.
    let mut attempts = 0;
    callbacks.credentials(move |url, username, allowed| {
        attempts += 1;
        if attempts > 3 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        if allowed.contains(CredentialType::USERNAME) {
            Cred::username(username.unwrap_or("git"))
        } else if allowed.contains(CredentialType::SSH_KEY) {
            let username = username.unwrap_or("git");
            match ssh_key {
                Some(key) => Cred::ssh_key(username, None, key, None),
                None => Cred::ssh_key_from_agent(username),
            }
        } else if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            Cred::credential_helper(&git2::Config::open_default()?, url, username)
        } else {
            Cred::default()
        }
    });
    callbacks
}
