//! The build matrix: the axes in `packer/matrix.json`, a preset, the user's
//! filters and a strategy, expanded into the list of Packer builds. Pure.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The architectures EC2 names and the factory builds.
pub const ARCHITECTURES: [&str; 2] = ["x86_64", "arm64"];

/// A Spark release's version as Apache numbers them: X.Y.Z, digits only.
pub fn is_release_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The one image without Spark; every Spark image is it plus Spark.
pub const BASE_IMAGE: &str = "base";

/// `packer/matrix.json`: the catalog of images and virtualization types, and
/// named presets that choose from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub images: Vec<Image>,
    pub os_families: Vec<OsFamily>,
    pub virtualization: Vec<Virtualization>,
    pub presets: BTreeMap<String, Preset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spark: Option<Spark>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spark {
    pub version: String,
    /// The Apache build suffix, as in `spark-3.5.3-bin-hadoop3.tgz`.
    pub hadoop_build: String,
    /// The Java major versions this Spark runs on (its docs' overview page).
    pub java: Vec<u32>,
    /// SHA-512 of Apache's tarball, lowercase hex; empty until pinned.
    pub sha512: String,
    /// Whose signature `sha512` was checked against (add-spark); absent when
    /// it was not, and then real builds refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Hadoop to install next to Spark (scripts/hadoop.sh); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_hadoop: Option<Hadoop>,
}

/// How add-spark checked a Spark pin: the tarball's `.asc` verified with gpg
/// against the KEYS file at `keys`, by this signer, and the published
/// `.sha512` equal to the signed tarball's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    pub keys: String,
    pub fingerprint: String,
    pub signer: String,
}

impl Verified {
    /// Apache's own KEYS, as real builds require: not a sandbox's or a mirror's.
    pub fn by_apache(&self) -> bool {
        ["https://downloads.apache.org/", "https://archive.apache.org/", "https://www.apache.org/"]
            .iter()
            .any(|prefix| self.keys.starts_with(prefix))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hadoop {
    pub version: String,
    /// SHA-512 of Apache's hadoop-<version>.tar.gz, lowercase hex.
    pub sha512: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Virtualization {
    pub name: String,
    pub archs: Vec<ArchSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSettings {
    pub arch: String,
    pub instance_type: String,
}

/// An operating system the images are built on: where its source images
/// come from, how Packer logs in, the Java it packages, and the local stand-in
/// that proves it in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsFamily {
    pub name: String,
    pub about: String,
    /// `ID VERSION_ID` of its /etc/os-release, e.g. `debian 13`: planning asks
    /// scripts/lib.sh's detect_os whether the provisioners support it.
    pub os_release: String,
    /// Packer's SSH user; the provisioners run through sudo, never as root.
    pub login_user: String,
    /// The Java major versions its repositories package, preferred first.
    pub java: Vec<u32>,
    /// The Debian suite debootstrapped as its local instance; none when the
    /// sandbox cannot stand in for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_suite: Option<String>,
    /// The registry image the docker platform starts from for real use, e.g.
    /// `debian:trixie`; none when the family has no container image. The
    /// sandbox imports `local_suite`'s rootfs instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    /// Keep the seed's ami-list names (`hvm`, `pv`) with no `.<os>` suffix.
    #[serde(default)]
    pub seed_slots: bool,
    pub source_amis: Vec<SourceImage>,
}

/// The source image of one virtualization and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceImage {
    pub virt: String,
    pub arch: String,
    #[serde(flatten)]
    pub filter: SourceAmi,
}

/// The `source_ami_filter` Packer uses: newest image with this name pattern
/// from these owners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAmi {
    pub name: String,
    pub owners: Vec<String>,
}

impl OsFamily {
    pub fn source(&self, virt: &str, arch: &str) -> Option<&SourceAmi> {
        self.source_amis.iter().find(|s| s.virt == virt && s.arch == arch).map(|s| &s.filter)
    }

    /// The Java this family installs for `image`: the first it packages that
    /// the image's Spark runs on (any, for base).
    pub fn java_for(&self, image: &Image) -> Option<u32> {
        self.java.iter().copied().find(|v| image.spark.as_ref().is_none_or(|s| s.java.contains(v)))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub about: String,
    pub os: Vec<String>,
    pub images: Vec<String>,
    pub virtualization: Vec<String>,
    pub archs: Vec<String>,
    /// Where `copy` builds launch; the other regions receive copies.
    pub build_region: String,
    pub regions: Vec<String>,
    pub public: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Build once in the build region and copy to the others (`ami_regions`): fewest launches.
    #[default]
    Copy,
    /// Build in every region: no copies, one launch per region.
    Native,
}

/// What the user narrowed the preset to; an empty list keeps the whole axis.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub os: Vec<String>,
    pub images: Vec<String>,
    pub virts: Vec<String>,
    pub archs: Vec<String>,
    pub regions: Vec<String>,
}

/// One Packer build: one instance launch, one AMI per region in `regions()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    pub name: String,
    pub image: Image,
    pub os: OsFamily,
    /// The Java major version the provisioners install.
    pub java: u32,
    pub virt: String,
    pub arch: String,
    pub instance_type: String,
    pub source_ami: SourceAmi,
    /// Where Packer launches the instance.
    pub region: String,
    /// Where Packer copies the finished AMI (`ami_regions`).
    pub copy_regions: Vec<String>,
    pub public: bool,
}

impl Build {
    /// Every region that receives an AMI, build region first.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.region.as_str()).chain(self.copy_regions.iter().map(String::as_str))
    }

    /// The ami-list file name for this OS, virtualization and architecture.
    pub fn slot(&self) -> String {
        slot(&self.virt, &self.arch, self.os.slot_suffix())
    }
}

impl OsFamily {
    /// None for the seed's families, which keep the seed's file names.
    pub fn slot_suffix(&self) -> Option<&str> {
        (!self.seed_slots).then_some(self.name.as_str())
    }
}

/// One container image of the docker platform: an image on an OS family for
/// one architecture. `cell` is the AMI build of the same image, OS and
/// architecture, whose provisioner variables it shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerBuild {
    /// `<image>-<os>-<arch>`, e.g. `spark-4.3.0-debian-13-arm64`.
    pub name: String,
    pub cell: Build,
}

impl ContainerBuild {
    /// The images-list file name and the tag's tail: `<os>-<arch>`.
    pub fn slot(&self) -> String {
        format!("{}-{}", self.cell.os.name, self.cell.arch)
    }

    /// `<registry>/<image>`, e.g. `127.0.0.1:5000/spark-packer/base`.
    pub fn repository(&self, registry: &str) -> String {
        format!("{}/{}", registry.trim_end_matches('/'), self.cell.image.name)
    }

    /// `<run-id>-<os>-<arch>`: each run's image stays addressable.
    pub fn tag(&self, run_id: &str) -> String {
        format!("{run_id}-{}", self.slot())
    }
}

/// The container builds of a preset's AMI builds: one per image, OS family
/// and architecture (containers have no virtualization type or region).
pub fn container_builds(builds: &[Build]) -> Vec<ContainerBuild> {
    let mut containers: Vec<ContainerBuild> = Vec::new();
    for build in builds {
        let name = format!("{}-{}-{}", build.image.name, build.os.name, build.arch);
        if !containers.iter().any(|c| c.name == name) {
            containers.push(ContainerBuild { name, cell: build.clone() });
        }
    }
    containers
}

/// The ami-list file name: `hvm`, `pv`, or `<virt>-<arch>` for anything but
/// x86_64, which keeps the seed's names for the seed's AMIs; then `.<os>`
/// unless the OS family keeps the seed's names (`hvm-arm64.debian-13`).
pub fn slot(virt: &str, arch: &str, os: Option<&str>) -> String {
    let bare = if arch == "x86_64" { virt.to_string() } else { format!("{virt}-{arch}") };
    match os {
        Some(os) => format!("{bare}.{os}"),
        None => bare,
    }
}

/// What an ami-list file name says: the inverse of [`slot`]. `hvm` ->
/// (hvm, x86_64), `hvm-arm64.debian-13` -> (hvm, arm64, debian-13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotParts {
    pub virt: String,
    pub arch: String,
    pub os: Option<String>,
}

pub fn parse_slot(slot: &str) -> Option<SlotParts> {
    let (bare, os) = match slot.split_once('.') {
        Some((bare, os)) => (bare, Some(os)),
        None => (slot, None),
    };
    let name_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if os.is_some_and(|os| !os.split('-').all(name_ok)) {
        return None;
    }
    let (virt, arch) = bare.split_once('-').unwrap_or((bare, "x86_64"));
    let arch_ok = !arch.is_empty() && arch.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let suffixed_x86 = bare.contains('-') && arch == "x86_64";
    (matches!(virt, "hvm" | "pv") && arch_ok && !suffixed_x86).then(|| SlotParts {
        virt: virt.to_string(),
        arch: arch.to_string(),
        os: os.map(str::to_string),
    })
}

impl Matrix {
    /// Unvalidated: for tests' fixtures. Commands load with `checks::load_matrix`.
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Matrix> {
        serde_json::from_str(text).context("parse matrix JSON")
    }

    pub fn preset(&self, name: &str) -> Result<&Preset> {
        self.presets.get(name).with_context(|| {
            let known: Vec<&str> = self.presets.keys().map(String::as_str).collect();
            format!("unknown preset `{name}`: choose one of {}", known.join(", "))
        })
    }

    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|image| image.name == name)
    }

    fn arch_settings(&self, virt: &str, arch: &str) -> Option<&ArchSettings> {
        self.virtualization.iter().find(|v| v.name == virt)?.archs.iter().find(|a| a.arch == arch)
    }

    pub fn os_family(&self, name: &str) -> Option<&OsFamily> {
        self.os_families.iter().find(|os| os.name == name)
    }

    /// Expands a preset, narrowed by `filters`, into Packer builds. Refuses
    /// an image whose Spark runs on no Java the OS family packages.
    pub fn expand(&self, preset_name: &str, filters: &Filters, strategy: Strategy, public: bool) -> Result<Vec<Build>> {
        let preset = self.preset(preset_name)?;
        let pick = |axis: &str, all: &[String], wanted: &[String]| pick_axis(preset_name, axis, all, wanted);
        let oses = pick("OS family", &preset.os, &filters.os)?;
        let images = pick("image", &preset.images, &filters.images)?;
        let virts = pick("virtualization", &preset.virtualization, &filters.virts)?;
        let archs = pick("architecture", &preset.archs, &filters.archs)?;
        let regions = pick("region", &preset.regions, &filters.regions)?;

        // A copy build launches in the preset's build region when that region is
        // wanted, else in the first wanted one, so no unwanted AMI is made.
        let build_region = if regions.contains(&preset.build_region) {
            preset.build_region.clone()
        } else {
            regions.first().cloned().unwrap_or_default()
        };

        let mut builds = Vec::new();
        for image_name in &images {
            let image = self.image(image_name).with_context(|| {
                format!("preset `{preset_name}` names image `{image_name}`, which matrix.json does not define")
            })?;
            for os_name in &oses {
                let os = self.os_family(os_name).with_context(|| {
                    format!("preset `{preset_name}` names OS family `{os_name}`, which matrix.json does not define")
                })?;
                let java = java_or_refuse(image, os)?;
                for virt in &virts {
                    for arch in &archs {
                        // Not every OS family offers every virtualization and
                        // architecture (PV is x86_64 Amazon Linux AMI only).
                        let (Some(settings), Some(source)) = (self.arch_settings(virt, arch), os.source(virt, arch))
                        else {
                            continue;
                        };
                        let template = Build {
                            name: match os.slot_suffix() {
                                Some(os) => format!("{image_name}-{os}-{virt}-{arch}"),
                                None => format!("{image_name}-{virt}-{arch}"),
                            },
                            image: image.clone(),
                            os: os.clone(),
                            java,
                            virt: virt.clone(),
                            arch: arch.clone(),
                            instance_type: settings.instance_type.clone(),
                            source_ami: source.clone(),
                            region: build_region.clone(),
                            copy_regions: Vec::new(),
                            public,
                        };
                        builds.extend(place(template, strategy, &regions));
                    }
                }
            }
        }
        if builds.is_empty() {
            bail!(
                "the filters leave nothing to build in preset `{preset_name}` \
                 (each OS family has source images for some virtualization types and architectures only; \
                 PV is x86_64 only); widen --os, --image, --virt, --arch or --region"
            );
        }
        Ok(builds)
    }
}

/// The preset's values of one axis that the user's filter keeps; an image
/// may be named by its line (`spark-4` is every spark-4.x.y).
fn pick_axis(preset_name: &str, axis: &str, all: &[String], wanted: &[String]) -> Result<Vec<String>> {
    let matches = |name: &str, wanted: &str| {
        name == wanted || (axis == "image" && name.strip_prefix(wanted).is_some_and(|rest| rest.starts_with('.')))
    };
    for w in wanted {
        if !all.iter().any(|name| matches(name, w)) {
            bail!(
                "{axis} `{w}` is not in preset `{preset_name}` (it has: {}); \
                 pick one of those or choose another --preset",
                all.join(", ")
            );
        }
    }
    Ok(all.iter().filter(|x| wanted.is_empty() || wanted.iter().any(|w| matches(x, w))).cloned().collect())
}

/// One cell's builds: with `copy`, the one in the build region copying to
/// the other regions; with `native`, one per region, named after it.
fn place(cell: Build, strategy: Strategy, regions: &[String]) -> Vec<Build> {
    match strategy {
        Strategy::Copy => {
            let copy_regions = regions.iter().filter(|r| **r != cell.region).cloned().collect();
            vec![Build { copy_regions, ..cell }]
        }
        Strategy::Native => regions
            .iter()
            .map(|region| Build { name: format!("{}-{region}", cell.name), region: region.clone(), ..cell.clone() })
            .collect(),
    }
}

/// The Java `os` installs for `image`, or why the pair cannot be built.
fn java_or_refuse(image: &Image, os: &OsFamily) -> Result<u32> {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    os.java_for(image).with_context(|| {
        let runs_on = image.spark.as_ref().map_or_else(String::new, |s| list(&s.java));
        format!(
            "{} runs on Java {runs_on}, but {} packages Java {} only: \
             drop the pair with --image or --os, or choose another --preset",
            image.name,
            os.name,
            list(&os.java)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in() -> Matrix {
        Matrix::parse(include_str!("../../packer/matrix.json")).unwrap()
    }

    #[test]
    fn containers_are_one_per_image_os_and_architecture() {
        let matrix = checked_in();
        let amis = matrix.expand("default", &Filters::default(), Strategy::Native, false).unwrap();
        let containers = container_builds(&amis);
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "base-debian-13-x86_64",
                "base-debian-13-arm64",
                "spark-4.3.0-debian-13-x86_64",
                "spark-4.3.0-debian-13-arm64"
            ]
        );
        let spark = &containers[3];
        assert_eq!(spark.repository("127.0.0.1:5000/spark-packer/"), "127.0.0.1:5000/spark-packer/spark-4.3.0");
        assert_eq!(spark.tag("20261126T002221Z-5f79"), "20261126T002221Z-5f79-debian-13-arm64");
        // The seed's PV and HVM cells of one image and architecture are one container.
        let seed = matrix.expand("seed-2014", &Filters::default(), Strategy::Copy, false).unwrap();
        assert_eq!(container_builds(&seed).len(), 2 + 2);
    }

    fn ami_count(builds: &[Build]) -> usize {
        builds.iter().map(|b| b.regions().count()).sum()
    }

    #[test]
    fn seed_preset_copy_is_4_builds_making_32_amis() {
        let builds = checked_in().expand("seed-2014", &Filters::default(), Strategy::Copy, false).unwrap();
        assert_eq!(builds.len(), 4);
        assert_eq!(ami_count(&builds), 32);
        let names: Vec<&str> = builds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["base-hvm-x86_64", "base-pv-x86_64", "spark-3.5.3-hvm-x86_64", "spark-3.5.3-pv-x86_64"]);
        for build in &builds {
            assert_eq!(build.region, "us-east-1");
            assert_eq!(build.copy_regions.len(), 7);
            assert!(!build.copy_regions.contains(&build.region));
        }
    }

    #[test]
    fn seed_preset_native_is_32_builds_making_32_amis() {
        let builds = checked_in().expand("seed-2014", &Filters::default(), Strategy::Native, false).unwrap();
        assert_eq!(builds.len(), 32);
        assert_eq!(ami_count(&builds), 32);
        assert!(builds.iter().all(|b| b.copy_regions.is_empty()));
        let mut cells: Vec<(String, String, String)> =
            builds.iter().map(|b| (b.image.name.clone(), b.region.clone(), b.slot())).collect();
        cells.sort();
        cells.dedup();
        assert_eq!(cells.len(), 32, "every AMI lands in its own ami-list cell");
    }

    #[test]
    fn default_preset_is_debian_13_hvm_on_both_architectures() {
        let builds = checked_in().expand("default", &Filters::default(), Strategy::Copy, false).unwrap();
        let slots: Vec<String> = builds.iter().map(|b| format!("{} {}", b.name, b.slot())).collect();
        assert_eq!(
            slots,
            [
                "base-debian-13-hvm-x86_64 hvm.debian-13",
                "base-debian-13-hvm-arm64 hvm-arm64.debian-13",
                "spark-4.3.0-debian-13-hvm-x86_64 hvm.debian-13",
                "spark-4.3.0-debian-13-hvm-arm64 hvm-arm64.debian-13"
            ]
        );
        assert_eq!(builds[1].instance_type, "m7g.large");
        assert_eq!(builds[1].source_ami.name, "debian-13-arm64-*");
        assert_eq!(builds[1].os.login_user, "admin");
        assert!(builds.iter().all(|b| b.java == 21), "Debian 13 packages 21 and 25; Spark 4 runs on 17 and 21");
    }

    #[test]
    fn seed_preset_keeps_the_seed_names_on_amazon_linux() {
        let builds = checked_in().expand("seed-2014", &Filters::default(), Strategy::Copy, false).unwrap();
        let oses: Vec<(&str, &str, u32)> =
            builds.iter().map(|b| (b.name.as_str(), b.os.name.as_str(), b.java)).collect();
        assert_eq!(
            oses,
            [
                ("base-hvm-x86_64", "al2023", 17),
                ("base-pv-x86_64", "amzn-pv", 8),
                ("spark-3.5.3-hvm-x86_64", "al2023", 17),
                ("spark-3.5.3-pv-x86_64", "amzn-pv", 8)
            ]
        );
        assert_eq!(builds[1].slot(), "pv");
    }

    #[test]
    fn spark_without_a_java_the_os_packages_is_refused_at_planning() {
        let mut m = checked_in();
        m.presets.get_mut("default").unwrap().images.push("spark-3.5.3".into());
        let err = m.expand("default", &Filters::default(), Strategy::Copy, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spark-3.5.3 runs on Java 8, 11, 17, but debian-13 packages Java 21, 25 only: \
             drop the pair with --image or --os, or choose another --preset"
        );
    }

    #[test]
    fn pv_has_no_arm64_builds() {
        let filters = Filters { virts: vec!["pv".into()], ..Filters::default() };
        let m = checked_in();
        let mut preset = m.presets["seed-2014"].clone();
        preset.archs = vec!["x86_64".into(), "arm64".into()];
        let mut m = m.clone();
        m.presets.insert("both".into(), preset);
        let builds = m.expand("both", &filters, Strategy::Copy, false).unwrap();
        assert!(builds.iter().all(|b| b.arch == "x86_64"));
        let only_arm = Filters { archs: vec!["arm64".into()], ..filters };
        let err = m.expand("both", &only_arm, Strategy::Copy, false).unwrap_err();
        assert!(err.to_string().contains("nothing to build"), "{err}");
    }

    #[test]
    fn region_filter_without_build_region_launches_in_first_wanted_region() {
        let filters = Filters { regions: vec!["eu-west-1".into(), "sa-east-1".into()], ..Filters::default() };
        let builds = checked_in().expand("seed-2014", &filters, Strategy::Copy, false).unwrap();
        assert!(builds.iter().all(|b| b.region == "eu-west-1" && b.copy_regions == ["sa-east-1"]));
        assert_eq!(ami_count(&builds), 8);
    }

    #[test]
    fn filters_outside_the_preset_name_the_choices() {
        let filters = Filters { virts: vec!["pv".into()], ..Filters::default() };
        let err = checked_in().expand("default", &filters, Strategy::Copy, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtualization `pv` is not in preset `default` (it has: hvm); \
             pick one of those or choose another --preset"
        );
        let err = checked_in().expand("nope", &Filters::default(), Strategy::Copy, false).unwrap_err();
        assert_eq!(err.to_string(), "unknown preset `nope`: choose one of default, seed-2014, spark-3.5");
    }

    #[test]
    fn an_image_is_picked_by_its_line_or_its_full_name() {
        let mut m = checked_in();
        m.presets.get_mut("seed-2014").unwrap().images.push("spark-4.3.0".into());
        let picked = |wanted: &[&str]| -> Vec<String> {
            let images = wanted.iter().map(|w| w.to_string()).collect();
            let filters = Filters { images, os: vec!["al2023".into()], ..Filters::default() };
            let builds = m.expand("seed-2014", &filters, Strategy::Copy, false).unwrap();
            let mut images: Vec<String> = builds.into_iter().map(|b| b.image.name).collect();
            images.dedup();
            images
        };
        assert_eq!(picked(&["spark-4"]), ["spark-4.3.0"]);
        assert_eq!(picked(&["spark-3.5"]), ["spark-3.5.3"]);
        assert_eq!(picked(&["spark-3.5.3", "base"]), ["base", "spark-3.5.3"]);
        let filters = Filters { images: vec!["spark-3.5.".into()], ..Filters::default() };
        assert!(m.expand("seed-2014", &filters, Strategy::Copy, false).is_err(), "a prefix ends at a dot");
        // Spark 4 needs Java 17 or 21; Amazon Linux AMI 2018.03 packages 8 only.
        let filters = Filters { images: vec!["spark-4".into()], ..Filters::default() };
        let err = m.expand("seed-2014", &filters, Strategy::Copy, false).unwrap_err().to_string();
        assert!(err.starts_with("spark-4.3.0 runs on Java 17, 21, but amzn-pv packages Java 8 only"), "{err}");
    }

    #[test]
    fn public_flag_reaches_every_build() {
        let builds = checked_in().expand("seed-2014", &Filters::default(), Strategy::Copy, true).unwrap();
        assert!(builds.iter().all(|b| b.public));
    }
}
