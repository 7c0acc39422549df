//! `reconciler uninstall`: detach the programs, remove every pin.
use std::process::ExitCode;

use clap::Args;
use reconciler::dataplane::Dataplane;

use super::PinArgs;

#[derive(Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pin: PinArgs,
}

pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    Dataplane::uninstall(&args.pin.pin_path)?;
    println!("Uninstalled the data plane at {}.", args.pin.pin_path.display());
    Ok(ExitCode::SUCCESS)
}
