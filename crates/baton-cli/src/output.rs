//! What goes to stdout: styled text for people, JSON lines for scripts, and the event pump that
//! moves election events from a subscription to either.
//!
//! Human text goes through `anstream`, which drops the colours when stdout is not a terminal
//! (or `NO_COLOR` is set). JSON lines are written to the raw stdout and flushed one by one, so a
//! script reading a pipe sees each event as it happens.

use std::io::{self, Write};
use std::time::SystemTime;

use anstyle::{AnsiColor, Style};
use baton::{Event, Events};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub const HEADING: Style = Style::new().bold();
pub const GOOD: Style = AnsiColor::Green.on_default().bold();
pub const BAD: Style = AnsiColor::Yellow.on_default().bold();
pub const NOTE: Style = AnsiColor::Cyan.on_default();
pub const DIM: Style = Style::new().dimmed();

/// Print human text, in colour on a terminal only. Write errors are ignored: the text is for a
/// person, and a closed pipe must not stop the election.
pub fn say(text: impl AsRef<str>) {
    let mut out = anstream::stdout().lock();
    let _ = out.write_all(text.as_ref().as_bytes());
    let _ = out.flush();
}

/// A wall-clock timestamp (RFC 3339, UTC, milliseconds) for people, and the boot-clock reading
/// for programs that order or time events across processes on one machine.
pub fn stamp() -> (String, u64) {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let boot_ns = u64::try_from(baton::boot_time().as_nanos()).unwrap_or(u64::MAX);
    (ts, boot_ns)
}

/// One line of `campaign --json` / `watch --json`.
///
/// `boot_ns` is `CLOCK_BOOTTIME` when the CLI received the event, in nanoseconds: unlike `ts`
/// it cannot jump, and it is comparable between processes on one machine, which is what the
/// handoff benchmark and log-based checkers need.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    pub event: &'a str,
    pub candidate: Option<&'a str>,
    pub key: &'a str,
    pub token: Option<u64>,
    pub leader: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Option<&'a str>>,
    pub ts: String,
    pub boot_ns: u64,
}

/// A planned handoff under way, as `status --json` and `watch --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandoffView {
    /// `requested` (the holder was asked and has not answered yet) or `reserved` (it handed
    /// over; the key is free and kept for `to`).
    pub state: &'static str,
    /// The leader asked, or the one that handed over.
    pub from: String,
    /// The candidate asked for (`null`: any other).
    pub to: Option<String>,
    /// For `reserved`: how much longer the mark keeps the key, by the store's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl HandoffView {
    pub fn new(pending: &baton::PendingHandoff) -> Option<HandoffView> {
        Some(match pending {
            baton::PendingHandoff::Requested { holder, to } => HandoffView {
                state: "requested",
                from: holder.clone(),
                to: to.clone(),
                ttl_ms: None,
            },
            baton::PendingHandoff::Reserved(mark) => HandoffView {
                state: "reserved",
                from: mark.from.clone(),
                to: mark.to.clone(),
                ttl_ms: Some(u64::try_from(mark.ttl.as_millis()).unwrap_or(u64::MAX)),
            },
            _ => return None,
        })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let to = self.to.as_deref().unwrap_or("any other candidate");
        match self.ttl_ms {
            None => format!("{} was asked to hand over to {to}", self.from),
            Some(ms) => format!(
                "{} handed over; the key is kept for {to} for another {}",
                self.from,
                baton::fmt_duration(std::time::Duration::from_millis(ms))
            ),
        }
    }

    /// The same handoff, whatever its time left.
    pub fn same(&self, other: &HandoffView) -> bool {
        self.state == other.state && self.from == other.from && self.to == other.to
    }
}

/// Write one JSON value as a line on stdout and flush it.
pub fn json_line(value: &impl Serialize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Moves events from a subscription to a sink on its own task, so that printing never runs on
/// the election's path, and lets the caller wait until every event emitted so far is printed
/// ([`EventPump::flush`]): the demo uses that to print "LEADERSHIP ACQUIRED" before "Initial
/// election result", and every command to print the final events before exiting.
pub struct EventPump {
    flush: mpsc::Sender<oneshot::Sender<()>>,
    closed: CancellationToken,
}

impl EventPump {
    /// Start pumping. When the sink fails (stdout closed), the pump stops delivering and
    /// [`closed`](Self::closed) fires, so the command can leave the election.
    pub fn spawn<F>(mut events: Events, mut sink: F) -> Self
    where
        F: FnMut(Event) -> io::Result<()> + Send + 'static,
    {
        let (flush, mut requests) = mpsc::channel::<oneshot::Sender<()>>(4);
        let closed = CancellationToken::new();
        let on_close = closed.clone();
        let mut deliver = move |event: Event| {
            if !on_close.is_cancelled() && sink(event).is_err() {
                on_close.cancel();
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    request = requests.recv() => {
                        while let Some(event) = events.try_recv() {
                            deliver(event);
                        }
                        match request {
                            Some(ack) => { let _ = ack.send(()); }
                            None => return,
                        }
                    }
                    event = events.recv() => match event {
                        Some(event) => deliver(event),
                        None => return,
                    },
                }
            }
        });
        EventPump { flush, closed }
    }

    /// Wait until every event emitted before this call has gone to the sink.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.flush.send(ack).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Fires when the sink failed, e.g. because stdout was closed.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }
}

/// A leader's name for people: `(none)` when there is none, and a note when it is us.
pub fn leader_name(leader: Option<&str>, me: &str) -> String {
    match leader {
        None => "(none)".to_owned(),
        Some(l) if l == me => format!("{l} (this instance)"),
        Some(l) => l.to_owned(),
    }
}
