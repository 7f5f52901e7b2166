//! The plan: which builds this run makes (the preset, narrowed by filters or
//! by an earlier run to resume), and the dry run that shows it.

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{
    base::{base_source, BaseSource},
    Args,
};
use crate::{
    ami_list::Cell,
    matrix::{Build, Filters, Matrix},
    project::display,
    run_report::{self, Report},
};

/// The preset's builds after --image/--virt/--arch/--region, and after
/// --resume keeps only what that run did not finish.
pub(super) fn builds(matrix: &Matrix, args: &Args, ami_list_root: &Path) -> Result<Vec<Build>> {
    let builds = matrix.expand(&args.preset, &filters(args), args.strategy, args.public)?;
    let Some(report) = &args.resume else { return Ok(builds) };
    let report_path = if report.as_os_str() == "latest" { run_report::latest_path() } else { report.clone() };
    let earlier = run_report::load(&report_path)?;
    builds_to_resume(&earlier, builds, &display(ami_list_root))
        .with_context(|| format!("resume from {}", display(&report_path)))
}

/// What --os, --image, --virt, --arch and --region narrow the preset to.
pub(super) fn filters(args: &Args) -> Filters {
    Filters {
        os: args.os.clone(),
        images: args.image.clone(),
        virts: args.virt.clone(),
        archs: args.arch.clone(),
        regions: args.region.clone(),
    }
}

/// The builds of `planned` that an earlier run's report shows as failed or
/// interrupted. Refuses a report for another ami-list tree, and one whose
/// builds the current flags do not plan.
pub(super) fn builds_to_resume(earlier: &Report, planned: Vec<Build>, ami_list: &str) -> Result<Vec<Build>> {
    if earlier.ami_list != ami_list {
        bail!("that run wrote {0}, not {ami_list}: pass --ami-list {0} to resume it", earlier.ami_list);
    }
    let unfinished = earlier.unfinished();
    if unfinished.is_empty() {
        bail!("nothing to resume: every build of run {} succeeded", earlier.run_id);
    }
    let unplanned: Vec<&str> =
        unfinished.iter().copied().filter(|name| !planned.iter().any(|b| b.name == *name)).collect();
    if !unplanned.is_empty() {
        bail!(
            "{} {} not planned by these flags: use the same --preset ({}), --strategy ({}) and filters as that run",
            unplanned.join(", "),
            if unplanned.len() == 1 { "is" } else { "are" },
            earlier.preset,
            format!("{:?}", earlier.strategy).to_lowercase()
        );
    }
    Ok(planned.into_iter().filter(|b| unfinished.contains(&b.name.as_str())).collect())
}

/// A planned AMI: what a dry run shows.
#[derive(Debug, Serialize)]
struct PlannedBuild<'a> {
    name: &'a str,
    /// Built or skipped as current, and why; None when EC2 was not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<&'a str>,
    launch_region: &'a str,
    instance_type: &'a str,
    os: &'a str,
    login_user: &'a str,
    java: u32,
    source_ami: String,
    amis: Vec<String>,
}

pub(super) fn print(
    builds: &[Build],
    ami_list_root: &Path,
    spark_on_base: bool,
    json: bool,
    verdicts: &Result<BTreeMap<String, String>, String>,
) -> Result<()> {
    let bases: Vec<(&Build, &Build)> = builds.iter().filter(|b| b.image.spark.is_none()).map(|b| (b, b)).collect();
    let source = |b: &Build| match base_source(b, &bases) {
        _ if !spark_on_base || b.image.spark.is_none() => b.source_ami.name.clone(),
        BaseSource::ThisRun(base) => format!("the base AMI {} makes first", base.name),
        BaseSource::Recorded(cell) => format!("the base AMI recorded in {}", cell.relative_path().display()),
    };
    let planned: Vec<PlannedBuild> = builds
        .iter()
        .map(|b| PlannedBuild {
            name: &b.name,
            verdict: verdicts.as_ref().ok().and_then(|v| v.get(&b.name)).map(String::as_str),
            launch_region: &b.region,
            instance_type: &b.instance_type,
            os: &b.os.name,
            login_user: &b.os.login_user,
            java: b.java,
            source_ami: source(b),
            amis: b
                .regions()
                .map(|region| {
                    let cell = Cell { image: b.image.name.clone(), region: region.to_string(), slot: b.slot() };
                    cell.relative_path().display().to_string()
                })
                .collect(),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&planned)?);
        return Ok(());
    }
    for build in &planned {
        println!(
            "{}: launch {} in {} from {} ({}: log in as {}, Java {})",
            build.name,
            build.instance_type,
            build.launch_region,
            build.source_ami,
            build.os,
            build.login_user,
            build.java
        );
        if let Some(verdict) = build.verdict {
            println!("    {verdict}");
        }
        for ami in &build.amis {
            println!("    {}", ami);
        }
    }
    println!(
        "\n{} builds, {} AMIs, recorded under {} (dry run: nothing was built)",
        planned.len(),
        planned.iter().map(|b| b.amis.len()).sum::<usize>(),
        display(ami_list_root)
    );
    if let Err(why) = verdicts {
        println!("which builds are current: {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        matrix::Strategy,
        run_report::{tests::result_of, Status},
    };

    fn seed_builds() -> Vec<Build> {
        Matrix::parse(include_str!("../../../packer/matrix.json"))
            .unwrap()
            .expand("seed-2014", &Filters::default(), Strategy::Copy, false)
            .unwrap()
    }

    fn earlier_run() -> Report {
        let builds = seed_builds();
        let named = |name: &str| builds.iter().find(|b| b.name == name).unwrap();
        let results = vec![
            result_of(named("base-hvm-x86_64"), Status::Ok),
            result_of(named("base-pv-x86_64"), Status::Failed),
            result_of(named("spark-3.5.3-pv-x86_64"), Status::Interrupted),
        ];
        let mut report = run_report::tests::report_of(results);
        report.ami_list = "target/local/ami-list".to_string();
        report.preset = "seed-2014".to_string();
        report
    }

    #[test]
    fn resume_picks_the_failed_and_interrupted_builds() {
        let builds = builds_to_resume(&earlier_run(), seed_builds(), "target/local/ami-list").unwrap();
        let names: Vec<&str> = builds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["base-pv-x86_64", "spark-3.5.3-pv-x86_64"]);
    }

    #[test]
    fn resume_reads_a_saved_report_through_its_type() {
        let saved = serde_json::to_string(&earlier_run()).unwrap();
        let read = run_report::parse(&saved).unwrap();
        assert_eq!(read.unfinished(), ["base-pv-x86_64", "spark-3.5.3-pv-x86_64"]);
        let error = run_report::parse(r#"{"run_id": "r"}"#).unwrap_err().to_string();
        assert!(error.contains("not a build-amis report"), "{error}");
    }

    #[test]
    fn resume_refuses_another_tree_or_other_flags() {
        let err = builds_to_resume(&earlier_run(), seed_builds(), "ami-list").unwrap_err().to_string();
        assert!(err.contains("pass --ami-list target/local/ami-list"), "{err}");
        let hvm_only: Vec<Build> = seed_builds().into_iter().filter(|b| b.virt == "hvm").collect();
        let err = builds_to_resume(&earlier_run(), hvm_only, "target/local/ami-list").unwrap_err().to_string();
        assert!(err.contains("use the same --preset (seed-2014), --strategy (copy)"), "{err}");
    }
}
