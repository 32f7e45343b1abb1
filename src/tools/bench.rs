//! `grulm bench`: tokens/s of training steps (forward, backward, clip, update),
//! median over repeats after a warm-up, and peak memory; optionally side by side
//! with the same step in Python PyTorch (`bench/pytorch_reference.py`).
use crate::config::OptimizerKind;
use crate::data::{self, Ids, SeqPartition};
use crate::model::{BuildOptions, CellKind, ModelConfig, ModelKind, Precision, ResetGate, ScratchPath};
use crate::platform::cpu::{cpu_kernels, set_bf16_kernel, set_cpu_kernels, Bf16Kernel, CpuKernels};
use crate::platform::device;
use crate::train;
use crate::train::memory::Estimate;
use crate::train::optim::Optimizer;
use crate::train::step::Stepper;
use crate::usage;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What `grulm bench` measures (the command line's `bench` flags, see
/// `cli/args.rs` for what each means).
pub(crate) struct Options {
    pub device: String,
    pub shapes: Vec<String>,
    pub models: Vec<String>,
    pub repeats: usize,
    pub rounds: usize,
    pub warmup: usize,
    pub steps: Option<usize>,
    pub threads: usize,
    pub json: bool,
    pub json_out: Option<PathBuf>,
    pub compare_python: Option<PathBuf>,
    pub cpu_kernels: Option<String>,
    /// `f32`, `bf16`: every model is timed in each.
    pub precision: Vec<String>,
    /// The bf16 rows' kernel (`Bf16Kernel::name`), if not the widest.
    pub bf16_kernel: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BenchResult {
    pub side: String,
    pub model: String,
    #[serde(rename = "B")]
    pub b: i64,
    #[serde(rename = "T")]
    pub t: i64,
    #[serde(rename = "H")]
    pub h: i64,
    #[serde(rename = "V")]
    pub v: i64,
    pub steps_per_repeat: usize,
    pub repeats: usize,
    /// Every timed repeat, in seconds.
    pub seconds: Vec<f64>,
    pub seconds_median: f64,
    pub tokens_per_s: f64,
    pub peak_mib: f64,
    pub peak_kind: String,
    #[serde(default)]
    pub threads: i64,
    /// How grulm ran the steps: `CUDA graph` or `eager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The CPU engine's kernels (`portable`, `avx2`, `avx512`), on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kernels: Option<String>,
    /// The step's products (`f32`, `bf16`: train.precision); Python's rows have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// With bf16, the engine's bf16 kernel (`amx_bf16`, `avx512_bf16`, `f32-emulated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_kernel: Option<String>,
    /// Kernels (graph nodes) of one training step, when it ran as a CUDA graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_nodes: Option<usize>,
    /// grulm's memory estimate for this step (`train::memory`), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_mib: Option<f64>,
    /// On CPU, the process's RSS before the model was built (libtorch and what
    /// earlier benchmarks left), MiB: the step used `peak_mib - baseline_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_mib: Option<f64>,
}

impl BenchResult {
    /// Measured memory of the step over the estimate.
    fn used_over_estimate(&self) -> Option<f64> {
        Some((self.peak_mib - self.baseline_mib.unwrap_or(0.0)) / self.estimate_mib?)
    }
}

/// (B, T, H, V, steps per repeat)
fn parse_shape(s: &str, steps: Option<usize>) -> Result<(i64, i64, i64, i64, usize)> {
    let (b, t, h, v) = match s {
        "d2l" => (32, 35, 256, 28),
        "large" => (128, 64, 1024, 28),
        "gpu" => (512, 128, 1024, 28),
        other => {
            let n: Vec<i64> = other.split(',').map(|x| x.trim().parse::<i64>()).collect::<Result<_, _>>().map_err(|_| bad_shape(other))?;
            match n[..] {
                [b, t, h, v] if b > 0 && t > 0 && h > 0 && v > 1 => (b, t, h, v),
                _ => return Err(bad_shape(other)),
            }
        }
    };
    let auto = if b * t * h <= 32 * 35 * 256 { 8 } else { 2 };
    Ok((b, t, h, v, steps.unwrap_or(auto)))
}

fn bad_shape(s: &str) -> anyhow::Error {
    usage!("--shape {s:?}: expected d2l, large, gpu or B,T,H,V (positive integers, V >= 2)")
}

/// FLOPs of one training step's matrix products (forward ×3 for forward +
/// backward) for a cell of `gates` gates with hidden weights (RNN 1, GRU 3, LSTM
/// 4; minGRU and minLSTM 0): per step and
/// layer, the hidden products `2·B·H·gates·H`, the output layer `2·B·H·V`.
/// Layer 0's input projection is a row gather in grulm's fast path and is not
/// counted (d2l's one-hot product spends `2·B·V·gates·H` on it).
pub(crate) fn step_flops(b: i64, t: i64, h: i64, v: i64, gates: i64) -> f64 {
    let per_step = 2.0 * (b * h * gates * h) as f64 + 2.0 * (b * h * v) as f64;
    3.0 * per_step * t as f64
}

/// The matrix products of one training step (those [`step_flops`] counts), as
/// `(times per step, m, k, n)` for `[m, k] × [k, n]`.
fn step_products(b: i64, t: i64, h: i64, v: i64, gates: i64) -> [(i64, i64, i64, i64); 6] {
    let g = gates * h;
    [
        (t, b, h, g),     // forward, each step: H_{t-1} [W_h ...]
        (t, b, g, h),     // backward, each step: dA [W_h ...]ᵀ
        (1, h, t * b, g), // hidden weights' gradient over all T·B rows: H_prevᵀ dA
        (1, t * b, h, v), // logits
        (1, h, t * b, v), // output weights' gradient
        (1, t * b, v, h), // gradient into the top layer's outputs
    ]
}

/// What a plain libtorch sgemm reaches at exactly the step's own products
/// ([`step_products`]): their FLOPs over the sum of their times, each product
/// timed alone (into a preallocated output, median of 7 runs of at least 2 ms).
/// The bench measures it once per round, after that round's grulm models.
/// `precision` bf16: libtorch's bf16 `mm` (oneDNN on the CPU) at the same products.
fn sgemm_at_step_gflops(dev: Device, (b, t, h, v): (i64, i64, i64, i64), gates: i64, precision: Precision) -> Result<f64> {
    let kind = match precision {
        Precision::F32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
    };
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (count, m, k, n) in step_products(b, t, h, v, gates).into_iter().filter(|&(_, m, k, n)| m * k * n > 0) {
        let (x, y) = (Tensor::randn([m, k], (kind, dev)), Tensor::randn([k, n], (kind, dev)));
        let out = Tensor::empty([m, n], (kind, dev));
        let f = 2.0 * (m * k * n) as f64;
        let reps = (2e-3 * 50e9 / f).ceil().max(1.0) as usize; // ~2 ms at 50 GFLOP/s
        let mut times = vec![];
        for i in 0..8 {
            let t0 = Instant::now();
            for _ in 0..reps {
                let _ = x.mm_out(&out, &y);
            }
            let _ = f64::try_from(out.get(0).get(0))?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64() / reps as f64);
            }
        }
        flops += count as f64 * f;
        seconds += count as f64 * median(&times);
    }
    Ok(flops / seconds / 1e9)
}

/// The gates with hidden weights of a bench model's cell: what its step's
/// products count ([`step_products`]; none for the minGRU and minLSTM, whose
/// only products are the input projection and the output layer's).
fn gates_of(name: &str) -> i64 {
    model_for(name, 1).map_or(0, |(m, ..)| hidden_gates(&m))
}

fn hidden_gates(m: &ModelConfig) -> i64 {
    m.cell.hidden_gate_count(m.gru_gates) as i64
}

/// The model's config, how it is built, and whether its steps may use a CUDA
/// graph (the `-eager` names say no).
fn model_for(name: &str, h: i64) -> Result<(ModelConfig, BuildOptions, bool)> {
    let cfg = |kind, cell, reset| ModelConfig { kind, cell, hidden_size: h as usize, reset_gate: reset, ..ModelConfig::default() };
    let gru = |kind, reset| cfg(kind, CellKind::Gru, Some(reset));
    let path = |p| BuildOptions { path: Some(p), ..BuildOptions::default() };
    let plain = BuildOptions::default();
    Ok(match name {
        "scratch" | "scratch-eager" => (gru(ModelKind::Scratch, ResetGate::Before), plain, name == "scratch"),
        "scratch-after" => (gru(ModelKind::Scratch, ResetGate::After), plain, true),
        "scratch-ops" => (gru(ModelKind::Scratch, ResetGate::Before), path(ScratchPath::BpttOps), true),
        "scratch-autograd" => (gru(ModelKind::Scratch, ResetGate::Before), path(ScratchPath::Fused), true),
        "scratch-ref" => (gru(ModelKind::Scratch, ResetGate::Before), path(ScratchPath::Reference), true),
        "builtin" | "builtin-eager" => (gru(ModelKind::Builtin, ResetGate::After), plain, name == "builtin"),
        "builtin-autograd" => (gru(ModelKind::Builtin, ResetGate::After), BuildOptions { libtorch_step: true, ..plain }, true),
        other => match other_cell(other) {
            Some((cell, kind)) => (cfg(kind, cell, None), plain, true),
            None => return Err(usage!("--models {other:?}: expected one of {}", models().join(", "))),
        },
    })
}

/// The other cells' rows: `lstm`, `rnn`, ..., and `lstm-builtin`, ... where
/// libtorch has the cell (the GRU's rows are the named variants above).
fn other_cells() -> impl Iterator<Item = (String, CellKind, ModelKind)> {
    CellKind::ALL.into_iter().filter(|c| !c.has_gru_options()).flat_map(|c| {
        let builtin = c.builtin().map(|_| (format!("{}-builtin", c.name()), c, ModelKind::Builtin));
        std::iter::once((c.name().to_string(), c, ModelKind::Scratch)).chain(builtin)
    })
}

fn other_cell(name: &str) -> Option<(CellKind, ModelKind)> {
    other_cells().find(|(n, ..)| n == name).map(|(_, c, k)| (c, k))
}

/// What `--models` takes (see [`model_for`]).
fn models() -> Vec<String> {
    GRU_MODELS.iter().map(|m| m.to_string()).chain(other_cells().map(|(n, ..)| n)).collect()
}

/// The GRU's `--models` (`scratch*` the chapter's cell, `builtin*` libtorch's);
/// the other cells' names follow ([`other_cells`]; no Python reference for those).
const GRU_MODELS: &[&str] = &[
    "scratch",
    "scratch-eager",
    "scratch-after",
    "scratch-ops",
    "scratch-autograd",
    "scratch-ref",
    "builtin",
    "builtin-eager",
    "builtin-autograd",
];

/// The Python reference's model for a grulm model name (d2l has two).
fn python_model(name: &str) -> Option<&'static str> {
    match name {
        "scratch" | "scratch-eager" => Some("scratch"),
        "builtin" | "builtin-eager" | "builtin-autograd" => Some("builtin"),
        _ => None,
    }
}

/// Resets the kernel's peak-RSS counter (VmHWM) for this process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn bench_one(
    name: &str,
    precision: Precision,
    shape: (i64, i64, i64, i64, usize),
    repeats: usize,
    warmup: usize,
    dev: Device,
) -> Result<BenchResult> {
    let (b, t, h, v, steps) = shape;
    tch::manual_seed(0);
    let memory = GpuMemory::start(dev);
    reset_peak_rss();
    let baseline = (!dev.is_cuda()).then(device::rss_mib);
    let (mcfg, build, graph) = model_for(name, h)?;
    let build = BuildOptions { precision, ..build };
    // A random corpus of exactly `steps` minibatches, on the device as the
    // trainer keeps one, cut the trainer's way (sequential, no offset).
    let len = steps * (b * t) as usize + 1;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<i64> = (0..len).map(|_| rng.gen_range(0..v)).collect();
    let ids = Ids::from_i64(v as usize, &ids);
    let mb = data::sequential_minibatches(len, b as usize, t as usize, 0);
    // The trainer's estimate for this step and these data.
    let estimate =
        Estimate::training(&mcfg, OptimizerKind::Sgd, precision, b as u64, t as u64, v as u64, (ids.bytes() + 8 * mb.starts.len()) as u64);
    let model = mcfg.build(v, dev, Kind::Float, build);
    let mut opt = Optimizer::new(OptimizerKind::Sgd, 1.0, model.named_parameters());
    let corpus = crate::data::TokenData::upload(&ids, t as usize, dev);
    let starts = corpus.starts(&mb);
    let mut stepper = Stepper::new(dev, graph, &opt);
    let mut times = Vec::with_capacity(repeats);
    let n = mb.n as i64;
    let plan = train::EpochPlan {
        partition: SeqPartition::Sequential,
        theta: 1.0,
        from: 0,
        to: n,
        before: 0,
        of: n,
        mask_seed: None,
        pause: None,
        progress: None,
    };
    // Warm-up repeats, and enough steps for a CUDA graph to be captured before timing.
    let warm = warmup.max(if graph && dev.is_cuda() { crate::train::step::WARMUP_STEPS.div_ceil(steps) + 1 } else { 0 });
    for i in 0..warm + repeats {
        let t0 = Instant::now();
        // The trainer's own epoch loop, over `steps` minibatches.
        let out = train::train_epoch(model.as_ref(), &mut opt, &mut stepper, &corpus, &starts, &plan)?;
        // One read at the end: waits for the device, and checks the numbers.
        let l = f64::try_from(out.losses.get(-1))?;
        if !l.is_finite() {
            bail!("{name}: loss became {l} during the benchmark");
        }
        if i >= warm {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    if let Some(note) = stepper.take_note() {
        eprintln!("grulm bench: {name}: {note}");
    }
    let step = stepper.describe().to_string();
    let graph_nodes = stepper.graph_nodes();
    drop(stepper);
    let median = median(&times);
    let (peak, kind) = match dev {
        Device::Cuda(_) => memory.peak_mib(),
        _ => (device::peak_rss_mib(), "peak RSS".to_string()),
    };
    Ok(BenchResult {
        side: "grulm".into(),
        model: name.into(),
        b,
        t,
        h,
        v,
        steps_per_repeat: steps,
        repeats,
        seconds: times,
        seconds_median: median,
        tokens_per_s: (steps as i64 * b * t) as f64 / median,
        peak_mib: peak,
        peak_kind: kind,
        threads: tch::get_num_threads() as i64,
        step: Some(step),
        device: Some(device::describe(dev)),
        cpu_kernels: (!dev.is_cuda()).then(|| cpu_kernels().name().to_string()),
        precision: Some(precision.name().to_string()),
        bf16_kernel: (precision == Precision::Bf16).then(|| crate::model::bf16_kernel().name().to_string()),
        graph_nodes,
        estimate_mib: Some(estimate.total() as f64 / (1u64 << 20) as f64),
        baseline_mib: baseline,
    })
}

/// Peak device memory of one benchmark: the caching allocator's peak of
/// allocated bytes (what PyTorch's `max_memory_allocated` reports) when grulm's
/// CUDA shim is built, else the device memory in use after minus before
/// (`cudaMemGetInfo`; the allocator keeps what it reserved, so that is its peak
/// reservation, cuBLAS and cuDNN workspaces included).
struct GpuMemory {
    dev: Device,
    used_before: f64,
    /// Bytes allocated when the benchmark began (none, unless an earlier one leaked).
    allocated_before: Option<i64>,
}

impl GpuMemory {
    fn start(dev: Device) -> GpuMemory {
        let allocated_before = match dev.is_cuda() && crate::platform::cuda::reset_peak_memory(dev).is_ok() {
            true => crate::platform::cuda::memory_stats(dev).ok().map(|m| m.allocated),
            false => None,
        };
        GpuMemory { dev, used_before: used_mib(dev), allocated_before }
    }

    fn peak_mib(&self) -> (f64, String) {
        if let Some(before) = self.allocated_before {
            if let Ok(m) = crate::platform::cuda::memory_stats(self.dev) {
                return ((m.allocated_peak - before) as f64 / (1u64 << 20) as f64, "cuda allocator peak (allocated)".into());
            }
        }
        (used_mib(self.dev) - self.used_before, "cuda memory reserved (cudaMemGetInfo)".into())
    }
}

/// Device memory in use (all processes), after the device is idle.
fn used_mib(dev: Device) -> f64 {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
        return crate::platform::cuda::mem_get_info().map(|(free, total)| (total - free) as f64 / (1u64 << 20) as f64).unwrap_or(f64::NAN);
    }
    0.0
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Merges the rounds of one side: all repeats pooled, the largest peak.
fn merge(rounds: Vec<BenchResult>) -> BenchResult {
    let mut all = rounds[0].clone();
    all.seconds = rounds.iter().flat_map(|r| r.seconds.iter().copied()).collect();
    all.repeats = all.seconds.len();
    all.seconds_median = median(&all.seconds);
    all.tokens_per_s = (all.steps_per_repeat as i64 * all.b * all.t) as f64 / all.seconds_median;
    all.peak_mib = rounds.iter().map(|r| r.peak_mib).fold(f64::NAN, f64::max);
    all
}

/// Achieved FP32 GEMM rate (2048² matmul, median of 5): what this machine's
/// libtorch reaches at best, beside the theoretical peak.
fn gemm_gflops(dev: Device) -> Result<f64> {
    let n = 2048i64;
    let a = Tensor::randn([n, n], (Kind::Float, dev));
    let b = Tensor::randn([n, n], (Kind::Float, dev));
    let mut times = vec![];
    for i in 0..6 {
        let t0 = Instant::now();
        let c = a.mm(&b);
        let _ = f64::try_from(c.get(0).get(0))?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (n * n * n) as f64 / times[times.len() / 2] / 1e9)
}

/// Runs the Python reference once for `models` at one shape: one JSON line each.
fn run_python(py: &PathBuf, a: &Options, shape: (i64, i64, i64, i64, usize), models: &[&str], threads: usize) -> Result<Vec<BenchResult>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/pytorch_reference.py");
    let script = if script.is_file() { script } else { PathBuf::from("bench/pytorch_reference.py") };
    let (b, t, h, v, steps) = shape;
    let out = std::process::Command::new(py)
        .arg(&script)
        .args(["--device", &a.device, "--repeats", &a.repeats.to_string(), "--warmup", &a.warmup.to_string()])
        .args(["--threads", &threads.to_string(), "--models", &models.join(","), "--shape", &format!("{b},{t},{h},{v},{steps}")])
        .output()
        .with_context(|| format!("cannot run {} {}", py.display(), script.display()))?;
    if !out.status.success() {
        bail!("{} {} failed: {}", py.display(), script.display(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|line| serde_json::from_str(line).with_context(|| format!("python reference printed {line:?}")))
        .collect()
}

pub fn run(a: Options) -> Result<()> {
    let dev = device::resolve(&a.device)?;
    if a.repeats == 0 || a.rounds == 0 {
        return Err(usage!("--repeats and --rounds: expected at least 1"));
    }
    // The thread count is set, not inherited: both sides use the same.
    let threads = if a.threads > 0 { a.threads } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) };
    tch::set_num_threads(threads as i32);
    let shapes = a.shapes.iter().map(|s| parse_shape(s, a.steps)).collect::<Result<Vec<_>>>()?;
    if let Some(name) = &a.cpu_kernels {
        let k = CpuKernels::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| usage!("--cpu-kernels {name:?}: expected one of {}", CpuKernels::ALL.map(CpuKernels::name).join(", ")))?;
        set_cpu_kernels(k).map_err(|e| usage!("--cpu-kernels {name}: {e}"))?;
    }
    if let Some(name) = &a.bf16_kernel {
        let names = Bf16Kernel::ALL.map(Bf16Kernel::name).join(", ");
        let k = Bf16Kernel::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| usage!("--bf16-kernel {name:?}: expected one of {names}"))?;
        set_bf16_kernel(k).map_err(|e| usage!("--bf16-kernel {name}: {e}"))?;
    }
    // A bad name is a usage error before anything runs.
    if precisions(&a)?.contains(&Precision::Bf16) && dev.is_cuda() {
        return Err(usage!("--precision bf16: bf16 runs on the CPU engine only in this version (the device is {})", device::describe(dev)));
    }
    if let Some(m) = a.models.iter().find(|m| !models().contains(m)) {
        return Err(usage!("--models {m:?}: expected one of {}", models().join(", ")));
    }
    let mut json_out = match &a.json_out {
        Some(p) => Some(std::fs::File::create(p).with_context(|| format!("--json-out {}: cannot create", p.display()))?),
        None => None,
    };
    let mut emit = |r: &BenchResult| -> Result<()> {
        let line = serde_json::to_string(r)?;
        if a.json {
            println!("{line}");
        }
        if let Some(f) = json_out.as_mut() {
            use std::io::Write;
            writeln!(f, "{line}")?;
        }
        Ok(())
    };
    let mut measured = vec![];
    for &shape in &shapes {
        let m = measure_shape(&a, shape, dev, threads)?;
        m.ours.iter().chain(&m.python).try_for_each(&mut emit)?;
        measured.push(m);
    }
    if !a.json {
        print_report(&a, dev, threads, &measured)?;
    }
    Ok(())
}

/// `--precision`'s list, each once, in the order given.
fn precisions(a: &Options) -> Result<Vec<Precision>> {
    let mut out = vec![];
    for p in &a.precision {
        let p = match p.as_str() {
            "f32" => Precision::F32,
            "bf16" => Precision::Bf16,
            other => return Err(usage!("--precision {other:?}: expected f32 or bf16")),
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Every (model, precision) the bench times, in the order of the table.
fn runs(a: &Options) -> Result<Vec<(String, Precision)>> {
    let ps = precisions(a)?;
    Ok(a.models.iter().flat_map(|m| ps.iter().map(move |&p| (m.clone(), p))).collect())
}

/// A result's row label: the model, and its precision when not f32.
fn label(r: &BenchResult) -> String {
    match r.precision.as_deref() {
        Some("bf16") => format!("{} bf16", r.model),
        _ => r.model.clone(),
    }
}

fn precision_of(r: &BenchResult) -> Precision {
    if r.precision.as_deref() == Some("bf16") {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// One shape's results: grulm's models, Python's, and libtorch's matrix
/// products at the step's shapes per gate count and precision (GFLOP/s).
struct ShapeResults {
    shape: (i64, i64, i64, i64, usize),
    ours: Vec<BenchResult>,
    python: Vec<BenchResult>,
    sgemm: Vec<(i64, Precision, f64)>,
}

/// The gate counts of the benchmarked models, each once (for the sgemm line).
fn gate_counts(a: &Options) -> Vec<i64> {
    let mut g: Vec<i64> = a.models.iter().map(|m| gates_of(m)).collect();
    g.sort();
    g.dedup();
    g
}

/// Every round of one shape: grulm's models, then (unless `--json`) sgemm at
/// the step's products, then the Python reference, so that a fast or slow
/// spell of the machine hits every side alike; each result the median over rounds.
fn measure_shape(a: &Options, shape: (i64, i64, i64, i64, usize), dev: Device, threads: usize) -> Result<ShapeResults> {
    let ps = precisions(a)?;
    let gates: Vec<(i64, Precision)> = gate_counts(a).into_iter().flat_map(|g| ps.iter().map(move |&p| (g, p))).collect();
    let runs = runs(a)?;
    // The Python reference has the chapter's two models; each runs once per round.
    let mut py_models: Vec<&str> = a.models.iter().filter_map(|m| python_model(m)).collect();
    py_models.dedup();
    let (mut ours, mut theirs): (Vec<Vec<BenchResult>>, Vec<Vec<BenchResult>>) = (vec![], vec![]);
    let mut sgemm_rounds: Vec<Vec<f64>> = vec![];
    for _ in 0..a.rounds {
        ours.push(runs.iter().map(|(m, p)| bench_one(m, *p, shape, a.repeats, a.warmup, dev)).collect::<Result<_>>()?);
        if !a.json {
            let (b, t, h, v, _) = shape;
            sgemm_rounds.push(gates.iter().map(|&(g, p)| sgemm_at_step_gflops(dev, (b, t, h, v), g, p)).collect::<Result<_>>()?);
        }
        if let (Some(py), false) = (&a.compare_python, py_models.is_empty()) {
            theirs.push(run_python(py, a, shape, &py_models, threads)?);
        }
    }
    let ours = (0..runs.len()).map(|i| merge(ours.iter().map(|round| round[i].clone()).collect())).collect();
    let sgemm =
        gates.iter().enumerate().map(|(i, &(g, p))| (g, p, median(&sgemm_rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))).collect();
    let python = py_models
        .iter()
        .map(|m| theirs.iter().filter_map(|round| round.iter().find(|r| r.model == *m).cloned()).collect::<Vec<_>>())
        .filter(|rounds| !rounds.is_empty())
        .map(merge)
        .collect();
    Ok(ShapeResults { shape, ours, python, sgemm })
}

/// The table of every shape, beside this machine's matrix-product rates.
fn print_report(a: &Options, dev: Device, threads: usize, measured: &[ShapeResults]) -> Result<()> {
    let gemm = gemm_gflops(dev)?;
    println!(
        "grulm bench on {} ({} threads, libtorch {}): median of {} rounds x {} repeats (each after {} warm-up), grulm and Python alternating; training steps (forward, backward, clip, SGD update)",
        device::describe(dev),
        threads,
        device::LIBTORCH_VERSION,
        a.rounds,
        a.repeats,
        a.warmup
    );
    println!("FP32 GEMM (2048x2048 matmul) reaches {gemm:.1} GFLOP/s here");
    if !dev.is_cuda() {
        println!("CPU engine kernels: {} (--cpu-kernels picks another)", cpu_kernels().name());
        if precisions(a)?.contains(&Precision::Bf16) {
            println!("bf16 rows (train.precision = bf16): {}", crate::model::bf16_products_note());
        }
    }
    for m in measured {
        print_shape(a, m);
    }
    if let Some(r) = measured.first().and_then(|m| m.ours.first()) {
        println!("\nmemory: {}; used/est: (peak - RSS before the model) / grulm's estimate on CPU, peak / estimate on CUDA; GFLOP/s counts the step's matrix products (see step_flops in src/tools/bench.rs)", r.peak_kind);
    }
    Ok(())
}

/// The cells of the benchmarked models with `g` gates with hidden weights, by name (`GRU`, `LSTM/...`).
fn cells_with_gates(a: &Options, g: i64) -> String {
    let mut labels: Vec<&str> =
        a.models.iter().filter_map(|m| model_for(m, 1).ok()).filter(|(c, ..)| hidden_gates(c) == g).map(|(c, ..)| c.cell.label()).collect();
    labels.dedup();
    labels.join("/")
}

fn print_shape(a: &Options, m: &ShapeResults) {
    let (b, t, h, v, steps) = m.shape;
    println!("\nshape B={b} T={t} H={h} V={v}, {steps} steps per repeat");
    for (p, what) in [(Precision::F32, "sgemm"), (Precision::Bf16, "bf16 mm")] {
        let rates: Vec<String> =
            m.sgemm.iter().filter(|(_, q, _)| *q == p).map(|(g, _, r)| format!("{} {r:.1}", cells_with_gates(a, *g))).collect();
        if !rates.is_empty() {
            println!("libtorch {what} at this shape's step products (GFLOP/s): {}", rates.join(", "));
        }
    }
    println!(
        "{:<16} {:>12} {:>12} {:>8} {:>10} {:>10} {:>10} {:>8} {:>11} {:>8}  steps",
        "model", "grulm tok/s", "python tok/s", "ratio", "grulm MiB", "python MiB", "est. MiB", "used/est", "GFLOP/s", "/libtorch"
    );
    for r in &m.ours {
        let p = m.python.iter().find(|p| Some(p.model.as_str()) == python_model(&r.model));
        let gflops = step_flops(b, t, h, v, gates_of(&r.model)) * steps as f64 / r.seconds_median / 1e9;
        let of_sgemm =
            m.sgemm.iter().find(|(g, p, _)| *g == gates_of(&r.model) && *p == precision_of(r)).map_or(f64::NAN, |(.., s)| gflops / s);
        println!(
            "{:<16} {:>12.0} {:>12} {:>8} {:>10.0} {:>10} {:>10.0} {:>8} {:>11.1} {:>8.0}%  {}",
            label(r),
            r.tokens_per_s,
            p.map(|p| format!("{:.0}", p.tokens_per_s)).unwrap_or_else(|| "-".into()),
            p.map(|p| format!("{:.2}x", r.tokens_per_s / p.tokens_per_s)).unwrap_or_else(|| "-".into()),
            r.peak_mib,
            p.map(|p| format!("{:.0}", p.peak_mib)).unwrap_or_else(|| "-".into()),
            r.estimate_mib.unwrap_or(f64::NAN),
            r.used_over_estimate().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
            gflops,
            of_sgemm * 100.0,
            match r.graph_nodes {
                Some(n) => format!("CUDA graph of {n} launches, {:.2} us each", r.seconds_median / steps as f64 / n as f64 * 1e6),
                None => r.step.clone().unwrap_or_default(),
            }
        );
    }
    let get = |name: &str| m.ours.iter().find(|r| r.model == name && precision_of(r) == Precision::F32).map(|r| r.tokens_per_s);
    if let (Some(s), Some(bi)) = (get("scratch"), get("builtin")) {
        println!("grulm scratch / grulm builtin: {:.2}x", s / bi);
    }
    let ratios: Vec<String> = m
        .ours
        .iter()
        .filter(|r| precision_of(r) == Precision::Bf16)
        .filter_map(|r| get(&r.model).map(|f| format!("{} {:.2}x", r.model, r.tokens_per_s / f)))
        .collect();
    if !ratios.is_empty() {
        println!("grulm bf16 / grulm f32 tokens/s: {}", ratios.join(", "));
    }
}
