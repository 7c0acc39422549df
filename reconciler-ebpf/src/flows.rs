//! The `flows` sock_ops program's side: how the TCP connections the data plane translated
//! go, per backend (`BACKEND_FLOWS`), with one histogram of handshake times (`HANDSHAKES`).
//! Thin over the socket's record (`SOCKETS`): a connection that was not translated costs one
//! storage lookup, a null test, and asks for no more callbacks.
use core::{mem::offset_of, ptr};

use aya_ebpf::{
    bindings::{
        bpf_sock, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::bpf_sk_storage_get,
    programs::SockOpsContext,
};
use reconciler_common::{
    flows::{BackendFlows, HANDSHAKE_BOUNDS_US, HANDSHAKE_SUM},
    trace, SocketRecord, PROTO_TCP, RECORD_CONNECTED,
};

use crate::{
    count::{lb_add, lb_trace_flow},
    lb_reverse_value, lb_still_serves, BACKEND_FLOWS, HANDSHAKES, SOCKETS,
};

/// `TCP_SYN_SENT` and `TCP_CLOSE` of the kernel's `enum tcp_state`.
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// One callback of the `flows` program.
#[inline(always)]
pub(crate) fn on_sock_ops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => connecting(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx),
        // args[0] is the old state, args[1] the new one.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => closed(ctx, ctx.arg(0)),
        _ => {}
    }
}

/// A translated socket starts to connect: the kernel is asked for its state changes (which
/// it reports only to sockets that ask).
#[inline(always)]
fn connecting(ctx: &SockOpsContext) {
    if record(socket(ctx)).is_some() {
        // The flags replace the socket's: keep those another sock_ops program asked for.
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    }
}

/// The handshake completed: counted with its time, the SYN's round trip as the kernel just
/// measured it (kept in the socket, `srtt_us`, times 8). Keeping the connect's own start in
/// socket storage would time it to the nanosecond, retransmitted SYNs and all, but that
/// storage's allocation cost a connection more than the rest of this program (`make bench
/// --only flows`). What this leaves out: the time a SYN waited to be sent again (with TCP
/// timestamps, the round trip is the last SYN's); a SYN never answered is a failure.
#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let Some(record) = record(socket(ctx)) else { return };
    let Some(flows) = owned_flows(&record) else { return };
    // SAFETY: a plain read of the context.
    let elapsed = u64::from(unsafe { (*ctx.ops).srtt_us } >> 3) * 1_000;
    lb_add(field(flows, offset_of!(BackendFlows, established)), 1);
    // SAFETY: a field of an array value, valid for the program run (see the field's doc).
    unsafe { field(flows, offset_of!(BackendFlows, consecutive_failures)).write_volatile(0) };
    lb_add(field(flows, offset_of!(BackendFlows, handshake_ns)), elapsed);
    count_handshake(elapsed);
    lb_trace_flow(trace::ESTABLISHED, &record);
}

/// The connection closed: before it was established (`old` is `SYN_SENT`: reset, the SYN's
/// retries ran out, or the application gave up on the connect first) it failed; else its
/// bytes and round-trip time are added.
#[inline(always)]
fn closed(ctx: &SockOpsContext, old: u32) {
    let Some(record) = record(socket(ctx)) else { return };
    let Some(flows) = owned_flows(&record) else { return };
    if old == TCP_SYN_SENT {
        lb_add(field(flows, offset_of!(BackendFlows, failed)), 1);
        lb_add(field(flows, offset_of!(BackendFlows, consecutive_failures)), 1);
        lb_trace_flow(trace::FAILED, &record);
        return;
    }
    // SAFETY: the context of a state change is a full socket's; the fields are plain reads.
    let (acked, received, srtt) =
        unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received, (*ctx.ops).srtt_us) };
    lb_add(field(flows, offset_of!(BackendFlows, closed)), 1);
    lb_add(field(flows, offset_of!(BackendFlows, bytes_sent)), acked);
    lb_add(field(flows, offset_of!(BackendFlows, bytes_received)), received);
    // The kernel keeps the smoothed RTT times 8.
    lb_add(field(flows, offset_of!(BackendFlows, rtt_us)), u64::from(srtt >> 3));
}

/// The context's socket (null when it has none).
#[inline(always)]
fn socket(ctx: &SockOpsContext) -> *mut bpf_sock {
    // SAFETY: a plain read of the context.
    unsafe { (*ctx.ops).__bindgen_anon_2.sk }
}

/// The record of `sk`, if the data plane connected it over TCP.
#[inline(always)]
fn record(sk: *mut bpf_sock) -> Option<SocketRecord> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: a full socket of the context; without F_CREATE, no record gives null.
    let stored = unsafe { bpf_sk_storage_get(map(&SOCKETS), sk.cast(), ptr::null_mut(), 0) };
    if stored.is_null() {
        return None;
    }
    // SAFETY: socket storage stays valid for this program run; copied at once.
    let record = unsafe { *stored.cast::<SocketRecord>() };
    (record.kind == RECORD_CONNECTED && record.protocol == PROTO_TCP).then_some(record)
}

/// The `BACKEND_FLOWS` entry of the record's backend, if the live set still has it at that
/// address for that service: its ID may be another backend's by now.
#[inline(always)]
fn owned_flows(record: &SocketRecord) -> Option<*mut BackendFlows> {
    if !lb_still_serves(&lb_reverse_value(record), &record.backend, record.backend_port) {
        return None;
    }
    BACKEND_FLOWS.get_ptr_mut(record.backend_id)
}

/// The `u64` at `offset` (an `offset_of!(BackendFlows, ..)`) of `flows`.
#[inline(always)]
fn field(flows: *mut BackendFlows, offset: usize) -> *mut u64 {
    // SAFETY: `offset` is the offset of a u64 field, inside the value and aligned.
    unsafe { flows.cast::<u8>().add(offset).cast::<u64>() }
}

/// Counts a handshake of `elapsed` ns in its bucket of `HANDSHAKES` and in the sum.
#[inline(always)]
fn count_handshake(elapsed: u64) {
    let micros = elapsed / 1_000;
    let mut bucket = HANDSHAKE_BOUNDS_US.len() as u32;
    for (index, bound) in HANDSHAKE_BOUNDS_US.iter().enumerate() {
        if micros <= *bound {
            bucket = index as u32;
            break;
        }
    }
    for (index, value) in [(bucket, 1), (HANDSHAKE_SUM, elapsed)] {
        if let Some(count) = HANDSHAKES.get_ptr_mut(index) {
            // SAFETY: a per-CPU value; this program cannot be preempted by itself on one CPU.
            unsafe { *count += value };
        }
    }
}

/// A map, as the helpers take it.
#[inline(always)]
fn map<T>(map: &T) -> *mut core::ffi::c_void {
    ptr::from_ref(map).cast_mut().cast()
}
