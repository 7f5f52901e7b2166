//! `cargo xtask clean-old-amis`: deregister superseded factory AMIs and delete
//! their snapshots, and never what someone still needs.
//!
//! Each region is listed in parallel (images, instances, launch templates),
//! then [`select`], a pure function, decides keep or delete with a reason for
//! every image. Only with `--yes` does anything change.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use xshell::Shell;

use crate::{
    ami_list,
    aws::{Aws, ImageWithSnapshots, InstanceImage, TemplateImage},
    endpoint::EndpointArgs,
    interrupt, lock,
    matrix::Matrix,
    progress::{Event, Printer, Work},
    project,
};

/// Deregister superseded AMIs that the factory made, and delete their snapshots.
///
/// A candidate is an AMI this account owns that carries the factory's tags
/// (managed-by=spark-packer, spark-packer:image, :virtualization,
/// :architecture). Untagged AMIs are never touched. Always kept: every ID in
/// the ami-list tree, the newest --keep per family (image x virtualization x
/// architecture x region), anything younger than --min-age, anything an
/// instance or a launch template's default or latest version uses, and public
/// AMIs.
///
/// Dry run by default: it prints what would go and why the rest stays. Add
/// --yes to deregister, then delete each AMI's snapshots unless another AMI
/// still uses them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these regions, e.g. us-east-1,eu-west-1. Default: every region of
    /// packer/matrix.json and of the ami-list tree.
    #[arg(long, value_delimiter = ',')]
    pub region: Vec<String>,

    /// Keep this many newest AMIs per family (image x virt x arch x region),
    /// whatever their age: the current build and a rollback. At least 1.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Keep AMIs younger than this: a number and a unit (s, m, h, d, w),
    /// e.g. 7d, 12h, 0s.
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_duration)]
    pub min_age: u64,

    /// Also delete AMIs that a live instance or a launch template's default or
    /// latest version uses. Their users cannot launch them again.
    #[arg(long)]
    pub include_in_use: bool,

    /// Also delete public AMIs. Anyone may depend on those.
    #[arg(long)]
    pub include_public: bool,

    /// The ami-list tree whose IDs are always kept. Default: the checked-in
    /// ami-list/ for real AWS; target/local/ami-list with --local.
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// Judge ages as of this earlier UTC time (RFC 3339, e.g.
    /// 2026-11-01T00:00:00Z) instead of now: it can only make AMIs look
    /// younger, so it only ever keeps more. Tests use it for exact ages.
    #[arg(long, value_name = "TIME", value_parser = project::parse_time)]
    pub as_of: Option<u64>,

    /// Act: deregister the AMIs the dry run lists, then delete their snapshots.
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// Print the run's report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// The factory's tags. An AMI without all of them is not a candidate.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "spark-packer");
pub const IMAGE_TAG: &str = "spark-packer:image";
pub const VIRT_TAG: &str = "spark-packer:virtualization";
pub const ARCH_TAG: &str = "spark-packer:architecture";

/// AMI ID -> who needs it: ami-list files, instances, launch template versions.
pub type Needed = BTreeMap<String, Vec<String>>;

/// One image as the selection sees it: the facts, no client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ami {
    pub id: String,
    pub region: String,
    pub name: String,
    pub state: String,
    pub public: bool,
    /// Seconds since the epoch; `None` when EC2's date did not parse.
    pub created: Option<u64>,
    pub tags: BTreeMap<String, String>,
    pub snapshots: Vec<String>,
}

impl Ami {
    pub fn from_aws(region: &str, image: &ImageWithSnapshots) -> Ami {
        let i = &image.image;
        Ami {
            id: i.image_id.clone(),
            region: region.to_string(),
            name: i.name.clone(),
            state: i.state.clone(),
            public: i.public,
            created: project::parse_time(&i.creation_date).ok(),
            tags: i.tags().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            snapshots: image.snapshot_ids(),
        }
    }

    /// `image/virt/arch/region` if the AMI carries every factory tag.
    pub fn family(&self) -> Option<String> {
        if self.tags.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
            return None;
        }
        let tag = |key| self.tags.get(key).filter(|v| !v.is_empty());
        Some(format!("{}/{}/{}/{}", tag(IMAGE_TAG)?, tag(VIRT_TAG)?, tag(ARCH_TAG)?, self.region))
    }
}

/// What the run keeps safe, besides the AMIs' own facts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub keep: usize,
    pub min_age_secs: u64,
    /// The moment ages are measured from, in seconds since the epoch.
    pub now: u64,
    pub include_in_use: bool,
    pub include_public: bool,
    /// AMI ID -> the ami-list files that name it.
    pub ami_list: Needed,
}

/// Why an AMI stays, named as in the JSON. In the order the summary counts
/// them: an AMI kept for several reasons counts under the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Lacks the factory's tags: never a candidate.
    NotFactory,
    InAmiList,
    Public,
    InUse,
    /// Still being made (state pending or transient).
    Pending,
    Young,
    Newest,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::NotFactory => "not-factory",
            Reason::InAmiList => "in-ami-list",
            Reason::Public => "public",
            Reason::InUse => "in-use",
            Reason::Pending => "pending",
            Reason::Young => "young",
            Reason::Newest => "newest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Why {
    pub reason: Reason,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub image_id: String,
    pub region: String,
    pub name: String,
    /// `image/virt/arch/region`, or empty when the AMI lacks the factory's tags.
    pub family: String,
    pub created: String,
    pub delete: bool,
    /// Every reason that keeps it, first one counted; empty when deleted.
    pub kept_because: Vec<Why>,
    pub snapshots: Vec<String>,
}

/// Decides keep or delete for every image, with the reasons. Pure.
///
/// Newest per family: images in state `available` are ranked by creation
/// time, newest first; on equal times the greater image ID counts as newer,
/// so the choice never depends on the order EC2 lists them. An image whose
/// date did not parse is kept as young and not ranked.
pub fn select(images: &[Ami], in_use: &Needed, policy: &Policy) -> Vec<Decision> {
    let mut families: BTreeMap<String, Vec<&Ami>> = BTreeMap::new();
    for ami in images {
        if let Some(family) = ami.family() {
            // An unknown date cannot rank; the image is kept as young anyway.
            if is_available(ami) && ami.created.is_some() {
                families.entry(family).or_default().push(ami);
            }
        }
    }
    let mut rank: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for members in families.values_mut() {
        members.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        for (i, ami) in members.iter().enumerate() {
            rank.insert(ami.id.as_str(), (i + 1, members.len()));
        }
    }

    let mut decisions: Vec<Decision> = images
        .iter()
        .map(|ami| {
            let family = ami.family();
            let mut why = Vec::new();
            let mut keep = |reason, detail: String| why.push(Why { reason, detail });
            match &family {
                None => keep(Reason::NotFactory, "lacks the factory's tags".to_string()),
                Some(family) => {
                    if let Some(files) = policy.ami_list.get(&ami.id) {
                        keep(Reason::InAmiList, files.join(", "));
                    }
                    if ami.public && !policy.include_public {
                        keep(Reason::Public, "launchable by everyone".to_string());
                    }
                    if let Some(users) = in_use.get(&ami.id).filter(|_| !policy.include_in_use) {
                        keep(Reason::InUse, users.join(", "));
                    }
                    if ["pending", "transient"].contains(&ami.state.as_str()) {
                        keep(Reason::Pending, format!("{}: still being made", ami.state));
                    }
                    match ami.created {
                        None => keep(Reason::Young, "creation date unknown".to_string()),
                        Some(created) if policy.now.saturating_sub(created) < policy.min_age_secs => {
                            let age = format_duration(policy.now.saturating_sub(created));
                            keep(Reason::Young, format!("{age} old, under the minimum age"));
                        }
                        Some(_) => {}
                    }
                    if let Some(&(n, of)) = rank.get(ami.id.as_str()).filter(|(n, _)| *n <= policy.keep) {
                        keep(Reason::Newest, format!("#{n} of {of} in {family}"));
                    }
                }
            }
            why.sort_by_key(|w| w.reason);
            Decision {
                image_id: ami.id.clone(),
                region: ami.region.clone(),
                name: ami.name.clone(),
                family: family.unwrap_or_default(),
                created: ami.created.map(project::rfc3339).unwrap_or_else(|| "unknown".to_string()),
                delete: why.is_empty(),
                kept_because: why,
                snapshots: ami.snapshots.clone(),
            }
        })
        .collect();
    decisions.sort_by(|a, b| {
        (&a.region, &a.family, &b.created, &a.image_id).cmp(&(&b.region, &b.family, &a.created, &b.image_id))
    });
    decisions
}

fn is_available(ami: &Ami) -> bool {
    ami.state.is_empty() || ami.state == "available"
}

/// The images each AMI is kept for: instances that are not terminated, and
/// the default and latest versions of launch templates. Pure.
pub fn usage(instances: &[InstanceImage], templates: &[TemplateImage]) -> Needed {
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for instance in instances.iter().filter(|i| i.state != "terminated") {
        users
            .entry(instance.image_id.clone())
            .or_default()
            .insert(format!("instance {} ({})", instance.instance_id, instance.state));
    }
    for version in templates {
        // EC2 returns only the default and latest versions; one not default is the latest.
        let which = if version.is_default { "default" } else { "latest" };
        users
            .entry(version.image_id.clone())
            .or_default()
            .insert(format!("launch template {} v{} ({which})", version.template_name, version.version));
    }
    users.into_iter().map(|(image, set)| (image, set.into_iter().collect())).collect()
}

/// The snapshots of `deleted` images that no remaining image uses, each with
/// the image it belonged to. Pure.
pub fn snapshots_to_delete(images: &[Ami], deleted: &BTreeSet<String>) -> Vec<(String, String)> {
    let still_used: BTreeSet<&str> = images
        .iter()
        .filter(|ami| !deleted.contains(&ami.id))
        .flat_map(|ami| ami.snapshots.iter().map(String::as_str))
        .collect();
    let mut out: Vec<(String, String)> = images
        .iter()
        .filter(|ami| deleted.contains(&ami.id))
        .flat_map(|ami| ami.snapshots.iter().map(move |snap| (snap.clone(), ami.id.clone())))
        .filter(|(snap, _)| !still_used.contains(snap.as_str()))
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// `7d`, `12h`, `30m`, `45s`, `2w` or `0` -> seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("{text:?}: expected a number and a unit, e.g. 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("{text:?}: the unit must be one of s, m, h, d, w, e.g. 7d or 12h"),
    };
    number.checked_mul(unit_secs).with_context(|| format!("{text:?} is too long"))
}

/// A duration as its largest whole unit and the next: `7d`, `2d3h`, `5m10s`.
pub fn format_duration(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let Some(i) = units.iter().position(|(_, size)| secs >= *size) else {
        return "0s".to_string();
    };
    let (unit, size) = units[i];
    let rest = secs % size;
    match units.get(i + 1) {
        Some((next, next_size)) if rest >= *next_size => format!("{}{unit}{}{next}", secs / size, rest / next_size),
        _ => format!("{}{unit}", secs / size),
    }
}

/// Every AMI ID in an ami-list tree (`<image>/<region>/<slot>` files), with
/// the files that name it, and the regions the tree covers. A file that does
/// not parse is an error: a cleanup that cannot read the list must not run.
pub fn read_ami_list(root: &Path) -> Result<(Needed, BTreeSet<String>)> {
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut regions = BTreeSet::new();
    let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Dotfiles are ami_list::write's temporary files, or editors'.
            if !name.starts_with('.') {
                entries.push((name, entry.path()));
            }
        }
        entries.sort();
        Ok(entries)
    };
    for (image, image_dir) in list(root)?.into_iter().filter(|(_, p)| p.is_dir()) {
        for (region, region_dir) in list(&image_dir)?.into_iter().filter(|(_, p)| p.is_dir()) {
            regions.insert(region.clone());
            for (slot, file) in list(&region_dir)? {
                let content = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
                let id = ami_list::parse_id(&content).with_context(|| {
                    format!("{}: fix or remove it; the cleanup will not guess what it protects", file.display())
                })?;
                ids.entry(id).or_default().push(format!("{image}/{region}/{slot}"));
            }
        }
    }
    Ok((ids, regions))
}

/// What happened in one region.
#[derive(Debug, Serialize)]
pub struct RegionReport {
    pub region: String,
    pub decisions: Vec<Decision>,
    /// AMIs deregistered (with --yes).
    pub deregistered: Vec<String>,
    /// AMIs to delete that were left as they were because of Ctrl-C or SIGTERM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_started: Vec<String>,
    /// Snapshots deleted with --yes, or that would be without it.
    pub snapshots: Vec<SnapshotOf>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotOf {
    pub snapshot_id: String,
    pub image_id: String,
}

impl From<(String, String)> for SnapshotOf {
    fn from((snapshot_id, image_id): (String, String)) -> SnapshotOf {
        SnapshotOf { snapshot_id, image_id }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    /// AMIs deregistered, or that a dry run would deregister.
    pub deleted: usize,
    pub snapshots_deleted: usize,
    /// Factory AMIs kept, counted under their first reason.
    pub kept: BTreeMap<Reason, usize>,
    /// Own AMIs without the factory's tags: never candidates.
    pub not_factory: usize,
    /// AMIs to delete left as they were because of Ctrl-C or SIGTERM.
    pub not_started: usize,
    pub errors: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub as_of: String,
    pub min_age: String,
    pub keep: u32,
    pub include_in_use: bool,
    pub include_public: bool,
    pub ami_list: String,
    pub endpoint: Option<String>,
    pub regions: Vec<RegionReport>,
    pub summary: Summary,
}

/// aws CLI processes at once, across regions: well under EC2's request limits.
const AWS_CALLS_AT_ONCE: usize = 16;

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let now = project::now_secs();
    if let Some(as_of) = args.as_of.filter(|&t| t > now) {
        bail!(
            "--as-of {} is in the future, which would make AMIs look older than they are: give a past time",
            project::rfc3339(as_of)
        );
    }
    let ami_list_root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    // Deleting must not race a build that is about to record a new ID; a dry
    // run changes nothing, so it needs no lock.
    let _lock = if args.yes { Some(lock::acquire(&ami_list_root, "clean-old-amis")?) } else { None };
    // An emulator's default tree is missing until something is built there, and
    // its AMIs are no one's; anywhere else a missing tree is a mistake.
    let (listed, listed_regions) = if ami_list_root.is_dir() {
        read_ami_list(&ami_list_root)?
    } else if args.ami_list.is_none() && args.endpoint.is_emulator() {
        Default::default()
    } else {
        bail!(
            "ami-list {} does not exist, so nothing it should protect is known: \
             pass --ami-list DIR (an empty directory if no AMI is listed)",
            ami_list_root.display()
        );
    };
    let regions = if args.region.is_empty() {
        default_regions(listed_regions)?
    } else {
        let mut seen = BTreeSet::new();
        args.region.iter().filter(|r| seen.insert(r.as_str())).cloned().collect()
    };
    let policy = Policy {
        keep: args.keep as usize,
        min_age_secs: args.min_age,
        now: args.as_of.unwrap_or(now),
        include_in_use: args.include_in_use,
        include_public: args.include_public,
        ami_list: listed,
    };
    let connection = args.endpoint.connect(sh)?;

    eprintln!(
        "{} in {} regions: keeping the newest {} per family, anything under {} old and {} IDs from {}{}",
        if args.yes { "cleaning" } else { "dry run" },
        regions.len(),
        args.keep,
        format_duration(args.min_age),
        policy.ami_list.len(),
        ami_list_root.display(),
        connection.endpoint.as_deref().map(|e| format!("; EC2 at {e}")).unwrap_or_default(),
    );
    let printer = Printer::start(regions.len(), false);
    if args.yes {
        // Ctrl-C stops new deregistrations, never a started AMI's snapshot deletions.
        interrupt::install(printer.sender(), Work::Deletions)?;
    }
    // Every task waits on an aws CLI process, not on this one's CPU.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(AWS_CALLS_AT_ONCE)
        .build()
        .context("start the region thread pool")?;
    let worker_state = (sh.clone(), printer.sender());
    let reports: Vec<RegionReport> = pool.install(|| {
        regions
            .par_iter()
            .map_with(worker_state, |(sh, events), region| {
                clean_region(sh, &connection.aws, region, &policy, args.yes, events)
            })
            .collect()
    });
    printer.finish();

    let report = Report {
        dry_run: !args.yes,
        as_of: project::rfc3339(policy.now),
        min_age: format_duration(args.min_age),
        keep: args.keep,
        include_in_use: args.include_in_use,
        include_public: args.include_public,
        ami_list: ami_list_root.display().to_string(),
        endpoint: connection.endpoint.clone(),
        summary: summarize(&reports, args.yes),
        regions: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if interrupt::interrupted() {
        bail!(
            "interrupted: {} AMIs were deregistered with their snapshots, {} left as they were; \
             run the same command again to finish",
            report.summary.deleted,
            report.summary.not_started
        );
    }
    let failed: Vec<&str> = report.regions.iter().filter(|r| !r.errors.is_empty()).map(|r| r.region.as_str()).collect();
    if !failed.is_empty() {
        bail!("{} errors in {}, listed above; every other region went ahead", report.summary.errors, failed.join(", "));
    }
    Ok(())
}

/// The matrix's regions and the ami-list tree's: wherever the factory puts AMIs.
fn default_regions(listed_regions: BTreeSet<String>) -> Result<Vec<String>> {
    let matrix_file = project::matrix_file();
    let matrix = fs::read_to_string(&matrix_file)
        .with_context(|| format!("read {}", matrix_file.display()))
        .and_then(|text| Matrix::parse(&text))
        .with_context(|| format!("{}: fix it, or name regions with --region", matrix_file.display()))?;
    let mut regions = listed_regions;
    for preset in matrix.presets.values() {
        regions.insert(preset.build_region.clone());
        regions.extend(preset.regions.iter().cloned());
    }
    Ok(regions.into_iter().collect())
}

/// Lists, selects and (with `act`) deletes in one region. Never prints:
/// progress goes to `events`, and everything else into the report.
fn clean_region(
    sh: &Shell,
    aws: &Aws,
    region: &str,
    policy: &Policy,
    act: bool,
    events: &std::sync::mpsc::Sender<Event>,
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
    let doomed: Vec<&Decision> = report.decisions.iter().filter(|d| d.delete).collect();
    if act {
        // Every deregistration first: a snapshot cannot go while its image exists.
        let outcomes: Vec<Deregistration> = doomed
            .par_iter()
            .map_with(sh.clone(), |sh, decision| {
                let id = decision.image_id.clone();
                if interrupt::interrupted() {
                    return Deregistration::NotStarted(id);
                }
                match aws.deregister_image(sh, region, &id) {
                    Ok(()) => Deregistration::Done(id),
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
        let outcomes: Vec<Result<SnapshotOf, String>> = snapshots_to_delete(&images, &gone)
            .into_par_iter()
            .map_with(sh.clone(), |sh, (snapshot, image)| match aws.delete_snapshot(sh, region, &snapshot) {
                Ok(()) => Ok((snapshot, image).into()),
                Err(e) => Err(format!("delete snapshot {snapshot} of {image}: {e:#}")),
            })
            .collect();
        let (deleted, failed) = split(outcomes);
        report.snapshots = deleted;
        report.errors.extend(failed);
    } else {
        let would_go: BTreeSet<String> = doomed.iter().map(|d| d.image_id.clone()).collect();
        report.snapshots = snapshots_to_delete(&images, &would_go).into_iter().map(SnapshotOf::from).collect();
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

fn summarize(reports: &[RegionReport], act: bool) -> Summary {
    let mut summary =
        Summary { deleted: 0, snapshots_deleted: 0, kept: BTreeMap::new(), not_factory: 0, not_started: 0, errors: 0 };
    for report in reports {
        summary.not_started += report.not_started.len();
        summary.deleted +=
            if act { report.deregistered.len() } else { report.decisions.iter().filter(|d| d.delete).count() };
        summary.snapshots_deleted += report.snapshots.len();
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
pub fn render(report: &Report) -> String {
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
        out.push_str("no AMIs with the factory's tags in these regions\n");
        rows.clear();
    }
    for row in &rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for region in &report.regions {
        for SnapshotOf { snapshot_id: snapshot, image_id: image } in &region.snapshots {
            let verb = if report.dry_run { "would delete" } else { "deleted" };
            out.push_str(&format!("{verb} snapshot {snapshot} of {image} in {}\n", region.region));
        }
        for error in &region.errors {
            out.push_str(&format!("ERROR {}: {error}\n", region.region));
        }
        for image in &region.not_started {
            out.push_str(&format!("not deleted (interrupted) {image} in {}\n", region.region));
        }
    }
    let s = &report.summary;
    let kept: Vec<String> = s.kept.iter().map(|(reason, n)| format!("{} {n}", reason.label())).collect();
    out.push_str(&format!(
        "{}: {} AMIs and {} snapshots {}; kept {} ({}); {} untagged AMIs never touched; {} errors\n",
        if report.dry_run { "dry run" } else { "done" },
        s.deleted,
        s.snapshots_deleted,
        if report.dry_run { "would be deleted" } else { "deleted" },
        s.kept.values().sum::<usize>(),
        if kept.is_empty() { "none".to_string() } else { kept.join(", ") },
        s.not_factory,
        s.errors,
    ));
    if report.dry_run && s.deleted > 0 {
        out.push_str("nothing was changed: run again with --yes to delete them\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_795_566_509; // 2026-11-25T00:28:29Z

    fn factory(id: &str, days_old: u64) -> Ami {
        Ami {
            id: id.to_string(),
            region: "us-east-1".to_string(),
            name: format!("spark-packer-{id}"),
            state: "available".to_string(),
            public: false,
            created: Some(NOW - days_old * DAY),
            tags: [(MANAGED_BY.0, MANAGED_BY.1), (IMAGE_TAG, "base"), (VIRT_TAG, "hvm"), (ARCH_TAG, "x86_64")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            snapshots: vec![format!("snap-{id}")],
        }
    }

    fn policy() -> Policy {
        Policy { keep: 2, min_age_secs: 7 * DAY, now: NOW, ..Policy::default() }
    }

    /// Image ID -> its first reason to stay, or "delete".
    fn outcome(
        images: &[Ami],
        in_use: &BTreeMap<String, Vec<String>>,
        policy: &Policy,
    ) -> BTreeMap<String, &'static str> {
        select(images, in_use, policy)
            .into_iter()
            .map(|d| (d.image_id, d.kept_because.first().map_or("delete", |w| w.reason.label())))
            .collect()
    }

    fn expect(pairs: &[(&str, &'static str)]) -> BTreeMap<String, &'static str> {
        pairs.iter().map(|(id, what)| (id.to_string(), *what)).collect()
    }

    #[test]
    fn keeps_the_newest_n_per_family_and_deletes_older() {
        let images = [factory("a", 30), factory("b", 20), factory("c", 10), factory("d", 40)];
        let got = outcome(&images, &BTreeMap::new(), &policy());
        assert_eq!(got, expect(&[("a", "delete"), ("b", "newest"), ("c", "newest"), ("d", "delete")]));
        let keep_three = Policy { keep: 3, ..policy() };
        assert_eq!(outcome(&images, &BTreeMap::new(), &keep_three)["a"], "newest");
    }

    #[test]
    fn families_are_image_virt_arch_and_region() {
        let mut images = vec![factory("old", 30), factory("mid", 20), factory("new", 10)];
        type Change = fn(&mut Ami);
        let variants: [(&str, Change); 4] = [
            ("image", |a| drop(a.tags.insert(IMAGE_TAG.into(), "spark-3.5.3".into()))),
            ("virt", |a| drop(a.tags.insert(VIRT_TAG.into(), "pv".into()))),
            ("arch", |a| drop(a.tags.insert(ARCH_TAG.into(), "arm64".into()))),
            ("region", |a| a.region = "eu-west-1".into()),
        ];
        for (name, change) in variants {
            let mut other = factory(&format!("old-{name}"), 50);
            change(&mut other);
            images.push(other);
        }
        let got = outcome(&images, &BTreeMap::new(), &Policy { keep: 1, ..policy() });
        assert_eq!(got["old"], "delete");
        assert_eq!(got["mid"], "delete");
        assert_eq!(got["new"], "newest");
        for name in ["image", "virt", "arch", "region"] {
            assert_eq!(got[&format!("old-{name}")], "newest", "a different {name} is a different family");
        }
        let families: BTreeSet<String> =
            select(&images, &BTreeMap::new(), &policy()).into_iter().map(|d| d.family).collect();
        assert!(families.contains("base/hvm/x86_64/us-east-1"), "{families:?}");
        assert!(families.contains("base/hvm/x86_64/eu-west-1"), "{families:?}");
    }

    #[test]
    fn ties_in_creation_time_break_by_image_id_whatever_the_listing_order() {
        let same_time = ["ami-0003", "ami-0001", "ami-0002"].map(|id| factory(id, 30));
        let want = expect(&[("ami-0001", "delete"), ("ami-0002", "newest"), ("ami-0003", "newest")]);
        let mut images = same_time.to_vec();
        for _ in 0..3 {
            images.rotate_left(1);
            assert_eq!(outcome(&images, &BTreeMap::new(), &policy()), want);
            images.reverse();
            assert_eq!(outcome(&images, &BTreeMap::new(), &policy()), want);
        }
        // A later time wins over a greater ID.
        let mut later = factory("ami-0000", 30);
        later.created = Some(NOW - 30 * DAY + 1);
        images.push(later);
        let got = outcome(&images, &BTreeMap::new(), &policy());
        assert_eq!(got["ami-0000"], "newest");
        assert_eq!(got["ami-0003"], "newest");
        assert_eq!(got["ami-0002"], "delete");
    }

    #[test]
    fn untagged_or_partly_tagged_amis_are_never_candidates() {
        let mut untagged = factory("untagged", 400);
        untagged.tags.clear();
        let mut other_owner_tag = factory("other-factory", 400);
        other_owner_tag.tags.insert(MANAGED_BY.0.into(), "someone-else".into());
        let mut no_arch = factory("no-arch", 400);
        no_arch.tags.remove(ARCH_TAG);
        let mut empty_image = factory("empty-image", 400);
        empty_image.tags.insert(IMAGE_TAG.into(), String::new());
        let images = [untagged, other_owner_tag, no_arch, empty_image, factory("n1", 9), factory("n2", 8)];
        let got =
            outcome(&images, &BTreeMap::new(), &Policy { include_in_use: true, include_public: true, ..policy() });
        for id in ["untagged", "other-factory", "no-arch", "empty-image"] {
            assert_eq!(got[id], "not-factory", "{id}");
        }
    }

    #[test]
    fn ami_list_ids_are_kept_and_named() {
        let images = [factory("listed", 90), factory("n1", 9), factory("n2", 8)];
        let policy =
            Policy { ami_list: BTreeMap::from([("listed".into(), vec!["base/us-east-1/hvm".into()])]), ..policy() };
        let decisions = select(&images, &BTreeMap::new(), &policy);
        let listed = decisions.iter().find(|d| d.image_id == "listed").unwrap();
        assert!(!listed.delete);
        assert_eq!(listed.kept_because, vec![Why { reason: Reason::InAmiList, detail: "base/us-east-1/hvm".into() }]);
    }

    #[test]
    fn young_amis_are_kept_until_the_minimum_age() {
        let images = [factory("n1", 1), factory("n2", 2), factory("six", 6), factory("seven", 7), factory("eight", 8)];
        let got = outcome(&images, &BTreeMap::new(), &policy());
        assert_eq!(got["six"], "young");
        assert_eq!(got["seven"], "delete", "exactly the minimum age is old enough");
        assert_eq!(got["eight"], "delete");
        let mut just_under = factory("just-under", 7);
        just_under.created = Some(NOW - 7 * DAY + 1);
        assert_eq!(outcome(&[just_under], &BTreeMap::new(), &Policy { keep: 1, ..policy() })["just-under"], "young");
        let zero = Policy { min_age_secs: 0, ..policy() };
        assert_eq!(outcome(&images, &BTreeMap::new(), &zero)["six"], "delete");
        // A date that did not parse, or one after `now`, never counts as old.
        let mut unknown = factory("unknown", 100);
        unknown.created = None;
        let mut future = factory("future", 100);
        future.created = Some(NOW + DAY);
        let got = outcome(&[unknown, future, factory("n1", 9), factory("n2", 8)], &BTreeMap::new(), &policy());
        assert_eq!(got["unknown"], "young");
        assert_eq!(got["future"], "young");
    }

    #[test]
    fn in_use_amis_are_kept_unless_included() {
        let images = [factory("used", 90), factory("n1", 9), factory("n2", 8)];
        let in_use = BTreeMap::from([("used".to_string(), vec!["instance i-1 (running)".to_string()])]);
        let decisions = select(&images, &in_use, &policy());
        let used = decisions.iter().find(|d| d.image_id == "used").unwrap();
        assert_eq!(used.kept_because, vec![Why { reason: Reason::InUse, detail: "instance i-1 (running)".into() }]);
        assert_eq!(outcome(&images, &in_use, &Policy { include_in_use: true, ..policy() })["used"], "delete");
    }

    #[test]
    fn public_amis_are_kept_unless_included() {
        let mut public = factory("public", 90);
        public.public = true;
        let images = [public, factory("n1", 9), factory("n2", 8)];
        assert_eq!(outcome(&images, &BTreeMap::new(), &policy())["public"], "public");
        assert_eq!(
            outcome(&images, &BTreeMap::new(), &Policy { include_public: true, ..policy() })["public"],
            "delete"
        );
    }

    #[test]
    fn pending_amis_are_kept_and_do_not_count_as_newest() {
        let mut pending = factory("pending", 30);
        pending.state = "pending".into();
        let mut transient = factory("transient", 50);
        transient.state = "transient".into();
        assert_eq!(outcome(&[transient], &BTreeMap::new(), &policy())["transient"], "pending");
        let mut failed = factory("failed", 1);
        failed.state = "failed".into();
        let images = [pending, failed, factory("a", 20), factory("b", 25), factory("c", 40)];
        let got = outcome(&images, &BTreeMap::new(), &policy());
        assert_eq!(
            got,
            expect(&[("pending", "pending"), ("failed", "young"), ("a", "newest"), ("b", "newest"), ("c", "delete")])
        );
    }

    #[test]
    fn every_reason_is_listed_and_the_first_one_counts() {
        let mut all = factory("all", 1);
        all.public = true;
        let in_use = BTreeMap::from([("all".to_string(), vec!["launch template lt v2 (latest)".to_string()])]);
        let policy =
            Policy { ami_list: BTreeMap::from([("all".into(), vec!["base/us-east-1/hvm".into()])]), ..policy() };
        let decision = select(&[all], &in_use, &policy).remove(0);
        let reasons: Vec<Reason> = decision.kept_because.iter().map(|w| w.reason).collect();
        assert_eq!(reasons, [Reason::InAmiList, Reason::Public, Reason::InUse, Reason::Young, Reason::Newest]);
    }

    #[test]
    fn usage_counts_live_instances_and_default_or_latest_templates() {
        let instance = |id: &str, image: &str, state: &str| InstanceImage {
            instance_id: id.into(),
            image_id: image.into(),
            state: state.into(),
        };
        let template = |version, is_default, image: &str| TemplateImage {
            template_name: "workers".into(),
            version,
            is_default,
            image_id: image.into(),
        };
        let used = usage(
            &[
                instance("i-1", "ami-run", "running"),
                instance("i-2", "ami-stop", "stopped"),
                instance("i-3", "ami-dead", "terminated"),
            ],
            &[template(2, true, "ami-default"), template(3, false, "ami-latest")],
        );
        assert_eq!(
            used,
            BTreeMap::from([
                ("ami-default".to_string(), vec!["launch template workers v2 (default)".to_string()]),
                ("ami-latest".to_string(), vec!["launch template workers v3 (latest)".to_string()]),
                ("ami-run".to_string(), vec!["instance i-1 (running)".to_string()]),
                ("ami-stop".to_string(), vec!["instance i-2 (stopped)".to_string()]),
            ])
        );
    }

    #[test]
    fn snapshots_go_only_when_no_remaining_image_uses_them() {
        let mut shared_a = factory("a", 30);
        shared_a.snapshots = vec!["snap-own-a".into(), "snap-shared".into()];
        let mut shared_b = factory("b", 30);
        shared_b.snapshots = vec!["snap-shared".into()];
        let mut foreign = factory("foreign", 30);
        foreign.tags.clear();
        foreign.snapshots = vec!["snap-foreign".into(), "snap-c-and-foreign".into()];
        let mut c = factory("c", 30);
        c.snapshots = vec!["snap-c-and-foreign".into()];
        let images = [shared_a, shared_b, foreign, c];
        let only_a = snapshots_to_delete(&images, &BTreeSet::from(["a".to_string()]));
        assert_eq!(only_a, vec![("snap-own-a".to_string(), "a".to_string())]);
        let both = snapshots_to_delete(&images, &BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]));
        assert_eq!(
            both,
            vec![("snap-own-a".to_string(), "a".to_string()), ("snap-shared".to_string(), "a".to_string())],
            "a snapshot that an untagged image uses stays"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY);
        for bad in ["", "7", "d", "7 days", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(7 * DAY), "7d");
        assert_eq!(format_duration(DAY + 3 * 3600 + 5), "1d3h");
        assert_eq!(format_duration(310), "5m10s");
    }

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
            dry run: 1 AMIs and 1 snapshots would be deleted; kept 3 (in-ami-list 1, young 1, newest 1); 1 untagged AMIs never touched; 0 errors
            nothing was changed: run again with --yes to delete them
        "#]]
        .assert_eq(&render(&report));
    }

    fn fixture(name: &str) -> String {
        let path = project::root().join("xtask/tests/fixtures").join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn parses_recorded_moto_output() {
        // Recorded with the aws CLI from the sandbox venv against moto 5.2.1.
        let images =
            crate::aws::parse_images_with_snapshots(&fixture("clean-moto-5.2.1-describe-images.json")).unwrap();
        let amis: Vec<Ami> = images.iter().map(|i| Ami::from_aws("us-east-1", i)).collect();
        let summary: Vec<_> =
            amis.iter().map(|a| (a.id.as_str(), a.public, a.created, &a.snapshots[..], a.family())).collect();
        assert_eq!(
            summary,
            vec![
                (
                    "ami-c9f0b11adc6207c1b",
                    true,
                    Some(project::parse_time("2026-11-25T12:03:31Z").unwrap()),
                    &["snap-8cb44c8159a33af0a".to_string()][..],
                    Some("base/hvm/x86_64/us-east-1".to_string())
                ),
                (
                    "ami-cda23b038324d4d1f",
                    false,
                    Some(project::parse_time("2026-11-25T12:03:35Z").unwrap()),
                    &["snap-2f20eb0f1bcf1ddad".to_string()][..],
                    None
                ),
            ]
        );
        let instances =
            crate::aws::parse_instance_images(&fixture("clean-moto-5.2.1-describe-instances.json")).unwrap();
        let templates =
            crate::aws::parse_template_images(&fixture("clean-moto-5.2.1-describe-launch-template-versions.json"))
                .unwrap();
        let used = usage(&instances, &templates);
        assert_eq!(
            used,
            BTreeMap::from([
                (
                    "ami-0ed094fb1304fd857".to_string(),
                    vec![
                        "instance i-a12264a473ae3e09d (running)".to_string(),
                        "launch template lt1 v1 (default)".to_string()
                    ]
                ),
                ("ami-cda23b038324d4d1f".to_string(), vec!["launch template lt1 v2 (latest)".to_string()]),
            ]),
            "the terminated instance of ami-cda23b038324d4d1f does not count"
        );
    }

    #[test]
    fn reads_the_ami_list_tree_and_refuses_a_corrupt_one() {
        let root = project::target_dir().join("test-scratch").join(format!("clean-ami-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cell = |image: &str, region: &str, slot: &str| ami_list::Cell {
            image: image.into(),
            region: region.into(),
            slot: slot.into(),
        };
        ami_list::write(&root, &cell("base", "us-east-1", "hvm"), "ami-1234abcd").unwrap();
        ami_list::write(&root, &cell("spark-3.5.3", "eu-west-1", "pv"), "ami-1234abcd").unwrap();
        ami_list::write(&root, &cell("base", "us-west-2", "hvm-arm64"), "ami-0e972d2890378139a").unwrap();
        fs::write(root.join("README.md"), "the tree's own notes are not IDs").unwrap();
        fs::write(root.join("base/us-east-1/.hvm.tmp-1"), "half-written").unwrap();
        let (ids, regions) = read_ami_list(&root).unwrap();
        assert_eq!(
            ids,
            BTreeMap::from([
                ("ami-0e972d2890378139a".to_string(), vec!["base/us-west-2/hvm-arm64".to_string()]),
                (
                    "ami-1234abcd".to_string(),
                    vec!["base/us-east-1/hvm".to_string(), "spark-3.5.3/eu-west-1/pv".to_string()]
                ),
            ])
        );
        assert_eq!(regions, BTreeSet::from(["eu-west-1".into(), "us-east-1".into(), "us-west-2".into()]));
        fs::write(root.join("base/us-east-1/pv"), "garbage").unwrap();
        let err = format!("{:#}", read_ami_list(&root).unwrap_err());
        assert!(err.contains("base/us-east-1/pv") && err.contains("fix or remove it"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_checked_in_ami_list_reads() {
        read_ami_list(&project::checked_in_ami_list()).unwrap();
    }
}
