//! Socket-level load balancing: `connect()` or `sendto()` to a VIP becomes one to a backend,
//! and the backend's replies and `getpeername()` show the VIP again.
//!
//! Each hook is a thin entry point over small helpers: `sock4_*`/`sock6_*` read and write the
//! socket address, `lb_*` choose the backend and keep the reverse entries. An address that
//! is no VIP is left untouched, so a bug here never breaks connects that are not to a VIP;
//! a known VIP whose slot or backend is missing from the live set is refused with its reason
//! counted (fail closed): no packet ever leaves for a VIP address.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
        },
    },
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use reconciler_common::{
    affinity, event, hash64, ipv4_mapped, ipv4_of_mapped, maglev, random_slot, trace, Addr,
    AffinityKey, AffinityValue, Backend, BackendCounters, BackendKey, ExcludedCgroup, HealthKey,
    Metadata, ReverseKey, ReverseValue, ServiceCounters, ServiceKey, ServiceName, ServiceValue,
    SlotKey, TraceEvent, ALGORITHM_MAGLEV, BACKEND_MAINTENANCE, CLIENT_NETNS, MAX_AFFINITY,
    MAX_BACKENDS, MAX_EXCLUDED, MAX_REVERSE, MAX_SERVICES, MAX_SLOTS, SET_COUNT, TRACE_BYTES,
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

/// Slot -> backend ID: a random service's slots hold each usable backend `weight` times, a
/// Maglev service's are its table.
#[btf_map]
static SLOTS: HashMap<SlotKey, u32, { both_sets(MAX_SLOTS) }, BPF_F_NO_PREALLOC> = HashMap::new();

#[btf_map]
static BACKENDS: HashMap<BackendKey, Backend, { both_sets(MAX_BACKENDS) }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Per-backend counters, by stable backend ID (zeroed by user space before an ID is reused).
#[btf_map]
static BACKEND_COUNTS: PerCpuArray<BackendCounters, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Per-service refusals by reason, by stable service ID (zeroed likewise).
#[btf_map]
static SERVICE_COUNTS: PerCpuArray<ServiceCounters, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// (socket cookie, backend) -> what the socket asked for, written when a connect or sendmsg
/// is translated and read to translate replies and `getpeername()` back. Not versioned: an
/// entry is checked against the live set before it is used. LRU, so sockets that are gone
/// make room by themselves.
#[btf_map]
static REVERSE: LruHashMap<ReverseKey, ReverseValue, { MAX_REVERSE as usize }> = LruHashMap::new();

/// (service, client) -> the client's backend and its last connect, for services with
/// session affinity. Not versioned: an entry is checked against the live set before it is
/// used. LRU, so clients that stopped connecting make room by themselves.
#[btf_map]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// Per-CPU counters by `affinity::*`.
#[btf_map]
static AFFINITY_EVENTS: PerCpuArray<u64, { affinity::COUNT as usize }> = PerCpuArray::new();

/// Translations as they happen, for `reconciler trace`; written only while a tracer runs.
#[btf_map]
static TRACE: RingBuf<TraceEvent, { TRACE_BYTES as usize }> = RingBuf::new();

/// Entry 0: the PID of the running tracer, or 0: the one lookup the programs make when none
/// runs.
#[btf_map]
static TRACE_ON: Array<u32, 1> = Array::new();

/// Entry 0, per CPU: trace events dropped because the ring was full (a connect never waits).
#[btf_map]
static TRACE_DROPS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Per-CPU counters by `event::*` reason.
#[btf_map]
static EVENTS: PerCpuArray<u64, { event::COUNT as usize }> = PerCpuArray::new();

/// Written and read by user space only (generation, applied revision, crash repair). Kept in
/// this object so it is created, pinned and removed with the rest of the data plane.
#[btf_map]
static METADATA: Array<Metadata, 1> = Array::new();

/// Backend addresses the daemon's health checks took out; user space only, like `METADATA`:
/// the programs see the result in `BACKENDS` and `SLOTS`, this records why.
#[btf_map]
static HEALTH_EXCLUDED: HashMap<HealthKey, u32, { MAX_BACKENDS as usize }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Service ID -> name, for people reading plans; user space only, like `METADATA`.
#[btf_map]
static SERVICE_NAMES: HashMap<u32, ServiceName, { MAX_SERVICES as usize }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Cgroup subtrees whose processes are never translated (`dataplane.exclude`), filled from
/// index 0 by user space; not versioned (an apply never changes it, the configuration does).
#[btf_map]
static EXCLUDED: Array<ExcludedCgroup, { MAX_EXCLUDED as usize }> = Array::new();

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let address = sock4_address(&ctx);
    lb_translate(&ctx, trace::CONNECT, address, |b| sock4_set_backend(&ctx, b))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let address = sock6_address(&ctx);
    lb_translate(&ctx, trace::CONNECT, address, |b| sock6_set_backend(&ctx, b))
}

/// `sendto()`/`sendmsg()` with an address, on an unconnected UDP socket: one backend per
/// socket (a hash of its cookie), so a request and its retries reach one backend while the
/// service's backends stay the same.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let address = sock4_address(&ctx);
    lb_translate(&ctx, trace::SENDMSG, address, |b| sock4_set_backend(&ctx, b))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let address = sock6_address(&ctx);
    lb_translate(&ctx, trace::SENDMSG, address, |b| sock6_set_backend(&ctx, b))
}

/// The source address a UDP `recvfrom()`/`recvmsg()` reports: a backend's becomes the VIP.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let address = sock4_address(&ctx);
    lb_reverse(&ctx, trace::RECVMSG, address, |vip, port| sock4_set_address(&ctx, vip, port))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let address = sock6_address(&ctx);
    lb_reverse(&ctx, trace::RECVMSG, address, |vip, port| sock6_set_address(&ctx, vip, port))
}

/// `getpeername()` of a socket the data plane connected: the VIP, not the backend.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let address = sock4_address(&ctx);
    lb_reverse(&ctx, trace::GETPEERNAME, address, |vip, port| sock4_set_address(&ctx, vip, port))
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let address = sock6_address(&ctx);
    lb_reverse(&ctx, trace::GETPEERNAME, address, |vip, port| sock6_set_address(&ctx, vip, port))
}

/// The common body of the connect and sendmsg hooks (`kind`): the chosen backend goes to
/// `rewrite`, and the translation is recorded for the replies.
#[inline(always)]
fn lb_translate(
    ctx: &SockAddrContext,
    kind: u8,
    (addr, port, protocol): (Addr, u16, u8),
    rewrite: impl FnOnce(&Backend),
) -> i32 {
    match lb_select(ctx, kind, &addr, port, protocol) {
        Selection::NotAService => ALLOW,
        Selection::Refused { reason, service_id } => {
            let seen = Seen { kind: trace::REFUSED, reason: reason as u8, service_id, protocol };
            lb_trace(seen, (&addr, port), (&[0; 4], 0));
            refuse(reason, service_id)
        }
        Selection::Backend { backend, service_id, backend_id } => {
            rewrite(&backend);
            let seen = Seen { kind, reason: 0, service_id, protocol };
            lb_trace(seen, (&addr, port), (&backend.addr, backend.port));
            let key = ReverseKey {
                cookie: sock_cookie(ctx),
                addr: backend.addr,
                port: backend.port,
                _pad: [0; 6],
            };
            let value = ReverseValue { vip: addr, port, protocol, _pad: 0, service_id, backend_id };
            // A datagram socket passes here per datagram: write only what is not there yet.
            // SAFETY: REVERSE is not versioned; a value read here is copied at once.
            if unsafe { REVERSE.get(key) } != Some(&value) && REVERSE.insert(key, value, 0).is_err()
            {
                lb_count(event::REVERSE_FULL);
            }
            ALLOW
        }
    }
}

/// The common body of the recvmsg and getpeername hooks: an address that is a backend this
/// socket was sent to through a VIP becomes that VIP, if the live set still has the service
/// and the backend in it; a stale entry is deleted. These hooks cannot fail the syscall.
#[inline(always)]
fn lb_reverse(
    ctx: &SockAddrContext,
    kind: u8,
    (addr, port, _): (Addr, u16, u8),
    rewrite: impl FnOnce(&Addr, u16),
) -> i32 {
    let key = ReverseKey { cookie: sock_cookie(ctx), addr, port, _pad: [0; 6] };
    // SAFETY: copied at once; REVERSE entries are written whole.
    let Some(&entry) = (unsafe { REVERSE.get(key) }) else {
        return ALLOW;
    };
    if lb_still_serves(&entry, &addr, port) {
        rewrite(&entry.vip, entry.port);
        lb_count_backend(entry.backend_id, |c| c.reverse += 1);
        let seen = Seen { kind, reason: 0, service_id: entry.service_id, protocol: entry.protocol };
        lb_trace(seen, (&entry.vip, entry.port), (&addr, port));
    } else {
        let _ = REVERSE.remove(key);
        lb_count(event::REVERSE_STALE);
        lb_count_service(entry.service_id, |c| c.stale_reverse_entry += 1);
    }
    ALLOW
}

/// Whether the live set still has `entry`'s service at its VIP and, as one of that service's
/// backends, `entry`'s backend at (`addr`, `port`). (Cilium checks only the service.)
#[inline(always)]
fn lb_still_serves(entry: &ReverseValue, addr: &Addr, port: u16) -> bool {
    let set = lb_active_set();
    let key = ServiceKey { addr: entry.vip, port: entry.port, protocol: entry.protocol, set };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return false;
    };
    let key = BackendKey { backend_id: entry.backend_id, set, _pad: [0; 3] };
    // SAFETY: as above.
    let Some(backend) = (unsafe { BACKENDS.get(key) }) else {
        return false;
    };
    service.service_id == entry.service_id
        && backend.service_id == entry.service_id
        && backend.addr == *addr
        && backend.port == port
}

enum Selection {
    NotAService,
    /// A known VIP that gets no backend, for this `event::*` reason.
    Refused {
        reason: u32,
        service_id: u32,
    },
    Backend {
        backend: Backend,
        service_id: u32,
        backend_id: u32,
    },
}

/// Chooses a backend for (`addr`, `port`, `protocol`), and counts it: the client's affinity
/// entry's if it holds, else the slot that `lb_choice` (random) or the client (Maglev,
/// `maglev::client_slot`) picks.
#[inline(always)]
fn lb_select(ctx: &SockAddrContext, kind: u8, addr: &Addr, port: u16, protocol: u8) -> Selection {
    let set = lb_active_set();
    let key = ServiceKey { addr: *addr, port, protocol, set };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    let Some(&service) = (unsafe { SERVICES.get(key) }) else {
        return Selection::NotAService;
    };
    // Checked only for a VIP: other connects pay nothing for it.
    if lb_excluded() {
        return Selection::NotAService;
    }
    if service.slot_count == 0 {
        return Selection::Refused { reason: event::NO_BACKEND, service_id: service.service_id };
    }
    let service_id = service.service_id;
    let affinity = if service.affinity_timeout_secs == 0 {
        None
    } else {
        let key =
            AffinityKey { service_id, _pad: 0, client: lb_client(ctx, service.affinity_client) };
        if let Some((backend, backend_id)) = lb_affinity(&key, &service, set) {
            lb_count_backend(backend_id, |c| c.translations += 1);
            return Selection::Backend { backend, service_id, backend_id };
        }
        Some(key)
    };
    let slot = if service.algorithm == ALGORITHM_MAGLEV {
        maglev::client_slot(lb_client(ctx, service.maglev_client), service.slot_count)
    } else {
        random_slot(lb_choice(ctx, kind), service.slot_count)
    };
    let slot = SlotKey { service_id, slot, set, _pad: [0; 3] };
    // SAFETY: as above, this set is not written while it is active.
    let Some(&backend_id) = (unsafe { SLOTS.get(slot) }) else {
        return Selection::Refused { reason: event::SLOT_MISS, service_id };
    };
    let key = BackendKey { backend_id, set, _pad: [0; 3] };
    // SAFETY: as above.
    let Some(&backend) = (unsafe { BACKENDS.get(key) }) else {
        return Selection::Refused { reason: event::BACKEND_MISS, service_id };
    };
    if let Some(key) = affinity {
        // SAFETY: the helper has no preconditions.
        let last_used_ns = unsafe { bpf_ktime_get_ns() };
        // A full LRU map evicts its oldest entry; a failure leaves this client without
        // affinity until its next connect, and the connect goes on.
        let _ = AFFINITY.insert(key, AffinityValue { last_used_ns, backend_id, _pad: 0 }, 0);
    }
    lb_count_backend(backend_id, |c| c.translations += 1);
    Selection::Backend { backend, service_id, backend_id }
}

/// The backend of the affinity entry `key`, if it holds: used within the service's timeout,
/// and its backend still one of the service's in the live set, active or draining (draining
/// keeps its clients: that is what draining is for; maintenance and unhealthy do not). A use
/// renews it; an entry whose backend is no longer usable is deleted.
#[inline(always)]
fn lb_affinity(key: &AffinityKey, service: &ServiceValue, set: u8) -> Option<(Backend, u32)> {
    let Some(entry) = AFFINITY.get_ptr_mut(key) else {
        lb_count_affinity(affinity::MISS);
        return None;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: an LRU map element stays valid for this program run (RCU); a concurrent
    // update of the same entry by another CPU writes whole values of the same client.
    let AffinityValue { last_used_ns, backend_id, .. } = unsafe { *entry };
    if now.wrapping_sub(last_used_ns) > u64::from(service.affinity_timeout_secs) * 1_000_000_000 {
        lb_count_affinity(affinity::MISS);
        return None;
    }
    let backend_key = BackendKey { backend_id, set, _pad: [0; 3] };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    match unsafe { BACKENDS.get(backend_key) } {
        Some(&backend)
            if backend.service_id == service.service_id && backend.state < BACKEND_MAINTENANCE =>
        {
            // SAFETY: as above; one aligned 8-byte store.
            unsafe { (*entry).last_used_ns = now };
            lb_count_affinity(affinity::HIT);
            Some((backend, backend_id))
        }
        _ => {
            let _ = AFFINITY.remove(key);
            lb_count_affinity(affinity::DROPPED);
            None
        }
    }
}

/// The 32-bit number a random service's slot comes from, read only when one is needed: for
/// a connect a random one, for a datagram a hash of its socket's cookie (so one unconnected
/// socket keeps one backend while the service's backends stay the same).
#[inline(always)]
fn lb_choice(ctx: &SockAddrContext, kind: u8) -> u32 {
    if kind == trace::SENDMSG {
        hash64(sock_cookie(ctx))
    } else {
        // SAFETY: the helper has no preconditions.
        unsafe { bpf_get_prandom_u32() }
    }
}

/// The client, as `CLIENT_*` `kind` says: the connecting process's cgroup v2 ID, or the
/// socket's network namespace cookie.
#[inline(always)]
fn lb_client(ctx: &SockAddrContext, kind: u8) -> u64 {
    if kind == CLIENT_NETNS {
        // SAFETY: bpf_get_netns_cookie takes the program's own context (Linux 5.7+).
        unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) }
    } else {
        // SAFETY: the helper has no preconditions; it reads the current task's cgroup.
        unsafe { bpf_get_current_cgroup_id() }
    }
}

/// Whether the calling process is in a cgroup subtree of `EXCLUDED`: its ancestor at the
/// subtree's level is the subtree's root.
#[inline(always)]
fn lb_excluded() -> bool {
    for index in 0..MAX_EXCLUDED {
        let Some(entry) = EXCLUDED.get(index) else { return false };
        if entry.cgroup_id == 0 {
            return false;
        }
        // SAFETY: the helper has no preconditions; a level deeper than the process's
        // cgroup gives 0, which no entry holds.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(entry.level as i32) };
        if ancestor == entry.cgroup_id {
            return true;
        }
    }
    false
}

#[inline(always)]
fn lb_active_set() -> u8 {
    // `& 1` keeps the key valid even if user space ever wrote something else.
    ACTIVE_SET.get(0).map_or(0, |set| (*set & 1) as u8)
}

#[inline(always)]
fn lb_count_backend(backend_id: u32, count: impl FnOnce(&mut BackendCounters)) {
    if let Some(counters) = BACKEND_COUNTS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value, and this program cannot be preempted by itself on one CPU.
        count(unsafe { &mut *counters });
    }
}

#[inline(always)]
fn lb_count_service(service_id: u32, count: impl FnOnce(&mut ServiceCounters)) {
    if let Some(counters) = SERVICE_COUNTS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU value, as in lb_count_backend.
        count(unsafe { &mut *counters });
    }
}

/// What a trace event says besides the addresses.
struct Seen {
    kind: u8,
    reason: u8,
    service_id: u32,
    protocol: u8,
}

/// Writes a trace event if a tracer runs: otherwise one array lookup. A full ring drops the
/// event, counted, and the syscall goes on.
#[inline(always)]
fn lb_trace(seen: Seen, (vip, vip_port): (&Addr, u16), (backend, backend_port): (&Addr, u16)) {
    if TRACE_ON.get(0).is_none_or(|pid| *pid == 0) {
        return;
    }
    let Some(mut entry) = TRACE.reserve(0) else {
        if let Some(drops) = TRACE_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU value, as in lb_count_backend.
            unsafe { *drops += 1 };
        }
        return;
    };
    entry.write(TraceEvent {
        // SAFETY: the helpers have no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        service_id: seen.service_id,
        vip: *vip,
        backend: *backend,
        vip_port,
        backend_port,
        protocol: seen.protocol,
        kind: seen.kind,
        reason: seen.reason,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}

#[inline(always)]
fn lb_count_affinity(what: u32) {
    if let Some(count) = AFFINITY_EVENTS.get_ptr_mut(what) {
        // SAFETY: per-CPU value, as in lb_count_backend.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn lb_count(reason: u32) {
    if let Some(count) = EVENTS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value, as in lb_count_backend.
        unsafe { *count += 1 };
    }
}

/// Makes the syscall fail at once with ECONNREFUSED, counted under `reason` (overall and for
/// the service): no packet is sent to the VIP.
#[inline(always)]
fn refuse(reason: u32, service_id: u32) -> i32 {
    lb_count(reason);
    lb_count_service(service_id, |c| {
        if reason == event::NO_BACKEND {
            c.no_backend += 1;
        } else {
            c.inconsistent_set += 1;
        }
    });
    // SAFETY: bpf_set_retval is allowed in cgroup sock_addr programs (Linux 5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

#[inline(always)]
fn sock_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie takes the program's own context in sock_addr programs.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// Writes `backend` into an IPv4 socket address. A v4 service has v4 backends (validation
/// enforces it); anything else stays as it is.
#[inline(always)]
fn sock4_set_backend(ctx: &SockAddrContext, backend: &Backend) {
    sock4_set_address(ctx, &backend.addr, backend.port)
}

/// Writes `backend` into an IPv6 socket address: IPv4-mapped backends of a dual-stack
/// socket are written mapped, as stored.
#[inline(always)]
fn sock6_set_backend(ctx: &SockAddrContext, backend: &Backend) {
    sock6_set_address(ctx, &backend.addr, backend.port)
}

/// The address of an IPv4 hook (the destination of a connect or sendmsg, the source of a
/// received datagram, the peer for getpeername) as a service key's (address, port, protocol).
#[inline(always)]
fn sock4_address(ctx: &SockAddrContext) -> (Addr, u16, u8) {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    // user_port keeps the network-order port in its low 16 bits.
    (ipv4_mapped(sa.user_ip4), sa.user_port as u16, sa.protocol as u8)
}

#[inline(always)]
fn sock4_set_address(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    let Some(ip4) = ipv4_of_mapped(addr) else {
        return;
    };
    // SAFETY: as in sock4_address; both fields are writable in every hook used here.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = ip4;
    sa.user_port = u32::from(port);
}

#[inline(always)]
fn sock6_address(ctx: &SockAddrContext) -> (Addr, u16, u8) {
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
fn sock6_set_address(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    // SAFETY: as in sock4_address; user_ip6 and user_port are writable in every hook used
    // here.
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
