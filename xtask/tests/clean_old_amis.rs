//! `cargo xtask clean-old-amis` end to end against a real EC2 emulator (moto
//! server) on a loopback port, on an account seeded through the aws CLI.
//!
//! moto stamps every image with the time it was registered, to the second,
//! and offers no way to backdate one. So ages are real: the seed is made in
//! batches a couple of seconds apart, and the run judges ages `--as-of` the
//! last batch with a `--min-age` that covers exactly that batch.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use serde_json::Value;
use xshell::Shell;
use xtask::{
    ami_list::{self, Cell},
    factory, local, project,
};

mod common;
const EAST: &str = "us-east-1";
const WEST: &str = "us-west-2";

fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("clean-{name}"))
}

/// The venv's aws CLI against the emulator, for seeding and inspecting.
struct Ec2 {
    program: PathBuf,
    endpoint: String,
}

impl Ec2 {
    fn new(emulator: &local::Emulator) -> Ec2 {
        let aws = emulator.aws();
        Ec2 { program: aws.program, endpoint: aws.endpoint.unwrap() }
    }

    fn call(&self, region: &str, args: &[&str]) -> Value {
        let mut command = Command::new(&self.program);
        command.args(["--endpoint-url", &self.endpoint, "--region", region, "--output", "json", "ec2"]).args(args);
        for (key, value) in local::DUMMY_CREDENTIALS {
            command.env(key, value);
        }
        let output = command.output().expect("run the venv's aws CLI");
        assert!(output.status.success(), "aws ec2 {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Registers one image per name, in parallel; returns their IDs in order.
    fn register(&self, region: &str, names: &[&str]) -> Vec<String> {
        self.register_with(region, names, |_| Vec::new())
    }

    /// Registers one image per label as the factory names and tags them, each
    /// its own run of `image`'s hvm x86_64 build; returns their IDs in order.
    fn register_factory(&self, region: &str, labels: &[&str], image: &str) -> Vec<String> {
        self.register_with(region, labels, |_| factory_tags(image, &next_run_id()))
    }

    fn register_with(
        &self,
        region: &str,
        names: &[&str],
        tags: impl Fn(&str) -> Vec<(String, String)> + Sync,
    ) -> Vec<String> {
        thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let tags = tags(name);
                    scope.spawn(move || {
                        let mut name = name.to_string();
                        if !tags.is_empty() {
                            let get = |key: &str| &tags.iter().find(|(k, _)| k == key).unwrap().1;
                            name = factory::ami_name(get(factory::BUILD_TAG), get(factory::RUN_ID_TAG));
                        }
                        let out = self.call(region, &["register-image", "--name", &name]);
                        let id = out["ImageId"].as_str().unwrap().to_string();
                        // moto 5.2 ignores register-image's --tag-specifications.
                        self.tag_json(region, &id, &tags);
                        id
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn tag(&self, region: &str, ids: &[&String], tags: &[(&str, &str)]) {
        let mut args = vec!["create-tags".to_string(), "--resources".to_string()];
        args.extend(ids.iter().map(|id| id.to_string()));
        args.push("--tags".to_string());
        args.extend(tags.iter().map(|(k, v)| format!("Key={k},Value={v}")));
        self.call(region, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Tags one resource with `tags`, if any, in one call.
    fn tag_json(&self, region: &str, id: &str, tags: &[(String, String)]) {
        if !tags.is_empty() {
            let tags: Vec<Value> = tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect();
            self.call(region, &["create-tags", "--resources", id, "--tags", &Value::from(tags).to_string()]);
        }
    }

    /// Image ID -> (creation time, snapshot IDs), for every image the account owns.
    fn own_images(&self, region: &str) -> BTreeMap<String, (u64, Vec<String>)> {
        let out = self.call(region, &["describe-images", "--owners", "self"]);
        out["Images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|image| {
                let snapshots = image["BlockDeviceMappings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|m| m["Ebs"]["SnapshotId"].as_str().map(str::to_string))
                    .collect();
                let created = project::parse_time(image["CreationDate"].as_str().unwrap()).unwrap();
                (image["ImageId"].as_str().unwrap().to_string(), (created, snapshots))
            })
            .collect()
    }

    fn snapshots(&self, region: &str) -> BTreeSet<String> {
        let out = self.call(region, &["describe-snapshots", "--owner-ids", "self"]);
        out["Snapshots"].as_array().unwrap().iter().map(|s| s["SnapshotId"].as_str().unwrap().to_string()).collect()
    }

    /// Everything a cleanup must leave alone besides images: instances and launch templates.
    fn others(&self, region: &str) -> (Value, Value) {
        thread::scope(|scope| {
            let query = "Reservations[].Instances[].[InstanceId,ImageId,State.Name]";
            let instances = scope.spawn(|| self.call(region, &["describe-instances", "--query", query]));
            let templates =
                self.call(region, &["describe-launch-template-versions", "--launch-template-name", "workers"]);
            (instances.join().unwrap(), templates)
        })
    }
}

/// A run id of the factory's shape, new on every call: each registered AMI
/// is its own run, so the names the factory gives never repeat.
fn next_run_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("20261125T000000Z-{:04x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The full tag set packer/spark-ami.pkr.hcl writes, for an hvm x86_64 build
/// of `image` in run `run_id`.
fn factory_tags(image: &str, run_id: &str) -> Vec<(String, String)> {
    let spark = image.strip_prefix("spark-").unwrap_or("none");
    let build = format!("{image}-hvm-x86_64");
    [
        (factory::MANAGED_BY.0, factory::MANAGED_BY.1),
        (factory::IMAGE_TAG, image),
        (factory::SPARK_VERSION_TAG, spark),
        (factory::VIRT_TAG, "hvm"),
        (factory::ARCH_TAG, "x86_64"),
        (factory::BUILD_TAG, &build),
        (factory::RUN_ID_TAG, run_id),
        (factory::GIT_COMMIT_TAG, "70a4445f7231"),
        (factory::CREATED_AT_TAG, "2026-11-25T00:00:00Z"),
        (factory::BASE_AMI_TAG, "none"),
        (factory::SMOKE_TEST_TAG, "not-provisioned"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn clean_command(ec2: &Ec2, ami_list: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["clean-old-amis", "--json", "--endpoint", &ec2.endpoint]).arg("--ami-list").arg(ami_list).args(extra);
    // --endpoint takes the aws CLI from PATH: the sandbox venv's, which knows every call made.
    let venv_bin = ec2.program.parent().unwrap_or(Path::new("/nonexistent"));
    command.env("PATH", format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default()));
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    command
}

fn clean(ec2: &Ec2, ami_list: &Path, extra: &[&str]) -> Output {
    clean_command(ec2, ami_list, extra).output().expect("run the xtask binary")
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("--json printed no report ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// Image ID -> "delete", or the reasons it is kept, joined.
fn verdicts(report: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for region in report["regions"].as_array().unwrap() {
        for d in region["decisions"].as_array().unwrap() {
            let verdict = if d["delete"].as_bool().unwrap() {
                "delete".to_string()
            } else {
                let reasons: Vec<&str> =
                    d["kept_because"].as_array().unwrap().iter().map(|w| w["reason"].as_str().unwrap()).collect();
                reasons.join("+")
            };
            out.insert(d["image_id"].as_str().unwrap().to_string(), verdict);
        }
    }
    out
}

fn reported_snapshots(report: &Value) -> BTreeSet<String> {
    let regions = report["regions"].as_array().unwrap();
    regions
        .iter()
        .flat_map(|r| r["snapshots"].as_array().unwrap())
        .map(|snapshot| snapshot["snapshot_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every image and snapshot the account owns in both regions, and everything
/// else (instances, launch templates). The calls run at once: each is mostly
/// the aws CLI starting up.
fn account(ec2: &Ec2) -> Account {
    thread::scope(|scope| {
        let images = [EAST, WEST].map(|region| scope.spawn(move || ec2.own_images(region)));
        let snapshots = [EAST, WEST].map(|region| scope.spawn(move || ec2.snapshots(region)));
        let others = ec2.others(EAST);
        Account {
            images: images.into_iter().flat_map(|h| h.join().unwrap()).collect(),
            snapshots: snapshots.into_iter().flat_map(|h| h.join().unwrap()).collect(),
            others,
        }
    })
}

#[derive(Debug, PartialEq)]
struct Account {
    /// Image ID -> (creation time, snapshot IDs).
    images: BTreeMap<String, (u64, Vec<String>)>,
    snapshots: BTreeSet<String>,
    /// Instances and launch template versions.
    others: (Value, Value),
}

#[test]
fn deletes_exactly_the_superseded_factory_amis_and_their_snapshots() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let dir = scratch("seeded");

    // Batch 1, old: in us-east-1 one family (base/hvm/x86_64) with an AMI per rule.
    let east_names = [
        "old-1",
        "old-2",
        "listed",
        "run-by-instance",
        "in-latest-template",
        "in-old-template-version",
        "run-by-terminated-instance",
        "public",
        "foreign",
    ];
    let base_unless = |plain: &'static [&'static str]| {
        move |name: &str| match plain.contains(&name) {
            true => Vec::new(),
            false => factory_tags("base", &next_run_id()),
        }
    };
    let east = ec2.register_with(EAST, &east_names, base_unless(&["foreign"]));
    let id = |name: &str| &east[east_names.iter().position(|n| *n == name).unwrap()];
    // In us-west-2: its own family, an untagged AMI and one with only the managed-by tag.
    let west_names = ["w-old-1", "w-old-2", "w-listed", "w-foreign", "w-managed-by-only"];
    let west = ec2.register_with(WEST, &west_names, base_unless(&["w-foreign", "w-managed-by-only"]));
    let wid = |name: &str| &west[west_names.iter().position(|n| *n == name).unwrap()];
    ec2.tag(WEST, &[wid("w-managed-by-only")], &[("managed-by", "spark-packer")]);

    let running =
        ec2.call(EAST, &["run-instances", "--image-id", id("run-by-instance"), "--instance-type", "t3.micro"]);
    assert_eq!(running["Instances"][0]["ImageId"], id("run-by-instance").as_str());
    let terminated = ec2
        .call(EAST, &["run-instances", "--image-id", id("run-by-terminated-instance"), "--instance-type", "t3.micro"]);
    let terminated_id = terminated["Instances"][0]["InstanceId"].as_str().unwrap();
    ec2.call(EAST, &["terminate-instances", "--instance-ids", terminated_id]);
    // Template versions: v1 (neither default nor latest) names an AMI that may
    // go; v2 is the default, v3 the latest, which names an AMI that must stay.
    let template_data = |image: &str| format!("{{\"ImageId\":\"{image}\"}}");
    ec2.call(
        EAST,
        &[
            "create-launch-template",
            "--launch-template-name",
            "workers",
            "--launch-template-data",
            &template_data(id("in-old-template-version")),
        ],
    );
    let source = ec2.call(EAST, &["describe-images", "--owners", "amazon", "--query", "Images[0].ImageId"]);
    for image in [source.as_str().unwrap(), id("in-latest-template")] {
        ec2.call(
            EAST,
            &[
                "create-launch-template-version",
                "--launch-template-name",
                "workers",
                "--launch-template-data",
                &template_data(image),
            ],
        );
    }
    ec2.call(EAST, &["modify-launch-template", "--launch-template-name", "workers", "--default-version", "2"]);
    ec2.call(EAST, &["modify-image-attribute", "--image-id", id("public"), "--launch-permission", "Add=[{Group=all}]"]);

    let ami_list = dir.join("ami-list");
    ami_list::write(&ami_list, &Cell { image: "base".into(), region: EAST.into(), slot: "hvm".into() }, id("listed"))
        .unwrap();
    ami_list::write(
        &ami_list,
        &Cell { image: "base".into(), region: WEST.into(), slot: "hvm".into() },
        wid("w-listed"),
    )
    .unwrap();

    // Batch 2, newer: the newest of each family, kept by --keep 1 alone.
    thread::sleep(Duration::from_secs(2));
    let (east_newest, west_newest) = thread::scope(|scope| {
        let register_and_tag = |region, name| ec2.register_factory(region, &[name], "base").remove(0);
        let west = scope.spawn(move || register_and_tag(WEST, "w-newest"));
        (register_and_tag(EAST, "newest"), west.join().unwrap())
    });

    // Batch 3, young: two in a family of their own. One is its newest; the
    // other is kept only because it is younger than --min-age.
    thread::sleep(Duration::from_secs(2));
    let young = ec2.register_factory(EAST, &["young-1", "young-2"], "spark-3.5.3");

    // Ages as of the youngest AMI, with a minimum age that covers batch 3 only.
    let before = account(&ec2);
    let created = |id: &String| before.images[id].0;
    let as_of = young.iter().map(created).max().unwrap();
    let min_age = as_of - young.iter().map(created).min().unwrap() + 1;
    assert!(as_of - created(&east_newest) >= min_age, "batch 2 must count as old");
    let as_of_text = project::rfc3339(as_of);
    let min_age_text = format!("{min_age}s");
    let args = ["--region", "us-east-1,us-west-2", "--keep", "1", "--min-age", &min_age_text, "--as-of", &as_of_text];

    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (name, verdict) in [
        ("old-1", "delete"),
        ("old-2", "delete"),
        ("listed", "in-ami-list"),
        ("run-by-instance", "in-use"),
        ("in-latest-template", "in-use"),
        ("in-old-template-version", "delete"),
        ("run-by-terminated-instance", "delete"),
        ("public", "public"),
        ("foreign", "not-factory"),
    ] {
        want.insert(id(name).clone(), verdict.to_string());
    }
    for (name, verdict) in [
        ("w-old-1", "delete"),
        ("w-old-2", "delete"),
        ("w-listed", "in-ami-list"),
        ("w-foreign", "not-factory"),
        ("w-managed-by-only", "not-factory"),
    ] {
        want.insert(wid(name).clone(), verdict.to_string());
    }
    want.insert(east_newest.clone(), "newest".to_string());
    want.insert(west_newest.clone(), "newest".to_string());
    // The tie-break is by creation time, then the greater image ID.
    let mut by_age = young.clone();
    by_age.sort_by_key(|id| (created(id), id.clone()));
    want.insert(by_age[0].clone(), "young".to_string());
    want.insert(by_age[1].clone(), "young+newest".to_string());

    let doomed: BTreeSet<String> = want.iter().filter(|(_, v)| *v == "delete").map(|(k, _)| k.clone()).collect();
    assert_eq!(doomed.len(), 6);
    let doomed_snapshots: BTreeSet<String> = doomed.iter().flat_map(|id| before.images[id].1.clone()).collect();
    assert_eq!(doomed_snapshots.len(), 6, "moto gives every image one snapshot");

    // The dry run decides, and changes nothing.
    let dry = clean(&ec2, &ami_list, &args);
    assert!(dry.status.success(), "dry run failed:\n{}", String::from_utf8_lossy(&dry.stderr));
    let dry_report = report(&dry);
    assert_eq!(dry_report["dry_run"], true);
    assert_eq!(verdicts(&dry_report), want);
    assert_eq!(reported_snapshots(&dry_report), doomed_snapshots);
    assert_eq!(dry_report["summary"]["deleted"], 6);
    assert_eq!(dry_report["summary"]["not_factory"], 3);
    assert_eq!(
        dry_report["summary"]["kept"],
        serde_json::json!({"in-ami-list": 2, "in-use": 2, "public": 1, "young": 2, "newest": 2})
    );
    assert_eq!(account(&ec2), before, "the dry run changed the account");

    // --yes deletes exactly those, and their snapshots, and nothing else.
    let yes_args: Vec<&str> = args.iter().copied().chain(["--yes"]).collect();
    let wet = clean(&ec2, &ami_list, &yes_args);
    assert!(wet.status.success(), "--yes failed:\n{}", String::from_utf8_lossy(&wet.stderr));
    let wet_report = report(&wet);
    assert_eq!(verdicts(&wet_report), want);
    let deregistered: BTreeSet<String> = wet_report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["deregistered"].as_array().unwrap())
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(deregistered, doomed);
    assert_eq!(reported_snapshots(&wet_report), doomed_snapshots);
    let after = account(&ec2);
    let kept_images: BTreeSet<&String> = before.images.keys().filter(|id| !doomed.contains(*id)).collect();
    assert_eq!(after.images.keys().collect::<BTreeSet<_>>(), kept_images, "images");
    assert_eq!(after.snapshots, before.snapshots.difference(&doomed_snapshots).cloned().collect(), "snapshots");
    assert_eq!(after.others, before.others, "instances and launch templates");
}

#[test]
fn an_error_in_one_region_does_not_stop_the_others_and_fails_the_run() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("region-error").join("ami-list");
    fs::create_dir_all(&ami_list).unwrap();

    let old = ec2.register_factory(EAST, &["old"], "base").remove(0);
    thread::sleep(Duration::from_millis(1100));
    let newest = ec2.register_factory(EAST, &["newest"], "base").remove(0);

    // moto answers a region it does not know with an error.
    let output =
        clean(&ec2, &ami_list, &["--region", "us-east-1,xx-nowhere-1", "--keep", "1", "--min-age", "0s", "--yes"]);
    assert!(!output.status.success(), "an error in a region must fail the run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("xx-nowhere-1"), "{stderr}");
    let report = report(&output);
    let regions: BTreeMap<&str, &Value> =
        report["regions"].as_array().unwrap().iter().map(|r| (r["region"].as_str().unwrap(), r)).collect();
    assert_eq!(regions["us-east-1"]["errors"], serde_json::json!([]));
    assert_eq!(regions["us-east-1"]["deregistered"], serde_json::json!([old]));
    assert!(!regions["xx-nowhere-1"]["errors"].as_array().unwrap().is_empty());
    assert_eq!(report["summary"]["errors"], 1);
    assert_eq!(ec2.own_images(EAST).into_keys().collect::<Vec<_>>(), vec![newest]);
}

/// Settings that could delete more than asked stop the run before any call.
#[test]
fn unsafe_settings_stop_the_run_before_anything_is_listed() {
    // Nothing listens on the discard port: a call would fail differently.
    let ec2 = Ec2 { program: PathBuf::from("aws"), endpoint: "http://127.0.0.1:9".to_string() };
    let dir = scratch("unsafe");
    let ami_list = dir.join("ami-list");
    fs::create_dir_all(&ami_list).unwrap();
    let cases: [(&[&str], &Path, &str); 3] = [
        (&["--yes"], &dir.join("no-such-ami-list"), "does not exist"),
        (&["--yes", "--as-of", "2999-01-01T00:00:00Z"], &ami_list, "is in the future"),
        (&["--yes", "--keep", "0"], &ami_list, "--keep"),
    ];
    for (args, ami_list, message) in cases {
        let output = clean(&ec2, ami_list, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} ran");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("listing images"), "{args:?} reached EC2: {stderr}");
    }
}

#[test]
fn ctrl_c_stops_new_deregistrations_and_leaves_no_orphaned_snapshot() {
    use std::os::unix::process::CommandExt;
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("interrupted").join("ami-list");
    fs::create_dir_all(&ami_list).unwrap();

    // Enough old AMIs that the deregistrations, 16 aws calls at a time, take 3 waves:
    // the signal comes when the first has ended, so the last has not started.
    let names: Vec<String> = (0..48).map(|i| format!("old-{i:02}")).collect();
    ec2.register_factory(EAST, &names.iter().map(String::as_str).collect::<Vec<_>>(), "base");
    let before = ec2.own_images(EAST);

    // As a terminal does: its own process group, and Ctrl-C to the whole group.
    let args = ["--region", EAST, "--keep", "1", "--min-age", "0", "--yes"];
    let child = clean_command(&ec2, &ami_list, &args)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while ec2.own_images(EAST).len() == before.len() {
        assert!(started.elapsed() < Duration::from_secs(120), "no AMI was deregistered");
    }
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: no more AMIs will be deregistered"), "{stderr}");
    let summary = &report(&output)["summary"];
    let (deleted, not_started) = (summary["deleted"].as_u64().unwrap(), summary["not_started"].as_u64().unwrap());
    assert!(deleted >= 1 && not_started >= 1, "the signal must land mid-run: {summary}");
    assert_eq!(deleted + not_started, 47, "{summary}");

    // Each AMI is whole or wholly gone: no snapshot outlives its image.
    let after = ec2.own_images(EAST);
    let snapshots = ec2.snapshots(EAST);
    for (id, (_, own)) in &before {
        let left: Vec<&String> = own.iter().filter(|s| snapshots.contains(*s)).collect();
        if after.contains_key(id) {
            assert_eq!(left.len(), own.len(), "{id} is still registered but lost snapshots");
        } else {
            assert!(left.is_empty(), "{id} was deregistered but left {left:?}");
        }
    }
    assert_eq!(after.len() as u64, 48 - deleted);

    // The same command again finishes the job.
    let again = clean(&ec2, &ami_list, &args);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(ec2.own_images(EAST).len(), 1);
}

impl Ec2 {
    /// Another service than EC2 (autoscaling), the same way.
    fn call_service(&self, service: &str, region: &str, args: &[&str]) -> Value {
        let mut command = Command::new(&self.program);
        command.args(["--endpoint-url", &self.endpoint, "--region", region, "--output", "json", service]).args(args);
        for (key, value) in local::DUMMY_CREDENTIALS {
            command.env(key, value);
        }
        let output = command.output().expect("run the venv's aws CLI");
        assert!(output.status.success(), "aws {service} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    /// Snapshot ID -> (description, tags), for every snapshot the account owns.
    fn snapshot_facts(&self, region: &str) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
        let out = self.call(region, &["describe-snapshots", "--owner-ids", "self"]);
        out["Snapshots"]
            .as_array()
            .unwrap()
            .iter()
            // moto lists its own source images' snapshots under "self" too.
            .filter(|s| s["OwnerId"] == "123456789012")
            .map(|s| {
                let tags = s["Tags"].as_array().into_iter().flatten();
                let tags = tags.map(|t| (t["Key"].as_str().unwrap().into(), t["Value"].as_str().unwrap().into()));
                (
                    s["SnapshotId"].as_str().unwrap().into(),
                    (s["Description"].as_str().unwrap_or("").into(), tags.collect()),
                )
            })
            .collect()
    }
}

/// Runs the real `build-amis --no-provision` of base hvm x86_64 `runs` times,
/// a second apart so each run is strictly newer; returns each run's AMI per region.
fn build_base(ec2: &Ec2, ami_list: &Path, regions: &str, runs: usize) -> Vec<BTreeMap<String, String>> {
    (0..runs)
        .map(|run| {
            if run > 0 {
                thread::sleep(Duration::from_millis(1100));
            }
            // --force: an unchanged build is skipped as current, and each run must make new AMIs.
            let mut command = common::xtask(&["build-amis", "--no-provision", "--preset", "seed-2014", "--json"]);
            command.args(["--image", "base", "--virt", "hvm", "--region", regions, "--endpoint", &ec2.endpoint]);
            command.arg("--force");
            let output = command.arg("--ami-list").arg(ami_list).output().unwrap();
            assert!(output.status.success(), "build-amis: {}", common::text(&output));
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            let amis = report["builds"][0]["amis"].as_object().unwrap();
            amis.iter().map(|(region, id)| (region.clone(), id.as_str().unwrap().to_string())).collect()
        })
        .collect()
}

fn succeeded(output: &Output) -> Value {
    assert!(output.status.success(), "clean-old-amis failed:\n{}", String::from_utf8_lossy(&output.stderr));
    report(output)
}

/// The reasons one image is kept, with their details, from a report.
fn kept_because(report: &Value, id: &str) -> Vec<(String, String)> {
    let regions = report["regions"].as_array().unwrap();
    let decision = regions.iter().flat_map(|r| r["decisions"].as_array().unwrap()).find(|d| d["image_id"] == id);
    let why = decision.unwrap_or_else(|| panic!("{id} is not in the report"))["kept_because"].as_array().unwrap();
    why.iter().map(|w| (w["reason"].as_str().unwrap().into(), w["detail"].as_str().unwrap().into())).collect()
}

const ACT: [&str; 7] = ["--region", EAST, "--keep", "1", "--min-age", "0s", "--yes"];

/// Repro 3: an AMI shared with another account by launch permission was deleted.
#[test]
fn repro_3a_an_old_factory_ami_shared_with_an_account_is_kept() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("shared").join("ami-list");
    let runs = build_base(&ec2, &ami_list, EAST, 3);
    let [shared, superseded, newest] = [0, 1, 2].map(|run| runs[run][EAST].clone());
    let permission = "Add=[{UserId=111122223333}]";
    ec2.call(EAST, &["modify-image-attribute", "--image-id", &shared, "--launch-permission", permission]);

    let report = succeeded(&clean(&ec2, &ami_list, &ACT));
    let want = [(&shared, "shared"), (&superseded, "delete"), (&newest, "in-ami-list+newest")];
    assert_eq!(verdicts(&report), want.iter().map(|(id, v)| (id.to_string(), v.to_string())).collect());
    assert_eq!(
        kept_because(&report, &shared),
        [("shared".to_string(), "launch permission for account 111122223333".to_string())]
    );
    let left = ec2.own_images(EAST);
    assert!(left.contains_key(&shared), "the shared AMI was deleted");
    assert!(!left.contains_key(&superseded), "the run deleted nothing: the test shows nothing");
}

/// Repro 3: an AMI an Auto Scaling launch configuration launches was deleted.
#[test]
fn repro_3b_an_old_factory_ami_in_a_launch_configuration_is_kept() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("launch-configuration").join("ami-list");
    let runs = build_base(&ec2, &ami_list, EAST, 3);
    let [configured, superseded, newest] = [0, 1, 2].map(|run| runs[run][EAST].clone());
    let name = ["create-launch-configuration", "--launch-configuration-name", "old-workers"];
    let launch = ["--instance-type", "t3.micro", "--image-id", &configured];
    ec2.call_service("autoscaling", EAST, &[&name[..], &launch[..]].concat());

    let report = succeeded(&clean(&ec2, &ami_list, &ACT));
    let want = [(&configured, "in-use"), (&superseded, "delete"), (&newest, "in-ami-list+newest")];
    assert_eq!(verdicts(&report), want.iter().map(|(id, v)| (id.to_string(), v.to_string())).collect());
    assert_eq!(
        kept_because(&report, &configured),
        [("in-use".to_string(), "launch configuration old-workers".to_string())]
    );
    let left = ec2.own_images(EAST);
    assert!(left.contains_key(&configured), "the AMI of a launch configuration was deleted");
    assert!(!left.contains_key(&superseded), "the run deleted nothing: the test shows nothing");
}

/// Repro 3: an AMI made by hand and tagged `managed-by=spark-packer` was deleted.
#[test]
fn repro_3c_a_hand_made_ami_tagged_only_managed_by_is_never_touched() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("hand-made").join("ami-list");
    let hand_made = ec2.register(EAST, &["my-spark-image"]).remove(0);
    ec2.tag(EAST, &[&hand_made], &[("managed-by", "spark-packer")]);
    // A copy someone named themselves, with every factory tag: not the factory's name.
    let renamed = ec2.register(EAST, &["my-copy-of-base"]).remove(0);
    ec2.tag_json(EAST, &renamed, &factory_tags("base", &next_run_id()));
    thread::sleep(Duration::from_millis(1100));
    let runs = build_base(&ec2, &ami_list, EAST, 2);
    let [superseded, newest] = [0, 1].map(|run| runs[run][EAST].clone());
    let before = ec2.own_images(EAST);

    let report = succeeded(&clean(&ec2, &ami_list, &ACT));
    let got = verdicts(&report);
    assert_eq!(got[&hand_made], "not-factory");
    assert_eq!(got[&renamed], "not-factory");
    assert_eq!(got[&superseded], "delete", "the run deleted nothing: the test shows nothing");
    assert_eq!(got[&newest], "in-ami-list+newest");
    let detail = &kept_because(&report, &hand_made)[0].1;
    assert!(detail.contains("no spark-packer:run-id tag"), "{detail}");
    let left = ec2.own_images(EAST);
    for id in [&hand_made, &renamed] {
        assert_eq!(left.get(id), before.get(id), "{id} or its snapshots changed");
    }
    assert!(!left.contains_key(&superseded));
}

/// Repro 5: a cleanup killed between deregistering AMIs and deleting their
/// snapshots left factory snapshots with no AMI, and rerunning never deleted them.
#[test]
fn repro_5_a_rerun_deletes_the_orphan_snapshots_a_killed_cleanup_left() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ec2 = Ec2::new(&emulator);
    let ami_list = scratch("orphans").join("ami-list");
    let regions = format!("{EAST},{WEST}");
    // Three runs, each copied to the other region (moto describes a copy's snapshot its own way).
    let runs = build_base(&ec2, &ami_list, &regions, 3);
    // What a kill -9 after the deregistrations leaves: the old runs' AMIs gone, their snapshots not.
    for run in &runs[..2] {
        for (region, id) in run {
            ec2.call(region, &["deregister-image", "--image-id", id]);
        }
    }
    // Snapshots that are not the factory's: a hand-made AMI's, deregistered,
    // its snapshot tagged managed-by only; and one with every factory tag but
    // a description no AMI wrote.
    let hand_made = ec2.register(EAST, &["my-image"]).remove(0);
    let hand_made_snapshot = ec2.own_images(EAST)[&hand_made].1[0].clone();
    ec2.tag(EAST, &[&hand_made_snapshot], &[("managed-by", "spark-packer")]);
    ec2.call(EAST, &["deregister-image", "--image-id", &hand_made]);
    let volume = ec2.call(EAST, &["create-volume", "--availability-zone", "us-east-1a", "--size", "1"]);
    let volume_id = volume["VolumeId"].as_str().unwrap();
    let backup = ec2.call(EAST, &["create-snapshot", "--volume-id", volume_id, "--description", "my backup"]);
    let backup = backup["SnapshotId"].as_str().unwrap().to_string();
    ec2.tag_json(EAST, &backup, &factory_tags("base", &next_run_id()));

    let facts = |region| ec2.snapshot_facts(region);
    let before: BTreeMap<&str, _> = [EAST, WEST].into_iter().map(|r| (r, facts(r))).collect();
    let gone: BTreeSet<&String> = runs[..2].iter().flat_map(|run| run.values()).collect();
    let orphans = |snapshots: &BTreeMap<String, (String, BTreeMap<String, String>)>| -> BTreeSet<String> {
        snapshots
            .iter()
            .filter(|(_, (description, tags))| {
                factory::TAGS.iter().all(|tag| tags.contains_key(*tag))
                    && gone
                        .iter()
                        .any(|id| description.ends_with(id.as_str()) || description.contains(&format!("{id} ")))
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let want: BTreeSet<String> = before.values().flat_map(orphans).collect();
    assert_eq!(want.len(), 4, "two runs' snapshots in two regions: {before:#?}");
    assert_eq!(before[EAST][&backup].1.len(), factory::TAGS.len(), "the backup carries every factory tag");
    assert_eq!(before[EAST][&hand_made_snapshot].1.get("managed-by").map(String::as_str), Some("spark-packer"));

    let args = ["--region", &regions, "--keep", "1", "--min-age", "0s"];
    let dry = succeeded(&clean(&ec2, &ami_list, &args));
    let listed = |report: &Value| -> BTreeSet<String> {
        let regions = report["regions"].as_array().unwrap();
        let orphans = regions.iter().flat_map(|r| r["orphan_snapshots"].as_array().unwrap());
        orphans.map(|s| s["snapshot_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(listed(&dry), want, "the dry run lists exactly the factory's orphans");
    assert_eq!(dry["summary"]["orphan_snapshots_deleted"], 4);
    assert_eq!([EAST, WEST].map(facts), [before[EAST].clone(), before[WEST].clone()], "the dry run changed snapshots");

    let yes: Vec<&str> = args.iter().copied().chain(["--yes"]).collect();
    let wet = succeeded(&clean(&ec2, &ami_list, &yes));
    assert_eq!(listed(&wet), want);
    let after: BTreeMap<&str, _> = [EAST, WEST].into_iter().map(|r| (r, facts(r))).collect();
    assert_eq!(after.values().flat_map(orphans).count(), 0, "orphan factory snapshots left");
    for region in [EAST, WEST] {
        let kept: BTreeSet<&String> = before[region].keys().filter(|id| !want.contains(*id)).collect();
        assert_eq!(
            after[region].keys().collect::<BTreeSet<_>>(),
            kept,
            "{region}: a snapshot not the factory's orphan went"
        );
    }
    // The newest run is whole: its AMIs and their snapshots.
    for (region, id) in &runs[2] {
        assert!(ec2.own_images(region).contains_key(id), "{region}: {id}");
    }
}
