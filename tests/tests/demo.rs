//! `make demo` as a newcomer runs it (the script, with the suite's own build): every step
//! ends OK, the output is plain text where it is not a terminal, and nothing is left behind,
//! also when it is interrupted (Ctrl-C: SIGINT to its process group).
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use reconciler_tests::{require_root, wait_for};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh")
}

/// What the demo makes, none of which may outlive it. (Its preparation, the setup and the
/// build it logs to target/demo/, is skipped here: the suite has built the binaries.)
fn leftovers() -> Vec<String> {
    let netns =
        Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let mut found = Vec::new();
    if String::from_utf8_lossy(&netns).contains("reconciler-demo") {
        found.push("the network namespace".to_owned());
    }
    let run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/demo/run");
    for path in [Path::new("/sys/fs/bpf/reconciler-demo"), &run] {
        if path.exists() {
            found.push(path.display().to_string());
        }
    }
    // Its processes: the daemon and the tracer name the pins, the resolvers their zone, the
    // backends their names.
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let demo = [
            "reconciler-demo",
            "demo/run/",
            "web.demo.test",
            " web-1",
            " payments-2",
            " metrics-1",
            " postgres-1",
        ];
        if demo.iter().any(|mark| cmdline.contains(mark)) {
            found.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    if let Ok(cgroup) = reconciler::dataplane::default_cgroup() {
        if cgroup.join("reconciler-demo").exists() {
            found.push("the demo cgroup".to_owned());
        }
    }
    found
}

/// The demo, in a process group of its own (as a shell's job is), its output piped.
fn demo() -> Result<std::process::Child> {
    let mut command = Command::new("bash");
    command
        .arg(script())
        .env("RECONCILER_DEMO_BUILT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.process_group(0);
    Ok(command.spawn()?)
}

/// One test, as the demo's names (namespace, pins, cgroup) are fixed: a whole run, then one
/// interrupted.
#[test]
fn the_demo_shows_every_feature_and_leaves_nothing_even_when_interrupted() -> Result<()> {
    require_root()?;
    let run = demo()?.wait_with_output()?;
    let (stdout, stderr) =
        (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    ensure!(run.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    let done = stdout.split("== Done").nth(1).context("no `== Done`")?;
    let ok = done.lines().filter(|l| l.trim_start().starts_with("OK  ")).count();
    assert_eq!(ok, 11, "{done}");
    for step in 1..=11 {
        assert!(stdout.contains(&format!("\n== {step}. ")), "no step {step}:\n{stdout}");
    }
    assert!(!stdout.contains('\u{1b}'), "colour where no terminal is:\n{stdout}");
    assert!(stdout.contains("\n$ reconciler plan --repo "), "commands as typed:\n{stdout}");
    assert_eq!(leftovers(), Vec::<String>::new());

    // Interrupted once the daemon runs: everything goes all the same.
    let mut child = demo()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let started = lines.by_ref().map_while(Result::ok).any(|l| l.starts_with("== 3. "));
    ensure!(started, "the demo never reached its third step");
    // SAFETY: kill(2) of the process group this test started (its leader's PID).
    let sent = unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) };
    ensure!(sent == 0, "SIGINT: {}", std::io::Error::last_os_error());
    let status = child.wait()?;
    assert!(!status.success(), "{status:?}");
    wait_for("the demo's leftovers to go", Duration::from_secs(10), || {
        leftovers().is_empty().then_some(())
    })?;
    Ok(())
}
