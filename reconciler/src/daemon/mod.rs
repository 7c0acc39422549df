//! `reconciler daemon`: keeps the node in step with the repository, the way Flux and Argo CD
//! keep a cluster in step.
//!
//! Every interval (with ±10% jitter), at once on `POST /reconcile`, and after SIGHUP reloads
//! the configuration, one run: fetch, validate, plan, apply if needed, through the same
//! pipeline as `plan`/`apply` (`crate::apply`). Then:
//! - a commit that fails validation or apply is never applied, in part or whole; the data plane
//!   stays at the last good commit, and the failed commit is not tried again until another
//!   one arrives (or the configuration is reloaded);
//! - fetch and data plane errors are retried with capped exponential backoff (1 s, 2 s, ...
//!   up to the interval, with jitter: see [`backoff`]) while the data plane keeps serving;
//! - drift (live maps that differ from the applied commit) is logged, counted and, with
//!   `drift: heal`, repaired by the same atomic apply;
//! - on start the pinned data plane is adopted: if it already holds the commit, nothing is
//!   written. A failed commit stays failed across restarts (see [`journal`]). SIGTERM/SIGINT
//!   stop the daemon and leave the data plane serving.
mod backoff;
pub mod config;
pub mod health;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod webhook;

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, signal::unix, sync::Notify};
use tracing::{error, info, warn};

use crate::{
    clock::{self, rfc3339_utc},
    dataplane::{ApplyReport, Dataplane},
    node,
    pipeline::{describe, ApplyOptions, Desired, Error, PlanOptions, Reading, Session},
    plan::Plan,
    source,
    state::MapState,
    validate::{Diagnostic, Policy},
};
pub use config::{Config, DriftMode};
use journal::{Failure, Journal};
use metrics::Metrics;

/// What `/status` shows, and `reconciler status --daemon` reads back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub format_version: u32,
    pub source: String,
    /// A reconcile has succeeded since the daemon started.
    pub ready: bool,
    pub applied_revision: Option<String>,
    pub applied_at: Option<String>,
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
    pub health: Vec<health::BackendHealth>,
    /// Services whose every backend fails its health check, and that have no fallback: they
    /// keep them all (fail open).
    #[serde(default)]
    pub health_failing_open: Vec<String>,
    /// How the last run's plan read the maps: `incremental` (a run asked for by a webhook or
    /// a health transition: the changed services' entries) or `full` (every entry, as every
    /// interval's run does to find drift).
    #[serde(default)]
    pub last_plan: Option<String>,
    /// A run is under way.
    #[serde(default)]
    pub running: bool,
    /// A run was asked for (`POST /reconcile`, a health transition) and has not started:
    /// however many ask meanwhile, it is one run.
    #[serde(default)]
    pub run_requested: bool,
}

/// State shared between the reconcile loop and the HTTP endpoint.
pub struct Shared {
    status: Mutex<DaemonStatus>,
    metrics: Metrics,
    trigger: Notify,
    health: Arc<health::Health>,
    webhook_secret: RwLock<Option<webhook::Secret>>,
}

impl Shared {
    /// Asks for a run: one more after the one under way, however many ask.
    fn request_run(&self) {
        self.status().run_requested = true;
        self.trigger.notify_one();
    }

    fn webhook_secret(&self) -> Option<webhook::Secret> {
        self.webhook_secret.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn set_webhook_secret(&self, secret: Option<webhook::Secret>) {
        *self.webhook_secret.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = secret;
    }

    fn status(&self) -> MutexGuard<'_, DaemonStatus> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// What the loop remembers between runs.
struct Memory {
    /// The definitions the data plane holds, for drift checks while newer commits fail.
    last_good: Option<Desired>,
    /// A revision that failed validation or apply; not tried again.
    failed_revision: Option<String>,
    /// Transient failures in a row, for the backoff.
    consecutive_errors: u32,
    /// What survives a restart.
    journal: Journal,
    /// The backends the health checks took out, as of this run.
    health_excluded: std::collections::BTreeSet<std::net::SocketAddr>,
    /// The pipeline, with what the incremental path reuses (parses by blob, the state the
    /// last apply left) in its memo.
    session: Session,
}

impl Memory {
    /// Whether `revision` is the one that failed (and is not to be tried again).
    fn already_failed(&self, revision: &Option<String>) -> bool {
        revision.is_some() && *revision == self.failed_revision
    }

    fn new(config: &Config) -> Memory {
        let session = session(config);
        Memory {
            last_good: None,
            failed_revision: None,
            consecutive_errors: 0,
            journal: Journal::open(&config.source.cache_dir, &session.source(), &config.pin_path),
            health_excluded: Default::default(),
            session,
        }
    }
}

/// The pipeline for `config`'s source and data plane, with the configured policy (each run
/// adds the node's own addresses) and an empty memo.
fn session(config: &Config) -> Session {
    Session::new(config.source_spec(), &config.pin_path, config.policy.clone())
}

/// How one run ended.
enum Outcome {
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
    /// is unchanged.
    Rejected {
        revision: Option<String>,
        error: String,
        diagnostics: Vec<Diagnostic>,
        /// No allowed signer signed it (`source.verify`): counted as `unverified`.
        unverified: bool,
    },
    /// The fetched commit already failed; nothing was tried.
    StillRejected {
        revision: Option<String>,
    },
    /// Fetch or data plane trouble; retried with backoff.
    Transient {
        error: String,
    },
}

impl Outcome {
    fn plan(&self) -> Option<&Plan> {
        match self {
            Outcome::Applied { plan, .. }
            | Outcome::Unchanged { plan }
            | Outcome::DriftHealed { plan, .. }
            | Outcome::HealthApplied { plan, .. }
            | Outcome::DriftReported { plan }
            | Outcome::LastGood { plan } => Some(plan),
            Outcome::Rejected { .. }
            | Outcome::StillRejected { .. }
            | Outcome::Transient { .. } => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::DriftHealed { .. } => "drift_healed",
            Outcome::HealthApplied { .. } => "health_applied",
            Outcome::DriftReported { .. } => "drift_reported",
            Outcome::LastGood { .. } => "last_good",
            Outcome::Rejected { unverified: true, .. } => "unverified",
            Outcome::Rejected { .. } => "rejected",
            Outcome::StillRejected { .. } => "skipped",
            Outcome::Transient { .. } => "error",
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `config_file` is read again on SIGHUP.
pub async fn run(config_file: &Path, config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!("listening on {} (the `listen` setting): {e}", config.listen)
    })?;
    let shared = Arc::new(Shared {
        status: Mutex::new(DaemonStatus {
            format_version: 1,
            source: describe(&config.source_spec()),
            drift: config.drift,
            ..DaemonStatus::default()
        }),
        metrics: Metrics::for_dataplane(config.pin_path.clone()),
        trigger: Notify::new(),
        health: Arc::new(health::Health::default()),
        webhook_secret: RwLock::new(config.webhook_secret.clone()),
    });
    if config.webhook_secret.is_none() && !config.listen.ip().is_loopback() {
        warn!(
            listen = %config.listen,
            "POST /reconcile is open to anyone who can reach this address: set \
             webhook.secretFile"
        );
    }
    let on_change = {
        let shared = Arc::clone(&shared);
        Arc::new(move |backend: std::net::SocketAddr, up: bool| {
            shared.metrics().health_transition(backend, up);
            // The exclusions changed: apply them now, not at the next interval.
            shared.request_run();
        })
    };
    tokio::spawn(health::run(Arc::clone(&shared.health), on_change));
    tokio::spawn(http::serve(listener, Arc::clone(&shared)));
    let mut hangup = unix::signal(unix::SignalKind::hangup())?;
    let mut terminate = unix::signal(unix::SignalKind::terminate())?;
    let mut interrupt = unix::signal(unix::SignalKind::interrupt())?;
    info!(listen = %config.listen, source = %describe(&config.source_spec()), "daemon started");

    let mut memory = Memory::new(&config);
    if let Some(failure) = memory.journal.failure(&clock::now_rfc3339()) {
        error!(revision = failure.revision, "{}; failed before this start", failure.error);
        memory.failed_revision = Some(failure.revision.clone());
        show_failure(&mut shared.status(), failure);
    }
    let mut config = Arc::new(config);
    // The interval's runs (and the first) read every live entry, to find drift; runs asked
    // for (a webhook, a health transition) take the incremental path.
    let mut refresh = true;
    loop {
        let started = Instant::now();
        let run_config = Arc::clone(&config);
        memory.health_excluded = shared.health.excluded();
        shared.status().running = true;
        let (outcomes, returned) = tokio::task::spawn_blocking(move || {
            let outcomes = reconcile(&run_config, &mut memory, refresh);
            (outcomes, memory)
        })
        .await?;
        memory = returned;
        // What C libraries (libgit2 inflating a revision's blobs, OpenSSL) freed in glibc's
        // heap goes back to the kernel; Rust's own allocations are mimalloc's (the binary's).
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        if let Some(good) = &memory.last_good {
            shared.health.update(good);
        }
        let took = started.elapsed();
        let mut delay = config.interval;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            // A run counts once, by what happened to the fetched commit.
            let took = (i == 0).then_some(took);
            delay = delay.min(record(&shared, &config, &mut memory, outcome, took));
        }
        // After the record: who sees the run ended sees what it did.
        shared.status().running = false;

        refresh = true;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.trigger.notified() => {
                // Both at once: whoever reads the status never sees the asked-for run neither
                // asked for nor under way.
                let mut status = shared.status();
                status.running = true;
                status.run_requested = false;
                drop(status);
                info!("reconcile requested");
                refresh = false;
            }
            _ = hangup.recv() => match reload(config_file) {
                // Moving the data plane would leave the old one attached, and running first:
                // refused whole, never half-applied.
                Some(new) if new.pin_path != config.pin_path || new.cgroup != config.cgroup => {
                    error!(
                        old = %config.pin_path.display(),
                        new = %new.pin_path.display(),
                        "configuration not reloaded: dataplane.pinPath or dataplane.cgroup \
                         changed, which takes a restart; to move the data plane, stop the \
                         daemon, run `reconciler uninstall --pin-path OLD`, then start it again"
                    );
                }
                Some(new) => {
                    if new.listen != config.listen {
                        warn!(listen = %new.listen, "a new listen address takes effect on restart");
                    }
                    shared.status().drift = new.drift;
                    shared.set_webhook_secret(new.webhook_secret.clone());
                    if new.source != config.source {
                        memory.journal = Memory::new(&new).journal;
                    }
                    // The memo is keyed by source and revision: it stays good.
                    let memo = std::mem::replace(&mut memory.session, session(&new)).into_memo();
                    memory.session = session(&new).with_memo(memo);
                    config = Arc::new(new);
                    // A new policy may accept what the old one refused, or refuse what it
                    // accepted: validate again.
                    memory.failed_revision = None;
                    memory.last_good = None;
                    memory.journal.clear();
                    info!("configuration reloaded");
                }
                None => warn!("configuration not reloaded; keeping the running one"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("daemon stopped; the data plane keeps serving");
    Ok(())
}

/// Raises the soft limit of open files to the hard one: every HTTP client holds a descriptor
/// until it is done or times out, and systemd's default soft limit (1024) is easily reached
/// by a scraper fleet plus idle connections.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !raised {
        warn!(error = %std::io::Error::last_os_error(), "could not raise the open file limit");
    }
}

fn reload(config_file: &Path) -> Option<Config> {
    let file = config_file.display().to_string();
    let text =
        match crate::limits::read_to_string(config_file, crate::limits::MAX_FILE_BYTES as u64) {
            Ok(text) => text,
            Err(e) => {
                error!(file, "reading the configuration: {e}");
                return None;
            }
        };
    match config::parse(&file, &text) {
        Ok(config) => Some(config),
        Err(diagnostics) => {
            for d in diagnostics {
                error!("{d}");
            }
            None
        }
    }
}

/// One run: what happened to the fetched commit, then (while it is bad) to drift.
fn reconcile(config: &Config, memory: &mut Memory, refresh: bool) -> Vec<Outcome> {
    let outcome = reconcile_commit(config, memory, refresh);
    match &outcome {
        Outcome::Rejected { revision: Some(revision), error, diagnostics, .. } => {
            memory.journal.failed(Failure {
                revision: revision.clone(),
                error: error.clone(),
                diagnostics: diagnostics.clone(),
                at: clock::now_rfc3339(),
            })
        }
        Outcome::Rejected { revision: None, .. } | Outcome::StillRejected { .. } => {}
        Outcome::Transient { .. } => memory.journal.interrupted(),
        Outcome::Applied { .. }
        | Outcome::Unchanged { .. }
        | Outcome::DriftHealed { .. }
        | Outcome::HealthApplied { .. }
        | Outcome::DriftReported { .. }
        | Outcome::LastGood { .. } => memory.journal.clear(),
    }
    let held_back = matches!(
        outcome,
        Outcome::Rejected { .. } | Outcome::StillRejected { .. } | Outcome::Transient { .. }
    );
    let drift = if held_back { check_drift(config, memory) } else { None };
    std::iter::once(outcome).chain(drift).collect()
}

/// Fetch, validate, plan, apply: the fetched commit's part of a run.
/// With `refresh`, the plan reads every live entry.
fn reconcile_commit(config: &Config, memory: &mut Memory, refresh: bool) -> Outcome {
    // A data plane of an older build (at start, say) is upgraded in place before it is read.
    match crate::dataplane::upgrade(&config.pin_path) {
        Ok(Some(upgraded)) => info!(
            from_layout = upgraded.from_layout,
            replaced = ?upgraded.replaced,
            attached = ?upgraded.attached,
            "upgraded the data plane in place"
        ),
        Ok(None) => {}
        Err(e) => return Outcome::Transient { error: format!("upgrading the data plane: {e}") },
    }
    let snapshot = match memory.session.fetch() {
        Ok(snapshot) => snapshot,
        Err(e) if e.is_transient() => return Outcome::Transient { error: e.to_string() },
        // A ref that names nothing, a subdirectory a commit lacks: reported, and tried again
        // at the interval (a new commit may mend it), not at the backoff's pace.
        Err(e) => {
            let revision = e.revision().map(str::to_owned);
            if memory.already_failed(&revision) {
                return Outcome::StillRejected { revision };
            }
            let unverified = matches!(e, source::SourceError::Unverified { .. });
            return reject(memory, revision, e.to_string(), unverified);
        }
    };
    if memory.already_failed(&snapshot.revision) {
        return Outcome::StillRejected { revision: snapshot.revision };
    }
    // The commit the data plane already holds was validated when it was applied: at each
    // interval only drift is to be checked, not the definitions again.
    let known = memory.last_good.as_ref().filter(|good| {
        good.revision.is_some()
            && good.revision == snapshot.revision
            && good.source == memory.session.source()
    });
    match node::local_addresses(&config.allow_local_vips) {
        Ok(local_addresses) => {
            memory.session.set_policy(Policy { local_addresses, ..config.policy.clone() })
        }
        Err(e) => {
            return Outcome::Transient { error: format!("listing this node's addresses: {e}") }
        }
    };
    let validated = match known {
        Some(good) => Ok(good.clone()),
        None => {
            if let Some(revision) = &snapshot.revision {
                // Before the work: if it kills the process, the journal remembers.
                memory.journal.start(revision);
            }
            memory.session.validate(snapshot)
        }
    };
    let desired = match validated {
        Ok(desired) => desired,
        Err(Error::Invalid { revision, diagnostics }) => {
            memory.failed_revision = revision.clone();
            let error = format!("{} invalid definition(s)", diagnostics.len());
            return Outcome::Rejected { revision, error, diagnostics, unverified: false };
        }
        Err(e) => return Outcome::Transient { error: e.to_string() },
    };
    let reading = if refresh { Reading::Everything } else { Reading::Changed };
    let options = PlanOptions { reading, health: Some(memory.health_excluded.clone()) };
    let plan = match memory.session.plan(&desired, options) {
        Ok(plan) => plan,
        Err(Error::Compile(e)) => return reject(memory, desired.revision, e.to_string(), false),
        Err(e) => return Outcome::Transient { error: e.to_string() },
    };
    let new_revision = plan.context.install || plan.context.revision != plan.context.live_revision;
    let health_only = !new_revision && plan.context.health_changed;
    if !new_revision && !health_only && plan.map_writes > 0 && config.drift == DriftMode::Report {
        memory.last_good = Some(desired);
        return Outcome::DriftReported { plan: Box::new(plan) };
    }
    if !plan.has_changes() {
        memory.last_good = Some(desired);
        return Outcome::Unchanged { plan: Box::new(plan) };
    }
    match memory.session.apply(&plan, Some(&desired), apply_options(config)) {
        Ok(report) => {
            memory.last_good = Some(desired);
            if new_revision {
                Outcome::Applied { plan: Box::new(plan), report }
            } else if health_only {
                Outcome::HealthApplied { plan: Box::new(plan), report }
            } else {
                Outcome::DriftHealed { plan: Box::new(plan), report }
            }
        }
        // Someone else applied in between: not this commit's fault; look again soon.
        Err(e @ (Error::StalePlan { .. } | Error::StaleInstall { .. })) => {
            Outcome::Transient { error: e.to_string() }
        }
        Err(Error::Dataplane(e)) => Outcome::Transient { error: e.to_string() },
        Err(e) => reject(memory, desired.revision, e.to_string(), false),
    }
}

fn apply_options(config: &Config) -> ApplyOptions {
    ApplyOptions {
        cgroup: config.cgroup.clone(),
        allow_destroy_all: config.allow_destroy_all,
        loaded: None,
    }
}

fn reject(
    memory: &mut Memory,
    revision: Option<String>,
    error: String,
    unverified: bool,
) -> Outcome {
    memory.failed_revision = revision.clone();
    Outcome::Rejected { revision, error, diagnostics: Vec::new(), unverified }
}

/// While the fetched commit is held back: drift of the live maps from the last good
/// definitions. `None` when there is nothing to compare with.
fn check_drift(config: &Config, memory: &mut Memory) -> Option<Outcome> {
    if memory.last_good.is_none() {
        // After a restart: the definitions of the revision the maps record.
        let live = Dataplane::open(&config.pin_path).ok()?.status().ok()?;
        let revision = live.revision?;
        memory.last_good = memory.session.load_at(&revision).ok();
    }
    let good = memory.last_good.as_ref()?;
    let options =
        PlanOptions { reading: Reading::Everything, health: Some(memory.health_excluded.clone()) };
    let plan = memory.session.plan(good, options).ok()?;
    if plan.context.install {
        return None;
    }
    if plan.entry_changes == 0 {
        return Some(Outcome::LastGood { plan: Box::new(plan) });
    }
    if config.drift == DriftMode::Report {
        return Some(Outcome::DriftReported { plan: Box::new(plan) });
    }
    match memory.session.apply(&plan, Some(good), apply_options(config)) {
        Ok(report) => Some(Outcome::DriftHealed { plan: Box::new(plan), report }),
        Err(e) => Some(Outcome::Transient { error: e.to_string() }),
    }
}

/// Logs the outcome, updates status and metrics, and says how long to wait for the next run.
fn record(
    shared: &Shared,
    config: &Config,
    memory: &mut Memory,
    outcome: Outcome,
    took: Option<Duration>,
) -> Duration {
    let since_epoch = clock::now_unix();
    let now = since_epoch.as_secs_f64();
    let now_text = rfc3339_utc(since_epoch.as_secs());
    let metrics = shared.metrics();
    match (took, &outcome) {
        (Some(took), _) => metrics.observe_reconcile(outcome.label(), took.as_secs_f64()),
        // Nothing happened beyond the commit's part of the run, which is counted.
        (None, Outcome::LastGood { .. }) => {}
        (None, _) => metrics.count(outcome.label()),
    }
    let mut status = shared.status();
    status.last_reconcile_at = Some(now_text.clone());
    if let Some(plan) = outcome.plan() {
        let read = if plan.touched.is_some() { "incremental" } else { "full" };
        status.last_plan = Some(read.to_owned());
    }
    let mut transient = false;
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
            metrics.applied_report(&report);
            metrics.applied(plan.context.revision.as_deref(), now);
            at_revision(&mut status, metrics, &plan, whole(&plan, memory), &now_text);
        }
        Outcome::Unchanged { plan } => {
            if status.applied_revision.is_none() {
                // Adopted at start: the maps already held this revision.
                metrics.applied(plan.context.revision.as_deref(), now);
            }
            at_revision(&mut status, metrics, &plan, whole(&plan, memory), &now_text);
        }
        Outcome::LastGood { plan } => {
            if status.applied_revision.is_none() {
                metrics.applied(plan.context.revision.as_deref(), now);
            }
            holding(&mut status, metrics, &plan, whole(&plan, memory));
        }
        Outcome::DriftHealed { plan, report } => {
            warn!(entries = plan.entry_changes, map_writes = report.map_writes, "drift healed");
            metrics.applied_report(&report);
            metrics.applied(
                status.applied_revision.as_deref().or(plan.context.revision.as_deref()),
                now,
            );
            metrics.drift_entries.set(0);
            status.drift_entries = 0;
            status.generation = plan.context.generation + 1;
        }
        Outcome::HealthApplied { plan, report } => {
            let excluded: Vec<String> =
                plan.desired.health_excluded.iter().map(ToString::to_string).collect();
            info!(
                excluded = excluded.join(","),
                map_writes = report.map_writes,
                sockets_destroyed = report.sockets_destroyed,
                "health exclusions applied"
            );
            metrics.applied_report(&report);
            status.generation = plan.context.generation + 1;
        }
        Outcome::DriftReported { plan } => {
            warn!(
                entries = plan.entry_changes,
                "drift: the live maps differ from the applied revision"
            );
            metrics.drift_entries.set(plan.entry_changes as i64);
            status.drift_entries = plan.entry_changes;
        }
        Outcome::Rejected { revision, error, diagnostics, .. } => {
            error!(
                revision = revision.as_deref().unwrap_or("-"),
                "{error}; the data plane stays at the last good revision"
            );
            for d in &diagnostics {
                error!("{d}");
            }
            status.attempted_revision = revision.clone();
            status.attempted_at = Some(now_text);
            status.failed_revision = revision;
            status.last_error = Some(error);
            status.errors = diagnostics;
        }
        Outcome::StillRejected { revision } => {
            info!(
                revision = revision.as_deref().unwrap_or("-"),
                "the fetched revision already failed; waiting for a new one"
            );
        }
        Outcome::Transient { error } => {
            warn!("{error}; retrying, the data plane keeps serving");
            status.last_error = Some(error);
            transient = true;
        }
    }
    if took.is_none() {
        // The drift part of a run: the fetched commit's outcome decides the wait.
        return config.interval;
    }
    if transient {
        memory.consecutive_errors += 1;
        backoff::retry(memory.consecutive_errors, config.interval)
    } else {
        memory.consecutive_errors = 0;
        backoff::jittered(config.interval)
    }
}

/// A revision that failed before this start, as the run that refused it showed it.
fn show_failure(status: &mut DaemonStatus, failure: &Failure) {
    status.attempted_revision = Some(failure.revision.clone());
    status.attempted_at = Some(failure.at.clone());
    status.failed_revision = Some(failure.revision.clone());
    status.last_error = Some(failure.error.clone());
    status.errors = failure.diagnostics.clone();
}

/// After a run that left the data plane at the fetched revision, with no drift.
/// Every entry the maps hold once `plan` is applied: its desired state, or for an
/// incremental plan the memo's record of the whole.
fn whole<'a>(plan: &'a Plan, memory: &'a Memory) -> &'a MapState {
    match (&plan.touched, &memory.session.memo().record) {
        (Some(_), Some(record)) => &record.state,
        _ => &plan.desired,
    }
}

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
    holding(status, metrics, plan, entries);
}

/// The data plane holds the revision of `plan`, whose definitions were valid, with no drift.
fn holding(status: &mut DaemonStatus, metrics: &Metrics, plan: &Plan, entries: &MapState) {
    status.ready = true;
    status.applied_revision = plan.context.revision.clone();
    status.drift_entries = 0;
    metrics.drift_entries.set(0);
    status.services = entries.services.len();
    status.backends = entries.backends.len();
    metrics.services.set(status.services as i64);
    metrics.backends.set(status.backends as i64);
    // The metadata alone: cheap, unlike reading the maps.
    if let Ok(live) = Dataplane::open(Path::new(&plan.context.pin_path)).and_then(|d| d.status()) {
        status.generation = live.generation;
        status.applied_at = live.applied_at_unix.map(rfc3339_utc);
    }
}
