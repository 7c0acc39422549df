//! A pull request's review, as CI runs it, on real repositories made with the git CLI: `plan
//! --against` plans the merge (or against the merge base), an invalid base still gets a plan,
//! Markdown for the comment with its warnings first, and `examples/ci/github-actions.yml`
//! run as written.
use std::{
    path::PathBuf,
    process::{Command, Output},
};

use reconciler_tests::{assert_plan_output_schema, git::Repo, reconciler_path};
use serde_json::Value;
use tempfile::TempDir;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A service named `name` on `vip`:80 with the backends `backends`.
fn service(name: &str, vip: &str, backends: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  \
         vip: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  backends:\n"
    );
    for backend in backends {
        text.push_str(&format!("    - address: {backend}\n"));
    }
    text
}

/// A repository whose `main` holds `web` and `api`; `feature` branches off it, and `main`
/// then gets `cache` (a later commit on the base, which the pull request must not undo).
struct PullRequest {
    repo: Repo,
    cache: TempDir,
}

impl PullRequest {
    fn new(edit: impl FnOnce(&Repo)) -> PullRequest {
        let repo = Repo::new();
        repo.git(&["checkout", "-q", "-b", "main"]);
        repo.write("services/web.yaml", service("web", "10.96.0.10", &["10.1.0.11", "10.1.0.12"]));
        repo.write("services/api.yaml", service("api", "10.96.0.20", &["10.1.0.21"]));
        repo.commit("web and api");
        repo.git(&["checkout", "-q", "-b", "feature"]);
        edit(&repo);
        repo.commit("the change");
        repo.git(&["checkout", "-q", "main"]);
        repo.write("services/cache.yaml", service("cache", "10.96.0.30", &["10.1.0.31"]));
        repo.commit("cache, on main after the branch point");
        PullRequest { repo, cache: tempfile::tempdir().unwrap() }
    }

    fn sha(&self, rev: &str) -> String {
        self.repo.git(&["rev-parse", rev])
    }

    /// `reconciler plan --ref feature --against main` and `extra`.
    fn plan(&self, extra: &[&str]) -> Output {
        let (url, cache) = (self.repo.url(), self.cache.path().display().to_string());
        let args = ["plan", "--repo", &url, "--path", "services", "--cache-dir", &cache];
        let against = ["--ref", "feature", "--against", "main"];
        run(&[&args[..], &against, extra].concat())
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(reconciler_path().unwrap()).args(args).output().unwrap()
}

fn web_gets_a_backend(repo: &Repo) {
    let web = service("web", "10.96.0.10", &["10.1.0.11", "10.1.0.12", "10.1.0.13"]);
    repo.write("services/web.yaml", web);
}

#[test]
fn a_pull_request_is_planned_as_its_merge_into_the_base() {
    let pr = PullRequest::new(web_gets_a_backend);
    let output = pr.plan(&["--detailed-exitcode"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stdout(&output);
    let merging = format!("what merging commit {} into it would change", pr.sha("feature"));
    assert!(text.contains(&merging), "{text}");
    assert!(text.contains("service \"web\" will be updated in place"), "{text}");
    assert!(text.contains("+ 10.1.0.13:8080 weight=1"), "{text}");
    // `cache` came to main after the branch point: merging keeps it.
    assert!(!text.contains("cache"), "{text}");
    assert!(text.contains("Plan: 0 to add, 1 to change, 0 to destroy."), "{text}");
    for live in ["map", "Live", "live state", "Apply will"] {
        assert!(!text.contains(live), "`{live}` in a plan --against:\n{text}");
    }

    let output = pr.plan(&["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["against"]["mode"], "merge");
    assert_eq!(plan["against"]["base"], pr.sha("main"));
    assert_eq!(plan["against"]["head"], pr.sha("feature"));
    for live in ["map_writes", "entry_changes", "pin_path", "generation", "install"] {
        assert!(plan.get(live).is_none(), "{live} in {plan:#}");
    }
    let backends = &plan["services"][0]["after"]["backends"];
    assert_eq!(backends.as_array().unwrap().len(), 3, "{plan:#}");
    assert_plan_output_schema(&plan);

    // Such a plan cannot be applied: no file for `apply`.
    let saved = pr.cache.path().join("plan.json");
    let output = pr.plan(&["--out", &saved.display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("it cannot be applied"), "{}", stderr(&output));
    assert!(!saved.exists());
}

#[test]
fn a_conflicting_pull_request_is_planned_against_the_merge_base() {
    let pr = PullRequest::new(web_gets_a_backend);
    // main edits the same lines: the merge conflicts.
    pr.repo.write("services/web.yaml", service("web", "10.96.0.10", &["10.1.0.19"]));
    pr.repo.commit("web on main, differently");
    let output = pr.plan(&["--detailed-exitcode"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stdout(&output);
    let merge_base = pr.repo.git(&["merge-base", "main", "feature"]);
    assert!(
        text.contains(&format!(
            "conflicts, so planned: what it changes since the merge base (commit {merge_base})"
        )),
        "{text}"
    );
    // The change itself, not main's since: 10.1.0.19 is no part of it.
    assert!(text.contains("+ 10.1.0.13:8080 weight=1"), "{text}");
    assert!(!text.contains("10.1.0.19") && !text.contains("cache"), "{text}");

    let plan: Value = serde_json::from_slice(&pr.plan(&["-o", "json"]).stdout).unwrap();
    assert_eq!(plan["against"]["mode"], "merge_base");
    assert_eq!(plan["against"]["merge_base"], merge_base);
    assert_plan_output_schema(&plan);
}

#[test]
fn a_broken_base_still_gets_a_plan_and_a_broken_head_fails_with_its_errors() {
    // main is broken after the branch point; the pull request repairs nothing but gets a plan.
    let pr = PullRequest::new(web_gets_a_backend);
    pr.repo.write("services/api.yaml", "apiVersion: reconciler.dev/v1alpha1\nkind: Service\n");
    pr.repo.commit("api broken on main");
    let output = pr.plan(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let heading = format!(
        "Warning: 2 error(s) in the definitions of the base revision main (commit {}), not of \
         this change",
        pr.sha("main")
    );
    assert!(text.contains(&heading), "{text}");
    assert!(text.contains("services/api.yaml:1:1:"), "{text}");
    assert!(text.contains("service \"web\" will be updated in place"), "{text}");
    let plan: Value = serde_json::from_slice(&pr.plan(&["-o", "json"]).stdout).unwrap();
    assert_eq!(plan["against"]["base_errors"][0]["file"], "services/api.yaml", "{plan:#}");
    assert_plan_output_schema(&plan);
    let markdown = stdout(&pr.plan(&["-o", "markdown"]));
    assert!(markdown.contains("error(s) in the definitions of the base revision main"));

    // A pull request that repairs the base: api is back, as the base's errors hid it.
    pr.repo.git(&["checkout", "-q", "feature"]);
    pr.repo.git(&["merge", "-q", "main"]);
    pr.repo.write("services/api.yaml", service("api", "10.96.0.20", &["10.1.0.21"]));
    pr.repo.commit("api repaired");
    let text = stdout(&pr.plan(&[]));
    assert!(text.contains(&heading), "{text}");
    assert!(text.contains("service \"api\" will be created"), "{text}");

    // The head's own errors are the change's: no plan, exit 1, stdout never empty.
    let pr = PullRequest::new(|repo| repo.write("services/web.yaml", "kind: Service\n"));
    let output = pr.plan(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("services/web.yaml:1:1:"), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("merged into main: this change's to fix"),
        "{}",
        stderr(&output)
    );
    let output = pr.plan(&["-o", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"][0]["file"], "services/web.yaml");
    assert_plan_output_schema(&report);
    let output = pr.plan(&["-o", "markdown"]);
    assert_eq!(output.status.code(), Some(1));
    let comment = stdout(&output);
    assert!(comment.starts_with("<!-- reconciler plan -->\n"), "{comment}");
    assert!(
        comment.contains("No plan: ") && comment.contains("services/web.yaml:1:1:"),
        "{comment}"
    );
}

#[test]
fn markdown_shows_the_warnings_first_and_a_block_per_service() {
    // web moves to another VIP (its clients lose it), api is renamed on its VIP.
    let pr = PullRequest::new(|repo| {
        repo.write("services/web.yaml", service("web", "10.96.0.11", &["10.1.0.11", "10.1.0.12"]));
        repo.write("services/api.yaml", service("api-v2", "10.96.0.20", &["10.1.0.21"]));
    });
    let output = pr.plan(&["--output", "markdown"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let comment = stdout(&output);
    assert!(comment.starts_with("<!-- reconciler plan -->\n"), "{comment}");
    let first_block = comment.find("<details>").unwrap();
    let cut_off = comment
        .find("service \"web\" stops answering on 10.96.0.10:80/TCP (it answers on 10.96.0.11:80/TCP instead)")
        .unwrap_or_else(|| panic!("{comment}"));
    let rename = comment
        .find("service \"api\" is destroyed and \"api-v2\" created on 10.96.0.20:80/TCP")
        .unwrap_or_else(|| panic!("{comment}"));
    assert!(cut_off < first_block && rename < first_block, "warnings first:\n{comment}");
    assert!(comment.contains("**Plan: 1 to add, 1 to change, 1 to destroy.**"), "{comment}");
    assert_eq!(comment.matches("<details><summary><code>").count(), 3, "{comment}");
    assert!(comment.contains("<code>~ web</code> will be updated in place"), "{comment}");
    assert!(
        comment
            .contains("```diff\n- vip             = 10.96.0.10\n+ vip             = 10.96.0.11\n"),
        "{comment}"
    );
    // The text plan says it too.
    let text = stdout(&pr.plan(&[]));
    assert!(
        text.contains("Warning: service \"web\" stops answering on 10.96.0.10:80/TCP"),
        "{text}"
    );

    // Every service removed: the warning a reviewer must see.
    let pr = PullRequest::new(|repo| {
        repo.git(&["rm", "-q", "services/web.yaml", "services/api.yaml"]);
        repo.write("services/README.md", "Services live here.\n");
    });
    let output = Command::new(reconciler_path().unwrap())
        .args(["plan", "--repo", &pr.repo.url(), "--path", "services", "--ref", "feature"])
        .args([
            "--against",
            &pr.sha("feature~1"),
            "--cache-dir",
            &pr.cache.path().display().to_string(),
        ])
        .args(["-o", "markdown"])
        .output()
        .unwrap();
    let comment = stdout(&output);
    assert!(comment.contains("> this plan destroys every service and defines none"), "{comment}");
}

/// The steps of `examples/ci/github-actions.yml`: (name, `run`), in order.
fn workflow_steps() -> Vec<(String, String)> {
    let path = manifest_dir().join("../examples/ci/github-actions.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let documents = reconciler_core::load::parse(&text).unwrap();
    let steps = documents[0].value["jobs"]["check"]["steps"].as_array().unwrap().clone();
    steps
        .iter()
        .filter_map(|step| {
            let name = step["name"].as_str().unwrap_or_default().to_owned();
            Some((name, step["run"].as_str()?.to_owned()))
        })
        .collect()
}

#[test]
fn the_github_workflow_runs_as_written() {
    let pr = PullRequest::new(web_gets_a_backend);
    // actions/checkout with `ref: head.sha` and `fetch-depth: 0`: a whole clone, detached.
    let work = tempfile::tempdir().unwrap();
    let checkout = work.path().join("checkout");
    Command::new("git").args(["clone", "-q", &pr.repo.url()]).arg(&checkout).status().unwrap();
    reconciler_tests::git::git(&checkout, &["checkout", "-q", &pr.sha("feature")]);
    let binary_dir = reconciler_path().unwrap().parent().unwrap().to_owned();
    let path = format!("{}:{}", binary_dir.display(), std::env::var("PATH").unwrap());
    let steps = workflow_steps();
    let names: Vec<&str> = steps.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for (name, script) in &steps {
        // Installing needs the network, commenting needs GitHub: the rest runs here.
        if name.starts_with("Install") || script.contains("gh api") {
            continue;
        }
        let script = script
            .replace("${{ github.event.pull_request.base.sha }}", &pr.sha("main"))
            .replace("${{ github.event.pull_request.head.sha }}", &pr.sha("feature"));
        assert!(
            !script.contains("${{"),
            "{name}: an expression this test does not know:\n{script}"
        );
        // GitHub's shell for `run`: bash -e -o pipefail.
        let output = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
            .current_dir(&checkout)
            .env("PATH", &path)
            .env("XDG_CACHE_HOME", work.path().join("cache"))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{name}: {}{}", stdout(&output), stderr(&output));
    }
    // The file the comment step posts.
    let comment = std::fs::read_to_string(checkout.join("plan.md")).unwrap();
    assert!(comment.starts_with("<!-- reconciler plan -->\n"), "{comment}");
    assert!(comment.contains("**Plan: 0 to add, 1 to change, 0 to destroy.**"), "{comment}");
    assert!(comment.contains("+     10.1.0.13:8080 weight=1"), "{comment}");
    assert!(!comment.contains("cache"), "main's later commit is no part of the change:\n{comment}");
    assert!(comment.len() <= reconciler_core::plan::COMMENT_LIMIT);
    let (_, comment_step) = steps.iter().find(|(_, run)| run.contains("gh api")).unwrap();
    assert!(comment_step.contains("startswith(\"<!-- reconciler plan -->\")"), "{comment_step}");
    assert_eq!(comment_step.matches("-F body=@plan.md").count(), 2, "{comment_step}");
}

#[test]
fn a_conflict_between_two_files_is_annotated_on_the_changed_one() {
    let pr = PullRequest::new(|repo| {
        repo.write("services/new.yaml", service("new", "10.96.0.10", &["10.1.0.41"]));
    });
    pr.repo.git(&["checkout", "-q", "feature"]);
    let validate = |extra: &[&str]| {
        Command::new(reconciler_path().unwrap())
            .current_dir(pr.repo.path())
            .args([&["validate", "--format", "github"], extra, &["services/"]].concat())
            .output()
            .unwrap()
    };
    // Both places without --against.
    let both = stdout(&validate(&[]));
    assert!(both.contains("::error file=services/new.yaml,line=7"), "{both}");
    assert!(both.contains("::error file=services/web.yaml,line=7"), "{both}");
    // new.yaml sorts first: web.yaml's claim is the second.
    assert!(both.contains("is claimed again by service `web` (services/web.yaml:4)"), "{both}");
    assert!(both.contains("is claimed by service `new` (services/new.yaml:4)"), "{both}");
    // With --against: the file the pull request changed only.
    let output = validate(&["--against", "main"]);
    assert_eq!(output.status.code(), Some(1));
    let changed = stdout(&output);
    assert!(changed.contains("::error file=services/new.yaml,line=7"), "{changed}");
    assert!(!changed.contains("services/web.yaml,"), "{changed}");
}

#[test]
fn validate_at_a_repository_root_reads_definitions_only() {
    let repo = Repo::new();
    repo.write("services/web.yaml", service("web", "10.96.0.10", &["10.1.0.11"]));
    repo.write(".github/workflows/ci.yml", "on: push\njobs: {}\n");
    repo.write(".pre-commit-config.yaml", "repos: []\n");
    repo.write("compose.yaml", "services:\n  db: {image: postgres}\n");
    repo.write("staging/web.yaml", service("web-staging", "10.96.9.10", &["10.1.9.11"]));
    repo.commit("a repository of more than definitions");
    let validate = |args: &[&str]| {
        Command::new(reconciler_path().unwrap())
            .current_dir(repo.path())
            .args([&["validate"], args].concat())
            .output()
            .unwrap()
    };
    for args in [&[][..], &["."]] {
        let output = validate(args);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {text}");
        assert!(
            text.contains("compose.yaml: skipped: no `apiVersion: reconciler.dev/...` line"),
            "{text}"
        );
        assert!(!text.contains(".github") && !text.contains(".pre-commit"), "{text}");
        assert!(text.ends_with("OK: 2 service(s) in 2 file(s).\n"), "{text}");
    }
    let text = stdout(&validate(&["--exclude", "staging/**"]));
    assert!(text.ends_with("OK: 1 service(s) in 1 file(s).\n"), "{text}");
    // A `--dir` source reads every file, repository or not: a file that is no definition is
    // an error, never skipped (its services would be destroyed).
    let output = Command::new(reconciler_path().unwrap())
        .args(["plan", "--dir"])
        .arg(repo.path())
        .args(["--pin-path", "/sys/fs/bpf/reconciler-test-no-such-install"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stderr(&output).contains("compose.yaml:1:1:"), "{}", stderr(&output));
    // Below the root every YAML file is a definition: a file that is none is an error.
    repo.write("services/notes.yaml", "owner: team-web\n");
    let output = validate(&["services"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
}

#[test]
fn colour_on_a_terminal_or_when_asked_and_never_with_no_color() {
    let pr = PullRequest::new(web_gets_a_backend);
    let green = "\u{1b}[32m";
    assert!(!stdout(&pr.plan(&[])).contains('\u{1b}'), "no colour into a pipe");
    assert!(stdout(&pr.plan(&["--color", "always"])).contains(&format!("{green}+ 10.1.0.13")));
    // A terminal (script(1) gives the command one): colour, unless NO_COLOR.
    let on_terminal = |no_color: bool| {
        let (url, cache) = (pr.repo.url(), pr.cache.path().display().to_string());
        let command = format!(
            "{} plan --repo {url} --path services --cache-dir {cache} --ref feature --against main",
            reconciler_path().unwrap().display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &command, "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            script.env("NO_COLOR", "1");
        }
        stdout(&script.output().unwrap())
    };
    let coloured = on_terminal(false);
    assert!(coloured.contains(&format!("{green}+")), "{coloured}");
    assert!(coloured.contains("\u{1b}[33m~"), "{coloured}");
    assert!(!on_terminal(true).contains('\u{1b}'), "NO_COLOR");
    let never = stdout(&pr.plan(&["--color", "never"]));
    assert!(!never.contains('\u{1b}'));
    // validate's errors in red.
    let invalid = manifest_dir().join("invalid/port-zero.yaml");
    let output = run(&["validate", "--color", "always", &invalid.display().to_string()]);
    assert!(stdout(&output).contains("\u{1b}[31m"), "{}", stdout(&output));
}
