//! The Packer template's interface: one field per `variable` block of
//! packer/spark-ami.pkr.hcl, and the only way a var file is written. A test
//! holds the struct and the template's variables to each other.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{matrix::Build, project};

pub(crate) fn template_file() -> PathBuf {
    project::root().join("packer/spark-ami.pkr.hcl")
}

/// Every variable of the template, written whole into each build's var file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TemplateVars {
    pub build_name: String,
    pub image: String,
    pub spark_version: String,
    pub virt: String,
    pub arch: String,
    /// The OS family (matrix.json) and the Java major version base.sh installs.
    pub os_family: String,
    pub java_version: u32,
    pub region: String,
    pub copy_regions: Vec<String>,
    pub instance_type: String,
    pub source_ami_name: String,
    pub source_ami_owners: Vec<String>,
    /// Spark on base: the base AMI's ID; empty when starting from the stock image.
    pub base_ami: String,
    /// The build's input hash and per-input digests, tagged on the AMI.
    pub input_hash: String,
    pub input_digests: String,
    pub ami_groups: Vec<String>,
    pub run_id: String,
    pub git_commit: String,
    pub created_at: String,
    /// Empty: the region's real endpoint.
    pub endpoint_ec2: String,
    pub skip_aws_validation: bool,
    pub communicator: String,
    pub ssh_username: String,
    pub ssh_host: String,
    pub ssh_port: u16,
    pub ssh_private_key_file: String,
    pub ssh_keypair_name: String,
    /// The full URL of the Spark tarball; spark.sh derives nothing from it
    /// but the file name.
    pub spark_url: String,
    pub spark_sha512: String,
    pub spark_sha512_source: String,
    pub hadoop_version: String,
    pub hadoop_url: String,
    pub hadoop_sha512: String,
    pub hadoop_sha512_source: String,
    pub smoke_test: bool,
    /// `ami`, or `docker` for the docker.container build.
    pub platform: String,
    /// The container's source image, and whether Packer pulls it first.
    pub docker_image: String,
    pub docker_pull: bool,
    /// More `docker run` arguments (the sandbox's apt cache, QEMU_CPU).
    pub docker_run_args: Vec<String>,
    /// Where the committed image is pushed, and its tag.
    pub docker_repository: String,
    pub docker_tag: String,
    /// The image's org.opencontainers.image.source.
    pub source_url: String,
}

/// What one run gives all its builds.
#[derive(Debug, Clone)]
pub(crate) struct RunStamp {
    pub run_id: String,
    pub git_commit: String,
    pub created_at: String,
}

impl TemplateVars {
    /// A build's variables as the matrix and the run give them: an API-only
    /// build from the stock source image against real AWS. The site and the
    /// spark-on-base phase then fill in what they decide.
    pub fn for_build(build: &Build, stamp: &RunStamp) -> TemplateVars {
        TemplateVars {
            build_name: build.name.clone(),
            image: build.image.name.clone(),
            spark_version: build.image.spark.as_ref().map_or("none".to_string(), |s| s.version.clone()),
            virt: build.virt.clone(),
            arch: build.arch.clone(),
            os_family: build.os.name.clone(),
            java_version: build.java,
            region: build.region.clone(),
            copy_regions: build.copy_regions.clone(),
            instance_type: build.instance_type.clone(),
            source_ami_name: build.source_ami.name.clone(),
            source_ami_owners: build.source_ami.owners.clone(),
            base_ami: String::new(),
            input_hash: "none".to_string(),
            input_digests: String::new(),
            ami_groups: if build.public { vec!["all".to_string()] } else { Vec::new() },
            run_id: stamp.run_id.clone(),
            git_commit: stamp.git_commit.clone(),
            created_at: stamp.created_at.clone(),
            endpoint_ec2: String::new(),
            skip_aws_validation: false,
            communicator: "none".to_string(),
            ssh_username: build.os.login_user.clone(),
            ssh_host: String::new(),
            ssh_port: 22,
            ssh_private_key_file: String::new(),
            ssh_keypair_name: String::new(),
            spark_url: String::new(),
            spark_sha512: String::new(),
            spark_sha512_source: String::new(),
            hadoop_version: "none".to_string(),
            hadoop_url: String::new(),
            hadoop_sha512: String::new(),
            hadoop_sha512_source: String::new(),
            smoke_test: true,
            platform: "ami".to_string(),
            docker_image: String::new(),
            docker_pull: true,
            docker_run_args: Vec::new(),
            docker_repository: String::new(),
            docker_tag: String::new(),
            source_url: String::new(),
        }
    }

    /// Writes `<dir>/<build>.pkrvars.json`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let var_file = dir.join(format!("{}.pkrvars.json", self.build_name));
        fs::write(&var_file, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", var_file.display()))?;
        Ok(var_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Filters, Matrix, Strategy};

    /// The names of the template's `variable "NAME" {` blocks, in order.
    fn declared_variables(hcl: &str) -> Vec<String> {
        hcl.lines()
            .filter_map(|line| line.strip_prefix("variable \"")?.split_once('"').map(|(name, _)| name.to_string()))
            .collect()
    }

    fn seed_builds() -> Vec<Build> {
        let matrix = Matrix::parse(include_str!("../../packer/matrix.json")).unwrap();
        matrix.expand("seed-2014", &Filters::default(), Strategy::Copy, false).unwrap()
    }

    #[test]
    fn the_struct_and_the_templates_variables_are_the_same_set() {
        let stamp = RunStamp { run_id: "r".into(), git_commit: "g".into(), created_at: "c".into() };
        let vars = serde_json::to_value(TemplateVars::for_build(&seed_builds()[0], &stamp)).unwrap();
        let mut fields: Vec<String> = vars.as_object().unwrap().keys().cloned().collect();
        let mut declared = declared_variables(include_str!("../../packer/spark-ami.pkr.hcl"));
        fields.sort();
        declared.sort();
        let missing: Vec<&String> = declared.iter().filter(|v| !fields.contains(v)).collect();
        let extra: Vec<&String> = fields.iter().filter(|f| !declared.contains(f)).collect();
        assert!(missing.is_empty(), "template variables with no TemplateVars field: {missing:?}");
        assert!(extra.is_empty(), "TemplateVars fields the template does not declare: {extra:?}");
        assert!(declared.len() > 25, "the parser found too few variables: {declared:?}");
    }

    #[test]
    fn variable_blocks_are_read_by_name() {
        let hcl = "variable \"a\" {\n  type = string\n}\n# variable \"commented\"\nvariable \"b_c\" {}\n";
        assert_eq!(declared_variables(hcl), ["a", "b_c"]);
    }

    #[test]
    fn a_build_starts_api_only_from_its_stock_image() {
        let stamp = RunStamp { run_id: "r1".into(), git_commit: "abc".into(), created_at: "t".into() };
        let spark = seed_builds().into_iter().find(|b| b.image.spark.is_some() && b.virt == "pv").unwrap();
        let vars = TemplateVars::for_build(&spark, &stamp);
        assert_eq!(vars.spark_version, "3.5.3");
        assert_eq!(vars.communicator, "none");
        assert_eq!(vars.base_ami, "");
        assert_eq!(vars.copy_regions.len(), 7);
        assert_eq!(vars.source_ami_name, spark.source_ami.name);
    }
}
