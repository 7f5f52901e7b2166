//! `kill -9` of build-amis, as issue 18 reproduced it, with the real Packer
//! against a real moto server: nothing left running or billing, no mount, and
//! a journal that `--resume` takes.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use xshell::Shell;
use xtask::{
    journal::{self, Document},
    local::{self, instance},
    project,
};

mod common;
use common::{scratch, text, xtask, SEED_REGIONS};

/// The machine has 2 cores: one of these runs at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The aws CLI of the sandbox venv against `emulator`, parsed.
fn ec2(emulator: &local::Emulator, region: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(emulator.aws().program)
        .args(["--endpoint-url", &emulator.endpoint(), "--region", region, "--output", "json", "ec2"])
        .args(args)
        .envs(local::DUMMY_CREDENTIALS)
        .output()
        .unwrap();
    assert!(output.status.success(), "aws ec2 {args:?}: {}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn running_instances(emulator: &local::Emulator, region: &str) -> usize {
    let value =
        ec2(emulator, region, &["describe-instances", "--filters", "Name=instance-state-name,Values=pending,running"]);
    value["Reservations"].as_array().unwrap().iter().map(|r| r["Instances"].as_array().unwrap().len()).sum()
}

fn packer_groups(emulator: &local::Emulator, region: &str) -> Vec<String> {
    let value = ec2(emulator, region, &["describe-security-groups"]);
    let names = value["SecurityGroups"].as_array().unwrap().iter().filter_map(|g| g["GroupName"].as_str());
    names.filter(|n| n.starts_with("packer_")).map(str::to_string).collect()
}

fn packer_keys(emulator: &local::Emulator, region: &str) -> Vec<String> {
    let value = ec2(emulator, region, &["describe-key-pairs"]);
    let names = value["KeyPairs"].as_array().unwrap().iter().filter_map(|k| k["KeyName"].as_str());
    names.filter(|n| n.starts_with("packer_")).map(str::to_string).collect()
}

/// Running instances, packer_* groups and packer_* key pairs, per region
/// that has any.
type Leaks = BTreeMap<&'static str, (usize, Vec<String>, Vec<String>)>;

fn leaks(emulator: &local::Emulator) -> Leaks {
    SEED_REGIONS
        .iter()
        .map(|r| (*r, (running_instances(emulator, r), packer_groups(emulator, r), packer_keys(emulator, r))))
        .filter(|(_, (running, groups, keys))| *running > 0 || !groups.is_empty() || !keys.is_empty())
        .collect()
}

/// Processes whose command line holds `needle` (a run's log directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// A process still there (not a zombie), told apart from a later one with
/// the same pid by its start time.
fn alive(pid: u32, started: u64) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    journal::start_time(&stat) == Some(started) && !stat.contains(") Z ")
}

/// The direct children of `parent`: pid, start time, command line.
fn children(parent: u32) -> Vec<(u32, u64, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
            (ppid == parent).then_some((pid, journal::start_time(&stat)?, cmdline))
        })
        .collect()
}

/// The run id from the first stderr line, `run <id>: ...`.
fn run_id_in(stderr_file: &Path) -> Option<String> {
    let stderr = fs::read_to_string(stderr_file).ok()?;
    stderr.lines().find_map(|l| Some(l.strip_prefix("run ")?.split(':').next()?.to_string()))
}

fn spawn_logged(args: &[&str], stderr_file: &Path) -> Child {
    xtask(args).stdout(Stdio::null()).stderr(fs::File::create(stderr_file).unwrap()).spawn().unwrap()
}

fn read_journal(run_id: &str) -> (PathBuf, Document) {
    let path = journal::reports_dir().join(format!("{run_id}.json"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("no journal {}: {e}", path.display()));
    (path, serde_json::from_str(&text).unwrap())
}

#[test]
fn kill_9_of_a_native_run_leaves_no_instance_running_and_no_packer_group() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("killed-native");
    let tree = dir.join("ami-list");
    let stderr_file = dir.join("stderr");
    let args = ["build-amis", "--no-provision", "--preset", "seed-2014", "--strategy", "native", "--jobs", "32"];
    let mut args = args.to_vec();
    args.extend(["--endpoint", &endpoint, "--ami-list", tree.to_str().unwrap()]);

    let started = Instant::now();
    let mut child = spawn_logged(&args, &stderr_file);
    wait_until("an instance running", Duration::from_secs(90), || running_instances(&emulator, "us-east-1") > 0);
    let killed_after = started.elapsed();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let run_id = run_id_in(&stderr_file).expect("the run said its id");

    // Packer, told by the kernel, cleans up on its own: no next run needed.
    let log_dir = format!("packer-logs/{run_id}/");
    wait_until("every Packer of the killed run to exit", Duration::from_secs(120), || {
        processes_mentioning(&log_dir).is_empty()
    });
    let left = leaks(&emulator);
    assert!(left.is_empty(), "killed after {killed_after:?}; left running / packer_* groups / keys: {left:?}");
    let (_, doc) = read_journal(&run_id);
    assert_eq!(doc.builds.len(), 32, "the journal names every planned build");
    let unfinished = doc.builds.iter().filter(|b| b.status != "ok").count();
    assert!(unfinished > 0, "killed after {killed_after:?}, yet every build finished");
    eprintln!(
        "killed after {killed_after:?}: {unfinished} of 32 builds unfinished; 0 running, 0 packer_* groups or keys"
    );

    // The next run against the same EC2 sees the dead run and marks it swept.
    let next = xtask(&[
        "build-amis",
        "--no-provision",
        "--preset",
        "seed-2014",
        "--image",
        "base",
        "--virt",
        "hvm",
        "--region",
        "us-east-1",
        "--endpoint",
        &endpoint,
        "--ami-list",
        dir.join("next").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(next.status.success(), "{}", text(&next));
    assert!(read_journal(&run_id).1.journal.swept_at.is_some(), "{}", text(&next));
    assert!(leaks(&emulator).is_empty());
}

/// A dead run whose Packer could not clean up (killed outright): what it
/// left is tagged with its run id, and the next run removes it.
#[test]
fn the_next_run_sweeps_what_a_dead_run_left() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("sweep");
    let run_id = format!("20261125T000000Z-{:04x}", std::process::id() & 0xffff);
    let region = "us-east-1";

    // What Packer makes before it dies: a key pair, a group, an instance.
    let key = format!("packer_{run_id}_base-hvm-x86_64");
    ec2(&emulator, region, &["create-key-pair", "--key-name", &key]);
    let group = ec2(&emulator, region, &["create-security-group", "--group-name", "packer_dead", "--description", "t"]);
    let group_id = group["GroupId"].as_str().unwrap();
    let sources: serde_json::Value = serde_json::from_str(&fs::read_to_string(local::source_amis()).unwrap()).unwrap();
    let image = sources.as_array().unwrap().iter().find(|a| a["virtualization_type"] == "hvm").unwrap();
    let tags = format!("ResourceType=instance,Tags=[{{Key=spark-packer:run-id,Value={run_id}}}]");
    ec2(
        &emulator,
        region,
        &[
            "run-instances",
            "--image-id",
            image["ami_id"].as_str().unwrap(),
            "--instance-type",
            "m7i.large",
            "--security-group-ids",
            group_id,
            "--tag-specifications",
            &tags,
        ],
    );
    assert_eq!(running_instances(&emulator, region), 1);

    // Its journal, listed as open, written by a process that is gone.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let journal_path = journal::reports_dir().join(format!("{run_id}.json"));
    fs::create_dir_all(journal::reports_dir()).unwrap();
    let doc = serde_json::json!({
        "run_id": run_id, "started_at": "t", "preset": "seed-2014", "strategy": "native", "provisioned": false,
        "endpoint": endpoint, "ami_list": "t", "git_commit": "g",
        "journal": {"pid": gone_pid, "started": 1},
        "builds": [{"name": "base-hvm-x86_64-us-east-1", "status": "interrupted", "build_region": region}],
    });
    fs::write(&journal_path, doc.to_string()).unwrap();
    journal::mark_open(&journal_path).unwrap();

    let next = xtask(&[
        "build-amis",
        "--no-provision",
        "--preset",
        "seed-2014",
        "--image",
        "base",
        "--virt",
        "hvm",
        "--region",
        "eu-west-1",
        "--endpoint",
        &endpoint,
        "--ami-list",
        dir.join("next").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(next.status.success(), "{}", text(&next));
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(stderr.contains(&format!("run {run_id} (dead) left in us-east-1: instances i-")), "{stderr}");
    assert!(stderr.contains(&format!("swept run {run_id}")), "{stderr}");
    assert_eq!(running_instances(&emulator, region), 0);
    assert!(packer_groups(&emulator, region).is_empty());
    let keys = ec2(&emulator, region, &["describe-key-pairs"]);
    assert!(!keys.to_string().contains(&key), "{keys}");
    assert!(read_journal(&run_id).1.journal.swept_at.is_some());
    fs::remove_file(journal_path).unwrap();
}

#[test]
fn kill_9_of_a_local_run_leaves_no_server_no_mount_and_a_journal_to_resume() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("killed-local");
    let tree = dir.join("ami-list");
    let stderr_file = dir.join("stderr");
    let filters = ["--preset", "spark-3.5", "--image", "base,spark-3.5.3", "--arch", "x86_64", "--region", "us-east-1"];
    let mut args = vec!["build-amis", "--local"];
    args.extend(filters);
    args.extend(["--ami-list", tree.to_str().unwrap()]);

    let started = Instant::now();
    let mut child = spawn_logged(&args, &stderr_file);
    let xtask_pid = child.id();
    let servers = |what: &str| children(xtask_pid).into_iter().filter(|(_, _, c)| c.contains(what)).count();
    wait_until("moto, the mirror and two instances' sshd", Duration::from_secs(600), || {
        servers("moto_server") == 1 && servers("http.server") == 1 && servers("sshd") == 2
    });
    // Into provisioning. The issue killed at 40 s; with the package cache a
    // whole build now takes about that long here, so the kill comes 5 s after
    // both instances are up, while both are certainly still mounted.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the kill: {}",
        fs::read_to_string(&stderr_file).unwrap()
    );
    let spawned = children(xtask_pid);
    let run_id = run_id_in(&stderr_file).expect("the run said its id");
    let mark = format!("-{xtask_pid}-");
    let mounts_of_run = || -> Vec<String> {
        instance::mounts_under(&instance::instances_dir()).into_iter().filter(|m| m.contains(&mark)).collect()
    };
    let mounted = mounts_of_run().len();
    assert!(mounted > 0, "the killed run had its instances mounted");
    let killed_after = started.elapsed();
    kill(Pid::from_raw(xtask_pid as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let killed = Instant::now();

    // Every server and Packer it started dies with it.
    wait_until("the killed run's servers and Packers to exit", Duration::from_secs(30), || {
        spawned.iter().all(|(pid, started, _)| !alive(*pid, *started))
    });
    // The base build may finish first (about 30 s here); one build at least was running.
    let packers = spawned.iter().filter(|(_, _, c)| c.contains("packer build")).count();
    assert!((1..=2).contains(&packers), "{spawned:#?}");
    eprintln!(
        "killed after {killed_after:?} with {mounted} mounts; within {:?} these exited: {spawned:#?}",
        killed.elapsed()
    );

    // One more run sweeps its instances: no mount, no process, no directory.
    let next = xtask(&[
        "build-amis",
        "--local",
        "--no-provision",
        "--preset",
        "seed-2014",
        "--image",
        "base",
        "--virt",
        "hvm",
        "--region",
        "us-east-1",
        "--ami-list",
        dir.join("next").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(next.status.success(), "{}", text(&next));
    let mounts = mounts_of_run();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let rooted: Vec<u32> = instance::processes_rooted_under(&instance::instances_dir())
        .into_iter()
        .filter(|p| fs::read_link(format!("/proc/{p}/root")).is_ok_and(|r| r.to_string_lossy().contains(&mark)))
        .collect();
    assert!(rooted.is_empty(), "processes left in its instances: {rooted:?}");
    let dirs: Vec<String> = fs::read_dir(instance::instances_dir())
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(&mark)).collect()
        })
        .unwrap_or_default();
    assert!(dirs.is_empty(), "instance directories left: {dirs:?}");

    // Its journal has a result for each build that finished, the others
    // unfinished, and --resume takes it.
    let (path, doc) = read_journal(&run_id);
    let names: Vec<&str> = doc.builds.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["base-debian-12-hvm-x86_64", "spark-3.5.3-debian-12-hvm-x86_64"]);
    let unfinished: Vec<&str> = doc.builds.iter().filter(|b| b.status != "ok").map(|b| b.name.as_str()).collect();
    // A build whose Packer had exited may still have been recording.
    assert!(unfinished.len() >= packers, "every build running at the kill is unfinished: {:?}", doc.builds);
    assert!(doc.builds.iter().filter(|b| b.status != "ok").all(|b| b.rest["error"] == journal::UNFINISHED));
    let mut resume = vec!["build-amis", "--local", "--dry-run", "--json", "--resume", path.to_str().unwrap()];
    resume.extend(filters);
    resume.extend(["--ami-list", tree.to_str().unwrap()]);
    let resumed = xtask(&resume).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let plan: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let planned: Vec<&str> = plan.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(planned, unfinished);
    assert!(project::target_dir().exists());
}

/// moto killed mid-run: the run fails within seconds, naming the endpoint,
/// instead of Packer retrying for minutes (7 min 45 s measured before).
#[test]
fn a_vanished_endpoint_fails_the_run_in_seconds() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let endpoint = emulator.endpoint();
    let dir = scratch("vanished");
    let stderr_file = dir.join("stderr");
    let tree = dir.join("ami-list");
    let args = ["build-amis", "--no-provision", "--preset", "seed-2014", "--strategy", "native", "--jobs", "4"];
    let mut args = args.to_vec();
    args.extend(["--endpoint", &endpoint, "--ami-list", tree.to_str().unwrap()]);
    let mut child = spawn_logged(&args, &stderr_file);
    wait_until("the run to start its builds", Duration::from_secs(60), || {
        fs::read_to_string(&stderr_file).is_ok_and(|s| s.contains("start "))
    });
    drop(emulator);
    let gone = Instant::now();
    let limit = Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if gone.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the endpoint went away");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = fs::read_to_string(&stderr_file).unwrap();
    eprintln!("the run failed {:?} after the endpoint went away", gone.elapsed());
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("the EC2 endpoint {endpoint} refuses connections")), "{stderr}");
}
