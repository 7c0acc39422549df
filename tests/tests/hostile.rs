//! Hostile and careless input through the real `reconciler` binary, where no data plane is
//! needed: huge files, symbolic links out of the tree, devices, empty sources, shared and
//! corrupted git caches, edited plan files, flags that do not fit. Each is refused with a
//! clear error, in bounded memory, or handled as a careful user expects.
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use reconciler_core::limits;
use reconciler_tests::{
    git::{loopback_address, Daemon, Repo},
    reconciler_path,
};
use tempfile::TempDir;

/// No data plane is ever installed here: plans against it plan an install.
const NO_INSTALL: &str = "/sys/fs/bpf/reconciler-test-hostile-no-such-install";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn both(output: &Output) -> String {
    format!("{}{}", stdout(output), String::from_utf8_lossy(&output.stderr))
}

fn reconciler(dir: &Path, args: &[&str]) -> Output {
    Command::new(reconciler_path().unwrap()).current_dir(dir).args(args).output().unwrap()
}

/// Runs the binary with its data (heap and anonymous mappings) limited to `BOUNDED_DATA`:
/// an input that made it allocate more would end it with an allocation failure instead of
/// the error the test expects. (A limit, not a measurement: a child's peak RSS as `wait4`
/// reports it includes the test process's own, which it was forked from.)
fn reconciler_bounded(dir: &Path, args: &[&str]) -> Output {
    reconciler_within(BOUNDED_DATA, dir, args)
}

/// Runs the binary with its data limited to `limit` bytes.
fn reconciler_within(limit: libc::rlim_t, dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(reconciler_path().unwrap());
    command.current_dir(dir).args(args);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

const SERVICE: &str = "apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  vip: 10.96.0.10
  ports: [{port: 80}]
  backends: [{address: 10.1.0.11}]
";

/// Memory a process may allocate to refuse a hostile input: far less than the input.
const BOUNDED_DATA: libc::rlim_t = 40 << 20;

#[test]
fn a_50_mb_file_is_refused_in_bounded_memory_from_a_directory_and_from_git() {
    let dir = tempfile::tempdir().unwrap();
    let big = "# padding\n".repeat(5 << 20);
    std::fs::create_dir(dir.path().join("services")).unwrap();
    std::fs::write(dir.path().join("services/big.yaml"), &big).unwrap();
    std::fs::write(dir.path().join("services/web.yaml"), SERVICE).unwrap();

    let output = reconciler_bounded(dir.path(), &["validate", "services"]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        stdout(&output).contains(
            "services/big.yaml:1:1: the file is 52428800 bytes; at most 8388608 bytes (8 MiB) per file"
        ),
        "{}",
        both(&output)
    );

    // Over git:// as from a real server (a local path would make this process pack the
    // objects too, as the server side of the fetch).
    let repo = Repo::new();
    repo.write("services/big.yaml", &big);
    repo.write("services/web.yaml", SERVICE);
    let commit = repo.commit("big");
    let served = tempfile::tempdir().unwrap();
    repo.bare_clone(served.path(), "services.git");
    let daemon = Daemon::start(served.path(), loopback_address());
    let url = daemon.url("services.git");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let args = ["plan", "--repo", &url, "--cache-dir", &cache_dir, "--pin-path", NO_INSTALL];
    let output = reconciler_bounded(dir.path(), &args);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let text = both(&output);
    assert!(text.contains("services/big.yaml:1:1: the file is 52428800 bytes"), "{text}");
    assert!(text.contains(&format!("at commit {commit}; nothing was changed")), "{text}");
}

#[test]
fn alias_bombs_and_deep_nesting_cost_nothing() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    for case in ["invalid/alias-bomb.yaml", "invalid/deep-nesting.yaml"] {
        let output = reconciler_bounded(tests, &["validate", case]);
        assert_eq!(output.status.code(), Some(1), "{case}: {}", both(&output));
    }
    // Ten times deeper than the corpus file, for the stack.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deep.yaml"), format!("{}x\n", "- ".repeat(100_000))).unwrap();
    let output = reconciler_bounded(dir.path(), &["validate", "deep.yaml"]);
    assert_eq!(
        stdout(&output),
        "deep.yaml:1:65: nested more than 32 levels deep; service definitions need a handful\n\
         1 error(s) in 1 file(s).\n"
    );
}

#[test]
fn validate_never_follows_a_symbolic_link_or_reads_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("secret.yaml"), "token: s3cr3t-token-42\n").unwrap();
    std::fs::write(root.join("shadow"), "root:s3cr3t-hash:19000:0:99999:7:::\n").unwrap();
    let services = root.join("services");
    std::fs::create_dir(&services).unwrap();
    std::fs::write(services.join("web.yaml"), SERVICE).unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, services.join(name)).unwrap();
    };
    link("../secret.yaml", "leak.yaml");
    link("../shadow", "shadow.yaml");
    link("/dev/zero", "zero.yaml");
    link(".", "loop");
    link("..", "up");
    link("/", "root");
    let fifo =
        std::ffi::CString::new(services.join("fifo.yaml").into_os_string().into_encoded_bytes())
            .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let output = reconciler(root, &["validate", "services"]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let text = stdout(&output);
    assert!(!text.contains("s3cr3t"), "a link's target leaked:\n{text}");
    for expected in [
        "services/leak.yaml:1:1: a symbolic link, which reconciler does not follow",
        "services/shadow.yaml:1:1: a symbolic link, which reconciler does not follow",
        "services/zero.yaml:1:1: a symbolic link, which reconciler does not follow",
        "services/fifo.yaml:1:1: not a regular file",
        "services/loop: skipped: a symbolic link, which reconciler does not follow",
        "services/root: skipped: a symbolic link, which reconciler does not follow",
        "4 error(s) in 5 file(s).",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn no_definitions_is_an_error_and_any_case_of_yaml_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "no services here\n").unwrap();
    let output = reconciler(dir.path(), &["validate", "."]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "error: no definition files (.yaml, .yml) found in ..\n");
    let output = reconciler(dir.path(), &["validate", "--format", "json", "."]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);

    std::fs::write(dir.path().join("web.YAML"), SERVICE).unwrap();
    let output = reconciler(dir.path(), &["validate", "."]);
    assert_eq!(stdout(&output), "OK: 1 service(s) in 1 file(s).\n");
}

/// A repository with one service, and `plan` of it with the cache in `cache`.
fn plan(repo: &Repo, cache: &Path) -> Command {
    let mut command = Command::new(reconciler_path().unwrap());
    command
        .args(["plan", "--repo", &repo.url(), "--pin-path", NO_INSTALL, "--cache-dir"])
        .arg(cache);
    command
}

fn service_repo() -> Repo {
    let repo = Repo::new();
    repo.write("services/web.yaml", SERVICE);
    repo.commit("web");
    repo
}

#[test]
fn plans_sharing_a_cache_directory_take_turns() {
    let repo = service_repo();
    for round in 0..5 {
        // A cold cache each round: both processes create and fetch into it at once.
        let cache = tempfile::tempdir().unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| {
                let mut command = plan(&repo, cache.path());
                command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(0), "round {round}: {}", both(&output));
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_corrupted_cache_is_rebuilt_not_a_failure_until_the_next_commit() {
    let repo = service_repo();
    let cache = tempfile::tempdir().unwrap();
    let first = plan(&repo, cache.path()).output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", both(&first));

    let caches: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with("memo"))
        .collect();
    assert_eq!(caches.len(), 1);
    // Every object and pack damaged: reading the commit fails until the cache is rebuilt.
    for file in files_under(&caches[0].join("objects")) {
        let mut permissions = std::fs::metadata(&file).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o644);
        std::fs::set_permissions(&file, permissions).unwrap();
        std::fs::write(&file, b"garbage").unwrap();
    }
    let second = plan(&repo, cache.path()).output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", both(&second));
    assert_eq!(stdout(&second), stdout(&first));

    // A cache whose repository metadata is gone.
    std::fs::remove_file(caches[0].join("HEAD")).unwrap();
    std::fs::write(caches[0].join("config"), "[core\n").unwrap();
    let third = plan(&repo, cache.path()).output().unwrap();
    assert_eq!(third.status.code(), Some(0), "{}", both(&third));
    assert_eq!(stdout(&third), stdout(&first));
}

#[test]
fn a_saved_plan_edited_by_hand_is_refused() {
    let repo = service_repo();
    let cache = tempfile::tempdir().unwrap();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("plan.json");
    let output = plan(&repo, cache.path()).arg("--out").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));

    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("10.1.0.11"));
    std::fs::write(&file, saved.replace("10.1.0.11", "10.1.0.66")).unwrap();
    let args = ["apply", file.to_str().unwrap(), "--pin-path", NO_INSTALL];
    let output = reconciler(dir.path(), &args);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        both(&output).contains("checksum does not match its contents: it was edited or damaged"),
        "{}",
        both(&output)
    );
    assert!(!Path::new(NO_INSTALL).exists(), "the edited plan was applied");
}

/// The scenario of issue 22: a saved plan edited so that clients reach another backend, its
/// checksum recomputed. Refused, as is a plan made on another node (another cache directory,
/// so another key) and one whose signature is taken out; nothing is installed.
#[test]
fn a_saved_plan_edited_with_its_checksum_recomputed_or_made_elsewhere_is_refused() {
    use sha2::Digest as _;
    let repo = service_repo();
    let (node, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("plan.json");
    let output = plan(&repo, node.path()).arg("--out").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(saved["signature"].as_str().unwrap().starts_with("hmac-sha256:"), "{saved}");

    let apply = |cache: &Path| {
        let args = ["apply", "plan.json", "--pin-path", NO_INSTALL, "--cache-dir"];
        let output = reconciler(dir.path(), &[&args[..], &[cache.to_str().unwrap()]].concat());
        assert_eq!(output.status.code(), Some(1), "{}", both(&output));
        assert!(!Path::new(NO_INSTALL).exists(), "a refused plan was applied");
        both(&output)
    };
    let write = |value: &serde_json::Value| std::fs::write(&file, value.to_string()).unwrap();
    // Made with another node's key.
    assert!(apply(elsewhere.path()).contains("signature is not this node's"));

    // Edited, with the checksum as `to_saved` computes it (over the rest, compact JSON).
    let mut edited = serde_json::from_str::<serde_json::Value>(
        &saved.to_string().replace("10.1.0.11", "10.1.0.66"),
    )
    .unwrap();
    let object = edited.as_object_mut().unwrap();
    let signature = object.remove("signature").unwrap();
    object.remove("checksum");
    let digest = sha2::Sha256::digest(edited.to_string().as_bytes());
    let checksum: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    edited["checksum"] = format!("sha256:{checksum}").into();
    write(&edited);
    assert!(apply(node.path()).contains("not signed"), "a plan without its signature");
    edited["signature"] = signature;
    write(&edited);
    let refused = apply(node.path());
    assert!(refused.contains("signature is not this node's"), "{refused}");
    assert!(refused.contains("reconciler apply --repo"), "{refused}");
}

/// A commit object of `megabytes` MiB (its signature header padded) on top of `repo`'s HEAD,
/// made its branch `main`; its id.
fn commit_of_megabytes(repo: &Repo, megabytes: usize) -> String {
    let head = repo.git(&["rev-parse", "HEAD"]);
    let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let padding = format!(" {}\n", "A".repeat(70)).repeat(megabytes * (1 << 20) / 72);
    let text = format!(
        "tree {tree}\nparent {head}\nauthor T <t@example.com> 1700000000 +0000\n\
         committer T <t@example.com> 1700000000 +0000\ngpgsig -----BEGIN SSH SIGNATURE-----\n\
         {padding} -----END SSH SIGNATURE-----\n\nhuge\n"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let id = repo.git(&["hash-object", "-t", "commit", "-w", file.path().to_str().unwrap()]);
    repo.git(&["update-ref", "refs/heads/main", &id]);
    id
}

/// Issue 22: a pushed commit of 64 MiB is never read whole. Over the network the fetch
/// streams it and the commit alone is refused, a failed revision naming it, in bounded memory;
/// a good commit pushed on top applies, from the same cache. From a local repository, which
/// libgit2 copies object by object (whole), the fetch runs out of memory: refused the same
/// way, as the commit's failure, not a transient error.
#[test]
fn a_huge_commit_is_a_failed_revision_and_the_next_good_one_applies() {
    let work = service_repo();
    let served = TempDir::new().unwrap();
    work.bare_clone(served.path(), "services.git");
    let daemon = Daemon::start(served.path(), loopback_address());
    let cache = TempDir::new().unwrap();
    let plan = |url: &str| {
        let args = ["plan", "--repo", url, "--ref", "main", "--output", "json", "--pin-path"];
        let cache_dir = cache.path().to_str().unwrap();
        reconciler_bounded(
            cache.path(),
            &[&args[..], &[NO_INSTALL, "--cache-dir", cache_dir]].concat(),
        )
    };
    let url = daemon.url("services.git");
    assert_eq!(plan(&url).status.code(), Some(0));

    let huge = commit_of_megabytes(&work, 64);
    work.git(&["push", "-q", "origin", "main"]);
    let output = plan(&url);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let expected = format!("{huge}: the commit object is ");
    assert!(both(&output).contains(&expected), "{}", both(&output));
    assert!(both(&output).contains("at most 1048576 are read"), "{}", both(&output));

    // A good commit on top applies; so do those after it, whose fetches' negotiation starts
    // from a good commit (grafted as a root: its parent is never read).
    for backend in ["10.1.0.12", "10.1.0.13"] {
        work.write("services/web.yaml", SERVICE.replace("10.1.0.11", backend));
        let good = work.commit("good, after the huge one");
        work.git(&["push", "-q", "origin", "main"]);
        let output = plan(&url);
        assert_eq!(output.status.code(), Some(0), "{}", both(&output));
        let planned: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(planned["revision"], good.as_str());
    }

    // From the bare repository as a local path, the huge commit its tip again.
    work.git(&["update-ref", "refs/heads/main", &huge]);
    work.git(&["push", "-q", "-f", "origin", "main"]);
    let local = served.path().join("services.git");
    let fresh = TempDir::new().unwrap();
    let args =
        ["plan", "--repo", local.to_str().unwrap(), "--ref", "main", "--pin-path", NO_INSTALL];
    let output = reconciler_bounded(
        fresh.path(),
        &[&args[..], &["--cache-dir", fresh.path().to_str().unwrap()]].concat(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let expected = format!("out of memory copying the objects of {huge}");
    assert!(both(&output).contains(&expected), "{}", both(&output));
}

#[test]
fn git_only_flags_with_a_directory_are_errors_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE).unwrap();
    for (flag, expected) in [
        (["--ref", "main"], "--ref selects from a git repository (--repo), not from --dir"),
        (["--path", "services"], "--path selects from a git repository (--repo), not from --dir"),
        (["--against", "main"], "--against compares two revisions of a git repository"),
    ] {
        let args = [&["plan", "--dir", ".", "--pin-path", NO_INSTALL][..], &flag[..]].concat();
        let output = reconciler(dir.path(), &args);
        assert_eq!(output.status.code(), Some(1), "{flag:?}: {}", both(&output));
        assert!(both(&output).contains(expected), "{flag:?}: {}", both(&output));
    }
}

#[test]
fn validate_does_not_enter_other_filesystems() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services");
    std::fs::create_dir_all(services.join("mnt")).unwrap();
    std::fs::write(services.join("web.yaml"), SERVICE).unwrap();
    // In a mount namespace of its own, so the mount goes away with the command.
    let script = "mount -t tmpfs none services/mnt && echo 'x: [' > services/mnt/bad.yaml \
                  && exec \"$0\" validate services";
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(reconciler_path().unwrap())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&output),
        "services/mnt: skipped: another filesystem mounted here, which reconciler does not enter\n\
         OK: 1 service(s) in 1 file(s).\n",
        "{}",
        both(&output)
    );
}

#[test]
fn huge_configuration_and_plan_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("source: {{url: /srv/services}}\n{}", "# padding\n".repeat(5 << 20));
    std::fs::write(dir.path().join("node.yaml"), &big).unwrap();
    let output = reconciler_bounded(dir.path(), &["daemon", "--config", "node.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(both(&output).contains("reading node.yaml: larger than 8 MiB"), "{}", both(&output));

    // A plan file that claims to be one, but is not.
    std::fs::write(dir.path().join("plan.json"), format!("{{\"x\": \"{}\"}}", "y".repeat(1 << 20)))
        .unwrap();
    let output = reconciler(dir.path(), &["apply", "plan.json", "--pin-path", NO_INSTALL]);
    assert_eq!(output.status.code(), Some(1));
    assert!(both(&output).contains("the saved plan has no checksum"), "{}", both(&output));
}

#[test]
fn many_nodes_across_files_are_refused_before_they_exhaust_memory() {
    // Thirteen files under the size limit, each of a million one-character items: over the
    // nodes a revision may hold (what the largest capacity needs, 12 582 912), and 52 MiB of
    // items parsed if nothing stopped it.
    let dir = tempfile::tempdir().unwrap();
    let items = "- 1\n".repeat(1_000_000);
    let names: Vec<String> = ('a'..='m').map(|c| format!("{c}.yaml")).collect();
    for name in &names {
        std::fs::write(dir.path().join(name), &items).unwrap();
    }
    let output = reconciler_within(256 << 20, dir.path(), &["validate", "."]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let text = stdout(&output);
    let refusal = format!("more than {} YAML nodes in the definitions", limits::MAX_NODES);
    assert!(text.contains("\nm.yaml:") && text.contains(&refusal), "{text}");
}

/// `count` services with `backends` backends each, in files of 500.
fn many_services(dir: &Path, count: usize, backends: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for file in 0..count.div_ceil(500) {
        let mut text = String::new();
        for i in file * 500..((file + 1) * 500).min(count) {
            let (hi, lo) = (i / 250, i % 250 + 1);
            text.push_str(&format!(
                "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{i}}}\n\
                 spec:\n  vip: 10.{}.{}.{lo}\n  ports: [{{port: 80, targetPort: 8080}}]\n  backends:\n",
                96 + hi / 250,
                hi % 250
            ));
            for e in 0..backends {
                text.push_str(&format!("    - {{address: 10.{}.{}.{lo}}}\n", 1 + e, hi % 250));
            }
        }
        std::fs::write(dir.join(format!("f{file}.yaml")), text).unwrap();
    }
}

#[test]
fn fifty_thousand_services_validate_and_plan_within_512_mib_or_are_refused_naming_the_capacity() {
    const HALF_GIB: libc::rlim_t = 512 << 20;
    let dir = tempfile::tempdir().unwrap();
    // 50 000 services of 2 backends fit the data plane: validated and planned.
    many_services(&dir.path().join("fits"), 50_000, 2);
    let output = reconciler_within(HALF_GIB, dir.path(), &["validate", "fits"]);
    assert!(output.status.success(), "{}", both(&output));
    assert!(stdout(&output).contains("OK: 50000 service(s)"), "{}", both(&output));
    let pin = format!("/sys/fs/bpf/reconciler-test-none-{}", std::process::id());
    let plan = ["plan", "--dir", "fits", "--pin-path", &pin];
    // The default capacity holds 16 383 services: the plan says which figure to raise.
    let output = reconciler_within(HALF_GIB, dir.path(), &plan);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let refusal = "services: 50000 is more than the data plane holds (16383)";
    assert!(both(&output).contains(refusal), "{}", both(&output));
    let capacity = ["--capacity", "services=65536,backends=131072,slots=131072"];
    let output = reconciler_within(HALF_GIB, dir.path(), &[&plan[..], &capacity[..]].concat());
    assert!(output.status.success(), "{}", both(&output));
    assert!(stdout(&output).contains("Plan: 50000 to add"), "{}", both(&output));
    // With 10 backends each they do not (500 000 backends): refused, saying which capacity.
    many_services(&dir.path().join("too-many"), 50_000, 10);
    let output = reconciler_within(HALF_GIB, dir.path(), &["validate", "too-many"]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(stdout(&output).contains("the data plane holds"), "{}", both(&output));
}

/// A cache directory another user made first (in a shared place, say `/tmp/reconciler`) is
/// refused, naming its owner, before anything is read from it or written into it: a link
/// planted there where a memo would be written is never followed.
#[test]
fn a_cache_directory_another_user_owns_is_refused_and_nothing_is_written_there() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = Repo::new();
    repo.write("services/web.yaml", SERVICE);
    repo.commit("web");
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let precious = root.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    std::os::unix::fs::symlink(&precious, cache.join("memo")).unwrap();
    let cache_dir = cache.display().to_string();
    let args = ["plan", "--repo", &repo.url(), "--cache-dir", &cache_dir, "--pin-path", NO_INSTALL];
    let output = reconciler(root.path(), &args);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let owner = format!("cache directory {cache_dir}: owned by uid 65534, not by this user");
    assert!(both(&output).contains(&owner), "{}", both(&output));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1, "only the planted link: {entries:?}");
}
