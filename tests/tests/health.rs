//! Health-checked failover with the real daemon: it runs in the sandbox's network namespace
//! (not its cgroup), probes real listeners, and takes a killed one out through the usual
//! atomic apply, then back in when it returns; with every backend dead it keeps them all.
use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result};
use reconciler::{daemon::http::request, dataplane::Dataplane};
use reconciler_core::state::BackendState;
use reconciler_tests::{
    git::{self, Repo},
    gitops::checked_web,
    netns_daemon::{names, plan_by_hand_unchanged, served_repo, settled, Daemon},
    receiver::Receiver,
    reconciler_path, wait_for, Sandbox,
};

const VIP: &str = "10.96.0.10:80";

fn web(backends: &[&str]) -> String {
    web_with(backends, "")
}

/// `web` with `spec` lines added.
fn web_with(backends: &[&str], spec: &str) -> String {
    checked_web(backends) + spec
}

#[test]
fn a_dead_backend_is_taken_out_and_comes_back_and_all_dead_keeps_all() -> Result<()> {
    let mut sandbox = Sandbox::new("health")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let work = Repo::new();
    work.write("services/web.yaml", web(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]));
    work.commit("web with health checks");
    let served = tempfile::tempdir()?;
    let bare = work.bare_clone(served.path(), "services.git");
    let (receiver, notify) = Receiver::answering(Some(&sandbox), "127.0.0.30:9000")?;
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &notify)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12", "b13"]));

    // b12 dies: within two failed probes and one apply it is out; then no connect fails.
    sandbox.stop_server("127.0.0.12:8080")?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", false)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b13"]));
    let result = sandbox.probe_tcp(VIP, 100)?;
    assert!(result.errors.is_empty(), "{result:?}");
    // Git is still the desired state: a plan by hand shows the exclusion, and no change.
    let text = plan_by_hand_unchanged(&sandbox, &bare, served.path())?;
    assert!(text.contains("Health exclusions") && text.contains("127.0.0.12:8080"), "{text}");
    let metrics = daemon.get(&sandbox, "/metrics")?;
    let down = "reconciler_backend_up{service=\"web\",port=\"http\",backend=\"127.0.0.12:8080\"} 0";
    assert!(metrics.contains(down), "{metrics}");

    // It comes back.
    sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", true)?;
    wait_for("b12 to answer again", Duration::from_secs(15), || {
        let result = sandbox.probe_tcp(VIP, 30).ok()?;
        (result.errors.is_empty() && result.replies.contains_key("b12")).then_some(())
    })?;

    // Every backend dies: all stay in (fail open), none is marked unhealthy in the maps.
    for i in 11..=13 {
        sandbox.stop_server(&format!("127.0.0.{i}:8080"))?;
    }
    for i in 11..=13 {
        daemon.wait_health(&sandbox, &format!("127.0.0.{i}:8080"), false)?;
    }
    // The last transition's apply follows the status by a moment: wait for it.
    wait_for("every backend back in the maps (fail open)", Duration::from_secs(15), || {
        let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
        live.backends.values().all(|b| b.state == BackendState::Active).then_some(())
    })
    .with_context(|| daemon.log())?;
    assert_eq!(daemon.status(&sandbox)?.health_failing_open, ["web/http"]);
    assert!(daemon.log().contains("keeping them all (fail open)"), "{}", daemon.log());
    let told = receiver.wait("fail open told", |d| d.event() == "failing_open")?;
    assert_eq!(told.body["reason"], "health");
    assert_eq!(told.body["services"], serde_json::json!(["web/http"]));
    // One returns: it takes every connect.
    sandbox.serve_tcp("127.0.0.13:8080", "b13")?;
    daemon.wait_health(&sandbox, "127.0.0.13:8080", true)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b13"]));
    Ok(())
}

#[test]
fn a_service_with_no_healthy_backend_falls_back_to_another() -> Result<()> {
    let mut sandbox = Sandbox::new("health-fallback")?;
    for i in [11, 12, 21, 22] {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let work = Repo::new();
    let mut text = web_with(&["127.0.0.11", "127.0.0.12"], "  fallback: web-dr\n");
    text.push_str(
        "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web-dr}\n\
         spec:\n  vip: 10.96.0.20\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
         backends: [{address: 127.0.0.21}, {address: 127.0.0.22}]\n",
    );
    work.write("services/web.yaml", text);
    work.commit("web with a fallback");
    let served = tempfile::tempdir()?;
    let bare = work.bare_clone(served.path(), "services.git");
    let daemon = Daemon::start(&sandbox, &bare)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));

    // Both of web's backends die: web-dr's take web's connects.
    sandbox.stop_server("127.0.0.11:8080")?;
    sandbox.stop_server("127.0.0.12:8080")?;
    daemon.wait_health(&sandbox, "127.0.0.11:8080", false)?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", false)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b21", "b22"]));
    let result = sandbox.probe_tcp(VIP, 100)?;
    assert!(result.errors.is_empty(), "{result:?}");

    // One of web's comes back: web serves itself again.
    sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", true)?;
    wait_for("web to serve itself again", Duration::from_secs(15), || {
        let result = sandbox.probe_tcp(VIP, 30).ok()?;
        (result.errors.is_empty() && result.replies.keys().all(|k| k == "b12")).then_some(())
    })?;
    Ok(())
}

/// A git server that accepts and never answers holds no failover back: the fetch hangs (shown
/// in `/status`) until `source.timeout`, while a dead backend is taken out at once; the
/// server back, a new commit lands.
#[test]
fn a_git_server_that_hangs_delays_new_commits_never_failover() -> Result<()> {
    let mut sandbox = Sandbox::new("hung-git")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let work = Repo::new();
    work.write("services/web.yaml", web(&["127.0.0.11", "127.0.0.12"]));
    work.commit("web");
    let served = tempfile::tempdir()?;
    work.bare_clone(served.path(), "services.git");
    // `git daemon` in the sandbox's namespace, where the daemon fetches from.
    let address = "127.0.0.1".parse()?;
    let git = git::Daemon::start_with(
        served.path(),
        address,
        |program| sandbox.command_in_netns(program),
        |socket| sandbox.in_netns(move || Ok(std::net::TcpStream::connect(socket)?)).is_ok(),
    );
    let source = "  interval: 1s\n  timeout: 8s\n  connectTimeout: 1s\n";
    let daemon = Daemon::start_with(&sandbox, &git.url("services.git"), source)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));

    git.pause(true);
    let hanging = wait_for("a fetch that hangs", Duration::from_secs(10), || {
        daemon.status(&sandbox).ok()?.fetching_since
    })
    .with_context(|| daemon.log())?;
    sandbox.stop_server("127.0.0.12:8080")?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", false)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11"]));
    let status = daemon.status(&sandbox)?;
    assert_eq!(status.fetching_since.as_ref(), Some(&hanging), "the fetch is the same one");
    assert!(status.failed_revision.is_none(), "{status:?}");
    // The fetch gives up at the timeout, and says so.
    wait_for("the fetch to time out", Duration::from_secs(15), || {
        let error = daemon.status(&sandbox).ok()?.last_error?;
        error.contains("not done within 8s").then_some(())
    })
    .with_context(|| daemon.log())?;

    // The server back: a new commit is applied.
    git.pause(false);
    work.write("services/web.yaml", web(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]));
    let commit = work.commit("web on three");
    work.git(&["push", "-q", "origin", "HEAD"]);
    wait_for("the new commit", Duration::from_secs(30), || {
        let status = daemon.status(&sandbox).ok()?;
        (status.applied_revision.as_deref() == Some(commit.as_str())).then_some(())
    })
    .with_context(|| daemon.log())?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b13"]));
    Ok(())
}

/// `s1`..`s3` (VIPs 10.96.0.1..3) share one backend, 127.0.0.11, each falling back to `dr`
/// (one backend of weight 400); with `with_s` false, `dr` alone.
fn shared_backend_and_dr(with_s: bool) -> String {
    let check = "healthCheck: {intervalSeconds: 1, timeoutMillis: 500, unhealthyThreshold: 2, \
                 healthyThreshold: 1}";
    let mut text = String::new();
    for i in 1..=3 {
        text.push_str(&format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}}}\n\
             spec:\n  vip: 10.96.0.{i}\n  ports: [{{port: 80, targetPort: 8080}}]\n  \
             fallback: dr\n  {check}\n  backends: [{{address: 127.0.0.11}}]\n---\n"
        ));
    }
    if !with_s {
        text.clear();
    }
    text.push_str(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: dr}\nspec:\n  \
         vip: 10.96.0.20\n  ports: [{port: 80, targetPort: 8080}]\n  \
         backends: [{address: 127.0.0.21, weight: 400}]\n",
    );
    text
}

/// A revision whose failovers would not fit the data plane's capacity (applied by hand,
/// validated without knowing it): when the shared backend dies, the daemon takes as many
/// fallbacks as fit, the others keep their own (fail open), says which, and never marks the
/// revision failed; a new revision like it is refused at validation, naming the services.
#[test]
fn failovers_that_would_overflow_the_capacity_are_held_back_never_a_failed_revision() -> Result<()>
{
    let mut sandbox = Sandbox::new("failover-cap")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    sandbox.serve_tcp("127.0.0.21:8080", "b21")?;
    let work = Repo::new();
    let served = tempfile::tempdir()?;
    work.write("services/all.yaml", shared_backend_and_dr(false));
    work.commit("dr");
    let bare = work.bare_clone(served.path(), "services.git");
    let apply = |extra: &[&str]| -> Result<()> {
        let output = std::process::Command::new(reconciler_path()?)
            .args(["apply", "--allow-local-health-checks", "127.0.0.0/8", "--repo"])
            .arg(&bare)
            .args(["--path", "services", "--cache-dir"])
            .arg(served.path().join("cli-cache"))
            .arg("--pin-path")
            .arg(sandbox.pin_path())
            .arg("--cgroup")
            .arg(sandbox.cgroup())
            .args(extra)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(output.status.success(), "apply {extra:?}: {stderr}");
        Ok(())
    };
    // Installed with room for 1 000 slots; then s1..s3 by a hand that does not say it: 403
    // slots of their own fit, 1 600 with every fallback taken would not.
    apply(&["--capacity", "slots=1000"])?;
    work.write("services/all.yaml", shared_backend_and_dr(true));
    let revision = work.commit("s1..s3 falling back to dr");
    work.git(&["push", "-q", "origin", "HEAD"]);
    apply(&[])?;
    let (receiver, notify) = Receiver::answering(Some(&sandbox), "127.0.0.30:9000")?;
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &notify)?;

    sandbox.stop_server("127.0.0.11:8080")?;
    daemon.wait_health(&sandbox, "127.0.0.11:8080", false)?;
    let status = wait_for("failovers held back", Duration::from_secs(15), || {
        let status = daemon.status(&sandbox).ok()?;
        (!status.failover_held_back.is_empty()).then_some(status)
    })
    .with_context(|| daemon.log())?;
    // 400 (dr) + 400 (one falls back) + 1 + 1 (two keep their own) fit in 1 000.
    assert_eq!(status.failover_held_back.len(), 2, "{status:?}");
    assert_eq!(status.failed_revision, None, "{status:?}");
    assert_eq!(status.applied_revision.as_deref(), Some(revision.as_str()));
    let reached: Vec<bool> = (1..=3)
        .map(|i| {
            let result = sandbox.probe_tcp(&format!("10.96.0.{i}:80"), 5)?;
            Ok(result.replies.get("b21") == Some(&5))
        })
        .collect::<Result<_>>()?;
    assert_eq!(reached.iter().filter(|r| **r).count(), 1, "{reached:?}");
    assert!(daemon.log().contains("their fallbacks would not fit"), "{}", daemon.log());
    let told = receiver.wait("fail open told", |d| d.event() == "failing_open")?;
    assert_eq!(told.body["reason"], "capacity");
    assert_eq!(told.body["services"], serde_json::json!(status.failover_held_back));

    // A new revision that could overflow so is refused, naming the services; nothing changes.
    work.write(
        "services/all.yaml",
        shared_backend_and_dr(true).replace("weight: 400", "weight: 401"),
    );
    let refused = work.commit("dr heavier");
    work.git(&["push", "-q", "origin", "HEAD"]);
    let listen = daemon.listen.clone();
    sandbox.in_netns(move || Ok(request(&listen, "POST", "/reconcile")?.0))?;
    let status = wait_for("the new revision refused", Duration::from_secs(15), || {
        let status = daemon.status(&sandbox).ok()?;
        (status.failed_revision.as_deref() == Some(refused.as_str())).then_some(status)
    })
    .with_context(|| daemon.log())?;
    let errors: Vec<String> = status.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.iter().any(|e| e.contains("spec.fallback") && e.contains("s1 (+")),
        "{errors:?}"
    );
    assert_eq!(status.applied_revision.as_deref(), Some(revision.as_str()));
    Ok(())
}

/// A service on 10.96.0.`n`:80 named `name`, of `backends`, with `check` (flow YAML).
fn checked(name: &str, n: u8, backends: &[&str], check: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("{{address: {b}}}")).collect();
    format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
         vip: 10.96.0.{n}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         healthCheck: {{{check}, intervalSeconds: 1, timeoutMillis: 500, unhealthyThreshold: 2, \
         healthyThreshold: 1}}\n  backends: [{}]\n",
        list.join(", ")
    )
}

/// A backend two services list with different checks is judged by each for itself: `a`'s
/// check (port 9000, where 127.0.0.11 does not listen) takes it out of `a`, while `b`'s
/// (the backend's own port) keeps it in `b`; `/status` shows both verdicts.
#[test]
fn each_service_judges_a_shared_backend_by_its_own_check() -> Result<()> {
    let mut sandbox = Sandbox::new("per-service")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    sandbox.serve_tcp("127.0.0.12:9000", "check")?;
    let work = Repo::new();
    let a = checked("a", 1, &["127.0.0.11", "127.0.0.12"], "port: 9000");
    let b = checked("b", 2, &["127.0.0.11"], "protocol: tcp");
    work.write("services/all.yaml", format!("{a}---\n{b}"));
    work.commit("a and b share 127.0.0.11");
    let served = tempfile::tempdir()?;
    let bare = work.bare_clone(served.path(), "services.git");
    let daemon = Daemon::start(&sandbox, &bare)?;
    let shared: std::net::SocketAddr = "127.0.0.11:8080".parse()?;
    let status = wait_for("a's verdict on 127.0.0.11", Duration::from_secs(15), || {
        let status = daemon.status(&sandbox).ok()?;
        status.health.iter().any(|h| h.backend == shared && !h.up).then_some(status)
    })
    .with_context(|| daemon.log())?;
    let verdicts: BTreeSet<(Vec<String>, bool)> = status
        .health
        .iter()
        .filter(|h| h.backend == shared)
        .map(|h| (h.services.clone(), h.up))
        .collect();
    assert_eq!(
        verdicts,
        BTreeSet::from([(vec!["a/http".to_owned()], false), (vec!["b/http".to_owned()], true)])
    );
    wait_for("a without 127.0.0.11", Duration::from_secs(15), || {
        let result = sandbox.probe_tcp("10.96.0.1:80", 20).ok()?;
        (result.replies.get("b12") == Some(&20)).then_some(())
    })
    .with_context(|| daemon.log())?;
    assert_eq!(sandbox.probe_tcp("10.96.0.2:80", 20)?.replies.get("b11"), Some(&20));
    Ok(())
}

/// A restart keeps what the checks knew: the exclusions the data plane recorded hold from
/// the first run on, until probes say otherwise; not one connect fails across it.
#[test]
fn a_restart_never_lets_a_dead_backend_back_in() -> Result<()> {
    let mut sandbox = Sandbox::new("health-restart")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let (_work, served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"]))?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    sandbox.stop_server("127.0.0.12:8080")?;
    daemon.wait_health(&sandbox, "127.0.0.12:8080", false)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11"]));

    let stop = served.path().join("stop");
    let probe = sandbox.spawn_probe_until(&stop, VIP)?;
    drop(daemon);
    let daemon = Daemon::start(&sandbox, &bare)?;
    // Kept out from the start; then the restarted daemon's own probe confirms it.
    let dead: std::net::SocketAddr = "127.0.0.12:8080".parse()?;
    wait_for("the restarted daemon's probe of 127.0.0.12", Duration::from_secs(10), || {
        let status = daemon.status(&sandbox).ok()?;
        let h = status.health.iter().find(|h| h.backend == dead && !h.up)?;
        let error = h.last_error.as_deref()?;
        (!error.contains("before the daemon started")).then_some(())
    })
    .with_context(|| daemon.log())?;
    std::fs::write(&stop, "")?;
    let result = probe.wait()?;
    assert!(result.total() > 0, "{result:?}");
    assert!(result.errors.is_empty(), "connects failed across the restart: {result:?}");
    assert!(daemon.log().contains("kept until probed"), "{}", daemon.log());
    Ok(())
}

/// A backend that flaps is held out longer each time it goes down again (an ejection
/// multiplier, as Envoy's): the second time, once it passes again, it stays out for five
/// intervals before it is back in; each transition is logged once.
#[test]
fn a_flapping_backend_is_held_out_longer_each_time() -> Result<()> {
    let mut sandbox = Sandbox::new("flap")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let (_work, _served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"]))?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    let flapping = "127.0.0.12:8080";
    // Down and back: the first time, back in at its first passing probe.
    sandbox.stop_server(flapping)?;
    daemon.wait_health(&sandbox, flapping, false)?;
    sandbox.serve_tcp(flapping, "b12")?;
    daemon.wait_health(&sandbox, flapping, true)?;
    // Down again: once it passes, it is held out for 5 intervals (5 s here).
    sandbox.stop_server(flapping)?;
    daemon.wait_health(&sandbox, flapping, false)?;
    sandbox.serve_tcp(flapping, "b12")?;
    let back = std::time::Instant::now();
    daemon.wait_health(&sandbox, flapping, true)?;
    let held = back.elapsed();
    assert!(held >= Duration::from_secs(3), "held out only {held:?}");
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));
    let log = daemon.log();
    assert_eq!(log.matches("backend unhealthy; taken out").count(), 2, "{log}");
    assert_eq!(log.matches("backend healthy again; back in").count(), 2, "{log}");
    Ok(())
}

/// Health checks at a smaller scale than `make bench`'s: 30 services of 10 backends, none
/// listening (refused at once), are all known down within `unhealthyThreshold` ×
/// `intervalSeconds` (2 s) + the first probe's jitter (1.1 s) + 2 s; the log says each
/// transition once, or in a summary line past 20 a second.
#[test]
fn three_hundred_refused_targets_are_all_known_within_two_intervals_and_two_seconds() -> Result<()>
{
    let sandbox = Sandbox::new("health-scale")?;
    let work = Repo::new();
    let mut text = String::new();
    for s in 0..30u32 {
        let backends: Vec<String> = (0..10)
            .map(|b| format!("127.0.{}.{}", 1 + (s * 10 + b) / 250, 1 + (s * 10 + b) % 250))
            .collect();
        let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
        text.push_str(
            &checked(&format!("s{s}"), 0, &refs, "protocol: tcp")
                .replace("vip: 10.96.0.0", &format!("vip: 10.96.1.{}", s + 1)),
        );
        text.push_str("---\n");
    }
    work.write("services/all.yaml", text.trim_end_matches("---\n"));
    work.commit("30 services of 10 dead backends");
    let served = tempfile::tempdir()?;
    let bare = work.bare_clone(served.path(), "services.git");
    let daemon = Daemon::start(&sandbox, &bare)?;
    let started = std::time::Instant::now();
    let status = wait_for("every target known down", Duration::from_secs(15), || {
        let status = daemon.status(&sandbox).ok()?;
        (status.health.len() == 300 && status.health.iter().all(|h| !h.up)).then_some(status)
    })
    .with_context(|| daemon.log())?;
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(5_100), "all 300 known after {took:?}");
    assert_eq!(status.health_failing_open.len(), 30, "{:?}", status.health_failing_open);
    // The summary of the lines held back comes at the end of their second.
    let log = wait_for("the summary line", Duration::from_secs(5), || {
        let log = daemon.log();
        log.contains("more health transitions in the last second").then_some(log)
    })
    .with_context(|| daemon.log())?;
    let lines = log.matches("backend unhealthy; taken out").count();
    assert!(lines < 300, "{lines} transition lines");
    Ok(())
}

/// An HTTP server on `addr` in the sandbox that answers each request with a `200 OK`, written
/// `piece` bytes at a time, `pause` apart; it runs until the test process ends.
fn serve_http_in_pieces(
    sandbox: &Sandbox,
    addr: &str,
    piece: usize,
    pause: Duration,
) -> Result<std::thread::JoinHandle<()>> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let listener = sandbox.in_netns(move || Ok(std::net::TcpListener::bind(addr)?))?;
    Ok(std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                for chunk in answer.chunks(piece) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    // The server's own pace, which the probe must wait out.
                    std::thread::sleep(pause);
                }
            });
        }
    }))
}

/// The HTTP probe reads the status line however it arrives: in two writes 50 ms apart, or a
/// byte every 10 ms, it is a pass; an answer with no status line is a failure, shown in
/// `/status` by its kind, without addresses.
#[test]
fn the_http_probe_reads_a_status_line_that_arrives_in_pieces() -> Result<()> {
    let mut sandbox = Sandbox::new("http-pieces")?;
    let _two = serve_http_in_pieces(&sandbox, "127.0.0.11:8080", 9, Duration::from_millis(50))?;
    let _bytes = serve_http_in_pieces(&sandbox, "127.0.0.12:8080", 1, Duration::from_millis(10))?;
    sandbox.serve_tcp("127.0.0.13:8080", "b13")?;
    let check = "protocol: http, path: /healthz";
    let text = checked("web", 10, &["127.0.0.11", "127.0.0.12", "127.0.0.13"], check);
    let (_work, _served, bare) = served_repo(&text)?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    // Down after two failed probes; the other two, probed as often, never failed one.
    daemon.wait_health(&sandbox, "127.0.0.13:8080", false)?;
    let status = daemon.status(&sandbox)?;
    for h in &status.health {
        let pieces = h.backend.ip().to_string() != "127.0.0.13";
        assert_eq!(h.up, pieces, "{h:?}");
        if !pieces {
            assert_eq!(h.last_error.as_deref(), Some("no HTTP status line"), "{h:?}");
        } else {
            assert_eq!(h.last_error, None, "{h:?}");
        }
    }
    Ok(())
}
