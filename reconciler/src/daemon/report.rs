//! What a run's outcomes become: log lines, metrics, notifications, `/status`, and the wait
//! before the next run. One function per job; [`record`] runs them in turn.
use std::{path::Path, time::Duration};

use tracing::{error, info, warn};

use super::{
    config::Config,
    decide,
    metrics::Metrics,
    outcome::{self, Outcome},
    reconcile::Memory,
    status::{DaemonStatus, Shared, Waiting},
    tell,
};
use crate::{
    clock::{self, rfc3339_utc},
    dataplane::Dataplane,
};
use reconciler_core::{
    plan::Plan,
    state::{Exclusion, MapState},
};

/// Logs `outcome`, updates metrics and status, and says how long to wait for the next run.
/// `took` is the run's time for the fetched commit's outcome (which counts the run), `None`
/// for the drift check that follows a held-back commit.
pub(super) fn record(
    shared: &Shared,
    config: &Config,
    memory: &mut Memory,
    outcome: Outcome,
    took: Option<Duration>,
) -> Duration {
    log(&outcome);
    count(shared.metrics(), &outcome, took);
    tell::outcome(shared, &outcome);
    let transient = matches!(outcome, Outcome::Transient { .. });
    let recorded = memory.session.memo().record.as_ref().map(|r| &r.state);
    show(&mut shared.status(), shared.metrics(), outcome, recorded);
    match took {
        Some(_) => decide::next_wait(transient, &mut memory.consecutive_errors, config.interval),
        // The drift part of a run: the fetched commit's outcome decides the wait.
        None => config.interval,
    }
}

/// Every entry the maps hold once `plan` is applied: its desired state, or for an
/// incremental plan the memo's record of the whole (`recorded`).
fn whole<'a>(plan: &'a Plan, recorded: Option<&'a MapState>) -> &'a MapState {
    match recorded {
        Some(recorded) if plan.touched.is_some() => recorded,
        _ => &plan.desired,
    }
}

fn log(outcome: &Outcome) {
    if let Some(held_back) = outcome.plan().map(|p| &p.context.failover_held_back) {
        if !held_back.is_empty() {
            warn!(
                services = held_back.join(","),
                "every backend of these services is down and their fallbacks would not fit \
                 the data plane's capacity: they keep their own (fail open)"
            );
        }
    }
    match outcome {
        Outcome::Applied { plan, report } => {
            info!(
                revision = plan.context.revision.as_deref().unwrap_or("-"),
                changes = plan.entry_changes,
                map_writes = report.map_writes,
                sockets_destroyed = report.sockets_destroyed,
                "applied"
            );
            if let Some(error) = &report.sockets_error {
                warn!("the maps are applied, but {error}");
            }
        }
        Outcome::DriftHealed { plan, report } => {
            warn!(entries = plan.entry_changes, map_writes = report.map_writes, "drift healed");
        }
        Outcome::HealthApplied { plan, report } => {
            let listed = |pairs: &mut dyn Iterator<Item = &Exclusion>| -> String {
                pairs.map(|(s, a)| format!("{a} ({s})")).collect::<Vec<_>>().join(",")
            };
            info!(
                excluded = listed(&mut plan.desired.failing_checks()),
                ejected = listed(&mut plan.desired.ejected.iter()),
                map_writes = report.map_writes,
                sockets_destroyed = report.sockets_destroyed,
                "health exclusions applied"
            );
        }
        Outcome::DriftReported { plan } => warn!(
            entries = plan.entry_changes,
            "drift: the live maps differ from the applied revision"
        ),
        Outcome::Rejected { revision, error } => {
            error!(
                revision = revision.as_deref().unwrap_or("-"),
                "{}; the data plane stays at the last good revision",
                outcome::refusal_text(error)
            );
            for d in outcome::diagnostics(error) {
                error!("{d}");
            }
        }
        // Logged when what it waits for changes (`waiting`), not at every look.
        Outcome::Waiting { .. } => {}
        Outcome::StillRejected { revision } => info!(
            revision = revision.as_deref().unwrap_or("-"),
            "the fetched revision already failed; waiting for a new one"
        ),
        Outcome::RolledBack { plan, revision, reason, .. } => error!(
            revision,
            back_to = plan.context.revision.as_deref().unwrap_or("-"),
            "rollout aborted ({reason}); the previous revision is back, and this one is not \
             tried again until a new commit"
        ),
        Outcome::Transient { error } => warn!("{error}; retrying, the data plane keeps serving"),
        Outcome::Unchanged { .. } | Outcome::LastGood { .. } => {}
    }
}

/// `reconciler_reconcile_total` and the run's duration: a run counts once, by what happened
/// to the fetched commit; its drift check counts apart, unless it found nothing.
fn count(metrics: &Metrics, outcome: &Outcome, took: Option<Duration>) {
    match (took, outcome) {
        (Some(took), _) => metrics.observe_reconcile(outcome.label(), took.as_secs_f64()),
        (None, Outcome::LastGood { .. }) => {}
        (None, _) => metrics.count(outcome.label()),
    }
}

/// What `/status` and the gauges show after `outcome`.
fn show(
    status: &mut DaemonStatus,
    metrics: &Metrics,
    outcome: Outcome,
    recorded: Option<&MapState>,
) {
    let since_epoch = clock::now_unix();
    let now = since_epoch.as_secs_f64();
    let now_text = rfc3339_utc(since_epoch.as_secs());
    status.last_reconcile_at = Some(now_text.clone());
    if let Some(plan) = outcome.plan() {
        let read = if plan.touched.is_some() { "incremental" } else { "full" };
        status.last_plan = Some(read.to_owned());
        if plan.touched.is_none() {
            status.topology.clone_from(&plan.desired.topology);
        }
        status.failover_held_back.clone_from(&plan.context.failover_held_back);
    }
    match outcome {
        Outcome::Applied { plan, report } => {
            metrics.applied_report(&report);
            metrics.applied(plan.context.revision.as_deref(), now);
            at_revision(status, metrics, &plan, whole(&plan, recorded), &now_text);
        }
        Outcome::Unchanged { plan } => {
            match status.applied_revision.is_none() {
                // Adopted at start: the maps already held this revision.
                true => metrics.applied(plan.context.revision.as_deref(), now),
                false => metrics.checked(now),
            }
            at_revision(status, metrics, &plan, whole(&plan, recorded), &now_text);
        }
        Outcome::LastGood { plan } => {
            if status.applied_revision.is_none() {
                metrics.applied(plan.context.revision.as_deref(), now);
            }
            holding(status, metrics, &plan, whole(&plan, recorded));
        }
        Outcome::Waiting { revision, reason, stopped } => {
            metrics.checked(now);
            waiting(status, Waiting { revision, reason, stopped, since: now_text });
        }
        Outcome::DriftHealed { plan, report } => {
            metrics.applied_report(&report);
            let revision = status.applied_revision.as_deref().or(plan.context.revision.as_deref());
            metrics.applied(revision, now);
            metrics.drift_entries.set(0);
            status.drift_entries = 0;
            status.generation = plan.context.generation + 1;
        }
        Outcome::HealthApplied { plan, report } => {
            metrics.applied_report(&report);
            status.generation = plan.context.generation + 1;
        }
        Outcome::DriftReported { plan } => {
            metrics.checked(now);
            metrics.drift_entries.set(plan.entry_changes as i64);
            status.drift_entries = plan.entry_changes;
        }
        Outcome::Rejected { revision, error } => refused(status, revision, &error, now_text),
        Outcome::RolledBack { plan, report, revision, reason } => {
            metrics.applied_report(&report);
            metrics.applied(plan.context.revision.as_deref(), now);
            holding(status, metrics, &plan, whole(&plan, recorded));
            status.attempted_revision = Some(revision.clone());
            status.attempted_at = Some(now_text);
            status.failed_revision = Some(revision);
            status.last_error = Some(format!("rollout aborted: {reason}"));
            status.errors.clear();
        }
        Outcome::StillRejected { .. } => {}
        Outcome::Transient { error } => status.last_error = Some(error.to_string()),
    }
}

/// The fetched commit waits for this node's wave's gate: logged when what it waits for
/// changes, and waiting since it first did.
fn waiting(status: &mut DaemonStatus, mut now: Waiting) {
    let before = status.waiting.take().filter(|before| before.revision == now.revision);
    if let Some(before) = before {
        now.since = before.since;
        if before.reason == now.reason {
            status.waiting = Some(now);
            return;
        }
    }
    info!(
        revision = now.revision,
        wave = status.rollout_wave,
        "waiting for the rollout's gate: {}",
        now.reason
    );
    status.waiting = Some(now);
}

/// The fetched commit at `revision` was refused with `error`.
fn refused(
    status: &mut DaemonStatus,
    revision: Option<String>,
    error: &crate::pipeline::Error,
    now: String,
) {
    status.attempted_revision = revision.clone();
    status.attempted_at = Some(now);
    status.waiting = None;
    status.failed_revision = revision;
    status.last_error = Some(outcome::refusal_text(error));
    status.errors = outcome::diagnostics(error).to_vec();
}

/// After a run that left the data plane at the fetched revision, with no drift.
fn at_revision(
    status: &mut DaemonStatus,
    metrics: &Metrics,
    plan: &Plan,
    entries: &MapState,
    now: &str,
) {
    status.attempted_revision = plan.context.revision.clone();
    status.attempted_at = Some(now.to_owned());
    status.last_error = None;
    status.errors.clear();
    status.failed_revision = None;
    status.waiting = None;
    holding(status, metrics, plan, entries);
}

/// The data plane holds the revision of `plan`, whose definitions were valid, with no drift.
fn holding(status: &mut DaemonStatus, metrics: &Metrics, plan: &Plan, entries: &MapState) {
    status.ready = true;
    if status.applied_revision != plan.context.revision {
        status.applied_revision_since = None;
    }
    status.applied_revision = plan.context.revision.clone();
    status.drift_entries = 0;
    metrics.drift_entries.set(0);
    status.services = entries.services.len();
    status.backends = entries.backends.len();
    metrics.services.set(status.services as i64);
    metrics.backends.set(status.backends as i64);
    // The metadata alone: cheap, unlike reading the maps.
    if let Ok(live) = Dataplane::open(Path::new(&plan.context.pin_path)).and_then(|d| d.status()) {
        metrics.map_fill(&live.capacity, entries);
        status.generation = live.generation;
        status.applied_at = live.applied_at_unix.map(rfc3339_utc);
        // Not applied by this run (adopted at start, say): since the maps' last write at the
        // latest, which a gate's soak counts from, never sooner.
        status.applied_revision_since = status.applied_revision_since.or(live.applied_at_unix);
    }
    status.applied_revision_since =
        status.applied_revision_since.or(Some(clock::now_unix().as_secs()));
}
