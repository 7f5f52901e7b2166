//! spark-packer's xtask: an EC2 AMI factory for Spark clusters.
//! The spine is `matrix -> packer -> ami_list`; `aws` and `local` are edges.

pub mod add_spark;
pub(crate) mod age;
pub mod ami_list;
pub mod aws;
pub mod bench;
pub mod build_amis;
pub(crate) mod checks;
pub mod clean_old_amis;
pub mod clean_old_images;
pub mod docker;
pub(crate) mod endpoint;
pub mod factory;
pub mod images_list;
pub mod interrupt;
pub mod journal;
pub mod local;
pub mod lock;
pub(crate) mod matrix;
pub(crate) mod matrix_text;
pub(crate) mod os_support;
pub(crate) mod packer;
pub(crate) mod progress;
pub mod project;
pub mod publish;
pub mod publishing;
pub(crate) mod registry;
pub(crate) mod run_report;
pub(crate) mod site;
pub(crate) mod stale;
pub(crate) mod sweep;
pub(crate) mod template;
pub mod validate;
pub(crate) mod watch;
