//! spark-packer's xtask: an EC2 AMI factory for Spark clusters.
//! The spine is `matrix -> packer -> ami_list`; `aws` and `local` are edges.

pub mod ami_list;
pub mod aws;
pub mod bench;
pub mod build_amis;
pub mod checks;
pub mod clean_old_amis;
pub mod endpoint;
pub mod interrupt;
pub mod local;
pub mod lock;
pub mod matrix;
pub mod packer;
pub mod progress;
pub mod project;
pub mod publish;
pub mod publishing;
pub(crate) mod run_report;
pub(crate) mod site;
pub(crate) mod template;
pub mod validate;
