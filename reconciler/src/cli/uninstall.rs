//! `reconciler uninstall`: detach the programs, remove every pin.
use std::process::ExitCode;

use clap::Args;
use reconciler::dataplane::{Dataplane, Uninstalled};

use super::PinArgs;

#[derive(Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pin: PinArgs,
}

pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let pin_path = args.pin.pin_path.display();
    match Dataplane::uninstall(&args.pin.pin_path)? {
        Uninstalled::NothingThere => println!("Nothing is installed at {pin_path}."),
        Uninstalled::Removed => println!("Uninstalled the data plane at {pin_path}."),
        // The data plane is gone, which is what was asked; the rest is someone else's.
        Uninstalled::KeptDirectory { others } => {
            let others: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
            println!(
                "Uninstalled the data plane at {pin_path}; kept the directory, which also \
                 holds {}.",
                others.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
