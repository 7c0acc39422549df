//! What the `flows` sock_ops program records of the TCP connections the data plane
//! translated: per backend (`BACKEND_FLOWS`), and the handshake times of all of them
//! (`HANDSHAKES`, a histogram).

/// Value of the `BACKEND_FLOWS` array, indexed by stable backend ID (host byte order), added
/// to atomically. Zeroed, like `BACKEND_TOTALS`, before a new backend takes an ID; a flow
/// that ends after its backend left the live set is not counted (its ID may name another).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFlows {
    /// Connections established (the handshake completed).
    pub established: u64,
    /// Connections that failed before they were established: reset by the backend, given up
    /// after the SYN's retries, or given up by the application (a connect timeout).
    pub failed: u64,
    /// Established connections closed since.
    pub closed: u64,
    /// The handshake's time (the SYN's round trip, as the kernel measured it), in
    /// nanoseconds, summed over `established`.
    pub handshake_ns: u64,
    /// Bytes the backend acknowledged (sent to it), summed over `closed`.
    pub bytes_sent: u64,
    /// Bytes received from the backend, summed over `closed`.
    pub bytes_received: u64,
    /// The smoothed round-trip time at close, in microseconds, summed over `closed`.
    pub rtt_us: u64,
    /// Connects that failed since the last one established (a streak, for outlier
    /// detection): set to 0 by an established connection, not added to atomically with it,
    /// so two CPUs at once may lose one failure of a streak that ends anyway.
    pub consecutive_failures: u64,
}

/// Upper bounds of the handshake-time buckets, in microseconds; a last bucket takes the rest.
pub const HANDSHAKE_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Entries of the per-CPU `HANDSHAKES` array: a count per bucket (the bounds, then the rest),
/// then the sum of all handshake times in nanoseconds.
pub const HANDSHAKE_SLOTS: u32 = HANDSHAKE_BOUNDS_US.len() as u32 + 2;

/// The `HANDSHAKES` entry of the sum.
pub const HANDSHAKE_SUM: u32 = HANDSHAKE_SLOTS - 1;
