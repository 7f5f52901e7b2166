//! Rebuild only what changed: against a real EC2 emulator, API-only, a build
//! whose recorded AMIs carry its current input hash is skipped, and one
//! whose source AMI has a newer version, or whose AMI was deregistered by
//! hand, is built again with the reason in the report.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use xshell::Shell;
use xtask::{local, project};

mod common;
use common::scratch;

/// A copy of the matrix whose HVM x86_64 Amazon Linux 2023 builds start from
/// our own images named `newsrc-*`.
fn matrix_with_own_source(dir: &Path) -> std::path::PathBuf {
    let mut matrix: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(project::matrix_file()).unwrap()).unwrap();
    let al2023 = matrix["os_families"].as_array_mut().unwrap().iter_mut().find(|o| o["name"] == "al2023").unwrap();
    let sources = al2023["source_amis"].as_array_mut().unwrap();
    let x86 = sources.iter_mut().find(|s| s["virt"] == "hvm" && s["arch"] == "x86_64").unwrap();
    x86["name"] = "newsrc-*-x86_64".into();
    x86["owners"] = serde_json::json!(["self"]);
    let path = dir.join("matrix.json");
    fs::write(&path, serde_json::to_string_pretty(&matrix).unwrap()).unwrap();
    path
}

fn aws(emulator: &local::Emulator, args: &[&str]) -> serde_json::Value {
    let mut command = Command::new(&emulator.aws().program);
    command
        .args(["--endpoint-url", &emulator.endpoint(), "--region", "us-east-1", "--output", "json", "ec2"])
        .args(args);
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

/// A new version of the source image: a copy of moto's Amazon Linux 2023 under our name.
fn publish_source(emulator: &local::Emulator, name: &str) -> String {
    let stock = aws(
        emulator,
        &["describe-images", "--owners", "amazon", "--filters", "Name=name,Values=al2023-ami-2023.*-x86_64"],
    );
    let stock_id = stock["Images"][0]["ImageId"].as_str().unwrap().to_string();
    let copy =
        aws(emulator, &["copy-image", "--source-region", "us-east-1", "--source-image-id", &stock_id, "--name", name]);
    copy["ImageId"].as_str().unwrap().to_string()
}

fn build(emulator: &local::Emulator, ami_list: &Path, matrix: &Path) -> (Output, serde_json::Value) {
    build_in(emulator, ami_list, matrix, "us-east-1,eu-west-1")
}

fn build_in(emulator: &local::Emulator, ami_list: &Path, matrix: &Path, regions: &str) -> (Output, serde_json::Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["build-amis", "--no-provision", "--preset", "seed-2014", "--virt", "hvm", "--json"])
        .args(["--region", regions, "--endpoint", &emulator.endpoint()])
        .arg("--matrix")
        .arg(matrix)
        .arg("--ami-list")
        .arg(ami_list);
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "build-amis failed:\n{}", common::text(&output));
    let report = serde_json::from_slice(&output.stdout).unwrap();
    (output, report)
}

/// Build name -> (status, why it was built).
fn outcome(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let why: Vec<&str> = b["why_built"].as_array().into_iter().flatten().filter_map(|w| w.as_str()).collect();
            (b["name"].as_str().unwrap().to_string(), b["status"].as_str().unwrap().to_string(), why.join("; "))
        })
        .collect()
}

/// Instances ever launched in the build region (copy strategy: the only one).
fn launches(emulator: &local::Emulator) -> usize {
    let found = aws(emulator, &["describe-instances"]);
    found["Reservations"].as_array().into_iter().flatten().map(|r| r["Instances"].as_array().map_or(0, Vec::len)).sum()
}

#[test]
fn only_what_changed_is_built_again() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("incremental");
    let (ami_list, matrix) = (dir.join("ami-list"), matrix_with_own_source(&dir));
    let first_source = publish_source(&emulator, "newsrc-1-x86_64");

    let (_, first) = build(&emulator, &ami_list, &matrix);
    assert!(outcome(&first).iter().all(|(_, status, _)| status == "ok"), "{first:#}");

    // Nothing changed: both builds are current, with the recorded IDs.
    let (second_output, second) = build(&emulator, &ami_list, &matrix);
    assert!(outcome(&second).iter().all(|(_, status, _)| status == "current"), "{second:#}");
    let summary = String::from_utf8_lossy(&second_output.stderr);
    assert!(summary.contains("current"), "{summary}");
    let base_cell = ami_list.join("base/eu-west-1/hvm");
    let base_eu = fs::read_to_string(&base_cell).unwrap();
    assert_eq!(second["builds"][0]["amis"]["eu-west-1"].as_str().map(|id| format!("{id}\n")), Some(base_eu.clone()));

    // A newer source image: every build on it is built again, and says why.
    std::thread::sleep(std::time::Duration::from_secs(2)); // creation dates have 1 s resolution
    let second_source = publish_source(&emulator, "newsrc-2-x86_64");
    // validate --online names the recorded images the new source made stale.
    let validate =
        common::xtask(&["validate", "--online", "--preset", "seed-2014", "--endpoint", &emulator.endpoint()])
            .arg("--matrix")
            .arg(&matrix)
            .arg("--ami-list")
            .arg(&ami_list)
            .output()
            .unwrap();
    let said = String::from_utf8_lossy(&validate.stdout);
    for image in ["base", "spark-3.5.3"] {
        let stale = format!(
            "note: stale: {image}/us-east-1/hvm was built from {first_source}; the newest newsrc-*-x86_64 is now {second_source}"
        );
        assert!(said.contains(&stale), "{}", common::text(&validate));
    }
    let (_, third) = build(&emulator, &ami_list, &matrix);
    for (name, status, why) in outcome(&third) {
        assert_eq!(status, "ok", "{name} was not built again: {third:#}");
        assert!(why.contains(&format!("source AMI {first_source} → {second_source}")), "{name}: {why}");
    }
    assert_ne!(fs::read_to_string(&base_cell).unwrap(), base_eu);
    // Packer's filter named the resolved source exactly, not the pattern.
    let logs = project::target_dir().join("packer-logs").join(third["run_id"].as_str().unwrap());
    for build in ["base-hvm-x86_64", "spark-3.5.3-hvm-x86_64"] {
        let vars: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(logs.join(format!("{build}.pkrvars.json"))).unwrap()).unwrap();
        assert_eq!(vars["source_ami_name"], "newsrc-2-x86_64", "{build}");
    }

    // An AMI deregistered by hand: copied again from its build's other AMI, no launch.
    let launched = launches(&emulator);
    let gone = fs::read_to_string(&base_cell).unwrap().trim().to_string();
    let mut deregister = Command::new(&emulator.aws().program);
    deregister.args(["--endpoint-url", &emulator.endpoint(), "--region", "eu-west-1", "ec2", "deregister-image"]);
    deregister.args(["--image-id", &gone]).envs(local::DUMMY_CREDENTIALS);
    assert!(deregister.status().unwrap().success());
    // The dry run says so first, build by build.
    let mut dry = Command::new(env!("CARGO_BIN_EXE_xtask"));
    dry.args(["build-amis", "--no-provision", "--preset", "seed-2014", "--virt", "hvm", "--dry-run"])
        .args(["--region", "us-east-1,eu-west-1", "--endpoint", &emulator.endpoint()])
        .arg("--matrix")
        .arg(&matrix)
        .arg("--ami-list")
        .arg(&ami_list)
        .envs(local::DUMMY_CREDENTIALS);
    let plan = common::text(&dry.output().unwrap());
    assert!(
        plan.contains(&format!("copy to eu-west-1 (no launch): base/eu-west-1/hvm: {gone} is not a factory image")),
        "{plan}"
    );
    assert_eq!(plan.matches("current: skip").count(), 1, "{plan}");
    let (_, fourth) = build(&emulator, &ami_list, &matrix);
    let fourth = outcome(&fourth);
    assert_eq!(fourth[0].0, "base-hvm-x86_64");
    assert_eq!(fourth[0].1, "ok", "{fourth:?}");
    assert!(fourth[0].2.contains(&format!("{gone} is not a factory image in eu-west-1")), "{fourth:?}");
    assert_eq!(fourth[1].1, "current", "the Spark build did not change: {fourth:?}");
    let copied = fs::read_to_string(&base_cell).unwrap();
    assert_ne!(copied.trim(), gone);
    assert_eq!(launches(&emulator), launched, "a re-copy launched an instance");

    // A region added: both builds copy their AMI there, no launch.
    let (_, fifth) = build_in(&emulator, &ami_list, &matrix, "us-east-1,eu-west-1,us-west-2");
    for (name, status, why) in outcome(&fifth) {
        assert_eq!(status, "ok", "{name}: {fifth:#}");
        assert!(why.contains("us-west-2/hvm: nothing recorded"), "{name}: {why}");
    }
    assert!(ami_list.join("base/us-west-2/hvm").exists() && ami_list.join("spark-3.5.3/us-west-2/hvm").exists());
    assert_eq!(launches(&emulator), launched, "a copy launched an instance");
    let (_, sixth) = build_in(&emulator, &ami_list, &matrix, "us-east-1,eu-west-1,us-west-2");
    assert!(outcome(&sixth).iter().all(|(_, status, _)| status == "current"), "{sixth:#}");
}
