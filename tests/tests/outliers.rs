//! Outlier detection with the real daemon and the real `flows` program: clients' own connects
//! that fail (reset by a backend that stopped listening, or timed out on SYNs an nftables
//! rule drops) eject the backend through the usual atomic apply; it comes back after its
//! time, goes out again for twice as long, and never more than `maxEjectionPercent` of a
//! service's backends are out.
use std::{collections::BTreeMap, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_core::state::BackendState;
use reconciler_tests::{
    netns_daemon::{names, plan_by_hand_unchanged, served_repo, settled, Daemon},
    receiver::Receiver,
    reconciler_path, wait_for, Running, Sandbox,
};

const VIP: &str = "10.96.0.10:80";

/// Service `web` on `VIP` with `backends` (port 8080) and `outlierDetection: {detection}`.
fn web(backends: &[&str], detection: &str) -> String {
    let mut text = format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         outlierDetection: {detection}\n  backends:\n"
    );
    for backend in backends {
        text.push_str(&format!("    - {{address: {backend}}}\n"));
    }
    text
}

/// The live state of each backend, by address.
fn backend_states(sandbox: &Sandbox) -> Option<BTreeMap<String, BackendState>> {
    let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
    Some(live.backends.values().map(|b| (b.addr.to_string(), b.state)).collect())
}

/// Waits until the maps hold `backend` in `state`.
fn wait_state(
    sandbox: &Sandbox,
    daemon: &Daemon,
    backend: &str,
    state: BackendState,
) -> Result<()> {
    wait_for("the backend's state in the maps", Duration::from_secs(15), || {
        (backend_states(sandbox)?.get(backend) == Some(&state)).then_some(())
    })
    .with_context(|| daemon.log())
}

/// Connects through the VIP, 10 at a time, adding the failed ones to `failed`.
fn connect_counting(sandbox: &Sandbox, failed: &mut u64) {
    if let Ok(result) = sandbox.probe_tcp(VIP, 10) {
        *failed += result.errors.values().sum::<u64>();
    }
}

#[test]
fn a_backend_that_resets_connects_is_ejected_comes_back_and_goes_out_for_twice_as_long(
) -> Result<()> {
    let mut sandbox = Sandbox::new("outliers-rst")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let detection =
        "{consecutiveFailures: 3, intervalSeconds: 1, baseEjectionSeconds: 4, maxEjectionPercent: 50}";
    let (_work, served, bare) =
        served_repo(&web(&["127.0.0.11", "127.0.0.12", "127.0.0.13"], detection))?;
    let (receiver, notify) = Receiver::answering(Some(&sandbox), "127.0.0.30:9000")?;
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &notify)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12", "b13"]));
    let trace_out = served.path().join("trace.json");
    let _trace = Running(
        std::process::Command::new(reconciler_path()?)
            .args(["trace", "--output", "json", "--pin-path"])
            .arg(sandbox.pin_path())
            .stdout(std::fs::File::create(&trace_out)?)
            .stderr(Stdio::null())
            .spawn()?,
    );

    // b12 stops listening: each connect to it is reset. Clients' failures eject it.
    sandbox.stop_server("127.0.0.12:8080")?;
    let mut failed = 0;
    let ejection = daemon.wait_ejection(&sandbox, "127.0.0.12:8080", true, || {
        connect_counting(&sandbox, &mut failed)
    })?;
    assert!(ejection.failures >= 3 && failed >= 3, "{ejection:?}, {failed} failed");
    assert_eq!((ejection.ejections, ejection.seconds), (1, 4), "{ejection:?}");
    wait_state(&sandbox, &daemon, "127.0.0.12:8080", BackendState::Unhealthy)?;
    // The failed connects stop there.
    let after = sandbox.probe_tcp(VIP, 100)?;
    assert!(after.errors.is_empty() && !after.replies.contains_key("b12"), "{after:?}");

    // A plan by hand shows the ejection, and no change to make.
    let text = plan_by_hand_unchanged(&sandbox, &bare, served.path())?;
    assert!(text.contains("Ejections") && text.contains("127.0.0.12:8080"), "{text}");
    assert!(!text.contains("Health exclusions"), "{text}");
    let metrics = daemon.get(&sandbox, "/metrics")?;
    let series = "{service=\"web\",port=\"http\",backend=\"127.0.0.12:8080\"}";
    assert!(
        metrics.contains(&format!("reconciler_backend_ejections_total{series} 1")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("reconciler_backend_ejected{series} 1")), "{metrics}");
    assert!(daemon.log().contains("backend ejected"), "{}", daemon.log());
    let out = receiver.wait("the ejection's notification", |d| d.event() == "backend_out")?;
    assert_eq!(out.body["reason"], "ejection");
    assert_eq!(out.body["ejected_seconds"], 4);
    assert_eq!(out.body["backends"], serde_json::json!(["127.0.0.12:8080"]));
    assert_eq!(out.body["services"], serde_json::json!(["web/http"]));
    wait_for("the trace to show the ejection", Duration::from_secs(10), || {
        let trace = std::fs::read_to_string(&trace_out).ok()?;
        trace
            .lines()
            .find(|l| l.contains("\"event\":\"ejected\"") && l.contains("127.0.0.12:8080"))
            .map(str::to_owned)
    })?;

    // After its 4 s it comes back, fails again, and goes out for twice as long.
    daemon.wait_ejection(&sandbox, "127.0.0.12:8080", false, || {})?;
    let back = receiver.wait("the return's notification", |d| d.event() == "backend_back")?;
    assert_eq!(back.body["reason"], "ejection");
    let again = daemon.wait_ejection(&sandbox, "127.0.0.12:8080", true, || {
        connect_counting(&sandbox, &mut failed)
    })?;
    assert_eq!((again.ejections, again.seconds), (2, 8), "{again:?}");
    Ok(())
}

#[test]
fn a_backend_whose_syns_are_dropped_is_ejected_on_timeouts() -> Result<()> {
    let mut sandbox = Sandbox::new("outliers-syn")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    // A connect whose SYNs go unanswered times out after 3 s (1 s, then 2 s) here.
    sandbox.run(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"])?;
    let detection =
        "{consecutiveFailures: 2, intervalSeconds: 1, baseEjectionSeconds: 60, maxEjectionPercent: 50}";
    let (_work, _served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"], detection))?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));

    let rule = "add table inet outliers; add chain inet outliers out { type filter hook output \
                priority 0; }; add rule inet outliers out ip daddr 127.0.0.12 tcp dport 8080 \
                tcp flags syn drop";
    sandbox.run(&["nft", rule])?;
    let stop = tempfile::tempdir()?;
    let stop_file = stop.path().join("stop");
    let clients =
        (0..4).map(|_| sandbox.spawn_probe_until(&stop_file, VIP)).collect::<Result<Vec<_>>>()?;
    let ejection = daemon.wait_ejection(&sandbox, "127.0.0.12:8080", true, || {});
    std::fs::write(&stop_file, "")?;
    let seen: Vec<_> = clients.into_iter().map(|c| c.wait()).collect::<Result<_>>()?;
    let ejection = ejection?;
    assert!(ejection.failures >= 2, "{ejection:?}");
    let timed_out: u64 = seen.iter().filter_map(|r| r.errors.get("ETIMEDOUT")).sum();
    assert!(timed_out >= 2, "{seen:?}");

    wait_state(&sandbox, &daemon, "127.0.0.12:8080", BackendState::Unhealthy)?;
    let after = sandbox.probe_tcp(VIP, 50)?;
    assert_eq!(after.replies.get("b11"), Some(&50), "{after:?}");
    Ok(())
}

#[test]
fn no_more_than_max_ejection_percent_are_ejected_when_every_backend_fails() -> Result<()> {
    let mut sandbox = Sandbox::new("outliers-all")?;
    let backends = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    for (i, backend) in backends.iter().enumerate() {
        sandbox.serve_tcp(&format!("{backend}:8080"), &format!("b{i}"))?;
    }
    let detection =
        "{consecutiveFailures: 2, intervalSeconds: 1, baseEjectionSeconds: 60, maxEjectionPercent: 50}";
    let (_work, _served, bare) = served_repo(&web(&backends, detection))?;
    let (receiver, notify) = Receiver::answering(Some(&sandbox), "127.0.0.30:9000")?;
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &notify)?;
    settled(&sandbox, VIP)?;
    for backend in backends {
        sandbox.stop_server(&format!("{backend}:8080"))?;
    }
    let mut failed = 0;
    wait_for("the service to fail open", Duration::from_secs(30), || {
        connect_counting(&sandbox, &mut failed);
        let status = daemon.status(&sandbox).ok()?;
        let out = status.ejections.iter().filter(|e| e.ejected).count();
        (out == 2 && status.ejections_failing_open == ["web/http"]).then_some(())
    })
    .with_context(|| daemon.log())?;
    // Two of four are out in the maps, and stay so however much the rest fail.
    wait_for("two backends out in the maps", Duration::from_secs(15), || {
        let states = backend_states(&sandbox)?;
        (states.values().filter(|s| **s == BackendState::Unhealthy).count() == 2).then_some(())
    })
    .with_context(|| daemon.log())?;
    for _ in 0..5 {
        connect_counting(&sandbox, &mut failed);
    }
    let status = daemon.status(&sandbox)?;
    assert_eq!(status.ejections.iter().filter(|e| e.ejected).count(), 2, "{status:?}");
    assert!(daemon.log().contains("outlier detection fails open"), "{}", daemon.log());
    // What a fleet's view (`reconciler fleet`) and the waves' gates read of it.
    let metrics = daemon.get(&sandbox, "/metrics")?;
    for line in [
        "reconciler_services_failing_open{reason=\"ejections\"} 1",
        "reconciler_services_failing_open{reason=\"health\"} 0",
        "reconciler_backends_ejected 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let told = receiver.wait("fail open told", |d| d.event() == "failing_open")?;
    assert_eq!(told.body["reason"], "ejections");
    assert_eq!(told.body["services"], serde_json::json!(["web/http"]));
    Ok(())
}

#[test]
fn a_backend_ejected_from_a_tcp_port_leaves_the_udp_ports_and_its_connected_udp_sockets_end(
) -> Result<()> {
    let mut sandbox = Sandbox::new("outliers-udp")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:5300"), &format!("b{i}"))?;
        sandbox.serve_udp(&format!("127.0.0.{i}:5300"), &format!("b{i}"))?;
    }
    let dns = "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: dns}\nspec:\n  \
               vip: 10.96.0.53\n  ports:\n    - {name: tcp, port: 53, targetPort: 5300}\n    \
               - {name: udp, port: 53, protocol: UDP, targetPort: 5300}\n  outlierDetection: \
               {consecutiveFailures: 2, intervalSeconds: 1, baseEjectionSeconds: 60, \
               maxEjectionPercent: 50}\n  backends: [{address: 127.0.0.11}, {address: 127.0.0.12}]\n";
    let (_work, _served, bare) = served_repo(dns)?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    // A client whose connected UDP socket went to b12 (each new socket is translated anew).
    let client = wait_for("a UDP client on b12", Duration::from_secs(15), || {
        let mut client = sandbox.connected_udp_client("10.96.0.53:53").ok()?;
        (client.line().ok()? == "b12").then_some(client)
    })?;

    // b12 resets TCP connects (an nftables rule), still answering over UDP: TCP clients'
    // connects to it fail, and it is ejected.
    let rule = "add table inet outliers; add chain inet outliers out { type filter hook output \
                priority 0; }; add rule inet outliers out ip daddr 127.0.0.12 tcp dport 5300 \
                reject with tcp reset";
    sandbox.run(&["nft", rule])?;
    daemon.wait_ejection(&sandbox, "127.0.0.12:5300", true, || {
        let _ = sandbox.probe_tcp("10.96.0.53:53", 10);
    })?;
    wait_for("b12 out of both ports", Duration::from_secs(15), || {
        let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
        let b12 = live.backends.values().filter(|b| b.addr.to_string() == "127.0.0.12:5300");
        b12.clone().all(|b| b.state == BackendState::Unhealthy).then_some(b12.count())
    })
    .and_then(|count| {
        anyhow::ensure!(count == 2, "b12 is in {count} services");
        Ok(())
    })?;
    assert_eq!(client.finish()?, ["ECONNABORTED"]);
    Ok(())
}
