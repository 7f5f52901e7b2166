//! `cargo xtask build-amis` end to end: the real Packer against a real EC2
//! emulator (moto server) on a loopback port, API-only (`--no-provision`).
//! Each test starts its own emulator and writes its own ami-list under
//! target/, never the checked-in one.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Output},
};

use xshell::Shell;
use xtask::{aws::Image, local, project};

mod common;
use common::{emulator_shell, matrix_with_unmatched_pv_source, scratch, SEED_REGIONS};

fn build_amis(emulator: &local::Emulator, ami_list: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["build-amis", "--no-provision", "--preset", "seed-2014", "--json"])
        .arg("--endpoint")
        .arg(emulator.endpoint())
        .arg("--ami-list")
        .arg(ami_list)
        .args(extra);
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    command.output().expect("run the xtask binary")
}

/// Every file of an ami-list tree: "image/region/slot" -> its content.
fn read_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let key = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(key, fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn seed_cells() -> Vec<String> {
    let mut cells = Vec::new();
    for image in ["base", "spark-3.5.3"] {
        for region in SEED_REGIONS {
            for slot in ["hvm", "pv"] {
                cells.push(format!("{image}/{region}/{slot}"));
            }
        }
    }
    cells.sort();
    cells
}

/// The factory's images in every seed region, as the emulator reports them.
fn images_by_region(emulator: &local::Emulator) -> BTreeMap<String, BTreeMap<String, Image>> {
    let sh = emulator_shell();
    let aws = emulator.aws();
    SEED_REGIONS
        .iter()
        .map(|region| {
            let images = aws.factory_images(&sh, region).unwrap();
            (region.to_string(), images.into_iter().map(|i| (i.image_id.clone(), i)).collect())
        })
        .collect()
}

fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("--json printed no report ({e}); stderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// Each recorded ID exists in the emulator, in its file's region, with the
/// file's virtualization type and the factory's tags from this run.
fn assert_recorded_amis_exist(emulator: &local::Emulator, tree: &BTreeMap<String, String>, run_id: &str) {
    let images = images_by_region(emulator);
    for (cell, content) in tree {
        let [image, region, slot] = cell.split('/').collect::<Vec<_>>()[..] else { panic!("bad cell {cell}") };
        let id = content.strip_suffix('\n').unwrap_or_else(|| panic!("{cell}: no trailing newline: {content:?}"));
        let found = images[region].get(id).unwrap_or_else(|| panic!("{cell}: {id} is not a factory image in {region}"));
        let virtualization = if slot == "pv" { "paravirtual" } else { "hvm" };
        assert_eq!(found.virtualization_type, virtualization, "{cell}: {id}");
        let tags = found.tags();
        assert_eq!(tags.get("managed-by"), Some(&"spark-packer"), "{cell}: {id}");
        assert_eq!(tags.get("spark-packer:image"), Some(&image), "{cell}: {id}");
        assert_eq!(tags.get("spark-packer:virtualization"), Some(&slot), "{cell}: {id}");
        assert_eq!(tags.get("spark-packer:architecture"), Some(&"x86_64"), "{cell}: {id}");
        assert_eq!(tags.get("spark-packer:run-id"), Some(&run_id), "{cell}: {id}");
        let spark = if image == "base" { "none" } else { "3.5.3" };
        assert_eq!(tags.get("spark-packer:spark-version"), Some(&spark), "{cell}: {id}");
    }
}

fn assert_succeeded(output: &Output) {
    assert!(output.status.success(), "build-amis failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Instances launched per region, whatever their state now.
fn launches(emulator: &local::Emulator) -> BTreeMap<String, usize> {
    let sh = emulator_shell();
    let aws = emulator.aws();
    SEED_REGIONS
        .iter()
        .map(|region| (region.to_string(), aws.instance_states(&sh, region).unwrap().values().sum()))
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[test]
fn copy_mode_records_32_amis_a_second_run_skips_them_and_force_replaces_them() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ami_list = scratch("copy").join("ami-list");

    let first = build_amis(&emulator, &ami_list, &["--strategy", "copy"]);
    assert_succeeded(&first);
    let first_report = report(&first);
    assert_eq!(first_report["builds"].as_array().unwrap().len(), 4);
    let first_tree = read_tree(&ami_list);
    assert_eq!(first_tree.keys().cloned().collect::<Vec<_>>(), seed_cells());
    assert_recorded_amis_exist(&emulator, &first_tree, first_report["run_id"].as_str().unwrap());
    // The copy strategy launches each of the 4 builds once, in the build region.
    assert_eq!(launches(&emulator), BTreeMap::from([("us-east-1".to_string(), 4)]));

    // Nothing changed: every build is current, nothing launches, no Packer runs.
    let second = build_amis(&emulator, &ami_list, &["--strategy", "copy"]);
    assert_succeeded(&second);
    let second_report = report(&second);
    let statuses: Vec<&str> =
        second_report["builds"].as_array().unwrap().iter().map(|b| b["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["current"; 4], "{second_report:#}");
    assert_eq!(launches(&emulator), BTreeMap::from([("us-east-1".to_string(), 4)]), "a current build launched");
    assert_eq!(read_tree(&ami_list), first_tree, "a current build changed the tree");
    let logs = project::target_dir().join("packer-logs").join(second_report["run_id"].as_str().unwrap());
    let packer_logs = fs::read_dir(&logs)
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).count())
        .unwrap_or(0);
    assert_eq!(packer_logs, 0, "Packer ran in a run with nothing to build");

    let third = build_amis(&emulator, &ami_list, &["--strategy", "copy", "--force"]);
    assert_succeeded(&third);
    let third_report = report(&third);
    assert_ne!(first_report["run_id"], third_report["run_id"]);
    let third_tree = read_tree(&ami_list);
    assert_eq!(third_tree.keys().cloned().collect::<Vec<_>>(), seed_cells());
    for (cell, id) in &third_tree {
        assert_ne!(&first_tree[cell], id, "{cell}: --force did not replace the ID");
    }
    assert_recorded_amis_exist(&emulator, &third_tree, third_report["run_id"].as_str().unwrap());
}

#[test]
fn native_mode_records_32_amis_built_in_their_own_regions() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let ami_list = scratch("native").join("ami-list");

    let output = build_amis(&emulator, &ami_list, &["--strategy", "native"]);
    assert_succeeded(&output);
    let report = report(&output);
    assert_eq!(report["builds"].as_array().unwrap().len(), 32);
    let tree = read_tree(&ami_list);
    assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), seed_cells());
    assert_recorded_amis_exist(&emulator, &tree, report["run_id"].as_str().unwrap());
    // Native builds launch 4 instances in every region and copy nothing.
    let every_region_four = SEED_REGIONS.iter().map(|r| (r.to_string(), 4)).collect::<BTreeMap<_, _>>();
    assert_eq!(launches(&emulator), every_region_four);
}

#[test]
fn a_failing_build_leaves_the_others_written_and_its_own_ids_untouched() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("failing");
    let ami_list = dir.join("ami-list");

    let earlier = build_amis(&emulator, &ami_list, &[]);
    assert_succeeded(&earlier);
    let earlier_tree = read_tree(&ami_list);

    // A PV source filter that matches nothing makes the two PV builds fail.
    let broken_matrix = matrix_with_unmatched_pv_source(&dir);

    // --force: the HVM builds are current, and this test is about what a rebuild records.
    let output = build_amis(&emulator, &ami_list, &["--force", "--matrix", broken_matrix.to_str().unwrap()]);
    assert!(!output.status.success(), "a failed build must fail the run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2 of 4 builds failed"), "{stderr}");
    let report = report(&output);
    let statuses: BTreeMap<&str, &str> = report["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("base-hvm-x86_64", "ok"),
            ("base-pv-x86_64", "failed"),
            ("spark-3.5.3-hvm-x86_64", "ok"),
            ("spark-3.5.3-pv-x86_64", "failed"),
        ])
    );

    let tree = read_tree(&ami_list);
    assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), seed_cells());
    for (cell, id) in &tree {
        if cell.ends_with("/pv") {
            assert_eq!(&earlier_tree[cell], id, "{cell}: a failed build changed its ID");
        } else {
            assert_ne!(&earlier_tree[cell], id, "{cell}: a successful build did not record its ID");
        }
    }
    let hvm_only: BTreeMap<String, String> = tree.into_iter().filter(|(cell, _)| cell.ends_with("/hvm")).collect();
    assert_recorded_amis_exist(&emulator, &hvm_only, report["run_id"].as_str().unwrap());
}

/// The base AMI a Spark AMI was built on, from its `spark-packer:base-ami` tag.
fn base_ami_tag(images: &BTreeMap<String, BTreeMap<String, Image>>, region: &str, id: &str) -> String {
    let image = images[region].get(id).unwrap_or_else(|| panic!("{id} is not a factory image in {region}"));
    image.tags().get("spark-packer:base-ami").unwrap_or_else(|| panic!("{id}: no base-ami tag")).to_string()
}

#[test]
fn spark_on_base_starts_from_this_runs_base_or_the_recorded_one() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("on-base");
    let ami_list = dir.join("ami-list");
    let spark_only = ["--spark-on-base", "--image", "spark-3.5.3"];

    // No base in the run and none recorded: refused per build, nothing written.
    let output = build_amis(&emulator, &ami_list, &spark_only);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no base AMI is recorded in") && stderr.contains("base/us-east-1/hvm"), "{stderr}");
    assert!(read_tree(&ami_list).is_empty());

    // Base and Spark in one run: each Spark AMI is built on this run's base AMI.
    let output = build_amis(&emulator, &ami_list, &["--spark-on-base"]);
    assert_succeeded(&output);
    let tree = read_tree(&ami_list);
    assert_eq!(tree.keys().cloned().collect::<Vec<_>>(), seed_cells());
    assert_recorded_amis_exist(&emulator, &tree, report(&output)["run_id"].as_str().unwrap());
    assert_eq!(launches(&emulator), BTreeMap::from([("us-east-1".to_string(), 4)]));
    let id = |tree: &BTreeMap<String, String>, cell: &str| tree[cell].trim_end().to_string();
    let images = images_by_region(&emulator);
    for slot in ["hvm", "pv"] {
        let spark = id(&tree, &format!("spark-3.5.3/us-east-1/{slot}"));
        assert_eq!(base_ami_tag(&images, "us-east-1", &spark), id(&tree, &format!("base/us-east-1/{slot}")));
    }
    for region in SEED_REGIONS {
        let base = id(&tree, &format!("base/{region}/hvm"));
        assert_eq!(base_ami_tag(&images, region, &base), "none", "a base AMI is built from the stock image");
    }

    // Spark alone (forced: it is current): built on the base AMIs ami-list records, which stay as they are.
    let output = build_amis(&emulator, &ami_list, &[&spark_only[..], &["--force"]].concat());
    assert_succeeded(&output);
    let after = read_tree(&ami_list);
    let images = images_by_region(&emulator);
    for slot in ["hvm", "pv"] {
        let base_cell = format!("base/us-east-1/{slot}");
        assert_eq!(after[&base_cell], tree[&base_cell]);
        let spark = id(&after, &format!("spark-3.5.3/us-east-1/{slot}"));
        assert_ne!(spark, id(&tree, &format!("spark-3.5.3/us-east-1/{slot}")));
        assert_eq!(base_ami_tag(&images, "us-east-1", &spark), id(&tree, &base_cell));
    }

    // A base that fails takes down only the Spark build on it.
    let broken_matrix = matrix_with_unmatched_pv_source(&dir);
    let output =
        build_amis(&emulator, &ami_list, &["--spark-on-base", "--force", "--matrix", broken_matrix.to_str().unwrap()]);
    assert!(!output.status.success());
    let report = report(&output);
    let outcome: BTreeMap<&str, (&str, &str)> = report["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), (b["status"].as_str().unwrap(), b["error"].as_str().unwrap_or(""))))
        .collect();
    assert_eq!(outcome["base-hvm-x86_64"].0, "ok");
    assert_eq!(outcome["spark-3.5.3-hvm-x86_64"].0, "ok");
    assert_eq!(outcome["base-pv-x86_64"].0, "failed");
    let (status, error) = outcome["spark-3.5.3-pv-x86_64"];
    assert_eq!(status, "failed");
    assert!(error.starts_with("not built: its base, base-pv-x86_64, failed"), "{error}");
}

/// What cannot be provisioned is refused before anything launches: the
/// seed's PV builds (Amazon Linux AMI 2018.03, which the scripts refuse)
/// against an endpoint, and Amazon Linux with --local, which has no stand-in.
#[test]
fn builds_that_cannot_be_provisioned_are_refused_before_launch() {
    let sh = Shell::new().unwrap();
    let emulator = local::Emulator::start(&sh).unwrap();
    let dir = scratch("unprovable");
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .args(["build-amis", "--preset", "seed-2014", "--endpoint", &emulator.endpoint(), "--ami-list"])
        .arg(dir.join("ami-list"));
    for (key, value) in local::DUMMY_CREDENTIALS {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("amzn-pv (base-pv-x86_64, spark-3.5.3-pv-x86_64) cannot be provisioned: scripts/lib.sh says \"unsupported OS 'amzn 2018.03'")
            && stderr.contains("nothing was launched. Pass --no-provision"),
        "{stderr}"
    );
    assert_eq!(launches(&emulator), BTreeMap::new(), "a refused build launched");
    assert!(!dir.join("ami-list").exists(), "a refused run wrote ami-list");

    // With --local, Amazon Linux 2023: one line, naming what can be proven.
    let output = common::xtask(&["build-amis", "--local", "--preset", "seed-2014", "--os", "al2023"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: --local cannot prove al2023 (base-hvm-x86_64, spark-3.5.3-hvm-x86_64): it has no local stand-in; the families proven locally are debian-13, debian-12"),
        "{stderr}"
    );
    // API-only, the same builds are fine.
    let dry = common::xtask(&["build-amis", "--local", "--preset", "seed-2014", "--no-provision", "--dry-run"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", common::text(&dry));
}
