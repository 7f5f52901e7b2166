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

/// A Shell carrying the dummy credentials, for aws CLI calls to the emulator.
pub fn emulator_shell() -> xshell::Shell {
    let sh = xshell::Shell::new().unwrap();
    for (key, value) in local::DUMMY_CREDENTIALS {
        sh.set_var(key, value);
    }
    sh
}

/// PATH with the sandbox venv's aws CLI first: `--endpoint` runs take `aws`
/// from PATH, and a fresh machine has no other.
pub fn path_with_venv_aws(emulator: &local::Emulator) -> String {
    let venv_bin = emulator.aws().program.parent().unwrap().to_path_buf();
    format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// A copy of packer/matrix.json in `dir` whose PV source filter matches
/// nothing, so the PV builds fail and the HVM ones do not.
pub fn matrix_with_unmatched_pv_source(dir: &std::path::Path) -> PathBuf {
    let mut matrix: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(project::matrix_file()).unwrap()).unwrap();
    let pv = matrix["os_families"].as_array_mut().unwrap().iter_mut().find(|o| o["name"] == "amzn-pv").unwrap();
    pv["source_amis"][0]["name"] = "no-such-source-image-*".into();
    let path = dir.join("matrix.json");
    fs::write(&path, serde_json::to_string_pretty(&matrix).unwrap()).unwrap();
    path
}
