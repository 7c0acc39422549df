//! Reading plain files and directories: a `Dir` source, and `validate PATH...`.
use std::path::{Path, PathBuf};

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
