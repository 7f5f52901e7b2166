//! Where the docker platform's builds run, as one value: the container
//! engine and registry (the user's, or the sandbox's own on loopback), the
//! source image of each build, and what the provisioners download.

use std::{collections::BTreeMap, fs, path::PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::{
    apache_mirrors,
    downloads::{self, ImageDownloads, SourceArgs},
    fill_downloads, prepare_rootfs, rootfs_kind, serve_local_mirror,
};
use crate::{
    docker::Engine,
    local::{self, docker::DockerSandbox, instance, mirror::MirrorServer},
    matrix::{Build, ContainerBuild, Image},
    template::TemplateVars,
};

pub(crate) struct ContainerSite {
    pub engine: Engine,
    /// `HOST[:PORT]/NAMESPACE` the images are pushed under.
    pub registry: String,
    /// Image -> its downloads.
    pub downloads: BTreeMap<String, ImageDownloads>,
    pub smoke_test: bool,
    sandbox: Option<ContainerSandbox>,
}

/// The sandbox's engine and registry, its mirror, and one base image per
/// Debian release and architecture, imported from the local instances' rootfs.
struct ContainerSandbox {
    // Dropped first: the engine stops before the mirror.
    _docker: DockerSandbox,
    _mirror: MirrorServer,
    base_images: BTreeMap<instance::RootfsKind, String>,
    /// Per-build copies of the package cache live here while they run.
    caches: PathBuf,
}

/// A build's own package cache in the sandbox: hard links of the shared one,
/// mounted as /var/cache/apt/archives. On drop, what apt downloaded is linked
/// back into the shared cache and the copy goes.
pub(crate) struct PackageCache {
    dir: Option<(PathBuf, PathBuf)>,
}

impl Drop for PackageCache {
    fn drop(&mut self) {
        if let Some((own, shared)) = &self.dir {
            let _ = instance::link_debs(own, shared);
            let _ = fs::remove_dir_all(own);
        }
    }
}

impl ContainerSite {
    /// With `local`, starts the sandbox's engine, registry and mirror and
    /// imports the base images; else uses the user's engine and `registry`,
    /// and Apache's downloads.
    pub fn open(
        sh: &Shell,
        local: bool,
        registry: Option<&str>,
        sources: &SourceArgs,
        builds: &[ContainerBuild],
        smoke_test: bool,
    ) -> Result<ContainerSite> {
        let images: Vec<&Image> = builds.iter().map(|b| &b.cell.image).collect();
        if !local {
            let registry = registry.context(
                "the docker platform pushes to a registry: pass --registry HOST/NAMESPACE (e.g. \
                 ghcr.io/acme/spark-packer, after `docker login ghcr.io`), or use --local for the sandbox's own",
            )?;
            let (spark, hadoop) = apache_mirrors(sources);
            let downloads = downloads::for_builds(images, &spark, &hadoop)?;
            let engine = Engine::default();
            return Ok(ContainerSite { engine, registry: registry.to_string(), downloads, smoke_test, sandbox: None });
        }
        if let Some(registry) = registry {
            bail!("--registry {registry} and --local: the sandbox pushes to its own registry on loopback; drop one");
        }
        let docker = DockerSandbox::start(sh).context("start the sandbox's dockerd and registry")?;
        let registry = format!("{}/spark-packer", docker.registry_address);
        let (mirror, spark, hadoop) = serve_local_mirror(sh, sources, &images)?;
        let downloads = downloads::for_builds(images, &spark, &hadoop)?;
        let base_images = import_base_images(sh, &docker, builds)?;
        let caches = docker.dir().join("apt");
        let engine = docker.engine.clone();
        let sandbox = ContainerSandbox { _docker: docker, _mirror: mirror, base_images, caches };
        Ok(ContainerSite { engine, registry, downloads, smoke_test, sandbox: Some(sandbox) })
    }

    /// The run's note on where the images come from and go.
    pub fn describe(&self) -> String {
        match &self.sandbox {
            Some(_) => format!(
                "docker: the sandbox's own dockerd (no bridge, no iptables rules) and registry at {}; \
                 base images imported from the local instances' Debian rootfs",
                self.registry
            ),
            None => format!("docker: pushing to {}", self.registry),
        }
    }

    /// Fills a build's docker and download variables.
    pub fn reach(&self, build: &ContainerBuild, vars: &mut TemplateVars) -> Result<PackageCache> {
        vars.platform = "docker".to_string();
        vars.communicator = "docker".to_string();
        vars.smoke_test = self.smoke_test;
        vars.docker_repository = build.repository(&self.registry);
        fill_downloads(&self.downloads, &build.cell.image, vars);
        let Some(sandbox) = &self.sandbox else {
            vars.docker_image = build.cell.os.docker_image.clone().with_context(|| {
                format!("{} has no docker_image in packer/matrix.json: it has no container image", build.cell.os.name)
            })?;
            vars.docker_pull = true;
            return Ok(PackageCache { dir: None });
        };
        let kind = rootfs_kind(&build.cell)?;
        vars.docker_image =
            sandbox.base_images.get(&kind).context("the sandbox imported no image for this build")?.clone();
        vars.docker_pull = false;
        let shared = instance::package_cache_dir(&kind);
        let own = sandbox.caches.join(&build.name);
        instance::link_debs(&shared, &own).context("fill the build's package cache")?;
        vars.docker_run_args = vec!["-v".to_string(), format!("{}:/var/cache/apt/archives", own.display())];
        if !kind.is_native() {
            let (name, value) = local::emulation::QEMU_CPU;
            vars.docker_run_args.extend(["-e".to_string(), format!("{name}={value}")]);
        }
        Ok(PackageCache { dir: Some((own, shared)) })
    }
}

/// One image per Debian release and architecture the builds stand on, from
/// the same cached rootfs the local instances use.
fn import_base_images(
    sh: &Shell,
    docker: &DockerSandbox,
    builds: &[ContainerBuild],
) -> Result<BTreeMap<instance::RootfsKind, String>> {
    let cells: Vec<Build> = builds.iter().map(|b| b.cell.clone()).collect();
    let mut images = BTreeMap::new();
    for (kind, rootfs) in prepare_rootfs(sh, &cells)? {
        let name = format!("spark-packer-local/debian:{}", kind.label());
        docker
            .import_rootfs(sh, &rootfs, kind.debian_arch(), &name)
            .with_context(|| format!("import the {} rootfs as a base image", kind.label()))?;
        images.insert(kind, name);
    }
    Ok(images)
}
