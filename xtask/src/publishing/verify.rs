//! Before anything is published, every AMI is checked in EC2: it exists in
//! its cell's region and is the factory's, for that cell. SSM does not check
//! (moto not at all, real SSM only the format), so this is the only guard
//! between a wrong ami-list and launch templates that resolve to it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rayon::prelude::*;
use xshell::Shell;

use super::cells::Cell;
use crate::aws::{Aws, Image};

pub const MANAGED_BY: &str = "managed-by";
pub const FACTORY: &str = "spark-packer";
pub const IMAGE_TAG: &str = "spark-packer:image";
pub const RUN_ID_TAG: &str = "spark-packer:run-id";

/// What is wrong with publishing `cell`, given the image its region holds
/// under its ID (if any). Empty when it may be published.
pub fn problems(cell: &Cell, found: Option<&Image>) -> Vec<String> {
    let id = &cell.id;
    let Some(image) = found else {
        return vec![format!("{id} does not exist in {}: rebuild the cell, or fix the ami-list file", cell.region)];
    };
    let tags = image.tags();
    if tags.get(MANAGED_BY) != Some(&FACTORY) {
        return vec![format!(
            "{id} is not the factory's (no {MANAGED_BY}={FACTORY} tag): refusing to publish an image spark-packer did not build"
        )];
    }
    let mut problems = Vec::new();
    if tags.get(IMAGE_TAG) != Some(&cell.image.as_str()) {
        problems.push(format!(
            "{id} is tagged {IMAGE_TAG}={} but recorded under `{}`",
            tags.get(IMAGE_TAG).unwrap_or(&"(none)"),
            cell.image
        ));
    }
    if image.state != "available" {
        problems.push(format!("{id} is `{}`, not available", image.state));
    }
    let virtualization = if cell.virt == "pv" { "paravirtual" } else { "hvm" };
    if image.virtualization_type != virtualization || image.architecture != cell.arch {
        problems.push(format!(
            "{id} is {} {} but its file says {} {}",
            image.virtualization_type, image.architecture, cell.virt, cell.arch
        ));
    }
    if tags.get(RUN_ID_TAG).is_none_or(|r| r.is_empty()) {
        problems.push(format!("{id} has no {RUN_ID_TAG} tag to label its version with"));
    }
    problems
}

/// Looks every cell's AMI up, one call per region, in parallel. Fails, naming
/// every refused cell, unless all may be published; nothing is written then.
pub fn check_all(sh: &Shell, aws: &Aws, cells: &[Cell]) -> Result<BTreeMap<String, Image>> {
    let mut by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for cell in cells {
        by_region.entry(&cell.region).or_default().push(&cell.id);
    }
    let by_region: Vec<(&str, Vec<&str>)> = by_region.into_iter().collect();
    let found: Vec<(&str, Result<Vec<Image>>)> = by_region
        .par_iter()
        .map_with(sh.clone(), |sh, (region, ids)| (*region, aws.images_by_id(sh, region, ids)))
        .collect();
    let mut images: BTreeMap<(String, String), Image> = BTreeMap::new();
    for (region, result) in found {
        let list = result.map_err(|e| e.context(format!("look up the AMIs to publish in {region}")))?;
        images.extend(list.into_iter().map(|i| ((region.to_string(), i.image_id.clone()), i)));
    }
    let mut refused = Vec::new();
    let mut verified = BTreeMap::new();
    for cell in cells {
        let image = images.get(&(cell.region.clone(), cell.id.clone()));
        let found = problems(cell, image);
        if found.is_empty() {
            verified.insert(cell.path(), image.expect("no problems means found").clone());
        }
        refused.extend(found.into_iter().map(|p| format!("{}: {p}", cell.path())));
    }
    if !refused.is_empty() {
        bail!("refusing to publish anything: {} problem(s):\n  {}", refused.len(), refused.join("\n  "));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::parse_describe_images;

    fn cell() -> Cell {
        Cell {
            image: "base".into(),
            region: "eu-west-1".into(),
            virt: "pv".into(),
            arch: "x86_64".into(),
            os: None,
            id: "ami-1234abcd".into(),
        }
    }

    fn image(virtualization: &str, tags: &str) -> Image {
        let json = format!(
            r#"{{"Images": [{{"ImageId": "ami-1234abcd", "State": "available", "VirtualizationType": "{virtualization}",
                "Architecture": "x86_64", "Tags": [{tags}]}}]}}"#
        );
        parse_describe_images(&json).unwrap().remove(0)
    }

    const FACTORY_TAGS: &str = r#"{"Key": "managed-by", "Value": "spark-packer"},
        {"Key": "spark-packer:image", "Value": "base"}, {"Key": "spark-packer:run-id", "Value": "20261125T2100Z-1"}"#;

    #[test]
    fn the_factorys_image_for_the_cell_passes() {
        assert_eq!(problems(&cell(), Some(&image("paravirtual", FACTORY_TAGS))), Vec::<String>::new());
    }

    #[test]
    fn each_refusal_says_why() {
        let missing = problems(&cell(), None);
        assert_eq!(missing, ["ami-1234abcd does not exist in eu-west-1: rebuild the cell, or fix the ami-list file"]);
        let foreign = problems(&cell(), Some(&image("paravirtual", "")));
        assert!(foreign[0].contains("is not the factory's (no managed-by=spark-packer tag)"), "{foreign:?}");
        let wrong = problems(&cell(), Some(&image("hvm", &FACTORY_TAGS.replace("\"base\"", "\"spark-3.5.3\""))));
        assert_eq!(wrong.len(), 2, "{wrong:?}");
        assert!(wrong[0].contains("tagged spark-packer:image=spark-3.5.3 but recorded under `base`"), "{wrong:?}");
        assert!(wrong[1].contains("is hvm x86_64 but its file says pv x86_64"), "{wrong:?}");
        let unlabelled = problems(&cell(), Some(&image("paravirtual", &FACTORY_TAGS.replace("run-id", "other"))));
        assert_eq!(unlabelled, ["ami-1234abcd has no spark-packer:run-id tag to label its version with"]);
    }
}
