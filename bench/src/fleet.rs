//! A fleet on one repository: N real daemons, each in a network namespace and a cgroup of its
//! own (a node), fetching from one `git daemon` in a hub namespace, over veths on a bridge.
//! One commit at a time: how long until every node has it live (p50, p99 over nodes and
//! commits), with webhooks (`POST /reconcile` to every node from the hub) and with interval
//! polling; how the polling fetches spread over time (the interval's ±10% jitter); the git
//! server's CPU time and requests; the daemons' RSS.
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::http::request;
use reconciler_tests::{
    git::{Daemon as GitDaemon, Repo},
    reconciler_path, wait_for, Running, Sandbox,
};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::daemon::rss_mib;

const HUB: &str = "10.250.0.1";

/// Sizes of one run.
struct Sizes {
    nodes: usize,
    webhook_commits: usize,
    polling_commits: usize,
    /// `source.interval` while polling, in seconds.
    interval: u64,
}

/// The git server's side: its namespace (a bridge the nodes hang on) and cgroup (whose CPU
/// time is the server's), the repository, and when each fetch arrived. Dropped in this
/// order: the server before its cgroup.
struct Hub {
    _git: GitDaemon,
    fetches: Arc<Mutex<Vec<Instant>>>,
    work: Repo,
    _served: TempDir,
    sandbox: Sandbox,
}

/// One node: its daemon (in the node's cgroup, which its data plane attaches to, and
/// namespace), its address on the bridge. Dropped in this order: the daemon first.
struct Node {
    daemon: Running,
    address: String,
    dir: TempDir,
    sandbox: Sandbox,
}

impl Hub {
    fn start() -> Result<Hub> {
        let sandbox = Sandbox::new("fleet-hub")?;
        let prefix = format!("{HUB}/16");
        for argv in [
            &["ip", "link", "add", "br0", "type", "bridge"][..],
            &["ip", "addr", "add", &prefix, "dev", "br0"],
            &["ip", "link", "set", "br0", "up"],
        ] {
            sandbox.run(argv)?;
        }
        let work = Repo::new();
        work.write("services/web.yaml", definitions(0));
        work.commit("services");
        let served = tempfile::tempdir()?;
        work.bare_clone(served.path(), "services.git");
        // In the hub's cgroup too: its CPU time is the server's, forks included.
        let in_hub = |program| sandbox.command(program).expect("a command in the hub");
        let reachable = |socket: SocketAddr| sandbox.accepts(socket);
        let mut git = GitDaemon::start_logged(served.path(), HUB.parse()?, in_hub, reachable);
        let log = git.take_log().context("git daemon's log")?;
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&fetches);
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains("Request upload-pack") {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                }
            }
        });
        Ok(Hub { _git: git, fetches, work, _served: served, sandbox })
    }

    /// Commits and pushes a new revision (`round` tells them apart); its hash.
    fn commit(&self, round: usize) -> String {
        self.work.write("services/web.yaml", definitions(round));
        let revision = self.work.commit("a new revision");
        self.work.git(&["push", "-q", "origin", "HEAD"]);
        revision
    }

    /// The CPU time the git server has used (its cgroup's), in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(self.sandbox.cgroup().join("cpu.stat"))?;
        let line = stat.lines().find(|l| l.starts_with("usage_usec ")).context("usage_usec")?;
        Ok(line["usage_usec ".len()..].trim().parse::<f64>()? / 1e6)
    }

    /// Fetches that arrived since `since`.
    fn fetches_since(&self, since: Instant) -> Vec<Instant> {
        let fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.iter().copied().filter(|at| *at >= since).collect()
    }
}

/// `web` with two backends; `round` changes the second one's port, so each commit changes one
/// backend.
fn definitions(round: usize) -> String {
    format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         backends: [{{address: 10.250.0.1}}, {{address: 10.250.0.1, port: {}}}]\n",
        9000 + round
    )
}

impl Node {
    /// Node `index`: a namespace with a veth on the hub's bridge, and a daemon fetching from
    /// the hub every `interval`.
    fn start(hub: &Hub, index: usize, interval: &str) -> Result<Node> {
        let sandbox = Sandbox::new(&format!("fleet-{index}"))?;
        let address = format!("10.250.{}.{}", 1 + index / 200, 1 + index % 200);
        let peer = format!("fl{index}");
        sandbox.run(&[
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &hub.sandbox.netns_path(),
        ])?;
        sandbox.run(&["ip", "addr", "add", &format!("{address}/16"), "dev", "eth0"])?;
        sandbox.run(&["ip", "link", "set", "eth0", "up"])?;
        hub.sandbox.run(&["ip", "link", "set", &peer, "master", "br0", "up"])?;
        let dir = tempfile::tempdir()?;
        write_config(dir.path(), &sandbox, &address, index, interval)?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let daemon = Running(
            sandbox
                .command(reconciler_path()?)?
                .args(["daemon", "--config"])
                .arg(dir.path().join("node.yaml"))
                .stderr(log)
                .spawn()?,
        );
        Ok(Node { daemon, address, dir, sandbox })
    }

    /// When the daemon's log says it applied `revision` (its own clock, to the microsecond).
    fn applied_at(&self, revision: &str) -> Option<SystemTime> {
        let log = std::fs::read_to_string(self.dir.path().join("daemon.log")).ok()?;
        let needle = format!("applied revision=\"{revision}\"");
        let line = log.lines().find(|line| line.contains(&needle))?;
        humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
    }

    /// Polls every `interval` from now on (a new configuration, and SIGHUP).
    fn poll_every(&self, index: usize, interval: &str) -> Result<()> {
        write_config(self.dir.path(), &self.sandbox, &self.address, index, interval)?;
        // SAFETY: kill(2) of the daemon this bench started, by its PID.
        let sent = unsafe { libc::kill(self.daemon.0.id() as libc::pid_t, libc::SIGHUP) };
        ensure!(sent == 0, "SIGHUP: {}", std::io::Error::last_os_error());
        Ok(())
    }
}

fn write_config(
    dir: &Path,
    sandbox: &Sandbox,
    address: &str,
    index: usize,
    interval: &str,
) -> Result<()> {
    let config = format!(
        "source:\n  url: git://{HUB}/services.git\n  path: services\n  interval: {interval}\n  \
         cacheDir: {}\ndataplane:\n  cgroup: {}\n  pinPath: {}\n  \
         capacity: {{services: 16, backends: 32, slots: 4096, connections: 1024, affinity: 1024}}\n\
         listen: {address}:9469\nnode: {{name: node-{index}}}\n",
        dir.join("cache").display(),
        sandbox.cgroup().display(),
        sandbox.pin_path().display(),
    );
    Ok(std::fs::write(dir.join("node.yaml"), config)?)
}

/// The time from `since` until each node applied `revision`, in milliseconds, once all have.
fn time_to_live(nodes: &[Node], revision: &str, since: SystemTime) -> Result<Vec<f64>> {
    let applied = wait_for("every node to apply the commit", Duration::from_secs(120), || {
        nodes.iter().map(|node| node.applied_at(revision)).collect::<Option<Vec<_>>>()
    })?;
    Ok(applied
        .iter()
        .map(|at| at.duration_since(since).unwrap_or_default().as_secs_f64() * 1000.0)
        .collect())
}

/// Percentile `p` (0-100) of `values`, nearest rank.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// Commits `commits` times and tells every node at once (`POST /reconcile` from the hub).
fn webhooks(hub: &Hub, nodes: &[Node], commits: usize) -> Result<Value> {
    let (mut latencies, mut fetches, cpu_before) = (Vec::new(), 0, hub.cpu_seconds()?);
    for round in 1..=commits {
        let revision = hub.commit(round);
        let (since, started) = (SystemTime::now(), Instant::now());
        let addresses: Vec<String> = nodes.iter().map(|n| format!("{}:9469", n.address)).collect();
        hub.sandbox.in_netns(move || {
            for address in addresses {
                request(&address, "POST", "/reconcile")?;
            }
            Ok(())
        })?;
        latencies.extend(time_to_live(nodes, &revision, since)?);
        fetches += hub.fetches_since(started).len();
    }
    let cpu = hub.cpu_seconds()? - cpu_before;
    Ok(json!({
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": percentile(&latencies, 100.0),
        "fetches_per_commit": fetches as f64 / commits as f64,
        "git_cpu_ms_per_commit": cpu * 1000.0 / commits as f64,
    }))
}

/// Polls every `interval` seconds: commits `commits` times, then watches the fetches for three
/// intervals.
fn polling(hub: &Hub, nodes: &[Node], commits: usize, interval: u64) -> Result<Value> {
    for (index, node) in nodes.iter().enumerate() {
        node.poll_every(index, &format!("{interval}s"))?;
    }
    let mut latencies = Vec::new();
    for round in 1..=commits {
        let revision = hub.commit(100 + round);
        latencies.extend(time_to_live(nodes, &revision, SystemTime::now())?);
    }
    let (started, cpu_before) = (Instant::now(), hub.cpu_seconds()?);
    let window = Duration::from_secs(3 * interval);
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu = hub.cpu_seconds()? - cpu_before;
    let fetches = hub.fetches_since(started);
    let mut per_second = vec![0usize; window.as_secs() as usize + 1];
    for at in &fetches {
        per_second[at.duration_since(started).as_secs() as usize] += 1;
    }
    let minutes = window.as_secs_f64() / 60.0;
    Ok(json!({
        "interval_s": interval,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": percentile(&latencies, 100.0),
        "fetches_per_minute": fetches.len() as f64 / minutes,
        "fetches_peak_per_second": per_second.iter().max().copied().unwrap_or(0),
        "fetches_mean_per_second": fetches.len() as f64 / window.as_secs_f64(),
        "git_cpu_ms_per_fetch": cpu * 1000.0 / fetches.len().max(1) as f64,
        "git_cpu_ms_per_minute": cpu * 1000.0 / minutes,
    }))
}

/// Quick: 20 nodes polling every 5 s; full: 50 nodes polling every 10 s.
pub fn run(quick: bool) -> Result<Value> {
    let sizes = match quick {
        true => Sizes { nodes: 20, webhook_commits: 3, polling_commits: 2, interval: 5 },
        false => Sizes { nodes: 50, webhook_commits: 5, polling_commits: 3, interval: 10 },
    };
    let value = measure(&sizes)?;
    println!("## A fleet on one repository\n\n{}", table(&value));
    Ok(value)
}

fn measure(sizes: &Sizes) -> Result<Value> {
    let hub = Hub::start()?;
    let mut nodes = Vec::new();
    for index in 0..sizes.nodes {
        nodes.push(Node::start(&hub, index, "1h")?);
    }
    let first = hub.work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    time_to_live(&nodes, &first, SystemTime::UNIX_EPOCH)?;
    let webhook = webhooks(&hub, &nodes, sizes.webhook_commits)?;
    let polling = polling(&hub, &nodes, sizes.polling_commits, sizes.interval)?;
    let rss: Vec<f64> = nodes.iter().map(|n| rss_mib(n.daemon.0.id())).collect::<Result<_>>()?;
    Ok(json!({
        "nodes": sizes.nodes,
        "webhook": webhook,
        "polling": polling,
        "rss_mib_median": percentile(&rss, 50.0),
        "rss_mib_max": percentile(&rss, 100.0),
    }))
}

/// The figures as a Markdown table.
fn table(value: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.0}"));
    let (w, p) = (&value["webhook"], &value["polling"]);
    format!(
        "Fleet: {} daemons, each in a namespace and cgroup of its own, one git daemon\n\n\
         | trigger | p50 to live | p99 | max | git requests | git server CPU |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | webhook to every node | {} ms | {} ms | {} ms | {:.1} per commit | {} ms per commit |\n\
         | polling every {} s (±10%) | {} ms | {} ms | {} ms | {} per minute | {:.1} ms per fetch |\n\n\
         Polling fetches: {:.1} per second on average, {} in the busiest second. \
         Daemon RSS: {:.1} MiB median, {:.1} MiB max.\n",
        value["nodes"],
        f(&w["p50_ms"]), f(&w["p99_ms"]), f(&w["max_ms"]),
        w["fetches_per_commit"].as_f64().unwrap_or(0.0), f(&w["git_cpu_ms_per_commit"]),
        p["interval_s"], f(&p["p50_ms"]), f(&p["p99_ms"]), f(&p["max_ms"]),
        f(&p["fetches_per_minute"]), p["git_cpu_ms_per_fetch"].as_f64().unwrap_or(0.0),
        p["fetches_mean_per_second"].as_f64().unwrap_or(0.0), p["fetches_peak_per_second"],
        value["rss_mib_median"].as_f64().unwrap_or(0.0), value["rss_mib_max"].as_f64().unwrap_or(0.0),
    )
}
