//! `reconciler apply [PLANFILE]`: make the live maps match, atomically.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use reconciler::{
    apply::{self, Error},
    dataplane, limits,
    plan::{from_saved, render_text, Plan},
};
use reconciler_common::LAYOUT_VERSION;

use super::{
    plan::{invalid_to_report, public_json},
    MemoFile, Output, ReconcileArgs,
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
    /// `json`: the plan and the result as one JSON document (`format_version` 1).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Plans made from the definitions that lost a race with another apply before this one
/// gives up; each loss means someone else's apply went through in between.
const ATTEMPTS: usize = 3;

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let pin_path = &args.target.pin.pin_path;
    // A data plane of an older build is brought up to this one before anything is planned.
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
    // A first install loads the BPF object (maps, verifier) on another core meanwhile.
    let mut loading = (args.plan_file.is_none() && !dataplane::is_installed(pin_path))
        .then(|| std::thread::spawn(dataplane::Loaded::load));
    let mut attempt = 1;
    let mut memo = None;
    let (plan, report) = loop {
        let plan = match &args.plan_file {
            Some(file) => read_saved(file)?,
            None => {
                let spec = args.target.source.spec()?;
                // After a lost race, the maps are not what the memo recorded: read them all.
                let reading = apply::Reading::ahead(args.target.refresh || attempt > 1, pin_path);
                let (file, tree) =
                    memo.get_or_insert_with(|| (MemoFile::open(&spec, pin_path), None));
                let policy = args.target.node_policy()?;
                let loaded =
                    invalid_to_report(apply::load_reusing(&spec, &policy, &mut file.memo))?;
                let plan = apply::plan_reusing(&loaded, pin_path, &file.memo, reading, None)?;
                // The services are in the plan now; only where they came from is kept.
                *tree = loaded.tree;
                plan
            }
        };
        if args.output == Output::Text {
            print!("{}", render_text(&plan));
        }
        // A load that failed is done again by the install, which reports why.
        let loaded = loading.take().and_then(|thread| thread.join().ok()?.ok());
        let applied = apply::apply_loaded(
            &plan,
            pin_path,
            args.cgroup.as_deref(),
            args.allow_destroy_all,
            loaded,
        );
        match applied {
            // A plan made just now lost a race with another apply (the daemon's, say): plan
            // again from what that apply left. A saved plan is refused instead, as promised.
            Err(
                Error::StalePlan { .. } | Error::StaleInstall { .. } | Error::Unconfirmed { .. },
            ) if args.plan_file.is_none() && attempt < ATTEMPTS => {
                attempt += 1;
                eprintln!("Another apply changed the data plane while this one was planning; planning again.");
            }
            Err(
                e @ (Error::StalePlan { .. }
                | Error::StaleInstall { .. }
                | Error::Unconfirmed { .. }),
            ) if args.plan_file.is_none() => {
                anyhow::bail!("{ATTEMPTS} plans in a row were overtaken by other applies: {e}")
            }
            other => break (plan, other?),
        }
    };
    if let Some((file, tree)) = &mut memo {
        apply::remember_apply(&mut file.memo, tree.as_ref(), &plan, &report);
        file.save();
    }
    if let Some(error) = &report.sockets_error {
        eprintln!("warning: the maps are applied, but {error}");
    }
    if args.output == Output::Json {
        let mut value = public_json(&plan)?;
        value["result"] = serde_json::json!({
            "changes": report.changes,
            "map_writes": report.map_writes,
            "generation": report.generation,
            "sockets_destroyed": report.sockets_destroyed,
            "sockets_error": report.sockets_error,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}

/// A plan file, refused if it is larger than any plan could be or fails its checksum.
fn read_saved(file: &std::path::Path) -> anyhow::Result<Plan> {
    let text = limits::read_to_string(file, limits::MAX_PLAN_BYTES)
        .with_context(|| format!("reading {}", file.display()))?;
    from_saved(&text).with_context(|| format!("{}", file.display()))
}
