//! What EC2 holds before a run builds anything: the source AMI each build's
//! filter resolves to, and the factory's images in every region the builds
//! record. A few read-only calls per region; from them, which builds are
//! current and can be skipped, and why the others must be built.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Result;
use rayon::prelude::*;
use xshell::Shell;

use super::inputs::{Inputs, DIGESTS_TAG, INPUTS_TAG};
use crate::{
    ami_list::{self, Cell},
    aws::Image,
    matrix::Build,
    site::Site,
};

/// How many EC2 calls the survey makes at once.
const EC2_CALLS_AT_ONCE: usize = 16;

pub(crate) struct Survey {
    /// (launch region, build name) -> the source AMI its filter resolves
    /// to, if any: its ID, and its name, which pins Packer's filter to it.
    sources: BTreeMap<(String, String), Option<(String, String)>>,
    /// Region -> the factory's images there that ami-list records, by ID.
    /// Empty when not listed (--force, or a sandbox whose emulator starts empty).
    images: BTreeMap<String, BTreeMap<String, Image>>,
}

/// Whether a build's AMIs are all current.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Currency {
    /// Region -> the recorded AMI, current in every region of the build.
    Current(BTreeMap<String, String>),
    /// Current where recorded, but missing in other regions (one added to
    /// the preset, or an AMI deregistered by hand): copy it there.
    Partial { current: BTreeMap<String, String>, missing: Vec<String>, reasons: Vec<String> },
    /// Why it must be built, one reason per region at most.
    Stale(Vec<String>),
}

/// A source filter as Packer resolves it: launch region, name pattern,
/// owners, architecture.
type SourceFilter<'a> = (&'a str, &'a str, &'a [String], &'a str);

fn source_filter(b: &Build) -> SourceFilter<'_> {
    (b.region.as_str(), b.source_ami.name.as_str(), b.source_ami.owners.as_slice(), b.arch.as_str())
}

impl Survey {
    /// Resolves every build's source filter in its launch region, and, given
    /// the ami-list tree, looks up the factory images it records for these
    /// builds, one call per region.
    pub fn take(sh: &Shell, site: &Site, builds: &[Build], list_images: Option<&Path>) -> Result<Survey> {
        // Each call is a process (curl, or the aws CLI) waiting on the
        // network, not on our cores: run them all at once rather than two at a time.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(EC2_CALLS_AT_ONCE).build()?;
        let sh = sh.clone(); // a Shell is Send, not Sync
        pool.install(move || Self::take_all(&sh, site, builds, list_images))
    }

    fn take_all(sh: &Shell, site: &Site, builds: &[Build], list_images: Option<&Path>) -> Result<Survey> {
        // One call per distinct filter and region: base and Spark share theirs.
        let filters: BTreeSet<SourceFilter> = builds.iter().map(source_filter).collect();
        let resolved: BTreeMap<_, Option<(String, String)>> = filters
            .into_par_iter()
            .map_with(sh.clone(), |sh, filter @ (region, name, owners, arch)| {
                let found = site.aws().newest_image(sh, region, name, owners, arch);
                // A filter that matches nothing fails its build in Packer, with Packer's words.
                (filter, found.ok().flatten().map(|i| (i.image_id, i.name)))
            })
            .collect();
        let sources = builds.iter().map(|b| ((b.region.clone(), b.name.clone()), resolved[&source_filter(b)].clone()));
        // Only the IDs ami-list records, and only where it records any: the
        // listing then stays as small as the matrix however many images
        // earlier runs left in the region.
        let mut recorded: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (root, b) in list_images.iter().flat_map(|root| builds.iter().map(move |b| (root, b))) {
            for region in b.regions() {
                let cell = Cell { image: b.image.name.clone(), region: region.to_string(), slot: b.slot() };
                if let Ok(Some(id)) = ami_list::read(root, &cell) {
                    recorded.entry(region).or_default().insert(id);
                }
            }
        }
        let images = recorded
            .par_iter()
            .map_with(sh.clone(), |sh, (region, ids)| -> Result<(String, BTreeMap<String, Image>)> {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let found = site.aws().factory_images_by_id(sh, region, &ids)?;
                Ok((region.to_string(), found.into_iter().map(|i| (i.image_id.clone(), i)).collect()))
            })
            .collect::<Result<_>>()?;
        Ok(Survey { sources: sources.collect(), images })
    }

    /// A factory image the survey listed.
    pub fn image(&self, region: &str, id: &str) -> Option<&Image> {
        self.images.get(region)?.get(id)
    }

    /// The source AMI `build`'s filter resolves to in its launch region.
    pub fn source(&self, build: &Build) -> &str {
        self.resolved(build).map_or("unresolved", |(id, _)| id.as_str())
    }

    /// That source AMI's name, if it resolved: Packer's filter names it
    /// exactly, so the build starts from the image its input hash records,
    /// even if a newer one is published while the run goes on.
    pub fn source_name(&self, build: &Build) -> Option<&str> {
        self.resolved(build).map(|(_, name)| name.as_str())
    }

    fn resolved(&self, build: &Build) -> Option<&(String, String)> {
        self.sources.get(&(build.region.clone(), build.name.clone()))?.as_ref()
    }

    /// Current when every region's recorded AMI exists, is available, is the
    /// factory's and carries the same input hash.
    pub fn currency(&self, build: &Build, ami_list_root: &Path, inputs: &Inputs) -> Currency {
        let hash = inputs.hash();
        let mut current = BTreeMap::new();
        let mut reasons = Vec::new();
        // Regions with no usable AMI at all, which a copy can fill.
        let mut missing = Vec::new();
        for region in build.regions() {
            let cell = Cell { image: build.image.name.clone(), region: region.to_string(), slot: build.slot() };
            let at = cell.relative_path().display().to_string();
            let recorded = match ami_list::read(ami_list_root, &cell) {
                Ok(Some(id)) => id,
                Ok(None) => {
                    reasons.push(format!("{at}: nothing recorded"));
                    missing.push(region.to_string());
                    continue;
                }
                Err(e) => {
                    reasons.push(format!("{at}: {e:#}"));
                    continue;
                }
            };
            let image = self.images.get(region).and_then(|images| images.get(&recorded));
            let tags = image.map(Image::tags).unwrap_or_default();
            match image {
                None => {
                    reasons.push(format!("{at}: {recorded} is not a factory image in {region}"));
                    missing.push(region.to_string());
                }
                Some(image) if image.state != "available" => {
                    reasons.push(format!("{at}: {recorded} is {}", image.state))
                }
                Some(_) if tags.get(INPUTS_TAG) == Some(&hash.as_str()) => {
                    current.insert(region.to_string(), recorded);
                }
                Some(_) => {
                    let changes = match tags.get(DIGESTS_TAG) {
                        Some(before) => inputs.changes_since(before),
                        None => vec!["built before input hashes".to_string()],
                    };
                    reasons.push(format!("{at}: {}", changes.join(", ")));
                }
            }
        }
        if reasons.is_empty() {
            Currency::Current(current)
        } else if !current.is_empty() && missing.len() == reasons.len() {
            Currency::Partial { current, missing, reasons }
        } else {
            // The same change shows in every region; say it once.
            reasons.dedup_by(|a, b| a.split_once(": ").map(|x| x.1) == b.split_once(": ").map(|x| x.1));
            Currency::Stale(reasons)
        }
    }
}
