//! `reconciler apply [PLANFILE]`: make the live maps match, atomically.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use reconciler::{
    apply,
    plan::{render_text, Plan},
};

use super::{plan::invalid_to_report, ReconcileArgs};

#[derive(Args)]
pub struct ApplyArgs {
    /// A plan saved by `reconciler plan --out FILE`: applied exactly, or refused if the live
    /// state changed since.
    #[arg(value_name = "PLANFILE")]
    plan_file: Option<PathBuf>,
    #[command(flatten)]
    target: ReconcileArgs,
    /// The cgroup v2 directory to attach to on first install (default: the cgroup2 root).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let plan: Plan = match &args.plan_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a saved plan", file.display()))?
        }
        None => {
            let desired = invalid_to_report(apply::load(
                &args.target.source.spec()?,
                &args.target.policy.policy(),
            ))?;
            apply::plan(&desired, &args.target.pin.pin_path)?
        }
    };
    print!("{}", render_text(&plan));
    let report = apply::apply(&plan, &args.target.pin.pin_path, args.cgroup.as_deref())?;
    let s = plan.summary;
    println!(
        "\nApply complete! Services: {} added, {} changed, {} destroyed.",
        s.add, s.change, s.destroy
    );
    println!(
        "Changed {} map entries in {} map writes; generation {}, revision {}.",
        report.changes,
        report.map_writes,
        report.generation,
        plan.context.revision.as_deref().unwrap_or("none (a plain directory)")
    );
    Ok(ExitCode::SUCCESS)
}
