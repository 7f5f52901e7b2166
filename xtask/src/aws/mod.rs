//! A thin client over the aws CLI: users already have it configured (profiles,
//! SSO), and it honours `--endpoint-url` for the emulator. Output is parsed
//! with serde; credentials stay in the environment. DescribeImages, the one
//! call a run that changes nothing makes, goes through `query` instead when
//! the keys are in the environment.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::factory::MANAGED_BY;

mod query;
pub use query::ImageQuery;

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
        self.call(sh, region, "ec2", args)
    }

    fn call(&self, sh: &Shell, region: &str, service: &str, args: &[&str]) -> Result<String> {
        let program = &self.program;
        let endpoint: Vec<String> =
            self.endpoint.iter().flat_map(|e| ["--endpoint-url".to_string(), e.clone()]).collect();
        let mut command: std::process::Command =
            cmd!(sh, "{program} {endpoint...} --region {region} --output json {service} {args...}").quiet().into();
        // Its own process group: a terminal's Ctrl-C must not cut a call short
        // (a deregistration whose snapshots are still to go); we decide what stops.
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

    /// Every image `query` finds in `region`. With credentials in the
    /// environment, through the query API (a curl process, trusting
    /// `AWS_CA_BUNDLE` if set); else, or when a setting only the aws CLI
    /// follows is there (FIPS, dual-stack, a configured CA bundle or endpoint),
    /// the aws CLI, which also knows profiles and SSO.
    pub fn describe_images(&self, sh: &Shell, region: &str, query: &ImageQuery) -> Result<Vec<Image>> {
        let credentials = query::Credentials::from_shell(sh).filter(|_| !query::cli_settings_there(sh));
        let Some(credentials) = credentials else {
            let args = query.cli_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            return parse_describe_images(&self.ec2(sh, region, &args)?);
        };
        // Where the aws CLI would send it, if its environment names an endpoint.
        let configured = ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"].iter().find_map(|v| sh.var(v).ok());
        let endpoint = self.endpoint.clone().or(configured.filter(|url| !url.is_empty()));
        query::describe_images(&credentials, endpoint.as_deref(), region, query)
    }

    /// Images this account owns in `region`.
    pub fn own_images(&self, sh: &Shell, region: &str) -> Result<Vec<Image>> {
        self.describe_images(sh, region, &ImageQuery { owners: vec!["self".to_string()], ..Default::default() })
    }

    /// The newest image Packer's `source_ami_filter` would pick: `name`
    /// pattern, `owners`, `arch`, EBS root, most recent. None if none matches.
    pub fn newest_image(
        &self,
        sh: &Shell,
        region: &str,
        name: &str,
        owners: &[String],
        arch: &str,
    ) -> Result<Option<Image>> {
        let query = ImageQuery { owners: owners.to_vec(), ..Default::default() }
            .filter("name", &[name])
            .filter("architecture", &[arch])
            .filter("root-device-type", &["ebs"]);
        let images = self.describe_images(sh, region, &query)?;
        Ok(images.into_iter().max_by(|a, b| a.creation_date.cmp(&b.creation_date)))
    }

    /// One image by ID, whoever owns it; an error if `region` has none by that ID.
    pub fn image(&self, sh: &Shell, region: &str, image_id: &str) -> Result<Image> {
        let query = ImageQuery { image_ids: vec![image_id.to_string()], ..Default::default() };
        let images = self.describe_images(sh, region, &query)?;
        images.into_iter().next().with_context(|| format!("no image {image_id} in {region}"))
    }

    /// Copies `source_id` from `source_region` into `region` under `name`,
    /// waits until it is available, and gives it `tags`. Returns its ID.
    pub fn copy_image(
        &self,
        sh: &Shell,
        (region, source_region): (&str, &str),
        source_id: &str,
        name: &str,
        tags: &BTreeMap<&str, &str>,
    ) -> Result<String> {
        let args = ["copy-image", "--source-region", source_region, "--source-image-id", source_id, "--name", name];
        let json: serde_json::Value =
            serde_json::from_str(&self.ec2(sh, region, &args)?).context("parse copy-image output")?;
        let id = json["ImageId"].as_str().context("copy-image returned no ImageId")?.to_string();
        self.ec2(sh, region, &["wait", "image-available", "--image-ids", &id])
            .with_context(|| format!("wait for the copy {id} in {region}"))?;
        let mut args = vec!["create-tags".to_string(), "--resources".to_string(), id.clone(), "--tags".to_string()];
        args.extend(tags.iter().map(|(k, v)| format!("Key={k},Value={v}")));
        self.ec2(sh, region, &args.iter().map(String::as_str).collect::<Vec<_>>())
            .with_context(|| format!("tag the copy {id} in {region}"))?;
        Ok(id)
    }

    /// The factory's images in `region`: those tagged `managed-by=spark-packer`.
    pub fn factory_images(&self, sh: &Shell, region: &str) -> Result<Vec<Image>> {
        let query = ImageQuery { owners: vec!["self".to_string()], ..Default::default() };
        self.describe_images(sh, region, &query.filter(&format!("tag:{}", MANAGED_BY.0), &[MANAGED_BY.1]))
    }

    /// Those of the factory's images in `region` whose IDs are among `ids`;
    /// an ID it lacks is left out, not an error. The tag is checked here, not
    /// in a filter: an emulator's tag filter costs time with every image and
    /// tag in the region, its ID filter does not.
    pub fn factory_images_by_id(&self, sh: &Shell, region: &str, ids: &[&str]) -> Result<Vec<Image>> {
        let query = ImageQuery { owners: vec!["self".to_string()], ..Default::default() }.filter("image-id", ids);
        let mut images = self.describe_images(sh, region, &query)?;
        images.retain(|image| crate::factory::is_managed(&image.tags()));
        Ok(images)
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

/// Who besides the owner may launch an image: one entry of its
/// `launchPermission` attribute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchPermission {
    /// `all` makes the image public.
    pub group: Option<String>,
    pub user_id: Option<String>,
    pub organization_arn: Option<String>,
    pub organizational_unit_arn: Option<String>,
}

pub fn parse_launch_permissions(json: &str) -> Result<Vec<LaunchPermission>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        #[serde(default)]
        launch_permissions: Vec<LaunchPermission>,
    }
    Ok(serde_json::from_str::<Output>(json).context("parse describe-image-attribute output")?.launch_permissions)
}

/// The image an Auto Scaling launch configuration launches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchConfigurationImage {
    pub launch_configuration_name: String,
    #[serde(default)]
    pub image_id: String,
}

pub fn parse_launch_configuration_images(json: &str) -> Result<Vec<LaunchConfigurationImage>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        launch_configurations: Vec<LaunchConfigurationImage>,
    }
    Ok(serde_json::from_str::<Output>(json)
        .context("parse describe-launch-configurations output")?
        .launch_configurations)
}

/// An EBS snapshot: its tags, and the description EC2 wrote, which names the
/// image it was made for.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    pub snapshot_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub start_time: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

impl Snapshot {
    pub fn tags(&self) -> BTreeMap<&str, &str> {
        self.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())).collect()
    }
}

pub fn parse_snapshots(json: &str) -> Result<Vec<Snapshot>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        snapshots: Vec<Snapshot>,
    }
    Ok(serde_json::from_str::<Output>(json).context("parse describe-snapshots output")?.snapshots)
}

// Calls for `clean-old-amis`.
impl Aws {
    /// Every image this account owns in `region`, tagged or not, with its
    /// snapshots; disabled ones too, whose snapshots are still theirs.
    pub fn own_images_with_snapshots(&self, sh: &Shell, region: &str) -> Result<Vec<ImageWithSnapshots>> {
        let args = ["describe-images", "--owners", "self", "--include-disabled"];
        parse_images_with_snapshots(&self.ec2(sh, region, &args)?)
    }

    /// Who may launch `image_id` besides its owner.
    pub fn launch_permissions(&self, sh: &Shell, region: &str, image_id: &str) -> Result<Vec<LaunchPermission>> {
        let args = ["describe-image-attribute", "--attribute", "launchPermission", "--image-id", image_id];
        parse_launch_permissions(&self.ec2(sh, region, &args)?)
    }

    /// Every Auto Scaling launch configuration in `region` and its image.
    pub fn launch_configuration_images(&self, sh: &Shell, region: &str) -> Result<Vec<LaunchConfigurationImage>> {
        parse_launch_configuration_images(&self.call(sh, region, "autoscaling", &["describe-launch-configurations"])?)
    }

    /// The snapshots this account owns in `region` that carry `managed-by=spark-packer`.
    pub fn factory_snapshots(&self, sh: &Shell, region: &str) -> Result<Vec<Snapshot>> {
        let managed_by = format!("Name=tag:{},Values={}", MANAGED_BY.0, MANAGED_BY.1);
        parse_snapshots(&self.ec2(
            sh,
            region,
            &["describe-snapshots", "--owner-ids", "self", "--filters", &managed_by],
        )?)
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

/// What a dead run may have left in one region: its instances not yet
/// terminated, the temporary security groups and key pairs Packer made for
/// them (`packer_*`), and key pairs named after the run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub instances: Vec<String>,
    pub security_groups: Vec<String>,
    pub key_pairs: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.security_groups.is_empty() && self.key_pairs.is_empty()
    }
}

/// The leftovers of run `run_id`, from `describe-instances` filtered by its
/// run-id tag and from `describe-key-pairs`. Only Packer's temporary groups
/// and keys count: never a group or key someone named (the sandbox's own key).
pub fn parse_leftovers(instances_json: &str, key_pairs_json: &str, run_id: &str) -> Result<Leftovers> {
    let value: serde_json::Value = serde_json::from_str(instances_json).context("parse describe-instances output")?;
    let mut found = Leftovers::default();
    let is_temporary = |name: &str| name.starts_with("packer_");
    for reservation in value["Reservations"].as_array().into_iter().flatten() {
        for instance in reservation["Instances"].as_array().into_iter().flatten() {
            let tags = instance["Tags"].as_array().into_iter().flatten();
            let tagged = tags.into_iter().any(|t| t["Key"] == "spark-packer:run-id" && t["Value"] == run_id);
            if !tagged {
                continue;
            }
            if !matches!(instance["State"]["Name"].as_str(), Some("terminated" | "shutting-down")) {
                found.instances.extend(instance["InstanceId"].as_str().map(str::to_string));
            }
            for group in instance["SecurityGroups"].as_array().into_iter().flatten() {
                if group["GroupName"].as_str().is_some_and(is_temporary) {
                    found.security_groups.extend(group["GroupId"].as_str().map(str::to_string));
                }
            }
            found.key_pairs.extend(instance["KeyName"].as_str().filter(|k| is_temporary(k)).map(str::to_string));
        }
    }
    let keys: serde_json::Value = serde_json::from_str(key_pairs_json).context("parse describe-key-pairs output")?;
    let named = format!("packer_{run_id}_");
    for key in keys["KeyPairs"].as_array().into_iter().flatten() {
        found.key_pairs.extend(key["KeyName"].as_str().filter(|k| k.starts_with(&named)).map(str::to_string));
    }
    for list in [&mut found.instances, &mut found.security_groups, &mut found.key_pairs] {
        list.sort();
        list.dedup();
    }
    Ok(found)
}

// Calls for the sweep of dead runs.
impl Aws {
    /// What run `run_id` left in `region` (see `parse_leftovers`).
    pub fn leftovers(&self, sh: &Shell, region: &str, run_id: &str) -> Result<Leftovers> {
        let filter = format!("Name=tag:spark-packer:run-id,Values={run_id}");
        let instances = self.ec2(sh, region, &["describe-instances", "--filters", &filter])?;
        let key_pairs = self.ec2(sh, region, &["describe-key-pairs"])?;
        parse_leftovers(&instances, &key_pairs, run_id)
    }

    /// Terminates the instances, waits until they are gone (a group in use
    /// cannot be deleted), then deletes the groups and key pairs.
    pub fn remove(&self, sh: &Shell, region: &str, leftovers: &Leftovers) -> Result<()> {
        if !leftovers.instances.is_empty() {
            let mut args = vec!["terminate-instances", "--instance-ids"];
            args.extend(leftovers.instances.iter().map(String::as_str));
            self.ec2(sh, region, &args)?;
            args[0] = "wait";
            args.insert(1, "instance-terminated");
            self.ec2(sh, region, &args)?;
        }
        for group in &leftovers.security_groups {
            match self.ec2(sh, region, &["delete-security-group", "--group-id", group]) {
                Err(e) if format!("{e:#}").contains("NotFound") => {}
                result => result.map(drop)?,
            }
        }
        for key in &leftovers.key_pairs {
            self.ec2(sh, region, &["delete-key-pair", "--key-name", key])?;
        }
        Ok(())
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
    /// The images among `ids` that `region` holds, whoever owns them. Unlike
    /// `--image-ids`, a filter does not fail the call for an ID it lacks.
    pub fn images_by_id(&self, sh: &Shell, region: &str, ids: &[&str]) -> Result<Vec<Image>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.describe_images(sh, region, &ImageQuery::default().filter("image-id", ids))
    }

    /// Every parameter under `path` in `region`, at any depth (the CLI pages).
    pub fn parameters_by_path(&self, sh: &Shell, region: &str, path: &str) -> Result<Vec<Parameter>> {
        parse_parameters(&self.call(sh, region, "ssm", &["get-parameters-by-path", "--path", path, "--recursive"])?)
    }

    /// Writes `name` as a String parameter of data type `aws:ec2:image`;
    /// `overwrite` makes a new version of an existing one. Returns the version.
    pub fn put_image_parameter(&self, sh: &Shell, region: &str, name: &str, id: &str, overwrite: bool) -> Result<u64> {
        let mut args = vec!["put-parameter", "--name", name, "--value", id, "--type", "String"];
        args.extend(["--data-type", "aws:ec2:image"]);
        if overwrite {
            args.push("--overwrite");
        }
        let json = self.call(sh, region, "ssm", &args)?;
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
        self.call(sh, region, "ssm", &args).map(drop)
    }

    /// Every version of a parameter, oldest first, with its labels.
    pub fn parameter_history(&self, sh: &Shell, region: &str, name: &str) -> Result<Vec<Parameter>> {
        parse_parameters(&self.call(sh, region, "ssm", &["get-parameter-history", "--name", name])?)
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
    fn a_dead_runs_leftovers_are_its_own_and_packers_temporaries() {
        // Shaped like moto 5.2.1's describe-instances and describe-key-pairs.
        let instance = |id: &str, state: &str, run: &str, group: &str, key: &str| {
            format!(
                r#"{{"InstanceId": "{id}", "State": {{"Name": "{state}"}}, "KeyName": "{key}",
                "SecurityGroups": [{{"GroupName": "{group}", "GroupId": "sg-{id}"}}],
                "Tags": [{{"Key": "managed-by", "Value": "spark-packer"}}, {{"Key": "spark-packer:run-id", "Value": "{run}"}}]}}"#
            )
        };
        let instances = format!(
            r#"{{"Reservations": [{{"Instances": [{}, {}, {}, {}]}}]}}"#,
            instance("i-1", "running", "r1", "packer_a", "packer_k1"),
            instance("i-2", "terminated", "r1", "packer_b", "spark-packer-local"),
            instance("i-3", "running", "r2", "packer_c", "packer_k3"),
            instance("i-4", "stopped", "r1", "default", "packer_k1"),
        );
        let keys = r#"{"KeyPairs": [{"KeyName": "packer_r1_base-hvm-x86_64"}, {"KeyName": "packer_r2_base"},
                      {"KeyName": "spark-packer-local"}]}"#;
        let found = parse_leftovers(&instances, keys, "r1").unwrap();
        assert_eq!(found.instances, ["i-1", "i-4"]);
        assert_eq!(found.security_groups, ["sg-i-1", "sg-i-2"]);
        assert_eq!(found.key_pairs, ["packer_k1", "packer_r1_base-hvm-x86_64"]);
        assert!(parse_leftovers(r#"{"Reservations": []}"#, r#"{"KeyPairs": []}"#, "r1").unwrap().is_empty());
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
