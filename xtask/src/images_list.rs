//! images-list: where the docker platform records what it pushed, as ami-list
//! does for AMIs. `images-list/<image>/<os>-<arch>` holds one image pinned by
//! digest, `REPOSITORY@sha256:…`, and a newline; `images-list/<image>/<os>`
//! the multi-architecture manifest list when every architecture was built.
//! Only successful builds are recorded, each file replaced atomically.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{docker::is_pinned_reference, project};

/// The checked-in images-list/, for real registries.
pub fn checked_in() -> PathBuf {
    project::root().join("images-list")
}

/// The local sandbox's, which a test or a local run may write.
pub fn local() -> PathBuf {
    project::target_dir().join("local/images-list")
}

/// The file of `image`'s `slot` (`debian-13-arm64`, or `debian-13` for a list).
pub fn path(root: &Path, image: &str, slot: &str) -> PathBuf {
    root.join(image).join(slot)
}

/// Writes `reference` to its file through a temporary file and a rename: a
/// reader sees the old reference or the new one, never part of one.
pub fn write(root: &Path, image: &str, slot: &str, reference: &str) -> Result<PathBuf> {
    if !is_pinned_reference(reference) {
        bail!("not recorded: `{reference}` is not an image pinned by digest (REPOSITORY@sha256:…)");
    }
    let file = path(root, image, slot);
    let dir = file.parent().context("images-list file has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".{slot}.tmp-{}", std::process::id()));
    fs::write(&tmp, format!("{reference}\n")).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &file).with_context(|| format!("rename {} to {}", tmp.display(), file.display()))?;
    Ok(file)
}

/// The reference recorded for `image`'s `slot`, if any.
pub fn read(root: &Path, image: &str, slot: &str) -> Result<Option<String>> {
    let file = path(root, image, slot);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    match text.strip_suffix('\n') {
        Some(reference) if is_pinned_reference(reference) => Ok(Some(reference.to_string())),
        _ => bail!("{}: not one REPOSITORY@sha256:… line; fix or delete it", file.display()),
    }
}

/// The tree at `root`, every file checked: `<image>/<slot>`, a regular
/// file holding one pinned reference. A missing tree is an empty one.
#[derive(Debug, Default)]
pub struct TreeCheck {
    /// How many files were read, good or bad.
    pub files: usize,
    /// The references of the good ones.
    pub references: Vec<String>,
    /// `(path, message)` per bad file or stray.
    pub problems: Vec<(String, String)>,
}

pub fn check_tree(root: &Path) -> Result<TreeCheck> {
    let mut tree = TreeCheck::default();
    let Ok(images) = fs::read_dir(root) else { return Ok(tree) };
    for image in images {
        let image = image?;
        let shown = image.path().display().to_string();
        if !image.file_type()?.is_dir() {
            tree.problems.push((shown, "a stray file: images-list holds <image>/<os>[-<arch>] files only".to_string()));
            continue;
        }
        for slot in fs::read_dir(image.path())? {
            let slot = slot?;
            let shown = slot.path().display().to_string();
            if !slot.file_type()?.is_file() {
                tree.problems.push((shown, "not a regular file".to_string()));
                continue;
            }
            let (image_name, slot_name) =
                (image.file_name().to_string_lossy().into_owned(), slot.file_name().to_string_lossy().into_owned());
            tree.files += 1;
            match read(root, &image_name, &slot_name) {
                Ok(Some(reference)) => tree.references.push(reference),
                Ok(None) => tree.problems.push((shown, "vanished while read".to_string())),
                Err(e) => tree.problems.push((shown, format!("{e:#}"))),
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &str =
        "127.0.0.1:5055/spark-packer/base@sha256:6abbde5f70e9ccdbef2a2c8b5019a1de89b88f57a4bd66e902fd69cb281fea92";

    #[test]
    fn a_reference_round_trips_and_only_pinned_ones_are_written() {
        let root = project::target_dir().join(format!("test-images-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let file = write(&root, "base", "debian-13-x86_64", PINNED).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), format!("{PINNED}\n"));
        assert_eq!(read(&root, "base", "debian-13-x86_64").unwrap().as_deref(), Some(PINNED));
        assert_eq!(read(&root, "base", "debian-13-arm64").unwrap(), None);

        let error = write(&root, "base", "debian-13-arm64", "127.0.0.1:5055/spark-packer/base:latest").unwrap_err();
        assert!(error.to_string().contains("not an image pinned by digest"), "{error}");
        assert!(!path(&root, "base", "debian-13-arm64").exists());
        fs::write(path(&root, "base", "debian-13-arm64"), "latest\n").unwrap();
        assert!(read(&root, "base", "debian-13-arm64").unwrap_err().to_string().contains("fix or delete it"));
        // No temporary file is left beside the records.
        let names: Vec<String> =
            fs::read_dir(root.join("base")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_check_names_each_bad_file() {
        let root = project::target_dir().join(format!("test-images-list-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        assert_eq!(check_tree(&root).unwrap().files, 0, "a missing tree is empty");
        write(&root, "base", "debian-13-x86_64", PINNED).unwrap();
        fs::write(path(&root, "base", "debian-13-arm64"), "127.0.0.1:5055/spark-packer/base:latest\n").unwrap();
        fs::write(root.join("stray"), "").unwrap();
        let tree = check_tree(&root).unwrap();
        let mut problems = tree.problems;
        problems.sort();
        assert_eq!(tree.files, 2);
        assert_eq!(tree.references, [PINNED]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].0.ends_with("base/debian-13-arm64") && problems[0].1.contains("fix or delete it"));
        assert!(problems[1].0.ends_with("stray") && problems[1].1.contains("a stray file"));
        fs::remove_dir_all(&root).unwrap();
    }
}
