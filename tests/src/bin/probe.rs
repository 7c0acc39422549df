//! The client side of the real-kernel tests; the sandbox runs it inside its cgroup and
//! network namespace.
//!
//!   probe tcp ADDR COUNT            COUNT connects to ADDR; prints `reply NAME N` per backend
//!                                   name read back and `error ERRNO N` per failure kind
//!   probe tcp-until FILE ADDR       the same, connecting until FILE exists
//!   probe tcp-from-cgroups ADDR COUNT CGROUP...
//!                                   moves itself into each CGROUP in turn and connects COUNT
//!                                   times from it; prints a line per cgroup: its ID, then the
//!                                   backend name (or `error:ERRNO`) of each connect
//!   probe serve ADDR NAME           a TCP server answering every connection with NAME
//!   probe load ADDR[,ADDR...] THREADS MILLIS
//!                                   short connections from THREADS threads for MILLIS ms, each
//!                                   to the next address in turn; prints JSON: connections,
//!                                   errors, seconds, p50_us, p99_us, cpu_busy_s (CPU time the
//!                                   whole machine spent busy meanwhile, from /proc/stat)
//!   probe udp-rr ADDR[,ADDR...] THREADS MILLIS
//!                                   UDP request/response from THREADS threads for MILLIS ms:
//!                                   each thread has one unconnected socket and sends to one
//!                                   address (the next in turn) with `send_to`, then
//!                                   `recv_from`s the reply, which must come from that address;
//!                                   prints JSON as `load` does, with round_trips
//!   probe udp-connects ADDR COUNT   COUNT UDP sockets, each connect()ed to ADDR and closed;
//!                                   prints `connected N` (and exits non-zero on a failure)
//!   probe install PIN CGROUP VIP:PORT BACKEND...
//!                                   installs the data plane with one TCP service and exits
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane};
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
        ["tcp-from-cgroups", target, count, cgroups @ ..] => {
            tcp_from_cgroups(target, count.parse().context("COUNT")?, cgroups)
        }
        ["serve", addr, name] => serve(addr, name),
        ["load", targets, threads, millis] => load(
            addresses(targets)?,
            threads.parse().context("THREADS")?,
            Duration::from_millis(millis.parse().context("MILLIS")?),
        ),
        ["udp-rr", targets, threads, millis] => udp_rr(
            addresses(targets)?,
            threads.parse().context("THREADS")?,
            Duration::from_millis(millis.parse().context("MILLIS")?),
        ),
        ["udp-connects", target, count] => udp_connects(target, count.parse().context("COUNT")?),
        ["install", pin, cgroup, frontend, backends @ ..] => {
            let mut dataplane = Dataplane::install(Path::new(pin), Path::new(cgroup))?;
            dataplane.apply(&one_service(frontend, backends)?, ApplyTo::default())?;
            Ok(())
        }
        _ => bail!(
            "usage: probe tcp ADDR COUNT | probe tcp-until FILE ADDR | probe tcp-from-cgroups ADDR COUNT CGROUP... | probe serve ADDR NAME | \
             probe load ADDR[,ADDR...] THREADS MILLIS | probe udp-rr ADDR[,ADDR...] THREADS MILLIS | probe udp-connects ADDR COUNT | \
             probe install PIN CGROUP VIP:PORT BACKEND..."
        ),
    }
}

/// `count` UDP sockets connected to `target` one after another, each closed at once: as
/// many translations, each recorded with its own socket.
fn udp_connects(target: &str, count: u64) -> Result<()> {
    let target: SocketAddr = target.parse().context("ADDR")?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    for done in 0..count {
        let socket = UdpSocket::bind(local).context("bind")?;
        socket.connect(target).with_context(|| format!("connect {done} to {target}"))?;
    }
    println!("connected {count}");
    Ok(())
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

fn tcp_from_cgroups(target: &str, count: u32, cgroups: &[&str]) -> Result<()> {
    let target: SocketAddr = target.parse().context("ADDR")?;
    for cgroup in cgroups {
        // "0": the writing process itself (all its threads).
        std::fs::write(Path::new(cgroup).join("cgroup.procs"), "0")
            .with_context(|| format!("moving into {cgroup}"))?;
        let id = std::fs::metadata(cgroup)?.ino();
        let mut line = id.to_string();
        for _ in 0..count {
            match TcpStream::connect(target).and_then(|mut s| request(&mut s)) {
                Ok(name) => line.push_str(&format!(" {name}")),
                Err(e) => line.push_str(&format!(
                    " error:{}",
                    e.raw_os_error().map_or_else(|| e.to_string(), errno_name)
                )),
            }
        }
        println!("{line}");
    }
    Ok(())
}

fn addresses(list: &str) -> Result<Vec<SocketAddr>> {
    list.split(',').map(|t| t.parse().with_context(|| format!("ADDR {t}"))).collect()
}

/// The TCP benchmark client: each thread connects, sends a request line, reads the reply to
/// the end and closes, in a loop, timing every connection. Several targets are taken in turn
/// (what a client balancing by itself would do), so a direct run spreads over the same
/// backends as a run through a VIP.
fn load(targets: Vec<SocketAddr>, threads: usize, length: Duration) -> Result<()> {
    drive("connections", threads, length, |thread| {
        let targets = targets.clone();
        let mut next = thread;
        Ok(move || {
            let target = targets[next % targets.len()];
            next += 1;
            TcpStream::connect(target).and_then(|mut s| request(&mut s)).is_ok()
        })
    })
}

/// The UDP benchmark client: each thread sends a request datagram on its own unconnected
/// socket with `send_to` and waits for the reply with `recv_from`, in a loop, timing every
/// round trip. A socket keeps one target (thread `i` takes target `i mod n`), as it keeps one
/// backend behind a VIP. A reply counts only if it reports the target as its source (through
/// a VIP, the translation back is part of what is measured); a reply lost for a second is an
/// error.
fn udp_rr(targets: Vec<SocketAddr>, threads: usize, length: Duration) -> Result<()> {
    drive("round_trips", threads, length, |thread| {
        let target = targets[thread % targets.len()];
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).context("binding a UDP socket")?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buffer = [0u8; 512];
        Ok(move || {
            socket.send_to(b"GET\n", target).is_ok()
                && matches!(socket.recv_from(&mut buffer), Ok((n, from)) if n > 0 && from == target)
        })
    })
}

/// Runs one operation per thread in a loop for `length`, timing each, and prints JSON: how
/// many succeeded (under `count_key`), errors, seconds, the p50 and p99 latency of the
/// successful ones in µs, and the CPU time all CPUs spent busy meanwhile (the server's share
/// and the kernel's included). `operation(thread)` makes a thread's operation (its sockets are
/// made before the clock starts); the operation returns whether it succeeded.
fn drive<F>(
    count_key: &str,
    threads: usize,
    length: Duration,
    mut operation: impl FnMut(usize) -> Result<F>,
) -> Result<()>
where
    F: FnMut() -> bool + Send + 'static,
{
    let operations = (0..threads).map(&mut operation).collect::<Result<Vec<_>>>()?;
    let busy_before = busy_seconds()?;
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = operations
        .into_iter()
        .map(|mut operation| {
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    if operation() {
                        latencies.push(begun.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
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
    let cpu_busy_s = busy_seconds()? - busy_before;
    latencies.sort_unstable();
    let percentile_us = |p: f64| {
        let index = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).map(|&ns| ns as f64 / 1000.0)
    };
    let mut report = serde_json::json!({
        "errors": errors,
        "seconds": seconds,
        "p50_us": percentile_us(0.50),
        "p99_us": percentile_us(0.99),
        "cpu_busy_s": cpu_busy_s,
    });
    report[count_key] = latencies.len().into();
    println!("{report}");
    Ok(())
}

/// CPU time all CPUs have spent busy since boot, from the first line of /proc/stat: user,
/// nice, system, irq and softirq (not idle, iowait, or steal: time the hypervisor gave to
/// someone else).
fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(busy as f64 / per_second.max(1) as f64)
}
