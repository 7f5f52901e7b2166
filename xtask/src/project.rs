//! Where things live, and the facts of a run (its id, time and commit).

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The repository root, from this crate's manifest, so the xtask works from
/// any directory. `SPARK_PACKER_ROOT` names another tree of templates and
/// scripts for this binary to build from: the tests use it to change a
/// script without touching the checked-in one.
pub fn root() -> PathBuf {
    match std::env::var_os("SPARK_PACKER_ROOT").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo root").to_path_buf(),
    }
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

/// RFC 3339 as EC2 writes it (`2026-11-25T12:03:31.000Z`, or with an offset)
/// -> seconds since the epoch.
pub fn parse_time(text: &str) -> Result<u64> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2026-11-25T12:00:00Z");
    let (date, time) = text.split_once(['T', 't']).with_context(bad)?;
    let (time, offset_secs) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let at = time.rfind(['+', '-']).with_context(bad)?;
        let (t, offset) = time.split_at(at);
        let (h, m) = offset[1..].split_once(':').with_context(bad)?;
        let secs =
            h.parse::<i64>().ok().zip(m.parse::<i64>().ok()).map(|(h, m)| h * 3600 + m * 60).with_context(bad)?;
        (t, if offset.starts_with('-') { -secs } else { secs })
    };
    let numbers = |s: &str, sep| -> Option<Vec<i64>> { s.split(sep).map(|n| n.parse().ok()).collect() };
    let ymd = numbers(date, '-').filter(|v| v.len() == 3).with_context(bad)?;
    let whole_secs = time.split('.').next().unwrap_or(time);
    let hms = numbers(whole_secs, ':').filter(|v| v.len() == 3).with_context(bad)?;
    let (month, day) = (ymd[1], ymd[2]);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        bail!(bad());
    }
    let secs = days_from_civil(ymd[0], month, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2] - offset_secs;
    u64::try_from(secs).ok().with_context(bad)
}

/// Howard Hinnant's days-from-civil: the inverse of `utc`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    #[test]
    fn times_as_ec2_writes_them() {
        assert_eq!(parse_time("2026-11-25T00:28:29.000Z").unwrap(), 1_795_566_509);
        assert_eq!(parse_time("2026-11-25T00:28:29Z").unwrap(), 1_795_566_509);
        assert_eq!(parse_time("2026-11-25T01:28:29+01:00").unwrap(), 1_795_566_509);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_time("2000-02-29T00:00:00Z").unwrap(), 951_782_400);
        for secs in [0, 951_782_400, 1_795_566_509, 4_102_444_800] {
            assert_eq!(parse_time(&rfc3339(secs)).unwrap(), secs, "round trip");
        }
        for bad in ["", "2026-11-25", "2026-13-01T00:00:00Z", "2026-11-25T25:00:00Z", "yesterday"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }
}
