//! Builds the BPF object from `reconciler-ebpf` (nightly, bpfel-unknown-none, bpf-linker) into
//! OUT_DIR, where `dataplane` embeds it with `include_bytes_aligned!`; and names this build
//! by the content of its sources (`RECONCILER_BUILD_ID`), which keys the incremental path's
//! caches: a build whose validation or compile rules differ never reads another's; and the
//! git commit it is built from (`RECONCILER_COMMIT`), which `--version` shows.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../reconciler-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to reconciler-ebpf")?;
    println!("cargo:rerun-if-changed=../reconciler-common/src");
    println!("cargo:rerun-if-changed=../reconciler-core/src");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../schema");
    let manifest = Path::new(&manifest_dir);
    let build_id = source_digest(&[
        manifest.join("src"),
        manifest.join("../reconciler-common/src"),
        manifest.join("../reconciler-core/src"),
        manifest.join("../schema"),
        manifest.join("../Cargo.lock"),
    ])?;
    println!("cargo:rustc-env=RECONCILER_BUILD_ID={build_id}");
    println!("cargo:rustc-env=RECONCILER_COMMIT={}", commit(&manifest.join("..")));
    build_bpf_object(ebpf_dir)
}

/// The commit of the checkout at `root` (12 hex digits, `-dirty` with uncommitted changes to
/// tracked files), or `unknown` outside one (a source package).
fn commit(root: &Path) -> String {
    // A new commit or checkout moves HEAD's log; watched only where it exists (a path that
    // does not would run this script at every build).
    for watched in [".git/HEAD", ".git/logs/HEAD"] {
        if root.join(watched).exists() {
            println!("cargo:rerun-if-changed=../{watched}");
        }
    }
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git").arg("-C").arg(root).args(args).output();
        output.ok().filter(|o| o.status.success())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let dirty = git(&["diff", "--quiet", "HEAD"]).is_none();
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// A validate-only build (`--no-default-features`) has no data plane: no BPF object, no
/// nightly, no bpf-linker.
#[cfg(not(feature = "dataplane"))]
fn build_bpf_object(_: &str) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(feature = "dataplane")]
fn build_bpf_object(ebpf_dir: &str) -> anyhow::Result<()> {
    use aya_build::{build_ebpf, Package, Toolchain};
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

/// SHA-256 over the contents of every file under `roots` and their paths relative to their
/// root, in sorted order, as 16 hex digits (enough to tell builds apart; no security boundary).
fn source_digest(roots: &[PathBuf]) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for root in roots {
        let mut files = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(path) = pending.pop() {
            if path.is_dir() {
                let entries =
                    std::fs::read_dir(&path).with_context(|| path.display().to_string())?;
                for entry in entries {
                    pending.push(entry?.path());
                }
            } else {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            let relative = file.strip_prefix(root).unwrap_or(&file);
            hasher.update(relative.to_string_lossy().as_bytes());
            hasher.update(std::fs::read(&file).with_context(|| file.display().to_string())?);
        }
    }
    Ok(hasher.finalize().iter().take(8).map(|byte| format!("{byte:02x}")).collect())
}
