//! The end of a run: the report saved and printed, and the exit status.

use anyhow::{bail, Result};

use crate::{
    project::display,
    run_report::{self, BuildResult, Report, Status},
};

/// Saves the report, prints it (a table, or JSON), and fails the run if any
/// build failed or was interrupted, naming what to do next.
pub(super) fn finish(report: &Report, json: bool) -> Result<()> {
    let report_path = run_report::save(report)?;
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", summary_table(report));
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

/// One row per AMI: build, status, time, region, ID.
pub(super) fn summary_table(report: &Report) -> String {
    let mut rows = vec![["BUILD".to_string(), "STATUS".into(), "TIME".into(), "REGION".into(), "AMI".into()]];
    for build in &report.builds {
        let status = match build.status {
            Status::Ok => "ok",
            Status::Current => "current",
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
    let current = match report.count(Status::Current) {
        0 => String::new(),
        n => format!(" ({n} current, skipped)"),
    };
    out.push_str(&format!(
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
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::run_report::tests::report_of;

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
        let summary = summary_table(&report);
        assert!(summary.contains("note: base-hvm-arm64: ganglia gmond: not packaged for amzn 2023"), "{summary}");
        assert!(serde_json::to_string(&report).unwrap().contains(r#""notes":["ganglia gmond"#));
    }
}
