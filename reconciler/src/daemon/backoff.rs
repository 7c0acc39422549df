//! The daemon's waits, each drawn at random so that a fleet of nodes (or one node's many
//! health checks) does not act in lockstep: between runs the interval ±10%; after transient
//! failures a capped exponential backoff with "equal jitter".
use std::time::Duration;

/// The longest the first retry waits; each further failure in a row doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// `interval` ± 10%, drawn anew each time.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// The wait after `failures` transient failures in a row (1 for the first): uniformly
/// between half and all of `min(1 s × 2^(failures − 1), interval)`. Never longer than the
/// interval, and never shorter than half the step, so a node does not retry in a tight loop
/// while the spread still keeps a fleet that lost its git server from retrying in step.
pub fn retry(failures: u32, interval: Duration) -> Duration {
    ceiling(failures, interval).mul_f64(0.5 + 0.5 * fastrand::f64())
}

/// `min(1 s × 2^(failures − 1), interval)`, without overflow however many failures.
fn ceiling(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(1);
    FIRST_RETRY.saturating_mul(2u32.saturating_pow(doublings)).min(interval)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DRAWS: usize = 10_000;

    #[test]
    fn the_jitter_stays_within_ten_percent_and_varies() {
        let interval = Duration::from_secs(30);
        let draws: BTreeSet<Duration> = (0..DRAWS).map(|_| jittered(interval)).collect();
        let (low, high) = (interval.mul_f64(0.9), interval.mul_f64(1.1));
        assert!(draws.iter().all(|d| (low..=high).contains(d)), "{draws:?}");
        assert!(draws.len() > DRAWS / 2, "only {} distinct waits", draws.len());
        // Both halves are drawn: the spread is around the interval, not to one side.
        assert!(draws.first() < Some(&interval) && draws.last() > Some(&interval));
    }

    #[test]
    fn the_backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(30);
        let ceilings: Vec<u64> = (1..=7).map(|n| ceiling(n, interval).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(ceiling(u32::MAX, interval), interval);
        assert_eq!(ceiling(1, Duration::from_millis(300)), Duration::from_millis(300));
    }

    #[test]
    fn each_retry_is_drawn_from_the_upper_half_of_its_step() {
        let interval = Duration::from_secs(30);
        for failures in [1, 3, 6, 40] {
            let step = ceiling(failures, interval);
            let draws: BTreeSet<Duration> = (0..DRAWS).map(|_| retry(failures, interval)).collect();
            assert!(draws.iter().all(|d| *d >= step / 2 && *d <= step), "{failures}: {draws:?}");
            assert!(draws.iter().all(|d| *d <= interval));
            assert!(draws.len() > DRAWS / 2, "{failures}: only {} distinct waits", draws.len());
        }
    }
}
