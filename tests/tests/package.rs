//! The Debian package, as an operator meets it: built by `scripts/deb.sh` (from this suite's
//! own build, to stay within the time of `make test`), checked by lintian, installed into this
//! machine with `dpkg -i`, its unit checked by `systemd-analyze verify`, and purged with
//! `dpkg --purge`, leaving nothing behind.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{ensure, Context as _, Result};
use reconciler_tests::{reconciler_path, require_root};

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program).args(args).output().with_context(|| format!("running {program}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Purges the package when dropped, also when the test fails half way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "reconciler"]);
    }
}

/// What the package's maintainer scripts may leave in systemd's directories.
const SYSTEMD_TRACES: [&str; 4] = [
    "/etc/systemd/system/multi-user.target.wants/reconciler.service",
    "/etc/systemd/system/reconciler.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/reconciler.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-masked/reconciler.service",
];

#[test]
fn the_package_installs_verifies_and_purges_without_a_trace() -> Result<()> {
    require_root()?;
    let installed = run("dpkg-query", &["-W", "-f=${Status}", "reconciler"])?;
    ensure!(
        !String::from_utf8_lossy(&installed.stdout).contains("installed"),
        "a reconciler package is installed on this machine already; this test installs and \
         purges its own, so remove that one first (dpkg --purge reconciler)"
    );
    let out = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deb.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .env("BINARY", reconciler_path()?)
        // xz takes tens of seconds over a debug build.
        .env("COMPRESS", "gzip")
        .output()?;
    ensure!(built.status.success(), "scripts/deb.sh: {}", text(&built));
    let deb = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    let name = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    ensure!(name.starts_with("reconciler_0.1.0_") && name.ends_with(".deb"), "{name}");

    // lintian: no error.
    let lint = run("lintian", &[&deb.display().to_string()])?;
    let errors: Vec<&str> =
        std::str::from_utf8(&lint.stdout)?.lines().filter(|l| l.starts_with("E: ")).collect();
    ensure!(errors.is_empty(), "lintian: {}", text(&lint));

    let contents = run("dpkg-deb", &["-c", &deb.display().to_string()])?;
    let paths: Vec<String> = String::from_utf8_lossy(&contents.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .filter(|p| !p.ends_with('/'))
        .collect();
    for wanted in [
        "/usr/bin/reconciler",
        "/lib/systemd/system/reconciler.service",
        "/etc/reconciler/config.example.yaml",
        "/usr/share/man/man1/reconciler.1.gz",
        "/usr/share/man/man1/reconciler-plan.1.gz",
        "/usr/share/bash-completion/completions/reconciler",
        "/usr/share/zsh/vendor-completions/_reconciler",
        "/usr/share/fish/vendor_completions.d/reconciler.fish",
    ] {
        ensure!(paths.iter().any(|p| p == wanted), "{wanted} not in the package: {paths:?}");
    }

    let bpffs_before = pins()?;
    let guard = Installed;
    let install = run("dpkg", &["-i", &deb.display().to_string()])?;
    ensure!(install.status.success(), "dpkg -i: {}", text(&install));
    let version = run("/usr/bin/reconciler", &["--version"])?;
    ensure!(
        String::from_utf8_lossy(&version.stdout).starts_with("reconciler 0.1.0 (commit "),
        "{}",
        text(&version)
    );
    let verify = run("systemd-analyze", &["verify", "/lib/systemd/system/reconciler.service"])?;
    ensure!(verify.status.success(), "systemd-analyze verify: {}", text(&verify));
    ensure!(
        !text(&verify).contains("reconciler.service"),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "reconciler"])?;
    ensure!(
        text(&conffiles).contains("/etc/reconciler/config.example.yaml"),
        "{}",
        text(&conffiles)
    );
    // Enabled, and nothing on the data plane: no configuration, so not started.
    ensure!(Path::new(SYSTEMD_TRACES[0]).exists(), "the service is not enabled");
    ensure!(pins()? == bpffs_before, "the package touched the data plane");

    let purge = run("dpkg", &["--purge", "reconciler"])?;
    ensure!(purge.status.success(), "dpkg --purge: {}", text(&purge));
    drop(guard);
    for path in paths.iter().map(String::as_str).chain(SYSTEMD_TRACES).chain(["/etc/reconciler"]) {
        ensure!(std::fs::symlink_metadata(path).is_err(), "{path} is left after the purge");
    }
    Ok(())
}

/// What bpffs holds at its top.
fn pins() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/fs/bpf")?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}
