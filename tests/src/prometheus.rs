//! A real Prometheus server (Debian's `prometheus`, which `make setup` installs) scraping
//! daemons every second, in a sandbox's network namespace or the machine's own (loopback
//! addresses only).
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use reconciler::fleet::prometheus::{Prometheus, Vector};
use tempfile::TempDir;

use crate::{wait_for, Running, Sandbox};

pub struct PrometheusServer {
    server: Option<Running>,
    dir: TempDir,
    /// HOST:PORT it serves its API on.
    pub listen: String,
}

impl PrometheusServer {
    /// Prometheus on `listen`, in `netns` (or the machine's namespace), scraping `targets`
    /// (HOST:PORT of daemons) every second.
    pub fn start(netns: Option<&Sandbox>, listen: &str, targets: &[&str]) -> Result<Self> {
        PrometheusServer::start_with_rules(netns, listen, targets, &[])
    }

    /// [`start`](Self::start), evaluating the rule files `rules` every second.
    pub fn start_with_rules(
        netns: Option<&Sandbox>,
        listen: &str,
        targets: &[&str],
        rules: &[std::path::PathBuf],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let rules: Vec<String> = rules.iter().map(|r| r.display().to_string()).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: {rules:?}\nscrape_configs:\n  - job_name: reconciler\n    \
             static_configs: [{{targets: {targets:?}}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        let mut prometheus = PrometheusServer { server: None, dir, listen: listen.to_owned() };
        prometheus.resume(netns)?;
        Ok(prometheus)
    }

    /// Stops the server (SIGKILL, by its PID), as an outage would.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Starts it again after [`stop`](Self::stop), with the data it had.
    pub fn resume(&mut self, netns: Option<&Sandbox>) -> Result<()> {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        let mut command = match netns {
            Some(sandbox) => sandbox.command_in_netns("prometheus"),
            None => Command::new("prometheus"),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path("log"))?;
        let child = command
            .arg(format!("--config.file={}", path("prometheus.yml")))
            .arg(format!("--storage.tsdb.path={}", path("data")))
            .arg(format!("--web.listen-address={}", self.listen))
            .stderr(log)
            .spawn()
            .context("running prometheus (installed by `make setup`)")?;
        self.server = Some(Running(child));
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The instant vector of `query`, by the library's own client (`reconciler fleet`'s), if
    /// Prometheus answers.
    pub fn query(&self, netns: Option<&Sandbox>, query: &str) -> Option<Vector> {
        let (url, query) = (self.url(), query.to_owned());
        let ask = move || Ok(Prometheus::new(&url, Duration::from_secs(5)).query(&query)?);
        match netns {
            Some(sandbox) => sandbox.in_netns(ask),
            None => ask(),
        }
        .ok()
    }

    /// The value of the first series of `query`, once Prometheus has one.
    pub fn value(&self, netns: Option<&Sandbox>, query: &str) -> Result<f64> {
        wait_for("Prometheus to have scraped the daemons", Duration::from_secs(30), || {
            Some(self.query(netns, query)?.samples.first()?.value)
        })
        .with_context(|| self.log())
    }
}
