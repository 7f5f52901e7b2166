//! Gives up fast when the EC2 endpoint goes away. Packer retries a refused
//! connection with growing pauses for minutes (moto killed mid-run: 7 min 22 s
//! before the run gave up), and on an interrupt it would retry its cleanup
//! just as long. Where nothing accepts connections any more, nothing can be
//! cleaned up either: once the endpoint has refused every probe for a few
//! seconds, its Packers are stopped at once and no build starts.

use std::{
    io::ErrorKind,
    net::{TcpStream, ToSocketAddrs},
    sync::{
        mpsc::{self, RecvTimeoutError},
        Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{interrupt, sweep::host_and_port};

/// Why the endpoint was given up on, once it was.
static REFUSED: Mutex<Option<String>> = Mutex::new(None);

const EVERY: Duration = Duration::from_secs(1);
/// Consecutive refused probes before giving up: a restart of the server in
/// place (a second or two) is not a death.
const REFUSALS: u32 = 3;

/// Why builds against the endpoint must stop, if they must.
pub fn refused() -> Option<String> {
    REFUSED.lock().ok().and_then(|r| r.clone())
}

/// What each probe saw, oldest first -> whether to give up: `REFUSALS`
/// refusals in a row. A timeout or any other error is not a refusal: a slow
/// network is no reason to stop.
pub fn gives_up(probes: &[Option<ErrorKind>]) -> bool {
    probes.len() >= REFUSALS as usize
        && probes[probes.len() - REFUSALS as usize..].iter().all(|p| *p == Some(ErrorKind::ConnectionRefused))
}

/// Watches `endpoint` (none for real AWS, which is not watched) until dropped.
pub struct Watch {
    /// Dropped to stop the watch at once, mid-pause.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The watch's words, if `endpoint` refuses connections right now: for a run
/// whose builds all failed faster than the watch could give up.
pub fn refusing_now(endpoint: Option<&str>) -> Option<String> {
    let url = endpoint?;
    let (host, port) = host_and_port(url)?;
    probe(&host, port)?;
    Some(format!(
        "the EC2 endpoint {url} refuses connections: is the emulator still running? \
         Start it again (or drop --endpoint), then rerun with --resume"
    ))
}

pub fn start(endpoint: Option<&str>) -> Option<Watch> {
    let url = endpoint?.to_string();
    let (host, port) = host_and_port(&url)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut probes = Vec::new();
        loop {
            probes.push(probe(&host, port));
            if gives_up(&probes) {
                let why = format!(
                    "the EC2 endpoint {url} refuses connections: is the emulator still running? \
                     Start it again (or drop --endpoint), then rerun with --resume"
                );
                if let Ok(mut refused) = REFUSED.lock() {
                    *refused = Some(why);
                }
                interrupt::kill_all();
                return;
            }
            // Until the next probe, or until the watch is dropped.
            if stopped.recv_timeout(EVERY) != Err(RecvTimeoutError::Timeout) {
                return;
            }
        }
    });
    Some(Watch { stop: Some(stop), thread: Some(thread) })
}

/// None when something accepted the connection.
fn probe(host: &str, port: u16) -> Option<ErrorKind> {
    let addrs = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return Some(e.kind()),
    };
    let mut last = Some(ErrorKind::NotFound);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return None,
            Err(e) => last = Some(e.kind()),
        }
    }
    last
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_refusals_in_a_row_and_only_refusals_give_up() {
        let refused = Some(ErrorKind::ConnectionRefused);
        assert!(!gives_up(&[refused, refused]));
        assert!(gives_up(&[None, refused, refused, refused]));
        assert!(!gives_up(&[refused, refused, None, refused, refused]));
        assert!(!gives_up(&[Some(ErrorKind::TimedOut); 10]), "slow is not gone");
    }
}
