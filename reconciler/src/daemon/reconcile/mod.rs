//! One run of the daemon, through the pipeline (`crate::pipeline::Session`): with a fetched
//! commit, upgrade, validate, plan, and apply when `decide` says so; then, while the fetched
//! commit is held back, the drift check of the last good revision. Or, on a health
//! transition, the health overlay alone ([`overlay`]), planned from the last good revision
//! without fetching: a git server that hangs delays new commits, never failover.

use tracing::{info, warn};

use super::{
    config::Config,
    decide::{self, Decision, Facts, HeldBack, Why},
    journal::{Failure, Journal},
    outcome::{self, Outcome, Trouble},
    ramps::Ramps,
    rollout::Rollouts,
    waves,
};
use crate::{
    clock,
    dataplane::{self, Dataplane},
    pipeline::{ApplyOptions, Desired, Error, PlanOptions, Session},
};
use reconciler_core::{
    capacity::Capacity,
    node,
    plan::Plan,
    source::{Snapshot, SourceError},
    state::Overlay,
    validate::Policy,
};

mod overlaid;

pub(super) use overlaid::resume_rollout;

/// What the loop remembers between runs.
pub(super) struct Memory {
    /// The definitions the data plane holds, for drift checks while newer commits fail.
    pub last_good: Option<Desired>,
    /// A revision that failed validation or apply; not tried again.
    pub failed_revision: Option<String>,
    /// Transient failures in a row, for the backoff.
    pub consecutive_errors: u32,
    /// What survives a restart.
    pub journal: Journal,
    /// The (service, backend) pairs the health checks and outlier detection took out, as of
    /// this run.
    pub overlay: Overlay,
    /// Slow start's ramps (shared with the loop).
    pub ramps: std::sync::Arc<Ramps>,
    /// The rollout under way (shared with the loop).
    pub rollouts: std::sync::Arc<Rollouts>,
    /// The gate of this node's wave (shared with its task).
    pub gatekeeper: std::sync::Arc<waves::Gatekeeper>,
    /// The pipeline, with what the incremental path reuses (parses by blob, the state the
    /// last apply left) in its memo.
    pub session: Session,
}

impl Memory {
    pub(super) fn new(config: &Config) -> Memory {
        let session = session(config);
        Memory {
            last_good: None,
            failed_revision: None,
            consecutive_errors: 0,
            journal: Journal::open(&config.source.cache_dir, &session.source(), &config.pin_path),
            overlay: Overlay::default(),
            ramps: std::sync::Arc::default(),
            rollouts: std::sync::Arc::default(),
            gatekeeper: std::sync::Arc::default(),
            session,
        }
    }

    /// After a configuration reload: a new policy may accept what the old one refused, or
    /// refuse what it accepted, so everything is validated again; the memo, keyed by source
    /// and revision, stays good.
    pub(super) fn reload(&mut self, old: &Config, new: &Config) {
        if new.source != old.source {
            self.journal = Memory::new(new).journal;
        }
        let mut memo = self.session.take_memo();
        // Other labels select other services: what the memo records of the maps is no base.
        if new.node != old.node {
            memo.record = None;
        }
        self.session = session(new).with_memo(memo);
        self.failed_revision = None;
        self.last_good = None;
        self.journal.clear();
    }

    fn reject(&mut self, revision: Option<String>, error: Error) -> Outcome {
        self.failed_revision = revision.clone();
        Outcome::Rejected { revision, error }
    }
}

/// The pipeline for `config`'s source and data plane, with the configured policy (each run
/// adds the node's own addresses) and an empty memo.
fn session(config: &Config) -> Session {
    Session::new(config.source_spec(), &config.pin_path, config.policy.clone())
        .with_capacity(config.capacity)
        .with_node(Some(config.node.clone()))
}

/// One run with what a fetch returned: what happened to the fetched commit, then (while it
/// is held back) to drift. With `refresh`, the plan reads every live entry.
pub(super) fn reconcile(
    config: &Config,
    memory: &mut Memory,
    fetched: Result<Snapshot, SourceError>,
    refresh: bool,
) -> Vec<Outcome> {
    if let Some(aborted) = memory.rollouts.take_aborted() {
        return vec![overlaid::undo(config, memory, aborted)];
    }
    let outcome = reconcile_commit(config, memory, fetched, refresh);
    journal(&mut memory.journal, &outcome);
    let drift = if outcome.holds_back() { check_drift(config, memory) } else { None };
    std::iter::once(outcome).chain(drift).collect()
}

/// What the journal keeps of `outcome`, for the next start.
fn journal(journal: &mut Journal, outcome: &Outcome) {
    match outcome {
        Outcome::Rejected { revision: Some(revision), error } => journal.failed(Failure {
            revision: revision.clone(),
            error: outcome::refusal_text(error),
            diagnostics: outcome::diagnostics(error).to_vec(),
            at: clock::now_rfc3339(),
        }),
        Outcome::Rejected { revision: None, .. } | Outcome::StillRejected { .. } => {}
        // Valid: what the journal says of an earlier revision no longer matters.
        Outcome::Waiting { .. } => journal.clear(),
        Outcome::Transient { .. } => journal.interrupted(),
        Outcome::Applied { .. }
        | Outcome::Unchanged { .. }
        | Outcome::DriftHealed { .. }
        | Outcome::HealthApplied { .. }
        | Outcome::DriftReported { .. }
        | Outcome::LastGood { .. } => journal.clear(),
        // Its failure is in the journal already (`undo`).
        Outcome::RolledBack { .. } => {}
    }
}

/// Validate, plan, apply: the fetched commit's part of a run.
fn reconcile_commit(
    config: &Config,
    memory: &mut Memory,
    fetched: Result<Snapshot, SourceError>,
    refresh: bool,
) -> Outcome {
    if let Err(error) = upgrade(config) {
        return Outcome::Transient { error };
    }
    exclude(config);
    let snapshot = match fetched {
        Ok(snapshot) => snapshot,
        Err(e) if e.is_transient() => return Outcome::Transient { error: e.into() },
        // A ref that names nothing, a subdirectory a commit lacks: reported, and tried again
        // at the interval (a new commit may mend it), not at the backoff's pace.
        Err(e) => {
            let revision = e.revision().map(str::to_owned);
            if decide::already_failed(&revision, &memory.failed_revision) {
                return Outcome::StillRejected { revision };
            }
            return memory.reject(revision, e.into());
        }
    };
    if decide::already_failed(&snapshot.revision, &memory.failed_revision) {
        return Outcome::StillRejected { revision: snapshot.revision };
    }
    // What the maps hold, read once: what validation's capacity and the wave's gate go by.
    let installed = installed_status(config);
    let desired = match desired(config, memory, snapshot, installed.as_ref()) {
        Ok(desired) => desired,
        Err(outcome) => return *outcome,
    };
    let live = installed.and_then(|status| status.revision);
    let revision = desired.revision.as_deref();
    if let Some(waiting) = waves::hold(config, &memory.gatekeeper, live.as_deref(), revision) {
        return waiting;
    }
    overlaid::with_overlay(config, memory, desired, refresh)
}

/// A data plane of an older build (at start, say) is upgraded in place before it is read.
fn upgrade(config: &Config) -> Result<(), Trouble> {
    let upgraded = dataplane::upgrade(&config.pin_path).map_err(Trouble::Upgrade)?;
    if let Some(upgraded) = upgraded {
        info!(
            from_layout = upgraded.from_layout,
            replaced = ?upgraded.replaced,
            attached = ?upgraded.attached,
            "upgraded the data plane in place"
        );
    }
    Ok(())
}

/// The configuration's `dataplane.exclude` on an installed data plane (a first install
/// writes it as it installs): at every run, so a reloaded configuration takes effect without
/// a commit. A path that is no cgroup is logged, and the run goes on.
fn exclude(config: &Config) {
    if !dataplane::is_installed(&config.pin_path) {
        return;
    }
    let excluded = Dataplane::open(&config.pin_path).and_then(|mut d| d.exclude(&config.exclude));
    match excluded {
        Ok(true) => info!(cgroups = ?config.exclude, "excluded cgroups from translation"),
        Ok(false) => {}
        Err(e) => warn!("dataplane.exclude not applied: {e}"),
    }
}

/// The validated definitions of `snapshot`, under this node's rules.
fn desired(
    config: &Config,
    memory: &mut Memory,
    snapshot: Snapshot,
    installed: Option<&dataplane::Status>,
) -> Result<Desired, Box<Outcome>> {
    // The commit the data plane already holds was validated when it was applied: at each
    // interval only drift is to be checked, not the definitions again.
    let known = memory.last_good.as_ref().filter(|good| {
        good.revision.is_some()
            && good.revision == snapshot.revision
            && good.source == memory.session.source()
    });
    let local_addresses = node::local_addresses(&config.allow_local_vips)
        .map_err(|e| Outcome::Transient { error: Trouble::Addresses(e) })
        .map_err(Box::new)?;
    // A revision the data plane already holds is adopted as it is (applied by `reconciler
    // apply`, say): if its failovers would not fit, health's overlay holds them back.
    let live = installed.and_then(|status| status.revision.as_ref());
    let held = live.is_some_and(|live| Some(live) == snapshot.revision.as_ref());
    let capacity = (!held).then(|| node_capacity(config, installed));
    memory.session.set_policy(Policy { local_addresses, capacity, ..config.policy.clone() });
    if let Some(good) = known {
        return Ok(good.clone());
    }
    if let Some(revision) = &snapshot.revision {
        // Before the work: if it kills the process, the journal remembers.
        memory.journal.start(revision);
    }
    memory.session.validate(snapshot).map_err(|error| {
        let Error::Invalid { revision, .. } = &error else {
            return Box::new(Outcome::Transient { error: error.into() });
        };
        let revision = revision.clone();
        Box::new(memory.reject(revision, error))
    })
}

/// The capacity a new revision must fit, failovers included: the `installed` data plane's,
/// else the configured one (which a first install takes), else the default.
fn node_capacity(config: &Config, installed: Option<&dataplane::Status>) -> Capacity {
    installed.map(|status| status.capacity).or(config.capacity).unwrap_or_default()
}

/// The exclusions the installed data plane records (`HEALTH_EXCLUDED`): where a restart
/// starts from. None if it cannot be read (the run will say why).
pub(super) fn recorded_exclusions(config: &Config) -> Overlay {
    if !dataplane::is_installed(&config.pin_path) {
        return Overlay::default();
    }
    let live = Dataplane::open(&config.pin_path).and_then(|d| d.read_live_members());
    live.map(|live| Overlay::recorded_in(&live.state, &live.state.health_excluded))
        .unwrap_or_default()
}

/// The revision the installed data plane records, if any.
fn live_revision(config: &Config) -> Option<String> {
    installed_status(config)?.revision
}

fn installed_status(config: &Config) -> Option<dataplane::Status> {
    if !dataplane::is_installed(&config.pin_path) {
        return None;
    }
    Dataplane::open(&config.pin_path).and_then(|d| d.status()).ok()
}

/// Plans `desired` against the live maps and applies it when [`decide::decide`] says so.
fn plan_and_apply(
    config: &Config,
    memory: &mut Memory,
    desired: Desired,
    refresh: bool,
) -> Outcome {
    let health = Some(memory.overlay.clone());
    let options = PlanOptions { health, ..PlanOptions::refresh(refresh) };
    // The revision the data plane holds was good: what fails now (with health's overlay,
    // say) is trouble, never its fault.
    let applied = memory.last_good.as_ref().is_some_and(|good| good.revision == desired.revision);
    let plan = match memory.session.plan(&desired, options) {
        Ok(plan) => Box::new(plan),
        Err(e) if decide::plan_refuses_commit(&e) && !applied => {
            return memory.reject(desired.revision, e)
        }
        Err(e) => return Outcome::Transient { error: e.into() },
    };
    let why = match decide::decide(Facts::of(&plan), config.drift) {
        Decision::Apply(why) => why,
        Decision::ReportDrift => {
            memory.last_good = Some(desired);
            return Outcome::DriftReported { plan };
        }
        Decision::Keep => {
            memory.last_good = Some(desired);
            return Outcome::Unchanged { plan };
        }
    };
    match memory.session.apply(&plan, Some(&desired), apply_options(config)) {
        Ok(report) => {
            memory.last_good = Some(desired);
            match why {
                Why::NewRevision => Outcome::Applied { plan, report },
                Why::Health => Outcome::HealthApplied { plan, report },
                Why::Drift => Outcome::DriftHealed { plan, report },
            }
        }
        Err(e) if decide::apply_refuses_commit(&e) && !applied => {
            memory.reject(desired.revision, e)
        }
        // Someone else applied in between, or the data plane is in trouble: not this
        // commit's fault; look again soon.
        Err(e) => Outcome::Transient { error: e.into() },
    }
}

fn apply_options(config: &Config) -> ApplyOptions {
    // An installed data plane has this run's exclusions already (`exclude`); a first install
    // writes them as it installs.
    let installed = dataplane::is_installed(&config.pin_path);
    ApplyOptions {
        cgroup: config.cgroup.clone(),
        allow_destroy_all: config.allow_destroy_all,
        loaded: None,
        exclude: (!installed).then(|| config.exclude.clone()),
        capacity: config.capacity,
    }
}

/// The health overlay (the backends the checks took out, and the fallbacks that take their
/// place) on the last good revision, applied at once: no fetch, no validation of anything
/// new. Health never fails a revision: every error here is trouble, retried at the next
/// transition or run. `None`: nothing to do (no good revision yet, or the maps hold another
/// revision than it, which the next commit run sorts out).
pub(super) fn overlay(config: &Config, memory: &mut Memory) -> Option<Outcome> {
    if let Err(error) = upgrade(config) {
        return Some(Outcome::Transient { error });
    }
    if let Some(aborted) = memory.rollouts.take_aborted() {
        return Some(overlaid::undo(config, memory, aborted));
    }
    let good = last_good(config, memory)?.clone();
    let health = Some(memory.overlay.clone());
    let options = PlanOptions { health, ..PlanOptions::refresh(false) };
    let plan = match memory.session.plan(&good, options) {
        Ok(plan) => Box::new(plan),
        Err(e) => return Some(Outcome::Transient { error: e.into() }),
    };
    if decide::decide(Facts::of(&plan), config.drift) != Decision::Apply(Why::Health) {
        return None;
    }
    Some(match memory.session.apply(&plan, Some(&good), apply_options(config)) {
        Ok(report) => Outcome::HealthApplied { plan, report },
        Err(e) => Outcome::Transient { error: e.into() },
    })
}

/// The definitions the data plane holds: the last good ones, or after a restart those of
/// the revision the maps record, read from the git cache (never the network).
pub(super) fn last_good<'m>(config: &Config, memory: &'m mut Memory) -> Option<&'m Desired> {
    if memory.last_good.is_none() {
        memory.last_good = memory.session.load_cached_at(&live_revision(config)?).ok();
    }
    memory.last_good.as_ref()
}

/// While the fetched commit is held back: drift of the live maps from the last good
/// definitions. `None` when there is nothing to compare with.
fn check_drift(config: &Config, memory: &mut Memory) -> Option<Outcome> {
    let good = last_good(config, memory)?.clone();
    let good = &good;
    let health = Some(memory.overlay.clone());
    let options = PlanOptions { health, ..PlanOptions::refresh(true) };
    let plan: Box<Plan> = Box::new(memory.session.plan(good, options).ok()?);
    Some(match decide::held_back(Facts::of(&plan), config.drift)? {
        HeldBack::Holding => Outcome::LastGood { plan },
        HeldBack::ReportDrift => Outcome::DriftReported { plan },
        HeldBack::HealDrift => match memory.session.apply(&plan, Some(good), apply_options(config))
        {
            Ok(report) => Outcome::DriftHealed { plan, report },
            Err(e) => Outcome::Transient { error: e.into() },
        },
    })
}
