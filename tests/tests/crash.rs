//! Crash-safe applies: the real `reconciler apply` killed (SIGKILL, by strace's syscall fault
//! injection) at each write of its write phase and at its RCU wait, while clients connect.
//! After every kill the data plane serves one whole state, a plan says which, and the next
//! apply repairs the standby set the killed one left dirty. And the RCU wait holds where
//! `membarrier` fails (`nohz_full` kernels): applies succeed with it failing `EINVAL`.
use std::{collections::BTreeSet, process::Command};

use anyhow::{ensure, Context as _, Result};
use reconciler::dataplane::Dataplane;
use reconciler_tests::{
    gitops::{service, Setup},
    reconciler_path,
};

/// Services in each state: enough that every map is written in more than one batch call.
const SERVICES: u32 = 2_000;

/// The bpf(2) commands that write a map.
const WRITES: [&str; 4] =
    ["BPF_MAP_UPDATE_ELEM", "BPF_MAP_UPDATE_BATCH", "BPF_MAP_DELETE_ELEM", "BPF_MAP_DELETE_BATCH"];

/// Writes `SERVICES` services, all with the one backend `backend`, in 20 files; commits.
fn commit_state(setup: &Setup, backend: &str) -> String {
    for file in 0..20 {
        let mut text = String::new();
        for i in (file * SERVICES / 20)..((file + 1) * SERVICES / 20) {
            let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            text.push_str(&service(&format!("s{i}"), &vip, &[(backend, 1)]));
        }
        setup.repo.write(&format!("services/f{file:02}.yaml"), text);
    }
    setup.repo.commit(backend)
}

/// `reconciler apply --ref COMMIT --refresh` under strace with `strace_args`.
fn apply_traced(setup: &Setup, commit: &str, strace_args: &[&str]) -> Result<std::process::Output> {
    let mut strace = Command::new("strace");
    strace.args(["-f", "-qq"]).args(strace_args).arg(reconciler_path()?);
    setup.run_as(strace, "apply", &["--ref", commit, "--refresh"])
}

/// The position (from 1) among `calls` of the RCU wait: the first update after the creation
/// of a map of maps.
fn grace_wait(calls: &[&str]) -> Option<usize> {
    let created = calls.iter().position(|call| call.contains("BPF_MAP_TYPE_ARRAY_OF_MAPS"))?;
    let update =
        calls[created..].iter().position(|call| call.contains("bpf(BPF_MAP_UPDATE_ELEM,"))?;
    Some(created + update + 1)
}

/// Which of `commits` plan as "No changes." against the live maps (the entries match; a killed
/// apply may have left its revision unrecorded, which the plan says and counts as a change).
fn unchanged(setup: &Setup, commits: &[&str]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for commit in commits {
        let plan = setup.run("plan", &["--ref", commit, "--refresh"])?;
        let text = String::from_utf8_lossy(&plan.stdout);
        ensure!(
            plan.status.success(),
            "plan of {commit}: {}",
            String::from_utf8_lossy(&plan.stderr)
        );
        if text.contains("\nNo changes.") {
            found.push(commit.to_string());
        }
    }
    Ok(found)
}

#[test]
fn an_apply_killed_at_any_write_leaves_one_whole_state_and_the_next_repairs_it() -> Result<()> {
    let mut setup = Setup::new("crash")?;
    setup.sandbox.serve_tcp("127.0.0.11:8080", "a")?;
    setup.sandbox.serve_tcp("127.0.0.12:8080", "b")?;
    let state_a = commit_state(&setup, "127.0.0.11");
    let state_b = commit_state(&setup, "127.0.0.12");
    setup.expect(0, "apply", &["--ref", &state_a])?;

    // An apply from one state to the other, traced: the positions of its writes among the
    // main thread's bpf calls (each apply of these two states makes the same calls).
    let log = setup.cache.path().join("apply.strace");
    let log_arg = log.display().to_string();
    let traced = apply_traced(&setup, &state_b, &["-e", "trace=bpf", "-o", &log_arg])?;
    ensure!(traced.status.success(), "{}", String::from_utf8_lossy(&traced.stderr));
    let text = std::fs::read_to_string(&log)?;
    let main = text.split_whitespace().next().context("an empty strace log")?.to_owned();
    let calls: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(&format!("{main} ")) && line.contains("bpf(BPF_"))
        .collect();
    let writes: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, call)| WRITES.iter().any(|w| call.contains(&format!("bpf({w},"))))
        .map(|(i, _)| i + 1)
        .collect();
    ensure!(writes.len() >= 10, "only {} writes found in:\n{text}", writes.len());
    // The RCU wait is a write too: the update of a map of maps made for it (see `grace`).
    let wait = grace_wait(&calls).context("no map-of-maps update (the RCU wait) in the apply")?;
    ensure!(writes.contains(&wait), "the RCU wait (call {wait}) is not among {writes:?}");
    setup.expect(0, "apply", &["--ref", &state_a])?;

    let stop = setup.cache.path().join("stop");
    let probes: Vec<_> = ["10.96.0.1:80", "10.96.7.250:80"]
        .into_iter()
        .map(|vip| setup.sandbox.spawn_probe_until(&stop, vip))
        .collect::<Result<_>>()?;
    // Kill points: every write, the RCU wait among them.
    let kills: Vec<String> =
        writes.iter().map(|n| format!("inject=bpf:signal=KILL:when={n}")).collect();
    let (mut from, mut to) = (state_a.as_str(), state_b.as_str());
    for kill in &kills {
        let output = apply_traced(&setup, to, &["-o", "/dev/null", "-e", kill])?;
        ensure!(
            !output.status.success(),
            "the apply to {to} was not killed at {kill}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let live = unchanged(&setup, &[from, to])?;
        ensure!(
            live.len() == 1,
            "after a kill at {kill}, {live:?} plan as no changes (wanted one)"
        );

        // The next apply repairs what the killed one left: both sets hold the new state.
        setup.expect(0, "apply", &["--ref", to, "--refresh"])?;
        let status = setup.status()?;
        ensure!(status["standby_dirty"] == false, "after the repair at {kill}: {status}");
        let (_, [active, standby]) = Dataplane::open(setup.sandbox.pin_path())?.read_both_sets()?;
        ensure!(
            (&active.services, &active.slots, &active.backends)
                == (&standby.services, &standby.slots, &standby.backends),
            "after the repair at {kill} the sets differ"
        );
        ensure!(unchanged(&setup, &[from, to])? == [to.to_string()], "repair at {kill}");
        (from, to) = (to, from);
    }
    std::fs::write(&stop, "")?;

    let mut seen = BTreeSet::new();
    for probe in probes {
        let result = probe.wait()?;
        ensure!(result.errors.is_empty(), "a connect failed while applies were killed: {result:?}");
        ensure!(result.total() > 0, "a probe made no connects");
        seen.extend(result.replies.into_keys());
    }
    ensure!(seen.iter().all(|name| name == "a" || name == "b"), "reached {seen:?}");
    Ok(())
}

#[test]
fn applies_wait_for_readers_where_membarrier_fails() -> Result<()> {
    let mut setup = Setup::new("grace")?;
    setup.sandbox.serve_tcp("127.0.0.13:8080", "a")?;
    setup.sandbox.serve_tcp("127.0.0.14:8080", "b")?;
    let state_a = commit_state(&setup, "127.0.0.13");
    let state_b = commit_state(&setup, "127.0.0.14");
    setup.expect(0, "apply", &["--ref", &state_a])?;
    let stop = setup.cache.path().join("stop");
    let probe = setup.sandbox.spawn_probe_until(&stop, "10.96.3.7:80")?;
    // As on a kernel booted with nohz_full: membarrier(MEMBARRIER_CMD_GLOBAL) is EINVAL.
    let log = setup.cache.path().join("grace.strace");
    let log_arg = log.display().to_string();
    let args = ["-e", "trace=bpf,membarrier", "-e", "inject=membarrier:error=EINVAL", "-o"];
    let mut strace_args = args.to_vec();
    strace_args.push(&log_arg);
    for state in [&state_b, &state_a, &state_b] {
        let output = apply_traced(&setup, state, &strace_args)?;
        ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        ensure!(unchanged(&setup, &[&state_a, &state_b])? == [state.clone()], "after {state}");
        let text = std::fs::read_to_string(&log)?;
        let calls: Vec<&str> = text.lines().collect();
        ensure!(grace_wait(&calls).is_some(), "the apply to {state} did not wait:\n{text}");
    }
    std::fs::write(&stop, "")?;
    let result = probe.wait()?;
    ensure!(result.errors.is_empty(), "a connect failed during the applies: {result:?}");
    ensure!(result.total() > 0, "the probe made no connects");
    ensure!(result.replies.keys().all(|name| name == "a" || name == "b"), "{result:?}");
    Ok(())
}
