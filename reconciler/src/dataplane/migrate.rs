//! The migrations an upgrade makes besides swapping programs: a map whose capacity a layout
//! grew gets a new map with the old counts copied over, counters a layout moved to other
//! maps are copied into them, and a map a layout derives from another is filled before any
//! program reads it.
use std::{collections::BTreeSet, fs, ops::Add, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    Pod,
};
use reconciler_common::{
    Backend, BackendCounters, BackendKey, ServiceCounters, ServiceKey, ServiceValue, VipKey,
};

use super::{
    batch,
    error::{io_err, map_err, Result},
    pins::{map_data, typed_map},
    GROWN_MAPS, OBJECT,
};

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

/// Step 3, before the programs are replaced: the counters layout 6 moved from per-CPU
/// arrays (`BACKEND_COUNTS`, `SERVICE_COUNTS`) to arrays of one value per ID
/// (`BACKEND_TOTALS`, `SERVICE_TOTALS`): each ID in use (in either set) gets its old sum.
/// Written over, so a repeat after a crash counts nothing twice; as in step 2, what the old
/// programs count until their replacement is not carried over.
pub(super) fn copy_moved_counters(pin_path: &Path) -> Result<()> {
    if !pin_path.join("BACKEND_COUNTS").exists() {
        return Ok(());
    }
    let backend_ids = ids_in(pin_path, "BACKENDS", |key: &BackendKey, _: &Backend| key.backend_id)?;
    let service_ids =
        ids_in(pin_path, "SERVICES", |_: &ServiceKey, value: &ServiceValue| value.service_id)?;
    copy_sums::<BackendCounters>(pin_path, ("BACKEND_COUNTS", "BACKEND_TOTALS"), &backend_ids)?;
    copy_sums::<ServiceCounters>(pin_path, ("SERVICE_COUNTS", "SERVICE_TOTALS"), &service_ids)
}

/// The IDs (`id_of` an entry) in use in hash map `name`, in either set.
fn ids_in<K: Pod, V: Pod>(
    pin_path: &Path,
    name: &str,
    id_of: impl Fn(&K, &V) -> u32,
) -> Result<BTreeSet<u32>> {
    let entries = batch::lookup_all::<K, V>(&map_data(pin_path, name)?)
        .map_err(io_err(format!("reading {name}")))?;
    Ok(entries.iter().map(|(key, value)| id_of(key, value)).collect())
}

/// Writes the sum over CPUs of each of `ids` in per-CPU array `from` into array `to`.
fn copy_sums<T: Pod + Default + Add<Output = T>>(
    pin_path: &Path,
    (from, to): (&str, &str),
    ids: &BTreeSet<u32>,
) -> Result<()> {
    let old: PerCpuArray<MapData, T> = typed_map(pin_path, from)?;
    let sums = ids
        .iter()
        .map(|id| {
            let values = old.get(id, 0).map_err(map_err(format!("reading {from}")))?;
            Ok((*id, values.iter().fold(T::default(), |sum, value| sum + *value)))
        })
        .collect::<Result<Vec<(u32, T)>>>()?;
    batch::update_all(&map_data(pin_path, to)?, &sums).map_err(io_err(format!("writing {to}")))
}

/// Step 4, before the programs are replaced: `VIPS` holds the address of every `SERVICES`
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
