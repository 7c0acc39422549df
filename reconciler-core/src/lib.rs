//! The pure pipeline of reconciler, from a repository to the content the data plane should
//! hold: where definitions come from (`source`, `verify`), how they are read (`load`) and
//! checked (`validate`, against `model`), what they compile to (`compile`, into `state`), and
//! how that differs from what is live (`diff`, shown by `plan`). No BPF here: `reconciler
//! validate` and `plan --against` build from this crate alone on stable Rust.
pub mod blend;
pub mod capacity;
pub mod compile;
pub mod diff;
pub mod failover;
mod ids;
pub mod limits;
pub mod load;
pub mod model;
pub mod node;
pub mod plan;
pub mod private_dir;
pub mod ramp;
pub mod selector;
pub mod source;
pub mod state;
mod syntax;
pub mod validate;
pub mod verify;
