//! The session's half that reads and writes the data plane: the plan from the live maps and
//! its apply, each followed by what the memo learns from it.
use std::{
    panic,
    path::{Path, PathBuf},
    thread,
};

use super::{incremental, remember, Desired, Error, Session};
use crate::dataplane::{
    self, ApplyReport, ApplyTo, Dataplane, DataplaneError, Install, LiveState, Loaded, Scope,
};
use reconciler_core::{
    capacity::{Capacity, DEFAULT},
    failover::compile_within,
    plan::{make_plan, rollout_notes, Plan, PlanContext},
    state::{MapState, Overlay},
};

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

/// How [`Session::plan`] plans.
pub struct PlanOptions {
    pub reading: Reading,
    /// The backends the daemon excludes (health checks, ejections), instead of those the
    /// data plane records; while it excludes any, every entry is read.
    pub health: Option<Overlay>,
}

impl Reading {
    /// With `refresh`, every entry of the data plane at `pin_path`, read from now on
    /// another thread (call it before loading the definitions); else the changed services'
    /// entries.
    pub fn ahead(refresh: bool, pin_path: &Path) -> Reading {
        if !refresh {
            return Reading::Changed;
        }
        let pin_path = pin_path.to_owned();
        Reading::Ahead(thread::spawn(move || read_live(&pin_path)))
    }
}

impl PlanOptions {
    /// Every entry with `refresh`, else the changed services' entries; the recorded health
    /// exclusions.
    pub fn refresh(refresh: bool) -> PlanOptions {
        let reading = if refresh { Reading::Everything } else { Reading::Changed };
        PlanOptions { reading, health: None }
    }
}

/// How [`Session::apply`] applies.
#[derive(Default)]
pub struct ApplyOptions {
    /// The cgroup v2 directory a first install attaches to (default: the cgroup2 root).
    pub cgroup: Option<PathBuf>,
    /// Apply a plan that destroys every service and defines none.
    pub allow_destroy_all: bool,
    /// The BPF object, loaded ahead for a first install.
    pub loaded: Option<Loaded>,
    /// The cgroup subtrees never to translate, from now on (`None`: as they are).
    pub exclude: Option<Vec<PathBuf>>,
    /// A first install's capacity (default: [`DEFAULT`]); the session's, if it has one.
    pub capacity: Option<Capacity>,
}

impl Session {
    /// The plan from the live maps to `desired`: by the incremental path when the memo
    /// records the live generation and `options` allow it, else from every live entry. The
    /// memo learns from it (see `remember`).
    pub fn plan(&mut self, desired: &Desired, options: PlanOptions) -> Result<Plan, Error> {
        let health = options.health.as_ref();
        let live = match options.reading {
            Reading::Changed => {
                if health.is_none_or(Overlay::is_empty) {
                    let memo = &self.memo;
                    if let Some(plan) =
                        incremental::plan(desired, &self.pin_path, memo, self.capacity)?
                    {
                        remember::plan(&mut self.memo, desired.tree.as_ref(), &plan);
                        return Ok(plan);
                    }
                }
                read_live(&self.pin_path)?
            }
            Reading::Everything => read_live(&self.pin_path)?,
            Reading::Ahead(reader) => {
                reader.join().unwrap_or_else(|panic| panic::resume_unwind(panic))?
            }
        };
        let capacity = capacity_for(&self.pin_path, live.as_ref(), self.capacity)?;
        let plan = plan_from_live(desired, &self.pin_path, health, live, &capacity)?;
        remember::plan(&mut self.memo, desired.tree.as_ref(), &plan);
        Ok(plan)
    }

    /// Applies `plan`, made from `desired` (`None` for a saved plan), installing the data
    /// plane if the plan says none is installed; the memo learns what the maps now hold.
    /// Refuses a plan the live state has moved away from, and one that destroys every
    /// service unless `options` allow it.
    pub fn apply(
        &mut self,
        plan: &Plan,
        desired: Option<&Desired>,
        options: ApplyOptions,
    ) -> Result<ApplyReport, Error> {
        let options = ApplyOptions { capacity: options.capacity.or(self.capacity), ..options };
        let report = apply(plan, &self.pin_path, options)?;
        let tree = desired.and_then(|d| d.tree.as_ref());
        remember::apply(&mut self.memo, tree, plan, &report);
        Ok(report)
    }
}

/// Applies a saved plan exactly, to the data plane at `pin_path` it was made for: no source,
/// no memo (see [`Session::apply`]).
pub fn apply_saved(
    plan: &Plan,
    pin_path: &Path,
    options: ApplyOptions,
) -> Result<ApplyReport, Error> {
    apply(plan, pin_path, options)
}

/// The capacity a plan must fit: the installed data plane's (`live`), which `configured`, if
/// given, must be; else `configured`, else the default.
fn capacity_for(
    pin_path: &Path,
    live: Option<&LiveState>,
    configured: Option<Capacity>,
) -> Result<Capacity, Error> {
    match (live.map(|l| l.status.capacity), configured) {
        (Some(installed), Some(configured)) if installed != configured => {
            let pin_path = pin_path.display().to_string();
            Err(Error::CapacityChanged { pin_path, installed, configured })
        }
        (Some(installed), _) => Ok(installed),
        (None, configured) => Ok(configured.unwrap_or(DEFAULT)),
    }
}

/// The live state at `pin_path`, or `None` when no data plane is installed there.
fn read_live(pin_path: &Path) -> Result<Option<LiveState>, Error> {
    if !dataplane::is_installed(pin_path) {
        return Ok(None);
    }
    Ok(Some(Dataplane::open(pin_path)?.read_live()?))
}

/// The plan from `live`, the state read at `pin_path`, to `desired`, with the health
/// exclusions `health` when given, else those `live` records; fitting `capacity` (the
/// health overlay holds fallbacks back where they would not fit).
fn plan_from_live(
    desired: &Desired,
    pin_path: &Path,
    health: Option<&Overlay>,
    live: Option<LiveState>,
    capacity: &Capacity,
) -> Result<Plan, Error> {
    let empty = MapState::default();
    let live_state = live.as_ref().map_or(&empty, |l| &l.state);
    let mut overlay = match health {
        Some(overlay) => overlay.clone(),
        None => Overlay::recorded_in(live_state, &live_state.health_excluded),
    };
    overlay.zone.clone_from(&desired.zone);
    let (compiled, failover_held_back) =
        compile_within(&desired.services, live_state, &overlay, capacity)?;
    let context = PlanContext {
        revision: desired.revision.clone(),
        source: desired.source.clone(),
        pin_path: pin_path.display().to_string(),
        install: live.is_none(),
        generation: live.as_ref().map_or(0, |l| l.status.generation),
        live_revision: live.as_ref().and_then(|l| l.status.revision.clone()),
        against: None,
        health_changed: compiled.health_excluded != live_state.health_excluded
            || compiled.ejected != live_state.ejected
            || compiled.ramps != live_state.ramps
            || compiled.blends != live_state.blends,
        failover_held_back,
        rollouts: rollout_notes(&desired.services, live_state),
        not_on_node: desired.elsewhere.clone(),
    };
    Ok(make_plan(context, live_state, compiled))
}

/// Applies `plan` to the data plane at `pin_path` (see [`Session::apply`]).
fn apply(plan: &Plan, pin_path: &Path, options: ApplyOptions) -> Result<ApplyReport, Error> {
    if plan.destroys_everything() && !options.allow_destroy_all {
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
    let mut dataplane = if installed {
        Dataplane::open(pin_path)?
    } else {
        let cgroup = match options.cgroup {
            Some(cgroup) => cgroup,
            None => dataplane::default_cgroup()?,
        };
        let capacity = options.capacity.unwrap_or(DEFAULT);
        // A saved plan was made for the capacity asked for then.
        capacity.fits(&plan.desired)?;
        let (dataplane, report) = Install::new(pin_path, &cgroup)
            .capacity(capacity)
            .loaded(options.loaded)
            .fill(&plan.desired, plan.context.revision.as_deref())
            .run()?;
        if let Some(report) = report {
            exclude(dataplane, options.exclude.as_deref())?;
            return Ok(report);
        }
        // A complete install was there already (another process's): apply to it.
        dataplane
    };
    let report = applied(given, apply_to(&mut dataplane, plan))?;
    exclude(dataplane, options.exclude.as_deref())?;
    Ok(report)
}

/// Makes the data plane exclude exactly `cgroups` from translation, when given.
fn exclude(mut dataplane: Dataplane, cgroups: Option<&[PathBuf]>) -> Result<(), Error> {
    if let Some(cgroups) = cgroups {
        dataplane.exclude(cgroups)?;
    }
    Ok(())
}

/// Writes `plan` into `dataplane`. The generation is checked under the apply's lock: a plan
/// made against generation N is applied only to generation N.
fn apply_to(dataplane: &mut Dataplane, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
    let to = ApplyTo {
        revision: plan.context.revision.as_deref(),
        expected_generation: Some(plan.context.generation),
        scope: plan.touched.as_ref().map_or(Scope::Everything, Scope::Recorded),
    };
    dataplane.apply(&plan.desired, to)
}

/// The errors of an apply to the data plane at `pin_path` that say the plan is stale.
fn applied(
    pin_path: String,
    result: Result<ApplyReport, DataplaneError>,
) -> Result<ApplyReport, Error> {
    match result {
        Err(DataplaneError::GenerationMoved { expected, found }) => {
            Err(Error::StalePlan { pin_path, planned: expected, live: found })
        }
        Err(DataplaneError::NotAsRecorded) => Err(Error::Unconfirmed { pin_path }),
        other => Ok(other?),
    }
}
