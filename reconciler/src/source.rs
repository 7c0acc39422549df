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

use git2::{
    AutotagOption, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune, FileMode, ObjectType,
    Oid, RemoteCallbacks, Repository, Tree,
};

/// Where service definitions come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A plain directory, read as it is (no git).
    Dir(PathBuf),
    Git(GitSpec),
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// The definition files of one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The full commit id (40 or 64 hex chars) for git; None for a Dir source.
    pub revision: Option<String>,
    /// The .yaml/.yml files under the subdir (recursively), sorted by path.
    pub files: Vec<SourceFile>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path as people should see it in error messages: relative to the repository root for git
    /// (e.g. "services/team-a/web.yaml"), the directory as given joined with the relative path
    /// for Dir (e.g. "examples/policies/team-web/web.yaml").
    pub path: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("fetching {url}: {source}")]
    Fetch { url: String, source: git2::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("git cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: git2::Error },
    #[error("{url} has no commit at HEAD (an empty repository, or its default branch has none)")]
    Empty { url: String },
    #[error("ref `{reference}` is neither a branch, a tag nor a commit of {url}")]
    UnknownRef { reference: String, url: String },
    #[error("ref `{reference}` is a commit id prefix shared by several objects of {url}")]
    AmbiguousRef { reference: String, url: String },
    #[error("subdirectory `{}` not found at {revision}", subdir.display())]
    SubdirNotFound { subdir: PathBuf, revision: String },
    #[error("{path}{}: {problem}", at(.revision))]
    File { path: String, revision: Option<String>, problem: &'static str },
}

fn at(revision: &Option<String>) -> String {
    revision.as_ref().map(|r| format!(" at {r}")).unwrap_or_default()
}

impl SourceError {
    /// Whether trying again later may succeed (network, servers, disks) as opposed to a
    /// problem with what the repository or the spec says.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Fetch { .. } | SourceError::Io { .. })
    }
}

/// Fetches (git) or reads (dir) and returns one snapshot.
pub fn fetch(spec: &SourceSpec) -> Result<Snapshot, SourceError> {
    match spec {
        SourceSpec::Dir(dir) => read_dir(dir),
        SourceSpec::Git(git) => {
            let cache = Cache::open(git)?;
            cache.fetch(git)?;
            let commit = cache.resolve(git.reference.as_deref())?;
            cache.snapshot(commit, git.subdir.as_deref())
        }
    }
}

/// For a Git spec: the snapshot of another revision `rev` (branch, tag or commit) of the same
/// repository, read from the cache that `fetch` filled; fetches first if `rev` is not there.
pub fn snapshot_at(spec: &GitSpec, rev: &str) -> Result<Snapshot, SourceError> {
    let cache = Cache::open(spec)?;
    let commit = match cache.resolve(Some(rev)) {
        Err(SourceError::UnknownRef { .. }) => {
            cache.fetch(spec)?;
            cache.resolve(Some(rev))?
        }
        resolved => resolved?,
    };
    cache.snapshot(commit, spec.subdir.as_deref())
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

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Sorts like paths (component by component), so a directory's files stay together.
fn sort_by_path(files: &mut [SourceFile]) {
    files.sort_by(|a, b| Path::new(&a.path).cmp(Path::new(&b.path)));
}

fn read_dir(dir: &Path) -> Result<Snapshot, SourceError> {
    let mut files = Vec::new();
    collect_dir(dir, &mut files)?;
    sort_by_path(&mut files);
    Ok(Snapshot { revision: None, files })
}

fn collect_dir(dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), SourceError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if is_yaml(&path.to_string_lossy()) {
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            let path = path.display().to_string();
            match String::from_utf8(bytes) {
                Ok(text) => out.push(SourceFile { path, text }),
                Err(_) => {
                    return Err(SourceError::File { path, revision: None, problem: "not UTF-8" })
                }
            }
        }
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_owned();
    |source| SourceError::Io { path, source }
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
    fn open(spec: &GitSpec) -> Result<Cache, SourceError> {
        let url = absolute_url(&spec.url)?;
        let path = spec.cache_dir.join(cache_name(&url));
        let repo = match Repository::open_bare(&path) {
            Err(e) if e.code() == ErrorCode::NotFound => Repository::init_bare(&path),
            opened => opened,
        }
        .map_err(|source| SourceError::Cache { path: path.clone(), source })?;
        Ok(Cache { repo, url, path })
    }

    fn cache_error(&self) -> impl Fn(git2::Error) -> SourceError + '_ {
        |source| SourceError::Cache { path: self.path.clone(), source }
    }

    fn fetch(&self, spec: &GitSpec) -> Result<(), SourceError> {
        let fetch_error = |source| SourceError::Fetch { url: self.url.clone(), source };
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

    fn snapshot(&self, commit: Oid, subdir: Option<&Path>) -> Result<Snapshot, SourceError> {
        let revision = commit.to_string();
        let root =
            self.repo.find_commit(commit).and_then(|c| c.tree()).map_err(self.cache_error())?;
        let Some(subdir) = subdir else {
            return self.files(&root, "", &revision);
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
            return self.files(&root, "", &revision);
        }
        let entry = root.get_path(Path::new(&prefix)).map_err(|_| not_found())?;
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(not_found());
        }
        let tree = self.repo.find_tree(entry.id()).map_err(self.cache_error())?;
        self.files(&tree, &prefix, &revision)
    }

    fn files(&self, tree: &Tree, prefix: &str, revision: &str) -> Result<Snapshot, SourceError> {
        let mut files = Vec::new();
        self.collect(tree, prefix, revision, &mut files)?;
        sort_by_path(&mut files);
        Ok(Snapshot { revision: Some(revision.to_owned()), files })
    }

    fn collect(
        &self,
        tree: &Tree,
        prefix: &str,
        revision: &str,
        out: &mut Vec<SourceFile>,
    ) -> Result<(), SourceError> {
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path =
                if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") };
            let file_error = |problem| SourceError::File {
                path: path.clone(),
                revision: Some(revision.to_owned()),
                problem,
            };
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let subtree = self.repo.find_tree(entry.id()).map_err(self.cache_error())?;
                    self.collect(&subtree, &path, revision, out)?;
                }
                Some(ObjectType::Blob) if is_yaml(&path) => {
                    // A link's blob is its target's name; skipping it would silently drop services.
                    if entry.filemode() == i32::from(FileMode::Link) {
                        return Err(file_error(
                            "a symbolic link, which a git source does not follow",
                        ));
                    }
                    let blob = self.repo.find_blob(entry.id()).map_err(self.cache_error())?;
                    let text = std::str::from_utf8(blob.content())
                        .map_err(|_| file_error("not UTF-8"))?
                        .to_owned();
                    out.push(SourceFile { path, text });
                }
                // Other files, and submodules (commits of other repositories).
                _ => {}
            }
        }
        Ok(())
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
        .map_err(|source| SourceError::Io { path: url.into(), source })
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
