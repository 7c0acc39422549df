//! Applying a desired state to the maps.
//!
//! # Apply protocol
//!
//! `SERVICES`, `SLOTS` and `BACKENDS` hold two sets; `ACTIVE_SET[0]` names the live one. An
//! apply never writes the live set:
//!
//! 1. mark the standby dirty in `METADATA` (and bump the generation);
//! 2. write the standby set until it equals the desired state;
//! 3. flip `ACTIVE_SET[0]`: every connect from now on reads the new set;
//! 4. wait for an RCU grace period ([`wait_for_readers`]): connects that read the old pointer
//!    have finished, so the old set has no readers;
//! 5. write the old set until it equals the desired state too, and mark the standby clean.
//!
//! So a connect sees the whole old state or the whole new state, one wait serves one apply,
//! and the standby is free of readers when the next apply starts. A crash in steps 2-5 leaves
//! the dirty mark; the next apply waits for a grace period first, then proceeds as usual,
//! which rewrites the standby from its real content.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{IterableMap as _, MapData};
use reconciler_common::{
    Backend, BackendCounters, BackendKey, HealthKey, Metadata, ReverseKey, ReverseValue,
    ServiceCounters, ServiceKey, ServiceName, ServiceValue, SlotKey, PROTO_UDP, REVISION_LEN,
};
use reconciler_core::state::{Change, MapState};

use super::{
    batch, destroy, encode,
    error::{io_err, map_err, DataplaneError, Result},
    pins::lock,
    Dataplane,
};

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entry changes between the live state and the desired one.
    pub changes: usize,
    /// Every map element written or deleted, in both sets, plus the pointer flip and the
    /// metadata updates: `2 × versioned changes + name changes + 3`, or 0 with no change.
    pub map_writes: usize,
    /// The generation after the apply.
    pub generation: u64,
    /// Connected UDP sockets destroyed because the apply took their backend away.
    pub sockets_destroyed: usize,
    /// Why destroying those sockets failed, if it did; the maps are applied all the same.
    pub sockets_error: Option<String>,
}

/// Waits until no BPF program run that started before this call is still running.
///
/// cgroup sock_addr programs run inside `rcu_read_lock()` (`bpf_prog_run_array_cg`), and a
/// program reads `ACTIVE_SET` once and uses that set until it returns. `membarrier(
/// MEMBARRIER_CMD_GLOBAL)` calls `synchronize_rcu()`, which returns only after every RCU
/// read-side section that was running has ended; so after it, no program can still be
/// reading the set that was active before the flip. (On a one-CPU machine the kernel skips
/// the call: there, a non-preemptible reader cannot be running while we are.)
pub fn wait_for_readers() -> Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc =
        unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long) };
    if rc != 0 {
        return Err(DataplaneError::Membarrier(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether programs may be reading the maps while an apply writes them.
#[derive(Clone, Copy)]
pub(super) enum Readers {
    /// Attached: the standby set is written, flipped to and waited for before the other.
    Maybe,
    /// A first install, before its programs are attached: both sets are written at once.
    NotYet,
}

impl Dataplane {
    pub(super) fn write_metadata(&mut self, metadata: &Metadata) -> Result<()> {
        self.metadata.set(0, metadata, 0).map_err(map_err("writing METADATA"))
    }

    /// Zeroes the counters of the backend and service IDs that `desired` gives to new owners
    /// (IDs `live` does not hold): an ID freed by an earlier apply keeps its old counts
    /// otherwise. Done before the new owners are written, so no count of theirs is lost.
    fn reset_counters_of_new_ids(&mut self, live: &MapState, desired: &MapState) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io_err("counting CPUs")(e))?;
        let live_services: BTreeSet<u32> = live.services.values().map(|s| s.id).collect();
        let new_services: Vec<u32> = desired
            .services
            .values()
            .map(|s| s.id)
            .filter(|id| !live_services.contains(id))
            .collect();
        batch::zero_per_cpu(
            self.service_counts.map(),
            &new_services,
            size_of::<ServiceCounters>(),
            cpus,
        )
        .map_err(io_err("zeroing SERVICE_COUNTS"))?;
        let new_backends: Vec<u32> =
            desired.backends.keys().copied().filter(|id| !live.backends.contains_key(id)).collect();
        batch::zero_per_cpu(
            self.backend_counts.map(),
            &new_backends,
            size_of::<BackendCounters>(),
            cpus,
        )
        .map_err(io_err("zeroing BACKEND_COUNTS"))
    }

    /// Makes the live state equal `desired` (see the module docs for the protocol) and
    /// records `revision` as applied. Writes nothing when nothing differs. With
    /// `expected_generation`, refuses (writing nothing) if the live generation is another.
    ///
    /// Holds an exclusive `flock` on the pin directory throughout, so two reconcilers (a
    /// daemon and a manual apply, say) never interleave their writes to the standby set.
    pub fn apply(
        &mut self,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
    ) -> Result<ApplyReport> {
        self.apply_within(None, desired, revision, expected_generation)
    }

    /// [`apply`](Self::apply) confined to the entries of some services (the incremental
    /// path): `recorded` is what both sets hold of them at `expected_generation`, as the
    /// caller recorded it, and `desired` what they become. Reads only those entries, and
    /// refuses (writing nothing) unless both sets hold exactly `recorded` of them and the
    /// standby is clean; entries of other services are neither read nor touched.
    pub fn apply_touched(
        &mut self,
        recorded: &MapState,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: u64,
    ) -> Result<ApplyReport> {
        self.apply_within(Some(recorded), desired, revision, Some(expected_generation))
    }

    /// Whether both sets hold `recorded` under its keys and those of `desired`, with a clean
    /// standby: what [`apply_touched`](Self::apply_touched) checks again under its lock.
    pub fn confirm(&self, recorded: &MapState, desired: &MapState) -> Result<bool> {
        let status = self.status()?;
        let sets =
            self.read_recorded(status.active_set, status.standby_dirty, recorded, desired)?;
        Ok(sets.is_some())
    }

    fn apply_within(
        &mut self,
        recorded: Option<&MapState>,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
    ) -> Result<ApplyReport> {
        let _lock = lock(&self.pin_path)?;
        self.apply_locked(recorded, desired, revision, expected_generation, Readers::Maybe)
    }

    /// [`apply_within`](Self::apply_within) with the pin directory locked by the caller.
    pub(super) fn apply_locked(
        &mut self,
        recorded: Option<&MapState>,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
        readers: Readers,
    ) -> Result<ApplyReport> {
        if revision.is_some_and(|r| r.len() > REVISION_LEN) {
            return Err(DataplaneError::RevisionTooLong);
        }
        let mut metadata = self.read_metadata()?;
        if let Some(expected) = expected_generation.filter(|g| *g != metadata.generation) {
            return Err(DataplaneError::GenerationMoved { expected, found: metadata.generation });
        }
        let active = self.read_active_set()?;
        let standby = active ^ 1;
        let [live, standby_content] = match recorded {
            None => {
                if metadata.standby_dirty != 0 {
                    // An earlier apply stopped after its flip, maybe before its wait: wait now.
                    wait_for_readers()?;
                }
                self.read_sets(active, true)?
            }
            Some(recorded) => self
                .read_recorded(active, metadata.standby_dirty != 0, recorded, desired)?
                .ok_or(DataplaneError::NotAsRecorded)?,
        };

        let changes = live.changes_to(desired);
        let revision_changed = revision.is_some_and(|r| {
            usize::from(metadata.revision_len) != r.len()
                || &metadata.revision[..r.len()] != r.as_bytes()
        });
        let versioned: Vec<&Change> = changes.iter().filter(|c| c.is_versioned()).collect();
        // The standby normally equals the live set (every apply ends so): then its changes are
        // the live set's, not computed (and held) twice.
        let standby_own: Option<Vec<Change>> = (standby_content != live).then(|| {
            standby_content.changes_to(desired).into_iter().filter(Change::is_versioned).collect()
        });
        drop(standby_content);
        let standby_changes: Vec<&Change> = match &standby_own {
            Some(own) => own.iter().collect(),
            None => versioned.clone(),
        };
        // A dirty mark with both sets already as desired (an apply killed after its last
        // entry write, before its final metadata) still takes this apply to clear it.
        if changes.is_empty()
            && standby_changes.is_empty()
            && !revision_changed
            && metadata.standby_dirty == 0
        {
            return Ok(ApplyReport { generation: metadata.generation, ..ApplyReport::default() });
        }

        self.reset_counters_of_new_ids(&live, desired)?;
        let mut writes = 0;
        metadata.generation += 1;
        if !versioned.is_empty() || !standby_changes.is_empty() {
            metadata.standby_dirty = 1;
            self.write_metadata(&metadata)?;
            writes += 1;
            match readers {
                Readers::Maybe => {
                    writes += self.write_changes(standby_changes.iter().copied(), standby)?;
                    self.flip_to(standby)?;
                    wait_for_readers()?;
                    writes += self.write_changes(versioned.iter().copied(), active)?;
                }
                Readers::NotYet => {
                    // Each set on its own core: the kernel's hash inserts are most of a
                    // first install's writes.
                    let (standby_writes, active_writes) = std::thread::scope(|scope| {
                        let standby_side = scope
                            .spawn(|| self.write_changes(standby_changes.iter().copied(), standby));
                        let active_writes = self.write_changes(versioned.iter().copied(), active);
                        let standby_writes = standby_side
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (standby_writes, active_writes)
                    });
                    writes += standby_writes? + active_writes?;
                    self.flip_to(standby)?;
                }
            }
            writes += 1;
        }
        // Both sets hold `desired` now, whether written here or found so.
        metadata.standby_dirty = 0;
        writes += self.write_changes(changes.iter().filter(|c| !c.is_versioned()), active)?;
        if let Some(revision) = revision {
            metadata.revision = [0; REVISION_LEN];
            metadata.revision[..revision.len()].copy_from_slice(revision.as_bytes());
            metadata.revision_len = revision.len() as u8;
        }
        metadata.applied_at_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.write_metadata(&metadata)?;
        writes += 1;
        let (sockets_destroyed, sockets_error) = match self.forget_removed_backends(&live, desired)
        {
            Ok(destroyed) => (destroyed, None),
            Err(e) => (0, Some(e.to_string())),
        };
        Ok(ApplyReport {
            changes: changes.len(),
            map_writes: writes,
            generation: metadata.generation,
            sockets_destroyed,
            sockets_error,
        })
    }

    fn flip_to(&mut self, set: u8) -> Result<()> {
        self.active_set.set(0, u32::from(set), 0).map_err(map_err("flipping ACTIVE_SET"))
    }

    /// After an apply from `live` to `desired`: the reverse entries of backends that are gone
    /// (or moved) are deleted, and the connected UDP sockets they name are destroyed (see
    /// `destroy`); a backend put in maintenance or found unhealthy loses its UDP entries and
    /// sockets alike (its
    /// TCP connections are the backend's to end). Returns how many sockets were destroyed.
    fn forget_removed_backends(&self, live: &MapState, desired: &MapState) -> Result<usize> {
        let mut removed = BTreeSet::new();
        let mut to_maintenance = BTreeSet::new();
        for (id, old) in &live.backends {
            match desired.backends.get(id) {
                Some(new) if new.addr == old.addr && new.service_id == old.service_id => {
                    if old.state.takes_clients() && !new.state.takes_clients() {
                        to_maintenance.insert(*id);
                    }
                }
                _ => {
                    removed.insert(*id);
                }
            }
        }
        if removed.is_empty() && to_maintenance.is_empty() {
            return Ok(0);
        }
        let entries = batch::lookup_all::<ReverseKey, ReverseValue>(&self.reverse)
            .map_err(io_err("reading REVERSE"))?;
        let stale: Vec<(ReverseKey, ReverseValue)> = entries
            .into_iter()
            .filter(|(_, value)| {
                removed.contains(&value.backend_id)
                    || (to_maintenance.contains(&value.backend_id) && value.protocol == PROTO_UDP)
            })
            .collect();
        let udp: BTreeMap<u64, SocketAddr> = stale
            .iter()
            .filter(|(_, value)| value.protocol == PROTO_UDP)
            .map(|(key, _)| {
                (
                    key.cookie,
                    SocketAddr::new(encode::words_to_addr(&key.addr), u16::from_be(key.port)),
                )
            })
            .collect();
        let keys: Vec<ReverseKey> = stale.into_iter().map(|(key, _)| key).collect();
        batch::delete_all(&self.reverse, &keys).map_err(io_err("deleting from REVERSE"))?;
        destroy::connected_udp_sockets(&udp)
            .map_err(io_err("destroying the connected UDP sockets of removed backends"))
    }

    /// Writes `changes` into map set `set` (names ignore the set), in batches per map;
    /// returns how many entries were written or deleted. Deleting an entry that is not there
    /// is not an error: the entry is gone either way.
    fn write_changes<'a>(
        &self,
        changes: impl Iterator<Item = &'a Change>,
        set: u8,
    ) -> Result<usize> {
        let mut batches = Batches::default();
        for change in changes {
            match change {
                Change::Service(frontend, value) => {
                    let key = encode::service_key(frontend, set);
                    match value {
                        Some(entry) => batches.services.0.push((key, encode::service_value(entry))),
                        None => batches.services.1.push(key),
                    }
                }
                Change::Slot(slot, value) => {
                    let key = encode::slot_key(*slot, set);
                    match value {
                        Some(backend) => batches.slots.0.push((key, *backend)),
                        None => batches.slots.1.push(key),
                    }
                }
                Change::Backend(id, value) => {
                    let key = encode::backend_key(*id, set);
                    match value {
                        Some(entry) => batches.backends.0.push((key, encode::backend_value(entry))),
                        None => batches.backends.1.push(key),
                    }
                }
                Change::Name(id, value) => match value {
                    Some(name) => batches.names.0.push((*id, encode::name_value(name))),
                    None => batches.names.1.push(*id),
                },
                Change::Health(addr, excluded) => {
                    let key = encode::health_key(addr);
                    if *excluded {
                        batches.health.0.push((key, 1));
                    } else {
                        batches.health.1.push(key);
                    }
                }
            }
        }
        let what = |map: &str| io_err(format!("writing {map} (set {set})"));
        batches.services.write(&self.services).map_err(what("SERVICES"))?;
        batches.slots.write(&self.slots).map_err(what("SLOTS"))?;
        batches.backends.write(&self.backends).map_err(what("BACKENDS"))?;
        batches.names.write(&self.names).map_err(what("SERVICE_NAMES"))?;
        batches.health.write(&self.health).map_err(what("HEALTH_EXCLUDED"))?;
        Ok(batches.len())
    }
}

/// Upserts and deletes for one map.
struct MapBatch<K, V>(Vec<(K, V)>, Vec<K>);

impl<K, V> Default for MapBatch<K, V> {
    fn default() -> Self {
        MapBatch(Vec::new(), Vec::new())
    }
}

impl<K: aya::Pod, V: aya::Pod> MapBatch<K, V> {
    fn write(&self, map: &MapData) -> io::Result<()> {
        batch::update_all(map, &self.0)?;
        batch::delete_all(map, &self.1)
    }

    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }
}

#[derive(Default)]
struct Batches {
    services: MapBatch<ServiceKey, ServiceValue>,
    slots: MapBatch<SlotKey, u32>,
    backends: MapBatch<BackendKey, Backend>,
    names: MapBatch<u32, ServiceName>,
    health: MapBatch<HealthKey, u32>,
}

impl Batches {
    fn len(&self) -> usize {
        self.services.len()
            + self.slots.len()
            + self.backends.len()
            + self.names.len()
            + self.health.len()
    }
}
