//! Notifications from the real daemon to real HTTP receivers in its network namespace: one
//! that is down, then slow (each attempt times out), then back gets every event in order,
//! signed, each retried under its one delivery ID; meanwhile runs take no longer and a
//! second receiver (Slack's format, rejections only) hears at once. An https receiver is
//! reached when the system trusts its certificate, and never when it does not.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use reconciler_tests::{
    gitops::checked_web,
    netns_daemon::{served_repo, Daemon, Place},
    receiver::{Answer, Delivery, Receiver},
    sample, wait_for, Sandbox,
};

const SECRET: &[u8] = b"n0tify-s3cret";

/// `reconciler_notifications_total{result}` now.
fn notifications(daemon: &Daemon, sandbox: &Sandbox, result: &str) -> Result<f64> {
    let metrics = daemon.get(sandbox, "/metrics")?;
    let name = format!("reconciler_notifications_total{{result=\"{result}\"}}");
    sample(&metrics, &name).with_context(|| format!("no {name} in\n{metrics}"))
}

#[test]
fn a_receiver_down_then_slow_then_back_gets_every_event_and_never_slows_a_run() -> Result<()> {
    let mut sandbox = Sandbox::new("notify")?;
    for i in 11..=12 {
        sandbox.serve_tcp(&format!("127.0.0.{i}:8080"), &format!("b{i}"))?;
    }
    let (work, _served, bare) = served_repo(&checked_web(&["127.0.0.11", "127.0.0.12"]))?;
    let first = work.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat())?;
    // The generic receiver is down at first; the Slack one wants rejections only.
    let mut generic = Receiver::new(Answer::Late(Duration::from_secs(5)));
    let mut slack = Receiver::new(Answer::Status(200));
    slack.listen(Some(&sandbox), "127.0.0.22:9000")?;
    let top = format!(
        "notify:\n  - url: http://127.0.0.21:9000/hook\n    secretFile: {}\n    timeout: 3s\n  \
         - url: http://127.0.0.22:9000/slack\n    format: slack\n    events: [rejected]\n",
        secret.display()
    );
    let url = bare.display().to_string();
    let daemon = Daemon::start_configured(&sandbox, &url, "  interval: 60s\n", &top)?;

    // Down: the revision is applied all the same; its event waits, and is tried again.
    wait_for("an attempt to be retried", Duration::from_secs(20), || {
        (notifications(&daemon, &sandbox, "retried").ok()? >= 1.0).then_some(())
    })
    .with_context(|| daemon.log())?;

    // Slow: it answers after 5 s, so each attempt times out (3 s). A bad commit meanwhile is
    // refused at once, and the Slack receiver hears of it.
    generic.listen(Some(&sandbox), "127.0.0.21:9000")?;
    work.write("services/web.yaml", "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {vip: 10.96.0.10}\n");
    let bad = work.commit("web without ports or backends");
    work.git(&["push", "-q", "origin", "main"]);
    generic.wait("an attempt at the slow receiver", |_| true)?;
    let before = daemon.get(&sandbox, "/metrics")?;
    daemon.ask(&sandbox)?;
    let message = slack.wait("the rejection in Slack", |_| true)?;
    let text = message.body["text"].as_str().unwrap_or_default();
    assert!(text.starts_with(":x: *"), "{text}");
    assert!(text.contains(&format!("rejected revision {}", &bad[..12])), "{text}");
    assert!(text.contains("\n• `services/web.yaml:"), "the first errors are listed: {text}");
    assert_eq!(daemon.status(&sandbox)?.failed_revision.as_deref(), Some(bad.as_str()));
    // The refusing run waited for no delivery (an attempt takes 3 s before it times out).
    let after = daemon.get(&sandbox, "/metrics")?;
    let [runs, quick] = ["_count", "_bucket{le=\"2.5\"}"].map(|series| {
        let name = format!("reconciler_reconcile_duration_seconds{series}");
        sample(&after, &name).unwrap_or(0.0) - sample(&before, &name).unwrap_or(0.0)
    });
    assert!(runs >= 1.0 && quick == runs, "{before}\n{after}");

    // Back: both events arrive, in order, each signed.
    generic.answer(Answer::Status(204));
    let rejected = generic.wait("the rejection", |d| d.event() == "rejected")?;
    assert_eq!(rejected.body["revision"], bad.as_str());
    assert_eq!(rejected.body["severity"], "error");
    let errors = rejected.body["errors"].as_array().context("errors")?;
    assert!(errors.iter().all(|e| e.as_str().is_some_and(|e| e.starts_with("services/web.yaml:"))));
    let got = generic.got();
    let applied: Vec<&Delivery> = got.iter().filter(|d| d.event() == "applied").collect();
    assert!(applied.len() >= 2, "the first event was tried again: {got:?}");
    let id = applied[0].header("x-reconciler-delivery");
    assert!(applied.iter().all(|d| d.header("x-reconciler-delivery") == id), "{applied:?}");
    assert_eq!(applied[0].body["revision"], first.as_str());
    let last_applied = got.iter().rposition(|d| d.event() == "applied");
    let first_rejected = got.iter().position(|d| d.event() == "rejected");
    assert!(last_applied < first_rejected, "in the order they happened: {got:?}");
    for delivery in &got {
        assert!(delivery.signed_with(SECRET), "{delivery:?}");
        assert_eq!(delivery.path, "/hook");
        assert_eq!(delivery.header("x-reconciler-event"), Some(delivery.event()));
        assert_eq!(delivery.header("content-type"), Some("application/json"));
        assert_eq!(delivery.body["format_version"], 1);
        assert_eq!(
            delivery.body["node"],
            daemon.status(&sandbox)?.node.map(|n| n.name).unwrap_or_default()
        );
    }

    // A backend's health check fails, then passes: out and back.
    sandbox.stop_server("127.0.0.12:8080")?;
    let out = generic.wait("the backend taken out", |d| d.event() == "backend_out")?;
    assert_eq!(out.body["reason"], "health");
    assert_eq!(out.body["backends"], serde_json::json!(["127.0.0.12:8080"]));
    assert_eq!(out.body["services"], serde_json::json!(["web/http"]));
    assert!(out.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", out.body);
    sandbox.serve_tcp("127.0.0.12:8080", "b12")?;
    let back = generic.wait("the backend back", |d| d.event() == "backend_back")?;
    assert_eq!(back.body["backends"], serde_json::json!(["127.0.0.12:8080"]));

    assert_eq!(slack.got().len(), 1, "the Slack receiver wants rejections only");
    assert!(notifications(&daemon, &sandbox, "sent")? >= 5.0);
    assert_eq!(notifications(&daemon, &sandbox, "failed")?, 0.0);
    assert_eq!(notifications(&daemon, &sandbox, "dropped")?, 0.0);
    Ok(())
}

/// A self-signed certificate for the address `ip`, and its key, in PEM (openssl's command).
fn certificate(dir: &Path, ip: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let (certificate, key) = (dir.join(format!("{ip}.pem")), dir.join(format!("{ip}.key")));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={ip}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stderr(Stdio::null())
        .status()
        .context("running openssl (installed by `make setup`)")?;
    ensure!(status.success(), "openssl req failed");
    Ok((std::fs::read(certificate)?, std::fs::read(key)?))
}

#[test]
fn an_https_receiver_is_reached_only_with_a_certificate_the_system_trusts() -> Result<()> {
    let mut sandbox = Sandbox::new("notify-tls")?;
    sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    let (_work, _served, bare) = served_repo(&checked_web(&["127.0.0.11"]))?;
    let dir = tempfile::tempdir()?;
    let trusted = certificate(dir.path(), "127.0.0.31")?;
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &trusted.0)?;
    let mut good = Receiver::new(Answer::Status(204));
    good.listen_tls(&sandbox, "127.0.0.31:9443", trusted)?;
    let mut unknown = Receiver::new(Answer::Status(204));
    unknown.listen_tls(&sandbox, "127.0.0.32:9443", certificate(dir.path(), "127.0.0.32")?)?;
    let top = "notify:\n  - url: https://127.0.0.31:9443/hook\n  \
               - url: https://127.0.0.32:9443/hook\n";
    // The system's certificate authorities, as OpenSSL finds them: only the first's.
    let launch = move |command: &mut Command| {
        command.env("SSL_CERT_FILE", &roots).env_remove("SSL_CERT_DIR");
    };
    let policy = "policy: {allowLocalHealthChecks: [127.0.0.0/8]}\n";
    let place = Place { hub: &sandbox, node: &sandbox, listen: "127.0.0.1:9469", policy };
    let url = bare.display().to_string();
    let daemon = Daemon::spawn_node_with(&place, &url, "  interval: 60s\n", top, &launch)?;
    daemon.wait_ready(&sandbox)?;

    let applied = good.wait("the event over https", |d| d.event() == "applied")?;
    assert_eq!(applied.body["format_version"], 1);
    wait_for("the untrusted receiver's attempt to fail", Duration::from_secs(20), || {
        (notifications(&daemon, &sandbox, "retried").ok()? >= 1.0).then_some(())
    })?;
    assert!(unknown.got().is_empty(), "{:?}", unknown.got());
    // Refused for its certificate, which no authority the system trusts signed.
    let log = daemon.log();
    let refused = log.lines().find(|l| l.contains("127.0.0.32") && l.contains("not delivered"));
    assert!(refused.is_some_and(|l| l.contains("certificate verify failed")), "{log}");
    Ok(())
}
