//! The rules for the matrix's OS families, and for the Java each preset's
//! Spark images need from them.

use std::collections::BTreeSet;

use crate::matrix::Matrix;

/// Each OS family: a unique name, an os-release, a login user that is not
/// root, the Java it packages, and complete source-image filters. Returns
/// the names.
pub(super) fn check_os_families<'m>(
    matrix: &'m Matrix,
    virt_names: &BTreeSet<&str>,
    report: &mut impl FnMut(&str, String),
) -> BTreeSet<&'m str> {
    let mut names = BTreeSet::new();
    let mut seed_cells = BTreeSet::new();
    for (i, os) in matrix.os_families.iter().enumerate() {
        let at = format!("os_families[{i}]");
        if !names.insert(os.name.as_str()) {
            report(&format!("{at}.name"), format!("OS family `{}` is defined twice; remove one", os.name));
        }
        if !os.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') || os.name.is_empty() {
            report(&format!("{at}.name"), format!("OS family `{}`: use lower case, digits and `-`", os.name));
        }
        if os.os_release.split_whitespace().count() != 2 {
            report(
                &format!("{at}.os_release"),
                format!("os_release `{}` is not `ID VERSION_ID` from /etc/os-release, e.g. `debian 13`", os.os_release),
            );
        }
        if os.login_user.is_empty() || os.login_user == "root" {
            report(
                &format!("{at}.login_user"),
                format!(
                    "login user `{}`: name the image's own user (admin, ec2-user); \
                     the provisioners run through sudo, as on AWS",
                    os.login_user
                ),
            );
        }
        if os.java.is_empty() {
            report(&format!("{at}.java"), format!("OS family `{}` lists no Java it packages", os.name));
        }
        for (j, source) in os.source_amis.iter().enumerate() {
            let here = format!("{at}.source_amis[{j}]");
            if !virt_names.contains(source.virt.as_str()) {
                report(&format!("{here}.virt"), format!("unknown virtualization `{}`", source.virt));
            }
            if !crate::matrix::ARCHITECTURES.contains(&source.arch.as_str()) {
                report(&format!("{here}.arch"), format!("unknown architecture `{}`: use x86_64 or arm64", source.arch));
            }
            if source.filter.name.trim().is_empty() {
                report(
                    &format!("{here}.name"),
                    "empty source AMI name pattern: give one, e.g. debian-13-amd64-*".into(),
                );
            }
            if source.filter.owners.is_empty() {
                report(
                    &format!("{here}.owners"),
                    "no source AMI owners: name one, e.g. amazon, so no stranger's image is picked".to_string(),
                );
            }
            if os.seed_slots && !seed_cells.insert((source.virt.as_str(), source.arch.as_str())) {
                report(
                    &format!("{here}.virt"),
                    format!(
                        "two families with seed_slots both build {} {}: their AMIs would share ami-list files",
                        source.virt, source.arch
                    ),
                );
            }
        }
        if os.source_amis.is_empty() {
            report(&format!("{at}.source_amis"), format!("OS family `{}` has no source image", os.name));
        }
    }
    names
}

/// Each preset's images run on a Java each of its OS families packages.
pub(super) fn check_preset_java(matrix: &Matrix, report: &mut impl FnMut(&str, String)) {
    for (name, preset) in &matrix.presets {
        for (k, image_name) in preset.images.iter().enumerate() {
            let Some(image) = matrix.image(image_name) else { continue };
            for os_name in &preset.os {
                let Some(os) = matrix.os_family(os_name) else { continue };
                if os.java_for(image).is_none() {
                    let needs = image.spark.as_ref().map(|s| format!("{:?}", s.java)).unwrap_or_default();
                    report(
                        &format!("presets.{name}.images[{k}]"),
                        format!(
                            "preset `{name}` builds {image_name} (Java {needs}) on {os_name}, \
                             which packages Java {:?} only: move the image to a preset on another OS",
                            os.java
                        ),
                    );
                }
            }
        }
    }
}
