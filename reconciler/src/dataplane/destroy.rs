//! Connected UDP sockets whose backend an apply took away are destroyed, so the
//! application's next call fails (`ECONNABORTED`) and it connects again, through the live
//! set. Without this a connected UDP socket keeps sending to a removed backend for ever (the
//! most reported pain of Cilium's socket LB). Unconnected sockets are left alone (their next
//! `sendto()` is translated afresh) and so are TCP sockets (the backend's RST ends them).
//!
//! How: the `udp_records` socket iterator (`records`) lists the connected UDP sockets of a
//! network namespace whose record (`SOCKETS`, the socket's own storage) names a backend, with
//! their cookies; netlink `SOCK_DESTROY` over `inet_diag` (`CONFIG_INET_DIAG_DESTROY`)
//! destroys those whose backend is doomed, named exactly by 4-tuple and cookie. The record
//! lives with the socket, so no number of other translations in between can hide one (an
//! LRU could). `sock_diag` itself cannot read socket storage of UDP sockets (the kernel
//! fills `INET_DIAG_SK_BPF_STORAGES` for TCP only), and the iterator cannot destroy: the
//! `bpf_sock_destroy` kfunc needs kfunc relocations, which aya 0.14 does not make. Both
//! see one network namespace at a time, so every namespace a socket may live in is visited
//! (`namespaces`: those of tasks, mounts, open files, and sockets held from elsewhere).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
    path::Path,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

use super::{
    encode,
    error::{io_err, Result},
    namespaces::Namespaces,
    records::{self, UdpRecords},
};

/// Destroys the connected UDP sockets whose record (`SOCKETS`, in the data plane pinned at
/// `pin_path`) names one of the backend IDs `doomed` (ID -> address) and that are still
/// connected to that backend, in every network namespace (`namespaces`); returns how many
/// were destroyed.
pub(super) fn connected_udp_sockets(
    pin_path: &Path,
    doomed: &BTreeMap<u32, SocketAddr>,
) -> Result<usize> {
    // The set is flipped already, so no socket connects to a doomed backend after the dump.
    let addresses: BTreeSet<SocketAddr> = doomed.values().map(|a| canonical(*a)).collect();
    if addresses.is_empty() {
        return Ok(0);
    }
    let candidates = connected_to(&addresses).map_err(io_err("listing network namespaces"))?;
    if candidates.is_empty() {
        return Ok(0);
    }
    // Loading the iterator (the kernel's BTF, the verifier) costs far more than a dump: only
    // namespaces where some socket is connected to a doomed backend's address are read.
    let ids: BTreeSet<u32> = doomed.keys().copied().collect();
    let doomed = &ids;
    let records = UdpRecords::load(pin_path)?;
    let mut destroyed = 0;
    for (namespace, sockets) in candidates {
        let link = records.link();
        // setns() changes the calling thread's namespace only: a thread of its own.
        destroyed += std::thread::scope(|scope| {
            scope
                .spawn(|| in_namespace(&namespace, link, doomed, sockets))
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the socket-destroying thread panicked")))
        })
        .map_err(io_err("destroying the connected UDP sockets of removed backends"))?;
    }
    Ok(destroyed)
}

/// A connected UDP socket: its family, ID and peer.
type Connected = (u8, SocketId, SocketAddr);

/// The network namespaces with UDP sockets connected to one of `addresses`, and those
/// sockets: first of the namespaces tasks, mounts and files hold, then of those only the
/// sockets of processes hold (see `namespaces`).
fn connected_to(addresses: &BTreeSet<SocketAddr>) -> io::Result<Vec<(fs::File, Vec<Connected>)>> {
    let mut namespaces = Namespaces::visible()?;
    let mut candidates = Vec::new();
    let mut known = BTreeSet::new();
    for namespace in &namespaces.files {
        let (inodes, sockets) = udp_sockets_in(namespace, addresses)?;
        known.extend(inodes);
        if !sockets.is_empty() {
            candidates.push((namespace.try_clone()?, sockets));
        }
    }
    let hidden =
        namespaces.of_hidden_sockets(&mut known, |ns| Ok(udp_sockets_in(ns, addresses)?.0))?;
    for namespace in hidden {
        let (_, sockets) = udp_sockets_in(&namespace, addresses)?;
        if !sockets.is_empty() {
            candidates.push((namespace, sockets));
        }
    }
    Ok(candidates)
}

/// In namespace `namespace`: the inodes of its UDP sockets, and those connected to one of
/// `addresses`.
fn udp_sockets_in(
    namespace: &fs::File,
    addresses: &BTreeSet<SocketAddr>,
) -> io::Result<(BTreeSet<u64>, Vec<Connected>)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // A namespace that cannot be entered (gone meanwhile) has no socket to find.
                if enter(namespace).is_err() {
                    return Ok((BTreeSet::new(), Vec::new()));
                }
                let (inodes, mut sockets) = udp_sockets(&diag_socket()?)?;
                sockets.retain(|(_, _, peer)| addresses.contains(peer));
                Ok((inodes, sockets))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the socket-listing thread panicked")))
    })
}

/// Moves the calling thread into the network namespace `namespace`.
fn enter(namespace: &fs::File) -> io::Result<()> {
    // SAFETY: a file descriptor of a network namespace, open for the call.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In a thread of its own: enters `namespace`, reads its connected UDP sockets' records
/// through `link` and destroys those of `sockets` whose record names a doomed backend.
fn in_namespace(
    namespace: &fs::File,
    link: BorrowedFd<'_>,
    doomed: &BTreeSet<u32>,
    sockets: Vec<Connected>,
) -> io::Result<usize> {
    enter(namespace)?;
    let targets: BTreeMap<u64, SocketAddr> = records::read(link)?
        .into_iter()
        .filter(|found| doomed.contains(&found.backend_id))
        .map(|found| {
            let backend = encode::words_to_addr(&found.backend);
            (found.cookie, canonical(SocketAddr::new(backend, u16::from_be(found.backend_port))))
        })
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    in_this_namespace(&targets, sockets)
}

/// Whether this kernel destroys sockets on request: it is asked to destroy a connected UDP
/// socket of this process's own, on loopback (a UDP connect sends nothing). `false` where it
/// answers `EOPNOTSUPP` (built without `CONFIG_INET_DIAG_DESTROY`) or has no `sock_diag`.
pub fn supported() -> io::Result<bool> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
    probe.connect("127.0.0.1:9")?;
    let (local, peer) = (probe.local_addr()?, probe.peer_addr()?);
    let socket = match diag_socket() {
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(false),
        socket => socket?,
    };
    let socket_id = SocketId {
        source_port: local.port(),
        destination_port: peer.port(),
        source_address: local.ip(),
        destination_address: peer.ip(),
        interface_id: 0,
        // All ones: no cookie to match, the 4-tuple names the socket.
        cookie: [0xff; 8],
    };
    match destroy_one(&socket, AF_INET, socket_id)? {
        Answer::Destroyed | Answer::Gone => Ok(true),
        Answer::Unsupported => Ok(false),
        Answer::Refused(error) => Err(error),
    }
}

/// A `sock_diag` netlink socket of this thread's network namespace.
fn diag_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// Destroys the UDP sockets among `targets` (socket cookie -> the backend it was connected
/// to) that `sockets` lists still connected to that backend, in this thread's network
/// namespace.
fn in_this_namespace(
    targets: &BTreeMap<u64, SocketAddr>,
    sockets: Vec<Connected>,
) -> io::Result<usize> {
    let socket = diag_socket()?;
    let doomed: Vec<(u8, SocketId)> = sockets
        .into_iter()
        .filter(|(_, id, peer)| targets.get(&cookie(&id.cookie)) == Some(peer))
        .map(|(family, id, _)| (family, id))
        .collect();
    // Every socket is tried, whatever an earlier one's answer. The first refusal is the error.
    let (mut destroyed, mut first_error) = (0, None);
    for (family, socket_id) in doomed {
        match destroy_one(&socket, family, socket_id).and_then(self::destroyed) {
            Ok(done) => destroyed += usize::from(done),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(destroyed), Err)
}

/// The inodes of the UDP sockets of this thread's network namespace, and the connected ones.
fn udp_sockets(socket: &Socket) -> io::Result<(BTreeSet<u64>, Vec<Connected>)> {
    let (mut inodes, mut connected) = (BTreeSet::new(), Vec::new());
    for family in [AF_INET, AF_INET6] {
        let request = InetRequest {
            family,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() },
        };
        send(socket, NLM_F_REQUEST | NLM_F_DUMP, SockDiagMessage::InetRequest(request))?;
        receive(socket, |message: NetlinkMessage<SockDiagMessage>| match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let header = response.header;
                inodes.insert(u64::from(header.inode));
                // TCP_ESTABLISHED: what the kernel calls a connected UDP socket.
                if header.state == 1 {
                    let id = header.socket_id;
                    let peer =
                        canonical(SocketAddr::new(id.destination_address, id.destination_port));
                    connected.push((header.family, id, peer));
                }
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) => Err(io::Error::other(format!("sock_diag dump: {e:?}"))),
            _ => Ok(false),
        })?;
    }
    Ok((inodes, connected))
}

/// Asks the kernel to destroy the UDP socket `socket_id` of `family`; its answer.
fn destroy_one(socket: &Socket, family: u8, socket_id: SocketId) -> io::Result<Answer> {
    let request = InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    };
    let message = SockDiagDestroy::new(SockDiagMessage::InetRequest(request));
    send(socket, NLM_F_REQUEST | NLM_F_ACK, message)?;
    let mut code = None;
    receive(socket, |message: NetlinkMessage<SockDiagDestroy>| match message.payload {
        NetlinkPayload::Error(e) => {
            code = e.code;
            Ok(true)
        }
        _ => Ok(false),
    })?;
    Ok(answer(code))
}

/// The kernel's answer to one `SOCK_DESTROY`.
#[derive(Debug)]
enum Answer {
    /// An ACK (an error message without an error).
    Destroyed,
    /// `ENOENT`: the socket closed meanwhile.
    Gone,
    /// `EOPNOTSUPP`: a kernel built without `CONFIG_INET_DIAG_DESTROY`.
    Unsupported,
    /// Any other error.
    Refused(io::Error),
}

fn answer(code: Option<std::num::NonZeroI32>) -> Answer {
    match code.map(|code| -code.get()) {
        None => Answer::Destroyed,
        Some(libc::ENOENT) => Answer::Gone,
        Some(libc::EOPNOTSUPP) => Answer::Unsupported,
        Some(errno) => Answer::Refused(io::Error::from_raw_os_error(errno)),
    }
}

/// Whether an answer in an apply destroyed the socket; anything but a socket gone is an
/// error, never a silent no-op: where the kernel cannot destroy, connected UDP sockets of
/// removed backends keep sending to them, and the apply says so.
fn destroyed(answer: Answer) -> io::Result<bool> {
    match answer {
        Answer::Destroyed => Ok(true),
        Answer::Gone => Ok(false),
        Answer::Unsupported => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel cannot destroy sockets (built without CONFIG_INET_DIAG_DESTROY): \
             connected UDP sockets of removed backends keep sending to them",
        )),
        Answer::Refused(error) => {
            Err(io::Error::new(error.kind(), format!("SOCK_DESTROY: {error}")))
        }
    }
}

/// The kernel's socket cookie from `inet_diag_sockid.idiag_cookie`: two host-order 32-bit
/// words, low word first.
fn cookie(words: &[u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([words[0], words[1], words[2], words[3]]);
    let high = u32::from_ne_bytes([words[4], words[5], words[6], words[7]]);
    u64::from(low) | (u64::from(high) << 32)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn send<T>(socket: &Socket, flags: u16, payload: T) -> io::Result<()>
where
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug + Clone + PartialEq + Eq,
    NetlinkPayload<T>: From<T>,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, payload.into());
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    Ok(())
}

/// Reads messages and hands each to `handle` until it says it saw the last one.
fn receive<T>(
    socket: &Socket,
    mut handle: impl FnMut(NetlinkMessage<T>) -> io::Result<bool>,
) -> io::Result<()>
where
    T: netlink_packet_core::NetlinkDeserializable + std::fmt::Debug,
{
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<T>::deserialize(&buffer[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            if handle(message)? {
                return Ok(());
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use super::*;

    #[test]
    fn a_refused_destroy_is_an_error_not_a_socket_already_gone() {
        let code = |errno: i32| NonZeroI32::new(-errno);
        assert!(destroyed(answer(None)).unwrap());
        assert!(!destroyed(answer(code(libc::ENOENT))).unwrap());
        assert!(matches!(answer(code(libc::EOPNOTSUPP)), Answer::Unsupported));
        let unsupported = destroyed(answer(code(libc::EOPNOTSUPP))).unwrap_err().to_string();
        assert!(unsupported.contains("CONFIG_INET_DIAG_DESTROY"), "{unsupported}");
        let denied = destroyed(answer(code(libc::EPERM))).unwrap_err().to_string();
        assert!(denied.starts_with("SOCK_DESTROY: "), "{denied}");
    }
}
