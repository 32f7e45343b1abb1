//! Thin entry point: parse, run, map errors to an exit code and one line.
use grulm::error::{exit_code, one_line, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// Keeps freed tensor memory for reuse instead of handing it back to the kernel.
///
/// glibc serves allocations above 32 MiB with a fresh `mmap` and unmaps them on
/// free, so every training step of a large model page-faults its activations in
/// again (1.5 million minor faults in a 20 s `grulm bench --shape large`; 0.2
/// million with this). Serving them from the heap and not trimming it keeps RSS at
/// the step's peak, as a caching allocator (or PyTorch's Python process) does.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE).
fn is_broken_pipe_panic(msg: &str) -> bool {
    msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe")
}

fn main() {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = grulm::error::panic_text(info.payload());
        if grulm::error::is_guarded_torch_failure(&msg) {
            return; // its guard turns it into the error line
        }
        if is_broken_pipe_panic(&msg) {
            return; // `grulm sample | head`: the reader is done, so are we
        }
        let first = match grulm::error::torch_first_line(&msg) {
            Some(torch) if grulm::error::debug() => format!("libtorch: {torch}\n{msg}"),
            Some(torch) => format!("libtorch: {torch}"),
            None => msg.lines().next().unwrap_or_default().to_string(),
        };
        eprintln!("grulm: internal error: {first} (please report this)");
    }));
    keep_freed_memory();
    let cli = match grulm::cli::parse() {
        Ok(cli) => cli,
        // --help and --version print as clap has them.
        Err(e) if !e.use_stderr() => e.exit(),
        // A usage mistake: clap's first line, not its whole usage block.
        Err(e) => {
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let first = first.join(" ");
            let first = first.trim_start_matches("error: ");
            let sub = std::env::args().nth(1).filter(|a| grulm::cli::command().find_subcommand(a).is_some());
            eprintln!("grulm: error: {first} (see grulm {}--help)", sub.map(|s| format!("{s} ")).unwrap_or_default());
            std::process::exit(EXIT_USAGE);
        }
    };
    let code = match std::panic::catch_unwind(|| grulm::cli::run(cli)) {
        Ok(Ok(())) => EXIT_OK,
        // A closed pipe on stdout ends quietly and successfully, as for Unix tools
        // whose reader (head, grep -m) has all it wants.
        Ok(Err(err)) if is_broken_pipe(&err) => EXIT_OK,
        // Stopped by a signal, as asked: not an error.
        Ok(Err(err)) if err.downcast_ref::<grulm::error::Interrupted>().is_some() => {
            eprintln!("grulm: {err}");
            exit_code(&err)
        }
        Ok(Err(err)) => {
            eprintln!("grulm: error: {}", one_line(&err));
            exit_code(&err)
        }
        Err(payload) if is_broken_pipe_panic(&grulm::error::panic_text(payload.as_ref())) => EXIT_OK,
        Err(_) => EXIT_RUNTIME,
    };
    std::process::exit(code);
}
