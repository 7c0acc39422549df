//! A real daemon for the benches that measure one: in a sandbox's network namespace,
//! reconciling a bare git repository of the given definitions; and what `/proc` and
//! `/metrics` say of it.
use std::collections::BTreeMap;

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::http::request;
use reconciler_tests::{git::Repo, reconciler_path, Running, Sandbox};
use tempfile::TempDir;

/// Lines of configuration a bench adds.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    /// In the `dataplane` section, indented by two.
    pub dataplane: &'a str,
    /// At the top level.
    pub top: &'a str,
}

pub struct BenchDaemon {
    running: Running,
    /// The repository, the cache, the configuration and the log.
    dir: TempDir,
}

impl BenchDaemon {
    /// Starts a daemon in `sandbox` on `files` of definitions, answering HTTP at `listen`,
    /// with the YAML lines `extra` added to its configuration (`dataplane` to that section).
    /// Health checks may probe 127.0.0.0/8.
    pub fn start(sandbox: &Sandbox, files: &[String], listen: &str, extra: Extra) -> Result<Self> {
        let work = Repo::new();
        for (index, definitions) in files.iter().enumerate() {
            work.write(&format!("services/part-{index}.yaml"), definitions);
        }
        work.commit("services");
        let dir = tempfile::tempdir()?;
        let bare = work.bare_clone(dir.path(), "services.git");
        let config = format!(
            "source:\n  url: {}\n  path: services\n  interval: 1h\n  cacheDir: {}\n\
             dataplane:\n  cgroup: {}\n  pinPath: {}\n{}listen: {listen}\n\
             policy: {{allowLocalHealthChecks: [127.0.0.0/8]}}\n{}",
            bare.display(),
            dir.path().join("cache").display(),
            sandbox.cgroup().display(),
            sandbox.pin_path().display(),
            extra.dataplane,
            extra.top,
        );
        std::fs::write(dir.path().join("node.yaml"), config)?;
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let running = Running(
            sandbox
                .command_in_netns(reconciler_path()?)
                .args(["daemon", "--log-level", "warn", "--config"])
                .arg(dir.path().join("node.yaml"))
                .stderr(log)
                .spawn()?,
        );
        Ok(Self { running, dir })
    }

    pub fn pid(&self) -> u32 {
        self.running.0.id()
    }

    /// Ends the daemon; its log.
    pub fn stop(self) -> String {
        drop(self.running);
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

/// The CPU time (user and system) process `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("utime, stime")?
        .iter()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The resident set of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmRSS")?.parse()?;
    Ok(kib / 1024.0)
}

/// Series of a `/metrics` page by name, summed over their labels, and by `name{labels}`.
pub type Metrics = BTreeMap<String, f64>;

/// The daemon's metrics at `listen`.
pub fn metrics(listen: &str) -> Result<Metrics> {
    let (status, body) = request(listen, "GET", "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    let mut figures = Metrics::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let name = series.split('{').next().unwrap_or(series);
        *figures.entry(name.to_owned()).or_default() += value;
        if name != series {
            *figures.entry(series.to_owned()).or_default() += value;
        }
    }
    Ok(figures)
}
