//! reconciler: keeps an eBPF socket-level load balancer in step with service definitions.
//!
//! One module per step of the pipeline; `dataplane` is the only one that touches BPF.
pub mod apply;
pub mod compile;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod limits;
pub mod memo;
pub mod metrics;
pub mod model;
pub mod node;
pub mod plan;
pub mod source;
pub mod time;
pub mod validate;
pub mod verify;
pub mod yaml;
