//! Canary rollouts from git with the real daemon and real connects: a commit that changes a
//! service's backends moves new connections step by step; new backends that reset abort it
//! (the previous revision back, the commit failed, no failed connect after); a healthy one
//! completes with the maps a direct apply leaves; a daemon killed mid-rollout ends in a state
//! a commit describes.
use std::time::Duration;

use anyhow::{Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_core::state::MapState;
use reconciler_tests::{
    git::Repo,
    gitops::Setup,
    netns_daemon::{names, served_repo, settled, Daemon},
    receiver::Receiver,
    wait_for, Sandbox,
};

const VIP: &str = "10.96.0.10:80";

/// Service `web` with `backends` (port 8080) and `rollout: {rollout}`.
fn web(backends: &[&str], rollout: &str) -> String {
    let mut text = format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  \
         rollout: {rollout}\n  backends:\n"
    );
    for backend in backends {
        text.push_str(&format!("    - {{address: {backend}}}\n"));
    }
    text
}

fn live(sandbox: &Sandbox) -> Option<MapState> {
    Some(Dataplane::open(sandbox.pin_path()).ok()?.read_live().ok()?.state)
}

/// Commits `text` as the service's new revision, pushes it where the daemon reads, and asks
/// for a run; the commit.
fn commit_and_ask(work: &Repo, daemon: &Daemon, sandbox: &Sandbox, text: &str) -> Result<String> {
    work.write("services/web.yaml", text);
    let commit = work.commit("web changes its backends");
    work.git(&["push", "-q", "origin", "HEAD"]);
    daemon.ask(sandbox)?;
    Ok(commit)
}

/// The addresses of the backends `state` gives slots.
fn serving(state: &MapState) -> Vec<String> {
    let mut serving: Vec<String> = state
        .slots
        .values()
        .filter_map(|id| state.backends.get(id))
        .map(|b| b.addr.to_string())
        .collect();
    serving.sort();
    serving.dedup();
    serving
}

#[test]
fn a_healthy_canary_completes_with_the_maps_a_direct_apply_leaves() -> Result<()> {
    let mut sandbox = Sandbox::new("rollout-ok")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let rule = "{steps: [20, 50], stepSeconds: 2, maxFailurePercent: 5}";
    let before = web(&["127.0.0.11", "127.0.0.12"], rule);
    let after = web(&["127.0.0.11", "127.0.0.13"], rule);
    let (work, _served, bare) = served_repo(&before)?;
    let daemon = Daemon::start(&sandbox, &bare)?;
    assert_eq!(settled(&sandbox, VIP)?, names(&["b11", "b12"]));
    let stop = tempfile::tempdir()?;
    let clients = sandbox.spawn_probe_until(&stop.path().join("stop"), VIP)?;

    let commit = commit_and_ask(&work, &daemon, &sandbox, &after)?;
    // The first step: the new backend takes part, the old one the rest; /status shows it.
    let step = wait_for("the first step", Duration::from_secs(15), || {
        let rollout = daemon.status(&sandbox).ok()?.rollout?;
        (rollout.revision == commit).then_some(rollout)
    })
    .with_context(|| daemon.log())?;
    assert_eq!((step.services[0].step, step.services[0].percent), (1, 20), "{step:?}");
    let blended = live(&sandbox).context("the live maps")?;
    assert_eq!(serving(&blended), ["127.0.0.11:8080", "127.0.0.12:8080", "127.0.0.13:8080"]);
    // A bad commit meanwhile is refused and leaves the rollout going.
    let bad = commit_and_ask(&work, &daemon, &sandbox, "kind: [")?;
    let going = wait_for("the bad commit refused", Duration::from_secs(15), || {
        let status = daemon.status(&sandbox).ok()?;
        (status.failed_revision.as_deref() == Some(bad.as_str())).then_some(status)
    })
    .with_context(|| daemon.log())?;
    let still = going.rollout.map(|r| r.revision).or(going.last_rollout.map(|l| l.revision));
    assert_eq!(still.as_deref(), Some(commit.as_str()));
    // It completes: the old backend is gone and nothing is left of the rollout.
    wait_for("the rollout to complete", Duration::from_secs(30), || {
        let last = daemon.status(&sandbox).ok()?.last_rollout?;
        (last.result == "completed").then_some(())
    })
    .with_context(|| daemon.log())?;
    let done = wait_for("the last apply", Duration::from_secs(10), || {
        live(&sandbox).filter(|state| state.blends.is_empty())
    })?;
    std::fs::write(stop.path().join("stop"), "")?;
    let seen = clients.wait()?;
    assert!(seen.errors.is_empty(), "{seen:?}");
    let metrics = daemon.get(&sandbox, "/metrics")?;
    assert!(metrics.contains("reconciler_rollouts_total{result=\"completed\"} 1"), "{metrics}");

    // The same two commits applied directly elsewhere leave the same maps.
    let direct = Setup::new("rollout-direct")?;
    direct.repo.write("services/web.yaml", before);
    direct.repo.commit("before");
    direct.expect(0, "apply", &[])?;
    direct.repo.write("services/web.yaml", after);
    direct.repo.commit("after");
    // A plan says what the daemon would roll out, and over how long.
    let plan = direct.expect(2, "plan", &["--detailed-exitcode"])?;
    assert!(plan.contains("Rollouts") && plan.contains("web/http: 20% → 50% → 100%"), "{plan}");
    assert!(plan.contains("(4 s in all)"), "{plan}");
    let applied = direct.run("apply", &[])?;
    let said = String::from_utf8_lossy(&applied.stderr);
    assert!(said.contains("Applied at once") && said.contains("web/http"), "{said}");
    let direct_state = live(&direct.sandbox).context("the direct apply's maps")?;
    assert_eq!(done, direct_state);
    Ok(())
}

#[test]
fn a_canary_whose_new_backend_resets_is_aborted_and_the_old_set_carries_everything() -> Result<()> {
    let mut sandbox = Sandbox::new("rollout-abort")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    // b13 listens nowhere: every connect to it is reset.
    let rule = "{steps: [50], stepSeconds: 30, maxFailurePercent: 5}";
    let (work, _served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"], rule))?;
    let (receiver, notify) = Receiver::answering(Some(&sandbox), "127.0.0.30:9000")?;
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &notify)?;
    let good = daemon.status(&sandbox)?.applied_revision;
    settled(&sandbox, VIP)?;
    let stop = tempfile::tempdir()?;
    let clients = sandbox.spawn_probe_until(&stop.path().join("stop"), VIP)?;

    let bad = web(&["127.0.0.11", "127.0.0.12", "127.0.0.13"], rule);
    let commit = commit_and_ask(&work, &daemon, &sandbox, &bad)?;
    let status = wait_for("the rollout to be aborted", Duration::from_secs(30), || {
        let status = daemon.status(&sandbox).ok()?;
        let aborted = status.last_rollout.as_ref().is_some_and(|l| l.result == "aborted");
        (aborted && status.applied_revision == good).then_some(status)
    })
    .with_context(|| daemon.log())?;
    std::fs::write(stop.path().join("stop"), "")?;
    let during = clients.wait()?;
    assert!(during.errors.values().sum::<u64>() > 0, "{during:?}");
    assert_eq!(status.failed_revision.as_deref(), Some(commit.as_str()), "{status:?}");
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("rollout aborted")));
    let back = live(&sandbox).context("the live maps")?;
    assert_eq!(serving(&back), ["127.0.0.11:8080", "127.0.0.12:8080"]);
    assert!(back.blends.is_empty(), "{back:?}");
    // No failed connect after the abort.
    let after = sandbox.probe_tcp(VIP, 200)?;
    assert!(after.errors.is_empty(), "{after:?}");
    let metrics = daemon.get(&sandbox, "/metrics")?;
    assert!(metrics.contains("reconciler_rollouts_total{result=\"aborted\"} 1"), "{metrics}");
    assert!(daemon.log().contains("rollout aborted"), "{}", daemon.log());
    let told = receiver.wait("the abort told", |d| d.event() == "rollout_aborted")?;
    assert_eq!(told.body["revision"], commit.as_str());
    assert_eq!(told.body["back_to"], serde_json::json!(good));
    assert!(told.body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{:?}", told.body);
    // The commit is not tried again.
    daemon.ask(&sandbox)?;
    wait_for("a run on the failed commit", Duration::from_secs(15), || {
        let skipped = daemon.get(&sandbox, "/metrics").ok()?;
        skipped.contains("reconciler_reconcile_total{result=\"skipped\"}").then_some(())
    })?;
    assert_eq!(serving(&live(&sandbox).context("the live maps")?).len(), 2);
    Ok(())
}

#[test]
fn a_daemon_killed_mid_rollout_ends_in_a_state_a_commit_describes() -> Result<()> {
    let mut sandbox = Sandbox::new("rollout-restart")?;
    for i in 11..=13 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let rule = "{steps: [20, 50], stepSeconds: 3, maxFailurePercent: 5}";
    let (work, _served, bare) = served_repo(&web(&["127.0.0.11", "127.0.0.12"], rule))?;
    let mut daemon = Daemon::start(&sandbox, &bare)?;
    settled(&sandbox, VIP)?;
    commit_and_ask(&work, &daemon, &sandbox, &web(&["127.0.0.11", "127.0.0.13"], rule))?;
    wait_for("a blend in the maps", Duration::from_secs(15), || {
        live(&sandbox).filter(|state| !state.blends.is_empty())
    })
    .with_context(|| daemon.log())?;

    daemon.kill_and_restart(&sandbox)?;
    // It goes on from where it was, and ends with the commit's backends alone.
    let resumed = daemon.status(&sandbox)?;
    assert!(resumed.rollout.is_some() || resumed.last_rollout.is_some(), "{resumed:?}");
    let end = wait_for("the rollout to end", Duration::from_secs(30), || {
        live(&sandbox).filter(|state| state.blends.is_empty())
    })
    .with_context(|| daemon.log())?;
    assert_eq!(serving(&end), ["127.0.0.11:8080", "127.0.0.13:8080"]);
    let result = settled(&sandbox, VIP)?;
    assert_eq!(result, names(&["b11", "b13"]));
    Ok(())
}
