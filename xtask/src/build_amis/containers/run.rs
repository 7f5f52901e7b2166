//! One Packer docker build per container image on a rayon pool: provision,
//! commit, push, read the digest, prove a Spark image as a two-container
//! cluster from that digest, and only then record it. Workers never print.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::Instant,
};

use anyhow::{Context as _, Result};
use rayon::prelude::*;
use serde::Serialize;
use xshell::Shell;

use super::cluster;
use crate::{
    build_amis::{
        inputs::{Inputs, RunInputs},
        run::{failure_message, provisioner_says, InputTexts},
    },
    images_list, interrupt,
    matrix::ContainerBuild,
    packer,
    progress::{Event, Printer, Stoppable, Style},
    project::display,
    site::containers::ContainerSite,
    template::{self, RunStamp, TemplateVars},
};

/// What every container build of one run shares.
pub(in crate::build_amis) struct Context<'a> {
    pub stamp: RunStamp,
    pub site: &'a ContainerSite,
    /// The template and scripts, for the images' input hashes.
    pub texts: &'a InputTexts,
    pub log_dir: PathBuf,
    pub images_list: PathBuf,
    pub jobs: u16,
    pub json: bool,
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(in crate::build_amis) enum ContainerStatus {
    Ok,
    Failed,
    Interrupted,
}

#[derive(Debug, Serialize)]
pub(in crate::build_amis) struct ContainerResult {
    pub name: String,
    pub image: String,
    pub os: String,
    pub arch: String,
    pub status: ContainerStatus,
    /// The pushed tag, `REPOSITORY:<run-id>-<os>-<arch>`.
    pub tag: String,
    /// `REPOSITORY@sha256:…`, once pushed.
    pub reference: Option<String>,
    /// The images-list file written, once recorded.
    pub recorded: Option<String>,
    /// The hash of its inputs (template, scripts, cell, source image), as
    /// the AMIs carry it; labelled `spark-packer:inputs`.
    pub inputs: Option<String>,
    /// What the two-container Spark cluster printed (Spark images).
    pub cluster_check: Option<String>,
    pub seconds: f64,
    pub log: String,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

pub(in crate::build_amis) fn run_all(
    sh: &Shell,
    run: &Context,
    builds: &[ContainerBuild],
) -> Result<Vec<ContainerResult>> {
    let names: Vec<String> = builds.iter().map(|b| b.name.clone()).collect();
    let style = Style { jobs: usize::from(run.jobs), ..Style::for_terminal(run.json, run.verbose) };
    let printer = Printer::start(names, style);
    interrupt::install(printer.sender(), Stoppable::Builds)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(usize::from(run.jobs))
        .build()
        .context("start the build thread pool")?;
    let worker_state = (sh.clone(), printer.sender());
    let results = pool.install(|| {
        builds.par_iter().map_with(worker_state, |(sh, events), build| run_one(sh, run, build, events)).collect()
    });
    printer.finish();
    Ok(results)
}

fn run_one(sh: &Shell, run: &Context, build: &ContainerBuild, events: &Sender<Event>) -> ContainerResult {
    let clock = Instant::now();
    let send = |event| {
        let _ = events.send(event);
    };
    let repository = build.repository(&run.site.registry);
    let tag = build.tag(&run.stamp.run_id);
    let log = run.log_dir.join(format!("{}.log", build.name));
    let mut result = ContainerResult {
        name: build.name.clone(),
        image: build.cell.image.name.clone(),
        os: build.cell.os.name.clone(),
        arch: build.cell.arch.clone(),
        status: ContainerStatus::Interrupted,
        tag: format!("{repository}:{tag}"),
        reference: None,
        recorded: None,
        inputs: None,
        cluster_check: None,
        seconds: 0.0,
        log: display(&log),
        error: None,
        notes: Vec::new(),
    };
    if interrupt::interrupted() {
        result.error = Some("not started: the run was interrupted".to_string());
        send(Event::Skipped { build: build.name.clone(), why: "skip  ".to_string() });
        return result;
    }
    send(Event::Started { build: build.name.clone(), detail: format!("as {}", result.tag) });
    let step = |step: String| send(Event::Step { build: build.name.clone(), step });
    let outcome = build_push_and_prove(sh, run, build, (&repository, &tag), &log, &mut result, &step);
    result.seconds = clock.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            result.status = ContainerStatus::Ok;
            let detail = format!("{} in {:.1}s", result.reference.as_deref().unwrap_or("?"), result.seconds);
            send(Event::Finished { build: build.name.clone(), detail });
        }
        Err(e) if interrupt::interrupted() => {
            result.error = Some(format!("stopped by the interrupt: {e:#}"));
            send(Event::Skipped { build: build.name.clone(), why: "STOPPED".to_string() });
        }
        Err(e) => {
            result.status = ContainerStatus::Failed;
            result.error = Some(format!("{e:#}"));
            send(Event::Failed { build: build.name.clone(), error: format!("{e:#}"), log: result.log.clone() });
        }
    }
    result
}

/// Packer's docker build (provisioners, commit, tag, push), the pushed
/// digest, the cluster check for Spark images, then the record.
fn build_push_and_prove(
    sh: &Shell,
    run: &Context,
    build: &ContainerBuild,
    (repository, tag): (&str, &str),
    log: &Path,
    result: &mut ContainerResult,
    step: &dyn Fn(String),
) -> Result<()> {
    let mut vars = TemplateVars::for_build(&build.cell, &run.stamp);
    vars.build_name = build.name.clone();
    vars.docker_tag = tag.to_string();
    vars.source_url = source_url(sh);
    // Held until Packer is done: the build's own package cache.
    let cache = run.site.reach(build, &mut vars)?;
    let known = RunInputs {
        template: &run.texts.template,
        scripts: &run.texts.scripts,
        provision: true,
        smoke_test: run.site.smoke_test,
    };
    let inputs = Inputs::of(&build.cell, &known, &vars.docker_image, None);
    (vars.input_hash, vars.input_digests) = (inputs.hash(), inputs.digests());
    result.inputs = Some(vars.input_hash.clone());
    let var_file = vars.write(&run.log_dir)?;
    let packer_run = packer::build(sh, &template::template_file(), &var_file, Some("docker.container"), log, |line| {
        if let Some(s) = packer::step(line) {
            step(s);
        }
    })
    .with_context(|| format!("packer build {}", build.name))?;
    drop(cache);
    result.notes = provisioner_says(&packer_run.output, "NOTE");
    if !packer_run.success {
        anyhow::bail!("{}", failure_message(&packer_run));
    }
    let reference = run.site.engine.pushed_reference(sh, repository, tag)?;
    result.reference = Some(reference.clone());
    if build.cell.image.spark.is_some() && run.site.smoke_test {
        step("cluster check: pull by digest, master and worker in two containers".to_string());
        let emulated = !crate::local::instance::is_native_arch(&build.cell.arch);
        let said = cluster::check(sh, &run.site.engine, (&reference, &result.tag), (&build.name, emulated), log)?;
        result.cluster_check = Some(said);
    }
    let file = images_list::write(&run.images_list, &build.cell.image.name, &build.slot(), &reference)?;
    result.recorded = Some(display(&file));
    Ok(())
}

/// The factory's repository, for org.opencontainers.image.source: git's
/// `origin`, or empty when it has none.
fn source_url(sh: &Shell) -> String {
    let root = crate::project::root();
    xshell::cmd!(sh, "git -C {root} remote get-url origin").quiet().ignore_stderr().read().unwrap_or_default()
}

/// For each image and OS family built for every architecture it asked for,
/// a manifest list of them, pushed and recorded as `images-list/<image>/<os>`.
/// A failure here is a note: the per-architecture images are recorded.
pub(in crate::build_amis) fn manifest_lists(
    sh: &Shell,
    run: &Context,
    builds: &[ContainerBuild],
    results: &[ContainerResult],
) -> Vec<(String, String)> {
    let mut groups: BTreeMap<(String, String), Vec<(&ContainerBuild, &ContainerResult)>> = BTreeMap::new();
    for (build, result) in builds.iter().zip(results) {
        groups.entry((build.cell.image.name.clone(), build.cell.os.name.clone())).or_default().push((build, result));
    }
    let mut lists = Vec::new();
    for ((image, os), members) in groups {
        let references: Vec<String> = members.iter().filter_map(|(_, r)| r.reference.clone()).collect();
        let all_ok = members.iter().all(|(_, r)| r.status == ContainerStatus::Ok);
        if members.len() < 2 || !all_ok {
            continue;
        }
        let repository = members[0].0.repository(&run.site.registry);
        let tag = format!("{}-{os}", run.stamp.run_id);
        let pushed = run
            .site
            .engine
            .push_manifest_list(sh, &repository, &tag, &references)
            .and_then(|reference| images_list::write(&run.images_list, &image, &os, &reference).map(|_| reference));
        match pushed {
            Ok(reference) => lists.push((format!("{image}/{os}"), reference)),
            Err(e) => eprintln!("warning: no multi-architecture manifest list for {image} on {os}: {e:#}"),
        }
    }
    lists
}
