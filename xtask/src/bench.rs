//! `cargo xtask bench`: times the seed-2014 matrix (32 AMIs) against one local
//! EC2 emulator, several ways side by side in each round, and writes the
//! figures to BENCHMARKS.md. Ratios are paired within a round because these
//! machines are noisy.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::{
    checks, local,
    matrix::{Build, Filters, Strategy},
    packer, project,
    run_report::{self, Report},
    template::{RunStamp, TemplateVars},
};

/// Time the seed-2014 matrix five ways side by side; write BENCHMARKS.md
///
/// Builds the 32 AMIs API-only against the local EC2 emulator, each way once
/// per round:
///
///   build-amis-copy    cargo xtask build-amis --strategy copy
///   build-amis-native  cargo xtask build-amis --strategy native
///   build-amis-rerun   build-amis --strategy copy again on a tree whose
///                      32 AMIs are current: nothing to build
///   single-packer      one `packer build` of bench/seed-2014-single.pkr.hcl
///                      (the 2014 seed's shape: 4 builders, ami_regions)
///   bash-loop          bench/packer-loop.sh: 4 `packer build`s with & and wait
///
/// Prints median wall times, the median of the per-round ratios to
/// single-packer, and the instance launches the emulator counted; writes
/// them to BENCHMARKS.md. Needs no AWS account.
///
/// With --spark-on-base, times instead the spark-3.5 preset (x86_64) provisioned on
/// the local instance (`build-amis --local`, needs root), two ways a round:
///
///   from-stock      every image from the stock source image (the default)
///   spark-on-base   build-amis --spark-on-base: Spark on the new base AMIs
///
/// Example: cargo xtask bench --rounds 5 --no-write
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Paired rounds; each runs every way once, in a rotating order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,

    /// Compare provisioned local builds from the stock image against
    /// --spark-on-base, instead of the API-only ways.
    #[arg(long)]
    pub spark_on_base: bool,

    /// Print the results, but leave BENCHMARKS.md as it is.
    #[arg(long)]
    pub no_write: bool,

    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

const WAYS: [&str; 5] = ["build-amis-copy", "build-amis-native", "build-amis-rerun", "single-packer", "bash-loop"];
const BASELINE: &str = "single-packer";
const SEED_AMIS: usize = 32;
/// --spark-on-base's matrix: the spark-3.5 preset on x86_64, 2 builds in 3 regions.
const LAYER_AMIS: usize = 6;

/// One benchmark's figures: `W` is its per-way result.
#[derive(Debug, Serialize)]
pub struct Results<W> {
    pub rounds: usize,
    pub machine: String,
    pub command: String,
    pub ways: Vec<W>,
}

#[derive(Debug, Serialize)]
pub struct WayResult {
    pub way: String,
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// Median over rounds of (this way's time / single-packer's time).
    pub median_ratio_to_single: f64,
    pub launches: usize,
    pub amis: usize,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    packer::check_installed(sh)?;
    if args.spark_on_base {
        return bench_spark_on_base(sh, args);
    }
    for (key, value) in local::DUMMY_CREDENTIALS {
        sh.set_var(key, value);
    }
    let emulator = local::Emulator::start(sh)?;
    let endpoint = emulator.endpoint();
    let aws = emulator.aws();
    let matrix = checks::load_matrix(&project::matrix_file())?;
    let builds = matrix.expand("seed-2014", &Filters::default(), Strategy::Copy, false)?;
    let regions: Vec<String> = builds[0].regions().map(str::to_string).collect();
    let work = project::target_dir().join("bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;

    let rounds = usize::from(args.rounds);
    let mut seconds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut launches: BTreeMap<&str, usize> = BTreeMap::new();
    let mut amis: BTreeMap<&str, usize> = BTreeMap::new();
    let rerun = work.join("rerun");
    fs::create_dir_all(&rerun)?;
    for (round, way) in rotation(rounds, &WAYS) {
        eprintln!("round {}/{rounds}: {way}", round + 1);
        let dir = work.join(format!("{round}-{way}"));
        fs::create_dir_all(&dir)?;
        // Every way meets the same emulator: emptied of what earlier ways
        // made (moto slows as images pile up), each region's backend warm.
        emulator.reset()?;
        for region in &regions {
            aws.own_images(sh, region)?;
        }
        if way == "build-amis-rerun" {
            // The tree it finds current: built again, untimed, after the reset.
            run_build_amis(sh, &endpoint, &rerun, "copy")?;
        }
        let launched_before = if round == 0 { count_launches(sh, &aws, &regions)? } else { 0 };
        let clock = Instant::now();
        let made = match way {
            "build-amis-copy" => run_build_amis(sh, &endpoint, &dir, "copy")?,
            "build-amis-native" => run_build_amis(sh, &endpoint, &dir, "native")?,
            "build-amis-rerun" => run_build_amis(sh, &endpoint, &rerun, "copy")?,
            "single-packer" => run_single_packer(sh, &endpoint, &dir, round)?,
            _ => run_bash_loop(sh, &endpoint, &dir, &builds, round)?,
        };
        seconds.entry(way).or_default().push(clock.elapsed().as_secs_f64());
        ensure!(made == SEED_AMIS, "{way} made {made} AMIs, not {SEED_AMIS}; see {}", dir.display());
        amis.insert(way, made);
        // Launches are the same every round; counting costs 8 aws calls.
        if round == 0 {
            launches.insert(way, count_launches(sh, &aws, &regions)? - launched_before);
        }
    }

    let results = Results {
        rounds,
        machine: machine(sh),
        command: format!("cargo xtask bench --rounds {rounds}"),
        ways: WAYS
            .iter()
            .map(|way| WayResult {
                way: way.to_string(),
                median_seconds: median(&seconds[way]),
                median_ratio_to_single: median(
                    &seconds[way].iter().zip(&seconds[BASELINE]).map(|(a, b)| a / b).collect::<Vec<_>>(),
                ),
                seconds: seconds[way].clone(),
                launches: launches[way],
                amis: amis[way],
            })
            .collect(),
    };
    publish(args, &results, "api-only", &render(&results))
}

/// Prints the results (as JSON with --json) and, unless --no-write, puts
/// them in their section of BENCHMARKS.md.
fn publish(args: &Args, results: &impl Serialize, section: &str, markdown: &str) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(results)?);
    } else {
        print!("{markdown}");
    }
    if args.no_write {
        return Ok(());
    }
    write_section(section, markdown)
}

/// Round by round, every way once, starting one later each round, so no way
/// always runs first (on a cold cache) or last.
fn rotation<'a>(rounds: usize, ways: &'a [&'a str]) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    (0..rounds).flat_map(move |round| (0..ways.len()).map(move |offset| (round, ways[(round + offset) % ways.len()])))
}

const LAYER_WAYS: [&str; 2] = ["from-stock", "spark-on-base"];

#[derive(Debug, Serialize)]
pub struct LayerWay {
    pub way: String,
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// Median over rounds of (this way's wall time / from-stock's).
    pub median_ratio: f64,
    /// Per round, the builds' times added up: how long instances ran, which
    /// is what real EC2 bills.
    pub instance_seconds: Vec<f64>,
    pub median_instance_seconds: f64,
    pub median_instance_ratio: f64,
    /// How many builds ran base.sh, per run.
    pub base_sh_runs: usize,
    pub amis: usize,
}

/// One provisioned local run of the seed matrix, as the bench measures it.
struct LayerRun {
    wall: f64,
    instance_seconds: f64,
    base_sh_runs: usize,
    amis: usize,
}

fn bench_spark_on_base(sh: &Shell, args: &Args) -> Result<()> {
    // The caches the first run would otherwise fill inside the timing.
    let venv = local::ensure_venv(sh)?;
    let bookworm = local::instance::RootfsKind { suite: "bookworm".into(), arch: "x86_64".into() };
    local::instance::ensure_rootfs(sh, &bookworm)?;
    let matrix = checks::load_matrix(&project::matrix_file())?;
    for spark in matrix.images.iter().filter_map(|i| i.spark.as_ref()) {
        local::mirror::ensure_spark(sh, &venv, &spark.version, &spark.hadoop_build)?;
    }
    let work = project::target_dir().join("bench-spark-on-base");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;

    let rounds = usize::from(args.rounds);
    let mut runs: BTreeMap<&str, Vec<LayerRun>> = BTreeMap::new();
    for (round, way) in rotation(rounds, &LAYER_WAYS) {
        eprintln!("round {}/{rounds}: {way}", round + 1);
        let dir = work.join(format!("{round}-{way}"));
        fs::create_dir_all(&dir)?;
        let run = run_local_provisioned(sh, &dir, way == "spark-on-base")?;
        ensure!(run.amis == LAYER_AMIS, "{way} made {} AMIs, not {LAYER_AMIS}; see {}", run.amis, dir.display());
        runs.entry(way).or_default().push(run);
    }
    let ratios = |way: &str, value: fn(&LayerRun) -> f64| -> Vec<f64> {
        runs[way].iter().zip(&runs["from-stock"]).map(|(a, b)| value(a) / value(b)).collect()
    };
    let results = Results {
        rounds,
        machine: machine(sh),
        command: format!("cargo xtask bench --spark-on-base --rounds {rounds}"),
        ways: LAYER_WAYS
            .iter()
            .map(|way| {
                let seconds: Vec<f64> = runs[way].iter().map(|r| r.wall).collect();
                let instance_seconds: Vec<f64> = runs[way].iter().map(|r| r.instance_seconds).collect();
                LayerWay {
                    way: way.to_string(),
                    median_seconds: median(&seconds),
                    median_ratio: median(&ratios(way, |r| r.wall)),
                    median_instance_seconds: median(&instance_seconds),
                    median_instance_ratio: median(&ratios(way, |r| r.instance_seconds)),
                    seconds,
                    instance_seconds,
                    base_sh_runs: runs[way][0].base_sh_runs,
                    amis: runs[way][0].amis,
                }
            })
            .collect(),
    };
    publish(args, &results, "spark-on-base", &render_spark_on_base(&results))
}

fn run_local_provisioned(sh: &Shell, dir: &Path, spark_on_base: bool) -> Result<LayerRun> {
    let xtask = std::env::current_exe().context("find the xtask binary")?;
    let ami_list = dir.join("ami-list");
    let layered = if spark_on_base { &["--spark-on-base"][..] } else { &[] };
    let clock = Instant::now();
    // The seed's Amazon Linux cannot be provisioned locally: the Spark 3.5
    // line on Debian 12, x86_64, three regions (2 builds, 6 AMIs) stands in.
    let output = cmd!(
        sh,
        "{xtask} build-amis --local --preset spark-3.5 --arch x86_64 --ami-list {ami_list} --json {layered...}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    let wall = clock.elapsed().as_secs_f64();
    fs::write(dir.join("stderr.txt"), &output.stderr)?;
    if !output.status.success() {
        bail!("build-amis --local failed; see {}", dir.join("stderr.txt").display());
    }
    let report = build_amis_report(&output.stdout)?;
    let mut base_sh_runs = 0;
    for build in &report.builds {
        let log = project::root().join(&build.log);
        let text = fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
        base_sh_runs += usize::from(text.contains("spark-packer: base: done"));
    }
    Ok(LayerRun {
        wall,
        instance_seconds: report.builds.iter().map(|b| b.seconds).sum(),
        base_sh_runs,
        amis: amis_made(&report),
    })
}

fn build_amis_report(stdout: &[u8]) -> Result<Report> {
    run_report::parse(&String::from_utf8_lossy(stdout)).context("parse build-amis --json")
}

fn amis_made(report: &Report) -> usize {
    report.builds.iter().map(|b| b.amis.len()).sum()
}

/// The --spark-on-base section of BENCHMARKS.md.
pub fn render_spark_on_base(results: &Results<LayerWay>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Spark on base, provisioned locally\n");
    let _ = writeln!(
        out,
        "The spark-3.5 preset on x86_64 (Debian 12, base + Spark 3.5.3, 3 regions: 2 builds, 6 AMIs; \
         the seed's Amazon Linux cannot be provisioned locally) provisioned over SSH on the local instance \
         (`build-amis --local`: the real scripts, the smoke test's Spark job), two ways each round, \
         in a rotating order. \"Build time, summed\" adds up the builds' wall times. It is not what EC2 \
         would bill: here the builds share 2 cores, so each one's time stretches with the others running; \
         on EC2 each build has an instance of its own.\n"
    );
    let _ = writeln!(out, "Reproduce: `{}` (as root)", results.command);
    let _ = writeln!(out, "Machine: {}\n", results.machine);
    let _ = writeln!(
        out,
        "| way | median wall (s) | median wall ratio | median build time, summed (s) | its median ratio \
         | base.sh runs | AMIs | every round: wall / summed (s) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for way in &results.ways {
        let rounds: Vec<String> =
            way.seconds.iter().zip(&way.instance_seconds).map(|(w, i)| format!("{w:.1} / {i:.1}")).collect();
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2}x | {:.1} | {:.2}x | {} | {} | {} |",
            way.way,
            way.median_seconds,
            way.median_ratio,
            way.median_instance_seconds,
            way.median_instance_ratio,
            way.base_sh_runs,
            way.amis,
            rounds.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nRatios are to `from-stock`, paired within each round. `from-stock` runs both builds at once; \
         `spark-on-base` runs the base build, then the Spark build on its AMI, which skips base.sh. \
         Here the builds share the machine's cores, so builds at once stretch each other's times; on EC2 \
         each build has an instance of its own, and the saving is rather the time base.sh takes, once per \
         Spark build."
    );
    out
}

/// Replaces the section `id` of BENCHMARKS.md (between its marker comments)
/// with `body`, or appends it; the other sections stay as they are.
fn write_section(id: &str, body: &str) -> Result<()> {
    let path = project::root().join("BENCHMARKS.md");
    let doc = fs::read_to_string(&path).unwrap_or_default();
    fs::write(&path, with_section(&doc, id, body)).with_context(|| format!("write {}", path.display()))?;
    eprintln!("wrote the {id} section of {}", path.display());
    Ok(())
}

pub fn with_section(doc: &str, id: &str, body: &str) -> String {
    let (start, end) = (format!("<!-- bench: {id} -->\n"), format!("<!-- end bench: {id} -->\n"));
    let section = format!("{start}{body}{end}");
    match (doc.find(&start), doc.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &doc[..a], &doc[b + end.len()..]),
        _ if doc.trim().is_empty() => format!("# Benchmarks\n\n{section}"),
        _ => format!("{}\n\n{section}", doc.trim_end()),
    }
}

fn run_build_amis(sh: &Shell, endpoint: &str, dir: &Path, strategy: &str) -> Result<usize> {
    let xtask = std::env::current_exe().context("find the xtask binary")?;
    let ami_list = dir.join("ami-list");
    let output = cmd!(
        sh,
        "{xtask} build-amis --no-provision --preset seed-2014 --strategy {strategy} --endpoint {endpoint} --ami-list {ami_list} --json"
    )
    .quiet()
    .ignore_status()
    .output()?;
    fs::write(dir.join("stderr.txt"), &output.stderr)?;
    if !output.status.success() {
        bail!("build-amis --strategy {strategy} failed; see {}", dir.join("stderr.txt").display());
    }
    Ok(amis_made(&build_amis_report(&output.stdout)?))
}

fn run_single_packer(sh: &Shell, endpoint: &str, dir: &Path, round: usize) -> Result<usize> {
    let template = project::root().join("bench/seed-2014-single.pkr.hcl");
    let run_id = format!("{}-{round}", std::process::id());
    let output = cmd!(
        sh,
        "packer build -machine-readable -color=false -var endpoint_ec2={endpoint} -var run_id={run_id} {template}"
    )
    .env(packer::PANICWRAP_COOKIE.0, packer::PANICWRAP_COOKIE.1)
    .quiet()
    .ignore_status()
    .output()?;
    let log = dir.join("packer.log");
    fs::write(&log, &output.stdout)?;
    if !output.status.success() {
        bail!("packer build of {} failed; see {}", template.display(), log.display());
    }
    Ok(packer::artifacts(&String::from_utf8_lossy(&output.stdout)).len())
}

fn run_bash_loop(sh: &Shell, endpoint: &str, dir: &Path, builds: &[Build], round: usize) -> Result<usize> {
    // AMI names must be unique, so the run id differs per round.
    let stamp = RunStamp {
        run_id: format!("bench-{}-{round}", std::process::id()),
        git_commit: "bench".to_string(),
        created_at: project::rfc3339(project::now_secs()),
    };
    let var_files: Vec<PathBuf> = builds
        .iter()
        .map(|b| {
            let vars = TemplateVars {
                endpoint_ec2: endpoint.to_string(),
                skip_aws_validation: true,
                ..TemplateVars::for_build(b, &stamp)
            };
            vars.write(dir)
        })
        .collect::<Result<_>>()?;
    let script = project::root().join("bench/packer-loop.sh");
    let template = project::root().join("packer/spark-ami.pkr.hcl");
    let args = &var_files;
    let output = cmd!(sh, "{script} {template} {args...}")
        .env(packer::PANICWRAP_COOKIE.0, packer::PANICWRAP_COOKIE.1)
        .quiet()
        .ignore_status()
        .output()?;
    if !output.status.success() {
        bail!(
            "bench/packer-loop.sh failed ({}); see the logs in {}",
            String::from_utf8_lossy(&output.stderr).trim(),
            dir.display()
        );
    }
    let mut made = 0;
    for var_file in &var_files {
        let log = var_file.with_extension("").with_extension("log");
        made += packer::artifacts(&fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?).len();
    }
    Ok(made)
}

/// Every instance the emulator ever launched in these regions; moto keeps
/// terminated ones listed.
fn count_launches(sh: &Shell, aws: &crate::aws::Aws, regions: &[String]) -> Result<usize> {
    let mut total = 0;
    for region in regions {
        total += aws.instance_states(sh, region)?.values().sum::<usize>();
    }
    Ok(total)
}

fn machine(sh: &Shell) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = cmd!(sh, "uname -sr").quiet().read().unwrap_or_default();
    let packer = cmd!(sh, "packer version").quiet().read().unwrap_or_default();
    let moto = fs::read_to_string(local::requirements())
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("moto"))
        .map_or("moto".to_string(), |l| l.trim_end_matches('\\').trim().to_string());
    format!("{cores} cores, {kernel}, {}, {moto}", packer.lines().next().unwrap_or("packer"))
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// BENCHMARKS.md: the figures, and how to get them again.
pub fn render(results: &Results<WayResult>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## API-only: build-amis against one packer build\n");
    let _ = writeln!(
        out,
        "The seed-2014 matrix (32 AMIs: base + Spark x HVM + PV x 8 regions), API-only \
         (`communicator = \"none\"`), against one local moto server. Every round runs each \
         way once, in a rotating order; ratios are taken within a round, then the median.\n"
    );
    let _ = writeln!(out, "Reproduce: `{}`", results.command);
    let _ = writeln!(out, "Machine: {}\n", results.machine);
    let _ =
        writeln!(out, "| way | median wall (s) | median ratio to single-packer | launches | AMIs | every round (s) |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
    for way in &results.ways {
        let rounds: Vec<String> = way.seconds.iter().map(|s| format!("{s:.2}")).collect();
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2}x | {} | {} | {} |",
            way.way,
            way.median_seconds,
            way.median_ratio_to_single,
            way.launches,
            way.amis,
            rounds.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nThe ways: `build-amis-copy` and `build-amis-native` run `cargo xtask build-amis \
         --no-provision --preset seed-2014 --endpoint ...` with each strategy; `build-amis-rerun` runs the copy strategy again on a tree built just \
         before, untimed, whose builds are all current (no launch, no Packer: the cost of a \
         scheduled run in which nothing changed; its 10 read-only DescribeImages calls, 2 source \
         filters and one lookup of the recorded IDs in each of the 8 regions, go through curl, \
         since the keys are in the environment); `single-packer` \
         is one `packer build` of bench/seed-2014-single.pkr.hcl (the seed's 4 builders with \
         ami_regions); `bash-loop` is bench/packer-loop.sh (4 `packer build`s of \
         packer/spark-ami.pkr.hcl with & and wait).\n\nLike for like: every way runs Packer 1.6.6 \
         with `PACKER_WRAP_COOKIE` set, so Packer starts once instead of re-executing itself \
         under its panic wrapper (build-amis always sets it; the baselines get it too), with \
         `-machine-readable -color=false`, `CHECKPOINT_DISABLE=1`, the same dummy credentials \
         and the same emulator, reset before each way (moto's `/moto-api/reset`, then one \
         DescribeImages per region to warm its backends), so that no way meets the images \
         of the ways before it. What differs is only the way: one process per build (build-amis, \
         bash-loop) or one for all (single-packer), build-amis's own tags, records and report, \
         and the strategy (native launches in all 8 regions)."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_and_the_others_kept() {
        let doc = with_section("", "api-only", "A1\n");
        assert_eq!(doc, "# Benchmarks\n\n<!-- bench: api-only -->\nA1\n<!-- end bench: api-only -->\n");
        let doc = with_section(&doc, "spark-on-base", "L1\n");
        let doc = with_section(&doc, "api-only", "A2\n");
        assert_eq!(
            doc,
            "# Benchmarks\n\n<!-- bench: api-only -->\nA2\n<!-- end bench: api-only -->\n\n\
             <!-- bench: spark-on-base -->\nL1\n<!-- end bench: spark-on-base -->\n"
        );
    }

    #[test]
    fn each_round_starts_one_way_later() {
        let order: Vec<(usize, &str)> = rotation(3, &["a", "b"]).collect();
        assert_eq!(order, [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
