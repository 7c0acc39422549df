//! `reconciler fleet`, against a real Prometheus server scraping three real daemons: which
//! node runs which revision, and which node is failing, drifting or unreachable.
use std::{process::Output, time::Duration};

use anyhow::{Context as _, Result};
use reconciler_tests::{
    add_service_by_hand,
    netns_daemon::{git_server, served_repo, Daemon, Place},
    prometheus::PrometheusServer,
    reconciler_path, wait_for, Sandbox,
};

/// `web` on 10.96.0.10, and with `more` another service on 10.97.0.10.
fn definitions(more: bool) -> String {
    let web = "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n\
               spec:\n  vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
               backends: [{address: 127.0.0.11}]\n";
    match more {
        false => web.to_owned(),
        true => {
            format!("{web}---\n{}", web.replace("name: web", "name: api").replace("10.96", "10.97"))
        }
    }
}

/// `reconciler fleet` in the hub's namespace, with `args`.
fn fleet(hub: &Sandbox, prometheus: &PrometheusServer, args: &[&str]) -> Result<Output> {
    Ok(hub
        .command_in_netns(reconciler_path()?)
        .args(["fleet", "--prometheus", &prometheus.url()])
        .args(args)
        .output()?)
}

/// Runs `reconciler fleet` until its text has every one of `lines` and it exits `code`.
fn fleet_shows(
    hub: &Sandbox,
    prometheus: &PrometheusServer,
    code: i32,
    lines: &[String],
) -> Result<String> {
    let mut last = String::new();
    wait_for("the fleet's view", Duration::from_secs(30), || {
        let output = fleet(hub, prometheus, &[]).ok()?;
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let shown = lines.iter().all(|line| last.lines().any(|l| l == line));
        (shown && output.status.code() == Some(code)).then(|| last.clone())
    })
    .with_context(|| format!("last seen (exit code {code} wanted):\n{last}"))
}

#[test]
fn the_fleet_view_shows_each_revision_and_each_stuck_node() -> Result<()> {
    let hub = Sandbox::new("fleet-hub")?;
    let mut nodes = Vec::new();
    for name in ["fv-1", "fv-2", "fv-3"] {
        let mut node = Sandbox::new(name)?;
        node.serve_tcp("127.0.0.11:8080", "b11")?;
        nodes.push(node);
    }
    let (work, served, _bare) = served_repo(&definitions(false))?;
    let first = work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let (_git, url) = git_server(&hub, served.path())?;
    let source = "  interval: 300ms\n";
    // edge-2 reports drift instead of healing it; edge-3 allows no VIP outside 10.96/16.
    let setups = [
        ("127.0.0.1:9471", "policy: {}\n", "node: {name: edge-1, labels: {zone: a}}\n"),
        (
            "127.0.0.1:9472",
            "policy: {}\n",
            "node: {name: edge-2, labels: {zone: b}}\ndrift: report\n",
        ),
        ("127.0.0.1:9473", "policy: {allowedVIPs: [10.96.0.0/16]}\n", "node: {name: edge-3}\n"),
    ];
    let mut daemons = Vec::new();
    for (node, (listen, policy, top)) in nodes.iter().zip(setups) {
        let at = Place { hub: &hub, node, listen, policy };
        daemons.push(Daemon::spawn_node(&at, &url, source, top)?);
    }
    for daemon in &daemons {
        daemon.wait_ready(&hub)?;
    }
    let targets = setups.map(|(listen, ..)| listen);
    let prometheus = PrometheusServer::start(Some(&hub), "127.0.0.1:9090", &targets)?;
    let text =
        fleet_shows(&hub, &prometheus, 0, &[format!("Revision {first}: 3 nodes (wave 1: 3)")])?;
    assert!(text.starts_with("3 nodes in 1 revision ("), "{text}");
    assert!(text.ends_with("No node is stuck.\n"), "{text}");

    // A commit edge-3 refuses.
    work.write("services/web.yaml", definitions(true));
    let second = work.commit("api on 10.97.0.10");
    work.git(&["push", "-q", "origin", "HEAD"]);
    let lines = [
        format!("Revision {second}: 2 nodes (wave 1: 2)"),
        format!("Revision {first}: 1 node (wave 1: 1)"),
        format!("  Failing: edge-3 (refused {second})"),
        "1 node stuck: edge-3".to_owned(),
    ];
    fleet_shows(&hub, &prometheus, 2, &lines)?;
    // A service written by hand into edge-2's maps (both sets: whichever is live).
    add_service_by_hand(nodes[1].pin_path(), 0)?;
    add_service_by_hand(nodes[1].pin_path(), 1)?;
    let lines = ["2 nodes stuck: edge-2, edge-3".to_owned()];
    let text = fleet_shows(&hub, &prometheus, 2, &lines)?;
    assert!(text.contains("  Drifting: edge-2 ("), "{text}");
    let json = fleet(&hub, &prometheus, &["--output", "json"])?;
    assert_eq!(json.status.code(), Some(2));
    let view: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let node = |name: &str| view["nodes"].as_array()?.iter().find(|n| n["node"] == name).cloned();
    let edge_1 = node("edge-1").context("edge-1")?;
    assert_eq!((&edge_1["zone"], &edge_1["revision"]), (&"a".into(), &second.as_str().into()));
    assert_eq!(edge_1["stuck"], serde_json::json!([]));
    assert_eq!(node("edge-3").context("edge-3")?["stuck"], serde_json::json!(["failing"]));
    assert_eq!(view["stuck"], serde_json::json!(["edge-2", "edge-3"]));

    // edge-1's daemon is gone: Prometheus no longer reaches it.
    drop(daemons.remove(0));
    let lines = [
        "  Unreachable: edge-1 (127.0.0.1:9471)".to_owned(),
        "3 nodes stuck: edge-1, edge-2, edge-3".to_owned(),
    ];
    fleet_shows(&hub, &prometheus, 2, &lines)?;
    Ok(())
}

#[test]
fn without_prometheus_or_daemons_the_fleet_view_is_an_error() -> Result<()> {
    let hub = Sandbox::new("fleet-none")?;
    let output = fleet(&hub, &PrometheusServer::start(Some(&hub), "127.0.0.1:9090", &[])?, &[])?;
    // Before it listens, or once it does: either way, no view and exit code 1.
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("Prometheus at http://127.0.0.1:9090"), "{text}");
    Ok(())
}
