//! Canary rollouts from git (`spec.rollout`): a commit that changes the backends of a service
//! with a rollout is not switched at once. Its first apply already holds the new revision,
//! with a blend for each such service (`reconciler_core::blend`): each step's percentage of
//! new connections to the new backends, the rest to the previous revision's, recorded in the
//! data plane (`HEALTH_EXCLUDED`), so a plan by hand keeps it and a restart resumes it. Every
//! second the new backends' connects (the `flows` program) are judged (`steps`): a step that
//! passes moves to the next, through the same atomic overlay as a health change; the last
//! leaves the maps a direct apply of the commit leaves. Too many failed connects, or a new
//! backend failing its health check or ejected, abort: the loop applies the previous revision
//! again and records the commit as failed, not tried again until a new one.
//!
//! The files: `steps` is one service's progress, pure; this one the rollout of a revision.
mod steps;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{clock, pipeline::Desired};
use reconciler_core::{
    model::Rollout as Spec,
    state::{Blend, Exclusion},
};
use steps::{Counts, Progress, Verdict};

/// A service's rollout in progress, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRollout {
    pub service: String,
    /// 1 for the first.
    pub step: usize,
    pub steps: Vec<u8>,
    /// New connections to the new backends, in percent.
    pub percent: u8,
    pub step_started_at: String,
    pub new_backends: Vec<SocketAddr>,
    /// The new backends' connects over this step so far.
    pub established: u64,
    pub failed: u64,
}

/// The rollout in progress, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub revision: String,
    pub previous: String,
    pub started_at: String,
    pub services: Vec<ServiceRollout>,
}

/// How the last rollout ended, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutResult {
    pub revision: String,
    /// `completed` or `aborted`.
    pub result: String,
    pub reason: Option<String>,
    pub at: String,
}

/// What a judgement changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// A service went on to its next step, or took everything.
    Stepped,
    Completed,
    Aborted,
}

/// An aborted rollout, for the loop to undo: the previous revision applied again.
pub struct Aborted {
    pub revision: String,
    pub previous: Desired,
    pub reason: String,
    /// Its blends as they were, which stay until the undo (a run meanwhile keeps them).
    blends: BTreeMap<String, Blend>,
}

/// A service being rolled out: the previous revision's backends (address, weight) and the
/// new ones, and how far it is.
struct Rolling {
    previous: Vec<(SocketAddr, u32)>,
    new: Vec<SocketAddr>,
    progress: Progress,
    step_started_at: String,
}

struct Active {
    revision: String,
    previous: Desired,
    services: BTreeMap<String, Rolling>,
    started_at: String,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    aborted: Option<Aborted>,
    last: Option<RolloutResult>,
}

/// The rollout of a revision, shared by the reconcile loop, the judging task and `/status`.
#[derive(Default)]
pub struct Rollouts {
    state: Mutex<State>,
}

/// A service's change of backends: the previous revision's (address, weight, in address
/// order), the new addresses, and its rule.
pub type Change = (Vec<(SocketAddr, u32)>, Vec<SocketAddr>, Spec);

/// What rolls out from `before` to `desired`, by service label: the services with a rollout
/// whose backends that take clients changed, each with the previous ones (address, weight, in
/// address order), the new addresses, and the rule. Services new with `desired` are not
/// rolled out (nothing to keep their clients on).
pub fn rolling(before: &Desired, desired: &Desired) -> BTreeMap<String, Change> {
    let by_name: BTreeMap<&str, &reconciler_core::model::Service> =
        before.services.iter().map(|s| (s.metadata.name.as_str(), &**s)).collect();
    let mut found = BTreeMap::new();
    for service in &desired.services {
        let Some(spec) = &service.spec.rollout else { continue };
        let Some(old) = by_name.get(service.metadata.name.as_str()) else { continue };
        for port in &service.spec.ports {
            let label = service.label(port);
            let Some(old_port) = old.spec.ports.iter().find(|p| old.label(p) == label) else {
                continue;
            };
            let taking = |s: &reconciler_core::model::Service, p| -> Vec<(SocketAddr, u32)> {
                let mut set: Vec<(SocketAddr, u32)> = s
                    .spec
                    .backends
                    .iter()
                    .filter(|b| b.takes_clients())
                    .map(|b| (b.address_for(p), b.weight))
                    .collect();
                set.sort();
                set
            };
            let (previous, now) = (taking(old, old_port), taking(service, port));
            if previous.is_empty() || previous == now {
                continue;
            }
            let old_addresses: BTreeSet<SocketAddr> = previous.iter().map(|p| p.0).collect();
            let new = now.iter().map(|n| n.0).filter(|a| !old_addresses.contains(a)).collect();
            found.insert(label, (previous, new, spec.clone()));
        }
    }
    found
}

impl Rollouts {
    fn lock(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    /// Starts rolling out `revision` over `previous` (its services `rolling`) at `now`, at
    /// each service's first step, or at the step of `percent` recorded before a restart.
    pub fn start(
        &self,
        revision: &str,
        previous: Desired,
        rolling: BTreeMap<String, Change>,
        recorded: &BTreeMap<String, Blend>,
        now: Instant,
    ) {
        let services = rolling
            .into_iter()
            .map(|(label, (previous, new, spec))| {
                let percent = recorded.get(&label).map(|b| b.percent);
                let progress = Progress::new(&spec, percent, now);
                let step_started_at = clock::now_rfc3339();
                (label, Rolling { previous, new, progress, step_started_at })
            })
            .collect();
        let started_at = clock::now_rfc3339();
        tracing::info!(
            revision,
            previous = previous.revision.as_deref().unwrap_or("-"),
            "rollout started"
        );
        self.lock().active =
            Some(Active { revision: revision.to_owned(), previous, services, started_at });
    }

    /// Ends the rollout under way without a verdict: its revision was refused, or a newer
    /// one arrived.
    pub fn cancel(&self) {
        self.lock().active = None;
    }

    /// The revision being rolled out, if one is.
    pub fn revision(&self) -> Option<String> {
        self.lock().active.as_ref().map(|a| a.revision.clone())
    }

    /// The blends of the services being rolled out: the overlay the loop applies (those of
    /// an abort not yet undone, until it is).
    pub fn blends(&self) -> BTreeMap<String, Blend> {
        let state = self.lock();
        match (&state.active, &state.aborted) {
            (Some(active), _) => blends_of(active),
            (None, Some(aborted)) => aborted.blends.clone(),
            (None, None) => BTreeMap::new(),
        }
    }

    /// The blends under way of the services of `changes` whose change is the same as
    /// theirs: a newer revision goes on from there.
    pub fn carried(&self, changes: &BTreeMap<String, Change>) -> BTreeMap<String, Blend> {
        let state = self.lock();
        let Some(active) = &state.active else { return BTreeMap::new() };
        let same = |label: &String| {
            let (Some(r), Some(c)) = (active.services.get(label), changes.get(label)) else {
                return false;
            };
            r.previous == c.0 && r.new == c.1
        };
        blends_of(active).into_iter().filter(|(label, _)| same(label)).collect()
    }

    /// An aborted rollout to undo, once.
    pub fn take_aborted(&self) -> Option<Aborted> {
        self.lock().aborted.take()
    }

    /// Judges each service's step at `now` by the new backends' flows at `pin_path` and
    /// whether `out` (the overlay's exclusions) holds one of them; what changed, if anything.
    pub fn judge(
        &self,
        pin_path: &Path,
        out: &BTreeSet<Exclusion>,
        now: Instant,
    ) -> Option<Judged> {
        let pairs: Vec<Exclusion> = {
            let state = self.lock();
            let Some(active) = &state.active else { return None };
            let each = active.services.iter();
            each.flat_map(|(l, r)| r.new.iter().map(|a| (l.clone(), *a))).collect()
        };
        let Ok(flows) = super::flows::of_pairs(pin_path, pairs) else { return None };
        let mut state = self.lock();
        let Some(active) = &mut state.active else { return None };
        let mut changed = false;
        let mut abort = None;
        active.services.retain(|label, rolling| {
            let mut counts = Counts::default();
            for flows in rolling.new.iter().filter_map(|a| flows.get(&(label.clone(), *a))) {
                (counts.established, counts.failed) =
                    (counts.established + flows.established, counts.failed + flows.failed);
            }
            let trouble = rolling.new.iter().find(|a| out.contains(&(label.clone(), **a)));
            let trouble =
                trouble.map(|a| format!("new backend {a} is failing its health check or ejected"));
            match rolling.progress.judge(now, counts, trouble) {
                Verdict::Hold => true,
                Verdict::Advance(percent) => {
                    tracing::info!(service = label, percent, "rollout: next step");
                    rolling.step_started_at = clock::now_rfc3339();
                    changed = true;
                    true
                }
                Verdict::Done => {
                    tracing::info!(service = label, "rollout: the new backends take everything");
                    changed = true;
                    false
                }
                Verdict::Abort(reason) => {
                    abort.get_or_insert(format!("{label}: {reason}"));
                    true
                }
            }
        });
        if let Some(reason) = abort {
            let active = state.active.take();
            if let Some(active) = active {
                tracing::error!(
                    revision = active.revision,
                    reason,
                    "rollout aborted: back to the previous revision"
                );
                state.last = Some(result(&active.revision, "aborted", Some(reason.clone())));
                let blends = blends_of(&active);
                let (revision, previous) = (active.revision, active.previous);
                state.aborted = Some(Aborted { revision, previous, reason, blends });
            }
            return Some(Judged::Aborted);
        }
        if active.services.is_empty() {
            tracing::info!(revision = active.revision, "rollout completed");
            state.last = Some(result(&active.revision, "completed", None));
            state.active = None;
            return Some(Judged::Completed);
        }
        changed.then_some(Judged::Stepped)
    }

    /// An abort whose undo failed, to be tried again.
    pub fn retry(&self, aborted: Aborted) {
        self.lock().aborted = Some(aborted);
    }

    /// The revision the rollout under way started from, if one is.
    pub fn previous(&self) -> Option<Desired> {
        self.lock().active.as_ref().map(|a| a.previous.clone())
    }

    /// The rollout in progress and how the last one ended, for `/status`.
    pub fn report(&self) -> (Option<RolloutStatus>, Option<RolloutResult>) {
        let state = self.lock();
        let status = state.active.as_ref().map(|active| RolloutStatus {
            revision: active.revision.clone(),
            previous: active.previous.revision.clone().unwrap_or_default(),
            started_at: active.started_at.clone(),
            services: active
                .services
                .iter()
                .map(|(label, r)| ServiceRollout {
                    service: label.clone(),
                    step: r.progress.step + 1,
                    steps: r.progress.steps.clone(),
                    percent: r.progress.percent(),
                    step_started_at: r.step_started_at.clone(),
                    new_backends: r.new.clone(),
                    established: r.progress.seen.established,
                    failed: r.progress.seen.failed,
                })
                .collect(),
        });
        (status, state.last.clone())
    }
}

/// The blends of the services `active` rolls out, each at its step.
fn blends_of(active: &Active) -> BTreeMap<String, Blend> {
    let each = active.services.iter().map(|(label, r)| {
        (label.clone(), Blend { percent: r.progress.percent(), previous: r.previous.clone() })
    });
    each.collect()
}

/// The first blends of `changes`: each service at its first step, or as `carried`.
pub fn first_blends(
    changes: &BTreeMap<String, Change>,
    carried: &BTreeMap<String, Blend>,
) -> BTreeMap<String, Blend> {
    let now = Instant::now();
    let each = changes.iter().map(|(label, (previous, _, spec))| {
        let percent = carried.get(label).map(|b| b.percent);
        let percent = Progress::new(spec, percent, now).percent();
        (label.clone(), Blend { percent, previous: previous.clone() })
    });
    each.collect()
}

fn result(revision: &str, result: &str, reason: Option<String>) -> RolloutResult {
    RolloutResult {
        revision: revision.to_owned(),
        result: result.to_owned(),
        reason,
        at: clock::now_rfc3339(),
    }
}

/// What the overlay takes out now (failed checks, ejections): a new backend there aborts.
pub type Out = std::sync::Arc<dyn Fn() -> BTreeSet<Exclusion> + Send + Sync>;

/// Judges the rollout under way every second; `changed` is told what changed (the loop
/// applies the blends, or undoes an abort).
pub async fn run(
    rollouts: std::sync::Arc<Rollouts>,
    pin_path: std::path::PathBuf,
    out: Out,
    changed: std::sync::Arc<dyn Fn(Judged) + Send + Sync>,
) {
    loop {
        if rollouts.revision().is_some() {
            let (rollouts, pin, out) =
                (std::sync::Arc::clone(&rollouts), pin_path.clone(), std::sync::Arc::clone(&out));
            let judged =
                tokio::task::spawn_blocking(move || rollouts.judge(&pin, &out(), Instant::now()))
                    .await;
            if let Ok(Some(judged)) = judged {
                changed(judged);
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
