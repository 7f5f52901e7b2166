//! The proof that a pushed Spark image works as people use Spark images: it
//! is pulled by its digest (the local tag removed first), `docker run IMAGE
//! spark-submit --version` works with no shell, and a standalone master and
//! a worker in two containers on a user-defined network run SparkPi.
//! Everything it creates is removed, whatever happens.

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::docker::Engine;

/// Seconds a worker may take to register: seconds natively, minutes under
/// qemu-user emulation.
const READY_LIMIT: Duration = Duration::from_secs(600);

/// Runs the check on `reference` (tagged locally as `tag`); appends what it
/// ran and saw to `log`; returns the lines that prove it.
pub(super) fn check(
    sh: &Shell,
    engine: &Engine,
    (reference, tag): (&str, &str),
    (build, emulated): (&str, bool),
    log: &Path,
) -> Result<String> {
    let mut log = OpenOptions::new().append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    let mut say = |text: &str| {
        let _ = writeln!(log, "spark-packer: cluster check: {text}");
    };
    // Without the local tag, the pull below must fetch the image by digest.
    engine.run(sh, &["image", "rm", tag])?;
    engine.run(sh, &["pull", "-q", reference])?;
    say(&format!("pulled {reference}"));
    let network = format!("spark-packer-{build}-{}", std::process::id());
    let mut cluster = Cluster { sh, engine, network, containers: Vec::new() };
    let proved = cluster.run(reference, emulated, &mut say);
    drop(cluster);
    proved
}

/// The network and containers of one check; removed on drop.
struct Cluster<'a> {
    sh: &'a Shell,
    engine: &'a Engine,
    network: String,
    containers: Vec<String>,
}

impl Cluster<'_> {
    /// `spark-submit --version`, then SparkPi on a master and a worker.
    fn run(&mut self, reference: &str, emulated: bool, say: &mut dyn FnMut(&str)) -> Result<String> {
        let (sh, engine) = (self.sh, self.engine);
        // A user-defined network: its DNS makes each container's name resolve,
        // which Spark needs; the host's network stays out of it.
        engine.run(sh, &["network", "create", &self.network])?;
        let mut env = vec!["-e", "SPARK_DAEMON_MEMORY=512m", "-e", "PYSPARK_PYTHON=python3"];
        let cpu = format!("{}={}", crate::local::emulation::QEMU_CPU.0, crate::local::emulation::QEMU_CPU.1);
        if emulated {
            env.extend(["-e", &cpu]);
        }
        let mut version_check = vec!["run", "--rm", "--network", &self.network];
        version_check.extend(&env);
        version_check.extend([reference, "spark-submit", "--version"]);
        let version = engine.run_merged(sh, &version_check)?;
        for line in version.lines() {
            say(&format!("| {line}"));
        }
        let version_line = spark_version_in(&version)
            .with_context(|| format!("`spark-submit --version` printed no version: {}", tail(&version)))?;
        say(&format!("docker run IMAGE spark-submit --version: {version_line}"));
        let master = self.start(
            "master",
            reference,
            &env,
            &["org.apache.spark.deploy.master.Master", "--host", "spark-master", "--port", "7077"],
        )?;
        let worker = self.start(
            "worker",
            reference,
            &env,
            &[
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "spark-worker",
                "--cores",
                "1",
                "--memory",
                "1g",
                "spark://spark-master:7077",
            ],
        )?;
        say(&format!("master in {master}, worker in {worker}, on network {}", self.network));
        self.wait_for(&master, "Registering worker")?;
        say("the worker registered with the master");
        let submit = [
            "exec",
            master.as_str(),
            "spark-submit",
            "--master",
            "spark://spark-master:7077",
            "--conf",
            "spark.driver.host=spark-master",
            "--conf",
            "spark.ui.enabled=false",
            "--driver-memory",
            "512m",
            "--executor-memory",
            "512m",
            "/opt/spark/examples/src/main/python/pi.py",
            "10",
        ];
        let said = engine.run_merged(sh, &submit).context("spark-submit pi.py across the two containers")?;
        let pi = said.lines().find(|l| l.starts_with("Pi is roughly 3.1"));
        let pi = pi.with_context(|| format!("pi.py printed no `Pi is roughly 3.1…`: {}", tail(&said)))?;
        say(pi);
        Ok(format!("{version_line}; two containers: {pi}"))
    }

    /// Starts `spark-class CLASS ARGS` in a container named after the network.
    fn start(&mut self, role: &str, reference: &str, env: &[&str], class_args: &[&str]) -> Result<String> {
        let name = format!("{}-{role}", self.network);
        let alias = format!("spark-{role}");
        let mut args = vec!["run", "-d", "--name", &name, "--network", &self.network, "--network-alias", &alias];
        args.extend(env);
        args.extend([reference, "spark-class"]);
        args.extend(class_args);
        self.containers.push(name.clone());
        self.engine.run(self.sh, &args).with_context(|| format!("start the Spark {role}"))?;
        Ok(name)
    }

    /// Until `pattern` shows in the container's log; fails if it stops.
    fn wait_for(&self, container: &str, pattern: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            let said = self.engine.run_merged(self.sh, &["logs", container]).unwrap_or_default();
            if said.contains(pattern) {
                return Ok(());
            }
            let running = self.engine.run(self.sh, &["inspect", "--format", "{{.State.Running}}", container])?;
            if running.trim() != "true" {
                bail!("{container} exited before `{pattern}`: {}", tail(&said));
            }
            if started.elapsed() > READY_LIMIT {
                bail!("no `{pattern}` from {container} within {READY_LIMIT:?}: {}", tail(&said));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = self.engine.run(self.sh, &args);
        }
        let _ = self.engine.run(self.sh, &["network", "rm", &self.network]);
    }
}

/// `version X.Y.Z` from `spark-submit --version`'s banner, whose ASCII art
/// ends with it alone on its line (a later line names Scala's, and more).
fn spark_version_in(banner: &str) -> Option<String> {
    banner.lines().find_map(|line| {
        let (_, version) = line.split_once("version ")?;
        let version = version.trim();
        let alone = version.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        (alone && version.starts_with(|c: char| c.is_ascii_digit())).then(|| format!("version {version}"))
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded: `docker run IMAGE spark-submit --version` on this factory's
    /// Spark 3.5.3 container image (Debian 12, Java 17).
    const BANNER: &str = r#"Welcome to
      ____              __
     / __/__  ___ _____/ /__
    _\ \/ _ \/ _ `/ __/  '_/
   /___/ .__/\_,_/_/ /_/\_\   version 3.5.3
      /_/
                        
Using Scala version 2.12.18, OpenJDK 64-Bit Server VM, 17.0.21.1
Branch HEAD
Compiled by user haejoon.lee on 2024-09-09T05:20:05Z
Revision 32232e9ed33bb16b93ad58cfde8b82e0f07c0970
Url https://github.com/apache/spark
Type --help for more information.
"#;

    #[test]
    fn the_spark_version_is_read_from_the_banner_not_scalas() {
        assert_eq!(spark_version_in(BANNER).as_deref(), Some("version 3.5.3"));
        assert_eq!(spark_version_in("Using Scala version 2.12.18, OpenJDK 64-Bit Server VM"), None);
        assert_eq!(spark_version_in("Error: JAVA_HOME is not set"), None);
    }
}
