//! The reconcile pipeline, shared by `plan`, `apply` and the daemon: source -> validate ->
//! compile (against the live state) -> plan -> apply.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    compile::{compile, compile_with_health, CompileError},
    dataplane::{self, ApplyReport, Dataplane, DataplaneError, LiveState, MapState},
    model::Service,
    plan::{make_plan, Plan, PlanContext},
    source::{self, GitSpec, Snapshot, SourceError, SourceSpec},
    validate::{validate, Diagnostic, Policy},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{} invalid: {}", revision_label(.revision), summarize(.diagnostics))]
    Invalid { revision: Option<String>, diagnostics: Vec<Diagnostic> },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(
        "the saved plan is stale: it was made against generation {planned} of {pin_path}, \
         which is now at generation {live}; run `reconciler plan` again"
    )]
    StalePlan { pin_path: String, planned: u64, live: u64 },
    #[error(
        "the saved plan is stale: it was made when {} data plane was installed at {pin_path}, \
         and now {}; run `reconciler plan` again",
        if *.planned { "no" } else { "a" },
        if *.planned { "one is" } else { "none is" }
    )]
    StaleInstall { pin_path: String, planned: bool },
    #[error("the saved plan is for {planned}, not {given}; pass --pin-path {planned}")]
    OtherPinPath { planned: String, given: String },
    #[error(
        "refusing to destroy every service ({destroy}) for definitions that define none: an \
         empty or mistyped source path looks like this; if it is meant, apply with \
         --allow-destroy-all (the daemon: policy.allowDestroyAll: true)"
    )]
    DestroyAll { destroy: usize },
}

fn revision_label(revision: &Option<String>) -> String {
    revision.as_deref().map_or("the definitions are".to_owned(), |r| format!("commit {r} is"))
}

fn summarize(diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [only] => only.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
        [] => "no diagnostics".into(),
    }
}

/// Validated service definitions at one revision.
#[derive(Clone, Debug)]
pub struct Desired {
    pub revision: Option<String>,
    /// Where they came from, for people (`git://host/repo.git@main`, a directory).
    pub source: String,
    pub services: Vec<Service>,
}

/// Fetches `spec` and validates every file of it.
pub fn load(spec: &SourceSpec, policy: &Policy) -> Result<Desired, Error> {
    validated(source::fetch(spec)?, describe(spec), policy)
}

/// Another revision of the repository `load` fetched (for `plan --against REV`).
pub fn load_at(spec: &GitSpec, rev: &str, policy: &Policy) -> Result<Desired, Error> {
    validated(source::snapshot_at(spec, rev)?, format!("{} ({rev})", spec.url), policy)
}

/// Validates a fetched snapshot; `source` says where it came from, for people.
pub fn validated(snapshot: Snapshot, source: String, policy: &Policy) -> Result<Desired, Error> {
    match validate(&snapshot, policy) {
        Ok(located) => Ok(Desired {
            revision: snapshot.revision,
            source,
            services: located.into_iter().map(|l| l.service).collect(),
        }),
        Err(diagnostics) => Err(Error::Invalid { revision: snapshot.revision, diagnostics }),
    }
}

/// Where a source spec points, for people.
pub fn describe(spec: &SourceSpec) -> String {
    match spec {
        SourceSpec::Dir(dir) => format!("directory {}", dir.display()),
        SourceSpec::Git(git) => {
            let mut text = git.url.clone();
            if let Some(reference) = &git.reference {
                text.push_str(&format!(" ({reference})"));
            }
            if let Some(subdir) = &git.subdir {
                text.push_str(&format!(" path {}", subdir.display()));
            }
            text
        }
    }
}

/// The live state at `pin_path`, or `None` when no data plane is installed there.
pub fn read_live(pin_path: &Path) -> Result<Option<LiveState>, Error> {
    if !dataplane::is_installed(pin_path) {
        return Ok(None);
    }
    Ok(Some(Dataplane::open(pin_path)?.read_live()?))
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
    let live = read_live(pin_path)?;
    let empty = MapState::default();
    let live_state = live.as_ref().map_or(&empty, |l| &l.state);
    let excluded = health.unwrap_or(&live_state.health_excluded);
    let compiled = compile_with_health(&desired.services, live_state, excluded)?;
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

/// The plan between two revisions, with no data plane at all (for pull-request review):
/// `base` compiled from nothing is the "live" side.
pub fn plan_between(base: &Desired, head: &Desired) -> Result<Plan, Error> {
    let base_state = compile(&base.services, &MapState::default())?;
    let head_state = compile(&head.services, &base_state)?;
    let context = PlanContext {
        revision: head.revision.clone(),
        source: head.source.clone(),
        pin_path: String::new(),
        install: false,
        generation: 0,
        live_revision: base.revision.clone(),
        against: true,
        health_changed: false,
    };
    Ok(make_plan(context, &base_state, head_state))
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
    let mut dataplane = if installed {
        Dataplane::open(pin_path)?
    } else {
        let cgroup: PathBuf = match cgroup {
            Some(cgroup) => cgroup.to_owned(),
            None => dataplane::default_cgroup()?,
        };
        Dataplane::install(pin_path, &cgroup)?
    };
    // The generation is checked under the apply's lock: a plan made against generation N is
    // applied only to generation N.
    match dataplane.apply(
        &plan.desired,
        plan.context.revision.as_deref(),
        Some(plan.context.generation),
    ) {
        Err(DataplaneError::GenerationMoved { expected, found }) => {
            Err(Error::StalePlan { pin_path: given, planned: expected, live: found })
        }
        other => Ok(other?),
    }
}
