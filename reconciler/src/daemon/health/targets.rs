//! The targets' bookkeeping: what each target judges and what its probes said, when each is
//! due (a schedule, so a tick looks at the due ones only), and per service how many of its
//! judged backends are up (so a transition updates fail-open in O(its services), never by
//! scanning every target). Every operation here is short: it runs under one lock, on the
//! async runtime.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{probe::ProbeError, BackendHealth, TargetKey, Transition, Wanted};
use crate::{clock, daemon::backoff::jittered};
use reconciler_core::{model::HealthCheck, state::Exclusion};

/// Ejections a flapping target's hold-down counts at most.
const MAX_EJECTIONS: u32 = 10;
/// Intervals of health that forgive one ejection.
const FORGIVE_INTERVALS: u32 = 5;

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
    /// Times it went down lately (Envoy's ejection multiplier): each one after the first
    /// holds it out longer once it passes again; health forgives them one by one.
    ejections: u32,
    /// While down: not back in before this, however its probes go.
    held_until: Instant,
    /// While up: when it last forgave an ejection (or came up).
    forgiven_at: Instant,
}

impl Target {
    fn new(check: &HealthCheck, down: bool, now: Instant) -> Target {
        let interval = interval(check);
        Target {
            check: check.clone(),
            judges: BTreeSet::new(),
            failures: if down { check.unhealthy_threshold } else { 0 },
            successes: 0,
            up: !down,
            since: None,
            last_error: down.then(|| "taken out before the daemon started; probing".to_owned()),
            // A target recorded down is probed at once, to confirm.
            next_due: if down { now } else { now + jittered(interval) },
            in_flight: false,
            ejections: u32::from(down),
            held_until: now,
            forgiven_at: now,
        }
    }

    /// Counts a probe's result at `now`; whether the target changes state.
    fn count(&mut self, result: &Result<(), ProbeError>, now: Instant) -> bool {
        let interval = interval(&self.check);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.up && now >= self.forgiven_at + interval * FORGIVE_INTERVALS {
                    self.ejections = self.ejections.saturating_sub(1);
                    self.forgiven_at = now;
                }
                !self.up && self.successes >= self.check.healthy_threshold && now >= self.held_until
            }
            Err(error) => {
                self.successes = 0;
                self.failures += 1;
                self.last_error = Some(error.class());
                self.up && self.failures >= self.check.unhealthy_threshold
            }
        }
    }

    /// Turns it up or down at `now`.
    fn turn(&mut self, now: Instant) {
        self.up = !self.up;
        self.since = Some(clock::now_rfc3339());
        if self.up {
            self.forgiven_at = now;
        } else {
            self.ejections = (self.ejections + 1).min(MAX_EJECTIONS);
            let per_ejection = interval(&self.check) * self.check.ejection_intervals;
            let hold = per_ejection * (self.ejections - 1);
            self.held_until = now + hold;
        }
    }
}

fn interval(check: &HealthCheck) -> Duration {
    Duration::from_secs(u64::from(check.interval_seconds))
}

/// How many of a service's judged (service, backend) pairs there are, and how many are up.
#[derive(Clone, Copy, Default)]
struct Counts {
    judged: usize,
    up: usize,
}

/// Every target, its schedule and the per-service counts.
#[derive(Default)]
pub(super) struct Targets {
    by_key: BTreeMap<TargetKey, Target>,
    /// When each target not in flight is due next.
    schedule: BTreeSet<(Instant, TargetKey)>,
    services: HashMap<String, Counts>,
    /// Services with a check and no fallback: they fail open when none of theirs is up.
    without_fallback: BTreeSet<String>,
    failing_open: BTreeSet<String>,
    /// Exclusions the data plane recorded before this start, not yet judged by a target.
    recorded: BTreeSet<Exclusion>,
}

impl Targets {
    pub(super) fn seed(&mut self, recorded: BTreeSet<Exclusion>) {
        self.recorded = recorded;
    }

    /// Sets the targets to `wanted`: new ones start up unless recorded as down, known ones
    /// keep their state, gone ones are dropped; the counts are made again.
    pub(super) fn update(&mut self, wanted: Wanted, without_fallback: BTreeSet<String>) {
        let now = Instant::now();
        self.by_key.retain(|key, _| wanted.contains_key(key));
        self.schedule.retain(|(_, key)| wanted.contains_key(key));
        for (key, (check, judges)) in wanted {
            let target = self.by_key.entry(key.clone()).or_insert_with(|| {
                let down = judges.iter().any(|pair| self.recorded.contains(pair));
                let target = Target::new(&check, down, now);
                self.schedule.insert((target.next_due, key));
                target
            });
            self.recorded.retain(|pair| !judges.contains(pair));
            target.check = check;
            target.judges = judges;
        }
        self.without_fallback = without_fallback;
        self.services.clear();
        for target in self.by_key.values() {
            for (service, _) in &target.judges {
                let counts = self.services.entry(service.clone()).or_default();
                counts.judged += 1;
                counts.up += usize::from(target.up);
            }
        }
        self.failing_open =
            self.without_fallback.iter().filter(|s| self.none_up(s)).cloned().collect();
    }

    fn none_up(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|c| c.judged > 0 && c.up == 0)
    }

    /// The (service, backend) pairs that are down.
    pub(super) fn excluded(&self) -> BTreeSet<Exclusion> {
        let mut excluded = self.recorded.clone();
        let down = self.by_key.values().filter(|t| !t.up);
        excluded.extend(down.flat_map(|t| t.judges.iter().cloned()));
        excluded
    }

    pub(super) fn failing_open(&self) -> Vec<String> {
        self.failing_open.iter().cloned().collect()
    }

    /// The targets due at `now`, taken off the schedule and marked in flight.
    pub(super) fn due(&mut self, now: Instant) -> Vec<(TargetKey, HealthCheck)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.schedule.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.schedule.pop_first() else { break };
            if let Some(target) = self.by_key.get_mut(&key) {
                target.in_flight = true;
                due.push((key, target.check.clone()));
            }
        }
        due
    }

    /// Counts one probe's result for `key` at `now`, and schedules its next probe; the
    /// transition, if it changed state.
    pub(super) fn record(
        &mut self,
        key: &TargetKey,
        result: &Result<(), ProbeError>,
        now: Instant,
    ) -> Option<Transition> {
        let target = self.by_key.get_mut(key)?;
        target.in_flight = false;
        // An interval from when this probe was due, not from its end: a probe that waits out
        // its timeout does not stretch the target's period (the bound on when a dead
        // backend is known counts whole intervals).
        target.next_due = (target.next_due + jittered(interval(&target.check))).max(now);
        self.schedule.insert((target.next_due, key.clone()));
        if !target.count(result, now) {
            return None;
        }
        target.turn(now);
        let (up, services): (bool, Vec<String>) =
            (target.up, target.judges.iter().map(|(s, _)| s.clone()).collect());
        let judges = target.judges.clone();
        let error = result.as_ref().err().map(ToString::to_string);
        let mut fail_open = Vec::new();
        for service in services {
            let counts = self.services.entry(service.clone()).or_default();
            counts.up = if up { counts.up + 1 } else { counts.up.saturating_sub(1) };
            let failing = self.without_fallback.contains(&service) && self.none_up(&service);
            let changed = if failing {
                self.failing_open.insert(service.clone())
            } else {
                self.failing_open.remove(&service)
            };
            if changed {
                fail_open.push((service, failing));
            }
        }
        Some(Transition { up, probe: key.0, judges, error, fail_open })
    }

    /// Every target's health, per backend it judges.
    pub(super) fn report(&self) -> Vec<BackendHealth> {
        let mut report = Vec::new();
        for t in self.by_key.values() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        let text = r#"{"intervalSeconds": 1, "unhealthyThreshold": 1, "healthyThreshold": 1}"#;
        serde_json::from_str(text).unwrap()
    }

    fn refused() -> Result<(), ProbeError> {
        Err(ProbeError::Timeout { timeout: Duration::from_secs(1) })
    }

    /// One target judging `a/http` and `b/http` at 10.1.0.1:8080; `a` has no fallback.
    fn shared() -> (Targets, TargetKey) {
        shared_with(check())
    }

    /// [`shared`], with `check`.
    fn shared_with(check: HealthCheck) -> (Targets, TargetKey) {
        let backend: SocketAddr = "10.1.0.1:8080".parse().unwrap();
        let key = (backend, format!("{check:?}"));
        let judges =
            BTreeSet::from([("a/http".to_owned(), backend), ("b/http".to_owned(), backend)]);
        let mut targets = Targets::default();
        let wanted = Wanted::from([(key.clone(), (check, judges))]);
        targets.update(wanted, BTreeSet::from(["a/http".to_owned()]));
        (targets, key)
    }

    #[test]
    fn a_transition_excludes_what_the_target_judges_and_changes_fail_open_once() {
        let (mut targets, key) = shared();
        let now = Instant::now();
        let down = targets.record(&key, &refused(), now).unwrap();
        assert!(!down.up);
        assert_eq!(down.fail_open, [("a/http".to_owned(), true)], "b has a fallback");
        assert_eq!(targets.excluded().len(), 2);
        assert_eq!(targets.failing_open(), ["a/http"]);
        assert!(targets.record(&key, &refused(), now).is_none(), "already down");
        let up = targets.record(&key, &Ok(()), now).unwrap();
        assert_eq!(up.fail_open, [("a/http".to_owned(), false)]);
        assert!(targets.excluded().is_empty());
    }

    #[test]
    fn each_ejection_after_the_first_holds_the_target_out_five_intervals_longer() {
        let (mut targets, key) = shared();
        let t0 = Instant::now();
        assert!(targets.record(&key, &refused(), t0).is_some());
        assert!(targets.record(&key, &Ok(()), t0).is_some(), "first time: no hold");
        assert!(targets.record(&key, &refused(), t0).is_some());
        // Second ejection: held 5 intervals (5 s).
        assert!(targets.record(&key, &Ok(()), t0 + Duration::from_secs(4)).is_none());
        assert!(targets.record(&key, &Ok(()), t0 + Duration::from_secs(5)).is_some());
        // Healthy for 5 intervals forgives one: the next ejection holds 5 s again, not 10.
        assert!(targets.record(&key, &Ok(()), t0 + Duration::from_secs(11)).is_none());
        let t1 = t0 + Duration::from_secs(12);
        assert!(targets.record(&key, &refused(), t1).is_some());
        assert!(targets.record(&key, &Ok(()), t1 + Duration::from_secs(5)).is_some());
    }

    #[test]
    fn ejection_intervals_zero_holds_nothing_back() {
        let (mut targets, key) = shared_with(HealthCheck { ejection_intervals: 0, ..check() });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(targets.record(&key, &refused(), t0).is_some());
            assert!(targets.record(&key, &Ok(()), t0).is_some(), "back at once");
        }
    }

    #[test]
    fn due_targets_leave_the_schedule_until_their_result_is_in() {
        let (mut targets, key) = shared();
        let due_at = targets.by_key[&key].next_due;
        assert!(targets.due(due_at - Duration::from_millis(1)).is_empty());
        assert_eq!(targets.due(due_at).len(), 1);
        assert!(targets.due(due_at).is_empty(), "in flight");
        // Its result in half a second later: the next one is due an interval (±10%) after
        // this one was, not after its result.
        targets.record(&key, &Ok(()), due_at + Duration::from_millis(500));
        assert!(targets.due(due_at + Duration::from_millis(850)).is_empty());
        assert_eq!(targets.due(due_at + Duration::from_millis(1_100)).len(), 1);
    }
}
