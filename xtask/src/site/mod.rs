//! Where builds run, as one value: the EC2 endpoint and credentials, how
//! Packer reaches each build's instance, and what the provisioners download.
//! Real AWS and the local sandbox come through the same `Site`, so the
//! commands never ask which one they have.

pub mod containers;
pub mod downloads;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    aws::Aws,
    endpoint::{Connection, EndpointArgs},
    interrupt, local,
    local::{instance, mirror::MirrorServer},
    matrix::{Build, Image},
    template::TemplateVars,
};
use downloads::{ImageDownloads, Mirror, SourceArgs, APACHE_HADOOP, APACHE_SPARK};

/// What the run asks of the site.
pub(crate) struct Request<'a> {
    pub builds: &'a [Build],
    /// Run the provisioners (communicator ssh), or API-only builds.
    pub provision: bool,
    pub smoke_test: bool,
    /// Local base instances keep their disks for the Spark builds on them.
    pub spark_on_base: bool,
}

pub(crate) struct Site {
    pub connection: Connection,
    /// Image -> its downloads; empty for API-only runs.
    pub downloads: BTreeMap<String, ImageDownloads>,
    pub provision: bool,
    pub smoke_test: bool,
    sandbox: Option<Sandbox>,
}

/// The local sandbox's instances: a rootfs, the key they trust, the mirror
/// they download from, and the base disks kept for Spark on base.
struct Sandbox {
    /// One rootfs per Debian suite and architecture the run's builds stand on.
    rootfs: BTreeMap<instance::RootfsKind, PathBuf>,
    key: instance::SshKey,
    _mirror: MirrorServer,
    base_disks: Option<instance::BaseDisks>,
}

/// How Packer reaches one build's instance. Dropping it tears down a local
/// instance.
pub(crate) struct Reach {
    instance: Option<instance::Instance>,
}

impl Reach {
    /// A local base build keeps its disk for the Spark builds on its AMI.
    pub fn keep_disk_as(&mut self, dest: PathBuf) {
        if let Some(instance) = self.instance.as_mut() {
            instance.keep_disk_as(dest);
        }
    }
}

impl Site {
    /// Checks credentials, connects, and, for provisioned builds, prepares
    /// the downloads and (in the sandbox) the instances' rootfs, key and mirror.
    pub fn open(sh: &Shell, endpoint: &EndpointArgs, sources: &SourceArgs, request: &Request) -> Result<Site> {
        preflight(endpoint, request.provision)?;
        let connection = endpoint.connect(sh)?;
        // Instances first, then the emulator, as their destructors would.
        if endpoint.local && request.provision {
            interrupt::at_give_up(instance::tear_down_own_instances);
        }
        if let Some(pid) = connection.emulator_pid() {
            interrupt::kill_on_exit(pid);
        }
        let mut site = Site {
            connection,
            downloads: BTreeMap::new(),
            provision: request.provision,
            smoke_test: request.smoke_test,
            sandbox: None,
        };
        if !request.provision {
            return Ok(site);
        }
        let (spark, hadoop) = if endpoint.local {
            let (sandbox, spark, hadoop) = Sandbox::prepare(sh, sources, request, &site.connection.aws)?;
            site.sandbox = Some(sandbox);
            (spark, hadoop)
        } else {
            apache_mirrors(sources)
        };
        site.downloads = downloads::for_builds(request.builds.iter().map(|b| &b.image), &spark, &hadoop)?;
        Ok(site)
    }

    pub fn aws(&self) -> &Aws {
        &self.connection.aws
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.connection.endpoint.as_deref()
    }

    /// Whether builds run on the local sandbox's instances.
    pub fn has_sandbox(&self) -> bool {
        self.sandbox.is_some()
    }

    /// An emulator this run started holds no AMI from earlier runs.
    pub fn starts_empty(&self) -> bool {
        self.connection.emulator_pid().is_some()
    }

    /// What the run should say before it starts: each download and whose
    /// checksum it is checked against, and what the local instance cannot prove.
    pub fn notes(&self, builds: &[Build]) -> Vec<String> {
        let mut notes = Vec::new();
        for (image, downloads) in &self.downloads {
            for download in std::iter::once(&downloads.spark).chain(&downloads.hadoop) {
                notes.push(format!("{image}: {}, SHA-512 from {}", download.url, download.sha512_source));
            }
        }
        let emulated: BTreeSet<&str> = builds
            .iter()
            .filter(|b| self.sandbox.is_some() && rootfs_kind(b).is_ok_and(|k| !k.is_native()))
            .map(|b| b.arch.as_str())
            .collect();
        for arch in emulated {
            notes.push(format!(
                "note: {arch} builds run in an {arch} Debian rootfs under qemu-user emulation on this {} host: \
                 the same binaries as on the instance, several times slower (compare the build times in the summary)",
                std::env::consts::ARCH
            ));
        }
        notes
    }

    /// Where a local base build keeps its disk, for the Spark builds on its AMI.
    pub fn base_disk(&self, base_build: &str) -> Option<PathBuf> {
        let disks = self.sandbox.as_ref()?.base_disks.as_ref()?;
        Some(disks.path(base_build))
    }

    /// Fills in the site's part of a build's variables (endpoint,
    /// communicator, SSH, downloads) and starts its instance where the site
    /// provides one, over `base_disk` when the build starts from a local base.
    pub fn reach(&self, sh: &Shell, build: &Build, vars: &mut TemplateVars, base_disk: Option<&Path>) -> Result<Reach> {
        vars.endpoint_ec2 = self.connection.endpoint.clone().unwrap_or_default();
        vars.skip_aws_validation = self.connection.is_emulator;
        if !self.provision {
            return Ok(Reach { instance: None });
        }
        vars.communicator = "ssh".to_string();
        vars.smoke_test = self.smoke_test;
        fill_downloads(&self.downloads, &build.image, vars);
        let Some(sandbox) = &self.sandbox else {
            return Ok(Reach { instance: None });
        };
        let kind = rootfs_kind(build)?;
        let rootfs = sandbox.rootfs.get(&kind).context("the sandbox prepared no rootfs for this build")?;
        // The local analogue of launching from the base AMI: its kept disk over the rootfs.
        let lowers: Vec<&Path> = base_disk.into_iter().chain([rootfs.as_path()]).collect();
        let started = instance::Instance::start(sh, &lowers, &kind, &sandbox.key, &build.os.login_user, &build.name)
            .context("start the local instance")?;
        vars.ssh_username = build.os.login_user.clone();
        vars.ssh_host = "127.0.0.1".to_string();
        vars.ssh_port = started.port;
        vars.ssh_private_key_file = sandbox.key.private_key.display().to_string();
        vars.ssh_keypair_name = instance::KEYPAIR_NAME.to_string();
        Ok(Reach { instance: Some(started) })
    }
}

impl Sandbox {
    /// The rootfs, the key (imported into the emulator) and the mirror.
    fn prepare(sh: &Shell, sources: &SourceArgs, request: &Request, aws: &Aws) -> Result<(Sandbox, Mirror, Mirror)> {
        instance::require_root(sh)?;
        // Dead runs' instances are swept by sweep::at_start, once per run.
        let rootfs = prepare_rootfs(sh, request.builds)?;
        let key = instance::ensure_ssh_key(sh)?;
        let regions: BTreeSet<&str> = request.builds.iter().map(|b| b.region.as_str()).collect();
        for region in regions {
            instance::import_key_pair(sh, aws, region, &key)?;
        }

        let images: Vec<&Image> = request.builds.iter().map(|b| &b.image).collect();
        let (server, spark, hadoop) = serve_local_mirror(sh, sources, &images)?;
        let base_disks = if request.spark_on_base { Some(instance::BaseDisks::create()?) } else { None };
        Ok((Sandbox { rootfs, key, _mirror: server, base_disks }, spark, hadoop))
    }
}

/// Fills a build's download variables (Spark, Hadoop) from `downloads`.
fn fill_downloads(downloads: &BTreeMap<String, ImageDownloads>, image: &Image, vars: &mut TemplateVars) {
    let Some(wanted) = downloads.get(&image.name) else { return };
    vars.spark_url = wanted.spark.url.clone();
    vars.spark_sha512 = wanted.spark.sha512.clone();
    vars.spark_sha512_source = wanted.spark.sha512_source.clone();
    if let (Some(hadoop), Some(spark)) = (&wanted.hadoop, &image.spark) {
        vars.hadoop_version = spark.install_hadoop.as_ref().map_or("none".into(), |h| h.version.clone());
        vars.hadoop_url = hadoop.url.clone();
        vars.hadoop_sha512 = hadoop.sha512.clone();
        vars.hadoop_sha512_source = hadoop.sha512_source.clone();
    }
}

/// The sandbox's Spark mirror on loopback: the --local-mirror directory, or
/// tarballs built once from the pyspark sdist for `images`' Spark. Explicit
/// --spark-mirror and --hadoop-mirror URLs win over it.
fn serve_local_mirror(sh: &Shell, sources: &SourceArgs, images: &[&Image]) -> Result<(MirrorServer, Mirror, Mirror)> {
    let venv = local::ensure_venv(sh)?;
    let (dir, label) = match &sources.local_mirror {
        Some(dir) => (dir.clone(), format!("the .sha512 files of {} (not Apache's)", dir.display())),
        None => {
            if sources.spark_mirror.is_none() {
                let sparks: BTreeSet<_> = images
                    .iter()
                    .filter_map(|image| image.spark.as_ref())
                    .map(|s| (&s.version, &s.hadoop_build))
                    .collect();
                for (version, hadoop_build) in sparks {
                    eprintln!("local mirror: spark-{version}-bin-{hadoop_build} (built from the pyspark sdist, once)");
                    local::mirror::ensure_spark(sh, &venv, version, hadoop_build)?;
                }
            }
            let label = "the local mirror's .sha512 (repackaged from the pyspark sdist; not Apache's)";
            (local::mirror::mirror_dir(), label.to_string())
        }
    };
    let server = MirrorServer::start(&venv, &dir)?;
    let served = |explicit: &Option<String>, apache| match explicit {
        Some(url) => Mirror::Pinned { url: url.clone(), apache },
        None => Mirror::Local { url: server.url.clone(), dir: dir.clone(), label: label.clone() },
    };
    let (spark, hadoop) = (served(&sources.spark_mirror, APACHE_SPARK), served(&sources.hadoop_mirror, APACHE_HADOOP));
    Ok((server, spark, hadoop))
}

/// Spark and Hadoop from Apache, or the mirrors the user named, each checked
/// against the matrix's pins.
fn apache_mirrors(sources: &SourceArgs) -> (Mirror, Mirror) {
    (Mirror::pinned(&sources.spark_mirror, APACHE_SPARK), Mirror::pinned(&sources.hadoop_mirror, APACHE_HADOOP))
}

/// The cached Debian rootfs of every release and architecture `builds` stand
/// on, debootstrapped once; emulation set up for foreign architectures first.
fn prepare_rootfs(sh: &Shell, builds: &[Build]) -> Result<BTreeMap<instance::RootfsKind, PathBuf>> {
    let kinds: BTreeSet<instance::RootfsKind> = builds.iter().map(rootfs_kind).collect::<Result<_>>()?;
    let mut rootfs = BTreeMap::new();
    for kind in kinds {
        if !kind.is_native() {
            local::emulation::ensure(sh, &kind.arch)?;
        }
        eprintln!("local instance: preparing the Debian {} rootfs (debootstrap and updates, once)", kind.label());
        let dir = instance::ensure_rootfs(sh, &kind)?;
        rootfs.insert(kind, dir);
    }
    Ok(rootfs)
}

/// The Debian rootfs that stands for a build's OS family and architecture.
fn rootfs_kind(build: &Build) -> Result<instance::RootfsKind> {
    let suite = build.os.local_suite.clone().with_context(|| {
        format!("{} has no local stand-in (os family {}): build it with --no-provision", build.name, build.os.name)
    })?;
    Ok(instance::RootfsKind { suite, arch: build.arch.clone() })
}

/// With --local, installs the apt packages the sandbox needs (dev/setup:
/// Packer, debootstrap, ...) and says what it installs, so a fresh Debian
/// machine needs no step before the main job.
pub(crate) fn install_sandbox_tools(sh: &Shell, endpoint: &EndpointArgs) -> Result<()> {
    if !endpoint.local {
        return Ok(());
    }
    let setup = crate::project::root().join("dev/setup");
    let output = xshell::cmd!(sh, "{setup}").quiet().ignore_status().output().context("run dev/setup")?;
    let said = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("dev/setup could not install the sandbox's packages (run it as root): {}", stderr.trim());
    }
    for line in said.lines().filter(|l| l.starts_with("dev/setup:") && !l.contains("already installed")) {
        eprintln!("{line}");
    }
    Ok(())
}

/// Fails early, before any EC2 call, when the site cannot serve the run: a
/// provisioned build with no instance to reach, or no credentials at all.
pub(crate) fn preflight(endpoint: &EndpointArgs, provision: bool) -> Result<()> {
    endpoint.refuse_aws_with_local()?;
    if provision && endpoint.is_emulator() && !endpoint.local {
        bail!(
            "provisioned builds against an emulator need an instance to SSH into: use --local, which \
             provides one, or --no-provision for API-only AMIs"
        );
    }
    if endpoint.local {
        return Ok(()); // the sandbox sets its own dummy ones
    }
    let env = |key: &str| std::env::var_os(key).is_some_and(|v| !v.is_empty());
    if endpoint.is_emulator() {
        if !env("AWS_ACCESS_KEY_ID") && !env("AWS_PROFILE") {
            bail!(
                "no AWS credentials for the emulator: export dummy ones, e.g. \
                 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test (never real keys)"
            );
        }
        return Ok(());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let sources = [
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_PROFILE"),
        env("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        env("AWS_SHARED_CREDENTIALS_FILE"),
        env("AWS_CONFIG_FILE"),
        env("SPARK_PACKER_INSTANCE_ROLE"),
        home.join(".aws/credentials").exists(),
        home.join(".aws/config").exists(),
    ];
    if !sources.contains(&true) {
        bail!(
            "no AWS credentials found (no AWS_* variables, no ~/.aws/credentials or config): \
             run `aws configure` or `aws sso login`, or export AWS_PROFILE; on an EC2 instance \
             with a role, set SPARK_PACKER_INSTANCE_ROLE=1. To try without AWS, use --local"
        );
    }
    Ok(())
}
