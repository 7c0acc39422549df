//! `reconciler apply [PLANFILE]`: make the live maps match, atomically.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Args;
use reconciler::{
    dataplane::{self, ApplyReport},
    pipeline::{self, ApplyOptions, Error, PlanOptions, Reading},
};
use reconciler_common::LAYOUT_VERSION;
use reconciler_core::{
    limits,
    plan::{from_saved, render_text, Plan},
};

use super::{
    plan::{invalid_to_report, public_json},
    Output, ReconcileArgs,
};

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
    /// Apply even if the plan destroys every service and defines none (an empty source).
    #[arg(long)]
    allow_destroy_all: bool,
    /// Cgroup v2 directories whose processes (and their descendants') connects are never
    /// translated (comma-separated or repeated; up to 16); they replace the data plane's list.
    /// Without it the list stays as it is.
    #[arg(long, value_name = "DIR,...", value_delimiter = ',')]
    exclude_cgroup: Option<Vec<PathBuf>>,
    /// Empty the list of cgroups never translated: every process is translated again.
    #[arg(long, conflicts_with = "exclude_cgroup")]
    no_exclude: bool,
    /// `json`: the plan and the result as one JSON document (`format_version` 1).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Apply at once, without the step-by-step rollout of services with `spec.rollout`: what
    /// `apply` always does (the daemon rolls out); accepted so scripts can say so.
    #[arg(long)]
    no_rollout: bool,
}

/// Plans made from the definitions that lost a race with another apply before this one
/// gives up; each loss means someone else's apply went through in between.
const ATTEMPTS: usize = 3;

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    upgrade(&args.target.pin.pin_path)?;
    let (plan, report) = match &args.plan_file {
        Some(file) => apply_saved(&args, file)?,
        None => plan_and_apply(&args)?,
    };
    if let Some(error) = &report.sockets_error {
        eprintln!("warning: the maps are applied, but {error}");
    }
    if !plan.context.rollouts.is_empty() {
        eprintln!(
            "Applied at once: `apply` does not roll out (--no-rollout); the daemon rolls out {}",
            plan.context.rollouts.join("; ")
        );
    }
    match args.output {
        Output::Json => print_json(&plan, &report)?,
        Output::Text => print_text(&plan, &report),
    }
    Ok(ExitCode::SUCCESS)
}

/// A data plane of an older build is brought up to this one before anything is planned.
fn upgrade(pin_path: &Path) -> anyhow::Result<()> {
    if let Some(upgraded) = dataplane::upgrade(pin_path)? {
        eprintln!(
            "Upgraded the data plane at {} in place from layout {} to {LAYOUT_VERSION} \
             (programs replaced: {}; attached: {}).",
            pin_path.display(),
            upgraded.from_layout,
            upgraded.replaced.join(", "),
            if upgraded.attached.is_empty() { "none".into() } else { upgraded.attached.join(", ") },
        );
    }
    Ok(())
}

/// Applies the saved plan in `file` exactly, or refuses it if the live state moved.
fn apply_saved(args: &ApplyArgs, file: &Path) -> anyhow::Result<(Plan, ApplyReport)> {
    let plan = read_saved(file, &args.target.source.cache_dir())?;
    if args.output == Output::Text {
        print!("{}", render_text(&plan, super::paint()));
    }
    let report = pipeline::apply_saved(&plan, &args.target.pin.pin_path, options(args, None))?;
    Ok((plan, report))
}

/// Plans from the definitions and applies; a plan that lost a race with another apply (the
/// daemon's, say) is made again from what that apply left.
fn plan_and_apply(args: &ApplyArgs) -> anyhow::Result<(Plan, ApplyReport)> {
    let pin_path = &args.target.pin.pin_path;
    // A first install loads the BPF object (maps, verifier) on another core meanwhile.
    let capacity = args.target.capacity.unwrap_or_default();
    let mut loading = (!dataplane::is_installed(pin_path))
        .then(|| std::thread::spawn(move || dataplane::Loaded::load(&capacity)));
    let mut reading = Reading::ahead(args.target.refresh, pin_path);
    let (mut session, memo_file) = args.target.session(args.target.source.spec()?)?;
    let mut attempt = 1;
    loop {
        let desired = invalid_to_report(session.load())?;
        let plan = session.plan(&desired, PlanOptions { reading, health: None })?;
        if args.output == Output::Text {
            print!("{}", render_text(&plan, super::paint()));
        }
        // A load that failed is done again by the install, which reports why.
        let loaded = loading.take().and_then(|thread| thread.join().ok()?.ok());
        match session.apply(&plan, Some(&desired), options(args, loaded)) {
            Err(e) if is_stale(&e) && attempt < ATTEMPTS => {
                attempt += 1;
                eprintln!("Another apply changed the data plane while this one was planning; planning again.");
                // The maps are not what the memo recorded: read them all.
                reading = Reading::ahead(true, pin_path);
            }
            Err(e) if is_stale(&e) => {
                anyhow::bail!("{ATTEMPTS} plans in a row were overtaken by other applies: {e}")
            }
            applied => {
                let report = applied?;
                memo_file.save(session.memo());
                return Ok((plan, report));
            }
        }
    }
}

/// Whether `error` says another apply went through between the plan and its apply.
fn is_stale(error: &Error) -> bool {
    matches!(
        error,
        Error::StalePlan { .. } | Error::StaleInstall { .. } | Error::Unconfirmed { .. }
    )
}

fn options(args: &ApplyArgs, loaded: Option<dataplane::Loaded>) -> ApplyOptions {
    ApplyOptions {
        cgroup: args.cgroup.clone(),
        allow_destroy_all: args.allow_destroy_all,
        loaded,
        exclude: if args.no_exclude { Some(Vec::new()) } else { args.exclude_cgroup.clone() },
        capacity: args.target.capacity,
    }
}

/// The plan and the result as one JSON document.
fn print_json(plan: &Plan, report: &ApplyReport) -> anyhow::Result<()> {
    let mut value = public_json(plan)?;
    value["result"] = serde_json::json!({
        "changes": report.changes,
        "map_writes": report.map_writes,
        "generation": report.generation,
        "sockets_destroyed": report.sockets_destroyed,
        "sockets_error": report.sockets_error,
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn print_text(plan: &Plan, report: &ApplyReport) {
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
    if report.sockets_destroyed > 0 {
        println!(
            "Destroyed {} connected UDP socket(s) whose backend was removed; they reconnect \
             through the VIP.",
            report.sockets_destroyed
        );
    }
}

/// A plan file, refused if it is larger than any plan could be, fails its checksum, or was
/// not signed with this node's key (the one under the cache directory).
fn read_saved(file: &Path, cache_dir: &Path) -> anyhow::Result<Plan> {
    let text = limits::read_to_string(file, limits::MAX_PLAN_BYTES)
        .with_context(|| format!("reading {}", file.display()))?;
    let key = reconciler::memo::existing_node_key_in(cache_dir)
        .with_context(|| format!("this node's key under {}", cache_dir.display()))?;
    from_saved(&text, key.as_ref()).with_context(|| format!("{}", file.display()))
}
