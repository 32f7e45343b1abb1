//! Link libtorch so that CUDA cannot silently vanish.
//!
//! `torch-sys` links `torch_cpu`, `c10` and (when present) `torch_cuda`, but the
//! system linker runs with `--as-needed`: since grulm's code never references a
//! symbol of `libtorch_cuda.so` directly (CUDA kernels register themselves from
//! static initialisers), the linker drops that library from the binary, and then
//! `tch::Cuda::is_available()` is false even on a GPU box (pytorch/pytorch#36437,
//! tch-rs#291, #980). Link arguments printed by a *library's* build script do not
//! reach downstream binaries, so this crate needs its own `build.rs`.
//!
//! We therefore:
//! * pass `-Wl,--no-as-needed` before `-ltorch` / `-ltorch_cuda`, so they stay linked;
//! * embed an rpath to libtorch's `lib/` directory, so `target/release/grulm` runs
//!   without `LD_LIBRARY_PATH`. `torch-sys` (declared with `links = "tch"`) publishes
//!   that directory as `DEP_TCH_LIBTORCH_LIB`, but cargo passes it only to direct
//!   dependents: that is why `torch-sys` is a direct dependency in Cargo.toml.
//!
//! `rustc-link-arg` (not `-bins`) so that tests link the same way as the binary.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let lib_dir = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from);
    // The version `grulm info` reports: libtorch's own `build-version` file, or the
    // PyPI wheel's `torch/version.py` (`torch/lib/../version.py`).
    let version = lib_dir.as_ref().and_then(|d| libtorch_version(d)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GRULM_LIBTORCH_VERSION={version}");
    if let Some(dir) = &lib_dir {
        println!("cargo:rustc-env=GRULM_LIBTORCH_LIB={}", dir.display());
    }
    if os != "linux" && os != "windows" {
        return;
    }
    if let Some(dir) = &lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    let has_cuda = lib_dir.as_ref().map(|d| d.join("libtorch_cuda.so").exists() || d.join("torch_cuda.dll").exists()).unwrap_or(false);
    if has_cuda {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}

fn libtorch_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        return Some(v.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    let line = py.lines().find(|l| l.starts_with("__version__"))?;
    Some(line.split('=').nth(1)?.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}
