//! A thin client over the aws CLI: users already have it configured (profiles,
//! SSO), and it honours `--endpoint-url` for the emulator. Output is parsed
//! with serde; credentials stay in the environment.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

#[derive(Debug, Clone)]
pub struct Aws {
    /// The `aws` program: the sandbox's venv copy, or the one on PATH.
    pub program: PathBuf,
    /// Send every call here instead of the real endpoints.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub image_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub virtualization_type: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub creation_date: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    value: String,
}

impl Image {
    pub fn tags(&self) -> BTreeMap<&str, &str> {
        self.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())).collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeImages {
    images: Vec<Image>,
}

pub fn parse_describe_images(json: &str) -> Result<Vec<Image>> {
    Ok(serde_json::from_str::<DescribeImages>(json).context("parse describe-images output")?.images)
}

impl Aws {
    pub fn from_path(endpoint: Option<String>) -> Aws {
        Aws { program: PathBuf::from("aws"), endpoint }
    }

    fn ec2(&self, sh: &Shell, region: &str, args: &[&str]) -> Result<String> {
        let program = &self.program;
        let endpoint: Vec<String> =
            self.endpoint.iter().flat_map(|e| ["--endpoint-url".to_string(), e.clone()]).collect();
        let mut command: std::process::Command =
            cmd!(sh, "{program} {endpoint...} --region {region} --output json ec2 {args...}").quiet().into();
        // Its own process group: a terminal's Ctrl-C must not cut a call short
        // (a deregistration whose snapshots are still to go); we decide what stops.
        let output = command.process_group(0).stdin(std::process::Stdio::null()).output().with_context(|| {
            format!("run `{}`: install the aws CLI (`pip install awscli`) or put it on PATH", program.display())
        })?;
        if !output.status.success() {
            bail!(
                "aws ec2 {} in {region}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("aws output is not UTF-8")
    }

    /// Images this account owns in `region`, narrowed by `filters`
    /// (`Name=...,Values=...` strings as the CLI takes them).
    pub fn own_images(&self, sh: &Shell, region: &str, filters: &[String]) -> Result<Vec<Image>> {
        let mut args = vec!["describe-images", "--owners", "self"];
        if !filters.is_empty() {
            args.push("--filters");
            args.extend(filters.iter().map(String::as_str));
        }
        parse_describe_images(&self.ec2(sh, region, &args)?)
    }

    /// One image by ID, whoever owns it; an error if `region` has none by that ID.
    pub fn image(&self, sh: &Shell, region: &str, image_id: &str) -> Result<Image> {
        let images = parse_describe_images(&self.ec2(sh, region, &["describe-images", "--image-ids", image_id])?)?;
        images.into_iter().next().with_context(|| format!("no image {image_id} in {region}"))
    }

    /// The factory's images in `region`: those tagged `managed-by=spark-packer`.
    pub fn factory_images(&self, sh: &Shell, region: &str) -> Result<Vec<Image>> {
        self.own_images(sh, region, &["Name=tag:managed-by,Values=spark-packer".to_string()])
    }

    /// Counts instance launches by state, e.g. {"running": 2, "terminated": 4}.
    pub fn instance_states(&self, sh: &Shell, region: &str) -> Result<BTreeMap<String, usize>> {
        let json = self.ec2(sh, region, &["describe-instances"])?;
        let value: serde_json::Value = serde_json::from_str(&json).context("parse describe-instances output")?;
        let mut states = BTreeMap::new();
        for reservation in value["Reservations"].as_array().into_iter().flatten() {
            for instance in reservation["Instances"].as_array().into_iter().flatten() {
                let state = instance["State"]["Name"].as_str().unwrap_or("unknown").to_string();
                *states.entry(state).or_default() += 1;
            }
        }
        Ok(states)
    }
}

/// An image with the EBS snapshots behind it: what a cleanup deletes after
/// deregistering the image, unless another image still uses them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageWithSnapshots {
    #[serde(flatten)]
    pub image: Image,
    #[serde(default)]
    block_device_mappings: Vec<BlockDeviceMapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BlockDeviceMapping {
    #[serde(default)]
    ebs: Option<Ebs>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ebs {
    #[serde(default)]
    snapshot_id: Option<String>,
}

impl ImageWithSnapshots {
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.block_device_mappings.iter().filter_map(|m| m.ebs.as_ref()?.snapshot_id.clone()).collect()
    }
}

pub fn parse_images_with_snapshots(json: &str) -> Result<Vec<ImageWithSnapshots>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        images: Vec<ImageWithSnapshots>,
    }
    Ok(serde_json::from_str::<Output>(json).context("parse describe-images output")?.images)
}

/// Which image an instance was launched from, and its state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceImage {
    pub instance_id: String,
    pub image_id: String,
    pub state: String,
}

pub fn parse_instance_images(json: &str) -> Result<Vec<InstanceImage>> {
    let value: serde_json::Value = serde_json::from_str(json).context("parse describe-instances output")?;
    let mut out = Vec::new();
    for reservation in value["Reservations"].as_array().into_iter().flatten() {
        for instance in reservation["Instances"].as_array().into_iter().flatten() {
            out.push(InstanceImage {
                instance_id: instance["InstanceId"].as_str().unwrap_or_default().to_string(),
                image_id: instance["ImageId"].as_str().unwrap_or_default().to_string(),
                state: instance["State"]["Name"].as_str().unwrap_or("unknown").to_string(),
            });
        }
    }
    Ok(out)
}

/// The image a launch template version names (its default or latest one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateImage {
    pub template_name: String,
    pub version: u64,
    pub is_default: bool,
    /// May be empty, or an SSM parameter (`resolve:ssm:...`) rather than an AMI ID.
    pub image_id: String,
}

pub fn parse_template_images(json: &str) -> Result<Vec<TemplateImage>> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("parse describe-launch-template-versions output")?;
    Ok(value["LaunchTemplateVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| TemplateImage {
            template_name: v["LaunchTemplateName"].as_str().unwrap_or_default().to_string(),
            version: v["VersionNumber"].as_u64().unwrap_or_default(),
            is_default: v["DefaultVersion"].as_bool().unwrap_or_default(),
            image_id: v["LaunchTemplateData"]["ImageId"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

// Calls for `clean-old-amis`.
impl Aws {
    /// Every image this account owns in `region`, tagged or not, with its snapshots.
    pub fn own_images_with_snapshots(&self, sh: &Shell, region: &str) -> Result<Vec<ImageWithSnapshots>> {
        parse_images_with_snapshots(&self.ec2(sh, region, &["describe-images", "--owners", "self"])?)
    }

    /// Every instance in `region`, whatever its state, and the image it runs.
    pub fn instance_images(&self, sh: &Shell, region: &str) -> Result<Vec<InstanceImage>> {
        parse_instance_images(&self.ec2(sh, region, &["describe-instances"])?)
    }

    /// The default and latest version of every launch template in `region`:
    /// one call, as EC2 allows for exactly these two versions.
    pub fn launch_template_images(&self, sh: &Shell, region: &str) -> Result<Vec<TemplateImage>> {
        let args = ["describe-launch-template-versions", "--versions", "$Default", "$Latest"];
        parse_template_images(&self.ec2(sh, region, &args)?)
    }

    pub fn deregister_image(&self, sh: &Shell, region: &str, image_id: &str) -> Result<()> {
        self.ec2(sh, region, &["deregister-image", "--image-id", image_id]).map(drop)
    }

    pub fn delete_snapshot(&self, sh: &Shell, region: &str, snapshot_id: &str) -> Result<()> {
        self.ec2(sh, region, &["delete-snapshot", "--snapshot-id", snapshot_id]).map(drop)
    }

    /// Imports a public key as key pair `name`; one already there is fine.
    pub fn import_key_pair(&self, sh: &Shell, region: &str, name: &str, public_key: &Path) -> Result<()> {
        let material = format!("fileb://{}", public_key.display());
        match self.ec2(sh, region, &["import-key-pair", "--key-name", name, "--public-key-material", &material]) {
            Err(e) if format!("{e:#}").contains("Duplicate") => Ok(()),
            result => result.map(drop),
        }
    }
}

/// One SSM parameter as `get-parameters-by-path` and `get-parameter-history`
/// report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Parameter {
    pub name: String,
    #[serde(default, rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub data_type: String,
    #[serde(default)]
    pub labels: Vec<String>,
}

pub fn parse_parameters(json: &str) -> Result<Vec<Parameter>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        parameters: Vec<Parameter>,
    }
    Ok(serde_json::from_str::<Output>(json).context("parse SSM parameters")?.parameters)
}

// Calls for `publish`: images by ID, and SSM Parameter Store.
impl Aws {
    /// One aws CLI call to `service` in `region`, its stdout on success.
    fn call(&self, sh: &Shell, service: &str, region: &str, args: &[&str]) -> Result<String> {
        let program = &self.program;
        let endpoint: Vec<String> =
            self.endpoint.iter().flat_map(|e| ["--endpoint-url".to_string(), e.clone()]).collect();
        let mut command: std::process::Command =
            cmd!(sh, "{program} {endpoint...} --region {region} --output json {service} {args...}").quiet().into();
        let output = command.process_group(0).stdin(std::process::Stdio::null()).output().with_context(|| {
            format!("run `{}`: install the aws CLI (`pip install awscli`) or put it on PATH", program.display())
        })?;
        if !output.status.success() {
            bail!(
                "aws {service} {} in {region}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("aws output is not UTF-8")
    }

    /// The images among `ids` that `region` holds, whoever owns them. Unlike
    /// `--image-ids`, a filter does not fail the call for an ID it lacks.
    pub fn images_by_id(&self, sh: &Shell, region: &str, ids: &[&str]) -> Result<Vec<Image>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = format!("Name=image-id,Values={}", ids.join(","));
        parse_describe_images(&self.ec2(sh, region, &["describe-images", "--filters", &filter])?)
    }

    /// Every parameter under `path` in `region`, at any depth (the CLI pages).
    pub fn parameters_by_path(&self, sh: &Shell, region: &str, path: &str) -> Result<Vec<Parameter>> {
        parse_parameters(&self.call(sh, "ssm", region, &["get-parameters-by-path", "--path", path, "--recursive"])?)
    }

    /// Writes `name` as a String parameter of data type `aws:ec2:image`;
    /// `overwrite` makes a new version of an existing one. Returns the version.
    pub fn put_image_parameter(&self, sh: &Shell, region: &str, name: &str, id: &str, overwrite: bool) -> Result<u64> {
        let mut args = vec!["put-parameter", "--name", name, "--value", id, "--type", "String"];
        args.extend(["--data-type", "aws:ec2:image"]);
        if overwrite {
            args.push("--overwrite");
        }
        let json = self.call(sh, "ssm", region, &args)?;
        let value: serde_json::Value = serde_json::from_str(&json).context("parse put-parameter output")?;
        value["Version"].as_u64().context("put-parameter returned no Version")
    }

    /// Puts `label` on one version of a parameter (moving it from another).
    pub fn label_parameter_version(
        &self,
        sh: &Shell,
        region: &str,
        name: &str,
        version: u64,
        label: &str,
    ) -> Result<()> {
        let version = version.to_string();
        let args = ["label-parameter-version", "--name", name, "--parameter-version", &version, "--labels", label];
        self.call(sh, "ssm", region, &args).map(drop)
    }

    /// Every version of a parameter, oldest first, with its labels.
    pub fn parameter_history(&self, sh: &Shell, region: &str, name: &str) -> Result<Vec<Parameter>> {
        parse_parameters(&self.call(sh, "ssm", region, &["get-parameter-history", "--name", name])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_describe_images() {
        // Trimmed from `aws ec2 describe-images` against moto 5.2.1.
        let json = r#"{"Images": [{"BlockDeviceMappings": [], "Name": "spark-packer-base-pv",
            "Tags": [{"Key": "managed-by", "Value": "spark-packer"}],
            "VirtualizationType": "paravirtual", "ImageId": "ami-1fd2ada448893a5d9",
            "State": "available", "OwnerId": "123456789012", "CreationDate": "2026-11-25T00:24:31.000Z",
            "Public": false, "Architecture": "x86_64"}]}"#;
        let images = parse_describe_images(json).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].image_id, "ami-1fd2ada448893a5d9");
        assert_eq!(images[0].virtualization_type, "paravirtual");
        assert_eq!(images[0].tags().get("managed-by"), Some(&"spark-packer"));
    }

    #[test]
    fn parses_parameter_history() {
        // Trimmed from `aws ssm get-parameter-history` against moto 5.2.1.
        let json = r#"{"Parameters": [
            {"Name": "/p/base/hvm/x86_64/latest/image_id", "Type": "String", "LastModifiedDate": 1795641352.216,
             "LastModifiedUser": "N/A", "Value": "ami-0ed094fb1304fd857", "Version": 1, "Labels": [],
             "Tier": "Standard", "DataType": "aws:ec2:image"},
            {"Name": "/p/base/hvm/x86_64/latest/image_id", "Type": "String", "LastModifiedDate": 1795641353.543,
             "LastModifiedUser": "N/A", "Value": "ami-12345678", "Version": 2,
             "Labels": ["run-20261125T210000Z-1a2b"], "Tier": "Standard", "DataType": "aws:ec2:image"}]}"#;
        let history = parse_parameters(json).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!((history[0].version, history[0].value.as_str()), (1, "ami-0ed094fb1304fd857"));
        assert_eq!(history[1].labels, ["run-20261125T210000Z-1a2b"]);
        assert_eq!((history[1].kind.as_str(), history[1].data_type.as_str()), ("String", "aws:ec2:image"));
    }
}
