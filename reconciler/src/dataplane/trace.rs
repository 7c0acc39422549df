//! `reconciler trace`'s side of the `TRACE` ring buffer: one tracer at a time announces itself
//! in `TRACE_ON` (its PID; the programs skip the event path while it is 0), reads events as
//! they come, and clears `TRACE_ON` when it ends.
//!
//! Which tracer runs is not told by the PID (a tracer in a PID namespace of its own is PID
//! 1 there, and a dead one's PID is reused) but by a lock the kernel drops with its holder:
//! a running tracer holds `flock` on its own open of the `TRACE_ON` pin. So of two tracers
//! started together exactly one runs, and a flag left by a tracer that was killed is known
//! stale (`status` says so) and taken over by the next tracer. (A pin opens only for a map
//! with BTF; for an older build's map without, the PID decides, as it did then.)
use std::{
    fs::File,
    io,
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

/// A running tracer: the ring buffer, the flag it set and the lock that says it runs.
pub struct Tracer {
    ring: RingBuf<MapData>,
    on: Array<MapData, u32>,
    drops: PerCpuArray<MapData, u64>,
    pid: u32,
    _lock: Option<File>,
}

/// Whom the event path is on for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TraceState {
    /// No tracer: the programs skip the event path.
    Off,
    /// A tracer runs.
    Running { pid: u32 },
    /// The flag of a tracer that ended without clearing it (killed): the programs write
    /// events nobody reads until the next tracer takes over.
    Stale { pid: u32 },
}

/// Whom the event path of the data plane at `pin_path` is on for.
pub fn trace_state(pin_path: &Path) -> Result<TraceState> {
    let on: Array<MapData, u32> = typed_map(pin_path, "TRACE_ON")?;
    let pid = on.get(&0, 0).map_err(map_err("reading TRACE_ON"))?;
    if pid == 0 {
        return Ok(TraceState::Off);
    }
    let running = match lock_file(pin_path) {
        Some(file) => !try_lock(&file, libc::LOCK_SH),
        None => Path::new(&format!("/proc/{pid}")).exists(),
    };
    Ok(if running { TraceState::Running { pid } } else { TraceState::Stale { pid } })
}

/// A new open of the `TRACE_ON` pin, to lock; `None` where the pin does not open (a map
/// without BTF, of an older build).
fn lock_file(pin_path: &Path) -> Option<File> {
    File::open(pin_path.join("TRACE_ON")).ok()
}

/// Whether `flock(operation)` on `file` was granted at once.
fn try_lock(file: &File, operation: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let granted = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0;
    if !granted {
        let error = io::Error::last_os_error();
        // Anything but "held by another" (no locks on this file system): not ours to judge.
        return error.kind() != io::ErrorKind::WouldBlock;
    }
    true
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
    /// Starts tracing the data plane at `pin_path`; refused while another tracer runs. A
    /// stale flag (its tracer killed) is taken over.
    pub fn start(pin_path: &Path) -> Result<Tracer> {
        let mut on: Array<MapData, u32> = typed_map(pin_path, "TRACE_ON")?;
        let running = on.get(&0, 0).map_err(map_err("reading TRACE_ON"))?;
        let lock = lock_file(pin_path);
        let refused = match &lock {
            Some(file) => !try_lock(file, libc::LOCK_EX),
            None => running != 0 && Path::new(&format!("/proc/{running}")).exists(),
        };
        if refused {
            // Read again: a tracer that won the lock just now has written its PID since.
            let pid = on.get(&0, 0).unwrap_or(running);
            return Err(DataplaneError::TracerRunning { pid });
        }
        let ring: RingBuf<MapData> = typed_map(pin_path, "TRACE")?;
        let drops: PerCpuArray<MapData, u64> = typed_map(pin_path, "TRACE_DROPS")?;
        let pid = std::process::id();
        on.set(0, pid, 0).map_err(map_err("writing TRACE_ON"))?;
        Ok(Tracer { ring, on, drops, pid, _lock: lock })
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
                trace::ESTABLISHED => "established",
                trace::FAILED => "failed",
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
