//! The run's record (`--json`) and the table a person reads. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::select::{Decision, Reason};

/// What happened in one region.
#[derive(Debug, Serialize)]
pub(crate) struct RegionReport {
    pub(crate) region: String,
    pub(crate) decisions: Vec<Decision>,
    /// AMIs deregistered (with --yes).
    pub(crate) deregistered: Vec<String>,
    /// AMIs and orphan snapshots to delete that were left as they were
    /// because of Ctrl-C or SIGTERM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_started: Vec<String>,
    /// Snapshots of the deregistered AMIs deleted with --yes, or that would be without it.
    pub(crate) snapshots: Vec<SnapshotOf>,
    /// The factory's snapshots whose AMI was already gone (a killed run's
    /// leftovers), deleted with --yes, or that would be without it.
    pub(crate) orphan_snapshots: Vec<SnapshotOf>,
    pub(crate) errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SnapshotOf {
    pub(crate) snapshot_id: String,
    pub(crate) image_id: String,
}

impl From<(String, String)> for SnapshotOf {
    fn from((snapshot_id, image_id): (String, String)) -> SnapshotOf {
        SnapshotOf { snapshot_id, image_id }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    /// AMIs deregistered, or that a dry run would deregister.
    pub(crate) deleted: usize,
    pub(crate) snapshots_deleted: usize,
    /// Orphan snapshots deleted, or that a dry run would delete.
    pub(crate) orphan_snapshots_deleted: usize,
    /// Factory AMIs kept, counted under their first reason.
    pub(crate) kept: BTreeMap<Reason, usize>,
    /// Own AMIs the factory did not make (`factory::check_ami`): never candidates.
    pub(crate) not_factory: usize,
    /// AMIs to delete left as they were because of Ctrl-C or SIGTERM.
    pub(crate) not_started: usize,
    pub(crate) errors: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) dry_run: bool,
    pub(crate) as_of: String,
    pub(crate) min_age: String,
    pub(crate) keep: u32,
    pub(crate) include_in_use: bool,
    pub(crate) include_public: bool,
    pub(crate) ami_list: String,
    pub(crate) endpoint: Option<String>,
    pub(crate) regions: Vec<RegionReport>,
    pub(crate) summary: Summary,
}

pub(super) fn summarize(reports: &[RegionReport], act: bool) -> Summary {
    let mut summary = Summary {
        deleted: 0,
        snapshots_deleted: 0,
        orphan_snapshots_deleted: 0,
        kept: BTreeMap::new(),
        not_factory: 0,
        not_started: 0,
        errors: 0,
    };
    for report in reports {
        summary.not_started += report.not_started.len();
        summary.deleted +=
            if act { report.deregistered.len() } else { report.decisions.iter().filter(|d| d.delete).count() };
        summary.snapshots_deleted += report.snapshots.len();
        summary.orphan_snapshots_deleted += report.orphan_snapshots.len();
        summary.errors += report.errors.len();
        for decision in &report.decisions {
            match decision.kept_because.first().map(|w| w.reason) {
                None => {}
                Some(Reason::NotFactory) => summary.not_factory += 1,
                Some(reason) => *summary.kept.entry(reason).or_default() += 1,
            }
        }
    }
    summary
}

/// The table and summary a person reads. Pure.
pub(crate) fn render(report: &Report) -> String {
    let mut out = table(report);
    let verb = if report.dry_run { "would delete" } else { "deleted" };
    for region in &report.regions {
        for SnapshotOf { snapshot_id: snapshot, image_id: image } in &region.snapshots {
            out.push_str(&format!("{verb} snapshot {snapshot} of {image} in {}\n", region.region));
        }
        for SnapshotOf { snapshot_id: snapshot, image_id: image } in &region.orphan_snapshots {
            out.push_str(&format!("{verb} orphan snapshot {snapshot} of {image} (gone) in {}\n", region.region));
        }
        for error in &region.errors {
            out.push_str(&format!("ERROR {}: {error}\n", region.region));
        }
        for id in &region.not_started {
            out.push_str(&format!("not deleted (interrupted) {id} in {}\n", region.region));
        }
    }
    let s = &report.summary;
    let kept: Vec<String> = s.kept.iter().map(|(reason, n)| format!("{} {n}", reason.label())).collect();
    out.push_str(&format!(
        "{}: {} AMIs, {} of their snapshots and {} orphan snapshots {}; kept {} ({}); \
         {} AMIs not the factory's never touched; {} errors\n",
        if report.dry_run { "dry run" } else { "done" },
        s.deleted,
        s.snapshots_deleted,
        s.orphan_snapshots_deleted,
        if report.dry_run { "would be deleted" } else { "deleted" },
        s.kept.values().sum::<usize>(),
        if kept.is_empty() { "none".to_string() } else { kept.join(", ") },
        s.not_factory,
        s.errors,
    ));
    if report.dry_run && s.deleted + s.orphan_snapshots_deleted > 0 {
        out.push_str("nothing was changed: run again with --yes to delete them\n");
    }
    out
}

/// One row per factory AMI: what happens to it, and why.
fn table(report: &Report) -> String {
    let mut rows = vec![["REGION", "AMI", "FAMILY", "CREATED", "ACTION", "WHY"].map(String::from)];
    let go = if report.dry_run { "would delete" } else { "delete" };
    for region in &report.regions {
        for d in region.decisions.iter().filter(|d| !d.kept_because.iter().any(|w| w.reason == Reason::NotFactory)) {
            let why = if d.delete {
                format!("older than {}, not among the newest {}, nothing else keeps it", report.min_age, report.keep)
            } else {
                d.kept_because
                    .iter()
                    .map(|w| format!("{}: {}", w.reason.label(), w.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let action = if d.delete { go } else { "keep" };
            rows.push([&d.region, &d.image_id, &d.family, &d.created, action, &why].map(|s| s.to_string()));
        }
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    if rows.len() == 1 {
        out.push_str("no AMIs the factory made in these regions\n");
        rows.clear();
    }
    for row in &rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        clean_old_amis::{
            select::{select, Policy},
            snapshots::snapshots_to_delete,
            testing::{factory, policy, NOW},
        },
        project,
    };

    #[test]
    fn the_table_says_what_goes_and_why_the_rest_stays() {
        let mut foreign = factory("ami-foreign", 90);
        foreign.tags.clear();
        let images =
            [factory("ami-old", 30), factory("ami-mid", 20), factory("ami-new", 10), factory("ami-young", 1), foreign];
        let policy =
            Policy { ami_list: BTreeMap::from([("ami-mid".into(), vec!["base/us-east-1/hvm".into()])]), ..policy() };
        let decisions = select(&images, &BTreeMap::new(), &policy);
        let snapshots = snapshots_to_delete(&images, &BTreeSet::from(["ami-old".to_string()]));
        let regions = vec![RegionReport {
            region: "us-east-1".into(),
            decisions,
            deregistered: Vec::new(),
            not_started: Vec::new(),
            snapshots: snapshots.into_iter().map(SnapshotOf::from).collect(),
            orphan_snapshots: vec![("snap-orphan".to_string(), "ami-gone".to_string()).into()],
            errors: Vec::new(),
        }];
        let report = Report {
            dry_run: true,
            as_of: project::rfc3339(NOW),
            min_age: "7d".into(),
            keep: 2,
            include_in_use: false,
            include_public: false,
            ami_list: "ami-list".into(),
            endpoint: None,
            summary: summarize(&regions, false),
            regions,
        };
        expect_test::expect![[r#"
            REGION     AMI        FAMILY                     CREATED               ACTION        WHY
            us-east-1  ami-young  base/hvm/x86_64/us-east-1  2026-11-24T00:28:29Z  keep          young: 1d old, under the minimum age; newest: #1 of 4 in base/hvm/x86_64/us-east-1
            us-east-1  ami-new    base/hvm/x86_64/us-east-1  2026-11-15T00:28:29Z  keep          newest: #2 of 4 in base/hvm/x86_64/us-east-1
            us-east-1  ami-mid    base/hvm/x86_64/us-east-1  2026-11-05T00:28:29Z  keep          in-ami-list: base/us-east-1/hvm
            us-east-1  ami-old    base/hvm/x86_64/us-east-1  2026-10-26T00:28:29Z  would delete  older than 7d, not among the newest 2, nothing else keeps it
            would delete snapshot snap-ami-old of ami-old in us-east-1
            would delete orphan snapshot snap-orphan of ami-gone (gone) in us-east-1
            dry run: 1 AMIs, 1 of their snapshots and 1 orphan snapshots would be deleted; kept 3 (in-ami-list 1, young 1, newest 1); 1 AMIs not the factory's never touched; 0 errors
            nothing was changed: run again with --yes to delete them
        "#]]
        .assert_eq(&render(&report));
    }
}
