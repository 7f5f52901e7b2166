//! The local Spark mirror: a real Spark distribution made from the pyspark
//! sdist on PyPI (it holds Spark's bin/, jars/ and examples), laid out as
//! Apache's `spark-<ver>-bin-hadoop3.tgz` with its `.sha512`, cached under
//! target/local/spark-mirror and served on loopback like Apache's archive.
//!
//! Its SHA-512 is of this repackaged tarball, not Apache's: local builds pass
//! it explicitly and label it so. Like Apache's, each tarball has a `.asc`,
//! and the mirror a KEYS file, from the sandbox's own key (`signing`).

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{sandbox_dir, start_listening};

/// The one Hadoop build the pyspark sdist gives.
pub const HADOOP_BUILD: &str = "hadoop3";

pub fn mirror_dir() -> PathBuf {
    sandbox_dir().join("spark-mirror")
}

/// `spark-<ver>/spark-<ver>-bin-<hadoop>.tgz` under a mirror root, as on Apache's archive.
pub fn tarball_path(root: &Path, version: &str, hadoop_build: &str) -> PathBuf {
    root.join(format!("spark-{version}")).join(format!("spark-{version}-bin-{hadoop_build}.tgz"))
}

fn checksum_path(tarball: &Path) -> PathBuf {
    let mut name = tarball.as_os_str().to_owned();
    name.push(".sha512");
    PathBuf::from(name)
}

/// The SHA-512 in a checksum file, lower case, in the formats Apache has
/// published (as scripts/lib.sh reads them): `sha512sum` (`<hex>  <file>`),
/// BSD (`SHA512 (<file>) = <hex>`) and `gpg --print-md` (`<file>: 2A1A ...`,
/// upper case, wrapped).
pub fn parse_checksum_file(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    let hex: String = if first.len() == 128 {
        first.to_string()
    } else if let (true, Some((_, after))) = (first == "SHA512", text.split_once(") = ")) {
        after.trim().to_string()
    } else {
        text.split_once(':')?.1.split_whitespace().collect()
    };
    let hex = hex.to_ascii_lowercase();
    (hex.len() == 128 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The SHA-512 a mirror publishes for a tarball, from its `.sha512` file.
pub fn published_sha512(tarball: &Path) -> Result<String> {
    let file = checksum_path(tarball);
    let text = fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    parse_checksum_file(&text)
        .with_context(|| format!("{}: no SHA-512 (sha512sum, BSD or gpg --print-md format)", file.display()))
}

/// Builds the tarball for `version` from the pyspark sdist once, and returns
/// its SHA-512. Safe to call from concurrent processes.
pub fn ensure_spark(sh: &Shell, venv: &Path, version: &str, hadoop_build: &str) -> Result<String> {
    if hadoop_build != HADOOP_BUILD {
        bail!(
            "the local mirror can only make spark-{version}-bin-{HADOOP_BUILD}.tgz (the pyspark sdist's build), \
             not -bin-{hadoop_build}: pass --spark-mirror with a mirror that has it"
        );
    }
    let root = mirror_dir();
    fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let lock = File::create(root.join(".lock")).context("create the mirror lock")?;
    lock.lock().context("lock the Spark mirror")?;
    let tarball = tarball_path(&root, version, hadoop_build);
    if tarball.exists() {
        if let Ok(sha512) = published_sha512(&tarball) {
            super::signing::sign(sh, &root, &tarball)?;
            return Ok(sha512);
        }
    }

    let downloads = sandbox_dir().join("downloads");
    let sdist = downloads.join(format!("pyspark-{version}.tar.gz"));
    if !sdist.exists() {
        let pip = venv.join("bin/pip");
        let requirement = format!("pyspark=={version}");
        let output = cmd!(sh, "{pip} download --quiet --no-deps --no-binary :all: --dest {downloads} {requirement}")
            .quiet()
            .ignore_status()
            .output()?;
        if !output.status.success() || !sdist.exists() {
            bail!(
                "pip download {requirement} (the sdist, 317 MB for 3.5.3) failed: is PyPI reachable? {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }

    let name = format!("spark-{version}-bin-{hadoop_build}");
    let stage = root.join(".stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;
    // The sdist keeps Spark under deps/ and the Python libraries under lib/;
    // Apache's tarball has them at the top, python/lib and examples/src/main/python.
    let top = format!("pyspark-{version}");
    let transform = format!(
        "s,^{top}/deps/examples,{name}/examples/src/main/python,;s,^{top}/deps/,{name}/,;s,^{top}/lib,{name}/python/lib,"
    );
    let members: Vec<String> =
        ["deps/bin/*", "deps/sbin/*", "deps/jars/*", "deps/examples/*", "lib/*"].map(|m| format!("{top}/{m}")).into();
    cmd!(sh, "tar -xzf {sdist} -C {stage} --transform {transform} --wildcards {members...}")
        .quiet()
        .run()
        .with_context(|| format!("unpack {}", sdist.display()))?;
    for dir in ["bin", "jars", "python/lib", "examples/src/main/python"] {
        if !stage.join(&name).join(dir).is_dir() {
            bail!("{}: no {dir} after unpacking; has the sdist's layout changed?", sdist.display());
        }
    }
    fs::write(
        stage.join(&name).join("RELEASE"),
        format!("Spark {version} built for Hadoop 3, repackaged from the PyPI pyspark {version} sdist by spark-packer's local mirror\n"),
    )?;
    fs::create_dir_all(tarball.parent().expect("the tarball has a directory"))?;
    let partial = tarball.with_extension("tgz.part");
    cmd!(sh, "tar -czf {partial} -C {stage} {name}").quiet().run().context("pack the Spark tarball")?;
    fs::remove_dir_all(&stage)?;
    let sum = cmd!(sh, "sha512sum {partial}").quiet().read().context("run sha512sum")?;
    let sha512 = parse_checksum_file(&sum).context("read sha512sum's output")?;
    fs::write(checksum_path(&tarball), format!("{sha512}  {name}.tgz\n"))?;
    let _ = fs::remove_file(format!("{}.asc", tarball.display()));
    fs::rename(&partial, &tarball)?;
    super::signing::sign(sh, &root, &tarball)?;
    Ok(sha512)
}

/// An HTTP server for a mirror directory on 127.0.0.1; stopped when dropped.
pub struct MirrorServer {
    child: Child,
    pub url: String,
}

impl MirrorServer {
    /// Serves `dir` with the venv's Python (`http.server`), on a free port.
    pub fn start(venv: &Path, dir: &Path) -> Result<MirrorServer> {
        let log_for = |port| sandbox_dir().join(format!("mirror-{port}.log"));
        let server = start_listening("the Spark mirror", Duration::from_secs(15), log_for, |port| {
            let mut command = Command::new(venv.join("bin/python3"));
            command.args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"]).arg(dir).arg(port.to_string());
            command
        })?;
        Ok(MirrorServer { child: server.child, url: format!("http://127.0.0.1:{}", server.port) })
    }
}

impl Drop for MirrorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_checksum_files_in_every_apache_format() {
        let hex = "0bc8ced610d525caee853b4f313c0c6a57936b5034879fbd659ac1a5b87b343c2a4a03a44b68c80ee7dcb9a0c15633ef8f687a2c6d9bf9f3bc414282c4d741d9";
        assert_eq!(parse_checksum_file(&format!("{hex}  spark-3.5.3-bin-hadoop3.tgz\n")).as_deref(), Some(hex));
        assert_eq!(parse_checksum_file(&hex.to_uppercase()).as_deref(), Some(hex));
        // Recorded from `sha512sum --tag f.txt` and `gpg --print-md SHA512 f.txt` (GnuPG 2.2).
        let f = "3f36a30a00b8d999065c74dcf93971a59f18ec7c06ab67391130e7c300380ca32b7062c2c14c7be5e2d858f4ae5ffde40e5103b1dbb179dd3c1da01a59eae7b0";
        assert_eq!(parse_checksum_file(&format!("SHA512 (f.txt) = {f}\n")).as_deref(), Some(f));
        let gpg = "f.txt: 3F36A30A 00B8D999 065C74DC F93971A5 9F18EC7C 06AB6739 1130E7C3 00380CA3\n       \
                   2B7062C2 C14C7BE5 E2D858F4 AE5FFDE4 0E5103B1 DBB179DD 3C1DA01A 59EAE7B0\n";
        assert_eq!(parse_checksum_file(gpg).as_deref(), Some(f));
        assert_eq!(parse_checksum_file("abc  file"), None);
        assert_eq!(parse_checksum_file(""), None);
    }

    #[test]
    fn tarballs_sit_where_apache_puts_them() {
        assert_eq!(
            tarball_path(Path::new("/m"), "3.5.3", "hadoop3"),
            Path::new("/m/spark-3.5.3/spark-3.5.3-bin-hadoop3.tgz")
        );
    }
}
