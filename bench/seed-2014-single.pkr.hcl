# The 2014 seed's shape for the benchmark: ONE `packer build` with four
# builders (base/spark x hvm/pv) in us-east-1, each copied to the 7 other
# seed regions with ami_regions: 32 AMIs. API-only, for the emulator.
# Equivalent to what `cargo xtask build-amis --no-provision --preset
# seed-2014` asks of Packer (names, the same tags on AMIs, snapshots and
# instances), so `cargo xtask bench` compares like with like.
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
  builds = {
    "base-hvm"  = { image = "base", spark_version = "none", virt = "hvm" }
    "base-pv"   = { image = "base", spark_version = "none", virt = "pv" }
    "spark-hvm" = { image = "spark-3.5.3", spark_version = "3.5.3", virt = "hvm" }
    "spark-pv"  = { image = "spark-3.5.3", spark_version = "3.5.3", virt = "pv" }
  }
  tags = { for name, b in local.builds : name => {
    "managed-by"                  = "spark-packer"
    "spark-packer:image"          = b.image
    "spark-packer:spark-version"  = b.spark_version
    "spark-packer:virtualization" = b.virt
    "spark-packer:architecture"   = "x86_64"
    "spark-packer:build"          = "bench-${name}"
    "spark-packer:run-id"         = var.run_id
    "spark-packer:git-commit"     = "bench"
    "spark-packer:created-at"     = "1970-01-01T00:00:00Z"
    "spark-packer:smoke-test"     = "not-provisioned"
    "spark-packer:base-ami"       = "none"
  } }
}

source "amazon-ebs" "base-hvm" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m7i.large"
  ami_name                   = "bench-base-hvm-${var.run_id}"
  ami_description            = "spark-packer base (hvm, x86_64), run ${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "al2023-ami-2023.*-x86_64", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags          = local.tags["base-hvm"]
  snapshot_tags = local.tags["base-hvm"]
  run_tags      = { "managed-by" = "spark-packer", "spark-packer:build" = "bench-base-hvm", "spark-packer:run-id" = var.run_id }
}

source "amazon-ebs" "base-pv" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m3.medium"
  ami_name                   = "bench-base-pv-${var.run_id}"
  ami_description            = "spark-packer base (pv, x86_64), run ${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "amzn-ami-pv-*-x86_64-ebs", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags          = local.tags["base-pv"]
  snapshot_tags = local.tags["base-pv"]
  run_tags      = { "managed-by" = "spark-packer", "spark-packer:build" = "bench-base-pv", "spark-packer:run-id" = var.run_id }
}

source "amazon-ebs" "spark-hvm" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m7i.large"
  ami_name                   = "bench-spark-hvm-${var.run_id}"
  ami_description            = "spark-packer spark-3.5.3 (hvm, x86_64), run ${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "al2023-ami-2023.*-x86_64", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags          = local.tags["spark-hvm"]
  snapshot_tags = local.tags["spark-hvm"]
  run_tags      = { "managed-by" = "spark-packer", "spark-packer:build" = "bench-spark-hvm", "spark-packer:run-id" = var.run_id }
}

source "amazon-ebs" "spark-pv" {
  region                     = "us-east-1"
  ami_regions                = local.copy_regions
  instance_type              = "m3.medium"
  ami_name                   = "bench-spark-pv-${var.run_id}"
  ami_description            = "spark-packer spark-3.5.3 (pv, x86_64), run ${var.run_id}"
  communicator               = "none"
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = true
  skip_region_validation     = true
  source_ami_filter {
    filters     = { name = "amzn-ami-pv-*-x86_64-ebs", architecture = "x86_64", root-device-type = "ebs" }
    owners      = ["amazon"]
    most_recent = true
  }
  tags          = local.tags["spark-pv"]
  snapshot_tags = local.tags["spark-pv"]
  run_tags      = { "managed-by" = "spark-packer", "spark-packer:build" = "bench-spark-pv", "spark-packer:run-id" = var.run_id }
}

build {
  sources = [
    "source.amazon-ebs.base-hvm",
    "source.amazon-ebs.base-pv",
    "source.amazon-ebs.spark-hvm",
    "source.amazon-ebs.spark-pv",
  ]
}
