# Packer 1.7+ needs the amazon plugin installed by `packer init packer/plugins.pkr.hcl`.
# Packer 1.6.6 has it built in and rejects this block, so it lives alone here and
# the xtask builds spark-ami.pkr.hcl by itself.
packer {
  required_plugins {
    amazon = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
