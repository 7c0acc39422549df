//! A real Prometheus server (Debian's `prometheus`, which `make setup` installs) scraping
//! daemons every second, in a sandbox's network namespace or the machine's own (loopback
//! addresses only).
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use reconciler::daemon::http::request;
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
        let dir = tempfile::tempdir()?;
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: \
             reconciler\n    static_configs: [{{targets: {targets:?}}}]\n"
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

    /// The result of the instant query `query` (its series), if Prometheus answers.
    pub fn query(&self, netns: Option<&Sandbox>, query: &str) -> Option<Vec<serde_json::Value>> {
        let encoded: String = query
            .bytes()
            .map(|b| match b.is_ascii_alphanumeric() || b == b'_' {
                true => char::from(b).to_string(),
                false => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let listen = self.listen.clone();
        let ask = move || Ok(request(&listen, "GET", &path)?.1);
        let body = match netns {
            Some(sandbox) => sandbox.in_netns(ask),
            None => ask(),
        };
        let answer: serde_json::Value = serde_json::from_str(&body.ok()?).ok()?;
        answer["data"]["result"].as_array().cloned()
    }

    /// The value of the first series of `query`, once Prometheus has one.
    pub fn value(&self, netns: Option<&Sandbox>, query: &str) -> Result<f64> {
        wait_for("Prometheus to have scraped the daemons", Duration::from_secs(30), || {
            let series = self.query(netns, query)?;
            series.first()?["value"][1].as_str()?.parse::<f64>().ok()
        })
        .with_context(|| self.log())
    }
}
