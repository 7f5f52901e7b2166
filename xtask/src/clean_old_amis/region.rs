//! One region's work at the AWS edge: list, select, then (with `--yes`)
//! deregister and delete. Never prints: progress goes out as events.

use std::{collections::BTreeSet, sync::mpsc::Sender};

use anyhow::{Context, Result};
use rayon::prelude::*;
use xshell::Shell;

use super::{
    report::{RegionReport, SnapshotOf},
    select::{select, usage, Ami, Policy, UsedBy},
    snapshots::{orphans, snapshots_to_delete, Snapshot},
};
use crate::{aws::Aws, interrupt, progress::Event};

/// Everything one region holds that the decision needs. Listing any of it
/// failing means nothing is deleted there: what was not read could forbid it.
struct Listing {
    images: Vec<Ami>,
    in_use: UsedBy,
    /// The factory-tagged snapshots, listed before the images.
    snapshots: Vec<Snapshot>,
}

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
    let detail = "listing snapshots, images, launch permissions, instances, launch templates and configurations";
    send(Event::Started { build: region.to_string(), detail: detail.into() });
    let mut report = RegionReport {
        region: region.to_string(),
        decisions: Vec::new(),
        deregistered: Vec::new(),
        not_started: Vec::new(),
        snapshots: Vec::new(),
        orphan_snapshots: Vec::new(),
        errors: Vec::new(),
    };
    let listing = match list_region(sh, aws, region, policy) {
        Ok(listing) => listing,
        Err(e) => {
            let error = format!("{e:#}");
            report.errors.push(error.clone());
            send(Event::Failed { build: region.to_string(), error, log: "nothing deleted in this region".into() });
            return report;
        }
    };
    report.decisions = select(&listing.images, &listing.in_use, policy);
    // From the listing before anything goes: the snapshots of this run's own
    // deregistrations are not orphans but `snapshots_to_delete`'s.
    let orphans: Vec<SnapshotOf> =
        orphans(&listing.snapshots, &listing.images, policy).into_iter().map(SnapshotOf::from).collect();
    let doomed: BTreeSet<String> = report.decisions.iter().filter(|d| d.delete).map(|d| d.image_id.clone()).collect();
    if act {
        delete(sh, aws, &listing.images, &doomed, &mut report);
        delete_orphans(sh, aws, orphans, &mut report);
    } else {
        report.snapshots = snapshots_to_delete(&listing.images, &doomed).into_iter().map(SnapshotOf::from).collect();
        report.orphan_snapshots = orphans;
    }
    let verb = if act { "deleted" } else { "would delete" };
    let deleted = if act { report.deregistered.len() } else { doomed.len() };
    let detail = format!(
        "{verb} {deleted} AMIs, {} of their snapshots and {} orphan snapshots",
        report.snapshots.len(),
        report.orphan_snapshots.len()
    );
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

/// Deletes the factory's snapshots whose AMI is gone. After a signal none is
/// started: each is whole until a later run, which finds it again.
fn delete_orphans(sh: &Shell, aws: &Aws, orphans: Vec<SnapshotOf>, report: &mut RegionReport) {
    let region = report.region.as_str();
    let outcomes: Vec<Result<Result<SnapshotOf, String>, String>> = orphans
        .into_par_iter()
        .map_with(sh.clone(), |sh, orphan| {
            if interrupt::interrupted() {
                return Err(orphan.snapshot_id);
            }
            Ok(match aws.delete_snapshot(sh, region, &orphan.snapshot_id) {
                Ok(()) => Ok(orphan),
                Err(e) => Err(format!("delete snapshot {} of the gone {}: {e:#}", orphan.snapshot_id, orphan.image_id)),
            })
        })
        .collect();
    let (tried, not_started) = split(outcomes);
    let (deleted, failed) = split(tried);
    report.orphan_snapshots = deleted;
    report.not_started.extend(not_started);
    report.errors.extend(failed);
}

fn list_region(sh: &Shell, aws: &Aws, region: &str, policy: &Policy) -> Result<Listing> {
    // Independent calls, each mostly the aws CLI starting up: make them at once.
    // A Shell is Send but not Sync, so each call gets its own.
    let [sh1, sh2] = [sh.clone(), sh.clone()];
    let (listed, in_use) = rayon::join(
        move || -> Result<_> {
            // Snapshots first, then images: EC2 registers an AMI before it
            // makes its snapshots, so no snapshot seen here can belong to an
            // AMI that the image listing misses because it came too late.
            let snapshots =
                aws.factory_snapshots(&sh1, region).with_context(|| format!("list snapshots in {region}"))?;
            let images =
                aws.own_images_with_snapshots(&sh1, region).with_context(|| format!("list images in {region}"))?;
            Ok((snapshots, images))
        },
        move || list_usage(&sh2, aws, region, policy),
    );
    let (snapshots, images) = listed?;
    let mut images: Vec<Ami> = images.iter().map(|i| Ami::from_aws(region, i)).collect();
    // Who else may launch them: one call per factory AMI, the only ones that could go.
    images.par_iter_mut().filter(|ami| ami.stamp().is_ok()).try_for_each_with(sh.clone(), |sh, ami| {
        let permissions = aws
            .launch_permissions(sh, region, &ami.id)
            .with_context(|| format!("read the launch permissions of {} in {region}", ami.id))?;
        ami.add_launch_permissions(&permissions);
        anyhow::Ok(())
    })?;
    Ok(Listing { images, in_use: in_use?, snapshots: snapshots.iter().map(Snapshot::from_aws).collect() })
}

/// What launches AMIs in `region`: instances, launch templates and Auto
/// Scaling launch configurations. Nothing with --include-in-use.
fn list_usage(sh: &Shell, aws: &Aws, region: &str, policy: &Policy) -> Result<UsedBy> {
    if policy.include_in_use {
        return Ok(UsedBy::new());
    }
    let [sh1, sh2, sh3] = [sh.clone(), sh.clone(), sh.clone()];
    let (instances, (templates, configurations)) = rayon::join(
        move || aws.instance_images(&sh1, region).with_context(|| format!("list instances in {region}")),
        move || {
            rayon::join(
                move || {
                    aws.launch_template_images(&sh2, region)
                        .with_context(|| format!("list launch templates in {region}"))
                },
                move || {
                    aws.launch_configuration_images(&sh3, region)
                        .with_context(|| format!("list Auto Scaling launch configurations in {region}"))
                },
            )
        },
    );
    Ok(usage(&instances?, &templates?, &configurations?))
}

enum Deregistration {
    Done(String),
    /// Not tried: a signal came in first.
    NotStarted(String),
    Failed(String),
}

fn split<T, E>(outcomes: Vec<Result<T, E>>) -> (Vec<T>, Vec<E>) {
    let (ok, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    (ok.into_iter().flatten().collect(), failed.into_iter().filter_map(Result::err).collect())
}
