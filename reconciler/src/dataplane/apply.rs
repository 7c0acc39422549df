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
//! 4. wait for an RCU grace period (`grace`): connects that read the old pointer
//!    have finished, so the old set has no readers;
//! 5. write the old set until it equals the desired state too, and mark the standby clean.
//!
//! So a connect sees the whole old state or the whole new state, one wait serves one apply,
//! and the standby is free of readers when the next apply starts. A crash in steps 2-5 leaves
//! the dirty mark; the next apply waits for a grace period first, then proceeds as usual,
//! which rewrites the standby from its real content.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use aya::maps::{IterableMap as _, MapData, PerCpuArray, PerCpuValues};
use reconciler_common::{
    event, flows::BackendFlows, BackendCounters, Metadata, ReverseKey, ReverseValue,
    ServiceCounters, PROTO_UDP, REVISION_LEN,
};
use reconciler_core::{
    diff::Change,
    state::{Frontend, MapState},
};

use super::{
    batch, destroy,
    error::{io_err, map_err, DataplaneError, Result},
    grace::wait_for_readers,
    pins::{lock, typed_map},
    read::Sets,
    Dataplane,
};

/// How to apply a desired state, besides the state itself: what to record, what to expect,
/// and which entries to read. The default records no revision, expects no generation and
/// reads everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyTo<'a> {
    /// Recorded in `METADATA` as applied; `None` keeps the revision recorded there.
    pub revision: Option<&'a str>,
    /// Refuses the apply, writing nothing ([`DataplaneError::GenerationMoved`]), unless the
    /// live generation is this one: a plan made against generation N applies only to N.
    pub expected_generation: Option<u64>,
    /// Which entries the apply reads, and so which it may change.
    pub scope: Scope<'a>,
}

/// Which entries an apply reads, and so which it may change.
#[derive(Clone, Copy, Debug, Default)]
pub enum Scope<'a> {
    /// Both sets whole: whatever the desired state does not hold is deleted.
    #[default]
    Everything,
    /// The entries of some services (the incremental path): this is what both sets hold of
    /// them, as the caller recorded it at [`ApplyTo::expected_generation`] (which this scope
    /// requires), and the desired state is what they become. Only the entries under the keys
    /// of these two are read; the apply refuses, writing nothing
    /// ([`DataplaneError::NotAsRecorded`]), unless both sets hold exactly the record and the
    /// standby is clean. Entries of other services are neither read nor touched.
    Recorded(&'a MapState),
}

impl ApplyTo<'_> {
    /// Refuses what no apply can do: record a revision longer than `METADATA` holds, or
    /// trust a record without the generation it was made at.
    fn check(&self) -> Result<()> {
        if self.revision.is_some_and(|r| r.len() > REVISION_LEN) {
            return Err(DataplaneError::RevisionTooLong);
        }
        if matches!(self.scope, Scope::Recorded(_)) && self.expected_generation.is_none() {
            return Err(DataplaneError::RecordedWithoutGeneration);
        }
        Ok(())
    }
}

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

/// Whether programs may be reading the maps while an apply writes them.
#[derive(Clone, Copy)]
enum Readers {
    /// Attached: the standby set is written, flipped to and waited for before the other.
    Maybe,
    /// A first install, before its programs are attached: both sets are written at once.
    NotYet,
}

/// An apply under way: what it read at its start, what it changes, what it has written.
struct Pending {
    /// As read at the start, then as the apply updates it.
    metadata: Metadata,
    /// The set that was live at the start; the other is the standby.
    active: u8,
    /// The live set's content, as far as the apply's scope reads it.
    live: MapState,
    /// From the live set to the desired state.
    changes: Vec<Change>,
    /// The standby's own versioned changes, when its content differs from the live set's;
    /// `None` when they are the live set's, as they normally are (every apply ends so), so
    /// that they are not computed and held twice.
    standby_own: Option<Vec<Change>>,
    /// Map elements written or deleted so far (see [`ApplyReport::map_writes`]).
    writes: usize,
}

impl Pending {
    fn standby(&self) -> u8 {
        self.active ^ 1
    }

    /// The changes to versioned entries (those of one set), which the old set needs.
    fn versioned(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.is_versioned())
    }

    /// The changes to versioned entries that the standby needs.
    fn standby_changes(&self) -> Vec<&Change> {
        match &self.standby_own {
            Some(own) => own.iter().collect(),
            None => self.versioned().collect(),
        }
    }

    /// Whether either set needs a versioned change, and so the steps up to the flip.
    fn changes_sets(&self) -> bool {
        self.versioned().next().is_some()
            || self.standby_own.as_ref().is_some_and(|own| !own.is_empty())
    }

    /// Whether there is nothing to do: no change to either set, `revision` (if any)
    /// recorded already, a clean standby. A dirty mark with both sets already as desired (an
    /// apply killed after its last entry write, before its final metadata) still takes an
    /// apply to clear it.
    fn nothing_to_do(&self, revision: Option<&str>) -> bool {
        let metadata = &self.metadata;
        let revision_changed = revision.is_some_and(|r| {
            usize::from(metadata.revision_len) != r.len()
                || &metadata.revision[..r.len()] != r.as_bytes()
        });
        self.changes.is_empty()
            && self.standby_own.as_ref().is_none_or(Vec::is_empty)
            && !revision_changed
            && metadata.standby_dirty == 0
    }
}

impl Dataplane {
    /// Makes the live state equal `desired`, within `to.scope`, by the apply protocol (see
    /// `dataplane/apply.rs`), and records `to.revision` as applied. Writes nothing when
    /// nothing differs; refuses, writing nothing, what [`ApplyTo`] and [`Scope`] say it does.
    ///
    /// Holds an exclusive `flock` on the pin directory throughout, so two reconcilers (a
    /// daemon and a manual apply, say) never interleave their writes to the standby set.
    pub fn apply(&mut self, desired: &MapState, to: ApplyTo<'_>) -> Result<ApplyReport> {
        let _lock = lock(&self.pin_path)?;
        self.apply_locked(desired, &to, Readers::Maybe)
    }

    /// Whether both sets hold `recorded` under its keys and those of `desired`, with a clean
    /// standby: what an apply with [`Scope::Recorded`] checks again under its lock.
    pub fn confirm(&self, recorded: &MapState, desired: &MapState) -> Result<bool> {
        let status = self.status()?;
        let sets =
            self.read_recorded(status.active_set, status.standby_dirty, recorded, desired)?;
        Ok(sets.is_some())
    }

    /// Applies `desired` to the maps of a new install, whose programs are not attached yet,
    /// so both sets are written at once; the caller holds the pin directory's lock.
    pub(super) fn fill(
        &mut self,
        desired: &MapState,
        revision: Option<&str>,
    ) -> Result<ApplyReport> {
        self.apply_locked(desired, &ApplyTo { revision, ..ApplyTo::default() }, Readers::NotYet)
    }

    /// The apply protocol (see the module docs), with the pin directory locked by the caller.
    fn apply_locked(
        &mut self,
        desired: &MapState,
        to: &ApplyTo<'_>,
        readers: Readers,
    ) -> Result<ApplyReport> {
        to.check()?;
        let mut pending = self.begin(desired, to)?;
        if pending.nothing_to_do(to.revision) {
            let generation = pending.metadata.generation;
            return Ok(ApplyReport { generation, ..ApplyReport::default() });
        }
        // Every apply that writes is a generation, also one that only records a revision.
        pending.metadata.generation += 1;
        if pending.changes_sets() {
            self.mark_standby_dirty(&mut pending)?; // 1.
            match readers {
                Readers::Maybe => {
                    self.write_standby(&mut pending)?; // 2.
                    self.reset_counters_of_new_owners(&pending.live, desired)?;
                    self.flip(&mut pending)?; // 3.
                    wait_for_readers()?; // 4.
                    self.write_old_set(&mut pending)?; // 5.
                }
                // No program reads either set: 2. and 5. at once, then 3.; 4. has no one to
                // wait for.
                Readers::NotYet => {
                    self.write_both_sets(&mut pending)?;
                    self.reset_counters_of_new_owners(&pending.live, desired)?;
                    self.flip(&mut pending)?;
                }
            }
        }
        self.mark_standby_clean(&mut pending, to.revision)?; // 5., the end.
        Ok(self.report(pending, desired))
    }

    /// What the apply starts from: the metadata, the live set and the changes from it and
    /// from the standby to `desired`, as far as `to.scope` reads them. Refuses a live
    /// generation other than the expected one.
    fn begin(&self, desired: &MapState, to: &ApplyTo<'_>) -> Result<Pending> {
        let metadata = self.read_metadata()?;
        if let Some(expected) = to.expected_generation.filter(|g| *g != metadata.generation) {
            return Err(DataplaneError::GenerationMoved { expected, found: metadata.generation });
        }
        let active = self.read_active_set()?;
        let [live, standby] =
            self.read_scope(to.scope, active, metadata.standby_dirty != 0, desired)?;
        let changes = live.changes_to(desired);
        let standby_own = (standby != live).then(|| {
            standby.changes_to(desired).into_iter().filter(Change::is_versioned).collect()
        });
        Ok(Pending { metadata, active, live, changes, standby_own, writes: 0 })
    }

    /// Both sets as far as `scope` reads them, `[active, standby]`; for
    /// [`Scope::Recorded`], only if they hold the record.
    fn read_scope(
        &self,
        scope: Scope<'_>,
        active: u8,
        standby_dirty: bool,
        desired: &MapState,
    ) -> Result<[MapState; 2]> {
        match scope {
            Scope::Everything => {
                if standby_dirty {
                    // An earlier apply stopped after its flip, maybe before its wait: wait now.
                    wait_for_readers()?;
                }
                self.read_sets(active, Sets::Both)
            }
            Scope::Recorded(recorded) => self
                .read_recorded(active, standby_dirty, recorded, desired)?
                .ok_or(DataplaneError::NotAsRecorded),
        }
    }

    /// Step 1: marks the standby dirty, with the new generation, so that the next apply
    /// after a crash from here on repairs the standby.
    fn mark_standby_dirty(&mut self, pending: &mut Pending) -> Result<()> {
        pending.metadata.standby_dirty = 1;
        self.write_metadata(&pending.metadata)?;
        pending.writes += 1;
        Ok(())
    }

    /// Step 2: writes the standby set until it equals the desired state.
    fn write_standby(&self, pending: &mut Pending) -> Result<()> {
        let changes = pending.standby_changes();
        let written = self.write_changes(changes.into_iter(), pending.standby())?;
        pending.writes += written;
        Ok(())
    }

    /// Step 3: flips `ACTIVE_SET[0]` to the standby; every connect from now on reads it.
    fn flip(&mut self, pending: &mut Pending) -> Result<()> {
        let standby = u32::from(pending.standby());
        self.active_set.set(0, standby, 0).map_err(map_err("flipping ACTIVE_SET"))?;
        pending.writes += 1;
        Ok(())
    }

    /// Step 5: writes the old set, which no program reads now, until it equals the desired
    /// state too.
    fn write_old_set(&self, pending: &mut Pending) -> Result<()> {
        let written = self.write_changes(pending.versioned(), pending.active)?;
        pending.writes += written;
        Ok(())
    }

    /// Steps 2 and 5 at once, for an install whose programs are not attached yet: each set
    /// on its own core, as the kernel's hash inserts are most of a first install's writes.
    fn write_both_sets(&self, pending: &mut Pending) -> Result<()> {
        let read: &Pending = pending;
        let (standby_writes, active_writes) = std::thread::scope(|scope| {
            let standby_side = scope
                .spawn(|| self.write_changes(read.standby_changes().into_iter(), read.standby()));
            let active_writes = self.write_changes(read.versioned(), read.active);
            let standby_writes =
                standby_side.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (standby_writes, active_writes)
        });
        pending.writes += standby_writes? + active_writes?;
        Ok(())
    }

    /// The end of step 5, as both sets hold the desired state now (written here or found
    /// so): the entries they share (names, health), then the metadata, with the standby
    /// clean, `revision` if given and the time of the apply.
    fn mark_standby_clean(&mut self, pending: &mut Pending, revision: Option<&str>) -> Result<()> {
        let shared = pending.changes.iter().filter(|c| !c.is_versioned());
        let written = self.write_changes(shared, pending.active)?;
        pending.writes += written;
        let metadata = &mut pending.metadata;
        metadata.standby_dirty = 0;
        if let Some(revision) = revision {
            metadata.revision = [0; REVISION_LEN];
            metadata.revision[..revision.len()].copy_from_slice(revision.as_bytes());
            metadata.revision_len = revision.len() as u8;
        }
        metadata.applied_at_unix = crate::clock::now_unix().as_secs();
        self.write_metadata(&pending.metadata)?;
        pending.writes += 1;
        Ok(())
    }

    /// The report of the apply `pending` to `desired`, once the connected UDP sockets of the
    /// backends it took away are destroyed: a failure there is reported, not returned, as
    /// the maps are applied all the same.
    fn report(&self, pending: Pending, desired: &MapState) -> ApplyReport {
        let (sockets_destroyed, sockets_error) =
            match self.forget_removed_backends(&pending.live, desired) {
                Ok(destroyed) => (destroyed, None),
                Err(e) => (0, Some(e.to_string())),
            };
        ApplyReport {
            changes: pending.changes.len(),
            map_writes: pending.writes,
            generation: pending.metadata.generation,
            sockets_destroyed,
            sockets_error,
        }
    }

    pub(super) fn write_metadata(&mut self, metadata: &Metadata) -> Result<()> {
        self.metadata.set(0, metadata, 0).map_err(map_err("writing METADATA"))
    }

    /// Zeroes the counters of the backend and service IDs that `desired` gives to new owners
    /// (IDs `live` does not hold, or holds for another frontend, or another address or
    /// service's frontend): an ID freed by an earlier apply keeps its old counts otherwise.
    /// Done after the standby is written and right before the flip: an ID a full data plane
    /// frees and takes in one apply (`reconciler_core::ids`) counts for its old owner until
    /// then, and what the old owner counts in the flip's grace period goes to the new one.
    fn reset_counters_of_new_owners(&mut self, live: &MapState, desired: &MapState) -> Result<()> {
        let new_services: Vec<(u32, ServiceCounters)> = desired
            .services
            .iter()
            .filter(|(frontend, s)| live.services.get(frontend).is_none_or(|l| l.id != s.id))
            .map(|(_, s)| (s.id, ServiceCounters::default()))
            .collect();
        batch::update_all(self.service_counters.map(), &new_services)
            .map_err(io_err("zeroing SERVICE_TOTALS"))?;
        let frontends = |state: &MapState| -> BTreeMap<u32, Frontend> {
            state.services.iter().map(|(frontend, s)| (s.id, *frontend)).collect()
        };
        let (live_frontends, desired_frontends) = (frontends(live), frontends(desired));
        let new_backends: Vec<(u32, BackendCounters)> = desired
            .backends
            .iter()
            .filter(|(id, b)| {
                live.backends.get(id).is_none_or(|l| {
                    l.addr != b.addr
                        || live_frontends.get(&l.service_id) != desired_frontends.get(&b.service_id)
                })
            })
            .map(|(id, _)| (*id, BackendCounters::default()))
            .collect();
        batch::update_all(self.backend_counters.map(), &new_backends)
            .map_err(io_err("zeroing BACKEND_TOTALS"))?;
        let new_flows: Vec<(u32, BackendFlows)> =
            new_backends.iter().map(|(id, _)| (*id, BackendFlows::default())).collect();
        batch::update_all(self.backend_flows.map(), &new_flows)
            .map_err(io_err("zeroing BACKEND_FLOWS"))
    }

    /// Adds `count` to the `EVENTS` counter `event` that user space keeps (on the first
    /// CPU's value; a reader sums them all). Called under the pin directory's lock, so no
    /// other writer races it; no program writes it.
    fn count_event(&self, event: u32, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let mut events: PerCpuArray<MapData, u64> = typed_map(&self.pin_path, "EVENTS")?;
        let mut values: Vec<u64> =
            events.get(&event, 0).map_err(map_err("reading EVENTS"))?.to_vec();
        if let Some(first) = values.first_mut() {
            *first += count;
        }
        let values = PerCpuValues::try_from(values).map_err(io_err("counting in EVENTS"))?;
        events.set(event, values, 0).map_err(map_err("counting in EVENTS"))
    }

    /// After an apply from `live` to `desired`: the `REVERSE` entries of backends that are
    /// gone (or moved) are deleted, and the connected UDP sockets whose record names them are
    /// destroyed (see `destroy`); a backend put in maintenance or found unhealthy loses its
    /// UDP entries and sockets alike (its TCP connections are the backend's to end). Returns
    /// how many sockets were destroyed.
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
        let stale: Vec<ReverseKey> = entries
            .into_iter()
            .filter(|(_, value)| {
                removed.contains(&value.backend_id)
                    || (to_maintenance.contains(&value.backend_id) && value.protocol == PROTO_UDP)
            })
            .map(|(key, _)| key)
            .collect();
        batch::delete_all(&self.reverse, &stale).map_err(io_err("deleting from REVERSE"))?;
        self.count_event(event::REVERSE_FORGOTTEN, stale.len() as u64)?;
        let doomed: BTreeMap<u32, SocketAddr> = removed
            .union(&to_maintenance)
            .filter_map(|id| Some((*id, live.backends.get(id)?.addr)))
            .collect();
        destroy::connected_udp_sockets(&self.pin_path, &doomed)
    }
}

#[cfg(test)]
mod tests {
    use reconciler_common::REVISION_LEN;
    use reconciler_core::state::MapState;

    use super::{ApplyTo, DataplaneError, Scope};

    #[test]
    fn an_apply_refuses_what_none_can_do_before_it_reads_anything() {
        let long = "r".repeat(REVISION_LEN + 1);
        let to = ApplyTo { revision: Some(&long), ..ApplyTo::default() };
        assert!(matches!(to.check(), Err(DataplaneError::RevisionTooLong)));
        let full = "r".repeat(REVISION_LEN);
        assert!(ApplyTo { revision: Some(&full), ..ApplyTo::default() }.check().is_ok());

        let recorded = MapState::default();
        let scope = Scope::Recorded(&recorded);
        let to = ApplyTo { scope, ..ApplyTo::default() };
        assert!(matches!(to.check(), Err(DataplaneError::RecordedWithoutGeneration)));
        assert!(ApplyTo { expected_generation: Some(3), scope, ..to }.check().is_ok());
        assert!(ApplyTo::default().check().is_ok());
    }
}
