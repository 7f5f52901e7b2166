//! Publishing what ami-list records where launch tools look for it: a
//! spark_ec2.py layout, SSM parameters, and a JSON manifest. Shared by
//! `publish`, `build-amis --publish-*` and `validate --online --ssm`; it
//! never decides what to publish, only how.

pub mod cells;
pub mod manifest;
pub mod spark_ec2;
pub mod ssm;
pub mod verify;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::Shell;

use self::{cells::Cell, spark_ec2::FileChange};
use crate::{
    aws::Aws,
    checks::{Problem, Recorded},
    project::display,
    run_report::Report,
};

/// Where to publish; each target is opt-in.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The spark_ec2.py layout's directory, and the one image it holds.
    pub spark_ec2: Option<(PathBuf, String)>,
    pub ssm: Option<String>,
    pub manifest: Option<PathBuf>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.spark_ec2.is_none() && self.ssm.is_none() && self.manifest.is_none()
    }
}

/// `build-amis` flags: publish the cells the run recorded, once it succeeded.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// After a successful run, write an SSM parameter (data type
    /// aws:ec2:image) for every cell the run recorded, under this prefix, as
    /// `cargo xtask publish --ssm` does.
    #[arg(long, value_name = "PREFIX")]
    pub publish_ssm: Option<String>,
}

impl BuildArgs {
    pub fn targets(&self) -> Targets {
        Targets { ssm: self.publish_ssm.clone(), ..Targets::default() }
    }

    /// Checked before any build starts: a bad prefix must not wait for the
    /// end of a long run to be found.
    pub fn check(&self) -> Result<()> {
        self.publish_ssm.as_deref().map_or(Ok(()), ssm::check_prefix).context("--publish-ssm")
    }
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub dry_run: bool,
    /// ami-list cells published (or, with --dry-run, checked).
    pub cells: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spark_ec2: Option<Export>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm: Option<Vec<ssm::Written>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<FileChange>,
}

#[derive(Debug, Serialize)]
pub struct Export {
    pub dir: String,
    pub image: String,
    pub files: Vec<FileChange>,
}

impl Outcome {
    /// Parameters whose write failed.
    pub fn failures(&self) -> usize {
        self.ssm.iter().flatten().filter(|w| w.error.is_some()).count()
    }
}

/// Checks every cell's AMI in EC2, plans every target, refuses before any
/// write if anything is wrong, then (unless `dry_run`) writes.
pub fn publish(sh: &Shell, aws: &Aws, cells: &[Cell], targets: &Targets, dry_run: bool) -> Result<Outcome> {
    if let Some(prefix) = &targets.ssm {
        ssm::check_prefix(prefix).context("--ssm")?;
    }
    let images = verify::check_all(sh, aws, cells)?;
    let export = match &targets.spark_ec2 {
        Some((dir, image)) => {
            let files = spark_ec2::diff(&spark_ec2::layout(cells, image)?, &spark_ec2::read_export(dir)?);
            Some(Export { dir: display(dir), image: image.clone(), files })
        }
        None => None,
    };
    let parameters = match &targets.ssm {
        Some(prefix) => Some(plan_ssm(sh, aws, prefix, cells, &images)?),
        None => None,
    };
    let manifest = targets.manifest.as_ref().map(|path| plan_manifest(path, cells, &images)).transpose()?;
    if dry_run {
        let ssm = parameters
            .map(|p| p.into_iter().map(|change| ssm::Written { change, version: None, error: None }).collect());
        return Ok(Outcome { dry_run, cells: cells.len(), spark_ec2: export, ssm, manifest: manifest.map(|(c, _)| c) });
    }
    if let (Some((dir, _)), Some(export)) = (&targets.spark_ec2, &export) {
        spark_ec2::apply(dir, &export.files)?;
    }
    if let Some((change, text)) = &manifest {
        if change.action != "unchanged" {
            spark_ec2::write_atomic(Path::new(&change.path), text)?;
        }
    }
    let ssm = parameters.map(|changes| ssm::apply(sh, aws, changes));
    Ok(Outcome { dry_run, cells: cells.len(), spark_ec2: export, ssm, manifest: manifest.map(|(c, _)| c) })
}

fn plan_ssm(
    sh: &Shell,
    aws: &Aws,
    prefix: &str,
    cells: &[Cell],
    images: &std::collections::BTreeMap<String, crate::aws::Image>,
) -> Result<Vec<ssm::Change>> {
    let wanted: Vec<ssm::Wanted> = cells
        .iter()
        .map(|cell| {
            let run_id = images[&cell.path()].tags().get(verify::RUN_ID_TAG).map(|r| r.to_string()).unwrap_or_default();
            ssm::Wanted {
                region: cell.region.clone(),
                name: ssm::name(prefix, cell),
                value: cell.id.clone(),
                label: ssm::label(&run_id),
            }
        })
        .collect();
    let current = ssm::read(sh, aws, prefix, &regions(cells))?;
    let changes = ssm::plan(wanted, &current);
    let refused: Vec<String> = changes
        .iter()
        .filter_map(|c| match &c.action {
            ssm::Action::Refuse { reason } => Some(format!("{} in {}: {reason}", c.wanted.name, c.wanted.region)),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        bail!("refusing to publish anything: {} parameter(s) in the way:\n  {}", refused.len(), refused.join("\n  "));
    }
    Ok(changes)
}

fn plan_manifest(
    path: &Path,
    cells: &[Cell],
    images: &std::collections::BTreeMap<String, crate::aws::Image>,
) -> Result<(FileChange, String)> {
    let text = serde_json::to_string_pretty(&manifest::build(cells, images))? + "\n";
    let action = match std::fs::read_to_string(path) {
        Ok(now) if now == text => "unchanged",
        Ok(_) => "update",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "create",
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok((FileChange { path: path.display().to_string(), action, id: None }, text))
}

fn regions(cells: &[Cell]) -> Vec<&str> {
    let mut regions: Vec<&str> = cells.iter().map(|c| c.region.as_str()).collect();
    regions.sort();
    regions.dedup();
    regions
}

/// Every change, one line each, then a one-line summary.
pub fn render(outcome: &Outcome) -> String {
    let mut out = String::new();
    let verb = if outcome.dry_run { "would" } else { "did" };
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    if let Some(export) = &outcome.spark_ec2 {
        for f in &export.files {
            let id = f.id.as_deref().map(|id| format!(" {id}")).unwrap_or_default();
            let _ = writeln!(out, "spark-ec2  {:<9} {}/{}{id}", f.action, export.dir, f.path);
            *counts.entry(format!("spark-ec2 files {}", f.action)).or_default() += 1;
        }
    }
    for w in outcome.ssm.iter().flatten() {
        let (action, detail) = match &w.change.action {
            ssm::Action::Create => ("create", String::new()),
            ssm::Action::Update { from, version } => ("update", format!(" (was {from}, version {version})")),
            ssm::Action::Unchanged { version } => ("unchanged", format!(" (version {version})")),
            ssm::Action::Refuse { reason } => ("refuse", format!(" ({reason})")),
        };
        let c = &w.change.wanted;
        let result = match (&w.error, w.version) {
            (Some(e), _) => format!(" FAILED: {e}"),
            (None, Some(v)) if !outcome.dry_run && action != "unchanged" => {
                format!(" -> version {v}, label {}", c.label)
            }
            _ => String::new(),
        };
        let _ = writeln!(out, "ssm        {action:<9} {} {} = {}{detail}{result}", c.region, c.name, c.value);
        let key =
            if w.error.is_some() { "SSM parameters failed".to_string() } else { format!("SSM parameters {action}") };
        *counts.entry(key).or_default() += 1;
    }
    if let Some(m) = &outcome.manifest {
        let _ = writeln!(out, "manifest   {:<9} {}", m.action, m.path);
        *counts.entry(format!("manifest {}", m.action)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(what, n)| format!("{n} {what}")).collect();
    let _ = writeln!(out, "{} cells checked in EC2; {verb}: {}", outcome.cells, counts.join(", "));
    out
}

/// `validate --online --ssm PREFIX`: each recorded cell's parameter against
/// ami-list, one problem per drift.
pub fn validate_ssm(sh: &Shell, aws: &Aws, prefix: &str, recorded: &[Recorded]) -> Vec<Problem> {
    if let Err(e) = ssm::check_prefix(prefix) {
        return vec![Problem { path: prefix.to_string(), line: 1, message: format!("{e:#}") }];
    }
    let cells: Vec<Cell> = recorded
        .iter()
        .filter_map(|r| cells::parse_cell(&format!("{}/{}/{}", r.image, r.region, r.slot), &format!("{}\n", r.id)).ok())
        .collect();
    let wanted: Vec<ssm::Wanted> = cells
        .iter()
        .map(|c| ssm::Wanted {
            region: c.region.clone(),
            name: ssm::name(prefix, c),
            value: c.id.clone(),
            label: String::new(),
        })
        .collect();
    match ssm::read(sh, aws, prefix, &regions(&cells)) {
        Ok(current) => ssm::drift(&wanted, &current)
            .into_iter()
            .map(|(name, message)| Problem { path: format!("ssm:{name}"), line: 1, message })
            .collect(),
        Err(e) => vec![Problem { path: format!("ssm:{prefix}"), line: 1, message: format!("{e:#}") }],
    }
}

/// `build-amis --publish-*`: once every build of the run succeeded, publish
/// the cells it recorded (never the rest of the tree). Says what it did on stderr.
pub(crate) fn after_build(sh: &Shell, aws: &Aws, root: &Path, report: &Report, args: &BuildArgs) -> Result<()> {
    let targets = args.targets();
    if targets.is_empty() {
        return Ok(());
    }
    let unfinished = report.unfinished();
    if !unfinished.is_empty() {
        eprintln!("not publishing: {} build(s) did not succeed ({})", unfinished.len(), unfinished.join(", "));
        return Ok(());
    }
    let recorded: Vec<String> = report.builds.iter().flat_map(|b| b.recorded.iter().cloned()).collect();
    let cells = cells::read_recorded(root, &recorded)?;
    let outcome = publish(sh, aws, &cells, &targets, false).context("publish the run's AMIs")?;
    eprint!("{}", render(&outcome));
    match outcome.failures() {
        0 => Ok(()),
        n => bail!("{n} SSM parameter(s) could not be written; rerun `cargo xtask publish` with the same target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(region: &str, value: &str, action: ssm::Action, version: Option<u64>) -> ssm::Written {
        let wanted = ssm::Wanted {
            region: region.into(),
            name: "/p/base/hvm/x86_64/latest/image_id".into(),
            value: value.into(),
            label: "run-r2".into(),
        };
        ssm::Written { change: ssm::Change { wanted, action }, version, error: None }
    }

    #[test]
    fn render_lists_every_change_then_counts_them() {
        let files = vec![
            FileChange { path: "us-east-1/hvm".into(), action: "update", id: Some("ami-22222222".into()) },
            FileChange { path: "us-east-1/pvm".into(), action: "remove", id: None },
        ];
        let mut failed = written("eu-west-1", "ami-33333333", ssm::Action::Create, None);
        failed.error = Some("aws ssm put-parameter in eu-west-1: throttled".into());
        let outcome = Outcome {
            dry_run: false,
            cells: 3,
            spark_ec2: Some(Export { dir: "export".into(), image: "base".into(), files }),
            ssm: Some(vec![
                written(
                    "us-east-1",
                    "ami-22222222",
                    ssm::Action::Update { from: "ami-11111111".into(), version: 1 },
                    Some(2),
                ),
                written("us-west-2", "ami-44444444", ssm::Action::Unchanged { version: 4 }, Some(4)),
                failed,
            ]),
            manifest: Some(FileChange { path: "amis.json".into(), action: "unchanged", id: None }),
        };
        assert_eq!(outcome.failures(), 1);
        expect_test::expect![[r#"
            spark-ec2  update    export/us-east-1/hvm ami-22222222
            spark-ec2  remove    export/us-east-1/pvm
            ssm        update    us-east-1 /p/base/hvm/x86_64/latest/image_id = ami-22222222 (was ami-11111111, version 1) -> version 2, label run-r2
            ssm        unchanged us-west-2 /p/base/hvm/x86_64/latest/image_id = ami-44444444 (version 4)
            ssm        create    eu-west-1 /p/base/hvm/x86_64/latest/image_id = ami-33333333 FAILED: aws ssm put-parameter in eu-west-1: throttled
            manifest   unchanged amis.json
            3 cells checked in EC2; did: 1 SSM parameters failed, 1 SSM parameters unchanged, 1 SSM parameters update, 1 manifest unchanged, 1 spark-ec2 files remove, 1 spark-ec2 files update
        "#]]
        .assert_eq(&render(&outcome));
    }
}
