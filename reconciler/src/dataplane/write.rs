//! Writing changes into one set of the maps, in batches per map (see `batch`): the apply
//! protocol's one way of writing entries.
use std::io;

use aya::maps::MapData;
use reconciler_common::{
    exclusion::{self, HealthKey},
    Backend, BackendKey, ServiceKey, ServiceName, ServiceValue, SlotKey, VipKey,
};
use reconciler_core::diff::Change;

use super::{
    batch, encode,
    error::{io_err, Result},
    Dataplane,
};

impl Dataplane {
    /// Writes `changes` into map set `set` (names ignore the set), in batches per map;
    /// returns how many entries were written or deleted. Deleting an entry that is not there
    /// is not an error: the entry is gone either way.
    pub(super) fn write_changes<'a>(
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
                Change::Vip(vip, present) => {
                    let key = encode::vip_key(*vip, set);
                    if *present {
                        batches.vips.0.push((key, 1));
                    } else {
                        batches.vips.1.push(key);
                    }
                }
                Change::Name(id, value) => match value {
                    Some(name) => batches.names.0.push((*id, encode::name_value(name))),
                    None => batches.names.1.push(*id),
                },
                Change::Previous(service_id, addr, value) => {
                    let key = encode::health_key_of(exclusion::KEY_PREVIOUS, *service_id, addr);
                    match value {
                        Some(value) => batches.health.0.push((key, *value)),
                        None => batches.health.1.push(key),
                    }
                }
                Change::Health(service_id, addr, why) => {
                    let key = encode::health_key(*service_id, addr);
                    if let Some(why) = why {
                        batches.health.0.push((key, *why));
                    } else {
                        batches.health.1.push(key);
                        // An older build's entry for every service listing the address goes
                        // too (not counted: it is rarely there); what it still meant for
                        // others is written anew by the next plan, which finds it missing.
                        batches.older_health.push(encode::health_key(0, addr));
                    }
                }
            }
        }
        let what = |map: &str| io_err(format!("writing {map} (set {set})"));
        batches.services.write(&self.services).map_err(what("SERVICES"))?;
        batches.vips.write(&self.vips).map_err(what("VIPS"))?;
        batches.slots.write(&self.slots).map_err(what("SLOTS"))?;
        batches.backends.write(&self.backends).map_err(what("BACKENDS"))?;
        batches.names.write(&self.names).map_err(what("SERVICE_NAMES"))?;
        batches.health.write(&self.health).map_err(what("HEALTH_EXCLUDED"))?;
        batch::delete_all(&self.health, &batches.older_health).map_err(what("HEALTH_EXCLUDED"))?;
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
    /// Deletes first: a set holds as many entries as the capacity, so an apply that replaces
    /// entries of a full one must make room before it adds. (No program reads what is
    /// written here but names and health exclusions, which they never look up.)
    fn write(&self, map: &MapData) -> io::Result<()> {
        batch::delete_all(map, &self.1)?;
        batch::update_all(map, &self.0)
    }

    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }
}

#[derive(Default)]
struct Batches {
    services: MapBatch<ServiceKey, ServiceValue>,
    vips: MapBatch<VipKey, u32>,
    slots: MapBatch<SlotKey, u32>,
    backends: MapBatch<BackendKey, Backend>,
    names: MapBatch<u32, ServiceName>,
    health: MapBatch<HealthKey, u32>,
    /// `HEALTH_EXCLUDED` entries of an older build (service ID 0) to delete.
    older_health: Vec<HealthKey>,
}

impl Batches {
    fn len(&self) -> usize {
        self.services.len()
            + self.vips.len()
            + self.slots.len()
            + self.backends.len()
            + self.names.len()
            + self.health.len()
    }
}
