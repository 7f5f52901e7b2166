//! SSM Parameter Store: one String parameter of data type `aws:ec2:image`
//! per cell, in the cell's own region, named
//! `<prefix>/<image>/<virt>/<arch>/latest/image_id` (the shape of
//! `/aws/service/eks/optimized-ami/...`). Each write is a new version, so
//! SSM keeps the history; each version is labelled with the AMI's run id.
//!
//! Deciding is pure (`plan`, `drift`); the calls are in `apply` and `read`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;
use xshell::Shell;

use super::cells::Cell;
use crate::aws::{Aws, Parameter};

pub const DATA_TYPE: &str = "aws:ec2:image";

/// A prefix SSM will take: `/`, then `/`-separated names of letters, digits
/// and `_.-`, not under AWS's reserved `/aws` or `/ssm`, within SSM's 15 levels
/// once the 5 levels of a cell are added.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let Some(rest) = prefix.strip_prefix('/') else {
        bail!("SSM prefix {prefix:?}: start the prefix with `/`, e.g. /spark-packer");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let bad_part = |p: &&str| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if parts.iter().any(bad_part) {
        bail!(
            "SSM prefix {prefix:?}: use `/`-separated names of letters, digits, `_`, `.` and `-`, with no trailing `/`"
        );
    }
    let first = parts[0].to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        bail!("SSM prefix {prefix:?}: names under /aws and /ssm are reserved by AWS; use e.g. /spark-packer");
    }
    if parts.len() + 5 > 15 {
        bail!("SSM prefix {prefix:?}: SSM allows 15 levels and a cell adds 5; use at most 10 in the prefix");
    }
    Ok(())
}

/// The parameter for a cell.
pub fn name(prefix: &str, cell: &Cell) -> String {
    format!("{prefix}/{}/{}/{}/latest/image_id", cell.image, cell.virt, cell.arch)
}

/// The label for a version: SSM labels may not start with a digit, as run ids do.
pub fn label(run_id: &str) -> String {
    let clean: String =
        run_id.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).collect();
    format!("run-{clean}")
}

/// What one cell's parameter should become.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wanted {
    pub region: String,
    pub name: String,
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Create,
    Update {
        from: String,
        version: u64,
    },
    Unchanged {
        version: u64,
    },
    /// It exists as something this command must not overwrite.
    Refuse {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub wanted: Wanted,
    #[serde(flatten)]
    pub action: Action,
}

/// What each parameter needs, given what `current` holds: region -> name -> parameter.
pub fn plan(wanted: Vec<Wanted>, current: &BTreeMap<String, BTreeMap<String, Parameter>>) -> Vec<Change> {
    wanted
        .into_iter()
        .map(|wanted| {
            let action = match current.get(&wanted.region).and_then(|params| params.get(&wanted.name)) {
                None => Action::Create,
                Some(p) if p.kind != "String" => Action::Refuse {
                    reason: format!(
                        "it is a {} parameter, not String: delete it or choose another --ssm prefix",
                        p.kind
                    ),
                },
                Some(p) if p.value == wanted.value && p.data_type == DATA_TYPE => {
                    Action::Unchanged { version: p.version }
                }
                Some(p) => Action::Update { from: p.value.clone(), version: p.version },
            };
            Change { wanted, action }
        })
        .collect()
}

/// Where published parameters and ami-list disagree, as `(name, message)`:
/// a missing or different value, a wrong data type, and a parameter under
/// the prefix that no recorded cell explains.
pub fn drift(wanted: &[Wanted], current: &BTreeMap<String, BTreeMap<String, Parameter>>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut explained: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in wanted {
        explained.entry(&w.region).or_default().push(&w.name);
        match current.get(&w.region).and_then(|params| params.get(&w.name)) {
            None => found.push((w.name.clone(), format!("missing in {}: run `cargo xtask publish --ssm`", w.region))),
            Some(p) if p.value != w.value => found.push((
                w.name.clone(),
                format!(
                    "in {} holds {} (version {}) but ami-list records {}: changed by hand? run `cargo xtask publish --ssm`",
                    w.region, p.value, p.version, w.value
                ),
            )),
            Some(p) if p.data_type != DATA_TYPE => found.push((
                w.name.clone(),
                format!("in {} has data type {:?}, not {DATA_TYPE}", w.region, p.data_type),
            )),
            Some(_) => {}
        }
    }
    for (region, params) in current {
        for name in params.keys() {
            let known = explained.get(region.as_str()).is_some_and(|names| names.contains(&name.as_str()));
            if !known && name.ends_with("/latest/image_id") {
                found.push((
                    name.clone(),
                    format!("in {region} names no cell ami-list records: delete it if it is stale"),
                ));
            }
        }
    }
    found
}

/// Every parameter under `prefix` in each region, in parallel.
pub fn read(
    sh: &Shell,
    aws: &Aws,
    prefix: &str,
    regions: &[&str],
) -> Result<BTreeMap<String, BTreeMap<String, Parameter>>> {
    let results: Vec<(String, Result<Vec<Parameter>>)> = regions
        .par_iter()
        .map_with(sh.clone(), |sh, region| (region.to_string(), aws.parameters_by_path(sh, region, prefix)))
        .collect();
    let mut out = BTreeMap::new();
    for (region, result) in results {
        let params = result.map_err(|e| e.context(format!("read the SSM parameters under {prefix} in {region}")))?;
        out.insert(region, params.into_iter().map(|p| (p.name.clone(), p)).collect());
    }
    Ok(out)
}

/// What writing one parameter did.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    #[serde(flatten)]
    pub change: Change,
    /// The version now current, once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes every Create and Update, and labels the new version, in parallel.
/// A parameter that fails does not stop the others; each result says.
pub fn apply(sh: &Shell, aws: &Aws, changes: Vec<Change>) -> Vec<Written> {
    changes
        .into_par_iter()
        .map_with(sh.clone(), |sh, change| {
            let w = &change.wanted;
            let overwrite = match change.action {
                Action::Create => false,
                Action::Update { .. } => true,
                Action::Unchanged { version } => return Written { change, version: Some(version), error: None },
                Action::Refuse { .. } => return Written { change, version: None, error: None },
            };
            let result = aws
                .put_image_parameter(sh, &w.region, &w.name, &w.value, overwrite)
                .and_then(|v| aws.label_parameter_version(sh, &w.region, &w.name, v, &w.label).map(|()| v));
            match result {
                Ok(version) => Written { change, version: Some(version), error: None },
                Err(e) => Written { change, version: None, error: Some(with_fix(format!("{e:#}"))) },
            }
        })
        .collect()
}

/// An SSM error, with how to fix it where that is known.
pub fn with_fix(error: String) -> String {
    if error.contains("ParameterMaxVersionLimitExceeded") {
        // SSM keeps 100 versions and drops the oldest, unless it has a label: ours all do.
        return format!(
            "{error}: SSM keeps 100 versions and will not drop a labelled one; remove the oldest \
             version's label (`aws ssm unlabel-parameter-version`), then publish again"
        );
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::cells::tests::seed_cell as cell;

    fn wanted(region: &str, name: &str, value: &str) -> Wanted {
        Wanted { region: region.into(), name: name.into(), value: value.into(), label: "run-r1".into() }
    }

    fn param(name: &str, value: &str, version: u64, data_type: &str) -> Parameter {
        Parameter {
            name: name.into(),
            kind: "String".into(),
            value: value.into(),
            version,
            data_type: data_type.into(),
            labels: Vec::new(),
        }
    }

    fn current(params: &[(&str, Parameter)]) -> BTreeMap<String, BTreeMap<String, Parameter>> {
        let mut out: BTreeMap<String, BTreeMap<String, Parameter>> = BTreeMap::new();
        for (region, p) in params {
            out.entry(region.to_string()).or_default().insert(p.name.clone(), p.clone());
        }
        out
    }

    #[test]
    fn names_labels_and_prefixes() {
        let c = cell("spark-3.5.3", "eu-west-1", "hvm", "arm64", "ami-1234abcd");
        assert_eq!(name("/spark-packer", &c), "/spark-packer/spark-3.5.3/hvm/arm64/latest/image_id");
        assert_eq!(label("20261125T210000Z-1a2b"), "run-20261125T210000Z-1a2b");
        assert_eq!(label("a:b"), "run-a_b");
        assert!(check_prefix("/spark-packer").is_ok());
        assert!(check_prefix("/org/team.1/spark_packer").is_ok());
        for (bad, why) in [
            ("spark-packer", "start the prefix with `/`"),
            ("/spark-packer/", "no trailing `/`"),
            ("/a//b", "no trailing `/`"),
            ("/sp ark", "letters, digits"),
            ("/aws/service", "reserved by AWS"),
            ("/SSMthing", "reserved by AWS"),
            ("/1/2/3/4/5/6/7/8/9/10/11", "at most 10"),
        ] {
            let err = check_prefix(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_version_limit_error_says_how_to_get_past_it() {
        let limit =
            with_fix("aws ssm put-parameter in us-east-1: An error occurred (ParameterMaxVersionLimitExceeded)".into());
        assert!(limit.ends_with("(`aws ssm unlabel-parameter-version`), then publish again"), "{limit}");
        assert_eq!(with_fix("throttled".into()), "throttled");
    }

    #[test]
    fn plan_creates_updates_keeps_and_refuses() {
        let now = current(&[
            ("us-east-1", param("/p/a", "ami-11111111", 1, DATA_TYPE)),
            ("us-east-1", param("/p/b", "ami-22222222", 3, DATA_TYPE)),
            ("us-east-1", param("/p/c", "ami-33333333", 1, "text")),
            ("us-east-1", Parameter { kind: "SecureString".into(), ..param("/p/d", "x", 1, "text") }),
            ("eu-west-1", param("/p/e", "ami-55555555", 1, DATA_TYPE)),
        ]);
        let wanted = vec![
            wanted("us-east-1", "/p/a", "ami-11111111"),
            wanted("us-east-1", "/p/b", "ami-99999999"),
            wanted("us-east-1", "/p/c", "ami-33333333"),
            wanted("us-east-1", "/p/d", "ami-44444444"),
            wanted("us-east-1", "/p/e", "ami-55555555"),
        ];
        let actions: Vec<Action> = plan(wanted, &now).into_iter().map(|c| c.action).collect();
        assert_eq!(actions[0], Action::Unchanged { version: 1 });
        assert_eq!(actions[1], Action::Update { from: "ami-22222222".into(), version: 3 });
        assert_eq!(actions[2], Action::Update { from: "ami-33333333".into(), version: 1 }, "data type fixed");
        assert!(matches!(&actions[3], Action::Refuse { reason } if reason.contains("SecureString")));
        assert_eq!(actions[4], Action::Create, "a parameter of another region is not this one");
    }

    #[test]
    fn drift_names_changed_missing_and_stray_parameters() {
        let now = current(&[
            ("us-east-1", param("/p/base/hvm/x86_64/latest/image_id", "ami-11111111", 1, DATA_TYPE)),
            ("us-east-1", param("/p/base/pv/x86_64/latest/image_id", "ami-99999999", 2, DATA_TYPE)),
            ("us-east-1", param("/p/old/hvm/x86_64/latest/image_id", "ami-33333333", 1, DATA_TYPE)),
            ("us-east-1", param("/p/notes", "hello", 1, "text")),
        ]);
        let wanted = vec![
            wanted("us-east-1", "/p/base/hvm/x86_64/latest/image_id", "ami-11111111"),
            wanted("us-east-1", "/p/base/pv/x86_64/latest/image_id", "ami-22222222"),
            wanted("eu-west-1", "/p/base/hvm/x86_64/latest/image_id", "ami-44444444"),
        ];
        let found = drift(&wanted, &now);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, "/p/base/pv/x86_64/latest/image_id");
        assert!(found[0].1.contains("holds ami-99999999 (version 2) but ami-list records ami-22222222"), "{found:?}");
        assert!(found[1].1.starts_with("missing in eu-west-1"), "{found:?}");
        assert_eq!(found[2].0, "/p/old/hvm/x86_64/latest/image_id");
        assert!(found[2].1.contains("names no cell"), "{found:?}");
    }
}
