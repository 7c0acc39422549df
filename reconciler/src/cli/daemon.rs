//! `reconciler daemon --config FILE`: continuous reconciliation (see `reconciler::daemon`).
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use reconciler::daemon::{self, config};
use reconciler_core::limits;

#[derive(Args)]
pub struct DaemonArgs {
    /// The node's configuration (YAML; see the README for every field and its default).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: tracing::Level,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let file = args.config.display().to_string();
    let text = limits::read_to_string(&args.config, limits::MAX_FILE_BYTES as u64)
        .with_context(|| format!("reading {file}"))?;
    // Checked before anything is touched: a bad configuration changes nothing.
    let config = match config::parse(&file, &text) {
        Ok(config) => config,
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            anyhow::bail!(
                "{} error(s) in the configuration; nothing was started",
                diagnostics.len()
            );
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // SAFETY: no other thread exists yet (logging starts none; the runtime starts below).
    unsafe { reconciler_core::source::set_server_timeouts(config.source.timeouts) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(&args.config, config))?;
    Ok(ExitCode::SUCCESS)
}
