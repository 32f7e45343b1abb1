//! Clean interruption of training: SIGINT (Ctrl-C) or SIGTERM (a cluster's
//! preemption) asks training to stop after the current minibatch, write a
//! checkpoint it can resume from exactly, and exit 130 or 143. A second signal
//! exits at once: every file grulm writes is replaced atomically, so an exit at
//! any moment leaves the last checkpoint whole (a stray temporary file is
//! removed by the next `--resume`).
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Signals received so far (for [`crate::platform::test_pause`]).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
    if let Err(first) = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst) {
        // The second: only async-signal-safe calls here (write, _exit). The exit
        // code is the first signal's, which asked for the stop.
        let msg = b"\ngrulm: second signal: exiting now; the last checkpoint is intact\n";
        // SAFETY: write and _exit are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + first);
        }
    }
}

/// Routes SIGINT and SIGTERM to [`requested`] (for the rest of the process).
pub(crate) fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches an atomic (or exits).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The signal that asked training to stop, if any.
pub(crate) fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// How many SIGINTs and SIGTERMs this process has received.
pub(crate) fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
