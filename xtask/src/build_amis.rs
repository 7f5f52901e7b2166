//! `cargo xtask build-amis`: expand the matrix, run one Packer build per cell
//! in parallel, record every AMI of each successful build in ami-list, and
//! report the run.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use xshell::Shell;

use crate::{
    ami_list::{self, Cell},
    aws::{self, Aws},
    checks,
    endpoint::{Connection, EndpointArgs},
    interrupt, journal, local, lock,
    matrix::{Build, Filters, Hadoop, Spark, Strategy, BASE_IMAGE},
    packer,
    progress::{Event, Printer, Work},
    project, sweep, watch,
};

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

    /// Where spark.sh downloads Spark, laid out like Apache's archive
    /// (<URL>/spark-<v>/spark-<v>-bin-<hadoop>.tgz). Default: Apache's
    /// archive; with --local, a mirror built from the pyspark sdist on PyPI
    /// and served on 127.0.0.1.
    #[arg(long, value_name = "URL")]
    pub spark_mirror: Option<String>,

    /// Where hadoop.sh downloads Hadoop, for images whose matrix entry names
    /// a Hadoop version (<URL>/hadoop-<v>/hadoop-<v>.tar.gz). Default:
    /// Apache's archive; with --local, the local mirror.
    #[arg(long, value_name = "URL")]
    pub hadoop_mirror: Option<String>,

    /// With --local: serve this directory as the mirror instead of the one
    /// built from PyPI, with the SHA-512s of its .sha512 files. Lay it out
    /// like Apache's archive: spark-<v>/spark-<v>-bin-<hadoop>.tgz,
    /// hadoop-<v>/hadoop-<v>.tar.gz. For tests and offline tarballs.
    #[arg(long, value_name = "DIR", requires = "local")]
    pub local_mirror: Option<PathBuf>,

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

    /// Print every Packer step of every build as it happens.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The outcome of one build, as reported and saved.
#[derive(Debug, Clone, Serialize)]
pub struct BuildResult {
    pub name: String,
    pub image: String,
    pub virt: String,
    pub arch: String,
    pub build_region: String,
    pub status: Status,
    /// Region -> AMI ID, for every AMI Packer reported (even on failure).
    pub amis: BTreeMap<String, String>,
    /// The ami-list files written, relative to the tree.
    pub recorded: Vec<String>,
    pub seconds: f64,
    /// Packer runs: 1, or more when transient failures were retried.
    pub attempts: u32,
    /// --spark-on-base: the base AMI this build launched from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ami: Option<String>,
    pub log: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the provisioners left out on purpose (`spark-packer: NOTE:`
    /// lines), e.g. Ganglia where the OS does not package it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    /// Not run, or stopped, because of Ctrl-C or SIGTERM.
    Interrupted,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub started_at: String,
    pub seconds: f64,
    pub preset: String,
    pub strategy: Strategy,
    pub provisioned: bool,
    /// False only when --skip-smoke-test turned the Spark smoke test off.
    pub smoke_test: bool,
    /// Image -> where its Spark (and Hadoop) came from, and the SHA-512s they were checked against.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub downloads: BTreeMap<String, ImageDownloads>,
    pub endpoint: Option<String>,
    pub ami_list: String,
    pub git_commit: String,
    pub builds: Vec<BuildResult>,
}

/// A planned AMI: what a dry run shows.
#[derive(Debug, Serialize)]
struct PlannedBuild<'a> {
    name: &'a str,
    launch_region: &'a str,
    instance_type: &'a str,
    source_ami: String,
    amis: Vec<String>,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let matrix_file = args.matrix.clone().unwrap_or_else(project::matrix_file);
    let matrix_text =
        fs::read_to_string(&matrix_file).with_context(|| format!("read the matrix {}", matrix_file.display()))?;
    let (problems, matrix) = checks::check_matrix(&display(&matrix_file), &matrix_text);
    if let Some(first) = problems.first() {
        bail!(
            "{first}{}; fix the matrix (`cargo xtask validate` lists every problem)",
            match problems.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        );
    }
    let matrix = matrix.context("the matrix could not be read")?;
    let filters = Filters {
        images: args.image.clone(),
        virts: args.virt.clone(),
        archs: args.arch.clone(),
        regions: args.region.clone(),
    };
    let mut builds = matrix.expand(&args.preset, &filters, args.strategy, args.public)?;
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    if let Some(report) = &args.resume {
        let report_path = if report.as_os_str() == "latest" { latest_report_path() } else { report.clone() };
        let text = fs::read_to_string(&report_path).with_context(|| {
            format!(
                "read the report to resume, {}: no earlier run to resume? run without --resume",
                report_path.display()
            )
        })?;
        builds = builds_to_resume(&text, builds, &display(&ami_list_root))
            .with_context(|| format!("resume from {}", display(&report_path)))?;
    }

    if args.dry_run {
        return print_plan(&builds, &ami_list_root, args.spark_on_base, args.json);
    }

    let provision = !args.no_provision;
    if provision && args.endpoint.is_emulator() && !args.endpoint.local {
        bail!(
            "provisioned builds against an emulator need an instance to SSH into: use --local, which \
             provides one, or --no-provision for API-only AMIs"
        );
    }

    check_credentials(&args.endpoint)?;
    let lock = lock::acquire(&ami_list_root, "build-amis")?;
    if let Some(holder) = &lock.stale {
        eprintln!("note: took over the lock {} left by {holder}, which is no longer running", display(&lock.path));
    }
    let version = packer::check_installed_cached(sh)?;
    packer::init_plugins_if_needed(sh, version, &project::root().join("packer/plugins.pkr.hcl"))?;
    let connection = args.endpoint.connect(sh)?;
    sweep::at_start(sh, &connection.aws, connection.endpoint.as_deref(), connection.is_emulator, args.sweep);
    let _watch = watch::start(connection.endpoint.as_deref());
    let provisioning = if provision { Some(Provisioning::prepare(sh, args, &builds, &connection)?) } else { None };
    if let Some(p) = &provisioning {
        for (image, downloads) in &p.downloads {
            for download in std::iter::once(&downloads.spark).chain(&downloads.hadoop) {
                eprintln!("{image}: {}, SHA-512 from {}", download.url, download.sha512_source);
            }
        }
        if !p.smoke_test {
            eprintln!("{SMOKE_TEST_OFF}");
        }
        if p.local.is_some() && builds.iter().any(|b| b.arch != std::env::consts::ARCH) {
            eprintln!(
                "note: the local instance is {} Debian; builds for other architectures are provisioned on it, \
                 which proves the scripts and the Spark job but not the architecture",
                std::env::consts::ARCH
            );
        }
    }

    let started = project::now_secs();
    let run_id = project::run_id(started, std::process::id());
    let run = Run {
        run_id: run_id.clone(),
        git_commit: project::git_commit(sh),
        created_at: project::rfc3339(started),
        endpoint: connection.endpoint.clone(),
        skip_aws_validation: connection.is_emulator,
        provision,
        log_dir: project::target_dir().join("packer-logs").join(&run_id),
        ami_list: ami_list_root.clone(),
    };
    fs::create_dir_all(&run.log_dir).with_context(|| format!("create {}", run.log_dir.display()))?;
    let journal = journal::Journal::start(
        journal::Header {
            run_id: run_id.clone(),
            started_at: run.created_at.clone(),
            preset: args.preset.clone(),
            strategy: args.strategy,
            provisioned: provision,
            endpoint: connection.endpoint.clone(),
            ami_list: display(&ami_list_root),
            git_commit: run.git_commit.clone(),
        },
        &builds,
    )?;

    eprintln!(
        "run {run_id}: {} builds, {} AMIs, {} strategy, {} at once{}{}; logs in {}",
        builds.len(),
        builds.iter().map(|b| b.regions().count()).sum::<usize>(),
        format!("{:?}", args.strategy).to_lowercase(),
        args.jobs,
        if args.spark_on_base { ", Spark on base (base builds first)" } else { "" },
        connection.endpoint.as_deref().map(|e| format!(", EC2 at {e}")).unwrap_or_default(),
        display(&run.log_dir),
    );
    let clock = Instant::now();
    let printer = Printer::start(builds.len(), args.verbose);
    interrupt::install(printer.sender(), Work::Builds)?;
    // Instances first, then the emulator, as their destructors would.
    if provisioning.as_ref().is_some_and(|p| p.local.is_some()) {
        interrupt::at_give_up(local::instance::tear_down_own_instances);
    }
    if let Some(pid) = connection.emulator_pid() {
        interrupt::kill_on_exit(pid);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(usize::from(args.jobs))
        .build()
        .context("start the build thread pool")?;
    let provisioning = provisioning.as_ref();
    let base_disks = match provisioning {
        Some(p) if args.spark_on_base && p.local.is_some() => Some(local::instance::BaseDisks::create()?),
        _ => None,
    };
    let run_phase = |phase: &[&Build], layers: &(dyn Fn(&Shell, &Build) -> Result<Layers> + Sync)| {
        let worker_state = (sh.clone(), printer.sender());
        pool.install(|| {
            phase
                .par_iter()
                .map_with(worker_state, |(sh, events), build| {
                    // After Ctrl-C, run_build reports the build as not started; look nothing up.
                    let layers =
                        if interrupt::interrupted() { Err(anyhow::anyhow!("interrupted")) } else { layers(sh, build) };
                    let result = run_build(sh, &run, provisioning, build, layers, args.retries, events);
                    journal.record(&result);
                    result
                })
                .collect::<Vec<BuildResult>>()
        })
    };
    // With --spark-on-base the base builds go first, keeping their local
    // disks; the Spark builds then start from the base AMIs.
    let (first, second): (Vec<&Build>, Vec<&Build>) =
        builds.iter().partition(|b| !args.spark_on_base || b.image.spark.is_none());
    let mut results = run_phase(&first, &|_, build| {
        let keep_disk = base_disks.as_ref().filter(|_| build.image.spark.is_none()).map(|d| d.path(&build.name));
        Ok(Layers { base: None, keep_disk })
    });
    if !second.is_empty() {
        let built: Vec<(&Build, &BuildResult)> = first.iter().copied().zip(&results).collect();
        let on_base = run_phase(&second, &|sh, build| {
            let base = resolve_base(sh, &connection.aws, &run.ami_list, build, &built, base_disks.as_ref())?;
            Ok(Layers { base: Some(base), keep_disk: None })
        });
        results.extend(on_base);
    }
    drop(base_disks);
    printer.finish();

    let report = Report {
        run_id: run_id.clone(),
        started_at: run.created_at.clone(),
        seconds: clock.elapsed().as_secs_f64(),
        preset: args.preset.clone(),
        strategy: args.strategy,
        provisioned: provision,
        smoke_test: provisioning.is_none_or(|p| p.smoke_test),
        downloads: provisioning.map(|p| p.downloads.clone()).unwrap_or_default(),
        endpoint: connection.endpoint.clone(),
        ami_list: display(&ami_list_root),
        git_commit: run.git_commit.clone(),
        builds: results,
    };
    let report_path = save_report(&report)?;
    if let Err(e) = journal.finish() {
        eprintln!("warning: {e:#}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary_table(&report));
        println!("report: {}", display(&report_path));
    }
    let failed = report.builds.iter().filter(|b| b.status == Status::Failed).count();
    let interrupted = report.builds.iter().filter(|b| b.status == Status::Interrupted).count();
    drop(lock);
    if interrupted > 0 {
        bail!(
            "interrupted: {interrupted} of {} builds did not finish and their ami-list files are unchanged; \
             the finished ones are recorded. Run again with --resume to build the rest",
            report.builds.len()
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} builds failed; their ami-list files are unchanged. See the logs named above, \
             then rerun just those with --resume",
            report.builds.len()
        );
    }
    Ok(())
}

fn latest_report_path() -> PathBuf {
    project::target_dir().join("build-reports/latest.json")
}

/// The builds of `planned` that an earlier run's report shows as failed or
/// interrupted. Refuses a report for another ami-list tree, and one whose
/// builds the current flags do not plan.
pub fn builds_to_resume(report_json: &str, planned: Vec<Build>, ami_list: &str) -> Result<Vec<Build>> {
    let report: serde_json::Value = serde_json::from_str(report_json).context("parse the report")?;
    let wrote = report["ami_list"].as_str().unwrap_or_default();
    if wrote != ami_list {
        bail!("that run wrote {wrote}, not {ami_list}: pass --ami-list {wrote} to resume it");
    }
    let unfinished: Vec<&str> = report["builds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["status"] != "ok")
        .filter_map(|b| b["name"].as_str())
        .collect();
    if unfinished.is_empty() {
        bail!("nothing to resume: every build of run {} succeeded", report["run_id"].as_str().unwrap_or("?"));
    }
    let unplanned: Vec<&str> =
        unfinished.iter().copied().filter(|name| !planned.iter().any(|b| b.name == *name)).collect();
    if !unplanned.is_empty() {
        bail!(
            "{} {} not planned by these flags: use the same --preset ({}), --strategy ({}) and filters as that run",
            unplanned.join(", "),
            if unplanned.len() == 1 { "is" } else { "are" },
            report["preset"].as_str().unwrap_or("?"),
            report["strategy"].as_str().unwrap_or("?")
        );
    }
    Ok(planned.into_iter().filter(|b| unfinished.contains(&b.name.as_str())).collect())
}

/// Fails early, before any EC2 call, when Packer and the aws CLI would find
/// no credentials at all.
fn check_credentials(endpoint: &EndpointArgs) -> Result<()> {
    if endpoint.local {
        return Ok(()); // the sandbox sets its own dummy ones
    }
    let env = |key: &str| std::env::var_os(key).is_some_and(|v| !v.is_empty());
    if endpoint.is_emulator() {
        if !env("AWS_ACCESS_KEY_ID") && !env("AWS_PROFILE") {
            bail!(
                "no AWS credentials for the emulator: export dummy ones, e.g. \
                 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test (never real keys)"
            );
        }
        return Ok(());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let sources = [
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_PROFILE"),
        env("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        env("AWS_SHARED_CREDENTIALS_FILE"),
        env("AWS_CONFIG_FILE"),
        env("SPARK_PACKER_INSTANCE_ROLE"),
        home.join(".aws/credentials").exists(),
        home.join(".aws/config").exists(),
    ];
    if !sources.contains(&true) {
        bail!(
            "no AWS credentials found (no AWS_* variables, no ~/.aws/credentials or config): \
             run `aws configure` or `aws sso login`, or export AWS_PROFILE; on an EC2 instance \
             with a role, set SPARK_PACKER_INSTANCE_ROLE=1. To try without AWS, use --local"
        );
    }
    Ok(())
}

/// What every build of one run shares.
pub struct Run {
    pub run_id: String,
    pub git_commit: String,
    pub created_at: String,
    pub endpoint: Option<String>,
    pub skip_aws_validation: bool,
    pub provision: bool,
    pub log_dir: PathBuf,
    pub ami_list: PathBuf,
}

const SMOKE_TEST_OFF: &str = "WARNING: --skip-smoke-test: the Spark smoke test is OFF. \
     These images were never shown to run Spark; use this only to debug the provisioners.";

const APACHE_SPARK: &str = "https://archive.apache.org/dist/spark";
const APACHE_HADOOP: &str = "https://archive.apache.org/dist/hadoop/common";
const MATRIX_PIN: &str = "packer/matrix.json (Apache's SHA-512)";

/// One tarball a provisioner downloads: where from, and the SHA-512 it must have.
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    pub url: String,
    pub sha512: String,
    /// Whose SHA-512 it is, said in the build log: the matrix's Apache pin, or a local mirror's own.
    pub sha512_source: String,
}

/// What one image downloads: Spark, and Hadoop where the matrix asks for it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDownloads {
    pub spark: Download,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hadoop: Option<Download>,
}

/// A tarball as Apache's archive lays it out: `<mirror>/<dir>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    pub dir: String,
    pub file: String,
    /// The matrix's pin: the SHA-512 of Apache's file.
    pub pinned: String,
}

impl Tarball {
    pub fn spark(spark: &Spark) -> Tarball {
        let v = &spark.version;
        Tarball {
            dir: format!("spark-{v}"),
            file: format!("spark-{v}-bin-{}.tgz", spark.hadoop_build),
            pinned: spark.sha512.clone(),
        }
    }

    pub fn hadoop(hadoop: &Hadoop) -> Tarball {
        let v = &hadoop.version;
        Tarball { dir: format!("hadoop-{v}"), file: format!("hadoop-{v}.tar.gz"), pinned: hadoop.sha512.clone() }
    }

    pub fn url(&self, mirror: &str) -> String {
        format!("{}/{}/{}", mirror.trim_end_matches('/'), self.dir, self.file)
    }

    /// The matrix's pin, refused unless it is a SHA-512: real builds must
    /// never download without checking.
    pub fn pin(&self, apache: &str) -> Result<Download> {
        let valid = self.pinned.len() == 128 && self.pinned.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            bail!(
                "the matrix pins no valid SHA-512 for {} ({:?}): put the lower-case hex from {}.sha512 \
                 in packer/matrix.json",
                self.file,
                self.pinned,
                self.url(apache)
            );
        }
        Ok(Download { url: self.url(apache), sha512: self.pinned.clone(), sha512_source: MATRIX_PIN.to_string() })
    }
}

/// Where the provisioners download from: a mirror URL, and whose SHA-512s
/// they check against.
enum Mirror {
    /// The matrix's pins (Apache's values), from Apache's archive or a mirror of it.
    Pinned { url: String, apache: &'static str },
    /// A local mirror directory served at `url`: its own .sha512 files.
    Local { url: String, dir: PathBuf, label: String },
}

impl Mirror {
    fn download(&self, tarball: &Tarball) -> Result<Download> {
        match self {
            Mirror::Pinned { url, apache } => Ok(Download { url: tarball.url(url), ..tarball.pin(apache)? }),
            Mirror::Local { url, dir, label } => {
                let file = dir.join(&tarball.dir).join(&tarball.file);
                let sha512 = local::mirror::published_sha512(&file).with_context(|| {
                    format!("the local mirror has no {}: pass --local-mirror DIR holding it", tarball.file)
                })?;
                Ok(Download { url: tarball.url(url), sha512, sha512_source: label.clone() })
            }
        }
    }

    fn url(&self) -> &str {
        match self {
            Mirror::Pinned { url, .. } | Mirror::Local { url, .. } => url,
        }
    }
}

/// What provisioned builds share: SSH settings, the downloads and, in the
/// sandbox, the local instances' rootfs and key and the local mirror.
pub struct Provisioning {
    pub smoke_test: bool,
    pub ssh_username: String,
    pub spark_mirror: String,
    pub hadoop_mirror: String,
    /// Image -> its downloads, for images with Spark.
    pub downloads: BTreeMap<String, ImageDownloads>,
    local: Option<LocalInstances>,
}

struct LocalInstances {
    rootfs: PathBuf,
    key: local::instance::SshKey,
    _mirror: Option<local::mirror::MirrorServer>,
}

impl Provisioning {
    fn prepare(sh: &Shell, args: &Args, builds: &[Build], connection: &Connection) -> Result<Provisioning> {
        let images: BTreeMap<&str, &Spark> =
            builds.iter().filter_map(|b| Some((b.image.name.as_str(), b.image.spark.as_ref()?))).collect();
        let pinned = |url: &Option<String>, apache| url.clone().map(|url| Mirror::Pinned { url, apache });
        let (spark_mirror, hadoop_mirror, local) = if args.endpoint.local {
            Self::prepare_local(sh, args, builds, &images, connection)?
        } else {
            let spark = pinned(&args.spark_mirror, APACHE_SPARK);
            let hadoop = pinned(&args.hadoop_mirror, APACHE_HADOOP);
            (
                spark.unwrap_or(Mirror::Pinned { url: APACHE_SPARK.to_string(), apache: APACHE_SPARK }),
                hadoop.unwrap_or(Mirror::Pinned { url: APACHE_HADOOP.to_string(), apache: APACHE_HADOOP }),
                None,
            )
        };
        let mut downloads = BTreeMap::new();
        for (image, spark) in &images {
            let hadoop = spark.install_hadoop.as_ref().map(|h| hadoop_mirror.download(&Tarball::hadoop(h))).transpose();
            let wanted = ImageDownloads { spark: spark_mirror.download(&Tarball::spark(spark))?, hadoop: hadoop? };
            downloads.insert(image.to_string(), wanted);
        }
        Ok(Provisioning {
            smoke_test: !args.skip_smoke_test,
            ssh_username: if local.is_some() { "root" } else { "ec2-user" }.to_string(),
            spark_mirror: spark_mirror.url().to_string(),
            hadoop_mirror: hadoop_mirror.url().to_string(),
            downloads,
            local,
        })
    }

    /// The rootfs, the key (imported into the emulator) and the mirror.
    fn prepare_local(
        sh: &Shell,
        args: &Args,
        builds: &[Build],
        images: &BTreeMap<&str, &Spark>,
        connection: &Connection,
    ) -> Result<(Mirror, Mirror, Option<LocalInstances>)> {
        local::instance::require_root(sh)?;
        local::instance::sweep_stale_instances(sh);
        eprintln!("local instance: preparing the Debian rootfs (debootstrap and updates, once)");
        let rootfs = local::instance::ensure_rootfs(sh)?;
        let key = local::instance::ensure_ssh_key(sh)?;
        let regions: std::collections::BTreeSet<&str> = builds.iter().map(|b| b.region.as_str()).collect();
        for region in regions {
            local::instance::import_key_pair(sh, &connection.aws, region, &key)?;
        }

        let venv = local::ensure_venv(sh)?;
        let (dir, label) = match &args.local_mirror {
            Some(dir) => (dir.clone(), format!("the .sha512 files of {} (not Apache's)", dir.display())),
            None => {
                if args.spark_mirror.is_none() {
                    for spark in images.values() {
                        eprintln!(
                            "local mirror: spark-{}-bin-{} (built from the pyspark sdist, once)",
                            spark.version, spark.hadoop_build
                        );
                        local::mirror::ensure_spark(sh, &venv, &spark.version, &spark.hadoop_build)?;
                    }
                }
                let label = "the local mirror's .sha512 (repackaged from the pyspark sdist; not Apache's)";
                (local::mirror::mirror_dir(), label.to_string())
            }
        };
        let server = local::mirror::MirrorServer::start(&venv, &dir)?;
        let served = |explicit: &Option<String>, apache| match explicit {
            Some(url) => Mirror::Pinned { url: url.clone(), apache },
            None => Mirror::Local { url: server.url.clone(), dir: dir.clone(), label: label.clone() },
        };
        let spark = served(&args.spark_mirror, APACHE_SPARK);
        let hadoop = served(&args.hadoop_mirror, APACHE_HADOOP);
        Ok((spark, hadoop, Some(LocalInstances { rootfs, key, _mirror: Some(server) })))
    }
}

/// The variables a provisioned build adds: how to reach the instance, and
/// what to download and check.
pub fn provisioning_vars(provisioning: &Provisioning, build: &Build, ssh: Option<(&Path, u16)>) -> serde_json::Value {
    let downloads = provisioning.downloads.get(&build.image.name);
    let spark = downloads.map(|d| &d.spark);
    let hadoop = downloads.and_then(|d| d.hadoop.as_ref());
    let hadoop_version = build.image.spark.as_ref().and_then(|s| s.install_hadoop.as_ref()).map(|h| h.version.as_str());
    let mut vars = serde_json::json!({
        "ssh_username": provisioning.ssh_username,
        "spark_mirror": provisioning.spark_mirror,
        "spark_hadoop_build": build.image.spark.as_ref().map_or("none", |s| s.hadoop_build.as_str()),
        "spark_sha512": spark.map_or("", |s| s.sha512.as_str()),
        "spark_sha512_source": spark.map_or("", |s| s.sha512_source.as_str()),
        "hadoop_version": hadoop_version.unwrap_or("none"),
        "hadoop_mirror": provisioning.hadoop_mirror,
        "hadoop_sha512": hadoop.map_or("", |h| h.sha512.as_str()),
        "hadoop_sha512_source": hadoop.map_or("", |h| h.sha512_source.as_str()),
        "smoke_test": provisioning.smoke_test,
    });
    if let Some((private_key, port)) = ssh {
        vars["ssh_host"] = "127.0.0.1".into();
        vars["ssh_port"] = port.into();
        vars["ssh_private_key_file"] = private_key.display().to_string().into();
        vars["ssh_keypair_name"] = local::instance::KEYPAIR_NAME.into();
    }
    vars
}

/// The Packer variables for one build: the template's whole interface.
pub fn packer_vars(build: &Build, run_id: &str, git_commit: &str, created_at: &str) -> serde_json::Value {
    serde_json::json!({
        "build_name": build.name,
        "image": build.image.name,
        "spark_version": build.image.spark.as_ref().map_or("none", |s| s.version.as_str()),
        "virt": build.virt,
        "arch": build.arch,
        "region": build.region,
        "copy_regions": build.copy_regions,
        "instance_type": build.instance_type,
        "source_ami_name": build.source_ami.name,
        "source_ami_owners": build.source_ami.owners,
        "ami_groups": if build.public { vec!["all"] } else { vec![] },
        "run_id": run_id,
        "git_commit": git_commit,
        "created_at": created_at,
    })
}

/// Writes the build's Packer variables, the endpoint's included, as
/// `<log dir>/<build>.pkrvars.json`.
pub fn write_var_file(run: &Run, build: &Build) -> Result<PathBuf> {
    write_vars(run, build, serde_json::Value::Null)
}

fn write_vars(run: &Run, build: &Build, extra: serde_json::Value) -> Result<PathBuf> {
    let mut vars = packer_vars(build, &run.run_id, &run.git_commit, &run.created_at);
    if let (Some(vars), serde_json::Value::Object(extra)) = (vars.as_object_mut(), extra) {
        vars.extend(extra);
    }
    vars["endpoint_ec2"] = run.endpoint.clone().unwrap_or_default().into();
    vars["skip_aws_validation"] = run.skip_aws_validation.into();
    vars["communicator"] = if run.provision { "ssh" } else { "none" }.into();
    let var_file = run.log_dir.join(format!("{}.pkrvars.json", build.name));
    fs::write(&var_file, serde_json::to_string_pretty(&vars)?)
        .with_context(|| format!("write {}", var_file.display()))?;
    Ok(var_file)
}

/// Where one build starts, and what it keeps for the builds that follow.
pub struct Layers {
    /// --spark-on-base: the base AMI this Spark build launches from.
    pub base: Option<BaseAmi>,
    /// A local base build of a --spark-on-base run keeps its instance's disk
    /// here, for the local instances of the Spark builds on its AMI.
    pub keep_disk: Option<PathBuf>,
}

/// The base AMI a Spark build starts from with --spark-on-base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseAmi {
    pub id: String,
    /// Its exact name: the source filter Packer gets (owner: self).
    pub name: String,
    /// The local base instance's kept disk.
    pub disk: Option<PathBuf>,
}

/// Where a Spark build's base AMI comes from.
#[derive(Debug)]
pub enum BaseSource<'a, T> {
    /// This run's base build with the same virtualization and architecture
    /// that made an AMI (or was to) in the Spark build's launch region: its
    /// result, or its plan in a dry run.
    ThisRun(&'a T),
    /// Base is not in this run: the ami-list cell of the launch region.
    Recorded(Cell),
}

pub fn base_source<'a, T>(spark: &Build, built: &[(&Build, &'a T)]) -> BaseSource<'a, T> {
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
fn resolve_base(
    sh: &Shell,
    aws: &Aws,
    ami_list_root: &Path,
    spark: &Build,
    built: &[(&Build, &BuildResult)],
    local_disks: Option<&local::instance::BaseDisks>,
) -> Result<BaseAmi> {
    let (id, origin, disk) = match base_source(spark, built) {
        BaseSource::ThisRun(base) => {
            match base.status {
                Status::Ok => {}
                Status::Failed => bail!("not built: its base, {}, failed (see its log, {})", base.name, base.log),
                Status::Interrupted => bail!("not built: its base, {}, was interrupted", base.name),
            }
            let id = base.amis.get(&spark.region).with_context(|| {
                format!("{} reported no AMI in {}, where {} launches", base.name, spark.region, spark.name)
            })?;
            let disk = local_disks.map(|disks| disks.path(&base.name));
            if let Some(disk) = disk.as_ref().filter(|d| !d.exists()) {
                bail!("the local disk of {} was not kept at {}; run both again", base.name, display(disk));
            }
            (id.clone(), format!("built by {} in this run", base.name), disk)
        }
        BaseSource::Recorded(cell) => {
            let path = ami_list_root.join(cell.relative_path());
            if local_disks.is_some() {
                bail!(
                    "base is not in this run, and --local starts an empty emulator: build both, \
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
    let image = aws
        .image(sh, &spark.region, &id)
        .with_context(|| format!("look up the base AMI {id} ({origin}); if it is gone, build base again"))?;
    check_base_image(&image, spark).with_context(|| format!("the base AMI {id} ({origin})"))?;
    Ok(BaseAmi { id, name: image.name, disk })
}

/// The base AMI must be the factory's, available, and of the Spark build's
/// virtualization and architecture.
pub fn check_base_image(image: &aws::Image, spark: &Build) -> Result<()> {
    let tags = image.tags();
    let virt = if image.virtualization_type == "paravirtual" { "pv" } else { image.virtualization_type.as_str() };
    let problem = if tags.get("managed-by") != Some(&"spark-packer") {
        "it is not tagged managed-by=spark-packer".to_string()
    } else if tags.get("spark-packer:image") != Some(&BASE_IMAGE) {
        format!("it is tagged as image {:?}, not {BASE_IMAGE}", tags.get("spark-packer:image").unwrap_or(&""))
    } else if image.state != "available" {
        format!("it is {}, not available", image.state)
    } else if virt != spark.virt || image.architecture != spark.arch {
        format!("it is {virt} {}, but {} is {} {}", image.architecture, spark.name, spark.virt, spark.arch)
    } else if image.name.is_empty() {
        "it has no name for Packer's source filter".to_string()
    } else {
        return Ok(());
    };
    bail!("{problem}: build base again, or fix the ami-list record")
}

fn run_build(
    sh: &Shell,
    run: &Run,
    provisioning: Option<&Provisioning>,
    build: &Build,
    layers: Result<Layers>,
    retries: u32,
    events: &Sender<Event>,
) -> BuildResult {
    let clock = Instant::now();
    let send = |event| {
        let _ = events.send(event);
    };
    let mut result = BuildResult {
        name: build.name.clone(),
        image: build.image.name.clone(),
        virt: build.virt.clone(),
        arch: build.arch.clone(),
        build_region: build.region.clone(),
        status: Status::Interrupted,
        amis: BTreeMap::new(),
        recorded: Vec::new(),
        seconds: 0.0,
        attempts: 0,
        base_ami: None,
        log: String::new(),
        error: None,
        notes: Vec::new(),
    };
    if interrupt::interrupted() {
        result.error = Some("not started: the run was interrupted".to_string());
        send(Event::Skipped { build: build.name.clone(), why: "skip  ".to_string() });
        return result;
    }
    let layers = match layers {
        Ok(layers) => {
            result.base_ami = layers.base.as_ref().map(|b| b.id.clone());
            layers
        }
        Err(e) => {
            let error = format!("{e:#}");
            result.status = Status::Failed;
            result.error = Some(error.clone());
            send(Event::Failed { build: build.name.clone(), error, log: String::new() });
            return result;
        }
    };
    send(Event::Started {
        build: build.name.clone(),
        detail: match build.copy_regions.len() {
            0 => format!("in {}", build.region),
            n => format!("in {}, copying to {n} regions", build.region),
        },
    });
    let outcome = loop {
        result.attempts += 1;
        let log = match result.attempts {
            1 => run.log_dir.join(format!("{}.log", build.name)),
            n => run.log_dir.join(format!("{}.attempt-{n}.log", build.name)),
        };
        result.log = display(&log);
        let outcome = packer_build(sh, run, provisioning, build, &layers, &log, |step| {
            send(Event::Step { build: build.name.clone(), step })
        });
        result.notes = fs::read_to_string(&log).map(|text| provisioner_says(&text, "NOTE")).unwrap_or_default();
        match outcome {
            Err(failure) if failure.transient && result.attempts <= retries && !interrupt::interrupted() => {
                let delay_secs = retry_delay_secs(result.attempts);
                send(Event::Retrying {
                    build: build.name.clone(),
                    attempt: result.attempts + 1,
                    delay_secs,
                    error: failure.message,
                });
                std::thread::sleep(std::time::Duration::from_secs(delay_secs));
            }
            outcome => break outcome,
        }
    };
    match outcome {
        Ok(amis) => {
            result.amis = amis;
            match record(&run.ami_list, build, &result.amis) {
                Ok(recorded) => {
                    result.recorded = recorded;
                    result.status = Status::Ok;
                }
                Err(e) => {
                    result.status = Status::Failed;
                    result.error = Some(format!("{e:#}"));
                }
            }
        }
        Err(failure) => {
            result.amis = failure.amis;
            if interrupt::interrupted() {
                result.status = Status::Interrupted;
                result.error = Some(format!("stopped by the interrupt; Packer cleaned up (see {})", result.log));
            } else {
                result.status = Status::Failed;
                result.error = Some(failure.message);
            }
        }
    }
    result.seconds = clock.elapsed().as_secs_f64();
    send(match (&result.status, &result.error) {
        (Status::Ok, _) => Event::Finished {
            build: build.name.clone(),
            detail: format!("{} AMIs in {:.1}s", result.amis.len(), result.seconds),
        },
        (Status::Interrupted, _) => Event::Skipped { build: build.name.clone(), why: "STOPPED".to_string() },
        (_, error) => Event::Failed {
            build: build.name.clone(),
            error: error.clone().unwrap_or_default(),
            log: result.log.clone(),
        },
    });
    result
}

/// 5 s, then 10 s, 20 s, ... capped at a minute: AWS throttling eases in seconds.
pub fn retry_delay_secs(attempt: u32) -> u64 {
    (5u64 << attempt.saturating_sub(1).min(6)).min(60)
}

struct Failure {
    message: String,
    amis: BTreeMap<String, String>,
    /// Worth running again (see `packer::is_transient`).
    transient: bool,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { message: format!("{e:#}"), amis: BTreeMap::new(), transient: false }
    }
}

/// Runs Packer for one build; returns region -> AMI ID for every region the
/// build promised, or why it failed.
fn packer_build(
    sh: &Shell,
    run: &Run,
    provisioning: Option<&Provisioning>,
    build: &Build,
    layers: &Layers,
    log: &Path,
    mut on_step: impl FnMut(String),
) -> Result<BTreeMap<String, String>, Failure> {
    // Held until Packer is done; dropping it tears the local instance down.
    let mut instance = None;
    let (mut vars, only) = match provisioning {
        None => (serde_json::json!({}), "amazon-ebs.api_only"),
        Some(p) => {
            let ssh = match &p.local {
                Some(local) => {
                    // The local analogue of launching from the base AMI: its kept disk over the rootfs.
                    let lowers: Vec<&Path> =
                        layers.base.iter().filter_map(|b| b.disk.as_deref()).chain([local.rootfs.as_path()]).collect();
                    let started = local::instance::Instance::start(sh, &lowers, &local.key, &build.name)
                        .context("start the local instance")?;
                    let port = started.port;
                    instance = Some(started);
                    Some((local.key.private_key.as_path(), port))
                }
                None => None,
            };
            (provisioning_vars(p, build, ssh), "amazon-ebs.provisioned")
        }
    };
    if let Some(base) = &layers.base {
        vars["source_ami_name"] = base.name.clone().into();
        vars["source_ami_owners"] = serde_json::json!(["self"]);
        vars["base_ami"] = base.id.clone().into();
    }
    let var_file = write_vars(run, build, vars)?;

    let template = project::root().join("packer/spark-ami.pkr.hcl");
    let packer_run = packer::build(sh, &template, &var_file, Some(only), log, |line| {
        if let Some(step) = packer::step(line) {
            on_step(step);
        }
    })
    .with_context(|| format!("packer build {}", build.name))?;

    let amis: BTreeMap<String, String> =
        packer::artifacts(&packer_run.output).into_iter().map(|a| (a.region, a.ami_id)).collect();
    if !packer_run.success {
        let errors = packer::errors(&packer_run.output);
        let packer_message = errors
            .first()
            .cloned()
            .or_else(|| packer_run.stderr.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
            .unwrap_or_else(|| "packer build failed without a message".to_string());
        // A provisioner's own ERROR line says what went wrong; Packer only
        // says that the script exited non-zero.
        let message = match provisioner_says(&packer_run.output, "ERROR").last() {
            Some(error) => format!("{error} (packer: {packer_message})"),
            None => packer_message,
        };
        let transient = packer::is_transient(&message, &packer_run.output);
        return Err(Failure { message, amis, transient });
    }
    let missing: Vec<&str> = build.regions().filter(|r| !amis.contains_key(*r)).collect();
    if !missing.is_empty() {
        return Err(Failure {
            message: format!("Packer succeeded but reported no AMI for {}", missing.join(", ")),
            amis,
            transient: false,
        });
    }
    if let (Some(instance), Some(dest)) = (instance.as_mut(), &layers.keep_disk) {
        instance.keep_disk_as(dest.clone());
    }
    Ok(amis)
}

/// What the provisioners said with `spark-packer: <LEVEL>: ...`, in order.
pub fn provisioner_says(output: &str, level: &str) -> Vec<String> {
    let marker = format!("spark-packer: {level}: ");
    output
        .lines()
        .filter_map(packer::parse_line)
        .filter(|line| line.kind == "ui")
        .filter_map(|line| {
            let text = line.data.get(1)?;
            let (_, said) = text.split_once(&marker)?;
            Some(said.trim_end().to_string())
        })
        .collect()
}

/// Writes one ami-list file per region of a successful build.
fn record(root: &Path, build: &Build, amis: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for region in build.regions() {
        let cell = Cell { image: build.image.name.clone(), region: region.to_string(), slot: build.slot() };
        ami_list::write(root, &cell, &amis[region])?;
        written.push(cell.relative_path().display().to_string());
    }
    Ok(written)
}

fn save_report(report: &Report) -> Result<PathBuf> {
    let dir = project::target_dir().join("build-reports");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.json", report.run_id));
    let json = serde_json::to_string_pretty(report)?;
    fs::write(&path, &json).with_context(|| format!("write {}", path.display()))?;
    let latest = dir.join("latest.json");
    let tmp = dir.join(format!(".latest.json.tmp-{}", std::process::id()));
    fs::write(&tmp, &json).and_then(|()| fs::rename(&tmp, &latest)).context("write latest.json")?;
    Ok(path)
}

/// One row per AMI: build, status, time, region, ID.
pub fn summary_table(report: &Report) -> String {
    let mut rows = vec![["BUILD".to_string(), "STATUS".into(), "TIME".into(), "REGION".into(), "AMI".into()]];
    for build in &report.builds {
        let status = match build.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Interrupted => "INTERRUPTED",
        };
        let time = format!("{:.1}s", build.seconds);
        if build.amis.is_empty() {
            let error = build.error.as_deref().unwrap_or("").lines().next().unwrap_or("");
            rows.push([build.name.clone(), status.into(), time.clone(), "-".into(), error.to_string()]);
        }
        for (i, (region, ami)) in build.amis.iter().enumerate() {
            let first = i == 0;
            rows.push([
                if first { build.name.clone() } else { String::new() },
                if first { status.into() } else { String::new() },
                if first { time.clone() } else { String::new() },
                region.clone(),
                ami.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:>w2$}  {:w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // What the provisioners left out on purpose, e.g. gmond on Amazon Linux 2023.
    for build in &report.builds {
        for note in &build.notes {
            out.push_str(&format!("note: {}: {note}\n", build.name));
        }
    }
    let ok: Vec<&BuildResult> = report.builds.iter().filter(|b| b.status == Status::Ok).collect();
    out.push_str(&format!(
        "\n{} of {} builds ok, {} AMIs recorded in {} in {:.1}s{}\n",
        ok.len(),
        report.builds.len(),
        ok.iter().map(|b| b.recorded.len()).sum::<usize>(),
        report.ami_list,
        report.seconds,
        match (report.provisioned, report.smoke_test) {
            (false, _) => " (API-only: not provisioned)",
            (true, false) => " (SMOKE TEST OFF: not shown to run Spark)",
            (true, true) => "",
        },
    ));
    out
}

fn print_plan(builds: &[Build], ami_list_root: &Path, spark_on_base: bool, json: bool) -> Result<()> {
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
            launch_region: &b.region,
            instance_type: &b.instance_type,
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
        println!("{}: launch {} in {} from {}", build.name, build.instance_type, build.launch_region, build.source_ami);
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
    Ok(())
}

/// A path relative to the repository root where it lies inside it.
pub fn display(path: &Path) -> String {
    path.strip_prefix(project::root()).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    /// Recorded from Packer 1.6.6 logs of xtask/tests/provision.rs builds.
    const FAILED_SMOKE_TEST: &str = "\
1795609719,,ui,message,    amazon-ebs.provisioned: spark-packer: smoke test: starting a standalone master
1795609719,,ui,error,==> amazon-ebs.provisioned: spark-packer: ERROR: smoke test: the Spark master exited before it was ready
1795609719,,ui,error,Build 'amazon-ebs.provisioned' errored after 27 seconds 182 milliseconds: Script exited with non-zero exit status: 1.Allowed exit codes are: [0]
1795609719,amazon-ebs.provisioned,error,Script exited with non-zero exit status: 1.Allowed exit codes are: [0]
";

    #[test]
    fn the_provisioners_own_errors_and_notes_are_lifted_from_the_log() {
        assert_eq!(
            provisioner_says(FAILED_SMOKE_TEST, "ERROR"),
            ["smoke test: the Spark master exited before it was ready"]
        );
        assert!(provisioner_says(FAILED_SMOKE_TEST, "NOTE").is_empty());
        // Not recorded (Debian packages gmond): the ERROR line above with NOTE's text.
        let note = "1795609075,,ui,message,    amazon-ebs.provisioned: spark-packer: NOTE: ganglia gmond: not \
                    packaged for amzn 2023; not installed";
        assert_eq!(provisioner_says(note, "NOTE"), ["ganglia gmond: not packaged for amzn 2023; not installed"]);
    }

    #[test]
    fn the_summary_names_what_the_provisioners_left_out() {
        let build = BuildResult {
            name: "base-hvm-arm64".to_string(),
            image: "base".to_string(),
            virt: "hvm".to_string(),
            arch: "arm64".to_string(),
            build_region: "us-east-1".to_string(),
            status: Status::Ok,
            amis: BTreeMap::from([("us-east-1".to_string(), "ami-0123456789abcdef0".to_string())]),
            recorded: vec!["base/us-east-1/hvm-arm64".to_string()],
            seconds: 30.0,
            attempts: 1,
            base_ami: None,
            log: "log".to_string(),
            error: None,
            notes: vec!["ganglia gmond: not packaged for amzn 2023; not installed".to_string()],
        };
        let report = Report {
            run_id: "r".to_string(),
            started_at: "t".to_string(),
            seconds: 30.0,
            preset: "default".to_string(),
            strategy: Strategy::Copy,
            provisioned: true,
            smoke_test: true,
            downloads: BTreeMap::new(),
            endpoint: None,
            ami_list: "ami-list".to_string(),
            git_commit: "g".to_string(),
            builds: vec![build],
        };
        let summary = summary_table(&report);
        assert!(summary.contains("note: base-hvm-arm64: ganglia gmond: not packaged for amzn 2023"), "{summary}");
        assert!(serde_json::to_string(&report).unwrap().contains(r#""notes":["ganglia gmond"#));
    }

    #[test]
    fn real_builds_need_a_pinned_sha512() {
        let matrix = Matrix::parse(&fs::read_to_string(project::matrix_file()).unwrap()).unwrap();
        let spark = matrix.images.iter().find_map(|i| i.spark.clone()).unwrap();
        let tarball = Tarball::spark(&spark);
        let download = tarball.pin(APACHE_SPARK).unwrap();
        assert_eq!(download.url, format!("{APACHE_SPARK}/spark-3.5.3/spark-3.5.3-bin-hadoop3.tgz"));
        assert_eq!(download.sha512_source, MATRIX_PIN);
        let pending = Tarball { pinned: "PENDING".to_string(), ..tarball };
        let error = pending.pin(APACHE_SPARK).unwrap_err().to_string();
        assert!(error.contains("pins no valid SHA-512") && error.contains("hadoop3.tgz.sha512"), "{error}");
        let hadoop = Tarball::hadoop(&Hadoop { version: "3.3.6".to_string(), sha512: String::new() });
        assert_eq!(hadoop.url(APACHE_HADOOP), format!("{APACHE_HADOOP}/hadoop-3.3.6/hadoop-3.3.6.tar.gz"));
    }

    fn seed_builds() -> Vec<Build> {
        Matrix::parse(include_str!("../../packer/matrix.json"))
            .unwrap()
            .expand("seed-2014", &Filters::default(), Strategy::Copy, false)
            .unwrap()
    }

    const REPORT: &str = r#"{"run_id": "r1", "preset": "seed-2014", "strategy": "copy",
        "ami_list": "target/local/ami-list", "builds": [
        {"name": "base-hvm-x86_64", "status": "ok"},
        {"name": "base-pv-x86_64", "status": "failed"},
        {"name": "spark-3.5.3-pv-x86_64", "status": "interrupted"}]}"#;

    #[test]
    fn resume_picks_the_failed_and_interrupted_builds() {
        let builds = builds_to_resume(REPORT, seed_builds(), "target/local/ami-list").unwrap();
        let names: Vec<&str> = builds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["base-pv-x86_64", "spark-3.5.3-pv-x86_64"]);
    }

    #[test]
    fn resume_refuses_another_tree_or_other_flags() {
        let err = builds_to_resume(REPORT, seed_builds(), "ami-list").unwrap_err().to_string();
        assert!(err.contains("pass --ami-list target/local/ami-list"), "{err}");
        let hvm_only: Vec<Build> = seed_builds().into_iter().filter(|b| b.virt == "hvm").collect();
        let err = builds_to_resume(REPORT, hvm_only, "target/local/ami-list").unwrap_err().to_string();
        assert!(err.contains("use the same --preset (seed-2014), --strategy (copy)"), "{err}");
    }

    fn result_of(build: &Build, status: Status) -> BuildResult {
        BuildResult {
            name: build.name.clone(),
            image: build.image.name.clone(),
            virt: build.virt.clone(),
            arch: build.arch.clone(),
            build_region: build.region.clone(),
            status,
            amis: build.regions().map(|r| (r.to_string(), format!("ami-{:08x}", r.len()))).collect(),
            recorded: Vec::new(),
            seconds: 1.0,
            attempts: 1,
            base_ami: None,
            log: format!("{}.log", build.name),
            error: None,
            notes: Vec::new(),
        }
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
        let matrix = Matrix::parse(include_str!("../../packer/matrix.json")).unwrap();
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

    #[test]
    fn retries_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=6).map(retry_delay_secs).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
    }
}
