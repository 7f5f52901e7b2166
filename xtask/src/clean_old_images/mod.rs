//! `cargo xtask clean-old-images`: delete superseded container images that
//! `build-amis --platform docker` pushed, by the same keep and age rules as
//! clean-old-amis, and never one that images-list records. List, then
//! `select::select` (pure) decides, then only with --yes does anything go.

mod select;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use self::select::{Decision, FactoryImage, Policy, Tagged};
use crate::{
    age::{format_duration, parse_duration},
    images_list, local, project,
    registry::{Manifest, Registry},
};

/// Delete superseded container images that build-amis --platform docker pushed.
///
/// A candidate is a tag under the namespace whose image carries the factory's
/// labels (managed-by=spark-packer, spark-packer:created-at, :image, :os,
/// :architecture). Always kept: every digest images-list records, the newest
/// --keep per family (image x OS x architecture; and each image x OS's
/// multi-architecture lists), anything younger than --min-age, any digest a
/// kept tag or manifest list needs, and every tag that is not the factory's.
///
/// Dry run by default; --yes deletes each chosen manifest by digest (the
/// registry API's DELETE). The registry frees the layers when it collects
/// garbage; with --local that runs right after (docker-registry
/// garbage-collect).
///
/// It reaches registries that serve the v2 API without a token: the
/// sandbox's (--local) and self-hosted ones (--registry HOST:PORT/NAMESPACE).
/// ECR, GHCR and Docker Hub need tokens: use their lifecycle or retention
/// settings there.
///
/// Example: `cargo xtask clean-old-images --local --keep 1 --min-age 0s`,
/// read it, then again with --yes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sandbox's registry (target/local/registry), started for the run.
    #[arg(long, conflicts_with = "registry")]
    pub local: bool,

    /// A registry and namespace, e.g. registry.internal:5000/spark-packer
    /// (https; http for a loopback address).
    #[arg(long, value_name = "HOST/NAMESPACE")]
    pub registry: Option<String>,

    /// Keep this many newest images per family, whatever their age. At least 1.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// Keep images younger than this: a number and a unit (s, m, h, d, w).
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_duration)]
    pub min_age: u64,

    /// The images-list tree whose digests are never deleted. Default: the
    /// checked-in images-list/; target/local/images-list with --local.
    #[arg(long, value_name = "DIR")]
    pub images_list: Option<PathBuf>,

    /// Delete. Without it, only say what would go and why the rest stays.
    #[arg(long)]
    pub yes: bool,

    /// Print the decisions as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let images_list_root = args.images_list.clone().unwrap_or_else(|| {
        if args.local {
            images_list::local()
        } else {
            images_list::checked_in()
        }
    });
    // Read first: a tree that cannot be read could be protecting anything.
    let recorded = recorded_digests(&images_list_root)?;
    let (registry, namespace, mut sandbox) = if args.local {
        let sandbox = local::docker::SandboxRegistry::start(sh)?;
        (Registry { base_url: format!("http://{}", sandbox.address) }, "spark-packer".to_string(), Some(sandbox))
    } else {
        let given = args.registry.as_deref().context("name the registry: --registry HOST/NAMESPACE, or --local")?;
        let (host, namespace) =
            given.split_once('/').context("--registry wants HOST/NAMESPACE, e.g. registry:5000/spark-packer")?;
        let loopback = host.starts_with("127.") || host.starts_with("localhost");
        let scheme = if loopback { "http" } else { "https" };
        (Registry { base_url: format!("{scheme}://{host}") }, namespace.trim_end_matches('/').to_string(), None)
    };
    let tags = list(sh, &registry, &namespace)?;
    let policy = Policy { keep: args.keep as usize, min_age_secs: args.min_age, now: project::now_secs() };
    let decisions = select::select(&tags, &recorded, &policy);
    let deleted = if args.yes { delete(sh, &registry, &decisions) } else { Vec::new() };
    if let Some(sandbox) = sandbox.as_mut() {
        // Also after a run that deleted nothing: an earlier one may have
        // stopped before its collection.
        sandbox.collect_garbage = args.yes;
    }
    drop(sandbox); // stops the registry, then collects its garbage
    report(&decisions, args, &deleted)
}

/// The digests of every image and list images-list records; an error when
/// any file cannot be read, since it could be protecting anything.
fn recorded_digests(root: &Path) -> Result<BTreeSet<String>> {
    let tree = images_list::check_tree(root)?;
    if !tree.problems.is_empty() {
        let named: Vec<String> = tree.problems.iter().map(|(path, why)| format!("{path}: {why}")).collect();
        bail!("images-list cannot be read whole, so nothing is deleted: {}", named.join("; "));
    }
    Ok(tree.references.iter().filter_map(|r| r.split_once('@')).map(|(_, digest)| digest.to_string()).collect())
}

/// Every tag under `namespace`, with what the factory's labels say of it.
fn list(sh: &Shell, registry: &Registry, namespace: &str) -> Result<Vec<Tagged>> {
    let mut tagged = Vec::new();
    let prefix = format!("{namespace}/");
    for repository in registry.repositories(sh)?.into_iter().filter(|r| r.starts_with(&prefix)) {
        let mut images: BTreeMap<String, Option<FactoryImage>> = BTreeMap::new();
        for tag in registry.tags(sh, &repository)? {
            let (digest, manifest) = registry.manifest(sh, &repository, &tag)?;
            let (factory, members) = match manifest {
                Manifest::Image { config } => (factory_image(&registry.labels(sh, &repository, &config)?), Vec::new()),
                Manifest::List { manifests } => {
                    let mut newest: Option<FactoryImage> = None;
                    for member in &manifests {
                        let info = match images.get(member) {
                            Some(info) => info.clone(),
                            None => match registry.manifest(sh, &repository, member)? {
                                (_, Manifest::Image { config }) => {
                                    factory_image(&registry.labels(sh, &repository, &config)?)
                                }
                                _ => None,
                            },
                        };
                        newest = match (newest, info) {
                            (Some(a), Some(b)) => Some(if b.created > a.created { b } else { a }),
                            (a, b) => a.or(b),
                        };
                    }
                    let list_family = newest.map(|f| FactoryImage {
                        family: format!("{}/multi-arch", f.family.rsplit_once('/').map_or("", |(head, _)| head)),
                        created: f.created,
                    });
                    (list_family, manifests)
                }
            };
            images.insert(digest.clone(), factory.clone());
            tagged.push(Tagged { repository: repository.clone(), tag, digest, factory, members });
        }
    }
    Ok(tagged)
}

/// The factory's facts from an image's labels; none unless all are there.
fn factory_image(labels: &BTreeMap<String, String>) -> Option<FactoryImage> {
    if labels.get("managed-by").map(String::as_str) != Some("spark-packer") {
        return None;
    }
    let label = |key: &str| labels.get(&format!("spark-packer:{key}")).filter(|v| !v.is_empty());
    let created = project::parse_time(label("created-at")?).ok()?;
    let family = format!("{}/{}/{}", label("image")?, label("os")?, label("architecture")?);
    Some(FactoryImage { family, created })
}

/// Deletes each chosen digest once; returns what went, or why not.
fn delete(sh: &Shell, registry: &Registry, decisions: &[Decision]) -> Vec<(String, Result<(), String>)> {
    let chosen: BTreeSet<(&str, &str)> =
        decisions.iter().filter(|d| d.delete).map(|d| (d.repository.as_str(), d.digest.as_str())).collect();
    chosen
        .into_iter()
        .map(|(repository, digest)| {
            let done = registry.delete(sh, repository, digest).map_err(|e| format!("{e:#}"));
            (format!("{repository}@{digest}"), done)
        })
        .collect()
}

fn report(decisions: &[Decision], args: &Args, deleted: &[(String, Result<(), String>)]) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(decisions)?);
    } else {
        for d in decisions {
            println!("{}:{}  {}", d.repository, d.tag, d.why);
        }
    }
    let going = decisions.iter().filter(|d| d.delete).count();
    let rules = format!("--keep {}, --min-age {}", args.keep, format_duration(args.min_age));
    if !args.yes {
        eprintln!("{} tags, {going} would go ({rules}); dry run: add --yes to delete", decisions.len());
        return Ok(());
    }
    let failed: Vec<String> =
        deleted.iter().filter_map(|(what, done)| done.as_ref().err().map(|e| format!("{what}: {e}"))).collect();
    eprintln!("{} tags; deleted {} manifests ({rules})", decisions.len(), deleted.len() - failed.len());
    if !failed.is_empty() {
        bail!("{} deletions failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}
