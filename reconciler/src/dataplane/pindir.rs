//! Who may change the pin directory. Whoever can write it can swap a pinned map or link for
//! their own, and whoever can write a directory above it can move it away and put another
//! in its place: either way the next apply writes what they chose. So the pin directory
//! must belong to this process's user and be writable by nobody else, and every directory
//! above it on the bpffs must belong to root or this user and be writable by nobody else
//! unless it has the sticky bit (which stops others renaming what is not theirs).
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use super::{io_err, statfs_type, DataplaneError, Result, BPF_FS_MAGIC};

/// Mode of the directories install creates.
const DIR_MODE: u32 = 0o700;
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates the missing directories of `pin_path` with mode 0700, whatever the umask; returns
/// whether it created `pin_path` itself. Creates nothing unless the deepest existing one is
/// on a bpffs and passes [`check`]'s rules for directories above the pin directory.
pub(super) fn create(pin_path: &Path) -> Result<bool> {
    let absolute = std::path::absolute(pin_path)
        .map_err(io_err(format!("resolving {}", pin_path.display())))?;
    let missing: Vec<&Path> = absolute.ancestors().take_while(|dir| !dir.exists()).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let existing = absolute.ancestors().nth(missing.len()).unwrap_or(Path::new("/"));
    let existing =
        fs::canonicalize(existing).map_err(io_err(format!("resolving {}", existing.display())))?;
    if statfs_type(&existing)? != BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs { path: pin_path.to_owned() });
    }
    check_ancestors(pin_path, &existing)?;
    let mut created = false;
    for dir in missing.into_iter().rev() {
        // Created with 0700 (less if the umask says so), never wider, so a concurrent
        // install that finds it half made still accepts it.
        created = match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => {
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        };
    }
    Ok(created)
}

/// Refuses `pin_path` unless it is a bpffs directory that only this process's user can
/// change (see the module docs). Symbolic links are followed: the rules apply to the
/// directories the path really reaches.
pub(super) fn check(pin_path: &Path) -> Result<()> {
    let real =
        fs::canonicalize(pin_path).map_err(io_err(format!("resolving {}", pin_path.display())))?;
    if statfs_type(&real)? != BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs { path: pin_path.to_owned() });
    }
    let euid = euid();
    let meta = metadata(&real)?;
    if !meta.is_dir() {
        return Err(DataplaneError::NotADirectory { path: pin_path.to_owned() });
    }
    if meta.uid() != euid {
        return Err(DataplaneError::PinDirOwner {
            path: pin_path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(DataplaneError::PinDirMode {
            path: pin_path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    match real.parent() {
        Some(parent) => check_ancestors(pin_path, parent),
        None => Ok(()),
    }
}

/// Checks `dir` and the directories above it, up to the bpffs mount point, as directories
/// above the pin directory `pin_path`.
fn check_ancestors(pin_path: &Path, dir: &Path) -> Result<()> {
    let euid = euid();
    for ancestor in dir.ancestors() {
        // The bpffs mount point cannot be renamed (EBUSY), so nothing above it can move the
        // pin directory.
        if statfs_type(ancestor)? != BPF_FS_MAGIC {
            break;
        }
        let meta = metadata(ancestor)?;
        let mode = meta.mode() & 0o7777;
        if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
            return Err(DataplaneError::AncestorMode {
                path: pin_path.to_owned(),
                ancestor: ancestor.to_owned(),
                mode,
            });
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(DataplaneError::AncestorOwner {
                path: pin_path.to_owned(),
                ancestor: ancestor.to_owned(),
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn metadata(path: &Path) -> Result<fs::Metadata> {
    fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))
}
