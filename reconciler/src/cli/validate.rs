//! `reconciler validate [PATH...]`: schema and rules, every error at once. No root, no BPF.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, ValueEnum};
use reconciler_core::{
    source,
    validate::{validate, Diagnostic},
};
use serde_json::json;

use super::PolicyArgs;

#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories (searched for .yaml/.yml files); default: the current directory.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// text, json or github; `--output` and `-o` are the same.
    #[arg(long, short = 'o', visible_alias = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
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
    let paths = if args.paths.is_empty() { vec![PathBuf::from(".")] } else { args.paths };
    let snapshot = source::read_paths(&paths)?;
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
            for skipped in &snapshot.skipped {
                println!("{}: skipped: {}", skipped.path, skipped.message);
            }
            for d in diagnostics {
                println!("{d}");
            }
            if nothing {
                println!("error: {nothing_message}.");
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
            for d in diagnostics {
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
