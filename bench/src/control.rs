//! Control plane: a repository of 10 000 services with 10 backends each. How long reconciler
//! takes to validate and compile it from git, to apply it cold, to apply a one-backend change
//! and to plan when nothing changed; against `iptables-restore` and `nft -f` of the rule sets
//! kube-proxy would write for the same services, full and for the one-service change.
use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{ensure, Context as _, Result};
use reconciler::{
    dataplane::{ApplyTo, Install, Scope, LARGE_HOST_CPUS},
    pipeline::Session,
};
use reconciler_core::{
    capacity,
    compile::compile,
    source::{FetchTimeouts, GitSpec, SourceSpec},
    state::MapState,
    validate::Policy,
};
use reconciler_tests::{git::Repo, reconciler_path, Sandbox};
use serde_json::{json, Value};

use crate::kube::{self, Protocol, Service};

const BACKENDS: usize = 10;

/// A capacity that 10 000 services of 10 backends fit (the default holds 32 767 backends).
const CAPACITY: &str = "services=16384,backends=131072,slots=131072";

/// A finished child process: wall time and standard output.
struct Run {
    seconds: f64,
    stdout: String,
}

/// Runs `command` to completion, measuring its wall time.
fn timed(command: &mut Command, input: Option<&str>) -> Result<Run> {
    let started = Instant::now();
    let mut child = command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    if let Some(input) = input {
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().context("stdout")?, &mut stdout)?;
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "{command:?} failed: {stderr}");
    Ok(Run { seconds, stdout })
}

/// `reconciler ARGS` run by GNU time (apt `time`), which writes the peak resident memory to
/// `rss_file`. Not wait4's figure for our own child: Linux starts a child's maximum RSS at
/// its parent's (the mm copied at fork), and this process holds 10 000 compiled services.
fn reconciler_command(args: &[&str], rss_file: &std::path::Path) -> Result<Command> {
    let mut command = Command::new("time");
    command.args(["--format", "%M", "--output"]).arg(rss_file).arg(reconciler_path()?).args(args);
    Ok(command)
}

/// The peak resident memory, in MiB, that GNU time wrote to `rss_file`.
fn peak_rss_mib(rss_file: &std::path::Path) -> Result<f64> {
    let text = std::fs::read_to_string(rss_file)?;
    let kib: f64 = text.trim().parse().with_context(|| format!("GNU time wrote {text:?}"))?;
    Ok(kib / 1024.0)
}

/// The number in "... in N map writes" of plan or apply output.
fn map_writes(output: &str) -> Result<u64> {
    let at = output.find(" map writes").with_context(|| format!("no map writes in:\n{output}"))?;
    let number = output[..at].rsplit(' ').next().context("map writes")?;
    Ok(number.parse()?)
}

/// `count` services, with 10 backends each.
fn services(count: usize) -> Vec<Service> {
    (0..count)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let endpoints = (0..BACKENDS).map(|e| format!("10.{}.{hi}.{lo}:8080", e + 1)).collect();
            Service {
                vip: format!("10.96.{hi}.{lo}"),
                port: 80,
                protocol: Protocol::Tcp,
                endpoints,
            }
        })
        .collect()
}

/// Writes `services` into `repo` as 100 files of 100 services and commits; returns the commit.
fn commit(repo: &Repo, services: &[Service], message: &str) -> String {
    for (file, chunk) in services.chunks(100).enumerate() {
        let offset = file * 100;
        let text = crate::yaml(chunk).replace("name: svc-", "name: team-");
        // Names must stay unique across files: number them by their global index.
        let text = (0..chunk.len()).rev().fold(text, |text, i| {
            text.replace(&format!("name: team-{i}}}"), &format!("name: svc-{}}}", offset + i))
        });
        repo.write(&format!("services/team-{file:02}.yaml"), text);
    }
    repo.commit(message)
}

/// The daemon on the data plane of a fresh sandbox, following branch `live` of `repo`: set
/// to `commits[0]` and applied, then moved to each commit in turn, each announced by
/// `POST /reconcile`. Returns the median time from the POST to `/status` showing the commit
/// applied, and the daemon's resident memory after the last.
fn daemon_webhook(repo: &Repo, commits: [&str; 2], dir: &std::path::Path) -> Result<(f64, f64)> {
    use reconciler::daemon::http::request;
    let sandbox = Sandbox::new("bench-daemon")?;
    std::fs::create_dir_all(dir)?;
    repo.git(&["branch", "-f", "live", commits[0]]);
    let listen = format!("{}:9469", reconciler_tests::git::loopback_address());
    let config = format!(
        "source:\n  url: {}\n  ref: live\n  path: services\n  interval: 1h\n  cacheDir: {}\n\
         dataplane:\n  cgroup: {}\n  pinPath: {}\n  capacity: {{services: 16384, backends: 131072, \
         slots: 131072}}\nlisten: {listen}\n",
        repo.url(),
        dir.join("cache").display(),
        sandbox.cgroup().display(),
        sandbox.pin_path().display()
    );
    std::fs::write(dir.join("node.yaml"), config)?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = reconciler_tests::Running(
        Command::new(reconciler_path()?)
            .args(["daemon", "--config"])
            .arg(dir.join("node.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    // Polled every 2 ms: the tests' 50 ms is too coarse to time this.
    let applied = |commit: &str, limit: std::time::Duration| {
        let every = std::time::Duration::from_millis(2);
        reconciler_tests::wait_for_every(every, &format!("{commit} applied"), limit, || {
            let (_, body) = request(&listen, "GET", "/status").ok()?;
            let status: Value = serde_json::from_str(&body).ok()?;
            (status["applied_revision"] == commit).then_some(())
        })
    };
    applied(commits[0], std::time::Duration::from_secs(120))?;
    let mut times = Vec::new();
    for commit in [commits[1], commits[0], commits[1]] {
        repo.git(&["branch", "-f", "live", commit]);
        let started = Instant::now();
        let (code, _) = request(&listen, "POST", "/reconcile")?;
        ensure!(code == 202, "POST /reconcile: {code}");
        applied(commit, std::time::Duration::from_secs(30))?;
        times.push(started.elapsed().as_secs_f64());
    }
    let (_, body) = request(&listen, "GET", "/status")?;
    let status: Value = serde_json::from_str(&body)?;
    ensure!(status["last_plan"] == "incremental", "the daemon's last plan: {status}");
    let vm = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id()))?;
    let rss_kib: f64 = vm
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    // SAFETY: signalling our own child, by its PID.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    daemon.0.wait()?;
    Ok((median(times), rss_kib / 1024.0))
}

fn median(mut values: Vec<f64>) -> f64 {
    crate::median(&mut values)
}

/// Measures `rounds` rounds with a repository of `count` services; the one-backend change
/// replaces the first backend of the service in the middle.
pub fn run(rounds: usize, count: usize) -> Result<Value> {
    let changed_index = count / 2;
    let base = services(count);
    let mut changed = base.clone();
    changed[changed_index].endpoints[0] = "10.99.0.1:8080".into();
    let repo = Repo::new();
    let commit_a = commit(&repo, &base, "the services");
    let commit_b = commit(&repo, &changed, "svc-5000: replace one backend");
    let work = tempfile::tempdir()?;

    let mut figures: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut record =
        |name: &'static str, value: f64| match figures.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => figures.push((name, vec![value])),
        };
    for round in 0..rounds {
        // Validate and compile from git, in process: a fresh cache (clone), then a warm one.
        let cache = work.path().join(format!("cache-{round}"));
        let git = GitSpec {
            url: repo.url(),
            reference: Some(commit_a.clone()),
            subdir: Some("services".into()),
            cache_dir: cache.clone(),
            ssh_key: None,
            verify: None,
            timeouts: FetchTimeouts::default(),
        };
        let spec = SourceSpec::Git(git.clone());
        for name in ["validate_compile_cold_cache_s", "validate_compile_s"] {
            let started = Instant::now();
            let desired = Session::new(spec.clone(), "", Policy::default()).load()?;
            let state = compile(&desired.services, &MapState::default(), &BTreeSet::new())?;
            ensure!(state.services.len() == count, "compiled {} services", state.services.len());
            record(name, started.elapsed().as_secs_f64());
        }

        // reconciler, end to end through the CLI, into a fresh data plane.
        let sandbox = Sandbox::new("bench-control")?;
        let rss_file = work.path().join("peak-rss");
        let cli = |args: &[&str], reference: &str| {
            let mut command = reconciler_command(args, &rss_file)?;
            command
                .args(["--repo", &repo.url(), "--path", "services", "--ref", reference])
                .arg("--cache-dir")
                .arg(&cache)
                .arg("--pin-path")
                .arg(sandbox.pin_path())
                .args(["--capacity", CAPACITY]);
            if args[0] == "apply" {
                command.arg("--cgroup").arg(sandbox.cgroup());
            }
            timed(&mut command, None)
        };
        let cold = cli(&["apply"], &commit_a)?;
        record("cold_apply_s", cold.seconds);
        record("cold_apply_map_writes", map_writes(&cold.stdout)? as f64);
        record("cold_apply_peak_rss_mib", peak_rss_mib(&rss_file)?);
        // The incremental path (the memo the cold apply left), then the full one, forth and
        // back between the two commits.
        let plan = cli(&["plan"], &commit_b)?;
        ensure!(plan.stdout.contains("\nRead: "), "not incremental:\n{}", plan.stdout);
        record("one_backend_plan_s", plan.seconds);
        let applied = cli(&["apply"], &commit_b)?;
        record("one_backend_apply_s", applied.seconds);
        record("one_backend_map_writes", map_writes(&applied.stdout)? as f64);
        record("one_backend_apply_peak_rss_mib", peak_rss_mib(&rss_file)?);
        let unchanged = cli(&["plan", "--detailed-exitcode"], &commit_b)?;
        ensure!(unchanged.stdout.contains("No changes."), "{}", unchanged.stdout);
        record("no_change_plan_s", unchanged.seconds);
        let refreshed = cli(&["plan", "--detailed-exitcode", "--refresh"], &commit_b)?;
        ensure!(refreshed.stdout.contains("No changes."), "{}", refreshed.stdout);
        record("no_change_plan_refresh_s", refreshed.seconds);
        let full = cli(&["apply", "--refresh"], &commit_a)?;
        ensure!(!full.stdout.contains("\nRead: "), "incremental:\n{}", full.stdout);
        record("one_backend_apply_refresh_s", full.seconds);
        drop(sandbox);

        let (webhook, rss) = daemon_webhook(
            &repo,
            [&commit_a, &commit_b],
            &work.path().join(format!("daemon-{round}")),
        )?;
        record("daemon_webhook_s", webhook);
        record("daemon_steady_rss_mib", rss);

        // The data plane's share alone, in process: install + apply of the compiled state, and
        // the one-backend change (read both sets, diff, write, flip, RCU wait, sync).
        let sandbox = Sandbox::new("bench-dataplane")?;
        let desired_a = Session::new(spec.clone(), "", Policy::default()).load()?;
        let state_a = compile(&desired_a.services, &MapState::default(), &BTreeSet::new())?;
        let started = Instant::now();
        let (mut dataplane, _) =
            Install::new(sandbox.pin_path(), sandbox.cgroup()).capacity(CAPACITY.parse()?).run()?;
        dataplane.apply(&state_a, ApplyTo::default())?;
        record("dataplane_cold_apply_s", started.elapsed().as_secs_f64());
        // The kernel memory the maps lock on a large host (issue 20: ≤ 64 MiB at 256 possible
        // CPUs, at the default capacity): full at the default capacity, and at the maximum.
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let full = crate::memory::full_at(&capacity::DEFAULT)?;
        record("dataplane_memory_mib", mib(full.memory()));
        record("dataplane_memory_large_host_mib", mib(full.memory_at(LARGE_HOST_CPUS)));
        let maximum = crate::memory::full_at(&capacity::MAXIMUM)?;
        record("dataplane_memory_maximum_large_host_mib", mib(maximum.memory_at(LARGE_HOST_CPUS)));
        let spec_b = SourceSpec::Git(GitSpec { reference: Some(commit_b.clone()), ..git });
        let desired_b = Session::new(spec_b, "", Policy::default()).load()?;
        let state_b = compile(&desired_b.services, &state_a, &state_a.health_excluded)?;
        let started = Instant::now();
        let report = dataplane.apply(&state_b, ApplyTo::default())?;
        record("dataplane_one_backend_apply_s", started.elapsed().as_secs_f64());
        record("dataplane_one_backend_map_writes", report.map_writes as f64);
        // And back, by the incremental path: only the changed service's entries are read.
        let name = format!("svc-{changed_index}");
        let touched: Vec<_> =
            desired_a.services.iter().filter(|s| s.metadata.name == name).cloned().collect();
        let before = state_b.of_services(&[name.as_str()].into());
        let after = compile(&touched, &state_b, &state_b.health_excluded)?;
        let started = Instant::now();
        dataplane.apply(
            &after,
            ApplyTo {
                revision: None,
                expected_generation: Some(report.generation),
                scope: Scope::Recorded(&before),
            },
        )?;
        record("dataplane_one_backend_incremental_s", started.elapsed().as_secs_f64());
        drop(dataplane);
        drop(sandbox);

        // The same through kube-proxy's layouts, each in a fresh namespace: a full sync,
        // then the one-service change on top of it.
        let (before, after) = (&base[changed_index], &changed[changed_index]);
        let sandbox = Sandbox::new("bench-iptables")?;
        let restore = |args: &[&str], input: &str| -> Result<f64> {
            Ok(timed(sandbox.command(args[0])?.args(&args[1..]), Some(input))?.seconds)
        };
        record(
            "iptables_restore_full_s",
            restore(&["iptables-restore"], &kube::iptables_full(&base))?,
        );
        let delta = kube::iptables_one_service(changed_index, after);
        record(
            "iptables_restore_one_service_s",
            restore(&["iptables-restore", "--noflush"], &delta)?,
        );
        drop(sandbox);
        let sandbox = Sandbox::new("bench-nft")?;
        let nft = |input: &str| -> Result<f64> {
            Ok(timed(sandbox.command("nft")?.args(["-f", "-"]), Some(input))?.seconds)
        };
        record("nft_full_s", nft(&kube::nft_full(&base))?);
        record("nft_one_service_s", nft(&kube::nft_one_service(changed_index, before, after))?);
    }
    let medians: serde_json::Map<String, Value> = figures
        .iter()
        .map(|(name, values)| (name.to_string(), json!(median(values.clone()))))
        .collect();
    let raw: serde_json::Map<String, Value> =
        figures.iter().map(|(name, values)| (name.to_string(), json!(values))).collect();
    Ok(
        json!({"services": count, "backends_per_service": BACKENDS, "rounds": rounds, "medians": medians, "rounds_raw": raw}),
    )
}

fn ms(value: &Value, name: &str) -> String {
    value["medians"][name].as_f64().map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
}

fn number(value: &Value, name: &str) -> String {
    value["medians"][name].as_f64().map_or("-".into(), |n| format!("{n:.0}"))
}

fn ratio(value: &Value, ours: &str, theirs: &str) -> String {
    match (value["medians"][ours].as_f64(), value["medians"][theirs].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// One table row: reconciler's time `ours`, its map writes, and the (iptables, nft)
/// baselines it is compared with.
fn row(
    value: &Value,
    label: &str,
    ours: &str,
    writes: Option<&str>,
    baselines: Option<(&str, &str)>,
) -> String {
    let writes = writes.map_or(String::new(), |w| number(value, w));
    let [iptables, nft, over_iptables, over_nft] = match baselines {
        Some((iptables, nft)) => [
            ms(value, iptables),
            ms(value, nft),
            ratio(value, ours, iptables),
            ratio(value, ours, nft),
        ],
        None => Default::default(),
    };
    format!(
        "| {label} | {} | {writes} | {iptables} | {nft} | {over_iptables} | {over_nft} |\n",
        ms(value, ours)
    )
}

/// The control plane figures as a Markdown table.
pub fn table(value: &Value) -> String {
    let rounds = value["rounds"].as_u64().unwrap_or(0);
    let count = value["services"].as_u64().unwrap_or(0);
    let mut out = format!(
        "## Control plane: {count} services × {BACKENDS} backends\n\n\
         Median of {rounds} interleaved round(s); reconciler times are whole `reconciler` \
         processes (git fetch from a local repository, validate, compile, read the live maps, \
         apply), baselines are `iptables-restore` / `nft -f` of kube-proxy's rule sets in a fresh \
         namespace.\n\n\
         | operation | reconciler | map writes | iptables-restore | nft -f | reconciler / iptables | reconciler / nft |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    let full = Some(("iptables_restore_full_s", "nft_full_s"));
    let one = Some(("iptables_restore_one_service_s", "nft_one_service_s"));
    let cold_cache = ms(value, "validate_compile_cold_cache_s");
    let rss = number(value, "cold_apply_peak_rss_mib");
    let plan_alone = ms(value, "one_backend_plan_s");
    let one_rss = number(value, "one_backend_apply_peak_rss_mib");
    let daemon_rss = number(value, "daemon_steady_rss_mib");
    for (label, ours, writes, baselines) in [
        (
            format!("validate + compile from git (warm cache; cold {cold_cache})"),
            "validate_compile_s",
            None,
            None,
        ),
        (
            format!("cold apply (peak RSS {rss} MiB)"),
            "cold_apply_s",
            Some("cold_apply_map_writes"),
            full,
        ),
        (
            format!("one-backend change: apply (incremental; plan alone {plan_alone}, peak RSS {one_rss} MiB)"),
            "one_backend_apply_s",
            Some("one_backend_map_writes"),
            one,
        ),
        (
            "one-backend change: apply --refresh (the full path)".into(),
            "one_backend_apply_refresh_s",
            None,
            one,
        ),
        ("no-change plan (incremental)".into(), "no_change_plan_s", None, None),
        ("no-change plan --refresh".into(), "no_change_plan_refresh_s", None, None),
        (
            format!("daemon: POST /reconcile to the new revision live (steady RSS {daemon_rss} MiB)"),
            "daemon_webhook_s",
            None,
            one,
        ),
        (
            "data plane alone: cold apply of the compiled state".into(),
            "dataplane_cold_apply_s",
            None,
            full,
        ),
        (
            "data plane alone: one-backend change (reading both sets)".into(),
            "dataplane_one_backend_apply_s",
            Some("dataplane_one_backend_map_writes"),
            one,
        ),
        (
            "data plane alone: one-backend change (incremental: its entries only)".into(),
            "dataplane_one_backend_incremental_s",
            None,
            one,
        ),
    ] {
        out.push_str(&row(value, &label, ours, writes, baselines));
    }
    out.push_str(&format!(
        "\nKernel memory the data plane's maps lock with every map full at the default \
         capacity: {} MiB here, {} MiB with {LARGE_HOST_CPUS} possible CPUs (per-CPU maps scale \
         with them; target ≤ 64); at the maximum capacity, full: {} MiB with \
         {LARGE_HOST_CPUS}.\n",
        number(value, "dataplane_memory_mib"),
        number(value, "dataplane_memory_large_host_mib"),
        number(value, "dataplane_memory_maximum_large_host_mib"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_each_figure_beside_its_baselines() {
        let value = json!({"services": 10, "rounds": 1, "medians": {
            "cold_apply_s": 1.0, "cold_apply_map_writes": 43.0, "cold_apply_peak_rss_mib": 5.0,
            "iptables_restore_full_s": 4.0, "nft_full_s": 8.0, "no_change_plan_s": 0.5,
        }});
        let text = table(&value);
        assert!(
            text.contains("| cold apply (peak RSS 5 MiB) | 1000 ms | 43 | 4000 ms | 8000 ms | 0.25 | 0.12 |\n"),
            "{text}"
        );
        assert!(
            text.contains("| no-change plan (incremental) | 500 ms |  |  |  |  |  |\n"),
            "{text}"
        );
        assert!(text.contains(
            "| one-backend change: apply (incremental; plan alone -, peak RSS - MiB) | - | - | - | - | - | - |\n"
        ));
    }
}
