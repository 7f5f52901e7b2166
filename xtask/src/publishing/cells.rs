//! What gets published: the cells ami-list records, read strictly. Anything
//! in the tree that is not `<image>/<region>/<slot>` holding one AMI ID is an
//! error, so a damaged tree never publishes half of itself.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{ami_list, matrix};

/// One recorded AMI, with its slot split into virtualization, architecture
/// and OS family (none for the seed's names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cell {
    pub image: String,
    pub region: String,
    pub virt: String,
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    pub id: String,
}

impl Cell {
    /// The ami-list file name: `hvm`, `pv`, `hvm-arm64`, `hvm.debian-13`.
    pub fn slot(&self) -> String {
        matrix::slot(&self.virt, &self.arch, self.os.as_deref())
    }

    /// `<image>/<region>/<slot>`, as ami-list and the run report name it.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.image, self.region, self.slot())
    }
}

/// A cell from its path relative to the tree and its file's content.
pub fn parse_cell(rel: &str, content: &str) -> Result<Cell> {
    let parts: Vec<&str> = rel.split('/').collect();
    let [image, region, slot] = parts[..] else {
        bail!("{rel}: not an <image>/<region>/<slot> file");
    };
    let parts = matrix::parse_slot(slot)
        .with_context(|| format!("{rel}: `{slot}` is not a slot (hvm, pv, hvm-arm64, hvm.debian-13)"))?;
    let id = ami_list::parse_id(content).with_context(|| rel.to_string())?;
    Ok(Cell {
        image: image.to_string(),
        region: region.to_string(),
        virt: parts.virt,
        arch: parts.arch,
        os: parts.os,
        id,
    })
}

/// Every cell under `root`, sorted. Fails, naming every problem, on anything
/// else in the tree (a stray file, a symlink, a temporary file, a bad ID);
/// only a top-level README.md is allowed.
pub fn read_tree(root: &Path) -> Result<Vec<Cell>> {
    if !root.is_dir() {
        bail!("no ami-list tree at {}: run build-amis first, or name the tree with --ami-list", root.display());
    }
    let mut cells = Vec::new();
    let mut problems = Vec::new();
    // The one fail-closed walker: never follows a link, never opens a FIFO.
    for found in ami_list::walk(root)? {
        let depth = found.path().split('/').count();
        match found {
            ami_list::Found::Dir(_) if depth <= 2 => {}
            ami_list::Found::File(rel, _) if depth == 1 && rel == "README.md" => {}
            ami_list::Found::File(rel, Some(content)) if depth == 3 => match parse_cell(&rel, &content) {
                Ok(cell) => cells.push(cell),
                Err(e) => problems.push(format!("{e:#}")),
            },
            ami_list::Found::Refused(rel, why) => problems.push(format!("{rel}: {why}")),
            other => problems.push(format!("{}: not an <image>/<region>/<slot> file", other.path())),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problem{} in {} (run `cargo xtask validate` for details): {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            root.display(),
            problems.join("; ")
        );
    }
    cells.sort();
    Ok(cells)
}

/// The cells a build-amis run recorded (`image/region/slot` paths relative to
/// the tree), with the IDs the tree now holds for them.
pub fn read_recorded(root: &Path, recorded: &[String]) -> Result<Vec<Cell>> {
    let mut cells = recorded
        .iter()
        .map(|rel| {
            let path = root.join(rel);
            let content = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            parse_cell(rel, &content)
        })
        .collect::<Result<Vec<_>>>()?;
    cells.sort();
    Ok(cells)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cell with the seed's file names (no OS family), for tests.
    pub(crate) fn seed_cell(image: &str, region: &str, virt: &str, arch: &str, id: &str) -> Cell {
        Cell {
            image: image.into(),
            region: region.into(),
            virt: virt.into(),
            arch: arch.into(),
            os: None,
            id: id.into(),
        }
    }
    use crate::project;

    #[test]
    fn slots_split_into_virtualization_architecture_and_os() {
        let parse = |slot| matrix::parse_slot(slot).map(|p| (p.virt, p.arch, p.os));
        assert_eq!(parse("hvm"), Some(("hvm".into(), "x86_64".into(), None)));
        assert_eq!(parse("pv"), Some(("pv".into(), "x86_64".into(), None)));
        assert_eq!(parse("hvm-arm64"), Some(("hvm".into(), "arm64".into(), None)));
        assert_eq!(parse("hvm-arm64.debian-13"), Some(("hvm".into(), "arm64".into(), Some("debian-13".into()))));
        assert_eq!(parse("pvm"), None, "spark-ec2's name is not a slot");
        assert_eq!(parse("hvm-x86_64"), None, "x86_64 is never suffixed");
        assert_eq!(parse("hvm-"), None);
        assert_eq!(parse("hvm-ARM"), None);
        assert_eq!(parse("hvm."), None);
        assert_eq!(parse("hvm.Debian"), None);
        for (virt, arch, os) in [("hvm", "x86_64", None), ("pv", "x86_64", None), ("hvm", "arm64", Some("debian-12"))] {
            let parts = matrix::parse_slot(&matrix::slot(virt, arch, os)).unwrap();
            assert_eq!((parts.virt.as_str(), parts.arch.as_str(), parts.os.as_deref()), (virt, arch, os));
        }
    }

    #[test]
    fn a_cell_is_its_path_and_one_id() {
        let cell = parse_cell("base/eu-west-1/hvm-arm64", "ami-1234abcd\n").unwrap();
        assert_eq!((cell.virt.as_str(), cell.arch.as_str(), cell.id.as_str()), ("hvm", "arm64", "ami-1234abcd"));
        assert_eq!(cell.path(), "base/eu-west-1/hvm-arm64");
        assert!(parse_cell("base/eu-west-1/hvm", "ami-1234abcd").is_err(), "no newline");
        assert!(parse_cell("base/hvm", "ami-1234abcd\n").is_err());
    }

    #[test]
    fn a_tree_with_anything_else_in_it_is_refused_whole() {
        let root = project::target_dir().join("test-scratch").join(format!("publish-cells-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("base/us-east-1")).unwrap();
        fs::write(root.join("README.md"), "about\n").unwrap();
        fs::write(root.join("base/us-east-1/hvm"), "ami-1234abcd\n").unwrap();
        fs::write(root.join("base/us-east-1/pv"), "ami-5678abcd\n").unwrap();
        let cells = read_tree(&root).unwrap();
        assert_eq!(cells.iter().map(Cell::path).collect::<Vec<_>>(), ["base/us-east-1/hvm", "base/us-east-1/pv"]);

        fs::write(root.join("base/us-east-1/.hvm.tmp-7"), "ami-1234abcd\n").unwrap();
        std::os::unix::fs::symlink("hvm", root.join("base/us-east-1/pvm")).unwrap();
        let err = format!("{:#}", read_tree(&root).unwrap_err());
        assert!(err.starts_with("2 problems in"), "{err}");
        assert!(err.contains("base/us-east-1/.hvm.tmp-7: `.hvm.tmp-7` is not a slot"), "{err}");
        assert!(err.contains("base/us-east-1/pvm: a symlink"), "{err}");
        assert!(read_tree(&root.join("missing")).unwrap_err().to_string().contains("run build-amis first"));
        fs::remove_dir_all(&root).unwrap();
    }
}
