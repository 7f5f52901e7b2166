//! The cleanup's decision, pure: which images go, and why each other one stays.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::age::format_duration;
use crate::{
    aws::{ImageWithSnapshots, InstanceImage, TemplateImage},
    factory::{ARCH_TAG, IMAGE_TAG, MANAGED_BY, VIRT_TAG},
    project,
};

/// AMI ID -> who needs it: ami-list files, instances, launch template versions.
pub(crate) type Needed = BTreeMap<String, Vec<String>>;

/// One image as the selection sees it: the facts, no client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ami {
    pub(crate) id: String,
    pub(crate) region: String,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) public: bool,
    /// Seconds since the epoch; `None` when EC2's date did not parse.
    pub(crate) created: Option<u64>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) snapshots: Vec<String>,
}

impl Ami {
    pub(crate) fn from_aws(region: &str, image: &ImageWithSnapshots) -> Ami {
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
    pub(crate) fn family(&self) -> Option<String> {
        if self.tags.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
            return None;
        }
        let tag = |key| self.tags.get(key).filter(|v| !v.is_empty());
        Some(format!("{}/{}/{}/{}", tag(IMAGE_TAG)?, tag(VIRT_TAG)?, tag(ARCH_TAG)?, self.region))
    }
}

/// What the run keeps safe, besides the AMIs' own facts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    pub(crate) keep: usize,
    pub(crate) min_age_secs: u64,
    /// The moment ages are measured from, in seconds since the epoch.
    pub(crate) now: u64,
    pub(crate) include_in_use: bool,
    pub(crate) include_public: bool,
    /// AMI ID -> the ami-list files that name it.
    pub(crate) ami_list: Needed,
}

/// Why an AMI stays, named as in the JSON. In the order the summary counts
/// them: an AMI kept for several reasons counts under the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Reason {
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
    pub(crate) fn label(self) -> &'static str {
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
pub(crate) struct Why {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Decision {
    pub(crate) image_id: String,
    pub(crate) region: String,
    pub(crate) name: String,
    /// `image/virt/arch/region`, or empty when the AMI lacks the factory's tags.
    pub(crate) family: String,
    pub(crate) created: String,
    pub(crate) delete: bool,
    /// Every reason that keeps it, first one counted; empty when deleted.
    pub(crate) kept_because: Vec<Why>,
    pub(crate) snapshots: Vec<String>,
}

/// Decides keep or delete for every image, with the reasons. Pure.
///
/// Newest per family: images in state `available` are ranked by creation
/// time, newest first; on equal times the greater image ID counts as newer,
/// so the choice never depends on the order EC2 lists them. An image whose
/// date did not parse is kept as young and not ranked.
pub(crate) fn select(images: &[Ami], in_use: &Needed, policy: &Policy) -> Vec<Decision> {
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
pub(crate) fn usage(instances: &[InstanceImage], templates: &[TemplateImage]) -> Needed {
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
pub(crate) fn snapshots_to_delete(images: &[Ami], deleted: &BTreeSet<String>) -> Vec<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean_old_amis::testing::{factory, fixture, policy, DAY, NOW};

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
}
