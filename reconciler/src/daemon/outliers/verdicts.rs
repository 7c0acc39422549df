//! The verdicts of outlier detection, pure bookkeeping: each look at a service, with what
//! the maps say of its backends, says who goes out and who comes back.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use reconciler_core::{model::OutlierDetection, state::Exclusion};

/// The longest an ejection lasts, however often the backend was ejected.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What the maps say of one backend of a service, at a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub backend: SocketAddr,
    /// Connects that failed, in all.
    pub failed: u64,
    /// Connects that failed since the last one established.
    pub consecutive_failures: u64,
}

/// A backend ejected or back, from one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub backend: SocketAddr,
    /// How long it is out; `None`: it is back.
    pub ejected_for: Option<Duration>,
    /// The failures in a row that ejected it.
    pub failures: u64,
}

/// One backend's record under one service.
#[derive(Clone, Copy, Debug, Default)]
struct Record {
    times_ejected: u32,
    out_until: Option<Instant>,
    /// `failed` when it last came back: only failures after that count against it.
    baseline: u64,
}

/// Every service's backends' ejections.
#[derive(Default)]
pub struct Outliers {
    records: BTreeMap<(String, SocketAddr), Record>,
    last_look: BTreeMap<String, Instant>,
    failing_open: BTreeSet<String>,
}

impl Outliers {
    /// Whether `service` is due a look under `rule` at `now`.
    pub fn due(&self, service: &str, rule: &OutlierDetection, now: Instant) -> bool {
        let interval = Duration::from_secs(u64::from(rule.interval_seconds));
        self.last_look.get(service).is_none_or(|last| now >= *last + interval)
    }

    /// One look at `service`, whose backends are `seen` (all of them), under `rule` at `now`:
    /// who comes back, who goes out.
    pub fn look(
        &mut self,
        service: &str,
        rule: &OutlierDetection,
        seen: &[Seen],
        now: Instant,
    ) -> Vec<Change> {
        self.last_look.insert(service.to_owned(), now);
        let key = |backend: SocketAddr| (service.to_owned(), backend);
        let mut changes = Vec::new();
        for s in seen {
            let record = self.records.entry(key(s.backend)).or_default();
            if record.out_until.is_some_and(|until| until <= now) {
                (record.out_until, record.baseline) = (None, s.failed);
                changes.push(Change {
                    service: service.to_owned(),
                    backend: s.backend,
                    ejected_for: None,
                    failures: 0,
                });
            }
        }
        let out = seen.iter().filter(|s| self.is_out(service, s.backend)).count();
        let threshold = u64::from(rule.consecutive_failures);
        let mut qualified: Vec<&Seen> = seen
            .iter()
            .filter(|s| !self.is_out(service, s.backend))
            .filter(|s| {
                let baseline = self.records.get(&key(s.backend)).map_or(0, |r| r.baseline);
                s.consecutive_failures >= threshold
                    && s.failed.saturating_sub(baseline) >= threshold
            })
            .collect();
        qualified.sort_by_key(|s| (std::cmp::Reverse(s.consecutive_failures), s.backend));
        let room = allowed(seen.len(), rule.max_ejection_percent).saturating_sub(out);
        if qualified.len() > room {
            self.failing_open.insert(service.to_owned());
        } else {
            self.failing_open.remove(service);
        }
        for s in qualified.into_iter().take(room) {
            let record = self.records.entry(key(s.backend)).or_default();
            record.times_ejected += 1;
            let base = Duration::from_secs(u64::from(rule.base_ejection_seconds));
            let length = (base * record.times_ejected).min(MAX_EJECTION);
            record.out_until = Some(now + length);
            changes.push(Change {
                service: service.to_owned(),
                backend: s.backend,
                ejected_for: Some(length),
                failures: s.consecutive_failures,
            });
        }
        changes
    }

    /// Forgets the services not in `services` and the backends `listed` no longer lists.
    pub fn keep_only(
        &mut self,
        services: &BTreeSet<&str>,
        listed: impl Fn(&str, SocketAddr) -> bool,
    ) {
        self.records.retain(|(service, backend), _| listed(service, *backend));
        self.last_look.retain(|service, _| services.contains(service.as_str()));
        self.failing_open.retain(|service| services.contains(service.as_str()));
    }

    /// Takes the ejections a data plane recorded before a restart (when they were made and
    /// for how long is lost with the daemon): out for `base` from `now`, counted as one.
    pub fn seed(&mut self, ejected: &BTreeSet<Exclusion>, base: Duration, now: Instant) {
        for (service, backend) in ejected {
            let record = self.records.entry((service.clone(), *backend)).or_default();
            (record.times_ejected, record.out_until) = (1, Some(now + base));
        }
    }

    fn is_out(&self, service: &str, backend: SocketAddr) -> bool {
        let key = (service.to_owned(), backend);
        self.records.get(&key).is_some_and(|r| r.out_until.is_some())
    }

    /// The (service, backend) pairs out now: an overlay, as health checks' exclusions are.
    pub fn excluded(&self) -> BTreeSet<Exclusion> {
        let out = self.records.iter().filter(|(_, r)| r.out_until.is_some());
        out.map(|((service, backend), _)| (service.clone(), *backend)).collect()
    }

    /// The services with more backends qualifying than may be out: they keep the rest.
    pub fn failing_open(&self) -> Vec<String> {
        self.failing_open.iter().cloned().collect()
    }
}

/// How many of `backends` may be out at once at `percent`: rounded down, and never all.
fn allowed(backends: usize, percent: u32) -> usize {
    (backends * percent as usize / 100).min(backends.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max_ejection_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 5,
            interval_seconds: 10,
            base_ejection_seconds: 30,
            max_ejection_percent,
        }
    }

    fn seen(last: u8, failed: u64, consecutive_failures: u64) -> Seen {
        let backend = format!("10.1.0.{last}:8080").parse().unwrap();
        Seen { backend, failed, consecutive_failures }
    }

    #[test]
    fn a_backend_is_ejected_after_its_failures_in_a_row_and_comes_back_after_its_time() {
        let mut outliers = Outliers::default();
        let start = Instant::now();
        let healthy = seen(1, 0, 0);
        let none = outliers.look("web/http", &rule(50), &[healthy, seen(2, 4, 4)], start);
        assert!(none.is_empty());
        let out = outliers.look("web/http", &rule(50), &[healthy, seen(2, 5, 5)], start);
        assert_eq!(out[0].ejected_for, Some(Duration::from_secs(30)));
        assert_eq!(outliers.excluded().len(), 1);
        // Back after 30 s; the same failures do not eject it again at once.
        let later = start + Duration::from_secs(30);
        let back = outliers.look("web/http", &rule(50), &[healthy, seen(2, 5, 5)], later);
        assert_eq!((back.len(), back[0].ejected_for), (1, None));
        assert!(outliers.excluded().is_empty());
        // Five more in a row: out again, for twice as long.
        let again = outliers.look("web/http", &rule(50), &[healthy, seen(2, 10, 10)], later);
        assert_eq!(again[0].ejected_for, Some(Duration::from_secs(60)));
    }

    #[test]
    fn never_more_than_the_share_and_never_the_last_backend() {
        let mut outliers = Outliers::default();
        let now = Instant::now();
        let failing: Vec<Seen> = (1..=4).map(|k| seen(k, 9, 9)).collect();
        let changes = outliers.look("web/http", &rule(50), &failing, now);
        assert_eq!(changes.len(), 2);
        assert_eq!(outliers.failing_open(), ["web/http"]);
        let mut alone = Outliers::default();
        assert!(alone.look("one/http", &rule(100), &failing[..1], now).is_empty());
        assert_eq!(alone.failing_open(), ["one/http"]);
        assert_eq!(allowed(3, 100), 2);
        assert_eq!(allowed(10, 15), 1);
    }

    #[test]
    fn an_ejection_lasts_at_most_five_minutes() {
        let mut outliers = Outliers::default();
        let mut now = Instant::now();
        let mut failed = 0;
        let mut last = None;
        for _ in 0..12 {
            failed += 5;
            let changes = outliers.look(
                "web/http",
                &rule(50),
                &[seen(1, 0, 0), seen(2, failed, failed)],
                now,
            );
            last = changes.iter().find_map(|c| c.ejected_for).or(last);
            now += MAX_EJECTION;
            outliers.look("web/http", &rule(50), &[seen(1, 0, 0), seen(2, failed, failed)], now);
        }
        assert_eq!(last, Some(MAX_EJECTION));
        assert!(outliers.due("web/http", &rule(50), now + Duration::from_secs(10)));
    }

    #[test]
    fn an_ejection_recorded_before_a_restart_holds_for_its_base_time() {
        let mut outliers = Outliers::default();
        let now = Instant::now();
        let backend = seen(2, 0, 0).backend;
        let recorded = BTreeSet::from([("web/http".to_owned(), backend)]);
        outliers.seed(&recorded, Duration::from_secs(30), now);
        assert_eq!(outliers.excluded(), recorded);
        let early = outliers.look("web/http", &rule(50), &[seen(1, 0, 0), seen(2, 0, 0)], now);
        assert!(early.is_empty() && outliers.excluded() == recorded);
        let later = now + Duration::from_secs(30);
        let back = outliers.look("web/http", &rule(50), &[seen(1, 0, 0), seen(2, 0, 0)], later);
        assert_eq!((back.len(), back[0].ejected_for), (1, None));
    }
}
