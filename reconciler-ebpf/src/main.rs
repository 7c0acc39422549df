//! Socket-level load balancing: `connect()` to a VIP becomes `connect()` to a backend.
//!
//! Each hook is a thin entry point over small helpers: `sock4_*`/`sock6_*` read and write the
//! socket address, `lb_*` choose the backend. A miss or any error returns `ALLOW` with the
//! address untouched, so a bug here never breaks connects that are not to a VIP.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::{bpf_get_prandom_u32, generated::bpf_set_retval},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use reconciler_common::{
    ipv4_mapped, ipv4_of_mapped, random_slot, Addr, Backend, BackendKey, BackendStats, Metadata,
    ServiceKey, ServiceName, ServiceValue, SlotKey, MAX_BACKENDS, MAX_SERVICES, MAX_SLOTS,
    SET_COUNT,
};

/// Let the syscall go on (with whatever address the program left in the context).
const ALLOW: i32 = 1;
/// Fail the syscall; with `bpf_set_retval` the caller sees that errno instead of EPERM.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Hash maps are not preallocated: the sets are sized for the largest deployments, and an
/// element freed by a delete is released only after an RCU grace period, so a program that
/// holds a pointer into the map never reads a reused element.
const BPF_F_NO_PREALLOC: usize = 1;

const fn both_sets(per_set: u32) -> usize {
    (per_set as usize) * (SET_COUNT as usize)
}

/// Which set of `SERVICES`/`SLOTS`/`BACKENDS` is live: entry 0 is 0 or 1. User space flips it
/// after filling the other set; a program reads it once and uses that set throughout.
#[btf_map]
static ACTIVE_SET: Array<u32, 1> = Array::new();

#[btf_map]
static SERVICES: HashMap<ServiceKey, ServiceValue, { both_sets(MAX_SERVICES) }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Slot -> backend ID. A service's slots hold each active backend `weight` times.
#[btf_map]
static SLOTS: HashMap<SlotKey, u32, { both_sets(MAX_SLOTS) }, BPF_F_NO_PREALLOC> = HashMap::new();

#[btf_map]
static BACKENDS: HashMap<BackendKey, Backend, { both_sets(MAX_BACKENDS) }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Per-backend counters, by stable backend ID.
#[btf_map]
static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Written and read by user space only (generation, applied revision, crash repair). Kept in
/// this object so it is created, pinned and removed with the rest of the data plane.
#[btf_map]
static METADATA: Array<Metadata, 1> = Array::new();

/// Service ID -> name, for people reading plans; user space only, like `METADATA`.
#[btf_map]
static SERVICE_NAMES: HashMap<u32, ServiceName, { MAX_SERVICES as usize }, BPF_F_NO_PREALLOC> =
    HashMap::new();

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    lb_connect(sock4_destination(&ctx), |backend| {
        // A v4 service has v4 backends (validation enforces it); anything else stays as is.
        if let Some(ip4) = ipv4_of_mapped(&backend.addr) {
            sock4_set_destination(&ctx, ip4, backend.port);
        }
    })
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // IPv4-mapped backends of a dual-stack socket are written back mapped, as stored.
    lb_connect(sock6_destination(&ctx), |backend| {
        sock6_set_destination(&ctx, &backend.addr, backend.port)
    })
}

/// The common body of the connect hooks: `rewrite` gets the chosen backend.
#[inline(always)]
fn lb_connect((addr, port, protocol): (Addr, u16, u8), rewrite: impl FnOnce(&Backend)) -> i32 {
    match lb_select(&addr, port, protocol) {
        Selection::NotAService => ALLOW,
        Selection::NoBackend => refuse(),
        Selection::Backend(backend) => {
            rewrite(&backend);
            ALLOW
        }
    }
}

enum Selection {
    NotAService,
    NoBackend,
    Backend(Backend),
}

/// Chooses a backend for a connect to (`addr`, `port`, `protocol`), and counts it.
#[inline(always)]
fn lb_select(addr: &Addr, port: u16, protocol: u8) -> Selection {
    let set = lb_active_set();
    let key = ServiceKey { addr: *addr, port, protocol, set };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return Selection::NotAService;
    };
    if service.slot_count == 0 {
        return Selection::NoBackend;
    }
    // SAFETY: the helper has no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = SlotKey {
        service_id: service.service_id,
        slot: random_slot(random, service.slot_count),
        set,
        _pad: [0; 3],
    };
    // SAFETY: as above, this set is not written while it is active.
    let Some(&backend_id) = (unsafe { SLOTS.get(slot) }) else {
        return Selection::NotAService;
    };
    let key = BackendKey { backend_id, set, _pad: [0; 3] };
    // SAFETY: as above.
    let Some(&backend) = (unsafe { BACKENDS.get(key) }) else {
        return Selection::NotAService;
    };
    lb_count_connect(backend_id);
    Selection::Backend(backend)
}

#[inline(always)]
fn lb_active_set() -> u8 {
    // `& 1` keeps the key valid even if user space ever wrote something else.
    ACTIVE_SET.get(0).map_or(0, |set| (*set & 1) as u8)
}

#[inline(always)]
fn lb_count_connect(backend_id: u32) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value, and this program cannot be preempted by itself on one CPU.
        unsafe { (*stats).connects += 1 };
    }
}

/// Makes the `connect()` fail at once with ECONNREFUSED: no packet is sent to the VIP.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is allowed in cgroup sock_addr programs (Linux 5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// The destination of an IPv4 connect, as a service key's (address, port, protocol).
#[inline(always)]
fn sock4_destination(ctx: &SockAddrContext) -> (Addr, u16, u8) {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port keeps the network-order port in its low 16 bits.
    (ipv4_mapped(sa.user_ip4), sa.user_port as u16, sa.protocol as u8)
}

#[inline(always)]
fn sock4_set_destination(ctx: &SockAddrContext, ip4: u32, port: u16) {
    // SAFETY: as in sock4_destination; both fields are writable in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = ip4;
    sa.user_port = u32::from(port);
}

#[inline(always)]
fn sock6_destination(ctx: &SockAddrContext) -> (Addr, u16, u8) {
    // SAFETY: as in sock4_destination.
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
fn sock6_set_destination(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    // SAFETY: as in sock4_destination; user_ip6 and user_port are writable in connect6.
    let sa = unsafe { &mut *ctx.sock_addr };
    for (field, word) in sa.user_ip6.iter_mut().zip(addr.iter()) {
        // SAFETY: 4-byte stores into the context, as the verifier requires.
        unsafe { core::ptr::write_volatile(field, *word) };
    }
    sa.user_port = u32::from(port);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
