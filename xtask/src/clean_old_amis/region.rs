//! One region's work at the AWS edge: list, select, then (with `--yes`)
//! deregister and delete. Never prints: progress goes out as events.

use std::{collections::BTreeSet, sync::mpsc::Sender};

use anyhow::{Context, Result};
use rayon::prelude::*;
use xshell::Shell;

use super::{
    report::{RegionReport, SnapshotOf},
    select::{select, snapshots_to_delete, usage, Ami, Needed, Policy},
};
use crate::{aws::Aws, interrupt, progress::Event};

/// Lists, selects and (with `act`) deletes in one region. Never prints:
/// progress goes to `events`, and everything else into the report.
pub(super) fn clean_region(
    sh: &Shell,
    aws: &Aws,
    region: &str,
    policy: &Policy,
    act: bool,
    events: &Sender<Event>,
) -> RegionReport {
    let send = |event| {
        let _ = events.send(event);
    };
    send(Event::Started { build: region.to_string(), detail: "listing images, instances, launch templates".into() });
    let mut report = RegionReport {
        region: region.to_string(),
        decisions: Vec::new(),
        deregistered: Vec::new(),
        not_started: Vec::new(),
        snapshots: Vec::new(),
        errors: Vec::new(),
    };
    let images = match list_region(sh, aws, region, policy) {
        Ok((images, in_use)) => {
            report.decisions = select(&images, &in_use, policy);
            images
        }
        Err(e) => {
            let error = format!("{e:#}");
            report.errors.push(error.clone());
            send(Event::Failed { build: region.to_string(), error, log: "nothing deleted in this region".into() });
            return report;
        }
    };
    let doomed: BTreeSet<String> = report.decisions.iter().filter(|d| d.delete).map(|d| d.image_id.clone()).collect();
    if act {
        delete(sh, aws, &images, &doomed, &mut report);
    } else {
        report.snapshots = snapshots_to_delete(&images, &doomed).into_iter().map(SnapshotOf::from).collect();
    }
    let verb = if act { "deleted" } else { "would delete" };
    let deleted = if act { report.deregistered.len() } else { doomed.len() };
    let detail = format!("{verb} {deleted} AMIs and {} snapshots", report.snapshots.len());
    send(match report.errors.first() {
        None => Event::Finished { build: region.to_string(), detail },
        Some(first) => Event::Failed {
            build: region.to_string(),
            error: format!("{first} ({} errors)", report.errors.len()),
            log: detail,
        },
    });
    report
}

/// Deregisters `doomed`, then deletes the snapshots no remaining image uses.
fn delete(sh: &Shell, aws: &Aws, images: &[Ami], doomed: &BTreeSet<String>, report: &mut RegionReport) {
    let region = report.region.as_str();
    // Every deregistration first: a snapshot cannot go while its image exists.
    let outcomes: Vec<Deregistration> = doomed
        .par_iter()
        .map_with(sh.clone(), |sh, id| {
            if interrupt::interrupted() {
                return Deregistration::NotStarted(id.clone());
            }
            match aws.deregister_image(sh, region, id) {
                Ok(()) => Deregistration::Done(id.clone()),
                Err(e) => Deregistration::Failed(format!("deregister {id}: {e:#}")),
            }
        })
        .collect();
    for outcome in outcomes {
        match outcome {
            Deregistration::Done(id) => report.deregistered.push(id),
            Deregistration::NotStarted(id) => report.not_started.push(id),
            Deregistration::Failed(error) => report.errors.push(error),
        }
    }
    let gone: BTreeSet<String> = report.deregistered.iter().cloned().collect();
    let outcomes: Vec<Result<SnapshotOf, String>> = snapshots_to_delete(images, &gone)
        .into_par_iter()
        .map_with(sh.clone(), |sh, (snapshot, image)| match aws.delete_snapshot(sh, region, &snapshot) {
            Ok(()) => Ok((snapshot, image).into()),
            Err(e) => Err(format!("delete snapshot {snapshot} of {image}: {e:#}")),
        })
        .collect();
    let (deleted, failed) = split(outcomes);
    report.snapshots = deleted;
    report.errors.extend(failed);
}

fn list_region(sh: &Shell, aws: &Aws, region: &str, policy: &Policy) -> Result<(Vec<Ami>, Needed)> {
    // Three independent calls, each mostly the aws CLI starting up: make them at once.
    // A Shell is Send but not Sync, so each call gets its own.
    let [sh1, sh2, sh3] = [sh.clone(), sh.clone(), sh.clone()];
    let (images, (instances, templates)) = rayon::join(
        move || aws.own_images_with_snapshots(&sh1, region).with_context(|| format!("list images in {region}")),
        move || {
            if policy.include_in_use {
                return (Ok(Vec::new()), Ok(Vec::new()));
            }
            rayon::join(
                move || aws.instance_images(&sh2, region).with_context(|| format!("list instances in {region}")),
                move || {
                    aws.launch_template_images(&sh3, region)
                        .with_context(|| format!("list launch templates in {region}"))
                },
            )
        },
    );
    let images: Vec<Ami> = images?.iter().map(|i| Ami::from_aws(region, i)).collect();
    Ok((images, usage(&instances?, &templates?)))
}

enum Deregistration {
    Done(String),
    /// Not tried: a signal came in first.
    NotStarted(String),
    Failed(String),
}

fn split<T>(outcomes: Vec<Result<T, String>>) -> (Vec<T>, Vec<String>) {
    let (ok, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    (ok.into_iter().flatten().collect(), failed.into_iter().filter_map(Result::err).collect())
}
