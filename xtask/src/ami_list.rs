//! The ami-list tree: `<image>/<region>/<slot>`, each file one AMI ID and a
//! newline, the format spark_ec2.py reads. A build's files are written all
//! or none (temp files, then renames); the tree is read by one walker
//! (`walk`) that never opens what is not a regular file.

mod path;
mod walk;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub use self::{
    path::{canonical, is_within, writable_ami_list},
    walk::{walk, Found, DEPTH, MAX_FILE_BYTES},
};

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

/// The ID recorded for `cell`, if its file exists. Read as the walker reads:
/// a regular file only, at most 4 KiB.
pub fn read(root: &Path, cell: &Cell) -> Result<Option<String>> {
    let path = root.join(cell.relative_path());
    let shown = printable_path(&path);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {shown}")),
    };
    if !meta.is_file() {
        bail!("{shown} is not a regular file: it should hold one AMI ID; fix or remove it");
    }
    let content = walk::read_cell(&path, &meta).map_err(|why| anyhow::anyhow!("{shown}: {why}"))?;
    parse_id(&content).map(Some).with_context(|| shown.clone())
}

/// AMI ID -> the cells that record it, relative to the tree.
pub type Listed = BTreeMap<String, Vec<String>>;

/// Every AMI ID the tree at `root` records, with the cells that name it, and
/// the regions it covers. Dot files (temporary files) and files above the
/// cells (a README) are skipped. Anything that cannot be read, or a cell
/// that does not parse, is an error naming it: whoever deletes on the
/// strength of this list must see all of it.
pub fn read_ids(root: &Path) -> Result<(Listed, BTreeSet<String>)> {
    let found = walk(root)?;
    let shown = printable_path(root);
    let refused: Vec<String> = found
        .iter()
        .filter_map(|f| match f {
            Found::Refused(rel, why) => Some(format!("{shown}/{rel}: {why}")),
            _ => None,
        })
        .collect();
    if let Some(first) = refused.first() {
        let more = match refused.len() {
            1 => String::new(),
            n => format!(" (and {} more; `cargo xtask validate --ami-list {shown}` lists them)", n - 1),
        };
        bail!("{first}{more}; nothing is deleted while part of ami-list cannot be read");
    }
    let mut ids = Listed::new();
    let mut regions = BTreeSet::new();
    for entry in &found {
        let parts: Vec<&str> = entry.path().split('/').collect();
        if parts.iter().any(|p| p.starts_with('.')) {
            continue;
        }
        match (entry, parts.len()) {
            (Found::Dir(_), 2) => {
                regions.insert(parts[1].to_string());
            }
            (Found::File(rel, Some(content)), DEPTH) => {
                let id = parse_id(content).with_context(|| {
                    format!("{shown}/{rel}: fix or remove it; the cleanup will not guess what it protects")
                })?;
                ids.entry(id).or_default().push(rel.clone());
            }
            (Found::Dir(rel), DEPTH) => {
                bail!("{shown}/{rel} is a directory where a file holding one AMI ID belongs: remove it")
            }
            _ => {}
        }
    }
    Ok((ids, regions))
}

/// Records `id` for `cell` alone; see [`write_all`].
pub fn write(root: &Path, cell: &Cell, id: &str) -> Result<()> {
    write_all(root, &[(cell.clone(), id.to_string())]).map(drop)
}

/// Records a build's IDs, all or none: every file is first written to a
/// temporary file beside it, and only when all are written and no target is
/// in the way are they renamed over their cells. A reader sees the old ID or
/// the new one, never a torn file. On failure every temporary file is
/// removed, and the error says which cells changed (none, unless a rename
/// itself failed). Returns the cells written, relative to the tree.
pub fn write_all(root: &Path, cells: &[(Cell, String)]) -> Result<Vec<String>> {
    for (cell, id) in cells {
        if !is_ami_id(id) {
            bail!(
                "refusing to record {:?} for {}: not an AMI ID; no ami-list file was changed",
                printable(id),
                cell.relative_path().display()
            );
        }
    }
    let mut staged: Vec<(PathBuf, PathBuf, String)> = Vec::new();
    let result = stage(root, cells, &mut staged).and_then(|()| commit(&staged));
    for (tmp, _, _) in &staged {
        let _ = fs::remove_file(tmp);
    }
    result.map(|()| staged.into_iter().map(|(_, _, rel)| rel).collect())
}

/// Writes each temporary file, and checks that each cell can be replaced.
fn stage(root: &Path, cells: &[(Cell, String)], staged: &mut Vec<(PathBuf, PathBuf, String)>) -> Result<()> {
    let unchanged = "no ami-list file was changed";
    for (cell, id) in cells {
        let rel = cell.relative_path();
        let path = root.join(&rel);
        let dir = path.parent().expect("a cell has a parent directory");
        fs::create_dir_all(dir).with_context(|| format!("create {}; {unchanged}", printable_path(dir)))?;
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{} is a directory, where a file holding one AMI ID belongs: remove it and record again; {unchanged}",
                printable_path(&path)
            );
        }
        let tmp = dir.join(format!(".{}.tmp-{}", cell.slot, std::process::id()));
        staged.push((tmp.clone(), path, rel.display().to_string()));
        fs::write(&tmp, format_id(id)).with_context(|| format!("write {}; {unchanged}", printable_path(&tmp)))?;
    }
    Ok(())
}

/// Renames every staged file over its cell.
fn commit(staged: &[(PathBuf, PathBuf, String)]) -> Result<()> {
    for (done, (tmp, path, _)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            let changed: Vec<&str> = staged[..done].iter().map(|(_, _, rel)| rel.as_str()).collect();
            let changed = if changed.is_empty() { "none".to_string() } else { changed.join(", ") };
            return Err(e).with_context(|| {
                format!(
                    "rename {} to {}; ami-list files changed before this failure: {changed}; the others are unchanged",
                    printable_path(tmp),
                    printable_path(path)
                )
            });
        }
    }
    Ok(())
}

/// `text` safe to print: control characters (and the bidirectional
/// overrides that reorder a terminal line) escaped as `\n`, `\u{1b}`.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path, safe to print.
pub fn printable_path(path: &Path) -> String {
    printable(&path.to_string_lossy())
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
    fn a_build_is_recorded_all_or_nothing() {
        let root = scratch("all-or-nothing");
        let cell = |region: &str| Cell { image: "base".into(), region: region.into(), slot: "hvm".into() };
        let cells: Vec<(Cell, String)> =
            ["eu-west-1", "us-east-1", "us-west-2"].iter().map(|r| (cell(r), "ami-1234abcd".to_string())).collect();
        assert_eq!(
            write_all(&root, &cells).unwrap(),
            ["base/eu-west-1/hvm", "base/us-east-1/hvm", "base/us-west-2/hvm"]
        );
        // One cell's path is a directory: nothing changes, no temporary file stays.
        fs::remove_file(root.join("base/us-east-1/hvm")).unwrap();
        fs::create_dir(root.join("base/us-east-1/hvm")).unwrap();
        let newer: Vec<(Cell, String)> = cells.iter().map(|(c, _)| (c.clone(), "ami-5678abcd".to_string())).collect();
        let err = format!("{:#}", write_all(&root, &newer).unwrap_err());
        assert!(
            err.contains("base/us-east-1/hvm is a directory") && err.contains("no ami-list file was changed"),
            "{err}"
        );
        assert_eq!(read(&root, &cell("eu-west-1")).unwrap().as_deref(), Some("ami-1234abcd"));
        assert_eq!(read(&root, &cell("us-west-2")).unwrap().as_deref(), Some("ami-1234abcd"));
        for region in ["eu-west-1", "us-east-1", "us-west-2"] {
            let names: Vec<String> = fs::read_dir(root.join("base").join(region))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["hvm"], "{region}: a temporary file was left");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("base/us-east-1/hvm ü"), "base/us-east-1/hvm ü");
        assert_eq!(printable("\x1b]0;owned\x07\r\n\u{9b}\u{202e}"), "\\u{1b}]0;owned\\u{7}\\r\\n\\u{9b}\\u{202e}");
    }

    #[test]
    fn ids_are_read_only_from_a_tree_read_whole() {
        let root = scratch("read-ids");
        write(&root, &cell(), "ami-1234abcd").unwrap();
        fs::write(root.join("README.md"), "notes").unwrap();
        let (ids, regions) = read_ids(&root).unwrap();
        assert_eq!(ids, BTreeMap::from([("ami-1234abcd".to_string(), vec!["spark-3.5.3/us-west-2/hvm".to_string()])]));
        assert_eq!(regions, BTreeSet::from(["us-west-2".to_string()]));
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("base")).unwrap();
        let err = format!("{:#}", read_ids(&root).unwrap_err());
        assert!(err.contains("/base: a dangling symlink") && err.contains("nothing is deleted"), "{err}");
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
