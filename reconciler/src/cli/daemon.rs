//! `reconciler daemon --config FILE`: continuous reconciliation (see `reconciler::daemon`).
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use reconciler::daemon::{self, config};
use reconciler_core::limits;

#[derive(Args)]
pub struct DaemonArgs {
    /// The node's configuration (YAML; every field and its default: docs/daemon.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Log lines as text, or as one JSON object each (under systemd with journald: the
    /// journal's own fields instead).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: tracing::Level,
}

/// Logs to journald (native protocol: a priority per line, fields such as `REVISION=` and
/// `SERVICE=`) when stderr is journald's stream, as systemd says in `JOURNAL_STREAM`; else
/// to stderr, as `--log-format` says.
fn start_logging(args: &DaemonArgs) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let level = tracing_subscriber::filter::LevelFilter::from_level(args.log_level);
    if stderr_is_journal() {
        // The fields as they are named (`revision` is `REVISION=`), without a prefix; info at
        // 6 (informational) as journald files a stream's lines, not tracing-journald's 5.
        let priorities = tracing_journald::PriorityMappings {
            info: tracing_journald::Priority::Informational,
            debug: tracing_journald::Priority::Debug,
            ..tracing_journald::PriorityMappings::new()
        };
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal.with_field_prefix(None).with_priority_mappings(priorities);
                tracing_subscriber::registry().with(level).with(journal).init();
                return;
            }
            Err(error) => eprintln!("journald: {error}; logging to stderr"),
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (`DEVICE:INODE`, see
/// systemd.exec(5)): the daemon's own stderr, not one a child inherited the variable with.
fn stderr_is_journal() -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().map(std::fs::File::from);
    let Ok(meta) = stderr.and_then(|file| file.metadata()) else { return false };
    named.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
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
    start_logging(&args);
    // SAFETY: no other thread exists yet (logging starts none; the runtime starts below).
    unsafe { reconciler_core::source::set_server_timeouts(config.source.timeouts) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stopped = runtime.block_on(daemon::run(&args.config, config));
    // Blocking work still under way (a fetch, a notification's attempt) is not waited for:
    // a stop takes what the daemon's own stop takes, not a receiver's timeout more.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    stopped?;
    Ok(ExitCode::SUCCESS)
}
