//! What the provisioners download and the SHA-512 each must have: the
//! matrix's Apache pins, from Apache's archive or a mirror of it, or a local
//! mirror's own checksums. The full URLs go to the template as variables, so
//! the scripts never rebuild a mirror's layout.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    local,
    matrix::{Hadoop, Image, Spark},
};

pub(crate) const APACHE_SPARK: &str = "https://archive.apache.org/dist/spark";
pub(crate) const APACHE_HADOOP: &str = "https://archive.apache.org/dist/hadoop/common";
const MATRIX_PIN: &str = "packer/matrix.json (Apache's SHA-512)";

/// Where Spark and Hadoop come from, as the user chose.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SourceArgs {
    /// Where spark.sh downloads Spark, laid out like Apache's archive
    /// (<URL>/spark-<v>/spark-<v>-bin-<hadoop>.tgz). Default: Apache's
    /// archive; with --local, a mirror built from the pyspark sdist on PyPI
    /// and served on 127.0.0.1.
    #[arg(long, value_name = "URL")]
    pub spark_mirror: Option<String>,

    /// Where hadoop.sh downloads Hadoop, for images whose matrix entry names
    /// a Hadoop version (<URL>/hadoop-<v>/hadoop-<v>.tar.gz). Default:
    /// Apache's archive; with --local, the local mirror.
    #[arg(long, value_name = "URL")]
    pub hadoop_mirror: Option<String>,

    /// With --local: serve this directory as the mirror instead of the one
    /// built from PyPI, with the SHA-512s of its .sha512 files. Lay it out
    /// like Apache's archive: spark-<v>/spark-<v>-bin-<hadoop>.tgz,
    /// hadoop-<v>/hadoop-<v>.tar.gz. For tests and offline tarballs.
    #[arg(long, value_name = "DIR", requires = "local")]
    pub local_mirror: Option<PathBuf>,
}

/// One tarball a provisioner downloads: where from, and the SHA-512 it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub url: String,
    pub sha512: String,
    /// Whose SHA-512 it is, said in the build log: the matrix's Apache pin, or a local mirror's own.
    pub sha512_source: String,
}

/// What one image downloads: Spark, and Hadoop where the matrix asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDownloads {
    pub spark: Download,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hadoop: Option<Download>,
}

/// A tarball as Apache's archive lays it out: `<mirror>/<dir>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    pub dir: String,
    pub file: String,
    /// The matrix's pin: the SHA-512 of Apache's file.
    pub pinned: String,
    /// Why the pin cannot be trusted for a real build, with the fix: a Spark
    /// pin that add-spark never checked against Apache's signature.
    pub unverified: Option<String>,
}

impl Tarball {
    pub fn spark(spark: &Spark) -> Tarball {
        let v = &spark.version;
        let unverified = match &spark.verified {
            Some(verified) if verified.by_apache() => None,
            Some(verified) => Some(format!("was checked against the KEYS at {}, not Apache's", verified.keys)),
            None => Some("was never checked against Apache's signature".to_string()),
        };
        Tarball {
            dir: format!("spark-{v}"),
            file: format!("spark-{v}-bin-{}.tgz", spark.hadoop_build),
            pinned: spark.sha512.clone(),
            unverified: unverified.map(|why| {
                format!(
                    "packer/matrix.json's SHA-512 of spark-{v}-bin-{} {why}: run `cargo xtask add-spark {v} \
                     --hadoop {}` where apache.org is reachable, and commit the matrix",
                    spark.hadoop_build, spark.hadoop_build
                )
            }),
        }
    }

    pub fn hadoop(hadoop: &Hadoop) -> Tarball {
        let v = &hadoop.version;
        Tarball {
            dir: format!("hadoop-{v}"),
            file: format!("hadoop-{v}.tar.gz"),
            pinned: hadoop.sha512.clone(),
            unverified: None,
        }
    }

    pub fn url(&self, mirror: &str) -> String {
        format!("{}/{}/{}", mirror.trim_end_matches('/'), self.dir, self.file)
    }

    /// The matrix's pin, refused unless it is a SHA-512: real builds must
    /// never download without checking.
    pub fn pin(&self, apache: &str) -> Result<Download> {
        if let Some(why) = &self.unverified {
            bail!("{why}");
        }
        let valid = self.pinned.len() == 128 && self.pinned.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            bail!(
                "the matrix pins no valid SHA-512 for {} ({:?}): put the lower-case hex from {}.sha512 \
                 in packer/matrix.json",
                self.file,
                self.pinned,
                self.url(apache)
            );
        }
        Ok(Download { url: self.url(apache), sha512: self.pinned.clone(), sha512_source: MATRIX_PIN.to_string() })
    }
}

/// Where the provisioners download from: a mirror URL, and whose SHA-512s
/// they check against.
pub(crate) enum Mirror {
    /// The matrix's pins (Apache's values), from Apache's archive or a mirror of it.
    Pinned { url: String, apache: &'static str },
    /// A local mirror directory served at `url`: its own .sha512 files.
    Local { url: String, dir: PathBuf, label: String },
}

impl Mirror {
    /// `explicit`, or Apache's archive, with the matrix's pins.
    pub fn pinned(explicit: &Option<String>, apache: &'static str) -> Mirror {
        Mirror::Pinned { url: explicit.clone().unwrap_or_else(|| apache.to_string()), apache }
    }

    fn download(&self, tarball: &Tarball) -> Result<Download> {
        match self {
            Mirror::Pinned { url, apache } => Ok(Download { url: tarball.url(url), ..tarball.pin(apache)? }),
            Mirror::Local { url, dir, label } => {
                let file = dir.join(&tarball.dir).join(&tarball.file);
                let sha512 = local::mirror::published_sha512(&file).with_context(|| {
                    format!("the local mirror has no {}: pass --local-mirror DIR holding it", tarball.file)
                })?;
                Ok(Download { url: tarball.url(url), sha512, sha512_source: label.clone() })
            }
        }
    }
}

/// Image -> its downloads, for every one of the builds' `images` with Spark.
pub(crate) fn for_builds<'a>(
    images: impl IntoIterator<Item = &'a Image>,
    spark: &Mirror,
    hadoop: &Mirror,
) -> Result<BTreeMap<String, ImageDownloads>> {
    let mut downloads = BTreeMap::new();
    for image in images {
        let Some(pin) = &image.spark else { continue };
        let hadoop = pin.install_hadoop.as_ref().map(|h| hadoop.download(&Tarball::hadoop(h))).transpose()?;
        let wanted = ImageDownloads { spark: spark.download(&Tarball::spark(pin))?, hadoop };
        downloads.insert(image.name.clone(), wanted);
    }
    Ok(downloads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Matrix, Verified};

    /// The checked-in matrix, its Spark 3.5.3 pin marked as add-spark marks
    /// one it checked against Apache's KEYS (the fingerprint is the one
    /// apache/spark-docker checks 3.5.3's tarball with).
    fn matrix_with_verified_pin() -> Matrix {
        let mut matrix = Matrix::parse(include_str!("../../../packer/matrix.json")).unwrap();
        let image = matrix.images.iter_mut().find(|i| i.name == "spark-3.5.3").unwrap();
        image.spark.as_mut().unwrap().verified = Some(Verified {
            keys: "https://downloads.apache.org/spark/KEYS".to_string(),
            fingerprint: "0A2D660358B6F6F8071FD16F6606986CF5A8447C".to_string(),
            signer: "test fixture".to_string(),
        });
        matrix
    }

    #[test]
    fn real_builds_need_a_pin_verified_against_apaches_keys() {
        let checked_in = Matrix::parse(include_str!("../../../packer/matrix.json")).unwrap();
        let spark = checked_in.image("spark-3.5.3").and_then(|i| i.spark.clone()).unwrap();
        let error = Tarball::spark(&spark).pin(APACHE_SPARK).unwrap_err().to_string();
        assert_eq!(
            error,
            "packer/matrix.json's SHA-512 of spark-3.5.3-bin-hadoop3 was never checked against Apache's \
             signature: run `cargo xtask add-spark 3.5.3 --hadoop hadoop3` where apache.org is reachable, \
             and commit the matrix"
        );
        let mut sandbox_signed = matrix_with_verified_pin().image("spark-3.5.3").unwrap().spark.clone().unwrap();
        sandbox_signed.verified.as_mut().unwrap().keys = "http://127.0.0.1:8000/KEYS".to_string();
        let error = Tarball::spark(&sandbox_signed).pin(APACHE_SPARK).unwrap_err().to_string();
        assert!(error.contains("was checked against the KEYS at http://127.0.0.1:8000/KEYS, not Apache's"), "{error}");

        let matrix = matrix_with_verified_pin();
        let spark = matrix.image("spark-3.5.3").and_then(|i| i.spark.clone()).unwrap();
        let tarball = Tarball::spark(&spark);
        let download = tarball.pin(APACHE_SPARK).unwrap();
        assert_eq!(download.url, format!("{APACHE_SPARK}/spark-3.5.3/spark-3.5.3-bin-hadoop3.tgz"));
        assert_eq!(download.sha512_source, MATRIX_PIN);
        let pending = Tarball { pinned: "PENDING".to_string(), ..tarball };
        let error = pending.pin(APACHE_SPARK).unwrap_err().to_string();
        assert!(error.contains("pins no valid SHA-512") && error.contains("hadoop3.tgz.sha512"), "{error}");
        // Not pinned yet (empty in the matrix): refused for real builds too.
        let unpinned = matrix.image("spark-4.3.0").and_then(|i| i.spark.clone()).unwrap();
        let error = Tarball::spark(&unpinned).pin(APACHE_SPARK).unwrap_err().to_string();
        assert!(error.contains("run `cargo xtask add-spark 4.3.0 --hadoop hadoop3`"), "{error}");
        let hadoop = Tarball::hadoop(&Hadoop { version: "3.3.6".to_string(), sha512: String::new() });
        assert_eq!(hadoop.url(APACHE_HADOOP), format!("{APACHE_HADOOP}/hadoop-3.3.6/hadoop-3.3.6.tar.gz"));
    }

    #[test]
    fn a_mirror_given_by_the_user_keeps_the_matrix_pin() {
        let matrix = matrix_with_verified_pin();
        let builds = matrix.expand("seed-2014", &Default::default(), crate::matrix::Strategy::Copy, false).unwrap();
        let mirror = Mirror::pinned(&Some("http://mirror.example/spark/".to_string()), APACHE_SPARK);
        let hadoop = Mirror::pinned(&None, APACHE_HADOOP);
        let downloads = for_builds(builds.iter().map(|b| &b.image), &mirror, &hadoop).unwrap();
        let spark = &downloads["spark-3.5.3"].spark;
        assert_eq!(spark.url, "http://mirror.example/spark/spark-3.5.3/spark-3.5.3-bin-hadoop3.tgz");
        assert_eq!(spark.sha512, matrix.image("spark-3.5.3").unwrap().spark.as_ref().unwrap().sha512);
        assert!(!downloads.contains_key("base"));
    }
}
