//! A fleet of nodes on one repository, seen through Prometheus: what `reconciler fleet`
//! prints (`view`), and what a node of a later wave waits for (`gate`, by the `questions`
//! it asks). Prometheus, which
//! already scrapes every daemon, is the shared view; there is no coordinator of ours.
pub mod gate;
pub mod prometheus;
pub mod questions;
pub mod view;
