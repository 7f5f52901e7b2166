//! The switchboard: parse, make one Shell at the repo root, call one module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{add_spark, bench, build_amis, clean_old_amis, clean_old_images, project, publish, validate};

/// spark-packer: build, check and tidy EC2 AMIs for Spark clusters.
///
/// New here? `cargo xtask build-amis --local` builds the default preset
/// (Debian 13, base and Spark, x86_64 and arm64) against a local EC2
/// emulator, with no AWS account. README.md
/// says more; every command has --help with an example.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true,
    after_help = "New here? `cargo xtask build-amis --local` needs no AWS account. \
                  README.md says more; every command's --help has an example."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    BuildAmis(build_amis::Args),
    Validate(validate::Args),
    CleanOldAmis(clean_old_amis::Args),
    CleanOldImages(clean_old_images::Args),
    Bench(bench::Args),
    Publish(publish::Args),
    AddSpark(add_spark::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 130 = 128 + SIGINT, as shells report an interrupted command.
            if xtask::interrupt::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(project::root());
    // Packer's checkpoint phones HashiCorp on every run; a build farm talks to
    // EC2 and nothing else.
    sh.set_var("CHECKPOINT_DISABLE", "1");
    match cli.command {
        Command::BuildAmis(args) => build_amis::main(&sh, &args),
        Command::Validate(args) => validate::main(&sh, &args),
        Command::CleanOldAmis(args) => clean_old_amis::main(&sh, &args),
        Command::CleanOldImages(args) => clean_old_images::main(&sh, &args),
        Command::Bench(args) => bench::main(&sh, &args),
        Command::Publish(args) => publish::main(&sh, &args),
        Command::AddSpark(args) => add_spark::main(&sh, &args),
    }
}
