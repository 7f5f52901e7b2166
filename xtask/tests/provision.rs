//! Provisioned builds end to end: `build-amis --local` runs the real
//! provisioners (scripts/) through the real Packer over SSH on local
//! instances (overlays of a cached Debian rootfs, sshd on loopback), while a
//! real EC2 emulator registers the AMIs. Spark comes from the local mirror
//! built from the pyspark sdist, or from a broken copy of it that a test makes.
//!
//! Needs root, debootstrap and network access to deb.debian.org and PyPI the
//! first time; the rootfs and the mirror are cached under target/local/ and
//! shared by every test. After each build, nothing it started may be left:
//! no mounts, no processes inside its instances, no instance directories.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use xshell::{cmd, Shell};
use xtask::{
    local::{self, instance, mirror},
    project,
};

mod common;
const SPARK: &str = "3.5.3";
/// The preset of the Spark 3.5 line: Debian 12, logged in as admin.
const PRESET: &str = "spark-3.5";
const BASE_BUILD: &str = "base-debian-12-hvm-x86_64";
const SPARK_BUILD: &str = "spark-3.5.3-debian-12-hvm-x86_64";
const SLOT: &str = "hvm.debian-12";

fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("provision-{name}"))
}

/// Runs `build-amis --local` for hvm x86_64 in us-east-1 and checks that the
/// process left nothing behind.
fn build_amis(ami_list: &Path, images: &str, extra: &[&str]) -> Output {
    build_amis_with_env(ami_list, images, extra, &[])
}

fn build_amis_with_env(ami_list: &Path, images: &str, extra: &[&str], env: &[(&str, &Path)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build-amis", "--local", "--preset", PRESET, "--image", images, "--virt", "hvm", "--arch", "x86_64"])
        .args(["--region", "us-east-1", "--ami-list"])
        .arg(ami_list)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the xtask binary");
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_nothing_left_behind(pid, &output);
    output
}

/// No mount, process or directory of any instance the xtask process `pid` made.
fn assert_nothing_left_behind(pid: u32, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mine = |path: &Path| path.file_name().is_some_and(|n| n.to_string_lossy().contains(&format!("-{pid}-")));
    let instances = instance::instances_dir();
    let mounts: Vec<String> =
        instance::mounts_under(&instances).into_iter().filter(|m| m.contains(&format!("-{pid}-"))).collect();
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}\n{stderr}");
    // Rooted in one of its instances, even one whose directory is gone.
    let processes: Vec<(u32, String)> = instance::processes_rooted_under(&instances)
        .into_iter()
        .filter_map(|p| Some((p, fs::read_link(format!("/proc/{p}/root")).ok()?.display().to_string())))
        .filter(|(_, root)| root.contains(&format!("-{pid}-")))
        .collect();
    assert!(processes.is_empty(), "processes left in instances: {processes:?}\n{stderr}");
    let dirs: Vec<PathBuf> = fs::read_dir(&instances)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| mine(p)).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "instance directories left behind: {dirs:?}\n{stderr}");
}

fn json_report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("--json printed no report ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// The saved report named on the summary's last line (`report: PATH`).
fn saved_report(summary: &str) -> serde_json::Value {
    let path = summary.lines().find_map(|l| l.strip_prefix("report: ")).unwrap_or_else(|| panic!("{summary}"));
    serde_json::from_str(&fs::read_to_string(project::root().join(path)).unwrap()).unwrap()
}

fn build<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["builds"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

fn build_log(build: &serde_json::Value) -> String {
    fs::read_to_string(project::root().join(build["log"].as_str().unwrap())).unwrap()
}

/// The cached mirror tarball, built from the pyspark sdist if needed.
fn good_tarball() -> PathBuf {
    let sh = Shell::new().unwrap();
    let venv = local::ensure_venv(&sh).unwrap();
    mirror::ensure_spark(&sh, &venv, SPARK, "hadoop3").unwrap();
    mirror::tarball_path(&mirror::mirror_dir(), SPARK, "hadoop3")
}

#[test]
fn base_and_spark_are_provisioned_smoke_tested_and_recorded() {
    let dir = scratch("ok");
    let ami_list = dir.join("ami-list");
    let output = build_amis(&ami_list, &format!("base,spark-{SPARK}"), &["--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build-amis failed:\n{stderr}");
    let report = json_report(&output);
    assert_eq!(report["provisioned"], true);
    assert_eq!(report["smoke_test"], true);
    let source = &report["downloads"][format!("spark-{SPARK}")]["spark"];
    assert!(source["sha512_source"].as_str().unwrap().contains("not Apache's"), "{report:#}");

    for (name, image) in [(BASE_BUILD, "base".to_string()), (SPARK_BUILD, format!("spark-{SPARK}"))] {
        let build = build(&report, name);
        assert_eq!(build["status"], "ok", "{build:#}");
        let id = build["amis"]["us-east-1"].as_str().unwrap();
        let recorded = fs::read_to_string(ami_list.join(&image).join("us-east-1").join(SLOT)).unwrap();
        assert_eq!(recorded, format!("{id}\n"), "{image}: the ami-list holds another ID");
        let log = build_log(build);
        assert!(log.contains("spark-packer: base: done"), "{name}: base.sh did not finish:\n{log}");
        // The machine we ship: Debian 12 (the family's os-release), logged
        // into as admin, the scripts run as root through sudo.
        assert!(log.contains("spark-packer: OS: debian 12 (debian family): Debian GNU/Linux 12 (bookworm)"), "{log}");
        let instance = "spark-packer: instance: x86_64; logged in as admin; provisioning as root through sudo";
        assert!(log.contains(instance), "{name}: not provisioned as admin through sudo:\n{log}");
        assert!(log.contains(r#"Adding tag: "spark-packer:os": "debian-12""#), "{log}");
    }

    let spark_log = build_log(build(&report, SPARK_BUILD));
    assert!(spark_log.contains("SHA-512 of spark-3.5.3-bin-hadoop3.tgz verified"), "{spark_log}");
    assert!(spark_log.contains("smoke test: Pi is roughly 3.1"), "no Pi in the log:\n{spark_log}");
    let frame = "smoke test: DataFrame sums of squares by k: [(0%!(PACKER_COMMA) 112761)";
    assert!(spark_log.contains(frame), "no pyspark DataFrame result in the log:\n{spark_log}");
    assert!(spark_log.contains("smoke test: Spark runs on openjdk version \"17."), "{spark_log}");
    assert!(spark_log.contains(r#"Adding tag: "spark-packer:smoke-test": "passed""#), "{spark_log}");
    // Packer's machine-readable log writes each comma as %!(PACKER_COMMA).
    let needs = "SPARK_HOME outside login shells%!(PACKER_COMMA) and /etc/spark-packer/image.json: ok";
    assert!(spark_log.contains(needs), "the launch tools' needs were not checked:\n{spark_log}");
    let base_log = build_log(build(&report, BASE_BUILD));
    // The rootfs has no Java: base.sh really installs it, then runs it.
    let installed = base_log.find("Setting up openjdk-").unwrap_or_else(|| panic!("apt installed no JDK:\n{base_log}"));
    let ran = base_log.rfind("spark-packer: base: done (openjdk version").expect("java -version after the install");
    assert!(installed < ran, "java ran before apt installed it:\n{base_log}");
    assert!(!base_log.contains("smoke test:"), "the base image has no Spark to test:\n{base_log}");
    assert!(base_log.contains(r#"Adding tag: "spark-packer:smoke-test": "no-spark""#), "{base_log}");
}

#[test]
fn spark_on_base_provisions_spark_on_the_base_instances_disk() {
    let ami_list = scratch("on-base").join("ami-list");
    let output = build_amis(&ami_list, &format!("base,spark-{SPARK}"), &["--json", "--spark-on-base"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build-amis failed:\n{stderr}");
    let report = json_report(&output);
    let base = build(&report, BASE_BUILD);
    let spark = build(&report, SPARK_BUILD);
    assert_eq!((&base["status"], &spark["status"]), (&"ok".into(), &"ok".into()), "{report:#}");
    let base_id = base["amis"]["us-east-1"].as_str().unwrap();
    assert_eq!(spark["base_ami"], base_id, "the report names the base AMI");

    let spark_log = build_log(spark);
    assert!(spark_log.contains(&format!(r#"Adding tag: "spark-packer:base-ami": "{base_id}""#)), "{spark_log}");
    // base.sh ran once, in the base build; spark.sh found its marker on the kept disk.
    assert!(build_log(base).contains("spark-packer: base: done"));
    assert!(!spark_log.contains("applying OS security updates"), "base.sh ran again:\n{spark_log}");
    assert!(spark_log.contains("smoke test: Pi is roughly 3.1"), "no Pi in the log:\n{spark_log}");
}

#[test]
fn a_corrupted_spark_tarball_fails_its_build_with_a_checksum_error_and_no_id() {
    let dir = scratch("corrupted");
    let good = good_tarball();
    let mirror_root = dir.join("mirror");
    let tarball = mirror::tarball_path(&mirror_root, SPARK, "hadoop3");
    fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    let mut bytes = fs::read(&good).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&tarball, bytes).unwrap();
    // The mirror still publishes the good tarball's checksum.
    let sha = format!("{}.sha512", good.display());
    fs::copy(&sha, format!("{}.sha512", tarball.display())).unwrap();

    let ami_list = dir.join("ami-list");
    let mirror_arg = mirror_root.to_str().unwrap();
    let output = build_amis(&ami_list, &format!("base,spark-{SPARK}"), &["--local-mirror", mirror_arg]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a corrupted tarball must fail the run:\n{stdout}\n{stderr}");
    assert!(stderr.contains("1 of 2 builds failed"), "{stderr}");

    // One row per build, then each failure's first error line with its log.
    let spark_row =
        stdout.lines().find(|l| l.starts_with(&format!("{SPARK_BUILD} "))).unwrap_or_else(|| panic!("{stdout}"));
    assert!(spark_row.contains("FAILED"), "summary: {stdout}");
    let spark_error =
        stdout.lines().find(|l| l.starts_with(&format!("{SPARK_BUILD}: "))).unwrap_or_else(|| panic!("{stdout}"));
    assert!(spark_error.contains("checksum mismatch") && spark_error.contains("(log: "), "summary: {stdout}");
    let report = saved_report(&stdout);
    let spark = build(&report, SPARK_BUILD);
    assert_eq!(spark["status"], "failed");
    assert!(
        spark["error"].as_str().unwrap().contains("checksum mismatch for spark-3.5.3-bin-hadoop3.tgz"),
        "{spark:#}"
    );
    assert!(build_log(spark).contains("checksum mismatch for spark-3.5.3-bin-hadoop3.tgz"));
    assert!(!ami_list.join("spark-3.5.3").exists(), "a failed build recorded an ID");

    let base = build(&report, BASE_BUILD);
    assert_eq!(base["status"], "ok", "{base:#}");
    let id = base["amis"]["us-east-1"].as_str().unwrap();
    assert_eq!(fs::read_to_string(ami_list.join("base/us-east-1").join(SLOT)).unwrap(), format!("{id}\n"));
}

/// A mirror whose Spark has the launch scripts and pi.py but no jars/: it
/// installs and verifies fine, and its master cannot start.
fn mirror_with_spark_that_cannot_start(dir: &Path) -> PathBuf {
    let good = good_tarball();
    let name = format!("spark-{SPARK}-bin-hadoop3");
    let stage = dir.join("stage");
    fs::create_dir_all(&stage).unwrap();
    let sh = Shell::new().unwrap();
    let members = [format!("{name}/bin"), format!("{name}/examples")];
    cmd!(sh, "tar -xzf {good} -C {stage} {members...}").run().unwrap();
    let mirror_root = dir.join("mirror");
    let tarball = mirror::tarball_path(&mirror_root, SPARK, "hadoop3");
    fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    cmd!(sh, "tar -czf {tarball} -C {stage} {name}").run().unwrap();
    let sum = cmd!(sh, "sha512sum {tarball}").read().unwrap();
    let hex = sum.split_whitespace().next().unwrap();
    fs::write(format!("{}.sha512", tarball.display()), format!("{hex}  {name}.tgz\n")).unwrap();
    mirror_root
}

#[test]
fn spark_that_cannot_start_fails_the_smoke_test_and_the_build() {
    let dir = scratch("no-start");
    let mirror_root = mirror_with_spark_that_cannot_start(&dir);
    let ami_list = dir.join("ami-list");
    let mirror_arg = mirror_root.to_str().unwrap();
    let output = build_amis(&ami_list, &format!("spark-{SPARK}"), &["--json", "--local-mirror", mirror_arg]);
    assert!(!output.status.success(), "a Spark that cannot start must fail the build");
    let report = json_report(&output);
    let spark = build(&report, SPARK_BUILD);
    assert_eq!(spark["status"], "failed");
    let error = spark["error"].as_str().unwrap();
    assert!(error.contains("smoke test: the Spark master exited before it was ready"), "{error}");
    let log = build_log(spark);
    assert!(log.contains("spark: Spark 3.5.3 installed"), "spark.sh itself should pass:\n{log}");
    assert!(!log.contains("Pi is roughly"), "{log}");
    assert!(!ami_list.exists() || fs::read_dir(&ami_list).unwrap().next().is_none(), "a failed build recorded an ID");
}

#[test]
fn hadoop_is_installed_and_verified_when_the_matrix_asks_for_it() {
    let dir = scratch("hadoop");
    let mirror_root = dir.join("mirror");
    // Spark: the cached mirror's tarball, linked, with its checksum.
    let good = good_tarball();
    let spark = mirror::tarball_path(&mirror_root, SPARK, "hadoop3");
    fs::create_dir_all(spark.parent().unwrap()).unwrap();
    fs::hard_link(&good, &spark).unwrap();
    fs::copy(format!("{}.sha512", good.display()), format!("{}.sha512", spark.display())).unwrap();

    // Hadoop: NOT Apache's tarball (this machine cannot reach Apache), but a
    // small one this test builds with the same name and layout, whose
    // bin/hadoop answers `hadoop version` as Hadoop does and says what it is.
    let stage = dir.join("stage/hadoop-3.3.6/bin");
    fs::create_dir_all(&stage).unwrap();
    let fake = "#!/bin/sh\necho 'Hadoop 3.3.6'\necho 'spark-packer test tarball, not Apache Hadoop'\n";
    fs::write(stage.join("hadoop"), fake).unwrap();
    let sh = Shell::new().unwrap();
    let bin = stage.join("hadoop");
    cmd!(sh, "chmod 0755 {bin}").run().unwrap();
    let hadoop = mirror_root.join("hadoop-3.3.6/hadoop-3.3.6.tar.gz");
    fs::create_dir_all(hadoop.parent().unwrap()).unwrap();
    let staged = dir.join("stage");
    cmd!(sh, "tar -czf {hadoop} -C {staged} hadoop-3.3.6").run().unwrap();
    let sum = cmd!(sh, "sha512sum {hadoop}").read().unwrap();
    let hex = sum.split_whitespace().next().unwrap().to_string();
    fs::write(format!("{}.sha512", hadoop.display()), format!("SHA512 (hadoop-3.3.6.tar.gz) = {hex}\n")).unwrap();

    let mut matrix: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(project::matrix_file()).unwrap()).unwrap();
    let image = matrix["images"].as_array_mut().unwrap().iter_mut().find(|i| i["name"] == "spark-3.5.3").unwrap();
    image["spark"]["install_hadoop"] = serde_json::json!({ "version": "3.3.6", "sha512": hex });
    let matrix_file = dir.join("matrix.json");
    fs::write(&matrix_file, serde_json::to_string_pretty(&matrix).unwrap()).unwrap();

    let ami_list = dir.join("ami-list");
    let args = ["--json", "--matrix", matrix_file.to_str().unwrap(), "--local-mirror", mirror_root.to_str().unwrap()];
    let output = build_amis(&ami_list, &format!("spark-{SPARK}"), &args);
    assert!(output.status.success(), "build-amis failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let report = json_report(&output);
    let downloads = &report["downloads"]["spark-3.5.3"];
    assert_eq!(downloads["hadoop"]["sha512"], hex.as_str(), "{report:#}");
    let spark_build = build(&report, SPARK_BUILD);
    let log = build_log(spark_build);
    assert!(log.contains("hadoop-3.3.6.tar.gz.sha512 agrees with"), "the BSD-format checksum file was read:\n{log}");
    assert!(log.contains("SHA-512 of hadoop-3.3.6.tar.gz verified"), "{log}");
    assert!(log.contains("hadoop: Hadoop 3.3.6 installed in /opt/hadoop-3.3.6"), "{log}");
    assert!(log.contains("smoke test: Pi is roughly 3.1"), "{log}");
    let id = spark_build["amis"]["us-east-1"].as_str().unwrap();
    assert_eq!(fs::read_to_string(ami_list.join("spark-3.5.3/us-east-1").join(SLOT)).unwrap(), format!("{id}\n"));
}

/// The debugging switch really turns the smoke test off, which is why it
/// must be loud: the Spark that cannot start becomes an AMI, tagged SKIPPED.
#[test]
fn skipping_the_smoke_test_says_so_everywhere() {
    let dir = scratch("skip-smoke");
    let mirror_root = mirror_with_spark_that_cannot_start(&dir);
    let ami_list = dir.join("ami-list");
    let mirror_arg = mirror_root.to_str().unwrap();
    let output = build_amis(&ami_list, &format!("spark-{SPARK}"), &["--skip-smoke-test", "--local-mirror", mirror_arg]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("WARNING: --skip-smoke-test: the Spark smoke test is OFF"), "{stderr}");
    assert!(stdout.contains("(SMOKE TEST OFF: not shown to run Spark)"), "{stdout}");
    let report = saved_report(&stdout);
    assert_eq!(report["smoke_test"], false);
    let log = build_log(build(&report, SPARK_BUILD));
    assert!(log.contains("spark-packer: WARNING: smoke test OFF"), "{log}");
    assert!(!log.contains("smoke test: starting"), "{log}");
    assert!(log.contains(r#"Adding tag: "spark-packer:smoke-test": "SKIPPED""#), "{log}");
}

/// The arm64 path: the default preset's Spark image for Graviton, built in
/// an arm64 Debian 13 rootfs under qemu-user emulation, where the smoke test
/// really runs Spark on aarch64 (Java 21, Spark 4).
#[test]
fn an_arm64_spark_image_runs_spark_under_emulation() {
    let dir = scratch("arm64");
    let ami_list = dir.join("ami-list");
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["build-amis", "--local", "--image", "spark-4.3.0", "--arch", "arm64", "--region", "us-east-1"])
        .args(["--json", "--ami-list"])
        .arg(&ami_list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert_nothing_left_behind(pid, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "build-amis failed:\n{stderr}");
    assert!(stderr.contains("arm64 builds run in an arm64 Debian rootfs under qemu-user emulation"), "{stderr}");
    let report = json_report(&output);
    let build = build(&report, "spark-4.3.0-debian-13-hvm-arm64");
    let log = build_log(build);
    let instance = "spark-packer: instance: aarch64; logged in as admin; provisioning as root through sudo";
    assert!(log.contains(instance), "not provisioned on aarch64 as admin:\n{log}");
    assert!(log.contains("spark-packer: OS: debian 13 (debian family): Debian GNU/Linux 13 (trixie)"), "{log}");
    assert!(log.contains("Setting up openjdk-21-jre-headless"), "{log}");
    assert!(log.contains("smoke test: Pi is roughly 3.1"), "no Pi in the log:\n{log}");
    assert!(log.contains("smoke test: DataFrame sums of squares by k: [(0%!(PACKER_COMMA) 112761)"), "{log}");
    assert!(log.contains("smoke test: Spark runs on openjdk version \"21."), "{log}");
    assert!(log.contains(r#"Adding tag: "spark-packer:architecture": "arm64""#), "{log}");
    let id = build["amis"]["us-east-1"].as_str().unwrap();
    let recorded = fs::read_to_string(ami_list.join("spark-4.3.0/us-east-1/hvm-arm64.debian-13")).unwrap();
    assert_eq!(recorded, format!("{id}\n"));
}

/// The sudo path, as on the AMI: the instance logs in as the family's user
/// and never as root, and a provisioner that needs root fails without sudo
/// and passes with it.
#[test]
fn provisioners_run_through_sudo_and_root_cannot_log_in() {
    let sh = Shell::new().unwrap();
    let kind = instance::RootfsKind { suite: "bookworm".into(), arch: "x86_64".into() };
    let rootfs = instance::ensure_rootfs(&sh, &kind).unwrap();
    let key = instance::ensure_ssh_key(&sh).unwrap();
    let started = instance::Instance::start(&sh, &[rootfs.as_path()], &kind, &key, "admin", "sudo-path").unwrap();
    let port = started.port.to_string();
    let ssh = |user: &str, command: &str, input: &[u8]| -> Output {
        let mut child = Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .arg("-i")
            .arg(&key.private_key)
            .args(["-p", &port, &format!("{user}@127.0.0.1"), command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap()
    };
    let lib = fs::read(project::root().join("scripts/lib.sh")).unwrap();
    assert!(ssh("admin", "cat > /tmp/lib.sh", &lib).status.success());
    // What base.sh does to every image: record a variable for all sessions.
    let needs_root = "bash -c 'set -euo pipefail; source /tmp/lib.sh; set_environment SPARK_PACKER_SUDO_PATH yes'";
    let without = ssh("admin", needs_root, b"");
    assert!(!without.status.success(), "wrote /etc/environment without root");
    assert!(common::text(&without).contains("Permission denied"), "{}", common::text(&without));
    let with = ssh("admin", &format!("sudo -n {needs_root} && grep SPARK_PACKER_SUDO_PATH /etc/environment"), b"");
    assert!(with.status.success(), "{}", common::text(&with));
    assert_eq!(String::from_utf8_lossy(&with.stdout), "SPARK_PACKER_SUDO_PATH=\"yes\"\n");
    let as_root = ssh("root", "true", b"");
    assert!(!as_root.status.success(), "root logged in");
    assert!(common::text(&as_root).contains("Permission denied"), "{}", common::text(&as_root));
    drop(started);
    let left = instance::mounts_under(&instance::instances_dir());
    assert!(left.iter().all(|m| !m.contains(&format!("sudo-path-{}-", std::process::id()))), "{left:?}");
}

/// The Amazon Linux branches cannot run here; what can be checked is which
/// branch each os-release selects and the package names it would install,
/// as Amazon's published AL2023 package list spells them.
#[test]
fn each_os_release_selects_its_branch_and_package_names() {
    let dir = scratch("os-release");
    let sh = Shell::new().unwrap();
    let lib = project::root().join("scripts/lib.sh");
    let script = r#"set -euo pipefail; source "$1"; detect_os >/dev/null; choose_base_packages "$2"
        echo "$OS_FAMILY|$BASE_JAVA|${BASE_TOOLS[*]}|$BASE_GMOND""#;
    // Lines of each /etc/os-release: Amazon Linux as AWS documents them
    // (docs.aws.amazon.com/linux/al2/ug/ident-os-release.html), Debian 13 as
    // the trixie rootfs has them.
    let cases = [
        ("al2023", "NAME=\"Amazon Linux\"\nVERSION=\"2023\"\nID=\"amzn\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"2023\"\n", "17",
         "amzn2023|java-17-amazon-corretto-headless|git curl-minimal wget ca-certificates xfsprogs procps-ng rsync unzip tar gzip|"),
        ("debian-13", "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_ID=\"13\"\nID=debian\n", "21",
         "debian|openjdk-21-jre-headless|git curl wget ca-certificates xfsprogs procps rsync unzip tar gzip|ganglia-monitor"),
    ];
    for (name, os_release, java, want) in cases {
        let file = dir.join(name);
        fs::write(&file, os_release).unwrap();
        let got = cmd!(sh, "bash -c {script} lib {lib} {java}").env("OS_RELEASE_FILE", &file).read().unwrap();
        assert_eq!(got, want, "{name}");
    }
    let pv = dir.join("amzn-pv");
    fs::write(&pv, "NAME=\"Amazon Linux AMI\"\nVERSION=\"2018.03\"\nID=\"amzn\"\nVERSION_ID=\"2018.03\"\n").unwrap();
    let refused =
        cmd!(sh, "bash -c {script} lib {lib} 8").env("OS_RELEASE_FILE", &pv).ignore_status().output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unsupported OS 'amzn 2018.03'"));
}

/// lib.sh reads every checksum format Apache has published.
#[test]
fn checksum_files_in_every_apache_format() {
    let dir = scratch("checksums");
    let hex = "3f36a30a00b8d999065c74dcf93971a59f18ec7c06ab67391130e7c300380ca32b7062c2c14c7be5e2d858f4ae5ffde40e5103b1dbb179dd3c1da01a59eae7b0";
    // Recorded from `sha512sum f.txt`, `sha512sum --tag f.txt` and
    // `gpg --print-md SHA512 f.txt` (GnuPG 2.2) of the same file.
    let modern = format!("{hex}  f.txt\n");
    let bsd = format!("SHA512 (f.txt) = {hex}\n");
    let gpg = "f.txt: 3F36A30A 00B8D999 065C74DC F93971A5 9F18EC7C 06AB6739 1130E7C3 00380CA3\n       \
               2B7062C2 C14C7BE5 E2D858F4 AE5FFDE4 0E5103B1 DBB179DD 3C1DA01A 59EAE7B0\n";
    let sh = Shell::new().unwrap();
    let lib = project::root().join("scripts/lib.sh");
    let script = r#"source "$1" && sha512_from_checksum_file "$2""#;
    for (name, text) in [("modern.sha512", modern.as_str()), ("bsd.sha512", bsd.as_str()), ("gpg.sha512", gpg)] {
        let file = dir.join(name);
        fs::write(&file, text).unwrap();
        let parsed = cmd!(sh, "bash -c {script} lib {lib} {file}").read().unwrap();
        assert_eq!(parsed, hex, "{name}");
    }
    let garbage = dir.join("garbage.sha512");
    fs::write(&garbage, "not a checksum\n").unwrap();
    assert!(cmd!(sh, "bash -c {script} lib {lib} {garbage}").quiet().ignore_stderr().run().is_err());
}

/// lib.sh's records: /etc/environment keeps other lines and replaces its own,
/// and image.json is valid JSON with every fact and note, quotes included.
#[test]
fn environment_and_image_json_records() {
    let etc = scratch("etc");
    fs::write(etc.join("environment"), "PATH=\"/usr/bin\"\nJAVA_HOME=\"/old\"\n").unwrap();
    let sh = Shell::new().unwrap();
    let _e = sh.push_env("SPARK_PACKER_ETC", &etc);
    let lib = project::root().join("scripts/lib.sh");
    let script = r#"set -euo pipefail; source "$1"
        set_environment JAVA_HOME /usr/lib/jvm/java-17; set_environment SPARK_HOME /opt/spark
        record_contents image spark-3.5.3; record_contents java 'openjdk version "17.0.13"'
        note 'pssh: not "packaged"' >/dev/null; record_contents spark_version 3.5.3
        environment_value JAVA_HOME"#;
    assert_eq!(cmd!(sh, "bash -c {script} lib {lib}").read().unwrap(), "/usr/lib/jvm/java-17");
    let environment = fs::read_to_string(etc.join("environment")).unwrap();
    assert_eq!(environment, "PATH=\"/usr/bin\"\nJAVA_HOME=\"/usr/lib/jvm/java-17\"\nSPARK_HOME=\"/opt/spark\"\n");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(etc.join("spark-packer/image.json")).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"image": "spark-3.5.3", "java": "openjdk version \"17.0.13\"", "spark_version": "3.5.3",
            "notes": ["pssh: not \"packaged\""]})
    );
}

/// Issue 16, end to end and provisioned: against one emulator the runs
/// share (`--local --endpoint`), a second run with nothing changed launches
/// nothing, and a change to scripts/spark.sh rebuilds the Spark build only.
/// The runs build from a copy of the tree (`SPARK_PACKER_ROOT`), so the
/// checked-in script is never touched.
#[test]
fn a_change_to_spark_sh_rebuilds_the_spark_image_and_not_base() {
    let dir = scratch("spark-sh-change");
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    let root = project::root();
    let copier = Shell::new().unwrap();
    cmd!(copier, "cp -r {root}/packer {root}/scripts {tree}/").run().unwrap();
    for shared in ["local", "dev", "ami-list", "Cargo.toml"] {
        std::os::unix::fs::symlink(root.join(shared), tree.join(shared)).unwrap();
    }
    let sh = common::emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let target = project::target_dir();
    let env = [("SPARK_PACKER_ROOT", tree.as_path()), ("CARGO_TARGET_DIR", target.as_path())];
    let ami_list = dir.join("ami-list");
    let images = format!("base,spark-{SPARK}");
    let launches = || -> usize { emulator.aws().instance_states(&sh, "us-east-1").unwrap().values().sum() };
    let run = |extra: &[&str]| {
        let args: Vec<&str> = ["--endpoint", endpoint.as_str(), "--json"].iter().chain(extra).copied().collect();
        let output = build_amis_with_env(&ami_list, &images, &args, &env);
        assert!(output.status.success(), "{}", common::text(&output));
        let report = json_report(&output);
        let status = |name: &str| {
            let build = report["builds"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap();
            let why = build["why_built"].as_array().into_iter().flatten().filter_map(|w| w.as_str());
            (build["status"].as_str().unwrap().to_string(), why.collect::<Vec<_>>().join("; "))
        };
        (status(BASE_BUILD), status(SPARK_BUILD))
    };
    let recorded = |image: &str| fs::read_to_string(ami_list.join(image).join("us-east-1").join(SLOT)).unwrap();

    let (base, spark) = run(&[]);
    assert_eq!((base.0.as_str(), spark.0.as_str()), ("ok", "ok"), "{base:?} {spark:?}");
    assert_eq!(launches(), 2);
    let (base_id, spark_id) = (recorded("base"), recorded(&format!("spark-{SPARK}")));

    let (base, spark) = run(&[]);
    assert_eq!((base.0.as_str(), spark.0.as_str()), ("current", "current"), "{base:?} {spark:?}");
    assert_eq!(launches(), 2, "a run with nothing changed launched an instance");

    let spark_sh = tree.join("scripts/spark.sh");
    let mut script = fs::read_to_string(&spark_sh).unwrap();
    script.push_str("# a change to spark.sh only\n");
    fs::write(&spark_sh, script).unwrap();
    let (base, spark) = run(&[]);
    assert_eq!(base.0, "current", "base does not run spark.sh: {base:?}");
    assert_eq!(spark.0, "ok", "{spark:?}");
    assert!(spark.1.contains("scripts/spark.sh changed"), "{spark:?}");
    assert!(!spark.1.contains("lib.sh") && !spark.1.contains("template"), "{spark:?}");
    assert_eq!(launches(), 3, "only the Spark build launched");
    assert_eq!(recorded("base"), base_id);
    assert_ne!(recorded(&format!("spark-{SPARK}")), spark_id);
}
