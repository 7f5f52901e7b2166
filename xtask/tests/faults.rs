//! Faults, interrupts and bad input, with the real Packer against a real moto
//! server: nothing lost, nothing left running, nothing leaked.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use xshell::Shell;
use xtask::{local, lock, project};

mod common;
use common::{emulator_shell, matrix_with_unmatched_pv_source, path_with_venv_aws, scratch, text, xtask, SEED_REGIONS};

fn build_args<'a>(endpoint: &'a str, tree: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build-amis", "--no-provision", "--preset", "seed-2014", "--json", "--endpoint", endpoint];
    args.extend(["--ami-list", tree]);
    args.extend(extra);
    args
}

fn spawn(args: &[&str]) -> Child {
    xtask(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with('.'))
            }
        })
        .sum()
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn instance_states(emulator: &local::Emulator) -> BTreeMap<String, usize> {
    let sh = emulator_shell();
    let aws = emulator.aws();
    let mut total = BTreeMap::new();
    for region in SEED_REGIONS {
        for (state, n) in aws.instance_states(&sh, region).unwrap() {
            *total.entry(state).or_default() += n;
        }
    }
    total
}

#[test]
fn sigint_mid_build_leaves_nothing_running_and_only_complete_ids() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let tree = scratch("sigint").join("ami-list");
    let tree_arg = tree.to_str().unwrap();

    // 32 native builds, 4 at a time: several rounds, so the signal lands mid-run.
    let child = spawn(&build_args(&endpoint, tree_arg, &["--strategy", "native", "--jobs", "4"]));
    wait_until("the first recorded AMIs", Duration::from_secs(120), || count_files(&tree) >= 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();

    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted: stopping"), "{stderr}");
    assert!(stderr.contains("Run again with --resume"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let statuses: Vec<&str> =
        report["builds"].as_array().unwrap().iter().map(|b| b["status"].as_str().unwrap()).collect();
    let ok = statuses.iter().filter(|s| **s == "ok").count();
    assert!((2..32).contains(&ok), "some builds finished and some did not: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == "ok" || *s == "interrupted"), "{statuses:?}");
    assert_eq!(count_files(&tree), ok, "exactly the finished builds are recorded");

    // Packer cleaned up: every instance it launched is terminated.
    let states = instance_states(&emulator);
    assert_eq!(states.get("pending"), None, "{states:?}");
    assert_eq!(states.get("running"), None, "{states:?}");
    assert!(states.get("terminated").copied().unwrap_or(0) >= ok, "{states:?}");

    // Every recorded ID is complete and correct, in EC2's own words.
    let path = path_with_venv_aws(&emulator);
    let validated =
        xtask(&["validate", "--online", "--preset", "seed-2014", "--endpoint", &endpoint, "--ami-list", tree_arg])
            .env("PATH", path)
            .output()
            .unwrap();
    assert!(validated.status.success(), "{}", text(&validated));
    assert_eq!(fs::read_to_string(lock::lock_path(&tree)).unwrap(), "", "the lock is released");
}

#[test]
fn a_concurrent_second_run_on_the_same_tree_is_refused() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let tree = scratch("concurrent").join("ami-list");
    let tree_arg = tree.to_str().unwrap();

    let first = spawn(&build_args(&endpoint, tree_arg, &["--strategy", "native", "--jobs", "4"]));
    let lock_file = lock::lock_path(&tree);
    wait_until("the first run's lock", Duration::from_secs(60), || {
        fs::read_to_string(&lock_file).is_ok_and(|holder| !holder.is_empty())
    });
    let second = xtask(&build_args(&endpoint, tree_arg, &[])).output().unwrap();
    let first = first.wait_with_output().unwrap();

    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("is in use by `build-amis` (pid {}", first_pid(&first))), "{stderr}");
    assert!(first.status.success(), "the first run is unharmed: {}", text(&first));
    assert_eq!(count_files(&tree), 32);
}

fn first_pid(output: &Output) -> u64 {
    // The run id ends in the pid, in hex.
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    u64::from_str_radix(run_id.rsplit('-').next().unwrap(), 16).unwrap()
}

#[test]
fn resume_rebuilds_only_the_failed_builds() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("resume");
    let tree = dir.join("ami-list");
    let tree_arg = tree.to_str().unwrap();

    // Inject a failure: a PV source filter that matches nothing.
    let broken = matrix_with_unmatched_pv_source(&dir);

    let failed = xtask(&build_args(&endpoint, tree_arg, &["--matrix", broken.to_str().unwrap()])).output().unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("rerun just those with --resume"), "{}", text(&failed));
    let run_id =
        serde_json::from_slice::<serde_json::Value>(&failed.stdout).unwrap()["run_id"].as_str().unwrap().to_string();
    let report_path = project::target_dir().join(format!("build-reports/{run_id}.json"));
    let hvm_before = fs::read_to_string(tree.join("base/us-east-1/hvm")).unwrap();
    assert_eq!(count_files(&tree), 16);

    let resumed =
        xtask(&build_args(&endpoint, tree_arg, &["--resume", report_path.to_str().unwrap()])).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let report: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let names: Vec<&str> = report["builds"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-pv-x86_64", "spark-3.5.3-pv-x86_64"], "only the failed builds ran again");
    assert_eq!(fs::read_to_string(tree.join("base/us-east-1/hvm")).unwrap(), hvm_before, "HVM was not rebuilt");
    assert_eq!(count_files(&tree), 32);

    // Resuming a run that had nothing left to do says so.
    let resumed_path = project::target_dir().join(format!("build-reports/{}.json", report["run_id"].as_str().unwrap()));
    let nothing =
        xtask(&build_args(&endpoint, tree_arg, &["--resume", resumed_path.to_str().unwrap()])).output().unwrap();
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to resume"), "{}", text(&nothing));
}

#[test]
fn dummy_secrets_never_reach_a_file_or_the_output() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let tree = scratch("secrets").join("ami-list");
    // Made at run time, so no compiled file under target/ can hold them.
    let secret_key = format!("SECRETKEY{}x{}", std::process::id(), Instant::now().elapsed().as_nanos() % 9973);
    let session_token = format!("SESSIONTOKEN{}y{}", std::process::id(), std::process::id() % 7919);

    let output = xtask(&build_args(&endpoint, tree.to_str().unwrap(), &["--region", "us-east-1,eu-west-1", "-v"]))
        .env("AWS_SECRET_ACCESS_KEY", &secret_key)
        .env("AWS_SESSION_TOKEN", &session_token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let all_output = text(&output);
    for secret in [&secret_key, &session_token] {
        assert!(!all_output.contains(secret.as_str()), "a secret was printed");
        assert_eq!(files_holding(secret), "", "a secret was written under target/");
    }
}

/// Files under target/ that hold `secret`, one per line. The pattern goes in
/// through a file outside target/, so grep's own command line (seen through a
/// chroot's mounted /proc) cannot match; local instances' and rootfs roots, whose /proc
/// and /dev other tests may have mounted meanwhile, are skipped, as are files
/// that vanish mid-walk (-s): a leak would be in a report, log or var file.
fn files_holding(secret: &str) -> String {
    let pattern = std::env::temp_dir().join(format!("spark-packer-secret-{}", std::process::id()));
    fs::write(&pattern, secret).unwrap();
    let found = Command::new("grep")
        .args(["-rlsF", "--devices=skip", "--exclude-dir=instances", "--exclude-dir=rootfs-*", "-f"])
        .arg(&pattern)
        .arg(project::target_dir())
        .output()
        .unwrap();
    fs::remove_file(&pattern).unwrap();
    String::from_utf8_lossy(&found.stdout).into_owned()
}

/// Each bad input: the arguments, environment changes, and what the one-line
/// error must say. None may panic or print a backtrace.
#[test]
fn bad_input_gets_a_one_line_error_that_names_the_fix() {
    let dir = scratch("bad-input");
    let bad_json = dir.join("bad.json");
    fs::write(&bad_json, "{ \"images\": [ }").unwrap();
    let bad_region = dir.join("bad-region.json");
    fs::write(
        &bad_region,
        fs::read_to_string(project::matrix_file()).unwrap().replacen("\"sa-east-1\"", "\"sa-east1\"", 1),
    )
    .unwrap();
    let corrupt_tree = dir.join("corrupt");
    fs::create_dir_all(corrupt_tree.join("base/us-east-1")).unwrap();
    fs::write(corrupt_tree.join("base/us-east-1/hvm"), "ami-XYZ\n").unwrap();
    let good_tree = dir.join("good");
    fs::create_dir_all(good_tree.join("base/us-east-1")).unwrap();
    fs::write(good_tree.join("base/us-east-1/hvm"), "ami-0123456789abcdef0\n").unwrap();
    let empty_home = dir.join("home");
    fs::create_dir_all(&empty_home).unwrap();
    let no_tools = dir.join("bin");
    fs::create_dir_all(&no_tools).unwrap();
    let ok_report = dir.join("ok-report.json");
    fs::write(&ok_report, r#"{"run_id": "r1", "ami_list": "target/endpoint/ami-list", "builds": [{"name": "base-hvm-x86_64", "status": "ok"}]}"#).unwrap();

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ep = "http://127.0.0.1:9";
    type Case = (&'static str, Vec<String>, Vec<(&'static str, Option<String>)>, &'static str);
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let cases: Vec<Case> = vec![
        ("unknown command", args(&["build"]), vec![], "unrecognized subcommand 'build'"),
        (
            "unknown preset",
            args(&["build-amis", "--dry-run", "--preset", "nope"]),
            vec![],
            "unknown preset `nope`: choose one of default, seed-2014, spark-3.5",
        ),
        (
            "unknown image",
            args(&["build-amis", "--dry-run", "--image", "spark-9.9.9"]),
            vec![],
            "image `spark-9.9.9` is not in preset `default`",
        ),
        (
            "unknown virt",
            args(&["build-amis", "--dry-run", "--virt", "paravirtual"]),
            vec![],
            "virtualization `paravirtual` is not in preset",
        ),
        (
            "unknown region",
            args(&["build-amis", "--dry-run", "--region", "us-east1"]),
            vec![],
            "region `us-east1` is not in preset",
        ),
        (
            "nothing left",
            args(&["build-amis", "--dry-run", "--preset", "seed-2014", "--virt", "pv", "--arch", "arm64"]),
            vec![],
            "is not in preset `seed-2014`",
        ),
        ("jobs 0", args(&["build-amis", "--jobs", "0"]), vec![], "invalid value '0' for '--jobs <JOBS>'"),
        (
            "bad strategy",
            args(&["build-amis", "--strategy", "fast"]),
            vec![],
            "invalid value 'fast' for '--strategy <STRATEGY>'",
        ),
        (
            "endpoint not a URL",
            args(&["build-amis", "--no-provision", "--endpoint", "127.0.0.1:5000"]),
            vec![],
            "is not a URL: write it as http://127.0.0.1:5000",
        ),
        (
            "local with AWS's endpoint",
            args(&["build-amis", "--local", "--endpoint", "https://ec2.us-east-1.amazonaws.com"]),
            vec![],
            "that is AWS itself, and the sandbox sends dummy credentials",
        ),
        (
            "emulator into checked-in tree",
            args(&["build-amis", "--local", "--ami-list", &s(&project::checked_in_ami_list())]),
            vec![],
            "refusing to pair an emulator with the checked-in",
        ),
        (
            "missing matrix",
            args(&["build-amis", "--matrix", "/nonexistent/matrix.json"]),
            vec![],
            "read the matrix /nonexistent/matrix.json",
        ),
        ("matrix not JSON", args(&["build-amis", "--matrix", &s(&bad_json)]), vec![], "not valid JSON"),
        (
            "matrix unknown region",
            args(&["build-amis", "--matrix", &s(&bad_region)]),
            vec![],
            "unknown AWS region `sa-east1`: did you mean one of sa-east-1?",
        ),
        ("too many jobs", args(&["build-amis", "--jobs", "999"]), vec![], "999 is not in 1..=256"),
        (
            "packer missing",
            args(&["build-amis", "--no-provision", "--endpoint", ep, "--ami-list", &s(&dir.join("t1"))]),
            vec![("PATH", Some(s(&no_tools)))],
            "`packer` not found: install it with `apt-get install packer`",
        ),
        (
            // Keys from a profile, not the environment: the aws CLI makes every call.
            "aws CLI missing",
            args(&["validate", "--online", "--endpoint", ep, "--ami-list", &s(&good_tree)]),
            vec![
                ("PATH", Some(format!("{}:/usr/bin:/bin", s(&no_tools)))),
                ("AWS_ACCESS_KEY_ID", None),
                ("AWS_SECRET_ACCESS_KEY", None),
                ("AWS_PROFILE", Some("spark-packer-test".to_string())),
            ],
            "install the aws CLI (`pip install awscli`) or put it on PATH",
        ),
        (
            "no credentials for AWS",
            args(&["build-amis", "--no-provision", "--ami-list", &s(&dir.join("t2"))]),
            vec![
                ("HOME", Some(s(&empty_home))),
                ("AWS_ACCESS_KEY_ID", None),
                ("AWS_SECRET_ACCESS_KEY", None),
                ("AWS_SESSION_TOKEN", None),
                ("AWS_PROFILE", None),
            ],
            "no AWS credentials found",
        ),
        (
            "no credentials for an emulator",
            args(&["build-amis", "--no-provision", "--endpoint", ep, "--ami-list", &s(&dir.join("t3"))]),
            vec![("AWS_ACCESS_KEY_ID", None)],
            "export dummy ones",
        ),
        ("corrupt ami-list", args(&["validate", "--ami-list", &s(&corrupt_tree)]), vec![], "1 problem found"),
        (
            "nothing to resume",
            args(&["build-amis", "--no-provision", "--endpoint", ep, "--resume", &s(&ok_report)]),
            vec![],
            "nothing to resume: every build of run r1 succeeded",
        ),
        (
            "resume without a report",
            args(&["build-amis", "--no-provision", "--endpoint", ep, "--resume", "/nonexistent/report.json"]),
            vec![],
            "no earlier run to resume?",
        ),
        ("bench rounds 0", args(&["bench", "--rounds", "0"]), vec![], "invalid value '0' for '--rounds <ROUNDS>'"),
        ("validate unknown preset", args(&["validate", "--preset", "nope"]), vec![], "unknown preset `nope`"),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (name, args, env, expected) in &cases {
        let mut command = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error_line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        let all = text(&output);
        if output.status.success()
            || all.contains("panicked")
            || all.contains("stack backtrace")
            || error_line.is_empty()
            || !all.contains(expected)
        {
            failures.push(format!("{name}: exit {:?}, expected {expected:?}, got:\n{all}", output.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn clean_old_amis_yes_waits_for_no_one_and_is_refused_while_a_build_holds_the_tree() {
    let tree = scratch("clean-lock").join("ami-list");
    fs::create_dir_all(&tree).unwrap();
    let held = lock::acquire(&tree, "build-amis").unwrap();
    let output =
        xtask(&["clean-old-amis", "--yes", "--endpoint", "http://127.0.0.1:9", "--ami-list", tree.to_str().unwrap()])
            .output()
            .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("is in use by `build-amis` (pid {}", std::process::id())), "{stderr}");
    drop(held);
}
