//! Telling this project's programs from others'. The kernel knows a program by its ID, its
//! name and the maps it uses, not by where anything is pinned; the map names are the most
//! telling of these.
use std::collections::{BTreeMap, BTreeSet};

use aya::{maps::MapInfo, programs::loaded_programs};

use super::{map_err, DataplaneError, Result};

/// Of the programs `ids`, those of a reconciler data plane, each with the ID of its
/// `ACTIVE_SET` map, which tells one data plane from another. A program is ours if it uses
/// maps named `ACTIVE_SET` and `SERVICES` (`METADATA` would be more telling, but only user
/// space uses it, so the programs do not reference it). Programs unloaded meanwhile are
/// left out.
pub(super) fn programs(ids: &BTreeSet<u32>) -> Result<BTreeMap<u32, u32>> {
    let mut ours = BTreeMap::new();
    let mut seen = 0;
    let mut failure = None;
    for info in loaded_programs() {
        let info = match info {
            Ok(info) => info,
            // Most likely a program unloaded after it was listed; it matters only if it may
            // have been one of `ids` (below).
            Err(e) => {
                failure.get_or_insert(e);
                continue;
            }
        };
        if !ids.contains(&info.id()) {
            continue;
        }
        seen += 1;
        let map_ids = info
            .map_ids()
            .map_err(|source| DataplaneError::ProgramMaps { id: info.id(), source })?
            .unwrap_or_default();
        let (mut active_set, mut services) = (None, false);
        for map_id in map_ids {
            let map = MapInfo::from_id(map_id)
                .map_err(map_err(format!("reading map {map_id} of program {}", info.id())))?;
            match map.name_as_str() {
                Some("ACTIVE_SET") => active_set = Some(map_id),
                Some("SERVICES") => services = true,
                _ => {}
            }
        }
        if let (Some(active_set), true) = (active_set, services) {
            ours.insert(info.id(), active_set);
        }
    }
    match failure {
        Some(source) if seen < ids.len() => Err(DataplaneError::ProgramList(source)),
        _ => Ok(ours),
    }
}
