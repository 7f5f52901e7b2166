//! The ami-list tree as the cleanup reads it: every ID it must keep.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::select::Needed;
use crate::ami_list;

/// Every AMI ID in an ami-list tree (`<image>/<region>/<slot>` files), with
/// the files that name it, and the regions the tree covers. A file that does
/// not parse is an error: a cleanup that cannot read the list must not run.
pub(crate) fn read_ami_list(root: &Path) -> Result<(Needed, BTreeSet<String>)> {
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

#[cfg(test)]
mod tests {
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
