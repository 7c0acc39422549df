//! reconciler: keeps an eBPF socket-level load balancer in step with service definitions.
//!
//! The pure pipeline (source, validation, compile, plan) is `reconciler-core`, re-exported
//! here; this crate adds what touches BPF (`dataplane`) and what runs it (`apply`, `daemon`).
pub use reconciler_core::{
    compile, diff, limits, load, model, node, plan, source, state, validate, verify,
};

pub mod memo;
pub mod pipeline;
pub mod time;

#[cfg(feature = "dataplane")]
pub mod apply;
#[cfg(feature = "dataplane")]
pub mod counters;
#[cfg(feature = "dataplane")]
pub mod daemon;
#[cfg(feature = "dataplane")]
pub mod dataplane;
#[cfg(feature = "dataplane")]
pub mod metrics;
