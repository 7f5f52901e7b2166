//! arm64 instances on an x86_64 host: qemu-user emulation through the
//! kernel's binfmt_misc, so an arm64 Debian rootfs runs in a chroot with the
//! same binaries as the arm64 AMI.
//!
//! The sandbox registers its own entry, named `spark-packer-aarch64`, ahead
//! of any the host has: `F` opens the emulator now, so it works inside the
//! chroot, and `C` takes credentials from the program, not the emulator, so
//! sudo's setuid bit works as on the instance. The entry is left registered:
//! it only runs arm64 programs that would otherwise fail with "Exec format
//! error". `echo -1 > /proc/sys/fs/binfmt_misc/spark-packer-aarch64` removes it.

use std::{fs, path::Path};

/// The CPU qemu emulates: Graviton2's core. qemu's default CPU emulates
/// pointer authentication with a slow algorithm that Debian 13's binaries
/// use everywhere; with this, a Python loop ran 0.4 s instead of 7 to 10 s,
/// and Spark's pi.py about 5 times faster (measured here, qemu 7.2).
pub const QEMU_CPU: (&str, &str) = ("QEMU_CPU", "neoverse-n1");

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
const ENTRY: &str = "spark-packer-aarch64";
const QEMU: &str = "/usr/bin/qemu-aarch64-static";
/// The ELF header of a 64-bit little-endian aarch64 executable, and its mask,
/// as Debian's qemu-user-static registers them.
const MAGIC: &str = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00";
const MASK: &str = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

/// Makes `arch` programs runnable here, or says why they cannot be. Never
/// falls back to running a build natively.
pub fn ensure(sh: &Shell, arch: &str) -> Result<()> {
    if arch != "arm64" {
        bail!("the sandbox can emulate arm64 only, not {arch}: leave it out with --arch");
    }
    let cannot = "arm64 builds cannot run here; build x86_64 only with --arch x86_64";
    if !Path::new(QEMU).exists() {
        bail!("arm64 builds run under qemu-user emulation: apt-get install qemu-user-static (dev/setup does), or {cannot}");
    }
    let binfmt = Path::new(BINFMT);
    if !binfmt.join("register").exists() {
        cmd!(sh, "mount -t binfmt_misc binfmt_misc {binfmt}").quiet().run().with_context(|| {
            format!("mount binfmt_misc on {BINFMT} (needs root and a kernel with binfmt_misc): {cannot}")
        })?;
    }
    let entry = binfmt.join(ENTRY);
    if !entry.exists() {
        let rule = format!(":{ENTRY}:M::{MAGIC}:{MASK}:{QEMU}:FC");
        // Another run may register it at the same moment: then it exists.
        if let Err(e) = fs::write(binfmt.join("register"), rule) {
            if !entry.exists() {
                return Err(e).with_context(|| format!("register qemu-aarch64 with binfmt_misc: {cannot}"));
            }
        }
    }
    let status = fs::read_to_string(&entry).with_context(|| format!("read {}", entry.display()))?;
    let usable = status.lines().next() == Some("enabled")
        && status.lines().any(|l| l.strip_prefix("flags: ").is_some_and(|f| f.contains('F') && f.contains('C')));
    if !usable {
        bail!("{} is not an enabled F and C entry ({}): {cannot}", entry.display(), status.replace('\n', "; "));
    }
    Ok(())
}
