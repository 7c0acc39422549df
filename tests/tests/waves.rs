//! Staged rollouts across nodes (`rollout: {wave, gate}`), with three real daemons in three
//! waves and a real Prometheus server scraping them: a later wave applies a revision only
//! once the earlier ones ran it for the soak time, waits while Prometheus is down, and a
//! revision that failed on wave 1 goes no further.
use std::time::Duration;

use anyhow::{Context as _, Result};
use reconciler::daemon::status::{DaemonStatus, Waiting};
use reconciler_tests::{
    git::{Daemon as GitDaemon, Repo},
    netns_daemon::{git_server, served_repo, Daemon, Place},
    prometheus::PrometheusServer,
    reconciler_path, wait_for, Sandbox,
};

const SOAK: u64 = 2;
const PROMETHEUS: &str = "127.0.0.1:9090";

/// `web` on 10.96.0.10 with `backends`, and with `outside` another service on 10.97.0.10.
fn definitions(backends: &str, outside: bool) -> String {
    let web = format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         backends: [{backends}]\n"
    );
    match outside {
        false => web,
        true => {
            format!("{web}---\n{}", web.replace("name: web", "name: api").replace("10.96", "10.97"))
        }
    }
}

/// Dropped in this order: the daemons before the data planes their nodes remove.
struct Fleet {
    daemons: Vec<Daemon>,
    _git: GitDaemon,
    prometheus: PrometheusServer,
    work: Repo,
    _served: tempfile::TempDir,
    _nodes: Vec<Sandbox>,
    hub: Sandbox,
}

impl Fleet {
    fn status(&self, node: usize) -> Result<DaemonStatus> {
        self.daemons[node].status(&self.hub)
    }

    /// Commits and pushes `text`: the new revision.
    fn push(&self, text: String) -> String {
        self.work.write("services/web.yaml", text);
        let revision = self.work.commit("a new revision");
        self.work.git(&["push", "-q", "origin", "HEAD"]);
        revision
    }

    /// Waits until node `node` holds `revision`, and says since when (Unix seconds).
    fn applied(&self, node: usize, revision: &str) -> Result<u64> {
        wait_for("a node to apply the revision", Duration::from_secs(40), || {
            let status = self.status(node).ok()?;
            (status.applied_revision.as_deref() == Some(revision))
                .then_some(status.applied_revision_since)?
        })
        .with_context(|| format!("{}\n{}", self.daemons[node].log(), self.prometheus.log()))
    }

    /// Waits until node `node` waits for `revision` for a reason `check` accepts.
    fn waits(
        &self,
        node: usize,
        revision: &str,
        check: impl Fn(&Waiting) -> bool,
    ) -> Result<Waiting> {
        wait_for("a node to wait at its gate", Duration::from_secs(30), || {
            let waiting = self.status(node).ok()?.waiting?;
            (waiting.revision == revision && check(&waiting)).then_some(waiting)
        })
        .with_context(|| self.daemons[node].log())
    }
}

/// Three nodes: edge-1 in wave 1 (which allows no VIP outside 10.96/16), edge-2 in wave 2,
/// edge-3 in wave 3, each gated on 1 node of every earlier wave for `soak` seconds, a storm
/// above `max_ejected` ejected backends. Their
/// health checks probe from the hub's namespace.
fn fleet(soak: u64, max_ejected: u64) -> Result<Fleet> {
    let hub = Sandbox::new("waves-hub")?;
    let listens = ["127.0.0.1:9481", "127.0.0.1:9482", "127.0.0.1:9483"];
    let prometheus = PrometheusServer::start(Some(&hub), PROMETHEUS, &listens)?;
    let (work, served, _bare) = served_repo(&definitions("{address: 127.0.0.11}", false))?;
    let (git, url) = git_server(&hub, served.path())?;
    let mut nodes = Vec::new();
    let mut daemons = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let mut node = Sandbox::new(&format!("waves-{}", i + 1))?;
        node.serve_tcp("127.0.0.11:8080", "b11")?;
        let wave = i + 1;
        let top = format!(
            "node: {{name: edge-{wave}}}\nrollout:\n  wave: {wave}\n  gate: {{prometheus: \
             http://{PROMETHEUS}, soakSeconds: {soak}, minNodes: 1, maxEjectedBackends: \
             {max_ejected}}}\n"
        );
        let policy = match wave {
            1 => "policy: {allowedVIPs: [10.96.0.0/16], allowLocalHealthChecks: [127.0.0.0/8]}\n",
            _ => "policy: {allowLocalHealthChecks: [127.0.0.0/8]}\n",
        };
        let at = Place { hub: &hub, node: &node, listen, policy };
        daemons.push(Daemon::spawn_node(
            &at,
            &url,
            "  interval: 300ms
",
            &top,
        )?);
        nodes.push(node);
    }
    Ok(Fleet { daemons, _git: git, prometheus, work, _served: served, _nodes: nodes, hub })
}

#[test]
fn each_wave_applies_a_revision_once_the_earlier_ones_ran_it_for_the_soak_time() -> Result<()> {
    let fleet = fleet(SOAK, 2)?;
    let first = fleet.work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    // Even a first revision waits: edge-2 for edge-1, edge-3 for edge-2 (each logs what it
    // waits for once, as it changes).
    let since: Vec<u64> = (0..3).map(|n| fleet.applied(n, &first)).collect::<Result<_>>()?;
    assert!(since[1] >= since[0] + SOAK && since[2] >= since[1] + SOAK, "{since:?}");
    for (node, wave) in [(1, 1), (2, 2)] {
        let log = fleet.daemons[node].log();
        let waited = format!("waiting for the rollout's gate: wave {wave}: 0 of the 1 node(s)");
        assert!(log.contains(&waited), "{waited} in {log}");
    }

    // A new commit: edge-1 at once, edge-2 after it soaked on edge-1, edge-3 after edge-2.
    let second = fleet.push(definitions("{address: 127.0.0.11}, {address: 127.0.0.12}", false));
    let at_1 = fleet.applied(0, &second)?;
    // Until then /status says what edge-3 waits for.
    let waiting = fleet.waits(2, &second, |w| w.reason.starts_with("wave "))?;
    assert!(!waiting.stopped, "{waiting:?}");
    assert_eq!(fleet.status(2)?.applied_revision.as_deref(), Some(first.as_str()), "{waiting:?}");
    let at_2 = fleet.applied(1, &second)?;
    let at_3 = fleet.applied(2, &second)?;
    assert!(at_2 >= at_1 + SOAK && at_3 >= at_2 + SOAK, "{at_1} {at_2} {at_3}");
    Ok(())
}

#[test]
fn a_gate_that_cannot_see_waits_and_a_failure_on_wave_1_stops_the_rollout() -> Result<()> {
    let mut fleet = fleet(SOAK, 2)?;
    let first = fleet.work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    fleet.applied(2, &first)?;

    // Prometheus is down: wave 1 applies; wave 2 waits, and says why.
    fleet.prometheus.stop();
    let second = fleet.push(definitions("{address: 127.0.0.12}", false));
    fleet.applied(0, &second)?;
    fleet.waits(1, &second, |w| w.reason.contains("unreachable"))?;
    assert_eq!(fleet.status(1)?.applied_revision.as_deref(), Some(first.as_str()));
    fleet.prometheus.resume(Some(&fleet.hub))?;
    fleet.applied(1, &second)?;
    fleet.applied(2, &second)?;

    // A revision edge-1 refuses (a VIP outside its policy): the later waves stop at it.
    let third = fleet.push(definitions("{address: 127.0.0.12}", true));
    let short = &third[..12];
    let reason = format!("{short} failed on edge-1 (wave 1)");
    for node in [1, 2] {
        let waiting = fleet.waits(node, &third, |w| w.stopped)?;
        assert_eq!(waiting.reason, reason);
        assert_eq!(fleet.status(node)?.applied_revision.as_deref(), Some(second.as_str()));
    }
    assert_eq!(fleet.status(0)?.failed_revision.as_deref(), Some(third.as_str()));
    // The fleet's view shows both.
    let shown = [
        format!("  Failing: edge-1 (refused {third})"),
        format!("  Waiting: edge-2 (wave 2) for {third}, edge-3 (wave 3) for {third}"),
    ];
    let mut text = String::new();
    wait_for("the fleet's view of the stop", Duration::from_secs(15), || {
        let mut command = fleet.hub.command_in_netns(reconciler_path().ok()?);
        let view =
            command.args(["fleet", "--prometheus", &fleet.prometheus.url()]).output().ok()?;
        text = String::from_utf8_lossy(&view.stdout).into_owned();
        shown.iter().all(|line| text.lines().any(|l| l == line)).then_some(())
    })
    .with_context(|| text.clone())?;
    Ok(())
}

#[test]
fn a_service_failing_open_on_an_earlier_wave_holds_the_later_ones_back() -> Result<()> {
    // A soak long enough for a failed health check to show.
    let mut fleet = fleet(8, 2)?;
    let first = fleet.work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    fleet.applied(2, &first)?;
    // A health check of a backend nobody serves where the daemons run: every backend down,
    // no fallback, the service fails open on edge-1.
    let check = "  healthCheck: {intervalSeconds: 1, timeoutMillis: 300, unhealthyThreshold: 1, \
                 healthyThreshold: 1}\n  backends:";
    let second =
        fleet.push(definitions("{address: 127.0.0.12}", false).replace("  backends:", check));
    fleet.applied(0, &second)?;
    let reason = format!("edge-1 (wave 1) has 1 service(s) failing open on {}", &second[..12]);
    fleet.waits(1, &second, |w| w.reason == reason)?;
    assert_eq!(fleet.status(1)?.applied_revision.as_deref(), Some(first.as_str()));
    // Its backend comes up: the later waves go on.
    fleet.hub.serve_tcp("127.0.0.12:8080", "b12")?;
    fleet.applied(1, &second)?;
    fleet.applied(2, &second)?;
    Ok(())
}

#[test]
fn an_ejection_storm_on_an_earlier_wave_holds_the_later_ones_back() -> Result<()> {
    // Any ejection is a storm here; a soak long enough for one to show.
    let fleet = fleet(8, 0)?;
    let first = fleet.work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    fleet.applied(2, &first)?;
    let detection = "  outlierDetection: {consecutiveFailures: 2, intervalSeconds: 1, \
                     baseEjectionSeconds: 60, maxEjectionPercent: 50}\n  backends:";
    let backends = "{address: 127.0.0.11}, {address: 127.0.0.13}";
    let second = fleet.push(definitions(backends, false).replace("  backends:", detection));
    fleet.applied(0, &second)?;
    // Clients on edge-1 through the VIP: their connects to 127.0.0.13, where nothing listens,
    // are refused, and outlier detection ejects it.
    wait_for("an ejection on edge-1", Duration::from_secs(30), || {
        let _ = fleet._nodes[0].probe_tcp("10.96.0.10:80", 10);
        fleet.status(0).ok()?.ejections.iter().any(|e| e.ejected).then_some(())
    })
    .with_context(|| fleet.daemons[0].log())?;
    let reason =
        format!("an ejection storm on edge-1 (wave 1): 1 backends ejected on {}", &second[..12]);
    fleet.waits(1, &second, |w| w.reason == reason)?;
    assert_eq!(fleet.status(1)?.applied_revision.as_deref(), Some(first.as_str()));
    Ok(())
}
