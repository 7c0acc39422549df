//! `reconciler validate [PATH...]`: schema and rules, every error at once. No root, no BPF.
use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use reconciler_core::{
    source::{self, Walk},
    validate::{validate, Diagnostic},
};
use serde_json::json;

use super::PolicyArgs;

#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories (searched for .yaml/.yml files); default: the current directory,
    /// searched as a repository's root is (only files that say `apiVersion: reconciler.dev/...`,
    /// no dot-files or -directories), as is any directory that holds `.git`.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// text, json or github; `--output` and `-o` are the same.
    #[arg(long, short = 'o', visible_alias = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Leave out files and directories matching GLOB (below the directory searched), e.g.
    /// 'staging/**' or '*.draft.yaml'; repeatable.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// The revision a pull request goes into: a conflict between two files is annotated on
    /// the file the pull request changed (`--format github`).
    #[arg(long, value_name = "REV")]
    against: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    /// GitHub Actions annotations: `::error file=...,line=...,col=...::message`.
    Github,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let discover = args.paths.is_empty();
    let paths = if discover { vec![PathBuf::from(".")] } else { args.paths };
    let walk = Walk::new(&args.exclude, discover).context("--exclude")?;
    let snapshot = source::read_paths_with(&paths, &walk)?;
    let changed = match (&args.against, args.format) {
        (Some(rev), Format::Github) => Some(source::changed_since(&paths[0], rev)?),
        _ => None,
    };
    let files = snapshot.files.len() + snapshot.problems.len();
    // No definitions at all is no success: a wrong path in CI would pass for ever.
    let nothing = files == 0;
    let result = validate(&snapshot, &args.policy.policy());
    let (services, diagnostics) = match &result {
        Ok(services) => (services.len(), &[][..]),
        Err(diagnostics) => (0, diagnostics.as_slice()),
    };
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let nothing_message =
        format!("no definition files (.yaml, .yml) found in {}", shown.join(", "));
    match args.format {
        Format::Text => {
            let paint = super::paint();
            for skipped in &snapshot.skipped {
                println!("{}: skipped: {}", skipped.path, skipped.message);
            }
            for d in diagnostics {
                println!("{}", paint.error(&d.to_string()));
            }
            if nothing {
                println!("{} {nothing_message}.", paint.error("error:"));
            } else if diagnostics.is_empty() {
                println!("OK: {services} service(s) in {files} file(s).");
            } else {
                println!("{} error(s) in {files} file(s).", diagnostics.len());
            }
        }
        Format::Json => {
            let report = json!({
                "format_version": 1,
                "valid": diagnostics.is_empty() && !nothing,
                "files": files,
                "services": services,
                "errors": diagnostics,
                "skipped": snapshot.skipped.iter()
                    .map(|s| json!({"path": s.path, "reason": s.message}))
                    .collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Github => {
            for d in on_changed_files(diagnostics, changed.as_ref()) {
                println!("{}", github_annotation(d));
            }
            if nothing {
                println!("::error title=reconciler validate::{nothing_message}");
            }
        }
    }
    let valid = diagnostics.is_empty() && !nothing;
    Ok(if valid { ExitCode::SUCCESS } else { ExitCode::from(super::FAILURE) })
}

/// Of `diagnostics`, those to annotate: of a conflict between two files, the side in a file
/// the pull request `changed` (both sides when it changed both or neither).
fn on_changed_files<'a>(
    diagnostics: &'a [Diagnostic],
    changed: Option<&'a BTreeSet<PathBuf>>,
) -> impl Iterator<Item = &'a Diagnostic> {
    let is_changed = move |file: &str| {
        let path = std::fs::canonicalize(file).unwrap_or_else(|_| PathBuf::from(file));
        changed.is_some_and(|changed| changed.contains(&path))
    };
    diagnostics.iter().filter(move |d| {
        let other = d.also.as_deref().and_then(|also| Some(also.rsplit_once(':')?.0));
        match other {
            Some(other) if changed.is_some() => is_changed(&d.file) || !is_changed(other),
            _ => true,
        }
    })
}

/// One workflow command; GitHub's escaping: `%`, CR, LF everywhere, and `:` `,` in properties.
fn github_annotation(d: &Diagnostic) -> String {
    let data = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let property = |s: &str| data(s).replace(':', "%3A").replace(',', "%2C");
    let message =
        if d.field.is_empty() { d.message.clone() } else { format!("{}: {}", d.field, d.message) };
    format!(
        "::error file={},line={},col={},title={}::{}",
        property(&d.file),
        d.line,
        d.column,
        property("reconciler validate"),
        data(&message)
    )
}
