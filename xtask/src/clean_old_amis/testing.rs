//! What the unit tests of clean-old-amis share: a clock, a factory AMI, a
//! policy, and the recorded moto output under tests/fixtures.

use std::{collections::BTreeMap, fs};

use super::select::{Ami, Policy};
use crate::{
    factory::{self, *},
    project,
};

pub(super) const DAY: u64 = 86_400;
pub(super) const NOW: u64 = 1_795_566_509; // 2026-11-25T00:28:29Z

/// The full tag set a --no-provision build of base-hvm-x86_64 writes.
pub(super) fn factory_tags() -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0, MANAGED_BY.1),
        (IMAGE_TAG, "base"),
        (SPARK_VERSION_TAG, "none"),
        (VIRT_TAG, "hvm"),
        (ARCH_TAG, "x86_64"),
        (BUILD_TAG, "base-hvm-x86_64"),
        (RUN_ID_TAG, "20261125T002829Z-0001"),
        (GIT_COMMIT_TAG, "70a4445f7231"),
        (CREATED_AT_TAG, "2026-11-25T00:28:29Z"),
        (BASE_AMI_TAG, "none"),
        (SMOKE_TEST_TAG, "not-provisioned"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A factory AMI of base/hvm/x86_64 in us-east-1, `days_old` days before NOW.
pub(super) fn factory(id: &str, days_old: u64) -> Ami {
    Ami {
        id: id.to_string(),
        region: "us-east-1".to_string(),
        name: factory::ami_name("base-hvm-x86_64", "20261125T002829Z-0001"),
        state: "available".to_string(),
        public: false,
        shared_with: Vec::new(),
        created: Some(NOW - days_old * DAY),
        tags: factory_tags(),
        snapshots: vec![format!("snap-{id}")],
    }
}

/// Makes `ami` one of the `image/virt/arch` family, as a build of it would be named and tagged.
pub(super) fn set_family(ami: &mut Ami, image: &str, virt: &str, arch: &str) {
    let build = format!("{image}-{virt}-{arch}");
    for (key, value) in [(IMAGE_TAG, image), (VIRT_TAG, virt), (ARCH_TAG, arch), (BUILD_TAG, &build)] {
        ami.tags.insert(key.to_string(), value.to_string());
    }
    ami.name = factory::ami_name(&build, &ami.tags[RUN_ID_TAG]);
}

pub(super) fn policy() -> Policy {
    Policy { keep: 2, min_age_secs: 7 * DAY, now: NOW, ..Policy::default() }
}

pub(super) fn fixture(name: &str) -> String {
    let path = project::root().join("xtask/tests/fixtures").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
