//! What determines a build's image, as one hash: the template, the scripts
//! it runs, the matrix cell, the resolved source AMI and, for Spark on base,
//! the base AMI. Every AMI is tagged with the hash and with a short digest of
//! each input, so a later run knows both whether and why a build changed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::matrix::Build;

pub(crate) use crate::factory::{INPUTS_TAG, INPUT_DIGESTS_TAG as DIGESTS_TAG};

/// One build's inputs: name -> full SHA-256 (files, the cell) or an ID
/// (`source`, `base`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inputs {
    parts: BTreeMap<String, String>,
}

/// What the run knows when it computes a build's inputs.
pub(crate) struct RunInputs<'a> {
    /// The template's text.
    pub template: &'a str,
    /// Script name (`base.sh`) -> text, for every script in scripts/.
    pub scripts: &'a BTreeMap<String, String>,
    pub provision: bool,
    pub smoke_test: bool,
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The scripts a build runs, in the template's order (see its `steps`).
pub(crate) fn scripts_run(build: &Build, provision: bool, smoke_test: bool, on_base: bool) -> Vec<&'static str> {
    if !provision {
        return Vec::new();
    }
    let spark = build.image.spark.as_ref();
    let mut steps = vec!["lib.sh"];
    steps.extend((!on_base).then_some("base.sh"));
    steps.extend(spark.map(|_| "spark.sh"));
    steps.extend(spark.and_then(|s| s.install_hadoop.as_ref()).map(|_| "hadoop.sh"));
    steps.extend(spark.filter(|_| smoke_test).map(|_| "smoke-test.sh"));
    steps
}

impl Inputs {
    /// `source`: the source AMI the build's filter resolves to in its launch
    /// region; `base`: the base AMI it launches from with --spark-on-base.
    pub fn of(build: &Build, known: &RunInputs, source: &str, base: Option<&str>) -> Inputs {
        let mut parts = BTreeMap::new();
        let cell = serde_json::json!({
            "image": build.image,
            "virt": build.virt,
            "arch": build.arch,
            "os": build.os.name,
            "login_user": build.os.login_user,
            "java": build.java,
            "instance_type": build.instance_type,
            "source_filter": build.source_ami,
            "public": build.public,
            "provision": known.provision,
            "smoke_test": known.smoke_test,
        });
        parts.insert("cell".to_string(), sha256(&cell.to_string()));
        parts.insert("template".to_string(), sha256(known.template));
        for script in scripts_run(build, known.provision, known.smoke_test, base.is_some()) {
            let text = known.scripts.get(script).map_or("", String::as_str);
            parts.insert(script.to_string(), sha256(text));
        }
        parts.insert("source".to_string(), source.to_string());
        if let Some(base) = base {
            parts.insert("base".to_string(), base.to_string());
        }
        Inputs { parts }
    }

    /// The hash the AMI is tagged with: 16 hex digits of SHA-256 over every input.
    pub fn hash(&self) -> String {
        let lines: String = self.parts.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        sha256(&lines)[..16].to_string()
    }

    /// `name=digest` per input, space-separated: 8 hex digits for content,
    /// the whole ID for AMIs. Short enough for one tag value.
    pub fn digests(&self) -> String {
        let short = |k: &str, v: &str| if k == "source" || k == "base" { v.to_string() } else { v[..8].to_string() };
        self.parts.iter().map(|(k, v)| format!("{k}={}", short(k, v))).collect::<Vec<_>>().join(" ")
    }

    /// What changed since an AMI tagged with `before` (its digests tag), in
    /// words: "scripts/spark.sh changed", "source AMI ami-1 → ami-2".
    pub fn changes_since(&self, before: &str) -> Vec<String> {
        let old: BTreeMap<&str, &str> = before.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
        let now = self.digests();
        let new: BTreeMap<&str, &str> = now.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
        let mut changes = Vec::new();
        for key in old.keys().chain(new.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (was, is) = (old.get(key), new.get(key));
            if was == is {
                continue;
            }
            changes.push(match (*key, was, is) {
                ("source", Some(a), Some(b)) => format!("source AMI {a} → {b}"),
                ("base", Some(a), Some(b)) => format!("base AMI {a} → {b}"),
                ("cell", ..) => "the matrix cell changed".to_string(),
                ("template", ..) => "packer/spark-ami.pkr.hcl changed".to_string(),
                (script, Some(_), Some(_)) => format!("scripts/{script} changed"),
                (name, None, Some(_)) => format!("{name} is new among the inputs"),
                (name, ..) => format!("{name} is no longer an input"),
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Filters, Matrix, Strategy};

    fn seed() -> Vec<Build> {
        Matrix::parse(include_str!("../../../packer/matrix.json"))
            .unwrap()
            .expand("seed-2014", &Filters::default(), Strategy::Copy, false)
            .unwrap()
    }

    fn scripts(spark_sh: &str) -> BTreeMap<String, String> {
        ["lib.sh", "base.sh", "hadoop.sh", "smoke-test.sh"]
            .into_iter()
            .map(|s| (s.to_string(), format!("# {s}")))
            .chain([("spark.sh".to_string(), spark_sh.to_string())])
            .collect()
    }

    fn inputs_of(build: &Build, spark_sh: &str, source: &str) -> Inputs {
        let scripts = scripts(spark_sh);
        let known = RunInputs { template: "template", scripts: &scripts, provision: true, smoke_test: true };
        Inputs::of(build, &known, source, None)
    }

    #[test]
    fn a_change_to_spark_sh_changes_the_spark_builds_only() {
        let builds = seed();
        let (base, spark) = (&builds[0], builds.iter().find(|b| b.image.spark.is_some()).unwrap());
        assert_eq!(inputs_of(base, "a", "ami-1").hash(), inputs_of(base, "b", "ami-1").hash());
        let (before, after) = (inputs_of(spark, "a", "ami-1"), inputs_of(spark, "b", "ami-1"));
        assert_ne!(before.hash(), after.hash());
        assert_eq!(after.changes_since(&before.digests()), ["scripts/spark.sh changed"]);
    }

    #[test]
    fn a_new_source_ami_changes_every_build_on_it_and_says_which() {
        let base = &seed()[0];
        let (before, after) = (inputs_of(base, "a", "ami-1111"), inputs_of(base, "a", "ami-2222"));
        assert_ne!(before.hash(), after.hash());
        assert_eq!(after.changes_since(&before.digests()), ["source AMI ami-1111 → ami-2222"]);
        assert!(after.changes_since(&after.digests()).is_empty());
    }

    #[test]
    fn api_only_builds_depend_on_no_script_and_the_tag_fits() {
        let builds = seed();
        let spark = builds.iter().find(|b| b.image.spark.is_some()).unwrap();
        assert!(scripts_run(spark, false, true, false).is_empty());
        assert_eq!(scripts_run(spark, true, true, true), ["lib.sh", "spark.sh", "smoke-test.sh"]);
        let long = inputs_of(spark, "a", "ami-0123456789abcdef0");
        assert!(long.digests().len() <= 256, "{}", long.digests());
        assert_eq!(long.hash().len(), 16);
    }
}
