//! One service's rollout, pure: its steps, where it is, and what the new backends' connects
//! over the step say: hold, go on, done, or abort.
use std::time::{Duration, Instant};

use reconciler_core::model::Rollout as Spec;

/// Connects to the new backends in a step before a failure rate is judged before the step's
/// end: fewer say nothing (a step's end judges whatever it saw).
const MIN_CONNECTS: u64 = 10;

/// Connects established and failed, in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub established: u64,
    pub failed: u64,
}

impl Counts {
    fn since(self, start: Counts) -> Counts {
        Counts {
            established: self.established.saturating_sub(start.established),
            failed: self.failed.saturating_sub(start.failed),
        }
    }

    /// Failed connects in percent of all (0 with none).
    pub fn failure_percent(self) -> f64 {
        let all = self.established + self.failed;
        if all == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / all as f64
        }
    }
}

/// What a look at a step says.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Hold,
    /// On to the next step, at this percentage of new connections.
    Advance(u8),
    /// The last step passed: the new backends take everything.
    Done,
    Abort(String),
}

/// Where one service's rollout is.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Percentages of new connections for the new backends, rising, the last 100.
    pub steps: Vec<u8>,
    step_length: Duration,
    max_failure_percent: f64,
    /// Index into `steps`.
    pub step: usize,
    pub step_started: Instant,
    /// The new backends' counts when the step started (taken at the first look).
    baseline: Option<Counts>,
    /// Their counts over the step so far.
    pub seen: Counts,
}

impl Progress {
    /// A rollout under `spec` starting at `now` at its first step, or at the step of
    /// `percent` (one resumed after a restart).
    pub fn new(spec: &Spec, percent: Option<u8>, now: Instant) -> Progress {
        let mut steps: Vec<u8> = spec.steps.clone();
        if steps.last() != Some(&100) {
            steps.push(100);
        }
        let step = percent.and_then(|p| steps.iter().position(|s| *s == p)).unwrap_or(0);
        Progress {
            steps,
            step_length: Duration::from_secs(u64::from(spec.step_seconds)),
            max_failure_percent: f64::from(spec.max_failure_percent),
            step,
            step_started: now,
            baseline: None,
            seen: Counts::default(),
        }
    }

    /// The share of new connections the new backends take now, in percent.
    pub fn percent(&self) -> u8 {
        self.steps[self.step.min(self.steps.len() - 1)]
    }

    /// A look at `now` with the new backends' counts `counts`, and `trouble` if one of them
    /// is failing its health check or ejected.
    pub fn judge(&mut self, now: Instant, counts: Counts, trouble: Option<String>) -> Verdict {
        if let Some(trouble) = trouble {
            return Verdict::Abort(trouble);
        }
        self.seen = counts.since(*self.baseline.get_or_insert(counts));
        let over = self.seen.failure_percent() > self.max_failure_percent;
        let ended = now.duration_since(self.step_started) >= self.step_length;
        let enough = self.seen.established + self.seen.failed >= MIN_CONNECTS;
        if over && (ended || enough) {
            return Verdict::Abort(format!(
                "{} of {} connects to the new backends failed ({:.1}%, more than {}%) at {}%",
                self.seen.failed,
                self.seen.established + self.seen.failed,
                self.seen.failure_percent(),
                self.max_failure_percent,
                self.percent()
            ));
        }
        if !ended {
            return Verdict::Hold;
        }
        self.step += 1;
        (self.step_started, self.baseline, self.seen) = (now, Some(counts), Counts::default());
        match self.steps.get(self.step) {
            Some(100) | None => Verdict::Done,
            Some(percent) => Verdict::Advance(*percent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: &[u8]) -> Spec {
        Spec { steps: steps.to_vec(), step_seconds: 60, max_failure_percent: 5 }
    }

    fn counts(established: u64, failed: u64) -> Counts {
        Counts { established, failed }
    }

    #[test]
    fn steps_advance_at_each_steps_end_and_the_last_is_all() {
        let start = Instant::now();
        let mut progress = Progress::new(&spec(&[10, 50]), None, start);
        assert_eq!((progress.percent(), progress.steps.clone()), (10, vec![10, 50, 100]));
        assert_eq!(progress.judge(start, counts(0, 0), None), Verdict::Hold);
        let minute = Duration::from_secs(60);
        assert_eq!(progress.judge(start + minute / 2, counts(100, 1), None), Verdict::Hold);
        assert_eq!(progress.judge(start + minute, counts(200, 2), None), Verdict::Advance(50));
        assert_eq!(progress.judge(start + minute * 2, counts(400, 4), None), Verdict::Done);
        // Resumed after a restart at the step of its recorded share.
        let resumed = Progress::new(&spec(&[10, 50]), Some(50), start);
        assert_eq!((resumed.step, resumed.percent()), (1, 50));
    }

    #[test]
    fn failures_over_the_bound_abort_at_once_with_enough_connects_or_at_the_steps_end() {
        let start = Instant::now();
        let mut progress = Progress::new(&spec(&[10]), None, start);
        assert_eq!(progress.judge(start, counts(100, 0), None), Verdict::Hold);
        // 2 of 4 failed: not enough to judge before the step's end.
        assert_eq!(progress.judge(start, counts(102, 2), None), Verdict::Hold);
        let verdict = progress.judge(start, counts(105, 6), None);
        assert!(matches!(&verdict, Verdict::Abort(why) if why.contains("6 of 11")), "{verdict:?}");
        let mut few = Progress::new(&spec(&[10]), None, start);
        assert_eq!(few.judge(start, counts(0, 0), None), Verdict::Hold);
        let end = start + Duration::from_secs(60);
        assert!(matches!(few.judge(end, counts(1, 1), None), Verdict::Abort(_)));
        let mut ejected = Progress::new(&spec(&[10]), None, start);
        let trouble = "10.1.0.3:80 was ejected".to_owned();
        let verdict = ejected.judge(start, counts(0, 0), Some(trouble.clone()));
        assert_eq!(verdict, Verdict::Abort(trouble));
    }
}
