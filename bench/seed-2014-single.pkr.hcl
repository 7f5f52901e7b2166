# The 2014 seed's shape for the benchmark: ONE `packer build` with four
# builders (base/spark x hvm/pv) in us-east-1, each copied to the 7 other
# seed regions with ami_regions: 32 AMIs. API-only, for the emulator.
# `cargo xtask bench` times it side by side with `cargo xtask build-amis`.
packer {
  required_version = ">= 1.6.6"
}

variable "endpoint_ec2" {
  type = string
}
variable "run_id" {
  type = string
}

locals {
  copy_regions = ["ap-northeast-1", "ap-southeast-1", "ap-southeast-2", "eu-west-1", "sa-east-1", "us-west-1", "us-west-2"]
}

source "amazon-ebs" "base-hvm" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m7i.large"
  ami_name                   = "bench-base-hvm-${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "al2023-ami-2023.*-x86_64", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = { "bench" = var.run_id }
}

source "amazon-ebs" "base-pv" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m3.medium"
  ami_name                   = "bench-base-pv-${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "amzn-ami-pv-*-x86_64-ebs", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = { "bench" = var.run_id }
}

source "amazon-ebs" "spark-hvm" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m7i.large"
  ami_name                   = "bench-spark-hvm-${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "al2023-ami-2023.*-x86_64", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = { "bench" = var.run_id }
}

source "amazon-ebs" "spark-pv" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m3.medium"
  ami_name                   = "bench-spark-pv-${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "amzn-ami-pv-*-x86_64-ebs", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags = { "bench" = var.run_id }
}

build {
  sources = [
    "source.amazon-ebs.base-hvm",
    "source.amazon-ebs.base-pv",
    "source.amazon-ebs.spark-hvm",
    "source.amazon-ebs.spark-pv",
  ]
}
