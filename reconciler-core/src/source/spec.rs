//! What a source is: a directory, or a git repository with a reference, a subdirectory, a
//! cache and who must have signed its commits.
use std::{path::PathBuf, time::Duration};

use crate::verify::Verify;

/// Where service definitions come from.
#[derive(Clone, Debug, PartialEq)]
// One per session, never in a collection: the size of `Git` costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// How long a fetch may take.
    pub timeouts: FetchTimeouts,
}

/// How long a fetch may wait: a git server that accepts and never answers must not hold a
/// fetch (and whoever waits for it) for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchTimeouts {
    /// To connect to the server.
    pub connect: Duration,
    /// For the whole fetch; also the longest a single read from the server may wait.
    pub total: Duration,
}

impl Default for FetchTimeouts {
    /// 10 s to connect, 60 s in all (Flux's default timeout for a GitRepository).
    fn default() -> Self {
        FetchTimeouts { connect: Duration::from_secs(10), total: Duration::from_secs(60) }
    }
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
