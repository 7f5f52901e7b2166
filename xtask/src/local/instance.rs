//! The local instance Packer provisions over SSH: a Debian rootfs of the
//! build's release and architecture, made once with debootstrap (cached under
//! target/local/; arm64 runs under qemu-user emulation, see `emulation`), and
//! per build an overlay copy of it with /proc and /dev mounted, the OS
//! family's login user with passwordless sudo (as cloud-init makes it on the
//! AMI), and sshd on its own loopback port with root login off. Dropping an
//! [`Instance`] kills everything running inside it, unmounts it and deletes
//! its overlay, whatever way the build ended.

use std::{
    fs::{self, File},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{sandbox_dir, start_listening};
use crate::aws::Aws;

/// What the cached rootfs holds before any provisioner runs: what the
/// official Debian cloud image ships and the scripts rely on (sshd, sudo,
/// python3 for cloud-init, curl, ca-certificates, procps), and nothing a
/// provisioner is meant to install. Java in particular is base.sh's job.
pub const ROOTFS_PACKAGES: [&str; 6] = ["openssh-server", "sudo", "python3", "procps", "curl", "ca-certificates"];
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Bump when the rootfs setup below changes, so caches are rebuilt.
const ROOTFS_SETUP_VERSION: u32 = 4;

/// Which rootfs an instance runs: a Debian suite for an EC2 architecture.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RootfsKind {
    pub suite: String,
    /// EC2's name: x86_64 or arm64.
    pub arch: String,
}

impl RootfsKind {
    /// Debian's name for the architecture.
    pub fn debian_arch(&self) -> &str {
        match self.arch.as_str() {
            "x86_64" => "amd64",
            other => other,
        }
    }

    /// `trixie-arm64`: how caches and logs name it.
    pub fn label(&self) -> String {
        format!("{}-{}", self.suite, self.debian_arch())
    }

    /// Whether it runs natively here, or under emulation.
    pub fn is_native(&self) -> bool {
        is_native_arch(&self.arch)
    }
}

/// Whether this host runs `arch` (EC2's name) without emulation.
pub fn is_native_arch(arch: &str) -> bool {
    arch == std::env::consts::ARCH || (arch == "arm64" && std::env::consts::ARCH == "aarch64")
}

/// The name the sandbox key is imported under in the emulator.
pub const KEYPAIR_NAME: &str = "spark-packer-local";

/// Debootstrap, mount and chroot all need root.
pub fn require_root(sh: &Shell) -> Result<()> {
    let uid = cmd!(sh, "id -u").quiet().read().context("run `id -u`")?;
    if uid.trim() != "0" {
        bail!(
            "the local instance needs root (debootstrap, mount, chroot): run as root, \
             or pass --no-provision for API-only builds"
        );
    }
    Ok(())
}

pub fn rootfs_dir(kind: &RootfsKind) -> PathBuf {
    sandbox_dir().join(format!("rootfs-{}", kind.label()))
}

/// The .deb files apt downloaded for this release, shared by every local
/// instance, so each package downloads once per machine while every build
/// still runs apt-get install. Hard links, not a bind mount: concurrent apt
/// runs would fight over one archives lock.
pub fn package_cache_dir(kind: &RootfsKind) -> PathBuf {
    sandbox_dir().join(format!("apt-archives-{}", kind.label()))
}

const APT_ARCHIVES: &str = "var/cache/apt/archives";

/// Hard-links every .deb of `from` that `to` lacks into `to`.
pub fn link_debs(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    let Ok(entries) = fs::read_dir(from) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_deb = name.to_string_lossy().ends_with(".deb") && entry.file_type().is_ok_and(|t| t.is_file());
        if is_deb && !to.join(&name).exists() {
            fs::hard_link(entry.path(), to.join(&name))
                .with_context(|| format!("link {} into {}", entry.path().display(), to.display()))?;
        }
    }
    Ok(())
}

pub fn instances_dir() -> PathBuf {
    sandbox_dir().join("instances")
}

fn rootfs_stamp(kind: &RootfsKind) -> String {
    format!("{} {} setup-v{ROOTFS_SETUP_VERSION}\n", kind.label(), ROOTFS_PACKAGES.join(","))
}

/// Makes the rootfs of `kind` once; later calls return the cached one. Safe
/// to call from concurrent processes. A foreign architecture needs the
/// emulation `emulation::ensure` set up first.
pub fn ensure_rootfs(sh: &Shell, kind: &RootfsKind) -> Result<PathBuf> {
    let dir = sandbox_dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let lock = File::create(dir.join(format!("rootfs-{}.lock", kind.label()))).context("create the rootfs lock")?;
    lock.lock().context("lock the rootfs cache")?;

    let root = rootfs_dir(kind);
    let stamp = root.join(".spark-packer-rootfs");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(rootfs_stamp(kind).as_str()) {
        return Ok(root);
    }
    let tmp = dir.join(format!("rootfs-{}.tmp", kind.label()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("remove the unfinished {}", tmp.display()))?;
    }
    let include = format!("--include={}", ROOTFS_PACKAGES.join(","));
    let arch = format!("--arch={}", kind.debian_arch());
    let _cpu = (!kind.is_native()).then(|| sh.push_env(super::emulation::QEMU_CPU.0, super::emulation::QEMU_CPU.1));
    let suite = &kind.suite;
    let output = cmd!(sh, "debootstrap --variant=minbase {arch} {include} {suite} {tmp} {DEBIAN_MIRROR}")
        .quiet()
        .ignore_status()
        .output()
        .context("run `debootstrap`: install it with `apt-get install debootstrap` (or run dev/setup)")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stdout.lines().chain(stderr.lines()).rev().take(5).collect();
        bail!(
            "debootstrap {} into {} failed (is {DEBIAN_MIRROR} reachable?): {}",
            kind.label(),
            tmp.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    configure_rootfs(sh, &tmp, suite)?;
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("remove the outdated {}", root.display()))?;
    }
    fs::write(tmp.join(".spark-packer-rootfs"), rootfs_stamp(kind)).context("stamp the rootfs")?;
    fs::rename(&tmp, &root).with_context(|| format!("move the new rootfs to {}", root.display()))?;
    Ok(root)
}

/// Makes the minbase system look like a freshly published cloud image: the
/// security suite in apt's sources and its updates applied (so that base.sh's
/// upgrade has little left to do), host keys, and no daemons started by
/// package installs (they would outlive the build on the host).
fn configure_rootfs(sh: &Shell, root: &Path, suite: &str) -> Result<()> {
    let sources = format!(
        "deb {DEBIAN_MIRROR} {suite} main\n\
         deb {DEBIAN_MIRROR} {suite}-updates main\n\
         deb http://deb.debian.org/debian-security {suite}-security main\n"
    );
    fs::write(root.join("etc/apt/sources.list"), sources).context("write the rootfs apt sources")?;
    let policy = root.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\n# spark-packer local instance: never start services\nexit 101\n")
        .context("write policy-rc.d")?;
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;
    cmd!(sh, "chroot {root} ssh-keygen -A").quiet().output().context("make sshd host keys")?;

    let proc_dir = root.join("proc");
    cmd!(sh, "mount -t proc proc {proc_dir}").quiet().run().context("mount /proc in the new rootfs")?;
    let updated = (|| -> Result<()> {
        let _e = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        for args in [&["update"][..], &["-y", "upgrade"], &["clean"]] {
            let output = cmd!(sh, "chroot {root} apt-get -q {args...}").quiet().ignore_status().output()?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                bail!("apt-get {}: {}", args.join(" "), stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | "));
            }
        }
        Ok(())
    })();
    let unmounted = cmd!(sh, "umount {proc_dir}").quiet().run();
    updated.context("apply Debian's updates to the new rootfs (is deb.debian.org reachable?)")?;
    unmounted.context("unmount /proc from the new rootfs")?;
    Ok(())
}

/// The key Packer logs in with: made once under target/local/ssh, mode 0600.
pub struct SshKey {
    pub private_key: PathBuf,
    pub public_key: String,
}

pub fn ensure_ssh_key(sh: &Shell) -> Result<SshKey> {
    let dir = sandbox_dir().join("ssh");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let lock = File::create(dir.join("key.lock")).context("create the key lock")?;
    lock.lock().context("lock the sandbox key")?;
    let private_key = dir.join("id_rsa");
    let public = dir.join("id_rsa.pub");
    if !private_key.exists() || !public.exists() {
        let _ = fs::remove_file(&private_key);
        let _ = fs::remove_file(&public);
        // PEM RSA: the format every Packer since 1.6 reads.
        let no_passphrase = "";
        cmd!(sh, "ssh-keygen -q -t rsa -b 3072 -m PEM -N {no_passphrase} -C spark-packer-local -f {private_key}")
            .quiet()
            .run()
            .context("make the sandbox SSH key: install ssh-keygen (`apt-get install openssh-client`)")?;
    }
    fs::set_permissions(&private_key, fs::Permissions::from_mode(0o600))?;
    let public_key = fs::read_to_string(&public).with_context(|| format!("read {}", public.display()))?;
    Ok(SshKey { private_key, public_key: public_key.trim().to_string() })
}

/// Imports the sandbox key into the emulator, so Packer can name it in
/// `ssh_keypair_name` when it launches the (emulated) instance.
pub fn import_key_pair(sh: &Shell, aws: &Aws, region: &str, key: &SshKey) -> Result<()> {
    let public_key = PathBuf::from(format!("{}.pub", key.private_key.display()));
    aws.import_key_pair(sh, region, KEYPAIR_NAME, &public_key)
        .with_context(|| format!("import the sandbox key into the emulator in {region}"))
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// One build's instance: an overlay of the rootfs with sshd on `port`.
pub struct Instance {
    pub port: u16,
    dir: PathBuf,
    kind: RootfsKind,
    sshd: Option<Child>,
    /// Where Drop moves the instance's disk (its overlay upper dir) instead of deleting it.
    keep_disk: Option<PathBuf>,
    sh: Shell,
}

impl Instance {
    /// Mounts a fresh overlay named after `build` and starts sshd in it.
    /// `lowers` are its read-only layers, topmost first: the rootfs of `kind`
    /// alone, or a base build's kept disk over it (the local base AMI).
    /// `login_user` gets the key and passwordless sudo; root cannot log in.
    pub fn start(
        sh: &Shell,
        lowers: &[&Path],
        kind: &RootfsKind,
        key: &SshKey,
        login_user: &str,
        build: &str,
    ) -> Result<Instance> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let dir = instances_dir().join(format!("{build}-{}-{n}", std::process::id()));
        let merged = dir.join("root");
        // Built first, so that Drop cleans up whatever the steps below did.
        let mut instance =
            Instance { port: 0, dir: dir.clone(), kind: kind.clone(), sshd: None, keep_disk: None, sh: sh.clone() };
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        link_debs(&package_cache_dir(kind), &upper.join(APT_ARCHIVES)).context("fill the instance's package cache")?;
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), upper.display(), work.display());
        cmd!(sh, "mount -t overlay overlay -o {options} {merged}").quiet().run().context("mount the overlay")?;
        let proc_dir = merged.join("proc");
        cmd!(sh, "mount -t proc proc {proc_dir}").quiet().run().context("mount /proc in the instance")?;
        let dev_dir = merged.join("dev");
        cmd!(sh, "mount --bind /dev {dev_dir}").quiet().run().context("bind /dev into the instance")?;

        add_login_user(sh, &merged, login_user, key)?;
        write_hosts(&merged)?;
        if !kind.is_native() {
            keep_emulated_cpu(&merged)?;
        }
        fs::create_dir_all(merged.join("run/sshd")).context("create sshd's privilege separation directory")?;

        let log_for = |port| dir.join(format!("sshd-{port}.log"));
        let sshd = start_listening("sshd in the local instance", Duration::from_secs(15), log_for, |port| {
            let mut command = Command::new("chroot");
            if !kind.is_native() {
                command.env(super::emulation::QEMU_CPU.0, super::emulation::QEMU_CPU.1);
            }
            command
                .arg(&merged)
                .args(["/usr/sbin/sshd", "-D", "-e", "-p", &port.to_string()])
                .args(["-o", "ListenAddress=127.0.0.1", "-o", "PermitRootLogin=no"])
                .args(["-o", "PasswordAuthentication=no", "-o", "UseDNS=no"]);
            command
        })?;
        instance.port = sshd.port;
        instance.sshd = Some(sshd.child);
        Ok(instance)
    }

    /// On drop, keep what the build changed (the overlay's upper dir) at
    /// `dest`, as a layer for instances started from this build's AMI.
    pub fn keep_disk_as(&mut self, dest: PathBuf) {
        self.keep_disk = Some(dest);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        // What apt downloaded here, for the next instances.
        let _ = link_debs(&self.dir.join("upper").join(APT_ARCHIVES), &package_cache_dir(&self.kind));
        if let Some(dest) = self.keep_disk.take() {
            // Only a fully stopped and unmounted upper dir can become a lower layer.
            if stop(&self.sh, &self.dir).is_ok() {
                let _ = fs::rename(self.dir.join("upper"), dest);
            }
        }
        let _ = tear_down(&self.sh, &self.dir);
    }
}

/// What cloud-init does on the AMI's first boot: the family's default user,
/// with the instance's key and passwordless sudo. Debian's cloud images name
/// the sudoers file 90-cloud-init-users.
fn add_login_user(sh: &Shell, root: &Path, user: &str, key: &SshKey) -> Result<()> {
    if user == "root"
        || user.is_empty()
        || !user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("login user `{user}`: the local instance logs in as the OS family's own user, never root");
    }
    let home = root.join("home").join(user);
    if !home.exists() {
        cmd!(sh, "chroot {root} useradd --create-home --shell /bin/bash {user}")
            .quiet()
            .run()
            .with_context(|| format!("create the login user {user} in the instance"))?;
    }
    let sudoers = root.join("etc/sudoers.d/90-cloud-init-users");
    fs::create_dir_all(sudoers.parent().expect("sudoers.d has a parent"))?;
    fs::write(
        &sudoers,
        format!("# Created by spark-packer's local instance, as cloud-init does\n{user} ALL=(ALL) NOPASSWD:ALL\n"),
    )
    .context("write the sudoers rule")?;
    fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o440))?;
    let ssh_dir = home.join(".ssh");
    fs::create_dir_all(&ssh_dir)?;
    let authorized = ssh_dir.join("authorized_keys");
    fs::write(&authorized, format!("{}\n", key.public_key)).context("write authorized_keys")?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(&authorized, fs::Permissions::from_mode(0o600))?;
    let owner = format!("{user}:{user}");
    let home_in_root = format!("/home/{user}");
    cmd!(sh, "chroot {root} chown -R {owner} {home_in_root}").quiet().run().context("give the login user its home")?;
    Ok(())
}

/// Every process of an emulated instance runs on the emulated CPU
/// `emulation::QEMU_CPU` names: sshd sessions read it from /etc/environment
/// (PAM), and sudo keeps it. Only the local instance has these lines.
fn keep_emulated_cpu(root: &Path) -> Result<()> {
    let (var, value) = super::emulation::QEMU_CPU;
    let environment = root.join("etc/environment");
    let mut text = fs::read_to_string(&environment).unwrap_or_default();
    if !text.lines().any(|l| l.starts_with(&format!("{var}="))) {
        text.push_str(&format!("{var}={value}\n"));
        fs::write(&environment, text).context("write the instance's /etc/environment")?;
    }
    let sudoers = root.join("etc/sudoers.d/90-spark-packer-emulation");
    fs::write(&sudoers, format!("Defaults env_keep += \"{var}\"\n")).context("write the sudoers rule")?;
    fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o440))?;
    Ok(())
}

/// /etc/hosts naming the instance, as cloud-init's manage_etc_hosts writes it
/// on Debian's AMIs; without it sudo warns that it cannot resolve the host.
fn write_hosts(root: &Path) -> Result<()> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
    if !name.is_empty() && name != "localhost" {
        hosts.push_str(&format!("127.0.1.1\t{name}\n"));
    }
    fs::write(root.join("etc/hosts"), hosts).context("write the instance's /etc/hosts")
}

/// The kept disks of one run's base builds, which its Spark builds start
/// from with --spark-on-base; deleted with the run (the sandbox's emulator,
/// and so its AMIs, lives only as long).
pub struct BaseDisks {
    dir: PathBuf,
}

impl BaseDisks {
    pub fn create() -> Result<BaseDisks> {
        // Named like an instance, so the stale-instance sweep removes it too.
        let dir = instances_dir().join(format!("base-disks-{}-0", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(BaseDisks { dir })
    }

    /// Where the disk of base build `build` is kept.
    pub fn path(&self, build: &str) -> PathBuf {
        self.dir.join(build)
    }
}

impl Drop for BaseDisks {
    fn drop(&mut self) {
        if let Ok(sh) = Shell::new() {
            let _ = tear_down(&sh, &self.dir);
        }
    }
}

/// Kills every process whose root is inside `dir` (sshd sessions, Spark JVMs
/// a failed smoke test left behind, daemons a package started), unmounts
/// everything under it, deepest first, and removes it.
pub fn tear_down(sh: &Shell, dir: &Path) -> Result<()> {
    stop(sh, dir)?;
    fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

/// Kills every process rooted inside `dir` and unmounts everything under it.
fn stop(sh: &Shell, dir: &Path) -> Result<()> {
    for _ in 0..50 {
        let pids = processes_rooted_under(dir);
        if pids.is_empty() {
            break;
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let _ = cmd!(sh, "kill -KILL {pids...}").quiet().ignore_status().ignore_stderr().run();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in &mounts {
        if cmd!(sh, "umount {mount}").quiet().ignore_stderr().run().is_err() {
            // Busy despite the kills: detach it now, the kernel frees it later.
            let _ = cmd!(sh, "umount -l {mount}").quiet().ignore_stderr().run();
        }
    }
    if !mounts_under(dir).is_empty() {
        bail!("could not unmount everything under {}", dir.display());
    }
    Ok(())
}

/// Tears down instances whose xtask process died without cleaning up (a
/// SIGKILL, a power cut): their directory names end in `-<pid>-<n>`.
pub fn sweep_stale_instances(sh: &Shell) {
    let Ok(entries) = fs::read_dir(instances_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.rsplit('-').nth(1).and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = tear_down(sh, &entry.path());
        }
    }
}

/// Tears down this process's own instances. For an exit that skips Drop:
/// the second Ctrl-C, which stops waiting for Packer.
pub fn tear_down_own_instances() {
    let Ok(sh) = Shell::new() else { return };
    let Ok(entries) = fs::read_dir(instances_dir()) else { return };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.rsplit('-').nth(1).and_then(|pid| pid.parse::<u32>().ok()) == Some(me) {
            let _ = tear_down(&sh, &entry.path());
        }
    }
}

/// Mount points at or under `dir`, from /proc/mounts (octal escapes undone).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/mounts").unwrap_or_default();
    parse_mount_points(&text).into_iter().filter(|point| Path::new(point).starts_with(dir)).collect()
}

/// The mount points of a /proc/mounts text.
pub fn parse_mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|point| point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        .collect()
}

/// Processes whose root directory lies at or under `dir`: what runs inside
/// a chroot there.
pub fn processes_rooted_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root.starts_with(dir)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_with_escapes() {
        // Two lines as /proc/mounts shows them on Debian 12.
        let text = "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
                    overlay /work/main/target/local/instances/a\\040b/root overlay rw,relatime,lowerdir=/x 0 0\n";
        assert_eq!(parse_mount_points(text), ["/proc", "/work/main/target/local/instances/a b/root"]);
    }

    #[test]
    fn the_stamp_names_every_package() {
        let stamp = rootfs_stamp(&RootfsKind { suite: "trixie".into(), arch: "arm64".into() });
        assert!(stamp.starts_with("trixie-arm64 "), "{stamp}");
        assert!(ROOTFS_PACKAGES.iter().all(|p| stamp.contains(p)), "{stamp}");
    }
}
