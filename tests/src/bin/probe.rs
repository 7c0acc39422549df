//! The client side of the real-kernel tests; the sandbox runs it inside its cgroup and
//! network namespace.
//!
//!   probe tcp ADDR COUNT            COUNT connects to ADDR; prints `reply NAME N` per backend
//!                                   name read back and `error ERRNO N` per failure kind
//!   probe tcp-until FILE ADDR       the same, connecting until FILE exists
//!   probe serve ADDR NAME           a TCP server answering every connection with NAME
//!   probe load ADDR[,ADDR...] THREADS MILLIS
//!                                   short connections from THREADS threads for MILLIS ms, each
//!                                   to the next address in turn; prints JSON: connections,
//!                                   errors, seconds, p50_us, p99_us
//!   probe install PIN CGROUP VIP:PORT BACKEND...
//!                                   installs the data plane with one TCP service and exits
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_tests::{answer, errno_name, one_service, request};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["tcp", target, count] => {
            let count: u32 = count.parse().context("COUNT")?;
            let mut done = 0;
            tcp(target, || {
                done += 1;
                done > count
            })
        }
        ["tcp-until", stop_file, target] => tcp(target, || Path::new(stop_file).exists()),
        ["serve", addr, name] => serve(addr, name),
        ["load", targets, threads, millis] => load(
            targets.split(',').map(|t| t.parse().context("ADDR")).collect::<Result<_>>()?,
            threads.parse().context("THREADS")?,
            Duration::from_millis(millis.parse().context("MILLIS")?),
        ),
        ["install", pin, cgroup, frontend, backends @ ..] => {
            let mut dataplane = Dataplane::install(Path::new(pin), Path::new(cgroup))?;
            dataplane.apply(&one_service(frontend, backends)?, None, None)?;
            Ok(())
        }
        _ => bail!(
            "usage: probe tcp ADDR COUNT | probe tcp-until FILE ADDR | probe serve ADDR NAME | \
             probe install PIN CGROUP VIP:PORT BACKEND..."
        ),
    }
}

/// Connects to `target` until `stop` says so, then prints the tally.
fn tcp(target: &str, mut stop: impl FnMut() -> bool) -> Result<()> {
    let target: std::net::SocketAddr = target.parse().context("ADDR")?;
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while !stop() {
        match TcpStream::connect(target).and_then(|mut s| request(&mut s)) {
            Ok(name) => *replies.entry(name).or_default() += 1,
            Err(e) => {
                let kind = e.raw_os_error().map_or_else(|| e.kind().to_string(), errno_name);
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    for (name, n) in replies {
        println!("reply {name} {n}");
    }
    for (kind, n) in errors {
        println!("error {kind} {n}");
    }
    Ok(())
}

fn serve(addr: &str, name: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = listener.accept()?;
        let _ = answer(stream, name);
    }
}

/// The benchmark client: each thread connects, sends a request line, reads the reply to the
/// end and closes, in a loop, timing every connection. Several targets are taken in turn
/// (what a client balancing by itself would do), so a direct run spreads over the same
/// backends as a run through a VIP.
fn load(targets: Vec<SocketAddr>, threads: usize, length: Duration) -> Result<()> {
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let targets = targets.clone();
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut next = thread;
                while Instant::now() < deadline {
                    let target = targets[next % targets.len()];
                    next += 1;
                    let begun = Instant::now();
                    match TcpStream::connect(target).and_then(|mut s| request(&mut s)) {
                        Ok(_) => latencies.push(begun.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut l, e) = worker.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        latencies.append(&mut l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    let report = serde_json::json!({
        "connections": latencies.len(),
        "errors": errors,
        "seconds": seconds,
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    });
    println!("{report}");
    Ok(())
}
