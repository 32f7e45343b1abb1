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
//!
//! libtorch's messages end in dozens of lines of C++ frames. A failure shows
//! only its first line, after what grulm was doing ([`libtorch`]);
//! `GRULM_DEBUG=1` shows them whole, for a bug report.
use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

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

/// The exit code for an error: 2 for usage errors, 128 + the signal for a run
/// a signal stopped, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(i) = err.chain().find_map(|e| e.downcast_ref::<Interrupted>()) {
        i.exit_code()
    } else if err.chain().any(|e| e.downcast_ref::<UsageError>().is_some()) {
        EXIT_USAGE
    } else {
        EXIT_RUNTIME
    }
}

/// One line: the error and its context, joined by ": ", with newlines folded;
/// a libtorch message cut to its first line (unless `GRULM_DEBUG=1`).
pub fn one_line(err: &anyhow::Error) -> String {
    if debug() {
        return format!("{err:#}");
    }
    let parts: Vec<String> = err
        .chain()
        .map(|e| match e.downcast_ref::<tch::TchError>() {
            Some(tch::TchError::Torch(m)) => format!("libtorch: {}", first_line(m)),
            _ => e.to_string(),
        })
        .collect();
    parts.join(": ").replace('\n', " ")
}

/// `GRULM_DEBUG=1`: libtorch's messages whole, C++ frames included.
pub fn debug() -> bool {
    std::env::var("GRULM_DEBUG").is_ok_and(|v| v == "1")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default().trim_end()
}

/// A libtorch call failed (out of memory, most often) while grulm was `doing`.
#[derive(Debug)]
pub(crate) struct TorchFailure {
    pub doing: String,
    /// libtorch's whole message, C++ frames included.
    pub message: String,
}

impl fmt::Display for TorchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = if debug() { self.message.as_str() } else { first_line(&self.message) };
        write!(f, "{}: libtorch: {m}", self.doing)
    }
}

impl std::error::Error for TorchFailure {}

thread_local! {
    /// Inside [`libtorch`]: the panic hook stays quiet about libtorch failures.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which calls libtorch through tch's infallible API (it panics with
/// the `TchError`). A libtorch failure becomes a [`TorchFailure`] naming what
/// grulm was `doing`; any other panic is a bug and goes on unwinding. One
/// wrapper, rather than tch's `f_` twin of every call on the paths whose sizes
/// a user sets (model, optimiser state, every training step, validation,
/// sampling). The closure `doing` runs only on failure.
pub fn libtorch<T>(doing: impl FnOnce() -> String, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let outer = GUARDED.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.set(outer);
    result.or_else(|payload| match torch_message(&panic_text(payload.as_ref())) {
        Some(message) => Err(anyhow::Error::new(TorchFailure { doing: doing(), message })),
        None => resume_unwind(payload),
    })
}

/// The first line of libtorch's message in a panic's text, if it is a libtorch failure.
pub fn torch_first_line(panic_text: &str) -> Option<String> {
    torch_message(panic_text).map(|m| first_line(&m).to_string())
}

/// Whether the panic hook should stay quiet: a libtorch failure that a
/// [`libtorch`] guard turns into an error line of its own.
pub fn is_guarded_torch_failure(panic_text: &str) -> bool {
    GUARDED.get() && torch_message(panic_text).is_some()
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// libtorch's message inside tch's panic text,
/// ``called `Result::unwrap()` on an `Err` value: Torch("...")``, unescaped.
fn torch_message(panic_text: &str) -> Option<String> {
    let start = panic_text.find("Torch(\"")? + "Torch(\"".len();
    let mut out = String::new();
    let mut chars = panic_text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// Training stopped on a signal, after writing its checkpoint. Its exit code
/// is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
/// reports a process the signal ended.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub message: String,
}

impl Interrupted {
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}
