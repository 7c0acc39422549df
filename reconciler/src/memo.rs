//! What the incremental path (`pipeline`'s `incremental`) reuses between runs: what each git blob
//! validated to on its own, and the map state the last apply left.
//!
//! Both are keyed by content and by this build: parse results by blob id, the record by the
//! generation and revision the maps themselves record, and the whole by `BUILD_ID` (a digest
//! of this build's sources), so a build whose rules differ never reads them. The CLI keeps
//! them in a file under the cache directory, the daemon in memory. A file that is damaged,
//! cut short, another build's or not authenticated is ignored and rebuilt, never trusted;
//! and what it records of the maps is confirmed against the maps before anything is written.
//!
//! The file is authenticated by an HMAC-SHA256 under this node's key (`node.key` beside it,
//! 32 random bytes, readable by this user alone: `private_dir::node_key`): parse results are
//! trusted by blob id, so a memo edited with its checksum recomputed would otherwise put
//! content that no signed commit holds into an apply. One copied from another node, or
//! written by anyone without the key, is ignored.
use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use reconciler_core::{limits, model::Service, private_dir, state::MapState};

/// The directory under the cache directory that holds memo files and the node's key.
const MEMO_DIR: &str = "memo";

/// A digest of the sources this binary was built from (see `build.rs`).
pub const BUILD_ID: &str = env!("RECONCILER_BUILD_ID");

/// The file's first bytes; then the build ID, the HMAC-SHA256 of the rest, and the rest.
const MAGIC: &[u8; 16] = b"reconciler-memo\n";

/// What one run leaves for the next.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memo {
    /// Blob id -> the services that file validated to on its own (schema and model); shared
    /// with the definitions of every run that reuses them, not copied.
    pub parsed: BTreeMap<String, Vec<Arc<Service>>>,
    /// The state of the maps after the last apply (or a plan that found them unchanged).
    pub record: Option<Record>,
    /// Whether anything was learned since it was loaded (what is unchanged is not written).
    #[serde(skip)]
    pub changed: bool,
}

/// What both map sets held, as of one generation of one data plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub pin_path: String,
    pub generation: u64,
    /// The commit applied.
    pub revision: String,
    /// Where it came from: [`crate::pipeline::Tree::source`].
    pub source: String,
    /// Its definition files: path -> blob id.
    pub files: BTreeMap<String, String>,
    /// Both sets' entries (they are equal after an apply) and the health exclusions.
    pub state: MapState,
}

/// Why a memo file was not used.
#[derive(Debug, thiserror::Error)]
pub enum MemoError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {reason}; ignored", path.display())]
    Unusable { path: PathBuf, reason: &'static str },
    #[error("{}: {error}", path.display())]
    Encode { path: PathBuf, error: postcard::Error },
}

impl Memo {
    /// The memo file for the data plane at `pin_path` fed from `source`, under `cache_dir`.
    pub fn path(cache_dir: &Path, pin_path: &Path, source: &str) -> PathBuf {
        let key = sha2::Sha256::digest(format!("{}\0{source}", pin_path.display()).as_bytes());
        let name: String = key.iter().take(12).map(|b| format!("{b:02x}")).collect();
        cache_dir.join(MEMO_DIR).join(format!("{name}.bin"))
    }

    /// The memo at `path`: empty if there is none, and empty with the reason if it cannot be
    /// trusted (the caller says so and goes on: it is only a cache).
    pub fn load(path: &Path) -> (Memo, Option<MemoError>) {
        match Self::read(path) {
            Ok(memo) => (memo, None),
            Err(MemoError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                (Memo::default(), None)
            }
            Err(e) => (Memo::default(), Some(e)),
        }
    }

    fn read(path: &Path) -> Result<Memo, MemoError> {
        let io = |error| MemoError::Io { path: path.to_owned(), error };
        let unusable = |reason| MemoError::Unusable { path: path.to_owned(), reason };
        if let Some(dir) = path.parent().filter(|dir| dir.exists()) {
            private_dir::check(dir).map_err(|_| unusable("in a directory others can change"))?;
        }
        // The header first: a file that is no memo of this build is not read on.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut header = vec![0; MAGIC.len() + BUILD_ID.len() + 32];
        if file.read_exact(&mut header).is_err() || &header[..MAGIC.len()] != MAGIC {
            return Err(unusable("not a memo file"));
        }
        let (build, tag) = header[MAGIC.len()..].split_at(BUILD_ID.len());
        if build != BUILD_ID.as_bytes() {
            return Err(unusable("written by another build"));
        }
        let key = node_key(path).map_err(io)?;
        let mut body = Vec::new();
        file.take(limits::MAX_MEMO_BYTES + 1).read_to_end(&mut body).map_err(io)?;
        if body.len() as u64 > limits::MAX_MEMO_BYTES {
            return Err(unusable("larger than any memo"));
        }
        let body = &body[..];
        if authenticator(&key, body).map_err(io)?.verify_slice(tag).is_err() {
            return Err(unusable("damaged, or not written on this node (its HMAC does not match)"));
        }
        postcard::from_bytes(body).map_err(|_| unusable("damaged (does not decode)"))
    }

    /// Writes the memo to `path` atomically (a new file renamed over the old one), in a
    /// directory only this user can change (`private_dir`).
    pub fn save(&self, path: &Path) -> Result<(), MemoError> {
        let io = |error| MemoError::Io { path: path.to_owned(), error };
        let body = postcard::to_stdvec(self)
            .map_err(|error| MemoError::Encode { path: path.to_owned(), error })?;
        if let Some(dir) = path.parent() {
            private_dir::ensure(dir).map_err(|e| io(std::io::Error::other(e)))?;
        }
        let mut bytes = Vec::with_capacity(MAGIC.len() + BUILD_ID.len() + 32 + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(BUILD_ID.as_bytes());
        let key = node_key(path).map_err(io)?;
        bytes.extend_from_slice(&authenticator(&key, &body).map_err(io)?.finalize().into_bytes());
        bytes.extend_from_slice(&body);
        private_dir::write_atomically(path, &bytes).map_err(io)
    }

    /// Records `record`, and keeps the parses its files and `files` need.
    pub fn remember(&mut self, record: Record, files: &BTreeMap<String, String>) {
        self.record = Some(record);
        self.changed = true;
        self.trim(files);
    }

    /// Keeps only the parse results of `files` and of the recorded revision's files (the two
    /// sides of the next diff).
    pub fn trim(&mut self, files: &BTreeMap<String, String>) {
        let recorded = self.record.iter().flat_map(|r| r.files.values());
        let keep: std::collections::BTreeSet<&String> = files.values().chain(recorded).collect();
        let before = self.parsed.len();
        self.parsed.retain(|blob, _| keep.contains(blob));
        self.changed |= self.parsed.len() != before;
    }
}

/// The file of this node's key, in the memo directory.
const NODE_KEY_FILE: &str = "node.key";

/// This node's key for the memo at `path`: `node.key` in its directory (which the caller
/// checked, or made, private), made on first use.
fn node_key(path: &Path) -> std::io::Result<[u8; 32]> {
    private_dir::node_key(&path.with_file_name(NODE_KEY_FILE))
}

/// This node's key under `cache_dir` (the one memo files there are authenticated with), made
/// on first use, its directory made private; saved plans are signed with it too.
pub fn node_key_in(cache_dir: &Path) -> std::io::Result<[u8; 32]> {
    let dir = cache_dir.join(MEMO_DIR);
    private_dir::ensure(&dir).map_err(std::io::Error::other)?;
    private_dir::node_key(&dir.join(NODE_KEY_FILE))
}

/// [`node_key_in`], if this node has made one (None if not: nothing was signed with it), in a
/// directory only this user can change.
pub fn existing_node_key_in(cache_dir: &Path) -> std::io::Result<Option<[u8; 32]>> {
    let dir = cache_dir.join(MEMO_DIR);
    if !dir.exists() {
        return Ok(None);
    }
    private_dir::check(&dir).map_err(std::io::Error::other)?;
    match private_dir::existing_node_key(&dir.join(NODE_KEY_FILE)) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        found => found.map(Some),
    }
}

/// The HMAC-SHA256 of `body` under `key`, to finish or verify.
fn authenticator(key: &[u8; 32], body: &[u8]) -> std::io::Result<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(std::io::Error::other)?;
    mac.update(body);
    Ok(mac)
}
