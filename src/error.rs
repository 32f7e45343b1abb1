//! Two kinds of failure, told apart by the exit code.
//!
//! * [`UsageError`]: the user asked for something wrong (a bad config key or value,
//!   a malformed `--set`, a prefix with unknown characters, an existing run without
//!   `--resume`/`--force`). Exit code 2, as clap uses for bad arguments.
//! * Anything else (I/O, a corrupt checkpoint, a failed download, non-finite loss):
//!   a runtime failure. Exit code 1.
//!
//! Errors travel as `anyhow::Error`; a usage error is one whose chain holds a
//! `UsageError`, so context can be added freely on the way up.
use std::fmt;

pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `bail!`-like constructor for usage errors.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::UsageError(format!($($arg)*)))
    };
}

/// The exit code for an error: 2 for usage errors, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.downcast_ref::<UsageError>().is_some()) {
        EXIT_USAGE
    } else {
        EXIT_RUNTIME
    }
}

/// One line: the error and its context, joined by ": ", with newlines folded.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}
