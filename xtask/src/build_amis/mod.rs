//! `cargo xtask build-amis`: expand the matrix, run one Packer build per cell
//! in parallel, record every AMI of each successful build in ami-list, and
//! report the run. One file per phase: `plan`, `base` (Spark on base), `run`
//! (Packer and recording) and `report`; where the builds run is `site`.

mod base;
mod plan;
mod report;
mod run;

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{
    checks,
    endpoint::EndpointArgs,
    lock,
    matrix::Strategy,
    packer,
    project::{self, display},
    publishing,
    run_report::Report,
    site::{self, downloads::SourceArgs, Request, Site},
    template::RunStamp,
};

const SMOKE_TEST_OFF: &str = "WARNING: --skip-smoke-test: the Spark smoke test is OFF. \
     These images were never shown to run Spark; use this only to debug the provisioners.";

/// Build and register the AMIs of the matrix, and record their IDs in ami-list.
///
/// Each cell of packer/matrix.json (image x virtualization x architecture)
/// is one `packer build` of packer/spark-ami.pkr.hcl; the builds run in
/// parallel. Only a successful build writes its ami-list files, atomically.
///
/// Start here: `cargo xtask build-amis --local --dry-run`, then without
/// --dry-run. On real AWS, credentials come from the usual aws CLI sources.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Named selection from packer/matrix.json: `default` (HVM, x86_64 +
    /// arm64, 3 regions) or `seed-2014` (the 2014 original's 32 AMIs).
    #[arg(long, default_value = "default")]
    pub preset: String,

    /// Only these images (repeat, or comma list), e.g. base,spark-3.5.3
    #[arg(long, value_delimiter = ',')]
    pub image: Vec<String>,

    /// Only these virtualization types: hvm, pv
    #[arg(long, value_delimiter = ',')]
    pub virt: Vec<String>,

    /// Only these architectures: x86_64, arm64 (arm64 is HVM only)
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<String>,

    /// Only these regions, e.g. us-east-1,eu-west-1
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,

    /// copy: build once, copy to the other regions (fewest launches).
    /// native: build in every region (no copies).
    #[arg(long, value_enum, default_value_t = Strategy::Copy)]
    pub strategy: Strategy,

    /// How many Packer builds run at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,

    /// Print every build and AMI the run would make, and run nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Make the AMIs public (ami_groups = ["all"]), as the 2014 seed did.
    #[arg(long)]
    pub public: bool,

    /// API-only builds: launch, snapshot and register without provisioning
    /// (communicator = "none"). The AMIs are unmodified copies of the source.
    #[arg(long)]
    pub no_provision: bool,

    /// Debugging only: do not run the Spark smoke test. The run says so
    /// loudly, and its Spark AMIs were never shown to run Spark.
    #[arg(long)]
    pub skip_smoke_test: bool,

    #[command(flatten)]
    pub sources: SourceArgs,

    /// Build each Spark image on top of a base AMI instead of the stock source
    /// AMI, so the Spark builds skip base.sh. The base builds run first; each
    /// Spark build then launches from this run's base AMI of the same
    /// virtualization, architecture and region, or, when base is not in the
    /// run (--image spark-..., --resume), from the one ami-list records.
    #[arg(long)]
    pub spark_on_base: bool,

    /// Run a build again, up to N times, when it failed for a reason that
    /// looks transient (throttling, a request limit, a timeout). A build
    /// whose provisioner failed is never retried.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub retries: u32,

    /// Run only the builds that failed or were interrupted in an earlier run:
    /// the last one by default, or the report named (target/build-reports/*.json).
    /// Give the same --preset, --strategy and filters as that run.
    #[arg(long, value_name = "REPORT", num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<PathBuf>,

    /// Read the matrix from this file instead of packer/matrix.json, e.g.
    /// to try another Spark version or source image before checking it in.
    #[arg(long, value_name = "FILE")]
    pub matrix: Option<PathBuf>,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// The ami-list tree to update. Default: the checked-in ami-list/ for
    /// real AWS; target/local/ami-list with --local.
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// Print the run's report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,

    /// Print every Packer step of every build as it happens.
    #[arg(long, short)]
    pub verbose: bool,

    #[command(flatten)]
    pub publish: publishing::BuildArgs,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let matrix = checks::load_matrix(&args.matrix.clone().unwrap_or_else(project::matrix_file))?;
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    let builds = plan::builds(&matrix, args, &ami_list_root)?;
    args.publish.check()?;
    if args.dry_run {
        return plan::print(&builds, &ami_list_root, args.spark_on_base, args.json);
    }

    let provision = !args.no_provision;
    site::preflight(&args.endpoint, provision)?;
    let lock = lock::acquire(&ami_list_root, "build-amis")?;
    if let Some(holder) = &lock.stale {
        eprintln!("note: took over the lock {} left by {holder}, which is no longer running", display(&lock.path));
    }
    let version = packer::check_installed_cached(sh)?;
    packer::init_plugins_if_needed(sh, version, &project::root().join("packer/plugins.pkr.hcl"))?;
    let request =
        Request { builds: &builds, provision, smoke_test: !args.skip_smoke_test, spark_on_base: args.spark_on_base };
    let site = Site::open(sh, &args.endpoint, &args.sources, &request)?;
    for note in site.notes(&builds) {
        eprintln!("{note}");
    }
    if provision && args.skip_smoke_test {
        eprintln!("{SMOKE_TEST_OFF}");
    }

    let started = project::now_secs();
    let run_id = project::run_id(started, std::process::id());
    let stamp =
        RunStamp { run_id: run_id.clone(), git_commit: project::git_commit(sh), created_at: project::rfc3339(started) };
    let log_dir = project::target_dir().join("packer-logs").join(&run_id);
    fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    eprintln!(
        "run {run_id}: {} builds, {} AMIs, {} strategy, {} at once{}{}; logs in {}",
        builds.len(),
        builds.iter().map(|b| b.regions().count()).sum::<usize>(),
        format!("{:?}", args.strategy).to_lowercase(),
        args.jobs,
        if args.spark_on_base { ", Spark on base (base builds first)" } else { "" },
        site.endpoint().map(|e| format!(", EC2 at {e}")).unwrap_or_default(),
        display(&log_dir),
    );
    let clock = Instant::now();
    let run = run::RunContext {
        stamp,
        site: &site,
        log_dir,
        ami_list: ami_list_root.clone(),
        retries: args.retries,
        jobs: args.jobs,
        spark_on_base: args.spark_on_base,
        verbose: args.verbose,
    };
    let results = run::run_all(sh, &run, &builds)?;
    let report = Report {
        run_id,
        started_at: run.stamp.created_at.clone(),
        seconds: clock.elapsed().as_secs_f64(),
        preset: args.preset.clone(),
        strategy: args.strategy,
        provisioned: provision,
        smoke_test: !provision || site.smoke_test,
        downloads: site.downloads.clone(),
        endpoint: site.endpoint().map(str::to_string),
        ami_list: display(&ami_list_root),
        git_commit: run.stamp.git_commit.clone(),
        builds: results,
    };
    drop(run);
    let published = publishing::after_build(sh, site.aws(), &ami_list_root, &report, &args.publish);
    drop(site);
    let finished = report::finish(&report, args.json);
    drop(lock);
    finished.and(published)
}
