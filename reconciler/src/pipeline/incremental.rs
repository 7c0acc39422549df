//! The incremental path: a plan from the memo's record of the maps, the definitions' changed
//! files and a read of the changed services' entries only.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use super::{Desired, Error, Tree};
use crate::{
    dataplane::{self, Dataplane},
    memo::{Memo, Record},
};
use reconciler_core::{
    capacity::Capacity,
    compile::{self, compile_part},
    model::Service,
    plan::{make_plan, rollout_notes, Plan, PlanContext},
};

/// The incremental path: when the maps are at the generation and revision `memo` recorded,
/// with a clean standby and no health exclusions, the services that differ between the
/// recorded revision's files and `desired`'s (by the parses of the files that changed) are
/// compiled against the recorded state, and their entries are read from both sets to confirm
/// the record. `None` when any of that does not hold, or when they give up a VIP address:
/// the caller takes the full path.
///
/// Hand edits to entries of services that did not change are not seen here; `plan --refresh`
/// reads everything.
pub(super) fn plan(
    desired: &Desired,
    pin_path: &Path,
    memo: &Memo,
    configured: Option<Capacity>,
) -> Result<Option<Plan>, Error> {
    let (Some(record), Some(tree), Some(revision)) =
        (&memo.record, &desired.tree, &desired.revision)
    else {
        return Ok(None);
    };
    let pin = pin_path.display().to_string();
    // An empty repository is for the full path to judge (it refuses to destroy everything).
    if record.pin_path != pin
        || record.source != tree.source
        || !record.state.health_excluded.is_empty()
        || !record.state.ramps.is_empty()
        || !record.state.blends.is_empty()
        || desired.services.is_empty()
        || !dataplane::is_installed(pin_path)
    {
        return Ok(None);
    }
    let dataplane = Dataplane::open(pin_path)?;
    let status = dataplane.status()?;
    // A dirty standby is for `confirm` to find, below; another capacity asked for, for the
    // full path to refuse.
    if configured.is_some_and(|c| c != status.capacity)
        || status.generation != record.generation
        || status.revision.as_deref() != Some(record.revision.as_str())
    {
        return Ok(None);
    }
    let Some(touched) = touched_services(record, tree, memo) else {
        return Ok(None);
    };
    let services: Vec<Arc<Service>> = desired
        .services
        .iter()
        .filter(|s| touched.contains(s.metadata.name.as_str()))
        .cloned()
        .collect();
    let mut before = record.state.of_services(&touched);
    // As a read of the maps gives it, so the plan shows what the full path shows: the maps
    // hold no Maglev weights (the record kept in memory has its compile's).
    before.weights.clear();
    let after = compile_part(&services, &record.state, desired.zone.as_deref())?;
    // A VIP the touched services give up may still be another service's: only the full
    // path, which sees every service, may delete it from `VIPS`.
    if !before.vips().is_subset(&after.vips()) {
        return Ok(None);
    }
    // The touched services' new IDs avoid every live one, so a data plane near full may
    // need an ID this apply frees: the full path, which sees every service, reuses those.
    if status.capacity.fits_ids(&after).is_err() {
        return Ok(None);
    }
    // The set's total of slots, which the compile of the touched services alone cannot see.
    let slots = record.state.slots.len() - before.slots.len() + after.slots.len();
    compile::slot_capacity(slots)?;
    status.capacity.fits_slots(slots)?;
    if !dataplane.confirm(&before, &after)? {
        return Ok(None);
    }
    let context = PlanContext {
        revision: Some(revision.clone()),
        source: desired.source.clone(),
        pin_path: pin,
        install: false,
        generation: status.generation,
        live_revision: status.revision,
        against: None,
        health_changed: false,
        failover_held_back: Vec::new(),
        rollouts: rollout_notes(&desired.services, &record.state),
        not_on_node: desired.elsewhere.clone(),
    };
    Ok(Some(make_plan(context, &before, after).scoped_to(before)))
}

/// The names of the services that differ between the recorded revision and `tree`: only
/// files whose blob changed can hold one (a service defined once on each side that moved
/// between files changed both files). `None` when `memo` lacks the parse of a changed file.
fn touched_services<'a>(
    record: &'a Record,
    tree: &'a Tree,
    memo: &'a Memo,
) -> Option<BTreeSet<&'a str>> {
    let changed = |from: &'a BTreeMap<String, String>, to: &BTreeMap<String, String>| {
        let mut services: BTreeMap<&'a str, &'a Service> = BTreeMap::new();
        for (path, blob) in from {
            if to.get(path) != Some(blob) {
                for service in memo.parsed.get(blob)? {
                    services.insert(service.metadata.name.as_str(), service);
                }
            }
        }
        Some(services)
    };
    let old = changed(&record.files, &tree.files)?;
    let new = changed(&tree.files, &record.files)?;
    let names = old.keys().chain(new.keys()).copied();
    Some(names.filter(|name| old.get(name) != new.get(name)).collect())
}
