//! The programs' per-service and per-backend counters, by name: what `reconciler status
//! --counters` prints and the daemon's `/metrics` exports. Read from the per-CPU maps when
//! asked, so they are exact; an ID's counters are zeroed when a new service or backend takes
//! it (see `Dataplane::apply`), so they count since the current owner got its ID.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::Serialize;

use crate::dataplane::{Dataplane, DataplaneError};
use reconciler_common::flows::BackendFlows;
use reconciler_core::state::{MapState, Protocol};

/// One service's refusals, by reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceCount {
    /// `name/port`, as plans show it.
    pub service: String,
    /// Connects and datagrams refused because no backend was usable.
    pub no_backend: u64,
    /// Refused because the live set was inconsistent (a slot or a backend missing).
    pub inconsistent_set: u64,
    /// Replies and `getpeername()` whose reverse entry was stale (deleted, not translated).
    pub stale_reverse_entry: u64,
}

/// One backend's translations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendCount {
    pub service: String,
    pub backend: SocketAddr,
    pub protocol: Protocol,
    /// Connects (TCP, connected UDP) and datagrams (unconnected UDP) sent to it.
    pub connections: u64,
    /// Replies and `getpeername()` results translated back to the VIP.
    pub reverse_translations: u64,
    /// For a TCP backend: how its connections went (the `flows` program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowCount>,
}

/// How a TCP backend's connections went, as the `flows` program saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowCount {
    /// Connections established.
    pub established: u64,
    /// Connections that failed before they were established (reset, timed out, or given up
    /// by the application).
    pub failed: u64,
    /// Of those, how many in a row since the last connection established.
    pub consecutive_failures: u64,
    /// Established connections closed since.
    pub closed: u64,
    /// Mean handshake time (the SYN's round trip, as the kernel measured it), in
    /// microseconds.
    pub mean_handshake_us: u64,
    /// Bytes sent (acknowledged by the backend) and received, over the closed connections.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Mean smoothed round-trip time at close, in microseconds.
    pub mean_rtt_us: u64,
}

impl From<BackendFlows> for FlowCount {
    fn from(flows: BackendFlows) -> FlowCount {
        let mean = |sum: u64, count: u64| sum.checked_div(count).unwrap_or(0);
        FlowCount {
            established: flows.established,
            failed: flows.failed,
            consecutive_failures: flows.consecutive_failures,
            closed: flows.closed,
            mean_handshake_us: mean(flows.handshake_ns, flows.established) / 1_000,
            bytes_sent: flows.bytes_sent,
            bytes_received: flows.bytes_received,
            mean_rtt_us: mean(flows.rtt_us, flows.closed),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub services: Vec<ServiceCount>,
    pub backends: Vec<BackendCount>,
}

/// The counters of every service and backend of `state` (the live set).
pub fn read(dataplane: &Dataplane, state: &MapState) -> Result<Counters, DataplaneError> {
    let name = |id: u32| state.names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let protocols: BTreeMap<u32, Protocol> =
        state.services.iter().map(|(frontend, entry)| (entry.id, frontend.protocol)).collect();
    let services = dataplane
        .service_counters(protocols.keys().copied())?
        .into_iter()
        .map(|(id, c)| ServiceCount {
            service: name(id),
            no_backend: c.no_backend,
            inconsistent_set: c.inconsistent_set,
            stale_reverse_entry: c.stale_reverse_entry,
        })
        .collect();
    let mut flows = dataplane.backend_flows(state.backends.keys().copied())?;
    let backends = dataplane
        .backend_counters(state.backends.keys().copied())?
        .into_iter()
        .filter_map(|(id, c)| {
            let backend = state.backends.get(&id)?;
            let protocol = *protocols.get(&backend.service_id)?;
            Some(BackendCount {
                service: name(backend.service_id),
                backend: backend.addr,
                protocol,
                connections: c.translations,
                reverse_translations: c.reverse,
                flows: flows.remove(&id).filter(|_| protocol == Protocol::Tcp).map(FlowCount::from),
            })
        })
        .collect();
    Ok(Counters { services, backends })
}
