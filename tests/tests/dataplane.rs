//! The data plane in the real kernel: programs loaded, attached to a real cgroup, real
//! connects to real listeners, each test in its own namespace, cgroup and pin directory.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::{
        fs::{chown, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Barrier},
};

use anyhow::{bail, ensure, Context as _, Result};
use reconciler::dataplane::{ApplyTo, Dataplane, Install, Uninstalled};
use reconciler_common::MAX_SERVICES;
use reconciler_tests::{
    attached_programs, one_service, probe_path, reconciler_path, require_root, Remove, Sandbox,
    DATA_PLANE_PROGRAMS,
};

/// What install at `pin_path` fails with; an error if it succeeds.
fn install_error(pin_path: &Path, cgroup: &Path) -> Result<String> {
    match Dataplane::install(pin_path, cgroup) {
        Ok(_) => bail!("install at {} succeeded", pin_path.display()),
        Err(e) => Ok(e.to_string()),
    }
}

fn mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    Ok(fs::set_permissions(path, fs::Permissions::from_mode(mode))?)
}

/// A pin path outside the sandbox's own, uninstalled and removed on drop (also when the
/// test fails); declare it after the sandbox so it goes first.
struct PinPath(PathBuf);

impl Drop for PinPath {
    fn drop(&mut self) {
        let _ = Dataplane::uninstall(&self.0);
        let _ = fs::remove_dir(&self.0);
    }
}

/// Removes a file or an empty directory on drop, also when the test fails; declare it after
/// the sandbox so it goes first.
fn names(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

/// A listener at `listen` in a fresh sandbox is reached through `vip`.
fn vip_reaches_backend(test: &str, listen: &str, vip: &str) -> Result<()> {
    let mut sandbox = Sandbox::new(test)?;
    let backend = sandbox.serve_tcp(listen, "b1")?;
    sandbox.install(&one_service(vip, &[&backend.to_string()])?)?;

    let result = sandbox.probe_tcp(vip, 5)?;
    assert_eq!(result.replies.get("b1"), Some(&5), "{result:?}");
    assert!(result.errors.is_empty(), "{result:?}");
    Ok(())
}

#[test]
fn ipv4_connect_to_a_vip_reaches_a_backend() -> Result<()> {
    vip_reaches_backend("ipv4", "127.0.0.1:0", "10.96.0.10:80")
}

#[test]
fn ipv6_connect_to_a_vip_reaches_a_backend() -> Result<()> {
    vip_reaches_backend("ipv6", "[::1]:0", "[fd00:96::10]:80")
}

#[test]
fn connects_spread_over_all_backends_and_are_counted() -> Result<()> {
    let mut sandbox = Sandbox::new("spread")?;
    let backends = [
        sandbox.serve_tcp("127.0.0.1:0", "b1")?.to_string(),
        sandbox.serve_tcp("127.0.0.2:0", "b2")?.to_string(),
        sandbox.serve_tcp("127.0.0.3:0", "b3")?.to_string(),
    ];
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let dataplane = sandbox.install(&one_service("10.96.0.10:80", &backends)?)?;

    let result = sandbox.probe_tcp("10.96.0.10:80", 3000)?;
    assert!(result.errors.is_empty(), "{result:?}");
    assert_eq!(result.replies.keys().cloned().collect::<BTreeSet<_>>(), names(&["b1", "b2", "b3"]));
    for (name, &n) in &result.replies {
        // 25%..42% of 3000; with p = 1/3 this fails by chance about once in 10^10 runs.
        assert!((750..=1260).contains(&n), "{name} got {n} of 3000: {result:?}");
    }
    // The per-backend counters saw the same connects (IDs 1..=3 are b1..b3).
    let counted = dataplane.backend_counters([1, 2, 3])?;
    for (id, name) in [(1, "b1"), (2, "b2"), (3, "b3")] {
        let translations = counted.get(&id).map(|c| c.translations);
        assert_eq!(translations, result.replies.get(name).copied(), "backend {id}: {counted:?}");
    }
    Ok(())
}

#[test]
fn connects_to_other_addresses_are_untouched() -> Result<()> {
    let mut sandbox = Sandbox::new("untouched")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let direct = sandbox.serve_tcp("127.0.0.5:0", "direct")?;
    sandbox.install(&one_service("10.96.0.10:80", &[&backend.to_string()])?)?;

    // A listener that is not a VIP is reached as addressed.
    let result = sandbox.probe_tcp(&direct.to_string(), 20)?;
    assert_eq!(result.replies.get("direct"), Some(&20), "{result:?}");
    // Another address on the service's port goes out as addressed, and the namespace has no
    // route for it. (The VIP on another port is refused: see `sockets.rs`.)
    let result = sandbox.probe_tcp("10.96.0.11:80", 3)?;
    assert_eq!(result.errors.get("ENETUNREACH"), Some(&3), "{result:?}");
    Ok(())
}

#[test]
fn a_service_without_backends_refuses_connects_without_sending_a_packet() -> Result<()> {
    let sandbox = Sandbox::new("refused")?;
    // The VIP is a local address here: a connect that got past the hook would send a SYN.
    sandbox.run(&["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"])?;
    sandbox.install(&one_service("10.96.0.10:80", &[])?)?;

    let before = sandbox.lo_tx_packets()?;
    let result = sandbox.probe_tcp("10.96.0.10:80", 10)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&10), "{result:?}");
    assert_eq!(sandbox.lo_tx_packets()?, before, "a packet left for the VIP");

    // Control: another local address that is no VIP sends a SYN (and gets a RST).
    sandbox.run(&["ip", "addr", "add", "10.96.0.11/32", "dev", "lo"])?;
    let result = sandbox.probe_tcp("10.96.0.11:81", 1)?;
    assert_eq!(result.errors.get("ECONNREFUSED"), Some(&1), "{result:?}");
    assert!(sandbox.lo_tx_packets()? > before, "the control connect sent nothing");
    Ok(())
}

#[test]
fn an_apply_that_swaps_the_backends_writes_only_what_changed() -> Result<()> {
    let mut sandbox = Sandbox::new("swap")?;
    let old = [
        sandbox.serve_tcp("127.0.0.1:0", "old1")?.to_string(),
        sandbox.serve_tcp("127.0.0.2:0", "old2")?.to_string(),
    ];
    let new = [
        sandbox.serve_tcp("127.0.0.3:0", "new1")?.to_string(),
        sandbox.serve_tcp("127.0.0.4:0", "new2")?.to_string(),
    ];
    let mut dataplane = sandbox.install(&one_service("10.96.0.10:80", &[&old[0], &old[1]])?)?;
    let before = dataplane.status()?;
    let result = sandbox.probe_tcp("10.96.0.10:80", 200)?;
    assert_eq!(result.replies.keys().cloned().collect::<BTreeSet<_>>(), names(&["old1", "old2"]));

    // Same IDs, new addresses: 2 backend entries change, nothing else.
    let desired = one_service("10.96.0.10:80", &[&new[0], &new[1]])?;
    let report =
        dataplane.apply(&desired, ApplyTo { revision: Some("swap"), ..ApplyTo::default() })?;
    assert_eq!(report.changes, 2);
    // Each change into both sets, plus dirty mark, flip and final metadata.
    assert_eq!(report.map_writes, 2 * 2 + 3);
    assert_eq!(report.generation, before.generation + 1);

    let result = sandbox.probe_tcp("10.96.0.10:80", 200)?;
    assert!(result.errors.is_empty(), "{result:?}");
    assert_eq!(result.replies.keys().cloned().collect::<BTreeSet<_>>(), names(&["new1", "new2"]));

    // Both sets now hold the desired state: the live read matches, the standby is clean.
    let live = dataplane.read_live()?;
    assert_eq!(live.state, desired);
    assert!(!live.status.standby_dirty);
    assert_eq!(live.status.active_set, before.active_set ^ 1);
    assert_eq!(live.status.revision.as_deref(), Some("swap"));

    // Applying the same state again writes nothing.
    let again =
        dataplane.apply(&desired, ApplyTo { revision: Some("swap"), ..ApplyTo::default() })?;
    assert_eq!((again.changes, again.map_writes), (0, 0));

    // Growing to three backends adds one backend, one slot, and changes the slot count.
    let grown = one_service("10.96.0.10:80", &[&new[0], &new[1], &old[0]])?;
    let report = dataplane.apply(
        &grown,
        ApplyTo { expected_generation: Some(report.generation), ..ApplyTo::default() },
    )?;
    assert_eq!(report.changes, 3);
    assert_eq!(report.map_writes, 2 * 3 + 3);
    Ok(())
}

#[test]
fn the_data_plane_keeps_working_after_the_installer_exits() -> Result<()> {
    let mut sandbox = Sandbox::new("survive")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let status = Command::new(probe_path()?)
        .arg("install")
        .arg(sandbox.pin_path())
        .arg(sandbox.cgroup())
        .args(["10.96.0.10:80", &backend.to_string()])
        .status()?;
    ensure!(status.success(), "installer failed");

    // The installing process is gone; pinned links and maps carry on.
    let result = sandbox.probe_tcp("10.96.0.10:80", 10)?;
    assert_eq!(result.replies.get("b1"), Some(&10), "{result:?}");
    Ok(())
}

#[test]
fn install_is_idempotent_and_uninstall_leaves_nothing() -> Result<()> {
    let mut sandbox = Sandbox::new("lifecycle")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    sandbox.install(&one_service("10.96.0.10:80", &[&backend.to_string()])?)?;
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);

    // A second install reuses the first: same state, no extra programs.
    let again = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    assert_eq!(again.status()?.generation, 1);
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 3)?.replies.get("b1"), Some(&3));
    drop(again);

    // Another cgroup is refused rather than silently ignored.
    let other = Sandbox::new("lifecycle-other")?;
    let err = Dataplane::install(sandbox.pin_path(), other.cgroup()).err();
    assert!(err.as_ref().is_some_and(|e| e.to_string().contains("another cgroup")), "{err:?}");

    assert_eq!(Dataplane::uninstall(sandbox.pin_path())?, Uninstalled::Removed);
    assert!(!sandbox.pin_path().exists(), "pin directory left behind");
    assert_eq!(attached_programs(sandbox.cgroup())?, 0);
    // With the programs gone the VIP is an ordinary unroutable address again.
    let result = sandbox.probe_tcp("10.96.0.10:80", 1)?;
    assert_eq!(result.errors.get("ENETUNREACH"), Some(&1), "{result:?}");
    Ok(())
}

#[test]
fn a_stale_expected_generation_writes_nothing() -> Result<()> {
    let sandbox = Sandbox::new("generation")?;
    let mut dataplane = sandbox.install(&one_service("10.96.0.10:80", &["127.0.0.1:1"])?)?;
    let before = dataplane.read_live()?;
    let other = one_service("10.96.0.10:80", &["127.0.0.1:2"])?;
    let err = dataplane
        .apply(
            &other,
            ApplyTo {
                expected_generation: Some(before.status.generation + 1),
                ..ApplyTo::default()
            },
        )
        .err();
    assert!(err.as_ref().is_some_and(|e| e.to_string().contains("live generation")), "{err:?}");
    let after = dataplane.read_live()?;
    assert_eq!((after.state, after.status), (before.state, before.status));
    Ok(())
}

#[test]
fn concurrent_appliers_never_leave_the_sets_apart() -> Result<()> {
    let sandbox = Sandbox::new("concurrent")?;
    sandbox.install(&one_service("10.96.0.10:80", &["127.0.0.1:1"])?)?;
    let states = [
        one_service("10.96.0.10:80", &["127.0.0.1:1"])?,
        one_service("10.96.0.10:80", &["127.0.0.1:2", "127.0.0.1:3"])?,
    ];
    let threads: Vec<_> = states
        .iter()
        .cloned()
        .map(|state| {
            let pin_path = sandbox.pin_path().to_owned();
            std::thread::spawn(move || -> Result<()> {
                let mut dataplane = Dataplane::open(&pin_path)?;
                for _ in 0..20 {
                    dataplane.apply(&state, ApplyTo::default())?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("applier panicked"))??;
    }
    // Whoever applied last, the live state is one of the two whole states and both sets
    // agree: a further apply of the live state writes nothing.
    let mut dataplane = Dataplane::open(sandbox.pin_path())?;
    let live = dataplane.read_live()?;
    assert!(!live.status.standby_dirty);
    assert!(states.contains(&live.state), "{:?}", live.state);
    assert_eq!(dataplane.apply(&live.state, ApplyTo::default())?.map_writes, 0);
    Ok(())
}

#[test]
fn states_larger_than_one_batch_round_trip() -> Result<()> {
    let sandbox = Sandbox::new("batches")?;
    // 20 000 slots: more than two of the 8192-entry batches reads and writes use.
    let mut desired = one_service("10.96.0.10:80", &["127.0.0.1:1", "127.0.0.1:2"])?;
    let entry = desired.services.values_mut().next().context("service")?;
    entry.slot_count = 20_000;
    for slot in 0..20_000 {
        desired.slots.insert((1, slot), 1 + slot % 2);
    }
    let dataplane = sandbox.install(&desired)?;
    assert_eq!(dataplane.read_live()?.state, desired);
    // And back down: 19 998 deletes in batches, in both sets.
    let small = one_service("10.96.0.10:80", &["127.0.0.1:1", "127.0.0.1:2"])?;
    let mut dataplane = dataplane;
    let report = dataplane.apply(&small, ApplyTo::default())?;
    assert_eq!(report.changes, 19_999);
    assert_eq!(dataplane.read_live()?.state, small);
    Ok(())
}

#[test]
fn install_creates_the_pin_directory_with_mode_0700_whatever_the_umask() -> Result<()> {
    let sandbox = Sandbox::new("pin-mode")?;
    // In a child process: the umask is the whole process's.
    for umask in [0o000, 0o777] {
        let mut installer = Command::new(probe_path()?);
        installer.arg("install").arg(sandbox.pin_path()).arg(sandbox.cgroup());
        installer.args(["10.96.0.10:80", "127.0.0.1:1"]);
        // SAFETY: umask is async-signal-safe and takes no pointers.
        unsafe {
            installer.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            })
        };
        ensure!(installer.status()?.success(), "installer failed with umask {umask:03o}");
        assert_eq!(mode(sandbox.pin_path())?, 0o700, "umask {umask:03o}");
        Dataplane::uninstall(sandbox.pin_path())?;
    }
    Ok(())
}

#[test]
fn install_and_open_refuse_a_pin_directory_others_could_change() -> Result<()> {
    let sandbox = Sandbox::new("pin-owner")?;
    let pin_path = sandbox.pin_path();
    fs::create_dir(pin_path)?;
    set_mode(pin_path, 0o700)?;
    chown(pin_path, Some(65534), Some(65534))?;
    let err = install_error(pin_path, sandbox.cgroup())?;
    assert!(err.contains("is owned by uid 65534"), "{err}");

    chown(pin_path, Some(0), Some(0))?;
    set_mode(pin_path, 0o777)?;
    let err = install_error(pin_path, sandbox.cgroup())?;
    assert!(err.contains("has mode 0777"), "{err}");
    assert_eq!(sandbox.attached_programs()?, 0);
    assert_eq!(fs::read_dir(pin_path)?.count(), 0, "a refused install pinned something");

    // An apply opens the data plane: the same rules hold there.
    set_mode(pin_path, 0o700)?;
    Dataplane::install(pin_path, sandbox.cgroup())?;
    set_mode(pin_path, 0o770)?;
    let err = Dataplane::open(pin_path).err().context("open accepted mode 0770")?.to_string();
    assert!(err.contains("has mode 0770"), "{err}");
    Ok(())
}

#[test]
fn install_refuses_a_pin_directory_others_could_move_away() -> Result<()> {
    let sandbox = Sandbox::new("pin-ancestor")?;
    // The sandbox's pin path is the directory above; the data plane goes one level down.
    let above = sandbox.pin_path();
    let pin_path = PinPath(above.join("dataplane"));
    fs::create_dir(above)?;

    set_mode(above, 0o777)?;
    let err = install_error(&pin_path.0, sandbox.cgroup())?;
    let expected = format!("{}, above the pin directory", above.display());
    assert!(err.contains(&expected) && err.contains("mode 0777"), "{err}");
    assert!(!pin_path.0.exists(), "a refused install created the pin directory");

    set_mode(above, 0o755)?;
    chown(above, Some(65534), Some(65534))?;
    let err = install_error(&pin_path.0, sandbox.cgroup())?;
    assert!(err.contains(&expected) && err.contains("owned by uid 65534"), "{err}");

    // World-writable with the sticky bit, like /tmp (and often /sys/fs/bpf), is fine: others
    // cannot rename what is not theirs.
    chown(above, Some(0), Some(0))?;
    set_mode(above, 0o1777)?;
    Dataplane::install(&pin_path.0, sandbox.cgroup())?;
    assert_eq!(mode(&pin_path.0)?, 0o700);
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    Ok(())
}

/// Runs scripts/setup.sh with its bpffs step aimed at `dir`, in a mount namespace of its own
/// (whatever is mounted there goes with it), after the shell command `before`; returns
/// setup's output and the mode of `dir` afterwards.
fn setup_with_bpffs_at(dir: &Path, before: &str) -> Result<(Output, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!("{before}\nbash \"$0\" && stat -c 'mode %a' \"$RECONCILER_BPFFS\""))
        .arg(script)
        .env("RECONCILER_BPFFS", dir)
        .output()
        .context("running setup.sh under unshare")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "setup failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = stdout.lines().find_map(|l| l.strip_prefix("mode ")).context("no mode line")?;
    let mode = mode.to_owned();
    Ok((output, mode))
}

#[test]
fn setup_mounts_bpffs_with_mode_0700_and_warns_about_a_writable_one() -> Result<()> {
    require_root()?;
    let dir = tempfile::tempdir()?;
    // Nothing mounted there: setup mounts a bpffs that only root can write (the kernel adds
    // the sticky bit).
    let (output, mode) = setup_with_bpffs_at(dir.path(), "")?;
    assert_eq!(mode, "1700", "{output:?}");

    // A writable bpffs already there is left as it is, with a warning.
    let (output, mode) =
        setup_with_bpffs_at(dir.path(), "mount -t bpf -o mode=1777 bpf \"$RECONCILER_BPFFS\"")?;
    assert_eq!(mode, "1777", "{output:?}");
    let warning = format!(
        "setup: warning: {} is mode 1777; reconciler refuses pin directories others can \
         write, mount with mode=0700\n",
        dir.path().display()
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), warning);
    Ok(())
}

#[test]
fn concurrent_installs_at_one_pin_path_both_succeed_with_one_set_of_programs() -> Result<()> {
    let sandbox = Sandbox::new("install-race")?;
    let start = Arc::new(Barrier::new(2));
    let installers: Vec<_> = (0..2)
        .map(|_| {
            let pin_path = sandbox.pin_path().to_owned();
            let cgroup = sandbox.cgroup().to_owned();
            let start = Arc::clone(&start);
            std::thread::spawn(move || -> Result<()> {
                start.wait();
                Dataplane::install(&pin_path, &cgroup)?;
                Ok(())
            })
        })
        .collect();
    for installer in installers {
        installer.join().map_err(|_| anyhow::anyhow!("installer panicked"))??;
    }
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert!(reconciler::dataplane::is_installed(sandbox.pin_path()));
    Ok(())
}

#[test]
fn uninstall_deletes_nothing_outside_a_bpffs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let absent = dir.path().join("absent");
    assert_eq!(Dataplane::uninstall(&absent)?, Uninstalled::NothingThere);

    // Files named like a data plane's pins, in an ordinary directory.
    for name in ["SERVICES", "METADATA"] {
        fs::write(dir.path().join(name), name)?;
    }
    let err = Dataplane::uninstall(dir.path()).err().context("uninstall succeeded")?;
    assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
    for name in ["SERVICES", "METADATA"] {
        assert_eq!(fs::read_to_string(dir.path().join(name))?, name);
    }
    Ok(())
}

#[test]
fn uninstall_deletes_nothing_from_a_bpffs_directory_without_a_data_plane() -> Result<()> {
    let sandbox = Sandbox::new("uninstall-foreign")?;
    let pin_path = sandbox.pin_path();
    fs::create_dir(pin_path)?;
    let other = Remove(pin_path.join("other"));
    fs::create_dir(&other.0)?;
    let err = Dataplane::uninstall(pin_path).err().context("uninstall succeeded")?;
    assert!(err.to_string().contains("holds no reconciler data plane"), "{err}");
    assert!(other.0.is_dir());

    // A map of someone else's under one of our names.
    let foreign = Remove(pin_path.join("SERVICES"));
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&foreign.0)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "1", "name", "not_ours"])
        .status()
        .context("running bpftool")?;
    ensure!(status.success(), "bpftool map create failed");
    let err = Dataplane::uninstall(pin_path).err().context("uninstall succeeded")?;
    let expected = format!("{} is not part of a reconciler data plane", foreign.0.display());
    assert!(err.to_string().contains(&expected), "{err}");
    assert!(foreign.0.exists() && other.0.is_dir());
    Ok(())
}

#[test]
fn uninstall_keeps_a_pin_directory_that_holds_something_else() -> Result<()> {
    let sandbox = Sandbox::new("uninstall-keep")?;
    Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    let keep = Remove(sandbox.pin_path().join("keep"));
    fs::create_dir(&keep.0)?;

    let kept = Uninstalled::KeptDirectory { others: vec![keep.0.clone()] };
    assert_eq!(Dataplane::uninstall(sandbox.pin_path())?, kept);
    assert_eq!(sandbox.attached_programs()?, 0);
    assert_eq!(fs::read_dir(sandbox.pin_path())?.count(), 1);

    // The command says so.
    Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    let output = Command::new(reconciler_path()?)
        .args(["uninstall", "--pin-path"])
        .arg(sandbox.pin_path())
        .output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected = format!(
        "Uninstalled the data plane at {}; kept the directory, which also holds {}.\n",
        sandbox.pin_path().display(),
        keep.0.display()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert_eq!(sandbox.attached_programs()?, 0);
    Ok(())
}

/// IDs of the programs attached to `cgroup`, by `bpftool`, in order (bpftool lists them by
/// attach type).
fn attached_program_ids(cgroup: &Path) -> Result<Vec<u64>> {
    let output = Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cgroup).output()?;
    ensure!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let ids: Result<std::collections::BTreeSet<u64>> =
        programs.iter().map(|p| p["id"].as_u64().context("program without an id")).collect();
    Ok(ids?.into_iter().collect())
}

#[test]
fn install_refuses_a_cgroup_that_has_another_data_plane() -> Result<()> {
    let sandbox = Sandbox::new("one-per-cgroup")?;
    Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    let first_programs = attached_program_ids(sandbox.cgroup())?;
    let name = sandbox.pin_path().file_name().context("pin path without a name")?;
    let second = PinPath(sandbox.pin_path().with_file_name(format!("{}-second", name.display())));

    let err = install_error(&second.0, sandbox.cgroup())?;
    let expected = [
        format!("cgroup {} already has a reconciler data plane", sandbox.cgroup().display()),
        format!("(programs {first_programs:?}), pinned at {}", sandbox.pin_path().display()),
    ];
    assert!(expected.iter().all(|e| err.contains(e)), "{err}");
    assert!(!second.0.exists(), "the refused install left {}", second.0.display());
    assert_eq!(attached_program_ids(sandbox.cgroup())?, first_programs);
    // The data plane that is there is still welcome to install again.
    Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;

    // A child cgroup may have one of its own: there it runs before the parent's.
    let child = Remove(sandbox.cgroup().join("child"));
    fs::create_dir(&child.0)?;
    let third = PinPath(sandbox.pin_path().with_file_name(format!("{}-third", name.display())));
    Dataplane::install(&third.0, &child.0)?;
    assert_eq!(attached_programs(&child.0)?, DATA_PLANE_PROGRAMS);

    // Once the first is gone, the cgroup is free.
    Dataplane::uninstall(sandbox.pin_path())?;
    Dataplane::install(&second.0, sandbox.cgroup())?;
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    Ok(())
}

#[test]
fn concurrent_installs_at_two_pin_paths_on_one_cgroup_leave_one_data_plane() -> Result<()> {
    let sandbox = Sandbox::new("cgroup-race")?;
    let name = sandbox.pin_path().file_name().context("pin path without a name")?;
    let second = PinPath(sandbox.pin_path().with_file_name(format!("{}-second", name.display())));
    for round in 0..3 {
        let start = Arc::new(Barrier::new(2));
        let installers: Vec<_> = [sandbox.pin_path().to_owned(), second.0.clone()]
            .into_iter()
            .map(|pin_path| {
                let cgroup = sandbox.cgroup().to_owned();
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    Dataplane::install(&pin_path, &cgroup).map(|_| ())
                })
            })
            .collect();
        let results: Vec<_> = installers
            .into_iter()
            .map(|i| i.join().map_err(|_| anyhow::anyhow!("installer panicked")))
            .collect::<Result<_>>()?;
        let refused: Vec<String> =
            results.iter().filter_map(|r| r.as_ref().err()).map(ToString::to_string).collect();
        assert_eq!(refused.len(), 1, "round {round}: {refused:?}");
        assert!(refused[0].contains("already has a reconciler data plane"), "{refused:?}");
        assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS, "round {round}");
        Dataplane::uninstall(sandbox.pin_path())?;
        Dataplane::uninstall(&second.0)?;
    }
    Ok(())
}

#[test]
fn an_install_that_stopped_before_all_its_links_is_completed_in_place() -> Result<()> {
    let mut sandbox = Sandbox::new("partial-links")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    sandbox.install(&one_service("10.96.0.10:80", &[&backend.to_string()])?)?;
    // What an install that died after pinning its connect links leaves.
    for hook in &reconciler::dataplane::PROGRAMS[2..] {
        fs::remove_file(sandbox.pin_path().join(format!("link_{hook}")))?;
    }
    assert_eq!(sandbox.attached_programs()?, 2);

    // The next install (any apply) completes it, keeping what it serves.
    let dataplane = Dataplane::install(sandbox.pin_path(), sandbox.cgroup())?;
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(dataplane.read_live()?.status.generation, 1);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    assert_eq!(reconciler::dataplane::upgrade(sandbox.pin_path())?, None);
    Ok(())
}

#[test]
fn a_first_install_fills_both_sets_before_attaching_as_an_apply_would() -> Result<()> {
    let mut sandbox = Sandbox::new("fill")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let desired = one_service("10.96.0.10:80", &[&backend.to_string()])?;
    let (dataplane, report) =
        Install::new(sandbox.pin_path(), sandbox.cgroup()).fill(&desired, Some("r1")).run()?;
    let report = report.context("a first install applies what it is given")?;
    // The same writes, generation and end state as installing and then applying.
    let versioned = desired.services.len()
        + desired.vips().len()
        + desired.slots.len()
        + desired.backends.len();
    assert_eq!(report.map_writes, 2 * versioned + desired.names.len() + 3);
    assert_eq!(report.generation, 1);
    let (status, [active, standby]) = dataplane.read_both_sets()?;
    assert_eq!((status.active_set, status.standby_dirty), (1, false));
    assert_eq!(status.revision.as_deref(), Some("r1"));
    assert_eq!(active, desired);
    assert_eq!(standby.services, desired.services);
    assert_eq!(standby.slots, desired.slots);
    assert_eq!(standby.backends, desired.backends);
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));

    // An install that finds a complete one applies nothing: the caller applies as usual.
    let (_, again) =
        Install::new(sandbox.pin_path(), sandbox.cgroup()).fill(&desired, None).run()?;
    assert!(again.is_none());
    Ok(())
}

#[test]
fn a_first_install_that_fails_while_filling_attaches_nothing_and_the_next_starts_over() -> Result<()>
{
    let mut sandbox = Sandbox::new("fill-fails")?;
    let backend = sandbox.serve_tcp("127.0.0.1:0", "b1")?;
    let good = one_service("10.96.0.10:80", &[&backend.to_string()])?;
    // One name more than SERVICE_NAMES holds: the sets are written, then the names fail.
    let mut too_many = good.clone();
    for id in 2..=MAX_SERVICES + 1 {
        too_many.names.insert(id, format!("s{id}"));
    }
    let failed = Install::new(sandbox.pin_path(), sandbox.cgroup()).fill(&too_many, None).run();
    ensure!(failed.is_err(), "a fill beyond SERVICE_NAMES' capacity succeeded");
    assert_eq!(sandbox.attached_programs()?, 0, "programs attached over half-filled maps");

    let (dataplane, report) =
        Install::new(sandbox.pin_path(), sandbox.cgroup()).fill(&good, None).run()?;
    assert_eq!(report.map(|r| r.generation), Some(1), "the next install started over");
    let (_, [active, standby]) = dataplane.read_both_sets()?;
    assert_eq!(active, good);
    assert_eq!(standby.backends, good.backends);
    assert_eq!(sandbox.attached_programs()?, DATA_PLANE_PROGRAMS);
    assert_eq!(sandbox.probe_tcp("10.96.0.10:80", 5)?.replies.get("b1"), Some(&5));
    Ok(())
}

/// A `HEALTH_EXCLUDED` entry of a build before per-service verdicts (service ID 0, in what
/// was padding) still means every service listing the address; lifting it deletes it.
#[test]
fn an_older_health_exclusion_means_every_service_listing_the_backend() -> Result<()> {
    let sandbox = Sandbox::new("older-health")?;
    let mut dataplane = sandbox.install(&one_service("10.96.0.10:80", &["127.0.0.11:8080"])?)?;
    // ::ffff:127.0.0.11, port 8080 (network order), padding, service ID 0.
    let mut key = vec![0u8; 10];
    key.extend([0xff, 0xff, 127, 0, 0, 11, 0x1f, 0x90, 0, 0, 0, 0, 0, 0]);
    sandbox.update_by_hand("HEALTH_EXCLUDED", &key, &1u32.to_le_bytes())?;
    let backend: std::net::SocketAddr = "127.0.0.11:8080".parse()?;
    let live = dataplane.read_live()?.state;
    assert_eq!(live.health_excluded, BTreeSet::from([("test".to_owned(), backend)]));
    // Lifted (the desired state records none): the entry is gone.
    dataplane.apply(&one_service("10.96.0.10:80", &["127.0.0.11:8080"])?, ApplyTo::default())?;
    assert!(dataplane.read_live()?.state.health_excluded.is_empty());
    Ok(())
}
