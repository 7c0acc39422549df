//! The real `reconciler` binary on real repositories, where no data plane is needed:
//! `validate` (the invalid corpus in tests/invalid/, output formats) and `plan` against no
//! data plane and between two revisions (golden files in tests/golden/).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use reconciler_tests::{
    assert_plan_output_schema,
    git::{loopback_address, Daemon, Repo, WEB_SERVICE},
    reconciler_path,
};
use serde_json::json;
use tempfile::TempDir;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in tests/ (so paths in its output are short and stable).
fn reconciler(args: &[&str]) -> Output {
    Command::new(reconciler_path().unwrap())
        .current_dir(manifest_dir())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_invalid_definition_is_reported_exactly() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "the corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy();
        let output = reconciler(&["validate", &format!("invalid/{name}")]);
        let expected = std::fs::read_to_string(case.with_extension("expected")).unwrap();
        if output.status.code() != Some(1) || stdout(&output) != expected {
            failures.push(format!(
                "{name}: exit {:?}\n--- expected\n{expected}--- got\n{}",
                output.status.code(),
                stdout(&output)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_examples_are_valid_and_errors_across_files_come_all_at_once() {
    let output = reconciler(&["validate", "../examples/policies"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).starts_with("OK: "), "{}", stdout(&output));

    let output = reconciler(&["validate", "invalid/port-zero.yaml", "invalid/bad-state.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("invalid/port-zero.yaml:8:26:"), "{text}");
    assert!(text.contains("invalid/bad-state.yaml:11:46:"), "{text}");
    assert!(text.ends_with("2 error(s) in 2 file(s).\n"), "{text}");
}

#[test]
fn validate_speaks_json_and_github_annotations() {
    let output =
        reconciler(&["validate", "--format", "json", "invalid/several-errors-at-once.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["valid"], false);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(errors[1]["line"], 8);
    assert_eq!(errors[1]["column"], 26);
    assert_eq!(errors[1]["field"], "spec.ports[0].port");

    let output = reconciler(&["validate", "--format", "github", "invalid/port-zero.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output),
        "::error file=invalid/port-zero.yaml,line=8,col=26,title=reconciler validate::\
         spec.ports[0].port: 0 is less than the minimum of 1\n"
    );
}

#[test]
fn validate_applies_the_vip_policy() {
    let allowed =
        ["validate", "--allowed-vips", "10.96.0.0/12,fd00:96::/64", "../examples/policies"];
    assert_eq!(reconciler(&allowed).status.code(), Some(0));
    let output =
        reconciler(&["validate", "--allowed-vips", "10.97.0.0/16", "../examples/policies"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("VIP 10.96.0.10 is outside the allowed ranges (10.97.0.0/16)"));
}

/// No data plane is ever installed here: plans against it plan an install.
const NO_INSTALL: &str = "/sys/fs/bpf/reconciler-test-no-such-install";

/// `reconciler plan` of `repo`'s services/ with the cache `cache`, and `extra` arguments.
fn plan(repo: &Repo, cache: &TempDir, extra: &[&str]) -> Output {
    let (url, cache) = (repo.url(), cache.path().display().to_string());
    let args = ["plan", "--repo", &url, "--path", "services", "--cache-dir", &cache];
    reconciler(&[&args[..], extra].concat())
}

/// A repository holding examples/policies under services/, and a cache directory.
fn example_repo() -> (Repo, TempDir) {
    let repo = Repo::new();
    copy_dir(&manifest_dir().join("../examples/policies"), &repo.path().join("services"));
    repo.commit("examples");
    (repo, tempfile::tempdir().unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Output with what varies from run to run (commit ids, temporary paths) masked.
fn masked(text: &str, repo: &Repo) -> String {
    let text = text.replace(&repo.url(), "<repo>");
    let mut out = String::new();
    let mut hex = String::new();
    for c in text.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_hexdigit() && c.is_ascii_lowercase() || c.is_ascii_digit() {
            hex.push(c);
            continue;
        }
        out.push_str(if hex.len() == 40 { "<commit>" } else { &hex });
        hex.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn golden(name: &str, actual: &str) {
    let path = manifest_dir().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "golden file {} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn plan_without_a_data_plane_shows_everything_created() {
    let (repo, cache) = example_repo();
    let output = plan(&repo, &cache, &["--pin-path", NO_INSTALL, "--detailed-exitcode"]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    golden("plan-install.txt", &masked(&stdout(&output), &repo));

    let output = plan(&repo, &cache, &["--pin-path", NO_INSTALL, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["format_version"], 2);
    assert_eq!(plan["revision"], repo.git(&["rev-parse", "HEAD"]));
    assert_eq!(plan["install"], true);
    assert_eq!(plan["summary"], serde_json::json!({"add": 7, "change": 0, "destroy": 0}));
    let web = plan["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(web["action"], "create");
    assert_eq!(web["after"]["vip"], serde_json::json!(["10.96.0.10"]));
    assert!(web["before"].is_null());
    assert!(plan["map_writes"].as_u64().unwrap() > 0);
    assert!(plan.get("desired").is_none(), "map entries belong in --out files only");
    // Typed values: numbers as numbers, backends and ports as objects, Maglev's weights.
    assert_eq!(web["after"]["ports"][0], json!({"name": "http", "port": 80, "protocol": "TCP"}));
    let first =
        json!({"address": "10.1.0.11", "port": 8080, "weight": 1, "slots": 1, "state": "active"});
    assert_eq!(web["after"]["backends"][0], first);
    let postgres =
        plan["services"].as_array().unwrap().iter().find(|s| s["name"] == "postgres-read");
    let postgres = &postgres.unwrap()["after"];
    assert_eq!(postgres["backends"][1]["weight"], 3, "{postgres}");
    assert_eq!(postgres["backends"][1]["slots"], 301, "{postgres}");
    assert_eq!(postgres["backends"][2]["state"], "draining", "{postgres}");
    assert_eq!(
        postgres["load_balancing"][0],
        json!({"algorithm": "maglev", "client": "cgroup", "table_size": 401})
    );
    assert_plan_output_schema(&plan);
}

#[test]
fn plan_against_an_older_revision_shows_just_the_edit() {
    let (repo, cache) = example_repo();
    let first = repo.git(&["rev-parse", "HEAD"]);
    let web = repo.path().join("services/team-web/web.yaml");
    let text = std::fs::read_to_string(&web).unwrap();
    let edited = text.replace("    - {address: 10.1.0.12}\n", "").replace(
        "{address: 10.1.0.13, weight: 2}",
        "{address: 10.1.0.13, weight: 2}\n    - {address: 10.1.0.14}",
    );
    std::fs::write(&web, edited).unwrap();
    repo.commit("web: replace 10.1.0.12 with 10.1.0.14");

    let output = plan(&repo, &cache, &["--against", &first, "--detailed-exitcode"]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    golden("plan-against.txt", &masked(&stdout(&output), &repo));

    // The same revision on both sides: nothing to do.
    let output =
        plan(&repo, &cache, &["--ref", &first, "--against", &first, "--detailed-exitcode"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("No changes: merging it into "));
}

#[test]
fn an_invalid_commit_is_reported_with_every_error_and_its_commit() {
    let (repo, cache) = example_repo();
    std::fs::write(
        repo.path().join("services/team-web/web.yaml"),
        std::fs::read_to_string(manifest_dir().join("invalid/several-errors-at-once.yaml"))
            .unwrap(),
    )
    .unwrap();
    let head = repo.commit("broken");
    let output = plan(&repo, &cache, &["--pin-path", NO_INSTALL]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("services/team-web/web.yaml:4:9: metadata.name:"), "{stderr}");
    assert!(stderr.contains("services/team-web/web.yaml:8:26: spec.ports[0].port:"), "{stderr}");
    assert!(
        stderr.contains(&format!("3 error(s) in the definitions at commit {head}")),
        "{stderr}"
    );
}

#[test]
fn bad_usage_is_an_error_not_a_change() {
    // Exit 2 means "changes" for --detailed-exitcode; usage errors must not look like that.
    let output = reconciler(&["plan", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(1));
    let output = reconciler(&["plan", "--pin-path", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--repo URL|PATH or --dir DIR"));
}

#[test]
fn the_command_line_names_its_build_completes_in_shells_and_has_man_pages() {
    let version = stdout(&reconciler(&["--version"]));
    let head = Command::new("git")
        .arg("-C")
        .arg(manifest_dir())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let expected = format!("reconciler {} (commit {head}", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version} (wanted {expected})");
    assert!(version.trim_end().ends_with(", data plane)"), "{version}");
    for (shell, marker) in [
        ("bash", "complete -F _reconciler"),
        ("zsh", "#compdef reconciler"),
        ("fish", "complete -c reconciler"),
    ] {
        let script = stdout(&reconciler(&["completion", shell]));
        assert!(script.contains(marker) && script.contains("against"), "{shell}: {script}");
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = reconciler(&["manpages", "--dir", &dir.path().display().to_string()]);
    assert_eq!(pages.status.code(), Some(0), "{}", String::from_utf8_lossy(&pages.stderr));
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert!(page("reconciler.1").contains(".TH reconciler 1"), "{}", page("reconciler.1"));
    assert!(page("reconciler-plan.1").contains("against"), "{}", page("reconciler-plan.1"));
    assert!(!dir.path().join("reconciler-manpages.1").exists());
    // `-o` and `--output` wherever there is an output format; `validate` takes both too.
    let examples = manifest_dir().join("../examples/policies").display().to_string();
    let by_format = stdout(&reconciler(&["validate", "--format", "json", &examples]));
    assert!(by_format.contains("\"format_version\""), "{by_format}");
    assert_eq!(stdout(&reconciler(&["validate", "--output", "json", &examples])), by_format);
    assert_eq!(stdout(&reconciler(&["validate", "-o", "json", &examples])), by_format);
}

/// The revision a `plan --output json` run used.
fn planned_revision(args: &[&str]) -> String {
    let output = reconciler(&[&["plan", "--output", "json"], args].concat());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    plan["revision"].as_str().unwrap().to_owned()
}

#[test]
fn plan_follows_branches_tags_and_commits_over_git_daemon_and_a_bare_remote() {
    let (work, cache) = example_repo();
    let v1 = work.git(&["rev-parse", "HEAD"]);
    work.git(&["tag", "v1"]);
    work.git(&["checkout", "-q", "-b", "canary"]);
    work.write("services/team-web/extra.yaml", "");
    let canary = work.commit("canary: an empty file");
    work.git(&["checkout", "-q", "main"]);
    let served = tempfile::tempdir().unwrap();
    work.bare_clone(served.path(), "services.git");
    work.git(&["push", "-q", "origin", "--tags", "main", "canary"]);

    let daemon = Daemon::start(served.path(), loopback_address());
    let url = daemon.url("services.git");
    let cache = cache.path().display().to_string();
    let common = ["--path", "services", "--cache-dir", &cache, "--pin-path", NO_INSTALL];
    let with = |reference: Option<&str>| {
        let mut args = vec!["--repo", url.as_str()];
        if let Some(reference) = reference {
            args.extend(["--ref", reference]);
        }
        args.extend(common);
        planned_revision(&args)
    };
    assert_eq!(with(None), v1, "the remote HEAD");
    assert_eq!(with(Some("v1")), v1, "a tag");
    assert_eq!(with(Some("canary")), canary, "a branch");
    assert_eq!(with(Some(&canary[..10])), canary, "an abbreviated commit");

    // The bare remote itself, as a file:// URL.
    let file_url = format!("file://{}", served.path().join("services.git").display());
    let args = ["--repo", file_url.as_str(), "--ref", "canary"];
    assert_eq!(planned_revision(&[&args[..], &common[..]].concat()), canary);
}

/// Builds `reconciler` without the data plane (`--no-default-features`) with stable Rust and
/// no bpf-linker within reach, into `target/validate-only` (kept: later runs are incremental);
/// the binary's path.
fn validate_only_build() -> PathBuf {
    let workspace = manifest_dir().join("..");
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    // A PATH with cargo and rustc (rustup's proxies) and the system's tools, and nothing else
    // of ~/.cargo/bin: bpf-linker is out of reach.
    let tools = tempfile::tempdir().unwrap();
    for tool in ["cargo", "rustc"] {
        std::os::unix::fs::symlink(home.join(".cargo/bin").join(tool), tools.path().join(tool))
            .unwrap();
    }
    let target = workspace.join("target/validate-only");
    // A first build starts from the suite's own (hard links: no copy, no space): the
    // dependencies built with the same features are reused, and the others get new files
    // of their own (cargo names a build by its features), so the suite's are never written.
    // 40 s instead of 100 here.
    let seed = workspace.join("target/debug");
    if !target.join("debug").exists() && seed.join("deps").exists() {
        std::fs::create_dir_all(&target).unwrap();
        let copied = Command::new("cp").arg("-al").arg(&seed).arg(target.join("debug")).status();
        assert!(copied.is_ok_and(|s| s.success()), "cp -al {} failed", seed.display());
    }
    let output = Command::new("cargo")
        .current_dir(&workspace)
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", tools.path().display()))
        .env("RUSTUP_TOOLCHAIN", "stable")
        .args(["build", "--quiet", "-p", "reconciler", "--no-default-features", "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    target.join("debug/reconciler")
}

#[test]
fn a_build_without_the_data_plane_validates_and_plans_between_revisions() {
    let binary = validate_only_build();
    let run = |args: &[&str]| {
        Command::new(&binary).current_dir(manifest_dir()).args(args).output().unwrap()
    };

    let help = stdout(&run(&["--help"]));
    assert!(help.contains("validate") && help.contains("plan"), "{help}");
    let version = stdout(&run(&["--version"]));
    assert!(version.trim_end().ends_with(", validate-only: no data plane)"), "{version}");
    let commands: Vec<&str> =
        help.lines().filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next()).collect();
    assert!(!commands.contains(&"apply") && !commands.contains(&"daemon"), "{help}");
    assert_eq!(run(&["apply"]).status.code(), Some(1));

    let valid = run(&["validate", "../examples/policies"]);
    assert_eq!(valid.status.code(), Some(0), "{}", String::from_utf8_lossy(&valid.stderr));
    let invalid = run(&["validate", "--format", "github", "invalid/duplicate-backend.yaml"]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stdout(&invalid).contains("::error file=invalid/duplicate-backend.yaml,line=11"));

    let repo = Repo::new();
    repo.write("services/web.yaml", WEB_SERVICE);
    let base = repo.commit("web");
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("services/web.yaml", WEB_SERVICE.replace("10.1.0.11", "10.1.0.12"));
    repo.commit("another backend");
    let cache = tempfile::tempdir().unwrap();
    let (url, cache) = (repo.url(), cache.path().display().to_string());
    let source = ["--repo", &url, "--path", "services", "--cache-dir", &cache];
    let plan =
        run(&[&["plan"], &source[..], &["--against", &base, "--detailed-exitcode"]].concat());
    assert_eq!(plan.status.code(), Some(2), "{}", String::from_utf8_lossy(&plan.stderr));
    assert!(
        stdout(&plan).contains("10.1.0.11:8080 weight=1 -> 10.1.0.12:8080"),
        "{}",
        stdout(&plan)
    );
    let live = run(&[&["plan"], &source[..]].concat());
    assert_eq!(live.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&live.stderr).contains("built without the data plane"));

    // The pre-commit hooks of examples/ci/, as they are written, in this repository.
    let hooks =
        std::fs::read_to_string(manifest_dir().join("../examples/ci/pre-commit-config.yaml"))
            .unwrap();
    let entries: Vec<&str> =
        hooks.lines().filter_map(|l| l.trim().strip_prefix("entry: reconciler ")).collect();
    assert_eq!(entries.len(), 2, "{hooks}");
    let home = tempfile::tempdir().unwrap();
    for entry in entries {
        let output = Command::new(&binary)
            .current_dir(repo.path())
            .env("XDG_CACHE_HOME", home.path())
            .args(entry.split_whitespace())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{entry}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if entry.contains("--against") {
            assert!(stdout(&output).contains("-> 10.1.0.12:8080"), "{entry}: {}", stdout(&output));
        }
    }
}
