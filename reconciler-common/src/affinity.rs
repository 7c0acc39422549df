//! Indexes of the per-CPU `AFFINITY_EVENTS` counters.

/// A client of a service with affinity got the backend its entry names.
pub const HIT: u32 = 0;
/// A client had no entry, or one older than the timeout: a backend was chosen afresh.
pub const MISS: u32 = 1;
/// An entry named a backend no longer usable (gone from the service, in maintenance,
/// or unhealthy): deleted, and a backend chosen afresh.
pub const DROPPED: u32 = 2;
/// Number of counters.
pub const COUNT: u32 = 3;
