//! The build matrix: the axes in `packer/matrix.json`, a preset, the user's
//! filters and a strategy, expanded into the list of Packer builds. Pure.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The one image without Spark; every Spark image is it plus Spark.
pub const BASE_IMAGE: &str = "base";

/// `packer/matrix.json`: the catalog of images and virtualization types, and
/// named presets that choose from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub images: Vec<Image>,
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
    /// SHA-512 of Apache's tarball, lowercase hex.
    pub sha512: String,
    /// Hadoop to install next to Spark (scripts/hadoop.sh); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_hadoop: Option<Hadoop>,
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
    pub source_ami: SourceAmi,
}

/// The `source_ami_filter` Packer uses: newest image with this name pattern
/// from these owners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAmi {
    pub name: String,
    pub owners: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub about: String,
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

    /// The ami-list file name for this virtualization and architecture.
    pub fn slot(&self) -> String {
        slot(&self.virt, &self.arch)
    }
}

/// The ami-list file name: `hvm`, `pv`, or `<virt>-<arch>` for anything but
/// x86_64, which keeps the seed's names for the seed's AMIs.
pub fn slot(virt: &str, arch: &str) -> String {
    if arch == "x86_64" {
        virt.to_string()
    } else {
        format!("{virt}-{arch}")
    }
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

    /// Expands a preset, narrowed by `filters`, into Packer builds.
    pub fn expand(&self, preset_name: &str, filters: &Filters, strategy: Strategy, public: bool) -> Result<Vec<Build>> {
        let preset = self.preset(preset_name)?;
        let pick = |axis: &str, all: &[String], wanted: &[String]| -> Result<Vec<String>> {
            for w in wanted {
                if !all.contains(w) {
                    bail!(
                        "{axis} `{w}` is not in preset `{preset_name}` (it has: {}); \
                         pick one of those or choose another --preset",
                        all.join(", ")
                    );
                }
            }
            Ok(all.iter().filter(|x| wanted.is_empty() || wanted.contains(x)).cloned().collect())
        };
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
            for virt in &virts {
                for arch in &archs {
                    // Not every virtualization runs every architecture (PV is x86_64 only).
                    let Some(settings) = self.arch_settings(virt, arch) else {
                        continue;
                    };
                    let cell = |region: &str, copy_regions: Vec<String>, name: String| Build {
                        name,
                        image: image.clone(),
                        virt: virt.clone(),
                        arch: arch.clone(),
                        instance_type: settings.instance_type.clone(),
                        source_ami: settings.source_ami.clone(),
                        region: region.to_string(),
                        copy_regions,
                        public,
                    };
                    let base_name = format!("{image_name}-{virt}-{arch}");
                    match strategy {
                        Strategy::Copy => {
                            let copies = regions.iter().filter(|r| **r != build_region).cloned().collect();
                            builds.push(cell(&build_region, copies, base_name));
                        }
                        Strategy::Native => {
                            for region in &regions {
                                builds.push(cell(region, Vec::new(), format!("{base_name}-{region}")));
                            }
                        }
                    }
                }
            }
        }
        if builds.is_empty() {
            bail!(
                "the filters leave nothing to build in preset `{preset_name}` \
                 (PV builds only x86_64); widen --image, --virt, --arch or --region"
            );
        }
        Ok(builds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in() -> Matrix {
        Matrix::parse(include_str!("../../packer/matrix.json")).unwrap()
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
    fn default_preset_is_hvm_on_both_architectures() {
        let builds = checked_in().expand("default", &Filters::default(), Strategy::Copy, false).unwrap();
        let slots: Vec<String> = builds.iter().map(|b| format!("{} {}", b.name, b.slot())).collect();
        assert_eq!(
            slots,
            [
                "base-hvm-x86_64 hvm",
                "base-hvm-arm64 hvm-arm64",
                "spark-3.5.3-hvm-x86_64 hvm",
                "spark-3.5.3-hvm-arm64 hvm-arm64"
            ]
        );
        assert_eq!(builds[1].instance_type, "m7g.large");
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
        assert_eq!(err.to_string(), "unknown preset `nope`: choose one of default, seed-2014");
    }

    #[test]
    fn public_flag_reaches_every_build() {
        let builds = checked_in().expand("seed-2014", &Filters::default(), Strategy::Copy, true).unwrap();
        assert!(builds.iter().all(|b| b.public));
    }
}
