//! `reconciler completion SHELL` and `reconciler manpages --dir DIR`: shell completions
//! (clap_complete) and man pages (clap_mangen), both from the command line's own definition,
//! so they never fall behind it.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. Install with, for bash,
    /// `reconciler completion bash > /etc/bash_completion.d/reconciler`.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
pub struct ManpagesArgs {
    /// Where to write reconciler.1 and reconciler-SUBCOMMAND.1 (made if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

pub fn completion(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    clap_complete::generate(args.shell, &mut command, "reconciler", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn manpages(args: ManpagesArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("making {}", args.dir.display()))?;
    let command = command.version(super::VERSION);
    let mut pages = vec![("reconciler".to_owned(), command.clone())];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let title = format!("reconciler-{}", sub.get_name());
        pages.push((title, sub.clone().version(super::VERSION)));
    }
    for (title, page) in pages {
        let path = args.dir.join(format!("{title}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).title(title).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
