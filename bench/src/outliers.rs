//! Outlier detection against real failures: a real daemon, four backends of one service with
//! `outlierDetection` at its defaults (5 failures in a row, looked at every 10 s), clients
//! connecting without pause; one backend starts failing, by resets (its listener gone) or by
//! silence (its SYNs dropped by nftables; connects time out after 3 s, `tcp_syn_retries=1`).
//! Measured: how long from the first failure to the ejection and to its apply, the failed
//! connects clients saw meanwhile, and those after the apply (none expected). The failure
//! starts at a random point of the daemon's 10 s interval (after its first look), as it would.
use std::time::{Duration, Instant};

use anyhow::Result;
use reconciler::{
    daemon::{http::request, status::DaemonStatus},
    dataplane::Dataplane,
};
use reconciler_core::state::BackendState;
use reconciler_tests::{wait_for_every, Sandbox};
use serde_json::{json, Value};

use crate::daemon::{BenchDaemon, Extra};

const VIP: &str = "10.96.0.10:80";
const FAILING: &str = "127.0.0.12:8080";
/// Clients connecting at once.
const CLIENTS: usize = 8;

/// Rounds of each kind: where in the 10 s interval the failure starts is chance.
const ROUNDS: usize = 3;

pub fn run(quick: bool) -> Result<Value> {
    println!("## Outlier detection\n");
    println!(
        "A real daemon; one service of four backends with `outlierDetection` at its defaults \
         (5 failed connects in a row, looked at every 10 s); {CLIENTS} clients connecting \
         without pause through the VIP (a failed connect is retried at once). At 0 one backend \
         starts failing.\n"
    );
    println!(
        "| failure | ejected after (s) | applied after (s) | failed connects until applied | \
         connects/s meanwhile | failed of 200 after |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut rows = Vec::new();
    for silent in [false, true] {
        for _ in 0..if quick { 1 } else { ROUNDS } {
            let row = measure(silent)?;
            println!(
                "| {} | {:.1} | {:.1} | {} | {:.0} | {} |",
                if silent { "SYNs dropped (3 s timeouts)" } else { "reset (no listener)" },
                row["ejected_s"].as_f64().unwrap_or(f64::NAN),
                row["applied_s"].as_f64().unwrap_or(f64::NAN),
                row["failed_until_applied"],
                row["connects_per_s"].as_f64().unwrap_or(f64::NAN),
                row["failed_after"],
            );
            rows.push(row);
        }
    }
    println!();
    Ok(json!({ "rows": rows }))
}

fn definitions() -> String {
    "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
     vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
     outlierDetection: {}\n  backends: [{address: 127.0.0.11}, {address: 127.0.0.12}, \
     {address: 127.0.0.13}, {address: 127.0.0.14}]\n"
        .to_owned()
}

fn measure(silent: bool) -> Result<Value> {
    let mut sandbox = Sandbox::new("bench-outliers")?;
    for i in 11..=14 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    sandbox.run(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"])?;
    let listen = "127.0.0.1:9469";
    let daemon = BenchDaemon::start(&sandbox, &[definitions()], listen, Extra::default())?;
    wait_for_every(Duration::from_millis(50), "the daemon", Duration::from_secs(30), || {
        let ready = sandbox.in_netns(move || Ok(request(listen, "GET", "/readyz")?.0));
        matches!(ready, Ok(200)).then_some(())
    })?;
    // The daemon's first look comes a second after it is ready; then a random point of its
    // interval.
    std::thread::sleep(Duration::from_millis(1500 + fastrand::u64(0..10_000)));
    let stop = tempfile::tempdir()?;
    let stop_file = stop.path().join("stop");
    let clients = (0..CLIENTS)
        .map(|_| sandbox.spawn_probe_until(&stop_file, VIP))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    if silent {
        sandbox.run(&[
            "nft",
            "add table inet bench; add chain inet bench out { type filter hook output priority \
             0; }; add rule inet bench out ip daddr 127.0.0.12 tcp dport 8080 tcp flags syn drop",
        ])?;
    } else {
        sandbox.stop_server(FAILING)?;
    }
    let waited =
        wait_for_every(Duration::from_millis(20), "the ejection", Duration::from_secs(60), || {
            let status: DaemonStatus = sandbox
                .in_netns(move || Ok(serde_json::from_str(&request(listen, "GET", "/status")?.1)?))
                .ok()?;
            status.ejections.iter().any(|e| e.ejected).then(|| started.elapsed())
        });
    let Ok(ejected) = waited else {
        std::fs::write(&stop_file, "")?;
        anyhow::bail!("no ejection within 60 s; the daemon's log: {}", daemon.stop());
    };
    let applied =
        wait_for_every(Duration::from_millis(20), "the apply", Duration::from_secs(30), || {
            let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
            let failing = live.backends.values().find(|b| b.addr.to_string() == FAILING)?;
            (failing.state == BackendState::Unhealthy).then(|| started.elapsed())
        })?;
    std::fs::write(&stop_file, "")?;
    let (mut failed, mut connects) = (0, 0);
    for client in clients {
        let seen = client.wait()?;
        failed += seen.errors.values().sum::<u64>();
        connects += seen.total();
    }
    let connects_per_s = connects as f64 / started.elapsed().as_secs_f64();
    let after = sandbox.probe_tcp(VIP, 200)?.errors.values().sum::<u64>();
    drop(daemon);
    Ok(json!({
        "silent": silent,
        "ejected_s": ejected.as_secs_f64(),
        "applied_s": applied.as_secs_f64(),
        "failed_until_applied": failed,
        "connects_per_s": connects_per_s,
        "failed_after": after,
    }))
}
