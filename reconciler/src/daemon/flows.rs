//! What the `flows` program says of (service, backend) pairs, found by the live state's IDs:
//! read by outlier detection and rollouts.
use std::{collections::BTreeMap, path::Path};

use reconciler_common::flows::BackendFlows;
use reconciler_core::state::Exclusion;

use crate::dataplane::{Dataplane, DataplaneError};

/// The flows of each of `pairs` that the data plane at `pin_path` has (one read of the live
/// members, one lookup per backend).
pub fn of_pairs(
    pin_path: &Path,
    pairs: impl IntoIterator<Item = Exclusion>,
) -> Result<BTreeMap<Exclusion, BackendFlows>, DataplaneError> {
    let dataplane = Dataplane::open(pin_path)?;
    let live = dataplane.read_live_members()?;
    let state = &live.state;
    let label_of = |id: u32| state.names.get(&id).cloned().unwrap_or_default();
    let ids: BTreeMap<Exclusion, u32> = state
        .backends
        .iter()
        .map(|(id, backend)| ((label_of(backend.service_id), backend.addr), *id))
        .collect();
    let wanted: Vec<(Exclusion, u32)> =
        pairs.into_iter().filter_map(|pair| Some((pair.clone(), *ids.get(&pair)?))).collect();
    let flows = dataplane.backend_flows(wanted.iter().map(|(_, id)| *id))?;
    Ok(wanted.into_iter().filter_map(|(pair, id)| Some((pair, *flows.get(&id)?))).collect())
}
