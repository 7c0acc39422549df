//! Empty on purpose: the programs are in `main.rs`, built for `bpfel-unknown-none` by
//! `reconciler/build.rs`. This target lets the user-space crate depend on this one.
#![no_std]
