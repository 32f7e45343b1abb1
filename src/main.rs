//! Thin entry point: parse, run, map errors to an exit code and one line.
use clap::Parser;
use grulm::error::{exit_code, one_line, EXIT_OK, EXIT_RUNTIME};

fn main() {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let first = msg.lines().next().unwrap_or_default().to_string();
        eprintln!("grulm: internal error: {first} (please report this)");
    }));
    let cli = grulm::cli::Cli::parse();
    let code = match std::panic::catch_unwind(|| grulm::cli::run(cli)) {
        Ok(Ok(())) => EXIT_OK,
        Ok(Err(err)) => {
            eprintln!("grulm: error: {}", one_line(&err));
            exit_code(&err)
        }
        Err(_) => EXIT_RUNTIME,
    };
    std::process::exit(code);
}
