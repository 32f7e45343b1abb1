//! `GRULM_TEST_PAUSE`: training holds still at a named point, so that a test
//! can signal or kill it at that exact point whatever the machine's speed (a
//! sleep before the signal lands in another epoch on a faster machine).
//! Outside the tests the variable is unset and each hook is one load.
//!
//! `GRULM_TEST_PAUSE=WHERE` or `WHERE/N`, WHERE one of
//! - `step:E:M`: once minibatch M of epoch E (both 1-based) is trained, before
//!   the trainer looks for a signal; a signal then stops training there, with
//!   "at epoch E, minibatch M";
//! - `write:FILE:K`: in this process's K-th atomic write of a file named FILE
//!   (`checkpoint.safetensors`, say), once its temporary file is complete and
//!   synced, before the rename over FILE: a kill there leaves both.
//!
//! At that point the process writes [`MARKER`] (holding WHERE) into the run
//! directory, then waits until it has received N signals (SIGINT or SIGTERM;
//! N = 1 unless given) and goes on; a second signal ends the process as ever,
//! so `/2` holds it until both of two signals sent at once have arrived. A run
//! directory that holds the marker never pauses again: the resumed run (or a
//! requeued Slurm task, which inherits the environment) goes through. A pause
//! no signal ends goes on after [`MAX_WAIT`].
use crate::usage;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const VAR: &str = "GRULM_TEST_PAUSE";
/// Written into the run directory on pausing.
pub const MARKER: &str = ".test-paused";
/// The longest pause: a test that died must not leave grulm waiting forever.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Where {
    Step { epoch: usize, minibatch: i64 },
    Write { file: String, nth: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    at: Where,
    text: String,
    signals: usize,
}

fn parse(text: &str) -> Option<Spec> {
    let (shown, signals) = match text.split_once('/') {
        Some((a, n)) => (a, n.parse().ok().filter(|&n| n >= 1)?),
        None => (text, 1),
    };
    let parts: Vec<&str> = shown.split(':').collect();
    let at = match parts[..] {
        ["step", e, m] => Where::Step { epoch: e.parse().ok().filter(|&e| e >= 1)?, minibatch: m.parse().ok().filter(|&m| m >= 1)? },
        ["write", f, k] if !f.is_empty() => Where::Write { file: f.to_string(), nth: k.parse().ok().filter(|&k| k >= 1)? },
        _ => return None,
    };
    Some(Spec { at, text: shown.to_string(), signals })
}

fn read() -> std::result::Result<Option<Spec>, String> {
    match std::env::var(VAR) {
        Err(_) => Ok(None),
        Ok(v) => parse(&v).map(Some).ok_or(v),
    }
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| read().unwrap_or(None)).as_ref()
}

/// A bad `GRULM_TEST_PAUSE` as a usage error (`train` checks it first).
pub fn check() -> Result<()> {
    read()
        .map(|_| ())
        .map_err(|v| usage!("{VAR}={v:?}: expected step:E:M or write:FILE:K, optionally followed by /N (signals to wait for)"))
}

/// The minibatch (1-based) of epoch `epoch` after which training pauses, in
/// run directory `dir`.
pub(crate) struct StepPause {
    pub minibatch: i64,
    dir: PathBuf,
    spec: &'static Spec,
}

impl StepPause {
    /// The pause in epoch `epoch` (1-based) of the run in `dir`, if one is due.
    pub(crate) fn in_epoch(dir: &Path, epoch: usize) -> Option<StepPause> {
        match spec() {
            Some(spec @ Spec { at: Where::Step { epoch: e, minibatch }, .. }) if *e == epoch && !dir.join(MARKER).exists() => {
                Some(StepPause { minibatch: *minibatch, dir: dir.to_path_buf(), spec })
            }
            _ => None,
        }
    }

    pub fn wait(&self) {
        pause(&self.dir, self.spec);
    }
}

/// In [`crate::platform::fsutil::write_atomic`] of `path`, between the synced temporary
/// file and the rename.
pub(crate) fn in_write(path: &Path) {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let Some(s @ Spec { at: Where::Write { file, nth }, .. }) = spec() else { return };
    if path.file_name().is_none_or(|n| n.to_string_lossy() != *file) {
        return;
    }
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if WRITES.fetch_add(1, Ordering::SeqCst) + 1 == *nth && !dir.join(MARKER).exists() {
        pause(&dir, s);
    }
}

fn pause(dir: &Path, s: &Spec) {
    let _ = std::fs::write(dir.join(MARKER), format!("{}\n", s.text));
    let t = Instant::now();
    while crate::platform::interrupt::received() < s.signals {
        if t.elapsed() > MAX_WAIT {
            eprintln!("grulm: {VAR}={}: no signal in {} s; going on", s.text, MAX_WAIT.as_secs());
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_points_and_refuses_the_rest() {
        let step = parse("step:2:500").unwrap();
        assert_eq!((step.at, step.signals, step.text.as_str()), (Where::Step { epoch: 2, minibatch: 500 }, 1, "step:2:500"));
        let write = parse("write:checkpoint.safetensors:3/2").unwrap();
        assert_eq!((write.at, write.signals), (Where::Write { file: "checkpoint.safetensors".into(), nth: 3 }, 2));
        for bad in ["", "step:0:1", "step:1:0", "step:1", "step:1:2:3", "write::1", "write:f:0", "step:1:1/0", "step:1:1/x", "pause"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
