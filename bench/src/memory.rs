//! The kernel memory of a data plane whose maps are full: every service, backend, slot and
//! name its capacity holds, written for real, then measured as `status` does (`footprint`).
//! The LRU maps (`REVERSE`, `AFFINITY`) and the arrays are preallocated: full already.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Result;
use reconciler::dataplane::{ApplyTo, Footprint, Install};
use reconciler_core::{
    capacity::Capacity,
    state::{
        Algorithm, BackendEntry, BackendState, Client, Frontend, MapState, Protocol, ServiceEntry,
    },
};
use reconciler_tests::Sandbox;

/// The footprint of a data plane at `capacity` holding as much as it can.
pub fn full_at(capacity: &Capacity) -> Result<Footprint> {
    let sandbox = Sandbox::new("bench-memory")?;
    let (mut dataplane, _) =
        Install::new(sandbox.pin_path(), sandbox.cgroup()).capacity(*capacity).run()?;
    dataplane.apply(&filling(capacity), ApplyTo::default())?;
    Ok(dataplane.footprint()?)
}

/// As many services (IDs 1..), backends and slots (shared out evenly) as `capacity` holds,
/// each service with its name.
fn filling(capacity: &Capacity) -> MapState {
    let services = capacity.services - 1;
    let slots_each = (capacity.slots / services).max(1);
    let backends_each = ((capacity.backends - 1) / services).max(1);
    let mut state = MapState::default();
    let mut next_backend = 1;
    for id in 1..=services {
        let vip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + id));
        let frontend = Frontend { vip, port: 80, protocol: Protocol::Tcp };
        let mut backends = Vec::new();
        for _ in 0..backends_each {
            if next_backend < capacity.backends {
                let addr =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + next_backend)), 8080);
                let entry = BackendEntry { addr, service_id: id, state: BackendState::Active };
                state.backends.insert(next_backend, entry);
                backends.push(next_backend);
                next_backend += 1;
            }
        }
        let slot_count = if backends.is_empty() { 0 } else { slots_each };
        for slot in 0..slot_count {
            state.slots.insert((id, slot), backends[slot as usize % backends.len()]);
        }
        let entry = ServiceEntry {
            id,
            slot_count,
            algorithm: Algorithm::Random,
            maglev_client: Client::Cgroup,
            affinity_timeout_secs: 0,
            affinity_client: Client::Cgroup,
        };
        state.services.insert(frontend, entry);
        state.names.insert(id, format!("s{id}/http"));
    }
    state
}
