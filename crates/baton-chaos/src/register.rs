//! The fenced resource: a register that accepts a write only if its fencing token is at least
//! the highest it has accepted, and records every decision.
//!
//! This is what DESIGN.md §6 means by "a resource that checks tokens": a leader that was paused
//! past its lease can still act when it resumes, and only such a resource stops its writes. The
//! register lives in the harness process, behind a Unix socket, so a paused or killed worker
//! can never hold it up for the others (a lock file would: a worker stopped while holding the
//! lock stops everyone).
//!
//! Protocol, one line each way per write: the worker sends `<token> <pid> <candidate>`, the
//! register answers `ok` or `stale <highest accepted>`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::records::{RegisterEntry, WriteOutcome};

#[derive(Debug, Default)]
struct State {
    highest: u64,
    entries: Vec<RegisterEntry>,
    last_accept: Option<RegisterEntry>,
}

/// The register's state, shared by its socket server and the harness.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<State>>);

impl Ledger {
    /// Decide a write of `token` at the current boot time and record the decision. Accepted iff
    /// `token` is at least the highest accepted so far (a leader writes many times per term).
    pub fn write(&self, token: u64, pid: u32, candidate: &str) -> RegisterEntry {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Read the clock under the lock: decisions are then in time order.
        let at = baton::boot_time();
        let accepted = token >= state.highest;
        let entry = RegisterEntry {
            at,
            token,
            pid,
            candidate: candidate.to_owned(),
            accepted,
            highest_before: state.highest,
        };
        if accepted {
            state.highest = token;
            state.last_accept = Some(entry.clone());
        }
        state.entries.push(entry.clone());
        entry
    }

    /// Every decision so far, in order.
    pub fn entries(&self) -> Vec<RegisterEntry> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .clone()
    }

    /// The most recent accepted write: who acts as leader right now, if it is recent.
    pub fn last_accept(&self) -> Option<RegisterEntry> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_accept
            .clone()
    }

    /// The writer whose accepted write is at most `fresh` old: the worker that leads now.
    pub fn active_writer(&self, fresh: Duration) -> Option<RegisterEntry> {
        let last = self.last_accept()?;
        (baton::boot_time().saturating_sub(last.at) <= fresh).then_some(last)
    }
}

/// The register's socket server.
#[derive(Debug)]
pub struct Register {
    ledger: Ledger,
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Register {
    /// Listen on a Unix socket at `path`. Must be called within a tokio runtime.
    pub fn start(path: &Path) -> io::Result<Register> {
        let listener = UnixListener::bind(path)?;
        let ledger = Ledger::default();
        let task = tokio::spawn(serve(listener, ledger.clone()));
        Ok(Register {
            ledger,
            path: path.to_owned(),
            task,
        })
    }

    /// The socket's path, for workers' `--register`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The register's decisions.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(listener: UnixListener, ledger: Ledger) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match parse_request(&line) {
                    Some((token, pid, candidate)) => {
                        let entry = ledger.write(token, pid, candidate);
                        if entry.accepted {
                            "ok\n".to_owned()
                        } else {
                            format!("stale {}\n", entry.highest_before)
                        }
                    }
                    None => "err malformed request\n".to_owned(),
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn parse_request(line: &str) -> Option<(u64, u32, &str)> {
    let mut fields = line.split(' ');
    let token = fields.next()?.parse().ok()?;
    let pid = fields.next()?.parse().ok()?;
    let candidate = fields.next()?;
    fields.next().is_none().then_some((token, pid, candidate))
}

/// A worker's connection to the register. Reconnects after an error.
#[derive(Debug)]
pub struct RegisterClient {
    path: PathBuf,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
}

impl RegisterClient {
    /// A client of the register at `path` (connects on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RegisterClient {
            path: path.into(),
            conn: None,
        }
    }

    /// Write `token`; the register's answer.
    pub fn write(&mut self, token: u64, pid: u32, candidate: &str) -> WriteOutcome {
        match self.try_write(token, pid, candidate) {
            Ok(outcome) => outcome,
            Err(_) => {
                self.conn = None;
                WriteOutcome::Failed
            }
        }
    }

    fn try_write(&mut self, token: u64, pid: u32, candidate: &str) -> io::Result<WriteOutcome> {
        if self.conn.is_none() {
            let stream = UnixStream::connect(&self.path)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let reader = BufReader::new(stream.try_clone()?);
            self.conn = Some((stream, reader));
        }
        let (stream, reader) = self.conn.as_mut().expect("connected above");
        stream.write_all(format!("{token} {pid} {candidate}\n").as_bytes())?;
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(if reply.starts_with("ok") {
            WriteOutcome::Accepted
        } else if reply.starts_with("stale") {
            WriteOutcome::Rejected
        } else {
            WriteOutcome::Failed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_rejects_tokens_below_the_highest_accepted() {
        let ledger = Ledger::default();
        assert!(ledger.write(5, 1, "a").accepted);
        assert!(
            ledger.write(5, 1, "a").accepted,
            "a leader writes many times per term"
        );
        assert!(ledger.write(7, 2, "b").accepted);
        let stale = ledger.write(5, 1, "a");
        assert!(!stale.accepted);
        assert_eq!(stale.highest_before, 7);
        assert_eq!(ledger.last_accept().unwrap().pid, 2);
        let entries = ledger.entries();
        assert_eq!(entries.len(), 4);
        assert!(entries.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn workers_write_through_the_socket() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("baton-chaos-register-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("register.sock");
        let register = {
            let _guard = rt.enter();
            Register::start(&path).unwrap()
        };
        // Drive the server on another thread while this one writes synchronously.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let mut client = RegisterClient::new(&path);
        assert_eq!(client.write(3, 10, "c0-0"), WriteOutcome::Accepted);
        assert_eq!(client.write(4, 11, "c1-0"), WriteOutcome::Accepted);
        assert_eq!(client.write(3, 10, "c0-0"), WriteOutcome::Rejected);
        assert_eq!(register.ledger().entries().len(), 3);
        stop.send(()).unwrap();
        driver.join().unwrap();
        drop(register);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
