//! Health checks at scale: a real daemon, in a network namespace of its own, probing
//! thousands of targets that refuse at once (nothing listens) or never answer (their SYNs
//! go nowhere: a route to `lo` for an address nobody holds). Measured: how long until every
//! target is known down, against the bound (`unhealthyThreshold` ×
//! `intervalSeconds` + the probe timeout for the silent ones + 2 s), `/healthz` latency
//! meanwhile (polled every 50 ms), and the daemon's CPU.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::{http::request, status::DaemonStatus};
use reconciler_tests::Sandbox;
use serde_json::{json, Value};

use crate::daemon::{cpu_seconds, BenchDaemon, Extra};

/// The checks' settings: the defaults (5 s, 1 s, three failures).
const INTERVAL_S: f64 = 5.0;
const TIMEOUT_S: f64 = 1.0;
const UNHEALTHY: f64 = 3.0;

/// One case: `targets` backends (10 per service), refusing or silent.
struct Case {
    targets: usize,
    silent: bool,
}

pub fn run(quick: bool) -> Result<Value> {
    let cases = if quick {
        [Case { targets: 2_000, silent: false }, Case { targets: 500, silent: true }]
    } else {
        [Case { targets: 10_000, silent: false }, Case { targets: 2_000, silent: true }]
    };
    println!("## Health checks at scale\n");
    println!(
        "A real daemon probing targets that refuse (nothing listens) or stay silent (SYNs \
         dropped), default checks ({INTERVAL_S} s interval, {TIMEOUT_S} s timeout, {UNHEALTHY} \
         failures); every target's service has 10 backends and no fallback.\n"
    );
    println!(
        "| targets | kind | all known down after (s) | bound (s) | /healthz max / p99 (ms) | \
         daemon CPU (s) |\n|---:|---|---:|---:|---:|---:|"
    );
    let mut rows = Vec::new();
    for case in cases {
        let row = measure(&case)?;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
            case.targets,
            if case.silent { "silent" } else { "refusing" },
            row["known_s"].as_f64().unwrap_or(f64::NAN),
            row["bound_s"].as_f64().unwrap_or(f64::NAN),
            row["healthz_max_ms"].as_f64().unwrap_or(f64::NAN),
            row["healthz_p99_ms"].as_f64().unwrap_or(f64::NAN),
            row["daemon_cpu_s"].as_f64().unwrap_or(f64::NAN),
        );
        rows.push(row);
    }
    println!();
    Ok(json!({ "rows": rows }))
}

/// The definitions: `targets` backends, 10 per service, at 127.x (refusing) or 10.77.x
/// (silent).
fn definitions(case: &Case) -> String {
    let mut text = String::new();
    for s in 0..case.targets.div_ceil(10) {
        let backends: Vec<String> = (0..10)
            .map(|b| {
                let n = s * 10 + b;
                let (c, d) = (n / 250 % 250, n % 250 + 1);
                let a =
                    if case.silent { format!("10.77.{c}.{d}") } else { format!("127.1.{c}.{d}") };
                format!("{{address: {a}}}")
            })
            .collect();
        text.push_str(&format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{s}}}\n\
             spec:\n  vip: 10.96.{}.{}\n  ports: [{{port: 80, targetPort: 8080}}]\n  \
             healthCheck: {{protocol: tcp}}\n  backends: [{}]\n---\n",
            s / 250,
            s % 250 + 1,
            backends.join(", ")
        ));
    }
    text
}

fn measure(case: &Case) -> Result<Value> {
    let sandbox = Sandbox::new("bench-health")?;
    // Silent targets: routed to `lo`, where no address answers them.
    sandbox.run(&["ip", "route", "add", "10.77.0.0/16", "dev", "lo"])?;
    let listen = "127.0.0.1:9469";
    let daemon = BenchDaemon::start(&sandbox, &[definitions(case)], listen, Extra::default())?;
    let pid = daemon.pid();
    let bound = UNHEALTHY * INTERVAL_S + if case.silent { TIMEOUT_S } else { 0.0 } + 2.0;
    let targets = case.targets;
    let (ready_at, known_s, latencies) = sandbox.in_netns(move || watch(listen, targets))?;
    let cpu = cpu_seconds(pid)?;
    let log = daemon.stop();
    let known_s = known_s.with_context(|| format!("not every target known in 60 s: {log}"))?;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0.0);
    ensure!(ready_at > 0.0, "the daemon was never ready");
    Ok(json!({
        "targets": case.targets,
        "silent": case.silent,
        "known_s": known_s,
        "bound_s": bound,
        "healthz_max_ms": sorted.last().copied().unwrap_or(0.0),
        "healthz_p99_ms": p99,
        "daemon_cpu_s": cpu,
    }))
}

/// From the daemon's start: when it was ready (s), how long after that every one of
/// `targets` was known down (s), and each `/healthz` latency (ms) meanwhile.
fn watch(listen: &str, targets: usize) -> Result<(f64, Option<f64>, Vec<f64>)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(90);
    let mut ready_at = None;
    let mut latencies = Vec::new();
    let mut last_status = Instant::now();
    while Instant::now() < deadline {
        let asked = Instant::now();
        let healthz = request(listen, "GET", "/healthz");
        if ready_at.is_some() {
            latencies.push(asked.elapsed().as_secs_f64() * 1e3);
        }
        if ready_at.is_none() && matches!(request(listen, "GET", "/readyz"), Ok((200, _))) {
            ready_at = Some(Instant::now());
        }
        if let (Some(ready), true, Ok(_)) =
            (ready_at, last_status.elapsed() >= Duration::from_millis(250), healthz)
        {
            last_status = Instant::now();
            let (_, body) = request(listen, "GET", "/status")?;
            let status: DaemonStatus = serde_json::from_str(&body)?;
            let down = status.health.iter().filter(|h| !h.up).count();
            if down >= targets {
                let since = (ready - start).as_secs_f64();
                return Ok((since, Some(ready.elapsed().as_secs_f64()), latencies));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((ready_at.map_or(0.0, |r| (r - start).as_secs_f64()), None, latencies))
}
