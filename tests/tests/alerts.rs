//! `deploy/prometheus/alerts.yaml` and `deploy/grafana/reconciler.json` against the real
//! thing: promtool checks the rules and runs their unit tests, and Debian's Prometheus,
//! scraping a real daemon, fires the rejection alert when a commit is refused and answers
//! every query of the dashboard with data.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use reconciler::fleet::prometheus::Prometheus;
use reconciler_tests::{
    docs,
    gitops::service,
    netns_daemon::{served_repo, Daemon},
    prometheus::PrometheusServer,
    wait_for, Sandbox,
};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() -> Result<()> {
    for args in [["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .context("promtool (Debian's prometheus, which `make setup` installs)")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.success(), "promtool {}: {text}", args.join(" "));
        ensure!(text.contains("SUCCESS"), "promtool {}: {text}", args.join(" "));
    }
    Ok(())
}

/// Every query of the dashboard, `$instance` as "every node".
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(deploy("grafana/reconciler.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            queries.push((title.clone(), expr.replace("$instance", ".*")));
        }
    }
    Ok(queries)
}

#[test]
fn a_refused_commit_fires_its_alert_and_every_dashboard_query_has_data() -> Result<()> {
    let mut sandbox = Sandbox::new("alerts")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    // A health check and outlier detection: the series of backend health and ejections exist.
    let checks =
        "  healthCheck: {intervalSeconds: 1}\n  outlierDetection: {consecutiveFailures: 5}\n";
    let (work, _served, bare) =
        served_repo(&(service("web", "10.96.0.10", &[("127.0.0.11", 1)]) + checks))?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    sandbox.probe_tcp("10.96.0.10:80", 3)?;
    // Every metric it exports is in one row of docs/operations.md's table.
    let undocumented = docs::undocumented_metrics(&daemon.get(&sandbox, "/metrics")?);
    ensure!(
        undocumented.is_empty(),
        "docs/ does not list these once, in one table row: {undocumented:?}"
    );
    let rules = [deploy("prometheus/alerts.yaml")];
    let prometheus = PrometheusServer::start_with_rules(
        Some(&sandbox),
        "127.0.0.1:9090",
        &[&daemon.listen],
        &rules,
    )?;
    // A few scrapes, so that rates over them have two samples.
    prometheus.value(Some(&sandbox), "count_over_time(reconciler_ready[1m]) >= 3")?;
    let url = prometheus.url();
    for (panel, query) in dashboard_queries()? {
        let (url, asked) = (url.clone(), query.clone());
        let answer = sandbox
            .in_netns(move || Ok(Prometheus::new(&url, Duration::from_secs(5)).query(&asked)?))
            .with_context(|| format!("panel {panel:?}: {query}"))?;
        ensure!(!answer.samples.is_empty(), "panel {panel:?}: no data for {query}");
    }

    // A commit the node refuses: the alert fires, naming the node and the revision.
    work.write("services/web.yaml", "kind: Service\n");
    let refused = work.commit("broken");
    work.git(&["push", "-q", "origin", "HEAD"]);
    daemon.ask(&sandbox)?;
    let firing = "ALERTS{alertname=\"ReconcilerRevisionRejected\",alertstate=\"firing\"}";
    let alert = wait_for("the rejection alert to fire", Duration::from_secs(30), || {
        prometheus.query(Some(&sandbox), firing)?.samples.into_iter().next()
    })
    .with_context(|| prometheus.log())?;
    assert_eq!(alert.labels.get("revision"), Some(&refused), "{alert:?}");
    assert_eq!(alert.labels.get("instance"), Some(&daemon.listen), "{alert:?}");
    Ok(())
}
