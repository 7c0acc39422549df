//! Socket-level load balancing: `connect()` or `sendto()` to a VIP becomes one to a backend,
//! and the backend's replies and `getpeername()` show the VIP again.
//!
//! Each hook is a thin entry point over small helpers: `sock4_*`/`sock6_*` read and write the
//! socket address, `lb_*` choose the backend and record the translation. An address that
//! is no VIP is left untouched, so a bug here never breaks connects that are not to a VIP;
//! a VIP on a port or protocol no service defines, a known service whose slot or backend is
//! missing from the live set, and a translation that cannot be recorded are refused with
//! their reason counted (fail closed): no packet ever leaves for a VIP address.
#![no_std]
#![no_main]
// Inline assembly for the BPF target (one atomic add, see `count`), as aya-ebpf itself uses.
#![feature(asm_experimental_arch)]

mod count;
mod flows;
mod iter;
mod select;
mod sock;

use core::mem::offset_of;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SkStorage},
    macros::{btf_map, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use reconciler_common::{
    affinity, event,
    exclusion::HealthKey,
    flows::{BackendFlows, HANDSHAKE_SLOTS},
    trace, Addr, AffinityKey, AffinityValue, Backend, BackendCounters, BackendKey, ExcludedCgroup,
    Metadata, ReverseKey, ReverseValue, ServiceCounters, ServiceKey, ServiceName, ServiceValue,
    SlotKey, SocketRecord, TraceEvent, VipKey, EVENT_SLOTS, MAX_AFFINITY, MAX_BACKENDS,
    MAX_EXCLUDED, MAX_REVERSE, MAX_SERVICES, MAX_SLOTS, RECORD_CONNECTED, RECORD_DATAGRAM,
    RECORD_NONE, SET_COUNT, TRACE_BYTES,
};

use count::{lb_count, lb_count_backend, lb_count_service, lb_refuse, lb_trace, Seen};
use select::{lb_active_set, lb_select, Selection};
use sock::{
    sock4_address, sock4_set_address, sock4_set_backend, sock6_address, sock6_set_address,
    sock6_set_backend, sock_cookie,
};

/// Let the syscall go on (with whatever address the program left in the context).
const ALLOW: i32 = 1;
/// Fail the syscall; with `bpf_set_retval` the caller sees that errno instead of EPERM.
const REJECT: i32 = 0;

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

/// Every VIP address, of any port and protocol: a connect or datagram to one that matches no
/// service is refused. Read only when `SERVICES` has no entry, so a connect to a service
/// pays nothing for it (an address that is no VIP pays one more lookup, which misses).
#[btf_map]
static VIPS: HashMap<VipKey, u32, { both_sets(MAX_SERVICES) }, BPF_F_NO_PREALLOC> = HashMap::new();

/// Slot -> backend ID: a random service's slots hold each usable backend `weight` times, a
/// Maglev service's are its table.
#[btf_map]
static SLOTS: HashMap<SlotKey, u32, { both_sets(MAX_SLOTS) }, BPF_F_NO_PREALLOC> = HashMap::new();

#[btf_map]
static BACKENDS: HashMap<BackendKey, Backend, { both_sets(MAX_BACKENDS) }, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// Per-backend counters, by stable backend ID (zeroed by user space before an ID is reused).
#[btf_map]
static BACKEND_TOTALS: Array<BackendCounters, { MAX_BACKENDS as usize }> = Array::new();

/// What the `flows` program saw of each backend's TCP connections, by stable backend ID
/// (zeroed with `BACKEND_TOTALS`).
#[btf_map]
static BACKEND_FLOWS: Array<BackendFlows, { MAX_BACKENDS as usize }> = Array::new();

/// Handshake times of translated TCP connections, per CPU: a count per bucket, then the sum
/// (`reconciler_common::flows`).
#[btf_map]
static HANDSHAKES: PerCpuArray<u64, { HANDSHAKE_SLOTS as usize }> = PerCpuArray::new();

/// Per-service refusals by reason, by stable service ID (zeroed likewise).
#[btf_map]
static SERVICE_TOTALS: Array<ServiceCounters, { MAX_SERVICES as usize }> = Array::new();

/// Each translated socket's record (`SocketRecord`), in the socket's own storage: the kernel
/// frees it with the socket, and no other socket can evict it (an LRU shared by all sockets
/// can, which is Cilium's most reported socket-LB failure, cilium#48096).
#[btf_map]
static SOCKETS: SkStorage<SocketRecord> = SkStorage::new();

/// (socket cookie, backend) -> what the socket asked for: the datagram translations an
/// unconnected socket's record no longer holds, because it sent to another service since.
/// Not versioned: an entry is checked against the live set before it is used. LRU, so
/// sockets that are gone make room by themselves.
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
static EVENTS: PerCpuArray<u64, { EVENT_SLOTS as usize }> = PerCpuArray::new();

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
/// socket (a hash of its cookie), kept in the socket's record while it stays usable, so a
/// request and its retries, or a QUIC connection, reach one backend even when others come
/// and go.
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

/// How the TCP connections the data plane translated go (`sock_ops`, attached to the same
/// cgroup): established, failed, and at close their bytes and round-trip time, per backend
/// (see `flows`). Sockets it did not translate ask for no further callbacks.
#[sock_ops]
pub fn flows(ctx: SockOpsContext) -> u32 {
    flows::on_sock_ops(&ctx);
    1
}

/// A socket iterator (`iter/udp`) over the UDP sockets of the network namespace that reads
/// it: writes a `ConnectedUdp` for each one the data plane connected, so that an apply can
/// find the connected UDP sockets of a backend it removed (see `reconciler::dataplane::
/// destroy`). Loaded by user space only for that, never attached to a cgroup.
///
/// # Safety
///
/// Only the kernel calls it, with a valid `struct bpf_iter__udp`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub unsafe extern "C" fn udp_records(ctx: *mut iter::UdpContext) -> i32 {
    // SAFETY: as the doc says.
    let ctx = unsafe { &*ctx };
    if let Some(found) = iter::connected_udp(ctx) {
        iter::write(ctx, &found);
    }
    0
}

/// The common body of the connect and sendmsg hooks (`kind`): the chosen backend goes to
/// `rewrite` once the translation is recorded for the replies and `getpeername()`; one that
/// cannot be recorded is refused (it would look like the backend to the application).
#[inline(always)]
fn lb_translate(
    ctx: &SockAddrContext,
    kind: u8,
    (addr, port, protocol): (Addr, u16, u8),
    rewrite: impl FnOnce(&Backend),
) -> i32 {
    let (backend, service_id, backend_id, stored) =
        match lb_select(ctx, kind, &addr, port, protocol) {
            Selection::NotAService => {
                if kind == trace::CONNECT {
                    lb_forget(ctx);
                }
                return ALLOW;
            }
            Selection::Refused { reason, service_id } => {
                return lb_refuse(reason, service_id, protocol, (&addr, port));
            }
            Selection::Backend { backend, service_id, backend_id, stored } => {
                (backend, service_id, backend_id, stored)
            }
        };
    let record = SocketRecord {
        vip: addr,
        backend: backend.addr,
        vip_port: port,
        backend_port: backend.port,
        protocol,
        kind: if kind == trace::CONNECT { RECORD_CONNECTED } else { RECORD_DATAGRAM },
        _pad: 0,
        service_id,
        backend_id,
    };
    if !lb_record(ctx, stored, &record) {
        return lb_refuse(event::REVERSE_FULL, service_id, protocol, (&addr, port));
    }
    rewrite(&backend);
    lb_count_backend(backend_id, offset_of!(BackendCounters, translations));
    let seen = Seen { kind, reason: 0, service_id, protocol };
    lb_trace(seen, (&addr, port), (&backend.addr, backend.port));
    ALLOW
}

/// Keeps `record` for the socket's replies and `getpeername()`, in the socket's storage
/// (`stored` if it was fetched, else fetched here): a connect's for the socket's life, a
/// datagram's until the socket sends to another service (the one it replaces moves to
/// `REVERSE`, for replies still on their way). A datagram on a connected socket, or on one
/// without storage, goes to `REVERSE` alone. Whether it was kept.
#[inline(always)]
fn lb_record(ctx: &SockAddrContext, mut stored: *mut SocketRecord, record: &SocketRecord) -> bool {
    if stored.is_null() {
        // SAFETY: the context's socket is a full socket, held for the syscall.
        stored = unsafe { SOCKETS.get_or_insert_ptr_mut(ctx, None) };
    }
    if stored.is_null() {
        // The kernel could not allocate the storage (memory, or the socket's option memory,
        // `net.core.optmem_max`, which socket storage is charged against).
        return record.kind == RECORD_DATAGRAM && lb_keep_reverse(ctx, record);
    }
    // SAFETY: socket storage stays valid for this program run; copied at once.
    let previous = unsafe { *stored };
    if previous == *record {
        return true;
    }
    if record.kind == RECORD_DATAGRAM {
        if previous.kind == RECORD_CONNECTED {
            return lb_keep_reverse(ctx, record);
        }
        if previous.kind == RECORD_DATAGRAM && !lb_keep_reverse(ctx, &previous) {
            // This translation is kept; only late replies of the previous one lose it.
            lb_count(event::REVERSE_FULL);
        }
    }
    // SAFETY: as above. A connect holds the socket's lock; datagrams of one socket sent at
    // once by several threads to several services may each write, and the last one stays.
    unsafe { *stored = *record };
    true
}

/// A socket connected straight to an address that is no VIP is the application's own: its
/// record (of an earlier connect or datagram through a VIP) goes, so its replies and
/// `getpeername()` show what it connected to, and no apply destroys it for a backend that
/// leaves. One storage lookup, which for a socket without storage is a null pointer test.
#[inline(always)]
fn lb_forget(ctx: &SockAddrContext) {
    // SAFETY: as in lb_record; without F_CREATE, a socket without a record gets null.
    let stored = unsafe { SOCKETS.get_ptr_mut(ctx) };
    if stored.is_null() {
        return;
    }
    // SAFETY: as in lb_record (a connect holds the socket's lock).
    unsafe {
        if (*stored).kind != RECORD_NONE {
            (*stored).kind = RECORD_NONE;
        }
    }
}

/// Keeps `record` in `REVERSE`, keyed by the socket and the backend; whether it is there. A
/// new entry is counted (`REVERSE_ADDED`): with the deletions, it tells how many entries the
/// LRU evicted to make room, which it does without a word.
#[inline(always)]
fn lb_keep_reverse(ctx: &SockAddrContext, record: &SocketRecord) -> bool {
    let key = ReverseKey {
        cookie: sock_cookie(ctx),
        addr: record.backend,
        port: record.backend_port,
        _pad: [0; 6],
    };
    let value = lb_reverse_value(record);
    // SAFETY: REVERSE is not versioned; a value read here is compared at once.
    if unsafe { REVERSE.get(key) } == Some(&value) {
        return true;
    }
    if REVERSE.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        lb_count(event::REVERSE_ADDED);
        return true;
    }
    // There (with another value), or made there meanwhile: replaced.
    REVERSE.insert(key, value, 0).is_ok()
}

/// The common body of the recvmsg and getpeername hooks: an address that is the backend of
/// this socket's record becomes the record's VIP (the record is the socket's own, so it
/// holds as long as the socket does); else one that `REVERSE` holds for this socket becomes
/// that VIP, if the live set still has the service and the backend in it, and a stale entry
/// is deleted. These hooks cannot fail the syscall.
#[inline(always)]
fn lb_reverse(
    ctx: &SockAddrContext,
    kind: u8,
    (addr, port, _): (Addr, u16, u8),
    rewrite: impl FnOnce(&Addr, u16),
) -> i32 {
    if let Some(record) = lb_recorded(ctx, &addr, port) {
        rewrite(&record.vip, record.vip_port);
        lb_count_backend(record.backend_id, offset_of!(BackendCounters, reverse));
        let seen =
            Seen { kind, reason: 0, service_id: record.service_id, protocol: record.protocol };
        lb_trace(seen, (&record.vip, record.vip_port), (&addr, port));
        return ALLOW;
    }
    let key = ReverseKey { cookie: sock_cookie(ctx), addr, port, _pad: [0; 6] };
    // SAFETY: copied at once; REVERSE entries are written whole.
    let Some(&entry) = (unsafe { REVERSE.get(key) }) else {
        return ALLOW;
    };
    if lb_still_serves(&entry, &addr, port) {
        rewrite(&entry.vip, entry.port);
        lb_count_backend(entry.backend_id, offset_of!(BackendCounters, reverse));
        let seen = Seen { kind, reason: 0, service_id: entry.service_id, protocol: entry.protocol };
        lb_trace(seen, (&entry.vip, entry.port), (&addr, port));
    } else {
        let _ = REVERSE.remove(key);
        lb_count(event::REVERSE_STALE);
        lb_count_service(entry.service_id, offset_of!(ServiceCounters, stale_reverse_entry));
    }
    ALLOW
}

/// This socket's record, if its backend is (`addr`, `port`).
#[inline(always)]
fn lb_recorded(ctx: &SockAddrContext, addr: &Addr, port: u16) -> Option<SocketRecord> {
    // SAFETY: as in lb_record; without F_CREATE, a socket without a record gets null.
    let stored = unsafe { SOCKETS.get_ptr_mut(ctx) };
    if stored.is_null() {
        return None;
    }
    // SAFETY: as in lb_record.
    let record = unsafe { *stored };
    (record.kind != RECORD_NONE && record.backend == *addr && record.backend_port == port)
        .then_some(record)
}

/// What `record` says of its translation, as `REVERSE` keeps it.
#[inline(always)]
pub(crate) fn lb_reverse_value(record: &SocketRecord) -> ReverseValue {
    ReverseValue {
        vip: record.vip,
        port: record.vip_port,
        protocol: record.protocol,
        _pad: 0,
        service_id: record.service_id,
        backend_id: record.backend_id,
    }
}

/// Whether the live set still has `entry`'s service at its VIP and, as one of that service's
/// backends, `entry`'s backend at (`addr`, `port`). (Cilium checks only the service.)
#[inline(always)]
pub(crate) fn lb_still_serves(entry: &ReverseValue, addr: &Addr, port: u16) -> bool {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
