//! Where EC2 calls go: real AWS, an endpoint the user runs, or the local
//! sandbox's emulator. Shared by every command that talks to EC2.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::Shell;

use crate::{aws::Aws, local, project};

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointArgs {
    /// Send every EC2 call (Packer and the aws CLI) to this URL, e.g. an
    /// emulator you run yourself: http://127.0.0.1:5000
    #[arg(long, value_name = "URL", conflicts_with = "local")]
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
    /// True for the sandbox or a loopback endpoint: never a real account.
    pub is_emulator: bool,
    emulator: Option<local::Emulator>,
}

impl Connection {
    /// The sandbox emulator's process, if this connection started one.
    pub fn emulator_pid(&self) -> Option<u32> {
        self.emulator.as_ref().map(|e| e.pid())
    }
}

/// Loopback endpoints are emulators; their IDs must never reach the
/// checked-in ami-list.
pub fn is_loopback(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.split(['/', '?']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

impl EndpointArgs {
    /// Whether any emulator is meant, before starting one.
    pub fn is_emulator(&self) -> bool {
        self.local || self.endpoint.as_deref().is_some_and(is_loopback)
    }

    /// Starts the sandbox if asked; sets dummy credentials for it on `sh`.
    pub fn connect(&self, sh: &Shell) -> Result<Connection> {
        if let Some(url) = &self.endpoint {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("--endpoint {url:?} is not a URL: write it as http://127.0.0.1:5000");
            }
        }
        if self.local {
            for (key, value) in local::DUMMY_CREDENTIALS {
                sh.set_var(key, value);
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
    /// Emulator IDs never go into the checked-in tree.
    pub fn ami_list(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        let default = if self.local {
            local::sandbox_dir().join("ami-list")
        } else if self.is_emulator() {
            project::target_dir().join("endpoint/ami-list")
        } else {
            project::checked_in_ami_list()
        };
        let chosen = explicit.map(Path::to_path_buf).unwrap_or(default);
        if self.is_emulator() && same_dir(&chosen, &project::checked_in_ami_list()) {
            bail!(
                "refusing to pair an emulator with the checked-in {}: it holds real AWS IDs, and emulator \
                 IDs must never reach it; drop --ami-list to use the default under target/, or name another directory",
                chosen.display()
            );
        }
        Ok(chosen)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        assert!(is_loopback("http://127.0.0.1:5000"));
        assert!(is_loopback("http://localhost:5000/"));
        assert!(is_loopback("http://[::1]:5000"));
        assert!(!is_loopback("https://ec2.us-east-1.amazonaws.com"));
        assert!(!is_loopback("https://vpce-1.ec2.us-east-1.vpce.amazonaws.com"));
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
    }
}
