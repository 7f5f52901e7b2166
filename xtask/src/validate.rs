//! `cargo xtask validate`: the factory checked in seconds (templates,
//! provisioners, matrix, ami-list), and with `--online` ami-list checked
//! against EC2. Every problem is printed as `path:line: message`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::{
    ami_list::{self, Found},
    aws::{Aws, Image},
    checks::{self, Entry, ExpectedCells, Problem, Recorded},
    endpoint::EndpointArgs,
    factory::{self, IMAGE_TAG},
    images_list,
    matrix::{Build, Filters, Matrix, Strategy},
    packer,
    project::{self, display},
    template::{self, RunStamp, TemplateVars},
};

/// Check templates, provisioners, matrix and ami-list; --online checks EC2 too
///
/// Offline (the default, a few seconds, no AWS calls):
///   - `packer validate` of packer/spark-ami.pkr.hcl for every build of the
///     preset, AMI and container (--platform docker) alike
///   - shellcheck on every provisioner in scripts/
///   - packer/matrix.json against its rules (regions, checksums, PV is x86_64 only, ...)
///   - the ami-list tree: <image>/<region>/<virt> files, each one AMI ID and a
///     newline, no strays, no ID twice; cells not built yet are listed
///   - the images-list tree (--platform docker): <image>/<os>[-<arch>] files,
///     each one REPOSITORY@sha256:… and a newline
///
/// --online also asks EC2 (through the aws CLI, one call per region, in
/// parallel) whether each recorded AMI exists there, is available, has the
/// virtualization and architecture its file says and the factory's tags, and
/// is public where the preset says so.
///
/// Every problem is printed as `path:line: message`; the exit status is
/// non-zero if there is any.
///
/// Example: `cargo xtask validate`, then after a real build
/// `cargo xtask validate --online --complete`.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Also check every recorded AMI in EC2 (or the emulator named below).
    #[arg(long)]
    pub online: bool,

    /// With --online: check the SSM parameters `publish --ssm PREFIX` wrote
    /// against ami-list, and report any drift (changed by hand, missing, stray).
    #[arg(long, value_name = "PREFIX", requires = "online")]
    pub ssm: Option<String>,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// The ami-list tree to check. Default: the checked-in ami-list/ (with
    /// --local: target/local/ami-list).
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// The preset whose cells should be built, for "not built yet" and the
    /// public check.
    #[arg(long, default_value = "default")]
    pub preset: String,

    /// Fail if a cell of the preset has no ami-list file yet.
    #[arg(long)]
    pub complete: bool,

    /// Check this matrix file instead of packer/matrix.json.
    #[arg(long, value_name = "FILE")]
    pub matrix: Option<PathBuf>,

    /// Print the findings as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Cells of the preset with no ami-list file ("not built yet").
    pub not_built: Vec<String>,
    /// --online: recorded images built from a source that is no longer the newest.
    pub stale: Vec<String>,
    /// Spark pins add-spark never checked against Apache's signature: real
    /// builds refuse them. Errors with --online against real AWS.
    pub unverified: Vec<String>,
    /// OS families of the preset the provisioners refuse (scripts/lib.sh's
    /// detect_os): build-amis refuses their provisioned builds before launch.
    pub api_only: Vec<String>,
    pub checked: BTreeMap<&'static str, usize>,
    pub seconds: f64,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let clock = Instant::now();
    let mut report = Report::default();

    let matrix_file = args.matrix.clone().unwrap_or_else(project::matrix_file);
    let matrix_text = fs::read_to_string(&matrix_file).with_context(|| format!("read {}", matrix_file.display()))?;
    let (problems, matrix) = checks::check_matrix(&display(&matrix_file), &matrix_text);
    report.problems.extend(problems);
    report.checked.insert("matrix files", 1);

    let builds = match &matrix {
        Some(matrix) => match matrix.expand(&args.preset, &Filters::default(), Strategy::Copy, false) {
            Ok(builds) => builds,
            Err(e) => {
                report.problems.push(Problem { path: display(&matrix_file), line: 1, message: format!("{e:#}") });
                Vec::new()
            }
        },
        None => Vec::new(),
    };

    packer::check_installed_cached(sh)?;
    let scripts = provisioners()?;
    // Both are a few external processes each: run them all at once.
    let (sh_templates, sh_scripts) = (sh.clone(), sh.clone());
    let (builds_ref, scripts_ref) = (&builds, &scripts);
    let (templates, shell) = rayon::join(
        move || validate_templates(&sh_templates, builds_ref),
        move || shellcheck(&sh_scripts, scripts_ref),
    );
    report.problems.extend(templates?);
    report.checked.insert("packer builds", builds.len());
    report.checked.insert("container builds", crate::matrix::container_builds(&builds).len());
    report.problems.extend(shell?);
    report.checked.insert("provisioners", scripts.len());
    check_platforms(sh, args, matrix.as_ref(), &builds, &matrix_file, &mut report)?;

    let recorded = match &matrix {
        Some(matrix) => check_ami_list(args, matrix, &builds, &mut report)?,
        None => Vec::new(),
    };
    report.checked.insert("ami-list files", recorded.len());
    let images_list_root = if args.endpoint.local { images_list::local() } else { images_list::checked_in() };
    let images = images_list::check_tree(&images_list_root)?;
    report.problems.extend(images.problems.into_iter().map(|(path, message)| Problem { path, line: 1, message }));
    report.checked.insert("images-list files", images.files);

    if args.online {
        let connection = args.endpoint.connect(sh)?;
        let public = matrix.as_ref().and_then(|m| m.preset(&args.preset).ok()).is_some_and(|p| p.public);
        report.problems.extend(check_online(sh, &connection.aws, &recorded, public));
        report.checked.insert("AMIs in EC2", recorded.len());
        report.stale = crate::stale::stale_sources(sh, &connection.aws, &builds, &recorded);
        if let Some(prefix) = &args.ssm {
            report.problems.extend(crate::publishing::validate_ssm(sh, &connection.aws, prefix, &recorded));
            report.checked.insert("SSM parameters", recorded.len());
        }
    }

    report.problems.sort();
    for problem in &mut report.problems {
        (problem.path, problem.message) = (ami_list::printable(&problem.path), ami_list::printable(&problem.message));
    }
    report.seconds = clock.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &args.preset);
    }
    if !report.problems.is_empty() {
        bail!("{} problem{} found", report.problems.len(), if report.problems.len() == 1 { "" } else { "s" });
    }
    Ok(())
}

/// The OS families the provisioners refuse (API-only), and the Spark pins
/// never checked against Apache's signature (errors --online against AWS).
fn check_platforms(
    sh: &Shell,
    args: &Args,
    matrix: Option<&Matrix>,
    builds: &[Build],
    matrix_file: &Path,
    report: &mut Report,
) -> Result<()> {
    let families: BTreeMap<&str, &crate::matrix::OsFamily> =
        builds.iter().map(|b| (b.os.name.as_str(), &b.os)).collect();
    for (name, os) in &families {
        if let Err(why) = crate::os_support::provisioners_support(sh, os)? {
            report.api_only.push(format!("{name} ({why})"));
        }
    }
    report.checked.insert("OS families", families.len());
    if let Some(matrix) = matrix {
        for spark in matrix.images.iter().filter_map(|i| i.spark.as_ref()) {
            if let Some(why) = crate::site::downloads::Tarball::spark(spark).unverified {
                if args.online && !args.endpoint.is_emulator() {
                    report.problems.push(Problem { path: display(matrix_file), line: 1, message: why });
                } else {
                    report.unverified.push(why);
                }
            }
        }
    }
    Ok(())
}

/// The ami-list tree's rules, and with --complete the cells not built yet.
fn check_ami_list(args: &Args, matrix: &Matrix, builds: &[Build], report: &mut Report) -> Result<Vec<Recorded>> {
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    let may_be_missing = args.ami_list.is_none() && args.endpoint.is_emulator();
    let known = ExpectedCells::from_matrix(matrix);
    let (entries, refused) = scan_tree(&ami_list_root, may_be_missing, &known)?;
    report.problems.extend(refused);
    let (problems, recorded) = checks::check_tree(&display(&ami_list_root), &entries, &known);
    report.problems.extend(problems);
    report.not_built = checks::missing_cells(builds, &recorded);
    if args.complete {
        report.problems.extend(report.not_built.iter().map(|cell| Problem {
            path: format!("{}/{cell}", display(&ami_list_root)),
            line: 1,
            message: format!("not built yet (preset `{}`, --complete)", args.preset),
        }));
    }
    Ok(recorded)
}

fn print_report(report: &Report, preset: &str) {
    for problem in &report.problems {
        println!("{problem}");
    }
    if !report.not_built.is_empty() {
        println!(
            "note: {} cell{} of preset `{preset}` not built yet (an error only with --complete): {}",
            report.not_built.len(),
            if report.not_built.len() == 1 { "" } else { "s" },
            report.not_built.join(", ")
        );
    }
    for stale in &report.stale {
        println!("note: {stale}");
    }
    for why in &report.unverified {
        println!("note: {why} (real builds refuse it; an error with --online against AWS)");
    }
    for family in &report.api_only {
        println!(
            "note: preset `{preset}`: the provisioners do not support {family}; \
             build-amis builds it API-only (--no-provision) and refuses it provisioned"
        );
    }
    let checked: Vec<String> = report.checked.iter().map(|(what, n)| format!("{n} {what}")).collect();
    println!(
        "checked {} in {:.1}s: {}",
        checked.join(", "),
        report.seconds,
        if report.problems.is_empty() { "ok".to_string() } else { format!("{} problems", report.problems.len()) }
    );
}

/// `packer validate` of the template with each build's variables, in parallel.
fn validate_templates(sh: &Shell, builds: &[crate::matrix::Build]) -> Result<Vec<Problem>> {
    let dir = project::target_dir().join("validate");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let stamp = RunStamp {
        run_id: "validate".to_string(),
        git_commit: "validate".to_string(),
        created_at: "1970-01-01T00:00:00Z".to_string(),
    };
    let template = template::template_file();
    let template_name = display(&template);
    let jobs = validate_jobs(builds, &stamp);
    let results: Vec<Result<Vec<Problem>>> = jobs
        .par_iter()
        .map_with(sh.clone(), |sh, (vars, which)| {
            let build_name = &vars.build_name;
            let var_file = vars.write(&dir)?;
            let output = cmd!(sh, "packer validate -machine-readable {which} -var-file={var_file} {template}")
                .quiet()
                .ignore_status()
                .output()
                .context("run `packer validate`")?;
            if output.status.success() {
                return Ok(Vec::new());
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let mut problems: Vec<Problem> = parse_validate_errors(&text)
                .into_iter()
                .map(|(line, message)| Problem {
                    path: template_name.clone(),
                    line,
                    message: format!("{message} (build {build_name})"),
                })
                .collect();
            if problems.is_empty() {
                problems.push(Problem {
                    path: template_name.clone(),
                    line: 1,
                    message: format!(
                        "packer validate failed for build {build_name}: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                });
            }
            Ok(problems)
        })
        .collect();
    let mut problems = Vec::new();
    for result in results {
        problems.extend(result?);
    }
    // The same template error shows once per build; say it once.
    problems.sort();
    problems.dedup_by(|a, b| a.line == b.line && strip_build(&a.message) == strip_build(&b.message));
    Ok(problems)
}

/// Each AMI build's variables, validated with both amazon-ebs builds
/// (api_only and provisioned); and each container build's, validated with
/// the docker build alone.
fn validate_jobs(builds: &[crate::matrix::Build], stamp: &RunStamp) -> Vec<(TemplateVars, &'static str)> {
    let amis = builds.iter().map(|build| {
        let vars = TemplateVars { communicator: "ssh".to_string(), ..TemplateVars::for_build(build, stamp) };
        (vars, "-except=docker.container")
    });
    let containers = crate::matrix::container_builds(builds).into_iter().map(|container| {
        let mut vars = TemplateVars::for_build(&container.cell, stamp);
        vars.build_name = container.name.clone();
        vars.platform = "docker".to_string();
        vars.communicator = "docker".to_string();
        // What the family starts from for real use; the sandbox's import otherwise.
        vars.docker_image =
            container.cell.os.docker_image.clone().unwrap_or_else(|| "spark-packer-local/debian".into());
        vars.docker_repository = container.repository("registry.invalid/spark-packer");
        vars.docker_tag = container.tag("validate");
        (vars, "-only=docker.container")
    });
    amis.chain(containers).collect()
}

fn strip_build(message: &str) -> &str {
    message.rsplit_once(" (build ").map_or(message, |(m, _)| m)
}

/// The errors in `packer validate -machine-readable` output, with the
/// template line each names (1 when it names none).
pub fn parse_validate_errors(output: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for line in output.lines().filter_map(packer::parse_line) {
        if line.kind != "ui" || line.data.first().map(String::as_str) != Some("error") {
            continue;
        }
        let Some(text) = line.data.get(1) else { continue };
        for block in text.split("Error: ").filter(|b| !b.trim().is_empty()) {
            let paragraphs: Vec<&str> = block.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).collect();
            let summary = paragraphs.first().copied().unwrap_or("").trim().trim_end_matches(':');
            let line_number = paragraphs
                .iter()
                .find_map(|p| p.strip_prefix("on ").and_then(|rest| rest.split(" line ").nth(1)))
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let detail = paragraphs
                .iter()
                .skip(1)
                .rfind(|p| !p.starts_with("on "))
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "));
            let message = match detail {
                Some(detail) => format!("{summary}: {detail}"),
                None => summary.to_string(),
            };
            found.push((line_number, message));
        }
    }
    found
}

/// The provisioners: every `*.sh` under scripts/.
fn provisioners() -> Result<Vec<PathBuf>> {
    let dir = project::root().join("scripts");
    let mut scripts = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    scripts.sort();
    Ok(scripts)
}

/// shellcheck in gcc format, whose lines are already `path:line:col: level: message`.
fn shellcheck(sh: &Shell, scripts: &[PathBuf]) -> Result<Vec<Problem>> {
    if scripts.is_empty() {
        return Ok(Vec::new());
    }
    if cmd!(sh, "shellcheck --version").quiet().ignore_status().output().is_err() {
        bail!("`shellcheck` not found: install it with `apt-get install shellcheck` (or run dev/setup)");
    }
    // One process per script, in parallel. Not -x: following `source` made
    // shellcheck reparse lib.sh for every script (1.5 s against 0.5 s);
    // lib.sh is checked on its own, as dev/test does.
    let results: Vec<Result<Vec<Problem>>> = scripts
        .par_iter()
        .map_with(sh.clone(), |sh, script| {
            let _dir = sh.push_dir(project::root());
            let relative = script.strip_prefix(project::root()).unwrap_or(script);
            let output = cmd!(sh, "shellcheck -e SC1091 -f gcc {relative}").quiet().ignore_status().output()?;
            let mut problems = parse_shellcheck(&String::from_utf8_lossy(&output.stdout));
            if !output.status.success() && problems.is_empty() {
                problems.push(Problem {
                    path: display(script),
                    line: 1,
                    message: format!("shellcheck failed: {}", String::from_utf8_lossy(&output.stderr).trim()),
                });
            }
            Ok(problems)
        })
        .collect();
    let mut problems = Vec::new();
    for result in results {
        problems.extend(result?);
    }
    Ok(problems)
}

/// `scripts/base.sh:12:5: warning: ... [SC2086]` -> a problem.
pub fn parse_shellcheck(output: &str) -> Vec<Problem> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ':');
            let path = parts.next()?.to_string();
            let line_number = parts.next()?.parse().ok()?;
            let _column = parts.next()?;
            let message = parts.next()?.trim().to_string();
            Some(Problem { path, line: line_number, message: format!("shellcheck {message}") })
        })
        .collect()
}

/// The entries under `root` for the checks, sorted, and a problem for each
/// one the walker would not read (a symlink, FIFO, a file over 4 KiB, ...).
/// A missing or unreadable tree is an error, except an emulator's default
/// tree before anything was built there. Under an unknown image, the one
/// "unknown image" problem stands for everything in it.
fn scan_tree(root: &Path, may_be_missing: bool, known: &ExpectedCells) -> Result<(Vec<Entry>, Vec<Problem>)> {
    let (mut entries, mut problems) = (Vec::new(), Vec::new());
    if may_be_missing && fs::symlink_metadata(root).is_err() {
        return Ok((entries, problems));
    }
    for found in ami_list::walk(root)? {
        match found {
            Found::Dir(rel) => entries.push(Entry::Dir(rel)),
            Found::File(rel, content) => entries.push(Entry::File(rel, content.unwrap_or_default())),
            Found::Refused(rel, message) => match rel.split_once('/') {
                Some((image, _)) if !known.images.contains(image) => {}
                _ => problems.push(Problem { path: format!("{}/{rel}", display(root)), line: 1, message }),
            },
        }
    }
    Ok((entries, problems))
}

/// Asks each region once for the account's images, in parallel, and checks
/// every recorded ID against what its region holds.
fn check_online(sh: &Shell, aws: &Aws, recorded: &[Recorded], public: bool) -> Vec<Problem> {
    let mut regions: Vec<&str> = recorded.iter().map(|r| r.region.as_str()).collect();
    regions.sort();
    regions.dedup();
    let listed: Vec<(&str, Result<Vec<Image>>)> =
        regions.par_iter().map_with(sh.clone(), |sh, region| (*region, aws.own_images(sh, region))).collect();
    let mut problems = Vec::new();
    let mut images: BTreeMap<&str, BTreeMap<String, Image>> = BTreeMap::new();
    for (region, result) in listed {
        match result {
            Ok(list) => {
                images.insert(region, list.into_iter().map(|i| (i.image_id.clone(), i)).collect());
            }
            Err(e) => {
                for r in recorded.iter().filter(|r| r.region == region) {
                    problems.push(Problem {
                        path: r.path.clone(),
                        line: 1,
                        message: format!("could not check {} in {region}: {e:#}", r.id),
                    });
                }
            }
        }
    }
    for r in recorded {
        let Some(in_region) = images.get(r.region.as_str()) else { continue };
        let elsewhere: Vec<&str> =
            images.iter().filter(|(_, imgs)| imgs.contains_key(&r.id)).map(|(region, _)| *region).collect();
        for message in check_image(r, in_region.get(&r.id), &elsewhere, public) {
            problems.push(Problem { path: r.path.clone(), line: 1, message });
        }
    }
    problems
}

/// What is wrong with one recorded AMI, given what its region holds under
/// that ID and the other regions where the ID was seen.
pub fn check_image(recorded: &Recorded, found: Option<&Image>, elsewhere: &[&str], public: bool) -> Vec<String> {
    let id = &recorded.id;
    let Some(image) = found else {
        if elsewhere.is_empty() {
            return vec![format!(
                "{id} does not exist in {} (deregistered, or never this account's): rebuild this cell",
                recorded.region
            )];
        }
        return vec![format!(
            "{id} is not in {} but in {}: the ID was recorded in the wrong region",
            recorded.region,
            elsewhere.join(", ")
        )];
    };
    let mut problems = Vec::new();
    if image.state != "available" {
        problems.push(format!("{id} is `{}`, not available", image.state));
    }
    let parts = crate::matrix::parse_slot(&recorded.slot);
    let (virt, arch) =
        parts.as_ref().map_or((recorded.slot.as_str(), "x86_64"), |p| (p.virt.as_str(), p.arch.as_str()));
    let found_virt = factory::virt_name(&image.virtualization_type);
    if found_virt != virt {
        problems.push(format!(
            "{id} is {} but its file says {virt}: it belongs in the {found_virt} file",
            image.virtualization_type
        ));
    }
    if image.architecture != arch {
        problems.push(format!("{id} is {} but its file says {arch}", image.architecture));
    }
    let tags = image.tags();
    if !factory::is_managed(&tags) {
        problems
            .push(format!("{id} lacks the factory's tag managed-by=spark-packer: it was not built by spark-packer"));
    } else if tags.get(IMAGE_TAG) != Some(&recorded.image.as_str()) {
        problems.push(format!(
            "{id} is tagged as image `{}` but recorded under `{}`",
            tags.get(IMAGE_TAG).unwrap_or(&"(none)"),
            recorded.image
        ));
    } else {
        // The whole tag set, well formed, and the factory's name: the rule
        // clean-old-amis trusts before it deletes anything.
        let owned: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Err(why) = factory::check_ami(&image.name, &owned) {
            problems.push(format!("{id} is not the factory's as its tags and name say: {why}"));
        }
    }
    if public && !image.public {
        problems.push(format!("{id} is private, but the preset makes public images: rebuild with --public"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALIDATE_ERRORS: &str = include_str!("../tests/fixtures/packer-1.6.6-validate-errors.txt");

    #[test]
    fn the_docker_build_is_validated_once_per_container_with_its_source_image() {
        let matrix = crate::matrix::Matrix::parse(include_str!("../../packer/matrix.json")).unwrap();
        let builds = matrix.expand("default", &Default::default(), crate::matrix::Strategy::Copy, false).unwrap();
        let stamp = RunStamp { run_id: "r".into(), git_commit: "g".into(), created_at: "c".into() };
        let jobs = validate_jobs(&builds, &stamp);
        let docker: Vec<&TemplateVars> =
            jobs.iter().filter(|(_, which)| *which == "-only=docker.container").map(|(v, _)| v).collect();
        assert_eq!(jobs.len() - docker.len(), builds.len(), "each AMI build once, without the docker build");
        assert_eq!(docker.len(), 4, "base and Spark on Debian 13, x86_64 and arm64");
        assert!(docker.iter().all(|v| v.platform == "docker" && v.docker_image == "debian:trixie"));
        assert!(docker.iter().all(|v| v.docker_repository.starts_with("registry.invalid/spark-packer/")));
    }

    #[test]
    fn reads_packer_validate_errors_with_their_lines() {
        let errors = parse_validate_errors(VALIDATE_ERRORS);
        assert_eq!(errors.len(), 10, "{errors:#?}");
        assert_eq!(
            errors[0],
            (97, "Unsupported attribute: This object does not have an attribute named \"instance_typo\".".to_string())
        );
        assert_eq!(errors[1].0, 1);
        assert!(errors[1].1.starts_with("Unset variable \"image\": A used variable must be set"), "{:?}", errors[1]);
    }

    #[test]
    fn reads_shellcheck_gcc_output() {
        // Recorded from `shellcheck -f gcc` 0.9.0 on a script with an unquoted variable.
        let problems =
            parse_shellcheck("scripts/x.sh:3:6: note: Double quote to prevent globbing and word splitting. [SC2086]\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "scripts/x.sh:3: shellcheck note: Double quote to prevent globbing and word splitting. [SC2086]"
        );
    }

    fn recorded(slot: &str) -> Recorded {
        Recorded {
            path: "ami-list/base/us-east-1/".to_string() + slot,
            image: "base".into(),
            region: "us-east-1".into(),
            slot: slot.into(),
            id: "ami-0123456789abcdef0".into(),
        }
    }

    fn image(virtualization: &str, tags: &str) -> Image {
        let json = format!(
            r#"{{"Images": [{{"ImageId": "ami-0123456789abcdef0", "State": "available",
               "Name": "spark-packer-base-hvm-x86_64-20261125T003000Z-1a2b",
               "VirtualizationType": "{virtualization}", "Architecture": "x86_64", "Public": false,
               "Tags": [{tags}]}}]}}"#
        );
        crate::aws::parse_describe_images(&json).unwrap().remove(0)
    }

    /// The tags the template writes on a base HVM x86_64 AMI (see factory.rs).
    const FACTORY: &str = r#"{"Key": "managed-by", "Value": "spark-packer"}, {"Key": "spark-packer:image", "Value": "base"},
        {"Key": "spark-packer:spark-version", "Value": "none"}, {"Key": "spark-packer:virtualization", "Value": "hvm"},
        {"Key": "spark-packer:architecture", "Value": "x86_64"}, {"Key": "spark-packer:build", "Value": "base-hvm-x86_64"},
        {"Key": "spark-packer:run-id", "Value": "20261125T003000Z-1a2b"}, {"Key": "spark-packer:git-commit", "Value": "abc1234"},
        {"Key": "spark-packer:created-at", "Value": "2026-11-25T00:30:00Z"}, {"Key": "spark-packer:base-ami", "Value": "none"},
        {"Key": "spark-packer:smoke-test", "Value": "not-provisioned"}"#;

    #[test]
    fn a_matching_image_passes() {
        assert_eq!(
            check_image(&recorded("hvm"), Some(&image("hvm", FACTORY)), &["us-east-1"], false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn online_findings_each_say_what_is_wrong() {
        let missing = check_image(&recorded("hvm"), None, &[], false);
        assert!(missing[0].contains("does not exist in us-east-1"), "{missing:?}");
        let moved = check_image(&recorded("hvm"), None, &["eu-west-1"], false);
        assert!(moved[0].contains("recorded in the wrong region"), "{moved:?}");
        assert!(moved[0].contains("eu-west-1"), "{moved:?}");
        let wrong_virt = check_image(&recorded("pv"), Some(&image("hvm", FACTORY)), &[], false);
        assert!(wrong_virt[0].contains("is hvm but its file says pv"), "{wrong_virt:?}");
        let untagged = check_image(&recorded("hvm"), Some(&image("hvm", "")), &[], false);
        assert!(untagged[0].contains("lacks the factory's tag"), "{untagged:?}");
        // managed-by and the image tag alone, as anyone can add by hand: not the factory's.
        let partial =
            r#"{"Key": "managed-by", "Value": "spark-packer"}, {"Key": "spark-packer:image", "Value": "base"}"#;
        let hand_made = check_image(&recorded("hvm"), Some(&image("hvm", partial)), &[], false);
        assert!(hand_made[0].contains("is not the factory's") && hand_made[0].contains("no spark-packer:run-id tag"));
        let private = check_image(&recorded("hvm"), Some(&image("hvm", FACTORY)), &[], true);
        assert!(private[0].contains("is private"), "{private:?}");
        let arm = check_image(&recorded("hvm-arm64"), Some(&image("hvm", FACTORY)), &[], false);
        assert!(arm[0].contains("is x86_64 but its file says arm64"), "{arm:?}");
    }
}
