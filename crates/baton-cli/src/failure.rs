//! What the user sees when something is wrong: one line, `error: <problem and fix>`, exit 2.

use std::fmt;

/// A failure the user can fix (bad input, a store that cannot be opened or reached).
/// `main` prints it as one line on stderr and exits with code 2.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure(one_line(&message.into()))
    }

    /// Prefix the message with what was being done.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Failure(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<baton::Error> for Failure {
    fn from(e: baton::Error) -> Self {
        Failure::new(chain(&e))
    }
}

/// An error and its sources, joined with `: `, skipping sources the message already quotes.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Collapse line breaks, so that every failure stays one line on stderr.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
