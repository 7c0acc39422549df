//! `reconciler plan`: what apply would change, Terraform style; with `--against REV`, what
//! a pull request would change, for its review (text, JSON or a Markdown comment).
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use reconciler::pipeline::{self, Error, Session};
use reconciler_core::{
    plan::{
        render_markdown, render_markdown_invalid, render_text, to_saved, Plan, COMMENT_LIMIT,
        FORMAT_VERSION,
    },
    source::SourceSpec,
    validate::Diagnostic,
};
use serde_json::json;

use super::ReconcileArgs;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    target: ReconcileArgs,
    /// Exit 0 when nothing would change, 2 when something would, 1 on error.
    #[arg(long)]
    detailed_exitcode: bool,
    /// text, json (typed: `schema/plan-output.schema.json`) or markdown (a pull request's
    /// comment, at most 65 536 characters).
    #[arg(short, long, value_enum, default_value_t = PlanOutput::Text)]
    output: PlanOutput,
    /// Save the plan, for `reconciler apply FILE` to apply exactly.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Plan what merging the head (--ref, or the repository's HEAD) into REV would change,
    /// with no data plane: a pull request's review.
    #[arg(long, value_name = "REV", requires = "repo")]
    against: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PlanOutput {
    Text,
    Json,
    Markdown,
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let spec = args.target.source.spec()?;
    let plan = match &args.against {
        Some(rev) => {
            if !matches!(spec, SourceSpec::Git(_)) {
                anyhow::bail!(
                    "--against compares two revisions of a git repository (--repo), not --dir"
                );
            }
            if args.out.is_some() {
                anyhow::bail!(
                    "--out saves a plan for `reconciler apply`, and a plan --against compares \
                     two revisions with no data plane: it cannot be applied. Keep its \
                     --output json or markdown instead"
                );
            }
            against(&args, spec, rev)
        }
        None => against_live(&args, spec),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(error) => return report_failure(args.output, error),
    };
    if let Some(out) = &args.out {
        save(&args, &plan, out)?;
    }
    match args.output {
        PlanOutput::Text => {
            print!("{}", render_text(&plan, super::paint()));
            if let Some(out) = &args.out {
                println!(
                    "\nSaved the plan to {}; apply it with: reconciler apply {}",
                    out.display(),
                    out.display()
                );
            }
        }
        PlanOutput::Json => println!("{}", serde_json::to_string_pretty(&public_json(&plan)?)?),
        PlanOutput::Markdown => print!("{}", render_markdown(&plan, COMMENT_LIMIT)),
    }
    Ok(match (args.detailed_exitcode, plan.has_changes()) {
        (true, true) => ExitCode::from(super::CHANGES),
        _ => ExitCode::SUCCESS,
    })
}

/// The plan of `--against rev`: the head merged into `rev` (or against the merge base).
fn against(args: &PlanArgs, spec: SourceSpec, rev: &str) -> Result<Plan, Failure> {
    // Two revisions, no data plane: the node's own addresses play no part.
    let policy = args.target.policy.policy();
    let session = Session::new(spec, &args.target.pin.pin_path, policy);
    let session = session.with_node(args.target.node.node());
    let loaded = session.load_against(rev).map_err(|error| match error {
        Error::Invalid { revision, diagnostics } => {
            let whose = format!(
                "the definitions of commit {} merged into {rev}: this change's to fix",
                revision.as_deref().unwrap_or("HEAD")
            );
            Failure::Invalid { whose, diagnostics }
        }
        other => Failure::Other(other.into()),
    })?;
    pipeline::plan_between(&loaded).map_err(|e| Failure::Other(e.into()))
}

/// The plan from the live maps at `--pin-path` to the definitions.
#[cfg(feature = "dataplane")]
fn against_live(args: &PlanArgs, spec: SourceSpec) -> Result<Plan, Failure> {
    // A saved plan holds the whole desired state: made by reading everything.
    let refresh = args.target.refresh || args.out.is_some();
    let reading = pipeline::Reading::ahead(refresh, &args.target.pin.pin_path);
    let (mut session, memo_file) = args.target.session(spec).map_err(Failure::Other)?;
    let head = session.load().map_err(Failure::of)?;
    let plan = session.plan(&head, pipeline::PlanOptions { reading, health: None });
    memo_file.save(session.memo());
    plan.map_err(|e| Failure::Other(e.into()))
}

#[cfg(not(feature = "dataplane"))]
fn against_live(_: &PlanArgs, _: SourceSpec) -> Result<Plan, Failure> {
    Err(Failure::Other(anyhow::anyhow!(
        "this reconciler is built without the data plane (--no-default-features): it plans \
         between two revisions, `plan --repo URL --against REV`, and validates"
    )))
}

/// Why no plan was made: invalid definitions (every diagnostic, and whose they are), or
/// anything else.
pub enum Failure {
    Invalid { whose: String, diagnostics: Vec<Diagnostic> },
    Other(anyhow::Error),
}

#[cfg(feature = "dataplane")]
impl Failure {
    /// A pipeline error, invalid definitions told apart.
    pub fn of(error: Error) -> Failure {
        match error {
            Error::Invalid { revision, diagnostics } => {
                let at = revision.map_or(String::new(), |r| format!(" at commit {r}"));
                Failure::Invalid { whose: format!("the definitions{at}"), diagnostics }
            }
            other => Failure::Other(other.into()),
        }
    }
}

/// Reports a failure: invalid definitions with every diagnostic (as JSON or Markdown on
/// stdout with `--output json` or `markdown`, so stdout is never empty), anything else as an
/// error.
fn report_failure(output: PlanOutput, failure: Failure) -> anyhow::Result<ExitCode> {
    let (whose, diagnostics) = match failure {
        Failure::Invalid { whose, diagnostics } => (whose, diagnostics),
        Failure::Other(error) => return Err(error),
    };
    match output {
        PlanOutput::Json => {
            let report = json!({
                "format_version": FORMAT_VERSION,
                "valid": false,
                "invalid": whose,
                "errors": diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        PlanOutput::Markdown => print!("{}", render_markdown_invalid(&whose, &diagnostics)),
        PlanOutput::Text => {}
    }
    Err(invalid(&whose, &diagnostics))
}

/// Prints every diagnostic to stderr; the error that sums them up.
fn invalid(whose: &str, diagnostics: &[Diagnostic]) -> anyhow::Error {
    let paint = super::paint_stderr();
    for d in diagnostics {
        eprintln!("{}", paint.error(&d.to_string()));
    }
    anyhow::anyhow!("{} error(s) in {whose}; nothing was changed", diagnostics.len())
}

/// Saves `plan` to `out`, signed with this node's key where it has one.
fn save(args: &PlanArgs, plan: &Plan, out: &PathBuf) -> anyhow::Result<()> {
    let key = reconciler::memo::node_key_in(&args.target.source.cache_dir());
    if let Err(error) = &key {
        eprintln!(
            "warning: the plan is saved unsigned, and `apply` will refuse it: this node's key: \
             {error}"
        );
    }
    let json = to_saved(plan, key.as_ref().ok())?;
    std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))
}

/// The plan for people and CI: everything but the desired map entries (kept in `--out`);
/// with `--against`, nothing about a data plane.
pub fn public_json(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(plan)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("desired");
        object.insert("valid".into(), true.into());
        if plan.context.against.is_some() {
            for live in ["pin_path", "install", "generation", "live_revision", "health_changed"] {
                object.remove(live);
            }
            object.remove("entry_changes");
            object.remove("map_writes");
        }
    }
    Ok(value)
}

/// Invalid definitions print every diagnostic, not just the first.
#[cfg(feature = "dataplane")]
pub fn invalid_to_report<T>(result: Result<T, Error>) -> anyhow::Result<T> {
    result.map_err(|error| match Failure::of(error) {
        Failure::Other(error) => error,
        Failure::Invalid { whose, diagnostics } => invalid(&whose, &diagnostics),
    })
}
