//! Which OS families a run can prove, decided before anything launches:
//! whether the provisioners support the family (asked of scripts/lib.sh's
//! own detect_os, so the answer never drifts from the scripts), and whether
//! the sandbox has a local stand-in for it.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    matrix::{Build, Matrix, OsFamily},
    project,
};

/// Ok, or detect_os's own refusal, for an /etc/os-release of `os`.
pub fn provisioners_support(sh: &Shell, os: &OsFamily) -> Result<Result<(), String>> {
    let (id, version) = os.os_release.split_once(' ').unwrap_or((os.os_release.as_str(), ""));
    let dir = project::target_dir().join("os-release");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let file = dir.join(format!("{}-{}", os.name, std::process::id()));
    std::fs::write(&file, format!("ID={id}\nVERSION_ID=\"{version}\"\n"))?;
    let lib = project::root().join("scripts/lib.sh");
    let output =
        cmd!(sh, "bash -c {DETECT} detect_os {lib}").env("OS_RELEASE_FILE", &file).ignore_status().quiet().output();
    let _ = std::fs::remove_file(&file);
    let output = output.context("run bash on scripts/lib.sh")?;
    if output.status.success() {
        return Ok(Ok(()));
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.lines().last().unwrap_or("").trim_start_matches("spark-packer: ERROR: ");
    Ok(Err(said.to_string()))
}

const DETECT: &str = "set -euo pipefail; source \"$1\"; detect_os";

/// Refuses, naming every family and why, a provisioned run that includes
/// builds the provisioners cannot provision, or (with `local`) that the
/// sandbox cannot stand in for.
pub fn refuse_unprovable(sh: &Shell, matrix: &Matrix, builds: &[Build], local: bool) -> Result<()> {
    let mut families: BTreeMap<&str, (&OsFamily, Vec<&str>)> = BTreeMap::new();
    for build in builds {
        families.entry(&build.os.name).or_insert((&build.os, Vec::new())).1.push(&build.name);
    }
    let mut refusals = Vec::new();
    for (name, (os, names)) in &families {
        if let Err(why) = provisioners_support(sh, os)? {
            refusals
                .push(format!("{name} ({}) cannot be provisioned: scripts/lib.sh says \"{why}\"", names.join(", ")));
        } else if local && os.local_suite.is_none() {
            let provable: Vec<&str> =
                matrix.os_families.iter().filter(|os| os.local_suite.is_some()).map(|os| os.name.as_str()).collect();
            refusals.push(format!(
                "--local cannot prove {name} ({}): it has no local stand-in; the families proven locally are {}",
                names.join(", "),
                provable.join(", ")
            ));
        }
    }
    if refusals.is_empty() {
        return Ok(());
    }
    bail!(
        "{}; nothing was launched. Pass --no-provision for API-only builds of them, or leave them out with --os or --virt",
        refusals.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    fn family(name: &str) -> OsFamily {
        let matrix = Matrix::parse(include_str!("../../packer/matrix.json")).unwrap();
        matrix.os_family(name).unwrap().clone()
    }

    #[test]
    fn the_scripts_decide_which_families_they_support() {
        let sh = Shell::new().unwrap();
        for supported in ["debian-13", "debian-12", "al2023"] {
            assert_eq!(provisioners_support(&sh, &family(supported)).unwrap(), Ok(()), "{supported}");
        }
        let refused = provisioners_support(&sh, &family("amzn-pv")).unwrap().unwrap_err();
        assert!(refused.starts_with("unsupported OS 'amzn 2018.03'"), "{refused}");
    }
}
