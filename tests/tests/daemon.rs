//! The real `reconciler daemon` process against a real `git daemon` on 127.0.0.1 and the real
//! data plane in a sandbox: commits arrive, bad commits are held back, the server goes away
//! and comes back, history is rewritten, maps are edited by hand, the daemon is killed.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use reconciler::daemon::http::{self, request};
use reconciler_tests::{
    add_service_by_hand,
    git::{loopback_address, Daemon as GitDaemon, Repo},
    hand_written_service_exists,
    prometheus::PrometheusServer,
    receiver::Receiver,
    reconciler_path, sample, wait_for, Sandbox, DATA_PLANE_PROGRAMS,
};
use tempfile::TempDir;

fn service(vip: &str, backend: &str) -> String {
    format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
         spec:\n  vip: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
         backends:\n    - {{address: {backend}}}\n"
    )
    .replace("backends:", "  backends:")
}

/// A sandbox with listeners `b11`/`b12`/`b13` at 127.0.0.11-13:8080, a repository served by
/// `git daemon`, and the reconciler daemon's configuration.
struct World {
    sandbox: Sandbox,
    work: Repo,
    served: TempDir,
    git_daemon: Option<GitDaemon>,
    /// Where `git daemon` and the reconciler daemon listen (their own ports).
    host: std::net::IpAddr,
    dir: TempDir,
    listen: String,
    daemon: Option<Child>,
}

impl World {
    fn new(test: &str, interval: &str, drift: &str) -> Result<Self> {
        let mut sandbox = Sandbox::new(test)?;
        for i in 11..=13 {
            sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
        }
        let work = Repo::new();
        work.write("services/web.yaml", service("10.96.0.10", "127.0.0.11"));
        work.commit("web on b11");
        let served = tempfile::tempdir()?;
        work.bare_clone(served.path(), "services.git");
        let host = loopback_address();
        let git_daemon = GitDaemon::start(served.path(), host);
        let dir = tempfile::tempdir()?;
        let listen = format!("{host}:9469");
        let config = format!(
            "source:\n  url: {}\n  ref: main\n  path: services\n  \
             interval: {interval}\n  cacheDir: {}\ndataplane:\n  cgroup: {}\n  pinPath: {}\n\
             policy:\n  allowedVIPs: [10.96.0.0/12]\nlisten: {listen}\ndrift: {drift}\n",
            git_daemon.url("services.git"),
            dir.path().join("cache").display(),
            sandbox.cgroup().display(),
            sandbox.pin_path().display()
        );
        std::fs::write(dir.path().join("node.yaml"), config)?;
        Ok(World {
            sandbox,
            work,
            served,
            git_daemon: Some(git_daemon),
            host,
            dir,
            listen,
            daemon: None,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.yaml")
    }

    /// Starts the reconciler daemon and waits until it is ready.
    fn start(&mut self) -> Result<()> {
        self.start_with(Command::new(reconciler_path()?))
    }

    /// Starts the daemon with at most `files` open files (soft and hard limit), as
    /// `prlimit --nofile=FILES:FILES` does (it sets the limit, then runs the daemon in its
    /// place, under its PID).
    fn start_with_open_files(&mut self, files: u64) -> Result<()> {
        let mut command = Command::new("prlimit");
        command.arg(format!("--nofile={files}:{files}")).arg("--").arg(reconciler_path()?);
        self.start_with(command)
    }

    fn start_with(&mut self, mut command: Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("daemon.log"))?;
        let child = command
            .args(["daemon", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        wait_for("the daemon to be ready", Duration::from_secs(20), || {
            matches!(request(&self.listen, "GET", "/readyz"), Ok((200, _))).then_some(())
        })
        .with_context(|| self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn kill(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        let mut child = self.daemon.take().context("no daemon running")?;
        // SAFETY: signalling the PID of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        Ok(child.wait()?)
    }

    /// SIGHUP: the daemon reads its configuration again.
    fn reload(&self) -> Result<()> {
        let pid = self.daemon.as_ref().context("no daemon running")?.id() as i32;
        // SAFETY: signalling the PID of a child we started and have not reaped.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        Ok(())
    }

    fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = request(&self.listen, "GET", "/status")?;
        ensure!(code == 200, "/status answered {code}");
        Ok(serde_json::from_str(&body)?)
    }

    fn metrics(&self) -> Result<String> {
        let (code, body) = request(&self.listen, "GET", "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    /// Commits `services/web.yaml` = `text` and pushes it; returns the commit.
    fn push(&self, text: &str) -> Result<String> {
        self.work.write("services/web.yaml", text);
        let commit = self.work.commit("change");
        self.work.git(&["push", "-q", "origin", "main"]);
        Ok(commit)
    }

    fn wait_applied(&self, commit: &str, limit: Duration) -> Result<()> {
        wait_for(&format!("{commit} to be applied"), limit, || {
            let status = self.status().ok()?;
            (status["applied_revision"] == commit).then_some(())
        })
        .with_context(|| self.log())
    }

    fn head(&self) -> String {
        self.work.git(&["rev-parse", "HEAD"])
    }

    /// Which listener 50 connects to the VIP reach (all of them must succeed).
    fn reached(&self) -> Result<Vec<String>> {
        let result = self.sandbox.probe_tcp("10.96.0.10:80", 50)?;
        ensure!(result.errors.is_empty(), "connects failed: {result:?}");
        Ok(result.replies.keys().cloned().collect())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.kill(libc::SIGKILL);
    }
}

#[test]
fn a_new_commit_is_applied_within_an_interval() -> Result<()> {
    let mut world = World::new("d-interval", "1s", "heal")?;
    world.start()?;
    assert_eq!(world.reached()?, ["b11"]);
    let commit = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    // Nothing asks for a run: the interval's (1 s, ±10%) applies it, well within the deadline.
    world.wait_applied(&commit, Duration::from_secs(10))?;
    assert_eq!(world.reached()?, ["b12"]);
    // The interval's runs read every entry (they look for drift).
    assert_eq!(world.status()?["last_plan"], "full");
    Ok(())
}

#[test]
fn post_reconcile_applies_at_once() -> Result<()> {
    let mut world = World::new("d-webhook", "1h", "heal")?;
    let api = service("10.96.0.20", "127.0.0.12").replace("name: web", "name: api");
    world.work.write("services/api.yaml", api);
    world.work.commit("api");
    world.work.git(&["push", "-q", "origin", "main"]);
    world.start()?;
    // The first run installs, reading everything; a run asked for takes the incremental path.
    assert_eq!(world.status()?["last_plan"], "full");
    let commit = world.push(&service("10.96.0.10", "127.0.0.13"))?;
    // With an hour's interval nothing would happen on its own.
    let (code, _) = request(&world.listen, "POST", "/reconcile")?;
    assert_eq!(code, 202);
    world.wait_applied(&commit, Duration::from_secs(5))?;
    assert_eq!(world.reached()?, ["b13"]);
    let status = world.status()?;
    assert_eq!(status["last_plan"], "incremental");
    // Counted from the whole state, not the plan's part of it (web only).
    assert_eq!((status["services"].as_u64(), status["backends"].as_u64()), (Some(2), Some(2)));
    Ok(())
}

#[test]
fn a_bad_commit_keeps_the_last_good_state_until_a_good_one_arrives() -> Result<()> {
    let mut world = World::new("d-bad", "300ms", "heal")?;
    world.start()?;
    let good = world.head();
    // Valid YAML and schema, but the VIP (a cloud metadata address) is outside the policy.
    let bad = world.push(&service("169.254.169.254", "127.0.0.12"))?;
    let status = wait_for("the bad commit to be rejected", Duration::from_secs(5), || {
        let status = world.status().ok()?;
        (status["failed_revision"] == bad.as_str()).then_some(status)
    })?;
    assert_eq!(status["applied_revision"], good.as_str());
    assert_eq!(status["attempted_revision"], bad.as_str());
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("invalid")), "{status}");
    let errors = status["errors"].as_array().context("errors")?;
    assert!(
        errors.iter().any(|e| e["field"] == "spec.vip"
            && e["message"].as_str().is_some_and(|m| m.contains("169.254.169.254"))),
        "{status}"
    );
    assert!(errors.iter().any(|e| e["file"] == "services/web.yaml" && e["line"] == 5), "{status}");
    assert_eq!(world.reached()?, ["b11"], "the data plane left the last good state");

    // The bad commit is not tried again: later runs skip it.
    wait_for("runs that skip the bad commit", Duration::from_secs(5), || {
        let metrics = world.metrics().ok()?;
        (sample(&metrics, "reconciler_reconcile_total{result=\"skipped\"}")? >= 2.0).then_some(())
    })?;
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"rejected\"}"), Some(1.0));

    let fixed = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    world.wait_applied(&fixed, Duration::from_secs(5))?;
    let status = world.status()?;
    assert!(status["failed_revision"].is_null() && status["last_error"].is_null(), "{status}");
    assert_eq!(world.reached()?, ["b12"]);
    Ok(())
}

#[test]
fn the_git_server_going_away_is_survived_and_reported() -> Result<()> {
    let mut world = World::new("d-server", "300ms", "heal")?;
    world.start()?;
    world.git_daemon.take().context("git daemon")?.stop();
    let url = format!("git://{}:{}/services.git", world.host, reconciler_tests::git::GIT_PORT);
    wait_for("the fetch error to show", Duration::from_secs(5), || {
        let status = world.status().ok()?;
        status["last_error"].as_str().is_some_and(|e| e.contains(&url)).then_some(())
    })?;
    assert_eq!(world.reached()?, ["b11"], "the data plane stopped serving");
    let metrics = world.metrics()?;
    assert!(sample(&metrics, "reconciler_reconcile_total{result=\"error\"}") >= Some(1.0));

    let commit = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    world.git_daemon = Some(GitDaemon::start(world.served.path(), world.host));
    world.wait_applied(&commit, Duration::from_secs(10))?;
    assert!(world.status()?["last_error"].is_null());
    assert_eq!(world.reached()?, ["b12"]);
    Ok(())
}

#[test]
fn a_force_push_to_an_older_commit_applies_the_older_state() -> Result<()> {
    let mut world = World::new("d-force", "300ms", "heal")?;
    world.start()?;
    let old = world.head();
    let new = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    world.wait_applied(&new, Duration::from_secs(5))?;
    world.work.git(&["push", "-q", "--force", "origin", &format!("{old}:refs/heads/main")]);
    world.wait_applied(&old, Duration::from_secs(5))?;
    assert_eq!(world.reached()?, ["b11"]);
    Ok(())
}

fn active_set(world: &World) -> Result<u8> {
    let output = Command::new(reconciler_path()?)
        .args(["status", "--output", "json", "--pin-path"])
        .arg(world.sandbox.pin_path())
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(status["active_set"].as_u64().context("active_set")? as u8)
}

#[test]
fn drift_is_healed_or_only_reported() -> Result<()> {
    for mode in ["heal", "report"] {
        let mut world = World::new(&format!("d-drift-{mode}"), "300ms", mode)?;
        let (receiver, notify) = Receiver::answering(None, &format!("{}:0", world.host))?;
        let config = std::fs::read_to_string(world.config_path())?;
        std::fs::write(world.config_path(), config + &notify)?;
        world.start()?;
        let pin = world.sandbox.pin_path().to_owned();
        let set = active_set(&world)?;
        add_service_by_hand(&pin, set)?;
        if mode == "heal" {
            wait_for("the hand-written entry to be removed", Duration::from_secs(5), || {
                (!hand_written_service_exists(&pin, set).ok()?).then_some(())
            })?;
            let metrics = world.metrics()?;
            assert!(
                sample(&metrics, "reconciler_reconcile_total{result=\"drift_healed\"}")
                    >= Some(1.0)
            );
            let healed = receiver.wait("drift healed told", |d| d.event() == "drift_healed")?;
            assert!(healed.body["entries"].as_u64() >= Some(1), "{:?}", healed.body);
        } else {
            let status = wait_for("drift to be reported", Duration::from_secs(5), || {
                let status = world.status().ok()?;
                (status["drift_entries"].as_u64()? > 0).then_some(status)
            })?;
            assert_eq!(status["drift"], "report");
            let found = receiver.wait("drift found told", |d| d.event() == "drift_found")?;
            assert!(found.body["entries"].as_u64() >= Some(1), "{:?}", found.body);
            let metrics = world.metrics()?;
            assert!(sample(&metrics, "reconciler_drift_entries") > Some(0.0), "{metrics}");
            // Reported, not repaired, on later runs too.
            wait_for("more runs", Duration::from_secs(5), || {
                let metrics = world.metrics().ok()?;
                (sample(&metrics, "reconciler_reconcile_total{result=\"drift_reported\"}")? >= 3.0)
                    .then_some(())
            })?;
            assert!(hand_written_service_exists(&pin, set)?, "report mode repaired the drift");
            // Told once, not at every run that finds it again, nor after a run asked for (it
            // reads only what it changes, and cannot tell the drift is gone).
            request(&world.listen, "POST", "/reconcile")?;
            wait_for("more runs after it", Duration::from_secs(5), || {
                let metrics = world.metrics().ok()?;
                (sample(&metrics, "reconciler_reconcile_total{result=\"drift_reported\"}")? >= 6.0)
                    .then_some(())
            })?;
            let got = receiver.got();
            let found: Vec<_> = got.iter().filter(|d| d.event() == "drift_found").collect();
            assert_eq!(found.len(), 1, "{found:?}");
        }
    }
    Ok(())
}

#[test]
fn a_killed_daemon_leaves_the_data_plane_serving_and_restarts_without_writing() -> Result<()> {
    let mut world = World::new("d-kill", "300ms", "heal")?;
    world.start()?;
    let generation = world.status()?["generation"].clone();
    world.kill(libc::SIGKILL)?;
    assert_eq!(world.reached()?, ["b11"], "connects failed with the daemon gone");

    world.start()?;
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_map_writes_total"), Some(0.0), "{metrics}");
    assert_eq!(world.status()?["generation"], generation);
    assert_eq!(world.status()?["applied_revision"], world.head().as_str());

    // SIGTERM stops it cleanly, and the data plane serves on.
    let exit = world.kill(libc::SIGTERM)?;
    assert!(exit.success(), "{exit:?}\n{}", world.log());
    assert_eq!(world.reached()?, ["b11"]);
    Ok(())
}

#[test]
fn sighup_reloads_the_configuration() -> Result<()> {
    let mut world = World::new("d-hup", "300ms", "heal")?;
    world.start()?;
    // A commit the current policy refuses...
    let commit = world.push(&service("10.200.0.10", "127.0.0.12"))?;
    wait_for("the commit to be refused", Duration::from_secs(5), || {
        (world.status().ok()?["failed_revision"] == commit.as_str()).then_some(())
    })?;
    // ...is applied once the node allows its VIP.
    let config = std::fs::read_to_string(world.config_path())?;
    std::fs::write(
        world.config_path(),
        config.replace("[10.96.0.0/12]", "[10.96.0.0/12, 10.200.0.0/16]"),
    )?;
    world.reload()?;
    world.wait_applied(&commit, Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn an_invalid_configuration_touches_nothing() -> Result<()> {
    let world = World::new("d-config", "1s", "heal")?;
    let config = std::fs::read_to_string(world.config_path())?;
    std::fs::write(world.config_path(), config.replace("interval: 1s", "interval: soon"))?;
    let output = Command::new(reconciler_path()?)
        .args(["daemon", "--config"])
        .arg(world.config_path())
        .output()?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node.yaml:5:13: source.interval:"), "{stderr}");
    assert!(!world.sandbox.pin_path().exists(), "a data plane was installed");
    Ok(())
}

/// Sends `request` (raw HTTP) to `addr` and returns the status code of the answer.
fn raw_request(addr: &str, request: &[u8]) -> Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let code = answer.split_whitespace().nth(1).context("no status line")?;
    Ok(code.parse()?)
}

#[test]
fn the_http_endpoint_reads_bodies_and_outlasts_idle_and_slow_clients() -> Result<()> {
    let mut world = World::new("d-http", "1h", "heal")?;
    world.start()?;
    // A webhook with a body is answered (the body read, not reset), and triggers a run.
    let before = world.runs()?;
    let body = format!("{{\"ref\":\"refs/heads/main\",\"pad\":\"{}\"}}", "x".repeat(10_000));
    let post = |body: &str| {
        format!(
            "POST /reconcile HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(raw_request(&world.listen, post(&body).as_bytes())?, 202);
    wait_for("the triggered run", Duration::from_secs(10), || {
        (world.runs().ok()? > before).then_some(())
    })?;
    // Too long a body is refused unread.
    let huge = format!(
        "POST /reconcile HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        http::MAX_BODY + 1
    );
    assert_eq!(raw_request(&world.listen, huge.as_bytes())?, 413);

    // 1 000 idle connections, and /healthz still answers.
    let idle: Vec<TcpStream> =
        (0..1000).map(|_| TcpStream::connect(&world.listen)).collect::<std::io::Result<_>>()?;
    assert_eq!(request(&world.listen, "GET", "/healthz")?, (200, "ok\n".to_owned()));
    // A client that stops in the middle of its headers is cut off (the header timeout).
    let mut slow = TcpStream::connect(&world.listen)?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
    slow.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    ensure!(read.is_ok(), "the server kept a half-sent request open: {read:?}");
    ensure!(!String::from_utf8_lossy(&rest).contains("200 OK"), "answered a half request");
    drop(idle);
    Ok(())
}

#[test]
fn accept_errors_back_off_instead_of_spinning() -> Result<()> {
    let mut world = World::new("d-emfile", "1h", "heal")?;
    world.start_with_open_files(64)?;
    // More clients than the daemon has descriptors: accept fails with EMFILE, again and again
    // until one is freed.
    let clients: Vec<TcpStream> =
        (0..100).map(|_| TcpStream::connect(&world.listen)).collect::<std::io::Result<_>>()?;
    let failed = |world: &World| world.log().matches("accepting an HTTP connection failed").count();
    wait_for("an accept to fail", Duration::from_secs(10), || (failed(&world) > 0).then_some(()))
        .with_context(|| world.log())?;
    // An observation window, not a synchronisation: a loop that retried at once would fail
    // millions of times in it; backing off (10 ms doubling to 1 s) fails about ten times.
    std::thread::sleep(Duration::from_secs(2));
    let failures = failed(&world);
    assert!(failures <= 20, "{failures} failed accepts in 2 s:\n{}", world.log());
    drop(clients);
    wait_for("/healthz again", Duration::from_secs(20), || {
        matches!(request(&world.listen, "GET", "/healthz"), Ok((200, _))).then_some(())
    })
    .with_context(|| world.log())
}

/// `promtool check metrics` on `text` (installed by `make setup` with the prometheus
/// package): Prometheus' own parser and linter.
fn promtool_check(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (installed by `make setup`)")?;
    child.stdin.take().context("promtool's stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics refused it:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `metrics.perBackend: false`: no series per backend, the per-service totals and the rest as
/// ever.
#[test]
fn metrics_per_backend_can_be_left_out() -> Result<()> {
    let mut world = World::new("d-metrics-lean", "1h", "heal")?;
    let mut config = std::fs::read_to_string(world.config_path())?;
    config.push_str("metrics:\n  perBackend: false\n");
    std::fs::write(world.config_path(), config)?;
    world.start()?;
    let result = world.sandbox.probe_tcp("10.96.0.10:80", 3)?;
    assert_eq!(result.replies.get("b11"), Some(&3), "{result:?}");
    let metrics = world.metrics()?;
    assert!(!metrics.contains("reconciler_backend_connections"), "{metrics}");
    assert!(!metrics.contains("reconciler_backend_reverse_translations"), "{metrics}");
    let refusals =
        "reconciler_service_refusals_total{service=\"web\",port=\"http\",reason=\"no_backend\"}";
    assert_eq!(sample(&metrics, refusals), Some(0.0), "{metrics}");
    let total =
        "reconciler_service_connections_total{service=\"web\",port=\"http\",protocol=\"TCP\"}";
    assert_eq!(sample(&metrics, total), Some(3.0), "{metrics}");
    assert_eq!(sample(&metrics, "reconciler_backends"), Some(1.0), "{metrics}");
    promtool_check(&metrics).with_context(|| metrics.clone())?;
    Ok(())
}

#[test]
fn metrics_are_prometheus_text_and_health_endpoints_answer() -> Result<()> {
    let mut world = World::new("d-metrics", "300ms", "heal")?;
    world.start()?;
    // Counters read from the maps at the scrape: exactly the connects made.
    let result = world.sandbox.probe_tcp("10.96.0.10:80", 13)?;
    assert_eq!(result.replies.get("b11"), Some(&13), "{result:?}");
    let metrics = world.metrics()?;
    let connections = "reconciler_backend_connections_total{service=\"web\",port=\"http\",\
                       backend=\"127.0.0.11:8080\",protocol=\"TCP\"}";
    assert_eq!(sample(&metrics, connections), Some(13.0), "{metrics}");
    let total =
        "reconciler_service_connections_total{service=\"web\",port=\"http\",protocol=\"TCP\"}";
    assert_eq!(sample(&metrics, total), Some(13.0), "{metrics}");
    let refusals =
        "reconciler_service_refusals_total{service=\"web\",port=\"http\",reason=\"no_backend\"}";
    assert_eq!(sample(&metrics, refusals), Some(0.0), "{metrics}");
    // A port of the VIP that no service defines: refused, counted under its own reason.
    let other_port = world.sandbox.probe_tcp("10.96.0.10:81", 2)?;
    assert_eq!(other_port.errors.get("ECONNREFUSED"), Some(&2), "{other_port:?}");
    let metrics = world.metrics()?;
    let unknown_port = "reconciler_refusals_total{reason=\"unknown_port\"}";
    assert_eq!(sample(&metrics, unknown_port), Some(2.0), "{metrics}");
    // How the 13 connections went (the `flows` program): all established, none failed.
    let failures = "reconciler_backend_connect_failures_total{service=\"web\",port=\"http\",\
                    backend=\"127.0.0.11:8080\"}";
    assert_eq!(sample(&metrics, failures), Some(0.0), "{metrics}");
    let handshakes = "reconciler_backend_connect_duration_seconds_count";
    assert_eq!(sample(&metrics, handshakes), Some(13.0), "{metrics}");
    let sent =
        "reconciler_backend_bytes_total{service=\"web\",port=\"http\",backend=\"127.0.0.11:8080\",\
                direction=\"sent\"}";
    assert!(sample(&metrics, sent).is_some(), "{metrics}");
    promtool_check(&metrics).with_context(|| metrics.clone())?;
    // A scraper that asks for OpenMetrics (Prometheus does) gets it.
    let mut stream = TcpStream::connect(&world.listen)?;
    stream.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; \
          version=1.0.0\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    assert!(answer.contains("content-type: application/openmetrics-text"), "{answer}");
    assert!(answer.ends_with("# EOF\n"), "{answer}");
    for name in [
        "reconciler_reconcile_total{result=\"applied\"}",
        "reconciler_reconcile_duration_seconds_count",
        "reconciler_last_apply_success_timestamp_seconds",
        &format!("reconciler_applied_revision_info{{revision=\"{}\"}}", world.head()),
        "reconciler_drift_entries",
        "reconciler_services",
        "reconciler_backends",
        "reconciler_map_writes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(sample(&metrics, name).is_some(), "no {name} in\n{metrics}");
    }
    assert_eq!(sample(&metrics, "reconciler_services"), Some(1.0));
    // A run with nothing to apply (every 300 ms here) is a success too: the time moves on.
    let success = "reconciler_last_apply_success_timestamp_seconds";
    let first = sample(&metrics, success).context("no success time")?;
    wait_for("a later run with nothing to apply", Duration::from_secs(10), || {
        (sample(&world.metrics().ok()?, success)? > first).then_some(())
    })?;
    // This kernel destroys sockets (CONFIG_INET_DIAG_DESTROY): the daemon asked it at start.
    assert_eq!(sample(&metrics, "reconciler_socket_destroy_supported"), Some(1.0), "{metrics}");
    assert_eq!(request(&world.listen, "GET", "/healthz")?.0, 200);
    assert_eq!(request(&world.listen, "GET", "/readyz")?.0, 200);
    assert_eq!(request(&world.listen, "GET", "/nope")?.0, 404);
    assert_eq!(request(&world.listen, "GET", "/reconcile")?.0, 405);
    // `reconciler status --daemon` shows the same from the command line.
    let output =
        Command::new(reconciler_path()?).args(["status", "--daemon", &world.listen]).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("Applied revision:   {}", world.head())), "{text}");
    // Gzipped for a client that accepts it: the same page.
    let url = format!("http://{}/metrics", world.listen);
    let output = Command::new("curl").args(["-sS", "--compressed", "-D", "-", &url]).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(text.contains("content-encoding: gzip"), "{text}");
    assert_eq!(sample(&text, connections), Some(13.0), "{text}");
    // A real Prometheus server scrapes it (OpenMetrics, gzip) and has the counter.
    let queries = [
        "up{job=\"reconciler\"}",
        "reconciler_backend_connections_total{backend=\"127.0.0.11:8080\"}",
        "reconciler_backend_connect_duration_seconds_count",
    ];
    let listen = format!("{}:9470", world.host);
    let prometheus = PrometheusServer::start(None, &listen, &[world.listen.as_str()])?;
    let values: Result<Vec<f64>> = queries.iter().map(|q| prometheus.value(None, q)).collect();
    assert_eq!(values?, [1.0, 13.0, 13.0]);
    Ok(())
}

#[test]
fn a_hostile_commit_is_refused_and_stays_refused_after_a_restart() -> Result<()> {
    let mut world = World::new("d-hostile", "300ms", "heal")?;
    world.start()?;
    let good = world.head();
    // An alias bomb, nesting that overflowed the parser's stack, and a link out of the tree.
    world.work.write("services/deep.yaml", format!("{}x\n", "- ".repeat(10_000)));
    std::os::unix::fs::symlink("/etc/passwd", world.work.path().join("services/passwd.yaml"))?;
    let bomb = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("invalid/alias-bomb.yaml"),
    )?;
    let bad = world.push(&bomb)?;
    let refused = |world: &World| -> Result<serde_json::Value> {
        wait_for("the hostile commit to be refused", Duration::from_secs(10), || {
            let status = world.status().ok()?;
            (status["failed_revision"] == bad.as_str()).then_some(status)
        })
        .with_context(|| world.log())
    };
    let status = refused(&world)?;
    let errors: Vec<String> = status["errors"]
        .as_array()
        .context("errors")?
        .iter()
        .map(|e| format!("{}:{}: {}", e["file"], e["line"], e["message"]))
        .collect();
    for expected in [
        "\"services/deep.yaml\":1: \"nested more than 32 levels deep",
        "\"services/passwd.yaml\":1: \"a symbolic link, which reconciler does not follow\"",
        "\"services/web.yaml\":6: \"YAML anchors",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected} in {errors:#?}");
    }
    assert_eq!(status["applied_revision"], good.as_str());
    assert_eq!(world.reached()?, ["b11"]);

    // A restart remembers the verdict: the commit is not checked again, and the status says
    // why it was refused, from the first run on.
    world.kill(libc::SIGKILL)?;
    world.start()?;
    let status = refused(&world)?;
    assert_eq!(status["applied_revision"], good.as_str(), "{status}");
    assert_eq!(status["errors"].as_array().map(Vec::len), Some(errors.len()), "{status}");
    assert!(world.log().contains("failed before this start"), "{}", world.log());
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"rejected\"}"), None);
    assert_eq!(sample(&metrics, "reconciler_map_writes_total"), Some(0.0));
    assert_eq!(world.reached()?, ["b11"]);
    Ok(())
}

#[test]
fn a_commit_that_defines_no_service_is_refused_unless_the_node_allows_it() -> Result<()> {
    let mut world = World::new("d-empty", "300ms", "heal")?;
    world.start()?;
    world.work.write("services/README.md", "moved elsewhere\n");
    world.work.git(&["rm", "-q", "services/web.yaml"]);
    let empty = world.work.commit("no services");
    world.work.git(&["push", "-q", "origin", "main"]);
    let status = wait_for("the empty commit to be refused", Duration::from_secs(5), || {
        let status = world.status().ok()?;
        (status["failed_revision"] == empty.as_str()).then_some(status)
    })?;
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refusing to destroy every service")),
        "{status}"
    );
    assert_eq!(world.reached()?, ["b11"]);

    let config = std::fs::read_to_string(world.config_path())?;
    let allowed = config.replace("policy:\n", "policy:\n  allowDestroyAll: true\n");
    std::fs::write(world.config_path(), allowed)?;
    world.reload()?;
    world.wait_applied(&empty, Duration::from_secs(5))?;
    assert_eq!(world.status()?["services"], 0);
    Ok(())
}

#[test]
fn sighup_does_not_move_the_data_plane() -> Result<()> {
    let mut world = World::new("d-move", "300ms", "heal")?;
    world.start()?;
    let elsewhere = format!("{}-elsewhere", world.sandbox.pin_path().display());
    let config = std::fs::read_to_string(world.config_path())?;
    let moved = config.replace(
        &format!("pinPath: {}", world.sandbox.pin_path().display()),
        &format!("pinPath: {elsewhere}"),
    );
    ensure!(moved != config, "the pin path is not in the configuration");
    std::fs::write(world.config_path(), moved)?;
    world.reload()?;
    wait_for("the reload to be refused", Duration::from_secs(5), || {
        world.log().contains("configuration not reloaded: dataplane.pinPath").then_some(())
    })?;
    // The running configuration goes on, whole: a new commit lands in the old data plane.
    let next = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    world.wait_applied(&next, Duration::from_secs(5))?;
    assert_eq!(world.reached()?, ["b12"]);
    assert!(!std::path::Path::new(&elsewhere).exists(), "a second data plane was installed");
    assert_eq!(world.sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    Ok(())
}

#[test]
fn the_daemon_refuses_a_vip_that_is_its_nodes_address_unless_allowed() -> Result<()> {
    // The daemon runs inside the sandbox's namespace, whose interfaces are its node's; the
    // source is a local repository, since git:// on the host's 127.0.0.1 is not reachable.
    let mut sandbox = Sandbox::new("d-local-vip")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    sandbox.run(&["ip", "link", "add", "node0", "type", "veth", "peer", "name", "node0p"])?;
    sandbox.run(&["ip", "addr", "add", "10.96.0.50/32", "dev", "node0"])?;
    let work = Repo::new();
    work.write("services/web.yaml", service("10.96.0.50", "127.0.0.11"));
    let commit = work.commit("a VIP that is the node's own address");
    let dir = tempfile::tempdir()?;
    let listen = "127.0.0.1:9469";
    let config = |allow: &str| {
        format!(
            "source: {{url: {}, path: services, interval: 300ms, cacheDir: {}}}\n\
             dataplane: {{cgroup: {}, pinPath: {}}}\npolicy: {{allowLocalVIPs: [{allow}]}}\n\
             listen: {listen}\n",
            work.path().display(),
            dir.path().join("cache").display(),
            sandbox.cgroup().display(),
            sandbox.pin_path().display()
        )
    };
    let config_path = dir.path().join("node.yaml");
    std::fs::write(&config_path, config(""))?;
    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let child = sandbox
        .command(reconciler_path()?)?
        .args(["daemon", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    // Killed by its PID when the test ends, also when it fails.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Running(child);
    let status = || -> Option<serde_json::Value> {
        let (code, body) = sandbox.in_netns(move || Ok(request(listen, "GET", "/status")?)).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let refused = wait_for("the commit to be refused", Duration::from_secs(10), || {
        status().filter(|s| s["failed_revision"] == commit.as_str())
    })
    .with_context(log)?;
    let errors = refused["errors"].to_string();
    assert!(
        errors.contains("VIP 10.96.0.50 is an address of this node (interface node0)"),
        "{errors}"
    );
    assert!(!sandbox.pin_path().exists(), "the refused commit was applied");

    std::fs::write(&config_path, config("10.96.0.50"))?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGHUP) };
    wait_for("the commit to be applied", Duration::from_secs(10), || {
        status().filter(|s| s["applied_revision"] == commit.as_str())
    })
    .with_context(log)?;
    assert_eq!(sandbox.probe_tcp("10.96.0.50:80", 5)?.replies.get("b11"), Some(&5));
    Ok(())
}

impl World {
    /// Adds `webhook.secretFile` (holding `secret`) to the configuration.
    fn require_webhook_secret(&self, secret: &str) -> Result<()> {
        let file = self.dir.path().join("webhook-secret");
        std::fs::write(&file, format!("{secret}\n"))?;
        let mut config = std::fs::read_to_string(self.config_path())?;
        config.push_str(&format!("webhook:\n  secretFile: {}\n", file.display()));
        Ok(std::fs::write(self.config_path(), config)?)
    }

    /// Reconcile runs so far, once no run is under way or asked for.
    fn runs_when_idle(&self) -> Result<f64> {
        wait_for("the daemon to be idle", Duration::from_secs(20), || {
            let status = self.status().ok()?;
            (status["running"] == false && status["run_requested"] == false).then_some(())
        })
        .with_context(|| self.log())?;
        self.runs()
    }

    /// Reconcile runs so far (the duration histogram counts every one).
    fn runs(&self) -> Result<f64> {
        let metrics = self.metrics()?;
        Ok(sample(&metrics, "reconciler_reconcile_duration_seconds_count").unwrap_or(0.0))
    }
}

/// `POST /reconcile` with `headers` and `body`; the status code of the answer.
fn post_webhook(listen: &str, headers: &[(&str, &str)], body: &str) -> Result<u16> {
    let mut request = format!(
        "POST /reconcile HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    raw_request(listen, request.as_bytes())
}

/// GitHub's `X-Hub-Signature-256` value for `body` under `secret`.
fn github_signature(secret: &str, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook secret of [`world_with_webhook_secret`].
const SECRET: &str = "correct horse battery staple";

/// A daemon started with `SECRET` as its webhook secret, its world named `name`.
fn world_with_webhook_secret(name: &str) -> Result<World> {
    let mut world = World::new(name, "1h", "heal")?;
    world.require_webhook_secret(SECRET)?;
    world.start()?;
    Ok(world)
}

#[test]
fn with_a_webhook_secret_only_githubs_signature_or_gitlabs_token_triggers_a_run() -> Result<()> {
    let world = world_with_webhook_secret("d-webhook")?;
    let before = world.runs_when_idle()?;
    let commit = world.push(&service("10.96.0.10", "127.0.0.12"))?;

    let body = r#"{"ref":"refs/heads/main"}"#;
    let forged = github_signature("another secret", body);
    let refused: [&[(&str, &str)]; 5] = [
        &[],
        &[("X-Hub-Signature-256", &forged)],
        &[("X-Hub-Signature-256", "sha256=not-hex")],
        &[("X-Hub-Signature", "sha1=0000000000000000000000000000000000000000")],
        &[("X-Gitlab-Token", "correct horse")],
    ];
    for headers in refused {
        assert_eq!(post_webhook(&world.listen, headers, body)?, 401, "{headers:?}");
    }
    // The signature covers the body: a signed body changed on the way is refused.
    let signed = github_signature(SECRET, body);
    let altered = body.replace("main", "evil");
    assert_eq!(post_webhook(&world.listen, &[("X-Hub-Signature-256", &signed)], &altered)?, 401);
    assert_eq!(
        sample(&world.metrics()?, "reconciler_webhook_requests_total{result=\"unauthorized\"}"),
        Some(6.0)
    );
    assert_eq!(world.runs_when_idle()?, before, "a refused webhook triggered a run");

    assert_eq!(post_webhook(&world.listen, &[("X-Hub-Signature-256", &signed)], body)?, 202);
    world.wait_applied(&commit, Duration::from_secs(10))?;
    assert_eq!(world.runs_when_idle()?, before + 1.0);

    let commit = world.push(&service("10.96.0.10", "127.0.0.13"))?;
    assert_eq!(post_webhook(&world.listen, &[("X-Gitlab-Token", SECRET)], "{}")?, 202);
    world.wait_applied(&commit, Duration::from_secs(10))?;
    assert_eq!(world.runs_when_idle()?, before + 2.0);
    assert_eq!(
        sample(&world.metrics()?, "reconciler_webhook_requests_total{result=\"accepted\"}"),
        Some(2.0)
    );
    assert_eq!(world.reached()?, ["b13"]);
    Ok(())
}

#[test]
fn reconcile_asks_a_daemon_for_a_run_signed_and_waits_for_its_result() -> Result<()> {
    let world = world_with_webhook_secret("d-ask")?;
    let ask = |extra: &[&str]| -> Result<std::process::Output> {
        let mut command = Command::new(reconciler_path()?);
        Ok(command.args(["reconcile", "--daemon", &world.listen]).args(extra).output()?)
    };
    let text = |output: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let commit = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    // Unsigned: refused, and it says what to give.
    let refused = ask(&["--wait"])?;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--secret-file"), "{}", text(&refused));
    // Signed with the daemon's secret: the run, waited for.
    let secret = world.dir.path().join("webhook-secret").display().to_string();
    let done = ask(&["--secret-file", &secret, "--wait"])?;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    assert!(text(&done).contains(&format!("holds revision {commit}")), "{}", text(&done));
    let status = |world: &World| -> Result<Option<i32>> {
        let mut command = Command::new(reconciler_path()?);
        Ok(command.args(["status", "--daemon", &world.listen]).output()?.status.code())
    };
    assert_eq!(status(&world)?, Some(0));
    // A commit that fails: the run's result is the exit code, and `status --daemon` agrees.
    world.push("apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n")?;
    let failed = ask(&["--secret-file", &secret, "--wait"])?;
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(text(&failed).contains("The run failed: 1 invalid definition(s)"), "{}", text(&failed));
    assert_eq!(status(&world)?, Some(2));
    Ok(())
}

/// Ten signed deliveries that send their headers, then wait while a client without the
/// secret opens twice as many connections as the daemon keeps: the crowd closes its own
/// connections, never a delivery, and each delivery's body, sent after, is accepted.
#[test]
fn signed_webhook_deliveries_are_never_crowded_out() -> Result<()> {
    let world = world_with_webhook_secret("d-webhook-crowd")?;
    let body = r#"{"ref":"refs/heads/main"}"#;
    let signature = github_signature(SECRET, body);
    let mut deliveries = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&world.listen)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let headers = format!(
            "POST /reconcile HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
             X-Hub-Signature-256: {signature}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(headers.as_bytes())?;
        // hyper says `100 Continue` when the handler reads the body: its headers are checked.
        let mut interim = [0_u8; 25];
        stream.read_exact(&mut interim)?;
        ensure!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{interim:?}");
        deliveries.push(stream);
    }
    let crowd: Vec<TcpStream> = (0..2 * http::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(&world.listen))
        .collect::<Result<_, _>>()?;
    // Accepted in order: once a request after the crowd is answered, all of it was accepted.
    assert_eq!(request(&world.listen, "GET", "/healthz")?.0, 200);
    for mut delivery in deliveries {
        delivery.write_all(body.as_bytes())?;
        let mut answer = [0_u8; 12];
        delivery.read_exact(&mut answer)?;
        assert_eq!(&answer, b"HTTP/1.1 202", "a delivery was crowded out");
    }
    drop(crowd);
    Ok(())
}

#[test]
fn webhooks_arriving_during_a_run_become_one_more_run() -> Result<()> {
    let mut world = World::new("d-coalesce", "1h", "heal")?;
    world.start()?;
    let before = world.runs_when_idle()?;
    // Holding the fetch cache's lock holds the next run in its fetch.
    let cache = world.dir.path().join("cache");
    let lock_path = std::fs::read_dir(&cache)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| path.extension().is_some_and(|e| e == "lock"))
        .context("the cache has no lock file")?;
    let lock = std::fs::File::open(&lock_path)?;
    lock.lock()?;
    assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    wait_for("the run to start", Duration::from_secs(10), || {
        (world.status().ok()?["running"] == true).then_some(())
    })?;
    for _ in 0..20 {
        assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    }
    assert_eq!(world.status()?["run_requested"], true);
    drop(lock);
    assert_eq!(world.runs_when_idle()?, before + 2.0, "the held run and one more");
    Ok(())
}

#[test]
fn healthz_answers_under_1000_idle_connections_at_a_1024_file_limit() -> Result<()> {
    let mut world = World::new("d-crowd", "1h", "heal")?;
    world.start_with_open_files(1024)?;
    let pid = world.daemon.as_ref().context("no daemon")?.id();
    // This process needs its 1 000 descriptors too.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    ensure!(
        limit.rlim_cur > 1100,
        "this test needs 1 100 open files, the limit is {}",
        limit.rlim_cur
    );
    let idle: Vec<TcpStream> =
        (0..1000).map(|_| TcpStream::connect(&world.listen)).collect::<std::io::Result<_>>()?;
    assert_eq!(request(&world.listen, "GET", "/healthz")?, (200, "ok\n".to_owned()));
    // The crowd holds no more than the bound: the oldest connections were closed for newer.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    ensure!(
        open <= http::MAX_CONNECTIONS + 64,
        "the daemon holds {open} descriptors with 1 000 idle clients (bound {})",
        http::MAX_CONNECTIONS
    );
    drop(idle);
    Ok(())
}

#[test]
fn a_commit_the_source_cannot_read_is_a_failed_revision_not_retried() -> Result<()> {
    let mut world = World::new("d-permanent", "1h", "heal")?;
    world.start()?;
    // The configured `path: services` is gone from this commit: no retry can mend it.
    world.work.git(&["mv", "services", "moved"]);
    let commit = world.work.commit("move the services away");
    world.work.git(&["push", "-q", "origin", "main"]);
    assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    world.runs_when_idle()?;
    let status = world.status()?;
    assert_eq!(status["failed_revision"], commit.as_str(), "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("subdirectory `services` not found"), "{status}");
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"rejected\"}"), Some(1.0));
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"error\"}"), None);

    // Asked again, the commit is fetched but not tried again.
    assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    world.runs_when_idle()?;
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"skipped\"}"), Some(1.0));
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"rejected\"}"), Some(1.0));
    assert_eq!(world.reached()?, ["b11"]);
    Ok(())
}

#[test]
fn with_source_verify_an_unsigned_commit_is_refused_and_the_last_good_stays() -> Result<()> {
    let mut world = World::new("d-signed", "1h", "heal")?;
    let keys = tempfile::tempdir()?;
    let (alice, alice_public) = reconciler_tests::git::ssh_key(keys.path(), "alice");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("test@example.com {alice_public}\n"))?;
    let signed = world.work.commit_signed("signed by alice", &alice);
    world.work.git(&["push", "-q", "origin", "main"]);
    let config = std::fs::read_to_string(world.config_path())?.replace(
        "  path: services\n",
        &format!("  path: services\n  verify:\n    allowedSigners: {}\n", allowed.display()),
    );
    std::fs::write(world.config_path(), config)?;
    world.start()?;
    assert_eq!(world.status()?["applied_revision"], signed.as_str());

    let unsigned = world.push(&service("10.96.0.10", "127.0.0.12"))?;
    assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    world.runs_when_idle()?;
    let status = world.status()?;
    assert_eq!(status["failed_revision"], unsigned.as_str(), "{status}");
    assert_eq!(status["applied_revision"], signed.as_str(), "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("is not verified: it is not signed"), "{status}");
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"unverified\"}"), Some(1.0));
    assert_eq!(world.reached()?, ["b11"]);
    // The good commit and the unsigned one were checked; fetched again, the unsigned one is
    // refused from memory, not read and checked again.
    let checks = "reconciler_signature_checks_total";
    assert_eq!(sample(&metrics, checks), Some(2.0));
    for _ in 0..2 {
        assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
        world.runs_when_idle()?;
    }
    let metrics = world.metrics()?;
    assert_eq!(sample(&metrics, "reconciler_reconcile_total{result=\"skipped\"}"), Some(2.0));
    assert_eq!(sample(&metrics, checks), Some(2.0));
    assert_eq!(world.status()?["failed_revision"], unsigned.as_str());

    world.work.write("services/web.yaml", service("10.96.0.10", "127.0.0.13"));
    let good = world.work.commit_signed("signed again", &alice);
    world.work.git(&["push", "-q", "origin", "main"]);
    assert_eq!(post_webhook(&world.listen, &[], "{}")?, 202);
    world.wait_applied(&good, Duration::from_secs(10))?;
    assert_eq!(world.reached()?, ["b13"]);
    assert_eq!(sample(&world.metrics()?, checks), Some(3.0));
    Ok(())
}
