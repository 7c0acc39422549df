//! What the daemon shows of itself (`/status`, read back by `reconciler status --daemon`),
//! and the state the reconcile loop shares with the HTTP endpoint and the health checks.
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    config::{Config, DriftMode},
    health::{BackendHealth, Health},
    journal::Failure,
    metrics::{Metrics, NodeState},
    notify::Notifier,
    outliers::{Ejection, Watch},
    ramps::{Ramp, Ramps},
    rollout::{RolloutResult, RolloutStatus, Rollouts},
    waves::Gatekeeper,
    webhook::Secret,
};
use crate::pipeline::describe;
use reconciler_core::validate::Diagnostic;

/// What `/status` shows, and `reconciler status --daemon` reads back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub format_version: u32,
    pub source: String,
    /// A reconcile has succeeded since the daemon started.
    pub ready: bool,
    pub applied_revision: Option<String>,
    pub applied_at: Option<String>,
    /// Since when (Unix seconds) the data plane holds `applied_revision`: what the waves'
    /// gates soak by.
    #[serde(default)]
    pub applied_revision_since: Option<u64>,
    /// The last revision fetched and looked at, good or bad.
    pub attempted_revision: Option<String>,
    pub attempted_at: Option<String>,
    /// The last run's error, if it failed; cleared by a successful run.
    pub last_error: Option<String>,
    /// Validation errors of `failed_revision`, each with file, line and field.
    pub errors: Vec<Diagnostic>,
    /// A revision that failed and will not be tried again until a new one arrives.
    pub failed_revision: Option<String>,
    pub drift: DriftMode,
    pub drift_entries: usize,
    pub services: usize,
    pub backends: usize,
    pub generation: u64,
    pub last_reconcile_at: Option<String>,
    /// Every backend with a health check: up or down, since when, the last error.
    #[serde(default)]
    pub health: Vec<BackendHealth>,
    /// Services whose every backend fails its health check, and that have no fallback: they
    /// keep them all (fail open).
    #[serde(default)]
    pub health_failing_open: Vec<String>,
    /// Every backend outlier detection ejected since the daemon started: out now or not,
    /// how often, when, why and until when.
    #[serde(default)]
    pub ejections: Vec<Ejection>,
    /// Services with more backends failing than `maxEjectionPercent` lets out: the rest keep
    /// their share (fail open).
    #[serde(default)]
    pub ejections_failing_open: Vec<String>,
    /// Backends ramping up after they joined (`slowStart`): their share of their weight now,
    /// and when they reach all of it.
    #[serde(default)]
    pub slow_start: Vec<Ramp>,
    /// The rollout under way (`spec.rollout`): each service's step, share and the new
    /// backends' connects over the step.
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    /// How the last rollout ended (`completed`, `aborted` with why).
    #[serde(default)]
    pub last_rollout: Option<RolloutResult>,
    /// Services whose every backend is down and whose fallback's backends would not fit the
    /// data plane's capacity: they keep their own (fail open) instead.
    #[serde(default)]
    pub failover_held_back: Vec<String>,
    /// How the last run's plan read the maps: `incremental` (a run asked for by a webhook or
    /// a health transition: the changed services' entries) or `full` (every entry, as every
    /// interval's run does to find drift).
    #[serde(default)]
    pub last_plan: Option<String>,
    /// A run is under way (fetching, or applying what was fetched or a health change).
    #[serde(default)]
    pub running: bool,
    /// Since when the fetch under way has been fetching (RFC 3339), if one is: a git server
    /// that is slow or hangs shows here (until `source.timeout`), and delays only new
    /// commits; health changes are applied meanwhile.
    #[serde(default)]
    pub fetching_since: Option<String>,
    /// The backends `spec.topology` chose, by service: which zone's, as of the last plan.
    #[serde(default)]
    pub topology: std::collections::BTreeMap<String, String>,
    /// This node, as services' `nodeSelector` see it.
    #[serde(default)]
    pub node: Option<reconciler_core::selector::Node>,
    /// This node's `rollout.wave`.
    #[serde(default)]
    pub rollout_wave: u32,
    /// A valid new revision this node holds back until its wave's gate opens, and why.
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// A run was asked for (`POST /reconcile`, a health transition) and has not started:
    /// however many ask meanwhile, it is one run.
    #[serde(default)]
    pub run_requested: bool,
}

/// A revision waiting for this node's wave's gate (`rollout.gate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub revision: String,
    /// What the gate waits for (`wave 1: 0 of the 1 node(s) needed have run ...`), or why
    /// the rollout stopped.
    pub reason: String,
    /// It failed on a node of an earlier wave: only a new commit goes on.
    pub stopped: bool,
    /// Since when it waits (RFC 3339).
    pub since: String,
}

/// State shared between the reconcile loop and the HTTP endpoint.
pub struct Shared {
    status: Mutex<DaemonStatus>,
    metrics: Metrics,
    /// Wakes the loop for a run asked for.
    pub(super) trigger: Notify,
    /// Wakes the loop for a health change, applied without fetching.
    pub(super) health_changed: Notify,
    /// The last `/metrics` pages rendered.
    pub(super) metrics_cache: tokio::sync::Mutex<super::metrics_cache::MetricsCache>,
    pub(super) health: Arc<Health>,
    /// Outlier detection's ejections.
    pub(super) outliers: Arc<Watch>,
    /// Slow start's ramps.
    pub(super) ramps: Arc<Ramps>,
    /// The rollout under way.
    pub(super) rollouts: Arc<Rollouts>,
    /// What the gate of this node's wave said of the revision held back.
    pub(super) gatekeeper: Arc<Gatekeeper>,
    webhook_secret: RwLock<Option<Secret>>,
    /// Where events go (`notify`).
    pub(super) notifier: Notifier,
}

impl Shared {
    /// Asks for a run: one more after the one under way, however many ask.
    pub(super) fn request_run(&self) {
        self.status().run_requested = true;
        self.trigger.notify_one();
    }

    pub(super) fn webhook_secret(&self) -> Option<Secret> {
        self.webhook_secret.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(super) fn set_webhook_secret(&self, secret: Option<Secret>) {
        *self.webhook_secret.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = secret;
    }

    pub(super) fn status(&self) -> MutexGuard<'_, DaemonStatus> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets what a fleet's view reads of this node (`crate::fleet::view`) from the status.
    pub(super) fn export_node_state(&self) {
        let health_failing_open = self.health.failing_open().len();
        let ejections = self.outliers.report();
        let ejections_failing_open = self.outliers.failing_open().len();
        let status = self.status();
        self.metrics.node_state(&NodeState {
            ready: status.ready,
            revision_since: status.applied_revision.as_deref().zip(status.applied_revision_since),
            failed: status
                .failed_revision
                .as_deref()
                .map(|revision| (revision, unix_seconds(status.attempted_at.as_deref()))),
            waiting: status
                .waiting
                .as_ref()
                .map(|waiting| (waiting.revision.as_str(), unix_seconds(Some(&waiting.since)))),
            failing_open: [
                ("health", health_failing_open),
                ("ejections", ejections_failing_open),
                ("capacity", status.failover_held_back.len()),
            ],
            ejected_backends: ejections.iter().filter(|e| e.ejected).count(),
        });
    }
}

impl Shared {
    /// The state of a daemon starting with `config`.
    pub(super) fn new(config: &Config) -> Shared {
        let metrics = Metrics::for_dataplane(config.pin_path.clone(), config.metrics_per_backend);
        let notifier = Notifier::new(metrics.notifications.clone());
        Shared {
            status: Mutex::new(DaemonStatus {
                format_version: 1,
                source: describe(&config.source_spec()),
                drift: config.drift,
                node: Some(config.node.clone()),
                rollout_wave: config.rollout.wave,
                ..DaemonStatus::default()
            }),
            metrics,
            trigger: Notify::new(),
            health_changed: Notify::new(),
            metrics_cache: tokio::sync::Mutex::default(),
            health: Arc::new(Health::default()),
            outliers: Arc::default(),
            ramps: Arc::default(),
            rollouts: Arc::default(),
            gatekeeper: Arc::default(),
            webhook_secret: RwLock::new(config.webhook_secret.clone()),
            notifier,
        }
    }
}

/// The Unix seconds of an RFC 3339 time the status shows; now if it has none.
fn unix_seconds(rfc3339: Option<&str>) -> u64 {
    let at = rfc3339.and_then(|text| humantime::parse_rfc3339(text).ok());
    let since_epoch = at.and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok());
    since_epoch.unwrap_or_else(crate::clock::now_unix).as_secs()
}

/// A revision that failed before this start, as the run that refused it showed it.
pub(super) fn show_failure(status: &mut DaemonStatus, failure: &Failure) {
    status.attempted_revision = Some(failure.revision.clone());
    status.attempted_at = Some(failure.at.clone());
    status.failed_revision = Some(failure.revision.clone());
    status.last_error = Some(failure.error.clone());
    status.errors = failure.diagnostics.clone();
}
