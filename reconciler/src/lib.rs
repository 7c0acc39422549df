//! reconciler: keeps an eBPF socket-level load balancer in step with service definitions.
//!
//! The pure pipeline (source, validation, compile, plan) is `reconciler-core`, re-exported
//! here; this crate adds what touches BPF (`dataplane`) and what runs it (`apply`, `daemon`).
pub use reconciler_core::{compile, limits, model, node, plan, source, validate, verify, yaml};

pub mod apply;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod memo;
pub mod metrics;
pub mod time;
