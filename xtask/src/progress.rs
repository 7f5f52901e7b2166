//! The one place that reports live progress. Workers send events; a single
//! printer thread writes them to stderr, so parallel output never interleaves.

use std::{
    collections::BTreeMap,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub enum Event {
    Started {
        build: String,
        detail: String,
    },
    Step {
        build: String,
        step: String,
    },
    Finished {
        build: String,
        detail: String,
    },
    Failed {
        build: String,
        error: String,
        log: String,
    },
    /// A build that never ran, or was stopped, because of Ctrl-C or SIGTERM.
    Skipped {
        build: String,
        why: String,
    },
    /// A signal came in: `again` means we stop waiting for `running`.
    Interrupted {
        work: Work,
        running: Vec<String>,
        again: bool,
    },
    /// A transient failure; the build starts over after `delay_secs`.
    Retrying {
        build: String,
        attempt: u32,
        delay_secs: u64,
        error: String,
    },
    /// Sent by `finish`: other senders (the signal handler) may outlive the run.
    Done,
}

/// What a run stops when interrupted, for the printer's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// build-amis: Packer builds, which clean up after themselves.
    Builds,
    /// clean-old-amis --yes: deregistrations, each followed by its snapshots.
    Deletions,
}

pub struct Printer {
    tx: Sender<Event>,
    handle: JoinHandle<()>,
}

/// How often the printer says what is still running.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// What Ctrl-C (or a second one) means for the work under way.
fn interrupted_message(work: Work, builds: &[String], again: bool) -> String {
    match (work, again) {
        (Work::Deletions, false) => "interrupted: no more AMIs will be deregistered; the snapshots of those already \
             deregistered are being deleted, so none is left behind. Press Ctrl-C again to stop at once."
            .to_string(),
        (Work::Deletions, true) => "stopped at once: an AMI deregistered just now may have left its snapshots; \
             `cargo xtask clean-old-amis` does not see them. Find them with `aws ec2 describe-snapshots \
             --owner-ids self --filters Name=tag:managed-by,Values=spark-packer`."
            .to_string(),
        (Work::Builds, false) => format!(
            "interrupted: stopping {} running build{} ({}); Packer is cleaning up \
             (terminating instances, deleting temporary key pairs and security groups). \
             Nothing new starts. Press Ctrl-C again to stop waiting.",
            builds.len(),
            if builds.len() == 1 { "" } else { "s" },
            builds.join(", ")
        ),
        (Work::Builds, true) if builds.is_empty() => {
            "not waiting any longer; no Packer process was still running.".to_string()
        }
        (Work::Builds, true) => format!(
            "not waiting any longer. These builds may still have an instance, key pair or \
             security group in EC2: {}. Their logs are under target/packer-logs/; find \
             leftovers with `aws ec2 describe-instances --filters \
             Name=tag:managed-by,Values=spark-packer Name=instance-state-name,Values=pending,running`.",
            builds.join(", ")
        ),
    }
}

impl Printer {
    /// `verbose` prints every Packer step; otherwise a heartbeat names the
    /// running builds and their current step every 30 s.
    pub fn start(total: usize, verbose: bool) -> Printer {
        let (tx, rx) = mpsc::channel::<Event>();
        let handle = std::thread::spawn(move || {
            let width = total.to_string().len();
            let mut done = 0;
            let mut running: BTreeMap<String, (Instant, String)> = BTreeMap::new();
            let mut last_beat = Instant::now();
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(Event::Started { build, detail }) => {
                        eprintln!("[{done:>width$}/{total}] start  {build} {detail}");
                        running.insert(build, (Instant::now(), String::new()));
                    }
                    Ok(Event::Step { build, step }) => {
                        if verbose {
                            eprintln!("               {build}: {step}");
                        }
                        if let Some(entry) = running.get_mut(&build) {
                            entry.1 = step;
                        }
                    }
                    Ok(Event::Finished { build, detail }) => {
                        done += 1;
                        running.remove(&build);
                        eprintln!("[{done:>width$}/{total}] ok     {build} {detail}");
                    }
                    Ok(Event::Failed { build, error, log }) => {
                        done += 1;
                        running.remove(&build);
                        let first_line = error.lines().next().unwrap_or("");
                        let log = if log.is_empty() { String::new() } else { format!(" (log: {log})") };
                        eprintln!("[{done:>width$}/{total}] FAILED {build}: {first_line}{log}");
                    }
                    Ok(Event::Skipped { build, why }) => {
                        done += 1;
                        running.remove(&build);
                        eprintln!("[{done:>width$}/{total}] {why} {build}");
                    }
                    Ok(Event::Interrupted { work, running: builds, again }) => {
                        eprintln!("{}", interrupted_message(work, &builds, again));
                    }
                    Ok(Event::Retrying { build, attempt, delay_secs, error }) => {
                        let first_line = error.lines().next().unwrap_or("");
                        eprintln!(
                            "[{done:>width$}/{total}] retry  {build} (attempt {attempt}) in {delay_secs}s after: {first_line}"
                        );
                    }
                    Ok(Event::Done) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if !running.is_empty() && last_beat.elapsed() >= HEARTBEAT {
                    last_beat = Instant::now();
                    for (build, (since, step)) in &running {
                        eprintln!("      running {build} for {}s: {step}", since.elapsed().as_secs());
                    }
                }
            }
        });
        Printer { tx, handle }
    }

    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }

    /// Waits until every event sent so far is printed.
    pub fn finish(self) {
        let _ = self.tx.send(Event::Done);
        drop(self.tx);
        let _ = self.handle.join();
    }
}
