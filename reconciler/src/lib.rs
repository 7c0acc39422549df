//! reconciler: keeps an eBPF socket-level load balancer in step with service definitions.
//!
//! The pure pipeline (source, validation, compile, plan) is `reconciler-core`, re-exported
//! here; this crate adds the session that runs it (`pipeline`), what touches BPF
//! (`dataplane`) and the daemon.
pub use reconciler_core::{
    compile, diff, limits, load, model, node, plan, source, state, validate, verify,
};

pub mod clock;
pub mod memo;
pub mod pipeline;

#[cfg(feature = "dataplane")]
pub mod counters;
#[cfg(feature = "dataplane")]
pub mod daemon;
#[cfg(feature = "dataplane")]
pub mod dataplane;
