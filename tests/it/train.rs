//! The training loop end to end on small corpora (CPU).
use crate::helpers::{alone, grulm, metrics_without_timing, small_config, stdout, timemachine, TempDir};
use grulm::config::Config;
use grulm::platform::console::Console;
use grulm::run::RunDir;
use grulm::train::optim::clip_grad_norm;
use grulm::train::{train, TrainOptions};
use tch::{Device, Kind, Tensor};

#[test]
fn clipping_is_d2l_grad_clipping() {
    // Two parameters with gradients (3, 4) and (12): norm 13.
    let a = Tensor::zeros([2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([1], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let loss = (&a * Tensor::from_slice(&[3.0f64, 4.0])).sum(Kind::Double) + (&b * 12.0).sum(Kind::Double);
    loss.backward();
    let norm = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 1.0);
    assert!((f64::try_from(norm).unwrap() - 13.0).abs() < 1e-12);
    let ga = Vec::<f64>::try_from(a.grad()).unwrap();
    assert!((ga[0] - 3.0 / 13.0).abs() < 1e-12 && (ga[1] - 4.0 / 13.0).abs() < 1e-12);
    // Below θ nothing changes.
    let norm = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 5.0);
    assert!((f64::try_from(norm).unwrap() - 1.0).abs() < 1e-12);
    assert!((Vec::<f64>::try_from(b.grad()).unwrap()[0] - 12.0 / 13.0).abs() < 1e-12);
}

fn train_in(dir: &TempDir, cfg: &Config, name: &str, resume: bool) -> grulm::train::TrainOutcome {
    let opts = TrainOptions { run: RunDir::new(dir.join(name)), resume, force: false, device: Device::Cpu };
    train(cfg, &opts, &Console::plain()).unwrap()
}

fn small(corpus: &std::path::Path, extra: &str, sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::parse(&small_config(corpus, extra), "small.toml", &sets).unwrap()
}

#[test]
fn short_runs_lower_perplexity_at_least_twofold() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("lower");
    // Each model kind, cell and partition, with SGD and Adam: 30 epochs of 3,000 tokens.
    for (i, sets) in [
        vec!["model.kind=\"scratch\""],
        vec!["model.kind=\"builtin\"", "data.partition=\"random\""],
        vec!["model.kind=\"scratch\"", "model.num_layers=2", "train.optimizer=\"adam\"", "train.lr=0.01"],
        vec!["model.cell=\"lstm\""],
        vec!["model.cell=\"lstm\"", "model.kind=\"builtin\"", "model.num_layers=2", "train.lr=2"],
        vec!["model.cell=\"rnn\""],
        vec!["model.cell=\"rnn\"", "model.kind=\"builtin\""],
        vec!["model.gru_gates=\"reset-only\""],
        vec!["model.gru_gates=\"update-only\""],
    ]
    .iter()
    .enumerate()
    {
        let mut all = vec!["train.epochs=30", "model.hidden_size=64", "train.checkpoint_every=0"];
        all.extend(sets);
        let cfg = small(&corpus, "", &all);
        let out = train_in(&dir, &cfg, &format!("run{i}"), false);
        let m = RunDir::new(dir.join(&format!("run{i}"))).load_metrics().unwrap();
        assert_eq!(m.len(), 30);
        let (first, last) = (m[0].train_ppl, out.last.unwrap().train_ppl);
        assert!(first / last >= 2.0, "{sets:?}: perplexity {first:.2} -> {last:.2}");
        assert!(m.iter().all(|e| e.grad_norm > 0.0 && e.tokens_per_s > 0.0));
    }
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    // Exact comparisons of in-process runs: alone, so that no other test draws
    // from libtorch's generator between a run's seed and its draws.
    alone("train::resume_equals_an_uninterrupted_run", || {
        let Some(corpus) = timemachine() else { return };
        let dir = TempDir::new("resume");
        // Every cell resumes exactly; the LSTM (two state tensors, four gates) stands for them.
        // bf16 products resume exactly too (the engine's kernels are deterministic).
        for (opt, partition, cell, precision) in [
            ("sgd", "sequential", "gru", "f32"),
            ("adam", "random", "gru", "f32"),
            ("sgd", "sequential", "lstm", "f32"),
            ("adam", "sequential", "gru", "bf16"),
        ] {
            let sets = [
                format!("train.optimizer=\"{opt}\""),
                format!("data.partition=\"{partition}\""),
                "train.lr=0.5".into(),
                format!("model.cell=\"{cell}\""),
                format!("train.precision=\"{precision}\""),
            ];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let full = small(&corpus, "", &sets);
            let a = format!("full-{opt}-{cell}-{precision}");
            let b = format!("part-{opt}-{cell}-{precision}");
            let out_full = train_in(&dir, &full, &a, false);
            // Stop after 2 epochs (a checkpoint), then resume to 4.
            let mut first = full.clone();
            first.train.epochs = 2;
            train_in(&dir, &first, &b, false);
            let out_resumed = train_in(&dir, &full, &b, true);
            assert_eq!(metrics_without_timing(&dir.join(&a)), metrics_without_timing(&dir.join(&b)), "{opt}");
            assert_eq!(out_full.predictions, out_resumed.predictions);
            let weights = |run: &str| grulm::platform::tensorfile::load(&dir.join(run).join("checkpoint.safetensors")).unwrap().tensors;
            let (wa, wb) = (weights(&a), weights(&b));
            assert_eq!(wa.len(), wb.len());
            for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
                assert_eq!(na, nb);
                assert!(ta.equal(tb), "{opt}: {na} differs after resume");
            }
        }
    });
}

#[test]
fn validation_perplexity_is_logged() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("val");
    let cfg = small(&corpus, "", &["data.val_fraction=0.2", "train.val_every=2", "train.epochs=3"]);
    train_in(&dir, &cfg, "r", false);
    let m = RunDir::new(dir.join("r")).load_metrics().unwrap();
    let val: Vec<bool> = m.iter().map(|e| e.val_ppl.is_some()).collect();
    assert_eq!(val, vec![false, true, true], "every val_every epochs and at the end");
    assert!(m.iter().filter_map(|e| e.val_ppl).all(|p| p.is_finite() && p > 1.0));
}

#[test]
fn same_seed_gives_identical_metrics_and_samples() {
    // Exact comparisons of in-process runs: alone, so that no other test draws
    // from libtorch's generator between a run's seed and its draws.
    alone("train::same_seed_gives_identical_metrics_and_samples", || {
        let Some(corpus) = timemachine() else { return };
        let dir = TempDir::new("repro");
        let cfg = small(&corpus, "", &["data.partition=\"random\""]);
        let a = train_in(&dir, &cfg, "a", false);
        let b = train_in(&dir, &cfg, "b", false);
        assert_eq!(metrics_without_timing(&dir.join("a")), metrics_without_timing(&dir.join("b")));
        assert_eq!(a.predictions, b.predictions);
        let sample = |run: &str| {
            stdout(&grulm(dir.path(), &["sample", "--run", run, "--temperature", "0.8", "--top-k", "5", "--seed", "3", "--len", "80"]))
        };
        assert_eq!(sample("a"), sample("b"));
        // And a different seed changes the numbers.
        let c = train_in(&dir, &small(&corpus, "", &["data.partition=\"random\"", "train.seed=7"]), "c", false);
        assert_ne!(metrics_without_timing(&dir.join("a")), metrics_without_timing(&dir.join("c")));
        let _ = c;
    });
}

#[test]
fn lr_schedules_set_each_epochs_lr_and_resume_exactly() {
    // Exact comparisons of in-process runs: alone, so that no other test draws
    // from libtorch's generator between a run's seed and its draws.
    alone("train::lr_schedules_set_each_epochs_lr_and_resume_exactly", || {
        let Some(corpus) = timemachine() else { return };
        let dir = TempDir::new("schedule");
        let lrs = |name: &str| -> Vec<f64> { metrics_without_timing(&dir.join(name)).iter().map(|m| m["lr"].as_f64().unwrap()).collect() };
        let ppls =
            |name: &str| -> Vec<f64> { metrics_without_timing(&dir.join(name)).iter().map(|m| m["train_ppl"].as_f64().unwrap()).collect() };
        let step = ["train.epochs=6", "train.lr_schedule=\"step\"", "train.lr_decay=0.5", "train.lr_decay_every=2"];
        // Warm-up over 2 epochs (lr/2, lr), then halved every 2 epochs.
        train_in(&dir, &small(&corpus, "", &[&step[..], &["train.warmup_epochs=2"]].concat()), "warm", false);
        assert_eq!(lrs("warm"), [0.5, 1.0, 1.0, 1.0, 0.5, 0.5]);
        // The same without warm-up beside a constant lr: equal epochs until the first decay.
        train_in(&dir, &small(&corpus, "", &step), "step", false);
        train_in(&dir, &small(&corpus, "", &["train.epochs=6"]), "constant", false);
        assert_eq!(lrs("step"), [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
        let (a, b) = (ppls("step"), ppls("constant"));
        assert_eq!(a[..2], b[..2]);
        assert!(a[2..].iter().zip(&b[2..]).all(|(x, y)| x != y), "the decayed lr is the one used: {a:?} {b:?}");
        // Cosine from lr to near 0 over the 6 epochs.
        train_in(&dir, &small(&corpus, "", &["train.epochs=6", "train.lr_schedule=\"cosine\""]), "cosine", false);
        let want: Vec<f64> = (0..6).map(|k| 0.5 * (1.0 + (std::f64::consts::PI * k as f64 / 6.0).cos())).collect();
        assert!(lrs("cosine").iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-15), "{:?}", lrs("cosine"));
        // Stopped after epoch 3 and resumed: the schedule goes on as if never stopped.
        let warm3 = small(&corpus, "", &[&step[..], &["train.warmup_epochs=2", "train.epochs=3"]].concat());
        train_in(&dir, &warm3, "resumed", false);
        train_in(&dir, &small(&corpus, "", &[&step[..], &["train.warmup_epochs=2"]].concat()), "resumed", true);
        assert_eq!(metrics_without_timing(&dir.join("resumed")), metrics_without_timing(&dir.join("warm")));
    });
}

#[test]
fn epoch_steps_retrace_the_passes_and_resume_exactly() {
    // Exact comparisons of in-process runs: alone (see resume_equals_an_uninterrupted_run).
    alone("train::epoch_steps_retrace_the_passes_and_resume_exactly", || {
        let Some(corpus) = timemachine() else { return };
        let dir = TempDir::new("epoch-steps");
        // Dropout: the masks of a step come from its pass and index, whatever epoch holds it.
        for partition in ["sequential", "random"] {
            let sets = [format!("data.partition=\"{partition}\""), "train.lr=0.5".into(), "model.dropout=0.2".into()];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let mut passes = small(&corpus, "", &sets);
            passes.train.epochs = 2;
            // The reference: two passes, d2l's epochs. How many minibatches each
            // holds comes from the data module, independently of the trainer.
            let tokens = grulm::data::Corpus::load(&passes.data).unwrap().train.len();
            let n: Vec<usize> = (0..2)
                .map(|p| {
                    let (d, mut rng) = (&passes.data, grulm::data::epoch_rng(passes.train.seed, p));
                    grulm::data::epoch_minibatches(tokens, d.batch_size, d.num_steps, d.partition, &mut rng).n
                })
                .collect();
            // Epochs of k minibatches that end inside passes and cover both exactly.
            let total = n[0] + n[1];
            let k = (2..n[0]).find(|&k| total.is_multiple_of(k) && !n[0].is_multiple_of(k)).expect("a length that cuts a pass");
            let mut steps = passes.clone();
            (steps.train.epoch_steps, steps.train.epochs) = (k, total / k);
            let a = format!("passes-{partition}");
            let b = format!("steps-{partition}");
            let c = format!("resumed-{partition}");
            train_in(&dir, &passes, &a, false);
            train_in(&dir, &steps, &b, false);
            // Stopped after an epoch that ends inside the first pass, then resumed:
            // the checkpoint carries the state into the rest of the pass.
            let mut first = steps.clone();
            first.train.epochs = n[0] / k;
            assert!(first.train.epochs >= 1 && first.train.epochs * k < n[0]);
            train_in(&dir, &first, &c, false);
            train_in(&dir, &steps, &c, true);
            let weights = |run: &str| grulm::platform::tensorfile::load(&dir.join(run).join("model.safetensors")).unwrap().tensors;
            let wa = weights(&a);
            for run in [&b, &c] {
                let w = weights(run);
                assert_eq!(wa.len(), w.len());
                for ((na, ta), (nb, tb)) in wa.iter().zip(&w) {
                    assert_eq!(na, nb);
                    assert!(ta.equal(tb), "{run}: {na} differs from two passes of d2l's epochs");
                }
            }
            assert_eq!(metrics_without_timing(&dir.join(&b)), metrics_without_timing(&dir.join(&c)), "{partition}");
            assert_eq!(RunDir::new(dir.join(&b)).load_metrics().unwrap().len(), total / k);
        }
    });
}
