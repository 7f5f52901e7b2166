//! The one place that reports live progress. Workers send events; a single
//! printer thread writes them to stderr, so parallel output never interleaves.

use std::{
    collections::BTreeMap,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub enum Event {
    Started { build: String, detail: String },
    Step { build: String, step: String },
    Finished { build: String, detail: String },
    Failed { build: String, error: String, log: String },
}

pub struct Printer {
    tx: Sender<Event>,
    handle: JoinHandle<()>,
}

/// How often the printer says what is still running.
const HEARTBEAT: Duration = Duration::from_secs(30);

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
                        eprintln!("[{done:>width$}/{total}] FAILED {build}: {first_line} (log: {log})");
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
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
        drop(self.tx);
        let _ = self.handle.join();
    }
}
