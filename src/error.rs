//! The one error a user sees when wssify cannot start.
//!
//! Every startup failure is a single line that names the flag or file at
//! fault and says what to do about it, in the style of ripgrep's messages.
//! Per-connection failures never become one of these: they end up as the
//! close reason in that connection's log line.

use std::fmt;

/// A startup failure: one line, naming the flag or file and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupError {
    message: String,
}

impl StartupError {
    /// Wraps an already complete, user-facing sentence.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartupError {}
