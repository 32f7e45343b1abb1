//! The CPU's vector instruction sets, and which of them the CPU engine's
//! kernels (`model::cpu`) are compiled for: chosen at run time, the widest the
//! CPU has unless a benchmark or a test asks for another; likewise the kernel
//! of its bf16 products (`train.precision = "bf16"`: AMX, AVX512_BF16, or f32
//! arithmetic on the rounded values).
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

/// How the bf16 products are computed: the widest this CPU runs by default
/// ([`bf16_kernel`]), each the same products up to f32's rounding of the sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// f32 FMAs on the rounded values (any CPU; slower than f32).
    Emulated,
    /// AVX512_BF16's `vdpbf16ps`: 16 lanes of two bf16 products each.
    Dot,
    /// AMX's `tdpbf16ps` (Intel since Sapphire Rapids): a 16×32 by 32×16 tile
    /// product per instruction; a last panel short of 16 columns goes to `Dot`.
    Amx,
}

impl Bf16Kernel {
    /// Every kernel, narrowest first.
    pub const ALL: [Bf16Kernel; 3] = [Bf16Kernel::Emulated, Bf16Kernel::Dot, Bf16Kernel::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Emulated => "f32-emulated",
            Bf16Kernel::Dot => "avx512_bf16",
            Bf16Kernel::Amx => "amx_bf16",
        }
    }

    /// Whether this CPU (and, for AMX, the kernel's permission) lets it run,
    /// with the AVX-512 kernels chosen for the instructions that need them.
    pub fn available(self) -> bool {
        let wide = cpu_kernels() == CpuKernels::Avx512;
        match self {
            Bf16Kernel::Emulated => true,
            Bf16Kernel::Dot => wide && cpu_has(Bf16Kernel::Dot),
            Bf16Kernel::Amx => wide && cpu_has(Bf16Kernel::Dot) && cpu_has(Bf16Kernel::Amx),
        }
    }
}

/// Whether the CPU has the instructions of `k` (AMX: and Linux grants this
/// process the tile state), whatever kernels are chosen.
pub fn cpu_has(k: Bf16Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match k {
            Bf16Kernel::Emulated => true,
            Bf16Kernel::Dot => CpuKernels::Avx512.available() && is_x86_feature_detected!("avx512bf16"),
            Bf16Kernel::Amx => amx_permitted(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        k == Bf16Kernel::Emulated
    }
}

/// The bf16 kernel in use: 0 until chosen, then 1 + its index in `ALL`.
static KERNEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The bf16 kernel the engine runs: the one [`set_bf16_kernel`] chose if it
/// is still available (the CPU kernels may have changed since), else the widest.
pub fn bf16_kernel() -> Bf16Kernel {
    use std::sync::atomic::Ordering;
    match KERNEL.load(Ordering::Relaxed) {
        0 => {}
        n if Bf16Kernel::ALL[(n - 1) as usize].available() => return Bf16Kernel::ALL[(n - 1) as usize],
        _ => {}
    }
    Bf16Kernel::ALL.into_iter().rev().find(|k| k.available()).unwrap_or(Bf16Kernel::Emulated)
}

/// Chooses the bf16 kernel (tests, benchmarks); refused where it cannot run.
pub fn set_bf16_kernel(k: Bf16Kernel) -> Result<(), String> {
    if !k.available() {
        return Err(format!("this CPU (with the {} kernels) cannot run the {} bf16 kernel", cpu_kernels().name(), k.name()));
    }
    KERNEL.store(1 + k as u8, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Whether the CPU has AMX-TILE and AMX-BF16 and Linux lets this process
/// use the tile data (asked once).
#[cfg(target_arch = "x86_64")]
fn amx_permitted() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes which state the
        // kernel lets this process use.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    })
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
