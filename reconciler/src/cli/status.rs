//! `reconciler status`: what the live maps say about themselves.
use std::process::ExitCode;

use clap::Args;
use reconciler::{
    dataplane::{self, Dataplane},
    time::rfc3339_utc,
};
use serde_json::json;

use super::{Output, PinArgs};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pin: PinArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let pin_path = &args.pin.pin_path;
    if !dataplane::is_installed(pin_path) {
        match args.output {
            Output::Text => println!("No data plane is installed at {}.", pin_path.display()),
            Output::Json => println!(
                "{}",
                json!({"format_version": 1, "installed": false, "pin_path": pin_path})
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let live = Dataplane::open(pin_path)?.read_live()?;
    let status = &live.status;
    let state = &live.state;
    match args.output {
        Output::Text => {
            println!("Data plane:   {} (cgroup id {})", pin_path.display(), status.cgroup_id);
            println!("Revision:     {}", status.revision.as_deref().unwrap_or("none applied"));
            println!("Generation:   {}", status.generation);
            match status.applied_at_unix {
                Some(t) => println!("Applied at:   {}", rfc3339_utc(t)),
                None => println!("Applied at:   never"),
            }
            println!(
                "Entries:      {} services, {} backends, {} slots (active set {}{})",
                state.services.len(),
                state.backends.len(),
                state.slots.len(),
                status.active_set,
                if status.standby_dirty { ", standby being repaired" } else { "" }
            );
        }
        Output::Json => {
            let report = json!({
                "format_version": 1,
                "installed": true,
                "pin_path": pin_path,
                "revision": status.revision,
                "generation": status.generation,
                "applied_at": status.applied_at_unix.map(rfc3339_utc),
                "applied_at_unix": status.applied_at_unix,
                "cgroup_id": status.cgroup_id,
                "active_set": status.active_set,
                "standby_dirty": status.standby_dirty,
                "services": state.services.len(),
                "backends": state.backends.len(),
                "slots": state.slots.len(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
