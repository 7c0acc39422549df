//! The reconcile pipeline, shared by `plan`, `apply` and the daemon: source -> validate ->
//! compile (against the live state) -> plan -> apply. The pure half (loading, validating,
//! `plan --against`) is `pipeline`, re-exported here.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    panic,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
};

pub use crate::pipeline::{
    describe, load, load_at, load_reusing, plan_between, validated, validated_reusing, Desired,
    Error, Tree,
};
use crate::{
    compile::{self, compile},
    dataplane::{self, ApplyReport, Dataplane, DataplaneError, LiveState, MapState},
    memo::{Memo, Record},
    model::Service,
    plan::{make_plan, Plan, PlanContext},
};

/// The live state at `pin_path`, or `None` when no data plane is installed there.
pub fn read_live(pin_path: &Path) -> Result<Option<LiveState>, Error> {
    if !dataplane::is_installed(pin_path) {
        return Ok(None);
    }
    Ok(Some(Dataplane::open(pin_path)?.read_live()?))
}

/// How much of the live maps a plan reads.
pub enum Reading {
    /// The entries of the services that changed, when the memo allows it; else everything.
    Changed,
    /// Every entry.
    Everything,
    /// Every entry, read on another thread since before the definitions were loaded: a
    /// full read does not depend on them, and on a second core it costs no wall time.
    Ahead(thread::JoinHandle<Result<Option<LiveState>, Error>>),
}

impl Reading {
    /// Everything with `refresh`, else the changed services' entries.
    pub fn refresh(refresh: bool) -> Self {
        if refresh {
            Reading::Everything
        } else {
            Reading::Changed
        }
    }

    /// With `refresh`, every entry, starting now on another thread (call it before loading
    /// the definitions); else the changed services' entries.
    pub fn ahead(refresh: bool, pin_path: &Path) -> Self {
        if !refresh {
            return Reading::Changed;
        }
        let pin_path = pin_path.to_owned();
        Reading::Ahead(thread::spawn(move || read_live(&pin_path)))
    }
}

/// The plan from the live state at `pin_path` to `desired`, keeping the health exclusions
/// the data plane records.
pub fn plan(desired: &Desired, pin_path: &Path) -> Result<Plan, Error> {
    plan_with_health(desired, pin_path, None)
}

/// [`plan`], with the health exclusions `health` (the daemon's checks) instead of the
/// recorded ones when given.
pub fn plan_with_health(
    desired: &Desired,
    pin_path: &Path,
    health: Option<&BTreeSet<SocketAddr>>,
) -> Result<Plan, Error> {
    plan_from_live(desired, pin_path, health, read_live(pin_path)?)
}

/// [`plan_with_health`] from `live`, the state read at `pin_path`.
fn plan_from_live(
    desired: &Desired,
    pin_path: &Path,
    health: Option<&BTreeSet<SocketAddr>>,
    live: Option<LiveState>,
) -> Result<Plan, Error> {
    let empty = MapState::default();
    let live_state = live.as_ref().map_or(&empty, |l| &l.state);
    let excluded = health.unwrap_or(&live_state.health_excluded);
    let compiled = compile(&desired.services, live_state, excluded)?;
    let context = PlanContext {
        revision: desired.revision.clone(),
        source: desired.source.clone(),
        pin_path: pin_path.display().to_string(),
        install: live.is_none(),
        generation: live.as_ref().map_or(0, |l| l.status.generation),
        live_revision: live.as_ref().and_then(|l| l.status.revision.clone()),
        against: false,
        health_changed: compiled.health_excluded != live_state.health_excluded,
    };
    Ok(make_plan(context, live_state, compiled))
}

/// The plan from the live state at `pin_path` to `desired`: by the incremental path when
/// `memo` records the live generation (see [`plan_touched`]), else, or when `reading` says
/// everything, by reading all of it ([`plan`]).
///
/// `health`, as for [`plan_with_health`]: while it excludes any backend, the full path.
pub fn plan_reusing(
    desired: &Desired,
    pin_path: &Path,
    memo: &Memo,
    reading: Reading,
    health: Option<&BTreeSet<SocketAddr>>,
) -> Result<Plan, Error> {
    let live = match reading {
        Reading::Changed => {
            if health.is_none_or(BTreeSet::is_empty) {
                if let Some(plan) = plan_touched(desired, pin_path, memo)? {
                    return Ok(plan);
                }
            }
            read_live(pin_path)?
        }
        Reading::Everything => read_live(pin_path)?,
        Reading::Ahead(reader) => {
            reader.join().unwrap_or_else(|panic| panic::resume_unwind(panic))?
        }
    };
    plan_from_live(desired, pin_path, health, live)
}

/// The incremental path: when the maps are at the generation and revision `memo` recorded,
/// with a clean standby and no health exclusions, the services that differ between the
/// recorded revision's files and `desired`'s (by the parses of the files that changed) are
/// compiled against the recorded state, and their entries are read from both sets to confirm
/// the record. `None` when any of that does not hold: the caller takes the full path.
///
/// Hand edits to entries of services that did not change are not seen here; `plan --refresh`
/// reads everything.
pub fn plan_touched(
    desired: &Desired,
    pin_path: &Path,
    memo: &Memo,
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
        || desired.services.is_empty()
        || !dataplane::is_installed(pin_path)
    {
        return Ok(None);
    }
    let dataplane = Dataplane::open(pin_path)?;
    let status = dataplane.status()?;
    // A dirty standby is for `confirm` to find, below.
    if status.generation != record.generation
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
    let before = record.state.of_services(&touched);
    let after = compile(&services, &record.state, &BTreeSet::new())?;
    // The set's total, which the compile of the touched services alone cannot see.
    compile::slot_capacity(record.state.slots.len() - before.slots.len() + after.slots.len())?;
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
        against: false,
        health_changed: false,
    };
    let mut plan = make_plan(context, &before, after);
    plan.touched = Some(before);
    Ok(Some(plan))
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

/// What `memo` learns from `plan` (made from the definitions in `tree`) being applied with
/// `report`: the maps now hold its desired state (over the recorded one, for an incremental
/// plan).
pub fn remember_apply(memo: &mut Memo, tree: Option<&Tree>, plan: &Plan, report: &ApplyReport) {
    let record = memo.record.take();
    let (Some(tree), Some(revision)) = (tree, &plan.context.revision) else { return };
    let state = match (&plan.touched, record) {
        (None, _) => plan.desired.packed(),
        (Some(before), Some(record)) => record.state.replaced(before, &plan.desired),
        (Some(_), None) => return,
    };
    memo.remember(record_of(plan, tree, revision, report.generation, state), &tree.files);
}

/// What `memo` learns from a full `plan` (made from the definitions in `tree`) that is not
/// applied: when it found the maps holding its revision and nothing to change, they hold its
/// desired state.
pub fn remember_plan(memo: &mut Memo, tree: Option<&Tree>, plan: &Plan) {
    let (Some(tree), Some(revision)) = (tree, &plan.context.revision) else { return };
    if plan.touched.is_some()
        || plan.context.install
        || plan.entry_changes > 0
        || plan.context.live_revision.as_ref() != Some(revision)
    {
        memo.trim(&tree.files);
        return;
    }
    // Compared first: packing 220 000 entries only to find them recorded already is waste.
    let known = memo.record.as_ref().is_some_and(|r| {
        r.generation == plan.context.generation
            && &r.revision == revision
            && r.pin_path == plan.context.pin_path
            && r.source == tree.source
            && r.files == tree.files
            && r.state == plan.desired
    });
    if known {
        memo.trim(&tree.files);
    } else {
        let record =
            record_of(plan, tree, revision, plan.context.generation, plan.desired.packed());
        memo.remember(record, &tree.files);
    }
}

/// The record of the maps holding `state` at `generation`, from `plan` and `tree`.
fn record_of(plan: &Plan, tree: &Tree, revision: &str, generation: u64, state: MapState) -> Record {
    Record {
        pin_path: plan.context.pin_path.clone(),
        generation,
        revision: revision.to_owned(),
        source: tree.source.clone(),
        files: tree.files.clone(),
        state,
    }
}

/// Applies `plan` to the data plane at `pin_path`, installing it on `cgroup` (default: the
/// cgroup2 root) if the plan says none is installed. Refuses a plan the live state has moved
/// away from, and one that destroys every service unless `allow_destroy_all`.
pub fn apply(
    plan: &Plan,
    pin_path: &Path,
    cgroup: Option<&Path>,
    allow_destroy_all: bool,
) -> Result<ApplyReport, Error> {
    apply_loaded(plan, pin_path, cgroup, allow_destroy_all, None)
}

/// [`apply`], installing (if it does) with the BPF object `loaded` ahead.
pub fn apply_loaded(
    plan: &Plan,
    pin_path: &Path,
    cgroup: Option<&Path>,
    allow_destroy_all: bool,
    loaded: Option<dataplane::Loaded>,
) -> Result<ApplyReport, Error> {
    if plan.destroys_everything() && !allow_destroy_all {
        return Err(Error::DestroyAll { destroy: plan.summary.destroy });
    }
    let given = pin_path.display().to_string();
    if plan.context.pin_path != given {
        return Err(Error::OtherPinPath { planned: plan.context.pin_path.clone(), given });
    }
    let installed = dataplane::is_installed(pin_path);
    if plan.context.install == installed {
        return Err(Error::StaleInstall { pin_path: given, planned: plan.context.install });
    }
    let revision = plan.context.revision.as_deref();
    let (mut dataplane, first) = if installed {
        (Dataplane::open(pin_path)?, None)
    } else {
        let cgroup: PathBuf = match cgroup {
            Some(cgroup) => cgroup.to_owned(),
            None => dataplane::default_cgroup()?,
        };
        Dataplane::install_loaded(pin_path, &cgroup, loaded, Some((&plan.desired, revision)))?
    };
    if let Some(report) = first {
        return Ok(report);
    }
    // The generation is checked under the apply's lock: a plan made against generation N is
    // applied only to generation N.
    let applied = match &plan.touched {
        Some(recorded) => {
            dataplane.apply_touched(recorded, &plan.desired, revision, plan.context.generation)
        }
        None => dataplane.apply(&plan.desired, revision, Some(plan.context.generation)),
    };
    match applied {
        Err(DataplaneError::GenerationMoved { expected, found }) => {
            Err(Error::StalePlan { pin_path: given, planned: expected, live: found })
        }
        Err(DataplaneError::NotAsRecorded) => Err(Error::Unconfirmed { pin_path: given }),
        other => Ok(other?),
    }
}
