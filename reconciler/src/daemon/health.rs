//! Health checks: the daemon probes each distinct backend of every service with a
//! `healthCheck`, once per interval (concurrently, at most `MAX_PROBES` at a time, each
//! target's schedule jittered). A backend failing `unhealthyThreshold` probes in a row is
//! excluded; `healthyThreshold` successes in a row bring it back. The exclusions are an
//! overlay on the definitions (`compile`'s `excluded`) that the next reconcile applies
//! through the usual atomic apply, and that the data plane records (`HEALTH_EXCLUDED`).
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
};
use tracing::{info, warn};

use super::backoff::jittered;
use crate::{clock, pipeline::Desired};
use reconciler_core::{
    model::{HealthCheck, HealthProtocol},
    state::{BackendState, Exclusion},
};

/// Probes in flight at once, over all targets.
const MAX_PROBES: usize = 32;

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

/// What is probed: the address a probe connects to, and the check (its settings as text).
/// A backend that services list with different checks is probed once per check; services
/// with the same check share its probes.
type TargetKey = (SocketAddr, String);

/// A target: its check, whom its verdict judges, and what the probes said.
struct Target {
    check: HealthCheck,
    /// The (service, backend) pairs it judges.
    judges: BTreeSet<Exclusion>,
    failures: u32,
    successes: u32,
    up: bool,
    since: Option<String>,
    last_error: Option<String>,
    next_due: Instant,
    in_flight: bool,
}

/// Every target's health, shared by the prober, the reconcile loop and `/status`.
#[derive(Default)]
pub struct Health {
    targets: Mutex<BTreeMap<TargetKey, Target>>,
    /// The services (`name/port`) with a health check and no fallback: when all their
    /// backends are down they keep them all (fail open), which is reported.
    without_fallback: Mutex<BTreeSet<String>>,
    /// What the data plane recorded as taken out before this start (`HEALTH_EXCLUDED`):
    /// excluded until a target judges it, and such a target starts down, its probes to
    /// confirm: a restart never lets a dead backend back in.
    recorded: Mutex<BTreeSet<Exclusion>>,
}

/// A mutex's guard, even if a thread panicked holding it (the data stays consistent: every
/// change under these locks is one assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Health {
    /// Starts from the exclusions the data plane recorded (see `recorded`).
    pub fn seed(&self, recorded: BTreeSet<Exclusion>) {
        *lock(&self.recorded) = recorded;
    }

    /// Sets the targets from `desired`: new ones start up (a backend is trusted until its
    /// probes say otherwise) unless recorded as down, known ones keep their state, gone ones
    /// are dropped.
    pub fn update(&self, desired: &Desired) {
        let (wanted, without_fallback) = wanted_targets(desired);
        *lock(&self.without_fallback) = without_fallback;
        let mut recorded = lock(&self.recorded);
        let mut targets = lock(&self.targets);
        targets.retain(|key, _| wanted.contains_key(key));
        let now = Instant::now();
        for (key, (check, judges)) in wanted {
            let target = targets.entry(key).or_insert_with(|| {
                let down = judges.iter().any(|pair| recorded.contains(pair));
                new_target(&check, down, now)
            });
            recorded.retain(|pair| !judges.contains(pair));
            target.check = check;
            target.judges = judges;
        }
    }

    /// The (service, backend) pairs that are down: the overlay the next reconcile applies.
    pub fn excluded(&self) -> BTreeSet<Exclusion> {
        let mut excluded = lock(&self.recorded).clone();
        let targets = lock(&self.targets);
        excluded.extend(targets.values().filter(|t| !t.up).flat_map(|t| t.judges.iter().cloned()));
        excluded
    }

    /// The services without a fallback whose every checked backend is down: they keep them
    /// all (fail open).
    pub fn failing_open(&self) -> Vec<String> {
        let without_fallback = lock(&self.without_fallback).clone();
        let targets = lock(&self.targets);
        // Per service: whether any of its backends is up.
        let mut any_up: BTreeMap<&str, bool> = BTreeMap::new();
        for target in targets.values() {
            for (service, _) in &target.judges {
                *any_up.entry(service).or_default() |= target.up;
            }
        }
        without_fallback
            .into_iter()
            .filter(|service| any_up.get(service.as_str()) == Some(&false))
            .collect()
    }

    /// Every target's health, per backend it judges, for `/status`.
    pub fn report(&self) -> Vec<BackendHealth> {
        let targets = lock(&self.targets);
        let mut report = Vec::new();
        for t in targets.values() {
            let mut by_backend: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
            for (service, backend) in &t.judges {
                by_backend.entry(*backend).or_default().push(service.clone());
            }
            report.extend(by_backend.into_iter().map(|(backend, services)| BackendHealth {
                backend,
                services,
                up: t.up,
                since: t.since.clone(),
                last_error: t.last_error.clone(),
            }));
        }
        report
    }

    /// Counts one probe's result; when the target changed state, `Some` of its new state and
    /// the backends it judges.
    fn record(
        &self,
        key: &TargetKey,
        result: &Result<(), ProbeError>,
    ) -> Option<(bool, BTreeSet<SocketAddr>)> {
        let mut targets = lock(&self.targets);
        let target = targets.get_mut(key)?;
        target.in_flight = false;
        target.next_due = Instant::now()
            + jittered(Duration::from_secs(u64::from(target.check.interval_seconds)));
        let changed = match result {
            Ok(()) => {
                target.failures = 0;
                target.successes += 1;
                !target.up && target.successes >= target.check.healthy_threshold
            }
            Err(error) => {
                target.successes = 0;
                target.failures += 1;
                target.last_error = Some(error.to_string());
                target.up && target.failures >= target.check.unhealthy_threshold
            }
        };
        if !changed {
            return None;
        }
        target.up = !target.up;
        target.since = Some(clock::now_rfc3339());
        Some((target.up, target.judges.iter().map(|(_, backend)| *backend).collect()))
    }

    /// The targets due now, marked in flight.
    fn due(&self) -> Vec<(TargetKey, HealthCheck)> {
        let now = Instant::now();
        let mut targets = lock(&self.targets);
        targets
            .iter_mut()
            .filter(|(_, t)| !t.in_flight && t.next_due <= now)
            .map(|(key, t)| {
                t.in_flight = true;
                (key.clone(), t.check.clone())
            })
            .collect()
    }
}

/// Targets by key: each one's check, and whom it judges.
type Wanted = BTreeMap<TargetKey, (HealthCheck, BTreeSet<Exclusion>)>;

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

/// A new target of `check`: up, or `down` as the data plane recorded (its first probe due
/// at once, to confirm); else its first probe within an interval (jittered).
fn new_target(check: &HealthCheck, down: bool, now: Instant) -> Target {
    let interval = Duration::from_secs(u64::from(check.interval_seconds));
    Target {
        check: check.clone(),
        judges: BTreeSet::new(),
        failures: if down { check.unhealthy_threshold } else { 0 },
        successes: 0,
        up: !down,
        since: None,
        last_error: down.then(|| "taken out before the daemon started; probing".to_owned()),
        next_due: if down { now } else { now + jittered(interval) },
        in_flight: false,
    }
}

/// Why a probe failed, as `/status` shows it (the backend's `last_error`).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connecting to {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("sending to {addr}: {error}")]
    Send { addr: SocketAddr, error: io::Error },
    #[error("reading from {addr}: {error}")]
    Read { addr: SocketAddr, error: io::Error },
    #[error("{addr} answered no HTTP status line")]
    NoStatusLine { addr: SocketAddr },
    #[error("{addr} answered {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
}

/// Probes due targets for ever; `changed(backend, up)` is called once per transition, for
/// each backend the target judges.
pub async fn run(health: Arc<Health>, changed: Arc<dyn Fn(SocketAddr, bool) + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    loop {
        for (key, check) in health.due() {
            let (health, changed, slots) =
                (Arc::clone(&health), Arc::clone(&changed), Arc::clone(&slots));
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire().await else { return };
                let result = probe_in_time(key.0, &check).await;
                if let Some((up, backends)) = health.record(&key, &result) {
                    log_transition(&health, key.0, up, result.err());
                    for backend in backends {
                        changed(backend, up);
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs that the target probed at `addr` went up or down (`error` says why it went down),
/// and the services that are left with no healthy backend.
fn log_transition(health: &Health, addr: SocketAddr, up: bool, error: Option<ProbeError>) {
    for service in health.failing_open() {
        warn!(service, "every backend fails its health check; keeping them all (fail open)");
    }
    if up {
        info!(backend = %addr, "backend healthy again; back in");
    } else {
        // A String, not the error: logged as a quoted value, as it always was.
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        warn!(backend = %addr, error, "backend unhealthy; taken out");
    }
}

/// [`probe`] within the check's timeout.
async fn probe_in_time(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(u64::from(check.timeout_millis));
    tokio::time::timeout(timeout, probe(addr, check))
        .await
        .unwrap_or(Err(ProbeError::Timeout { timeout }))
}

/// One probe of `addr`: a TCP connect, or an HTTP GET answered as `check` expects.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let mut stream =
        TcpStream::connect(addr).await.map_err(|error| ProbeError::Connect { addr, error })?;
    if check.protocol == HealthProtocol::Tcp {
        return Ok(());
    }
    let path = check.path.as_deref().unwrap_or("/");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: reconciler\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|error| ProbeError::Send { addr, error })?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.map_err(|error| ProbeError::Read { addr, error })?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::NoStatusLine { addr })?;
    let good = match check.expect_status {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if good {
        Ok(())
    } else {
        Err(ProbeError::Status { addr, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_errors_say_what_they_said_as_strings() {
        let addr: SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProbeError::Connect { addr, error: refused() }, format!("connecting to {addr}: ")),
            (ProbeError::Send { addr, error: refused() }, format!("sending to {addr}: ")),
            (ProbeError::Read { addr, error: refused() }, format!("reading from {addr}: ")),
        ];
        for (error, prefix) in cases {
            assert_eq!(error.to_string(), format!("{prefix}{}", refused()));
        }
        let no_line = ProbeError::NoStatusLine { addr };
        assert_eq!(no_line.to_string(), "192.0.2.1:8080 answered no HTTP status line");
        let status = ProbeError::Status { addr, status: 503 };
        assert_eq!(status.to_string(), "192.0.2.1:8080 answered 503");
        let timeout = ProbeError::Timeout { timeout: Duration::from_millis(500) };
        assert_eq!(timeout.to_string(), "no answer within 500ms");
    }
}
