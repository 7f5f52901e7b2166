//! The rules for packer/matrix.json, with the line of each problem, and the
//! one loader every command uses.

use std::collections::{BTreeMap, BTreeSet};

use super::Problem;
use crate::{matrix, matrix::Matrix};

/// Every AWS region an AMI can live in, as of 2026. A name outside this list
/// is almost always a typo (`us-east1`, `eu-west`).
pub const AWS_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

const VIRTUALIZATION_TYPES: [&str; 2] = ["hvm", "pv"];

/// Walks a JSON text, noting the line each value starts on.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    lines: BTreeMap<String, usize>,
}
impl Scanner<'_> {
    fn skip_space(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' | b',' | b':' => {}
                _ => return,
            }
            self.pos += 1;
        }
    }
    fn string(&mut self) -> String {
        let start = self.pos + 1;
        self.pos += 1;
        while let Some(&b) = self.bytes.get(self.pos) {
            self.pos += 1;
            match b {
                b'\\' => self.pos += 1,
                b'"' => break,
                _ => {}
            }
        }
        String::from_utf8_lossy(&self.bytes[start..self.pos.saturating_sub(1).max(start)]).into_owned()
    }
    fn value(&mut self, path: &str) {
        self.skip_space();
        self.lines.insert(path.to_string(), self.line);
        match self.bytes.get(self.pos) {
            Some(b'{') => {
                self.pos += 1;
                loop {
                    self.skip_space();
                    match self.bytes.get(self.pos) {
                        Some(b'"') => {
                            let key = self.string();
                            let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                            self.value(&child);
                        }
                        Some(_) => {
                            self.pos += 1;
                            return;
                        }
                        None => return,
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                for index in 0.. {
                    self.skip_space();
                    match self.bytes.get(self.pos) {
                        Some(b']') | None => {
                            self.pos += 1;
                            return;
                        }
                        Some(_) => self.value(&format!("{path}[{index}]")),
                    }
                }
            }
            Some(b'"') => {
                self.string();
            }
            Some(_) => {
                while self.bytes.get(self.pos).is_some_and(|b| !b",]}\n \t\r".contains(b)) {
                    self.pos += 1;
                }
            }
            None => {}
        }
    }
}

/// Line numbers of every value in a JSON text, by path (`images[1].spark.sha512`).
/// Only called on text serde_json has accepted, so it can be lenient.
pub(super) fn json_lines(text: &str) -> BTreeMap<String, usize> {
    let mut scanner = Scanner { bytes: text.as_bytes(), pos: 0, line: 1, lines: BTreeMap::new() };
    scanner.value("");
    scanner.lines
}

/// The rules for packer/matrix.json. `path` is how the file is named in messages.
/// Returns the parsed matrix too when it could be read at all.
pub fn check_matrix(path: &str, text: &str) -> (Vec<Problem>, Option<Matrix>) {
    let problem = |line: usize, message: String| Problem { path: path.to_string(), line, message };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return (vec![problem(e.line(), format!("not valid JSON: {e}; fix the syntax"))], None);
    }
    let matrix = match serde_json::from_str::<Matrix>(text) {
        Ok(matrix) => matrix,
        Err(e) => {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            return (vec![problem(e.line(), format!("{message}; see the layout of the checked-in matrix"))], None);
        }
    };
    let lines = json_lines(text);
    let line_of = |json_path: &str| {
        // Fall back to the nearest enclosing value that has a line.
        let mut key = json_path.to_string();
        loop {
            if let Some(line) = lines.get(&key) {
                return *line;
            }
            match key.rfind(['.', '[']) {
                Some(cut) => key.truncate(cut),
                None => return 1,
            }
        }
    };
    let mut problems = Vec::new();
    let mut report = |json_path: &str, message: String| problems.push(problem(line_of(json_path), message));

    let image_names = check_images(&matrix, &mut report);
    let virt_names = check_virtualization(&matrix, &mut report);
    let os_names = super::os_rules::check_os_families(&matrix, &virt_names, &mut report);
    check_presets(&matrix, &image_names, &virt_names, &os_names, &mut report);
    super::os_rules::check_preset_java(&matrix, &mut report);
    (problems, Some(matrix))
}

/// Each image: a unique name, and for Spark images a version, a Hadoop build
/// and a SHA-512. Returns the image names.
fn check_images<'m>(matrix: &'m Matrix, report: &mut impl FnMut(&str, String)) -> BTreeSet<&'m str> {
    let mut image_names = BTreeSet::new();
    for (i, image) in matrix.images.iter().enumerate() {
        let at = format!("images[{i}]");
        if !image_names.insert(image.name.as_str()) {
            report(&format!("{at}.name"), format!("image `{}` is defined twice; remove one", image.name));
        }
        match &image.spark {
            None if image.name != matrix::BASE_IMAGE => report(
                &format!("{at}.name"),
                format!("image `{}` has no `spark` section; only `base` may omit it", image.name),
            ),
            None => {}
            Some(spark) => {
                if !matrix::is_release_version(&spark.version) {
                    report(
                        &format!("{at}.spark.version"),
                        format!("Spark version `{}` is not X.Y.Z, e.g. 3.5.3", spark.version),
                    );
                } else if image.name != format!("spark-{}", spark.version) {
                    report(
                        &format!("{at}.name"),
                        format!(
                            "image `{}` holds Spark {}: name it `spark-{}`",
                            image.name, spark.version, spark.version
                        ),
                    );
                }
                if !is_hadoop_build(&spark.hadoop_build) {
                    report(
                        &format!("{at}.spark.hadoop_build"),
                        format!(
                            "hadoop_build `{}` is not an Apache build suffix such as `hadoop3` or `without-hadoop`",
                            spark.hadoop_build
                        ),
                    );
                }
                // Empty: not pinned yet. Local builds use their mirror's
                // checksum; real builds refuse it (site::downloads).
                if !spark.sha512.is_empty() && spark.sha512.chars().all(|c| c.is_ascii_uppercase()) {
                    report(
                        &format!("{at}.spark.sha512"),
                        format!(
                            "Spark {} has no checksum (`{}`): copy the SHA-512 from \
                             https://archive.apache.org/dist/spark/spark-{}/spark-{}-bin-{}.tgz.sha512",
                            spark.version, spark.sha512, spark.version, spark.version, spark.hadoop_build
                        ),
                    );
                } else if !spark.sha512.is_empty() && !is_sha512(&spark.sha512) {
                    report(
                        &format!("{at}.spark.sha512"),
                        format!(
                            "the checksum of Spark {} is not a SHA-512 (128 lowercase hex digits, found {} characters)",
                            spark.version,
                            spark.sha512.len()
                        ),
                    );
                }
            }
        }
    }

    image_names
}

/// Each virtualization type and its architectures' settings. Returns the names.
fn check_virtualization<'m>(matrix: &'m Matrix, report: &mut impl FnMut(&str, String)) -> BTreeSet<&'m str> {
    let mut virt_names = BTreeSet::new();
    for (i, virt) in matrix.virtualization.iter().enumerate() {
        let at = format!("virtualization[{i}]");
        if !VIRTUALIZATION_TYPES.contains(&virt.name.as_str()) {
            report(&format!("{at}.name"), format!("unknown virtualization type `{}`: use hvm or pv", virt.name));
        }
        if !virt_names.insert(virt.name.as_str()) {
            report(&format!("{at}.name"), format!("virtualization `{}` is defined twice; remove one", virt.name));
        }
        let mut archs = BTreeSet::new();
        for (j, settings) in virt.archs.iter().enumerate() {
            let at = format!("{at}.archs[{j}]");
            if !matrix::ARCHITECTURES.contains(&settings.arch.as_str()) {
                report(&format!("{at}.arch"), format!("unknown architecture `{}`: use x86_64 or arm64", settings.arch));
            } else if virt.name == "pv" && settings.arch != "x86_64" {
                report(
                    &format!("{at}.arch"),
                    format!("PV with {}: paravirtual images are x86_64 only; move it under hvm", settings.arch),
                );
            }
            if !archs.insert(settings.arch.as_str()) {
                report(
                    &format!("{at}.arch"),
                    format!("{} is listed twice under {}; remove one", settings.arch, virt.name),
                );
            }
            if settings.instance_type.trim().is_empty() {
                report(&format!("{at}.instance_type"), "empty instance type: name one, e.g. m7i.large".to_string());
            }
        }
    }

    virt_names
}

/// Each preset names known, distinct images, virtualizations, architectures and regions.
fn check_presets(
    matrix: &Matrix,
    image_names: &BTreeSet<&str>,
    virt_names: &BTreeSet<&str>,
    os_names: &BTreeSet<&str>,
    report: &mut impl FnMut(&str, String),
) {
    if matrix.presets.is_empty() {
        report("presets", "no presets: define at least `default`".to_string());
    }
    for (name, preset) in &matrix.presets {
        let at = format!("presets.{name}");
        let mut axis = |field: &str, values: &[String], known: &BTreeSet<&str>, what: &str| {
            if values.is_empty() {
                report(&format!("{at}.{field}"), format!("preset `{name}` lists no {what}; name at least one"));
            }
            let mut seen = BTreeSet::new();
            for (k, value) in values.iter().enumerate() {
                let here = format!("{at}.{field}[{k}]");
                if !known.contains(value.as_str()) {
                    let choices: Vec<&str> = known.iter().copied().collect();
                    report(
                        &here,
                        format!("preset `{name}` names unknown {what} `{value}`; known: {}", choices.join(", ")),
                    );
                } else if !seen.insert(value.as_str()) {
                    report(&here, format!("preset `{name}` lists {what} `{value}` twice; remove one"));
                }
            }
        };
        axis("os", &preset.os, os_names, "OS family");
        axis("images", &preset.images, image_names, "image");
        axis("virtualization", &preset.virtualization, virt_names, "virtualization type");
        axis("archs", &preset.archs, &matrix::ARCHITECTURES.into_iter().collect(), "architecture");
        let regions: BTreeSet<&str> = AWS_REGIONS.iter().copied().collect();
        let mut seen = BTreeSet::new();
        if preset.regions.is_empty() {
            report(&format!("{at}.regions"), format!("preset `{name}` lists no region; name at least one"));
        }
        for (k, region) in preset.regions.iter().enumerate() {
            let here = format!("{at}.regions[{k}]");
            if !regions.contains(region.as_str()) {
                report(&here, unknown_region(region));
            } else if !seen.insert(region.as_str()) {
                report(&here, format!("preset `{name}` lists region `{region}` twice; remove one"));
            }
        }
        if !regions.contains(preset.build_region.as_str()) {
            report(&format!("{at}.build_region"), unknown_region(&preset.build_region));
        } else if !preset.regions.contains(&preset.build_region) {
            report(
                &format!("{at}.build_region"),
                format!(
                    "build region `{}` is not among preset `{name}`'s regions, so copy builds would \
                     launch elsewhere; add it to `regions`",
                    preset.build_region
                ),
            );
        }
    }
}

/// Reads and validates a matrix file; the first problem, and how many more,
/// is the error. Every command loads the matrix this way.
pub fn load_matrix(path: &std::path::Path) -> anyhow::Result<Matrix> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("read the matrix {}", path.display()))?;
    let (problems, matrix) = check_matrix(&crate::project::display(path), &text);
    if let Some(first) = problems.first() {
        anyhow::bail!(
            "{first}{}; fix the matrix (`cargo xtask validate` lists every problem)",
            match problems.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        );
    }
    matrix.context("the matrix could not be read")
}

pub(super) fn unknown_region(region: &str) -> String {
    let near: Vec<&str> = AWS_REGIONS
        .iter()
        .copied()
        .filter(|r| r.replace('-', "").starts_with(&region.replace('-', "").chars().take(4).collect::<String>()))
        .collect();
    if near.is_empty() {
        format!("unknown AWS region `{region}`: write it as EC2 does, e.g. us-east-1")
    } else {
        format!("unknown AWS region `{region}`: did you mean one of {}?", near.join(", "))
    }
}

fn is_hadoop_build(b: &str) -> bool {
    b == "without-hadoop"
        || b.strip_prefix("hadoop").is_some_and(|v| {
            !v.is_empty() && v.split('.').all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        })
}

fn is_sha512(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
