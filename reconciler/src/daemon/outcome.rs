//! How a run ended: what the report logs, counts and shows. Errors stay typed until then.
use crate::{
    dataplane::{ApplyReport, DataplaneError},
    pipeline,
};
use reconciler_core::{plan::Plan, source::SourceError, validate::Diagnostic};

/// How one part of a run ended: the fetched commit's, or (while it is held back) the last
/// good revision's drift check.
pub(super) enum Outcome {
    Applied {
        plan: Box<Plan>,
        report: ApplyReport,
    },
    Unchanged {
        plan: Box<Plan>,
    },
    DriftHealed {
        plan: Box<Plan>,
        report: ApplyReport,
    },
    /// Health exclusions changed (and nothing else asked for an apply): applied.
    HealthApplied {
        plan: Box<Plan>,
        report: ApplyReport,
    },
    DriftReported {
        plan: Box<Plan>,
    },
    /// While the fetched commit is held back: the data plane holds the last good revision,
    /// unchanged (after a restart, this adopts it).
    LastGood {
        plan: Box<Plan>,
    },
    /// The fetched commit is bad (invalid, unverified, or its apply failed); the data plane
    /// is unchanged, and the commit is not tried again.
    Rejected {
        revision: Option<String>,
        error: pipeline::Error,
    },
    /// A rollout was aborted: the revision before is applied again, and the one rolled out
    /// is failed (not tried again until a new commit).
    RolledBack {
        plan: Box<Plan>,
        report: ApplyReport,
        revision: String,
        reason: String,
    },
    /// The fetched commit is valid, and waits for this node's wave's gate (`rollout.gate`):
    /// the data plane is unchanged, and the gate is asked again soon. `stopped`: it failed
    /// on an earlier wave, and only a new commit goes on.
    Waiting {
        revision: String,
        reason: String,
        stopped: bool,
    },
    /// The fetched commit already failed; nothing was tried.
    StillRejected {
        revision: Option<String>,
    },
    /// Fetch, node or data plane trouble; retried with backoff.
    Transient {
        error: Trouble,
    },
}

/// Trouble that a later run may not have.
#[derive(Debug, thiserror::Error)]
pub(super) enum Trouble {
    #[error("upgrading the data plane: {0}")]
    Upgrade(DataplaneError),
    #[error("listing this node's addresses: {0}")]
    Addresses(std::io::Error),
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
}

impl From<SourceError> for Trouble {
    fn from(error: SourceError) -> Trouble {
        Trouble::Pipeline(error.into())
    }
}

impl Outcome {
    pub(super) fn plan(&self) -> Option<&Plan> {
        match self {
            Outcome::Applied { plan, .. }
            | Outcome::Unchanged { plan }
            | Outcome::DriftHealed { plan, .. }
            | Outcome::HealthApplied { plan, .. }
            | Outcome::DriftReported { plan }
            | Outcome::LastGood { plan }
            | Outcome::RolledBack { plan, .. } => Some(plan),
            Outcome::Rejected { .. }
            | Outcome::Waiting { .. }
            | Outcome::StillRejected { .. }
            | Outcome::Transient { .. } => None,
        }
    }

    /// The `result` label of `reconciler_reconcile_total`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::DriftHealed { .. } => "drift_healed",
            Outcome::HealthApplied { .. } => "health_applied",
            Outcome::DriftReported { .. } => "drift_reported",
            Outcome::LastGood { .. } => "last_good",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Rejected { error, .. } if unverified(error) => "unverified",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Waiting { .. } => "waiting",
            Outcome::StillRejected { .. } => "skipped",
            Outcome::Transient { .. } => "error",
        }
    }

    /// Whether the fetched commit is held back (bad, not reached, or waiting for its wave):
    /// then the last good revision is checked for drift.
    pub(super) fn holds_back(&self) -> bool {
        matches!(
            self,
            Outcome::Rejected { .. }
                | Outcome::Waiting { .. }
                | Outcome::StillRejected { .. }
                | Outcome::Transient { .. }
        )
    }
}

/// No allowed signer signed it (`source.verify`).
fn unverified(error: &pipeline::Error) -> bool {
    matches!(error, pipeline::Error::Source(SourceError::Unverified { .. }))
}

/// What a refusal says in the log, `/status` and the journal: invalid definitions are
/// counted (each is shown on its own), other errors speak for themselves.
pub(super) fn refusal_text(error: &pipeline::Error) -> String {
    match error {
        pipeline::Error::Invalid { diagnostics, .. } => {
            format!("{} invalid definition(s)", diagnostics.len())
        }
        other => other.to_string(),
    }
}

/// The validation errors of a refusal, each with file, line and field.
pub(super) fn diagnostics(error: &pipeline::Error) -> &[Diagnostic] {
    match error {
        pipeline::Error::Invalid { diagnostics, .. } => diagnostics,
        _ => &[],
    }
}
