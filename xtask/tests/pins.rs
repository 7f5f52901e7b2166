//! Which checksum a real build trusts. A run with `--spark-mirror` (any
//! mirror of Apache's archive, as on real AWS) must check the tarball
//! against the matrix's pin, never against the mirror's own `.sha512`: a
//! mirror that serves a different tarball with a matching checksum file
//! must fail the build, naming the pin.
//!
//! Needs root, like tests/provision.rs: the builds run on the local instance.

use std::{fs, path::Path, process::Command};

use xshell::Shell;
use xtask::{
    local::{self, mirror},
    project,
};

mod common;
const SPARK: &str = "3.5.3";

/// A copy of the matrix whose Spark pins `sha512`.
fn matrix_pinning(dir: &Path, sha512: &str) -> std::path::PathBuf {
    let mut matrix: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(project::matrix_file()).unwrap()).unwrap();
    let image = matrix["images"].as_array_mut().unwrap().iter_mut().find(|i| i["spark"]["version"] == SPARK).unwrap();
    image["spark"]["sha512"] = sha512.into();
    // As add-spark marks a pin it checked against Apache's KEYS (the
    // fingerprint apache/spark-docker checks 3.5.3's tarball with); real
    // builds refuse a pin without it.
    image["spark"]["verified"] = serde_json::json!({
        "keys": "https://downloads.apache.org/spark/KEYS",
        "fingerprint": "0A2D660358B6F6F8071FD16F6606986CF5A8447C",
        "signer": "test fixture"
    });
    let path = dir.join(format!("matrix-{}.json", &sha512[..8]));
    fs::write(&path, serde_json::to_string_pretty(&matrix).unwrap()).unwrap();
    path
}

#[test]
fn a_real_build_checks_the_matrix_pin_not_the_mirrors_checksum() {
    let dir = common::scratch("pins");
    let sh = Shell::new().unwrap();
    let venv = local::ensure_venv(&sh).unwrap();
    mirror::ensure_spark(&sh, &venv, SPARK, "hadoop3").unwrap();
    let good = mirror::tarball_path(&mirror::mirror_dir(), SPARK, "hadoop3");
    let tarball_sha = mirror::published_sha512(&good).unwrap();

    // A mirror whose own .sha512 is right for the tarball it serves.
    let mirror_root = dir.join("mirror");
    let served = mirror::tarball_path(&mirror_root, SPARK, "hadoop3");
    fs::create_dir_all(served.parent().unwrap()).unwrap();
    fs::hard_link(&good, &served).unwrap();
    fs::copy(format!("{}.sha512", good.display()), format!("{}.sha512", served.display())).unwrap();
    let server = mirror::MirrorServer::start(&venv, &mirror_root).unwrap();

    // The matrix pins another tarball: the mirror agrees with itself, not with the pin.
    let other_pin: String = tarball_sha.chars().rev().collect();
    for (pin, should_pass) in [(other_pin.as_str(), false), (tarball_sha.as_str(), true)] {
        let matrix = matrix_pinning(&dir, pin);
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args([
                "build-amis",
                "--local",
                "--preset",
                "spark-3.5",
                "--image",
                &format!("spark-{SPARK}"),
                "--virt",
                "hvm",
            ])
            .args(["--arch", "x86_64", "--region", "us-east-1", "--skip-smoke-test", "--spark-mirror", &server.url])
            .arg("--matrix")
            .arg(&matrix)
            .arg("--ami-list")
            .arg(dir.join(format!("ami-list-{should_pass}")))
            .output()
            .unwrap();
        let text = common::text(&output);
        assert_eq!(output.status.success(), should_pass, "pin {}…:\n{text}", &pin[..8]);
        if should_pass {
            assert!(
                text.contains("SHA-512 from packer/matrix.json (Apache's SHA-512)"),
                "the run must name the matrix pin as its checksum source:\n{text}"
            );
            let log_dir = text.lines().find_map(|l| l.split_once("; logs in ")).map(|(_, dir)| dir.trim()).unwrap();
            let log = fs::read_to_string(
                project::root().join(log_dir).join(format!("spark-{SPARK}-debian-12-hvm-x86_64.log")),
            )
            .unwrap();
            assert!(log.contains("verified (packer/matrix.json (Apache's SHA-512))"), "{log}");
        } else {
            assert!(
                text.contains("checksum mismatch")
                    && text.contains(&format!("packer/matrix.json (Apache's SHA-512) pins {pin}")),
                "the failure must name the matrix pin it did not match:\n{text}"
            );
        }
    }
}
