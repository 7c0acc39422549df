//! The largest repository the data plane holds: 65 535 services of 4 backends (262 140
//! backends, both within the maximum capacity), which the YAML node limit once refused with
//! a false reason. `reconciler validate` and `reconciler plan` against that capacity, by the
//! real binary: whether they pass, their time and their peak resident set (`/usr/bin/time`).
use std::{path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};
use reconciler_core::{capacity::MAXIMUM, compile::SERVICE_CAPACITY};
use reconciler_tests::reconciler_path;
use serde_json::{json, Value};

const BACKENDS_PER_SERVICE: usize = 4;

pub fn run(quick: bool) -> Result<Value> {
    let services = if quick { 16_383 } else { SERVICE_CAPACITY as usize };
    let maximum = MAXIMUM.to_string();
    println!("## The largest repository\n");
    println!(
        "{services} services × {BACKENDS_PER_SERVICE} backends in files of 500, by the release \
         binary (`plan` against `--capacity {maximum}`, no data plane installed):\n"
    );
    let dir = tempfile::tempdir()?;
    write_services(dir.path(), services)?;
    let pin = format!("/sys/fs/bpf/reconciler-bench-none-{}", std::process::id());
    let validate = timed(dir.path(), &["validate", "services"])?;
    let plan = ["plan", "--dir", "services", "--pin-path", &pin, "--capacity", &maximum];
    let plan = timed(dir.path(), &plan)?;
    println!("| step | seconds | peak RSS (MiB) |\n|---|---:|---:|");
    for (step, (seconds, mib)) in [("validate", validate), ("plan", plan)] {
        println!("| {step} | {seconds:.1} | {mib:.0} |");
    }
    println!();
    Ok(json!({
        "services": services,
        "backends": services * BACKENDS_PER_SERVICE,
        "validate": {"seconds": validate.0, "peak_rss_mib": validate.1},
        "plan": {"seconds": plan.0, "peak_rss_mib": plan.1},
    }))
}

/// `count` services in `dir/services`, 500 a file (a file holds at most 8 MiB).
fn write_services(dir: &Path, count: usize) -> Result<()> {
    let services = dir.join("services");
    std::fs::create_dir_all(&services)?;
    for file in 0..count.div_ceil(500) {
        let mut text = String::new();
        for i in file * 500..((file + 1) * 500).min(count) {
            let (a, b, c) = (i / 62_500, i / 250 % 250, i % 250 + 1);
            let backends: Vec<String> = (0..BACKENDS_PER_SERVICE)
                .map(|e| format!("{{address: 10.{}.{b}.{c}}}", 1 + a * 4 + e))
                .collect();
            text.push_str(&format!(
                "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec:\n  vip: 10.{}.{b}.{c}\n  ports: [{{port: 80, targetPort: 8080}}]\n  \
                 backends: [{}]\n",
                96 + a,
                backends.join(", ")
            ));
        }
        std::fs::write(services.join(format!("f{file}.yaml")), text)?;
    }
    Ok(())
}

/// Runs the binary with `args` in `dir` under `/usr/bin/time`; its seconds and peak RSS
/// (MiB). Fails unless it succeeds.
fn timed(dir: &Path, args: &[&str]) -> Result<(f64, f64)> {
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(reconciler_path()?)
        .args(args)
        .current_dir(dir)
        .output()
        .context("running /usr/bin/time (installed by `make setup`)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "reconciler {args:?} failed:\n{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    let last = stderr.lines().last().context("no figures from /usr/bin/time")?;
    let mut figures = last.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(seconds)), Some(Ok(kib))) = (figures.next(), figures.next()) else {
        anyhow::bail!("unreadable figures from /usr/bin/time: {last}");
    };
    Ok((seconds, kib / 1024.0))
}
