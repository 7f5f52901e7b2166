//! The ami-list tree: `<image>/<region>/<slot>`, each file one AMI ID and a
//! newline, the format spark_ec2.py reads. Writes are atomic.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// One file of the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    pub image: String,
    pub region: String,
    /// `hvm`, `pv`, or `<virt>-<arch>` (see `matrix::slot`).
    pub slot: String,
}

impl Cell {
    pub fn relative_path(&self) -> PathBuf {
        [&self.image, &self.region, &self.slot].iter().collect()
    }
}

/// `ami-` then 8 or 17 lowercase hex digits, as EC2 issues them.
pub fn is_ami_id(id: &str) -> bool {
    id.strip_prefix("ami-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The file's content for an ID.
pub fn format_id(id: &str) -> String {
    format!("{id}\n")
}

/// Reads a file's content: exactly one AMI ID and a newline.
pub fn parse_id(content: &str) -> Result<String> {
    let Some(id) = content.strip_suffix('\n') else {
        bail!("expected one AMI ID followed by a newline, found {content:?}");
    };
    if !is_ami_id(id) {
        bail!("expected one AMI ID (`ami-` and 8 or 17 lowercase hex digits), found {id:?}");
    }
    Ok(id.to_string())
}

/// The ID recorded for `cell`, if its file exists.
pub fn read(root: &Path, cell: &Cell) -> Result<Option<String>> {
    let path = root.join(cell.relative_path());
    match fs::read_to_string(&path) {
        Ok(content) => parse_id(&content).map(Some).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Records `id` for `cell`: written to a temporary file beside it, then renamed
/// over it, so a reader sees the old ID or the new one, never a torn file.
pub fn write(root: &Path, cell: &Cell, id: &str) -> Result<()> {
    if !is_ami_id(id) {
        bail!("refusing to record {id:?} for {}: not an AMI ID", cell.relative_path().display());
    }
    let path = root.join(cell.relative_path());
    let dir = path.parent().expect("a cell has a parent directory");
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", cell.slot, std::process::id()));
    fs::write(&tmp, format_id(id)).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> Cell {
        Cell { image: "spark-3.5.3".into(), region: "us-west-2".into(), slot: "hvm".into() }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ami-list-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn ids() {
        assert!(is_ami_id("ami-1234abcd"));
        assert!(is_ami_id("ami-0e972d2890378139a"));
        assert!(!is_ami_id("ami-1234ABCD"), "upper case");
        assert!(!is_ami_id("ami-123"), "short");
        assert!(!is_ami_id("ami-0e972d2890378139"), "16 digits");
        assert!(!is_ami_id("snap-1234abcd"));
        assert!(!is_ami_id("ami-1234abcg"));
    }

    #[test]
    fn file_format_is_one_id_and_a_newline() {
        assert_eq!(parse_id("ami-1234abcd\n").unwrap(), "ami-1234abcd");
        assert!(parse_id("ami-1234abcd").is_err(), "no newline");
        assert!(parse_id("ami-1234abcd\n\n").is_err(), "blank line");
        assert!(parse_id("ami-1234abcd ami-5678abcd\n").is_err());
        assert!(parse_id("").is_err());
        assert_eq!(format_id("ami-1234abcd"), "ami-1234abcd\n");
    }

    #[test]
    fn write_then_read_round_trips_and_replaces() {
        let root = scratch("round-trip");
        assert_eq!(read(&root, &cell()).unwrap(), None);
        write(&root, &cell(), "ami-0e972d2890378139a").unwrap();
        let path = root.join("spark-3.5.3/us-west-2/hvm");
        assert_eq!(fs::read_to_string(&path).unwrap(), "ami-0e972d2890378139a\n");
        write(&root, &cell(), "ami-1234abcd").unwrap();
        assert_eq!(read(&root, &cell()).unwrap().as_deref(), Some("ami-1234abcd"));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_bad_id_is_never_written() {
        let root = scratch("bad-id");
        write(&root, &cell(), "ami-1234abcd").unwrap();
        assert!(write(&root, &cell(), "").is_err());
        assert_eq!(read(&root, &cell()).unwrap().as_deref(), Some("ami-1234abcd"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let root = scratch("corrupt");
        fs::create_dir_all(root.join("spark-3.5.3/us-west-2")).unwrap();
        fs::write(root.join("spark-3.5.3/us-west-2/hvm"), "garbage").unwrap();
        let err = format!("{:#}", read(&root, &cell()).unwrap_err());
        assert!(err.contains("spark-3.5.3/us-west-2/hvm"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
