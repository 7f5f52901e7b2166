//! A container registry through its HTTP API v2 (the distribution spec),
//! for clean-old-images: repositories, tags, what each tag is, and deletion
//! by digest. curl is the edge; the parsing is pure. Registries that need a
//! token (Docker Hub, GHCR, ECR) are out of reach: see the command's help.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use xshell::{cmd, Shell};

use crate::docker::is_digest;

/// Every manifest kind the factory's pushes make, single and lists.
const ACCEPT: &str = "Accept: application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

pub struct Registry {
    /// `http://127.0.0.1:5000`
    pub base_url: String,
}

/// What a tag points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One image; its config blob's digest.
    Image { config: String },
    /// A multi-architecture list of these manifests' digests.
    List { manifests: Vec<String> },
}

impl Registry {
    fn get(&self, sh: &Shell, path: &str) -> Result<Response> {
        let url = format!("{}{path}", self.base_url);
        let said = curl(sh, &["-H", ACCEPT, &url]).with_context(|| format!("GET {url}"))?;
        let response = parse_response(&said).with_context(|| format!("GET {url}: not an HTTP response"))?;
        if response.status != 200 {
            bail!("GET {url}: HTTP {}: {}", response.status, response.body.trim());
        }
        Ok(response)
    }

    pub fn repositories(&self, sh: &Shell) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Catalog {
            repositories: Vec<String>,
        }
        // 1000 is distribution's largest page; a Link header says there are more.
        let response = self.get(sh, "/v2/_catalog?n=1000")?;
        if response.headers.contains_key("link") {
            bail!("the registry has more than 1000 repositories, and clean-old-images reads one page only");
        }
        let catalog: Catalog = serde_json::from_str(&response.body).context("parse the registry's catalog")?;
        Ok(catalog.repositories)
    }

    pub fn tags(&self, sh: &Shell, repository: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let response = self.get(sh, &format!("/v2/{repository}/tags/list"))?;
        let tags: Tags = serde_json::from_str(&response.body).context("parse a tag list")?;
        Ok(tags.tags.unwrap_or_default())
    }

    /// The digest `reference` (a tag or digest) resolves to, and what it is.
    pub fn manifest(&self, sh: &Shell, repository: &str, reference: &str) -> Result<(String, Manifest)> {
        let response = self.get(sh, &format!("/v2/{repository}/manifests/{reference}"))?;
        let digest = response
            .headers
            .get("docker-content-digest")
            .filter(|d| is_digest(d))
            .cloned()
            .context("no Docker-Content-Digest header")?;
        Ok((digest, parse_manifest(&response.body)?))
    }

    /// The labels of the image whose config blob is `config`.
    pub fn labels(&self, sh: &Shell, repository: &str, config: &str) -> Result<BTreeMap<String, String>> {
        let response = self.get(sh, &format!("/v2/{repository}/blobs/{config}"))?;
        parse_labels(&response.body)
    }

    /// Deletes the manifest `digest`, and so every tag on it.
    pub fn delete(&self, sh: &Shell, repository: &str, digest: &str) -> Result<()> {
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base_url);
        let said = curl(sh, &["-X", "DELETE", &url]).with_context(|| format!("DELETE {url}"))?;
        let response = parse_response(&said).with_context(|| format!("DELETE {url}: not an HTTP response"))?;
        if response.status != 202 {
            bail!("DELETE {url}: HTTP {}: {}", response.status, response.body.trim());
        }
        Ok(())
    }
}

/// `curl -sS -i ARGS`: the whole response, status line to body, untrimmed
/// (an empty body ends with the blank line after the headers).
fn curl(sh: &Shell, args: &[&str]) -> Result<String> {
    let output = cmd!(sh, "curl -sS -i {args...}")
        .quiet()
        .ignore_status()
        .output()
        .context("run curl: install it with `apt-get install curl` (or run dev/setup)")?;
    if !output.status.success() {
        bail!("curl: {} (is the registry up?)", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `curl -i` output: the status line, headers, a blank line, the body.
pub fn parse_response(text: &str) -> Option<Response> {
    let (head, body) = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n"))?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(Response { status, headers, body: body.to_string() })
}

pub fn parse_manifest(body: &str) -> Result<Manifest> {
    #[derive(Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(Deserialize)]
    struct Raw {
        config: Option<Descriptor>,
        manifests: Option<Vec<Descriptor>>,
    }
    let raw: Raw = serde_json::from_str(body).context("parse a manifest")?;
    match (raw.config, raw.manifests) {
        (Some(config), None) => Ok(Manifest::Image { config: config.digest }),
        (None, Some(list)) => Ok(Manifest::List { manifests: list.into_iter().map(|d| d.digest).collect() }),
        _ => bail!("a manifest with neither a config nor a list of manifests"),
    }
}

/// An image config's labels (`config.Labels`), none when it has none.
pub fn parse_labels(config_json: &str) -> Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct Inner {
        #[serde(rename = "Labels")]
        labels: Option<BTreeMap<String, String>>,
    }
    #[derive(Deserialize)]
    struct Config {
        config: Option<Inner>,
    }
    let config: Config = serde_json::from_str(config_json).context("parse an image config")?;
    Ok(config.config.and_then(|c| c.labels).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded with `curl -sS -i` against Debian's docker-registry 2.8.2,
    /// holding this factory's base image of a --platform docker run.
    const MANIFEST: &str = include_str!("../tests/fixtures/registry-2.8-manifest.http");
    const CONFIG: &str = include_str!("../tests/fixtures/registry-2.8-config.json");
    /// The same, for the manifest list of base on Debian 13 that a
    /// default-preset run pushed (arm64 under emulation, and x86_64).
    const LIST: &str = include_str!("../tests/fixtures/registry-2.8-manifest-list.http");

    #[test]
    fn a_tag_is_read_as_its_digest_and_config() {
        let response = parse_response(MANIFEST).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers["docker-content-digest"],
            "sha256:761736166a5ec73942e34c7bbe3259e17812c1311d1cd148d40980b16e7b5d45"
        );
        assert_eq!(
            parse_manifest(&response.body).unwrap(),
            Manifest::Image {
                config: "sha256:b050c252b3ec132d1fad8323b19987e4d8e89ac6d6429cb011f394bb148f5977".into()
            }
        );
        let labels = parse_labels(CONFIG).unwrap();
        assert_eq!(labels["managed-by"], "spark-packer");
        assert_eq!(labels["spark-packer:created-at"], "2026-11-26T02:14:14Z");
        assert_eq!(labels["spark-packer:os"], "debian-12");
        let list = parse_response(LIST).unwrap();
        assert_eq!(
            parse_manifest(&list.body).unwrap(),
            Manifest::List {
                manifests: vec![
                    "sha256:6976b813052c4e659fb9588867ccad0b2b70f1f7c2908a21e5fa032239460b76".into(),
                    "sha256:69ceda6c4dc83d80bbd1c039662f57f95a7b998ceb78b52e19699573f8af4eaa".into(),
                ]
            }
        );
        assert!(parse_manifest("{}").is_err());
        assert!(parse_response("garbage").is_none());
    }
}
