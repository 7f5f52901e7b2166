//! `cargo xtask publish` end to end: the seed matrix built API-only by the
//! real Packer against a moto server on loopback, then published where the
//! launch tools look: a spark_ec2.py layout fetched over HTTP exactly as
//! spark_ec2.py fetches it, SSM parameters in each cell's own region, and a
//! manifest. Every tree and export is under target/, never the checked-in one.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Output,
};

use xtask::{
    aws::Parameter,
    local::{self, mirror::MirrorServer},
    publishing::cells::{self, Cell},
};

mod common;
use common::{emulator_shell, path_with_venv_aws, scratch, text, xtask, SEED_REGIONS};

const PREFIX: &str = "/spark-packer";

/// The xtask at `emulator`, with the sandbox venv's aws CLI on PATH.
fn run(emulator: &local::Emulator, args: &[&str]) -> Output {
    xtask(args)
        .args(["--endpoint", &emulator.endpoint()])
        .env("PATH", path_with_venv_aws(emulator))
        .output()
        .expect("run the xtask binary")
}

/// Builds the seed matrix (or part of it, with `extra` filters) API-only;
/// returns the run id.
fn build(emulator: &local::Emulator, tree: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build-amis", "--no-provision", "--preset", "seed-2014", "--json", "--ami-list"];
    args.push(tree.to_str().unwrap());
    args.extend(extra);
    let output = run(emulator, &args);
    assert!(output.status.success(), "build-amis failed:\n{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["run_id"].as_str().unwrap().to_string()
}

fn publish(emulator: &local::Emulator, tree: &Path, args: &[&str]) -> Output {
    let mut all = vec!["publish", "--ami-list", tree.to_str().unwrap()];
    all.extend(args);
    run(emulator, &all)
}

fn outcome(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "publish failed:\n{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{}", text(output)))
}

/// How many of `outcome`'s SSM entries have each action.
fn ssm_actions(outcome: &serde_json::Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for p in outcome["ssm"].as_array().unwrap() {
        *counts.entry(p["action"].as_str().unwrap().to_string()).or_default() += 1;
    }
    counts
}

/// Every parameter under PREFIX in every seed region: (region, name) -> parameter.
fn parameters(emulator: &local::Emulator) -> BTreeMap<(String, String), Parameter> {
    let (sh, aws) = (emulator_shell(), emulator.aws());
    let mut out = BTreeMap::new();
    for region in SEED_REGIONS {
        for p in aws.parameters_by_path(&sh, region, PREFIX).unwrap() {
            out.insert((region.to_string(), p.name.clone()), p);
        }
    }
    out
}

fn name(cell: &Cell) -> String {
    format!("{PREFIX}/{}/{}/{}/latest/image_id", cell.image, cell.virt, cell.arch)
}

/// One GET as spark_ec2.py's urlopen does it: (status, body).
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[test]
fn spark_ec2_fetches_the_images_ids_from_the_export_and_the_manifest_lists_every_ami() {
    let sh = emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("publish-spark-ec2");
    let tree = dir.join("ami-list");
    let run_id = build(&emulator, &tree, &[]);
    // The export as a branch of a spark-ec2 fork would serve it: <raw repo>/<branch>/ami-list/...
    let www = dir.join("www");
    let export = www.join("branch-spark-packer/ami-list");
    let manifest = dir.join("amis.json");
    let args = ["--spark-ec2", export.to_str().unwrap(), "--image", "spark-3.5.3"];
    let first = outcome(&publish(
        &emulator,
        &tree,
        &[&args[..], &["--manifest", manifest.to_str().unwrap(), "--json"]].concat(),
    ));
    let files = first["spark_ec2"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 16, "8 regions x hvm, pvm: {files:?}");
    assert!(files.iter().all(|f| f["action"] == "create"), "{files:?}");

    let server = MirrorServer::start(&local::ensure_venv(&sh).unwrap(), &www).unwrap();
    let ami_prefix = format!("{}/branch-spark-packer/ami-list", server.url);
    for region in SEED_REGIONS {
        for (virt, file) in [("hvm", "hvm"), ("pv", "pvm")] {
            let (status, body) = http_get(&format!("{ami_prefix}/{region}/{file}"));
            assert_eq!(status, 200, "{region}/{file}");
            let recorded = fs::read_to_string(tree.join("spark-3.5.3").join(region).join(virt)).unwrap();
            assert_eq!(body, recorded, "{region}/{file}: one ID and a newline, the image's");
            assert!(body.starts_with("ami-") && body.ends_with('\n') && body.lines().count() == 1, "{body:?}");
        }
        assert_eq!(http_get(&format!("{ami_prefix}/{region}/pv")).0, 404, "spark_ec2.py never asks for pv");
    }
    let base_id = fs::read_to_string(tree.join("base/us-east-1/hvm")).unwrap();
    assert_ne!(http_get(&format!("{ami_prefix}/us-east-1/hvm")).1, base_id, "the export holds one image");

    let doc: serde_json::Value = serde_json::from_str(&fs::read_to_string(&manifest).unwrap()).unwrap();
    let recorded = cells::read_tree(&tree).unwrap();
    assert_eq!(recorded.len(), 32);
    for cell in &recorded {
        let amis = doc["images"][&cell.image]["amis"].as_array().unwrap();
        let ami =
            amis.iter().find(|a| a["region"] == cell.region.as_str() && a["virtualization"] == cell.virt.as_str());
        let ami = ami.unwrap_or_else(|| panic!("{} missing from the manifest", cell.path()));
        assert_eq!(ami["image_id"], cell.id.as_str(), "{}", cell.path());
        assert_eq!(ami["tags"]["run-id"], run_id.as_str(), "{}", cell.path());
    }
    assert_eq!(doc["images"]["spark-3.5.3"]["spark_version"], "3.5.3");
    assert_eq!(doc["images"]["base"]["spark_version"], "none");

    let again = outcome(&publish(
        &emulator,
        &tree,
        &[&args[..], &["--manifest", manifest.to_str().unwrap(), "--json"]].concat(),
    ));
    assert!(again["spark_ec2"]["files"].as_array().unwrap().iter().all(|f| f["action"] == "unchanged"), "{again}");
    assert_eq!(again["manifest"]["action"], "unchanged");
}

#[test]
fn ssm_writes_one_parameter_per_cell_keeps_history_and_validate_reports_a_hand_edit() {
    let sh = emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let aws = emulator.aws();
    let tree = scratch("publish-ssm").join("ami-list");
    let first_run = build(&emulator, &tree, &[]);
    let first = cells::read_tree(&tree).unwrap();

    let dry = outcome(&publish(&emulator, &tree, &["--ssm", PREFIX, "--dry-run", "--json"]));
    assert_eq!(ssm_actions(&dry), BTreeMap::from([("create".to_string(), 32)]));
    assert!(parameters(&emulator).is_empty(), "--dry-run wrote nothing");

    let written = outcome(&publish(&emulator, &tree, &["--ssm", PREFIX, "--json"]));
    assert_eq!(ssm_actions(&written), BTreeMap::from([("create".to_string(), 32)]));
    let params = parameters(&emulator);
    assert_eq!(params.len(), 32, "{:?}", params.keys());
    for cell in &first {
        let p = &params[&(cell.region.clone(), name(cell))];
        assert_eq!((p.value.as_str(), p.version), (cell.id.as_str(), 1), "{}", cell.path());
        assert_eq!((p.kind.as_str(), p.data_type.as_str()), ("String", "aws:ec2:image"), "{}", cell.path());
    }
    let probe = first.iter().find(|c| c.path() == "spark-3.5.3/sa-east-1/pv").unwrap();
    let history = aws.parameter_history(&sh, "sa-east-1", &name(probe)).unwrap();
    assert_eq!(history[0].labels, [format!("run-{first_run}")]);

    // --force: nothing changed, so the builds would be current (issue 16); this needs new AMIs.
    let second_run = build(&emulator, &tree, &["--force"]);
    let again = outcome(&publish(&emulator, &tree, &["--ssm", PREFIX, "--json"]));
    assert_eq!(ssm_actions(&again), BTreeMap::from([("update".to_string(), 32)]));
    let new_id = fs::read_to_string(tree.join("spark-3.5.3/sa-east-1/pv")).unwrap().trim().to_string();
    assert_ne!(new_id, probe.id);
    let history = aws.parameter_history(&sh, "sa-east-1", &name(probe)).unwrap();
    let versions: Vec<(u64, &str)> = history.iter().map(|p| (p.version, p.value.as_str())).collect();
    assert_eq!(versions, [(1, probe.id.as_str()), (2, new_id.as_str())], "the old value stays in history");
    assert_eq!(history[0].labels, [format!("run-{first_run}")]);
    assert_eq!(history[1].labels, [format!("run-{second_run}")]);
    let unchanged = outcome(&publish(&emulator, &tree, &["--ssm", PREFIX, "--json"]));
    assert_eq!(ssm_actions(&unchanged), BTreeMap::from([("unchanged".to_string(), 32)]), "no version 3");

    let validate = || {
        let args =
            ["validate", "--online", "--preset", "seed-2014", "--ssm", PREFIX, "--ami-list", tree.to_str().unwrap()];
        let output = run(&emulator, &args);
        let ssm_lines: Vec<String> =
            text(&output).lines().filter(|l| l.starts_with("ssm:")).map(String::from).collect();
        (output.status.success(), ssm_lines)
    };
    assert_eq!(validate(), (true, Vec::new()), "published parameters agree with ami-list");
    let hand = "/spark-packer/base/hvm/x86_64/latest/image_id";
    let other = fs::read_to_string(tree.join("base/us-east-1/hvm")).unwrap().trim().to_string();
    assert_eq!(aws.put_image_parameter(&sh, "us-west-1", hand, &other, true).unwrap(), 3);
    let (ok, lines) = validate();
    assert!(!ok);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("ssm:{hand}:1: in us-west-1 holds {other} (version 3) but ami-list records")),
        "{lines:?}"
    );

    let dry = outcome(&publish(&emulator, &tree, &["--ssm", PREFIX, "--dry-run", "--json"]));
    assert_eq!(ssm_actions(&dry), BTreeMap::from([("unchanged".to_string(), 31), ("update".to_string(), 1)]));
    assert_eq!(parameters(&emulator)[&("us-west-1".to_string(), hand.to_string())].version, 3, "dry run");
}

#[test]
fn a_missing_foreign_or_misfiled_ami_is_refused_and_nothing_is_written() {
    let sh = emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("publish-refuse");
    let tree = dir.join("ami-list");
    build(&emulator, &tree, &[]);
    // Amazon's source image is in every region of the emulator, untagged.
    let sources: serde_json::Value = serde_json::from_str(&fs::read_to_string(local::source_amis()).unwrap()).unwrap();
    let foreign = sources[0]["ami_id"].as_str().unwrap();
    let spark = fs::read_to_string(tree.join("spark-3.5.3/us-west-2/hvm")).unwrap();
    fs::write(tree.join("base/eu-west-1/hvm"), "ami-0123456789abcdef0\n").unwrap();
    fs::write(tree.join("base/us-east-1/hvm"), format!("{foreign}\n")).unwrap();
    fs::write(tree.join("base/us-west-2/hvm"), &spark).unwrap();

    let export = dir.join("export");
    let manifest = dir.join("amis.json");
    let output = publish(
        &emulator,
        &tree,
        &[
            "--ssm",
            PREFIX,
            "--spark-ec2",
            export.to_str().unwrap(),
            "--image",
            "base",
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("refusing to publish anything: 3 problem(s)"), "{said}");
    assert!(said.contains("base/eu-west-1/hvm: ami-0123456789abcdef0 does not exist in eu-west-1"), "{said}");
    assert!(said.contains(&format!("base/us-east-1/hvm: {foreign} is not the factory's")), "{said}");
    assert!(
        said.contains("base/us-west-2/hvm: ")
            && said.contains("spark-packer:image=spark-3.5.3 but recorded under `base`"),
        "{said}"
    );
    assert!(parameters(&emulator).is_empty(), "no parameter written");
    assert!(!export.exists() && !manifest.exists(), "no file written");
}

#[test]
fn build_amis_publishes_only_the_cells_its_run_recorded() {
    let sh = emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let tree = scratch("publish-build").join("ami-list");
    build(&emulator, &tree, &["--image", "base", "--publish-ssm", PREFIX]);
    let params = parameters(&emulator);
    assert_eq!(params.len(), 16, "{:?}", params.keys());
    for cell in cells::read_tree(&tree).unwrap() {
        assert_eq!(cell.image, "base");
        assert_eq!(params[&(cell.region.clone(), name(&cell))].value, cell.id, "{}", cell.path());
    }
}

#[test]
fn build_amis_refuses_a_bad_publish_prefix_before_any_build() {
    let tree = scratch("publish-bad-prefix").join("ami-list");
    // Nothing listens on port 9: a build that started would fail differently.
    let args = ["build-amis", "--no-provision", "--publish-ssm", "/aws/spark", "--endpoint", "http://127.0.0.1:9"];
    let output = xtask(&args).args(["--ami-list", tree.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let said = text(&output);
    assert!(
        said.contains("error: --publish-ssm: SSM prefix \"/aws/spark\": names under /aws and /ssm are reserved"),
        "{said}"
    );
    assert!(!tree.exists(), "nothing was built or recorded");
}
