//! `cargo xtask clean-old-amis`: not yet implemented (issue 5).

use anyhow::{bail, Result};
use xshell::Shell;

/// Deregister superseded factory AMIs and their snapshots (not yet implemented).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn main(_sh: &Shell, _args: &Args) -> Result<()> {
    bail!("`clean-old-amis` is not yet implemented: it deletes nothing yet")
}
