//! Counting and tracing what the programs do, and refusing a syscall.
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_set_retval},
};
use reconciler_common::{event, trace, Addr, BackendCounters, ServiceCounters, TraceEvent};

use crate::{
    AFFINITY_EVENTS, BACKEND_COUNTS, EVENTS, REJECT, SERVICE_COUNTS, TRACE, TRACE_DROPS, TRACE_ON,
};

const ECONNREFUSED: i32 = 111;

#[inline(always)]
pub(crate) fn lb_count_backend(backend_id: u32, count: impl FnOnce(&mut BackendCounters)) {
    if let Some(counters) = BACKEND_COUNTS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value, and this program cannot be preempted by itself on one CPU.
        count(unsafe { &mut *counters });
    }
}

#[inline(always)]
pub(crate) fn lb_count_service(service_id: u32, count: impl FnOnce(&mut ServiceCounters)) {
    if let Some(counters) = SERVICE_COUNTS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU value, as in lb_count_backend.
        count(unsafe { &mut *counters });
    }
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
pub(crate) fn lb_count_affinity(what: u32) {
    if let Some(count) = AFFINITY_EVENTS.get_ptr_mut(what) {
        // SAFETY: per-CPU value, as in lb_count_backend.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub(crate) fn lb_count(reason: u32) {
    if let Some(count) = EVENTS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value, as in lb_count_backend.
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
        lb_count_service(service_id, |c| c.no_backend += 1);
    } else if reason == event::SLOT_MISS || reason == event::BACKEND_MISS {
        lb_count_service(service_id, |c| c.inconsistent_set += 1);
    }
    // SAFETY: bpf_set_retval is allowed in cgroup sock_addr programs (Linux 5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}
