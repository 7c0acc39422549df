//! Choosing a backend: the service, the socket's kept backend, affinity, the slot.
use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_ktime_get_ns,
        },
    },
    programs::SockAddrContext,
};
use reconciler_common::{
    affinity, backend_fingerprint, event, hash64, maglev, random_slot, trace, Addr, AffinityKey,
    AffinityValue, Backend, BackendKey, ServiceKey, ServiceValue, SlotKey, SocketRecord, VipKey,
    ALGORITHM_MAGLEV, BACKEND_MAINTENANCE, CLIENT_NETNS, MAX_EXCLUDED, RECORD_DATAGRAM,
};

use crate::{
    count::lb_count_affinity, sock::sock_cookie, ACTIVE_SET, AFFINITY, BACKENDS, EXCLUDED,
    SERVICES, SLOTS, SOCKETS, VIPS,
};

pub(crate) enum Selection {
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
        /// The socket's record if it was fetched (a datagram's), else null.
        stored: *mut SocketRecord,
    },
}

/// Chooses a backend for (`addr`, `port`, `protocol`): for a datagram, the one its socket's
/// record keeps while it is usable; the client's affinity entry's if it holds; else the
/// slot that `lb_choice` (random) or the client (Maglev, `maglev::client_slot`) picks.
#[inline(always)]
pub(crate) fn lb_select(
    ctx: &SockAddrContext,
    kind: u8,
    addr: &Addr,
    port: u16,
    protocol: u8,
) -> Selection {
    let set = lb_active_set();
    let key = ServiceKey { addr: *addr, port, protocol, set };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    let Some(&service) = (unsafe { SERVICES.get(key) }) else {
        return lb_not_a_service(addr, set);
    };
    // Checked only for a VIP: other connects pay nothing for it.
    if lb_excluded() {
        return Selection::NotAService;
    }
    if service.slot_count == 0 {
        return Selection::Refused { reason: event::NO_BACKEND, service_id: service.service_id };
    }
    let service_id = service.service_id;
    let mut stored = core::ptr::null_mut();
    if kind == trace::SENDMSG {
        // Fetched once, created if missing: it is read for the kept backend and written
        // with the new translation.
        // SAFETY: the context's socket is a full socket, held for the syscall.
        stored = unsafe { SOCKETS.get_or_insert_ptr_mut(ctx, None) };
        if let Some((backend, backend_id)) = lb_kept(stored, service_id, set) {
            return Selection::Backend { backend, service_id, backend_id, stored };
        }
    }
    let affinity = if service.affinity_timeout_secs == 0 {
        None
    } else {
        let key =
            AffinityKey { service_id, _pad: 0, client: lb_client(ctx, service.affinity_client) };
        if let Some((backend, backend_id)) = lb_affinity(&key, &service, set) {
            return Selection::Backend { backend, service_id, backend_id, stored };
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
        let backend_fingerprint = backend_fingerprint(&backend.addr, backend.port);
        let value = AffinityValue { last_used_ns, backend_id, backend_fingerprint };
        let _ = AFFINITY.insert(key, value, 0);
    }
    Selection::Backend { backend, service_id, backend_id, stored }
}

/// An address without a service on this port and protocol: refused if it is a VIP (of
/// another port or protocol) and the process is not excluded; else none of ours.
#[inline(always)]
pub(crate) fn lb_not_a_service(addr: &Addr, set: u8) -> Selection {
    // SAFETY: as in lb_select.
    if unsafe { VIPS.get(VipKey { addr: *addr, set, _pad: [0; 3] }) }.is_some() && !lb_excluded() {
        Selection::Refused { reason: event::UNKNOWN_PORT, service_id: 0 }
    } else {
        Selection::NotAService
    }
}

/// The backend the last datagram of this socket to `service_id` went to, if its record
/// `stored` (or null) holds it and it is still usable: one of the service's in the live set,
/// active or draining (not in maintenance, not taken out by health). So adding a backend
/// moves no unconnected socket, and removing one moves only its own.
#[inline(always)]
fn lb_kept(stored: *mut SocketRecord, service_id: u32, set: u8) -> Option<(Backend, u32)> {
    if stored.is_null() {
        return None;
    }
    // SAFETY: as in lb_record.
    let record = unsafe { *stored };
    if record.kind != RECORD_DATAGRAM || record.service_id != service_id {
        return None;
    }
    let key = BackendKey { backend_id: record.backend_id, set, _pad: [0; 3] };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    let backend = *unsafe { BACKENDS.get(key) }?;
    (backend.service_id == service_id
        && backend.state < BACKEND_MAINTENANCE
        && backend.addr == record.backend
        && backend.port == record.backend_port)
        .then_some((backend, record.backend_id))
}

/// The backend of the affinity entry `key`, if it holds: used within the service's timeout,
/// and its backend the one it was made for (not one that took a removed backend's ID) and
/// still one of the service's in the live set, active or draining (draining
/// keeps its clients: that is what draining is for; maintenance and unhealthy do not). A use
/// renews it; an entry whose backend is no longer usable is deleted.
#[inline(always)]
pub(crate) fn lb_affinity(
    key: &AffinityKey,
    service: &ServiceValue,
    set: u8,
) -> Option<(Backend, u32)> {
    let Some(entry) = AFFINITY.get_ptr_mut(key) else {
        lb_count_affinity(affinity::MISS);
        return None;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: an LRU map element stays valid for this program run (RCU); a concurrent
    // update of the same entry by another CPU writes whole values of the same client.
    let AffinityValue { last_used_ns, backend_id, backend_fingerprint: made_for } =
        unsafe { *entry };
    if now.wrapping_sub(last_used_ns) > u64::from(service.affinity_timeout_secs) * 1_000_000_000 {
        lb_count_affinity(affinity::MISS);
        return None;
    }
    let backend_key = BackendKey { backend_id, set, _pad: [0; 3] };
    // SAFETY: entries are only ever written in the standby set, which no program reads.
    match unsafe { BACKENDS.get(backend_key) } {
        Some(&backend)
            if backend.service_id == service.service_id
                && backend.state < BACKEND_MAINTENANCE
                && lb_made_for(made_for, &backend) =>
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

/// Whether an affinity entry of fingerprint `made_for` was made for `backend`: not for a
/// backend that took the ID of a removed one (an entry of an older build, 0, holds by ID).
#[inline(always)]
fn lb_made_for(made_for: u32, backend: &Backend) -> bool {
    made_for == 0 || made_for == backend_fingerprint(&backend.addr, backend.port)
}

/// The 32-bit number a random service's slot comes from, read only when one is needed: for
/// a connect a random one, for a datagram a hash of its socket's cookie (so one unconnected
/// socket keeps one backend while the service's backends stay the same).
#[inline(always)]
pub(crate) fn lb_choice(ctx: &SockAddrContext, kind: u8) -> u32 {
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
pub(crate) fn lb_client(ctx: &SockAddrContext, kind: u8) -> u64 {
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
pub(crate) fn lb_excluded() -> bool {
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
pub(crate) fn lb_active_set() -> u8 {
    // `& 1` keeps the key valid even if user space ever wrote something else.
    ACTIVE_SET.get(0).map_or(0, |set| (*set & 1) as u8)
}
