//! Where things live, and the facts of a run (its id, time and commit).

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use xshell::{cmd, Shell};

/// The repository root, from this crate's manifest, so the xtask works from
/// any directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo root").to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// The checked-in ami-list: only real AWS builds may write it.
/// A path relative to the repository root where it lies inside it.
pub fn display(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

pub fn checked_in_ami_list() -> PathBuf {
    root().join("ami-list")
}

pub fn matrix_file() -> PathBuf {
    root().join("packer/matrix.json")
}

/// The commit being built, with `-dirty` when the tree has changes, so an AMI
/// can be traced to the exact source that made it.
pub fn git_commit(sh: &Shell) -> String {
    let root = root();
    let head = cmd!(sh, "git -C {root} rev-parse --short=12 HEAD").quiet().ignore_stderr().read();
    let Ok(head) = head else {
        return "unknown".to_string();
    };
    let dirty = cmd!(sh, "git -C {root} status --porcelain --untracked-files=no")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// Seconds since the epoch as a UTC date and time.
pub fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32)
}

pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A run id that sorts by time and stays unique across concurrent runs:
/// `20261125T003000Z-1a2b`.
pub fn run_id(secs: u64, pid: u32) -> String {
    let (y, mo, d, h, mi, s) = utc(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{:04x}", pid & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // Recorded by Packer in tests/fixtures: 1795566509 is this moment.
        assert_eq!(rfc3339(1_795_566_509), "2026-11-25T00:28:29Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(run_id(1_795_566_509, 0x12345), "20261125T002829Z-2345");
    }

    #[test]
    fn root_holds_the_workspace() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(matrix_file().is_file());
    }
}
