//! The ami-list tree as the cleanup reads it: every ID it must keep.

use std::{collections::BTreeSet, path::Path};

use anyhow::Result;

use super::select::UsedBy;
use crate::ami_list;

/// Every AMI ID in an ami-list tree (`<image>/<region>/<slot>` files), with
/// the files that name it, and the regions the tree covers. Any part of the
/// tree that cannot be read, or a file that does not parse, is an error: a
/// cleanup that cannot read the whole list must not run.
pub(crate) fn read_ami_list(root: &Path) -> Result<(UsedBy, BTreeSet<String>)> {
    ami_list::read_ids(root)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, fs};

    use super::*;
    use crate::project;

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
