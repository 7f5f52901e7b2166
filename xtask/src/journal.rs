//! A run's report, written as it goes: `target/build-reports/<run id>.json`
//! holds every planned build from the start, each one `interrupted` until its
//! result replaces it. A run that is killed (no destructor, no final report)
//! still leaves a report that `--resume` takes. The final report overwrites
//! it; only a journal carries a `journal` record (who wrote it), which is how
//! a later run tells a run that died from one that finished, and sweeps what
//! the dead one may have left in EC2 (see sweep.rs).
//!
//! While a journal is open, an empty file of the same name waits in
//! `build-reports/open/`, so that the start of every run reads only the
//! journals still open, not every report the factory ever wrote.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    matrix::{Build, Strategy},
    project,
};

/// What a build without a result says in the journal.
pub const UNFINISHED: &str = "no result: the run ended before this build did (killed?); resume it with --resume";

/// The report's own fields, as `build-amis` writes them at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub run_id: String,
    pub started_at: String,
    pub preset: String,
    pub strategy: Strategy,
    pub provisioned: bool,
    pub endpoint: Option<String>,
    pub ami_list: String,
    pub git_commit: String,
}

/// Who writes a journal: a process, told apart from a later one with its
/// pid by its start time (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    pub pid: u32,
    pub started: u64,
    /// When a later run removed what this run left in EC2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swept_at: Option<String>,
}

/// A build of the journal: a placeholder, or the result `build-amis` reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub build_region: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// The journal file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    #[serde(flatten)]
    pub header: Header,
    pub journal: Writer,
    pub builds: Vec<Entry>,
}

pub struct Journal {
    path: PathBuf,
    doc: Mutex<Document>,
    /// The first write that failed: the final report still comes, so a
    /// worker keeps the error for the end rather than stopping the build.
    error: Mutex<Option<anyhow::Error>>,
}

pub fn reports_dir() -> PathBuf {
    project::target_dir().join("build-reports")
}

impl Journal {
    /// Writes the journal of a run about to start `builds`: checked here,
    /// before anything is launched, that the report can be written at all.
    pub fn start(header: Header, builds: &[Build]) -> Result<Journal> {
        let builds = builds.iter().map(pending).collect();
        let journal = Writer { pid: std::process::id(), started: own_start_time()?, swept_at: None };
        let path = reports_dir().join(format!("{}.json", header.run_id));
        let doc = Document { header, journal, builds };
        write(&path, &doc)?;
        // Listed after it is written, so a listed journal that is missing was
        // removed; nothing is launched before this, so none dies unlisted
        // with something to sweep.
        mark_open(&path)?;
        Ok(Journal { path, doc: Mutex::new(doc), error: Mutex::new(None) })
    }

    /// Puts `result` (a build's result as reported, with at least `name`
    /// and `status`) in place of its entry, and rewrites the file.
    pub fn record(&self, result: &impl Serialize) {
        let written = (|| -> Result<()> {
            let entry: Entry = serde_json::from_value(serde_json::to_value(result)?)
                .context("a build result without name or status")?;
            let mut doc = self.doc.lock().map_err(|_| anyhow::anyhow!("the journal's lock is poisoned"))?;
            match doc.builds.iter_mut().find(|b| b.name == entry.name) {
                Some(slot) => *slot = entry,
                None => doc.builds.push(entry),
            }
            write(&self.path, &doc)
        })();
        if let (Err(e), Ok(mut error)) = (written, self.error.lock()) {
            error.get_or_insert(e);
        }
    }

    /// The first write that failed, if any.
    pub fn finish(self) -> Result<()> {
        match self.error.into_inner().ok().flatten() {
            Some(e) => Err(e.context(format!("keep the journal {}", self.path.display()))),
            None => Ok(()),
        }
    }
}

fn pending(build: &Build) -> Entry {
    let mut rest = serde_json::Map::new();
    rest.insert("error".to_string(), UNFINISHED.into());
    Entry { name: build.name.clone(), status: "interrupted".to_string(), build_region: build.region.clone(), rest }
}

/// Writes `doc` to `path` and to latest.json (what `--resume` reads by
/// default), each by temp file and rename, so a reader never sees half.
pub fn write(path: &Path, doc: &Document) -> Result<()> {
    let dir = path.parent().context("a report path has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(doc)?;
    for target in [path.to_path_buf(), dir.join("latest.json")] {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        fs::write(&tmp, &json)
            .and_then(|()| fs::rename(&tmp, &target))
            .with_context(|| format!("write {}", target.display()))?;
    }
    Ok(())
}

/// The start time of a process, in clock ticks since boot, from the text of
/// its /proc/PID/stat: field 22, counted after the command name, which is in
/// parentheses and may itself hold spaces and parentheses.
pub fn start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn own_start_time() -> Result<u64> {
    let stat = fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    start_time(&stat).context("no start time in /proc/self/stat")
}

/// Whether the writer of a journal is still running: its pid is there and
/// started when the journal says (not a later process given the same pid).
pub fn is_alive(writer: &Writer) -> bool {
    let stat = fs::read_to_string(format!("/proc/{}/stat", writer.pid)).ok();
    stat.as_deref().and_then(start_time) == Some(writer.started)
}

/// The journals of runs that died, not yet swept: regular files only, and
/// anything else in the directory (final reports, other files) skipped.
pub fn dead_runs() -> Vec<(PathBuf, Document)> {
    dead_runs_in(&reports_dir())
}

fn dead_runs_in(reports: &Path) -> Vec<(PathBuf, Document)> {
    let open = reports.join(OPEN);
    let indexed = open.join(INDEXED);
    // Reports written before the index have no marker: read them all once.
    let before_the_index = !indexed.exists();
    let candidates: Vec<PathBuf> = if before_the_index {
        json_files(reports).filter(|p| !p.ends_with("latest.json")).collect()
    } else {
        json_files(&open).map(|marker| reports.join(marker.file_name().unwrap_or_default())).collect()
    };
    let mut journals = Vec::new();
    for path in candidates {
        match read_journal(&path) {
            Some(doc) if doc.journal.swept_at.is_none() => journals.push((path, doc)),
            // Finished, swept or gone: its marker, if any, is stale.
            _ => close(&path),
        }
    }
    if before_the_index {
        let listed = journals.iter().all(|(path, _)| mark_open(path).is_ok());
        if listed && fs::create_dir_all(&open).is_ok() {
            let _ = fs::write(&indexed, "");
        }
    }
    let mut dead: Vec<_> = journals.into_iter().filter(|(_, doc)| !is_alive(&doc.journal)).collect();
    dead.sort_by(|a, b| a.0.cmp(&b.0));
    dead
}

/// The folder of open journals' markers, and the file that says every
/// journal is listed there.
const OPEN: &str = "open";
const INDEXED: &str = ".indexed";

/// Lists the journal at `report` as open.
pub fn mark_open(report: &Path) -> Result<()> {
    let marker = marker(report).context("a report path has a file name")?;
    let dir = marker.parent().context("a marker has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::write(&marker, "").with_context(|| format!("write {}", marker.display()))
}

/// Unlists the journal at `report`: it is finished, swept, or gone. What
/// cannot be removed stays listed, and costs a later run one read.
pub fn close(report: &Path) {
    if let Some(marker) = marker(report) {
        let _ = fs::remove_file(marker);
    }
}

fn marker(report: &Path) -> Option<PathBuf> {
    Some(report.parent()?.join(OPEN).join(report.file_name()?))
}

/// The regular `*.json` files in `dir`, none if it cannot be read.
pub(crate) fn json_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
}

/// The journal at `path`, or None for a final report or an unreadable file.
fn read_journal(path: &Path) -> Option<Document> {
    let text = fs::read_to_string(path).ok()?;
    // Cheap test first: final reports carry no journal record.
    if !text.contains("\"journal\"") {
        return None;
    }
    serde_json::from_str(&text).ok()
}

/// Marks a dead run's journal as swept, so later runs leave it alone.
pub fn mark_swept(path: &Path, doc: &Document) -> Result<()> {
    let mut doc = doc.clone();
    doc.journal.swept_at = Some(project::rfc3339(project::now_secs()));
    let json = serde_json::to_string_pretty(&doc)?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    fs::write(&tmp, json).and_then(|()| fs::rename(&tmp, path)).with_context(|| format!("write {}", path.display()))?;
    close(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_come_after_the_command_name() {
        // Recorded from /proc/self/stat on Debian 12 (kernel 6.1), with a
        // command name made to hold a space and a parenthesis.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 95 0 0 0 0 0 0 0 20 0 1 0 1234567 2252800 160 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(start_time(stat), Some(1_234_567));
        assert_eq!(start_time("garbage"), None);
        assert!(is_alive(&Writer { pid: std::process::id(), started: own_start_time().unwrap(), swept_at: None }));
        let reused = Writer { pid: std::process::id(), started: 1, swept_at: None };
        assert!(!is_alive(&reused), "the same pid with another start time is another process");
    }

    #[test]
    fn a_journal_is_a_report_that_resume_takes() {
        let matrix = crate::matrix::Matrix::parse(include_str!("../../packer/matrix.json")).unwrap();
        let builds = matrix.expand("seed-2014", &crate::matrix::Filters::default(), Strategy::Copy, false).unwrap();
        let doc = Document {
            header: Header {
                run_id: "r1".to_string(),
                started_at: "t".to_string(),
                preset: "seed-2014".to_string(),
                strategy: Strategy::Copy,
                provisioned: false,
                endpoint: None,
                ami_list: "target/local/ami-list".to_string(),
                git_commit: "g".to_string(),
            },
            journal: Writer { pid: 1, started: 1, swept_at: None },
            builds: builds.iter().map(pending).collect(),
        };
        let json = serde_json::to_string(&doc).unwrap();
        let report = crate::run_report::parse(&json).unwrap();
        assert_eq!(report.ami_list, "target/local/ami-list");
        assert_eq!(report.unfinished().len(), builds.len(), "every build without a result is resumed");
        let back: Document = serde_json::from_str(&json).unwrap();
        assert_eq!(back.builds[0].build_region, "us-east-1");
        assert_eq!(back.builds[0].rest["error"], UNFINISHED);
    }

    fn journal_of_a_gone_process(run_id: &str) -> Document {
        let header = Header {
            run_id: run_id.to_string(),
            started_at: "t".to_string(),
            preset: "seed-2014".to_string(),
            strategy: Strategy::Copy,
            provisioned: false,
            endpoint: None,
            ami_list: "t".to_string(),
            git_commit: "g".to_string(),
        };
        // This pid with another start time: a process that is gone.
        Document { header, journal: Writer { pid: std::process::id(), started: 1, swept_at: None }, builds: Vec::new() }
    }

    fn names(found: &[(PathBuf, Document)]) -> Vec<String> {
        found.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_run_start_reads_the_listed_journals_only_once_every_old_one_is_listed() {
        let dir = std::env::temp_dir().join(format!("journal-index-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(dead_runs_in(&dir.join("none")).is_empty());
        assert!(dir.join("none/open/.indexed").is_file(), "no reports yet: nothing to list");
        // From before the index: a dead journal without a marker, and a final report.
        write(&dir.join("r1.json"), &journal_of_a_gone_process("r1")).unwrap();
        fs::write(dir.join("r0.json"), r#"{"run_id": "r0", "builds": []}"#).unwrap();

        let found = dead_runs_in(&dir);
        assert_eq!(names(&found), ["r1.json"]);
        assert!(dir.join("open/r1.json").is_file() && dir.join("open/.indexed").is_file());

        // Now only markers are read: an unlisted journal is not seen.
        write(&dir.join("r2.json"), &journal_of_a_gone_process("r2")).unwrap();
        assert_eq!(names(&dead_runs_in(&dir)), ["r1.json"]);
        mark_open(&dir.join("r2.json")).unwrap();
        assert_eq!(names(&dead_runs_in(&dir)), ["r1.json", "r2.json"]);

        // Swept, it is unlisted; a marker over a final report or no file goes at the next look.
        mark_swept(&dir.join("r1.json"), &found[0].1).unwrap();
        assert!(!dir.join("open/r1.json").exists());
        fs::write(dir.join("r2.json"), r#"{"run_id": "r2", "builds": []}"#).unwrap();
        mark_open(&dir.join("r9.json")).unwrap();
        assert!(dead_runs_in(&dir).is_empty());
        let left: Vec<_> = fs::read_dir(dir.join("open")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [".indexed"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
