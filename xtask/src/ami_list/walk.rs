//! The one reader of a whole ami-list tree, for every command that needs
//! one. It never opens what is not a regular file, never follows a symlink,
//! never reads more than 4 KiB of a file, and never hangs: a FIFO, a device,
//! `/proc` or a 100 MB file are each one refused entry.

use std::{
    fs::{self, File, Metadata},
    io::{ErrorKind, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;

use super::{printable, printable_path};

/// The most a cell is read: an ID and a newline are 22 bytes.
pub const MAX_FILE_BYTES: u64 = 4096;

/// `<image>/<region>/<slot>`: the walk lists three levels and descends no further.
pub const DEPTH: usize = 3;

/// One entry under the tree, by its path relative to the root, with control
/// characters escaped (see [`printable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Dir(String),
    /// A regular file, and its content (lossy UTF-8) where it is a cell,
    /// three levels down. Other files are listed, never read.
    File(String, Option<String>),
    /// Not read, and why: a symlink, FIFO, socket, device, a file over 4 KiB,
    /// or one that could not be read.
    Refused(String, String),
}

impl Found {
    pub fn path(&self) -> &str {
        match self {
            Found::Dir(p) | Found::File(p, _) | Found::Refused(p, _) => p,
        }
    }
}

/// Every entry of the tree at `root`, sorted by path. `root` itself may be a
/// symlink to the tree; one that is missing, not a directory or unreadable
/// is an error, never an empty tree.
pub fn walk(root: &Path) -> Result<Vec<Found>> {
    let shown = printable_path(root);
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("ami-list {shown} is not a directory: name the tree's directory"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("ami-list {shown} does not exist: name an existing tree (an empty directory if nothing is recorded)")
        }
        Err(e) => return Err(e).with_context(|| format!("ami-list {shown} cannot be read")),
    }
    let canonical_root = root.canonicalize().with_context(|| format!("resolve ami-list {shown}"))?;
    let mut found = Vec::new();
    walk_dir(&canonical_root, root, "", 1, &mut found)
        .with_context(|| format!("ami-list {shown} cannot be read: check its permissions"))?;
    found.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(found)
}

fn walk_dir(canonical_root: &Path, dir: &Path, rel: &str, depth: usize, out: &mut Vec<Found>) -> Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let shown = format!("{rel}{}", printable(&name.to_string_lossy()));
        if name.to_str().is_none() {
            out.push(Found::Refused(shown, "the name is not UTF-8: rename or remove it".to_string()));
            continue;
        }
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                out.push(Found::Refused(shown, format!("cannot be read: {}", printable(&e.to_string()))));
                continue;
            }
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            out.push(Found::Dir(shown.clone()));
            if depth < DEPTH {
                if let Err(e) = walk_dir(canonical_root, &path, &format!("{shown}/"), depth + 1, out) {
                    let why = printable(&format!("{e:#}"));
                    out.push(Found::Refused(shown, format!("the directory cannot be read: {why}")));
                }
            }
        } else if kind.is_file() {
            let content = if depth == DEPTH { Some(read_cell(&path, &meta)) } else { None };
            out.push(match content {
                Some(Err(why)) => Found::Refused(shown, why),
                Some(Ok(text)) => Found::File(shown, Some(text)),
                None => Found::File(shown, None),
            });
        } else if kind.is_symlink() {
            out.push(Found::Refused(shown, symlink_problem(canonical_root, &path)));
        } else {
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            };
            out.push(Found::Refused(
                shown,
                format!("{what}: ami-list holds only directories and regular files; remove it"),
            ));
        }
    }
    Ok(())
}

/// A cell's content, read without blocking and at most 4 KiB: an empty
/// file (as `/proc` reports every file) is not even opened.
pub(super) fn read_cell(path: &Path, meta: &Metadata) -> Result<String, String> {
    let too_large = |size: u64| format!("too large ({size} bytes): a cell holds one AMI ID and a newline; fix it");
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    if meta.len() == 0 {
        return Ok(String::new());
    }
    let flags = OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY;
    let unreadable = |e: std::io::Error| format!("cannot be read: {}", printable(&e.to_string()));
    let file = File::options().read(true).custom_flags(flags.bits()).open(path).map_err(unreadable)?;
    // It may have been swapped for something else since it was listed.
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err("not a regular file any more: remove it".to_string());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Why a symlink is refused; where it points, escaped.
fn symlink_problem(canonical_root: &Path, path: &Path) -> String {
    let target = fs::read_link(path).map(|t| printable_path(&t)).unwrap_or_else(|_| "?".to_string());
    let what = match path.canonicalize() {
        Err(_) => format!("a dangling symlink (to {target})"),
        Ok(real) if !real.starts_with(canonical_root) => format!("a symlink to {target}, outside the tree"),
        Ok(_) => format!("a symlink (to {target})"),
    };
    format!("{what}: ami-list symlinks are never followed; replace it with the file or directory itself")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ami-list-walk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("base/us-east-1")).unwrap();
        dir
    }

    #[test]
    fn cells_are_read_and_everything_odd_is_refused_by_name() {
        let root = scratch("odd");
        let region = root.join("base/us-east-1");
        fs::write(root.join("README.md"), "notes are listed, not read").unwrap();
        fs::write(region.join("hvm"), "ami-1234abcd\n").unwrap();
        fs::write(region.join("pv"), vec![b'x'; 5000]).unwrap();
        fs::write(region.join("hvm-arm64"), b"\x1b[31mred\x07\n").unwrap();
        nix::unistd::mkfifo(&region.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        symlink("/etc/hostname", region.join("out")).unwrap();
        symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        symlink(region.join("hvm"), region.join("in")).unwrap();
        fs::create_dir_all(region.join("deep/deeper")).unwrap();
        fs::write(region.join("bad\x1bname"), "ami-1234abcd\n").unwrap();

        let found = walk(&root).unwrap();
        let by_path = |p: &str| found.iter().find(|f| f.path() == p).unwrap_or_else(|| panic!("{p}: {found:#?}"));
        assert_eq!(by_path("README.md"), &Found::File("README.md".into(), None));
        assert_eq!(
            by_path("base/us-east-1/hvm"),
            &Found::File("base/us-east-1/hvm".into(), Some("ami-1234abcd\n".into()))
        );
        assert_eq!(by_path("base/us-east-1/deep"), &Found::Dir("base/us-east-1/deep".into()));
        assert!(found.iter().all(|f| !f.path().contains("deeper")), "three levels only");
        let refused = |p: &str| match by_path(p) {
            Found::Refused(_, why) => why.clone(),
            other => panic!("{p}: not refused: {other:?}"),
        };
        assert!(refused("base/us-east-1/pv").starts_with("too large (5000 bytes)"));
        assert!(refused("base/us-east-1/fifo").starts_with("a FIFO"));
        assert!(refused("base/us-east-1/out").contains("outside the tree"));
        assert!(refused("dangling").starts_with("a dangling symlink"));
        assert!(refused("base/us-east-1/in").contains("never followed"));
        assert!(matches!(by_path("base/us-east-1/bad\\u{1b}name"), Found::File(..)), "names are escaped");
        // Binary content is handed on as is; whoever prints it escapes it.
        let Found::File(_, Some(text)) = by_path("base/us-east-1/hvm-arm64") else { panic!() };
        assert_eq!(printable(text), "\\u{1b}[31mred\\u{7}\\n");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_or_non_directory_tree_is_an_error_not_an_empty_tree() {
        let root = scratch("missing");
        let err = format!("{:#}", walk(&root.join("nope")).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
        let err = format!("{:#}", walk(&root.join("base/us-east-1/../../README")).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
        fs::write(root.join("file"), "").unwrap();
        let err = format!("{:#}", walk(&root.join("file")).unwrap_err());
        assert!(err.contains("is not a directory"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn proc_is_walked_quickly_without_reading_its_files() {
        let clock = std::time::Instant::now();
        let found = walk(Path::new("/proc")).unwrap();
        assert!(found.iter().any(|f| f.path() == "kmsg"));
        assert!(clock.elapsed().as_secs() < 30, "{:?}", clock.elapsed());
    }
}
