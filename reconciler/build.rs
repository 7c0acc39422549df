//! Builds the BPF object from `reconciler-ebpf` (nightly, bpfel-unknown-none, bpf-linker) into
//! OUT_DIR, where `dataplane` embeds it with `include_bytes_aligned!`.
use std::path::Path;

use anyhow::Context as _;
use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../reconciler-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to reconciler-ebpf")?;
    println!("cargo:rerun-if-changed=../reconciler-common/src");
    // aya-build relays every line of the nested cargo as a build-script warning; without
    // its "Compiling ..." lines only real warnings and errors are left.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    // The BPF object never takes the host build's flags (cargo fuzz's sanitizers would break it).
    for flags in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"] {
        std::env::remove_var(flags);
    }
    build_ebpf(
        [Package { name: "reconciler-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the BPF programs; run `make setup` first (nightly, rust-src, bpf-linker)")
}
