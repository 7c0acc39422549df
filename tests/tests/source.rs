//! The git source against real repositories made with the git CLI: local paths, `file://` and
//! `git://` (a `git daemon` on 127.0.0.1), branches, tags, commits, force-pushes, and the errors.
use std::path::Path;

use reconciler_core::source::{
    fetch, snapshot_at, FetchTimeouts, GitSpec, Snapshot, SourceError, SourceSpec,
};
use reconciler_tests::git::{loopback_address, Daemon, Repo};
use tempfile::tempdir;

/// A spec for `url` reading `services/`, with its own cache.
fn spec(url: &str, cache: &Path) -> GitSpec {
    GitSpec {
        url: url.to_owned(),
        reference: None,
        subdir: Some("services".into()),
        cache_dir: cache.to_owned(),
        ssh_key: None,
        verify: None,
        timeouts: FetchTimeouts::default(),
    }
}

fn fetch_git(spec: &GitSpec) -> Result<Snapshot, SourceError> {
    fetch(&SourceSpec::Git(spec.clone()))
}

fn paths(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.files.iter().map(|f| f.path.as_str()).collect()
}

fn texts(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.files.iter().map(|f| f.text.as_deref().unwrap_or("(not read)")).collect()
}

/// The cache repositories (directories) in a cache directory.
fn cache_repos(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn revision(snapshot: &Snapshot) -> &str {
    snapshot.revision.as_deref().unwrap()
}

#[test]
fn local_path_reads_the_yaml_files_under_the_subdir_at_the_remote_head() {
    let repo = Repo::new();
    repo.write("services/b.yaml", "b: 1\n");
    repo.write("services/a.yml", "a: 1\n");
    repo.write("services/team-a/nested/c.yaml", "c: 1\n");
    repo.write("services/README.md", "not yaml\n");
    repo.write("services/web.yaml.orig", "not yaml\n");
    repo.write("top.yaml", "outside the subdir\n");
    repo.commit("main");
    // HEAD is `release`, one commit ahead of `main`: the source follows HEAD, not `main`.
    repo.git(&["checkout", "-q", "-b", "release"]);
    repo.write("services/release.yaml", "r: 1\n");
    let head = repo.commit("release");
    assert_eq!(head, repo.git(&["rev-parse", "HEAD"]));

    let cache = tempdir().unwrap();
    let snapshot = fetch_git(&spec(&repo.url(), cache.path())).unwrap();
    assert_eq!(revision(&snapshot), head);
    assert_eq!(
        paths(&snapshot),
        [
            "services/a.yml",
            "services/b.yaml",
            "services/release.yaml",
            "services/team-a/nested/c.yaml"
        ]
    );
    assert_eq!(texts(&snapshot), ["a: 1\n", "b: 1\n", "r: 1\n", "c: 1\n"]);

    // Without a subdir: the whole tree.
    let whole = GitSpec { subdir: None, ..spec(&repo.url(), cache.path()) };
    assert_eq!(paths(&fetch_git(&whole).unwrap()).last(), Some(&"top.yaml"));
    // One cache repository per URL, named after it (beside it, its lock file).
    assert_eq!(cache_repos(cache.path()).len(), 1);
}

#[test]
fn relative_local_path_is_resolved_against_the_current_directory() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "web: 1\n");
    let head = repo.commit("one");
    // From the current directory up to `/`, then down to the repository.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!("{up}{}", repo.path().strip_prefix("/").unwrap().display());

    let cache = tempdir().unwrap();
    let snapshot = fetch_git(&spec(&relative, cache.path())).unwrap();
    assert_eq!(revision(&snapshot), head);
    assert_eq!(paths(&snapshot), ["services/web.yaml"]);
}

#[test]
fn files_come_from_the_commit_not_the_working_copy() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "committed\n");
    let head = repo.commit("one");
    repo.write("services/web.yaml", "edited, not committed\n");
    repo.write("services/staged.yaml", "staged, not committed\n");
    repo.git(&["add", "services/staged.yaml"]);
    repo.write("services/untracked.yaml", "untracked\n");

    let cache = tempdir().unwrap();
    let snapshot = fetch_git(&spec(&repo.url(), cache.path())).unwrap();
    assert_eq!(revision(&snapshot), head);
    assert_eq!(paths(&snapshot), ["services/web.yaml"]);
    assert_eq!(texts(&snapshot), ["committed\n"]);
}

#[test]
fn reference_selects_a_branch_a_tag_or_a_commit() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "v: 1\n");
    let first = repo.commit("first");
    repo.git(&["tag", "-a", "v1", "-m", "an annotated tag, peeled to its commit"]);
    repo.git(&["tag", "feature"]);
    // A branch named like the tag above: the branch wins.
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("services/web.yaml", "v: 2\n");
    let second = repo.commit("second");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("services/web.yaml", "v: 3\n");
    let third = repo.commit("third");

    let cache = tempdir().unwrap();
    let at = |reference: Option<&str>| {
        let spec =
            GitSpec { reference: reference.map(str::to_owned), ..spec(&repo.url(), cache.path()) };
        let snapshot = fetch_git(&spec).unwrap();
        (snapshot.revision.unwrap(), snapshot.files[0].text.clone().unwrap_or_default())
    };
    assert_eq!(at(None), (third.clone(), "v: 3\n".to_owned()));
    assert_eq!(at(Some("main")), (third, "v: 3\n".to_owned()));
    assert_eq!(at(Some("feature")), (second.clone(), "v: 2\n".to_owned()));
    assert_eq!(at(Some("v1")), (first.clone(), "v: 1\n".to_owned()));
    assert_eq!(at(Some(&first)), (first.clone(), "v: 1\n".to_owned()));
    assert_eq!(at(Some(&second[..7])), (second, "v: 2\n".to_owned()));
}

#[test]
fn unknown_reference_is_a_clear_permanent_error() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "v: 1\n");
    repo.commit("one");
    let cache = tempdir().unwrap();
    for reference in ["nope", "deadbeef", "a..b"] {
        let spec =
            GitSpec { reference: Some(reference.to_owned()), ..spec(&repo.url(), cache.path()) };
        let err = fetch_git(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("ref `{reference}` is neither a branch, a tag nor a commit of {}", repo.url())
        );
        assert!(!err.is_transient());
    }
}

#[test]
fn bare_remote_over_file_url_follows_pushes_and_force_pushes() {
    let work = Repo::new();
    work.write("services/web.yaml", "v: 1\n");
    let first = work.commit("first");
    let remotes = tempdir().unwrap();
    let bare = work.bare_clone(remotes.path(), "services.git");
    let cache = tempdir().unwrap();
    let spec = spec(&format!("file://{}", bare.display()), cache.path());
    let main = GitSpec { reference: Some("main".to_owned()), ..spec.clone() };

    let snapshot = fetch_git(&spec).unwrap();
    assert_eq!((revision(&snapshot), texts(&snapshot)), (first.as_str(), vec!["v: 1\n"]));

    work.write("services/web.yaml", "v: 2\n");
    let second = work.commit("second");
    work.git(&["push", "-q", "origin", "main"]);
    let snapshot = fetch_git(&spec).unwrap();
    assert_eq!((revision(&snapshot), texts(&snapshot)), (second.as_str(), vec!["v: 2\n"]));

    work.git(&["push", "-q", "--force", "origin", &format!("{first}:refs/heads/main")]);
    for spec in [&spec, &main] {
        let snapshot = fetch_git(spec).unwrap();
        assert_eq!((revision(&snapshot), texts(&snapshot)), (first.as_str(), vec!["v: 1\n"]));
    }

    // The cache is named after the URL, readably.
    let caches = cache_repos(cache.path());
    assert_eq!(caches.len(), 1);
    assert!(caches[0].contains("services.git"), "{caches:?}");
}

#[test]
fn deleted_branch_is_forgotten_on_the_next_fetch() {
    let work = Repo::new();
    work.write("services/web.yaml", "v: 1\n");
    work.commit("first");
    work.git(&["branch", "short-lived"]);
    let remotes = tempdir().unwrap();
    let bare = work.bare_clone(remotes.path(), "services.git");
    let cache = tempdir().unwrap();
    let spec = GitSpec {
        reference: Some("short-lived".to_owned()),
        ..spec(&bare.display().to_string(), cache.path())
    };
    fetch_git(&spec).unwrap();

    work.git(&["push", "-q", "origin", "--delete", "short-lived"]);
    let err = fetch_git(&spec).unwrap_err();
    assert!(matches!(err, SourceError::UnknownRef { .. }), "{err}");
}

#[test]
fn git_daemon_source_fails_transiently_while_the_server_is_down() {
    let work = Repo::new();
    work.write("services/web.yaml", "v: 1\n");
    let head = work.commit("first");
    let served = tempdir().unwrap();
    work.bare_clone(served.path(), "repo.git");
    let address = loopback_address();
    let url = format!("git://{address}:{}/repo.git", reconciler_tests::git::GIT_PORT);
    let cache = tempdir().unwrap();
    let spec = spec(&url, cache.path());

    let mut daemon = Daemon::start(served.path(), address);
    let snapshot = fetch_git(&spec).unwrap();
    assert_eq!((revision(&snapshot), paths(&snapshot)), (head.as_str(), vec!["services/web.yaml"]));

    daemon.stop();
    let err = fetch_git(&spec).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().starts_with(&format!("fetching {url}: ")), "{err}");
    // What was fetched stays readable from the cache.
    assert_eq!(revision(&snapshot_at(&spec, &head).unwrap()), head);

    let _daemon = Daemon::start(served.path(), address);
    assert_eq!(revision(&fetch_git(&spec).unwrap()), head);
}

#[test]
fn dir_source_reads_a_plain_directory() {
    let dir = tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("team-a/nested")).unwrap();
    std::fs::write(dir.path().join("web.yaml"), "web: 1\n").unwrap();
    std::fs::write(dir.path().join("team-a/nested/db.yml"), "db: 1\n").unwrap();
    std::fs::write(dir.path().join("team-a/notes.txt"), "not yaml\n").unwrap();

    let snapshot = fetch(&SourceSpec::Dir(dir.path().to_owned())).unwrap();
    assert_eq!(snapshot.revision, None);
    let root = dir.path().display();
    assert_eq!(
        paths(&snapshot),
        [format!("{root}/team-a/nested/db.yml"), format!("{root}/web.yaml")]
    );
    assert_eq!(texts(&snapshot), ["db: 1\n", "web: 1\n"]);
}

#[test]
fn snapshot_at_reads_another_revision_fetching_it_if_needed() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "v: 1\n");
    let first = repo.commit("first");
    repo.git(&["tag", "v1"]);
    repo.write("services/web.yaml", "v: 2\n");
    repo.write("services/db.yaml", "db: 2\n");
    let second = repo.commit("second");
    let cache = tempdir().unwrap();
    let spec = spec(&repo.url(), cache.path());
    assert_eq!(revision(&fetch_git(&spec).unwrap()), second);

    for rev in [first.as_str(), &first[..8], "v1"] {
        let older = snapshot_at(&spec, rev).unwrap();
        assert_eq!((revision(&older), paths(&older)), (first.as_str(), vec!["services/web.yaml"]));
        assert_eq!(texts(&older), ["v: 1\n"]);
    }

    // A commit made after the last fetch: snapshot_at fetches it.
    repo.write("services/web.yaml", "v: 3\n");
    let third = repo.commit("third");
    assert_eq!(texts(&snapshot_at(&spec, &third).unwrap()), ["db: 2\n", "v: 3\n"]);

    let err = snapshot_at(&spec, "nope").unwrap_err();
    assert!(matches!(err, SourceError::UnknownRef { .. }), "{err}");
}

#[test]
fn empty_repository_is_a_clear_error() {
    let repo = Repo::new();
    let cache = tempdir().unwrap();
    let err = fetch_git(&spec(&repo.url(), cache.path())).unwrap_err();
    assert!(matches!(err, SourceError::Empty { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("{} has no commit at HEAD", repo.url())), "{err}");
    assert!(!err.is_transient());
}

#[test]
fn a_missing_repository_path_says_so() {
    let cache = tempdir().unwrap();
    let missing = cache.path().join("no-such-repo");
    let file_url = format!("file://{}", missing.display());
    for url in [missing.display().to_string(), file_url] {
        let err = fetch_git(&spec(&url, cache.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fetching {url}: no such repository (nothing at that path)")
        );
        assert!(err.is_transient(), "a path may yet be mounted");
    }
}

#[test]
fn missing_subdir_is_a_clear_error() {
    let repo = Repo::new();
    repo.write("services/web.yaml", "v: 1\n");
    let head = repo.commit("one");
    let cache = tempdir().unwrap();
    // Absent, a file rather than a directory, outside the tree.
    for subdir in ["policies", "services/web.yaml", "../services"] {
        let spec = GitSpec { subdir: Some(subdir.into()), ..spec(&repo.url(), cache.path()) };
        let err = fetch_git(&spec).unwrap_err();
        assert_eq!(err.to_string(), format!("subdirectory `{subdir}` not found at {head}"));
        assert!(!err.is_transient());
    }
    // Spellings of an existing subdirectory.
    for subdir in ["./services", "services/", "."] {
        let spec = GitSpec { subdir: Some(subdir.into()), ..spec(&repo.url(), cache.path()) };
        assert_eq!(paths(&fetch_git(&spec).unwrap()), ["services/web.yaml"], "{subdir}");
    }
}

#[test]
fn non_utf8_file_is_a_clear_error() {
    let repo = Repo::new();
    repo.write("services/web.yaml", b"name: caf\xe9\n");
    let head = repo.commit("latin-1");
    let cache = tempdir().unwrap();
    let snapshot = fetch_git(&spec(&repo.url(), cache.path())).unwrap();
    assert_eq!(revision(&snapshot), head);
    assert!(snapshot.files.is_empty());
    assert_eq!(problems(&snapshot), ["services/web.yaml: not UTF-8"]);
}

#[test]
fn symlinked_yaml_file_is_an_error_not_silently_skipped() {
    let repo = Repo::new();
    repo.write("shared/web.yaml", "v: 1\n");
    std::fs::create_dir(repo.path().join("services")).unwrap();
    std::os::unix::fs::symlink("../shared/web.yaml", repo.path().join("services/web.yaml"))
        .unwrap();
    let head = repo.commit("link");
    let cache = tempdir().unwrap();
    let snapshot = fetch_git(&spec(&repo.url(), cache.path())).unwrap();
    assert_eq!(revision(&snapshot), head);
    assert_eq!(
        problems(&snapshot),
        ["services/web.yaml: a symbolic link, which reconciler does not follow"]
    );
}

fn problems(snapshot: &Snapshot) -> Vec<String> {
    snapshot.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect()
}
