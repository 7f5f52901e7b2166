//! One writer per ami-list tree: `build-amis` and `clean-old-amis` take an
//! exclusive lock beside the tree, so two runs never race on its files.
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

use crate::project;

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct AmiListLock {
    file: File,
    pub path: PathBuf,
    /// The holder a stale lock file named, if one was taken over.
    pub stale: Option<String>,
}

/// `<parent>/.<tree name>.lock`: beside the tree, not in it, so it is never
/// mistaken for a cell.
pub fn lock_path(ami_list: &Path) -> PathBuf {
    let name = ami_list.file_name().map_or_else(|| "ami-list".into(), |n| n.to_string_lossy().into_owned());
    ami_list.parent().unwrap_or(Path::new(".")).join(format!(".{name}.lock"))
}

/// Takes the lock for `command`, or says who holds it.
pub fn acquire(ami_list: &Path, command: &str) -> Result<AmiListLock> {
    let path = lock_path(ami_list);
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
            ami_list.display(),
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
        assert_eq!(first.path, tree.parent().unwrap().join(".ami-list.lock"));
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
        fs::write(lock_path(&tree), r#"{"pid": 999999, "command": "build-amis", "started_at": "x"}"#).unwrap();
        let lock = acquire(&tree, "build-amis").unwrap();
        assert_eq!(lock.stale.as_deref(), Some("`build-amis` (pid 999999, started x)"));
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
