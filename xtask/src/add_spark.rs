//! `cargo xtask add-spark VERSION`: puts a Spark release in
//! packer/matrix.json with the SHA-512 of Apache's tarball, after checking
//! Apache's signature. Apache signs the tarball (`.tgz.asc`), not its
//! `.sha512`, so the tarball is downloaded and verified with gpg against the
//! release KEYS; then the published `.sha512` must be the signed tarball's.
//! Any failure leaves the matrix as it was, byte for byte.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use xshell::{cmd, Shell};

use crate::{
    checks,
    local::{self, mirror, signing::GpgHome},
    matrix::Verified,
    matrix_text,
    project::{self, display},
};

const APACHE_RELEASES: &str = "https://archive.apache.org/dist/spark";
const APACHE_KEYS: &str = "https://downloads.apache.org/spark/KEYS";

/// Add a Spark release to packer/matrix.json, its SHA-512 checked against
/// Apache's signature (or refresh the pin of one already there).
///
/// Downloads spark-VERSION-bin-BUILD.tgz, its .asc and .sha512, and Apache's
/// KEYS; verifies the signature with gpg against KEYS and shows the signer;
/// checks the .sha512 against the signed tarball; then writes the version,
/// the SHA-512 and the signer's fingerprint into the matrix. Any failure
/// changes nothing and says why. Add the new image to a preset to build it.
///
/// Example: cargo xtask add-spark 4.3.0
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Spark release, e.g. 4.3.0 (`pip index versions pyspark` lists them).
    pub version: String,

    /// Apache's build of it: the tarball's -bin- suffix.
    #[arg(long, default_value = "hadoop3", value_name = "BUILD")]
    pub hadoop: String,

    /// The Java major versions it runs on, from its docs' overview page.
    /// Default: 17,21 for Spark 4, 8,11,17 for Spark 3.
    #[arg(long, value_delimiter = ',')]
    pub java: Vec<u32>,

    /// Where the release lives, laid out like Apache's archive.
    #[arg(long, value_name = "URL", default_value = APACHE_RELEASES)]
    pub mirror: String,

    /// The KEYS file to verify against. Default: Apache's, or <mirror>/KEYS
    /// for any other --mirror.
    #[arg(long, value_name = "URL")]
    pub keys: Option<String>,

    /// The sandbox's mirror (built from the pyspark sdist, signed by the
    /// sandbox's own key, never Apache's). Needs --matrix: such a pin does
    /// not belong in packer/matrix.json.
    #[arg(long, conflicts_with = "mirror", requires = "matrix")]
    pub local: bool,

    /// The matrix to change. Default: packer/matrix.json.
    #[arg(long, value_name = "FILE")]
    pub matrix: Option<PathBuf>,
}

pub fn main(sh: &Shell, args: &Args) -> Result<()> {
    let version = &args.version;
    if !crate::matrix::is_release_version(version) {
        bail!("`{version}` is not a Spark version such as 4.3.0");
    }
    let matrix_path = args.matrix.clone().unwrap_or_else(project::matrix_file);
    checks::load_matrix(&matrix_path)?;
    let java = if args.java.is_empty() { default_java(version) } else { args.java.clone() };

    let _server;
    let (mirror_url, keys_url) = if args.local {
        let venv = local::ensure_venv(sh)?;
        mirror::ensure_spark(sh, &venv, version, &args.hadoop)?;
        let server = mirror::MirrorServer::start(&venv, &mirror::mirror_dir())?;
        let urls = (server.url.clone(), format!("{}/KEYS", server.url));
        _server = server;
        urls
    } else {
        let mirror = args.mirror.trim_end_matches('/').to_string();
        let keys = args.keys.clone().unwrap_or_else(|| {
            if mirror == APACHE_RELEASES {
                APACHE_KEYS.to_string()
            } else {
                format!("{mirror}/KEYS")
            }
        });
        (mirror, keys)
    };

    let name = format!("spark-{version}-bin-{}.tgz", args.hadoop);
    let url = format!("{mirror_url}/spark-{version}/{name}");
    let work =
        project::target_dir().join("add-spark").join(format!("{version}-{}-{}", args.hadoop, std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("create {}", display(&work)))?;
    let checked = check_release(sh, &work, &url, &keys_url);
    let _ = fs::remove_dir_all(&work);
    let (sha512, verified) = checked?;

    let text = fs::read_to_string(&matrix_path).with_context(|| format!("read {}", display(&matrix_path)))?;
    let mut matrix: Value = serde_json::from_str(&text).context("parse the matrix")?;
    let (what, image) = put_release(&mut matrix, version, &args.hadoop, &java, &sha512, &verified)?;
    let new_text = matrix_text::render(&matrix);
    let (problems, _) = checks::check_matrix(&display(&matrix_path), &new_text);
    if let Some(problem) = problems.first() {
        bail!("the matrix would not validate ({problem}); nothing was changed");
    }
    let partial = matrix_path.with_extension("json.add-spark");
    fs::write(&partial, &new_text).with_context(|| format!("write {}", display(&partial)))?;
    fs::rename(&partial, &matrix_path).with_context(|| format!("replace {}", display(&matrix_path)))?;
    println!(
        "{what} {image} in {}: SHA-512 {}…, signed by {} ({}), KEYS {}; Java {}",
        display(&matrix_path),
        &sha512[..16],
        verified.signer,
        verified.fingerprint,
        verified.keys,
        java.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    );
    if what == "added" {
        println!("add `{image}` to a preset's images in the matrix to build it");
    }
    Ok(())
}

/// Downloads the release's files into `work` and checks them: the SHA-512,
/// and who signed it.
fn check_release(sh: &Shell, work: &Path, url: &str, keys_url: &str) -> Result<(String, Verified)> {
    let file = |suffix: &str| work.join(format!("release{suffix}"));
    let published = fetch(sh, &format!("{url}.sha512"), &file(".sha512"))?.with_context(|| {
        format!("no such release: {url}.sha512 is not there; `pip index versions pyspark` lists Spark's releases")
    })?;
    fetch(sh, &format!("{url}.asc"), &file(".asc"))?
        .with_context(|| format!("{url}.asc is not there: no signature"))?;
    fetch(sh, keys_url, &file(".KEYS"))?.with_context(|| format!("{keys_url} is not there: no KEYS to verify with"))?;
    fetch(sh, url, &file(".tgz"))?.with_context(|| format!("{url} is not there"))?;

    let published = mirror::parse_checksum_file(&published)
        .with_context(|| format!("{url}.sha512 holds no SHA-512 (sha512sum, BSD or gpg --print-md format)"))?;
    let home = GpgHome::create(sh, work.join("gnupg"))?;
    let imported = home.gpg(&["--import", &file(".KEYS").display().to_string()])?;
    if !imported.status.success() && !String::from_utf8_lossy(&imported.stderr).contains("imported") {
        bail!("{keys_url} holds no key gpg can import");
    }
    let (asc, tgz) = (file(".asc").display().to_string(), file(".tgz").display().to_string());
    let verify = home.gpg(&["--status-fd", "1", "--verify", &asc, &tgz])?;
    let (fingerprint, signer) = signature_verdict(&String::from_utf8_lossy(&verify.stdout), url, keys_url)?;
    let actual = sha512_of(&file(".tgz"))?;
    if actual != published {
        bail!(
            "{url}.sha512 says {published}, but the tarball {signer} signed has SHA-512 {actual}: \
             the checksum file was altered or belongs to another file; nothing was changed"
        );
    }
    Ok((actual, Verified { keys: keys_url.to_string(), fingerprint, signer }))
}

/// gpg's --status-fd lines for one detached signature: the signer's
/// fingerprint and user id, or why the signature is refused.
pub fn signature_verdict(status: &str, url: &str, keys_url: &str) -> Result<(String, String)> {
    let field = |tag: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] ")?.strip_prefix(tag)?.strip_prefix(' ').map(str::to_string))
    };
    if let Some(rest) = field("BADSIG") {
        let who = rest.split_once(' ').map_or("", |(_, uid)| uid);
        bail!("bad signature: {url}.asc does not sign this tarball (gpg: BADSIG, key of {who}); nothing was changed");
    }
    if let Some(rest) = field("NO_PUBKEY").or_else(|| field("ERRSIG")) {
        let key = rest.split(' ').next().unwrap_or("");
        bail!("{url}.asc is signed by key {key}, which is not in {keys_url}; nothing was changed");
    }
    for (tag, why) in
        [("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key"), ("EXPSIG", "an expired signature")]
    {
        if field(tag).is_some() {
            bail!("{url}.asc: {why} (gpg: {tag}); nothing was changed");
        }
    }
    let (Some(good), Some(valid)) = (field("GOODSIG"), field("VALIDSIG")) else {
        bail!("gpg could not verify {url}.asc against {keys_url}; nothing was changed");
    };
    let signer = good.split_once(' ').map_or(good.as_str(), |(_, uid)| uid).to_string();
    let fingerprint = valid.split(' ').next().unwrap_or("").to_string();
    Ok((fingerprint, signer))
}

/// Downloads `url` to `file`: Some(text when it is small), None when the
/// server says it is not there.
fn fetch(sh: &Shell, url: &str, file: &Path) -> Result<Option<String>> {
    let write_out = "%{http_code}";
    let output = cmd!(sh, "curl --silent --show-error --location --write-out {write_out} --output {file} {url}")
        .quiet()
        .ignore_status()
        .output()
        .context("run curl: install it with `apt-get install curl`")?;
    let code = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match code.as_str() {
        "200" => {}
        "404" | "410" => return Ok(None),
        _ => bail!("download {url}: HTTP {code} {}", String::from_utf8_lossy(&output.stderr).trim()),
    }
    let small = fs::metadata(file).map(|m| m.len() < 1 << 20).unwrap_or(false);
    Ok(Some(if small { fs::read_to_string(file).unwrap_or_default() } else { String::new() }))
}

fn sha512_of(file: &Path) -> Result<String> {
    let mut reader = fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut hasher = Sha512::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Puts the release in the matrix: a new `spark-<version>` image, or a new
/// pin for the one there. Returns what it did and the image's name.
fn put_release(
    matrix: &mut Value,
    version: &str,
    hadoop: &str,
    java: &[u32],
    sha512: &str,
    verified: &Verified,
) -> Result<(&'static str, String)> {
    let name = format!("spark-{version}");
    let images = matrix["images"].as_array_mut().context("the matrix has no images list")?;
    if let Some(image) = images.iter_mut().find(|i| i["name"] == name.as_str()) {
        let spark = &mut image["spark"];
        if spark["hadoop_build"] != hadoop {
            bail!(
                "{name} is in the matrix with hadoop_build {}, not {hadoop}; nothing was changed",
                spark["hadoop_build"]
            );
        }
        spark["sha512"] = sha512.into();
        spark["verified"] = serde_json::to_value(verified)?;
        return Ok(("updated", name));
    }
    let spark =
        json!({ "version": version, "hadoop_build": hadoop, "java": java, "sha512": sha512, "verified": verified });
    images.push(json!({ "name": name, "spark": spark }));
    Ok(("added", name))
}

fn default_java(version: &str) -> Vec<u32> {
    if version.starts_with("3.") {
        vec![8, 11, 17]
    } else {
        vec![17, 21]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::signing;

    #[test]
    fn gpg_status_lines_decide_the_verdict() {
        // Recorded from gpg 2.2.40 (Debian 12): a file signed by a key made
        // like the sandbox's, verified against its KEYS; the same signature
        // over another file; and with no key imported.
        let good = "[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 0142458E2B7AA77C23B91C10A8CBC78B4158E332 0
[GNUPG:] SIG_ID G9DCsbQLg3pyqQcvYmdzBULUjec 2026-11-25 1795650735
[GNUPG:] KEY_CONSIDERED 0142458E2B7AA77C23B91C10A8CBC78B4158E332 0
[GNUPG:] GOODSIG A8CBC78B4158E332 spark-packer sandbox mirror (NOT Apache: local testing only) <sandbox@spark-packer.invalid>
[GNUPG:] VALIDSIG 0142458E2B7AA77C23B91C10A8CBC78B4158E332 2026-11-25 1795650735 0 4 0 22 8 00 0142458E2B7AA77C23B91C10A8CBC78B4158E332
[GNUPG:] KEY_CONSIDERED 0142458E2B7AA77C23B91C10A8CBC78B4158E332 0
[GNUPG:] TRUST_UNDEFINED 0 pgp
";
        let (fpr, signer) = signature_verdict(good, "u", "k").unwrap();
        assert_eq!(fpr, "0142458E2B7AA77C23B91C10A8CBC78B4158E332");
        assert_eq!(signer, signing::SANDBOX_SIGNER);
        let bad = "[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 0142458E2B7AA77C23B91C10A8CBC78B4158E332 0
[GNUPG:] KEY_CONSIDERED 0142458E2B7AA77C23B91C10A8CBC78B4158E332 0
[GNUPG:] BADSIG A8CBC78B4158E332 spark-packer sandbox mirror (NOT Apache: local testing only) <sandbox@spark-packer.invalid>
[GNUPG:] FAILURE gpg-exit 33554433
";
        assert!(signature_verdict(bad, "u", "k").unwrap_err().to_string().starts_with("bad signature: u.asc"));
        let unknown = "[GNUPG:] NEWSIG
[GNUPG:] ERRSIG A8CBC78B4158E332 22 8 00 1795650735 9 0142458E2B7AA77C23B91C10A8CBC78B4158E332
[GNUPG:] NO_PUBKEY A8CBC78B4158E332
";
        assert_eq!(
            signature_verdict(unknown, "u", "k").unwrap_err().to_string(),
            "u.asc is signed by key A8CBC78B4158E332, which is not in k; nothing was changed"
        );
        assert!(signature_verdict("", "u", "k").is_err());
    }

    #[test]
    fn a_new_release_is_appended_and_an_old_one_repinned() {
        let mut matrix: Value = serde_json::from_str(include_str!("../../packer/matrix.json")).unwrap();
        let verified = Verified { keys: APACHE_KEYS.into(), fingerprint: "F".into(), signer: "S".into() };
        let sha = "a".repeat(128);
        assert_eq!(put_release(&mut matrix, "4.2.0", "hadoop3", &[17, 21], &sha, &verified).unwrap().0, "added");
        assert_eq!(matrix["images"].as_array().unwrap().last().unwrap()["spark"]["verified"]["fingerprint"], "F");
        assert_eq!(put_release(&mut matrix, "3.5.3", "hadoop3", &[8], &sha, &verified).unwrap().0, "updated");
        let spark = &matrix["images"].as_array().unwrap().iter().find(|i| i["name"] == "spark-3.5.3").unwrap()["spark"];
        assert_eq!(spark["java"], json!([8, 11, 17]), "a repin keeps what the matrix says about Java");
        assert!(put_release(&mut matrix, "3.5.3", "without-hadoop", &[8], &sha, &verified).is_err());
        let text = matrix_text::render(&matrix);
        assert!(checks::check_matrix("m", &text).0.is_empty(), "{text}");
    }
}
