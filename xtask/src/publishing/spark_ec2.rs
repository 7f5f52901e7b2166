//! The flat layout spark_ec2.py's lookup reads: `<dir>/<region>/hvm` and
//! `<dir>/<region>/pvm`, one AMI ID and a newline each, for one image.
//! spark_ec2.py fetches `<raw repo>/<branch>/ami-list/<region>/<hvm|pvm>`: it
//! knows no image level, calls PV `pvm`, and knows no architecture, so only
//! the x86_64 cells are exported. It also logs in as root, which only the
//! seed's Amazon Linux families' names stand for: cells of other OS families
//! (`hvm.debian-13`) are left out. The per-image ami-list stays the source of truth.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::cells::Cell;
use crate::ami_list;

/// spark_ec2.py's name for a virtualization type.
pub fn file_name(virt: &str) -> &'static str {
    if virt == "pv" {
        "pvm"
    } else {
        "hvm"
    }
}

/// `<region>/<hvm|pvm>` -> ID for `image`'s x86_64 cells.
pub fn layout(cells: &[Cell], image: &str) -> Result<BTreeMap<String, String>> {
    let files: BTreeMap<String, String> = cells
        .iter()
        .filter(|c| c.image == image && c.arch == "x86_64" && c.os.is_none())
        .map(|c| (format!("{}/{}", c.region, file_name(&c.virt)), c.id.clone()))
        .collect();
    if files.is_empty() {
        let mut images: Vec<&str> = cells.iter().map(|c| c.image.as_str()).collect();
        images.dedup();
        bail!(
            "--image {image}: ami-list records no x86_64 AMI of it with the seed's names (spark_ec2.py has \
             no arm64, and logs in as root, which Debian AMIs refuse); recorded: {}",
            images.join(", ")
        );
    }
    Ok(files)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    /// `create`, `update`, `unchanged` or `remove`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What is in `dir` now, as `<region>/<file>` -> content. Refuses anything
/// that is not such a file: the export owns the directory, and never deletes
/// what it does not recognise.
pub fn read_export(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    for region in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let region = region?;
        let region_path = region.path();
        let region_name = region.file_name().to_string_lossy().into_owned();
        if region_name.starts_with('.') {
            continue; // .git and the like in a checkout of a fork
        }
        if !fs::symlink_metadata(&region_path)?.is_dir() {
            bail!("{}: not a region directory; the --spark-ec2 directory must hold only <region>/<hvm|pvm>: choose an empty or export-only directory", region_path.display());
        }
        for file in fs::read_dir(&region_path).with_context(|| format!("read {}", region_path.display()))? {
            let path = file?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !matches!(name.as_str(), "hvm" | "pvm") || !fs::symlink_metadata(&path)?.is_file() {
                bail!(
                    "{}: not an hvm or pvm file; the --spark-ec2 directory must hold only <region>/<hvm|pvm>",
                    path.display()
                );
            }
            let content = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            out.insert(format!("{region_name}/{name}"), content);
        }
    }
    Ok(out)
}

/// The changes that turn `now` into `wanted`, sorted by path.
pub fn diff(wanted: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<FileChange> {
    let mut changes: Vec<FileChange> = wanted
        .iter()
        .map(|(path, id)| {
            let action = match now.get(path) {
                None => "create",
                Some(content) if *content == ami_list::format_id(id) => "unchanged",
                Some(_) => "update",
            };
            FileChange { path: path.clone(), action, id: Some(id.clone()) }
        })
        .collect();
    changes.extend(now.keys().filter(|path| !wanted.contains_key(*path)).map(|path| FileChange {
        path: path.clone(),
        action: "remove",
        id: None,
    }));
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

/// Applies `changes` under `dir`: each file written to a temporary file
/// beside it and renamed over it, so an HTTP server never serves a torn file.
pub fn apply(dir: &Path, changes: &[FileChange]) -> Result<()> {
    for change in changes {
        let path: PathBuf = dir.join(&change.path);
        match (change.action, &change.id) {
            ("create" | "update", Some(id)) => write_atomic(&path, &ami_list::format_id(id))?,
            ("remove", _) => fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?,
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let dir = path.parent().context("a file has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    fs::write(&tmp, content).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project;

    use super::super::cells::tests::seed_cell as cell;

    #[test]
    fn one_image_flattened_with_pv_named_pvm() {
        let cells = [
            cell("base", "us-east-1", "hvm", "x86_64", "ami-11111111"),
            cell("spark-3.5.3", "us-east-1", "hvm", "x86_64", "ami-22222222"),
            cell("spark-3.5.3", "us-east-1", "pv", "x86_64", "ami-33333333"),
            cell("spark-3.5.3", "us-east-1", "hvm", "arm64", "ami-44444444"),
            cell("spark-3.5.3", "eu-west-1", "hvm", "x86_64", "ami-55555555"),
        ];
        let files = layout(&cells, "spark-3.5.3").unwrap();
        let expected =
            [("eu-west-1/hvm", "ami-55555555"), ("us-east-1/hvm", "ami-22222222"), ("us-east-1/pvm", "ami-33333333")];
        assert_eq!(files, expected.iter().map(|(p, i)| (p.to_string(), i.to_string())).collect());
        let err = layout(&cells, "spark-9").unwrap_err().to_string();
        assert!(err.contains("records no x86_64 AMI of it") && err.contains("base, spark-3.5.3"), "{err}");
    }

    #[test]
    fn diff_then_apply_makes_the_directory_the_layout() {
        let dir = project::target_dir().join("test-scratch").join(format!("spark-ec2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("us-east-1")).unwrap();
        fs::create_dir_all(dir.join(".git")).unwrap();
        fs::write(dir.join("us-east-1/hvm"), "ami-11111111\n").unwrap();
        fs::write(dir.join("us-east-1/pvm"), "ami-99999999\n").unwrap();
        let wanted: BTreeMap<String, String> = [("us-east-1/hvm", "ami-11111111"), ("eu-west-1/hvm", "ami-55555555")]
            .iter()
            .map(|(p, i)| (p.to_string(), i.to_string()))
            .collect();
        let changes = diff(&wanted, &read_export(&dir).unwrap());
        let actions: Vec<(&str, &str)> = changes.iter().map(|c| (c.path.as_str(), c.action)).collect();
        assert_eq!(actions, [("eu-west-1/hvm", "create"), ("us-east-1/hvm", "unchanged"), ("us-east-1/pvm", "remove")]);
        apply(&dir, &changes).unwrap();
        let now = read_export(&dir).unwrap();
        assert_eq!(now.len(), 2);
        assert_eq!(now["eu-west-1/hvm"], "ami-55555555\n");
        assert!(diff(&wanted, &now).iter().all(|c| c.action == "unchanged"));

        fs::write(dir.join("us-east-1/notes"), "x").unwrap();
        let err = read_export(&dir).unwrap_err().to_string();
        assert!(err.contains("not an hvm or pvm file"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
