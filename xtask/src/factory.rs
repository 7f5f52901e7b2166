//! What makes an AMI (or a snapshot) the factory's: the tags
//! packer/spark-ami.pkr.hcl writes, and the name it gives. The one home of
//! that rule; a test holds it against the template.
//!
//! Deleting commands trust only [`check_ami`] and [`check_snapshot`]: a tag
//! anyone can add by hand (`managed-by=spark-packer`) is not enough, the whole
//! set must be there, well formed, and agree with the name.

use std::collections::BTreeMap;

use crate::project;

pub const MANAGED_BY: (&str, &str) = ("managed-by", "spark-packer");
pub const IMAGE_TAG: &str = "spark-packer:image";
pub const SPARK_VERSION_TAG: &str = "spark-packer:spark-version";
pub const VIRT_TAG: &str = "spark-packer:virtualization";
pub const ARCH_TAG: &str = "spark-packer:architecture";
pub const BUILD_TAG: &str = "spark-packer:build";
pub const RUN_ID_TAG: &str = "spark-packer:run-id";
pub const GIT_COMMIT_TAG: &str = "spark-packer:git-commit";
pub const CREATED_AT_TAG: &str = "spark-packer:created-at";
pub const BASE_AMI_TAG: &str = "spark-packer:base-ami";
pub const SMOKE_TEST_TAG: &str = "spark-packer:smoke-test";

/// Every tag the template puts on an AMI and its snapshots (`factory_tags`).
pub const TAGS: [&str; 11] = [
    MANAGED_BY.0,
    IMAGE_TAG,
    SPARK_VERSION_TAG,
    VIRT_TAG,
    ARCH_TAG,
    BUILD_TAG,
    RUN_ID_TAG,
    GIT_COMMIT_TAG,
    CREATED_AT_TAG,
    BASE_AMI_TAG,
    SMOKE_TEST_TAG,
];

/// The build's input hash, and a short digest of each input (see
/// build_amis/inputs.rs): written on every AMI, but not required of one, so
/// an AMI made before input hashes is still the factory's (and rebuilt).
pub const INPUTS_TAG: &str = "spark-packer:inputs";
pub const INPUT_DIGESTS_TAG: &str = "spark-packer:input-digests";
pub const INPUT_TAGS: [&str; 2] = [INPUTS_TAG, INPUT_DIGESTS_TAG];

/// The build's OS family and Java major version: written on every AMI, not
/// required of one, so AMIs made before OS families stay the factory's.
pub const OS_TAG: &str = "spark-packer:os";
pub const JAVA_TAG: &str = "spark-packer:java";
pub const PLATFORM_TAGS: [&str; 2] = [OS_TAG, JAVA_TAG];

/// The values `spark-packer:smoke-test` takes (see the template).
pub const SMOKE_TEST_VALUES: [&str; 4] = ["passed", "no-spark", "not-provisioned", "SKIPPED"];

/// The matrix's and ami-list's name for EC2's `VirtualizationType`:
/// `paravirtual` is `pv`; `hvm` is `hvm`.
pub fn virt_name(virtualization_type: &str) -> &str {
    if virtualization_type == "paravirtual" {
        "pv"
    } else {
        virtualization_type
    }
}

/// Whether an image's tags say the factory made it: `managed-by=spark-packer`.
pub fn is_managed(tags: &BTreeMap<&str, &str>) -> bool {
    tags.get(MANAGED_BY.0) == Some(&MANAGED_BY.1)
}

/// The base AMI a Spark build launches from must be the factory's base
/// image, available, and of the Spark build's virtualization and architecture.
pub fn check_base_image(image: &crate::aws::Image, virt: &str, arch: &str, spark_build: &str) -> Result<(), String> {
    let tags = image.tags();
    let base = crate::matrix::BASE_IMAGE;
    let found_virt = virt_name(&image.virtualization_type);
    let problem = if !is_managed(&tags) {
        "it is not tagged managed-by=spark-packer".to_string()
    } else if tags.get(IMAGE_TAG) != Some(&base) {
        format!("it is tagged as image {:?}, not {base}", tags.get(IMAGE_TAG).unwrap_or(&""))
    } else if image.state != "available" {
        format!("it is {}, not available", image.state)
    } else if found_virt != virt || image.architecture != arch {
        format!("it is {found_virt} {}, but {spark_build} is {virt} {arch}", image.architecture)
    } else if image.name.is_empty() {
        "it has no name for Packer's source filter".to_string()
    } else {
        return Ok(());
    };
    Err(format!("{problem}: build base again, or fix the ami-list record"))
}

/// The template's `ami_name`: `spark-packer-<build>-<run id>`.
pub fn ami_name(build: &str, run_id: &str) -> String {
    format!("spark-packer-{build}-{run_id}")
}

/// Who made it, read from a factory AMI's or snapshot's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub image: String,
    pub virt: String,
    pub arch: String,
    pub build: String,
    pub run_id: String,
}

impl Stamp {
    /// `image/virt/arch/region`: the AMIs that replace one another.
    pub fn family(&self, region: &str) -> String {
        format!("{}/{}/{}/{region}", self.image, self.virt, self.arch)
    }
}

/// The factory's stamp if `tags` are the full, well-formed set the template
/// writes; otherwise every problem, joined. Pure.
pub fn check_snapshot(tags: &BTreeMap<String, String>) -> Result<Stamp, String> {
    let mut problems = Vec::new();
    let mut get = |key: &str, ok: fn(&str) -> bool, what: &str| -> String {
        match tags.get(key) {
            None => problems.push(format!("no {key} tag")),
            Some(value) if !ok(value) => problems.push(format!("{key}={value:?} is not {what}")),
            Some(value) => return value.clone(),
        }
        String::new()
    };
    get(MANAGED_BY.0, |v| v == MANAGED_BY.1, "spark-packer");
    let image = get(IMAGE_TAG, is_token, "an image name");
    get(SPARK_VERSION_TAG, |v| v == "none" || is_version(v), "none or a version");
    let virt = get(VIRT_TAG, |v| ["hvm", "pv"].contains(&v), "hvm or pv");
    let arch = get(ARCH_TAG, |v| ["x86_64", "arm64"].contains(&v), "x86_64 or arm64");
    let build = get(BUILD_TAG, is_token, "a build name");
    let run_id = get(RUN_ID_TAG, is_run_id, "a run id such as 20261125T003000Z-1a2b");
    get(GIT_COMMIT_TAG, is_commit, "a git commit");
    get(CREATED_AT_TAG, |v| project::parse_time(v).is_ok(), "an RFC 3339 time");
    get(BASE_AMI_TAG, |v| v == "none" || is_ami_id(v), "none or an AMI ID");
    get(SMOKE_TEST_TAG, |v| SMOKE_TEST_VALUES.contains(&v), "a smoke-test outcome");
    // build-amis names a build `<image>-<virt>-<arch>`, or `...-<region>` when native.
    let stem = format!("{image}-{virt}-{arch}");
    if problems.is_empty() && build != stem && !build.starts_with(&format!("{stem}-")) {
        problems.push(format!("{BUILD_TAG}={build:?} is not the build of {stem}"));
    }
    if problems.is_empty() {
        Ok(Stamp { image, virt, arch, build, run_id })
    } else {
        Err(problems.join("; "))
    }
}

/// The factory's stamp if the AMI carries the full tag set (see
/// [`check_snapshot`]) and the name the template gives it. Pure.
pub fn check_ami(name: &str, tags: &BTreeMap<String, String>) -> Result<Stamp, String> {
    let stamp = check_snapshot(tags)?;
    let want = ami_name(&stamp.build, &stamp.run_id);
    if name != want {
        return Err(format!("its name {name:?} is not the factory's {want:?}"));
    }
    Ok(stamp)
}

/// A name as matrix.json and Packer use them: `base`, `spark-3.5.3`.
fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn is_version(v: &str) -> bool {
    is_token(v) && v.starts_with(|c: char| c.is_ascii_digit())
}

/// `project::run_id`'s shape: `20261125T003000Z-1a2b`.
fn is_run_id(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 21
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `project::git_commit`'s shape: a short or full hash, maybe `-dirty`, or `unknown`.
fn is_commit(v: &str) -> bool {
    let hash = v.strip_suffix("-dirty").unwrap_or(v);
    v == "unknown" || ((7..=40).contains(&hash.len()) && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `ami-` and 8 to 17 hex digits, as EC2 writes image IDs.
pub fn is_ami_id(v: &str) -> bool {
    v.strip_prefix("ami-").is_some_and(|h| (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Tags as Packer wrote them on a --no-provision build against moto
    /// (tests/fixtures/clean-moto-5.2.1-describe-images-built.json).
    fn recorded_tags() -> BTreeMap<String, String> {
        [
            (MANAGED_BY.0, MANAGED_BY.1),
            (IMAGE_TAG, "base"),
            (SPARK_VERSION_TAG, "none"),
            (VIRT_TAG, "hvm"),
            (ARCH_TAG, "x86_64"),
            (BUILD_TAG, "base-hvm-x86_64"),
            (RUN_ID_TAG, "20261125T205454Z-62b1"),
            (GIT_COMMIT_TAG, "70a4445f7231"),
            (CREATED_AT_TAG, "2026-11-25T20:54:54Z"),
            (BASE_AMI_TAG, "none"),
            (SMOKE_TEST_TAG, "not-provisioned"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const NAME: &str = "spark-packer-base-hvm-x86_64-20261125T205454Z-62b1";

    #[test]
    fn a_factory_ami_has_every_tag_and_the_factory_name() {
        let stamp = check_ami(NAME, &recorded_tags()).unwrap();
        assert_eq!(stamp.family("us-west-2"), "base/hvm/x86_64/us-west-2");
        assert_eq!(stamp.run_id, "20261125T205454Z-62b1");
        let mut native = recorded_tags();
        native.insert(BUILD_TAG.into(), "base-hvm-x86_64-eu-west-1".into());
        check_ami("spark-packer-base-hvm-x86_64-eu-west-1-20261125T205454Z-62b1", &native).unwrap();
        let mut spark = recorded_tags();
        for (k, v) in [
            (IMAGE_TAG, "spark-3.5.3"),
            (SPARK_VERSION_TAG, "3.5.3"),
            (BUILD_TAG, "spark-3.5.3-pv-x86_64"),
            (VIRT_TAG, "pv"),
            (BASE_AMI_TAG, "ami-0123456789abcdef0"),
            (SMOKE_TEST_TAG, "passed"),
            (GIT_COMMIT_TAG, "70a4445f7231-dirty"),
        ] {
            spark.insert(k.into(), v.into());
        }
        check_ami("spark-packer-spark-3.5.3-pv-x86_64-20261125T205454Z-62b1", &spark).unwrap();
    }

    #[test]
    fn a_hand_made_ami_with_only_managed_by_is_not_the_factorys() {
        let only = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
        let err = check_ami(NAME, &only).unwrap_err();
        assert!(err.contains("no spark-packer:run-id tag"), "{err}");
        assert!(err.contains("no spark-packer:created-at tag"), "{err}");
        assert!(check_ami(NAME, &BTreeMap::new()).is_err());
    }

    #[test]
    fn every_tag_is_required_and_checked() {
        for key in TAGS {
            let mut tags = recorded_tags();
            tags.remove(key);
            let err = check_ami(NAME, &tags).unwrap_err();
            assert!(err.contains(&format!("no {key} tag")), "{key}: {err}");
        }
        let bad = [
            (MANAGED_BY.0, "someone-else"),
            (IMAGE_TAG, ""),
            (IMAGE_TAG, "base image"),
            (SPARK_VERSION_TAG, "latest"),
            (VIRT_TAG, "paravirtual"),
            (ARCH_TAG, "amd64"),
            (BUILD_TAG, ""),
            (RUN_ID_TAG, "20261125T205454Z"),
            (RUN_ID_TAG, "20261125T205454Z-62B1"),
            (RUN_ID_TAG, "2026-11-25T20:54:54Z-62b1"),
            (GIT_COMMIT_TAG, "main"),
            (CREATED_AT_TAG, "yesterday"),
            (CREATED_AT_TAG, "2026-11-25"),
            (BASE_AMI_TAG, "ami-xyz"),
            (SMOKE_TEST_TAG, "ok"),
        ];
        for (key, value) in bad {
            let mut tags = recorded_tags();
            tags.insert(key.into(), value.into());
            let err = check_ami(NAME, &tags).unwrap_err();
            assert!(err.contains(key), "{key}={value:?}: {err}");
        }
    }

    #[test]
    fn the_name_and_the_build_must_agree_with_the_tags() {
        for name in ["", "foo", "spark-packer-base-hvm-x86_64", "spark-packer-base-hvm-x86_64-20261125T205454Z-62b2"] {
            let err = check_ami(name, &recorded_tags()).unwrap_err();
            assert!(err.contains("is not the factory's"), "{name}: {err}");
        }
        let mut other_build = recorded_tags();
        other_build.insert(BUILD_TAG.into(), "bench-base-hvm".into());
        let err = check_ami("spark-packer-bench-base-hvm-20261125T205454Z-62b1", &other_build).unwrap_err();
        assert!(err.contains("is not the build of base-hvm-x86_64"), "{err}");
        // A snapshot has no name: its tags alone decide.
        assert_eq!(check_snapshot(&recorded_tags()).unwrap().build, "base-hvm-x86_64");
    }

    /// The keys of the template's `factory_tags` block, and its `ami_name`.
    #[test]
    fn the_template_writes_exactly_these_tags_and_this_name() {
        let path = project::root().join("packer/spark-ami.pkr.hcl");
        let template = std::fs::read_to_string(&path).unwrap();
        let block = template.split("factory_tags = {").nth(1).expect("a factory_tags block");
        let block = &block[..block.find("\n  }").expect("the block's end")];
        let keys: BTreeSet<&str> = block
            .lines()
            .filter_map(|line| line.trim().strip_prefix('"')?.split_once('"').map(|(key, _)| key))
            .collect();
        assert_eq!(keys, TAGS.into_iter().chain(INPUT_TAGS).chain(PLATFORM_TAGS).collect::<BTreeSet<_>>());
        assert!(template.contains("tags          = local.factory_tags"), "AMIs carry the factory's tags");
        assert!(template.contains("snapshot_tags = local.factory_tags"), "snapshots carry the factory's tags");
        assert!(template.contains(r#"ami_name                   = "spark-packer-${var.build_name}-${var.run_id}""#));
        assert_eq!(ami_name("${var.build_name}", "${var.run_id}"), "spark-packer-${var.build_name}-${var.run_id}");
        for value in SMOKE_TEST_VALUES {
            assert!(block.contains(&format!("\"{value}\"")), "{value}");
        }
    }

    #[test]
    fn run_ids_are_the_ones_project_makes() {
        assert!(is_run_id(&project::run_id(1_795_566_509, 0x12345)));
        assert!(is_run_id(&project::run_id(0, 0)));
    }
}
