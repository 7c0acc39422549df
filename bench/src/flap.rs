//! Damping: 3 000 services share 4 backends whose listeners go away and come back every
//! second, each at its own phase, checked every second with thresholds 1/1 (every probe a
//! verdict), with the hold-down and without it (`ejectionIntervals` 5, the default, and 0),
//! in the same run. Measured per 30 s from when the daemon is ready: the transitions the
//! checks saw, the health applies, their map writes and the daemon's CPU.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::http::request;
use reconciler_tests::{Running, Sandbox};
use serde_json::{json, Value};

use crate::daemon::{cpu_seconds, metrics, BenchDaemon, Extra, Metrics};

/// The shared backends; each flaps, with its own phase.
const BACKENDS: [&str; 4] = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
/// Measured in windows of 30 s, from when the daemon is ready.
const WINDOW: Duration = Duration::from_secs(30);
const WINDOWS: usize = 2;

pub fn run(quick: bool) -> Result<Value> {
    let services = if quick { 500 } else { 3_000 };
    println!("## Damping: backends that flap\n");
    println!(
        "{services} services sharing 4 backends whose listeners close and reopen every second, \
         each at its own phase (120 changes in 30 s); TCP checks every second, thresholds 1/1; \
         per 30 s from when the daemon is ready; with the hold-down (`ejectionIntervals: 5`, \
         the default) and without (0), transitions within a second batched either way.\n"
    );
    println!(
        "| hold-down | seconds | transitions seen | health applies | map writes | daemon CPU \
         (s) |\n|---|---|---:|---:|---:|---:|"
    );
    let mut all = Vec::new();
    for ejection_intervals in [5, 0] {
        for row in measure(services, ejection_intervals)? {
            let figure = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {}-{} | {:.0} | {:.0} | {:.0} | {:.1} |",
                if ejection_intervals > 0 { "5 intervals" } else { "none" },
                row["from_s"],
                row["to_s"],
                figure("transitions"),
                figure("applies"),
                figure("map_writes"),
                figure("daemon_cpu_s"),
            );
            all.push(row);
        }
    }
    println!();
    Ok(json!({ "services": services, "rows": all }))
}

fn definitions(services: usize, ejection_intervals: u32) -> String {
    let backends: Vec<String> = BACKENDS.iter().map(|b| format!("{{address: {b}}}")).collect();
    let backends = backends.join(", ");
    (0..services)
        .map(|s| {
            format!(
                "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{s}}}\n\
                 spec:\n  vip: 10.96.{}.{}\n  ports: [{{port: 80, targetPort: 8080}}]\n  \
                 healthCheck: {{protocol: tcp, intervalSeconds: 1, healthyThreshold: 1, \
                 unhealthyThreshold: 1, ejectionIntervals: {ejection_intervals}}}\n  \
                 backends: [{backends}]\n---\n",
                s / 250,
                s % 250 + 1,
            )
        })
        .collect()
}

/// Listens on each backend for a second, then not for a second, backend `i` a quarter of
/// the period after backend `i - 1` (a load, not a test: it keeps its own time).
const FLAPPER: &str = r#"
import socket, sys, time
addrs = sys.argv[1:]
start = time.monotonic()
open_ = {}
while True:
    now = time.monotonic() - start
    for i, a in enumerate(addrs):
        up = int((now + i * 0.5) // 1.0) % 2 == 0
        if up and a not in open_:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((a, 8080))
            s.listen(1024)
            open_[a] = s
        elif not up and a in open_:
            open_.pop(a).close()
    time.sleep(0.01)
"#;

fn measure(services: usize, ejection_intervals: u32) -> Result<Vec<Value>> {
    let sandbox = Sandbox::new("bench-flap")?;
    let _flapper =
        Running(sandbox.command_in_netns("python3").arg("-c").arg(FLAPPER).args(BACKENDS).spawn()?);
    let listen = "127.0.0.1:9470";
    let extra = Extra { top: "metrics: {perBackend: false}\n", ..Extra::default() };
    let daemon =
        BenchDaemon::start(&sandbox, &[definitions(services, ejection_intervals)], listen, extra)?;
    let pid = daemon.pid();
    let figures = sandbox.in_netns(move || each_window(listen, pid));
    let log = daemon.stop();
    let figures = figures.with_context(|| format!("daemon log: {log}"))?;
    let rows: Vec<Value> = figures
        .windows(2)
        .enumerate()
        .map(|(index, pair)| {
            let delta = |name: &str| {
                pair[1].get(name).copied().unwrap_or(0.0)
                    - pair[0].get(name).copied().unwrap_or(0.0)
            };
            json!({
                "ejection_intervals": ejection_intervals,
                "from_s": index as u64 * WINDOW.as_secs(),
                "to_s": (index as u64 + 1) * WINDOW.as_secs(),
                "transitions": delta("reconciler_backend_health_transitions_total"),
                "applies": delta("reconciler_reconcile_total{result=\"health_applied\"}"),
                "map_writes": delta("reconciler_map_writes_total"),
                "daemon_cpu_s": delta("cpu_s"),
            })
        })
        .collect();
    ensure!(rows.iter().any(|r| r["transitions"].as_f64() > Some(0.0)), "nothing flapped: {log}");
    Ok(rows)
}

/// Once the daemon (`pid`) at `listen` is ready: its metrics and CPU (`cpu_s`) then and at
/// the end of each window.
fn each_window(listen: &str, pid: u32) -> Result<Vec<Metrics>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(request(listen, "GET", "/readyz"), Ok((200, _))) {
        ensure!(Instant::now() < deadline, "not ready in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let figures = || -> Result<Metrics> {
        let mut figures = metrics(listen)?;
        figures.insert("cpu_s".into(), cpu_seconds(pid)?);
        Ok(figures)
    };
    let mut all = vec![figures()?];
    for _ in 0..WINDOWS {
        // The window measured, not a wait for a condition.
        std::thread::sleep(WINDOW);
        all.push(figures()?);
    }
    Ok(all)
}
