//! The two migrations an upgrade makes besides swapping programs: a map whose capacity a
//! layout grew gets a new map with the old counts copied over, and a map a layout derives
//! from another is filled before any program reads it.
use std::{fs, path::Path};

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use reconciler_common::{ServiceKey, ServiceValue, VipKey};

use super::{
    batch,
    error::{io_err, map_err, Result},
    pins::{map_data, typed_map},
    OBJECT,
};

/// Per-CPU counter arrays whose capacity a layout grew (`EVENTS`: 5 entries to 16 in layout
/// 5), each with the name its outgrown pin waits under until its counts are copied and no
/// program reads it (listed in `RETIRED_MAPS`, so the upgrade removes it at the end).
pub(super) const GROWN_MAPS: [(&str, &str); 1] = [("EVENTS", "EVENTS_OUTGROWN")];

/// Step 1, before loading: moves the pin of each grown map that still has its old capacity
/// aside, so the load creates the new one under its name. The programs that run keep the
/// old map (they hold it, not its pin) until they are replaced.
pub(super) fn set_aside_outgrown(pin_path: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).map_err(super::DataplaneError::ParseObject)?;
    for (name, aside) in GROWN_MAPS {
        let pin = pin_path.join(name);
        let Some(wanted) = object.maps.get(name) else { continue };
        if !pin.exists() {
            continue;
        }
        let info = map_data(pin_path, name)?
            .info()
            .map_err(map_err(format!("reading pinned map {name}")))?;
        // Only a smaller capacity is an older layout's; any other difference is refused by
        // the shape check that follows.
        if info.key_size() == wanted.key_size()
            && info.value_size() == wanted.value_size()
            && info.max_entries() < wanted.max_entries()
        {
            fs::rename(&pin, pin_path.join(aside))
                .map_err(io_err(format!("setting the outgrown {name} aside")))?;
        }
    }
    Ok(())
}

/// Step 2, after loading and before the programs are replaced: each grown map gets the
/// counts of its outgrown one. Written over, not added, so a repeat after a crash counts
/// nothing twice; what the old programs count between this and their replacement (less
/// than a millisecond) is not carried over.
pub(super) fn copy_outgrown_counts(pin_path: &Path) -> Result<()> {
    for (name, aside) in GROWN_MAPS {
        if !pin_path.join(aside).exists() {
            continue;
        }
        let old: PerCpuArray<MapData, u64> = typed_map(pin_path, aside)?;
        let mut new: PerCpuArray<MapData, u64> = typed_map(pin_path, name)?;
        for index in 0..old.len().min(new.len()) {
            let values = old.get(&index, 0).map_err(map_err(format!("reading {aside}")))?;
            let values = PerCpuValues::try_from(values.to_vec())
                .map_err(io_err(format!("copying {aside}")))?;
            new.set(index, values, 0).map_err(map_err(format!("writing {name}")))?;
        }
    }
    Ok(())
}

/// Step 3, before the programs are replaced: `VIPS` holds the address of every `SERVICES`
/// entry, in its set (an older layout had no `VIPS`; a new program that found it empty would
/// let a connect to a VIP's other ports go on). Idempotent.
pub(super) fn fill_vips(pin_path: &Path) -> Result<()> {
    let services = map_data(pin_path, "SERVICES")?;
    let vips = map_data(pin_path, "VIPS")?;
    let entries: Vec<(VipKey, u32)> = batch::lookup_all::<ServiceKey, ServiceValue>(&services)
        .map_err(io_err("reading SERVICES"))?
        .into_iter()
        .map(|(key, _)| (VipKey { addr: key.addr, set: key.set, _pad: [0; 3] }, 1))
        .collect();
    batch::update_all(&vips, &entries).map_err(io_err("filling VIPS"))
}
