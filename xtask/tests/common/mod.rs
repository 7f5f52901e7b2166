//! Helpers the integration tests share: a scratch directory under target/,
//! the xtask binary with dummy credentials, and the seed matrix's regions.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
};

use xtask::{local, project};

pub const SEED_REGIONS: [&str; 8] = [
    "ap-northeast-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "eu-west-1",
    "sa-east-1",
    "us-east-1",
    "us-west-1",
    "us-west-2",
];

/// A fresh directory for one test under target/, so runs never share state
/// and nothing is written outside the build tree.
pub fn scratch(name: &str) -> PathBuf {
    let dir = project::target_dir().join("test-scratch").join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The xtask binary with the sandbox's dummy credentials, never real ones.
pub fn xtask(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(args);
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    command
}

/// stdout then stderr, for assertion messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
