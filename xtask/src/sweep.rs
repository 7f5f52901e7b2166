//! What runs that died left behind, removed when the next run starts.
//!
//! A run that dies by SIGKILL runs no destructor and writes no final report.
//! Its Packers are told (see interrupt.rs) and clean up; this is the second
//! line, for what they could not: the sandbox instances of dead runs
//! (processes, mounts, overlays), and in EC2 the instances, Packer's
//! temporary security groups and key pairs of any run whose journal says it
//! never finished and whose writer is gone (see journal.rs).
//!
//! An emulator is swept always. Real AWS only with `--sweep`: otherwise the
//! run says what it found and how to remove it, and leaves it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, TcpStream, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use anyhow::Result;
use xshell::Shell;

use crate::{
    aws::{Aws, Leftovers},
    journal::{self, Document},
    local,
};

/// What to do with a dead run found in the journals.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Its EC2 is ours: look in these regions.
    Look(Vec<String>),
    /// Its emulator is gone, and everything it held with it.
    Gone,
    /// Another endpoint, still there: a run against it will sweep it.
    Elsewhere,
}

/// Where to look for what `dead` left: the launch regions of its builds that
/// did not finish, in the EC2 this run talks to (`endpoint`, None for AWS).
pub fn plan(dead: &Document, endpoint: Option<&str>, answers: impl Fn(&str) -> bool) -> Plan {
    if dead.header.endpoint.as_deref() != endpoint {
        return match dead.header.endpoint.as_deref() {
            Some(other) if is_on_this_machine(other) && !answers(other) => Plan::Gone,
            _ => Plan::Elsewhere,
        };
    }
    let regions: BTreeSet<&str> =
        dead.builds.iter().filter(|b| b.status != "ok").map(|b| b.build_region.as_str()).collect();
    Plan::Look(regions.into_iter().filter(|r| !r.is_empty()).map(str::to_string).collect())
}

/// An endpoint on loopback: an emulator on this machine, whose state dies
/// with it. Only such an endpoint is ever taken for gone.
pub fn is_on_this_machine(url: &str) -> bool {
    host_and_port(url).is_some_and(|(host, _)| {
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// Whether anything accepts connections at the endpoint's host and port.
pub fn answers(url: &str) -> bool {
    let Some((host, port)) = host_and_port(url) else { return false };
    let Ok(addrs) = (host.as_str(), port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// `http://host:port/...` -> (host, port); the scheme's port if none is given.
pub fn host_and_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// One line per region with leftovers: what a dead run left.
pub fn describe(run_id: &str, found: &[(String, Leftovers)]) -> String {
    found
        .iter()
        .map(|(region, l)| {
            let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            format!(
                "run {run_id} (dead) left in {region}: instances {}; security groups {}; key pairs {}\n",
                list(&l.instances),
                list(&l.security_groups),
                list(&l.key_pairs)
            )
        })
        .collect()
}

/// Sweeps at the start of a run: the sandbox instances of dead processes,
/// then what dead runs left in the EC2 of `aws`. Never fails the run: what
/// cannot be removed is named, and the next run tries again.
pub fn at_start(sh: &Shell, aws: &Aws, endpoint: Option<&str>, is_emulator: bool, remove_on_aws: bool) {
    local::instance::sweep_stale_instances(sh);
    for (path, dead) in journal::dead_runs() {
        if let Err(e) = sweep_run(sh, aws, endpoint, is_emulator || remove_on_aws, &path, &dead) {
            eprintln!("warning: could not sweep what run {} left: {e:#}; the next run tries again", dead.header.run_id);
        }
    }
}

fn sweep_run(sh: &Shell, aws: &Aws, endpoint: Option<&str>, remove: bool, path: &Path, dead: &Document) -> Result<()> {
    let run_id = &dead.header.run_id;
    let regions = match plan(dead, endpoint, answers) {
        Plan::Look(regions) => regions,
        Plan::Gone => return journal::mark_swept(path, dead),
        Plan::Elsewhere => return Ok(()),
    };
    let mut found = Vec::new();
    for region in regions {
        let leftovers = aws.leftovers(sh, &region, run_id)?;
        if !leftovers.is_empty() {
            found.push((region, leftovers));
        }
    }
    if found.is_empty() {
        return journal::mark_swept(path, dead);
    }
    eprint!("{}", describe(run_id, &found));
    if !remove {
        eprintln!(
            "note: on real AWS these are left alone: run again with --sweep to remove them, \
             or remove them by hand (they are billed while they run)"
        );
        return Ok(());
    }
    for (region, leftovers) in &found {
        aws.remove(sh, region, leftovers)?;
    }
    eprintln!("swept run {run_id}: removed what it left");
    journal::mark_swept(path, dead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, Header, Writer};
    use crate::matrix::Strategy;

    fn dead(endpoint: Option<&str>, builds: &[(&str, &str)]) -> Document {
        Document {
            header: Header {
                run_id: "r1".to_string(),
                started_at: "t".to_string(),
                preset: "default".to_string(),
                strategy: Strategy::Native,
                provisioned: false,
                endpoint: endpoint.map(str::to_string),
                ami_list: "t".to_string(),
                git_commit: "g".to_string(),
            },
            journal: Writer { pid: 1, started: 1, swept_at: None },
            builds: builds
                .iter()
                .map(|(region, status)| Entry {
                    name: format!("b-{region}"),
                    status: status.to_string(),
                    build_region: region.to_string(),
                    rest: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_unfinished_builds_in_the_same_ec2_are_looked_at() {
        let run = dead(Some("http://127.0.0.1:5000"), &[("us-east-1", "ok"), ("eu-west-1", "interrupted")]);
        assert_eq!(plan(&run, Some("http://127.0.0.1:5000"), |_| true), Plan::Look(vec!["eu-west-1".to_string()]));
        assert_eq!(plan(&run, Some("http://127.0.0.1:6000"), |_| false), Plan::Gone);
        assert_eq!(plan(&run, Some("http://127.0.0.1:6000"), |_| true), Plan::Elsewhere);
        assert_eq!(plan(&run, None, |_| false), Plan::Gone);
        let on_aws = dead(None, &[("us-west-2", "failed")]);
        assert_eq!(plan(&on_aws, None, |_| false), Plan::Look(vec!["us-west-2".to_string()]));
        // Real AWS is never "gone" because a probe failed.
        assert_eq!(plan(&on_aws, Some("http://127.0.0.1:5000"), |_| false), Plan::Elsewhere);
    }

    #[test]
    fn endpoints_give_their_host_and_port() {
        assert_eq!(host_and_port("http://127.0.0.1:5000"), Some(("127.0.0.1".to_string(), 5000)));
        assert_eq!(
            host_and_port("https://ec2.us-east-1.amazonaws.com/"),
            Some(("ec2.us-east-1.amazonaws.com".into(), 443))
        );
        assert_eq!(host_and_port("http://[::1]:7/x"), Some(("::1".to_string(), 7)));
        assert_eq!(host_and_port("http://"), None);
        assert_eq!(host_and_port("127.0.0.1:5000"), None);
        assert!(is_on_this_machine("http://127.0.0.2:5000") && is_on_this_machine("http://[::1]:5000"));
        assert!(!is_on_this_machine("https://ec2.us-east-1.amazonaws.com") && !is_on_this_machine("http://10.0.0.1"));
    }

    #[test]
    fn what_was_found_is_named_by_region() {
        let left =
            Leftovers { instances: vec!["i-1".into()], security_groups: vec![], key_pairs: vec!["packer_x".into()] };
        assert_eq!(
            describe("r1", &[("us-east-1".to_string(), left)]),
            "run r1 (dead) left in us-east-1: instances i-1; security groups none; key pairs packer_x\n"
        );
    }
}
