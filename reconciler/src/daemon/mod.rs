//! `reconciler daemon`: keeps the node in step with the repository, the way Flux and Argo CD
//! keep a cluster in step.
//!
//! Every interval (with ±10% jitter), at once on `POST /reconcile`, and after SIGHUP reloads
//! the configuration, one run: fetch, validate, plan, apply if needed, through the same
//! pipeline as `plan`/`apply` (`crate::pipeline::Session`). The fetch runs on a thread of its
//! own, within `source.timeout`; a health transition meanwhile is applied at once from the
//! revision the data plane holds (`reconcile::overlay`), never waiting for git. Then:
//! - a commit that fails validation or apply is never applied, in part or whole; the data plane
//!   stays at the last good commit, and the failed commit is not tried again until another
//!   one arrives (or the configuration is reloaded);
//! - fetch and data plane errors are retried with capped exponential backoff (1 s, 2 s, ...
//!   up to the interval, with jitter: see `backoff`) while the data plane keeps serving;
//! - drift (live maps that differ from the applied commit) is logged, counted and, with
//!   `drift: heal`, repaired by the same atomic apply;
//! - on start the pinned data plane is adopted: if it already holds the commit, nothing is
//!   written. A failed commit stays failed across restarts (see [`journal`]). SIGTERM/SIGINT
//!   stop the daemon and leave the data plane serving.
//!
//! The files: this one is the event loop; `reconcile` is one run, `decide` its decisions
//! (pure, unit-tested), `outcome` how it ended, `report` what that becomes (log, metrics,
//! status, the wait), `status` what `/status` shows and the state the loop shares with
//! `http` (the endpoint, `webhook` its authentication) and `health` (the checks); `config`
//! the node configuration, `journal` what survives a restart, `backoff` the random waits,
//! `metrics` the Prometheus metrics.
mod backoff;
pub mod config;
mod decide;
mod exposition;
mod flows;
pub mod health;
pub mod http;
pub mod journal;
pub mod metrics;
mod metrics_cache;
mod metrics_dataplane;
pub mod notify;
mod outcome;
pub mod outliers;
pub mod ramps;
mod reconcile;
mod report;
pub mod rollout;
pub mod status;
mod systemd;
mod tell;
mod waves;
pub mod webhook;

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Instant};

use reconciler_core::{
    source::{Snapshot, SourceError},
    state::{Exclusion, Overlay},
};

use tokio::{
    net::TcpListener,
    signal::unix::{self, Signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{clock, pipeline::describe};
use config::Config;
use reconcile::Memory;
use status::Shared;

/// What the health checks and outlier detection take out now.
fn overlay_out(shared: &Shared) -> BTreeSet<Exclusion> {
    Overlay::of(shared.health.excluded(), shared.outliers.excluded()).excluded
}

/// What the health checks and outlier detection take out now, and the ramps of slow start:
/// backends back in since `before` ramp from now on.
fn overlay(shared: &Shared, before: &Overlay) -> Overlay {
    let mut overlay = Overlay::of(shared.health.excluded(), shared.outliers.excluded());
    let back: Vec<_> = before.excluded.difference(&overlay.excluded).cloned().collect();
    let now = Instant::now();
    shared.ramps.start(&back, now);
    overlay.ramps = shared.ramps.levels(now);
    overlay.blends = shared.rollouts.blends();
    overlay
}

/// The signals the loop answers.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

/// What ended the wait between runs.
enum Woken {
    /// The interval passed: a full run, which reads every live entry to find drift.
    Interval,
    /// A run was asked for (a webhook): the incremental path.
    Asked,
    /// A health check changed state: the overlay, without fetching.
    Health,
    /// The fetch under way ended (or its thread panicked).
    Fetched(Result<Result<Snapshot, SourceError>, tokio::task::JoinError>),
    Reload,
    Stop,
    /// Time to tell systemd's watchdog the loop is alive.
    Watchdog,
}

/// A fetch under way, on a thread of its own, so that health changes are applied while a
/// git server takes its time.
struct Fetching {
    task: tokio::task::JoinHandle<Result<Snapshot, SourceError>>,
    /// Whether the run it starts reads every live entry (an interval's run does).
    refresh: bool,
    /// A reload came while it fetched: what it brings is not used.
    stale: bool,
}

/// Runs the daemon until SIGTERM or SIGINT. `config_file` is read again on SIGHUP.
pub async fn run(config_file: &Path, config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!("listening on {} (the `listen` setting): {e}", config.listen)
    })?;
    let shared = Arc::new(Shared::new(&config));
    configured_metrics(&shared, &config);
    check_socket_destroy(&shared);
    start_tasks(&shared, &config, listener);
    let mut signals = Signals {
        hangup: unix::signal(SignalKind::hangup())?,
        terminate: unix::signal(SignalKind::terminate())?,
        interrupt: unix::signal(SignalKind::interrupt())?,
    };
    info!(listen = %config.listen, source = %describe(&config.source_spec()), "daemon started");
    let mut memory = remembered(&shared, &config);
    let mut config = Arc::new(config);
    memory = adopt(&shared, &config, memory).await?;
    let mut systemd = systemd::Systemd::from_env();
    systemd.report(&shared.status(), memory.last_good.is_some());
    let ping_every = systemd.ping_every();
    let mut next_ping = ping_every.map(|every| Instant::now() + every);
    // The first run, and every interval's, reads every live entry, to find drift; runs asked
    // for (a webhook) take the incremental path.
    let mut fetching = Some(start_fetch(&shared, &memory, true));
    let mut next_run = Instant::now() + config.interval;
    // A run asked for while a fetch is under way: after it, one more.
    let mut again = false;
    // Health changes after one is applied wait for this, to be applied together.
    let mut health_after = Instant::now();
    loop {
        match wait(&shared, &mut signals, (next_run, health_after, next_ping), &mut fetching).await
        {
            Woken::Watchdog => {
                systemd.ping();
                next_ping = ping_every.map(|every| Instant::now() + every);
            }
            // Fetched under the configuration a reload replaced: fetched again.
            Woken::Fetched(_) if fetching.as_ref().is_some_and(|f| f.stale) => {
                fetching = Some(start_fetch(&shared, &memory, true));
            }
            Woken::Fetched(fetched) => {
                // A panic of the fetching thread is a bug: the daemon stops, as on any other.
                let fetched = fetched?;
                let refresh = fetching.take().is_some_and(|f| f.refresh);
                let delay;
                (memory, delay) = run_once(&shared, &config, memory, fetched, refresh).await?;
                next_run = Instant::now() + delay;
                if std::mem::take(&mut again) {
                    fetching = Some(start_fetch(&shared, &memory, false));
                }
            }
            // The fetch under way brings what the interval wanted; its run sets the next.
            Woken::Interval if fetching.is_some() => next_run = Instant::now() + config.interval,
            // A webhook during a fetch may announce a commit the fetch missed: one more.
            Woken::Asked if fetching.is_some() => again = true,
            Woken::Interval => fetching = Some(start_fetch(&shared, &memory, true)),
            Woken::Asked => fetching = Some(start_fetch(&shared, &memory, false)),
            Woken::Health => {
                memory = run_overlay(&shared, &config, memory).await?;
                health_after = Instant::now() + HEALTH_BATCH;
            }
            Woken::Reload => {
                let reloaded = reload(config_file, &shared, &mut config, &mut memory);
                match fetching.as_mut() {
                    Some(fetching) => fetching.stale = true,
                    // A run with it at once: new node labels, say, select other services.
                    None if reloaded => fetching = Some(start_fetch(&shared, &memory, true)),
                    None => {}
                }
            }
            Woken::Stop => break,
        }
        shared.status().running = fetching.is_some();
        systemd.report(&shared.status(), false);
    }
    stopped(&shared, &systemd).await;
    Ok(())
}

/// The stop: systemd is told, notifications under way get a moment to go out.
async fn stopped(shared: &Shared, systemd: &systemd::Systemd) {
    systemd.stopping();
    if !shared.notifier.drain(NOTIFY_AT_STOP).await {
        warn!("stopping with notifications not yet delivered");
    }
    info!("daemon stopped; the data plane keeps serving");
}

/// How long a stop waits for notifications under way: well within systemd's stop timeout.
const NOTIFY_AT_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// The metrics that show the configuration: the node, its wave, the interval.
fn configured_metrics(shared: &Shared, config: &Config) {
    shared.metrics().node_info(&config.node, config.rollout.wave);
    shared.metrics().reconcile_interval.set(config.interval.as_secs_f64());
}

/// The memory a start begins with: the shared overlay's parts, and a revision that failed
/// before this start (the journal's), which stays refused.
fn remembered(shared: &Shared, config: &Config) -> Memory {
    let mut memory = Memory::new(config);
    memory.ramps = Arc::clone(&shared.ramps);
    memory.rollouts = Arc::clone(&shared.rollouts);
    memory.gatekeeper = Arc::clone(&shared.gatekeeper);
    if let Some(failure) = memory.journal.failure(&clock::now_rfc3339()) {
        error!(revision = failure.revision, "{}; failed before this start", failure.error);
        memory.failed_revision = Some(failure.revision.clone());
        status::show_failure(&mut shared.status(), failure);
    }
    memory
}

/// Whether the kernel destroys the sockets of removed backends: a gauge, and a warning that
/// says what is lost when it cannot.
fn check_socket_destroy(shared: &Shared) {
    match crate::dataplane::socket_destroy_supported() {
        Ok(supported) => {
            shared.metrics().socket_destroy_supported.set(i64::from(supported));
            if !supported {
                warn!(
                    "this kernel cannot destroy sockets (built without \
                     CONFIG_INET_DIAG_DESTROY): connected UDP sockets of removed backends keep \
                     sending to them until they reconnect"
                );
            }
        }
        Err(e) => warn!("could not tell whether this kernel destroys sockets: {e}"),
    }
}

/// The health checks and the HTTP endpoint, as tasks of their own.
fn start_tasks(shared: &Arc<Shared>, config: &Config, listener: TcpListener) {
    if config.webhook_secret.is_none() && !config.listen.ip().is_loopback() {
        warn!(
            listen = %config.listen,
            "POST /reconcile is open to anyone who can reach this address: set \
             webhook.secretFile"
        );
    }
    shared.notifier.configure(&config.node.name, &config.notify);
    let on_change: health::OnTransition = {
        let shared = Arc::clone(shared);
        Arc::new(move |transition: &health::Transition| {
            for (_, backend) in &transition.judges {
                shared.metrics().health_transition(*backend, transition.up);
            }
            tell::health(&shared, transition);
            // The exclusions changed: apply them now, without waiting for a fetch.
            shared.health_changed.notify_one();
        })
    };
    tokio::spawn(health::run(Arc::clone(&shared.health), on_change));
    let on_ejection = {
        let shared = Arc::clone(shared);
        Arc::new(move |changes: &[outliers::Change]| {
            for change in changes.iter().filter(|c| c.ejected_for.is_some()) {
                shared.metrics().backend_ejected(&change.service, change.backend);
            }
            tell::ejections(&shared, changes);
            shared.health_changed.notify_one();
        })
    };
    let pin_path = config.pin_path.clone();
    tokio::spawn(outliers::run(Arc::clone(&shared.outliers), pin_path, on_ejection));
    let on_step = {
        let shared = Arc::clone(shared);
        Arc::new(move || shared.health_changed.notify_one())
    };
    tokio::spawn(ramps::run(Arc::clone(&shared.ramps), on_step));
    let on_judged = {
        let shared = Arc::clone(shared);
        Arc::new(move |judged: rollout::Judged| {
            match judged {
                rollout::Judged::Completed => shared.metrics().rollout("completed"),
                rollout::Judged::Aborted => shared.metrics().rollout("aborted"),
                rollout::Judged::Stepped => {}
            }
            shared.health_changed.notify_one();
        })
    };
    let out: rollout::Out = {
        let shared = Arc::clone(shared);
        Arc::new(move || overlay_out(&shared))
    };
    let pin_path = config.pin_path.clone();
    tokio::spawn(rollout::run(Arc::clone(&shared.rollouts), pin_path, out, on_judged));
    let on_verdict = {
        let shared = Arc::clone(shared);
        Arc::new(move || shared.request_run())
    };
    tokio::spawn(waves::run(Arc::clone(&shared.gatekeeper), on_verdict));
    tokio::spawn(http::serve(listener, Arc::clone(shared)));
}

/// Starts fetching the source on a thread of its own (see [`Fetching`]); `/status` shows
/// since when.
fn start_fetch(shared: &Shared, memory: &Memory, refresh: bool) -> Fetching {
    let mut status = shared.status();
    status.running = true;
    status.run_requested = false;
    status.fetching_since = Some(clock::now_rfc3339());
    let task = tokio::task::spawn_blocking(memory.session.fetcher());
    Fetching { task, refresh, stale: false }
}

/// Before the first fetch: the health exclusions the data plane recorded (a restart keeps
/// them until probes say otherwise), and the definitions of the revision the maps hold, from
/// the git cache, so that health checks start (and their changes apply) however long the
/// git server takes to answer.
async fn adopt(
    shared: &Shared,
    config: &Arc<Config>,
    mut memory: Memory,
) -> anyhow::Result<Memory> {
    let run_config = Arc::clone(config);
    let recorded;
    (memory, recorded) = tokio::task::spawn_blocking(move || {
        reconcile::last_good(&run_config, &mut memory);
        let recorded = reconcile::recorded_exclusions(&run_config);
        reconcile::resume_rollout(&mut memory, &recorded.blends);
        (memory, recorded)
    })
    .await?;
    if !recorded.excluded.is_empty() {
        info!(
            pairs = recorded.excluded.len(),
            ejected = recorded.ejected.len(),
            "exclusions recorded before this start kept until probed (ejections: for their \
             base time)"
        );
    }
    let failing: BTreeSet<_> = recorded.excluded.difference(&recorded.ejected).cloned().collect();
    shared.health.seed(failing);
    shared.outliers.seed(&recorded.ejected);
    shared.ramps.seed(&recorded.ramps);
    if let Some(good) = &memory.last_good {
        shared.health.update(good);
        shared.outliers.update(good);
        shared.ramps.update(good);
    }
    Ok(memory)
}

/// The run of what a fetch returned, off the async threads, and its report; returns the
/// memory and the wait before the next run.
async fn run_once(
    shared: &Shared,
    config: &Arc<Config>,
    mut memory: Memory,
    fetched: Result<Snapshot, SourceError>,
    refresh: bool,
) -> anyhow::Result<(Memory, std::time::Duration)> {
    let started = Instant::now();
    shared.status().fetching_since = None;
    shared.status().running = true;
    let run_config = Arc::clone(config);
    memory.overlay = overlay(shared, &memory.overlay);
    let (outcomes, mut memory) = tokio::task::spawn_blocking(move || {
        let outcomes = reconcile::reconcile(&run_config, &mut memory, fetched, refresh);
        (outcomes, memory)
    })
    .await?;
    // What C libraries (libgit2 inflating a revision's blobs, OpenSSL) freed in glibc's
    // heap goes back to the kernel; Rust's own allocations are mimalloc's (the binary's).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Some(good) = &memory.last_good {
        shared.health.update(good);
        shared.outliers.update(good);
        shared.ramps.update(good);
    }
    let took = started.elapsed();
    let mut delay = config.interval;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        // A run counts once, by what happened to the fetched commit.
        let took = (i == 0).then_some(took);
        delay = delay.min(report::record(shared, config, &mut memory, outcome, took));
    }
    Ok((memory, delay))
}

/// The health overlay on the last good revision (see [`reconcile::overlay`]), off the async
/// threads, and its report.
async fn run_overlay(
    shared: &Shared,
    config: &Arc<Config>,
    mut memory: Memory,
) -> anyhow::Result<Memory> {
    let run_config = Arc::clone(config);
    memory.overlay = overlay(shared, &memory.overlay);
    shared.status().running = true;
    let revision = memory.last_good.as_ref().and_then(|good| good.revision.clone());
    let (outcome, mut memory) = tokio::task::spawn_blocking(move || {
        let outcome = reconcile::overlay(&run_config, &mut memory);
        (outcome, memory)
    })
    .await?;
    // An aborted rollout undone: the checks, ejections and ramps follow the revision back.
    if let Some(good) = memory.last_good.as_ref().filter(|good| good.revision != revision) {
        shared.health.update(good);
        shared.outliers.update(good);
        shared.ramps.update(good);
    }
    if let Some(outcome) = outcome {
        report::record(shared, config, &mut memory, outcome, None);
    }
    Ok(memory)
}

/// The least time between two applies of health changes: the first change is applied at
/// once, those that follow within this wait and go together (thousands of flapping backends
/// make one apply a second, not one each).
const HEALTH_BATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until `next_run`, or less if a run is asked for, a health check changes (heeded
/// from `health_after` on), the fetch under way ends or a signal comes.
async fn wait(
    shared: &Shared,
    signals: &mut Signals,
    (next_run, health_after, next_ping): (Instant, Instant, Option<Instant>),
    fetching: &mut Option<Fetching>,
) -> Woken {
    let ping = async {
        match next_ping {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    let health = async {
        tokio::time::sleep_until(health_after.into()).await;
        shared.health_changed.notified().await;
    };
    let fetched = async {
        match fetching.as_mut() {
            Some(fetching) => (&mut fetching.task).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // First: a loop kept busy by events still pings.
        biased;
        () = ping => Woken::Watchdog,
        () = tokio::time::sleep_until(next_run.into()) => Woken::Interval,
        joined = fetched => Woken::Fetched(joined),
        () = health => Woken::Health,
        () = shared.trigger.notified() => {
            info!("reconcile requested");
            Woken::Asked
        }
        _ = signals.hangup.recv() => Woken::Reload,
        _ = signals.terminate.recv() => Woken::Stop,
        _ = signals.interrupt.recv() => Woken::Stop,
    }
}

/// SIGHUP: reads `config_file` again and takes what it says, or keeps the running
/// configuration, saying why.
fn reload(
    config_file: &Path,
    shared: &Shared,
    config: &mut Arc<Config>,
    memory: &mut Memory,
) -> bool {
    let Some(new) = read_config(config_file) else {
        warn!("configuration not reloaded; keeping the running one");
        return false;
    };
    // Moving the data plane would leave the old one attached, and running first: refused
    // whole, never half-applied.
    if new.pin_path != config.pin_path || new.cgroup != config.cgroup {
        error!(
            old = %config.pin_path.display(),
            new = %new.pin_path.display(),
            "configuration not reloaded: dataplane.pinPath or dataplane.cgroup \
             changed, which takes a restart; to move the data plane, stop the \
             daemon, run `reconciler uninstall --pin-path OLD`, then start it again"
        );
        return false;
    }
    if new.listen != config.listen {
        warn!(listen = %new.listen, "a new listen address takes effect on restart");
    }
    shared.status().drift = new.drift;
    shared.status().node = Some(new.node.clone());
    shared.status().rollout_wave = new.rollout.wave;
    configured_metrics(shared, &new);
    shared.set_webhook_secret(new.webhook_secret.clone());
    shared.notifier.configure(&new.node.name, &new.notify);
    memory.reload(config, &new);
    *config = Arc::new(new);
    info!("configuration reloaded");
    true
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

fn read_config(config_file: &Path) -> Option<Config> {
    let file = config_file.display().to_string();
    let text = match reconciler_core::limits::read_to_string(
        config_file,
        reconciler_core::limits::MAX_FILE_BYTES as u64,
    ) {
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

/// `mutex`'s guard, even if a thread panicked holding it: the daemon's shared state is
/// bookkeeping that stays usable (a panic is a bug, reported as such elsewhere).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
