//! The diff step: the entry-level changes that turn one [`MapState`] into another, and the
//! map writes an apply makes for them. Desired and live state are both a `MapState`, so this
//! one comparison serves plan, apply, drift and crash repair.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use reconciler_common::exclusion;

use crate::state::{BackendEntry, Exclusion, Frontend, MapState, ServiceEntry};

/// One map entry to write (`value: Some`) or delete (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Service(Frontend, Option<ServiceEntry>),
    Slot((u32, u32), Option<u32>),
    Backend(u32, Option<BackendEntry>),
    Name(u32, Option<String>),
    /// An exclusion of (service ID, backend address) recorded, with why
    /// (`reconciler_common::exclusion::*`), or lifted (`None`).
    Health(u32, SocketAddr, Option<u32>),
    /// A previous backend of (service ID, address) of a rollout in progress recorded, with its
    /// value (`reconciler_common::exclusion::previous`), or lifted.
    Previous(u32, SocketAddr, Option<u32>),
    /// A VIP address added (`true`) or gone (`MapState::vips`).
    Vip(IpAddr, bool),
}

impl Change {
    /// Whether the entry lives in the versioned maps (written to both sets) or not.
    pub fn is_versioned(&self) -> bool {
        !matches!(self, Change::Name(..) | Change::Health(..) | Change::Previous(..))
    }
}

// A method of the state it compares, defined here so that `state` knows nothing of diffs.
impl MapState {
    /// The entry writes and deletes that turn `self` into `desired`, versioned maps first.
    pub fn changes_to(&self, desired: &MapState) -> Vec<Change> {
        let mut changes = Vec::new();
        diff_maps(&self.services, &desired.services, Change::Service, &mut changes);
        diff_maps(&self.slots, &desired.slots, Change::Slot, &mut changes);
        diff_maps(&self.backends, &desired.backends, Change::Backend, &mut changes);
        let (live_vips, desired_vips) = (self.vips(), desired.vips());
        changes.extend(desired_vips.difference(&live_vips).map(|vip| Change::Vip(*vip, true)));
        changes.extend(live_vips.difference(&desired_vips).map(|vip| Change::Vip(*vip, false)));
        diff_maps(&self.names, &desired.names, Change::Name, &mut changes);
        health_changes(self, desired, &mut changes);
        previous_changes(self, desired, &mut changes);
        changes
    }
}

/// The overlay entries (exclusions, ramps) `desired` records and `live` does not, or with
/// another value (by `desired`'s service IDs), and those it lifts (by `live`'s).
fn health_changes(live: &MapState, desired: &MapState, changes: &mut Vec<Change>) {
    let ids_of = |state: &MapState| -> BTreeMap<String, u32> {
        state.names.iter().map(|(id, label)| (label.clone(), *id)).collect()
    };
    let keys = |state: &MapState| -> BTreeSet<Exclusion> {
        state.health_excluded.iter().chain(state.ramps.keys()).cloned().collect()
    };
    let (live_keys, desired_keys) = (keys(live), keys(desired));
    let recorded: Vec<&Exclusion> = desired_keys
        .iter()
        .filter(|e| overlay_value(live, e) != overlay_value(desired, e))
        .collect();
    if !recorded.is_empty() {
        let ids = ids_of(desired);
        for exclusion in recorded {
            if let Some(&id) = ids.get(&exclusion.0) {
                let value = overlay_value(desired, exclusion);
                changes.push(Change::Health(id, exclusion.1, value));
            }
        }
    }
    let lifted: Vec<&Exclusion> = live_keys.difference(&desired_keys).collect();
    if !lifted.is_empty() {
        let ids = ids_of(live);
        for (label, addr) in lifted {
            if let Some(&id) = ids.get(label) {
                changes.push(Change::Health(id, *addr, None));
            }
        }
    }
}

/// What `state`'s `HEALTH_EXCLUDED` says of `pair`: why it is out, or its ramp, if either.
fn overlay_value(state: &MapState, pair: &Exclusion) -> Option<u32> {
    if let Some(permille) = state.ramps.get(pair) {
        Some(exclusion::ramp(*permille))
    } else if state.ejected.contains(pair) {
        Some(exclusion::EJECTED)
    } else {
        state.health_excluded.contains(pair).then_some(exclusion::HEALTH)
    }
}

/// The previous backends of rollouts `desired` records and `live` does not (or with another
/// value), by `desired`'s service IDs, and those it lifts, by `live`'s.
fn previous_changes(live: &MapState, desired: &MapState, changes: &mut Vec<Change>) {
    let entries = |state: &MapState| -> BTreeMap<(u32, SocketAddr), u32> {
        let ids: BTreeMap<&str, u32> =
            state.names.iter().map(|(id, l)| (l.as_str(), *id)).collect();
        let mut entries = BTreeMap::new();
        for (label, blend) in &state.blends {
            let Some(&id) = ids.get(label.as_str()) else { continue };
            for &(addr, weight) in &blend.previous {
                entries.insert((id, addr), exclusion::previous(weight, blend.percent));
            }
        }
        entries
    };
    let (before, after) = (entries(live), entries(desired));
    for (&(id, addr), &value) in &after {
        if before.get(&(id, addr)) != Some(&value) {
            changes.push(Change::Previous(id, addr, Some(value)));
        }
    }
    for &(id, addr) in before.keys().filter(|key| !after.contains_key(key)) {
        changes.push(Change::Previous(id, addr, None));
    }
}

fn diff_maps<K: Ord + Clone, V: PartialEq + Clone>(
    live: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    change: impl Fn(K, Option<V>) -> Change,
    out: &mut Vec<Change>,
) {
    for (key, value) in desired {
        if live.get(key) != Some(value) {
            out.push(change(key.clone(), Some(value.clone())));
        }
    }
    for key in live.keys() {
        if !desired.contains_key(key) {
            out.push(change(key.clone(), None));
        }
    }
}

/// The map writes the data plane's apply makes for `changes` (live -> desired) when the standby
/// set equals the live one, as it does after every completed apply.
pub fn predicted_writes(changes: &[Change], revision_changed: bool) -> usize {
    let versioned = changes.iter().filter(|c| c.is_versioned()).count();
    let unversioned = changes.len() - versioned;
    match (versioned, unversioned, revision_changed) {
        (0, 0, false) => 0,
        // The names, then one metadata write.
        (0, _, _) => unversioned + 1,
        // Dirty mark, both sets, flip, names, final metadata.
        _ => 2 * versioned + unversioned + 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Algorithm, BackendState, Client, Overlay, Protocol};

    fn frontend(vip: &str, port: u16) -> Frontend {
        Frontend { vip: vip.parse().unwrap(), port, protocol: Protocol::Tcp }
    }

    #[test]
    fn changes_cover_adds_updates_and_deletes_and_nothing_else() {
        let entry = |id, slots| ServiceEntry {
            id,
            slot_count: slots,
            algorithm: Algorithm::Random,
            maglev_client: Client::Cgroup,
            affinity_timeout_secs: 0,
            affinity_client: Client::Cgroup,
        };
        let mut live = MapState::default();
        live.services.insert(frontend("10.0.0.1", 80), entry(1, 2));
        live.services.insert(frontend("10.0.0.2", 80), entry(2, 1));
        live.slots.insert((1, 0), 10);
        live.slots.insert((1, 1), 11);
        let backend = |addr: &str| BackendEntry {
            addr: addr.parse().unwrap(),
            service_id: 1,
            state: BackendState::Active,
        };
        live.backends.insert(10, backend("127.0.0.1:1"));
        live.backends.insert(11, backend("127.0.0.1:2"));

        let mut desired = live.clone();
        assert!(live.changes_to(&desired).is_empty());

        desired.services.remove(&frontend("10.0.0.2", 80));
        desired.slots.insert((1, 1), 10);
        desired.backends.remove(&11);
        desired.names.insert(1, "web".into());
        let changes = live.changes_to(&desired);
        assert_eq!(
            changes,
            vec![
                Change::Service(frontend("10.0.0.2", 80), None),
                Change::Slot((1, 1), Some(10)),
                Change::Backend(11, None),
                Change::Vip("10.0.0.2".parse().unwrap(), false),
                Change::Name(1, Some("web".into())),
            ]
        );
        assert_eq!(changes.iter().filter(|c| c.is_versioned()).count(), 4);

        // A VIP stays while any port or protocol of it is a service.
        let mut other_port = live.clone();
        other_port.services.insert(frontend("10.0.0.2", 81), entry(3, 1));
        let mut desired = other_port.clone();
        desired.services.remove(&frontend("10.0.0.2", 80));
        assert_eq!(
            other_port.changes_to(&desired),
            vec![Change::Service(frontend("10.0.0.2", 80), None)]
        );
        let added = MapState::default().changes_to(&desired);
        let vips: Vec<&Change> = added.iter().filter(|c| matches!(c, Change::Vip(..))).collect();
        assert_eq!(vips.len(), 2, "{added:?}");
    }

    #[test]
    fn an_ejection_is_recorded_apart_from_a_failed_check_and_a_change_of_reason_rewritten() {
        let mut live = MapState::default();
        live.names.insert(1, "web/http".into());
        let pair =
            |last: u8| ("web/http".to_owned(), format!("127.0.0.{last}:80").parse().unwrap());
        let failing = BTreeSet::from([pair(1)]);
        let overlay = Overlay::of(failing.clone(), BTreeSet::from([pair(1), pair(2)]));
        // Out while either says so; both reasons: shown as the ejection.
        assert_eq!(overlay.excluded, BTreeSet::from([pair(1), pair(2)]));
        let mut desired = live.clone();
        (desired.health_excluded, desired.ejected) = (overlay.excluded, overlay.ejected);
        let ejected = Some(exclusion::EJECTED);
        let (one, two) = (pair(1).1, pair(2).1);
        assert_eq!(
            live.changes_to(&desired),
            vec![Change::Health(1, one, ejected), Change::Health(1, two, ejected)]
        );
        // The ejection lapses, the check still fails: rewritten; the other lifted.
        let mut later = desired.clone();
        (later.health_excluded, later.ejected) = (failing, BTreeSet::new());
        assert_eq!(
            desired.changes_to(&later),
            vec![Change::Health(1, one, Some(exclusion::HEALTH)), Change::Health(1, two, None)]
        );
    }
}
