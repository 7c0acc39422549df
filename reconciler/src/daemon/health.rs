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
    state::BackendState,
};

/// Probes in flight at once, over all targets.
const MAX_PROBES: usize = 32;

/// One backend's health, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The backend (address and target port), as the maps hold it.
    pub backend: SocketAddr,
    /// The services (`name/port`) that list it with a health check.
    pub services: Vec<String>,
    pub up: bool,
    /// When it last went up or down (RFC 3339), if it has.
    pub since: Option<String>,
    pub last_error: Option<String>,
}

/// A target: what to probe and what the probes said.
struct Target {
    check: HealthCheck,
    /// Where the probe connects: the backend's address, the check's port.
    probe: SocketAddr,
    services: BTreeSet<String>,
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
    targets: Mutex<BTreeMap<SocketAddr, Target>>,
    /// The services (`name/port`) with a health check and no fallback: when all their
    /// backends are down they keep them all (fail open), which is reported.
    without_fallback: Mutex<BTreeSet<String>>,
}

impl Health {
    fn targets(&self) -> MutexGuard<'_, BTreeMap<SocketAddr, Target>> {
        self.targets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the targets from `desired`: new ones start up (a backend is trusted until its
    /// probes say otherwise), known ones keep their state, gone ones are dropped.
    pub fn update(&self, desired: &Desired) {
        let mut wanted: BTreeMap<SocketAddr, (HealthCheck, SocketAddr, BTreeSet<String>)> =
            BTreeMap::new();
        let mut without_fallback = BTreeSet::new();
        for service in &desired.services {
            let Some(check) = &service.spec.health_check else { continue };
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
                        .entry(addr)
                        .or_insert_with(|| (check.clone(), probe, BTreeSet::new()));
                    entry.2.insert(label.clone());
                }
            }
        }
        *self.without_fallback.lock().unwrap_or_else(|p| p.into_inner()) = without_fallback;
        let mut targets = self.targets();
        targets.retain(|addr, _| wanted.contains_key(addr));
        let now = Instant::now();
        for (addr, (check, probe, services)) in wanted {
            let target = targets.entry(addr).or_insert_with(|| Target {
                check: check.clone(),
                probe,
                services: BTreeSet::new(),
                failures: 0,
                successes: 0,
                up: true,
                since: None,
                last_error: None,
                next_due: now + jittered(Duration::from_secs(u64::from(check.interval_seconds))),
                in_flight: false,
            });
            target.check = check;
            target.probe = probe;
            target.services = services;
        }
    }

    /// The backends that are down: the overlay the next reconcile applies.
    pub fn excluded(&self) -> BTreeSet<SocketAddr> {
        self.targets().iter().filter(|(_, t)| !t.up).map(|(addr, _)| *addr).collect()
    }

    /// The services without a fallback whose every checked backend is down: they keep them
    /// all (fail open).
    pub fn failing_open(&self) -> Vec<String> {
        let without_fallback =
            self.without_fallback.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let targets = self.targets();
        without_fallback
            .into_iter()
            .filter(|service| {
                let mut of_service = targets.values().filter(|t| t.services.contains(service));
                let first = of_service.next();
                first.is_some_and(|t| !t.up) && of_service.all(|t| !t.up)
            })
            .collect()
    }

    /// Every target's health, for `/status`.
    pub fn report(&self) -> Vec<BackendHealth> {
        self.targets()
            .iter()
            .map(|(addr, t)| BackendHealth {
                backend: *addr,
                services: t.services.iter().cloned().collect(),
                up: t.up,
                since: t.since.clone(),
                last_error: t.last_error.clone(),
            })
            .collect()
    }

    /// Counts one probe's result; `Some(up)` when the target changed state.
    fn record(&self, addr: SocketAddr, result: &Result<(), ProbeError>) -> Option<bool> {
        let mut targets = self.targets();
        let target = targets.get_mut(&addr)?;
        target.in_flight = false;
        target.next_due = Instant::now()
            + jittered(Duration::from_secs(u64::from(target.check.interval_seconds)));
        match result {
            Ok(()) => {
                target.failures = 0;
                target.successes += 1;
                if !target.up && target.successes >= target.check.healthy_threshold {
                    target.up = true;
                    target.since = Some(clock::now_rfc3339());
                    return Some(true);
                }
            }
            Err(error) => {
                target.successes = 0;
                target.failures += 1;
                target.last_error = Some(error.to_string());
                if target.up && target.failures >= target.check.unhealthy_threshold {
                    target.up = false;
                    target.since = Some(clock::now_rfc3339());
                    return Some(false);
                }
            }
        }
        None
    }

    /// The targets due now, marked in flight.
    fn due(&self) -> Vec<(SocketAddr, SocketAddr, HealthCheck)> {
        let now = Instant::now();
        let mut targets = self.targets();
        targets
            .iter_mut()
            .filter(|(_, t)| !t.in_flight && t.next_due <= now)
            .map(|(addr, t)| {
                t.in_flight = true;
                (*addr, t.probe, t.check.clone())
            })
            .collect()
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

/// Probes due targets for ever; `changed(addr, up, services)` is called once per transition.
pub async fn run(health: Arc<Health>, changed: Arc<dyn Fn(SocketAddr, bool) + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    loop {
        for (addr, probe_addr, check) in health.due() {
            let (health, changed, slots) =
                (Arc::clone(&health), Arc::clone(&changed), Arc::clone(&slots));
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire().await else { return };
                let result = probe_in_time(probe_addr, &check).await;
                if let Some(up) = health.record(addr, &result) {
                    log_transition(&health, addr, up, result.err());
                    changed(addr, up);
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs that `addr` went up or down (`error` says why it went down), and the services that
/// are left with no healthy backend.
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
