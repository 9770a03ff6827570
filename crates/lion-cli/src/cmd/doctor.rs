//! `lion doctor`: the CPU features found and the kernels picked for them, as JSON.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    let report = lion_core::cpu::report();
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
