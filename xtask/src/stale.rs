//! Which recorded images are stale: built from a source image that is no
//! longer the newest its filter picks (a Debian point release, an Amazon
//! Linux patch since). Read-only EC2 calls; `validate --online` reports them.

use anyhow::Result;
use rayon::prelude::*;
use xshell::Shell;

use crate::{aws::Aws, checks::Recorded, factory::INPUT_DIGESTS_TAG, matrix::Build};

/// One note per build whose recorded AMI in its launch region was built
/// from a source that is not the newest now. Builds with no recorded AMI
/// there, or whose AMI predates input digests, are skipped.
pub fn stale_sources(sh: &Shell, aws: &Aws, builds: &[Build], recorded: &[Recorded]) -> Vec<String> {
    let checks: Vec<(&Build, &Recorded)> = builds
        .iter()
        .filter_map(|b| {
            let cell =
                recorded.iter().find(|r| r.image == b.image.name && r.region == b.region && r.slot == b.slot())?;
            Some((b, cell))
        })
        .collect();
    checks
        .par_iter()
        .map_with(sh.clone(), |sh, (build, cell)| stale_note(sh, aws, build, cell))
        .filter_map(|note| note.unwrap_or_else(|e| Some(format!("could not check the source image: {e:#}"))))
        .collect()
}

fn stale_note(sh: &Shell, aws: &Aws, build: &Build, cell: &Recorded) -> Result<Option<String>> {
    let image = aws.image(sh, &cell.region, &cell.id)?;
    let tags = image.tags();
    let Some(built_from) = tags.get(INPUT_DIGESTS_TAG).and_then(|d| source_in(d)) else { return Ok(None) };
    let filter = &build.source_ami;
    let newest = aws.newest_image(sh, &build.region, &filter.name, &filter.owners, &build.arch)?;
    let Some(newest) = newest else {
        return Ok(Some(format!(
            "stale: {}/{}/{} was built from {built_from}; no image matches {} now",
            cell.image, cell.region, cell.slot, filter.name
        )));
    };
    if newest.image_id == built_from {
        return Ok(None);
    }
    Ok(Some(format!(
        "stale: {}/{}/{} was built from {built_from}; the newest {} is now {} ({}): build-amis rebuilds it",
        cell.image, cell.region, cell.slot, filter.name, newest.image_id, newest.name
    )))
}

/// The `source=` entry of an input-digests tag.
fn source_in(digests: &str) -> Option<String> {
    digests.split_whitespace().find_map(|kv| kv.strip_prefix("source=")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_read_from_the_digests_tag() {
        assert_eq!(
            source_in("base.sh=1a2b3c4d cell=00ff00ff source=ami-0123 template=9f9f9f9f").as_deref(),
            Some("ami-0123")
        );
        assert_eq!(source_in("cell=00ff00ff"), None);
    }
}
