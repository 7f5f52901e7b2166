//! `cargo xtask validate`: not yet implemented (issue 4).

use anyhow::{bail, Result};
use xshell::Shell;

/// Check templates, provisioners and ami-list (not yet implemented).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn main(_sh: &Shell, _args: &Args) -> Result<()> {
    bail!("`validate` is not yet implemented; until it is, run `packer validate` and `shellcheck` by hand")
}
