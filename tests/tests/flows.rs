//! The `flows` sock_ops program in the real kernel: what it records per backend of the TCP
//! connections the data plane translated (established with the handshake's time, failed
//! before it, and at close their bytes and round-trip time), and nothing of the others.
use std::time::Duration;

use anyhow::{Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane};
use reconciler_common::flows::{BackendFlows, HANDSHAKE_SLOTS};
use reconciler_tests::{one_service, wait_for, Sandbox};

/// Backend 1's flows, once `done` says they are all there (closes come after the client's
/// last call, as the kernel ends each connection).
fn flows_of_backend_1(
    sandbox: &Sandbox,
    done: impl Fn(&BackendFlows) -> bool,
) -> Result<BackendFlows> {
    wait_for("the flows to be counted", Duration::from_secs(10), || {
        let dataplane = Dataplane::open(sandbox.pin_path()).ok()?;
        let flows = *dataplane.backend_flows([1]).ok()?.get(&1)?;
        done(&flows).then_some(flows)
    })
}

#[test]
fn established_connections_are_counted_with_their_handshake_bytes_and_rtt() -> Result<()> {
    let mut sandbox = Sandbox::new("flows")?;
    let b1 = sandbox.serve_tcp("127.0.0.11:8080", "b1")?.to_string();
    let dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&b1])?)?;
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    // A connection straight to the backend is not the data plane's: not counted.
    assert_eq!(sandbox.probe_tcp(&b1, 3)?.replies.get("b1"), Some(&3));

    let flows = flows_of_backend_1(&sandbox, |f| f.closed == 5)?;
    assert_eq!((flows.established, flows.failed, flows.closed), (5, 0, 5), "{flows:?}");
    assert!(flows.handshake_ns > 0, "{flows:?}");
    // The probe's request, and the server's reply ("b1\n").
    assert!(flows.bytes_sent >= 5 && flows.bytes_received >= 15, "{flows:?}");
    let histogram = dataplane.handshakes()?;
    assert_eq!(histogram.len(), HANDSHAKE_SLOTS as usize);
    let (counts, sum) = histogram.split_at(histogram.len() - 1);
    assert_eq!(counts.iter().sum::<u64>(), 5, "{histogram:?}");
    assert_eq!(sum[0], flows.handshake_ns);
    Ok(())
}

#[test]
fn connects_refused_by_the_backend_are_counted_as_failed() -> Result<()> {
    let sandbox = Sandbox::new("flows-failed")?;
    // Nothing listens there: each SYN is answered with a reset.
    let mut dataplane = sandbox.install(&one_service("10.96.0.10:80", &["127.0.0.12:8080"])?)?;
    let refused = sandbox.probe_tcp("10.96.0.10:80", 4)?;
    assert_eq!(refused.errors.get("ECONNREFUSED"), Some(&4), "{refused:?}");
    let flows = flows_of_backend_1(&sandbox, |f| f.failed == 4)?;
    assert_eq!((flows.established, flows.failed, flows.closed), (0, 4, 0), "{flows:?}");
    assert_eq!(flows.consecutive_failures, 4);

    // `status --counters` shows them by name.
    let output = std::process::Command::new(reconciler_tests::reconciler_path()?)
        .args(["status", "--counters", "--output", "json", "--pin-path"])
        .arg(sandbox.pin_path())
        .output()?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let backend = &status["counters"]["backends"][0];
    assert_eq!(backend["flows"]["failed"], 4, "{status}");
    assert_eq!(backend["flows"]["established"], 0, "{status}");

    // The backend listens again: one established connection ends the streak of failures.
    let mut sandbox = sandbox;
    sandbox.serve_tcp("127.0.0.12:8080", "b1")?;
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 1)?.replies.get("b1"), Some(&1));
    let flows = flows_of_backend_1(&sandbox, |f| f.established == 1)?;
    assert_eq!((flows.failed, flows.consecutive_failures), (4, 0), "{flows:?}");

    // Backend 1 taken away: its ID's counts start again at zero for the next owner.
    let moved = one_service("10.96.0.10:80", &["127.0.0.13:8080"])?;
    dataplane.apply(&moved, ApplyTo::default())?;
    let reset = *dataplane.backend_flows([1])?.get(&1).context("backend 1")?;
    assert_eq!(reset, BackendFlows::default());
    Ok(())
}
