//! The real daemon in a sandbox's network namespace (not its cgroup), reading a bare
//! repository by path, with what tests of its health checks and ejections ask of it.
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use reconciler::daemon::{http::request, outliers::Ejection, status::DaemonStatus};
use tempfile::TempDir;

use crate::{
    git::{Daemon as GitDaemon, Repo},
    reconciler_path, wait_for, Sandbox,
};

/// Where a daemon runs and what it keeps: a node of a fleet keeps `node`'s data plane (its
/// cgroup and pin path) but runs in `hub`'s network namespace, where it listens on `listen`
/// for the fleet's Prometheus; `policy`: its `policy:` line.
pub struct Place<'a> {
    pub hub: &'a Sandbox,
    pub node: &'a Sandbox,
    pub listen: &'a str,
    pub policy: &'a str,
}

/// The daemon, in the sandbox's namespace, reading a bare repository by path.
pub struct Daemon {
    child: Child,
    pub listen: String,
    dir: TempDir,
}

impl Daemon {
    pub fn start(sandbox: &Sandbox, repo: &Path) -> Result<Daemon> {
        Daemon::start_with(sandbox, &repo.display().to_string(), "  interval: 60s\n")
    }

    /// The daemon reading `url`, with `source` lines added to its `source` settings.
    pub fn start_with(sandbox: &Sandbox, url: &str, source: &str) -> Result<Daemon> {
        Daemon::start_configured(sandbox, url, source, "")
    }

    /// [`start_with`](Self::start_with), with `top` lines added at the top level.
    pub fn start_configured(
        sandbox: &Sandbox,
        url: &str,
        source: &str,
        top: &str,
    ) -> Result<Daemon> {
        let policy = "policy: {allowLocalHealthChecks: [127.0.0.0/8]}\n";
        let at = Place { hub: sandbox, node: sandbox, listen: "127.0.0.1:9469", policy };
        let daemon = Daemon::spawn_node(&at, url, source, top)?;
        daemon.wait_ready(sandbox)?;
        Ok(daemon)
    }

    /// A daemon at `at` (see [`Place`]), reading `url`, with `source` lines added to its
    /// `source` settings and `top` lines at the top level. Not waited for: a node of a later
    /// wave is not ready until its gate opens ([`wait_ready`](Self::wait_ready)).
    pub fn spawn_node(at: &Place, url: &str, source: &str, top: &str) -> Result<Daemon> {
        Daemon::spawn_node_with(at, url, source, top, &|_| {})
    }

    /// [`spawn_node`](Self::spawn_node), its command changed by `launch` first (an
    /// environment of systemd's, say).
    pub fn spawn_node_with(
        at: &Place,
        url: &str,
        source: &str,
        top: &str,
        launch: &dyn Fn(&mut std::process::Command),
    ) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "source:\n  url: {url}\n  path: services\n{source}  cacheDir: {}\n\
             dataplane:\n  cgroup: {}\n  pinPath: {}\nlisten: {}\n{}",
            dir.path().join("cache").display(),
            at.node.cgroup().display(),
            at.node.pin_path().display(),
            at.listen,
            at.policy
        );
        std::fs::write(dir.path().join("base.yaml"), &config)?;
        std::fs::write(dir.path().join("node.yaml"), format!("{config}{top}"))?;
        let child = spawn(at.hub, dir.path(), launch)?;
        Ok(Daemon { child, listen: at.listen.to_owned(), dir })
    }

    /// Kills the daemon (SIGKILL: no chance to tidy up) and starts it again, with the same
    /// configuration, cache and journal; its log goes on.
    pub fn kill_and_restart(&mut self, sandbox: &Sandbox) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn(sandbox, self.dir.path(), &|_| {})?;
        self.wait_ready(sandbox)
    }

    /// Waits until `/readyz` says ready; `sandbox`: where the daemon runs.
    pub fn wait_ready(&self, sandbox: &Sandbox) -> Result<()> {
        wait_for("the daemon to be ready", Duration::from_secs(20), || {
            let listen = self.listen.clone();
            let ready = sandbox.in_netns(move || Ok(request(&listen, "GET", "/readyz")?.0));
            matches!(ready, Ok(200)).then_some(())
        })
        .with_context(|| self.log())
    }

    /// Rewrites the configuration with `top` lines added to the one it started with, and
    /// sends SIGHUP, as an operator does.
    pub fn reconfigure(&self, top: &str) -> Result<()> {
        let base = std::fs::read_to_string(self.dir.path().join("base.yaml"))?;
        std::fs::write(self.dir.path().join("node.yaml"), format!("{base}{top}"))?;
        // SAFETY: kill(2) of the daemon this test started, by its PID.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
        anyhow::ensure!(sent == 0, "SIGHUP: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Asks for a run (`POST /reconcile`), as a webhook does.
    pub fn ask(&self, sandbox: &Sandbox) -> Result<()> {
        let listen = self.listen.clone();
        sandbox.in_netns(move || Ok(request(&listen, "POST", "/reconcile")?.0))?;
        Ok(())
    }

    /// The daemon's PID, to signal it.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// The file the daemon reads its configuration from.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("node.yaml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn get(&self, sandbox: &Sandbox, path: &'static str) -> Result<String> {
        let listen = self.listen.clone();
        sandbox.in_netns(move || Ok(request(&listen, "GET", path)?.1))
    }

    pub fn status(&self, sandbox: &Sandbox) -> Result<DaemonStatus> {
        Ok(serde_json::from_str(&self.get(sandbox, "/status")?)?)
    }

    /// Waits until outlier detection's `/status` has `backend` `ejected` (or back), and
    /// returns its report.
    pub fn wait_ejection(
        &self,
        sandbox: &Sandbox,
        backend: &str,
        ejected: bool,
        mut meanwhile: impl FnMut(),
    ) -> Result<Ejection> {
        let backend: std::net::SocketAddr = backend.parse()?;
        wait_for("an ejection or return", Duration::from_secs(30), || {
            meanwhile();
            let status = self.status(sandbox).ok()?;
            let found = status.ejections.into_iter().find(|e| e.backend == backend)?;
            (found.ejected == ejected).then_some(found)
        })
        .with_context(|| self.log())
    }

    /// Waits until the health of `backend` is `up`.
    pub fn wait_health(&self, sandbox: &Sandbox, backend: &str, up: bool) -> Result<()> {
        let backend: std::net::SocketAddr = backend.parse()?;
        wait_for("a health transition", Duration::from_secs(15), || {
            let status = self.status(sandbox).ok()?;
            status.health.iter().any(|h| h.backend == backend && h.up == up).then_some(())
        })
        .with_context(|| self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository whose `services/web.yaml` is `text`, committed, and its bare clone (in the
/// returned directory) that the daemon reads.
pub fn served_repo(text: &str) -> Result<(Repo, tempfile::TempDir, std::path::PathBuf)> {
    let work = Repo::new();
    work.write("services/web.yaml", text);
    work.commit("services");
    let served = tempfile::tempdir()?;
    let bare = work.bare_clone(served.path(), "services.git");
    Ok((work, served, bare))
}

/// A real git server (`git daemon`) in `netns`, on 127.0.0.1, serving the repositories
/// under `served` (as [`served_repo`] makes them); with the URL of `services.git`.
pub fn git_server(netns: &Sandbox, served: &Path) -> Result<(GitDaemon, String)> {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let in_netns = |program| netns.command_in_netns(program);
    let server = GitDaemon::start_with(served, loopback, in_netns, |s| netns.accepts(s));
    let url = server.url("services.git");
    Ok((server, url))
}

/// Waits until a batch of connects to `vip` fails none, and returns who answered.
pub fn settled(sandbox: &Sandbox, vip: &str) -> Result<BTreeSet<String>> {
    wait_for("connects that all succeed", Duration::from_secs(15), || {
        let result = sandbox.probe_tcp(vip, 30).ok()?;
        result.errors.is_empty().then(|| result.replies.into_keys().collect())
    })
}

pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `reconciler plan --detailed-exitcode` by hand on the sandbox's data plane, for the
/// repository `bare` (its cache under `cache_dir`): its text, once it exited 0 (nothing to
/// change: what the daemon overlays is not drift).
pub fn plan_by_hand_unchanged(sandbox: &Sandbox, bare: &Path, cache_dir: &Path) -> Result<String> {
    let plan = std::process::Command::new(reconciler_path()?)
        .args(["plan", "--detailed-exitcode", "--allow-local-health-checks", "127.0.0.0/8"])
        .arg("--repo")
        .arg(bare)
        .args(["--path", "services", "--cache-dir"])
        .arg(cache_dir.join("cli-cache"))
        .arg("--pin-path")
        .arg(sandbox.pin_path())
        .output()?;
    let text = String::from_utf8_lossy(&plan.stdout).into_owned();
    anyhow::ensure!(
        plan.status.code() == Some(0),
        "plan exited {:?}: {text}{}",
        plan.status.code(),
        String::from_utf8_lossy(&plan.stderr)
    );
    Ok(text)
}

/// The daemon of the configuration in `dir`, in `sandbox`'s network namespace, its log
/// appended to `dir/daemon.log`.
fn spawn(
    sandbox: &Sandbox,
    dir: &Path,
    launch: &dyn Fn(&mut std::process::Command),
) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log"))?;
    let mut command = sandbox.command_in_netns(reconciler_path()?);
    command.args(["daemon", "--config"]).arg(dir.join("node.yaml"));
    command.stdout(Stdio::null()).stderr(log);
    launch(&mut command);
    Ok(command.spawn()?)
}
