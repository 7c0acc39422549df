//! One repository for many nodes, with the real daemon: a node installs only the services its
//! labels select (`spec.nodeSelector`), says which it leaves out, and takes others at once
//! when its labels change (SIGHUP).
use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_tests::{
    netns_daemon::{git_server, served_repo, Daemon},
    reconciler_path, wait_for, Sandbox,
};

/// `name` on `vip` (port 80 to 8080 of `backend`), with `selector` lines under `spec` if any.
fn service(name: &str, vip: &str, backend: &str, selector: &str) -> String {
    format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
         vip: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         backends: [{{address: {backend}}}]\n{selector}---\n"
    )
}

fn definitions() -> String {
    [
        service("edge-a", "10.96.0.10", "127.0.0.11", "  nodeSelector: {matchLabels: {zone: a}}\n"),
        service(
            "edge-b",
            "10.96.0.20",
            "127.0.0.21",
            "  nodeSelector:\n    matchExpressions: [{key: zone, operator: In, values: [b, c]}]\n",
        ),
        service("everywhere", "10.96.0.30", "127.0.0.11", ""),
    ]
    .concat()
}

/// The VIPs the live maps hold.
fn vips(sandbox: &Sandbox) -> Option<BTreeSet<String>> {
    let live = Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state;
    Some(live.services.keys().map(|f| f.vip.to_string()).collect())
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_node_installs_the_services_its_labels_select_and_follows_a_label_change() -> Result<()> {
    let mut sandbox = Sandbox::new("fleet-selector")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    sandbox.serve_tcp("127.0.0.21:8080", "b21")?;
    let (_work, served, bare) = served_repo(&definitions())?;
    let (_git, url) = git_server(&sandbox, served.path())?;
    let node = "node:\n  name: edge-1\n  labels: {zone: a}\n";
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", node)?;
    wait_for("zone a's services", Duration::from_secs(15), || {
        (vips(&sandbox)? == set(&["10.96.0.10", "10.96.0.30"])).then_some(())
    })
    .with_context(|| daemon.log())?;
    let status = daemon.status(&sandbox)?;
    let shown = status.node.context("/status has the node")?;
    assert_eq!(
        (shown.name.as_str(), shown.labels.get("zone").map(String::as_str)),
        ("edge-1", Some("a"))
    );

    // A plan by hand for the same node: nothing to change, and the service it leaves out.
    let plan = std::process::Command::new(reconciler_path()?)
        .args(["plan", "--detailed-exitcode", "--node-name", "edge-1", "--node-label", "zone=a"])
        .arg("--repo")
        .arg(&bare)
        .args(["--path", "services", "--cache-dir"])
        .arg(served.path().join("cli-cache"))
        .arg("--pin-path")
        .arg(sandbox.pin_path())
        .output()?;
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&plan.stderr));
    assert!(text.contains("Not on this node (nodeSelector): edge-b"), "{text}");

    // The node moves to zone b: SIGHUP, and at once edge-b instead of edge-a.
    daemon.reconfigure("node:\n  name: edge-1\n  labels: {zone: b}\n")?;
    wait_for("zone b's services", Duration::from_secs(15), || {
        (vips(&sandbox)? == set(&["10.96.0.20", "10.96.0.30"])).then_some(())
    })
    .with_context(|| daemon.log())?;
    let reached = sandbox.probe_tcp("10.96.0.20:80", 5)?;
    assert_eq!(reached.replies.get("b21"), Some(&5), "{reached:?}");
    // Who the node is, for a fleet's view from Prometheus.
    let metrics = daemon.get(&sandbox, "/metrics")?;
    assert!(metrics.contains("reconciler_node_info{node=\"edge-1\",zone=\"b\"} 1"), "{metrics}");
    assert!(metrics.contains("reconciler_build_info{version="), "{metrics}");
    Ok(())
}

#[test]
fn plan_against_for_a_node_class_shows_the_changes_that_reach_it() -> Result<()> {
    let repo = reconciler_tests::git::Repo::new();
    repo.write("services/all.yaml", definitions());
    let first = repo.commit("three services");
    let both_moved =
        definitions().replace("127.0.0.11", "127.0.0.12").replace("127.0.0.21", "127.0.0.22");
    repo.write("services/all.yaml", both_moved);
    repo.commit("every backend moves");
    let cache = tempfile::tempdir()?;
    let plan_for = |zone: &str| -> Result<String> {
        let output = std::process::Command::new(reconciler_path()?)
            .args(["plan", "--repo", &repo.url(), "--path", "services", "--against", &first])
            .args(["--node-label", &format!("zone={zone}"), "--cache-dir"])
            .arg(cache.path())
            .output()?;
        anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let zone_b = plan_for("b")?;
    assert!(
        zone_b.contains("service \"edge-b\"") && zone_b.contains("service \"everywhere\""),
        "{zone_b}"
    );
    assert!(!zone_b.contains("service \"edge-a\""), "{zone_b}");
    assert!(zone_b.contains("Not on this node (nodeSelector): edge-a"), "{zone_b}");
    let zone_a = plan_for("a")?;
    assert!(
        zone_a.contains("service \"edge-a\"") && !zone_a.contains("service \"edge-b\""),
        "{zone_a}"
    );
    Ok(())
}

#[test]
fn prefer_zone_keeps_connects_in_the_nodes_zone_while_enough_backends_there_serve() -> Result<()> {
    let mut sandbox = Sandbox::new("fleet-zone")?;
    for i in 11..=14 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let web =
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
               vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
               topology: {mode: PreferZone, minBackends: 2}\n  healthCheck: {intervalSeconds: 1, \
               timeoutMillis: 500, unhealthyThreshold: 2, healthyThreshold: 1}\n  backends:\n    \
               - {address: 127.0.0.11, zone: a}\n    - {address: 127.0.0.12, zone: a}\n    \
               - {address: 127.0.0.13, zone: b}\n    - {address: 127.0.0.14, zone: b}\n";
    let (_work, served, _bare) = served_repo(web)?;
    let (_git, url) = git_server(&sandbox, served.path())?;
    let node = "node:\n  name: edge-1\n  labels: {zone: a}\n";
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", node)?;
    answering(&sandbox, &daemon, &["b11", "b12"])?;
    let status = daemon.status(&sandbox)?;
    assert_eq!(
        status.topology.get("web/http").map(String::as_str),
        Some("zone a: 2 of 4 backends")
    );

    // One of zone a's dies: fewer than two there, so every zone's serve.
    sandbox.stop_server("127.0.0.12:8080")?;
    answering(&sandbox, &daemon, &["b11", "b13", "b14"])?;
    // It comes back: zone a again.
    sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    answering(&sandbox, &daemon, &["b11", "b12"])?;
    Ok(())
}

/// Waits until connects to the test's VIP are answered by `wanted` alone, none failing.
fn answering(sandbox: &Sandbox, daemon: &Daemon, wanted: &[&str]) -> Result<()> {
    let wanted: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    wait_for("connects answered by these backends alone", Duration::from_secs(20), || {
        let result = sandbox.probe_tcp("10.96.0.10:80", 40).ok()?;
        let answered: BTreeSet<String> = result.replies.into_keys().collect();
        (result.errors.is_empty() && answered == wanted).then_some(())
    })
    .with_context(|| daemon.log())
}
