//! Service and backend IDs. They index the counter arrays, so they run from 1 (0 is "none"
//! in the maps) to one below the arrays' size. A new service or backend gets an ID the live
//! state does not use, so that the counters and slots of an ID's old owner stay apart from
//! its new one's; only where a full data plane has no such ID left does it get one that the
//! same apply frees (`reuse_freed`): a commit that replaces or moves something in a full data
//! plane still applies.
use std::{
    collections::{BTreeMap, BTreeSet},
    mem,
};

use crate::state::MapState;

/// Hands out the smallest IDs from 1 up that the live state does not use. Never runs out:
/// whether the IDs handed out fit is for [`reuse_freed`] and the capacity to judge.
pub(crate) struct IdAllocator {
    /// The live IDs, sorted; IDs handed out are above every one passed so far.
    used: Vec<u32>,
    /// How many of `used` are below `next`.
    passed: usize,
    next: u32,
}

impl IdAllocator {
    pub(crate) fn new(live: impl Iterator<Item = u32>) -> Self {
        let mut used: Vec<u32> = live.collect();
        used.sort_unstable();
        used.dedup();
        Self { used, passed: 0, next: 1 }
    }

    pub(crate) fn allocate(&mut self) -> u32 {
        loop {
            while self.used.get(self.passed).is_some_and(|&id| id < self.next) {
                self.passed += 1;
            }
            if self.used.get(self.passed) != Some(&self.next) {
                break;
            }
            self.next += 1;
        }
        self.next += 1;
        self.next - 1
    }
}

/// Gives each service and backend of `state` whose ID is above `highest_service` or
/// `highest_backend` the smallest ID up to that limit that `state` does not use, if there is
/// one. Those are IDs the state frees: the allocator handed out every ID up to the limit that
/// the live state did not use before it went above it. `state` must be every service's.
pub(crate) fn reuse_freed(state: &mut MapState, highest_service: u32, highest_backend: u32) {
    let services = renumbering(state.services.values().map(|s| s.id), highest_service);
    let backends = renumbering(state.backends.keys().copied(), highest_backend);
    if services.is_empty() && backends.is_empty() {
        return;
    }
    let service = |id: u32| services.get(&id).copied().unwrap_or(id);
    let backend = |id: u32| backends.get(&id).copied().unwrap_or(id);
    for entry in state.services.values_mut() {
        entry.id = service(entry.id);
    }
    state.backends = mem::take(&mut state.backends)
        .into_iter()
        .map(|(id, mut entry)| {
            entry.service_id = service(entry.service_id);
            (backend(id), entry)
        })
        .collect();
    // An empty Maglev slot (`u32::MAX`) is no ID and stays.
    state.slots = mem::take(&mut state.slots)
        .into_iter()
        .map(|((service_id, slot), id)| ((service(service_id), slot), backend(id)))
        .collect();
    state.names =
        mem::take(&mut state.names).into_iter().map(|(id, name)| (service(id), name)).collect();
}

/// The new ID of each of `ids` above `highest`: the smallest IDs up to it that none of `ids`
/// is, as far as they go.
fn renumbering(ids: impl Iterator<Item = u32>, highest: u32) -> BTreeMap<u32, u32> {
    let used: BTreeSet<u32> = ids.collect();
    let over = used.range(highest.saturating_add(1)..).copied();
    let free = (1..=highest).filter(|id| !used.contains(id));
    over.zip(free).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BackendEntry, BackendState, Frontend, Protocol, ServiceEntry};

    #[test]
    fn new_ids_are_the_smallest_the_live_state_does_not_use() {
        let mut ids = IdAllocator::new([5, 2, 5].into_iter());
        let got: Vec<u32> = (0..5).map(|_| ids.allocate()).collect();
        assert_eq!(got, [1, 3, 4, 6, 7]);
    }

    fn state_of(services: &[(u32, &[u32])]) -> MapState {
        let mut state = MapState::default();
        for (index, (service_id, backends)) in services.iter().enumerate() {
            let vip = std::net::IpAddr::from([10, 96, 0, index as u8]);
            let frontend = Frontend { vip, port: 80, protocol: Protocol::Tcp };
            let entry = ServiceEntry {
                id: *service_id,
                slot_count: backends.len() as u32,
                algorithm: Default::default(),
                maglev_client: Default::default(),
                affinity_timeout_secs: 0,
                affinity_client: Default::default(),
            };
            state.services.insert(frontend, entry);
            state.names.insert(*service_id, format!("s{service_id}"));
            for (slot, id) in backends.iter().enumerate() {
                let addr = std::net::SocketAddr::from(([10, 1, index as u8, slot as u8], 8080));
                let backend =
                    BackendEntry { addr, service_id: *service_id, state: BackendState::Active };
                state.backends.insert(*id, backend);
                state.slots.insert((*service_id, slot as u32), *id);
            }
        }
        state
    }

    #[test]
    fn ids_above_the_limit_take_the_ones_the_state_frees_and_every_reference_follows() {
        // Live: services 1 and 2 with backends 1-3 (a full data plane of 2 services, 3
        // backends). Service 2 moved (new ID 3), backend 3 replaced by 4 in service 1.
        let mut state = state_of(&[(1, &[1, 2, 4]), (3, &[5])]);
        state.slots.insert((1, 3), u32::MAX);
        reuse_freed(&mut state, 2, 3);
        // Backend 5 is over the limit with no ID left: it keeps its own, for the capacity
        // check to refuse.
        let mut expected = state_of(&[(1, &[1, 2, 3]), (2, &[5])]);
        expected.slots.insert((1, 3), u32::MAX);
        assert_eq!(state.backends, expected.backends);
        assert_eq!(state.slots, expected.slots);
        assert_eq!(state.names, BTreeMap::from([(1, "s1".into()), (2, "s3".into())]));
        let ids: BTreeSet<u32> = state.services.values().map(|s| s.id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_state_within_its_limits_is_left_as_it_is() {
        let mut state = state_of(&[(1, &[1, 7]), (4, &[2])]);
        let before = state.clone();
        reuse_freed(&mut state, 4, 7);
        assert_eq!(state, before);
    }
}
