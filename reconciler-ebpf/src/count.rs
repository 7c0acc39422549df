//! Counting and tracing what the programs do, and refusing a syscall.
use core::mem::offset_of;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_set_retval},
};
use reconciler_common::{event, trace, Addr, ServiceCounters, SocketRecord, TraceEvent};

use crate::{
    AFFINITY_EVENTS, BACKEND_TOTALS, EVENTS, REJECT, SERVICE_TOTALS, TRACE, TRACE_DROPS, TRACE_ON,
};

const ECONNREFUSED: i32 = 111;

/// Adds one to the counter at `field` (an `offset_of!(BackendCounters, ..)`) of backend
/// `backend_id`.
#[inline(always)]
pub(crate) fn lb_count_backend(backend_id: u32, field: usize) {
    if let Some(counters) = BACKEND_TOTALS.get_ptr_mut(backend_id) {
        // SAFETY: `field` is the offset of a u64 field, inside the value and aligned.
        lb_add_one(unsafe { counters.cast::<u8>().add(field).cast::<u64>() });
    }
}

/// Adds one to the counter at `field` (an `offset_of!(ServiceCounters, ..)`) of service
/// `service_id`.
#[inline(always)]
pub(crate) fn lb_count_service(service_id: u32, field: usize) {
    if let Some(counters) = SERVICE_TOTALS.get_ptr_mut(service_id) {
        // SAFETY: as in lb_count_backend.
        lb_add_one(unsafe { counters.cast::<u8>().add(field).cast::<u64>() });
    }
}

#[inline(always)]
fn lb_add_one(counter: *mut u64) {
    lb_add(counter, 1);
}

/// One atomic add of `value` (`BPF_ATOMIC | BPF_ADD` without fetch, which every kernel with
/// BPF has): these counters hold one value for all CPUs, so their memory does not grow with
/// them; a connect pays a cache line shared with the other CPUs counting the same backend.
/// Written in assembly: the BPF target has no `AtomicU64::fetch_add` (it lacks
/// compare-and-swap).
#[inline(always)]
pub(crate) fn lb_add(counter: *mut u64, value: u64) {
    // SAFETY: an array value stays valid for the program run, and is only ever changed
    // through atomic adds (user space writes it only before its ID is given out); the
    // instruction reads and writes those 8 aligned bytes only.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {value}",
            counter = in(reg) counter,
            value = in(reg) value,
            options(nostack),
        )
    };
}

/// What a trace event says besides the addresses.
pub(crate) struct Seen {
    pub(crate) kind: u8,
    pub(crate) reason: u8,
    pub(crate) service_id: u32,
    pub(crate) protocol: u8,
}

/// Writes a trace event if a tracer runs: otherwise one array lookup. A full ring drops the
/// event, counted, and the syscall goes on.
#[inline(always)]
pub(crate) fn lb_trace(
    seen: Seen,
    (vip, vip_port): (&Addr, u16),
    (backend, backend_port): (&Addr, u16),
) {
    lb_emit(|| TraceEvent {
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
}

/// A trace event of kind `kind` for the connection `record` describes, from the `flows`
/// program: it runs where the kernel handles the connection (a softirq, often), so there is
/// no process to name.
#[inline(always)]
pub(crate) fn lb_trace_flow(kind: u8, record: &SocketRecord) {
    lb_emit(|| TraceEvent {
        // SAFETY: the helper has no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: 0,
        pid: 0,
        service_id: record.service_id,
        vip: record.vip,
        backend: record.backend,
        vip_port: record.vip_port,
        backend_port: record.backend_port,
        protocol: record.protocol,
        kind,
        reason: 0,
        _pad: 0,
        comm: [0; 16],
    });
}

/// Writes the event `make` makes if a tracer runs (otherwise one array lookup). A full ring
/// drops the event, counted.
#[inline(always)]
fn lb_emit(make: impl FnOnce() -> TraceEvent) {
    if TRACE_ON.get(0).is_none_or(|pid| *pid == 0) {
        return;
    }
    let Some(mut entry) = TRACE.reserve(0) else {
        if let Some(drops) = TRACE_DROPS.get_ptr_mut(0) {
            // SAFETY: a per-CPU value, and this program cannot be preempted by itself on one CPU.
            unsafe { *drops += 1 };
        }
        return;
    };
    entry.write(make());
    entry.submit(0);
}

#[inline(always)]
pub(crate) fn lb_count_affinity(what: u32) {
    if let Some(count) = AFFINITY_EVENTS.get_ptr_mut(what) {
        // SAFETY: a per-CPU value, and this program cannot be preempted by itself on one CPU.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub(crate) fn lb_count(reason: u32) {
    if let Some(count) = EVENTS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU value, and this program cannot be preempted by itself on one CPU.
        unsafe { *count += 1 };
    }
}

/// Refuses a connect or datagram to (`vip`, `port`) for `reason`, traced: see `refuse`.
#[inline(always)]
pub(crate) fn lb_refuse(
    reason: u32,
    service_id: u32,
    protocol: u8,
    (vip, port): (&Addr, u16),
) -> i32 {
    let seen = Seen { kind: trace::REFUSED, reason: reason as u8, service_id, protocol };
    lb_trace(seen, (vip, port), (&[0; 4], 0));
    refuse(reason, service_id)
}

/// Makes the syscall fail at once with ECONNREFUSED, counted under `reason` (overall, and
/// for the service where its counters have the reason): no packet is sent to the VIP.
#[inline(always)]
pub(crate) fn refuse(reason: u32, service_id: u32) -> i32 {
    lb_count(reason);
    if reason == event::NO_BACKEND {
        lb_count_service(service_id, offset_of!(ServiceCounters, no_backend));
    } else if reason == event::SLOT_MISS || reason == event::BACKEND_MISS {
        lb_count_service(service_id, offset_of!(ServiceCounters, inconsistent_set));
    }
    // SAFETY: bpf_set_retval is allowed in cgroup sock_addr programs (Linux 5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}
