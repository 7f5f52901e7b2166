//! `build-amis --platform docker`: the same images from the same template and
//! provisioners, as container images. Plan (one build per image, OS family
//! and architecture), run (Packer's docker builder, push, a Spark cluster of
//! two containers from the pushed digest), record (images-list) and report.

mod cluster;
mod run;

use anyhow::{bail, Result};
use serde::Serialize;
use xshell::Shell;

use super::Args;
use crate::{
    images_list,
    matrix::{self, ContainerBuild, Matrix},
    packer,
    project::{self, display},
    site::{self, containers::ContainerSite},
    template::RunStamp,
};

pub(super) use run::{ContainerResult, ContainerStatus};

/// Flags that mean something for AMIs only.
fn refuse_ami_only_flags(args: &Args) -> Result<()> {
    let given = [
        (args.no_provision, "--no-provision (a container image is always provisioned)"),
        (args.spark_on_base, "--spark-on-base"),
        (args.resume.is_some(), "--resume"),
        (args.ami_list.is_some(), "--ami-list (containers are recorded in --images-list)"),
        (args.public, "--public (a registry's visibility is its own setting)"),
        (args.endpoint.endpoint.is_some(), "--endpoint"),
    ];
    let refused: Vec<&str> = given.iter().filter(|(on, _)| *on).map(|(_, flag)| *flag).collect();
    if !refused.is_empty() {
        bail!(
            "--platform docker does not take {}: drop {}",
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// The docker platform's builds: the preset's cells, one per image, OS
/// family and architecture, each family with a container image to start from.
fn plan(sh: &Shell, matrix: &Matrix, args: &Args) -> Result<Vec<ContainerBuild>> {
    let cells = matrix.expand(&args.preset, &super::plan::filters(args), matrix::Strategy::Copy, false)?;
    let builds = matrix::container_builds(&cells);
    let local = args.endpoint.local;
    let without: Vec<&str> = builds
        .iter()
        .filter(|b| if local { b.cell.os.local_suite.is_none() } else { b.cell.os.docker_image.is_none() })
        .map(|b| b.name.as_str())
        .collect();
    if !without.is_empty() {
        bail!(
            "{} cannot be built as container images {}: leave their OS family out with --os",
            without.join(", "),
            if local { "in the sandbox (no local Debian stand-in)" } else { "(no docker_image in packer/matrix.json)" }
        );
    }
    let cells: Vec<matrix::Build> = builds.iter().map(|b| b.cell.clone()).collect();
    crate::os_support::refuse_unprovable(sh, matrix, &cells, local)?;
    Ok(builds)
}

/// The run's record: what was built, pushed and recorded.
#[derive(Debug, Serialize)]
pub(super) struct ContainerReport {
    pub run_id: String,
    pub preset: String,
    pub seconds: f64,
    pub registry: String,
    pub images_list: String,
    pub builds: Vec<ContainerResult>,
    /// Multi-architecture manifest lists: `<image>/<os>` -> reference.
    pub manifest_lists: Vec<(String, String)>,
}

pub(super) fn main(sh: &Shell, args: &Args, matrix: &Matrix) -> Result<()> {
    refuse_ami_only_flags(args)?;
    let builds = plan(sh, matrix, args)?;
    let images_list_root = args.images_list.clone().unwrap_or_else(|| {
        if args.endpoint.local {
            images_list::local()
        } else {
            images_list::checked_in()
        }
    });
    if args.dry_run {
        for build in &builds {
            let from = if args.endpoint.local {
                format!("the local Debian {} rootfs", build.cell.os.local_suite.as_deref().unwrap_or("?"))
            } else {
                build.cell.os.docker_image.clone().unwrap_or_default()
            };
            println!("{:<40} from {from}, Java {}, tag <run-id>-{}", build.name, build.cell.java, build.slot());
        }
        println!("{} container builds; recorded in {}", builds.len(), display(&images_list_root));
        return Ok(());
    }
    site::install_sandbox_tools(sh, &args.endpoint)?;
    let version = packer::check_installed_cached(sh)?;
    packer::init_plugins_if_needed(sh, version, &project::root().join("packer/plugins.pkr.hcl"))?;
    let started = project::now_secs();
    let run_id = project::run_id(started, std::process::id());
    let stamp =
        RunStamp { run_id: run_id.clone(), git_commit: project::git_commit(sh), created_at: project::rfc3339(started) };
    let site = ContainerSite::open(
        sh,
        args.endpoint.local,
        args.registry.as_deref(),
        &args.sources,
        &builds,
        !args.skip_smoke_test,
    )?;
    site.engine.apply(sh);
    eprintln!("{}", site.describe());
    for (image, downloads) in &site.downloads {
        eprintln!("{image}: {}, SHA-512 from {}", downloads.spark.url, downloads.spark.sha512_source);
    }
    let log_dir = project::target_dir().join("packer-logs").join(&run_id);
    std::fs::create_dir_all(&log_dir)?;
    eprintln!("run {run_id}: {} container builds, {} at once; logs in {}", builds.len(), args.jobs, display(&log_dir));
    let clock = std::time::Instant::now();
    let texts = super::run::InputTexts::read()?;
    let context = run::Context {
        stamp,
        site: &site,
        texts: &texts,
        log_dir,
        images_list: images_list_root.clone(),
        jobs: args.jobs,
        json: args.json,
        verbose: args.verbose,
    };
    let results = run::run_all(sh, &context, &builds)?;
    let manifest_lists = run::manifest_lists(sh, &context, &builds, &results);
    let report = ContainerReport {
        run_id,
        preset: args.preset.clone(),
        seconds: clock.elapsed().as_secs_f64(),
        registry: site.registry.clone(),
        images_list: display(&images_list_root),
        builds: results,
        manifest_lists,
    };
    drop(context);
    drop(site);
    finish(&report, args.json)
}

/// Prints the report (a table, or JSON) and fails if any build failed.
fn finish(report: &ContainerReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", summary(report));
    }
    let count = |status| report.builds.iter().filter(|b| b.status == status).count();
    let (failed, interrupted) = (count(ContainerStatus::Failed), count(ContainerStatus::Interrupted));
    if interrupted > 0 {
        bail!(
            "interrupted: {interrupted} of {} container builds did not finish and recorded nothing; \
             Packer removed their containers, and the finished ones are recorded in {}",
            report.builds.len(),
            report.images_list
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} container builds failed; nothing of theirs was recorded in {}. See the logs named above",
            report.builds.len(),
            report.images_list
        );
    }
    Ok(())
}

/// One row per build, failures last with their error and log, then the
/// manifest lists.
fn summary(report: &ContainerReport) -> String {
    let mut builds: Vec<&ContainerResult> = report.builds.iter().collect();
    builds.sort_by_key(|b| b.status != ContainerStatus::Ok);
    let width = builds.iter().map(|b| b.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<width$}  {:<6}  {:>7}  IMAGE (pinned by digest)\n", "BUILD", "STATUS", "TIME");
    for build in &builds {
        let status = match build.status {
            ContainerStatus::Ok => "ok",
            ContainerStatus::Failed => "FAILED",
            ContainerStatus::Interrupted => "STOPPED",
        };
        let reference = build.reference.as_deref().unwrap_or("-");
        out.push_str(&format!("{:<width$}  {status:<6}  {:>6.1}s  {reference}\n", build.name, build.seconds));
    }
    for build in builds.iter().filter(|b| b.status != ContainerStatus::Ok) {
        out.push_str(&format!("{}: {} (log: {})\n", build.name, build.error.as_deref().unwrap_or("?"), build.log));
    }
    for (name, reference) in &report.manifest_lists {
        out.push_str(&format!("{name} (multi-architecture): {reference}\n"));
    }
    let ok = report.builds.len() - builds.iter().filter(|b| b.status != ContainerStatus::Ok).count();
    out.push_str(&format!(
        "{ok} of {} container builds ok in {:.1}s; recorded in {}\n",
        report.builds.len(),
        report.seconds,
        report.images_list
    ));
    out
}
