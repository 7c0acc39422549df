//! The wall clock, for people and machines: time since the Unix epoch, and RFC 3339 in UTC
//! (humantime, which also parses the daemon's durations).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero on a clock set before it (a timestamp of 0 reads as
/// "never", not as an error to handle everywhere).
pub fn now_unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Now, as `2026-11-22T03:15:54Z`.
pub fn now_rfc3339() -> String {
    rfc3339_utc(now_unix().as_secs())
}

/// `secs` since the Unix epoch as `2026-11-22T03:15:54Z`.
pub fn rfc3339_utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `CLOCK_MONOTONIC` now, in ns: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns_now() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// A `CLOCK_MONOTONIC` instant (`bpf_ktime_get_ns()`, in ns) as wall-clock time with
/// milliseconds, by the clocks' offset now.
pub fn monotonic_to_rfc3339(monotonic_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_ns_now().saturating_sub(monotonic_ns));
    let at = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_317_394), "2026-11-22T03:16:34Z");
    }

    #[test]
    fn now_is_the_system_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let now = now_unix();
        assert!(now >= before && now - before < Duration::from_secs(60), "{now:?}");
        let text = now_rfc3339();
        assert!(text.ends_with('Z') && text.len() == "2026-11-22T03:16:34Z".len(), "{text}");
    }

    #[test]
    fn a_monotonic_instant_of_now_is_now() {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        let shown = monotonic_to_rfc3339(ns);
        let wall = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        // Same second (or the next one, at a boundary): compare up to the minutes.
        assert_eq!(shown[..16], wall[..16], "{shown} against {wall}");
        assert!(shown.ends_with('Z') && shown.len() == "2026-11-22T03:16:34.123Z".len());
    }
}
