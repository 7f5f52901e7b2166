# One cell of the matrix: one launch in var.region, copied to var.copy_regions.
# `cargo xtask build-amis` writes the variables from packer/matrix.json; the
# same template serves real AWS and the local EC2 emulator.
packer {
  required_version = ">= 1.6.6"
}

variable "build_name" {
  type        = string
  description = "Unique, readable name of this build, e.g. spark-3.5.3-hvm-x86_64."
}
variable "image" {
  type        = string
  description = "Image name from matrix.json: base or spark-<version>."
}
variable "spark_version" {
  type        = string
  default     = "none"
  description = "Spark version baked into the image, or none for base."
}
variable "virt" {
  type        = string
  description = "hvm or pv. Packer inherits it from the source AMI; it is tagged here."
}
variable "arch" {
  type = string
}
variable "region" {
  type        = string
  description = "Where the instance is launched."
}
variable "copy_regions" {
  type        = list(string)
  default     = []
  description = "Regions the finished AMI is copied to (the copy strategy)."
}
variable "instance_type" {
  type = string
}
variable "source_ami_name" {
  type        = string
  description = "Name pattern of the source AMI; the newest match is used."
}
variable "source_ami_owners" {
  type    = list(string)
  default = ["amazon"]
}
variable "ami_groups" {
  type        = list(string)
  default     = []
  description = "[\"all\"] makes the AMIs public."
}
variable "run_id" {
  type = string
}
variable "git_commit" {
  type = string
}
variable "created_at" {
  type        = string
  description = "UTC time of the run, RFC 3339."
}
variable "endpoint_ec2" {
  type        = string
  default     = ""
  description = "EC2 endpoint URL; empty means the region's real endpoint."
}
variable "skip_aws_validation" {
  type        = bool
  default     = false
  description = "Skip the STS credential and region checks, which an EC2-only emulator cannot answer."
}
variable "communicator" {
  type        = string
  default     = "ssh"
  description = "ssh provisions the instance; none makes an API-only build."
}

locals {
  factory_tags = {
    "managed-by"                  = "spark-packer"
    "spark-packer:image"          = var.image
    "spark-packer:spark-version"  = var.spark_version
    "spark-packer:virtualization" = var.virt
    "spark-packer:architecture"   = var.arch
    "spark-packer:build"          = var.build_name
    "spark-packer:run-id"         = var.run_id
    "spark-packer:git-commit"     = var.git_commit
    "spark-packer:created-at"     = var.created_at
  }
}

source "amazon-ebs" "ami" {
  region                     = var.region
  ami_regions                = var.copy_regions
  ami_groups                 = var.ami_groups
  instance_type              = var.instance_type
  ami_name                   = "spark-packer-${var.build_name}-${var.run_id}"
  ami_description            = "spark-packer ${var.image} (${var.virt}, ${var.arch}), run ${var.run_id}"
  communicator               = var.communicator
  custom_endpoint_ec2        = var.endpoint_ec2
  skip_credential_validation = var.skip_aws_validation
  skip_region_validation     = var.skip_aws_validation

  source_ami_filter {
    filters = {
      name             = var.source_ami_name
      architecture     = var.arch
      root-device-type = "ebs"
    }
    owners      = var.source_ami_owners
    most_recent = true
  }

  tags          = local.factory_tags
  snapshot_tags = local.factory_tags
  run_tags = {
    "managed-by"          = "spark-packer"
    "spark-packer:build"  = var.build_name
    "spark-packer:run-id" = var.run_id
  }
}

build {
  sources = ["source.amazon-ebs.ami"]
}
