//! The end of a run: the report saved and printed, and the exit status.

use anyhow::{bail, Result};

use crate::{
    project::display,
    run_report::{self, BuildResult, Report, Status},
};

/// Saves the report, prints it (a table, or JSON), and fails the run if any
/// build failed or was interrupted, naming what to do next.
pub(super) fn finish(report: &Report, json: bool, wide: bool) -> Result<()> {
    let report_path = run_report::save(report)?;
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", summary_table(report, wide));
        println!("report: {}", display(&report_path));
    }
    let (failed, interrupted) = (report.count(Status::Failed), report.count(Status::Interrupted));
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

/// One row per build (per AMI with `wide`), failures last with their error
/// and log; then what the provisioners left out, and the totals.
pub(super) fn summary_table(report: &Report, wide: bool) -> String {
    let mut builds: Vec<&BuildResult> = report.builds.iter().collect();
    // Failures last, where the eye ends; otherwise the plan's order.
    builds.sort_by_key(|b| matches!(b.status, Status::Failed | Status::Interrupted));
    let mut rows = vec![["BUILD".to_string(), "STATUS".into(), "TIME".into(), "AMIS".into(), String::new()]];
    if wide {
        rows[0][3] = "REGION".into();
        rows[0][4] = "AMI".into();
    }
    for build in &builds {
        let status = status_word(build.status).to_string();
        let time = format!("{:.1}s", build.seconds);
        if !wide || build.amis.is_empty() {
            rows.push([build.name.clone(), status, time, build.amis.len().to_string(), String::new()]);
            continue;
        }
        for (i, (region, ami)) in build.amis.iter().enumerate() {
            let (name, status, time) =
                if i == 0 { (build.name.clone(), status.clone(), time.clone()) } else { Default::default() };
            rows.push([name, status, time, region.clone(), ami.clone()]);
        }
    }
    let mut out = table(&rows);
    for build in builds.iter().filter(|b| matches!(b.status, Status::Failed | Status::Interrupted)) {
        let error = build.error.as_deref().unwrap_or("").lines().next().unwrap_or("");
        let log = if build.log.is_empty() { String::new() } else { format!(" (log: {})", build.log) };
        out.push_str(&format!("{}: {error}{log}\n", build.name));
    }
    // What the provisioners left out on purpose, e.g. gmond on Amazon Linux 2023.
    for build in &builds {
        for note in &build.notes {
            out.push_str(&format!("note: {}: {note}\n", build.name));
        }
    }
    out.push_str(&arch_times(report));
    out.push_str(&totals(report));
    out
}

/// For provisioned runs, each arm64 build's time against its x86_64 twin's:
/// in the sandbox that is what qemu-user emulation costs.
fn arch_times(report: &Report) -> String {
    let mut out = String::new();
    if !report.provisioned {
        return out;
    }
    let ok = |b: &&BuildResult| b.status == Status::Ok && b.seconds > 0.0;
    for arm in report.builds.iter().filter(ok).filter(|b| b.arch == "arm64") {
        let twin = arm.name.replacen("-arm64", "-x86_64", 1);
        let Some(x86) = report.builds.iter().filter(ok).find(|b| b.name == twin) else { continue };
        let how = if report.endpoint.is_some() { ", under qemu-user emulation" } else { "" };
        out.push_str(&format!(
            "time: {} took {:.1}x as long as {} ({:.1}s against {:.1}s{how})\n",
            arm.name,
            arm.seconds / x86.seconds,
            x86.name,
            arm.seconds,
            x86.seconds
        ));
    }
    out
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Current => "current",
        Status::Failed => "FAILED",
        Status::Interrupted => "INTERRUPTED",
    }
}

/// Columns padded to their widest cell; the time column right-aligned.
fn table(rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
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
    out
}

fn totals(report: &Report) -> String {
    let ok: Vec<&BuildResult> = report.builds.iter().filter(|b| b.status == Status::Ok).collect();
    let current = match report.count(Status::Current) {
        0 => String::new(),
        n => format!(" ({n} current, skipped)"),
    };
    format!(
        "\n{} of {} builds ok{current}, {} AMIs recorded in {} in {:.1}s{}\n",
        ok.len() + report.count(Status::Current),
        report.builds.len(),
        ok.iter().map(|b| b.recorded.len()).sum::<usize>(),
        report.ami_list,
        report.seconds,
        match (report.provisioned, report.smoke_test) {
            (false, _) => " (API-only: not provisioned)",
            (true, false) => " (SMOKE TEST OFF: not shown to run Spark)",
            (true, true) => "",
        },
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        matrix::{Filters, Matrix, Strategy},
        run_report::tests::{report_of, result_of},
    };

    #[test]
    fn the_seed_matrix_summary_fits_in_twelve_lines_with_failures_last() {
        let builds = Matrix::parse(include_str!("../../../packer/matrix.json"))
            .unwrap()
            .expand("seed-2014", &Filters::default(), Strategy::Copy, false)
            .unwrap();
        let mut results: Vec<BuildResult> = builds.iter().map(|b| result_of(b, Status::Ok)).collect();
        results[0].status = Status::Failed;
        results[0].error = Some("smoke test: the Spark master exited before it was ready\nmore".to_string());
        results[2].status = Status::Current;
        let summary = summary_table(&report_of(results.clone()), false);
        assert!(summary.lines().count() <= 12, "{summary}");
        let rows: Vec<&str> = summary.lines().collect();
        assert!(rows[4].starts_with("base-hvm-x86_64") && rows[4].contains("FAILED"), "{summary}");
        assert!(rows[5].starts_with("base-hvm-x86_64: smoke test: the Spark master") && rows[5].contains("(log: "));
        assert!(summary.contains("current"), "{summary}");
        let wide = summary_table(&report_of(results), true);
        assert_eq!(wide.lines().filter(|l| l.contains("  ami-0")).count(), 32, "{wide}");
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
            inputs: None,
            why_built: Vec::new(),
            base_ami: None,
            log: "log".to_string(),
            error: None,
            notes: vec!["ganglia gmond: not packaged for amzn 2023; not installed".to_string()],
        };
        let report = report_of(vec![build]);
        let summary = summary_table(&report, false);
        assert!(summary.contains("note: base-hvm-arm64: ganglia gmond: not packaged for amzn 2023"), "{summary}");
        assert!(serde_json::to_string(&report).unwrap().contains(r#""notes":["ganglia gmond"#));
    }

    #[test]
    fn arm64_builds_are_timed_against_their_x86_64_twins() {
        let builds = Matrix::parse(include_str!("../../../packer/matrix.json"))
            .unwrap()
            .expand("default", &Filters::default(), Strategy::Copy, false)
            .unwrap();
        let mut results: Vec<BuildResult> = builds.iter().map(|b| result_of(b, Status::Ok)).collect();
        for result in &mut results {
            result.seconds = if result.arch == "arm64" { 150.0 } else { 30.0 };
        }
        results[3].status = Status::Failed;
        let mut report = report_of(results);
        report.provisioned = true;
        report.endpoint = Some("http://127.0.0.1:5000".to_string());
        let times = arch_times(&report);
        assert_eq!(
            times,
            "time: base-debian-13-hvm-arm64 took 5.0x as long as base-debian-13-hvm-x86_64 \
             (150.0s against 30.0s, under qemu-user emulation)\n",
            "a failed build has no time to compare"
        );
        report.provisioned = false;
        assert_eq!(arch_times(&report), "", "API-only builds take the same time on either architecture");
    }
}
