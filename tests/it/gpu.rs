//! The CUDA paths, where a CPU can check them: the GPU check script's own
//! plumbing, the bench's step variants, the CUDA tolerance of the parity check.
//! The GPU runs themselves are in docs/gpu.md and bench/results/.
use crate::helpers::{assert_fails, grulm, stderr, timemachine, TempDir};
use grulm::tools::parity;
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind};

fn script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh"))
}

fn has_gpu() -> bool {
    Command::new("nvidia-smi").arg("-L").output().map(|o| String::from_utf8_lossy(&o.stdout).contains("GPU ")).unwrap_or(false)
}

#[test]
fn gpu_check_stops_at_once_without_a_gpu() {
    if has_gpu() {
        crate::helpers::skip("this machine has a GPU (the test is of the script's answer without one)");
        return;
    }
    let dir = TempDir::new("gpu-check");
    let o = Command::new(script()).arg(dir.join("out")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no GPU found"), "{err}");
    assert!(!dir.join("out").exists(), "nothing is written without a GPU");
}

/// The script's whole sequence on the CPU (GPU_CHECK_DEVICE=cpu, 2 epochs): every
/// check runs and is recorded, and the results file is complete. The figures
/// mean nothing here (the 500-epoch perplexity checks fail at 2 epochs).
#[test]
fn gpu_check_script_runs_every_check_in_a_cpu_dry_run() {
    let Some(corpus) = timemachine() else { return };
    let Some(venv) = crate::helpers::venv() else { return };
    let dir = TempDir::new("gpu-dry");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::copy(&corpus, dir.join("data/timemachine.txt")).unwrap();
    let o = Command::new(script())
        .arg(dir.join("out"))
        .env("GRULM_BIN", env!("CARGO_BIN_EXE_grulm"))
        .env("GPU_CHECK_DEVICE", "cpu")
        .env("GPU_CHECK_EPOCHS", "2")
        .env("GPU_CHECK_BENCH", "--shape 2,3,4,28 --repeats 1 --rounds 1")
        .env("PYTHON", Path::new(&venv).join("bin/python"))
        .env("GRULM_DATA_DIR", dir.join("data"))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let out = dir.join("out");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    let checks: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("checks.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = checks.iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "info",
            "parity-f64",
            "parity-f32",
            "parity-lstm-f64",
            "parity-lstm-f32",
            "parity-rnn-f64",
            "parity-rnn-f32",
            "train-scratch",
            "train-concise",
            "cuda-run-on-cpu-scratch",
            "cuda-run-on-cpu-concise",
            "resume",
            "cpu-run-on-cuda",
            "minimal-mingru",
            "minimal-minlstm",
            "weight-drop-scratch",
            "weight-drop-concise",
            "deterministic-scratch",
            "deterministic-concise",
            "bench"
        ]
    );
    let ok = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap()["ok"] == true;
    for name in [
        "info",
        "parity-f64",
        "parity-f32",
        "parity-lstm-f64",
        "parity-rnn-f32",
        "cpu-run-on-cuda",
        "minimal-mingru",
        "minimal-minlstm",
        "weight-drop-scratch",
        "weight-drop-concise",
        "deterministic-scratch",
        "deterministic-concise",
        "bench",
    ] {
        assert!(ok(name), "{name}: {summary}");
    }
    assert!(!ok("train-scratch"), "2 epochs cannot reach perplexity 1.1");
    assert_eq!(o.status.code(), Some(1), "a failed check fails the script");
    let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("gpu-check.json")).unwrap()).unwrap();
    assert_eq!(all["checks"].as_array().unwrap().len(), 20);
    assert_eq!(all["bench"].as_array().unwrap().len(), 13, "11 grulm models and 2 python ones, merged: {summary}");
}

#[test]
fn bench_runs_each_step_variant_and_names_them() {
    let dir = TempDir::new("bench-variants");
    let json = dir.join("bench.jsonl");
    let o = grulm(
        dir.path(),
        &["bench", "--device", "cpu", "--shape", "2,3,4,5", "--models", "scratch,scratch-eager,builtin-eager", "--repeats", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = crate::helpers::stdout(&o);
    for m in ["scratch ", "scratch-eager ", "builtin-eager "] {
        assert!(table.lines().any(|l| l.starts_with(m) && l.trim_end().ends_with("eager")), "{m}: {table}");
    }
    let o = grulm(
        dir.path(),
        &["bench", "--shape", "2,3,4,5", "--models", "scratch", "--repeats", "1", "--rounds", "1", "--json-out", json.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&json).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["model"], "scratch");
    assert_eq!(line["step"], "eager", "no CUDA graph on the CPU");
    assert!(line["graph_nodes"].is_null());
    // Every cell benches, scratch and built-in.
    let o = grulm(
        dir.path(),
        &["bench", "--shape", "2,3,4,5", "--models", "lstm,lstm-builtin,rnn,rnn-builtin", "--repeats", "1", "--rounds", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = crate::helpers::stdout(&o);
    for m in ["lstm ", "lstm-builtin ", "rnn ", "rnn-builtin "] {
        assert!(table.lines().any(|l| l.starts_with(m)), "{m}: {table}");
    }
    // The libtorch-ops scratch step and libtorch's own built-in step, beside the
    // engine's, with the sgemm rate at the step's own products.
    let o = grulm(
        dir.path(),
        &["bench", "--shape", "2,3,4,5", "--models", "scratch,scratch-ops,builtin,builtin-autograd", "--repeats", "1", "--rounds", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = crate::helpers::stdout(&o);
    assert!(table.contains("libtorch sgemm at this shape's step products (GFLOP/s): GRU "), "{table}");
    assert!(table.contains("/libtorch"), "{table}");
    for m in ["scratch ", "scratch-ops ", "builtin ", "builtin-autograd "] {
        assert!(table.lines().any(|l| l.starts_with(m) && l.contains('%')), "{m}: {table}");
    }
    let o = grulm(dir.path(), &["bench", "--shape", "2,3,4,5", "--models", "scratch,transformer"]);
    assert_fails(&o, 2, &["--models \"transformer\"", "scratch-eager", "lstm-builtin"]);
    let o = grulm(dir.path(), &["bench", "--shape", "gpus"]);
    assert_fails(&o, 2, &["--shape \"gpus\"", "d2l, large, gpu or B,T,H,V"]);
    // The CPU engine's kernel set: the widest by default (as `grulm info` names
    // it), another with --cpu-kernels, recorded in each result.
    let info = crate::helpers::stdout(&grulm(dir.path(), &["info"]));
    let default = info.lines().find_map(|l| l.strip_prefix("CPU kernels")).map(|l| l.split_whitespace().next().unwrap().to_string());
    let default = default.unwrap_or_else(|| panic!("grulm info names no CPU kernels: {info}"));
    for (flag, want) in [(None, default.as_str()), (Some("portable"), "portable")] {
        let mut args = vec!["bench", "--shape", "2,3,4,5", "--models", "scratch", "--repeats", "1", "--rounds", "1", "--json"];
        args.extend(flag.map(|k| ["--cpu-kernels", k]).into_iter().flatten());
        let o = grulm(dir.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_str(crate::helpers::stdout(&o).lines().next().unwrap()).unwrap();
        assert_eq!(line["cpu_kernels"], want, "{flag:?}");
    }
    let o = grulm(dir.path(), &["bench", "--shape", "2,3,4,5", "--cpu-kernels", "avx9"]);
    assert_fails(&o, 2, &["--cpu-kernels \"avx9\"", "portable, avx2, avx512"]);
    // bf16 rows beside f32's, beside libtorch's bf16 products, with their kernel
    // (grulm info's by default, the f32 arithmetic one when asked).
    let o = grulm(
        dir.path(),
        &["bench", "--shape", "2,3,4,5", "--models", "scratch,builtin", "--precision", "f32,bf16", "--repeats", "1", "--rounds", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = crate::helpers::stdout(&o);
    for needle in [
        "libtorch bf16 mm at this shape's step products (GFLOP/s): GRU ",
        "grulm bf16 / grulm f32 tokens/s: scratch ",
        "bf16 rows (train.precision = bf16): bf16 inputs",
    ] {
        assert!(table.contains(needle), "{needle}: {table}");
    }
    assert!(table.lines().any(|l| l.starts_with("scratch bf16 ") && l.contains('%')), "{table}");
    let default =
        info.lines().find_map(|l| l.strip_prefix("bf16 products")).map(|l| l.split_whitespace().next().unwrap().to_string()).unwrap();
    for (flag, want) in [(None, default.as_str()), (Some("f32-emulated"), "f32-emulated")] {
        let mut args =
            vec!["bench", "--shape", "2,3,4,5", "--models", "scratch", "--precision", "bf16", "--repeats", "1", "--rounds", "1", "--json"];
        args.extend(flag.map(|k| ["--bf16-kernel", k]).into_iter().flatten());
        let o = grulm(dir.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value = serde_json::from_str(crate::helpers::stdout(&o).lines().next().unwrap()).unwrap();
        assert_eq!((&line["precision"], &line["bf16_kernel"]), (&serde_json::json!("bf16"), &serde_json::json!(want)), "{flag:?}");
    }
    let o = grulm(dir.path(), &["bench", "--shape", "2,3,4,5", "--precision", "fp8"]);
    assert_fails(&o, 2, &["--precision \"fp8\": expected f32 or bf16"]);
    let o = grulm(dir.path(), &["bench", "--shape", "2,3,4,5", "--precision", "bf16", "--bf16-kernel", "amx"]);
    assert_fails(&o, 2, &["--bf16-kernel \"amx\": expected one of f32-emulated, avx512_bf16, amx_bf16"]);
}

#[test]
fn parity_tolerance_is_pytorchs_cudnn_test_tolerance_on_cuda() {
    assert_eq!(parity::tolerance(Kind::Double, Device::Cpu), 1e-10);
    assert_eq!(parity::tolerance(Kind::Double, Device::Cuda(0)), 1e-10);
    assert_eq!(parity::tolerance(Kind::Float, Device::Cpu), 1e-5);
    assert_eq!(parity::tolerance(Kind::Float, Device::Cuda(0)), 5e-5);
}

#[test]
fn training_on_the_cpu_says_its_steps_run_eagerly() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("eager-line");
    let cfg = dir.write("c.toml", crate::helpers::small_config(&corpus, ""));
    let args = [
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        "run",
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.cuda_graph=true",
    ];
    let o = grulm(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = crate::helpers::stdout(&o);
    assert!(out.contains("on cpu (eager)"), "{out}");
    assert!(!out.contains("CUDA graphs off"), "graphs are a CUDA matter: no note on the CPU: {out}");
}
