//! The one place that reports live progress. Workers send events; a single
//! printer thread writes them to stderr, so parallel output never interleaves.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
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
        work: Stoppable,
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
pub enum Stoppable {
    /// build-amis: Packer builds, which clean up after themselves.
    Builds,
    /// clean-old-amis --yes: deregistrations, each followed by its snapshots.
    Deletions,
}

pub struct Printer {
    tx: Sender<Event>,
    handle: JoinHandle<()>,
}

/// How often the line log says what is still running.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// How the printer shows progress.
#[derive(Debug, Clone, Default)]
pub struct Style {
    /// Redraw a line per running job and an overall line in place; else a line log.
    pub live: bool,
    /// Line log: every step of every job.
    pub verbose: bool,
    /// Job -> seconds it took in an earlier run, for the estimate.
    pub expected: BTreeMap<String, f64>,
    /// How many jobs run at once.
    pub jobs: usize,
}

impl Style {
    /// Live on a terminal; the line log on a pipe, in CI, with --json or -v.
    pub fn for_terminal(json: bool, verbose: bool) -> Style {
        use std::io::IsTerminal;
        let ci = std::env::var_os("CI").is_some();
        Style { live: std::io::stderr().is_terminal() && !ci && !json && !verbose, verbose, ..Style::default() }
    }
}

/// Seconds left, if every unfinished job took some earlier run a known time:
/// what the running ones still need plus the waiting ones, over the jobs at once.
pub fn estimate_left(
    expected: &BTreeMap<String, f64>,
    running: &[(&str, f64)],
    waiting: &[&str],
    jobs: usize,
) -> Option<f64> {
    let mut work = 0.0;
    for (job, elapsed) in running {
        work += (expected.get(*job)? - elapsed).max(0.0);
    }
    for job in waiting {
        work += expected.get(*job)?;
    }
    let lanes = jobs.min(running.len() + waiting.len()).max(1);
    Some(work / lanes as f64)
}

/// Where the printer writes: a line log, or indicatif's live lines.
enum Screen {
    Lines { verbose: bool, last_beat: Instant },
    Live { bars: MultiProgress, overall: ProgressBar, jobs: BTreeMap<String, ProgressBar> },
}

impl Screen {
    fn new(style: &Style, total: usize) -> Screen {
        if !style.live {
            return Screen::Lines { verbose: style.verbose, last_beat: Instant::now() };
        }
        let bars = MultiProgress::new();
        let overall = bars.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("[{pos}/{len}] {elapsed_precise} {msg}").expect("a valid template"),
        );
        overall.enable_steady_tick(Duration::from_millis(250));
        Screen::Live { bars, overall, jobs: BTreeMap::new() }
    }

    /// A line that stays: above the live lines, or in the log.
    fn say(&self, text: &str) {
        match self {
            Screen::Live { bars, .. } => {
                let _ = bars.println(text);
            }
            Screen::Lines { .. } => eprintln!("{text}"),
        }
    }

    fn started(&mut self, job: &str, detail: &str, counter: &str) {
        match self {
            Screen::Live { bars, jobs, .. } => {
                let bar = bars.add(ProgressBar::new_spinner());
                let template = format!("  {{spinner}} {{prefix:<{}}} {{elapsed:>4}}  {{msg}}", job.len().max(24));
                bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
                bar.set_prefix(job.to_string());
                bar.set_message(detail.to_string());
                bar.enable_steady_tick(Duration::from_millis(250));
                jobs.insert(job.to_string(), bar);
            }
            Screen::Lines { .. } => eprintln!("{counter} start  {job} {detail}"),
        }
    }

    fn step(&self, job: &str, step: &str) {
        match self {
            Screen::Live { jobs, .. } => {
                if let Some(bar) = jobs.get(job) {
                    bar.set_message(step.to_string());
                }
            }
            Screen::Lines { verbose: true, .. } => eprintln!("               {job}: {step}"),
            Screen::Lines { .. } => {}
        }
    }

    fn ended(&mut self, job: &str, done: usize) {
        if let Screen::Live { bars, overall, jobs } = self {
            if let Some(bar) = jobs.remove(job) {
                bar.finish_and_clear();
                bars.remove(&bar);
            }
            overall.set_position(done as u64);
        }
    }

    /// The overall line's estimate; the line log's heartbeat every 30 s.
    fn tick(&mut self, running: &BTreeMap<String, (Instant, String)>, style: &Style, waiting: &[&str]) {
        match self {
            Screen::Live { overall, .. } => {
                let now: Vec<(&str, f64)> =
                    running.iter().map(|(j, (t, _))| (j.as_str(), t.elapsed().as_secs_f64())).collect();
                let left = estimate_left(&style.expected, &now, waiting, style.jobs);
                overall.set_message(left.map_or(String::new(), |s| format!("about {s:.0}s left (from earlier runs)")));
            }
            Screen::Lines { last_beat, .. } => {
                if !running.is_empty() && last_beat.elapsed() >= HEARTBEAT {
                    *last_beat = Instant::now();
                    for (job, (since, step)) in running {
                        eprintln!("      running {job} for {}s: {step}", since.elapsed().as_secs());
                    }
                }
            }
        }
    }

    fn clear(&self) {
        if let Screen::Live { overall, jobs, .. } = self {
            jobs.values().for_each(ProgressBar::finish_and_clear);
            overall.finish_and_clear();
        }
    }
}

/// The line an event leaves in the log (Started and Step are shown otherwise).
fn said(event: Event) -> String {
    match event {
        Event::Finished { build, detail } => format!("ok     {build} {detail}"),
        Event::Failed { build, error, log } => {
            let first_line = error.lines().next().unwrap_or("");
            let log = if log.is_empty() { String::new() } else { format!(" (log: {log})") };
            format!("FAILED {build}: {first_line}{log}")
        }
        Event::Skipped { build, why } => format!("{why} {build}"),
        Event::Interrupted { work, running, again } => interrupted_message(work, &running, again),
        Event::Retrying { build, attempt, delay_secs, error } => {
            let first_line = error.lines().next().unwrap_or("");
            format!("retry  {build} (attempt {attempt}) in {delay_secs}s after: {first_line}")
        }
        Event::Started { build, .. } | Event::Step { build, .. } => build,
        Event::Done => String::new(),
    }
}

/// What Ctrl-C (or a second one) means for the work under way.
fn interrupted_message(work: Stoppable, builds: &[String], again: bool) -> String {
    match (work, again) {
        (Stoppable::Deletions, false) => {
            "interrupted: no more AMIs will be deregistered; the snapshots of those already \
             deregistered are being deleted, so none is left behind. Press Ctrl-C again to stop at once."
                .to_string()
        }
        (Stoppable::Deletions, true) => "stopped at once: an AMI deregistered just now may have left its snapshots; \
             `cargo xtask clean-old-amis` does not see them. Find them with `aws ec2 describe-snapshots \
             --owner-ids self --filters Name=tag:managed-by,Values=spark-packer`."
            .to_string(),
        (Stoppable::Builds, false) => format!(
            "interrupted: stopping {} running build{} ({}); Packer is cleaning up \
             (terminating instances, deleting temporary key pairs and security groups). \
             Nothing new starts. Press Ctrl-C again to stop waiting.",
            builds.len(),
            if builds.len() == 1 { "" } else { "s" },
            builds.join(", ")
        ),
        (Stoppable::Builds, true) if builds.is_empty() => {
            "not waiting any longer; no Packer process was still running.".to_string()
        }
        (Stoppable::Builds, true) => format!(
            "not waiting any longer. These builds may still have an instance, key pair or \
             security group in EC2: {}. Their logs are under target/packer-logs/; find \
             leftovers with `aws ec2 describe-instances --filters \
             Name=tag:managed-by,Values=spark-packer Name=instance-state-name,Values=pending,running`.",
            builds.join(", ")
        ),
    }
}

impl Printer {
    /// Starts the printer for `jobs` (build names, or regions) in the order
    /// they are planned.
    pub fn start(jobs: Vec<String>, style: Style) -> Printer {
        let (tx, rx) = mpsc::channel::<Event>();
        let handle = std::thread::spawn(move || {
            let total = jobs.len();
            let width = total.to_string().len();
            let mut screen = Screen::new(&style, total);
            let mut done = 0;
            let mut running: BTreeMap<String, (Instant, String)> = BTreeMap::new();
            let mut ended: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            loop {
                let counter = |done: usize| format!("[{done:>width$}/{total}]");
                let event = rx.recv_timeout(Duration::from_secs(1));
                let ending = match &event {
                    Ok(Event::Finished { build, .. } | Event::Failed { build, .. } | Event::Skipped { build, .. }) => {
                        Some(build.clone())
                    }
                    _ => None,
                };
                if let Some(job) = &ending {
                    done += 1;
                    running.remove(job);
                    ended.insert(job.clone());
                    screen.ended(job, done);
                }
                match event {
                    Ok(Event::Started { build, detail }) => {
                        screen.started(&build, &detail, &counter(done));
                        running.insert(build, (Instant::now(), detail));
                    }
                    Ok(Event::Step { build, step }) => {
                        screen.step(&build, &step);
                        if let Some(entry) = running.get_mut(&build) {
                            entry.1 = step;
                        }
                    }
                    Ok(Event::Done) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(event) => screen.say(&format!("{} {}", counter(done), said(event))),
                }
                let waiting: Vec<&str> = jobs
                    .iter()
                    .map(String::as_str)
                    .filter(|j| !ended.contains(*j) && !running.contains_key(*j))
                    .collect();
                screen.tick(&running, &style, &waiting);
            }
            screen.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_what_is_left_over_the_jobs_at_once() {
        let expected = BTreeMap::from([("base".to_string(), 60.0), ("spark".to_string(), 120.0)]);
        // base ran 20 s of its 60, spark waits: 40 + 120 over 2 lanes.
        assert_eq!(estimate_left(&expected, &[("base", 20.0)], &["spark"], 8), Some(80.0));
        // One lane: all of it in a row; a job past its time counts 0.
        assert_eq!(estimate_left(&expected, &[("base", 90.0)], &["spark"], 1), Some(120.0));
        // A job no earlier run made: no estimate rather than a wrong one.
        assert_eq!(estimate_left(&expected, &[("new", 1.0)], &[], 8), None);
    }
}
