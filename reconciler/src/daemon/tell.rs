//! What the daemon tells its notification receivers (`notify`), one function per source of
//! events: a run's outcome, a health check's transition, outlier detection's pass.
use std::collections::BTreeSet;

use super::{
    health::Transition,
    notify::event::{OutReason, What, ERRORS_LISTED},
    outcome::{self, Outcome},
    outliers::Change,
    status::Shared,
};

/// The events of `outcome`; before the status shows it (the revision before, drift seen).
pub(super) fn outcome(shared: &Shared, outcome: &Outcome) {
    let status = shared.status();
    let what = match outcome {
        Outcome::Applied { plan, report } => Some(What::Applied {
            revision: plan.context.revision.clone(),
            previous_revision: status.applied_revision.clone(),
            entry_changes: report.changes,
        }),
        Outcome::Rejected { revision, error } => {
            let errors = outcome::diagnostics(error);
            Some(What::Rejected {
                revision: revision.clone(),
                error: outcome::refusal_text(error),
                errors: errors.iter().take(ERRORS_LISTED).map(ToString::to_string).collect(),
                errors_total: errors.len(),
            })
        }
        // Told once: while it lasts, each run finds it again.
        Outcome::DriftReported { plan } if shared.notifier.drift_news(true) => {
            Some(What::DriftFound {
                revision: status.applied_revision.clone(),
                entries: plan.entry_changes,
            })
        }
        Outcome::DriftHealed { plan, .. } => Some(What::DriftHealed {
            revision: status.applied_revision.clone().or_else(|| plan.context.revision.clone()),
            entries: plan.entry_changes,
        }),
        Outcome::RolledBack { plan, revision, reason, .. } => Some(What::RolloutAborted {
            revision: revision.clone(),
            back_to: plan.context.revision.clone(),
            reason: reason.clone(),
        }),
        _ => None,
    };
    drop(status);
    if maps_match(outcome) {
        shared.notifier.drift_news(false);
    }
    if let Some(what) = what {
        shared.notifier.send(what);
    }
    if let Some(plan) = outcome.plan() {
        shared.notifier.failing_open("capacity", &plan.context.failover_held_back);
    }
}

/// Whether the maps hold what the revision says after `outcome`, every entry read or
/// written (an incremental run reads only the services it changes: drift elsewhere stays).
fn maps_match(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Applied { plan, .. } | Outcome::Unchanged { plan } => plan.touched.is_none(),
        Outcome::DriftHealed { .. } => true,
        _ => false,
    }
}

/// A health check's target went down or came up.
pub(super) fn health(shared: &Shared, transition: &Transition) {
    let backends: BTreeSet<_> = transition.judges.iter().map(|(_, backend)| *backend).collect();
    let services: BTreeSet<_> = transition.judges.iter().map(|(s, _)| s.clone()).collect();
    let (backends, services) = (backends.into_iter().collect(), services.into_iter().collect());
    let reason = OutReason::Health;
    shared.notifier.send(match transition.up {
        true => What::BackendBack { reason, backends, services },
        false => What::BackendOut {
            reason,
            backends,
            services,
            error: transition.error.clone(),
            ejected_seconds: None,
        },
    });
    // The transition's own changes, made under the targets' lock: a later reading of the
    // whole list could be older than another transition's.
    shared.notifier.fail_open_changed("health", &transition.fail_open);
}

/// Outlier detection ejected backends, or let them back in.
pub(super) fn ejections(shared: &Shared, changes: &[Change]) {
    for change in changes {
        let (reason, backends, services) =
            (OutReason::Ejection, vec![change.backend], vec![change.service.clone()]);
        shared.notifier.send(match change.ejected_for {
            None => What::BackendBack { reason, backends, services },
            Some(length) => What::BackendOut {
                reason,
                backends,
                services,
                error: None,
                ejected_seconds: Some(length.as_secs()),
            },
        });
    }
    shared.notifier.failing_open("ejections", &shared.outliers.failing_open());
}
