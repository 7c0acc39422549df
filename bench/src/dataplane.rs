//! Traffic through each path: (a) the backend directly, (b) the VIP through reconciler, (c)
//! the VIP through kube-proxy's iptables layout, (d) through its nftables layout. Two
//! workloads: short TCP connections, and UDP request/response on unconnected sockets (where
//! reconciler's sendmsg and recvmsg hooks run per datagram). Every measurement gets a fresh
//! network namespace, so no conntrack entries of an earlier one (tens of thousands of
//! TIME_WAIT tuples) slow it down.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    process::Stdio,
};

use aya::programs::links::{FdLink, PinnedLink};

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane};
use reconciler_core::state::MapState;
use reconciler_tests::{probe_path, Sandbox};
use serde_json::Value;

use crate::kube::{self, Protocol, Service};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Reconciler,
    Iptables,
    Nftables,
    /// Reconciler installed, the client going to the backends themselves: what the programs
    /// cost traffic that is not to a VIP (every connect on a node pays it).
    NotAVip,
    /// Reconciler with its `flows` sock_ops program detached: what that program costs.
    WithoutFlows,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reconciler => "reconciler",
            Path::Iptables => "iptables",
            Path::Nftables => "nftables",
            Path::NotAVip => "not-a-vip",
            Path::WithoutFlows => "reconciler-without-flows",
        }
    }

    /// The column letter the tables and the docs use for the path, in every workload.
    pub fn letter(self) -> char {
        match self {
            Path::Direct => 'a',
            Path::Reconciler => 'b',
            Path::Iptables => 'c',
            Path::Nftables => 'd',
            Path::NotAVip => 'e',
            Path::WithoutFlows => 'f',
        }
    }
}

/// What a measurement drives through a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Short TCP connections: connect, one request line, read the reply, close.
    TcpConnections,
    /// UDP request/response: `send_to` the service and `recv_from` its reply, on one
    /// unconnected socket per client thread.
    UdpRequestResponse,
}

impl Workload {
    /// The paths measured, in column order.
    pub fn paths(self) -> &'static [Path] {
        match self {
            Workload::TcpConnections => {
                &[Path::Direct, Path::Reconciler, Path::Iptables, Path::Nftables]
            }
            Workload::UdpRequestResponse => &[Path::Direct, Path::Reconciler, Path::Nftables],
        }
    }

    /// The protocol of the measured service.
    pub fn protocol(self) -> Protocol {
        match self {
            Workload::TcpConnections => Protocol::Tcp,
            Workload::UdpRequestResponse => Protocol::Udp,
        }
    }

    /// What the rate counts, as the JSON results and the probe's report name it.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::TcpConnections => "connections",
            Workload::UdpRequestResponse => "round_trips",
        }
    }

    /// One operation, as the tables name it.
    pub fn operation(self) -> &'static str {
        match self {
            Workload::TcpConnections => "connection",
            Workload::UdpRequestResponse => "round trip",
        }
    }

    fn probe_mode(self) -> &'static str {
        match self {
            Workload::TcpConnections => "load",
            Workload::UdpRequestResponse => "udp-rr",
        }
    }
}

/// One measurement: operations (connections or round trips) per second, the latency of one
/// operation, and the CPU time the machine spent per operation (busy time of all CPUs over
/// the measurement, clients, servers and the kernel's network stack alike, divided by the
/// operations).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub operations: f64,
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
}

/// The kernel's run-time statistics of one of reconciler's programs over a measurement.
#[derive(Clone, Debug)]
pub struct HookCost {
    pub program: String,
    /// Runs per operation (connection or round trip) of the measurement.
    pub runs_per_operation: f64,
    pub ns_per_run: f64,
}

/// How hard and how long each measurement drives the path.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: usize,
    pub millis: u64,
}

/// Runs `argv` in the sandbox with `input` on its standard input.
fn run_with_input(sandbox: &Sandbox, argv: &[&str], input: &str) -> Result<()> {
    let mut child = sandbox
        .command(argv[0])?
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {argv:?} (installed by `make setup`)"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// Measures `workload` through `path` with `services` defined (the last one is measured, and
/// is of the workload's protocol; its endpoints get real servers). `state` is the same
/// services compiled for reconciler.
pub fn measure(
    workload: Workload,
    path: Path,
    services: &[Service],
    state: &MapState,
    load: Load,
) -> Result<Sample> {
    measure_observed(workload, path, services, state, load, |_, probe| probe())
        .map(|(sample, ())| sample)
}

/// `measure` through `path` (reconciler, or past it) with the kernel's BPF run-time
/// statistics on (`BPF_ENABLE_STATS`, which times every program run: it slows the path, so
/// these runs are not the ones the rates come from): what each of the data plane's programs
/// costs per run.
pub fn hook_costs(
    workload: Workload,
    path: Path,
    services: &[Service],
    state: &MapState,
    load: Load,
) -> Result<Vec<HookCost>> {
    // Off again when the descriptor closes, at the end of this function.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let (sample, runs) =
        measure_observed(workload, path, services, state, load, |sandbox, probe| {
            let ours = linked_programs(sandbox.pin_path())?;
            let before = program_runs(&ours)?;
            probe()?;
            let after = program_runs(&ours)?;
            Ok(after
                .into_iter()
                .filter_map(|(id, (program, runs, ns))| {
                    let (runs0, ns0) = before.get(&id).map_or((0, 0), |&(_, r, n)| (r, n));
                    let runs = runs.checked_sub(runs0).filter(|&r| r > 0)?;
                    Some((program, runs, ns.saturating_sub(ns0)))
                })
                .collect::<Vec<_>>())
        })?;
    Ok(runs
        .into_iter()
        .map(|(program, runs, ns)| HookCost {
            program,
            runs_per_operation: runs as f64 / sample.operations,
            ns_per_run: ns as f64 / runs as f64,
        })
        .collect())
}

/// The IDs of the programs of the data plane pinned at `pin_path` (its `link_*` pins): other
/// data planes, of tests running meanwhile, are not this measurement's.
fn linked_programs(pin_path: &std::path::Path) -> Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(pin_path)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("link_")) {
            let link = FdLink::from(PinnedLink::from_pin(&path)?);
            ids.insert(link.info()?.program_id());
        }
    }
    Ok(ids)
}

/// `measure` through reconciler while `reconciler trace` reads every event (its output
/// discarded): what a tracer costs the connections it watches.
pub fn measure_traced(
    workload: Workload,
    services: &[Service],
    state: &MapState,
    load: Load,
) -> Result<Sample> {
    let (sample, ()) =
        measure_observed(workload, Path::Reconciler, services, state, load, |sandbox, probe| {
            let mut tracer = std::process::Command::new(reconciler_tests::reconciler_path()?)
                .arg("trace")
                .arg("--pin-path")
                .arg(sandbox.pin_path())
                .args(["--output", "json"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let stderr = tracer.stderr.take().context("trace's stderr")?;
            let mut ready = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut ready)?;
            let probed = probe();
            // SAFETY: signalling the PID of a child we started and have not reaped.
            unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
            let status = tracer.wait()?;
            ensure!(ready.starts_with("Tracing") && status.success(), "trace: {ready} {status}");
            probed
        })?;
    Ok(sample)
}

/// The programs `ids` by ID: name, how often each ran, and the nanoseconds it took.
fn program_runs(ids: &BTreeSet<u32>) -> Result<BTreeMap<u32, (String, u64, u64)>> {
    let mut runs = BTreeMap::new();
    for program in aya::programs::loaded_programs() {
        let program = program.context("listing loaded BPF programs")?;
        if !ids.contains(&program.id()) {
            continue;
        }
        let name = program.name_as_str().unwrap_or_default().to_string();
        let ns = u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
        runs.insert(program.id(), (name, program.run_count(), ns));
    }
    Ok(runs)
}

/// The body of `measure`: `observe` gets the sandbox and a function that runs the probe, and
/// returns what it observed around that run (while the path is still set up).
fn measure_observed<T>(
    workload: Workload,
    path: Path,
    services: &[Service],
    state: &MapState,
    load: Load,
    observe: impl FnOnce(&Sandbox, &mut dyn FnMut() -> Result<()>) -> Result<T>,
) -> Result<(Sample, T)> {
    let measured = services.last().context("no services")?;
    ensure!(
        measured.protocol == workload.protocol(),
        "the measured service is {}",
        measured.protocol
    );
    let mut sandbox = Sandbox::new(&format!("bench-{}", path.name()))?;
    if workload == Workload::TcpConnections {
        // Clients open tens of thousands of connections; let them reuse ports in TIME_WAIT.
        sandbox.run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        sandbox.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    }
    for (k, endpoint) in measured.endpoints.iter().enumerate() {
        match workload {
            Workload::TcpConnections => sandbox.serve_tcp(endpoint, &format!("b{k}"))?,
            Workload::UdpRequestResponse => sandbox.serve_udp(endpoint, &format!("b{k}"))?,
        };
    }
    let vip = format!("{}:{}", measured.vip, measured.port);
    let target = match path {
        // The client itself takes the same backends in turn.
        Path::Direct => measured.endpoints.join(","),
        Path::Reconciler | Path::NotAVip | Path::WithoutFlows => {
            let mut dataplane = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
            dataplane.apply(state, ApplyTo::default())?;
            if path == Path::WithoutFlows {
                // The link's last reference: the program detaches as its pin goes.
                std::fs::remove_file(sandbox.pin_path().join("link_flows"))?;
            }
            if path == Path::NotAVip {
                measured.endpoints.join(",")
            } else {
                vip
            }
        }
        Path::Iptables | Path::Nftables => {
            // Per-packet NAT happens after routing: the VIP needs a route, with a source.
            sandbox.run(&["ip", "route", "add", "10.0.0.0/8", "dev", "lo", "src", "127.0.0.1"])?;
            if path == Path::Iptables {
                run_with_input(&sandbox, &["iptables-restore"], &kube::iptables_full(services))?;
            } else {
                run_with_input(&sandbox, &["nft", "-f", "-"], &kube::nft_full(services))?;
            }
            vip
        }
    };
    let mut probe = sandbox.command(probe_path()?)?;
    probe
        .args([workload.probe_mode(), &target])
        .args([load.threads.to_string(), load.millis.to_string()]);
    let mut output = None;
    let observed = observe(&sandbox, &mut || {
        output = Some(probe.output()?);
        Ok(())
    });
    if workload == Workload::UdpRequestResponse {
        stop_udp_servers(&sandbox, &measured.endpoints)?;
    }
    let observed = observed?;
    let output = output.context("the probe did not run")?;
    ensure!(
        output.status.success(),
        "probe {}: {}",
        workload.probe_mode(),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let number = |key: &str| report[key].as_f64().with_context(|| format!("{key} in {report}"));
    ensure!(
        number("errors")? == 0.0,
        "{} {} failed through {}: {report}",
        number("errors")?,
        workload.unit(),
        path.name()
    );
    let count = number(workload.unit())?;
    let sample = Sample {
        operations: count,
        per_s: count / number("seconds")?,
        p50_us: number("p50_us")?,
        p99_us: number("p99_us")?,
        cpu_us: 1e6 * number("cpu_busy_s")? / count,
    };
    Ok((sample, observed))
}

/// Ends the threads of `Sandbox::serve_udp` at `endpoints` with an empty datagram each, which
/// its loop takes as the end. Left to `Sandbox`'s drop, the thread's `recv_from` would return
/// from `shutdown()` with no source address, which std's `UdpSocket::recv_from` asserts
/// against: the thread would panic (harmlessly, but printing a backtrace per measurement).
fn stop_udp_servers(sandbox: &Sandbox, endpoints: &[String]) -> Result<()> {
    let endpoints = endpoints.to_vec();
    sandbox.in_netns(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for endpoint in &endpoints {
            socket.send_to(&[], endpoint.as_str())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of every workload, baselines included, really carries traffic to the
    /// measured service's servers, and UDP replies come back from the address the client sent
    /// to (a baseline that failed silently would make every ratio meaningless).
    #[test]
    fn every_path_reaches_the_backends() -> Result<()> {
        for workload in [Workload::TcpConnections, Workload::UdpRequestResponse] {
            let services = crate::services(3, 2, workload.protocol());
            let state = crate::compiled(&services)?;
            for &path in workload.paths() {
                let load = Load { threads: 2, millis: 200 };
                let sample = measure(workload, path, &services, &state, load)?;
                assert!(sample.per_s > 100.0, "{workload:?} {}: {sample:?}", path.name());
            }
        }
        Ok(())
    }

    /// The program costs name the hooks a UDP round trip runs, once each per round trip (the
    /// servers are outside the data plane's cgroup), and only those; to a VIP and past it.
    #[test]
    fn hook_costs_are_per_datagram() -> Result<()> {
        let services = crate::services(3, 2, Protocol::Udp);
        let state = crate::compiled(&services)?;
        let load = Load { threads: 2, millis: 200 };
        for path in [Path::Reconciler, Path::NotAVip] {
            let costs = hook_costs(Workload::UdpRequestResponse, path, &services, &state, load)?;
            let mut programs: Vec<_> = costs.iter().map(|c| c.program.as_str()).collect();
            programs.sort_unstable();
            assert_eq!(programs, ["recvmsg4", "sendmsg4"], "{path:?}: {costs:?}");
            for cost in &costs {
                assert!((cost.runs_per_operation - 1.0).abs() < 0.01, "{path:?}: {cost:?}");
                assert!(cost.ns_per_run > 0.0, "{path:?}: {cost:?}");
            }
        }
        Ok(())
    }
}
