//! The local sandbox: a real EC2 API emulator (moto server) from a pinned venv
//! the project creates itself, on a free loopback port; local instances for
//! Packer to provision over SSH (`instance`); a Spark mirror (`mirror`); and
//! for the docker platform a dockerd and a registry of its own (`docker`).
//! It only provides endpoints and instances; the commands never ask whether
//! they run locally.

pub mod docker;
pub mod emulation;
pub mod instance;
pub mod mirror;
pub mod signing;

use std::{
    ffi::OsString,
    fs::{self, File},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use xshell::{cmd, Shell};

use crate::{aws::Aws, interrupt, project};

/// Credentials the emulator accepts. Set for local runs so that no real key
/// is ever sent to it.
pub const DUMMY_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "spark-packer-local"),
    ("AWS_SECRET_ACCESS_KEY", "spark-packer-local"),
    ("AWS_SESSION_TOKEN", ""),
];

/// The names among `vars` that could carry real AWS credentials, or point
/// at them: every `AWS_*` variable (keys, tokens, profiles, credential files,
/// role ARNs, container credential URIs), whatever its case.
pub fn aws_variables(vars: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    vars.into_iter().filter(|name| name.as_bytes().get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"AWS_"))).collect()
}

/// Takes every AWS variable out of a sandbox process's environment, ours
/// and any the command set, and gives it the dummy credentials and no
/// shared config or credentials file: the emulator and the mirror never
/// need a real key, so they never hold one.
fn scrub_credentials(command: &mut Command) {
    let set = command.get_envs().map(|(name, _)| name.to_os_string());
    for name in aws_variables(std::env::vars_os().map(|(name, _)| name).chain(set.collect::<Vec<_>>())) {
        command.env_remove(name);
    }
    command.envs(DUMMY_CREDENTIALS);
    command.env("AWS_CONFIG_FILE", "/dev/null").env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

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
    // Every file pip fetches must have a SHA-256 the requirements list.
    let output = cmd!(sh, "{pip} install --quiet --disable-pip-version-check --require-hashes -r {reqs}")
        .quiet()
        .ignore_status()
        .output()?;
    if !output.status.success() {
        bail!(
            "pip install -r local/requirements.txt failed (is PyPI reachable?): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::write(&stamp, wanted).context("stamp the venv")?;
    Ok(venv)
}

/// The requirements (`name==version`) that carry no `--hash`: a pip
/// requirements text, with `\` continuations.
pub fn unhashed_requirements(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty() && !line.starts_with('-'))
        .filter(|line| !line.contains("--hash=sha256:"))
        .map(|line| line.split_whitespace().next().unwrap_or(line).to_string())
        .collect()
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A server the sandbox started, listening on 127.0.0.1:`port`.
pub struct Listening {
    pub child: Child,
    pub port: u16,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// Starts `what` (moto, the mirror, an instance's sshd) on a free loopback
/// port and waits up to `limit` until it listens. `command` gives the command
/// for a port, `log_for` the file its output goes to. Three ports are tried:
/// another process may take one between our probe and the server's bind.
/// The server gets no real AWS credentials, and SIGTERM when we die, even
/// by SIGKILL: a sandbox never outlives its run.
pub fn start_listening(
    what: &str,
    limit: Duration,
    log_for: impl Fn(u16) -> PathBuf,
    command: impl Fn(u16) -> Command,
) -> Result<Listening> {
    let mut last_error = None;
    for _ in 0..3 {
        match start_listening_once(what, limit, &log_for, &command) {
            Ok(server) => return Ok(server),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("tried at least once"))
}

fn start_listening_once(
    what: &str,
    limit: Duration,
    log_for: impl Fn(u16) -> PathBuf,
    command: impl Fn(u16) -> Command,
) -> Result<Listening> {
    let port = free_port()?;
    let log = log_for(port);
    let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut command = command(port);
    scrub_credentials(&mut command);
    interrupt::die_with_parent(&mut command, Signal::SIGTERM);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {what}: {:?}", command.get_program()))?;
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            let said = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{what} exited ({status}) before it was ready: {}; see {}", tail.join(" | "), log.display());
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(Listening { child, port, log });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("{what} did not listen on port {port} within {limit:?}; see {}", log.display())
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
        let log_for = |port| sandbox_dir().join(format!("moto-{port}.log"));
        let server = start_listening("moto_server", Duration::from_secs(30), log_for, |port| {
            // moto_server, with the fix local/moto_server.py explains. Its own
            // process group, so a terminal's Ctrl-C leaves it serving while
            // Packer cleans up; Drop stops it.
            let mut command = Command::new(venv.join("bin/python3"));
            command
                .process_group(0)
                .arg(project::root().join("local/moto_server.py"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_AMIS_PATH", source_amis());
            command
        })?;
        // It dies with us (SIGTERM), and its instances with it: nothing for
        // a Packer to clean up there once we are gone.
        interrupt::endpoint_dies_with_us();
        Ok(Emulator { child: server.child, port: server.port, venv, log: server.log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Empties the emulator (moto's `/moto-api/reset`): every image,
    /// instance and key it was given goes; its source images come back.
    pub fn reset(&self) -> Result<()> {
        let url = format!("{}/moto-api/reset", self.endpoint());
        let output = Command::new("curl").args(["-sS", "--fail", "-X", "POST", &url]).output().context("run curl")?;
        if !output.status.success() {
            bail!("reset the emulator at {url}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_log(name: &str) -> impl Fn(u16) -> PathBuf {
        let dir = project::target_dir().join("test-scratch").join(format!("listening-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        move |port| dir.join(format!("{port}.log"))
    }

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn a_server_that_exits_is_reported_with_what_it_said() {
        let error = start_listening("the test server", Duration::from_secs(5), scratch_log("exits"), |_| {
            shell("echo 'bind: address in use' >&2; exit 3")
        })
        .err()
        .unwrap()
        .to_string();
        assert!(error.starts_with("the test server exited (exit status: 3) before it was ready"), "{error}");
        assert!(error.contains("bind: address in use"), "{error}");
    }

    #[test]
    fn a_server_dies_with_whoever_started_it() {
        // The kernel tells the child when the starting thread ends, as it
        // would when a SIGKILL ends the whole process.
        let pid = std::thread::spawn(|| {
            let server = start_listening("the test server", Duration::from_secs(10), scratch_log("orphan"), |port| {
                let mut command = shell("exec python3 -m http.server --bind 127.0.0.1 \"$0\"");
                command.arg(port.to_string());
                command
            })
            .unwrap();
            let pid = server.child.id();
            std::mem::forget(server);
            pid
        })
        .join()
        .unwrap();
        let start = Instant::now();
        let status = |pid: u32| fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie (state Z) waiting for this process to reap it.
        while !status(pid).is_empty() && !status(pid).contains(") Z ") {
            assert!(start.elapsed() < Duration::from_secs(10), "the server outlived its starter: {}", status(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn every_pinned_requirement_is_hashed() {
        let text = fs::read_to_string(requirements()).unwrap();
        assert_eq!(unhashed_requirements(&text), Vec::<String>::new());
        assert!(text.matches("==").count() >= 60, "the pins are all there");
        let unhashed = "a==1 \\\n    --hash=sha256:00\nb==2\n    # via a\n";
        assert_eq!(unhashed_requirements(unhashed), ["b==2"]);
    }

    #[test]
    fn only_aws_variables_are_scrubbed() {
        let names = [
            "AWS_SECRET_ACCESS_KEY",
            "aws_profile",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "PATH",
            "AWSX",
            "MOTO_AMIS_PATH",
        ];
        let scrubbed = aws_variables(names.map(OsString::from));
        assert_eq!(scrubbed, ["AWS_SECRET_ACCESS_KEY", "aws_profile", "AWS_CONTAINER_CREDENTIALS_FULL_URI"]);
    }

    #[test]
    fn a_sandbox_server_never_sees_a_real_key() {
        let dir = project::target_dir().join("test-scratch").join(format!("scrub-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let env_file = dir.join("env");
        let script = format!("env > {}; exec python3 -m http.server --bind 127.0.0.1 \"$0\"", env_file.display());
        let mut server = start_listening("the test server", Duration::from_secs(10), scratch_log("scrub"), |port| {
            let mut command = shell(&script);
            command.arg(port.to_string()).env("AWS_SECRET_ACCESS_KEY", "real-secret").env("AWS_PROFILE", "prod");
            command
        })
        .unwrap();
        let _ = server.child.kill();
        let _ = server.child.wait();
        let env = fs::read_to_string(&env_file).unwrap();
        assert!(!env.contains("real-secret") && !env.contains("AWS_PROFILE"), "{env}");
        assert!(env.contains("AWS_SECRET_ACCESS_KEY=spark-packer-local"), "{env}");
        assert!(env.contains("AWS_SHARED_CREDENTIALS_FILE=/dev/null"), "{env}");
    }

    #[test]
    fn a_server_that_never_listens_is_stopped_after_the_limit() {
        let limit = Duration::from_millis(200);
        let error = start_listening("the test server", limit, scratch_log("silent"), |_| shell("exec sleep 30"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("the test server did not listen on port"), "{error}");
        assert!(error.contains("within 200ms"), "{error}");
    }
}
