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
//!
//! It also compiles `csrc/cuda_shim.cpp` (CUDA graphs, allocator statistics, TF32
//! switches: what tch does not expose) when libtorch has CUDA and the CUDA runtime
//! headers are found: `GRULM_CUDA_INCLUDE`, `$CUDA_HOME/include`,
//! `/usr/local/cuda/include`, or the PyPI wheel's `nvidia/cu13/include` (plus
//! `nvidia-cuda-crt`, which `scripts/setup-libtorch.sh` installs). A libtorch zip
//! from pytorch.org ships no CUDA headers; without them grulm builds and runs as
//! before, without CUDA graphs, and `grulm info` says why.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc/cuda_shim.cpp");
    for var in ["GRULM_CUDA_INCLUDE", "CUDA_HOME", "CUDA_PATH", "GRULM_NO_CUDA_SHIM"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(grulm_cuda_shim)");
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
    let shim = match (&lib_dir, has_cuda) {
        (Some(dir), true) => build_cuda_shim(dir),
        (_, false) => Err("this libtorch has no CUDA".to_string()),
        (None, _) => Err("libtorch's directory is unknown".to_string()),
    };
    match shim {
        Ok(()) => {
            println!("cargo:rustc-cfg=grulm_cuda_shim");
            println!("cargo:rustc-env=GRULM_CUDA_SHIM=built");
        }
        Err(why) => {
            println!("cargo:warning=grulm: CUDA shim not built ({why}); CUDA graphs and GPU memory statistics are off");
            println!("cargo:rustc-env=GRULM_CUDA_SHIM=not built: {why}");
        }
    }
}

/// The CUDA runtime headers' directory: it must hold `cuda_runtime_api.h` and
/// `crt/host_config.h` (the PyPI runtime wheel lacks the latter; the
/// `nvidia-cuda-crt` wheel adds it into the same directory).
fn cuda_include(lib_dir: &Path) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("GRULM_CUDA_INCLUDE") {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            candidates.push(PathBuf::from(p).join("include"));
        }
    }
    // torch/lib -> site-packages/nvidia/cu13/include (the PyPI wheel's CUDA).
    if let Some(site) = lib_dir.parent().and_then(Path::parent) {
        for cu in ["cu13", "cu12", "cuda_runtime"] {
            candidates.push(site.join("nvidia").join(cu).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    let complete = |d: &PathBuf| d.join("cuda_runtime_api.h").is_file() && d.join("crt/host_config.h").is_file();
    if let Some(d) = candidates.iter().find(|d| complete(d)) {
        return Ok(d.clone());
    }
    match candidates.iter().find(|d| d.join("cuda_runtime_api.h").is_file()) {
        Some(d) => Err(format!("{} has no crt/host_config.h; install nvidia-cuda-crt or set GRULM_CUDA_INCLUDE", d.display())),
        None => Err("no CUDA runtime headers found; set CUDA_HOME or GRULM_CUDA_INCLUDE".to_string()),
    }
}

fn build_cuda_shim(lib_dir: &Path) -> Result<(), String> {
    if std::env::var_os("GRULM_NO_CUDA_SHIM").is_some() {
        return Err("GRULM_NO_CUDA_SHIM is set".to_string());
    }
    let torch_include = lib_dir.parent().map(|r| r.join("include")).filter(|d| d.join("ATen/cuda/CUDAGraph.h").is_file());
    let torch_include = torch_include.ok_or_else(|| format!("no ATen/cuda/CUDAGraph.h under {}/../include", lib_dir.display()))?;
    let cuda = cuda_include(lib_dir)?;
    cc::Build::new()
        .cpp(true)
        .file("csrc/cuda_shim.cpp")
        .std("c++17")
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .include(&cuda)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag_if_supported("-Wno-interference-size")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .try_compile("grulm_cuda_shim")
        .map_err(|e| format!("compiling csrc/cuda_shim.cpp failed: {e}"))?;
    // After the static library, the libraries that define what it calls.
    for lib in ["torch_cuda", "c10_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    Ok(())
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
