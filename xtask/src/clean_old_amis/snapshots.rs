//! Which snapshots go, pure: those of the AMIs this run deregisters, and the
//! factory's orphans, whose AMI is already gone (a run killed between
//! deregistering and deleting leaves them; the next run finishes the job).

use std::collections::BTreeSet;

use super::select::{Ami, Policy};
use crate::{aws, factory, project};

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

/// A snapshot as the orphan check sees it: the facts, no client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) id: String,
    pub(crate) state: String,
    pub(crate) description: String,
    /// Seconds since the epoch; `None` when EC2's date did not parse.
    pub(crate) started: Option<u64>,
    pub(crate) tags: std::collections::BTreeMap<String, String>,
}

impl Snapshot {
    pub(crate) fn from_aws(snapshot: &aws::Snapshot) -> Snapshot {
        Snapshot {
            id: snapshot.snapshot_id.clone(),
            state: snapshot.state.clone(),
            description: snapshot.description.clone(),
            started: project::parse_time(&snapshot.start_time).ok(),
            tags: snapshot.tags().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }
}

/// The image a snapshot was made for, from the description EC2 writes and
/// nobody else does:
/// - CreateImage: `Created by CreateImage(i-…) for ami-… from vol-…`;
/// - CopyImage: `Copied for DestinationAmi ami-… from SourceAmi ami-… …`;
/// - moto, for both: `Auto-created snapshot for AMI ami-…`.
///
/// Anything else (a snapshot someone took by hand, an edited description): `None`.
pub(crate) fn image_of(description: &str) -> Option<&str> {
    let rest = if let Some(rest) = description.strip_prefix("Created by CreateImage(") {
        rest.split_once(") for ")?.1
    } else if let Some(rest) = description.strip_prefix("Copied for DestinationAmi ") {
        rest
    } else {
        description.strip_prefix("Auto-created snapshot for AMI ")?
    };
    let id = rest.split(' ').next()?;
    factory::is_ami_id(id).then_some(id)
}

/// The factory's snapshots whose AMI is gone, each with that AMI's ID. Pure.
///
/// A snapshot goes only when all of this is known: it carries the factory's
/// full tag set (`snapshot_tags` in the template); its description names the
/// AMI it was made for; no image in `images` (every image the account owns
/// in the region, listed after the snapshots) has that ID or uses the
/// snapshot; the ami-list does not name that AMI (its record could still be
/// repaired from the snapshot); it is complete; and it is at least the
/// minimum age. Anything unknown keeps it.
pub(crate) fn orphans(snapshots: &[Snapshot], images: &[Ami], policy: &Policy) -> Vec<(String, String)> {
    let image_ids: BTreeSet<&str> = images.iter().map(|ami| ami.id.as_str()).collect();
    let used: BTreeSet<&str> = images.iter().flat_map(|ami| ami.snapshots.iter().map(String::as_str)).collect();
    let mut out: Vec<(String, String)> = snapshots
        .iter()
        .filter(|s| factory::check_snapshot(&s.tags).is_ok())
        .filter(|s| s.state == "completed" && !used.contains(s.id.as_str()))
        .filter(|s| s.started.is_some_and(|t| policy.now.saturating_sub(t) >= policy.min_age_secs && t <= policy.now))
        .filter_map(|s| Some((s, image_of(&s.description)?)))
        .filter(|(_, image)| !image_ids.contains(image) && !policy.ami_list.contains_key(*image))
        .map(|(s, image)| (s.id.clone(), image.to_string()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::clean_old_amis::testing::{factory, factory_tags, fixture, policy, DAY, NOW};

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

    fn orphan(id: &str, image: &str, days_old: u64) -> Snapshot {
        Snapshot {
            id: id.to_string(),
            state: "completed".to_string(),
            description: format!("Created by CreateImage(i-0123456789abcdef0) for {image} from vol-0123456789abcdef0"),
            started: Some(NOW - days_old * DAY),
            tags: factory_tags(),
        }
    }

    #[test]
    fn the_ami_a_snapshot_was_made_for_comes_from_ec2s_description() {
        for (description, want) in [
            ("Created by CreateImage(i-5507169109b7b1934) for ami-bf62202cd7c06295e", Some("ami-bf62202cd7c06295e")),
            ("Created by CreateImage(i-0abc) for ami-0123456789abcdef0 from vol-0aa", Some("ami-0123456789abcdef0")),
            (
                "Copied for DestinationAmi ami-0123456789abcdef0 from SourceAmi ami-0fedcba987654321f for \
                 SourceSnapshot snap-0123. Task created on 1,700,000,000.",
                Some("ami-0123456789abcdef0"),
            ),
            ("Auto-created snapshot for AMI ami-f147c926f21585c62", Some("ami-f147c926f21585c62")),
            ("", None),
            ("my backup of ami-0123456789abcdef0", None),
            ("Created by CreateImage(i-0abc) for something", None),
            ("Auto-created snapshot for AMI ami-zzz", None),
        ] {
            assert_eq!(image_of(description), want, "{description:?}");
        }
    }

    #[test]
    fn only_old_complete_factory_snapshots_of_a_gone_ami_are_orphans() {
        let images = [factory("ami-00000001", 30)];
        let mut live = orphan("snap-live", "ami-00000001", 30);
        live.description = "Created by CreateImage(i-1) for ami-00000001".into();
        let mut used = orphan("snap-used", "ami-0000000f", 30);
        used.id = images[0].snapshots[0].clone();
        let mut hand_made = orphan("snap-hand-made", "ami-00000002", 30);
        hand_made.tags = BTreeMap::from([("managed-by".into(), "spark-packer".into())]);
        let mut untagged = orphan("snap-untagged", "ami-00000002", 30);
        untagged.tags.clear();
        let mut pending = orphan("snap-pending", "ami-00000002", 30);
        pending.state = "pending".into();
        let mut no_date = orphan("snap-no-date", "ami-00000002", 30);
        no_date.started = None;
        let mut own_description = orphan("snap-own-description", "ami-00000002", 30);
        own_description.description = "before the upgrade".into();
        let snapshots = [
            live,
            used,
            hand_made,
            untagged,
            pending,
            no_date,
            own_description,
            orphan("snap-young", "ami-00000002", 6),
            orphan("snap-listed", "ami-0000000a", 30),
            orphan("snap-orphan", "ami-00000002", 7),
        ];
        let policy = Policy { ami_list: BTreeMap::from([("ami-0000000a".into(), vec!["x".into()])]), ..policy() };
        assert_eq!(
            orphans(&snapshots, &images, &policy),
            vec![("snap-orphan".to_string(), "ami-00000002".to_string())]
        );
        let as_of_earlier = Policy { now: NOW - 2 * DAY, ..policy.clone() };
        assert_eq!(orphans(&snapshots, &images, &as_of_earlier), Vec::new(), "under the minimum age as of then");
    }

    #[test]
    fn reads_recorded_moto_snapshots() {
        // Recorded against moto 5.2.1 after a --no-provision build-amis run
        // (ami-75aa689cfad8de2ab), a hand-made CreateImage and moto's own source images.
        let snapshots: Vec<Snapshot> = aws::parse_snapshots(&fixture("clean-moto-5.2.1-describe-snapshots.json"))
            .unwrap()
            .iter()
            .map(Snapshot::from_aws)
            .collect();
        assert_eq!(snapshots.len(), 6);
        let factory: Vec<&Snapshot> =
            snapshots.iter().filter(|s| crate::factory::check_snapshot(&s.tags).is_ok()).collect();
        assert_eq!(factory.len(), 1, "{snapshots:#?}");
        assert_eq!(image_of(&factory[0].description), Some("ami-75aa689cfad8de2ab"));
        let images: Vec<Ami> =
            aws::parse_images_with_snapshots(&fixture("clean-moto-5.2.1-describe-images-built.json"))
                .unwrap()
                .iter()
                .map(|i| Ami::from_aws("us-east-1", i))
                .collect();
        let now = Policy { now: NOW + 365 * DAY, min_age_secs: 0, ..policy() };
        assert_eq!(orphans(&snapshots, &images, &now), Vec::new(), "every AMI is still there");
        let gone: Vec<Ami> = images.into_iter().filter(|ami| ami.id != "ami-75aa689cfad8de2ab").collect();
        assert_eq!(
            orphans(&snapshots, &gone, &now),
            vec![(factory[0].id.clone(), "ami-75aa689cfad8de2ab".to_string())],
            "only the factory's snapshot, not moto's or the hand-made one"
        );
    }
}
