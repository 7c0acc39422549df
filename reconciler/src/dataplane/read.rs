//! Reading the data plane: the metadata, both sets (whole, or under some keys), the counters,
//! the events and the session affinity entries. Nothing here writes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use aya::maps::{Array, MapData, PerCpuArray};
use reconciler_common::{
    affinity, event,
    exclusion::{self, HealthKey},
    flows::{BackendFlows, HANDSHAKE_SLOTS},
    AffinityKey, AffinityValue, Backend, BackendCounters, BackendKey, Metadata, ServiceCounters,
    ServiceKey, ServiceName, ServiceValue, SlotKey, REVISION_LEN,
};
use reconciler_core::{
    capacity::Capacity,
    state::{Blend, Exclusion, Frontend, MapState},
};

use super::{
    batch, encode,
    error::{io_err, map_err, Result},
    sizes, Dataplane,
};

/// The programs' `EVENTS` counters (see `reconciler_common::event` for each reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Events {
    /// Connects and datagrams to a service with no usable backend, refused.
    pub no_backend: u64,
    /// Refused because a slot was missing from the live set.
    pub slot_miss: u64,
    /// Refused because a backend was missing from the live set.
    pub backend_miss: u64,
    /// Reverse entries found stale (service or backend gone) and deleted.
    pub reverse_stale: u64,
    /// Translations that could not be recorded for the replies: refused.
    pub reverse_full: u64,
    /// Connects and datagrams to a VIP on a port or protocol no service defines: refused.
    pub unknown_port: u64,
    /// `REVERSE` entries made.
    pub reverse_added: u64,
    /// `REVERSE` entries applies deleted (their backend left).
    pub reverse_forgotten: u64,
    /// Connects that a session affinity entry sent to its backend.
    pub affinity_hits: u64,
    /// Connects of clients with no affinity entry, or an expired one.
    pub affinity_misses: u64,
    /// Affinity entries deleted because their backend was gone or in maintenance.
    pub affinity_dropped: u64,
}

impl Events {
    /// The `REVERSE` entries the LRU evicted to make room, given the `entries` there now:
    /// those made, less those deleted as stale or by applies, less those left. Their
    /// sockets' late replies show the backend's address.
    pub fn reverse_evicted(&self, entries: usize) -> u64 {
        let left = self.reverse_stale + self.reverse_forgotten + entries as u64;
        self.reverse_added.saturating_sub(left)
    }
}

/// What the metadata map says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub generation: u64,
    pub revision: Option<String>,
    pub applied_at_unix: Option<u64>,
    pub cgroup_id: u64,
    pub active_set: u8,
    pub standby_dirty: bool,
    /// What the maps hold, read from their sizes.
    pub capacity: Capacity,
}

/// The live state: the active set's content and the metadata.
#[derive(Clone, Debug)]
pub struct LiveState {
    pub state: MapState,
    pub status: Status,
}

/// What [`Dataplane::read_sets`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sets {
    /// The first set whole.
    Active,
    /// Both sets whole.
    Both,
    /// The first set without its slots.
    ActiveWithoutSlots,
}

impl Dataplane {
    pub(super) fn read_metadata(&self) -> Result<Metadata> {
        self.metadata.get(&0, 0).map_err(map_err("reading METADATA"))
    }

    pub(super) fn read_active_set(&self) -> Result<u8> {
        let set = self.active_set.get(&0, 0).map_err(map_err("reading ACTIVE_SET"))?;
        Ok((set & 1) as u8)
    }

    /// The metadata, in readable form.
    pub fn status(&self) -> Result<Status> {
        let metadata = self.read_metadata()?;
        let revision_len = usize::from(metadata.revision_len).min(REVISION_LEN);
        Ok(Status {
            generation: metadata.generation,
            revision: (revision_len > 0)
                .then(|| String::from_utf8_lossy(&metadata.revision[..revision_len]).into_owned()),
            applied_at_unix: (metadata.applied_at_unix > 0).then_some(metadata.applied_at_unix),
            cgroup_id: metadata.cgroup_id,
            active_set: self.read_active_set()?,
            standby_dirty: metadata.standby_dirty != 0,
            capacity: self.capacity()?,
        })
    }

    /// The capacity the open maps hold (no pin opened again: status is read on every run).
    fn capacity(&self) -> Result<Capacity> {
        sizes::capacity_from(|name| {
            let map = match name {
                "SERVICES" => &self.services,
                "BACKENDS" => &self.backends,
                "SLOTS" => &self.slots,
                "REVERSE" => &self.reverse,
                "AFFINITY" => &self.affinity,
                _ => return Ok(None),
            };
            sizes::max_entries(map, name).map(Some)
        })
    }

    /// The active set's content and the metadata.
    pub fn read_live(&self) -> Result<LiveState> {
        let status = self.status()?;
        let [state, _] = self.read_sets(status.active_set, Sets::Active)?;
        Ok(LiveState { state, status })
    }

    /// [`read_live`](Self::read_live) without the slots (empty): what names the IDs of
    /// services and backends and says which are excluded, for a fraction of the memory at
    /// capacity (a metrics scrape, a start).
    pub fn read_live_members(&self) -> Result<LiveState> {
        let status = self.status()?;
        let [state, _] = self.read_sets(status.active_set, Sets::ActiveWithoutSlots)?;
        Ok(LiveState { state, status })
    }

    /// The metadata and both sets, `[active, standby]`, every entry.
    pub fn read_both_sets(&self) -> Result<(Status, [MapState; 2])> {
        let status = self.status()?;
        let sets = self.read_sets(status.active_set, Sets::Both)?;
        Ok((status, sets))
    }

    /// Set `first` and, as `what` says, the other (else it is left empty), `[first,
    /// other]`, in one pass over each map. Entries that no build of ours writes (an unknown
    /// protocol) are skipped here and so are replaced by an apply.
    pub(super) fn read_sets(&self, first: u8, what: Sets) -> Result<[MapState; 2]> {
        let other_too = what == Sets::Both;
        let mut sets = [MapState::default(), MapState::default()];
        // The index into `sets` of an entry of `set`, if that set is wanted.
        let index = |set: u8| Some(usize::from(set != first)).filter(|&i| i == 0 || other_too);
        let read_error = |name: &str| io_err(format!("reading {name}"));
        for (key, value) in batch::lookup_all::<ServiceKey, ServiceValue>(&self.services)
            .map_err(read_error("SERVICES"))?
        {
            if let (Some(frontend), Some(i)) = (encode::frontend_of(&key), index(key.set)) {
                sets[i].services.insert(frontend, encode::service_entry(&value));
            }
        }
        let slots = match what {
            Sets::ActiveWithoutSlots => Vec::new(),
            _ => batch::lookup_all::<SlotKey, u32>(&self.slots).map_err(read_error("SLOTS"))?,
        };
        for (key, backend) in slots {
            if let Some(i) = index(key.set) {
                sets[i].slots.insert((key.service_id, key.slot), backend);
            }
        }
        for (key, value) in batch::lookup_all::<BackendKey, Backend>(&self.backends)
            .map_err(read_error("BACKENDS"))?
        {
            if let Some(i) = index(key.set) {
                sets[i].backends.insert(key.backend_id, encode::backend_entry(&value));
            }
        }
        let names: BTreeMap<u32, String> = batch::lookup_all::<u32, ServiceName>(&self.names)
            .map_err(read_error("SERVICE_NAMES"))?
            .iter()
            .map(|(id, value)| (*id, encode::name_of(value)))
            .collect();
        let [health, previous] = self.read_overlay()?;
        if other_too {
            sets[1].blends = blends(&previous, &sets[1]);
            sets[1].names = names.clone();
            (sets[1].health_excluded, sets[1].ejected, sets[1].ramps) =
                exclusions(&health, &sets[1]);
        }
        sets[0].names = names;
        (sets[0].health_excluded, sets[0].ejected, sets[0].ramps) = exclusions(&health, &sets[0]);
        sets[0].blends = blends(&previous, &sets[0]);
        Ok(sets)
    }

    /// `HEALTH_EXCLUDED`, which is not versioned: the same for both sets, as (service ID,
    /// backend address) pairs and why each is out (`reconciler_common::exclusion`; see
    /// [`exclusions`]).
    pub fn read_health(&self) -> Result<BTreeMap<(u32, SocketAddr), u32>> {
        let [overlay, _] = self.read_overlay()?;
        Ok(overlay)
    }

    /// Every entry of `HEALTH_EXCLUDED`: `[the overlay's (exclusions, ramps), the previous
    /// backends of rollouts]`.
    fn read_overlay(&self) -> Result<[BTreeMap<(u32, SocketAddr), u32>; 2]> {
        let mut found = [BTreeMap::new(), BTreeMap::new()];
        for (key, value) in batch::lookup_all::<HealthKey, u32>(&self.health)
            .map_err(io_err("reading HEALTH_EXCLUDED"))?
        {
            let previous = key.kind == exclusion::KEY_PREVIOUS;
            found[usize::from(previous)].insert(encode::health_entry(&key), value);
        }
        Ok(found)
    }

    /// Both sets' entries under the keys of `recorded` and `desired` (`[active, standby]`,
    /// with the health map), if they are what `recorded` says and the standby is clean
    /// (`standby_dirty` as the metadata says); `None` otherwise.
    pub(super) fn read_recorded(
        &self,
        active: u8,
        standby_dirty: bool,
        recorded: &MapState,
        desired: &MapState,
    ) -> Result<Option<[MapState; 2]>> {
        if standby_dirty {
            return Ok(None);
        }
        let sets = self.read_entries(active, recorded, desired)?;
        Ok(sets.iter().all(|set| set == recorded).then_some(sets))
    }

    /// What sets `first` and the other hold under the keys of `a` and `b`, `[first, other]`,
    /// one lookup per key and set; the health map whole.
    fn read_entries(&self, first: u8, a: &MapState, b: &MapState) -> Result<[MapState; 2]> {
        let frontends: BTreeSet<Frontend> =
            a.services.keys().chain(b.services.keys()).copied().collect();
        let slots: BTreeSet<(u32, u32)> = a.slots.keys().chain(b.slots.keys()).copied().collect();
        let backends: BTreeSet<u32> = a.backends.keys().chain(b.backends.keys()).copied().collect();
        let names: BTreeSet<u32> = a.names.keys().chain(b.names.keys()).copied().collect();
        let read_error = |name: &str| io_err(format!("reading {name}"));
        let [health, previous] = self.read_overlay()?;
        let mut sets = [MapState::default(), MapState::default()];
        for (index, set) in [first, first ^ 1].into_iter().enumerate() {
            let state = &mut sets[index];
            let keys = frontends.iter().map(|f| encode::service_key(f, set));
            for (key, value) in batch::lookup_each::<_, ServiceValue>(&self.services, keys)
                .map_err(read_error("SERVICES"))?
            {
                if let (Some(frontend), Some(value)) = (encode::frontend_of(&key), value) {
                    state.services.insert(frontend, encode::service_entry(&value));
                }
            }
            let keys = slots.iter().map(|slot| encode::slot_key(*slot, set));
            for (key, value) in
                batch::lookup_each::<_, u32>(&self.slots, keys).map_err(read_error("SLOTS"))?
            {
                if let Some(backend) = value {
                    state.slots.insert((key.service_id, key.slot), backend);
                }
            }
            let keys = backends.iter().map(|id| encode::backend_key(*id, set));
            for (key, value) in batch::lookup_each::<_, Backend>(&self.backends, keys)
                .map_err(read_error("BACKENDS"))?
            {
                if let Some(value) = value {
                    state.backends.insert(key.backend_id, encode::backend_entry(&value));
                }
            }
            for (id, value) in
                batch::lookup_each::<_, ServiceName>(&self.names, names.iter().copied())
                    .map_err(read_error("SERVICE_NAMES"))?
            {
                if let Some(value) = value {
                    state.names.insert(id, encode::name_of(&value));
                }
            }
            (state.health_excluded, state.ejected, state.ramps) = exclusions(&health, state);
            state.blends = blends(&previous, state);
        }
        Ok(sets)
    }

    /// The counters of backends `ids`.
    pub fn backend_counters(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<BTreeMap<u32, BackendCounters>> {
        values_of(&self.backend_counters, ids, "reading BACKEND_TOTALS")
    }

    /// What the `flows` program saw of backends `ids`' TCP connections.
    pub fn backend_flows(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<BTreeMap<u32, BackendFlows>> {
        values_of(&self.backend_flows, ids, "reading BACKEND_FLOWS")
    }

    /// The handshake-time histogram, summed over CPUs: a count per bucket of
    /// `flows::HANDSHAKE_BOUNDS_US` and one for the rest, then the sum in nanoseconds.
    pub fn handshakes(&self) -> Result<Vec<u64>> {
        (0..HANDSHAKE_SLOTS)
            .map(|index| {
                let values =
                    self.handshakes.get(&index, 0).map_err(map_err("reading HANDSHAKES"))?;
                Ok(values.iter().sum())
            })
            .collect()
    }

    /// The refusal counters of services `ids`.
    pub fn service_counters(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<BTreeMap<u32, ServiceCounters>> {
        values_of(&self.service_counters, ids, "reading SERVICE_TOTALS")
    }

    /// What the programs counted besides choosing backends, by `event::*` reason, summed
    /// over CPUs.
    pub fn events(&self) -> Result<Events> {
        let sum = |map: &PerCpuArray<MapData, u64>, index: u32, name: &'static str| {
            map.get(&index, 0).map(|values| values.iter().sum::<u64>()).map_err(map_err(name))
        };
        let event = |reason| sum(&self.events, reason, "reading EVENTS");
        let affinity = |what| sum(&self.affinity_events, what, "reading AFFINITY_EVENTS");
        Ok(Events {
            no_backend: event(event::NO_BACKEND)?,
            slot_miss: event(event::SLOT_MISS)?,
            backend_miss: event(event::BACKEND_MISS)?,
            reverse_stale: event(event::REVERSE_STALE)?,
            reverse_full: event(event::REVERSE_FULL)?,
            unknown_port: event(event::UNKNOWN_PORT)?,
            reverse_added: event(event::REVERSE_ADDED)?,
            reverse_forgotten: event(event::REVERSE_FORGOTTEN)?,
            affinity_hits: affinity(affinity::HIT)?,
            affinity_misses: affinity(affinity::MISS)?,
            affinity_dropped: affinity(affinity::DROPPED)?,
        })
    }

    /// Session affinity entries still within their service's timeout, per service ID (as
    /// `live`'s services say it; services without affinity have none).
    pub fn affinity_entries(&self, live: &MapState) -> Result<BTreeMap<u32, usize>> {
        let timeouts: BTreeMap<u32, u64> = live
            .services
            .values()
            .map(|s| (s.id, u64::from(s.affinity_timeout_secs) * 1_000_000_000))
            .collect();
        let now = crate::clock::monotonic_ns_now();
        let mut counts = BTreeMap::new();
        for (key, value) in batch::lookup_all::<AffinityKey, AffinityValue>(&self.affinity)
            .map_err(io_err("reading AFFINITY"))?
        {
            let timeout = timeouts.get(&key.service_id).copied().unwrap_or(0);
            if now.saturating_sub(value.last_used_ns) <= timeout {
                *counts.entry(key.service_id).or_default() += 1;
            }
        }
        Ok(counts)
    }
}

/// The values of `ids` in a per-CPU array, summed over CPUs.
fn values_of<T: aya::Pod>(
    map: &Array<MapData, T>,
    ids: impl IntoIterator<Item = u32>,
    what: &'static str,
) -> Result<BTreeMap<u32, T>> {
    ids.into_iter().map(|id| Ok((id, map.get(&id, 0).map_err(map_err(what))?))).collect()
}

/// `HEALTH_EXCLUDED`'s pairs (`raw`) as the overlay of `state`'s services, by label: the
/// exclusions, of those the ejections, and the ramps. ID 0 (an older build's entry) is every
/// service of `state` listing the address. A service whose name `state` lacks shows as `#ID`,
/// so that it never compares equal to a state that has it.
fn exclusions(raw: &BTreeMap<(u32, SocketAddr), u32>, state: &MapState) -> Recorded {
    let label = |id: u32| state.names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let mut recorded = Recorded::default();
    for (&(id, addr), &value) in raw {
        if id != 0 {
            let pair = (label(id), addr);
            match exclusion::kind(value) {
                (exclusion::RAMP, permille) => drop(recorded.2.insert(pair, permille)),
                (exclusion::EJECTED, _) => {
                    recorded.1.insert(pair.clone());
                    recorded.0.insert(pair);
                }
                _ => drop(recorded.0.insert(pair)),
            }
            continue;
        }
        let listing: Vec<u32> =
            state.backends.values().filter(|b| b.addr == addr).map(|b| b.service_id).collect();
        recorded.0.extend(listing.iter().map(|&id| (label(id), addr)));
        if listing.is_empty() {
            recorded.0.insert((label(0), addr));
        }
    }
    recorded
}

/// What `HEALTH_EXCLUDED` records: the exclusions, the ejections among them, the ramps.
type Recorded = (BTreeSet<Exclusion>, BTreeSet<Exclusion>, BTreeMap<Exclusion, u16>);

/// `HEALTH_EXCLUDED`'s previous backends (`raw`) as the rollouts of `state`'s services, by
/// label, each with the backends in address order.
fn blends(raw: &BTreeMap<(u32, SocketAddr), u32>, state: &MapState) -> BTreeMap<String, Blend> {
    let mut blends: BTreeMap<String, Blend> = BTreeMap::new();
    for (&(id, addr), &value) in raw {
        let (weight, percent) = exclusion::previous_of(value);
        let label = state.names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        let blend = blends.entry(label).or_insert(Blend { percent, previous: Vec::new() });
        blend.previous.push((addr, weight));
    }
    blends
}
