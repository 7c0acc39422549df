//! Short connections through each path: (a) the backend directly, (b) the VIP through
//! reconciler, (c) the VIP through kube-proxy's iptables layout, (d) through its nftables
//! layout. Every measurement gets a fresh network namespace, so no conntrack entries of an
//! earlier one (tens of thousands of TIME_WAIT tuples) slow it down.
use std::{io::Write as _, process::Stdio};

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::{Dataplane, MapState};
use reconciler_tests::{probe_path, Sandbox};
use serde_json::Value;

use crate::kube::{self, Service};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Reconciler,
    Iptables,
    Nftables,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Direct, Path::Reconciler, Path::Iptables, Path::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reconciler => "reconciler",
            Path::Iptables => "iptables",
            Path::Nftables => "nftables",
        }
    }
}

/// One measurement: connections per second and per-connection latency.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub conn_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
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

/// Measures `path` with `services` defined (the last one is measured; its endpoints get real
/// listeners). `state` is the same services compiled for reconciler.
pub fn measure(path: Path, services: &[Service], state: &MapState, load: Load) -> Result<Sample> {
    let measured = services.last().context("no services")?;
    let mut sandbox = Sandbox::new(&format!("bench-{}", path.name()))?;
    // Clients open tens of thousands of connections; let them reuse ports in TIME_WAIT.
    sandbox.run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    sandbox.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    for (k, endpoint) in measured.endpoints.iter().enumerate() {
        sandbox.serve_tcp(endpoint, &format!("b{k}"))?;
    }
    let vip = format!("{}:{}", measured.vip, measured.port);
    let target = match path {
        // The client itself takes the same backends in turn.
        Path::Direct => measured.endpoints.join(","),
        Path::Reconciler => {
            let mut dataplane = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
            dataplane.apply(state, None, None)?;
            vip
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
    let output = sandbox
        .command(probe_path()?)?
        .args(["load", &target, &load.threads.to_string(), &load.millis.to_string()])
        .output()?;
    ensure!(output.status.success(), "load: {}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let number = |key: &str| report[key].as_f64().with_context(|| format!("{key} in {report}"));
    ensure!(
        number("errors")? == 0.0,
        "{} connects failed through {}: {report}",
        number("errors")?,
        path.name()
    );
    Ok(Sample {
        conn_per_s: number("connections")? / number("seconds")?,
        p50_us: number("p50_us")?,
        p99_us: number("p99_us")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path, baselines included, really carries connections to the measured service's
    /// listeners (a baseline that failed silently would make every ratio meaningless).
    #[test]
    fn every_path_reaches_the_backends() -> Result<()> {
        let services = crate::services(3, 2);
        let state = crate::compiled(&services)?;
        for path in Path::ALL {
            let sample = measure(path, &services, &state, Load { threads: 2, millis: 200 })?;
            assert!(sample.conn_per_s > 100.0, "{}: {sample:?}", path.name());
        }
        Ok(())
    }
}
