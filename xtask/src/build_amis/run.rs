//! Running the builds: one Packer process per build on a rayon pool, in two
//! phases with --spark-on-base, transient failures retried, and each
//! successful build's AMIs recorded in ami-list. Workers never print: they
//! send events to the one printer.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::Instant,
};

use anyhow::{Context, Result};
use rayon::prelude::*;
use xshell::Shell;

use super::{
    base::{self, BaseAmi},
    inputs::{Inputs, RunInputs},
    survey::{Currency, Survey},
};
use crate::{
    ami_list::{self, Cell},
    interrupt,
    matrix::Build,
    packer,
    progress::{Event, Printer, Stoppable, Style},
    project::display,
    run_report::{self, BuildResult, Status},
    site::Site,
    template::{self, RunStamp, TemplateVars},
};

/// What every build of one run shares.
pub(super) struct RunContext<'a> {
    pub stamp: RunStamp,
    pub site: &'a Site,
    pub survey: &'a Survey,
    pub texts: &'a InputTexts,
    /// The report as it goes: each result written as it comes in.
    pub journal: &'a crate::journal::Journal,
    /// Build even what is current.
    pub force: bool,
    pub log_dir: PathBuf,
    pub ami_list: PathBuf,
    pub retries: u32,
    pub jobs: u16,
    pub spark_on_base: bool,
    pub verbose: bool,
    /// --json: the report goes to stdout, progress stays a line log.
    pub json: bool,
}

/// The template and the scripts, read once per run for the input hashes.
pub(super) struct InputTexts {
    pub template: String,
    pub scripts: BTreeMap<String, String>,
}

impl InputTexts {
    pub fn read() -> Result<InputTexts> {
        let template_file = template::template_file();
        let template =
            fs::read_to_string(&template_file).with_context(|| format!("read {}", template_file.display()))?;
        let dir = crate::project::root().join("scripts");
        let mut scripts = BTreeMap::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sh") {
                let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
                scripts.insert(path.file_name().unwrap_or_default().to_string_lossy().into_owned(), text);
            }
        }
        Ok(InputTexts { template, scripts })
    }
}

/// Where one build starts, and what it keeps for the builds that follow.
struct LaunchFrom {
    /// --spark-on-base: the base AMI this Spark build launches from.
    base: Option<BaseAmi>,
    /// A local base build of a --spark-on-base run keeps its instance's disk
    /// here, for the local instances of the Spark builds on its AMI.
    keep_disk: Option<PathBuf>,
}

/// Runs every build and returns their results in plan order (base first
/// with --spark-on-base).
pub(super) fn run_all(sh: &Shell, run: &RunContext, builds: &[Build]) -> Result<Vec<BuildResult>> {
    let names: Vec<String> = builds.iter().map(|b| b.name.clone()).collect();
    let mut style = Style { jobs: usize::from(run.jobs), ..Style::for_terminal(run.json, run.verbose) };
    // Only the live view shows an estimate: a line log need not read old reports.
    if style.live {
        style.expected = run_report::earlier_seconds(&names, run.site.provision);
    }
    let printer = Printer::start(names, style);
    interrupt::install(printer.sender(), Stoppable::Builds)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(usize::from(run.jobs))
        .build()
        .context("start the build thread pool")?;
    let run_phase = |phase: &[&Build], launch_from: &(dyn Fn(&Shell, &Build) -> Result<LaunchFrom> + Sync)| {
        let worker_state = (sh.clone(), printer.sender());
        pool.install(|| {
            phase
                .par_iter()
                .map_with(worker_state, |(sh, events), build| {
                    // After Ctrl-C, run_build reports the build as not started; look nothing up.
                    let from = if interrupt::interrupted() {
                        Err(anyhow::anyhow!("interrupted"))
                    } else {
                        launch_from(sh, build)
                    };
                    let result = run_build(sh, run, build, from, events);
                    run.journal.record(&result);
                    result
                })
                .collect::<Vec<BuildResult>>()
        })
    };
    // With --spark-on-base the base builds go first, keeping their local
    // disks; the Spark builds then start from the base AMIs.
    let (first, second): (Vec<&Build>, Vec<&Build>) =
        builds.iter().partition(|b| !run.spark_on_base || b.image.spark.is_none());
    let mut results = run_phase(&first, &|_, build| {
        let keep_disk = run.site.base_disk(&build.name).filter(|_| build.image.spark.is_none());
        Ok(LaunchFrom { base: None, keep_disk })
    });
    if !second.is_empty() {
        let built: Vec<(&Build, &BuildResult)> = first.iter().copied().zip(&results).collect();
        let on_base = run_phase(&second, &|sh, build| {
            let base = base::resolve(sh, run.site, &run.ami_list, build, &built)?;
            Ok(LaunchFrom { base: Some(base), keep_disk: None })
        });
        results.extend(on_base);
    }
    printer.finish();
    Ok(results)
}

fn run_build(
    sh: &Shell,
    run: &RunContext,
    build: &Build,
    from: Result<LaunchFrom>,
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
        inputs: None,
        why_built: Vec::new(),
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
    let from = match from {
        Ok(from) => from,
        Err(e) => {
            let error = format!("{e:#}");
            result.status = Status::Failed;
            result.error = Some(error.clone());
            send(Event::Failed { build: build.name.clone(), error, log: String::new() });
            return result;
        }
    };
    result.base_ami = from.base.as_ref().map(|b| b.id.clone());
    let known = RunInputs {
        template: &run.texts.template,
        scripts: &run.texts.scripts,
        provision: run.site.provision,
        smoke_test: run.site.smoke_test,
    };
    let inputs = Inputs::of(build, &known, run.survey.source(build), result.base_ami.as_deref());
    if without_packer(sh, run, build, &inputs, &mut result) {
        result.seconds = clock.elapsed().as_secs_f64();
        send(match result.status {
            Status::Current => Event::Skipped { build: build.name.clone(), why: "current".to_string() },
            _ => finished(&result),
        });
        return result;
    }
    send(Event::Started {
        build: build.name.clone(),
        detail: match build.copy_regions.len() {
            0 => format!("in {}", build.region),
            n => format!("in {}, copying to {n} regions", build.region),
        },
    });
    let outcome = build_with_retries(sh, run, build, (&from, &inputs), &mut result, &send);
    settle(run, build, outcome, &mut result);
    result.seconds = clock.elapsed().as_secs_f64();
    send(finished(&result));
    result
}

/// Records the build's input hash. True when Packer need not run: every AMI
/// is current (skipped), or current in some regions and copied to the rest.
fn without_packer(sh: &Shell, run: &RunContext, build: &Build, inputs: &Inputs, result: &mut BuildResult) -> bool {
    result.inputs = Some(inputs.hash());
    if run.force {
        result.why_built = vec!["--force".to_string()];
        return false;
    }
    match run.survey.currency(build, &run.ami_list, inputs) {
        Currency::Current(amis) => {
            result.status = Status::Current;
            result.amis = amis;
        }
        Currency::Partial { current, missing, reasons } => {
            result.why_built = reasons;
            match copy_to(sh, run, build, &current, &missing) {
                Ok((amis, recorded)) => {
                    (result.status, result.amis, result.recorded) = (Status::Ok, amis, recorded);
                }
                Err(e) => (result.status, result.error) = (Status::Failed, Some(format!("{e:#}"))),
            }
        }
        Currency::Stale(reasons) => {
            result.why_built = reasons;
            return false;
        }
    }
    true
}

/// Copies a current AMI of `build` to the regions it is missing from, with
/// its tags, and records the copies. Returns every region's AMI and the
/// files written.
fn copy_to(
    sh: &Shell,
    run: &RunContext,
    build: &Build,
    current: &BTreeMap<String, String>,
    missing: &[String],
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let (from_region, from_id) =
        current.get_key_value(&build.region).or_else(|| current.iter().next()).context("no current AMI")?;
    let image = run.survey.image(from_region, from_id).context("the current AMI was not listed")?;
    let tags = image.tags();
    let mut amis = current.clone();
    let mut cells = Vec::new();
    for region in missing {
        let id = run
            .site
            .aws()
            .copy_image(sh, (region, from_region), from_id, &image.name, &tags)
            .with_context(|| format!("copy {from_id} from {from_region} to {region}"))?;
        cells.push((Cell { image: build.image.name.clone(), region: region.clone(), slot: build.slot() }, id.clone()));
        amis.insert(region.clone(), id);
    }
    let recorded = ami_list::write_all(&run.ami_list, &cells)?;
    Ok((amis, recorded))
}

/// The printer's event for a build that ran.
fn finished(result: &BuildResult) -> Event {
    let build = result.name.clone();
    match (&result.status, &result.error) {
        (Status::Ok | Status::Current, _) => {
            Event::Finished { build, detail: format!("{} AMIs in {:.1}s", result.amis.len(), result.seconds) }
        }
        (Status::Interrupted, _) => Event::Skipped { build, why: "STOPPED".to_string() },
        (_, error) => Event::Failed { build, error: error.clone().unwrap_or_default(), log: result.log.clone() },
    }
}

/// Packer, run again after a transient failure, up to `run.retries` times.
fn build_with_retries(
    sh: &Shell,
    run: &RunContext,
    build: &Build,
    (from, inputs): (&LaunchFrom, &Inputs),
    result: &mut BuildResult,
    send: &dyn Fn(Event),
) -> Result<BTreeMap<String, String>, Failure> {
    loop {
        result.attempts += 1;
        let log = match result.attempts {
            1 => run.log_dir.join(format!("{}.log", build.name)),
            n => run.log_dir.join(format!("{}.attempt-{n}.log", build.name)),
        };
        result.log = display(&log);
        let outcome = packer_build(sh, run, build, (from, inputs), &log, |step| {
            send(Event::Step { build: build.name.clone(), step })
        });
        result.notes = fs::read_to_string(&log).map(|text| provisioner_says(&text, "NOTE")).unwrap_or_default();
        match outcome {
            Err(failure) if failure.transient && result.attempts <= run.retries && !interrupt::interrupted() => {
                let delay_secs = retry_delay_secs(result.attempts);
                send(Event::Retrying {
                    build: build.name.clone(),
                    attempt: result.attempts + 1,
                    delay_secs,
                    error: failure.message,
                });
                std::thread::sleep(std::time::Duration::from_secs(delay_secs));
            }
            outcome => return outcome,
        }
    }
}

/// Records a successful build's AMIs; says why a build did not succeed.
fn settle(
    run: &RunContext,
    build: &Build,
    outcome: Result<BTreeMap<String, String>, Failure>,
    result: &mut BuildResult,
) {
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
}

/// 5 s, then 10 s, 20 s, ... capped at a minute: AWS throttling eases in seconds.
pub(super) fn retry_delay_secs(attempt: u32) -> u64 {
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
    run: &RunContext,
    build: &Build,
    (from, inputs): (&LaunchFrom, &Inputs),
    log: &Path,
    mut on_step: impl FnMut(String),
) -> Result<BTreeMap<String, String>, Failure> {
    let mut vars = TemplateVars::for_build(build, &run.stamp);
    vars.input_hash = inputs.hash();
    vars.input_digests = inputs.digests();
    if let Some(name) = run.survey.source_name(build) {
        vars.source_ami_name = name.to_string();
    }
    if let Some(base) = &from.base {
        vars.source_ami_name = base.name.clone();
        vars.source_ami_owners = vec!["self".to_string()];
        vars.base_ami = base.id.clone();
    }
    // Held until Packer is done; dropping it tears a local instance down.
    let base_disk = from.base.as_ref().and_then(|b| b.disk.as_deref());
    let mut reach = run.site.reach(sh, build, &mut vars, base_disk)?;
    let var_file = vars.write(&run.log_dir)?;
    let only = if run.site.provision { "amazon-ebs.provisioned" } else { "amazon-ebs.api_only" };
    let packer_run = packer::build(sh, &template::template_file(), &var_file, Some(only), log, |line| {
        if let Some(step) = packer::step(line) {
            on_step(step);
        }
    })
    .with_context(|| format!("packer build {}", build.name))?;

    let amis: BTreeMap<String, String> =
        packer::artifacts(&packer_run.output).into_iter().map(|a| (a.region, a.ami_id)).collect();
    if !packer_run.success {
        let message = failure_message(&packer_run);
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
    if let Some(dest) = &from.keep_disk {
        reach.keep_disk_as(dest.clone());
    }
    Ok(amis)
}

/// Why a failed Packer run failed: the provisioner's own ERROR line when
/// there is one (Packer only says that the script exited non-zero), with
/// Packer's first error.
pub(super) fn failure_message(packer_run: &packer::Run) -> String {
    let packer_message = packer::errors(&packer_run.output)
        .first()
        .cloned()
        .or_else(|| packer_run.stderr.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
        .unwrap_or_else(|| "packer build failed without a message".to_string());
    match provisioner_says(&packer_run.output, "ERROR").last() {
        Some(error) => format!("{error} (packer: {packer_message})"),
        None => packer_message,
    }
}

/// What the provisioners said with `spark-packer: <LEVEL>: ...`, in order.
pub(super) fn provisioner_says(output: &str, level: &str) -> Vec<String> {
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

/// Writes one ami-list file per region of a successful build, all or none.
fn record(root: &Path, build: &Build, amis: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let cell = |region: &str| Cell { image: build.image.name.clone(), region: region.to_string(), slot: build.slot() };
    let cells: Vec<(Cell, String)> = build.regions().map(|region| (cell(region), amis[region].clone())).collect();
    ami_list::write_all(root, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn retries_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=6).map(retry_delay_secs).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
    }
}
