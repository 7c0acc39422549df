//! Slow start (`spec.slowStart`): a backend that joins a service (new in a commit, back from
//! maintenance or draining, back from a failed health check or an ejection) starts with 5% of
//! its weight's share of new connections, growing linearly in steps of 5% to its full weight
//! over `windowSeconds`. Each step is an atomic apply of the service's slots through the
//! daemon's overlay (see `reconciler_core::ramp`), at most one a second; the ramps are
//! recorded in the data plane (`HEALTH_EXCLUDED`), so a plan by hand keeps them and a restart
//! goes on from where they were.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{clock, pipeline::Desired};
use reconciler_core::{
    ramp::{Permille, SCALE},
    state::{Algorithm, Exclusion},
};

/// A backend ramping up, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ramp {
    pub service: String,
    pub backend: std::net::SocketAddr,
    /// Its share of its weight now, in percent.
    pub percent: u32,
    /// When it reaches its full weight (RFC 3339).
    pub until: String,
}

#[derive(Default)]
struct Inner {
    /// The window of each service (`name/port`) with slow start.
    windows: BTreeMap<String, Duration>,
    /// When each ramping backend joined.
    joined: BTreeMap<Exclusion, Instant>,
    /// Ramps a data plane recorded before a restart, taken at the first `update`.
    seeded: BTreeMap<Exclusion, Permille>,
}

/// The ramps, shared by the reconcile loop (which applies `levels`), the ticking task and
/// `/status`.
#[derive(Default)]
pub struct Ramps {
    inner: Mutex<Inner>,
}

impl Ramps {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        super::lock(&self.inner)
    }

    /// Sets the services with slow start from `desired`; ramps of others end.
    pub fn update(&self, desired: &Desired) {
        let mut inner = self.lock();
        inner.windows = windows_of(desired);
        let windows = inner.windows.clone();
        inner.joined.retain(|(service, _), _| windows.contains_key(service));
        let now = Instant::now();
        for ((service, backend), permille) in std::mem::take(&mut inner.seeded) {
            let Some(window) = windows.get(&service) else { continue };
            let done = window.mul_f64(f64::from(permille) / 1000.0);
            inner.joined.insert((service, backend), now.checked_sub(done).unwrap_or(now));
        }
    }

    /// The ramps a data plane recorded before this start, kept once `update` brings the
    /// windows.
    pub fn seed(&self, recorded: &BTreeMap<Exclusion, Permille>) {
        self.lock().seeded.clone_from(recorded);
    }

    /// `pairs` joined at `now`: those of services with slow start ramp from the start.
    pub fn start(&self, pairs: &[Exclusion], now: Instant) {
        let mut inner = self.lock();
        let Inner { windows, joined, .. } = &mut *inner;
        for pair in pairs.iter().filter(|(service, _)| windows.contains_key(service)) {
            tracing::info!(service = pair.0, backend = %pair.1, "backend ramping up (slow start)");
            joined.insert(pair.clone(), now);
        }
    }

    /// Of `pairs`, those of services with slow start: the ones [`start`](Self::start) takes.
    pub fn accepts(&self, pairs: &[Exclusion]) -> Vec<Exclusion> {
        let inner = self.lock();
        pairs.iter().filter(|(service, _)| inner.windows.contains_key(service)).cloned().collect()
    }

    /// Each ramping backend's share of its weight at `now`; ramps that are over end.
    pub fn levels(&self, now: Instant) -> BTreeMap<Exclusion, Permille> {
        let mut inner = self.lock();
        let Inner { windows, joined, .. } = &mut *inner;
        joined.retain(|(service, _), since| {
            windows.get(service).is_some_and(|w| level(now - *since, *w).is_some())
        });
        let level_of = |(service, _): &Exclusion, since: &Instant| {
            windows.get(service).and_then(|w| level(now - *since, *w))
        };
        joined
            .iter()
            .filter_map(|(pair, since)| Some((pair.clone(), level_of(pair, since)?)))
            .collect()
    }

    /// The ramping backends, for `/status`.
    pub fn report(&self) -> Vec<Ramp> {
        let now = Instant::now();
        let levels = self.levels(now);
        let inner = self.lock();
        let until =
            |pair: &Exclusion| {
                let left =
                    inner.windows.get(&pair.0).copied().unwrap_or_default().saturating_sub(
                        inner.joined.get(pair).map_or(Duration::ZERO, |s| now - *s),
                    );
                clock::rfc3339_utc((clock::now_unix() + left).as_secs())
            };
        levels
            .iter()
            .map(|(pair, permille)| Ramp {
                service: pair.0.clone(),
                backend: pair.1,
                percent: u32::from(*permille) / 10,
                until: until(pair),
            })
            .collect()
    }
}

/// A ramp's first share of its backend's weight: 5%.
pub const FIRST: Permille = (1000 / SCALE) as Permille;

/// The share of its weight a backend that joined `elapsed` ago has under `window`: 5% at
/// first, then in steps of 5%; `None` once the window is over.
fn level(elapsed: Duration, window: Duration) -> Option<Permille> {
    if elapsed >= window {
        return None;
    }
    let steps = (elapsed.as_secs_f64() / window.as_secs_f64() * SCALE as f64) as u64;
    Some((steps.max(1) as Permille) * FIRST)
}

/// The window of each service (`name/port`) of `desired` with slow start (`random` only:
/// `validate` refuses it with `maglev`).
fn windows_of(desired: &Desired) -> BTreeMap<String, Duration> {
    let mut windows = BTreeMap::new();
    for service in &desired.services {
        let Some(slow_start) = &service.spec.slow_start else { continue };
        if service.spec.load_balancing.algorithm != Algorithm::Random {
            continue;
        }
        let window = Duration::from_secs(u64::from(slow_start.window_seconds));
        windows.extend(service.spec.ports.iter().map(|port| (service.label(port), window)));
    }
    windows
}

/// The (service, backend) pairs of `desired` that take new clients.
fn taking_clients(desired: &Desired) -> BTreeSet<Exclusion> {
    let mut pairs = BTreeSet::new();
    for service in desired.services.iter().filter(|s| s.spec.slow_start.is_some()) {
        for port in &service.spec.ports {
            let active = service.spec.backends.iter().filter(|b| b.takes_clients());
            pairs.extend(active.map(|b| (service.label(port), b.address_for(port))));
        }
    }
    pairs
}

/// The backends that join with `desired` after `before`: new, or taking clients again.
pub fn joined(before: &Desired, desired: &Desired) -> Vec<Exclusion> {
    let had = taking_clients(before);
    taking_clients(desired).into_iter().filter(|pair| !had.contains(pair)).collect()
}

/// Wakes the loop (`changed`) whenever a ramp's step changes, so it is applied; checked
/// every second.
pub async fn run(ramps: Arc<Ramps>, changed: Arc<dyn Fn() + Send + Sync>) {
    let mut last = BTreeMap::new();
    loop {
        let levels = ramps.levels(Instant::now());
        if levels != last {
            for pair in last.keys().filter(|pair| !levels.contains_key(*pair)) {
                tracing::info!(service = pair.0, backend = %pair.1, "slow start over: full weight");
            }
            changed();
            last = levels;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `web` with slow start and `backends` (address, state).
    fn desired(backends: &[(&str, &str)]) -> Desired {
        let listed: Vec<String> =
            backends.iter().map(|(a, s)| format!("{{address: {a}, state: {s}}}")).collect();
        let text = format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
             spec:\n  vip: 10.96.0.10\n  ports: [{{name: http, port: 80}}]\n  \
             slowStart: {{windowSeconds: 60}}\n  backends: [{}]\n",
            listed.join(", ")
        );
        let doc = reconciler_core::load::parse(&text).unwrap().remove(0);
        let service = serde_json::from_value(doc.value).unwrap();
        Desired {
            revision: None,
            source: String::new(),
            services: vec![std::sync::Arc::new(service)],
            elsewhere: Vec::new(),
            zone: None,
            tree: None,
        }
    }

    #[test]
    fn new_backends_and_those_back_from_maintenance_or_draining_join() {
        let before = desired(&[
            ("10.1.0.1", "active"),
            ("10.1.0.2", "maintenance"),
            ("10.1.0.3", "draining"),
        ]);
        let after = desired(&[
            ("10.1.0.1", "active"),
            ("10.1.0.2", "active"),
            ("10.1.0.3", "active"),
            ("10.1.0.4", "active"),
        ]);
        let back: Vec<String> =
            joined(&before, &after).iter().map(|(_, a)| a.to_string()).collect();
        assert_eq!(back, ["10.1.0.2:80", "10.1.0.3:80", "10.1.0.4:80"]);
        assert!(joined(&after, &after).is_empty());
    }

    #[test]
    fn a_ramp_starts_at_five_percent_and_grows_in_steps_to_the_end_of_its_window() {
        let window = Duration::from_secs(60);
        assert_eq!(level(Duration::ZERO, window), Some(50));
        assert_eq!(level(Duration::from_secs(14), window), Some(200));
        assert_eq!(level(Duration::from_secs(15), window), Some(250));
        assert_eq!(level(Duration::from_secs(59), window), Some(950));
        assert_eq!(level(window, window), None);
    }
}
