//! Which map each figure of a [`Capacity`] sizes, one table for install, upgrade and the
//! check of reused maps; and the capacity an installed data plane has, read back from its
//! pinned maps (the one record of it).
use std::path::Path;

use aya::{maps::MapData, EbpfLoader};
use reconciler_common::SET_COUNT;
use reconciler_core::capacity::{Capacity, MAXIMUM};

use super::{
    error::{map_err, Result},
    pins::map_data,
};

/// The maps whose size follows the capacity, with their entries for `capacity`.
pub(super) fn map_sizes(capacity: &Capacity) -> [(&'static str, u32); 11] {
    let sets = u32::from(SET_COUNT);
    [
        ("SERVICES", capacity.services * sets),
        ("VIPS", capacity.services * sets),
        ("SERVICE_NAMES", capacity.services),
        ("SERVICE_TOTALS", capacity.services),
        ("BACKENDS", capacity.backends * sets),
        ("BACKEND_TOTALS", capacity.backends),
        ("BACKEND_FLOWS", capacity.backends),
        ("HEALTH_EXCLUDED", capacity.backends),
        ("SLOTS", capacity.slots * sets),
        ("REVERSE", capacity.connections),
        ("AFFINITY", capacity.affinity),
    ]
}

/// A loader that creates the maps at `capacity`'s sizes (maps reused from pins keep theirs).
pub(super) fn sized_loader(capacity: &Capacity) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for (name, entries) in map_sizes(capacity) {
        loader.map_max_entries(name, entries);
    }
    loader
}

/// The capacity of the data plane pinned at `pin_path`: its maps' sizes.
pub(super) fn installed(pin_path: &Path) -> Result<Capacity> {
    capacity_from(|name| {
        if !pin_path.join(name).exists() {
            return Ok(None);
        }
        max_entries(&map_data(pin_path, name)?, name).map(Some)
    })
}

/// The capacity that maps of these sizes hold: `max_entries(name)` is the size of the map
/// `name`, or `None` where there is none. (Builds before the capacity could be set made every
/// map at [`MAXIMUM`]; so are the maps an older layout lacks, which an upgrade then creates.)
pub(super) fn capacity_from(max_entries: impl Fn(&str) -> Result<Option<u32>>) -> Result<Capacity> {
    let sets = u32::from(SET_COUNT);
    let entries = |name: &str, per_set: u32, otherwise: u32| -> Result<u32> {
        Ok(max_entries(name)?.map_or(otherwise, |entries| entries / per_set))
    };
    Ok(Capacity {
        services: entries("SERVICES", sets, MAXIMUM.services)?,
        backends: entries("BACKENDS", sets, MAXIMUM.backends)?,
        slots: entries("SLOTS", sets, MAXIMUM.slots)?,
        connections: entries("REVERSE", 1, MAXIMUM.connections)?,
        affinity: entries("AFFINITY", 1, MAXIMUM.affinity)?,
    })
}

/// The size of the open map `name`.
pub(super) fn max_entries(map: &MapData, name: &str) -> Result<u32> {
    let info = map.info().map_err(map_err(format!("reading the size of {name}")))?;
    Ok(info.max_entries())
}
