//! `cargo xtask publish`: put what ami-list records where launch tools look.

use std::path::PathBuf;

use anyhow::{bail, Result};
use xshell::Shell;

use crate::{
    endpoint::EndpointArgs,
    lock,
    project::display,
    publishing::{self, cells, Targets},
};

/// Publish the AMIs ami-list records where launch tools find them
///
/// It publishes only what ami-list records. Before writing anything it checks
/// every AMI in EC2: it must exist in its cell's region, be available, and
/// carry the factory's tags (managed-by=spark-packer, spark-packer:image)
/// for its cell. One refused AMI and nothing is written.
///
/// Targets, each opt-in:
///   --spark-ec2 DIR --image NAME   DIR/<region>/hvm and DIR/<region>/pvm for one
///                                  image (x86_64 only): what spark_ec2.py fetches
///                                  from <repo>/<branch>/ami-list/<region>/<hvm|pvm>
///   --ssm PREFIX                   one SSM parameter per cell, in its region:
///                                  PREFIX/<image>/<virt>/<arch>/latest/image_id,
///                                  String, data type aws:ec2:image; every change
///                                  is a new version labelled run-<run id>
///   --manifest FILE                every image, region and ID, with the AMI's tags
///
/// Example:
///   cargo xtask publish --ssm /spark-packer --dry-run
///   cargo xtask publish --spark-ec2 ../spark-ec2/ami-list --image spark-3.5.3 \
///       --ssm /spark-packer --manifest target/amis.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Write spark_ec2.py's flat layout of one image (--image) into DIR.
    #[arg(long, value_name = "DIR", requires = "image")]
    pub spark_ec2: Option<PathBuf>,

    /// The one image --spark-ec2 exports (spark_ec2.py's lookup has no
    /// image level). The other targets publish every image.
    #[arg(long, value_name = "NAME", requires = "spark_ec2")]
    pub image: Option<String>,

    /// Write one SSM parameter per cell under this prefix, e.g. /spark-packer.
    #[arg(long, value_name = "PREFIX")]
    pub ssm: Option<String>,

    /// Write a JSON manifest of every image, region and ID to FILE.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Check everything and list every change; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub endpoint: EndpointArgs,

    /// The ami-list tree to publish. Default: the checked-in ami-list/ (with
    /// --local: target/local/ami-list; with a loopback --endpoint:
    /// target/endpoint/ami-list).
    #[arg(long, value_name = "DIR")]
    pub ami_list: Option<PathBuf>,

    /// Print what was done as JSON on stdout instead of the list.
    #[arg(long)]
    pub json: bool,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let targets = Targets {
        spark_ec2: args.spark_ec2.clone().zip(args.image.clone()),
        ssm: args.ssm.clone(),
        manifest: args.manifest.clone(),
    };
    if targets.is_empty() {
        bail!(
            "nothing to publish to: name a target with --spark-ec2 DIR --image NAME, --ssm PREFIX or --manifest FILE"
        );
    }
    if args.endpoint.local {
        bail!(
            "publish --local: the sandbox's emulator starts empty on every run, so it holds none of the AMIs \
             to check; use `build-amis --local --publish-ssm PREFIX`, or --endpoint with an emulator you keep running"
        );
    }
    let root = args.endpoint.ami_list(args.ami_list.as_deref())?;
    // Read under the tree's lock, so a running build-amis is never half-published.
    let lock = lock::acquire(&root, "publish")?;
    let cells = cells::read_tree(&root)?;
    if cells.is_empty() {
        bail!("{} records nothing: run build-amis first", display(&root));
    }
    let connection = args.endpoint.connect(sh)?;
    let outcome = publishing::publish(sh, &connection.aws, &cells, &targets, args.dry_run)?;
    drop(lock);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print!("{}", publishing::render(&outcome));
    }
    match outcome.failures() {
        0 => Ok(()),
        n => bail!("{n} SSM parameter(s) could not be written (see above); run the same command again"),
    }
}
