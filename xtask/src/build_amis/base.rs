//! --spark-on-base: each Spark build launches from a base AMI, this run's
//! or the one ami-list records, checked in EC2 first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    ami_list::{self, Cell},
    aws, factory,
    matrix::{Build, BASE_IMAGE},
    project::display,
    run_report::{BuildResult, Status},
    site::Site,
};

/// The base AMI a Spark build starts from with --spark-on-base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseAmi {
    pub id: String,
    /// Its exact name: the source filter Packer gets (owner: self).
    pub name: String,
    /// The local base instance's kept disk.
    pub disk: Option<PathBuf>,
}

/// Where a Spark build's base AMI comes from.
#[derive(Debug)]
pub(crate) enum BaseSource<'a, T> {
    /// This run's base build with the same virtualization and architecture
    /// that made an AMI (or was to) in the Spark build's launch region: its
    /// result, or its plan in a dry run.
    ThisRun(&'a T),
    /// Base is not in this run: the ami-list cell of the launch region.
    Recorded(Cell),
}

pub(crate) fn base_source<'a, T>(spark: &Build, built: &[(&Build, &'a T)]) -> BaseSource<'a, T> {
    let same_cell = |base: &Build| {
        base.image.spark.is_none()
            && base.virt == spark.virt
            && base.arch == spark.arch
            && base.regions().any(|r| r == spark.region)
    };
    match built.iter().find(|(base, _)| same_cell(base)) {
        Some((_, result)) => BaseSource::ThisRun(result),
        None => BaseSource::Recorded(Cell {
            image: BASE_IMAGE.to_string(),
            region: spark.region.clone(),
            slot: spark.slot(),
        }),
    }
}

/// Finds the base AMI for `spark` and checks, in EC2, that it is this
/// factory's available base image of the same virtualization and architecture.
pub(super) fn resolve(
    sh: &Shell,
    site: &Site,
    ami_list_root: &Path,
    spark: &Build,
    built: &[(&Build, &BuildResult)],
) -> Result<BaseAmi> {
    let (id, origin, disk) = match base_source(spark, built) {
        BaseSource::ThisRun(base) => {
            match base.status {
                Status::Ok | Status::Current => {}
                Status::Failed => bail!("not built: its base, {}, failed (see its log, {})", base.name, base.log),
                Status::Interrupted => bail!("not built: its base, {}, was interrupted", base.name),
            }
            let id = base.amis.get(&spark.region).with_context(|| {
                format!("{} reported no AMI in {}, where {} launches", base.name, spark.region, spark.name)
            })?;
            let disk = site.base_disk(&base.name);
            if let Some(disk) = disk.as_ref().filter(|d| !d.exists()) {
                bail!("the local disk of {} was not kept at {}; run both again", base.name, display(disk));
            }
            (id.clone(), format!("built by {} in this run", base.name), disk)
        }
        BaseSource::Recorded(cell) => {
            let path = ami_list_root.join(cell.relative_path());
            if site.has_sandbox() {
                bail!(
                    "base is not in this run, and --local keeps a base's disk for its Spark builds only \
                     within the run: build both, \
                     e.g. --image {BASE_IMAGE},{} --spark-on-base",
                    spark.image.name
                );
            }
            let id = ami_list::read(ami_list_root, &cell)?.with_context(|| {
                format!(
                    "no base AMI is recorded in {}: build it first, or in the same run (--image {BASE_IMAGE},{})",
                    display(&path),
                    spark.image.name
                )
            })?;
            (id, format!("recorded in {}", display(&path)), None)
        }
    };
    let image = site
        .aws()
        .image(sh, &spark.region, &id)
        .with_context(|| format!("look up the base AMI {id} ({origin}); if it is gone, build base again"))?;
    check_base_image(&image, spark).with_context(|| format!("the base AMI {id} ({origin})"))?;
    Ok(BaseAmi { id, name: image.name, disk })
}

/// The base AMI must be the factory's, available, and of the Spark build's
/// virtualization and architecture (the rule lives in `factory`).
pub(crate) fn check_base_image(image: &aws::Image, spark: &Build) -> Result<()> {
    factory::check_base_image(image, &spark.virt, &spark.arch, &spark.name).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        matrix::{Filters, Matrix, Strategy},
        run_report::tests::result_of,
    };

    fn seed_builds() -> Vec<Build> {
        Matrix::parse(include_str!("../../../packer/matrix.json"))
            .unwrap()
            .expand("seed-2014", &Filters::default(), Strategy::Copy, false)
            .unwrap()
    }

    #[test]
    fn a_spark_build_starts_from_the_base_of_its_virtualization_and_region() {
        let builds = seed_builds();
        let (bases, sparks): (Vec<&Build>, Vec<&Build>) = builds.iter().partition(|b| b.image.spark.is_none());
        let results: Vec<BuildResult> = bases.iter().map(|b| result_of(b, Status::Ok)).collect();
        let built: Vec<(&Build, &BuildResult)> = bases.iter().copied().zip(&results).collect();
        for spark in &sparks {
            let BaseSource::ThisRun(base) = base_source(spark, &built) else { panic!("{}: no base", spark.name) };
            assert_eq!(base.name, format!("base-{}-x86_64", spark.virt));
        }
        // Native: each region's Spark build takes that region's base build.
        let matrix = Matrix::parse(include_str!("../../../packer/matrix.json")).unwrap();
        let native = matrix.expand("seed-2014", &Filters::default(), Strategy::Native, false).unwrap();
        let (bases, sparks): (Vec<&Build>, Vec<&Build>) = native.iter().partition(|b| b.image.spark.is_none());
        let built: Vec<(&Build, &&Build)> = bases.iter().map(|b| (*b, b)).collect();
        let spark = sparks.iter().find(|b| b.name == "spark-3.5.3-pv-x86_64-sa-east-1").unwrap();
        let BaseSource::ThisRun(base) = base_source(spark, &built) else { panic!("no base") };
        assert_eq!(base.name, "base-pv-x86_64-sa-east-1");
    }

    #[test]
    fn without_base_in_the_run_the_ami_list_record_of_the_launch_region_is_the_base() {
        let builds = seed_builds();
        let spark = builds.iter().find(|b| b.name == "spark-3.5.3-pv-x86_64").unwrap();
        let none: Vec<(&Build, &BuildResult)> = Vec::new();
        let BaseSource::Recorded(cell) = base_source(spark, &none) else { panic!("base is not in the run") };
        assert_eq!(cell.relative_path(), Path::new("base/us-east-1/pv"));
        // A base built for other regions only is not this Spark build's base.
        let base = builds.iter().find(|b| b.name == "base-pv-x86_64").unwrap();
        let elsewhere = Build { region: "eu-west-1".to_string(), copy_regions: Vec::new(), ..base.clone() };
        let result = result_of(&elsewhere, Status::Ok);
        assert!(matches!(base_source(spark, &[(&elsewhere, &result)]), BaseSource::Recorded(_)));
    }

    fn image(json: &str) -> aws::Image {
        aws::parse_describe_images(&format!(r#"{{"Images": [{{{json}}}]}}"#)).unwrap().remove(0)
    }

    #[test]
    fn only_the_factorys_available_base_image_of_the_same_kind_is_a_base() {
        let builds = seed_builds();
        let spark_pv = builds.iter().find(|b| b.name == "spark-3.5.3-pv-x86_64").unwrap();
        let tags =
            r#"[{"Key": "managed-by", "Value": "spark-packer"}, {"Key": "spark-packer:image", "Value": "base"}]"#;
        // Shaped like `aws ec2 describe-images` output from moto 5.2.1.
        let good = format!(
            r#""ImageId": "ami-1fd2ada448893a5d9", "Name": "spark-packer-base-pv-x86_64-r1", "State": "available",
            "VirtualizationType": "paravirtual", "Architecture": "x86_64", "Tags": {tags}"#
        );
        check_base_image(&image(&good), spark_pv).unwrap();
        let cases = [
            (good.replace("paravirtual", "hvm"), "it is hvm x86_64, but spark-3.5.3-pv-x86_64 is pv x86_64"),
            (good.replace(r#""Value": "base""#, r#""Value": "spark-3.5.3""#), r#"tagged as image "spark-3.5.3""#),
            (good.replace(r#""Value": "spark-packer""#, r#""Value": "someone""#), "not tagged managed-by=spark-packer"),
            (good.replace("available", "pending"), "it is pending, not available"),
            (good.replace(r#""x86_64", "Tags""#, r#""arm64", "Tags""#), "it is pv arm64"),
        ];
        for (json, expected) in cases {
            let error = check_base_image(&image(&json), spark_pv).unwrap_err().to_string();
            assert!(error.contains(expected) && error.contains("build base again"), "{expected}: {error}");
        }
    }
}
