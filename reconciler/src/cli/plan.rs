//! `reconciler plan`: what apply would change, Terraform style.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use reconciler::pipeline::{self, Error, Session};
use reconciler_core::{
    plan::{render_text, to_saved, Plan},
    source::SourceSpec,
};

use super::{Output, ReconcileArgs};

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    target: ReconcileArgs,
    /// Exit 0 when nothing would change, 2 when something would, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Save the plan, for `reconciler apply FILE` to apply exactly.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Compare with another revision of the repository instead of the live maps (no BPF).
    #[arg(long, value_name = "REV", requires = "repo")]
    against: Option<String>,
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let spec = args.target.source.spec()?;
    if args.against.is_some() && !matches!(spec, SourceSpec::Git(_)) {
        anyhow::bail!("--against compares two revisions of a git repository (--repo), not --dir");
    }
    let plan = match &args.against {
        // Two revisions, no data plane: the node's own addresses play no part.
        Some(rev) => {
            let policy = args.target.policy.policy();
            let session = Session::new(spec, &args.target.pin.pin_path, policy);
            let mut session = session.with_node(args.target.node.node());
            let head = invalid_to_report(session.load())?;
            let base = invalid_to_report(session.load_at(rev))?;
            pipeline::plan_between(&base, &head)?
        }
        None => against_live(&args, spec)?,
    };
    if let Some(out) = &args.out {
        let key = reconciler::memo::node_key_in(&args.target.source.cache_dir());
        if let Err(error) = &key {
            eprintln!(
                "warning: the plan is saved unsigned, and `apply` will refuse it: this node's \
                 key: {error}"
            );
        }
        let json = to_saved(&plan, key.as_ref().ok())?;
        std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    }
    match args.output {
        Output::Text => {
            print!("{}", render_text(&plan));
            if let Some(out) = &args.out {
                println!(
                    "\nSaved the plan to {}; apply it with: reconciler apply {}",
                    out.display(),
                    out.display()
                );
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&public_json(&plan)?)?),
    }
    Ok(match (args.detailed_exitcode, plan.has_changes()) {
        (true, true) => ExitCode::from(super::CHANGES),
        _ => ExitCode::SUCCESS,
    })
}

/// The plan from the live maps at `--pin-path` to the definitions.
#[cfg(feature = "dataplane")]
fn against_live(args: &PlanArgs, spec: SourceSpec) -> anyhow::Result<Plan> {
    // A saved plan holds the whole desired state: made by reading everything.
    let refresh = args.target.refresh || args.out.is_some();
    let reading = pipeline::Reading::ahead(refresh, &args.target.pin.pin_path);
    let (mut session, memo_file) = args.target.session(spec)?;
    let head = invalid_to_report(session.load())?;
    let plan = session.plan(&head, pipeline::PlanOptions { reading, health: None })?;
    memo_file.save(session.memo());
    Ok(plan)
}

#[cfg(not(feature = "dataplane"))]
fn against_live(_: &PlanArgs, _: SourceSpec) -> anyhow::Result<Plan> {
    anyhow::bail!(
        "this reconciler is built without the data plane (--no-default-features): it plans \
         between two revisions, `plan --repo URL --against REV`, and validates"
    )
}

/// The plan for people and CI: everything but the desired map entries (kept in `--out`).
pub fn public_json(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(plan)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("desired");
    }
    Ok(value)
}

/// Invalid definitions print every diagnostic, not just the first.
pub fn invalid_to_report<T>(result: Result<T, Error>) -> anyhow::Result<T> {
    match result {
        Err(Error::Invalid { revision, diagnostics }) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            let at = revision.map_or(String::new(), |r| format!(" at commit {r}"));
            anyhow::bail!(
                "{} error(s) in the definitions{at}; nothing was changed",
                diagnostics.len()
            )
        }
        other => Ok(other?),
    }
}
