//! reconciler: keeps an eBPF socket-level load balancer in step with service definitions.
//!
//! The pure steps (source, load, validate, compile, diff, plan) are `reconciler-core`'s;
//! this crate adds the session that runs them in order (`pipeline`), what touches BPF
//! (`dataplane`) and the daemon. Each type has one path: core types are imported from
//! `reconciler_core`, never through this crate.

pub mod clock;
pub mod memo;
pub mod pipeline;

#[cfg(feature = "dataplane")]
pub mod counters;
#[cfg(feature = "dataplane")]
pub mod daemon;
#[cfg(feature = "dataplane")]
pub mod dataplane;
#[cfg(feature = "dataplane")]
pub mod fleet;
