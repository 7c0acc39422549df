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
use std::path::{Component, Path, PathBuf};

use crate::{
    limits,
    verify::{Mode, Signed, Unverified, Verify},
};

use git2::{
    AutotagOption, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune, FileMode, ObjectType,
    Oid, RemoteCallbacks, Repository, Tree,
};

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

/// Runs `work` on the cache of `spec`'s URL while holding that cache's lock, so concurrent
/// processes sharing a cache directory take turns instead of failing on git's lock files.
///
/// A cache that fails in a way the repository's content cannot explain (a broken object, ref
/// or config, or a fetch error that a corrupt local repository also causes) is rebuilt once
/// from nothing, beside the old one; the rebuilt one replaces it only if it works, so a git
/// server that is down costs a second failed fetch, never the cache.
fn with_cache<T>(
    spec: &GitSpec,
    work: impl Fn(&Cache) -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let url = absolute_url(&spec.url)?;
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

/// A signed tag object's content, split into what is signed and the armored signature git
/// appends to the message.
fn split_signature(raw: &[u8]) -> Option<(&[u8], &str)> {
    let start = raw.windows(12).rposition(|w| w == b"\n-----BEGIN ")? + 1;
    Some((&raw[..start], std::str::from_utf8(&raw[start..]).ok()?))
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

/// `.yaml` or `.yml`, in any case (`web.YAML` is a definition file too, not silently skipped).
fn is_yaml(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".yaml") || name.ends_with(".yml")
}

const LINK_NOT_FOLLOWED: &str = "a symbolic link, which reconciler does not follow";

/// The files of one snapshot as they are read, with the limits of [`crate::limits`] applied
/// before each file is read.
#[derive(Default)]
struct Collector {
    snapshot: Snapshot,
    bytes: u64,
    over_total: bool,
}

impl Collector {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.snapshot.problems.push(FileProblem { path: path.to_owned(), message: message.into() });
    }

    fn skip(&mut self, path: String, reason: &str) {
        self.snapshot.skipped.push(FileProblem { path, message: reason.to_owned() });
    }

    /// Whether a definition file of `size` bytes may be read; records why not otherwise.
    fn admit(&mut self, path: &str, size: u64) -> bool {
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

    fn push(&mut self, path: String, bytes: Vec<u8>, blob: Option<String>) {
        match String::from_utf8(bytes) {
            Ok(text) => self.snapshot.files.push(SourceFile { path, text: Some(text), blob }),
            Err(_) => self.problem(&path, "not UTF-8"),
        }
    }

    fn push_reused(&mut self, path: String, blob: String) {
        self.snapshot.files.push(SourceFile { path, text: None, blob: Some(blob) });
    }

    fn finish(mut self, revision: Option<String>) -> Snapshot {
        self.snapshot.revision = revision;
        self.snapshot.files.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
        self.snapshot
    }
}

/// Reads plain files and directories: a directory is searched for `.yaml`/`.yml` files, a
/// file named directly is read whatever its name. Inside a directory no symbolic link is
/// followed (a link named like a definition file is a problem; other links are listed as
/// skipped), no other filesystem is entered (like `find -xdev`: `validate /` does not walk
/// /proc), and `.git` directories are passed over.
pub fn read_paths(paths: &[PathBuf]) -> Result<Snapshot, SourceError> {
    let mut collector = Collector::default();
    for path in paths {
        // What the user named is followed, like `find -H`; nothing below it is.
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if meta.is_dir() {
            walk_dir(path, &mut collector)?;
        } else if meta.is_file() {
            read_file(path, &mut collector)?;
        } else {
            return Err(SourceError::NotAFile { path: path.clone() });
        }
    }
    Ok(collector.finish(None))
}

/// Every definition file under `root`, without recursion (a hostile tree can be deep).
fn walk_dir(root: &Path, collector: &mut Collector) -> Result<(), SourceError> {
    use std::os::unix::fs::MetadataExt as _;
    let device = std::fs::metadata(root).map_err(io_error(root))?.dev();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            // The entry's own type: a link is a link, wherever it points.
            let kind = entry.file_type().map_err(io_error(&path))?;
            let shown = path.display().to_string();
            if kind.is_dir() {
                // The entry's own metadata (lstat): a mount point has the mounted device.
                let here = entry.metadata().map_err(io_error(&path))?.dev();
                if here != device {
                    let reason = "another filesystem mounted here, which reconciler does not enter";
                    collector.skip(shown, reason);
                } else if entry.file_name() != ".git" {
                    pending.push(path);
                }
            } else if kind.is_symlink() {
                if is_yaml(&shown) {
                    collector.problem(&shown, LINK_NOT_FOLLOWED);
                } else {
                    collector.skip(shown, LINK_NOT_FOLLOWED);
                }
            } else if is_yaml(&shown) {
                read_file(&path, collector)?;
            }
        }
    }
    Ok(())
}

/// Reads one file, refusing links, devices, FIFOs and files over the limits before reading.
fn read_file(path: &Path, collector: &mut Collector) -> Result<(), SourceError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let shown = path.display().to_string();
    // O_NOFOLLOW: the file checked is the file read, even if the tree changes meanwhile;
    // O_NONBLOCK: opening a FIFO does not wait for a writer.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            collector.problem(&shown, LINK_NOT_FOLLOWED);
            return Ok(());
        }
        opened => opened.map_err(io_error(path))?,
    };
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        collector.problem(&shown, "not a regular file");
        return Ok(());
    }
    if !collector.admit(&shown, meta.len()) {
        return Ok(());
    }
    // Bounded even if the file grows after the check.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limits::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io_error(path))?;
    if bytes.len() > limits::MAX_FILE_BYTES {
        collector.problem(&shown, limits::too_large(bytes.len() as u64));
        return Ok(());
    }
    collector.push(shown, bytes, None);
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_owned();
    |error| SourceError::Io { path, error }
}

/// The bare repository caching one URL.
struct Cache {
    repo: Repository,
    /// The URL as libgit2 gets it (local paths made absolute).
    url: String,
    path: PathBuf,
}

/// Where the remote's HEAD lands, so `reference: None` follows the remote's default branch.
const REMOTE_HEAD: &str = "refs/remotes/origin/HEAD";

impl Cache {
    fn open(url: String, path: PathBuf) -> Result<Cache, SourceError> {
        let repo = match Repository::open_bare(&path) {
            Err(e) if e.code() == ErrorCode::NotFound => Repository::init_bare(&path),
            opened => opened,
        }
        .map_err(|error| SourceError::Cache { path: path.clone(), error })?;
        Ok(Cache { repo, url, path })
    }

    fn cache_error(&self) -> impl Fn(git2::Error) -> SourceError + '_ {
        |error| SourceError::Cache { path: self.path.clone(), error }
    }

    fn fetch(&self, spec: &GitSpec) -> Result<(), SourceError> {
        let fetch_error = |error| SourceError::Fetch { url: self.url.clone(), error };
        let mut remote = self.repo.remote_anonymous(&self.url).map_err(fetch_error)?;
        let mut options = FetchOptions::new();
        // Forced refspecs follow force-pushes; pruning forgets deleted branches and tags.
        options
            .remote_callbacks(callbacks(spec.ssh_key.as_deref()))
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        let refspecs = [
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
            &format!("+HEAD:{REMOTE_HEAD}"),
        ];
        remote.fetch(&refspecs, Some(&mut options), None).map_err(fetch_error)
    }

    /// A branch, else a tag, else a commit id or unique prefix; None is the remote's HEAD.
    /// Whether `commit` (or, in tag mode, an annotated tag pointing at it) is signed as
    /// `verify` asks (see `verify`).
    fn verify(&self, commit: Oid, verify: &Verify) -> Result<(), SourceError> {
        let refused =
            |reason: Unverified| SourceError::Unverified { revision: commit.to_string(), reason };
        match verify.mode {
            Mode::Head => {
                let (signature, data) = match self.repo.extract_signature(&commit, None) {
                    Ok(found) => found,
                    Err(e) if e.code() == ErrorCode::NotFound => {
                        return Err(refused(Unverified::Unsigned));
                    }
                    Err(e) => return Err(self.cache_error()(e)),
                };
                let committer = self
                    .repo
                    .find_commit(commit)
                    .map_err(self.cache_error())?
                    .committer()
                    .to_owned();
                let signed = Signed {
                    signature: std::str::from_utf8(&signature).unwrap_or_default(),
                    data: &data,
                    email: committer.email().unwrap_or_default(),
                    time: committer.when().seconds(),
                };
                verify.check(&signed).map(drop).map_err(refused)
            }
            Mode::Tag => {
                let odb = self.repo.odb().map_err(self.cache_error())?;
                let mut refusal = None;
                let tags = self.repo.references_glob("refs/tags/*").map_err(self.cache_error())?;
                for reference in tags.flatten() {
                    // Lightweight tags carry no signature; they are not tag objects.
                    let Ok(tag) = reference.peel_to_tag() else { continue };
                    if tag.target_id() != commit {
                        continue;
                    }
                    let raw = odb.read(tag.id()).map_err(self.cache_error())?;
                    let Some((data, signature)) = split_signature(raw.data()) else {
                        refusal.get_or_insert(Unverified::Unsigned);
                        continue;
                    };
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
                Err(refused(refusal.unwrap_or(Unverified::NoSignedTag)))
            }
        }
    }

    fn resolve(&self, reference: Option<&str>) -> Result<Oid, SourceError> {
        let Some(reference) = reference else {
            return match self.repo.find_reference(REMOTE_HEAD) {
                Ok(head) => head.peel_to_commit().map(|c| c.id()).map_err(self.cache_error()),
                Err(e) if e.code() == ErrorCode::NotFound => {
                    Err(SourceError::Empty { url: self.url.clone() })
                }
                Err(e) => Err(self.cache_error()(e)),
            };
        };
        for name in [format!("refs/remotes/origin/{reference}"), format!("refs/tags/{reference}")] {
            match self.repo.find_reference(&name) {
                Ok(found) => {
                    return found.peel_to_commit().map(|c| c.id()).map_err(self.cache_error())
                }
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
        match self.repo.find_commit_by_prefix(reference) {
            Ok(commit) => Ok(commit.id()),
            Err(e) if e.code() == ErrorCode::Ambiguous => Err(SourceError::AmbiguousRef {
                reference: reference.to_owned(),
                url: self.url.clone(),
            }),
            // Not found, the id of a tree or blob, or too long for this repository's ids.
            Err(_) => Err(unknown()),
        }
    }

    fn snapshot(
        &self,
        commit: Oid,
        subdir: Option<&Path>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, SourceError> {
        let revision = commit.to_string();
        let root =
            self.repo.find_commit(commit).and_then(|c| c.tree()).map_err(self.cache_error())?;
        let Some(subdir) = subdir else {
            return self.files(root, "", &revision, known);
        };
        let not_found = || SourceError::SubdirNotFound {
            subdir: subdir.to_owned(),
            revision: revision.clone(),
        };
        // Spelled as git spells paths, whatever the spec's spelling ("./services/").
        let mut parts = Vec::new();
        for component in subdir.components() {
            match component {
                Component::Normal(name) => parts.push(name.to_string_lossy()),
                Component::CurDir => {}
                // `..` or `/` never names a directory of the tree.
                _ => return Err(not_found()),
            }
        }
        let prefix = parts.join("/");
        if prefix.is_empty() {
            return self.files(root, "", &revision, known);
        }
        let entry = root.get_path(Path::new(&prefix)).map_err(|_| not_found())?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(not_found());
        }
        let tree = self.repo.find_tree(entry.id()).map_err(self.cache_error())?;
        self.files(tree, &prefix, &revision, known)
    }

    /// Every definition file under `tree`, without recursion (a hostile tree can be deep).
    fn files(
        &self,
        tree: Tree,
        prefix: &str,
        revision: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, SourceError> {
        let mut collector = Collector::default();
        let odb = self.repo.odb().map_err(self.cache_error())?;
        let mut pending = vec![(tree, prefix.to_owned())];
        while let Some((tree, prefix)) = pending.pop() {
            for entry in tree.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes());
                let path =
                    if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") };
                match entry.kind() {
                    Some(ObjectType::Tree) => {
                        let subtree =
                            self.repo.find_tree(entry.id()).map_err(self.cache_error())?;
                        pending.push((subtree, path));
                    }
                    Some(ObjectType::Blob) if is_yaml(&path) => {
                        // A link's blob is its target's name; skipping it would silently drop
                        // services.
                        if entry.filemode() == i32::from(FileMode::Link) {
                            collector.problem(&path, LINK_NOT_FOLLOWED);
                            continue;
                        }
                        // The header gives the size without loading the blob.
                        let (size, _) = odb.read_header(entry.id()).map_err(self.cache_error())?;
                        if collector.admit(&path, size as u64) {
                            let id = entry.id().to_string();
                            if known(&id) {
                                collector.push_reused(path, id);
                            } else {
                                let blob =
                                    self.repo.find_blob(entry.id()).map_err(self.cache_error())?;
                                collector.push(path, blob.content().to_vec(), Some(id));
                            }
                        }
                    }
                    // Other files, and submodules (commits of other repositories).
                    _ => {}
                }
            }
        }
        Ok(collector.finish(Some(revision.to_owned())))
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
