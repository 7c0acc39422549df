//! `reconciler validate [PATH...]`: schema and rules, every error at once. No root, no BPF.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use reconciler::{
    source::{self, SourceFile, SourceSpec},
    validate::{validate, Diagnostic, Input},
};
use serde_json::json;

use super::PolicyArgs;

#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories (searched for .yaml/.yml files); default: the current directory.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
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
    let mut files: Vec<SourceFile> = Vec::new();
    for path in &paths {
        if path.is_dir() {
            files.extend(source::fetch(&SourceSpec::Dir(path.clone()))?.files);
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.push(SourceFile { path: path.display().to_string(), text });
        }
    }
    let inputs: Vec<Input<'_>> =
        files.iter().map(|f| Input { path: &f.path, text: &f.text }).collect();
    let result = validate(&inputs, &args.policy.policy());
    let (services, diagnostics) = match &result {
        Ok(services) => (services.len(), &[][..]),
        Err(diagnostics) => (0, diagnostics.as_slice()),
    };
    match args.format {
        Format::Text => {
            for d in diagnostics {
                println!("{d}");
            }
            if diagnostics.is_empty() {
                println!("OK: {services} service(s) in {} file(s).", files.len());
            } else {
                println!("{} error(s) in {} file(s).", diagnostics.len(), files.len());
            }
        }
        Format::Json => {
            let report = json!({
                "format_version": 1,
                "valid": diagnostics.is_empty(),
                "files": files.len(),
                "services": services,
                "errors": diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Github => {
            for d in diagnostics {
                println!("{}", github_annotation(d));
            }
        }
    }
    Ok(if diagnostics.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(super::FAILURE) })
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
