//! The GitOps loop as the tests drive it: a real repository of service definitions and the
//! real `reconciler` binary applying it to one sandbox.
use std::process::{Command, Output};

use anyhow::{ensure, Context as _, Result};
use tempfile::TempDir;

use crate::{git::Repo, reconciler_path, Sandbox};

/// A repository of service definitions and the commands that apply it to one sandbox.
pub struct Setup {
    pub sandbox: Sandbox,
    pub repo: Repo,
    pub cache: TempDir,
}

impl Setup {
    pub fn new(test: &str) -> Result<Self> {
        Ok(Setup { sandbox: Sandbox::new(test)?, repo: Repo::new(), cache: tempfile::tempdir()? })
    }

    /// Runs `reconciler SUBCOMMAND` with the data plane options of this setup, and for `plan`
    /// and `apply` (unless given a saved plan) its source options.
    pub fn run(&self, subcommand: &str, extra: &[&str]) -> Result<Output> {
        self.run_as(Command::new(reconciler_path()?), subcommand, extra)
    }

    /// Like `run`, inside the sandbox's network namespace (and cgroup), where the node's
    /// addresses are the sandbox's.
    pub fn run_in_sandbox(&self, subcommand: &str, extra: &[&str]) -> Result<Output> {
        self.run_as(self.sandbox.command(reconciler_path()?)?, subcommand, extra)
    }

    pub fn run_as(&self, mut command: Command, subcommand: &str, extra: &[&str]) -> Result<Output> {
        let saved_plan = extra.first().is_some_and(|a| !a.starts_with('-'));
        command.arg(subcommand);
        if matches!(subcommand, "plan" | "apply") && !saved_plan {
            command.args(["--repo", &self.repo.url(), "--path", "services"]);
        }
        // A saved plan is signed with the key under the cache directory, and checked with it.
        if matches!(subcommand, "plan" | "apply") {
            command.arg("--cache-dir").arg(self.cache.path());
        }
        if subcommand == "apply" {
            command.arg("--cgroup").arg(self.sandbox.cgroup());
        }
        command.arg("--pin-path").arg(self.sandbox.pin_path());
        Ok(command.args(extra).output()?)
    }

    /// Like `run`, and fails unless the exit code is `code`.
    pub fn expect(&self, code: i32, subcommand: &str, extra: &[&str]) -> Result<String> {
        let output = self.run(subcommand, extra)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.code() == Some(code),
            "reconciler {subcommand} {extra:?} exited {:?}, wanted {code}\n{text}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(text)
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.expect(0, "status", &["--output", "json"])?)?)
    }
}

/// The number in "... in N map writes." of an apply's output.
pub fn map_writes(output: &str) -> Result<u64> {
    let line = output
        .lines()
        .find(|l| l.starts_with("Changed "))
        .with_context(|| format!("no summary line in:\n{output}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "writes;").context("no `writes;`")?;
    Ok(words[at - 2].parse()?)
}

/// `web` on 10.96.0.10:80 (port `http`, target 8080) with `backends`, each health-checked
/// every second (out after two failed probes, back after one that passes).
pub fn checked_web(backends: &[&str]) -> String {
    let mut text = String::from(
        "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
         vip: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n  \
         healthCheck: {intervalSeconds: 1, timeoutMillis: 500, unhealthyThreshold: 2, \
         healthyThreshold: 1}\n  backends:\n",
    );
    for backend in backends {
        text.push_str(&format!("    - {{address: {backend}}}\n"));
    }
    text
}

/// A service definition (one `http` port, 80 to 8080) with `backends` as (address, weight),
/// as its own YAML document.
pub fn service(name: &str, vip: &str, backends: &[(&str, u32)]) -> String {
    let mut text = format!(
        "---\napiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec:\n  vip: {vip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  backends:\n"
    );
    for (addr, weight) in backends {
        text.push_str(&format!("    - {{address: {addr}, weight: {weight}}}\n"));
    }
    text
}
