//! Where EC2 calls go: real AWS, an endpoint the user runs, or the local
//! sandbox's emulator. Shared by every command that talks to EC2.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{ami_list, aws::Aws, local, project};

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointArgs {
    /// Send every EC2 call (Packer and the aws CLI) to this URL, e.g. an
    /// emulator you run yourself: http://127.0.0.1:5000. With --local, the
    /// sandbox uses this emulator instead of starting an empty one, so a
    /// later run finds the AMIs of earlier ones and skips what is current.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub endpoint: Option<String>,

    /// Use the local sandbox: start an EC2 emulator (moto) on a free loopback
    /// port with dummy credentials, and stop it at the end. Needs no AWS account.
    #[arg(long)]
    pub local: bool,
}

/// A resolved endpoint. Holds the sandbox emulator, if any, until dropped.
pub struct Connection {
    pub endpoint: Option<String>,
    pub aws: Aws,
    /// True for the sandbox or any endpoint outside AWS's own domains.
    pub is_emulator: bool,
    emulator: Option<local::Emulator>,
}

impl Connection {
    /// The sandbox emulator's process, if this connection started one.
    pub fn emulator_pid(&self) -> Option<u32> {
        self.emulator.as_ref().map(|e| e.pid())
    }
}

/// AWS's own domains: regional, FIPS, dual-stack and VPC endpoints, China.
const AWS_DOMAINS: [&str; 3] = [".amazonaws.com", ".amazonaws.com.cn", ".api.aws"];

/// The host of an `http(s)://` URL, as written: no user, port or path.
fn host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    Some(host)
}

/// Whether EC2 calls to `url` reach AWS itself: a host under AWS's own
/// domains (any case, a trailing dot allowed), written plainly. Anything
/// else, however spelled (`0.0.0.0`, `LOCALHOST`, `2130706433`,
/// `[::ffff:127.0.0.1]`, a user part, any other host), is an emulator, whose
/// IDs must never reach the checked-in ami-list.
pub fn is_aws(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A plain `host[:port]`: no user part, no brackets, no escapes.
    let plain = authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let Some(host) = host(url).filter(|_| plain) else { return false };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    AWS_DOMAINS.iter().any(|domain| host.len() > domain.len() && host.ends_with(domain))
}

/// `--endpoint`'s parser: an `http(s)://` URL with a host, refused at once
/// otherwise, before anything starts.
pub fn parse_endpoint(url: &str) -> Result<String, String> {
    match host(url) {
        None => Err(format!("{url:?} is not a URL: write it as http://127.0.0.1:5000")),
        Some("") => Err(format!("{url:?} names no host: write it as http://127.0.0.1:5000, with the emulator's host")),
        Some(_) => Ok(url.to_string()),
    }
}

impl EndpointArgs {
    /// Whether any emulator is meant, before starting one.
    pub fn is_emulator(&self) -> bool {
        self.local || self.endpoint.as_deref().is_some_and(|url| !is_aws(url))
    }

    /// The sandbox's dummy credentials go only to an emulator.
    pub fn refuse_aws_with_local(&self) -> Result<()> {
        match &self.endpoint {
            Some(url) if self.local && is_aws(url) => bail!(
                "--local with --endpoint {url}: that is AWS itself, and the sandbox sends dummy \
                 credentials; name an emulator's URL, or drop --local to build on AWS"
            ),
            _ => Ok(()),
        }
    }

    /// Starts the sandbox if asked; sets dummy credentials for it on `sh`.
    pub fn connect(&self, sh: &Shell) -> Result<Connection> {
        if let Some(url) = &self.endpoint {
            parse_endpoint(url).map_err(|e| anyhow::anyhow!("--endpoint {e}"))?;
        }
        if self.local {
            for (key, value) in local::DUMMY_CREDENTIALS {
                sh.set_var(key, value);
            }
            if let Some(url) = &self.endpoint {
                self.refuse_aws_with_local()?;
                let aws = Aws { program: local::ensure_venv(sh)?.join("bin/aws"), endpoint: Some(url.clone()) };
                return Ok(Connection { endpoint: Some(url.clone()), aws, is_emulator: true, emulator: None });
            }
            let emulator = local::Emulator::start(sh)?;
            return Ok(Connection {
                endpoint: Some(emulator.endpoint()),
                aws: emulator.aws(),
                is_emulator: true,
                emulator: Some(emulator),
            });
        }
        Ok(Connection {
            endpoint: self.endpoint.clone(),
            aws: Aws::from_path(self.endpoint.clone()),
            is_emulator: self.is_emulator(),
            emulator: None,
        })
    }

    /// The ami-list tree a command works on: `--ami-list` if given; else the
    /// checked-in one for real AWS and `target/<mode>/ami-list` for emulators.
    /// Emulator IDs never go into the checked-in tree, nor anywhere under it,
    /// compared by canonical path whether or not the path exists yet.
    pub fn ami_list(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        let default = if self.local {
            local::sandbox_dir().join("ami-list")
        } else if self.is_emulator() {
            project::target_dir().join("endpoint/ami-list")
        } else {
            project::checked_in_ami_list()
        };
        let chosen = explicit.map(Path::to_path_buf).unwrap_or(default);
        if self.is_emulator() {
            let shown = ami_list::printable_path(&chosen);
            let checked_in = project::checked_in_ami_list();
            if ami_list::is_within(&chosen, &checked_in).with_context(|| format!("resolve --ami-list {shown}"))? {
                bail!(
                    "refusing to pair an emulator with the checked-in ami-list {} ({shown} is it or inside it): \
                     it holds real AWS IDs, and emulator IDs must never reach it; drop --ami-list to use the \
                     default under target/, or name a directory outside it",
                    checked_in.display()
                );
            }
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aws_own_domains_are_real_aws() {
        for url in [
            "https://ec2.us-east-1.amazonaws.com",
            "https://EC2.US-EAST-1.AMAZONAWS.COM.:443/",
            "https://ec2-fips.us-east-1.amazonaws.com",
            "https://vpce-1.ec2.us-east-1.vpce.amazonaws.com",
            "https://ec2.cn-north-1.amazonaws.com.cn",
            "https://ec2.us-east-1.api.aws",
        ] {
            assert!(is_aws(url), "{url}");
        }
        for url in [
            "http://127.0.0.1:5000",
            "http://0.0.0.0:5055",
            "http://LOCALHOST:5000",
            "http://localhost.:5000",
            "http://[::1]:5000",
            "http://[::ffff:127.0.0.1]:5000",
            "http://2130706433:5000",
            "http://0x7f000001:5000",
            "http://ip6-localhost:5000",
            "http://moto.internal:5000",
            "http://amazonaws.com",
            "http://.amazonaws.com",
            "http://ec2.amazonaws.com.evil.example",
            "http://ec2.amazonaws.com@127.0.0.1:5000",
            "http://127.0.0.1\\@ec2.us-east-1.amazonaws.com",
            "http://ec2.us-east-1.amazonaws.com%2e127.0.0.1",
            "ec2.us-east-1.amazonaws.com",
        ] {
            assert!(!is_aws(url), "{url}");
            let args = EndpointArgs { endpoint: Some(url.into()), local: false };
            assert!(args.is_emulator(), "{url}");
        }
    }

    #[test]
    fn an_endpoint_without_a_host_is_refused_when_parsed() {
        for url in ["http://", "https://", "http://:5000", "http:///path", "http://user@"] {
            let err = parse_endpoint(url).unwrap_err();
            assert!(err.contains("names no host") && err.contains("http://127.0.0.1:5000"), "{url}: {err}");
        }
        assert!(parse_endpoint("127.0.0.1:5000").unwrap_err().contains("is not a URL"));
        assert!(parse_endpoint("ftp://x").unwrap_err().contains("is not a URL"));
        assert_eq!(parse_endpoint("http://127.0.0.1:5000").unwrap(), "http://127.0.0.1:5000");
    }

    #[test]
    fn emulators_never_write_the_checked_in_ami_list() {
        let local = EndpointArgs { endpoint: None, local: true };
        let err = local.ami_list(Some(&project::checked_in_ami_list())).unwrap_err();
        assert!(err.to_string().contains("refusing to pair an emulator with the checked-in"), "{err}");
        assert!(local.ami_list(None).unwrap().starts_with(project::target_dir()));
        let emulator = EndpointArgs { endpoint: Some("http://127.0.0.1:5000".into()), local: false };
        assert!(emulator.ami_list(None).unwrap().starts_with(project::target_dir()));
        let aws = EndpointArgs { endpoint: None, local: false };
        assert_eq!(aws.ami_list(None).unwrap(), project::checked_in_ami_list());
        let spelled = EndpointArgs { endpoint: Some("http://0.0.0.0:5055".into()), local: false };
        assert!(spelled.ami_list(None).unwrap().starts_with(project::target_dir()));
        let root = project::root();
        for inside in [
            root.join("ami-list/sub"),
            root.join("ami-list/./not/yet/../made"),
            root.join("xtask/../ami-list"),
            root.join("ami-list/"),
        ] {
            for args in [&local, &spelled] {
                let err = args.ami_list(Some(&inside)).unwrap_err().to_string();
                assert!(err.contains("refusing to pair an emulator"), "{}: {err}", inside.display());
            }
        }
        assert!(local.ami_list(Some(&root.join("ami-list-elsewhere"))).is_ok(), "a sibling is not inside");
    }
}
