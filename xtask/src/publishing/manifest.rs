//! One JSON document for tools that want a single file: every image, region
//! and AMI ID ami-list records, with what each AMI's tags say it contains.
//! It holds no timestamp of its own, so publishing twice changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::cells::Cell;
use crate::aws::Image;

#[derive(Debug, Serialize, PartialEq)]
pub struct Manifest {
    pub generated_by: &'static str,
    /// Bumped when a field changes meaning or goes away.
    pub schema: u32,
    pub images: BTreeMap<String, ImageEntry>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ImageEntry {
    /// The Spark version all its AMIs carry (`none` for base), if they agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spark_version: Option<String>,
    pub amis: Vec<AmiEntry>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AmiEntry {
    pub region: String,
    pub virtualization: String,
    pub architecture: String,
    pub image_id: String,
    pub name: String,
    /// The AMI's `spark-packer:*` tags, without the prefix: run-id,
    /// spark-version, smoke-test, base-ami, git-commit, created-at, ...
    pub tags: BTreeMap<String, String>,
}

/// The manifest for `cells`, each with its verified image (by cell path).
pub fn build(cells: &[Cell], images: &BTreeMap<String, Image>) -> Manifest {
    let mut out: BTreeMap<String, ImageEntry> = BTreeMap::new();
    for cell in cells {
        let image = images.get(&cell.path());
        let tags: BTreeMap<String, String> = image
            .map(|i| {
                i.tags()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("spark-packer:")?.to_string(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let entry = out.entry(cell.image.clone()).or_insert(ImageEntry { spark_version: None, amis: Vec::new() });
        entry.amis.push(AmiEntry {
            region: cell.region.clone(),
            virtualization: cell.virt.clone(),
            architecture: cell.arch.clone(),
            image_id: cell.id.clone(),
            name: image.map(|i| i.name.clone()).unwrap_or_default(),
            tags,
        });
    }
    for entry in out.values_mut() {
        let mut versions: Vec<&str> =
            entry.amis.iter().filter_map(|a| a.tags.get("spark-version")).map(String::as_str).collect();
        versions.sort();
        versions.dedup();
        if let [one] = versions[..] {
            entry.spark_version = Some(one.to_string());
        }
    }
    Manifest { generated_by: "spark-packer", schema: 1, images: out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::parse_describe_images;

    #[test]
    fn each_image_lists_its_amis_and_their_tags() {
        let cell = |region: &str, id: &str| Cell {
            image: "spark-3.5.3".into(),
            region: region.into(),
            virt: "hvm".into(),
            arch: "x86_64".into(),
            os: None,
            id: id.into(),
        };
        let cells = [cell("eu-west-1", "ami-11111111"), cell("us-east-1", "ami-22222222")];
        let json = r#"{"Images": [{"ImageId": "ami-11111111", "Name": "spark-packer-x", "Tags": [
            {"Key": "managed-by", "Value": "spark-packer"}, {"Key": "spark-packer:spark-version", "Value": "3.5.3"},
            {"Key": "spark-packer:smoke-test", "Value": "passed"}]}]}"#;
        let image = parse_describe_images(json).unwrap().remove(0);
        let images: BTreeMap<String, Image> = [(cells[0].path(), image)].into_iter().collect();
        let manifest = build(&cells, &images);
        let text = serde_json::to_string(&manifest).unwrap();
        expect_test::expect![[r#"{"generated_by":"spark-packer","schema":1,"images":{"spark-3.5.3":{"spark_version":"3.5.3","amis":[{"region":"eu-west-1","virtualization":"hvm","architecture":"x86_64","image_id":"ami-11111111","name":"spark-packer-x","tags":{"smoke-test":"passed","spark-version":"3.5.3"}},{"region":"us-east-1","virtualization":"hvm","architecture":"x86_64","image_id":"ami-22222222","name":"","tags":{}}]}}}"#]]
        .assert_eq(&text);
    }
}
