//! Reading and writing the socket address of a hook, IPv4 and IPv6, and the socket's cookie.
use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext};
use reconciler_common::{ipv4_mapped, ipv4_of_mapped, Addr, Backend};

#[inline(always)]
pub(crate) fn sock_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie takes the program's own context in sock_addr programs.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// Writes `backend` into an IPv4 socket address. A v4 service has v4 backends (validation
/// enforces it); anything else stays as it is.
#[inline(always)]
pub(crate) fn sock4_set_backend(ctx: &SockAddrContext, backend: &Backend) {
    sock4_set_address(ctx, &backend.addr, backend.port)
}

/// Writes `backend` into an IPv6 socket address: IPv4-mapped backends of a dual-stack
/// socket are written mapped, as stored.
#[inline(always)]
pub(crate) fn sock6_set_backend(ctx: &SockAddrContext, backend: &Backend) {
    sock6_set_address(ctx, &backend.addr, backend.port)
}

/// The address of an IPv4 hook (the destination of a connect or sendmsg, the source of a
/// received datagram, the peer for getpeername) as a service key's (address, port, protocol).
#[inline(always)]
pub(crate) fn sock4_address(ctx: &SockAddrContext) -> (Addr, u16, u8) {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port keeps the network-order port in its low 16 bits.
    (ipv4_mapped(sa.user_ip4), sa.user_port as u16, sa.protocol as u8)
}

#[inline(always)]
pub(crate) fn sock4_set_address(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    let Some(ip4) = ipv4_of_mapped(addr) else {
        return;
    };
    // SAFETY: as in sock4_address; both fields are writable in every hook used here.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = ip4;
    sa.user_port = u32::from(port);
}

#[inline(always)]
pub(crate) fn sock6_address(ctx: &SockAddrContext) -> (Addr, u16, u8) {
    // SAFETY: as in sock4_address.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u32; 4];
    for (word, field) in addr.iter_mut().zip(sa.user_ip6.iter()) {
        // One 4-byte load per word: the verifier rejects wider loads of user_ip6, and a
        // volatile read keeps LLVM from merging neighbouring words into one.
        // SAFETY: `field` points into the context.
        *word = unsafe { core::ptr::read_volatile(field) };
    }
    (addr, sa.user_port as u16, sa.protocol as u8)
}

#[inline(always)]
pub(crate) fn sock6_set_address(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    // SAFETY: as in sock4_address; user_ip6 and user_port are writable in every hook used
    // here.
    let sa = unsafe { &mut *ctx.sock_addr };
    for (field, word) in sa.user_ip6.iter_mut().zip(addr.iter()) {
        // SAFETY: 4-byte stores into the context, as the verifier requires.
        unsafe { core::ptr::write_volatile(field, *word) };
    }
    sa.user_port = u32::from(port);
}
