//! The offline rules `validate` applies to packer/matrix.json and to an
//! ami-list tree. Pure: text and file listings in, problems out.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ami_list, matrix, matrix::Matrix};

mod matrix_rules;
mod os_rules;
use matrix_rules::unknown_region;
pub use matrix_rules::{check_matrix, load_matrix, AWS_REGIONS};

/// One thing wrong, printed as `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

/// One entry of an ami-list tree as found on disk, path relative to its root.
/// (Symlinks, sockets and the like never get here: the tree walker in
/// ami_list reports them itself.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir(String),
    File(String, String),
}

/// What the tree may hold: from the matrix.
#[derive(Debug, Clone)]
pub struct ExpectedCells {
    pub images: BTreeSet<String>,
    /// File names: `hvm`, `pv`, `hvm-arm64`, `hvm-arm64.debian-13`.
    pub slots: BTreeSet<String>,
}

impl ExpectedCells {
    pub fn from_matrix(matrix: &Matrix) -> ExpectedCells {
        ExpectedCells {
            images: matrix.images.iter().map(|i| i.name.clone()).collect(),
            slots: matrix
                .os_families
                .iter()
                .flat_map(|os| os.source_amis.iter().map(|s| matrix::slot(&s.virt, &s.arch, os.slot_suffix())))
                .collect(),
        }
    }
}

/// A well-formed file of the tree: what `--online` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub path: String,
    pub image: String,
    pub region: String,
    pub slot: String,
    pub id: String,
}

/// The rules for an ami-list tree. `root` names the tree in messages.
pub fn check_tree(root: &str, entries: &[Entry], known: &ExpectedCells) -> (Vec<Problem>, Vec<Recorded>) {
    let at = |rel: &str, line: usize, message: String| Problem { path: format!("{root}/{rel}"), line, message };
    let mut problems = Vec::new();
    let mut recorded: Vec<Recorded> = Vec::new();
    let mut first_place: BTreeMap<String, String> = BTreeMap::new();
    let regions: BTreeSet<&str> = AWS_REGIONS.iter().copied().collect();
    for entry in entries {
        let (rel, content) = match entry {
            Entry::Dir(rel) => (rel.as_str(), None),
            Entry::File(rel, content) => (rel.as_str(), Some(content.as_str())),
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let name = parts.last().copied().unwrap_or("");
        if content.is_some() && name.starts_with('.') && name.contains(".tmp") {
            problems.push(at(rel, 1, "a temporary file left by an interrupted write: delete it".to_string()));
            continue;
        }
        if parts.len() == 1 && content.is_some() && name == "README.md" {
            continue;
        }
        // Directories: <image>/ and <image>/<region>/ only; files only at depth 3.
        if let Some(problem) = unknown_place(&parts, known, &regions) {
            problems.extend(problem.map(|message| at(rel, 1, message)));
            continue;
        }
        match (parts.len(), content) {
            (1 | 2, None) => {}
            (1 | 2, Some(_)) => problems.push(at(
                rel,
                1,
                "stray file: ami-list holds files only at <image>/<region>/<virt>; move or remove it".to_string(),
            )),
            (3, None) => {
                problems.push(at(rel, 1, format!("`{name}` is a directory; it should be a file holding one AMI ID")))
            }
            (3, Some(content)) => match cell_problem(known, name, content) {
                Err((line, message)) => problems.push(at(rel, line, message)),
                Ok(id) => {
                    if let Some(first) = first_place.get(&id) {
                        let message = format!("{id} is also recorded in {root}/{first}; one AMI has one place");
                        problems.push(at(rel, 1, message));
                    } else {
                        first_place.insert(id.clone(), rel.to_string());
                    }
                    let (image, region, slot) = (parts[0].to_string(), parts[1].to_string(), name.to_string());
                    recorded.push(Recorded { path: format!("{root}/{rel}"), image, region, slot, id });
                }
            },
            (_, _) => problems.push(at(
                rel,
                1,
                "stray entry: ami-list is only <image>/<region>/<virt>, three levels deep; remove it".to_string(),
            )),
        }
    }
    (problems, recorded)
}

/// An entry under an image or region the matrix does not know: its problem,
/// said once at the unknown directory itself (`Some(None)` below it).
fn unknown_place(parts: &[&str], known: &ExpectedCells, regions: &BTreeSet<&str>) -> Option<Option<String>> {
    let image = parts.first()?;
    if !known.images.contains(*image) {
        let names: Vec<&str> = known.images.iter().map(String::as_str).collect();
        let message = format!("unknown image `{image}`: the matrix defines {}; remove or rename it", names.join(", "));
        return Some((parts.len() == 1).then_some(message));
    }
    let region = parts.get(1)?;
    if !regions.contains(*region) {
        return Some((parts.len() == 2).then(|| unknown_region(region)));
    }
    None
}

/// A cell file's ID, or the line and message of what is wrong with its
/// name or its content.
fn cell_problem(known: &ExpectedCells, name: &str, content: &str) -> Result<String, (usize, String)> {
    if !known.slots.contains(name) {
        let names: Vec<&str> = known.slots.iter().map(String::as_str).collect();
        return Err((1, format!("unknown virtualization `{name}`: expected one of {}", names.join(", "))));
    }
    file_id(content)
}

/// The ID in a file, or the line and message of what is wrong with it.
fn file_id(content: &str) -> Result<String, (usize, String)> {
    if content.is_empty() {
        return Err((1, "empty file: it should hold one AMI ID and a newline".to_string()));
    }
    let mut lines = content.split('\n');
    let first = lines.next().unwrap_or("");
    let trimmed = first.trim();
    if !ami_list::is_ami_id(trimmed) {
        let hint = if ami_list::is_ami_id(&trimmed.to_lowercase()) {
            "write it in lower case"
        } else {
            "expected `ami-` and 8 or 17 lowercase hex digits"
        };
        return Err((1, format!("`{trimmed}` is not an AMI ID: {hint}")));
    }
    if trimmed != first {
        return Err((1, format!("spaces around {trimmed}: the file holds the ID and a newline only")));
    }
    if !content.ends_with('\n') {
        return Err((1, format!("no newline after {trimmed}: spark_ec2.py expects one")));
    }
    if content.len() > first.len() + 1 {
        let extra = content[first.len() + 1..].split('\n').position(|l| !l.is_empty()).unwrap_or(0);
        return Err((2 + extra, "more than one line: the file holds exactly one AMI ID".to_string()));
    }
    Ok(trimmed.to_string())
}

/// Cells of the preset with no file: "not built yet".
pub fn missing_cells(builds: &[matrix::Build], recorded: &[Recorded]) -> Vec<String> {
    let have: BTreeSet<(&str, &str, &str)> =
        recorded.iter().map(|r| (r.image.as_str(), r.region.as_str(), r.slot.as_str())).collect();
    let mut missing = BTreeSet::new();
    for build in builds {
        let slot = build.slot();
        for region in build.regions() {
            if !have.contains(&(build.image.name.as_str(), region, slot.as_str())) {
                missing.insert(format!("{}/{region}/{slot}", build.image.name));
            }
        }
    }
    missing.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::{matrix_rules::json_lines, *};

    const MATRIX: &str = include_str!("../../packer/matrix.json");

    fn line_containing(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
    }

    /// The checked-in matrix with one edit; the edit must apply.
    fn edited(from: &str, to: &str) -> String {
        assert!(MATRIX.contains(from), "fixture edit {from:?} no longer applies");
        MATRIX.replacen(from, to, 1)
    }

    fn matrix_problems(text: &str) -> Vec<String> {
        check_matrix("packer/matrix.json", text).0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_checked_in_matrix_is_clean() {
        assert_eq!(matrix_problems(MATRIX), Vec::<String>::new());
    }

    #[test]
    fn garbage_never_panics() {
        for text in ["", "null", "[]", "{", "{}", "\u{0}", "{\"images\": 3}", "{\"images\": [{\"name\": 1}]}"] {
            let (problems, matrix) = check_matrix("m.json", text);
            assert!(matrix.is_none() && problems.len() == 1, "{text:?}: {problems:?}");
        }
        let entries = [Entry::Dir(String::new()), file("", ""), file("/", "\n"), file("a/b/c/d/e", "\u{0}")];
        let _ = check_tree("", &entries, &expected());
        let _ = json_lines("{\"a\": [1, {\"b\": \"\\\"\"}], \"c\"");
    }

    #[test]
    fn json_lines_finds_nested_values() {
        let lines = json_lines(MATRIX);
        assert_eq!(lines["images[1].spark.sha512"], line_containing(MATRIX, "\"sha512\""));
        assert_eq!(lines["os_families[0].login_user"], line_containing(MATRIX, "\"admin\""));
        assert_eq!(lines["presets.seed-2014.regions[4]"], line_containing(MATRIX, "\"sa-east-1\""));
        assert_eq!(lines["virtualization[1].archs[0].arch"], line_containing(MATRIX, "\"m3.medium\""));
    }

    /// Each bad matrix: the edit, the line it must be reported on (by a text
    /// on that line of the edited file), and the message it must carry.
    #[test]
    fn every_bad_matrix_gets_its_own_message_and_line() {
        let sha = "3b041e538282c15ad3b0ab2f05d558e1be2d16e047c2a98ca9c08176c4a50e7101bd2199aec97a66fdabf4b3f490c2c1cefd547bbe35a1b3e3143e066948ee6d";
        let cases: Vec<(&str, String, &str, &str)> = vec![
            ("syntax", edited("\"images\": [", "\"images\": [,"), "\"images\": [,", "not valid JSON"),
            (
                "unknown field",
                edited("\"hadoop_build\"", "\"hadoop\": 3, \"hadoop_build\""),
                "\"hadoop\": 3",
                "unknown field `hadoop`",
            ),
            (
                "missing field",
                edited("\"public\": false\n    },", "\"pub\": false\n    },"),
                "\"pub\"",
                "unknown field `pub`",
            ),
            (
                "duplicate image",
                edited("{ \"name\": \"base\" },", "{ \"name\": \"base\" }, { \"name\": \"base\" },"),
                "{ \"name\": \"base\" }, { \"name\": \"base\" }",
                "image `base` is defined twice",
            ),
            (
                "spark image without spark",
                edited("{ \"name\": \"base\" }", "{ \"name\": \"spark-3.5.4\" }"),
                "spark-3.5.4",
                "has no `spark` section",
            ),
            (
                "misnamed spark image",
                edited("\"name\": \"spark-3.5.3\"", "\"name\": \"spark-3.5\""),
                "\"spark-3.5\"",
                "name it `spark-3.5.3`",
            ),
            (
                "bad spark version",
                edited("\"version\": \"3.5.3\"", "\"version\": \"3.5\""),
                "\"version\": \"3.5\"",
                "is not X.Y.Z",
            ),
            ("bad hadoop build", edited("\"hadoop3\"", "\"hdp3\""), "\"hdp3\"", "not an Apache build suffix"),
            ("no checksum", edited(sha, "PENDING"), "PENDING", "has no checksum"),
            ("short checksum", edited(sha, &sha[..64]), &sha[..64], "is not a SHA-512"),
            ("upper-case checksum", edited(sha, &sha.to_uppercase()), "3B041E", "is not a SHA-512"),
            (
                "unknown virtualization",
                edited("\"name\": \"pv\"", "\"name\": \"paravirtual\""),
                "\"paravirtual\"",
                "unknown virtualization type",
            ),
            (
                "unknown arch",
                edited("\"arch\": \"arm64\"", "\"arch\": \"aarch64\""),
                "\"aarch64\"",
                "unknown architecture `aarch64`",
            ),
            (
                "pv with arm64",
                edited(
                    "{ \"arch\": \"x86_64\", \"instance_type\": \"m3.medium\" }",
                    "{ \"arch\": \"arm64\", \"instance_type\": \"m3.medium\" }",
                ),
                "{ \"arch\": \"arm64\", \"instance_type\": \"m3.medium\" }",
                "PV with arm64",
            ),
            ("empty instance type", edited("\"m7g.large\"", "\"\""), "\"instance_type\": \"\"", "empty instance type"),
            (
                "no owners",
                edited("\"owners\": [\"136693071363\"] }", "\"owners\": [] }"),
                "\"owners\": [] }",
                "no source AMI owners",
            ),
            (
                "root login",
                edited("\"login_user\": \"admin\"", "\"login_user\": \"root\""),
                "\"root\"",
                "the provisioners run through sudo",
            ),
            (
                "unknown OS in preset",
                edited("\"os\": [\"debian-13\"]", "\"os\": [\"debian-14\"]"),
                "\"debian-14\"",
                "names unknown OS family `debian-14`",
            ),
            (
                "Spark on an OS without its Java",
                edited("\"images\": [\"base\", \"spark-4.3.0\"]", "\"images\": [\"base\", \"spark-3.5.3\"]"),
                "\"images\": [\"base\", \"spark-3.5.3\"]",
                "preset `default` builds spark-3.5.3 (Java [8, 11, 17]) on debian-13, which packages Java [21, 25] only",
            ),
            (
                "two seed-named families on one cell",
                edited("{ \"virt\": \"pv\", \"arch\": \"x86_64\"", "{ \"virt\": \"hvm\", \"arch\": \"x86_64\""),
                "\"amzn-ami-pv-*-x86_64-ebs\"",
                "two families with seed_slots both build hvm x86_64",
            ),
            (
                "unknown region",
                edited("\"sa-east-1\"", "\"sa-east1\""),
                "\"sa-east1\"",
                "unknown AWS region `sa-east1`: did you mean one of sa-east-1?",
            ),
            (
                "duplicate region",
                edited("\"sa-east-1\"", "\"us-west-2\""),
                "\"us-west-2\"\n",
                "lists region `us-west-2` twice",
            ),
            (
                "unknown image in preset",
                edited(
                    "\"images\": [\"base\", \"spark-4.3.0\"],\n      \"virtualization\": [\"hvm\"]",
                    "\"images\": [\"base\", \"spark-9.9.9\"],\n      \"virtualization\": [\"hvm\"]",
                ),
                "spark-9.9.9",
                "names unknown image `spark-9.9.9`",
            ),
            (
                "build region outside regions",
                edited(
                    "\"build_region\": \"us-east-1\",\n      \"regions\": [\"us-east-1\", ",
                    "\"build_region\": \"eu-west-2\",\n      \"regions\": [\"us-east-1\", ",
                ),
                "\"eu-west-2\"",
                "is not among preset `default`'s regions",
            ),
            (
                "empty regions",
                edited("\"regions\": [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]", "\"regions\": []"),
                "\"regions\": []",
                "lists no region",
            ),
        ];
        let mut kinds = BTreeSet::new();
        for (kind, text, on_line, message) in &cases {
            let problems = matrix_problems(text);
            let at = text.find(on_line).unwrap_or_else(|| panic!("{kind}: {on_line:?} not in the edited text"));
            let line = text[..at].matches('\n').count() + 1;
            let expected_prefix = format!("packer/matrix.json:{line}: ");
            assert!(
                problems.iter().any(|p| p.starts_with(&expected_prefix) && p.contains(message)),
                "{kind}: expected {expected_prefix}...{message}, got {problems:#?}"
            );
            kinds.insert(*kind);
        }
        assert!(kinds.len() >= 20);
    }

    fn expected() -> ExpectedCells {
        ExpectedCells::from_matrix(&Matrix::parse(MATRIX).unwrap())
    }

    fn file(path: &str, content: &str) -> Entry {
        Entry::File(path.to_string(), content.to_string())
    }

    fn dirs_for(path: &str) -> Vec<Entry> {
        let parts: Vec<&str> = path.split('/').collect();
        (1..parts.len()).map(|n| Entry::Dir(parts[..n].join("/"))).collect()
    }

    fn tree_problems(entries: &[Entry]) -> Vec<String> {
        check_tree("ami-list", entries, &expected()).0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_good_tree_is_clean_and_recorded() {
        let mut entries = dirs_for("base/us-east-1/hvm");
        entries.push(file("README.md", "# ami-list\n"));
        entries.push(file("base/us-east-1/hvm", "ami-0123456789abcdef0\n"));
        entries.push(file("base/us-east-1/hvm-arm64", "ami-1234abcd\n"));
        let (problems, recorded) = check_tree("ami-list", &entries, &expected());
        assert_eq!(problems, vec![]);
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[1].slot, "hvm-arm64");
    }

    #[test]
    fn every_bad_tree_gets_its_own_message_and_line() {
        let good = "ami-0123456789abcdef0\n";
        let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
            (
                "unknown image",
                vec![Entry::Dir("spark-9.9.9".into())],
                "ami-list/spark-9.9.9:1: unknown image `spark-9.9.9`",
            ),
            (
                "unknown region",
                vec![Entry::Dir("base".into()), Entry::Dir("base/us-east".into())],
                "ami-list/base/us-east:1: unknown AWS region `us-east`",
            ),
            (
                "unknown virt",
                vec![file("base/us-east-1/paravirtual", good)],
                "ami-list/base/us-east-1/paravirtual:1: unknown virtualization `paravirtual`",
            ),
            (
                "arm64 under pv",
                vec![file("base/us-east-1/pv-arm64", good)],
                "ami-list/base/us-east-1/pv-arm64:1: unknown virtualization",
            ),
            (
                "no newline",
                vec![file("base/us-east-1/hvm", "ami-0123456789abcdef0")],
                "ami-list/base/us-east-1/hvm:1: no newline after ami-0123456789abcdef0",
            ),
            ("empty file", vec![file("base/us-east-1/hvm", "")], "ami-list/base/us-east-1/hvm:1: empty file"),
            (
                "malformed id",
                vec![file("base/us-east-1/hvm", "ami-12345\n")],
                "ami-list/base/us-east-1/hvm:1: `ami-12345` is not an AMI ID",
            ),
            (
                "upper-case id",
                vec![file("base/us-east-1/hvm", "ami-1234ABCD\n")],
                "ami-list/base/us-east-1/hvm:1: `ami-1234ABCD` is not an AMI ID: write it in lower case",
            ),
            ("not an ami", vec![file("base/us-east-1/hvm", "snap-1234abcd\n")], "is not an AMI ID"),
            (
                "spaces",
                vec![file("base/us-east-1/hvm", " ami-1234abcd\n")],
                "ami-list/base/us-east-1/hvm:1: spaces around ami-1234abcd",
            ),
            (
                "two lines",
                vec![file("base/us-east-1/hvm", "ami-1234abcd\nami-5678abcd\n")],
                "ami-list/base/us-east-1/hvm:2: more than one line",
            ),
            (
                "blank lines then junk",
                vec![file("base/us-east-1/hvm", "ami-1234abcd\n\n\njunk\n")],
                "ami-list/base/us-east-1/hvm:4: more than one line",
            ),
            (
                "duplicate id",
                vec![file("base/us-east-1/hvm", good), file("base/us-west-2/hvm", good)],
                "ami-list/base/us-west-2/hvm:1: ami-0123456789abcdef0 is also recorded in ami-list/base/us-east-1/hvm",
            ),
            ("stray file at top", vec![file("notes.txt", "hi\n")], "ami-list/notes.txt:1: unknown image `notes.txt`"),
            ("stray file in image", vec![file("base/hvm", good)], "ami-list/base/hvm:1: unknown AWS region `hvm`"),
            (
                "stray file in region dir level",
                vec![file("base/us-east-1", good)],
                "ami-list/base/us-east-1:1: stray file",
            ),
            ("too deep", vec![file("base/us-east-1/hvm/old", good)], "ami-list/base/us-east-1/hvm/old:1: stray entry"),
            (
                "directory as cell",
                vec![Entry::Dir("base/us-east-1/hvm".into())],
                "ami-list/base/us-east-1/hvm:1: `hvm` is a directory",
            ),
            (
                "temp file",
                vec![file("base/us-east-1/.hvm.tmp-1234", good)],
                "ami-list/base/us-east-1/.hvm.tmp-1234:1: a temporary file left by an interrupted write",
            ),
        ];
        for (kind, entries, expected) in &cases {
            let problems = tree_problems(entries);
            assert!(problems.iter().any(|p| p.contains(expected)), "{kind}: expected {expected:?}, got {problems:#?}");
        }
        assert!(cases.len() >= 15);
    }

    #[test]
    fn missing_cells_are_listed() {
        let matrix = Matrix::parse(MATRIX).unwrap();
        let builds = matrix
            .expand("seed-2014", &crate::matrix::Filters::default(), crate::matrix::Strategy::Copy, false)
            .unwrap();
        let recorded = vec![Recorded {
            path: "ami-list/base/us-east-1/hvm".into(),
            image: "base".into(),
            region: "us-east-1".into(),
            slot: "hvm".into(),
            id: "ami-1234abcd".into(),
        }];
        let missing = missing_cells(&builds, &recorded);
        assert_eq!(missing.len(), 31);
        assert!(!missing.contains(&"base/us-east-1/hvm".to_string()));
        assert!(missing.contains(&"spark-3.5.3/sa-east-1/pv".to_string()));
    }
}
