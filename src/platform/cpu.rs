//! The CPU's vector instruction sets, and which of them the CPU engine's
//! kernels (`model::cpu`) are compiled for: chosen at run time, the widest the
//! CPU has unless a benchmark or a test asks for another.
/// The instruction sets the CPU engine's row jobs are compiled for, chosen at
/// run time by what the CPU has: the widest by default. Every choice computes
/// the same numbers bit for bit (each product element sums in the same order,
/// with one rounding per FMA; only the vector width and the register block differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    /// As built (x86-64's SSE2 baseline, or another architecture's).
    Portable,
    /// AVX2 and FMA: 16 vector registers of 256 bits.
    Avx2,
    /// AVX-512 (F, VL): 32 registers of 512 bits, so a twice taller register block.
    Avx512,
}

impl CpuKernels {
    /// Every set, narrowest first.
    pub const ALL: [CpuKernels; 3] = [CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            CpuKernels::Portable => "portable",
            CpuKernels::Avx2 => "avx2",
            CpuKernels::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run them.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                CpuKernels::Portable => true,
                CpuKernels::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                CpuKernels::Avx512 => {
                    CpuKernels::Avx2.available() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == CpuKernels::Portable
        }
    }
}

/// The kernels in use: 0 until first asked, then 1 + the `CpuKernels` index.
static KERNELS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The kernels the engine runs: the widest this CPU has, unless
/// [`set_cpu_kernels`] chose others.
pub fn cpu_kernels() -> CpuKernels {
    use std::sync::atomic::Ordering;
    match KERNELS.load(Ordering::Relaxed) {
        0 => {
            let best = CpuKernels::ALL.into_iter().rev().find(|k| k.available()).unwrap_or(CpuKernels::Portable);
            KERNELS.store(1 + best as u8, Ordering::Relaxed);
            best
        }
        n => CpuKernels::ALL[(n - 1) as usize],
    }
}

/// Chooses the engine's kernels (for tests and benchmarks); refused where
/// the CPU lacks them.
pub fn set_cpu_kernels(k: CpuKernels) -> Result<(), String> {
    if !k.available() {
        return Err(format!("this CPU cannot run the {} kernels", k.name()));
    }
    KERNELS.store(1 + k as u8, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Makes the calling thread flush subnormal floating-point results to zero and
/// read subnormal inputs as zero (x86-64's MXCSR FTZ and DAZ bits; PyTorch's
/// `torch.set_flush_denormal(True)`). Arithmetic on subnormals (below 1.2e-38
/// in f32) takes a microcode path about a hundred times slower; gradients that
/// decay through many saturated gates reach that range (the minGRU's carry,
/// multiplied by `1 − Z` at every step, does within a few dozen steps), and
/// Adam's second moments of such gradients stay there. Values that small add
/// nothing a training step can see. Elsewhere, nothing to do.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        // SAFETY: reads and writes this thread's SSE control register, changing
        // only how subnormals are treated (SSE2 is x86-64's baseline).
        #[allow(deprecated)] // std has no other way to reach MXCSR
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            let csr = _mm_getcsr();
            if csr & (FTZ | DAZ) != FTZ | DAZ {
                _mm_setcsr(csr | FTZ | DAZ);
            }
        }
    }
}
