//! One writer per ami-list tree: `build-amis` and `clean-old-amis` take an
//! exclusive lock on the tree, so two runs never race on its files.
//!
//! The lock is keyed by the tree's canonical path, so every spelling of one
//! tree (a symlink to it, `./x/../x`) takes the same lock, and it lives under
//! `target/locks/`, never beside a path the user named (no `/.proc.lock`).
//!
//! The lock is an OS file lock (flock), released by the kernel when its
//! holder exits, however it exits; the holder's pid, command and start time
//! are written into the file so the refusal can name it. A file left by a
//! dead holder is stale and simply taken over.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{ami_list, project};

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct AmiListLock {
    file: File,
    pub path: PathBuf,
    /// The holder a stale lock file named, if one was taken over.
    pub stale: Option<String>,
}

/// `target/locks/<tree name>-<hash of its canonical path>.lock`. A path that
/// cannot be resolved (a symlink loop) is keyed as spelled; [`acquire`]
/// refuses it anyway.
pub fn lock_path(ami_list: &Path) -> PathBuf {
    let key = ami_list::canonical(ami_list).unwrap_or_else(|_| ami_list.to_path_buf());
    lock_path_of(&key)
}

fn lock_path_of(canonical: &Path) -> PathBuf {
    let name: String = canonical
        .file_name()
        .map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    project::target_dir()
        .join("locks")
        .join(format!("{name}-{:016x}.lock", fnv1a(canonical.as_os_str().as_encoded_bytes())))
}

/// FNV-1a, 64 bits: stable across builds and Rust versions, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Takes the lock for `command`, or says who holds it.
pub fn acquire(ami_list: &Path, command: &str) -> Result<AmiListLock> {
    let canonical = ami_list::canonical(ami_list)
        .with_context(|| format!("lock ami-list {}", ami_list::printable_path(ami_list)))?;
    let path = lock_path_of(&canonical);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open the lock {}", path.display()))?;
    let previous = fs::read_to_string(&path).unwrap_or_default();
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by {}: wait for that run to finish, or stop it; \
             the lock goes away by itself when its holder exits",
            ami_list::printable_path(&canonical),
            describe_holder(&previous)
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("lock {}", path.display()));
        }
    }
    let stale = (!previous.trim().is_empty()).then(|| describe_holder(&previous));
    file.set_len(0)?;
    let holder = serde_json::json!({
        "pid": std::process::id(),
        "command": command,
        "started_at": project::rfc3339(project::now_secs()),
        "ami_list": canonical.to_string_lossy(),
    });
    writeln!(file, "{holder}").with_context(|| format!("write {}", path.display()))?;
    Ok(AmiListLock { file, path, stale })
}

impl Drop for AmiListLock {
    /// An orderly exit empties the file; only a holder that died leaves its
    /// name behind, which is how the next run knows the lock was stale.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// "`build-amis` (pid 1234, started 2026-11-25T12:00:00Z)", from the lock file.
pub fn describe_holder(content: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(content.trim()) {
        Ok(v) => format!(
            "`{}` (pid {}, started {})",
            v["command"].as_str().unwrap_or("?"),
            v["pid"].as_u64().map_or("?".to_string(), |p| p.to_string()),
            v["started_at"].as_str().unwrap_or("?")
        ),
        Err(_) => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lock-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("ami-list")
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let tree = scratch("second");
        let first = acquire(&tree, "build-amis").unwrap();
        assert!(first.path.starts_with(project::target_dir().join("locks")), "{}", first.path.display());
        assert!(first.path.file_name().unwrap().to_string_lossy().starts_with("ami-list-"));
        let err = acquire(&tree, "clean-old-amis").unwrap_err().to_string();
        assert!(err.contains(&format!("`build-amis` (pid {}", std::process::id())), "{err}");
        assert!(err.contains("wait for that run to finish"), "{err}");
        drop(first);
        let again = acquire(&tree, "clean-old-amis").unwrap();
        assert_eq!(again.stale, None, "an orderly release leaves nothing stale");
    }

    #[test]
    fn a_dead_holders_file_is_taken_over_as_stale() {
        let tree = scratch("stale");
        // What a killed holder leaves: its record, and no flock (the kernel dropped it).
        fs::create_dir_all(lock_path(&tree).parent().unwrap()).unwrap();
        fs::write(lock_path(&tree), r#"{"pid": 999999, "command": "build-amis", "started_at": "x"}"#).unwrap();
        let lock = acquire(&tree, "build-amis").unwrap();
        assert_eq!(lock.stale.as_deref(), Some("`build-amis` (pid 999999, started x)"));
    }

    #[test]
    fn every_spelling_of_a_tree_takes_one_lock_and_none_lands_beside_it() {
        let tree = scratch("alias");
        fs::create_dir_all(&tree).unwrap();
        let alias = tree.with_file_name("alias");
        std::os::unix::fs::symlink(&tree, &alias).unwrap();
        let first = acquire(&tree, "build-amis").unwrap();
        for spelling in [alias.clone(), alias.join("../ami-list"), tree.join(".")] {
            assert_eq!(lock_path(&spelling), first.path, "{}", spelling.display());
            let err = acquire(&spelling, "build-amis").unwrap_err().to_string();
            assert!(err.contains("is in use by"), "{err}");
        }
        assert_ne!(lock_path(&tree.with_file_name("other")), first.path);
        assert!(lock_path(Path::new("/proc")).starts_with(project::target_dir()));
        let beside: Vec<_> = fs::read_dir(tree.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(beside.len(), 2, "only the tree and its alias: {beside:?}");
    }

    #[test]
    fn holders_are_described_even_from_garbage() {
        assert_eq!(describe_holder("not json"), "another process");
        assert_eq!(
            describe_holder(r#"{"pid": 7, "command": "build-amis", "started_at": "2026-11-25T12:00:00Z"}"#),
            "`build-amis` (pid 7, started 2026-11-25T12:00:00Z)"
        );
    }
}
