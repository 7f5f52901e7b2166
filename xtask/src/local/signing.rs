//! The sandbox mirror's own signing key: it signs the Spark tarballs the
//! mirror repackages from pyspark sdists, and its KEYS file holds it, so
//! add-spark's whole check (gpg against KEYS, then the .sha512) runs here.
//! The key says what it is, and real builds refuse a pin it vouched for.

use std::{
    fs::{self, File},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::sandbox_dir;

pub const SANDBOX_SIGNER: &str =
    "spark-packer sandbox mirror (NOT Apache: local testing only) <sandbox@spark-packer.invalid>";

/// A GnuPG home: created mode 0700, its agent stopped when dropped.
pub struct GpgHome {
    pub dir: PathBuf,
    sh: Shell,
}

impl GpgHome {
    pub fn create(sh: &Shell, dir: PathBuf) -> Result<GpgHome> {
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(GpgHome { dir, sh: sh.clone() })
    }

    /// Runs gpg in this home, in batch mode; its output, or its error.
    pub fn gpg(&self, args: &[&str]) -> Result<std::process::Output> {
        let home = &self.dir;
        cmd!(self.sh, "gpg --homedir {home} --batch --no-tty {args...}")
            .quiet()
            .ignore_status()
            .output()
            .context("run gpg: install it with `apt-get install gnupg` (or run dev/setup)")
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        // gpg starts an agent for the secret key; it would outlive us.
        let home = &self.dir;
        let _ = cmd!(self.sh, "gpgconf --homedir {home} --kill all").quiet().ignore_status().ignore_stderr().run();
    }
}

/// The fingerprint of the first key with a secret part, or the first key.
fn fingerprint(home: &GpgHome, secret: bool) -> Result<Option<String>> {
    let list = if secret { "--list-secret-keys" } else { "--list-keys" };
    let output = home.gpg(&["--with-colons", list])?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().find_map(|l| l.strip_prefix("fpr:")).map(|rest| rest.trim_matches(':').to_string()))
}

/// Signs `tarball` (`<tarball>.asc`) with the sandbox key, made once, and
/// writes the key to `<root>/KEYS`. Call under the mirror's lock.
pub fn sign(sh: &Shell, root: &Path, tarball: &Path) -> Result<()> {
    let home = GpgHome::create(sh, sandbox_dir().join("gpg"))?;
    let lock = File::create(home.dir.join(".spark-packer.lock")).context("create the gpg lock")?;
    lock.lock().context("lock the sandbox key")?;
    let fpr = match fingerprint(&home, true)? {
        Some(fpr) => fpr,
        None => {
            let made =
                home.gpg(&["--passphrase", "", "--quick-gen-key", SANDBOX_SIGNER, "ed25519", "sign", "never"])?;
            if !made.status.success() {
                bail!("make the sandbox signing key: {}", String::from_utf8_lossy(&made.stderr).trim());
            }
            fingerprint(&home, true)?.context("the new sandbox key has no fingerprint")?
        }
    };
    let asc = PathBuf::from(format!("{}.asc", tarball.display()));
    if !asc.exists() {
        let partial = format!("{}.part", asc.display());
        let (tarball_arg, fpr_arg) = (tarball.display().to_string(), fpr.as_str());
        let signed = home.gpg(&[
            "--yes",
            "--armor",
            "--local-user",
            fpr_arg,
            "--output",
            &partial,
            "--detach-sign",
            &tarball_arg,
        ])?;
        if !signed.status.success() {
            bail!(
                "sign {} with the sandbox key: {}",
                tarball.display(),
                String::from_utf8_lossy(&signed.stderr).trim()
            );
        }
        fs::rename(&partial, &asc)?;
    }
    let exported = home.gpg(&["--armor", "--export", &fpr])?;
    let keys = root.join("KEYS");
    let text = format!(
        "This file holds the key of spark-packer's sandbox mirror, which signs the Spark\n\
         tarballs it repackages from PyPI's pyspark sdists. It is NOT Apache's KEYS.\n\n{}",
        String::from_utf8_lossy(&exported.stdout)
    );
    if fs::read_to_string(&keys).ok().as_deref() != Some(text.as_str()) {
        fs::write(&keys, text).with_context(|| format!("write {}", keys.display()))?;
    }
    Ok(())
}
