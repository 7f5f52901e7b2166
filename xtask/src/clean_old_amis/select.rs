//! The cleanup's decision, pure: which images go, and why each other one stays.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::age::format_duration;
use crate::{
    aws::{ImageWithSnapshots, InstanceImage, LaunchConfigurationImage, LaunchPermission, TemplateImage},
    factory::{self, Stamp},
    project,
};

/// AMI ID -> who needs it: ami-list files, instances, launch templates and
/// launch configurations.
pub(crate) type UsedBy = BTreeMap<String, Vec<String>>;

/// One image as the selection sees it: the facts, no client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ami {
    pub(crate) id: String,
    pub(crate) region: String,
    pub(crate) name: String,
    pub(crate) state: String,
    /// EC2's `Public` flag, or a launch permission for group `all`.
    pub(crate) public: bool,
    /// Accounts, organizations and OUs it is shared with by launch permission.
    pub(crate) shared_with: Vec<String>,
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
            shared_with: Vec::new(),
            created: project::parse_time(&i.creation_date).ok(),
            tags: i.tags().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            snapshots: image.snapshot_ids(),
        }
    }

    /// Who made it, if the factory did: the full tag set and the factory's name.
    pub(crate) fn stamp(&self) -> Result<Stamp, String> {
        factory::check_ami(&self.name, &self.tags)
    }

    /// `image/virt/arch/region` if the factory made it.
    pub(crate) fn family(&self) -> Option<String> {
        self.stamp().ok().map(|stamp| stamp.family(&self.region))
    }

    /// Adds what its `launchPermission` attribute says.
    ///
    /// `Group: all` counts as public, as EC2's own flag does: the seed
    /// published every AMI (`--public`), and anyone may have launched it or
    /// written its ID into their own templates, where this account cannot
    /// see. So it stays like an AMI in use, unless `--include-public` says
    /// otherwise. Accounts, organizations and OUs are named users: they stay
    /// with no flag to override, until someone removes the permission.
    pub(crate) fn add_launch_permissions(&mut self, permissions: &[LaunchPermission]) {
        for p in permissions {
            if p.group.as_deref() == Some("all") {
                self.public = true;
            }
            let named = [
                ("account", &p.user_id),
                ("organization", &p.organization_arn),
                ("organizational unit", &p.organizational_unit_arn),
            ];
            for (what, id) in named {
                if let Some(id) = id {
                    self.shared_with.push(format!("{what} {id}"));
                }
            }
        }
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
    pub(crate) ami_list: UsedBy,
}

/// Why an AMI stays, named as in the JSON. In the order the summary counts
/// them: an AMI kept for several reasons counts under the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Reason {
    /// Not the factory's (see `factory::check_ami`): never a candidate.
    NotFactory,
    InAmiList,
    Public,
    /// Shared with an account, organization or OU by launch permission.
    Shared,
    InUse,
    /// Still being made (state pending or transient).
    Pending,
    /// Someone disabled it: a person's decision, not the factory's.
    Disabled,
    Young,
    Newest,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::NotFactory => "not-factory",
            Reason::InAmiList => "in-ami-list",
            Reason::Public => "public",
            Reason::Shared => "shared",
            Reason::InUse => "in-use",
            Reason::Pending => "pending",
            Reason::Disabled => "disabled",
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
    /// `image/virt/arch/region`, or empty when the factory did not make it.
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
pub(crate) fn select(images: &[Ami], in_use: &UsedBy, policy: &Policy) -> Vec<Decision> {
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
            let why = match (&family, ami.stamp()) {
                (Some(family), _) => reasons(ami, family, rank.get(ami.id.as_str()).copied(), in_use, policy),
                (None, stamp) => {
                    vec![Why { reason: Reason::NotFactory, detail: stamp.err().unwrap_or_default() }]
                }
            };
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

/// Every reason a factory AMI stays, in the order they count; empty: it goes.
fn reasons(ami: &Ami, family: &str, rank: Option<(usize, usize)>, in_use: &UsedBy, policy: &Policy) -> Vec<Why> {
    let mut why = Vec::new();
    let mut keep = |reason, detail: String| why.push(Why { reason, detail });
    if let Some(files) = policy.ami_list.get(&ami.id) {
        keep(Reason::InAmiList, files.join(", "));
    }
    if ami.public && !policy.include_public {
        keep(Reason::Public, "launchable by everyone".to_string());
    }
    if !ami.shared_with.is_empty() {
        keep(Reason::Shared, format!("launch permission for {}", ami.shared_with.join(", ")));
    }
    if let Some(users) = in_use.get(&ami.id).filter(|_| !policy.include_in_use) {
        keep(Reason::InUse, users.join(", "));
    }
    if ["pending", "transient"].contains(&ami.state.as_str()) {
        keep(Reason::Pending, format!("{}: still being made", ami.state));
    }
    if ami.state == "disabled" {
        keep(Reason::Disabled, "enable it to let the cleanup judge it, or deregister it by hand".to_string());
    }
    match ami.created {
        None => keep(Reason::Young, "creation date unknown".to_string()),
        Some(created) if policy.now.saturating_sub(created) < policy.min_age_secs => {
            let age = format_duration(policy.now.saturating_sub(created));
            keep(Reason::Young, format!("{age} old, under the minimum age"));
        }
        Some(_) => {}
    }
    if let Some((n, of)) = rank.filter(|(n, _)| *n <= policy.keep) {
        keep(Reason::Newest, format!("#{n} of {of} in {family}"));
    }
    why.sort_by_key(|w| w.reason);
    why
}

fn is_available(ami: &Ami) -> bool {
    ami.state.is_empty() || ami.state == "available"
}

/// The images each AMI is kept for: instances that are not terminated, the
/// default and latest versions of launch templates, and Auto Scaling launch
/// configurations (which cannot change: each one names its image for good). Pure.
pub(crate) fn usage(
    instances: &[InstanceImage],
    templates: &[TemplateImage],
    configurations: &[LaunchConfigurationImage],
) -> UsedBy {
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
    for configuration in configurations {
        users
            .entry(configuration.image_id.clone())
            .or_default()
            .insert(format!("launch configuration {}", configuration.launch_configuration_name));
    }
    users.into_iter().map(|(image, set)| (image, set.into_iter().collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clean_old_amis::testing::{factory, fixture, policy, set_family, DAY, NOW},
        factory::{ARCH_TAG, CREATED_AT_TAG, IMAGE_TAG, MANAGED_BY},
    };

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
            ("image", |a| set_family(a, "spark-3.5.3", "hvm", "x86_64")),
            ("virt", |a| set_family(a, "base", "pv", "x86_64")),
            ("arch", |a| set_family(a, "base", "hvm", "arm64")),
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
    fn amis_the_factory_did_not_make_are_never_candidates() {
        let mut untagged = factory("untagged", 400);
        untagged.tags.clear();
        let mut other_owner_tag = factory("other-factory", 400);
        other_owner_tag.tags.insert(MANAGED_BY.0.into(), "someone-else".into());
        let mut no_arch = factory("no-arch", 400);
        no_arch.tags.remove(ARCH_TAG);
        let mut empty_image = factory("empty-image", 400);
        empty_image.tags.insert(IMAGE_TAG.into(), String::new());
        // Repro 3: made by hand, tagged only managed-by=spark-packer.
        let mut managed_by_only = factory("managed-by-only", 400);
        managed_by_only.tags = BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())]);
        let mut renamed = factory("renamed", 400);
        renamed.name = "my-copy-of-base".into();
        let mut bad_created_at = factory("bad-created-at", 400);
        bad_created_at.tags.insert(CREATED_AT_TAG.into(), "last tuesday".into());
        let images = [
            untagged,
            other_owner_tag,
            no_arch,
            empty_image,
            managed_by_only,
            renamed,
            bad_created_at,
            factory("n1", 9),
            factory("n2", 8),
        ];
        let lax = Policy { include_in_use: true, include_public: true, keep: 1, min_age_secs: 0, ..policy() };
        let decisions = select(&images, &BTreeMap::new(), &lax);
        for d in decisions.iter().filter(|d| !d.image_id.starts_with('n')) {
            assert!(!d.delete, "{}", d.image_id);
            assert_eq!(d.kept_because.len(), 1, "{d:?}");
            assert_eq!(d.kept_because[0].reason, Reason::NotFactory, "{d:?}");
            assert_eq!(d.family, "", "{d:?}");
        }
        let managed_by_only = decisions.iter().find(|d| d.image_id == "managed-by-only").unwrap();
        assert!(managed_by_only.kept_because[0].detail.contains("no spark-packer:run-id tag"), "{managed_by_only:?}");
        let got = outcome(&images, &BTreeMap::new(), &lax);
        assert_eq!((got["n1"], got["n2"]), ("delete", "newest"), "the factory's own still go");
    }

    #[test]
    fn shared_amis_are_kept_and_group_all_counts_as_public() {
        let permission = |json: &str| crate::aws::parse_launch_permissions(json).unwrap();
        let mut shared = factory("shared", 90);
        shared.add_launch_permissions(&permission(r#"{"LaunchPermissions": [{"UserId": "111122223333"}]}"#));
        let mut org = factory("org", 90);
        org.add_launch_permissions(&permission(
            r#"{"LaunchPermissions": [{"OrganizationArn": "arn:aws:organizations::1:organization/o-1"},
                {"OrganizationalUnitArn": "arn:aws:organizations::1:ou/o-1/ou-1"}]}"#,
        ));
        let mut group_all = factory("group-all", 90);
        group_all.add_launch_permissions(&permission(r#"{"LaunchPermissions": [{"Group": "all"}]}"#));
        let mut nobody = factory("nobody", 90);
        nobody.add_launch_permissions(&permission(r#"{"LaunchPermissions": []}"#));
        let images = [shared, org, group_all, nobody, factory("n1", 9), factory("n2", 8)];
        let decisions = select(&images, &BTreeMap::new(), &policy());
        let why = |id: &str| decisions.iter().find(|d| d.image_id == id).unwrap().kept_because.clone();
        assert_eq!(
            why("shared"),
            vec![Why { reason: Reason::Shared, detail: "launch permission for account 111122223333".into() }]
        );
        assert_eq!(
            why("org")[0].detail,
            "launch permission for organization arn:aws:organizations::1:organization/o-1, \
             organizational unit arn:aws:organizations::1:ou/o-1/ou-1"
        );
        assert_eq!(why("group-all")[0].reason, Reason::Public);
        assert_eq!(why("nobody"), vec![]);
        // Neither flag lets a shared AMI go; --include-public lets a public one go.
        let everything = Policy { include_in_use: true, include_public: true, ..policy() };
        let got = outcome(&images, &BTreeMap::new(), &everything);
        assert_eq!((got["shared"], got["org"], got["group-all"]), ("shared", "shared", "delete"));
    }

    #[test]
    fn disabled_amis_are_kept() {
        let mut disabled = factory("disabled", 90);
        disabled.state = "disabled".into();
        let got = outcome(&[disabled, factory("n1", 9), factory("n2", 8)], &BTreeMap::new(), &policy());
        assert_eq!(got["disabled"], "disabled");
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
        all.shared_with = vec!["account 111122223333".into()];
        let in_use = BTreeMap::from([("all".to_string(), vec!["launch template lt v2 (latest)".to_string()])]);
        let policy =
            Policy { ami_list: BTreeMap::from([("all".into(), vec!["base/us-east-1/hvm".into()])]), ..policy() };
        let decision = select(&[all], &in_use, &policy).remove(0);
        let reasons: Vec<Reason> = decision.kept_because.iter().map(|w| w.reason).collect();
        assert_eq!(
            reasons,
            [Reason::InAmiList, Reason::Public, Reason::Shared, Reason::InUse, Reason::Young, Reason::Newest]
        );
    }

    #[test]
    fn usage_counts_live_instances_latest_templates_and_launch_configurations() {
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
            &[LaunchConfigurationImage {
                launch_configuration_name: "old-workers".into(),
                image_id: "ami-configured".into(),
            }],
        );
        assert_eq!(
            used,
            BTreeMap::from([
                ("ami-configured".to_string(), vec!["launch configuration old-workers".to_string()]),
                ("ami-default".to_string(), vec!["launch template workers v2 (default)".to_string()]),
                ("ami-latest".to_string(), vec!["launch template workers v3 (latest)".to_string()]),
                ("ami-run".to_string(), vec!["instance i-1 (running)".to_string()]),
                ("ami-stop".to_string(), vec!["instance i-2 (stopped)".to_string()]),
            ])
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
                    None // four tags and the name "foo": not the factory's
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
        let configurations = crate::aws::parse_launch_configuration_images(&fixture(
            "clean-moto-5.2.1-describe-launch-configurations.json",
        ))
        .unwrap();
        let used = usage(&instances, &templates, &configurations);
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
                ("ami-bf62202cd7c06295e".to_string(), vec!["launch configuration lc1".to_string()]),
                ("ami-cda23b038324d4d1f".to_string(), vec!["launch template lt1 v2 (latest)".to_string()]),
            ]),
            "the terminated instance of ami-cda23b038324d4d1f does not count"
        );
    }

    #[test]
    fn parses_recorded_moto_output_of_a_factory_build() {
        // Recorded against moto 5.2.1: a --no-provision build-amis run
        // (ami-75aa689cfad8de2ab), a CreateImage by hand, a register-image.
        let images =
            crate::aws::parse_images_with_snapshots(&fixture("clean-moto-5.2.1-describe-images-built.json")).unwrap();
        let mut amis: Vec<Ami> = images.iter().map(|i| Ami::from_aws("us-east-1", i)).collect();
        let families: Vec<(&str, Option<String>)> = amis.iter().map(|a| (a.id.as_str(), a.family())).collect();
        assert_eq!(
            families,
            vec![
                ("ami-bf62202cd7c06295e", None),
                ("ami-565afe8348f1ccda9", None),
                ("ami-75aa689cfad8de2ab", Some("base/hvm/x86_64/us-east-1".to_string())),
            ]
        );
        let permissions =
            crate::aws::parse_launch_permissions(&fixture("clean-moto-5.2.1-describe-image-attribute.json")).unwrap();
        amis[2].add_launch_permissions(&permissions);
        assert!(amis[2].public);
        assert_eq!(
            amis[2].shared_with,
            ["account 111122223333", "organization arn:aws:organizations::123456789012:organization/o-abc"]
        );
    }
}
