//! Health checks: the daemon probes each target (a backend's address under one service's
//! check; services with the same check share it) once per interval, each target's schedule
//! jittered, up to `MAX_PROBES` at once, each probe within its own timeout. A target failing
//! `unhealthyThreshold` probes in a row is down: the (service, backend) pairs it judges are
//! excluded; `healthyThreshold` passes bring it back, after a hold-down that grows with each
//! time it went down lately (a backend that flaps stays out longer). The exclusions are an
//! overlay on the definitions (`compile`'s `excluded`) that the daemon applies at once
//! (`reconcile::overlay`), and that the data plane records (`HEALTH_EXCLUDED`).
//!
//! `targets` keeps the bookkeeping (incremental: a transition touches its own services
//! only), `probe` makes one probe.
mod probe;
mod targets;

use super::lock;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::pipeline::Desired;
use reconciler_core::{
    model::HealthCheck,
    state::{BackendState, Exclusion},
};
use targets::Targets;

/// Probes in flight at once, over all targets: enough that 2 000 targets whose SYNs are
/// dropped are each probed once per interval at the default timeout (1 s of 5 s); each holds
/// one socket (the daemon raises its open file limit at start).
const MAX_PROBES: usize = 1024;
/// How often the prober looks for due targets.
const TICK: Duration = Duration::from_millis(50);
/// Transition lines logged in a second at most; beyond, one summary line a second.
const LOG_LINES_PER_SECOND: u32 = 20;

/// One backend's health under one check, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The backend (address and target port), as the maps hold it.
    pub backend: SocketAddr,
    /// The services (`name/port`) whose check this is, each judging the backend for itself:
    /// a backend listed by services with different checks has an entry per check.
    pub services: Vec<String>,
    pub up: bool,
    /// When it last went up or down (RFC 3339), if it has.
    pub since: Option<String>,
    pub last_error: Option<String>,
}

/// A target that changed state, as the prober reports it.
pub struct Transition {
    pub up: bool,
    /// Where its probes go.
    pub probe: SocketAddr,
    /// The (service, backend) pairs it judges.
    pub judges: BTreeSet<Exclusion>,
    /// Why it went down, in full (for the log).
    pub error: Option<String>,
    /// Services that started (`true`) or stopped failing open with it.
    pub fail_open: Vec<(String, bool)>,
}

/// What is told of each transition.
pub type OnTransition = Arc<dyn Fn(&Transition) + Send + Sync>;

/// What is probed: the address a probe connects to, and the check (its settings as text).
/// A backend that services list with different checks is probed once per check; services
/// with the same check share its probes.
type TargetKey = (SocketAddr, String);

/// Targets by key: each one's check, and whom it judges.
type Wanted = BTreeMap<TargetKey, (HealthCheck, BTreeSet<Exclusion>)>;

/// Every target's health, shared by the prober, the reconcile loop and `/status`.
#[derive(Default)]
pub struct Health {
    targets: Mutex<Targets>,
    log: Mutex<LogBudget>,
}

impl Health {
    /// Starts from the exclusions the data plane recorded before this start: excluded until
    /// a target judges them, and such a target starts down, probed at once to confirm (a
    /// restart never lets a dead backend back in).
    pub fn seed(&self, recorded: BTreeSet<Exclusion>) {
        lock(&self.targets).seed(recorded);
    }

    /// Sets the targets from `desired`: new ones start up (a backend is trusted until its
    /// probes say otherwise) unless recorded as down, known ones keep their state, gone ones
    /// are dropped.
    pub fn update(&self, desired: &Desired) {
        let (wanted, without_fallback) = wanted_targets(desired);
        lock(&self.targets).update(wanted, without_fallback);
    }

    /// The (service, backend) pairs that are down: the overlay the next reconcile applies.
    pub fn excluded(&self) -> BTreeSet<Exclusion> {
        lock(&self.targets).excluded()
    }

    /// The services without a fallback whose every checked backend is down: they keep them
    /// all (fail open).
    pub fn failing_open(&self) -> Vec<String> {
        lock(&self.targets).failing_open()
    }

    /// Every target's health, per backend it judges, for `/status`.
    pub fn report(&self) -> Vec<BackendHealth> {
        lock(&self.targets).report()
    }
}

/// The targets `desired` asks for, and the services (`name/port`) with a check and no
/// fallback.
fn wanted_targets(desired: &Desired) -> (Wanted, BTreeSet<String>) {
    let mut wanted = Wanted::new();
    let mut without_fallback = BTreeSet::new();
    for service in &desired.services {
        let Some(check) = &service.spec.health_check else { continue };
        let settings = format!("{check:?}");
        for port in &service.spec.ports {
            let label = service.label(port);
            if service.spec.fallback.is_none() {
                without_fallback.insert(label.clone());
            }
            for backend in &service.spec.backends {
                if backend.state == BackendState::Maintenance {
                    continue;
                }
                let addr = backend.address_for(port);
                let probe = SocketAddr::new(backend.address, check.port.unwrap_or(addr.port()));
                let entry = wanted
                    .entry((probe, settings.clone()))
                    .or_insert_with(|| (check.clone(), BTreeSet::new()));
                entry.1.insert((label.clone(), addr));
            }
        }
    }
    (wanted, without_fallback)
}

/// Probes due targets for ever; `changed` is told of each transition.
pub async fn run(health: Arc<Health>, changed: OnTransition) {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    loop {
        let due = lock(&health.targets).due(Instant::now());
        for (key, check) in due {
            let (health, changed, slots) =
                (Arc::clone(&health), Arc::clone(&changed), Arc::clone(&slots));
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire().await else { return };
                let result = probe::probe_in_time(key.0, &check).await;
                let transition = lock(&health.targets).record(&key, &result, Instant::now());
                if let Some(transition) = transition {
                    lock(&health.log).transition(&transition);
                    changed(&transition);
                }
            });
        }
        lock(&health.log).flush(Instant::now());
        tokio::time::sleep(TICK).await;
    }
}

/// Logs each transition once, and each service's fail-open change once; past
/// `LOG_LINES_PER_SECOND` in a second, counts them for one summary line instead.
struct LogBudget {
    window: Instant,
    lines: u32,
    /// Held back this second: targets that went down, came up; fail-open changes.
    held: [usize; 3],
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget { window: Instant::now(), lines: 0, held: [0; 3] }
    }
}

impl LogBudget {
    fn transition(&mut self, transition: &Transition) {
        self.flush(Instant::now());
        if self.lines >= LOG_LINES_PER_SECOND {
            self.held[usize::from(transition.up)] += 1;
            self.held[2] += transition.fail_open.len();
            return;
        }
        self.lines += 1;
        let probe = transition.probe;
        if transition.up {
            info!(backend = %probe, "backend healthy again; back in");
        } else {
            let error = transition.error.clone().unwrap_or_default();
            warn!(backend = %probe, error, "backend unhealthy; taken out");
        }
        for (service, failing) in &transition.fail_open {
            if *failing {
                warn!(
                    service,
                    "every backend fails its health check; keeping them all (fail open)"
                );
            } else {
                info!(service, "a backend passes its health check again; no longer failing open");
            }
        }
    }

    /// Ends the second at `now`, if it is over: the summary of what was held back.
    fn flush(&mut self, now: Instant) {
        if now < self.window + Duration::from_secs(1) {
            return;
        }
        let [down, up, fail_open] = std::mem::take(&mut self.held);
        if down + up + fail_open > 0 {
            warn!(
                down,
                up,
                fail_open_changes = fail_open,
                "more health transitions in the last second than are logged one by one"
            );
        }
        (self.window, self.lines) = (now, 0);
    }
}
