//! `reconciler reconcile --daemon HOST:PORT [--secret-file FILE] [--wait]`: asks a daemon for
//! a run, as a git webhook does (`flux reconcile`'s job); with `--wait`, waits for that run
//! and exits by its result.
use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Args;
use reconciler::daemon::{
    http::{request, request_with},
    status::DaemonStatus,
    webhook::{Secret, GITHUB_SIGNATURE},
};

use super::UNHEALTHY;

#[derive(Args)]
pub struct ReconcileArgs {
    /// The daemon's `listen` address.
    #[arg(long, value_name = "HOST:PORT")]
    daemon: String,
    /// The daemon's `webhook.secretFile`: the request is signed with it, as GitHub signs a
    /// delivery (X-Hub-Signature-256).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Wait for the run to end, and exit by its result: 0 it succeeded, 2 it failed (the
    /// daemon's last error is printed).
    #[arg(long)]
    wait: bool,
    /// With --wait: how long to wait at most (then exit 1).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let addr = &args.daemon;
    let secret = args.secret_file.as_deref().map(Secret::read).transpose()?;
    let signature = secret.as_ref().and_then(|secret| secret.sign(b""));
    let headers: Vec<(&str, &str)> =
        signature.iter().map(|s| (GITHUB_SIGNATURE, s.as_str())).collect();
    let (code, body) = request_with(addr, "POST", "/reconcile", &headers)
        .with_context(|| format!("asking the daemon at {addr} for a run"))?;
    match code {
        200..=299 => {}
        401 => bail!(
            "the daemon at {addr} refused the request ({}): give its webhook.secretFile with \
             --secret-file",
            body.trim()
        ),
        _ => bail!("the daemon at {addr} answered {code}: {}", body.trim()),
    }
    if !args.wait {
        println!("A run was asked of the daemon at {addr}.");
        return Ok(ExitCode::SUCCESS);
    }
    let status = wait_for_run(addr, args.timeout)?;
    match &status.last_error {
        None => {
            let revision = status.applied_revision.as_deref().unwrap_or("-");
            println!("The run succeeded: the daemon at {addr} holds revision {revision}.");
            Ok(ExitCode::SUCCESS)
        }
        Some(error) => {
            println!("The run failed: {error}");
            for diagnostic in &status.errors {
                println!("  {diagnostic}");
            }
            Ok(ExitCode::from(UNHEALTHY))
        }
    }
}

/// The daemon's status once the run asked for has ended: the request is marked at once
/// (`run_requested`), cleared when its fetch starts, and `running` stays set until its run
/// ends, so both clear means it has run.
fn wait_for_run(addr: &str, timeout: Duration) -> anyhow::Result<DaemonStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = request(addr, "GET", "/status")
            .with_context(|| format!("asking the daemon at {addr} for its status"))?;
        anyhow::ensure!(code == 200, "the daemon at {addr} answered {code}: {body}");
        let status: DaemonStatus = serde_json::from_str(&body).with_context(|| {
            format!("the daemon at {addr} sent a /status this build cannot read")
        })?;
        if !status.run_requested && !status.running {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("the daemon at {addr} has not finished the run after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
