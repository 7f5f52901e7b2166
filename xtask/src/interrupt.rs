//! Ctrl-C and SIGTERM during a build or a cleanup. Packer and the aws CLI run
//! in their own process groups, so a terminal's Ctrl-C reaches only us. We
//! pass one SIGINT to each Packer, which then cancels its build and cleans up
//! (terminates the instance, deletes the temporary key pair and security
//! group); aws calls under way finish. Stoppable not yet started never starts. A
//! second signal stops waiting and says what may still run.
//!
//! A SIGKILL gives us no say, so every child we start is told by the kernel
//! instead (`die_with_parent`): Packer gets SIGINT and cleans up as above,
//! the sandbox's servers get SIGTERM.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    process::Command,
    sync::{
        atomic::{AtomicI32, AtomicUsize, Ordering},
        mpsc::Sender,
        Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use nix::{
    sys::signal::{killpg, raise, Signal},
    unistd::{getpid, getppid, Pid},
};

use crate::progress::{Event, Stoppable};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// What the kernel sends Packer when we die (see `packer_death_signal`).
static PACKER_DEATH_SIGNAL: AtomicI32 = AtomicI32::new(Signal::SIGINT as i32);
/// Process group (Packer's pid) -> the build it runs.
static RUNNING: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());
/// Cleanups to run if we exit without waiting (Drop will not run then).
static AT_GIVE_UP: Mutex<Vec<Box<dyn Fn() + Send>>> = Mutex::new(Vec::new());

/// How long the first signal waits for Packer to clean up before giving up.
pub const CLEANUP_BOUND: Duration = Duration::from_secs(300);

/// Routes SIGINT and SIGTERM here for the rest of the process; reports go to
/// the printer through `events`, worded for `work`.
pub fn install(events: Sender<Event>, work: Stoppable) -> Result<()> {
    ctrlc::set_handler(move || on_signal(&events, work)).context("install the Ctrl-C handler")
}

/// True once a signal has arrived: start nothing new.
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Tracks a Packer process (a process-group leader). If a signal came in
/// just before, it is passed on at once.
pub fn register(pid: u32, build: &str) {
    if let Ok(mut running) = RUNNING.lock() {
        running.insert(pid, build.to_string());
    }
    if interrupted() {
        forward(pid);
    }
}

pub fn unregister(pid: u32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.remove(&pid);
    }
}

/// Runs `cleanup` if the run stops waiting for its builds (a second signal),
/// an exit on which no destructor runs.
pub fn at_give_up(cleanup: impl Fn() + Send + 'static) {
    if let Ok(mut cleanups) = AT_GIVE_UP.lock() {
        cleanups.push(Box::new(cleanup));
    }
}

/// Stops `pid` (the local emulator) if we exit without waiting.
pub fn kill_on_exit(pid: u32) {
    at_give_up(move || {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    });
}

/// Has the kernel send `signal` to the child `command` starts when this
/// process dies, however it dies (`PR_SET_PDEATHSIG`). Linux ties the signal
/// to the spawning thread, so spawn from a thread that outlives the child:
/// the main thread, or the pool worker that waits for it.
pub fn die_with_parent(command: &mut Command, signal: Signal) {
    let parent = getpid();
    let hook = move || -> nix::Result<()> {
        nix::sys::prctl::set_pdeathsig(signal)?;
        // We may have died between fork and prctl: then nobody will send it.
        if getppid() != parent {
            raise(signal)?;
        }
        Ok(())
    };
    // SAFETY: between fork and exec the hook makes only async-signal-safe
    // system calls (prctl, getppid, kill) and allocates nothing.
    unsafe {
        command.pre_exec(move || hook().map_err(std::io::Error::from));
    }
}

/// Says that the EC2 endpoint dies with this process (the sandbox's
/// emulator): everything Packer could clean up there goes with it.
pub fn endpoint_dies_with_us() {
    PACKER_DEATH_SIGNAL.store(Signal::SIGKILL as i32, Ordering::SeqCst);
}

/// What Packer gets when we die: SIGINT, to clean up and exit; or SIGKILL
/// when its endpoint dies with us, where it would only retry its cleanup
/// against a closed port for minutes.
pub fn packer_death_signal() -> Signal {
    Signal::try_from(PACKER_DEATH_SIGNAL.load(Ordering::SeqCst)).unwrap_or(Signal::SIGINT)
}

/// Asks the Packer in process group `pid` to cancel and clean up.
pub fn stop(pid: u32) {
    forward(pid);
}

/// Kills every Packer now, with no cleanup: for when its endpoint is gone,
/// where cleanup would only retry for minutes.
pub fn kill_all() {
    let pids: Vec<u32> = RUNNING.lock().map(|r| r.keys().copied().collect()).unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn forward(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGINT);
    }
}

fn running_builds() -> Vec<String> {
    RUNNING.lock().map(|r| r.values().cloned().collect()).unwrap_or_default()
}

fn on_signal(events: &Sender<Event>, work: Stoppable) {
    let count = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    if count == 1 {
        let pids: Vec<u32> = RUNNING.lock().map(|r| r.keys().copied().collect()).unwrap_or_default();
        for pid in &pids {
            forward(*pid);
        }
        let _ = events.send(Event::Interrupted { work, running: running_builds(), again: false });
        let events = events.clone();
        std::thread::spawn(move || {
            std::thread::sleep(CLEANUP_BOUND);
            give_up(&events, work);
        });
    } else {
        give_up(events, work);
    }
}

/// Stops waiting: names what may still be running, then exits 130.
fn give_up(events: &Sender<Event>, work: Stoppable) {
    let _ = events.send(Event::Interrupted { work, running: running_builds(), again: true });
    if let Ok(cleanups) = AT_GIVE_UP.lock() {
        for cleanup in cleanups.iter() {
            cleanup();
        }
    }
    // Let the printer say it before the process goes.
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(130);
}
