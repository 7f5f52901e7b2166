//! Which tags go: pure, from what the registry listed, what images-list
//! records and the policy. Every tag gets a decision and a reason.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One tag as the registry shows it.
#[derive(Debug, Clone)]
pub struct Tagged {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// The image's `spark-packer:*` labels decide; none for anything else.
    pub factory: Option<FactoryImage>,
    /// For a manifest list, the digests it names.
    pub members: Vec<String>,
}

/// What the factory's labels say about an image (for a list: its members').
#[derive(Debug, Clone)]
pub struct FactoryImage {
    /// `<image>/<os>/<arch>`, or `<image>/<os>/multi-arch` for a list.
    pub family: String,
    /// Seconds since the epoch (`spark-packer:created-at`).
    pub created: u64,
}

pub struct Policy {
    pub keep: usize,
    pub min_age_secs: u64,
    pub now: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub delete: bool,
    pub why: String,
}

/// `recorded`: the digests images-list names (its references carry the
/// registry's address, which for the sandbox changes from run to run).
pub fn select(tags: &[Tagged], recorded: &BTreeSet<String>, policy: &Policy) -> Vec<Decision> {
    let mut families: BTreeMap<(&str, &str), Vec<&Tagged>> = BTreeMap::new();
    for tagged in tags {
        if let Some(factory) = &tagged.factory {
            families.entry((&tagged.repository, &factory.family)).or_default().push(tagged);
        }
    }
    let mut rank: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for members in families.values_mut() {
        members.sort_by_key(|t| std::cmp::Reverse(t.factory.as_ref().map_or(0, |f| f.created)));
        for (i, t) in members.iter().enumerate() {
            rank.insert((&t.repository, &t.tag), i);
        }
    }
    let mut decisions: Vec<Decision> = tags
        .iter()
        .map(|t| {
            let (delete, why) = first_verdict(t, recorded, policy, rank.get(&(t.repository.as_str(), t.tag.as_str())));
            Decision { repository: t.repository.clone(), tag: t.tag.clone(), digest: t.digest.clone(), delete, why }
        })
        .collect();
    keep_what_kept_ones_need(tags, &mut decisions);
    decisions
}

fn first_verdict(t: &Tagged, recorded: &BTreeSet<String>, policy: &Policy, rank: Option<&usize>) -> (bool, String) {
    let Some(factory) = &t.factory else {
        return (false, "keep: not the factory's (no spark-packer labels)".to_string());
    };
    if recorded.contains(&t.digest) {
        return (false, "keep: recorded in images-list".to_string());
    }
    let age = policy.now.saturating_sub(factory.created);
    if age < policy.min_age_secs {
        return (false, format!("keep: younger than --min-age ({age} s old)"));
    }
    match rank {
        Some(&r) if r < policy.keep => (false, format!("keep: newest {} of {}", policy.keep, factory.family)),
        Some(&r) => (true, format!("delete: superseded by {r} newer in {}, and older than --min-age", factory.family)),
        None => (false, "keep: no family".to_string()),
    }
}

/// A kept list keeps its members; a digest under a kept tag stays (deleting
/// a manifest deletes every tag on it).
fn keep_what_kept_ones_need(tags: &[Tagged], decisions: &mut [Decision]) {
    loop {
        let kept: BTreeSet<(String, String)> =
            decisions.iter().filter(|d| !d.delete).map(|d| (d.repository.clone(), d.digest.clone())).collect();
        let needed: BTreeSet<(String, String)> = tags
            .iter()
            .zip(decisions.iter())
            .filter(|(_, d)| !d.delete)
            .flat_map(|(t, _)| t.members.iter().map(|m| (t.repository.clone(), m.clone())))
            .chain(kept)
            .collect();
        let mut changed = false;
        for d in decisions.iter_mut().filter(|d| d.delete) {
            if needed.contains(&(d.repository.clone(), d.digest.clone())) {
                d.delete = false;
                d.why = "keep: a kept tag or manifest list needs its digest".to_string();
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn image(tag: &str, digest: &str, family: &str, created: u64) -> Tagged {
        Tagged {
            repository: "spark-packer/base".into(),
            tag: tag.into(),
            digest: digest.into(),
            factory: Some(FactoryImage { family: family.into(), created }),
            members: Vec::new(),
        }
    }

    fn verdicts(decisions: &[Decision]) -> Vec<(&str, bool)> {
        decisions.iter().map(|d| (d.tag.as_str(), d.delete)).collect()
    }

    #[test]
    fn the_newest_recorded_young_and_foreign_tags_stay() {
        let now = 100 * DAY;
        let tags = vec![
            image("r1-debian-13-x86_64", "sha256:1", "base/debian-13/x86_64", now - 40 * DAY),
            image("r2-debian-13-x86_64", "sha256:2", "base/debian-13/x86_64", now - 30 * DAY),
            image("r3-debian-13-x86_64", "sha256:3", "base/debian-13/x86_64", now - 20 * DAY),
            image("r4-debian-13-x86_64", "sha256:4", "base/debian-13/x86_64", now - DAY),
            image("r1-debian-13-arm64", "sha256:5", "base/debian-13/arm64", now - 40 * DAY),
            Tagged { factory: None, ..image("latest", "sha256:6", "", 0) },
        ];
        let recorded: BTreeSet<String> = ["sha256:1".to_string()].into();
        let policy = Policy { keep: 1, min_age_secs: 7 * DAY, now };
        let decisions = select(&tags, &recorded, &policy);
        assert_eq!(
            verdicts(&decisions),
            [
                ("r1-debian-13-x86_64", false), // recorded
                ("r2-debian-13-x86_64", true),
                ("r3-debian-13-x86_64", true),
                ("r4-debian-13-x86_64", false), // newest, and young
                ("r1-debian-13-arm64", false),  // the newest of its own family
                ("latest", false),              // not the factory's
            ]
        );
        assert!(decisions[1].why.contains("3 newer") || decisions[1].why.contains("2 newer"), "{:?}", decisions[1]);
        assert_eq!(decisions[0].why, "keep: recorded in images-list");
        assert!(decisions[5].why.contains("not the factory's"));
    }

    #[test]
    fn a_kept_list_keeps_its_members_and_a_shared_digest_stays() {
        let now = 100 * DAY;
        let old = now - 30 * DAY;
        let mut list = image("r2-debian-13", "sha256:L", "base/debian-13/multi-arch", old);
        list.members = vec!["sha256:1".into()];
        let tags = vec![
            image("r1-debian-13-x86_64", "sha256:1", "base/debian-13/x86_64", old - 1),
            image("r2-debian-13-x86_64", "sha256:2", "base/debian-13/x86_64", old),
            list,
            // Another tag on the newest digest: deleting its manifest would take the newest too.
            image("r0-debian-13-x86_64", "sha256:2", "base/debian-13/x86_64", old - 2),
        ];
        let policy = Policy { keep: 1, min_age_secs: 0, now };
        let decisions = select(&tags, &BTreeSet::new(), &policy);
        assert_eq!(
            verdicts(&decisions),
            [
                ("r1-debian-13-x86_64", false),
                ("r2-debian-13-x86_64", false),
                ("r2-debian-13", false),
                ("r0-debian-13-x86_64", false)
            ]
        );
        assert!(decisions[0].why.contains("manifest list needs"));
    }
}
