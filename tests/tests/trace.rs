//! `reconciler trace` against the real kernel: the translations made while it runs, each
//! with its process, service and addresses; filters; Ctrl-C ends it and turns the event path
//! off again.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Array, Map, MapData};
use reconciler_tests::{gitops::Setup, reconciler_path, wait_for};
use serde_json::Value;

const DEFINITIONS: &str = "
apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  vip: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  backends: [{address: 127.0.0.11}]
---
apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata: {name: dns}
spec:
  vip: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5300}]
  backends: [{address: 127.0.0.21}]
---
apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata: {name: closed}
spec:
  vip: 10.96.0.99
  ports: [{name: http, port: 80}]
  backends: [{address: 127.0.0.31, state: maintenance}]
";

/// A running `reconciler trace`, killed by PID if the test ends early.
struct Trace(Child);

impl Trace {
    /// Starts it and waits for its "Tracing" line: from then on, events are recorded.
    fn start(setup: &Setup, filters: &[&str]) -> Result<Trace> {
        let mut child = Command::new(reconciler_path()?)
            .arg("trace")
            .arg("--pin-path")
            .arg(setup.sandbox.pin_path())
            .args(["--output", "json"])
            .args(filters)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("trace's stderr")?;
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line)?;
        ensure!(line.starts_with("Tracing"), "trace said {line:?}");
        Ok(Trace(child))
    }

    /// Ctrl-C, then every event it printed.
    fn stop(self) -> Result<Vec<Value>> {
        self.stop_with(libc::SIGINT)
    }

    /// `signal`, then every event it printed.
    fn stop_with(mut self, signal: i32) -> Result<Vec<Value>> {
        // SAFETY: signalling the PID of a child we started and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, signal) };
        let stdout = self.0.stdout.take().context("trace's stdout")?;
        let events = BufReader::new(stdout)
            .lines()
            .map(|line| Ok(serde_json::from_str(&line?)?))
            .collect::<Result<Vec<Value>>>()?;
        let status = self.0.wait()?;
        ensure!(status.success(), "trace ended with {status}");
        Ok(events)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `TRACE_ON` holds: 0 when no tracer runs.
fn trace_on(setup: &Setup) -> Result<u32> {
    let on = MapData::from_pin(setup.sandbox.pin_path().join("TRACE_ON"))?;
    let on: Array<MapData, u32> = Map::from_map_data(on)?.try_into()?;
    Ok(on.get(&0, 0)?)
}

/// A sandbox named `name` with `DEFINITIONS` applied and web's and dns's backends serving.
fn applied(name: &str) -> Result<Setup> {
    let mut setup = Setup::new(name)?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "b11")?;
    setup.sandbox.serve_udp("127.0.0.21:5300", "d21")?;
    setup.repo.write("services/all.yaml", DEFINITIONS);
    setup.repo.commit("services");
    setup.expect(0, "apply", &[])?;
    Ok(setup)
}

fn of<'a>(events: &'a [Value], kind: &str, service: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind && e["service"] == service).collect()
}

#[test]
fn trace_shows_every_translation_while_it_runs_and_stops_cleanly() -> Result<()> {
    let setup = applied("trace")?;

    let trace = Trace::start(&setup, &[])?;
    let result = setup.sandbox.probe_tcp("10.96.0.10:80", 7)?;
    assert_eq!(result.replies.get("b11"), Some(&7), "{result:?}");
    let refused = setup.sandbox.probe_tcp("10.96.0.99:80", 2)?;
    assert_eq!(refused.errors.get("ECONNREFUSED"), Some(&2), "{refused:?}");
    let client = setup.sandbox.python_session(
        "
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b'q', ('10.96.0.53', 53))
u.recvfrom(512)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.connect(('10.96.0.10', 80))
print(t.getpeername()[0], flush=True)
# Closed here: at exit Python would ask getpeername() again of a socket still open.
t.close()
u.close()
",
        &[],
    )?;
    assert_eq!(client.finish()?, ["10.96.0.10"]);
    let events = trace.stop()?;

    let connects = of(&events, "connect", "web/http");
    // 7 by the probe, 1 by the Python client.
    assert_eq!(connects.len(), 8, "{events:#?}");
    let probe: Vec<_> = connects.iter().filter(|e| e["comm"] == "probe").collect();
    assert_eq!(probe.len(), 7, "{connects:#?}");
    for event in &probe {
        assert_eq!(event["vip"], "10.96.0.10:80");
        assert_eq!(event["backend"], "127.0.0.11:8080");
        assert_eq!(event["protocol"], "TCP");
        assert!(event["pid"].as_u64().is_some_and(|p| p > 0), "{event}");
        assert!(event["cgroup_id"].as_u64().is_some_and(|c| c > 0), "{event}");
        assert!(event["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{event}");
    }
    let refusals = of(&events, "refused", "closed/http");
    assert_eq!(refusals.len(), 2, "{events:#?}");
    assert_eq!(refusals[0]["reason"], "no_backend");
    assert_eq!(refusals[0]["backend"], Value::Null);
    assert_eq!(of(&events, "sendmsg", "dns/dns").len(), 1, "{events:#?}");
    let replies = of(&events, "reverse", "dns/dns");
    assert_eq!(replies.len(), 1, "{events:#?}");
    assert_eq!(replies[0]["backend"], "127.0.0.21:5300");
    assert_eq!(of(&events, "getpeername", "web/http").len(), 1, "{events:#?}");
    // Each TCP connection established, from the `flows` program: no process to name.
    let established = of(&events, "established", "web/http");
    assert_eq!(established.len(), 8, "{events:#?}");
    assert!(established.iter().all(|e| e["backend"] == "127.0.0.11:8080" && e["pid"] == 0));
    let failed = of(&events, "failed", "web/http");
    assert!(failed.is_empty(), "{failed:#?}");

    // The event path is off again: the flag holds no tracer.
    assert_eq!(trace_on(&setup)?, 0);

    // Filters: only the web service's events.
    let trace = Trace::start(&setup, &["--service", "web"])?;
    setup.sandbox.probe_tcp("10.96.0.10:80", 3)?;
    setup.sandbox.probe_tcp("10.96.0.99:80", 1)?;
    let events = trace.stop()?;
    // 3 connects and the 3 connections established.
    assert_eq!(events.len(), 6, "{events:#?}");
    assert!(events.iter().all(|e| e["service"] == "web/http"), "{events:#?}");
    Ok(())
}

/// SIGTERM and SIGHUP end a trace as Ctrl-C does; a reader that goes away (`| head -1`)
/// ends it too, quietly; each time the event path is off again.
#[test]
fn every_way_a_trace_ends_turns_the_event_path_off() -> Result<()> {
    let setup = applied("trace-ends")?;
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let trace = Trace::start(&setup, &[])?;
        setup.sandbox.probe_tcp("10.96.0.10:80", 2)?;
        // Two connects, each established.
        assert_eq!(trace.stop_with(signal)?.len(), 4, "signal {signal}");
        assert_eq!(trace_on(&setup)?, 0, "signal {signal}");
    }
    let mut trace = Trace::start(&setup, &[])?;
    setup.sandbox.probe_tcp("10.96.0.10:80", 1)?;
    let stdout = trace.0.stdout.take().context("trace's stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    ensure!(first.contains("connect"), "{first}");
    // The reader is gone; the next event's write fails, and the trace ends.
    let status = wait_for("the trace to end", Duration::from_secs(10), || {
        setup.sandbox.probe_tcp("10.96.0.10:80", 1).ok()?;
        trace.0.try_wait().ok()?
    })?;
    ensure!(status.success(), "trace ended with {status}");
    assert_eq!(trace_on(&setup)?, 0);
    Ok(())
}

/// A tracer killed in a PID namespace of its own leaves its flag, PID 1: `status` says it is
/// stale (PID 1 is alive here, yet no tracer runs). Of two tracers started together, exactly
/// one runs and takes the stale flag over; the other is refused.
#[test]
fn a_killed_tracers_flag_is_stale_and_only_one_tracer_runs() -> Result<()> {
    let setup = applied("trace-stale")?;
    // In a PID namespace of its own, where it is PID 1 (so is init here), killed with it.
    let mut killed = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(reconciler_path()?)
        .args(["trace", "--pin-path"])
        .arg(setup.sandbox.pin_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running unshare (util-linux)")?;
    let mut line = String::new();
    BufReader::new(killed.stderr.take().context("stderr")?).read_line(&mut line)?;
    ensure!(line.starts_with("Tracing"), "trace said {line:?}");
    killed.kill()?;
    killed.wait()?;
    assert_eq!(trace_on(&setup)?, 1);
    // The tracer dies of its parent's death (`--kill-child`), just after it.
    let stale = serde_json::json!({"state": "stale", "pid": 1});
    wait_for("the killed tracer's flag to be stale", Duration::from_secs(10), || {
        setup.status().ok().filter(|s| s["trace"] == stale)
    })?;

    let pair: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(reconciler_path()?)
                .args(["trace", "--output", "json", "--pin-path"])
                .arg(setup.sandbox.pin_path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    let mut runner = None;
    let mut refusals = Vec::new();
    for mut child in pair {
        let stderr = child.stderr.take().context("trace's stderr")?;
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line)?;
        if line.starts_with("Tracing") {
            runner = Some(Trace(child));
        } else {
            refusals.push((child.wait()?, line));
        }
    }
    let runner = runner.with_context(|| format!("neither tracer runs: {refusals:?}"))?;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let (status, line) = &refusals[0];
    assert_eq!(status.code(), Some(1), "{line}");
    assert!(line.contains("another `reconciler trace`"), "{line}");
    let status = setup.status()?;
    assert_eq!(status["trace"]["state"], "running", "{status}");
    setup.sandbox.probe_tcp("10.96.0.10:80", 1)?;
    // The connect, and its connection established.
    assert_eq!(runner.stop()?.len(), 2);
    assert_eq!(setup.status()?["trace"]["state"], "off");
    Ok(())
}
