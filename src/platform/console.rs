//! What training prints: a progress bar on a terminal, plain lines otherwise
//! (`--quiet`, or stdout redirected to a file or a pipe).
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::io::IsTerminal;

pub struct Console {
    /// None once finished: later lines are plain.
    bar: RefCell<Option<ProgressBar>>,
}

impl Console {
    /// A bar over `total` epochs starting at `done`, unless `quiet` or stdout is
    /// not a terminal.
    pub fn new(total: usize, done: usize, quiet: bool) -> Console {
        if quiet || !std::io::stdout().is_terminal() {
            return Console::plain();
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] epoch {pos}/{len}  {msg}  (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        Console { bar: RefCell::new(Some(bar)) }
    }

    /// A console that only prints plain lines.
    pub fn plain() -> Console {
        Console { bar: RefCell::new(None) }
    }

    /// Whether it draws a progress bar (a terminal, not `--quiet`).
    pub fn has_bar(&self) -> bool {
        self.bar.borrow().is_some()
    }

    /// A line of output (above the bar when there is one).
    pub fn line(&self, s: &str) {
        match &*self.bar.borrow() {
            Some(bar) => bar.println(s),
            None => println!("{s}"),
        }
    }

    /// After each epoch: the bar shows perplexity and throughput.
    pub fn epoch(&self, epoch: usize, ppl: f64, tokens_per_s: f64) {
        if let Some(bar) = &*self.bar.borrow() {
            bar.set_position(epoch as u64);
            bar.set_message(format!("perplexity {ppl:.2}  {tokens_per_s:.0} tokens/s"));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
