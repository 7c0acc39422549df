//! The `reconciler` command. Each subcommand lives in `cli/`; the work is in the library.
//!
//! Exit codes: 0 success (for `plan --detailed-exitcode`: no changes); 1 an error, an invalid
//! definition or a stale plan; 2 `plan --detailed-exitcode` found changes.
mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
