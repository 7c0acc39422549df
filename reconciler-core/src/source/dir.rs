//! Reading plain files and directories: a `Dir` source, and `validate PATH...`.
use std::path::{Path, PathBuf};

use globset::GlobSet;

use super::{
    collect::{is_yaml, Collector, LINK_NOT_FOLLOWED},
    error::{io_error, SourceError},
    snapshot::Snapshot,
};
use crate::limits;

/// Reads plain files and directories: a directory is searched for `.yaml`/`.yml` files, a
/// file named directly is read whatever its name. Inside a directory no symbolic link is
/// followed (a link named like a definition file is a problem; other links are listed as
/// skipped), no other filesystem is entered (like `find -xdev`: `validate /` does not walk
/// /proc), and `.git` directories are passed over.
pub fn read_paths(paths: &[PathBuf]) -> Result<Snapshot, SourceError> {
    read_paths_with(paths, &Walk::default())
}

/// How a directory is searched, beyond [`read_paths`]' rules.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Files and directories left out, by their path below the directory searched.
    pub exclude: GlobSet,
    /// Search every directory as a repository's root is: see [`read_paths_with`].
    pub discover: bool,
    /// Search a directory that holds `.git` as a repository's root (`validate`'s walk; a
    /// `--dir` source reads every file: one that is no definition is an error there).
    pub at_repository_roots: bool,
}

impl Walk {
    /// `validate`'s walk: leaving out what the globs `exclude` match (`staging/**`,
    /// `*.draft.yaml`), searching repositories' roots as such, and every directory if
    /// `discover`.
    pub fn new(exclude: &[String], discover: bool) -> Result<Walk, globset::Error> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in exclude {
            set.add(globset::Glob::new(pattern)?);
        }
        Ok(Walk { exclude: set.build()?, discover, at_repository_roots: true })
    }
}

/// [`read_paths`], `walk`'s files left out. A directory searched with `walk.discover`, or
/// one that holds `.git` with `walk.at_repository_roots`, holds more than definitions (CI workflows,
/// tools' configurations): there only files that say `apiVersion: reconciler.dev/...` are
/// definitions (the others are listed as skipped), and dot-files and -directories are
/// passed over.
pub fn read_paths_with(paths: &[PathBuf], walk: &Walk) -> Result<Snapshot, SourceError> {
    let mut collector = Collector::default();
    for path in paths {
        // What the user named is followed, like `find -H`; nothing below it is.
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        if meta.is_dir() {
            let discover =
                walk.discover || (walk.at_repository_roots && path.join(".git").exists());
            walk_dir(path, &Searching { walk, discover }, &mut collector)?;
        } else if meta.is_file() {
            read_file(path, false, &mut collector)?;
        } else {
            return Err(SourceError::NotAFile { path: path.clone() });
        }
    }
    Ok(collector.finish(None))
}

/// How one directory is searched.
struct Searching<'a> {
    walk: &'a Walk,
    discover: bool,
}

impl Searching<'_> {
    /// Whether `path` (below `root`) is left out.
    fn leaves_out(&self, root: &Path, path: &Path) -> bool {
        let below = path.strip_prefix(root).unwrap_or(path);
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        self.walk.exclude.is_match(below) || (self.discover && hidden)
    }
}

/// Whether `text` says it is a definition: a line `apiVersion: reconciler.dev/...`.
fn says_definition(text: &[u8]) -> bool {
    String::from_utf8_lossy(text).lines().any(|line| {
        let line = line.trim_start_matches('\u{feff}');
        line.strip_prefix("apiVersion:").is_some_and(|value| {
            value.trim_start().trim_start_matches(['"', '\'']).starts_with("reconciler.dev/")
        })
    })
}

/// `path` as people see it: `web.yaml` for `./web.yaml` (what searching `.` finds), which is
/// also how GitHub's annotations name a file.
fn shown(path: &Path) -> String {
    path.strip_prefix(".").unwrap_or(path).display().to_string()
}

/// Why a file is not read at a repository's root.
const NOT_A_DEFINITION: &str =
    "no `apiVersion: reconciler.dev/...` line, so not a definition (at a repository's root)";

/// Every definition file under `root`, without recursion (a hostile tree can be deep).
fn walk_dir(root: &Path, how: &Searching, collector: &mut Collector) -> Result<(), SourceError> {
    use std::os::unix::fs::MetadataExt as _;
    let device = std::fs::metadata(root).map_err(io_error(root))?.dev();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            // The entry's own type: a link is a link, wherever it points.
            let kind = entry.file_type().map_err(io_error(&path))?;
            let shown = shown(&path);
            if kind.is_dir() {
                // The entry's own metadata (lstat): a mount point has the mounted device.
                let here = entry.metadata().map_err(io_error(&path))?.dev();
                if here != device {
                    let reason = "another filesystem mounted here, which reconciler does not enter";
                    collector.skip(shown, reason);
                } else if entry.file_name() != ".git" && !how.leaves_out(root, &path) {
                    pending.push(path);
                }
            } else if kind.is_symlink() {
                if is_yaml(&shown) {
                    collector.problem(&shown, LINK_NOT_FOLLOWED);
                } else {
                    collector.skip(shown, LINK_NOT_FOLLOWED);
                }
            } else if is_yaml(&shown) && !how.leaves_out(root, &path) {
                read_file(&path, how.discover, collector)?;
            }
        }
    }
    Ok(())
}

/// Reads one file, refusing links, devices, FIFOs and files over the limits before reading;
/// `discovering`: skipping it unless it says it is a definition.
fn read_file(path: &Path, discovering: bool, collector: &mut Collector) -> Result<(), SourceError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let shown = shown(path);
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
    if discovering && !says_definition(&bytes) {
        collector.skip(shown, NOT_A_DEFINITION);
        return Ok(());
    }
    collector.push(shown, bytes, None);
    Ok(())
}
