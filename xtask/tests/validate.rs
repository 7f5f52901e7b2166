//! `cargo xtask validate`: the repository itself passes offline (a tidy
//! test), and `--online` catches what EC2 no longer agrees with, against a
//! real moto server with AMIs the real Packer made.

use std::{fs, path::Path};

use xshell::cmd;
use xtask::local;

mod common;
use common::{emulator_shell, path_with_venv_aws, scratch, text, xtask};

#[test]
fn the_repository_validates_offline() {
    let output = xtask(&["validate"]).output().unwrap();
    assert!(output.status.success(), "validate failed on the checked-in tree:\n{}", text(&output));
    assert!(text(&output).contains(": ok"), "{}", text(&output));
}

fn read_id(tree: &Path, cell: &str) -> String {
    fs::read_to_string(tree.join(cell)).unwrap().trim().to_string()
}

fn swap(tree: &Path, a: &str, b: &str) {
    let (id_a, id_b) = (read_id(tree, a), read_id(tree, b));
    fs::write(tree.join(a), format!("{id_b}\n")).unwrap();
    fs::write(tree.join(b), format!("{id_a}\n")).unwrap();
}

#[test]
fn online_reports_what_ec2_no_longer_agrees_with() {
    let sh = emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let tree = scratch("validate-online").join("ami-list");
    let tree_arg = tree.to_str().unwrap();
    // --endpoint uses the aws CLI on PATH: the sandbox venv's.
    let path = path_with_venv_aws(&emulator);

    let built = xtask(&[
        "build-amis",
        "--no-provision",
        "--preset",
        "seed-2014",
        "--region",
        "us-east-1,us-west-2",
        "--endpoint",
        &endpoint,
        "--ami-list",
        tree_arg,
    ])
    .output()
    .unwrap();
    assert!(built.status.success(), "{}", text(&built));

    let validate = || {
        xtask(&[
            "validate",
            "--online",
            "--preset",
            "seed-2014",
            "--endpoint",
            &endpoint,
            "--ami-list",
            tree_arg,
            "--json",
        ])
        .env("PATH", &path)
        .output()
        .unwrap()
    };
    let clean = validate();
    assert!(clean.status.success(), "a freshly built tree must validate:\n{}", text(&clean));

    // Break it four ways.
    let deregistered = read_id(&tree, "base/us-east-1/hvm");
    let aws = emulator.aws();
    let (program, endpoint_url) = (&aws.program, aws.endpoint.clone().unwrap());
    cmd!(
        sh,
        "{program} --endpoint-url {endpoint_url} --region us-east-1 ec2 deregister-image --image-id {deregistered}"
    )
    .quiet()
    .read()
    .unwrap();
    swap(&tree, "spark-3.5.3/us-east-1/pv", "spark-3.5.3/us-west-2/pv");
    swap(&tree, "base/us-west-2/hvm", "base/us-west-2/pv");
    let untagged = read_id(&tree, "spark-3.5.3/us-east-1/hvm");
    cmd!(sh, "{program} --endpoint-url {endpoint_url} --region us-east-1 ec2 delete-tags --resources {untagged} --tags Key=managed-by")
        .quiet()
        .read()
        .unwrap();

    let broken = validate();
    assert!(!broken.status.success(), "validate must fail:\n{}", text(&broken));
    let report: serde_json::Value = serde_json::from_slice(&broken.stdout).unwrap();
    let problems: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}:{}: {}", p["path"].as_str().unwrap(), p["line"], p["message"].as_str().unwrap()))
        .collect();
    let expect = |cell: &str, message: &str| {
        // Paths are shown relative to the repository root.
        let prefix = format!("validate-online-{}/ami-list/{cell}:1: ", std::process::id());
        assert!(
            problems.iter().any(|p| p.contains(&prefix) && p.contains(message)),
            "expected {prefix}...{message} in {problems:#?}"
        );
    };
    expect("base/us-east-1/hvm", &format!("{deregistered} does not exist in us-east-1"));
    expect("spark-3.5.3/us-east-1/pv", "recorded in the wrong region");
    expect("spark-3.5.3/us-west-2/pv", "recorded in the wrong region");
    expect("base/us-west-2/hvm", "is paravirtual but its file says hvm");
    expect("base/us-west-2/pv", "is hvm but its file says pv");
    expect("spark-3.5.3/us-east-1/hvm", "lacks the factory's tag managed-by=spark-packer");
    assert_eq!(problems.len(), 6, "nothing else is reported: {problems:#?}");
}
