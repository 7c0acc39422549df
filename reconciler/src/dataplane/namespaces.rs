//! Every network namespace a socket the data plane connected may live in, for `destroy`,
//! whose tools (`sock_diag`, the socket iterator) see one namespace at a time.
//!
//! The kernel keeps a namespace while anything refers to it: a task in it (any thread of any
//! process), a bind mount of it (`ip netns add` under /run/netns, a container runtime's), an
//! open file of it, or a socket of it. A socket kept by a process that moved to another
//! namespace keeps its own with no task, mount or file in it. The first three are found in
//! /proc (`task/*/ns/net`, `mountinfo`, `fd/*`); the last from the UDP sockets that processes
//! hold and that none of those namespaces has: `ioctl(SIOCGSKNS)` on such a socket (taken
//! with `pidfd_getfd(2)`, Linux 5.6+) opens its namespace.
//!
//! Cost: a `stat` per task, a `readlink` per open file, a `getxattr` per socket that no
//! visible namespace has (the protocol's name), and three calls per such UDP socket; only
//! when an apply takes a backend away.
use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

/// `SIOCGSKNS` (linux/sockios.h): a socket's network namespace, as a new file descriptor.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The namespaces found, each open once (an open file keeps its namespace for us even if
/// what held it goes before we enter it), and the sockets processes hold.
#[derive(Default)]
pub(super) struct Namespaces {
    pub files: Vec<fs::File>,
    seen: BTreeSet<(u64, u64)>,
    /// (PID, fd, socket inode) of every socket an open file of a process is.
    sockets: Vec<(u32, i32, u64)>,
}

impl Namespaces {
    /// The namespaces of every task, bind mount and open namespace file, and the sockets
    /// processes hold.
    pub(super) fn visible() -> io::Result<Namespaces> {
        let mut found = Namespaces::default();
        for entry in fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // A process may end while we look: what is gone is skipped.
            found.of_tasks(pid);
            found.of_files(pid);
        }
        for mount in nsfs_mounts(&fs::read_to_string("/proc/self/mountinfo")?) {
            found.add_path(&mount);
        }
        Ok(found)
    }

    fn of_tasks(&mut self, pid: u32) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return };
        for task in tasks.flatten() {
            self.add_path(&task.path().join("ns/net"));
        }
    }

    fn of_files(&mut self, pid: u32) {
        let Ok(files) = fs::read_dir(format!("/proc/{pid}/fd")) else { return };
        for file in files.flatten() {
            let Ok(target) = fs::read_link(file.path()) else { continue };
            let target = target.to_string_lossy();
            if target.starts_with("net:[") {
                self.add_path(&file.path());
            } else if let Some(inode) = bracketed(&target, "socket:[") {
                let fd = file.file_name().to_str().and_then(|n| n.parse().ok());
                if let Some(fd) = fd {
                    self.sockets.push((pid, fd, inode));
                }
            }
        }
    }

    /// Adds the namespace at `path` (a `ns/net` link, a namespace file, a bind mount) unless
    /// it is one already found; compared by `stat` before it is opened.
    fn add_path(&mut self, path: &Path) {
        let Ok(meta) = fs::metadata(path) else { return };
        if self.seen.contains(&(meta.dev(), meta.ino())) {
            return;
        }
        if let Ok(file) = fs::File::open(path) {
            self.add(file);
        }
    }

    fn add(&mut self, file: fs::File) -> bool {
        let Ok(meta) = file.metadata() else { return false };
        let new = self.seen.insert((meta.dev(), meta.ino()));
        if new {
            self.files.push(file);
        }
        new
    }

    /// The namespaces of UDP sockets processes hold whose inodes are not in `known` (the UDP
    /// sockets of the namespaces found so far), added and returned; `known` grows by
    /// `inodes_of` each new one.
    pub(super) fn of_hidden_sockets(
        &mut self,
        known: &mut BTreeSet<u64>,
        inodes_of: impl Fn(&fs::File) -> io::Result<BTreeSet<u64>>,
    ) -> io::Result<Vec<fs::File>> {
        let mut hidden = Vec::new();
        for (pid, fd, inode) in std::mem::take(&mut self.sockets) {
            if known.contains(&inode) || !is_udp(pid, fd) {
                continue;
            }
            let Ok(namespace) = namespace_of_socket(pid, fd) else { continue };
            let Ok(clone) = namespace.try_clone() else { continue };
            if self.add(namespace) {
                known.extend(inodes_of(&clone)?);
                hidden.push(clone);
            }
        }
        Ok(hidden)
    }
}

/// The number in `text` after `prefix` and before `]`.
fn bracketed(text: &str, prefix: &str) -> Option<u64> {
    text.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// Where network namespaces are bind-mounted, from `mountinfo` (proc(5)): the mount point of
/// each `nsfs` mount whose root is a network namespace, with its octal escapes undone.
fn nsfs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = fields.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else { continue };
        if rest.split(' ').next() == Some("nsfs") && root.starts_with("net:[") {
            mounts.push(PathBuf::from(unescape(point)));
        }
    }
    mounts
}

/// `mountinfo`'s `\NNN` octal escapes (space, tab, newline, backslash) undone.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether fd `fd` of process `pid` is a UDP socket: its protocol's name, which sockfs gives
/// as the `system.sockprotoname` attribute, without taking the socket.
fn is_udp(pid: u32, fd: i32) -> bool {
    let Ok(path) = CString::new(format!("/proc/{pid}/fd/{fd}")) else { return false };
    let mut name = [0u8; 16];
    // SAFETY: both strings are NUL-terminated; the kernel writes at most `name.len()` bytes.
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            name.as_mut_ptr().cast(),
            name.len(),
        )
    };
    let name = usize::try_from(size).ok().and_then(|size| name.get(..size)).unwrap_or_default();
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    name == b"UDP" || name == b"UDPv6"
}

/// The network namespace of socket `fd` of process `pid`.
fn namespace_of_socket(pid: u32, fd: i32) -> io::Result<fs::File> {
    let owned = |rc: libc::c_long| -> io::Result<OwnedFd> {
        let fd = i32::try_from(rc).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: a new file descriptor the call returned, which nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }).ok_or_else(io::Error::last_os_error)
    };
    // SAFETY: pidfd_open takes a PID and flags, no pointers.
    let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_getfd takes a pidfd, a file descriptor number and flags, no pointers.
    let socket = owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: SIOCGSKNS takes no argument and returns a new file descriptor.
    let namespace = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
    Ok(fs::File::from(owned(libc::c_long::from(namespace))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounted_network_namespaces_are_read_from_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
540 25 0:4 net:[4026532301] /run/netns/blue rw - nsfs nsfs rw
541 25 0:4 net:[4026532302] /run/netns/with\\040space rw - nsfs nsfs rw
542 25 0:4 mnt:[4026532303] /run/mntns/x rw - nsfs nsfs rw
";
        let mounts = nsfs_mounts(mountinfo);
        assert_eq!(mounts, [PathBuf::from("/run/netns/blue"), "/run/netns/with space".into()]);
        assert_eq!(bracketed("socket:[12345]", "socket:["), Some(12345));
        assert_eq!(bracketed("pipe:[1]", "socket:["), None);
    }
}
