//! What the unit tests of clean-old-amis share: a clock, a factory AMI, a
//! policy, and the recorded moto output under tests/fixtures.

use std::fs;

use super::select::{Ami, Policy};
use crate::{
    factory::{ARCH_TAG, IMAGE_TAG, MANAGED_BY, VIRT_TAG},
    project,
};

pub(super) const DAY: u64 = 86_400;
pub(super) const NOW: u64 = 1_795_566_509; // 2026-11-25T00:28:29Z

pub(super) fn factory(id: &str, days_old: u64) -> Ami {
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

pub(super) fn policy() -> Policy {
    Policy { keep: 2, min_age_secs: 7 * DAY, now: NOW, ..Policy::default() }
}

pub(super) fn fixture(name: &str) -> String {
    let path = project::root().join("xtask/tests/fixtures").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
