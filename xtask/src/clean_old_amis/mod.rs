//! `cargo xtask clean-old-amis`: deregister superseded factory AMIs and delete
//! their snapshots, and never what someone still needs.
//!
//! Each region is listed in parallel (snapshots, images and their launch
//! permissions, instances, launch templates and configurations), then
//! `select::select` and `snapshots::orphans`, pure functions, decide keep
//! or delete with a reason for every image. Only with `--yes` does anything
//! change, and a region whose listing failed changes nothing.

mod listed;
mod region;
mod report;
mod select;
mod snapshots;
#[cfg(test)]
mod testing;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use xshell::Shell;

use self::{
    listed::read_ami_list,
    region::clean_region,
    report::{render, summarize, RegionReport, Report},
    select::{Policy, UsedBy},
};
use crate::{
    age::{format_duration, parse_duration},
    aws::Aws,
    endpoint::EndpointArgs,
    interrupt, lock,
    progress::{Printer, Stoppable, Style},
    project,
};

/// Deregister superseded AMIs that the factory made, and delete their snapshots.
///
/// A candidate is an AMI this account owns that the factory made: it carries
/// every tag packer/spark-ami.pkr.hcl writes (managed-by=spark-packer, image,
/// virtualization, architecture, build, run id, created-at, ...), well formed,
/// and the factory's name spark-packer-<build>-<run id>. Anything else, such
/// as an AMI made by hand and tagged managed-by=spark-packer, is never touched.
/// Always kept: every ID in the ami-list tree, the newest --keep per family
/// (image x virtualization x architecture x region), anything younger than
/// --min-age, anything an instance, a launch template's default or latest
/// version or an Auto Scaling launch configuration uses, AMIs shared with an
/// account, organization or OU, public AMIs, and disabled ones.
///
/// Dry run by default: it prints what would go and why the rest stays. Add
/// --yes to deregister, then delete each AMI's snapshots unless another AMI
/// still uses them. It also deletes the factory's snapshots whose AMI is
/// already gone (older than --min-age), so a rerun finishes what a killed run
/// started.
///
/// Example: `cargo xtask clean-old-amis --keep 2`, read what it would do,
/// then the same with --yes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these regions, e.g. us-east-1,eu-west-1. Default: every region of
    /// packer/matrix.json and of the ami-list tree.
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,

    /// Keep this many newest AMIs per family (image x virt x arch x region),
    /// whatever their age: the current build and a rollback. At least 1.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Keep AMIs younger than this: a number and a unit (s, m, h, d, w),
    /// e.g. 7d, 12h, 0s.
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_duration)]
    pub min_age: u64,

    /// Also delete AMIs that a live instance, a launch template's default or
    /// latest version, or a launch configuration uses. Their users cannot
    /// launch them again. AMIs shared with accounts stay regardless.
    #[arg(long)]
    pub include_in_use: bool,

    /// Also delete public AMIs (EC2's public flag, or a launch permission for
    /// group all). Anyone may depend on those.
    #[arg(long)]
    pub include_public: bool,

    /// The ami-list tree whose IDs are always kept. Default: the checked-in
    /// ami-list/ for real AWS; target/local/ami-list with --local.
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// Judge ages as of this earlier UTC time (RFC 3339, e.g.
    /// 2026-11-01T00:00:00Z) instead of now: it can only make AMIs look
    /// younger, so it only ever keeps more. Tests use it for exact ages.
    #[arg(long, value_name = "TIME", value_parser = project::parse_time)]
    pub as_of: Option<u64>,

    /// Act: deregister the AMIs the dry run lists, then delete their snapshots.
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// Print the run's report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// aws CLI processes at once, across regions: well under EC2's request limits.
const AWS_CALLS_AT_ONCE: usize = 16;

/// The pipeline: check the settings, read what must stay, clean every region
/// at once, then report.
pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let now = project::now_secs();
    if let Some(as_of) = args.as_of.filter(|&t| t > now) {
        bail!(
            "--as-of {} is in the future, which would make AMIs look older than they are: give a past time",
            project::rfc3339(as_of)
        );
    }
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    // Deleting must not race a build that is about to record a new ID; a dry
    // run changes nothing, so it needs no lock.
    let _lock = if args.yes { Some(lock::acquire(&ami_list_root, "clean-old-amis")?) } else { None };
    let (listed, listed_regions) = read_listed(&ami_list_root, args)?;
    let regions = if args.region.is_empty() {
        default_regions(listed_regions)?
    } else {
        let mut seen = BTreeSet::new();
        args.region.iter().filter(|r| seen.insert(r.as_str())).cloned().collect()
    };
    let policy = Policy {
        keep: args.keep as usize,
        min_age_secs: args.min_age,
        now: args.as_of.unwrap_or(now),
        include_in_use: args.include_in_use,
        include_public: args.include_public,
        ami_list: listed,
    };
    let connection = args.endpoint.connect(sh)?;
    eprintln!(
        "{} in {} regions: keeping the newest {} per family, anything under {} old and {} IDs from {}{}",
        if args.yes { "cleaning" } else { "dry run" },
        regions.len(),
        args.keep,
        format_duration(args.min_age),
        policy.ami_list.len(),
        ami_list_root.display(),
        connection.endpoint.as_deref().map(|e| format!("; EC2 at {e}")).unwrap_or_default(),
    );
    let reports = clean_regions(sh, &connection.aws, &regions, &policy, (args.yes, args.json))?;
    let report = Report {
        dry_run: !args.yes,
        as_of: project::rfc3339(policy.now),
        min_age: format_duration(args.min_age),
        keep: args.keep,
        include_in_use: args.include_in_use,
        include_public: args.include_public,
        ami_list: ami_list_root.display().to_string(),
        endpoint: connection.endpoint.clone(),
        summary: summarize(&reports, args.yes),
        regions: reports,
    };
    finish(&report, args.json)
}

/// The IDs the ami-list tree protects, and its regions.
fn read_listed(ami_list_root: &Path, args: &Args) -> Result<(UsedBy, BTreeSet<String>)> {
    // An emulator's default tree is missing until something is built there, and
    // its AMIs are no one's; anywhere else a missing tree is a mistake.
    if ami_list_root.is_dir() {
        read_ami_list(ami_list_root)
    } else if args.ami_list.is_none() && args.endpoint.is_emulator() {
        Ok(Default::default())
    } else {
        bail!(
            "ami-list {} does not exist, so nothing it should protect is known: \
             pass --ami-list DIR (an empty directory if no AMI is listed)",
            ami_list_root.display()
        );
    }
}

/// Every region at once, each a worker that never prints; one printer shows progress.
fn clean_regions(
    sh: &Shell,
    aws: &Aws,
    regions: &[String],
    policy: &Policy,
    (act, json): (bool, bool),
) -> Result<Vec<RegionReport>> {
    // Region by region, live on a terminal; a line log on a pipe or with --json.
    let style = Style { jobs: AWS_CALLS_AT_ONCE, ..Style::for_terminal(json, false) };
    let printer = Printer::start(regions.to_vec(), style);
    if act {
        // Ctrl-C stops new deregistrations, never a started AMI's snapshot deletions.
        interrupt::install(printer.sender(), Stoppable::Deletions)?;
    }
    // Every task waits on an aws CLI process, not on this one's CPU.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(AWS_CALLS_AT_ONCE)
        .build()
        .context("start the region thread pool")?;
    let worker_state = (sh.clone(), printer.sender());
    let reports = pool.install(|| {
        regions
            .par_iter()
            .map_with(worker_state, |(sh, events), region| clean_region(sh, aws, region, policy, act, events))
            .collect()
    });
    printer.finish();
    Ok(reports)
}

/// Prints the report, then fails if the run was cut short or a region failed.
fn finish(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    if interrupt::interrupted() {
        bail!(
            "interrupted: {} AMIs were deregistered with their snapshots, {} left as they were; \
             run the same command again to finish",
            report.summary.deleted,
            report.summary.not_started
        );
    }
    let failed: Vec<&str> = report.regions.iter().filter(|r| !r.errors.is_empty()).map(|r| r.region.as_str()).collect();
    if !failed.is_empty() {
        bail!("{} errors in {}, listed above; every other region went ahead", report.summary.errors, failed.join(", "));
    }
    Ok(())
}

/// The matrix's regions and the ami-list tree's: wherever the factory puts AMIs.
fn default_regions(listed_regions: BTreeSet<String>) -> Result<Vec<String>> {
    let matrix_file = project::matrix_file();
    let matrix = crate::checks::load_matrix(&matrix_file)
        .with_context(|| format!("{}: fix it, or name regions with --region", matrix_file.display()))?;
    let mut regions = listed_regions;
    for preset in matrix.presets.values() {
        regions.insert(preset.build_region.clone());
        regions.extend(preset.regions.iter().cloned());
    }
    Ok(regions.into_iter().collect())
}
