//! `cargo xtask build-amis`: expand the matrix, run one Packer build per cell
//! in parallel, record every AMI of each successful build in ami-list, and
//! report the run. One file per phase: `plan`, `base` (Spark on base), `run`
//! (Packer and recording) and `report`; where the builds run is `site`.

mod base;
mod containers;
mod inputs;
mod plan;
mod report;
pub(crate) mod run;
mod survey;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::{
    ami_list, checks,
    endpoint::EndpointArgs,
    journal, lock,
    matrix::{Build, Strategy},
    packer,
    project::{self, display},
    publishing,
    run_report::Report,
    site::{self, downloads::SourceArgs, Request, Site},
    sweep,
    template::RunStamp,
    watch,
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
    /// Named selection from packer/matrix.json: `default` (Debian 13, base
    /// and Spark 4, HVM, x86_64 + arm64, 3 regions), `spark-3.5` (Debian 12,
    /// the Spark 3.5 line) or `seed-2014` (the 2014 original's 32 AMIs, on
    /// Amazon Linux, which --local can only build API-only).
    #[arg(long, default_value = "default")]
    pub preset: String,

    /// Only these OS families (repeat, or comma list): debian-13, debian-12,
    /// al2023, amzn-pv. --local proves only the Debian ones.
    #[arg(long, value_delimiter = ',')]
    pub os: Vec<String>,

    /// Only these images (repeat, or comma list), e.g. base,spark-4.3.0; a
    /// Spark line picks every version of it: spark-4, spark-3.5
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

    /// Build every selected build, even those whose recorded AMIs are
    /// current (same input hash: template, scripts, matrix cell, source AMI).
    #[arg(long)]
    pub force: bool,

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

    /// Remove what earlier runs that died (killed, crashed) left in real AWS:
    /// their instances, temporary security groups and key pairs. Without it
    /// the run only names them. Against an emulator they are always removed.
    #[arg(long)]
    pub sweep: bool,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// The ami-list tree to update. Default: the checked-in ami-list/ for
    /// real AWS; target/local/ami-list with --local.
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// Print the run's report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,

    /// In the summary, one row per AMI (every region's ID) instead of one per build.
    #[arg(long)]
    pub wide: bool,

    /// Print every Packer step of every build as it happens.
    #[arg(long, short)]
    pub verbose: bool,

    #[command(flatten)]
    pub publish: publishing::BuildArgs,

    /// ami: EC2 images (the default). docker: container images from the same
    /// template and provisioners, one per image, OS family and architecture
    /// (no virtualization types or regions), pushed to a registry and recorded
    /// by digest in images-list/. Try `--local --platform docker`: the
    /// sandbox runs its own dockerd and registry on loopback.
    #[arg(long, value_enum, default_value_t = Platform::Ami)]
    pub platform: Platform,

    /// --platform docker: push under HOST/NAMESPACE, e.g. ghcr.io/acme/spark-packer
    /// (after `docker login ghcr.io`), as <NAMESPACE>/<image>:<run-id>-<os>-<arch>.
    /// --local pushes to the sandbox's own registry instead.
    #[arg(long, value_name = "HOST/NAMESPACE")]
    pub registry: Option<String>,

    /// --platform docker: the images-list tree to update. Default: the
    /// checked-in images-list/; target/local/images-list with --local.
    #[arg(long, value_name = "DIR")]
    pub images_list: Option<PathBuf>,
}

/// What the builds make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    /// EC2 AMIs, recorded in ami-list/.
    #[default]
    Ami,
    /// Container images, pushed to a registry and recorded in images-list/.
    Docker,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let matrix = checks::load_matrix(&args.matrix.clone().unwrap_or_else(project::matrix_file))?;
    if args.platform == Platform::Docker {
        return containers::main(sh, args, &matrix);
    }
    if args.registry.is_some() || args.images_list.is_some() {
        anyhow::bail!("--registry and --images-list are for container images: add --platform docker, or drop them");
    }
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    ami_list::writable_ami_list(&ami_list_root)?;
    let builds = plan::builds(&matrix, args, &ami_list_root)?;
    if !args.no_provision {
        crate::os_support::refuse_unprovable(sh, &matrix, &builds, args.endpoint.local)?;
    }
    args.publish.check()?;
    if args.dry_run {
        let verdicts = dry_run_verdicts(sh, args, &builds, &ami_list_root);
        return plan::print(&builds, &ami_list_root, args.spark_on_base, args.json, &verdicts);
    }

    let provision = !args.no_provision;
    site::preflight(&args.endpoint, provision)?;
    let lock = lock::acquire(&ami_list_root, "build-amis")?;
    if let Some(holder) = &lock.stale {
        eprintln!("note: took over the lock {} left by {holder}, which is no longer running", display(&lock.path));
    }
    site::install_sandbox_tools(sh, &args.endpoint)?;
    let version = packer::check_installed_cached(sh)?;
    packer::init_plugins_if_needed(sh, version, &project::root().join("packer/plugins.pkr.hcl"))?;
    let request =
        Request { builds: &builds, provision, smoke_test: !args.skip_smoke_test, spark_on_base: args.spark_on_base };
    let site = Site::open(sh, &args.endpoint, &args.sources, &request)?;
    let _watch = watch::start(site.endpoint());
    for note in site.notes(&builds) {
        eprintln!("{note}");
    }
    if provision && args.skip_smoke_test {
        eprintln!("{SMOKE_TEST_OFF}");
    }
    let finished = build_all(sh, args, &builds, &site, &ami_list_root);
    drop(site);
    drop(lock);
    finished
}

/// Runs the planned builds on the open site, journal and report included.
fn build_all(sh: &Shell, args: &Args, builds: &[Build], site: &Site, ami_list_root: &Path) -> Result<()> {
    let provision = site.provision;
    let started = project::now_secs();
    let run_id = project::run_id(started, std::process::id());
    let log_dir = project::target_dir().join("packer-logs").join(&run_id);
    fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    announce(&run_id, builds, args, site.endpoint(), &log_dir);
    let clock = Instant::now();
    // The sandbox's emulator starts empty: nothing can be current there.
    let list_images = (!args.force && !site.starts_empty()).then_some(ami_list_root);
    // git's two calls, and the sweep of what dead runs left, overlap the
    // survey's read-only EC2 calls: none of them depends on another.
    let (git_sh, sweep_sh) = (sh.clone(), sh.clone());
    let (git_commit, survey) = std::thread::scope(|scope| {
        let git = scope.spawn(move || project::git_commit(&git_sh));
        let sweep = scope.spawn(move || {
            sweep::at_start(&sweep_sh, site.aws(), site.endpoint(), site.connection.is_emulator, args.sweep)
        });
        let survey = survey::Survey::take(sh, site, builds, list_images);
        let _ = sweep.join();
        (git.join().unwrap_or_else(|_| "unknown".to_string()), survey)
    });
    let survey = survey?;
    let stamp = RunStamp { run_id: run_id.clone(), git_commit, created_at: project::rfc3339(started) };
    let journal = journal::Journal::start(
        journal::Header {
            run_id: run_id.clone(),
            started_at: stamp.created_at.clone(),
            preset: args.preset.clone(),
            strategy: args.strategy,
            provisioned: provision,
            endpoint: site.endpoint().map(str::to_string),
            ami_list: display(ami_list_root),
            git_commit: stamp.git_commit.clone(),
        },
        builds,
    )?;
    let texts = run::InputTexts::read()?;
    let run = run::RunContext {
        stamp,
        site,
        survey: &survey,
        texts: &texts,
        journal: &journal,
        force: args.force,
        log_dir,
        ami_list: ami_list_root.to_path_buf(),
        retries: args.retries,
        jobs: args.jobs,
        spark_on_base: args.spark_on_base,
        verbose: args.verbose,
        json: args.json,
    };
    let results = run::run_all(sh, &run, builds)?;
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
        ami_list: display(ami_list_root),
        git_commit: run.stamp.git_commit.clone(),
        builds: results,
    };
    drop(run);
    let published = publishing::after_build(sh, site.aws(), ami_list_root, &report, &args.publish);
    let finished = match report::finish(&report, args.json, args.wide) {
        // Builds fail in a second when their endpoint is gone: say why.
        Err(e) => Err(match watch::refused().or_else(|| watch::refusing_now(site.endpoint())) {
            Some(why) => e.context(why),
            None => e,
        }),
        Ok(()) => Ok(()),
    };
    if let Err(e) = journal.finish() {
        eprintln!("warning: {e:#}");
    }
    finished.and(published)
}

/// The run's first line: what it builds, how, and where its logs go.
fn announce(run_id: &str, builds: &[Build], args: &Args, endpoint: Option<&str>, log_dir: &Path) {
    eprintln!(
        "run {run_id}: {} builds, {} AMIs, {} strategy, {} at once{}{}; logs in {}",
        builds.len(),
        builds.iter().map(|b| b.regions().count()).sum::<usize>(),
        format!("{:?}", args.strategy).to_lowercase(),
        args.jobs,
        if args.spark_on_base { ", Spark on base (base builds first)" } else { "" },
        endpoint.map(|e| format!(", EC2 at {e}")).unwrap_or_default(),
        display(log_dir),
    );
}

/// For a dry run: build name -> whether it would be built and why, from a
/// read-only look at EC2. One line for all when EC2 cannot be asked.
fn dry_run_verdicts(
    sh: &Shell,
    args: &Args,
    builds: &[Build],
    ami_list_root: &Path,
) -> Result<BTreeMap<String, String>, String> {
    if args.endpoint.local {
        return Err("--local starts an empty emulator: every build would be built".to_string());
    }
    if args.force {
        return Err("--force: every build would be built".to_string());
    }
    let look = || -> Result<BTreeMap<String, String>> {
        let request = Request { builds, provision: false, smoke_test: !args.skip_smoke_test, spark_on_base: false };
        let site = Site::open(sh, &args.endpoint, &args.sources, &request)?;
        let survey = survey::Survey::take(sh, &site, builds, Some(ami_list_root))?;
        let texts = run::InputTexts::read()?;
        let known = inputs::RunInputs {
            template: &texts.template,
            scripts: &texts.scripts,
            provision: !args.no_provision,
            smoke_test: !args.skip_smoke_test,
        };
        let verdict = |build: &Build| {
            if args.spark_on_base && build.image.spark.is_some() {
                return "build if its base is built; else as recorded".to_string();
            }
            let inputs = inputs::Inputs::of(build, &known, survey.source(build), None);
            match survey.currency(build, ami_list_root, &inputs) {
                survey::Currency::Current(_) => "current: skip".to_string(),
                survey::Currency::Partial { missing, reasons, .. } => {
                    format!("copy to {} (no launch): {}", missing.join(", "), reasons.join("; "))
                }
                survey::Currency::Stale(reasons) => format!("build: {}", reasons.join("; ")),
            }
        };
        Ok(builds.iter().map(|b| (b.name.clone(), verdict(b))).collect())
    };
    look().map_err(|e| format!("not checked against EC2 ({e:#})"))
}
