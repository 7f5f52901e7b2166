# One cell of the matrix: one launch in var.region, copied to var.copy_regions,
# or one container image. `cargo xtask build-amis` writes the variables from
# packer/matrix.json; the same template serves real AWS, the local EC2
# emulator and Docker, so AMIs and container images run the same provisioners
# in the same order.
#
# Three builds; pick one with -only (build-amis does):
#   -only=amazon-ebs.provisioned  runs scripts/ over SSH, smoke test last;
#   -only=amazon-ebs.api_only     communicator "none": launch, snapshot,
#                                 register, no provisioning (Packer cannot
#                                 run provisioners without a communicator);
#   -only=docker.container        (platform docker) runs scripts/ in a
#                                 container, commits it, tags and pushes it.
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
variable "os_family" {
  type        = string
  description = "OS family from matrix.json (debian-13, al2023, ...), tagged on the AMI."
}
variable "java_version" {
  type        = number
  description = "Java major version base.sh installs: one the OS packages and the image's Spark runs on."
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
variable "base_ami" {
  type        = string
  default     = ""
  description = "Spark on base: the ID of this factory's base AMI, which source_ami_name names. base.sh already ran there, so it is skipped. Empty: start from the stock image."
}
variable "input_hash" {
  type        = string
  default     = "none"
  description = "Hash of everything that determines the image (template, scripts, matrix cell, source AMI, base AMI); a later run skips the build while it is unchanged."
}
variable "input_digests" {
  type        = string
  default     = ""
  description = "name=digest of each input, so a later run can say which one changed."
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
  description = "The provisioned build's communicator (ssh). The api_only build always uses none."
}
variable "ssh_username" {
  type        = string
  default     = "ec2-user"
  description = "The OS family's login user (admin on Debian, ec2-user on Amazon Linux); the scripts run through sudo."
}
variable "ssh_host" {
  type        = string
  default     = ""
  description = "Empty: the instance's address. The local sandbox sets 127.0.0.1."
}
variable "ssh_port" {
  type    = number
  default = 22
}
variable "ssh_private_key_file" {
  type        = string
  default     = ""
  description = "Empty: Packer makes a temporary key pair. The local sandbox sets its own key."
}
variable "ssh_keypair_name" {
  type        = string
  default     = ""
  description = "The EC2 key pair of ssh_private_key_file (imported into the emulator locally)."
}
variable "spark_url" {
  type        = string
  default     = ""
  description = "The Spark tarball's full URL, e.g. https://archive.apache.org/dist/spark/spark-3.5.3/spark-3.5.3-bin-hadoop3.tgz"
}
variable "spark_sha512" {
  type        = string
  default     = ""
  description = "The SHA-512 the tarball must have; spark.sh refuses anything else."
}
variable "spark_sha512_source" {
  type        = string
  default     = "packer/matrix.json (Apache)"
  description = "Where spark_sha512 comes from, said in the build log."
}
variable "hadoop_version" {
  type        = string
  default     = "none"
  description = "Hadoop installed next to Spark by scripts/hadoop.sh, or none."
}
variable "hadoop_url" {
  type        = string
  default     = ""
  description = "The Hadoop tarball's full URL, when hadoop_version is not none."
}
variable "hadoop_sha512" {
  type    = string
  default = ""
}
variable "hadoop_sha512_source" {
  type    = string
  default = "packer/matrix.json (Apache)"
}
variable "platform" {
  type        = string
  default     = "ami"
  description = "ami (the amazon-ebs builds) or docker (the docker.container build)."
}
variable "docker_image" {
  type        = string
  default     = ""
  description = "The container's source image: a registry image, or in the sandbox one imported from the local instance's Debian rootfs."
}
variable "docker_pull" {
  type        = bool
  default     = true
  description = "Pull docker_image first; false for an image only the local daemon has."
}
variable "docker_run_args" {
  type        = list(string)
  default     = []
  description = "More `docker run` arguments: the sandbox's apt cache mount, QEMU_CPU for emulated arm64."
}
variable "docker_repository" {
  type        = string
  default     = ""
  description = "Where the image is pushed: REGISTRY/NAMESPACE/IMAGE, e.g. 127.0.0.1:5000/spark-packer/base."
}
variable "docker_tag" {
  type        = string
  default     = ""
  description = "The pushed tag: <run-id>-<os>-<arch>; also the image's org.opencontainers.image.version."
}
variable "source_url" {
  type        = string
  default     = ""
  description = "The factory's repository URL, the image's org.opencontainers.image.source."
}
variable "smoke_test" {
  type        = bool
  default     = true
  description = "Run scripts/smoke-test.sh last on Spark images. Off only for debugging."
}

locals {
  # The provisioners in order: base unless the source already is the base
  # image; on Spark images Spark, Hadoop if asked for, and the smoke test last.
  has_spark = var.spark_version != "none"
  steps = concat(
    var.base_ami == "" ? ["base.sh"] : [],
    local.has_spark ? ["spark.sh"] : [],
    local.has_spark && var.hadoop_version != "none" ? ["hadoop.sh"] : [],
    local.has_spark && var.smoke_test ? ["smoke-test.sh"] : [],
  )
  smoke_test_off = local.has_spark && ! var.smoke_test ? [
    "echo 'spark-packer: WARNING: smoke test OFF (debugging): this image was never shown to run Spark'"
  ] : []
  # The images log in as a user (admin, ec2-user): the scripts need root.
  # A container runs them as root, as `docker run` would.
  execute_command = var.ssh_username == "root" || var.platform == "docker" ? "chmod +x {{ .Path }}; {{ .Vars }} {{ .Path }}" : "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} {{ .Path }}"
  scripts_dir     = "/tmp/spark-packer"

  factory_tags = {
    "managed-by"                  = "spark-packer"
    "spark-packer:image"          = var.image
    "spark-packer:spark-version"  = var.spark_version
    "spark-packer:virtualization" = var.virt
    "spark-packer:architecture"   = var.arch
    "spark-packer:os"             = var.os_family
    "spark-packer:java"           = var.java_version
    "spark-packer:build"          = var.build_name
    "spark-packer:run-id"         = var.run_id
    "spark-packer:git-commit"     = var.git_commit
    "spark-packer:created-at"     = var.created_at
    "spark-packer:base-ami"       = var.base_ami == "" ? "none" : var.base_ami
    "spark-packer:inputs"         = var.input_hash
    "spark-packer:input-digests"  = var.input_digests
    # The AMI exists only if every provisioner, the smoke test last, passed.
    "spark-packer:smoke-test" = var.communicator == "none" ? "not-provisioned" : (! local.has_spark ? "no-spark" : (var.smoke_test ? "passed" : "SKIPPED"))
  }

  # A container image carries the same facts as labels (no virtualization,
  # no base AMI), next to the OCI annotations registries show.
  docker_labels = merge(
    { for k, v in local.factory_tags : k => v if ! contains(["spark-packer:virtualization", "spark-packer:base-ami"], k) },
    {
      "org.opencontainers.image.source"   = var.source_url
      "org.opencontainers.image.revision" = var.git_commit
      "org.opencontainers.image.created"  = var.created_at
      "org.opencontainers.image.version"  = var.docker_tag
      "org.opencontainers.image.title"    = "spark-packer ${var.image} on ${var.os_family} (${var.arch})"
    },
  )
  # `docker run IMAGE spark-submit ...` works as in Apache's images: no login
  # shell reads profile.d there. Java is on the default PATH.
  docker_env = local.has_spark ? [
    "ENV SPARK_HOME=/opt/spark",
    "ENV PATH=/opt/spark/bin:/opt/spark/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  ] : []
}

source "amazon-ebs" "ami" {
  region                     = var.region
  ami_regions                = var.copy_regions
  ami_groups                 = var.ami_groups
  instance_type              = var.instance_type
  ami_name                   = "spark-packer-${var.build_name}-${var.run_id}"
  ami_description            = "spark-packer ${var.image} on ${var.os_family} (${var.virt}, ${var.arch}), run ${var.run_id}"
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

  # Named after the run, so that a later run can find and delete it if this
  # one dies before Packer can (Packer 1.6.6 cannot name or tag its temporary
  # security group; those are found through the run's tagged instances).
  temporary_key_pair_name = "packer_${var.run_id}_${var.build_name}"

  tags          = local.factory_tags
  snapshot_tags = local.factory_tags
  run_tags = {
    "managed-by"          = "spark-packer"
    "spark-packer:build"  = var.build_name
    "spark-packer:run-id" = var.run_id
  }
}

source "docker" "container" {
  image  = var.docker_image
  pull   = var.docker_pull
  commit = true
  # Host networking: apt and the Spark mirror, as an instance reaches them.
  run_command = concat(["-d", "-i", "-t", "--network=host"], var.docker_run_args, ["--entrypoint=/bin/sh", "--", "{{.Image}}"])
  # Reset the entrypoint the run command set, or the image keeps /bin/sh.
  changes = concat(
    ["ENTRYPOINT [\"\"]", "CMD [\"/bin/bash\"]"],
    [for k, v in local.docker_labels : "LABEL ${jsonencode(k)}=${jsonencode(v)}"],
    local.docker_env,
  )
}

build {
  sources = ["source.docker.container"]

  source "source.amazon-ebs.ami" {
    name         = "api_only"
    communicator = "none"
  }

  source "source.amazon-ebs.ami" {
    name                 = "provisioned"
    communicator         = var.communicator
    ssh_username         = var.ssh_username
    ssh_host             = var.ssh_host
    ssh_port             = var.ssh_port
    ssh_private_key_file = var.ssh_private_key_file
    ssh_keypair_name     = var.ssh_keypair_name
    ssh_timeout          = "10m"
  }

  provisioner "shell" {
    only            = ["amazon-ebs.provisioned", "docker.container"]
    execute_command = local.execute_command
    inline          = ["mkdir -p ${local.scripts_dir}", "chmod 0777 ${local.scripts_dir}"]
  }

  provisioner "file" {
    only        = ["amazon-ebs.provisioned", "docker.container"]
    source      = "${path.root}/../scripts/"
    destination = "${local.scripts_dir}/"
  }

  provisioner "shell" {
    only            = ["amazon-ebs.provisioned", "docker.container"]
    execute_command = local.execute_command
    environment_vars = [
      "SPARK_PACKER_IMAGE=${var.image}",
      "JAVA_VERSION=${var.java_version}",
      "SPARK_VERSION=${var.spark_version}",
      "SPARK_URL=${var.spark_url}",
      "SPARK_SHA512=${var.spark_sha512}",
      "SPARK_SHA512_SOURCE=${var.spark_sha512_source}",
      "HADOOP_VERSION=${var.hadoop_version}",
      "HADOOP_URL=${var.hadoop_url}",
      "HADOOP_SHA512=${var.hadoop_sha512}",
      "HADOOP_SHA512_SOURCE=${var.hadoop_sha512_source}",
    ]
    inline = concat(
      local.smoke_test_off,
      [for step in local.steps : "bash ${local.scripts_dir}/${step}"],
      ["rm -rf ${local.scripts_dir}"],
    )
  }

  # The committed container, tagged and pushed; build-amis reads its digest.
  post-processors {
    post-processor "docker-tag" {
      only       = ["docker.container"]
      repository = var.docker_repository
      tags       = [var.docker_tag]
    }
    post-processor "docker-push" {
      only = ["docker.container"]
    }
  }
}
