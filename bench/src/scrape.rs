//! Metrics at scale: a daemon holding 16 383 services of 16 backends each (the default
//! service capacity, full; 262 128 backends, every one a series), scraped by four clients in
//! a loop, as Prometheus scrapes (OpenMetrics, gzip) and then as `curl` does (text). Measured
//! for each: a page's size and time (rendered, then cached), `/healthz` latency meanwhile
//! (issue 21's bound: 50 ms) and the daemon's resident set against its idle figure (bound:
//! twice).
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::http::request;
use reconciler_tests::Sandbox;
use serde_json::{json, Value};

use crate::daemon::{rss_mib, BenchDaemon, Extra};

const BACKENDS_PER_SERVICE: usize = 16;
const SCRAPERS: usize = 4;
const WINDOW: Duration = Duration::from_secs(20);

pub fn run(quick: bool) -> Result<Value> {
    let services = if quick { 2_000 } else { 16_383 };
    println!("## Metrics at scale\n");
    println!(
        "A daemon holding {services} services × {BACKENDS_PER_SERVICE} backends (every \
         backend a series), {SCRAPERS} clients scraping `/metrics` in a loop for {} s while \
         `/healthz` is asked every 50 ms. Bounds: `/healthz` 50 ms, resident set twice the \
         idle one.\n",
        WINDOW.as_secs()
    );
    let result = measure(services)?;
    println!(
        "| scraped as | page (MB) | rendered / cached (ms) | scrapes | /healthz max / p99 (ms) \
         | RSS idle / max (MiB) |\n|---|---:|---:|---:|---:|---:|"
    );
    let idle = result["rss_idle_mib"].as_f64().unwrap_or(f64::NAN);
    for row in result["rows"].as_array().into_iter().flatten() {
        let figure = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.1} | {:.0} / {:.0} | {} | {:.1} / {:.1} | {idle:.0} / {:.0} |",
            row["as"].as_str().unwrap_or(""),
            figure("page_mb"),
            figure("rendered_ms"),
            figure("cached_ms"),
            row["scrapes"],
            figure("healthz_max_ms"),
            figure("healthz_p99_ms"),
            figure("rss_max_mib"),
        );
    }
    println!();
    Ok(result)
}

fn definitions(services: usize) -> Vec<String> {
    let service = |s: usize| {
        let backends: Vec<String> = (0..BACKENDS_PER_SERVICE)
            .map(|b| format!("{{address: 10.{}.{}.{}}}", b + 1, s / 250, s % 250 + 1))
            .collect();
        format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{s}}}\n\
                 spec:\n  vip: 10.96.{}.{}\n  ports: [{{port: 80, targetPort: 8080}}]\n  \
                 backends: [{}]\n---\n",
            s / 250,
            s % 250 + 1,
            backends.join(", ")
        )
    };
    (0..services)
        .step_by(2_000)
        .map(|first| (first..services.min(first + 2_000)).map(service).collect())
        .collect()
}

fn measure(services: usize) -> Result<Value> {
    let sandbox = Sandbox::new("bench-scrape")?;
    let listen = "127.0.0.1:9471";
    let backends = services * BACKENDS_PER_SERVICE;
    // IDs run from 1: one more than the backends.
    let capacity =
        format!("  capacity: {{services: 16384, backends: {}, slots: {backends}}}\n", backends + 1);
    let extra = Extra { dataplane: &capacity, ..Extra::default() };
    let daemon = BenchDaemon::start(&sandbox, &definitions(services), listen, extra)?;
    let pid = daemon.pid();
    let row = sandbox.in_netns(move || scraped(listen, pid));
    let log = daemon.stop();
    let mut result = row.with_context(|| format!("daemon log: {log}"))?;
    result["services"] = json!(services);
    result["backends"] = json!(backends);
    Ok(result)
}

/// Once the daemon (`pid`) at `listen` is ready: its idle resident set, then a window of
/// scrapes as Prometheus makes them and one as `curl` does.
fn scraped(listen: &'static str, pid: u32) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !matches!(request(listen, "GET", "/readyz"), Ok((200, _))) {
        ensure!(Instant::now() < deadline, "not ready in 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_idle = rss_mib(pid)?;
    let rows = [true, false].map(|as_prometheus| window(listen, pid, as_prometheus, rss_idle));
    let [prometheus, curl] = rows;
    Ok(json!({ "rss_idle_mib": rss_idle, "rows": [prometheus?, curl?] }))
}

/// One scrape rendered and one cached, then four scrapers for the window, all as Prometheus
/// asks if `as_prometheus`, else as `curl`; `/healthz` asked and the resident set read every
/// 50 ms meanwhile.
fn window(listen: &'static str, pid: u32, as_prometheus: bool, rss_idle: f64) -> Result<Value> {
    let timed = || -> Result<(f64, usize)> {
        let asked = Instant::now();
        let size = scrape(listen, as_prometheus)?;
        Ok((asked.elapsed().as_secs_f64() * 1e3, size))
    };
    let (rendered_ms, size) = timed()?;
    let (cached_ms, _) = timed()?;
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut scrapes = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    if scrape(listen, as_prometheus).is_ok() {
                        scrapes += 1;
                    }
                }
                scrapes
            })
        })
        .collect();
    let (mut latencies, mut rss_max) = (Vec::new(), rss_idle);
    let end = Instant::now() + WINDOW;
    while Instant::now() < end {
        let asked = Instant::now();
        let healthz = request(listen, "GET", "/healthz");
        latencies.push(asked.elapsed().as_secs_f64() * 1e3);
        ensure!(matches!(healthz, Ok((200, _))), "/healthz: {healthz:?}");
        rss_max = rss_max.max(rss_mib(pid)?);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes: u64 = scrapers.into_iter().filter_map(|s| s.join().ok()).sum();
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "as": if as_prometheus { "Prometheus (OpenMetrics, gzip)" } else { "curl (text)" },
        "page_mb": size as f64 / 1e6,
        "rendered_ms": rendered_ms,
        "cached_ms": cached_ms,
        "scrapes": scrapes,
        "healthz_max_ms": latencies.last().copied().unwrap_or(0.0),
        "healthz_p99_ms": latencies.get(latencies.len() * 99 / 100).copied().unwrap_or(0.0),
        "rss_max_mib": rss_max,
    }))
}

/// One scrape of `/metrics`, as Prometheus makes it (OpenMetrics, gzip) if `as_prometheus`,
/// else as `curl` does; the size of the answer. (The daemon's own client stops at 10 MiB.)
fn scrape(listen: &str, as_prometheus: bool) -> Result<usize> {
    let mut stream = TcpStream::connect(listen)?;
    let headers = if as_prometheus {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
         Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: bench\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    ensure!(response.starts_with(b"HTTP/1.1 200"), "/metrics did not answer 200");
    Ok(response.len())
}
