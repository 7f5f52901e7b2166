//! Which directory an ami-list tree really is, and whether a build can write
//! it: by canonical path, whatever the spelling, whether or not it exists yet.

use std::{
    fs,
    io::ErrorKind,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::printable_path;

/// `path` with every symlink resolved and every `.` and `..` gone, even when
/// it does not exist yet: the nearest existing ancestor canonicalized, the
/// rest appended. A dangling symlink or a loop on the way is an error, since
/// nothing can say where a write through it would land.
pub fn canonical(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().context("read the current directory")?.join(path)
    };
    // `out` never holds a symlink, so `..` on it is what the kernel does too.
    let mut out = PathBuf::from("/");
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                let next = out.join(name);
                let is_link = fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
                out = if is_link {
                    next.canonicalize().with_context(|| {
                        format!(
                            "{} is a dangling symlink or a symlink loop: point it at a directory, or name another path",
                            printable_path(&next)
                        )
                    })?
                } else {
                    next
                };
            }
        }
    }
    Ok(out)
}

/// Whether `path` is `root` or anything under it, compared canonically.
pub fn is_within(path: &Path, root: &Path) -> Result<bool> {
    Ok(canonical(path)?.starts_with(canonical(root)?))
}

/// Checks, before anything is launched, that a build can record in `path`:
/// an existing writable directory, or one that can be created, with no
/// directory symlink in it that leads out of it. Returns its canonical path.
/// Leaves nothing behind: a probe file or directory is removed at once.
pub fn writable_ami_list(path: &Path) -> Result<PathBuf> {
    let shown = printable_path(path);
    let fix = "name a writable directory (it is created if missing)";
    let root = canonical(path).with_context(|| format!("--ami-list {shown}: {fix}"))?;
    match fs::symlink_metadata(&root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("--ami-list {shown} is not a directory: {fix}"),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return probe_creatable(&root, &shown, fix)
        }
        Err(e) => return Err(e).with_context(|| format!("--ami-list {shown}: cannot read it; {fix}")),
    }
    let probe = root.join(format!(".spark-packer-probe-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("--ami-list {shown} is not writable: {fix}"))?;
    let _ = fs::remove_file(&probe);
    if let Some(link) = symlink_leaving(&root)? {
        bail!(
            "--ami-list {shown}: {} is a symlink that leads out of the tree, so a build would write elsewhere: \
             replace it with a directory, or {fix}",
            printable_path(&link)
        );
    }
    Ok(root)
}

/// The tree does not exist: its first missing directory must be creatable in
/// the nearest existing ancestor. Made and removed again.
fn probe_creatable(root: &Path, shown: &str, fix: &str) -> Result<PathBuf> {
    let mut first_missing = root.to_path_buf();
    while let Some(parent) = first_missing.parent() {
        if parent.exists() {
            break;
        }
        first_missing = parent.to_path_buf();
    }
    let parent = first_missing.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("--ami-list {shown} cannot be created: {} is not a directory; {fix}", printable_path(parent));
    }
    fs::create_dir(&first_missing)
        .with_context(|| format!("--ami-list {shown} cannot be created in {}: {fix}", printable_path(parent)))?;
    let _ = fs::remove_dir(&first_missing);
    Ok(root.to_path_buf())
}

/// The first directory-level symlink (image or region) that resolves outside
/// `root` or nowhere: a write through it would land outside the tree. Cell
/// symlinks are not followed by a write (rename replaces them).
fn symlink_leaving(root: &Path) -> Result<Option<PathBuf>> {
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("read {}", printable_path(&dir)))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", printable_path(&dir)))?;
            let path = entry.path();
            let kind = entry.file_type().with_context(|| format!("read {}", printable_path(&path)))?;
            if kind.is_symlink() {
                match path.canonicalize() {
                    Ok(target) if target.starts_with(root) => {}
                    _ => return Ok(Some(path)),
                }
            } else if kind.is_dir() && depth < 1 {
                dirs.push((path, depth + 1));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ami-list-path-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    #[test]
    fn canonical_resolves_symlinks_dots_and_missing_tails() {
        let dir = scratch("canonical");
        fs::create_dir(dir.join("real")).unwrap();
        symlink(dir.join("real"), dir.join("alias")).unwrap();
        assert_eq!(canonical(&dir.join("alias")).unwrap(), dir.join("real"));
        assert_eq!(canonical(&dir.join("alias/./x/../y/z")).unwrap(), dir.join("real/y/z"));
        assert_eq!(canonical(&dir.join("missing/../real")).unwrap(), dir.join("real"));
        assert!(is_within(&dir.join("alias/sub"), &dir.join("real")).unwrap());
        assert!(is_within(&dir.join("not-yet"), &dir.join("not-yet")).unwrap(), "a missing root is still itself");
        assert!(is_within(&dir.join("alias/../not-yet/a/../b"), &dir.join("./not-yet")).unwrap(), "or holds its tail");
        assert!(!is_within(&dir.join("real-but-not"), &dir.join("real")).unwrap(), "a sibling is not inside");
        symlink(dir.join("loop"), dir.join("loop")).unwrap();
        let err = format!("{:#}", canonical(&dir.join("loop/x")).unwrap_err());
        assert!(err.contains("symlink loop"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_writable_tree_or_one_that_can_be_created_passes_and_nothing_is_left() {
        let dir = scratch("writable");
        assert_eq!(writable_ami_list(&dir.join("a/b/ami-list")).unwrap(), dir.join("a/b/ami-list"));
        assert!(!dir.join("a").exists(), "the probe directory is removed");
        fs::create_dir_all(dir.join("tree/base")).unwrap();
        symlink(dir.join("tree/base"), dir.join("tree/inside")).unwrap();
        writable_ami_list(&dir.join("tree")).unwrap();
        assert_eq!(fs::read_dir(dir.join("tree")).unwrap().count(), 2, "no probe file is left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_loops_proc_and_symlinks_out_are_refused() {
        let dir = scratch("refused");
        fs::write(dir.join("file"), "x").unwrap();
        symlink(dir.join("loop"), dir.join("loop")).unwrap();
        fs::create_dir_all(dir.join("tree")).unwrap();
        symlink("/tmp", dir.join("tree/base")).unwrap();
        let cases = [
            (dir.join("file"), "is not a directory"),
            (dir.join("file/sub"), "cannot be created"),
            (dir.join("loop"), "symlink loop"),
            (PathBuf::from("/proc"), "not writable"),
            (PathBuf::from("/proc/spark-packer"), "cannot be created"),
            (dir.join("tree"), "leads out of the tree"),
        ];
        for (path, expected) in cases {
            let err = format!("{:#}", writable_ami_list(&path).unwrap_err());
            assert!(err.contains(expected) && err.contains("name a writable directory"), "{path:?}: {err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
