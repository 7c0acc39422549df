//! Directories only this user can change, for what the reconciler writes and trusts later
//! (the git cache, the memo, the daemon's journal): the rules of the pin directory. A
//! directory owned by another user, or writable by group or others, or under a directory
//! that lets someone else rename it away (another owner than root or this user, or writable
//! by others without the sticky bit), is refused: whoever controls it could plant a symbolic
//! link where the root daemon writes, or a file it reads back. Symbolic links in the path are
//! followed; the rules apply to the directories it really reaches.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Group and others may write.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// Only an entry's owner may rename or remove it (`/tmp`).
const STICKY: u32 = 0o1000;

#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "{}: owned by uid {owner}, not by this user (uid {euid}): another user could plant \
         links where reconciler writes; use a directory of this user's",
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, euid: u32 },
    #[error(
        "{}: writable by group or others (mode {mode:04o}): they could plant links where \
         reconciler writes; `chmod go-w` it",
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "{}: {} above it is {problem}, so the directory could be renamed away and replaced",
        path.display(),
        ancestor.display()
    )]
    Ancestor { path: PathBuf, ancestor: PathBuf, problem: String },
}

/// Creates `dir` if it is missing (mode 0700, and so are missing parents), and refuses it
/// unless only this user can change it (see the module docs).
pub fn ensure(dir: &Path) -> Result<(), PrivateDirError> {
    let io = |error| PrivateDirError::Io { path: dir.to_owned(), error };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    check(dir)
}

/// Refuses `dir` unless only this user can change it.
pub fn check(dir: &Path) -> Result<(), PrivateDirError> {
    let io = |error| PrivateDirError::Io { path: dir.to_owned(), error };
    let real = fs::canonicalize(dir).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let meta = fs::metadata(&real).map_err(io)?;
    if meta.uid() != euid {
        return Err(PrivateDirError::Owner { path: dir.to_owned(), owner: meta.uid(), euid });
    }
    if meta.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(PrivateDirError::Mode { path: dir.to_owned(), mode: meta.mode() & 0o7777 });
    }
    for ancestor in real.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io)?;
        let problem = if meta.uid() != 0 && meta.uid() != euid {
            format!("owned by uid {}", meta.uid())
        } else if meta.mode() & GROUP_OTHER_WRITE != 0 && meta.mode() & STICKY == 0 {
            format!("writable by others without the sticky bit (mode {:04o})", meta.mode() & 0o7777)
        } else {
            continue;
        };
        let ancestor = ancestor.to_owned();
        return Err(PrivateDirError::Ancestor { path: dir.to_owned(), ancestor, problem });
    }
    Ok(())
}

/// Writes `bytes` to `path` whole: into a new file beside it (created, never opened through
/// a symbolic link or over anything there) renamed over it. `path`'s directory must have
/// passed [`check`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    beside(path, bytes, |partial| fs::rename(partial, path))
}

/// Writes `bytes` into a new file beside `path` (mode 0600; anything already there, a
/// planted link, is an error and left alone), then `place`s it; the new file is removed
/// unless `place` moved it.
fn beside(
    path: &Path,
    bytes: &[u8],
    place: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)?;
    let placed = file.write_all(bytes).and_then(|()| place(&partial));
    let _ = fs::remove_file(&partial);
    placed
}

/// The 32-byte key in `path` (in a directory that passed [`check`]: 32 bytes, readable by
/// this user alone), made from the kernel's random numbers if there is none. Two processes
/// making it at once agree: the file is linked into place only if none is there.
pub fn node_key(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    match existing_node_key(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        found => return found,
    }
    let mut key = [0_u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    match beside(path, &key, |partial| fs::hard_link(partial, path)) {
        Ok(()) => Ok(key),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => node_key(path),
        Err(error) => Err(error),
    }
}

/// The key [`node_key`] made in `path`, never a new one (`NotFound` if there is none).
pub fn existing_node_key(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != 32 || meta.mode() & 0o077 != 0 {
        let message = format!("{}: not a key (32 bytes, mode 0600)", path.display());
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
    }
    let mut key = [0_u8; 32];
    file.read_exact(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_directory_is_private_and_a_shared_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(check(&dir), Err(PrivateDirError::Mode { mode: 0o775, .. })));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        // A parent anyone may write to, without the sticky bit: the directory can be swapped.
        let parent = root.path().join("a");
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check(&dir).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
        check(&dir).unwrap();
    }

    #[test]
    fn a_write_never_follows_a_link_planted_as_its_partial_file() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        fs::write(&target, "precious").unwrap();
        let path = root.path().join("journal.json");
        let partial = path.with_extension(format!("partial.{}", std::process::id()));
        std::os::unix::fs::symlink(&target, &partial).unwrap();
        assert!(write_atomically(&path, b"new").is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        fs::remove_file(&partial).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn the_node_key_is_made_once_and_kept_private() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("node.key");
        let key = node_key(&path).unwrap();
        assert_eq!(node_key(&path).unwrap(), key);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(node_key(&path).is_err(), "a key others may read is no key");
    }
}
