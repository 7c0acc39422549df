//! `make demo`: the definitions in examples/policies/ applied to a demo cgroup inside a
//! network namespace of its own, with a real listener at every backend address, and a client
//! in that cgroup reaching the backends through the VIPs.
//!
//!   demo [POLICY_DIR]        (default: examples/policies)
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use reconciler::{
    compile::compile,
    dataplane::{Dataplane, MapState},
    validate::{validate, Input, Policy},
};
use reconciler_tests::Sandbox;

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "examples/policies".into()));
    let mut files = Vec::new();
    collect(&dir, &mut files)?;
    files.sort();
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| Ok((f.display().to_string(), std::fs::read_to_string(f)?)))
        .collect::<Result<_>>()?;
    let inputs: Vec<Input<'_>> = texts.iter().map(|(path, text)| Input { path, text }).collect();
    let services: Vec<_> = match validate(&inputs, &Policy::default()) {
        Ok(located) => located.into_iter().map(|l| l.service).collect(),
        Err(diagnostics) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            anyhow::bail!("invalid definitions");
        }
    };
    let desired = compile(&services, &MapState::default())?;
    println!("Loaded {} service(s) from {}", services.len(), dir.display());

    let mut sandbox = Sandbox::new("demo")?;
    println!("Sandbox: network namespace with lo only, cgroup {}", sandbox.cgroup().display());

    // A listener at every backend address, inside the namespace, named after its service.
    for backend in desired.backends.values() {
        let family_len = if backend.addr.is_ipv4() { 32 } else { 128 };
        let ip = backend.addr.ip().to_string();
        sandbox.run(&["ip", "addr", "add", &format!("{ip}/{family_len}"), "dev", "lo", "nodad"])?;
        let name = desired.names.get(&backend.service_id).map_or("?", String::as_str);
        sandbox.serve_tcp(&backend.addr.to_string(), &format!("{name}@{}", backend.addr))?;
    }

    let mut dataplane = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    println!("\nPlan:");
    for change in dataplane.read_live()?.state.changes_to(&desired) {
        println!("  + {change:?}");
    }
    let report = dataplane.apply(&desired, Some("examples/policies"))?;
    println!(
        "Applied: {} entries changed, {} map writes, generation {}",
        report.changes, report.map_writes, report.generation
    );

    for (frontend, entry) in &desired.services {
        let name = desired.names.get(&entry.id).map_or("?", String::as_str);
        let target = SocketAddr::new(frontend.vip, frontend.port).to_string();
        println!("\n{name}: 60 connects to {frontend} from inside the cgroup");
        let result = sandbox.probe_tcp(&target, 60).context("probing")?;
        let replies: BTreeMap<_, _> = result.replies.iter().collect();
        for (backend, count) in replies {
            println!("  {count:>3} answered by {backend}");
        }
        for (error, count) in &result.errors {
            println!("  {count:>3} failed: {error}");
        }
    }
    println!("\nDone; the sandbox (namespace, cgroup, pins, listeners) is removed on exit.");
    Ok(())
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
