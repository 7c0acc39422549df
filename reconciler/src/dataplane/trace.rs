//! `reconciler trace`'s side of the `TRACE` ring buffer: one tracer at a time announces itself
//! in `TRACE_ON` (its PID; the programs skip the event path while it is 0), reads events as
//! they come, and clears `TRACE_ON` when it ends. A tracer that died without clearing it
//! leaves its PID there: the programs keep writing into a ring nobody reads (each event
//! dropped, counted) until the next tracer takes over.
use std::{
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use reconciler_common::{event, trace, TraceEvent, PROTO_UDP};
use serde::Serialize;

use reconciler_core::state::Protocol;

use super::{
    encode,
    error::{map_err, DataplaneError, Result},
    pins::typed_map,
};

/// A running tracer: the ring buffer, and the flag it set.
pub struct Tracer {
    ring: RingBuf<MapData>,
    on: Array<MapData, u32>,
    drops: PerCpuArray<MapData, u64>,
    pid: u32,
}

/// One translation, as `reconciler trace` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub monotonic_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub protocol: Protocol,
    pub vip: SocketAddr,
    /// `None` for a refusal.
    pub backend: Option<SocketAddr>,
    pub service_id: u32,
    /// `connect`, `sendmsg`, `reverse` (a reply's source translated back), `getpeername` or
    /// `refused`.
    pub event: &'static str,
    /// Why a refusal: `no_backend`, `slot_miss` or `backend_miss`.
    pub reason: Option<&'static str>,
}

impl Tracer {
    /// Starts tracing the data plane at `pin_path`; refused while another tracer runs.
    pub fn start(pin_path: &Path) -> Result<Tracer> {
        let mut on: Array<MapData, u32> = typed_map(pin_path, "TRACE_ON")?;
        let running = on.get(&0, 0).map_err(map_err("reading TRACE_ON"))?;
        if running != 0 && Path::new(&format!("/proc/{running}")).exists() {
            return Err(DataplaneError::TracerRunning { pid: running });
        }
        let ring: RingBuf<MapData> = typed_map(pin_path, "TRACE")?;
        let drops: PerCpuArray<MapData, u64> = typed_map(pin_path, "TRACE_DROPS")?;
        let pid = std::process::id();
        on.set(0, pid, 0).map_err(map_err("writing TRACE_ON"))?;
        Ok(Tracer { ring, on, drops, pid })
    }

    /// The events waiting in the ring, oldest first (none if it is empty).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<TraceEvent>() {
                continue;
            }
            // SAFETY: the programs write whole TraceEvents; the ring's items are 8-byte
            // aligned, and read_unaligned needs no alignment anyway.
            let raw: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            events.push(Event::from(&raw));
        }
        events
    }

    /// Events the programs dropped because the ring was full, since the data plane started.
    pub fn dropped(&self) -> Result<u64> {
        let values = self.drops.get(&0, 0).map_err(map_err("reading TRACE_DROPS"))?;
        Ok(values.iter().sum())
    }

    /// The ring's descriptor, for poll(2): readable when events wait.
    pub fn raw_fd(&self) -> i32 {
        self.ring.as_fd().as_raw_fd()
    }
}

impl Drop for Tracer {
    /// The programs stop writing events, unless another tracer took over meanwhile.
    fn drop(&mut self) {
        if self.on.get(&0, 0).is_ok_and(|pid| pid == self.pid) {
            let _ = self.on.set(0, 0, 0);
        }
    }
}

impl From<&TraceEvent> for Event {
    fn from(raw: &TraceEvent) -> Event {
        let end = raw.comm.iter().position(|&b| b == 0).unwrap_or(raw.comm.len());
        let address =
            |words, port: u16| SocketAddr::new(encode::words_to_addr(words), u16::from_be(port));
        Event {
            monotonic_ns: raw.time_ns,
            pid: raw.pid,
            comm: String::from_utf8_lossy(&raw.comm[..end]).into_owned(),
            cgroup_id: raw.cgroup_id,
            protocol: if raw.protocol == PROTO_UDP { Protocol::Udp } else { Protocol::Tcp },
            vip: address(&raw.vip, raw.vip_port),
            backend: (raw.kind != trace::REFUSED).then(|| address(&raw.backend, raw.backend_port)),
            service_id: raw.service_id,
            event: match raw.kind {
                trace::CONNECT => "connect",
                trace::SENDMSG => "sendmsg",
                trace::RECVMSG => "reverse",
                trace::GETPEERNAME => "getpeername",
                _ => "refused",
            },
            reason: (raw.kind == trace::REFUSED).then_some(match u32::from(raw.reason) {
                event::NO_BACKEND => "no_backend",
                event::SLOT_MISS => "slot_miss",
                _ => "backend_miss",
            }),
        }
    }
}
