//! Outlier detection (`spec.outlierDetection`), Envoy's semantics at the socket: a backend
//! whose TCP connections failed `consecutiveFailures` times in a row, as the kernel saw the
//! clients' own connections (the `flows` program's `consecutive_failures`), is ejected for
//! `baseEjectionSeconds` times the times it was ejected (at most 300 s), then comes back;
//! failing again as many times, it goes out again, for longer. Never more than
//! `maxEjectionPercent` of a service's backends are out at once (rounded down), and never its
//! last one: when more qualify, the service fails open and says so.
//!
//! An ejection is an exclusion as a failed health check's (the same atomic overlay, see
//! `reconcile::overlay`), recorded apart (`HEALTH_EXCLUDED`'s value `EJECTED`) so that a plan
//! shows it as one. Failures are TCP's (a datagram has no handshake to fail), but a backend
//! ejected from a service's TCP port leaves its UDP ports too: it is the host that fails, and
//! its connected UDP sockets are destroyed as for any backend taken out.
//!
//! The files: `verdicts` is the pure bookkeeping; this one watches the maps (every second,
//! each service at its interval) and shares what it found.
mod verdicts;

use super::lock;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{clock, pipeline::Desired};
use reconciler_core::{
    model::OutlierDetection,
    state::{Exclusion, Protocol},
};
pub use verdicts::Change;
use verdicts::{Outliers, Seen};

/// One backend that outlier detection ejected, now or before, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejection {
    /// The service (`name/port`, a TCP port) whose clients' connects failed.
    pub service: String,
    pub backend: SocketAddr,
    /// Out now.
    pub ejected: bool,
    /// Times ejected since the daemon started.
    pub ejections: u32,
    /// When it was last ejected (RFC 3339), and the connects that had failed in a row.
    pub ejected_at: String,
    pub failures: u64,
    /// How long the last ejection lasts: the base time times `ejections`, at most 300 s.
    pub seconds: u64,
    /// Until when it is out (RFC 3339), while it is.
    pub until: Option<String>,
}

/// One service's rule and the backends it watches.
#[derive(Clone)]
struct Rule {
    detection: OutlierDetection,
    backends: Vec<SocketAddr>,
    /// A backend's address under the service's UDP ports, which leaves with it.
    companions: BTreeMap<SocketAddr, Vec<Exclusion>>,
}

/// The outliers of the services the definitions give `outlierDetection`, shared by the
/// watcher task, the reconcile loop (which applies `excluded`), `/status` and `/metrics`.
#[derive(Default)]
pub struct Watch {
    verdicts: Mutex<Outliers>,
    /// By service label (`name/port`, TCP ports only).
    rules: Mutex<BTreeMap<String, Rule>>,
    /// Ejections recorded before a restart, taken at the first `update` (which brings the
    /// rules).
    seeded: Mutex<BTreeSet<Exclusion>>,
    /// Every backend ejected since the start, by (service, backend).
    reports: Mutex<BTreeMap<Exclusion, Ejection>>,
}

impl Watch {
    /// Sets the services to watch from `desired`; backends no longer listed are forgotten.
    pub fn update(&self, desired: &Desired) {
        let rules = rules_of(desired);
        let seeded = std::mem::take(&mut *lock(&self.seeded));
        let mut verdicts = lock(&self.verdicts);
        let services: BTreeSet<&str> = rules.keys().map(String::as_str).collect();
        verdicts.keep_only(&services, |service, backend| {
            rules.get(service).is_some_and(|rule| rule.backends.contains(&backend))
        });
        for (label, rule) in &rules {
            let base = Duration::from_secs(u64::from(rule.detection.base_ejection_seconds));
            let ejected: BTreeSet<Exclusion> =
                seeded.iter().filter(|(service, _)| service == label).cloned().collect();
            verdicts.seed(&ejected, base, Instant::now());
        }
        lock(&self.reports).retain(|(service, backend), _| {
            rules.get(service).is_some_and(|rule| rule.backends.contains(backend))
        });
        *lock(&self.rules) = rules;
    }

    /// The ejections a data plane recorded before this start: kept (for their base time)
    /// once `update` brings the rules.
    pub fn seed(&self, ejected: &BTreeSet<Exclusion>) {
        lock(&self.seeded).clone_from(ejected);
    }

    /// The (service, backend) pairs ejected now, with the same backends of the services'
    /// UDP ports.
    pub fn excluded(&self) -> BTreeSet<Exclusion> {
        let out = lock(&self.verdicts).excluded();
        let rules = lock(&self.rules);
        let mut excluded = out.clone();
        for (service, backend) in &out {
            let companions = rules.get(service).and_then(|rule| rule.companions.get(backend));
            excluded.extend(companions.into_iter().flatten().cloned());
        }
        excluded
    }

    /// The services with more backends failing than may be out: they keep the rest.
    pub fn failing_open(&self) -> Vec<String> {
        lock(&self.verdicts).failing_open()
    }

    /// Every backend ejected since the start, for `/status`.
    pub fn report(&self) -> Vec<Ejection> {
        let out = lock(&self.verdicts).excluded();
        let mut reports: Vec<Ejection> = lock(&self.reports).values().cloned().collect();
        for report in &mut reports {
            report.ejected = out.contains(&(report.service.clone(), report.backend));
            if !report.ejected {
                report.until = None;
            }
        }
        reports
    }

    /// Every watched (service, backend), and whether it is ejected now: the gauge's series.
    pub fn watched(&self) -> Vec<(Exclusion, bool)> {
        let out = lock(&self.verdicts).excluded();
        let rules = lock(&self.rules);
        let pairs = rules.iter().flat_map(|(service, rule)| {
            rule.backends.iter().map(|backend| (service.clone(), *backend))
        });
        pairs.map(|pair| (pair.clone(), out.contains(&pair))).collect()
    }

    /// One pass at `now`: each due service looked at with what `flows` says of its backends
    /// (by the live state's IDs); the changes. A data plane that cannot be read is looked at
    /// next time.
    fn pass(&self, pin_path: &Path, now: Instant) -> Vec<Change> {
        let rules = lock(&self.rules).clone();
        let due: Vec<(&String, &Rule)> = {
            let verdicts = lock(&self.verdicts);
            rules.iter().filter(|(s, r)| verdicts.due(s, &r.detection, now)).collect()
        };
        if due.is_empty() {
            return Vec::new();
        }
        let Ok(seen) = read_flows(pin_path, &due) else { return Vec::new() };
        let mut verdicts = lock(&self.verdicts);
        let mut changes = Vec::new();
        for ((service, rule), seen) in due.iter().zip(&seen) {
            changes.extend(verdicts.look(service, &rule.detection, seen, now));
        }
        drop(verdicts);
        self.remember(&changes);
        changes
    }

    /// Records the ejections among `changes` for `/status`.
    fn remember(&self, changes: &[Change]) {
        let mut reports = lock(&self.reports);
        for change in changes {
            let Some(length) = change.ejected_for else { continue };
            let key = (change.service.clone(), change.backend);
            let ejections = reports.get(&key).map_or(0, |r| r.ejections) + 1;
            let until = clock::now_unix() + length;
            reports.insert(
                key,
                Ejection {
                    service: change.service.clone(),
                    backend: change.backend,
                    ejected: true,
                    ejections,
                    ejected_at: clock::now_rfc3339(),
                    failures: change.failures,
                    seconds: length.as_secs(),
                    until: Some(clock::rfc3339_utc(until.as_secs())),
                },
            );
        }
    }
}

/// The rules of `desired`: each TCP port of a service with `outlierDetection`, over the
/// backends that take clients (the share `maxEjectionPercent` allows is of those).
fn rules_of(desired: &Desired) -> BTreeMap<String, Rule> {
    let mut rules = BTreeMap::new();
    for service in &desired.services {
        let Some(detection) = &service.spec.outlier_detection else { continue };
        let ports = &service.spec.ports;
        let (tcp, udp): (Vec<_>, Vec<_>) = ports.iter().partition(|p| p.protocol == Protocol::Tcp);
        let backends: Vec<_> = service.spec.backends.iter().filter(|b| b.takes_clients()).collect();
        for port in tcp {
            let companions = backends.iter().map(|b| {
                let others = udp.iter().map(|u| (service.label(u), b.address_for(u))).collect();
                (b.address_for(port), others)
            });
            let rule = Rule {
                detection: detection.clone(),
                backends: backends.iter().map(|b| b.address_for(port)).collect(),
                companions: companions.collect(),
            };
            rules.insert(service.label(port), rule);
        }
    }
    rules
}

/// What the `flows` counters at `pin_path` say of each of `due`'s backends, in order.
fn read_flows(
    pin_path: &Path,
    due: &[(&String, &Rule)],
) -> Result<Vec<Vec<Seen>>, crate::dataplane::DataplaneError> {
    let pairs = due.iter().flat_map(|(service, rule)| {
        rule.backends.iter().map(|backend| ((*service).clone(), *backend))
    });
    let flows = super::flows::of_pairs(pin_path, pairs)?;
    let seen_of = |service: &String, backend: &SocketAddr| {
        let found = flows.get(&(service.clone(), *backend));
        Seen {
            backend: *backend,
            failed: found.map_or(0, |f| f.failed),
            consecutive_failures: found.map_or(0, |f| f.consecutive_failures),
        }
    };
    Ok(due
        .iter()
        .map(|(service, rule)| rule.backends.iter().map(|b| seen_of(service, b)).collect())
        .collect())
}

/// What is told of a pass's ejections and returns.
pub type OnChanges = Arc<dyn Fn(&[Change]) + Send + Sync>;

/// Looks at the watched services every second; `changed` is given the ejections and
/// returns of a pass that made any, or that changed which services fail open.
pub async fn run(watch: Arc<Watch>, pin_path: PathBuf, changed: OnChanges) {
    let mut failing_open = Vec::new();
    loop {
        let (watch2, pin) = (Arc::clone(&watch), pin_path.clone());
        let changes = tokio::task::spawn_blocking(move || watch2.pass(&pin, Instant::now()))
            .await
            .unwrap_or_default();
        for change in &changes {
            log(change);
        }
        let now_failing_open = watch.failing_open();
        for service in now_failing_open.iter().filter(|s| !failing_open.contains(*s)) {
            tracing::warn!(
                service,
                "outlier detection fails open: more backends fail than maxEjectionPercent lets \
                 out; the rest keep their share"
            );
        }
        let fail_open_changed = now_failing_open != failing_open;
        failing_open = now_failing_open;
        if !changes.is_empty() || fail_open_changed {
            changed(&changes);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn log(change: &Change) {
    match change.ejected_for {
        Some(length) => tracing::warn!(
            service = change.service,
            backend = %change.backend,
            failures = change.failures,
            seconds = length.as_secs(),
            "backend ejected: its clients' connects failed in a row"
        ),
        None => tracing::info!(
            service = change.service,
            backend = %change.backend,
            "ejected backend back in"
        ),
    }
}
