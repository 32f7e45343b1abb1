//! What grulm needs from CUDA beyond tch 0.24: CUDA graphs for the training
//! step, a side stream to capture them on, the caching allocator's statistics,
//! the TF32 switches, and the GPU's name for `grulm info`.
//!
//! Graphs, streams, statistics and TF32 go through `csrc/cuda_shim.cpp`, which
//! build.rs compiles when libtorch has CUDA and the CUDA headers are found
//! ([`shim_status`] says whether it did). The GPU's name and the versions come
//! from the driver and runtime libraries that libtorch has already loaded
//! (dlsym, no link-time dependency).
use anyhow::{bail, Result};
use tch::Device;

/// `built`, or `not built: <why>` (set by build.rs).
pub(crate) fn shim_status() -> &'static str {
    env!("GRULM_CUDA_SHIM")
}

pub(crate) fn shim_built() -> bool {
    cfg!(grulm_cuda_shim)
}

fn device_index(dev: Device) -> Result<i32> {
    match dev {
        Device::Cuda(i) => Ok(i as i32),
        other => bail!("{other:?} is not a CUDA device"),
    }
}

#[cfg(grulm_cuda_shim)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub(crate) fn grulm_cuda_last_error() -> *const c_char;
        pub(crate) fn grulm_stream_enter(device: c_int, out: *mut *mut c_void) -> c_int;
        pub(crate) fn grulm_stream_exit(s: *mut c_void) -> c_int;
        pub(crate) fn grulm_graph_new(device: c_int, out: *mut *mut c_void) -> c_int;
        pub(crate) fn grulm_graph_capture_begin(g: *mut c_void) -> c_int;
        pub(crate) fn grulm_graph_capture_end(g: *mut c_void) -> c_int;
        pub(crate) fn grulm_graph_abort(g: *mut c_void);
        pub(crate) fn grulm_graph_replay(g: *mut c_void) -> c_int;
        pub(crate) fn grulm_graph_node_count(g: *mut c_void, out: *mut usize) -> c_int;
        pub(crate) fn grulm_graph_free(g: *mut c_void);
        pub(crate) fn grulm_cuda_memory(device: c_int, out: *mut i64) -> c_int;
        pub(crate) fn grulm_cuda_reset_peak(device: c_int) -> c_int;
        pub(crate) fn grulm_tf32_get(cublas: *mut c_int, cudnn: *mut c_int) -> c_int;
        pub(crate) fn grulm_tf32_set(cublas: c_int, cudnn: c_int) -> c_int;
    }

    /// Turns a shim return code into a Result with libtorch's first line.
    pub fn check(rc: c_int, what: &str) -> anyhow::Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated string.
        let msg = unsafe { std::ffi::CStr::from_ptr(grulm_cuda_last_error()) }.to_string_lossy().into_owned();
        anyhow::bail!("{what}: {msg}")
    }
}

#[cfg(not(grulm_cuda_shim))]
fn no_shim<T>() -> Result<T> {
    bail!("grulm was built without its CUDA shim ({})", shim_status())
}

/// A stream from libtorch's pool, current for this thread while it lives: every
/// libtorch op then runs on it. CUDA graphs can only be captured off the default
/// stream, and warming up on the stream that captures is what PyTorch advises
/// (cuBLAS and cuDNN keep per-stream workspaces). Entering and leaving
/// synchronise the device, so work queued on the previous stream is ordered
/// with the work on this one.
pub(crate) struct SideStream {
    #[cfg_attr(not(grulm_cuda_shim), allow(dead_code))]
    raw: *mut std::ffi::c_void,
    device: Device,
}

impl SideStream {
    pub(crate) fn enter(device: Device) -> Result<SideStream> {
        let index = device_index(device)?;
        #[cfg(grulm_cuda_shim)]
        {
            tch::Cuda::synchronize(index as i64);
            let mut raw = std::ptr::null_mut();
            // SAFETY: raw is written by the shim on success.
            ffi::check(unsafe { ffi::grulm_stream_enter(index, &mut raw) }, "entering a CUDA side stream")?;
            Ok(SideStream { raw, device })
        }
        #[cfg(not(grulm_cuda_shim))]
        {
            let _ = index;
            no_shim()
        }
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        #[cfg(grulm_cuda_shim)]
        // SAFETY: raw came from grulm_stream_enter and is released once.
        unsafe {
            let _ = ffi::grulm_stream_exit(self.raw);
        }
    }
}

/// One captured CUDA graph (`at::cuda::CUDAGraph`) with its private memory pool.
pub(crate) struct Graph {
    #[cfg_attr(not(grulm_cuda_shim), allow(dead_code))]
    raw: *mut std::ffi::c_void,
}

impl Graph {
    /// Captures what `body` queues on the current (side) stream. Nothing runs
    /// during the capture; [`Graph::replay`] runs it. If `body` fails or panics
    /// (an op that cannot be captured: a host read, a pageable copy), the capture
    /// is abandoned, the stream and allocator are put back, and the error says
    /// what went wrong; the caller may then go on without a graph.
    pub(crate) fn capture<T>(device: Device, body: impl FnOnce() -> Result<T>) -> Result<(Graph, T)> {
        let index = device_index(device)?;
        #[cfg(grulm_cuda_shim)]
        {
            let mut raw = std::ptr::null_mut();
            // SAFETY: raw is written by the shim on success.
            ffi::check(unsafe { ffi::grulm_graph_new(index, &mut raw) }, "creating a CUDA graph")?;
            let graph = Graph { raw };
            // SAFETY: a graph from grulm_graph_new.
            ffi::check(unsafe { ffi::grulm_graph_capture_begin(graph.raw) }, "beginning a CUDA graph capture")?;
            // tch panics on a libtorch error; during the capture that is an
            // expected outcome, not a bug, so the panic hook stays quiet.
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            std::panic::set_hook(hook);
            let out = match out {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    // SAFETY: the graph is capturing; abort ends it.
                    unsafe { ffi::grulm_graph_abort(graph.raw) };
                    return Err(e);
                }
                Err(panic) => {
                    // SAFETY: as above.
                    unsafe { ffi::grulm_graph_abort(graph.raw) };
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    bail!("{}", msg.lines().next().unwrap_or_default());
                }
            };
            // SAFETY: the graph is capturing.
            ffi::check(unsafe { ffi::grulm_graph_capture_end(graph.raw) }, "ending a CUDA graph capture")?;
            Ok((graph, out))
        }
        #[cfg(not(grulm_cuda_shim))]
        {
            let _ = (index, body);
            no_shim()
        }
    }

    /// Queues the captured work on the current stream.
    pub(crate) fn replay(&self) -> Result<()> {
        #[cfg(grulm_cuda_shim)]
        // SAFETY: a captured graph.
        return ffi::check(unsafe { ffi::grulm_graph_replay(self.raw) }, "replaying a CUDA graph");
        #[cfg(not(grulm_cuda_shim))]
        no_shim()
    }

    /// Nodes in the captured graph: the kernels, copies and memsets one replay
    /// launches (what the step would launch one by one without the graph).
    pub(crate) fn node_count(&self) -> Option<usize> {
        #[cfg(grulm_cuda_shim)]
        {
            let mut n = 0usize;
            // SAFETY: a captured graph; the shim writes n.
            let rc = unsafe { ffi::grulm_graph_node_count(self.raw, &mut n) };
            (rc == 0 && n > 0).then_some(n)
        }
        #[cfg(not(grulm_cuda_shim))]
        None
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        #[cfg(grulm_cuda_shim)]
        // SAFETY: raw came from grulm_graph_new and is released once.
        unsafe {
            ffi::grulm_graph_free(self.raw)
        }
    }
}

/// The caching allocator's figures for a device, in bytes: what
/// `torch.cuda.memory_allocated` and `max_memory_allocated` report. (The shim
/// also reads `memory_reserved` and its peak; nothing uses them yet.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryStats {
    pub allocated: i64,
    pub allocated_peak: i64,
}

pub(crate) fn memory_stats(device: Device) -> Result<MemoryStats> {
    let index = device_index(device)?;
    #[cfg(grulm_cuda_shim)]
    {
        let mut v = [0i64; 4];
        // SAFETY: the shim writes four values.
        ffi::check(unsafe { ffi::grulm_cuda_memory(index, v.as_mut_ptr()) }, "reading CUDA memory statistics")?;
        Ok(MemoryStats { allocated: v[0], allocated_peak: v[1] })
    }
    #[cfg(not(grulm_cuda_shim))]
    {
        let _ = index;
        no_shim()
    }
}

pub(crate) fn reset_peak_memory(device: Device) -> Result<()> {
    let index = device_index(device)?;
    #[cfg(grulm_cuda_shim)]
    // SAFETY: plain call.
    return ffi::check(unsafe { ffi::grulm_cuda_reset_peak(index) }, "resetting CUDA memory statistics");
    #[cfg(not(grulm_cuda_shim))]
    {
        let _ = index;
        no_shim()
    }
}

/// Whether float32 matrix products may use TF32: (cuBLAS, cuDNN). libtorch's
/// defaults are (false, true), as PyTorch's `torch.backends.cuda.matmul.allow_tf32`
/// and `torch.backends.cudnn.allow_tf32`.
pub(crate) fn tf32() -> Result<(bool, bool)> {
    #[cfg(grulm_cuda_shim)]
    {
        let (mut a, mut b) = (0, 0);
        // SAFETY: the shim writes both.
        ffi::check(unsafe { ffi::grulm_tf32_get(&mut a, &mut b) }, "reading the TF32 settings")?;
        Ok((a != 0, b != 0))
    }
    #[cfg(not(grulm_cuda_shim))]
    no_shim()
}

pub(crate) fn set_tf32(cublas: bool, cudnn: bool) -> Result<()> {
    #[cfg(grulm_cuda_shim)]
    // SAFETY: plain call.
    return ffi::check(unsafe { ffi::grulm_tf32_set(cublas as i32, cudnn as i32) }, "setting TF32");
    #[cfg(not(grulm_cuda_shim))]
    {
        let _ = (cublas, cudnn);
        no_shim()
    }
}

/// Looks a symbol up among the libraries already loaded (libtorch_cuda loads the
/// CUDA runtime, cuDNN and, through them, the driver).
fn loaded_symbol(libs: &[&std::ffi::CStr], name: &std::ffi::CStr) -> Option<*mut std::ffi::c_void> {
    for lib in libs {
        // SAFETY: dlopen with RTLD_NOLOAD only finds an already loaded library;
        // dlsym reads its symbol table.
        unsafe {
            let h = libc::dlopen(lib.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if h.is_null() {
                continue;
            }
            let f = libc::dlsym(h, name.as_ptr());
            if !f.is_null() {
                return Some(f);
            }
        }
    }
    // A libtorch zip renames its bundled libraries (libcudart-<hash>.so.13):
    // search everything loaded.
    // SAFETY: as above, RTLD_DEFAULT is the global scope.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// (free, total) device memory in bytes, from the CUDA runtime (`cudaMemGetInfo`
/// on the current device).
pub(crate) fn mem_get_info() -> Option<(usize, usize)> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let f = loaded_symbol(&[c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"], c"cudaMemGetInfo")?;
    // SAFETY: the documented signature cudaError_t cudaMemGetInfo(size_t*, size_t*).
    let f: MemGetInfo = unsafe { std::mem::transmute(f) };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both pointers are valid.
    (unsafe { f(&mut free, &mut total) } == 0).then_some((free, total))
}

/// What `grulm info` says about one GPU: name, compute capability, memory.
pub(crate) fn gpu_description(index: usize) -> Option<String> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type GetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;
    type GetAttr = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    type TotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    let libs = [c"libcuda.so.1", c"libcuda.so"];
    // SAFETY: the CUDA driver API's stable C signatures (cuInit, cuDeviceGetName,
    // cuDeviceGetAttribute, cuDeviceTotalMem_v2); CUdevice is an int ordinal.
    unsafe {
        let init: Init = std::mem::transmute(loaded_symbol(&libs, c"cuInit")?);
        let name_of: GetName = std::mem::transmute(loaded_symbol(&libs, c"cuDeviceGetName")?);
        let attr: GetAttr = std::mem::transmute(loaded_symbol(&libs, c"cuDeviceGetAttribute")?);
        let total: TotalMem = std::mem::transmute(loaded_symbol(&libs, c"cuDeviceTotalMem_v2")?);
        if init(0) != 0 {
            return None;
        }
        let mut buf = [0 as std::ffi::c_char; 256];
        if name_of(buf.as_mut_ptr(), buf.len() as i32, index as i32) != 0 {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76, MULTIPROCESSOR_COUNT = 16.
        let (mut major, mut minor, mut sms) = (0, 0, 0);
        attr(&mut major, 75, index as i32);
        attr(&mut minor, 76, index as i32);
        attr(&mut sms, 16, index as i32);
        let mut bytes = 0usize;
        total(&mut bytes, index as i32);
        Some(format!("{name} (compute capability {major}.{minor}, {sms} SMs, {:.1} GiB)", bytes as f64 / (1u64 << 30) as f64))
    }
}

/// CUDA driver, CUDA runtime and cuDNN versions, as `13.0`, `13.0`, `9.19.0`.
pub(crate) fn versions() -> (Option<String>, Option<String>, Option<String>) {
    type Version = unsafe extern "C" fn(*mut i32) -> i32;
    type CudnnVersion = unsafe extern "C" fn() -> usize;
    let cuda = |v: i32| format!("{}.{}", v / 1000, (v % 1000) / 10);
    // SAFETY: cudaDriverGetVersion/cudaRuntimeGetVersion(int*) and size_t cudnnGetVersion().
    unsafe {
        let rt_libs = [c"libcudart.so.13", c"libcudart.so.12", c"libcudart.so"];
        let read = |name: &std::ffi::CStr| {
            let f: Version = std::mem::transmute(loaded_symbol(&rt_libs, name)?);
            let mut v = 0;
            (f(&mut v) == 0 && v > 0).then(|| cuda(v))
        };
        let driver = read(c"cudaDriverGetVersion");
        let runtime = read(c"cudaRuntimeGetVersion");
        let cudnn = loaded_symbol(&[c"libcudnn.so.9", c"libcudnn.so"], c"cudnnGetVersion").map(|f| {
            let f: CudnnVersion = std::mem::transmute(f);
            let v = f();
            format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
        });
        (driver, runtime, cudnn)
    }
}
