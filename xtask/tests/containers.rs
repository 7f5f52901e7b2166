//! The docker platform end to end: `build-amis --local --platform docker`
//! starts its own dockerd (no bridge, no iptables rules) and registry on
//! loopback, imports the local instance's Debian rootfs, runs the real
//! provisioners in containers through Packer's docker builder, pushes, pulls
//! the Spark image back by digest and runs SparkPi on a master and a worker
//! in two containers. After every run nothing of it may be left: no dockerd,
//! no registry, no containers, no bridge, no iptables chain, no mount.
//!
//! Needs root, docker.io and docker-registry (dev/setup), and what
//! provision.rs needs (the bookworm rootfs, the Spark 3.5.3 mirror).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    sync::Mutex,
};

use xshell::{cmd, Shell};
use xtask::{
    images_list,
    local::{self, docker, mirror},
    project,
};

mod common;
const SPARK: &str = "3.5.3";

/// One run at a time, so that each sees the host's network as only it changed it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `build-amis --local --platform docker --preset spark-3.5` for
/// x86_64, and checks that the process left nothing behind.
fn build_images(images_list: &Path, images: &str, extra: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = host_network();
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build-amis", "--local", "--platform", "docker", "--preset", "spark-3.5", "--arch", "x86_64"])
        .args(["--image", images, "--json", "--images-list"])
        .arg(images_list)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the xtask binary");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let left = docker::leftovers_of(pid);
    assert!(left.is_empty(), "the sandbox's engine left: {left:#?}\n{stderr}");
    assert_eq!(host_network(), before, "the host's links or iptables changed\n{stderr}");
    assert!(!host_network().contains("docker0"), "a docker0 bridge exists");
    output
}

/// The host's network links and every iptables table's rules: what a plain
/// dockerd would change (docker0, br-*, DOCKER chains, FORWARD DROP).
fn host_network() -> String {
    let sh = Shell::new().unwrap();
    let links = cmd!(sh, "ip -o link show").read().unwrap();
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    let mut state = names.join("\n");
    for table in ["filter", "nat"] {
        state.push('\n');
        state.push_str(&cmd!(sh, "iptables -t {table} -S").ignore_stderr().read().unwrap_or_default());
    }
    state
}

fn json_report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("--json printed no report ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

fn build<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["builds"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

fn build_log(build: &serde_json::Value) -> String {
    fs::read_to_string(project::root().join(build["log"].as_str().unwrap())).unwrap()
}

#[test]
fn images_are_pushed_pinned_by_digest_and_run_spark_across_two_containers() {
    let dir = common::scratch("containers-ok");
    let list = dir.join("images-list");
    let output = build_images(&list, &format!("base,spark-{SPARK}"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build-amis --platform docker failed:\n{stderr}");
    let report = json_report(&output);
    for (name, image) in [("base-debian-12-x86_64", "base"), ("spark-3.5.3-debian-12-x86_64", "spark-3.5.3")] {
        let result = build(&report, name);
        assert_eq!(result["status"], "ok", "{result:#}");
        let reference = result["reference"].as_str().unwrap();
        let registry = report["registry"].as_str().unwrap();
        assert!(reference.starts_with(&format!("{registry}/{image}@sha256:")), "{reference} not in {registry}");
        // Recorded only from the digest the registry gave, in its own file.
        assert_eq!(images_list::read(&list, image, "debian-12-x86_64").unwrap().as_deref(), Some(reference));
        // Labelled with its input hash, as an AMI is tagged with it.
        let inputs = result["inputs"].as_str().unwrap_or_default();
        assert!(inputs.len() == 16 && inputs.bytes().all(|b| b.is_ascii_hexdigit()), "{result:#}");
        let log = build_log(result);
        // The same provisioners as the AMI, in a container, as root.
        assert!(log.contains("spark-packer: OS: debian 12"), "{log}");
        assert!(log.contains("logged in as root; provisioning as root"), "{log}");
    }
    let spark = build(&report, "spark-3.5.3-debian-12-x86_64");
    let reference = spark["reference"].as_str().unwrap();
    let log = build_log(spark);
    assert!(log.contains("smoke test: Pi is roughly 3.1"), "the in-build smoke test:\n{log}");
    // The pushed image, pulled back by digest with its local tag gone first.
    assert!(log.contains(&format!("spark-packer: cluster check: pulled {reference}\n")), "{log}");
    assert!(log.contains("cluster check: docker run IMAGE spark-submit --version: version 3.5.3"), "{log}");
    assert!(log.contains("cluster check: the worker registered with the master"), "{log}");
    let pi = spark["cluster_check"].as_str().unwrap();
    assert!(pi.contains("two containers: Pi is roughly 3.1"), "{pi}");
    // No multi-architecture list from one architecture.
    assert_eq!(report["manifest_lists"], serde_json::json!([]));

    // clean-old-images never picks what images-list records, however strict.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cleaner = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["clean-old-images", "--local", "--keep", "1", "--min-age", "0s", "--json", "--images-list"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(cleaner.status.success(), "{}", String::from_utf8_lossy(&cleaner.stderr));
    let decisions: Vec<serde_json::Value> = serde_json::from_slice(&cleaner.stdout).unwrap();
    for result in report["builds"].as_array().unwrap() {
        let tag = result["tag"].as_str().unwrap();
        let mine = decisions
            .iter()
            .find(|d| tag.ends_with(&format!("{}:{}", d["repository"].as_str().unwrap(), d["tag"].as_str().unwrap())));
        let mine = mine.unwrap_or_else(|| panic!("{tag} not listed: {decisions:#?}"));
        assert_eq!(
            (&mine["delete"], &mine["why"]),
            (&false.into(), &"keep: recorded in images-list".into()),
            "{mine:#}"
        );
    }
}

#[test]
fn a_corrupted_spark_tarball_fails_the_container_build_and_records_nothing() {
    let dir = common::scratch("containers-corrupted");
    let sh = Shell::new().unwrap();
    let venv = local::ensure_venv(&sh).unwrap();
    mirror::ensure_spark(&sh, &venv, SPARK, "hadoop3").unwrap();
    let good = mirror::tarball_path(&mirror::mirror_dir(), SPARK, "hadoop3");
    let mirror_root = dir.join("mirror");
    let tarball = mirror::tarball_path(&mirror_root, SPARK, "hadoop3");
    fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    let mut bytes = fs::read(&good).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&tarball, bytes).unwrap();
    // The mirror still publishes the good tarball's checksum.
    fs::copy(format!("{}.sha512", good.display()), format!("{}.sha512", tarball.display())).unwrap();

    let list = dir.join("images-list");
    let output = build_images(&list, &format!("spark-{SPARK}"), &["--local-mirror", mirror_root.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a corrupted tarball must fail the run:\n{stderr}");
    assert!(stderr.contains("1 of 1 container builds failed"), "{stderr}");
    let report = json_report(&output);
    let spark = build(&report, "spark-3.5.3-debian-12-x86_64");
    assert_eq!(spark["status"], "failed");
    // The same error as the AMI build's (provision.rs), from the same spark.sh.
    let error = spark["error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch for spark-3.5.3-bin-hadoop3.tgz"), "{error}");
    assert_eq!(spark["reference"], serde_json::Value::Null, "a failed build was pushed: {spark:#}");
    assert!(!list.exists(), "a failed build recorded a digest");
}

#[test]
fn an_interrupted_run_stops_its_engine_and_registry_and_records_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = host_network();
    let dir = common::scratch("containers-interrupted");
    let list = dir.join("images-list");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build-amis", "--local", "--platform", "docker", "--preset", "spark-3.5", "--arch", "x86_64"])
        .args(["--image", "base", "--images-list"])
        .arg(&list)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the xtask binary");
    let pid = child.id();
    // Ctrl-C once the build runs in its container; read on to the end, so
    // the run never writes to a closed pipe.
    let mut said = String::new();
    let mut interrupted = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if !interrupted && line.contains("start  base-debian-12-x86_64") {
            std::thread::sleep(std::time::Duration::from_secs(15));
            Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
            interrupted = true;
        }
    }
    assert!(interrupted, "the build never started:\n{said}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130:\n{said}");
    let left = docker::leftovers_of(pid);
    assert!(left.is_empty(), "the sandbox's engine left: {left:#?}\n{said}");
    assert_eq!(host_network(), before, "the host's links or iptables changed");
    assert!(!list.exists(), "an interrupted build recorded a digest");
}
