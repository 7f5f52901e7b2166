//! The sandbox's container engine: a dockerd of its own that leaves the host
//! alone (no docker0, no iptables rules: see DESIGN.md), a registry on a free
//! loopback port, and base images imported from the local instances' Debian
//! rootfs. All of it stops, and its directory goes, when the value drops.

use std::{
    fs::{self, File},
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{sys::signal::Signal, unistd::Pid};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use super::{instance, sandbox_dir, start_listening, Listening};
use crate::{docker::Engine, interrupt};

/// What dockerd gets besides its own directories: no bridge, no firewall or
/// NAT rules. Containers use the host's network or a user-defined one.
const LEAVE_THE_HOST_ALONE: [&str; 4] = ["--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false"];

/// The sandbox's dockerd and registry; stopped and removed on drop.
pub struct DockerSandbox {
    /// Taken by Drop, which stops it.
    dockerd: Option<Child>,
    /// Held shared while this engine may push: clean-old-images collects the
    /// storage's garbage only when no run holds it.
    _storage_in_use: File,
    registry: Listening,
    dir: PathBuf,
    pub engine: Engine,
    /// `127.0.0.1:<port>`, where the registry listens.
    pub registry_address: String,
}

/// The directory of this process's sandbox engine.
fn engine_dir(pid: u32) -> PathBuf {
    sandbox_dir().join(format!("docker-{pid}"))
}

/// The registry's storage, kept between runs: content-addressed, so layers
/// the runs share are stored once.
pub fn registry_storage() -> PathBuf {
    sandbox_dir().join("registry")
}

impl DockerSandbox {
    pub fn start(sh: &Shell) -> Result<DockerSandbox> {
        instance::require_root(sh)?;
        sweep_stale_engines(sh);
        let storage_in_use = storage_lock()?;
        storage_in_use.lock_shared().context("lock the registry storage (shared)")?;
        let dir = engine_dir(std::process::id());
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("create {}", dir.join(sub).display()))?;
        }
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let mut command = Command::new("dockerd");
        command
            .args(LEAVE_THE_HOST_ALONE)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            // A terminal's Ctrl-C reaches us only; Drop stops it after Packer.
            .process_group(0)
            .stdin(Stdio::null());
        let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        command.stdout(log_file.try_clone()?).stderr(log_file);
        interrupt::die_with_parent(&mut command, Signal::SIGTERM);
        let dockerd = command.spawn().context("start `dockerd`: install it with `apt-get install docker.io`")?;
        let engine = Engine {
            host: Some(format!("unix://{}", socket.display())),
            config: Some(dir.join("config").display().to_string()),
            insecure_registry: true,
        };
        let registry = match start_registry(&dir) {
            Ok(registry) => registry,
            Err(e) => {
                stop_dockerd(dockerd, &dir);
                return Err(e);
            }
        };
        let registry_address = format!("127.0.0.1:{}", registry.port);
        interrupt::kill_on_exit(dockerd.id());
        let mut sandbox = DockerSandbox {
            dockerd: Some(dockerd),
            _storage_in_use: storage_in_use,
            registry,
            dir,
            engine,
            registry_address,
        };
        sandbox.wait_until_ready(sh, &log)?;
        Ok(sandbox)
    }

    /// The engine's own directory, removed with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Until the engine answers, up to 30 s.
    fn wait_until_ready(&mut self, sh: &Shell, log: &Path) -> Result<()> {
        let started = Instant::now();
        let sh = sh.clone();
        self.engine.apply(&sh);
        loop {
            let dockerd = self.dockerd.as_mut().context("dockerd was stopped")?;
            if let Some(status) = dockerd.try_wait()? {
                let said = fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(3).collect();
                bail!("dockerd exited ({status}) before it was ready: {}; see {}", tail.join(" | "), log.display());
            }
            if self.engine.run(&sh, &["version", "--format", "{{.Server.Version}}"]).is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("dockerd did not answer within 30 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Loads `rootfs` (a local instance's Debian rootfs of `debian_arch`) as
    /// the image `name`, with that architecture in its config, as a registry
    /// image of it would have. (`docker import` of engine 20.10 records the
    /// host's architecture whatever it is told.)
    pub fn import_rootfs(&self, sh: &Shell, rootfs: &Path, debian_arch: &str, name: &str) -> Result<()> {
        let archive = self.dir.join(format!("import-{debian_arch}"));
        fs::create_dir_all(&archive).with_context(|| format!("create {}", archive.display()))?;
        let layer = archive.join("layer.tar");
        // The instance's host keys and the cache stamp are no part of an image.
        cmd!(sh, "tar -C {rootfs} --exclude=./.spark-packer-rootfs --exclude=./etc/ssh/ssh_host_* -cf {layer} .")
            .quiet()
            .run()
            .with_context(|| format!("pack {} as an image layer", rootfs.display()))?;
        let diff_id = sha256_of(&layer)?;
        let config = serde_json::json!({
            "architecture": debian_arch,
            "os": "linux",
            "config": { "Cmd": ["/bin/bash"] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
            "history": [{ "created_by": format!("spark-packer: the local instance's Debian rootfs ({debian_arch})") }],
        });
        fs::write(archive.join("config.json"), config.to_string())?;
        let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"] }]);
        fs::write(archive.join("manifest.json"), manifest.to_string())?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&archive)
            .args(["-c", "manifest.json", "config.json", "layer.tar"])
            .stdout(Stdio::piped())
            .spawn()
            .context("start tar")?;
        let mut load = Command::new("docker");
        if let Some(host) = &self.engine.host {
            load.env("DOCKER_HOST", host);
        }
        let loaded = load.args(["load", "-q"]).stdin(tar.stdout.take().context("tar's stdout")?).output();
        let packed = tar.wait();
        let _ = fs::remove_dir_all(&archive);
        let loaded = loaded.context("run `docker load`")?;
        if !loaded.status.success() || !packed.is_ok_and(|s| s.success()) {
            bail!("docker load of {}: {}", rootfs.display(), String::from_utf8_lossy(&loaded.stderr).trim());
        }
        Ok(())
    }
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Debian's docker-registry on a free loopback port, storing in `registry_storage`.
fn start_registry(dir: &Path) -> Result<Listening> {
    let storage = registry_storage();
    fs::create_dir_all(&storage).with_context(|| format!("create {}", storage.display()))?;
    start_listening(
        "the sandbox's registry",
        Duration::from_secs(15),
        |port| dir.join(format!("registry-{port}.log")),
        |port| {
            let config = dir.join(format!("registry-{port}.yml"));
            let text = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
            let _ = fs::write(&config, text);
            let mut command = Command::new("docker-registry");
            command.arg("serve").arg(config).process_group(0);
            command
        },
    )
}

/// A lock on the registry storage: shared while a run may push to it,
/// exclusive while its garbage is collected (which would delete the blobs of
/// a push under way).
fn storage_lock() -> Result<File> {
    let path = sandbox_dir().join("registry.lock");
    File::create(&path).with_context(|| format!("create {}", path.display()))
}

/// The sandbox's registry alone, on its kept storage (clean-old-images).
/// On drop it stops, collects its garbage (the layers no manifest names
/// any more), and its directory goes.
pub struct SandboxRegistry {
    server: Listening,
    dir: PathBuf,
    /// `127.0.0.1:<port>`
    pub address: String,
    /// Set by --yes: on drop, free the layers no manifest names any more.
    pub collect_garbage: bool,
}

impl SandboxRegistry {
    pub fn start(sh: &Shell) -> Result<SandboxRegistry> {
        instance::require_root(sh)?;
        let dir = sandbox_dir().join(format!("registry-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let server = start_registry(&dir)?;
        let address = format!("127.0.0.1:{}", server.port);
        Ok(SandboxRegistry { server, dir, address, collect_garbage: false })
    }
}

impl Drop for SandboxRegistry {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        let config = self.dir.join(format!("registry-{}.yml", self.server.port));
        // Only while no build may be pushing: else the next clean does it.
        let idle = storage_lock().ok().filter(|lock| lock.try_lock().is_ok());
        if self.collect_garbage && idle.is_some() {
            let _ = Command::new("docker-registry")
                .arg("garbage-collect")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        drop(idle);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM (dockerd stops its containers and containerd), SIGKILL after 30 s.
fn stop_dockerd(mut dockerd: Child, dir: &Path) {
    if let Ok(pid) = i32::try_from(dockerd.id()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if dockerd.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dockerd.kill();
    let _ = dockerd.wait();
    if let Ok(sh) = Shell::new() {
        // Whatever a killed engine left: container processes, overlay mounts.
        let _ = instance::tear_down(&sh, dir);
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        let _ = self.registry.child.kill();
        let _ = self.registry.child.wait();
        if let Some(dockerd) = self.dockerd.take() {
            stop_dockerd(dockerd, &self.dir);
        }
    }
}

/// Removes engines whose xtask died without stopping them (`docker-<pid>`).
fn sweep_stale_engines(sh: &Shell) {
    let Ok(entries) = fs::read_dir(sandbox_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix("docker-").and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = instance::tear_down(sh, &entry.path());
        }
    }
}

/// The mounts, dockerd and registry processes of `pid`'s sandbox engine
/// still there: for tests, which require none after a run.
pub fn leftovers_of(pid: u32) -> Vec<String> {
    let dir = engine_dir(pid);
    let mut left: Vec<String> = instance::mounts_under(&dir).into_iter().map(|m| format!("mount {m}")).collect();
    let marker = dir.display().to_string();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&marker) {
                left.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}
