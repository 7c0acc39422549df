//! A new revision's part of the daemon's overlay: the backends it adds to services with slow
//! start ramp up from its first apply, and the services with a rollout whose backends it
//! changes roll out (see `rollout`). Both take effect only once that apply succeeds: a
//! revision refused, or one whose apply failed, leaves the ramps and the rollout under way as
//! they were. And the undoing of an aborted rollout.
use std::{collections::BTreeMap, time::Instant};

use tracing::warn;

use super::{apply_options, plan_and_apply, Memory};
use crate::{
    clock,
    daemon::{
        journal::Failure,
        outcome::Outcome,
        ramps,
        rollout::{self, Aborted},
    },
    pipeline::{Desired, PlanOptions},
};
use reconciler_core::state::Blend;

/// What a new revision does to the rollout under way.
enum Rolling {
    /// Nothing (the same revision, or nothing to roll out and nothing under way).
    Keep,
    /// Start rolling out from `base` (the revision before, or the one the rollout under way
    /// started from: the maps hold part of it still), each service at its first step or the
    /// step `carried` from the rollout under way where its change is the same.
    Start {
        base: Box<Desired>,
        changes: BTreeMap<String, rollout::Change>,
        carried: BTreeMap<String, Blend>,
    },
    /// End the rollout under way: the revision rolls nothing out.
    End,
}

/// [`plan_and_apply`] with the daemon's overlay for `desired` (see the module's doc).
pub(super) fn with_overlay(
    config: &super::Config,
    memory: &mut Memory,
    desired: Desired,
    refresh: bool,
) -> Outcome {
    let now = Instant::now();
    let joined = memory.last_good.as_ref().map(|good| ramps::joined(good, &desired));
    let joined = memory.ramps.accepts(&joined.unwrap_or_default());
    memory.overlay.ramps = memory.ramps.levels(now);
    memory.overlay.ramps.extend(joined.iter().map(|pair| (pair.clone(), ramps::FIRST)));
    let rolling = rolling(memory, &desired);
    memory.overlay.blends = match &rolling {
        Rolling::Start { changes, carried, .. } => rollout::first_blends(changes, carried),
        Rolling::End => BTreeMap::new(),
        Rolling::Keep => memory.rollouts.blends(),
    };
    let revision = desired.revision.clone().unwrap_or_default();
    let outcome = plan_and_apply(config, memory, desired, refresh);
    if let Outcome::Applied { plan, .. } = &outcome {
        memory.ramps.start(&joined, now);
        match rolling {
            Rolling::Start { base, changes, carried } if !plan.desired.blends.is_empty() => {
                memory.journal.rollout(&revision, base.revision.as_deref().unwrap_or_default());
                memory.rollouts.start(&revision, *base, changes, &carried, now);
            }
            Rolling::Start { .. } => {
                warn!(revision, "rollout skipped: its blend would not fit the data plane's capacity; applied at once");
                memory.rollouts.cancel();
            }
            Rolling::End => memory.rollouts.cancel(),
            Rolling::Keep => {}
        }
    }
    memory.overlay.ramps = memory.ramps.levels(now);
    memory.overlay.blends = memory.rollouts.blends();
    outcome
}

/// What `desired` does to the rollout under way (see [`Rolling`]).
fn rolling(memory: &Memory, desired: &Desired) -> Rolling {
    let Some(revision) = desired.revision.as_deref() else { return Rolling::Keep };
    let under_way = memory.rollouts.revision();
    if under_way.as_deref() == Some(revision) {
        return Rolling::Keep;
    }
    let Some(base) = memory.rollouts.previous().or_else(|| memory.last_good.clone()) else {
        return Rolling::Keep;
    };
    let changes = rollout::rolling(&base, desired);
    match (changes.is_empty(), under_way.is_some()) {
        (true, true) => Rolling::End,
        (true, false) => Rolling::Keep,
        (false, _) => {
            let carried = memory.rollouts.carried(&changes);
            Rolling::Start { base: Box::new(base), changes, carried }
        }
    }
}

/// After a restart: a rollout the data plane records (`recorded`) goes on from its step, from
/// the revision the journal says it started from, for the services still rolling out; without
/// that revision, the next run finishes it at once (the maps then hold what the commit
/// describes).
pub(in crate::daemon) fn resume_rollout(memory: &mut Memory, recorded: &BTreeMap<String, Blend>) {
    if recorded.is_empty() {
        return;
    }
    let Some(good) = memory.last_good.clone() else { return };
    let Some(revision) = good.revision.clone() else { return };
    let from = memory.journal.rolled_out_from(&revision).map(str::to_owned);
    let Some(previous) = from.and_then(|p| memory.session.load_cached_at(&p).ok()) else {
        warn!(
            revision,
            "a rollout was under way, from a revision no longer known: finished at once"
        );
        return;
    };
    let mut changes = rollout::rolling(&previous, &good);
    // Those that took everything before the restart are done.
    changes.retain(|label, _| recorded.contains_key(label));
    memory.rollouts.start(&revision, previous, changes, recorded, Instant::now());
}

/// Undoes an aborted rollout: the revision before applied again, the one rolled out recorded
/// as failed (not tried again until a new commit). Trouble leaves the abort to try again.
pub(in crate::daemon) fn undo(
    config: &super::Config,
    memory: &mut Memory,
    aborted: Aborted,
) -> Outcome {
    memory.overlay.blends.clear();
    let health = Some(memory.overlay.clone());
    let options = PlanOptions { health, ..PlanOptions::refresh(true) };
    let previous = &aborted.previous;
    let applied = memory.session.plan(previous, options).and_then(|plan| {
        let report = memory.session.apply(&plan, Some(previous), apply_options(config))?;
        Ok((Box::new(plan), report))
    });
    match applied {
        Ok((plan, report)) => {
            memory.last_good = Some(aborted.previous.clone());
            memory.failed_revision = Some(aborted.revision.clone());
            memory.journal.failed(Failure {
                revision: aborted.revision.clone(),
                error: format!("rollout aborted: {}", aborted.reason),
                diagnostics: Vec::new(),
                at: clock::now_rfc3339(),
            });
            Outcome::RolledBack { plan, report, revision: aborted.revision, reason: aborted.reason }
        }
        Err(e) => {
            memory.rollouts.retry(aborted);
            Outcome::Transient { error: e.into() }
        }
    }
}
