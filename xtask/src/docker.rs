//! The docker CLI, for the docker platform: which engine it talks to, the
//! digest a push gave an image, and multi-architecture manifest lists. The
//! parsing is pure; the calls are thin.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// How to reach a container engine: the sandbox's own dockerd, or the
/// user's (`DOCKER_HOST` and `docker login` as they are).
#[derive(Debug, Clone, Default)]
pub struct Engine {
    /// `unix:///…/docker.sock`; none: the user's environment decides.
    pub host: Option<String>,
    /// A `DOCKER_CONFIG` directory of the run's own, so the sandbox never
    /// touches ~/.docker; none: the user's, with their registry logins.
    pub config: Option<String>,
    /// The registry speaks plain HTTP (the sandbox's, on loopback).
    pub insecure_registry: bool,
}

impl Engine {
    /// Points `sh`'s commands (docker, and Packer's docker builder) at this engine.
    pub fn apply(&self, sh: &Shell) {
        if let Some(host) = &self.host {
            sh.set_var("DOCKER_HOST", host);
        }
        if let Some(config) = &self.config {
            sh.set_var("DOCKER_CONFIG", config);
        }
    }

    /// Runs `docker ARGS` on a shell already `apply`d; its stdout, or an
    /// error with its stderr.
    pub fn run(&self, sh: &Shell, args: &[&str]) -> Result<String> {
        let output = cmd!(sh, "docker {args...}")
            .quiet()
            .ignore_status()
            .output()
            .context("run `docker`: install it with `apt-get install docker.io` (or run dev/setup)")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!("docker {}: {}", args.join(" "), stderr.trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `docker ARGS`; its stdout and stderr together (Spark logs to
    /// stderr), or an error with them.
    pub fn run_merged(&self, sh: &Shell, args: &[&str]) -> Result<String> {
        let output = cmd!(sh, "docker {args...}").quiet().ignore_status().output().context("run `docker`")?;
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            bail!(
                "docker {} failed: {}",
                args.first().unwrap_or(&""),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(said)
    }

    /// The `REPOSITORY@sha256:…` reference a push gave `repository:tag`.
    pub fn pushed_reference(&self, sh: &Shell, repository: &str, tag: &str) -> Result<String> {
        let image = format!("{repository}:{tag}");
        let said = self.run(sh, &["image", "inspect", "--format", "{{json .RepoDigests}}", &image])?;
        reference_in(&said, repository)
            .with_context(|| format!("{image} has no digest from {repository}: was it pushed? ({})", said.trim()))
    }

    /// Pushes a manifest list of `references` (one per architecture) as
    /// `repository:tag`; returns its `REPOSITORY@sha256:…`.
    pub fn push_manifest_list(&self, sh: &Shell, repository: &str, tag: &str, references: &[String]) -> Result<String> {
        let list = format!("{repository}:{tag}");
        let insecure: &[&str] = if self.insecure_registry { &["--insecure"] } else { &[] };
        let mut create: Vec<&str> = vec!["manifest", "create"];
        create.extend(insecure);
        create.push(&list);
        create.extend(references.iter().map(String::as_str));
        self.run(sh, &create)?;
        let mut push: Vec<&str> = vec!["manifest", "push", "--purge"];
        push.extend(insecure);
        push.push(&list);
        let said = self.run(sh, &push)?;
        let digest = said
            .lines()
            .map(str::trim)
            .find(|l| is_digest(l))
            .with_context(|| format!("docker manifest push {list} printed no digest: {}", said.trim()))?;
        Ok(format!("{repository}@{digest}"))
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An image pinned by digest: `REPOSITORY@sha256:<64 hex>`.
pub fn is_pinned_reference(text: &str) -> bool {
    text.split_once('@').is_some_and(|(repository, digest)| {
        !repository.is_empty()
            && repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":./_-".contains(&b))
            && is_digest(digest)
    })
}

/// The reference of `repository` in `docker image inspect`'s RepoDigests JSON.
pub fn reference_in(repo_digests_json: &str, repository: &str) -> Option<String> {
    let digests: Vec<String> = serde_json::from_str(repo_digests_json.trim()).ok()?;
    digests
        .into_iter()
        .find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == repository) && is_pinned_reference(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from `docker image inspect --format '{{json .RepoDigests}}'`
    /// (engine 20.10.24) after Packer's docker-push to a registry on loopback.
    const PUSHED: &str = "[\"127.0.0.1:5055/spark-packer/base@sha256:6abbde5f70e9ccdbef2a2c8b5019a1de89b88f57a4bd66e902fd69cb281fea92\"]\n";

    #[test]
    fn the_pushed_digest_is_read_for_its_repository_only() {
        assert_eq!(
            reference_in(PUSHED, "127.0.0.1:5055/spark-packer/base").as_deref(),
            Some("127.0.0.1:5055/spark-packer/base@sha256:6abbde5f70e9ccdbef2a2c8b5019a1de89b88f57a4bd66e902fd69cb281fea92")
        );
        assert_eq!(reference_in(PUSHED, "127.0.0.1:5055/spark-packer/spark-3.5.3"), None);
        assert_eq!(reference_in("[]", "127.0.0.1:5055/spark-packer/base"), None);
        assert_eq!(reference_in("null", "x"), None);
    }

    #[test]
    fn only_full_sha256_digests_pin_an_image() {
        let hex = "6abbde5f70e9ccdbef2a2c8b5019a1de89b88f57a4bd66e902fd69cb281fea92";
        assert!(is_pinned_reference(&format!("ghcr.io/acme/spark-packer/base@sha256:{hex}")));
        assert!(!is_pinned_reference(&format!("ghcr.io/acme/base:latest@sha256:{}", &hex[1..])));
        assert!(!is_pinned_reference("ghcr.io/acme/base:latest"));
        assert!(!is_pinned_reference(&format!("@sha256:{hex}")));
        assert!(!is_pinned_reference(&format!("Base@sha256:{hex}")));
        assert!(!is_digest(&format!("sha256:{}", hex.to_uppercase())));
    }
}
