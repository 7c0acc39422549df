//! The `udp_records` socket iterator's side: its context and what it writes.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_seq_write, bpf_sk_storage_get};
use reconciler_common::{ConnectedUdp, SocketRecord, PROTO_UDP, RECORD_CONNECTED};

use crate::SOCKETS;

/// `struct bpf_iter_meta`, as the kernel defines it (read-only here).
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut c_void,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__udp`: the context of an `iter/udp` program. The verifier types each
/// field from the kernel's BTF, so this layout is checked at load.
#[repr(C)]
pub struct UdpContext {
    pub meta: *mut IterMeta,
    /// `struct udp_sock *`, null at the end of the iteration.
    pub udp_sk: *mut c_void,
    pub uid: u32,
    pub bucket: i32,
}

/// The `ConnectedUdp` of the context's socket, if the data plane connected it.
#[inline(always)]
pub(crate) fn connected_udp(ctx: &UdpContext) -> Option<ConnectedUdp> {
    let sk = ctx.udp_sk;
    if sk.is_null() {
        return None;
    }
    let map = core::ptr::from_ref(&SOCKETS).cast_mut().cast();
    // SAFETY: `sk` is a socket the iterator holds; without F_CREATE nothing is allocated,
    // and a socket without a record gives null.
    let stored = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0) };
    if stored.is_null() {
        return None;
    }
    // SAFETY: socket storage stays valid while the iterator holds the socket; copied at once.
    let record = unsafe { *stored.cast::<SocketRecord>() };
    if record.kind != RECORD_CONNECTED || record.protocol != PROTO_UDP {
        return None;
    }
    // SAFETY: as above; tracing programs may ask a socket's cookie (Linux 5.12+).
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    Some(ConnectedUdp {
        cookie,
        backend: record.backend,
        backend_port: record.backend_port,
        _pad: 0,
        backend_id: record.backend_id,
    })
}

/// Writes `found` to the iterator's output; a full buffer ends this read, and the kernel
/// shows the socket again in the next.
#[inline(always)]
pub(crate) fn write(ctx: &UdpContext, found: &ConnectedUdp) {
    // SAFETY: `meta` is valid for the program run; `seq` is the iterator's seq_file.
    let seq = unsafe { (*ctx.meta).seq };
    let size = core::mem::size_of::<ConnectedUdp>() as u32;
    // SAFETY: `found` is `size` bytes of plain integers.
    unsafe { bpf_seq_write(seq.cast(), core::ptr::from_ref(found).cast(), size) };
}
