//! Packer at the edge: the version check, one `packer build -machine-readable`
//! per build with its full log in a file, and a pure parser of that output.

use std::{
    fs::{self, File},
    io::Read,
    os::unix::process::CommandExt,
    path::Path,
    process::Stdio,
    sync::mpsc::{self, RecvTimeoutError},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{interrupt, watch};

/// Tells Packer it is already watched for panics, as Terraform does: the
/// cookie Packer's main.go checks before re-executing itself under
/// panicwrap. One process start per build instead of two (`packer version`:
/// 0.08 s to 0.04 s here). Packer's debug log then comes on stderr, which
/// `build` keeps in `<build>.debug.log`; a panic still reaches stderr.
pub(crate) const PANICWRAP_COOKIE: (&str, &str) = ("PACKER_WRAP_COOKIE", "49C22B1A-3A93-4C98-97FA-E07D18C787B5");

/// The oldest Packer whose built-in amazon builders and HCL2 the templates use.
pub const MIN_VERSION: (u32, u32, u32) = (1, 6, 6);

/// One AMI that Packer reports in an artifact line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Packer's build name, e.g. `amazon-ebs.ami`.
    pub build: String,
    pub region: String,
    pub ami_id: String,
}

/// A machine-readable line: `timestamp,target,type,data...`.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub target: &'a str,
    pub kind: &'a str,
    pub data: Vec<String>,
}

/// Undoes Packer's escaping of commas and newlines inside a field.
fn unescape(field: &str) -> String {
    field.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "\r")
}

pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut fields = line.trim_end_matches(['\r', '\n']).split(',');
    let timestamp = fields.next()?;
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let target = fields.next()?;
    let kind = fields.next()?;
    Some(Line { target, kind, data: fields.map(unescape).collect() })
}

/// Every AMI in the `artifact,N,id,region:ami,...` lines of a run's output.
pub fn artifacts(output: &str) -> Vec<Artifact> {
    let mut found = Vec::new();
    for line in output.lines().filter_map(parse_line) {
        if line.kind != "artifact" || line.data.get(1).map(String::as_str) != Some("id") {
            continue;
        }
        let Some(ids) = line.data.get(2) else {
            continue;
        };
        for pair in ids.split(',') {
            if let Some((region, ami_id)) = pair.split_once(':') {
                found.push(Artifact {
                    build: line.target.to_string(),
                    region: region.trim().to_string(),
                    ami_id: ami_id.trim().to_string(),
                });
            }
        }
    }
    found
}

/// The errors Packer reports for its builds (`target,error,message` lines).
pub fn errors(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(parse_line)
        .filter(|line| line.kind == "error" && !line.target.is_empty())
        .filter_map(|line| line.data.into_iter().next())
        .collect()
}

/// AWS answers that say "try again later", and network hiccups. A build that
/// failed on one of these may succeed if simply run again.
const TRANSIENT_MARKERS: [&str; 13] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "Rate exceeded",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "InsufficientInstanceCapacity",
    "exceeded wait attempts",
    "i/o timeout",
    "TLS handshake timeout",
    "connection reset by peer",
    "Client.Timeout exceeded",
];

/// Whether a failed build is worth running again: its errors look transient
/// and no provisioner ran (a provisioner failure is the image's fault, and
/// repeating it only costs money).
pub fn is_transient(failure: &str, output: &str) -> bool {
    if output
        .lines()
        .filter_map(parse_line)
        .any(|l| l.kind == "ui" && l.data.get(1).is_some_and(|text| text.contains("Provisioning with")))
    {
        return false;
    }
    let error_text = output
        .lines()
        .filter_map(parse_line)
        .filter(|l| l.kind == "error" || (l.kind == "ui" && l.data.first().is_some_and(|k| k == "error")))
        .flat_map(|l| l.data)
        .chain(std::iter::once(failure.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    TRANSIENT_MARKERS.iter().any(|marker| error_text.contains(marker))
}

/// The step a build is on: what the provisioners say (`spark-packer: smoke
/// test: ...`), or Packer's own stage (`==> build: Creating AMI ...`), with
/// the temporary script path of "Provisioning with shell script" left out.
pub fn step(line: &str) -> Option<String> {
    let line = parse_line(line)?;
    if line.kind != "ui" {
        return None;
    }
    let text = line.data.get(1)?;
    match line.data.first().map(String::as_str) {
        Some("message") => text.split_once("spark-packer: ").map(|(_, said)| said.trim().to_string()),
        Some("say") => {
            let text = text.strip_prefix("==> ")?;
            let step = text.split_once(": ").map_or(text, |(_, step)| step).trim();
            Some(if step.starts_with("Provisioning with shell script") { "provisioning" } else { step }.to_string())
        }
        _ => None,
    }
}

/// Parses `Packer v1.6.6` (and `1.11.2`, as newer versions print it).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let word =
        output.split_whitespace().find(|w| w.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Finds Packer and checks its version; returns it.
pub fn check_installed(sh: &Shell) -> Result<(u32, u32, u32)> {
    let output = cmd!(sh, "packer version").quiet().ignore_status().output().map_err(|_| {
        anyhow::anyhow!("`packer` not found: install it with `apt-get install packer` (1.6.6 or newer)")
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version =
        parse_version(&text).with_context(|| format!("could not read the version from `packer version`: {text:?}"))?;
    if version < MIN_VERSION {
        bail!(
            "Packer {}.{}.{} is too old: install 1.6.6 or newer (`apt-get install packer`)",
            version.0,
            version.1,
            version.2
        );
    }
    Ok(version)
}

/// `check_installed`, remembered in `target/packer-version.json` for as long
/// as the `packer` found on PATH is the same file (path, size, mtime). Saves
/// Packer's double start-up (it re-executes itself under panicwrap), about
/// 0.2 s, on every run.
pub fn check_installed_cached(sh: &Shell) -> Result<(u32, u32, u32)> {
    let Some(key) = binary_key(sh) else { return check_installed(sh) };
    let cache = crate::project::target_dir().join("packer-version.json");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok((cached_key, version)) = serde_json::from_str::<(String, (u32, u32, u32))>(&text) {
            if cached_key == key && version >= MIN_VERSION {
                return Ok(version);
            }
        }
    }
    let version = check_installed(sh)?;
    if let Ok(json) = serde_json::to_string(&(key, version)) {
        let _ = std::fs::create_dir_all(crate::project::target_dir());
        let _ = std::fs::write(&cache, json);
    }
    Ok(version)
}

/// Identifies the `packer` on the Shell's PATH by path, size and mtime.
fn binary_key(sh: &Shell) -> Option<String> {
    let path = sh.var("PATH").ok()?;
    let binary = std::env::split_paths(&path).map(|dir| dir.join("packer")).find(|p| p.is_file())?;
    let binary = std::fs::canonicalize(binary).ok()?;
    let meta = std::fs::metadata(&binary).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{}:{}:{mtime}", binary.display(), meta.len()))
}

/// Packer 1.7+ needs `packer init` for the amazon plugin; 1.6.6 has it built in
/// and rejects `required_plugins`, which is why that block lives in its own file.
pub fn init_plugins_if_needed(sh: &Shell, version: (u32, u32, u32), plugins_file: &Path) -> Result<()> {
    if version >= (1, 7, 0) {
        let output = cmd!(sh, "packer init {plugins_file}").quiet().ignore_status().output()?;
        if !output.status.success() {
            bail!("packer init {}: {}", plugins_file.display(), String::from_utf8_lossy(&output.stderr).trim());
        }
    }
    Ok(())
}

/// What one `packer build` produced.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub output: String,
    pub stderr: String,
}

/// How often a running build's log is read for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Runs one `packer build` (of the `only` build, e.g. `amazon-ebs.provisioned`,
/// if given), with its stdout in `log` and its stderr in `<log>.debug.log`,
/// calling `on_line` with each stdout line as it arrives (for live progress).
///
/// Packer writes into those files itself, never into a pipe to us: if we are
/// killed, a pipe's reading end dies with us, and Packer's next line would
/// get EPIPE on stdout, on which a Go program exits (SIGPIPE) before it has
/// terminated its instance. A file outlives us, so a Packer told of our death
/// (SIGINT, see `interrupt::packer_death_signal`) can finish its cleanup, and
/// logs it. We follow the file as `tail -f` would.
pub fn build(
    sh: &Shell,
    template: &Path,
    var_file: &Path,
    only: Option<&str>,
    log: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<Run> {
    if let Some(why) = watch::refused() {
        bail!("{why}");
    }
    let stdout = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let debug_log = log.with_extension("debug.log");
    let stderr = File::create(&debug_log).with_context(|| format!("create {}", debug_log.display()))?;
    let mut follower = LineFollower::new(File::open(log).with_context(|| format!("open {}", log.display()))?);
    let only = only.map(|o| format!("-only={o}"));
    let mut command: std::process::Command =
        cmd!(sh, "packer build -machine-readable -color=false {only...} -var-file={var_file} {template}")
            .env(PANICWRAP_COOKIE.0, PANICWRAP_COOKIE.1)
            .quiet()
            .into();
    // Its own process group: a terminal's Ctrl-C reaches only us, and we pass
    // Packer exactly one SIGINT (see interrupt.rs); the kernel sends it if we die.
    command.process_group(0).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    interrupt::die_with_parent(&mut command, interrupt::packer_death_signal());
    let mut child = command.spawn().context("start `packer`: is it installed? (`apt-get install packer`)")?;
    let pid = child.id();
    interrupt::register(pid, &log.file_stem().unwrap_or_default().to_string_lossy());
    if watch::refused().is_some() {
        interrupt::kill_all(); // the endpoint died as this one started
    }

    let mut output = String::new();
    let mut take = |line: &str| {
        on_line(line);
        output.push_str(line);
        output.push('\n');
    };
    // A thread waits for Packer, so its exit is seen at once, not at the
    // next look at the log.
    let (exited, exit) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = exited.send(());
        status
    });
    let status = loop {
        if let Err(e) = follower.read_lines(&mut take) {
            // We cannot follow it any more: stop it, and let it clean up first.
            interrupt::stop(pid);
            break waiter.join().unwrap_or(Err(e));
        }
        if exit.recv_timeout(FOLLOW_EVERY) != Err(RecvTimeoutError::Timeout) {
            break waiter.join().unwrap_or_else(|_| Err(std::io::Error::other("packer's waiter panicked")));
        }
    };
    interrupt::unregister(pid);
    let status = status.context("wait for packer")?;
    let rest = follower.read_lines(&mut take).with_context(|| format!("read {}", log.display()));
    follower.finish(&mut take);
    rest?;
    if let (false, Some(why)) = (status.success(), watch::refused()) {
        bail!("{why}");
    }
    let stderr = fs::read(&debug_log).with_context(|| format!("read {}", debug_log.display()))?;
    Ok(Run { success: status.success(), output, stderr: without_debug_log(&String::from_utf8_lossy(&stderr)) })
}

/// Reads the lines another process appends to a file, as they come; a line
/// counts once its newline is there (or at `finish`).
pub struct LineFollower<R> {
    file: R,
    partial: Vec<u8>,
}

impl<R: Read> LineFollower<R> {
    pub fn new(file: R) -> LineFollower<R> {
        LineFollower { file, partial: Vec::new() }
    }

    /// Calls `on_line` with every complete line written since the last call.
    /// Bytes that are not UTF-8 are replaced, never a reason to stop.
    pub fn read_lines(&mut self, on_line: &mut impl FnMut(&str)) -> std::io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = match self.file.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.partial.extend_from_slice(&chunk[..n]);
            let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else { continue };
            let rest = self.partial.split_off(last_newline + 1);
            let complete = std::mem::replace(&mut self.partial, rest);
            for line in complete[..last_newline].split(|b| *b == b'\n') {
                on_line(String::from_utf8_lossy(line).trim_end_matches('\r'));
            }
        }
    }

    /// The last line, if the writer ended without a newline.
    pub fn finish(mut self, on_line: &mut impl FnMut(&str)) {
        if !self.partial.is_empty() {
            on_line(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).trim_end_matches('\r'));
        }
    }
}

/// Packer's stderr without its debug log: what it says outside the
/// machine-readable output (a CLI error, a panic).
pub fn without_debug_log(stderr: &str) -> String {
    let is_log_line = |line: &str| {
        let b = line.as_bytes();
        b.len() >= 20
            && b[..4].iter().all(u8::is_ascii_digit)
            && (b[4], b[7], b[10], b[13], b[16], b[19]) == (b'/', b'/', b' ', b':', b':', b' ')
    };
    stderr.lines().filter(|line| !is_log_line(line)).map(|line| format!("{line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_file_gives_each_line_once_it_is_complete() {
        let path = crate::project::target_dir().join(format!("follow-test-{}.log", std::process::id()));
        let mut writer = File::create(&path).unwrap();
        let mut follower = LineFollower::new(File::open(&path).unwrap());
        let mut lines = Vec::new();
        let mut take = |line: &str| lines.push(line.to_string());
        use std::io::Write;
        writer.write_all(b"1,a,ui,say,one\n1,a,ui,sa").unwrap();
        follower.read_lines(&mut take).unwrap();
        writer.write_all(b"y,two\r\n\xff bad\nlast").unwrap();
        follower.read_lines(&mut take).unwrap();
        follower.read_lines(&mut take).unwrap();
        follower.finish(&mut take);
        fs::remove_file(&path).unwrap();
        assert_eq!(lines, ["1,a,ui,say,one", "1,a,ui,say,two", "\u{fffd} bad", "last"]);
    }

    #[test]
    fn packers_debug_log_is_told_from_what_it_says() {
        // Recorded: stderr of Packer 1.6.6 run with PACKER_WRAP_COOKIE set and
        // PACKER_CONFIG naming a file that holds `{not json`.
        let stderr = "2026/11/25 14:52:09 [INFO] Packer version: 1.6.6 [go1.19.8 linux amd64]\n\
                      2026/11/25 14:52:09 Checking 'PACKER_CONFIG' for a config file path\n\
                      2026/11/25 14:52:09 Attempting to open config file: /tmp/bad-packerconfig\n\
                      Error loading configuration: \n\
                      \n\
                      invalid character 'n' looking for beginning of object key string\n";
        assert_eq!(
            without_debug_log(stderr),
            "Error loading configuration: \n\ninvalid character 'n' looking for beginning of object key string\n"
        );
    }

    /// Recorded from `packer build -machine-readable` (Packer 1.6.6) of
    /// packer/spark-ami.pkr.hcl against moto (`build-amis --no-provision
    /// --preset seed-2014 --image base --virt hvm`): a copy build to 7 regions.
    const SUCCESS: &str = include_str!("../tests/fixtures/packer-1.6.6-copy-success.txt");
    /// Recorded the same way: a source AMI filter that matches nothing.
    const NO_SOURCE: &str = include_str!("../tests/fixtures/packer-1.6.6-no-source-ami.txt");

    #[test]
    fn only_transient_api_failures_are_retried() {
        // The recorded no-source-AMI failure is a matrix mistake: never retried.
        assert!(!is_transient("no source AMI", NO_SOURCE));
        assert!(is_transient("Error launching source instance: RequestLimitExceeded: Request limit exceeded.", ""));
        assert!(is_transient("Error waiting for AMI: ResourceNotReady: exceeded wait attempts", ""));
        let provisioned = "1,base,ui,say,==> base: Provisioning with shell script: scripts/base.sh\n\
                           2,base,error,RequestLimitExceeded\n";
        assert!(!is_transient("Script exited with non-zero exit status: 1", provisioned));
    }

    #[test]
    fn parses_every_region_of_a_copy_build() {
        let found = artifacts(SUCCESS);
        assert_eq!(found.len(), 8, "{found:#?}");
        let mut regions: Vec<&str> = found.iter().map(|a| a.region.as_str()).collect();
        regions.sort();
        assert_eq!(
            regions,
            [
                "ap-northeast-1",
                "ap-southeast-1",
                "ap-southeast-2",
                "eu-west-1",
                "sa-east-1",
                "us-east-1",
                "us-west-1",
                "us-west-2"
            ]
        );
        assert!(found.iter().all(|a| a.build == "amazon-ebs.api_only"));
        assert!(found.iter().all(|a| a.ami_id.starts_with("ami-") && a.ami_id.len() == 21));
        assert!(errors(SUCCESS).is_empty());
    }

    #[test]
    fn a_failed_build_has_no_artifacts_and_one_error() {
        assert!(artifacts(NO_SOURCE).is_empty());
        let errors = errors(NO_SOURCE);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("No AMI was found matching filters: {\n"), "{}", errors[0]);
        assert!(errors[0].contains(r#"Name: "name","#), "commas are unescaped: {}", errors[0]);
    }

    #[test]
    fn artifact_lines_join_regions_with_packer_comma() {
        let line = "1795566271,amazon-ebs.ami,artifact,0,id,eu-west-1:ami-3f6c16c5b02462ad8%!(PACKER_COMMA)us-east-1:ami-e50466ec168af69fd";
        let found = artifacts(line);
        assert_eq!(
            found,
            [
                Artifact {
                    build: "amazon-ebs.ami".into(),
                    region: "eu-west-1".into(),
                    ami_id: "ami-3f6c16c5b02462ad8".into()
                },
                Artifact {
                    build: "amazon-ebs.ami".into(),
                    region: "us-east-1".into(),
                    ami_id: "ami-e50466ec168af69fd".into()
                },
            ]
        );
    }

    #[test]
    fn ignores_lines_that_are_not_machine_readable() {
        assert_eq!(parse_line("Error: something"), None);
        assert_eq!(parse_line(""), None);
        assert!(artifacts("garbage\n,,,\n").is_empty());
    }

    #[test]
    fn steps_come_from_say_lines() {
        let steps: Vec<String> = SUCCESS.lines().filter_map(step).collect();
        assert!(steps.contains(&"Launching a source AWS instance...".to_string()), "{steps:#?}");
        assert!(!steps.iter().any(|s| s.starts_with("==>")));
    }

    #[test]
    fn steps_come_from_what_the_provisioners_say() {
        // Recorded from Packer 1.6.6 logs of xtask/tests/provision.rs builds.
        let smoke =
            "1795609719,,ui,message,    amazon-ebs.provisioned: spark-packer: smoke test: starting a standalone master";
        assert_eq!(step(smoke).as_deref(), Some("smoke test: starting a standalone master"));
        let script = "1795609075,,ui,say,==> amazon-ebs.provisioned: Provisioning with shell script: /tmp/packer-shell3743328312";
        assert_eq!(step(script).as_deref(), Some("provisioning"));
        // Other output of the scripts (apt's, Spark's) is not a step.
        let apt = "1795609075,,ui,message,    amazon-ebs.provisioned: Setting up openjdk-17-jre-headless:amd64";
        assert_eq!(step(apt), None);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("Packer v1.6.6\n"), Some((1, 6, 6)));
        assert_eq!(parse_version("Packer v1.11.2\n\nYour version of Packer is out of date!"), Some((1, 11, 2)));
        assert_eq!(parse_version("1.9.4"), Some((1, 9, 4)));
        assert_eq!(parse_version("nothing here"), None);
        assert!(parse_version("Packer v1.6.5").unwrap() < MIN_VERSION);
    }
}
