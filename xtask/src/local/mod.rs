//! The local sandbox: a real EC2 API emulator (moto server) from a pinned venv
//! the project creates itself, on a free loopback port; local instances for
//! Packer to provision over SSH (`instance`); and a Spark mirror (`mirror`).
//! It only provides endpoints and instances; the commands never ask whether
//! they run locally.

pub mod instance;
pub mod mirror;

use std::{
    fs::{self, File},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{aws::Aws, project};

/// Credentials the emulator accepts. Set for local runs so that no real key
/// is ever sent to it.
pub const DUMMY_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "spark-packer-local"),
    ("AWS_SECRET_ACCESS_KEY", "spark-packer-local"),
    ("AWS_SESSION_TOKEN", ""),
];

pub fn requirements() -> PathBuf {
    project::root().join("local/requirements.txt")
}

/// Source AMIs for every region, recorded from moto's own data: Amazon Linux
/// 2023 on x86_64 and arm64, and the last Amazon Linux PV image, which not
/// every region of moto's default list has.
pub fn source_amis() -> PathBuf {
    project::root().join("local/source-amis.json")
}

pub fn sandbox_dir() -> PathBuf {
    project::target_dir().join("local")
}

/// Creates `target/local/venv` from the pinned requirements, once; reruns pip
/// only when the requirements change. Safe to call from concurrent processes.
pub fn ensure_venv(sh: &Shell) -> Result<PathBuf> {
    let dir = sandbox_dir();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let lock = File::create(dir.join("venv.lock")).context("create venv lock")?;
    lock.lock().context("lock the sandbox venv")?;

    let venv = dir.join("venv");
    let stamp = venv.join("spark-packer-requirements.txt");
    let wanted = fs::read_to_string(requirements()).context("read local/requirements.txt")?;
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let reqs = requirements();
    let output = cmd!(sh, "{python} -m venv --clear {venv}").quiet().ignore_status().output();
    match output {
        Ok(o) if o.status.success() => {}
        _ => bail!(
            "could not create a Python venv at {}: install Python 3 with venv (`apt-get install python3-venv`)",
            venv.display()
        ),
    }
    let pip = venv.join("bin/pip");
    let output =
        cmd!(sh, "{pip} install --quiet --disable-pip-version-check -r {reqs}").quiet().ignore_status().output()?;
    if !output.status.success() {
        bail!(
            "pip install -r local/requirements.txt failed (is PyPI reachable?): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::write(&stamp, wanted).context("stamp the venv")?;
    Ok(venv)
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Why a server the sandbox started is not listening.
pub enum NotListening {
    Exited(ExitStatus),
    TimedOut,
}

/// Waits until `child` listens on 127.0.0.1:`port`; stops early if it exits.
/// The outer error is a failure to ask; the inner one says why it is not up.
pub fn wait_for_port(child: &mut Child, port: u16, limit: Duration) -> Result<Result<(), NotListening>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            return Ok(Err(NotListening::Exited(status)));
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(Ok(()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Err(NotListening::TimedOut))
}

/// A running moto server; stopped when dropped.
pub struct Emulator {
    child: Child,
    pub port: u16,
    venv: PathBuf,
    pub log: PathBuf,
}

impl Emulator {
    pub fn start(sh: &Shell) -> Result<Emulator> {
        let venv = ensure_venv(sh)?;
        let mut last_error = None;
        // Another process may take the port between our probe and moto's bind.
        for _ in 0..3 {
            match Self::start_once(&venv) {
                Ok(emulator) => return Ok(emulator),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    fn start_once(venv: &Path) -> Result<Emulator> {
        let port = free_port()?;
        let log = sandbox_dir().join(format!("moto-{port}.log"));
        let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        // Its own process group, so a terminal's Ctrl-C leaves it serving
        // while Packer cleans up; Drop stops it.
        // moto_server, with the fix local/moto_server.py explains.
        let child = Command::new(venv.join("bin/python3"))
            .process_group(0)
            .arg(project::root().join("local/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_AMIS_PATH", source_amis())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start moto_server from the sandbox venv")?;
        let mut emulator = Emulator { child, port, venv: venv.to_path_buf(), log };
        emulator.wait_until_ready(Duration::from_secs(30))?;
        Ok(emulator)
    }

    fn wait_until_ready(&mut self, limit: Duration) -> Result<()> {
        match wait_for_port(&mut self.child, self.port, limit)? {
            Ok(()) => Ok(()),
            Err(NotListening::Exited(status)) => {
                bail!("moto_server exited ({status}) before it was ready; see {}", self.log.display())
            }
            Err(NotListening::TimedOut) => {
                bail!("moto_server did not listen on port {} within {limit:?}; see {}", self.port, self.log.display())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The aws CLI from the sandbox venv, pointed at this emulator.
    pub fn aws(&self) -> Aws {
        Aws { program: self.venv.join("bin/aws"), endpoint: Some(self.endpoint()) }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
