//! Devices and the `grulm info` report.
use crate::platform::cpu::{cpu_kernels, CpuKernels};
use crate::usage;
use anyhow::Result;
use tch::Device;

/// `auto`/`cpu`/`cuda`/`cuda:N` -> validated; `None` for anything else.
pub(crate) fn parse_device_name(s: &str) -> Option<DeviceRequest> {
    match s {
        "auto" => Some(DeviceRequest::Auto),
        "cpu" => Some(DeviceRequest::Cpu),
        "cuda" => Some(DeviceRequest::Cuda(0)),
        _ => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()).map(DeviceRequest::Cuda),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

/// The libtorch grulm was built against (read by build.rs from libtorch's
/// `build-version` or the PyPI wheel's `torch/version.py`).
pub(crate) const LIBTORCH_VERSION: &str = env!("GRULM_LIBTORCH_VERSION");

/// Resolves `auto|cpu|cuda|cuda:N`. Asking for CUDA where there is none is an
/// error that says why: a CPU-only libtorch, or no GPU (or driver) found.
pub(crate) fn resolve(name: &str) -> Result<Device> {
    let req = parse_device_name(name).ok_or_else(|| usage!("device {name:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""))?;
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(Device::cuda_if_available()),
        DeviceRequest::Cuda(i) => {
            if !libtorch_has_cuda() {
                return Err(usage!(
                    "device {name:?}: this libtorch ({LIBTORCH_VERSION}) was built without CUDA; build grulm against a CUDA libtorch (LIBTORCH=/path/to/libtorch) or use --device cpu"
                ));
            }
            if !tch::Cuda::is_available() {
                return Err(usage!(
                    "device {name:?}: libtorch has CUDA, but no GPU was found (no device, or no NVIDIA driver); use --device cpu"
                ));
            }
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                return Err(usage!("device {name:?}: only {n} CUDA device(s) found (cuda:0 to cuda:{})", n - 1));
            }
            Ok(Device::Cuda(i))
        }
    }
}

pub(crate) fn describe(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Deterministic mode (`train.deterministic`), for CUDA where it matters (CPU
/// results are reproducible without it). tch exposes no
/// `torch.use_deterministic_algorithms`, so grulm avoids the non-deterministic
/// kernels itself: cuDNN is switched off here (the built-in model then runs
/// ATen's own RNN), the scratch model projects one-hot inputs with a matrix
/// product instead of a gather (`ModelConfig::build`'s `deterministic`), and
/// cuBLAS gets the fixed workspace it needs (`CUBLAS_WORKSPACE_CONFIG=:4096:8`,
/// unless set). Call it before the first CUDA work: cuBLAS reads the variable
/// when it creates its handle.
pub(crate) fn make_deterministic() {
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    tch::Cuda::set_user_enabled_cudnn(false);
    tch::Cuda::cudnn_set_benchmark(false);
}

/// Resident memory of the process now (VmRSS), MiB.
pub(crate) fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Peak resident memory of the process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Sets libtorch's CPU thread count (0: leave libtorch's default, one per core).
pub(crate) fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// What a user checks first on a new box.
pub(crate) fn info_report() -> String {
    let cuda = tch::Cuda::is_available();
    let mut s = String::new();
    s += &format!("grulm            {}\n", env!("CARGO_PKG_VERSION"));
    s += &format!("libtorch         {LIBTORCH_VERSION}\n");
    s += &format!(
        "libtorch lib     {}\n",
        loaded_libtorch_dir().unwrap_or_else(|| option_env!("GRULM_LIBTORCH_LIB").unwrap_or("unknown").into())
    );
    s += &format!("built with CUDA  {}\n", yes_no(libtorch_has_cuda()));
    s += &format!("CUDA available   {}\n", yes_no(cuda));
    s += &format!("CUDA devices     {}\n", if cuda { tch::Cuda::device_count() } else { 0 });
    s += &format!("cuDNN available  {}\n", yes_no(cuda && tch::Cuda::cudnn_is_available()));
    if cuda {
        for i in 0..tch::Cuda::device_count() as usize {
            s += &format!("GPU {i}            {}\n", crate::platform::cuda::gpu_description(i).unwrap_or_else(|| "unknown".into()));
        }
        let (driver, runtime, cudnn) = crate::platform::cuda::versions();
        let v = |x: Option<String>| x.unwrap_or_else(|| "unknown".into());
        s += &format!("CUDA driver      {} (runtime {}), cuDNN {}\n", v(driver), v(runtime), v(cudnn));
        if let Ok((cublas, cudnn)) = crate::platform::cuda::tf32() {
            s += &format!("TF32             cuBLAS {}, cuDNN {} (libtorch's defaults unless changed)\n", on_off(cublas), on_off(cudnn));
        }
    }
    s += &format!("CUDA shim        {} (CUDA graphs, GPU memory statistics)\n", crate::platform::cuda::shim_status());
    s += &format!("CPU threads      {}\n", tch::get_num_threads());
    let runs: Vec<&str> = CpuKernels::ALL.into_iter().filter(|k| k.available()).map(CpuKernels::name).collect();
    s += &format!("CPU kernels      {} (this CPU runs {})\n", cpu_kernels().name(), runs.join(", "));
    let bf16: Vec<&str> = crate::platform::cpu::Bf16Kernel::ALL.into_iter().filter(|k| k.available()).map(|k| k.name()).collect();
    s += &format!(
        "bf16 products    {} (train.precision = \"bf16\"; this CPU runs {})\n",
        crate::platform::cpu::bf16_kernel().name(),
        bf16.join(", ")
    );
    s += &format!("default device   {}\n", describe(Device::cuda_if_available()));
    s
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The directory of the libtorch this process loaded (LD_LIBRARY_PATH or the
/// rpath decide which), from /proc/self/maps; None where that is unreadable.
fn loaded_libtorch_dir() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    Some(std::path::Path::new(path).parent()?.display().to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Whether this libtorch carries CUDA (libtorch_cuda loaded), GPU or not.
/// `at::hasCUDA()` is false without a GPU, so ask for the CUDA runtime hooks,
/// which only libtorch_cuda registers.
pub fn libtorch_has_cuda() -> bool {
    tch::utils::has_cudart()
}
