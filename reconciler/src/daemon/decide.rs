//! The decisions of a run, as pure functions of what it found: whether to apply a plan and
//! why, what a held-back commit's drift check does, whether a commit is to be tried, which
//! errors are the commit's fault and which are retried, and how long to wait. The run
//! (`reconcile`) does what they say; the tests below are the daemon's rules in one place.
use std::time::Duration;

use super::{backoff, config::DriftMode};
use crate::pipeline::Error;
use reconciler_core::plan::Plan;

/// What a plan says, as far as the decisions go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Facts {
    /// No data plane is installed yet.
    pub install: bool,
    /// The maps record another revision than the plan's.
    pub other_revision: bool,
    /// The health exclusions differ from those the maps record.
    pub health_changed: bool,
    /// Map writes the apply would make.
    pub map_writes: usize,
    /// Entry changes between the live and the desired state.
    pub entry_changes: usize,
    /// Anything would change (entries, or the recorded revision).
    pub has_changes: bool,
}

impl Facts {
    pub(super) fn of(plan: &Plan) -> Facts {
        let context = &plan.context;
        Facts {
            install: context.install,
            other_revision: context.revision != context.live_revision,
            health_changed: context.health_changed,
            map_writes: plan.map_writes,
            entry_changes: plan.entry_changes,
            has_changes: plan.has_changes(),
        }
    }
}

/// What a run does with the fetched commit's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Nothing to write: the maps hold the commit.
    Keep,
    /// The maps drifted from the commit they record, and `drift: report` says leave them.
    ReportDrift,
    Apply(Why),
}

/// Why a plan is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// A new revision (or a first install).
    NewRevision,
    /// Only the health exclusions changed.
    Health,
    /// The maps drifted from their revision, and `drift: heal` says mend them.
    Drift,
}

pub(super) fn decide(facts: Facts, drift: DriftMode) -> Decision {
    let new_revision = facts.install || facts.other_revision;
    let health_only = !new_revision && facts.health_changed;
    if !new_revision && !health_only && facts.map_writes > 0 && drift == DriftMode::Report {
        return Decision::ReportDrift;
    }
    if !facts.has_changes {
        return Decision::Keep;
    }
    Decision::Apply(if new_revision {
        Why::NewRevision
    } else if health_only {
        Why::Health
    } else {
        Why::Drift
    })
}

/// What the drift check of the last good revision does while the fetched commit is held
/// back; `None`: nothing to check (no data plane).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeldBack {
    /// The maps hold the last good revision as it is.
    Holding,
    ReportDrift,
    HealDrift,
}

pub(super) fn held_back(facts: Facts, drift: DriftMode) -> Option<HeldBack> {
    if facts.install {
        return None;
    }
    Some(match (facts.entry_changes, drift) {
        (0, _) => HeldBack::Holding,
        (_, DriftMode::Report) => HeldBack::ReportDrift,
        (_, DriftMode::Heal) => HeldBack::HealDrift,
    })
}

/// Whether `revision` is the one that failed, and so is not tried again until another
/// arrives (or the configuration is reloaded).
pub(super) fn already_failed(revision: &Option<String>, failed: &Option<String>) -> bool {
    revision.is_some() && revision == failed
}

/// Whether a failed apply is the commit's fault (refused, not tried again) rather than
/// trouble a later run may not have: another apply in between, the data plane itself.
pub(super) fn apply_refuses_commit(error: &Error) -> bool {
    !matches!(error, Error::StalePlan { .. } | Error::StaleInstall { .. } | Error::Dataplane(_))
}

/// Whether a failed plan is the commit's fault: its definitions do not compile.
pub(super) fn plan_refuses_commit(error: &Error) -> bool {
    matches!(error, Error::Compile(_))
}

/// The wait before the next run, after its commit's part ended in trouble (`transient`) or
/// not; `failures` counts the trouble in a row, this run's included.
pub(super) fn next_wait(transient: bool, failures: &mut u32, interval: Duration) -> Duration {
    if transient {
        *failures += 1;
        backoff::retry(*failures, interval)
    } else {
        *failures = 0;
        backoff::jittered(interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DataplaneError;
    use reconciler_core::compile::CompileError;

    /// The maps hold the commit, nothing to change.
    const HELD: Facts = Facts {
        install: false,
        other_revision: false,
        health_changed: false,
        map_writes: 0,
        entry_changes: 0,
        has_changes: false,
    };

    fn changing(facts: Facts) -> Facts {
        Facts { map_writes: 7, entry_changes: 2, has_changes: true, ..facts }
    }

    #[test]
    fn a_new_revision_is_applied_whatever_the_drift_mode() {
        let new = changing(Facts { other_revision: true, ..HELD });
        let install = changing(Facts { install: true, ..HELD });
        for drift in [DriftMode::Report, DriftMode::Heal] {
            assert_eq!(decide(new, drift), Decision::Apply(Why::NewRevision));
            assert_eq!(decide(install, drift), Decision::Apply(Why::NewRevision));
        }
        // A new revision with the same entries still records the revision.
        let same_entries = Facts { other_revision: true, has_changes: true, ..HELD };
        assert_eq!(decide(same_entries, DriftMode::Report), Decision::Apply(Why::NewRevision));
    }

    #[test]
    fn a_health_only_change_is_applied_even_when_drift_is_only_reported() {
        let health = changing(Facts { health_changed: true, ..HELD });
        assert_eq!(decide(health, DriftMode::Report), Decision::Apply(Why::Health));
        assert_eq!(decide(health, DriftMode::Heal), Decision::Apply(Why::Health));
    }

    #[test]
    fn drift_is_reported_or_healed_as_configured() {
        let drifted = changing(HELD);
        assert_eq!(decide(drifted, DriftMode::Report), Decision::ReportDrift);
        assert_eq!(decide(drifted, DriftMode::Heal), Decision::Apply(Why::Drift));
        assert_eq!(decide(HELD, DriftMode::Report), Decision::Keep);
        assert_eq!(decide(HELD, DriftMode::Heal), Decision::Keep);
    }

    #[test]
    fn while_a_commit_is_held_back_the_last_good_revision_is_checked_for_drift() {
        assert_eq!(held_back(HELD, DriftMode::Heal), Some(HeldBack::Holding));
        assert_eq!(held_back(changing(HELD), DriftMode::Report), Some(HeldBack::ReportDrift));
        assert_eq!(held_back(changing(HELD), DriftMode::Heal), Some(HeldBack::HealDrift));
        let none_installed = Facts { install: true, ..changing(HELD) };
        assert_eq!(held_back(none_installed, DriftMode::Heal), None);
    }

    #[test]
    fn a_failed_revision_is_not_tried_again_until_another_arrives() {
        let failed = Some("abc".to_owned());
        assert!(already_failed(&Some("abc".into()), &failed));
        assert!(!already_failed(&Some("def".into()), &failed));
        // A plain directory has no revision: it is always tried.
        assert!(!already_failed(&None, &None));
        assert!(!already_failed(&Some("abc".into()), &None));
    }

    #[test]
    fn a_commit_is_refused_for_its_own_faults_and_retried_for_others() {
        let stale = Error::StalePlan { pin_path: "/p".into(), planned: 1, live: 2 };
        let moved = Error::StaleInstall { pin_path: "/p".into(), planned: true };
        let dataplane = Error::Dataplane(DataplaneError::NoCgroup2Mount);
        for trouble in [&stale, &moved, &dataplane] {
            assert!(!apply_refuses_commit(trouble), "{trouble}");
        }
        let destroy_all = Error::DestroyAll { destroy: 3 };
        assert!(apply_refuses_commit(&destroy_all));
        let compile =
            Error::Compile(CompileError::Capacity { what: "services", count: 70_000, max: 65_535 });
        assert!(plan_refuses_commit(&compile));
        assert!(!plan_refuses_commit(&dataplane));
    }

    #[test]
    fn trouble_backs_off_and_success_waits_the_interval() {
        let interval = Duration::from_secs(30);
        let mut failures = 0;
        let waits: Vec<Duration> =
            (0..7).map(|_| next_wait(true, &mut failures, interval)).collect();
        assert_eq!(failures, 7);
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << n).min(interval);
            assert!(ceiling / 2 <= *wait && *wait <= ceiling, "retry {n}: {wait:?}");
        }
        let wait = next_wait(false, &mut failures, interval);
        assert_eq!(failures, 0);
        assert!(interval.mul_f64(0.9) <= wait && wait <= interval.mul_f64(1.1), "{wait:?}");
    }
}
