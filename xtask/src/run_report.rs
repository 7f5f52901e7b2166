//! What a build-amis run records: one report per run under
//! target/build-reports/, written once the builds are done and read back by
//! `--resume` and the benchmark through the same types. Reading needs only
//! what resuming needs (run id, tree, each build's name and status), so a
//! report from an older version of the tool still resumes.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{matrix::Strategy, site::downloads::ImageDownloads};

/// The outcome of one build, as reported and saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildResult {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub virt: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub build_region: String,
    pub status: Status,
    /// Region -> AMI ID, for every AMI Packer reported (even on failure).
    #[serde(default)]
    pub amis: BTreeMap<String, String>,
    /// The ami-list files written, relative to the tree.
    #[serde(default)]
    pub recorded: Vec<String>,
    #[serde(default)]
    pub seconds: f64,
    /// Packer runs: 1, or more when transient failures were retried.
    #[serde(default)]
    pub attempts: u32,
    /// The input hash this build's AMIs carry (see build_amis/inputs.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// Why it was built rather than skipped as current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why_built: Vec<String>,
    /// --spark-on-base: the base AMI this build launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ami: Option<String>,
    #[serde(default)]
    pub log: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the provisioners left out on purpose (`spark-packer: NOTE:`
    /// lines), e.g. Ganglia where the OS does not package it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Skipped: every AMI recorded for it exists with the same input hash.
    Current,
    Failed,
    /// Not run, or stopped, because of Ctrl-C or SIGTERM.
    Interrupted,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub preset: String,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub provisioned: bool,
    /// False only when --skip-smoke-test turned the Spark smoke test off.
    #[serde(default)]
    pub smoke_test: bool,
    /// Image -> where its Spark (and Hadoop) came from, and the SHA-512s they were checked against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub downloads: BTreeMap<String, ImageDownloads>,
    #[serde(default)]
    pub endpoint: Option<String>,
    pub ami_list: String,
    #[serde(default)]
    pub git_commit: String,
    pub builds: Vec<BuildResult>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.builds.iter().filter(|b| b.status == status).count()
    }

    /// The names of the builds that failed or were interrupted.
    pub fn unfinished(&self) -> Vec<&str> {
        let done = |s: Status| matches!(s, Status::Ok | Status::Current);
        self.builds.iter().filter(|b| !done(b.status)).map(|b| b.name.as_str()).collect()
    }
}

pub(crate) use crate::journal::reports_dir;

pub(crate) fn latest_path() -> PathBuf {
    reports_dir().join("latest.json")
}

/// Writes `<run id>.json` and, atomically, `latest.json`.
pub(crate) fn save(report: &Report) -> Result<PathBuf> {
    let dir = reports_dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.json", report.run_id));
    let json = serde_json::to_string_pretty(report)?;
    fs::write(&path, &json).with_context(|| format!("write {}", path.display()))?;
    let tmp = dir.join(format!(".latest.json.tmp-{}", std::process::id()));
    fs::write(&tmp, &json).and_then(|()| fs::rename(&tmp, latest_path())).context("write latest.json")?;
    crate::journal::close(&path);
    Ok(path)
}

/// Build -> the seconds its latest successful run took, from the newest
/// reports (at most 20) of runs provisioned as this one is: what the live
/// view's estimate starts from.
pub(crate) fn earlier_seconds(builds: &[String], provisioned: bool) -> BTreeMap<String, f64> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = crate::journal::json_files(&reports_dir())
        .filter(|p| !p.ends_with("latest.json"))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    files.sort();
    let mut seconds = BTreeMap::new();
    for (_, path) in files.iter().rev().take(20).rev() {
        let Ok(report) = fs::read_to_string(path).map_err(anyhow::Error::from).and_then(|t| parse(&t)) else {
            continue;
        };
        // An API-only build takes seconds; a provisioned one of the same name, minutes.
        if report.provisioned != provisioned {
            continue;
        }
        for build in report.builds.into_iter().filter(|b| b.status == Status::Ok && builds.contains(&b.name)) {
            seconds.insert(build.name, build.seconds);
        }
    }
    seconds
}

pub(crate) fn load(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path).with_context(|| {
        format!("read the report {}: no earlier run to resume? run without --resume", path.display())
    })?;
    parse(&text).with_context(|| format!("read the report {}", path.display()))
}

pub(crate) fn parse(text: &str) -> Result<Report> {
    match serde_json::from_str(text) {
        Ok(report) => Ok(report),
        Err(e) => bail!("not a build-amis report ({e}): name a file from target/build-reports/"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matrix::Build;

    /// A result for `build` with one made-up AMI per region.
    pub(crate) fn result_of(build: &Build, status: Status) -> BuildResult {
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
            inputs: None,
            why_built: Vec::new(),
            base_ami: None,
            log: format!("{}.log", build.name),
            error: None,
            notes: Vec::new(),
        }
    }

    pub(crate) fn report_of(builds: Vec<BuildResult>) -> Report {
        Report {
            run_id: "r1".to_string(),
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
            builds,
        }
    }
}
