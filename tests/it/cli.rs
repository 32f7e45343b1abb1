//! Smoke tests of the real binary in temporary directories.
use crate::helpers::{assert_fails, cfg_on, grulm, metrics_without_timing, small_config, stdout, timemachine, TempDir};

#[test]
fn info_reports_libtorch_2_11() {
    let dir = TempDir::new("info");
    let o = grulm(dir.path(), &["info"]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("libtorch         2.11.0"), "{s}");
    for key in ["CUDA available", "CUDA devices", "cuDNN available", "CPU threads", "CPU kernels", "bf16 products", "grulm "] {
        assert!(s.contains(key), "{key}: {s}");
    }
}

#[test]
fn help_explains_each_command_and_exit_codes() {
    let dir = TempDir::new("help");
    for cmd in [
        &["--help"][..],
        &["train", "--help"],
        &["sample", "--help"],
        &["eval", "--help"],
        &["parity", "--help"],
        &["info", "--help"],
        &["bench", "--help"],
    ] {
        let o = grulm(dir.path(), cmd);
        assert!(o.status.success(), "{cmd:?}");
        assert!(stdout(&o).contains("Exit codes: 0 success; 1 runtime failure"), "{cmd:?}");
    }
    let s = stdout(&grulm(dir.path(), &["train", "--help"]));
    for flag in ["--config", "--set", "--device", "--out", "--resume", "--force", "--quiet", "--dry-run"] {
        assert!(s.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn train_sample_eval_end_to_end() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("e2e");
    dir.write("exp.toml", small_config(&corpus, "[sample]\nlen = 30\n"));
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--set", "train.predict_every=2"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", crate::helpers::stderr(&o));
    // Plain lines (stdout is a pipe): d2l's periodic prediction and final summary.
    assert!(!out.contains('\r'), "no progress bar on a pipe");
    assert!(out.lines().any(|l| l.starts_with("epoch    2  perplexity ") && l.contains("| time traveller")), "{out}");
    let summary = out.lines().find(|l| l.starts_with("perplexity ")).expect("summary line");
    assert!(summary.contains(" tokens/sec on cpu"), "{summary}");
    let run = dir.join("runs/exp");
    for f in ["config.toml", "vocab.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "perplexity.svg"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in ["epoch", "train_ppl", "val_ppl", "tokens_per_s", "lr", "grad_norm", "elapsed_s", "peak_rss_mib"] {
        assert!(first.get(k).is_some(), "metrics lack {k}");
    }
    let svg = std::fs::read_to_string(run.join("perplexity.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("perplexity") && svg.contains("epoch") && svg.contains("<polyline"));

    // The final greedy lines are reproduced by `grulm sample` from the saved run.
    let lines: Vec<&str> = out.lines().collect();
    let i = lines.iter().position(|l| l.starts_with("perplexity ")).unwrap();
    for (k, prefix) in ["time traveller", "traveller"].iter().enumerate() {
        let s = stdout(&grulm(dir.path(), &["sample", "--run", "runs/exp", "--prefix", prefix]));
        assert_eq!(s.trim_end_matches('\n'), lines[i + 1 + k]);
        assert_eq!(s.trim_end_matches('\n').chars().count(), prefix.len() + 30);
    }
    // Sampling is seeded.
    let a = stdout(&grulm(dir.path(), &["sample", "--run", "runs/exp", "--temperature", "1.5", "--seed", "1", "--len", "200"]));
    let b = stdout(&grulm(dir.path(), &["sample", "--run", "runs/exp", "--temperature", "1.5", "--seed", "1", "--len", "200"]));
    let c = stdout(&grulm(dir.path(), &["sample", "--run", "runs/exp", "--temperature", "1.5", "--seed", "2", "--len", "200"]));
    assert_eq!(a, b);
    assert_ne!(a, c);

    let e = stdout(&grulm(dir.path(), &["eval", "--run", "runs/exp"]));
    assert!(e.starts_with("perplexity ") && e.contains("170580 tokens") && e.contains(" bits per character) "), "{e}");
    // The run's own splits: the validation split's perplexity is what training
    // logged for it at the last epoch.
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--out", "runs/val", "--set", "data.val_fraction=0.2"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let metrics = std::fs::read_to_string(dir.join("runs/val/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let eval = |split: &str| -> serde_json::Value {
        let o = grulm(dir.path(), &["eval", "--run", "runs/val", "--split", split, "--json"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let val = eval("val");
    assert_eq!(val["perplexity"].as_f64(), last["val_ppl"].as_f64(), "{val} vs {last}");
    assert_eq!((val["tokens"].as_u64(), val["split"].as_str()), (Some(600), Some("val")));
    assert_eq!(eval("train")["tokens"].as_u64(), Some(2400));
    assert_eq!(eval("all")["tokens"].as_u64(), Some(170580));
    let o = grulm(dir.path(), &["eval", "--run", "runs/exp", "--split", "val"]);
    assert_fails(&o, 2, &["--split val: the run has no validation split (data.val_fraction = 0)"]);
    let o = grulm(dir.path(), &["eval", "--run", "runs/exp", "--split", "val", "--corpus", "timemachine"]);
    assert_fails(&o, 2, &["--split", "--corpus"]);

    // An existing run is refused without --resume or --force.
    let o = grulm(dir.path(), &["train", "--config", "exp.toml"]);
    assert_fails(&o, 2, &["already holds a run", "--resume", "--force"]);
    // --resume past the end trains nothing more; --resume with more epochs continues.
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--resume", "--set", "train.epochs=5"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 5);
    // A resumed run may not change what it computes.
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--resume", "--set", "model.hidden_size=64"]);
    assert_fails(&o, 2, &["--resume: model.hidden_size", "differ"]);
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--force", "--set", "train.epochs=1"]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 1);
}

#[test]
fn parity_command_prints_its_table() {
    let dir = TempDir::new("parity");
    for (cell, dtype) in [("gru", "f64"), ("gru", "f32"), ("lstm", "f64"), ("rnn", "f32")] {
        let o = grulm(dir.path(), &["parity", "--device", "cpu", "--dtype", dtype, "--cell", cell]);
        let s = stdout(&o);
        assert!(o.status.success(), "{s}");
        assert!(s.contains("grad rnn.weight_hh_l1") && s.contains("grad linear.weight") && s.contains("final state"), "{s}");
        assert_eq!(s.matches(": ok").count(), 2, "{s}");
        assert_eq!(s.contains("final memory cell"), cell == "lstm", "{s}");
    }
}

#[test]
fn checkpoints_load_in_pytorch() {
    let Some(venv) = crate::helpers::venv() else { return };
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("pytorch");
    for (cell, layers) in [("gru", 2), ("lstm", 2), ("rnn", 1)] {
        dir.write(
            &format!("{cell}.toml"),
            small_config(&corpus, &format!("[model]\nkind = \"builtin\"\ncell = \"{cell}\"\nnum_layers = {layers}\n"))
                .replace("[model]\nhidden_size = 32\n", ""),
        );
        let o = grulm(dir.path(), &["train", "--config", &format!("{cell}.toml"), "--set", "model.hidden_size=32"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let run = format!("runs/{cell}");
        let ours = stdout(&grulm(dir.path(), &["sample", "--run", &run, "--prefix", "the time ", "--len", "40"]));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/pytorch_predict.py");
        let py = std::process::Command::new(std::path::Path::new(&venv).join("bin/python"))
            .args([script, &dir.join(&run).display().to_string(), "the time ", "40"])
            .output()
            .unwrap();
        assert!(py.status.success(), "{cell}: {}", String::from_utf8_lossy(&py.stderr));
        assert_eq!(String::from_utf8_lossy(&py.stdout), ours, "{cell}: PyTorch's d2l predict_ch8 on grulm's checkpoint");
    }
    // Scratch runs exported in PyTorch's names: the reset-after GRU and the LSTM.
    for (name, model) in [("scratch-gru", "reset_gate = \"after\"\n"), ("scratch-lstm", "cell = \"lstm\"\n")] {
        dir.write(&format!("{name}.toml"), small_config(&corpus, "").replace("[model]\n", &format!("[model]\n{model}")));
        let o = grulm(dir.path(), &["train", "--config", &format!("{name}.toml")]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let run = format!("runs/{name}");
        let o = grulm(dir.path(), &["export", "--run", &run]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let ours = stdout(&grulm(dir.path(), &["sample", "--run", &run, "--prefix", "the time ", "--len", "40"]));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/pytorch_predict.py");
        let weights = dir.join(&run).join("pytorch.safetensors");
        let py = std::process::Command::new(std::path::Path::new(&venv).join("bin/python"))
            .args([script, &dir.join(&run).display().to_string(), "the time ", "40", &weights.display().to_string()])
            .output()
            .unwrap();
        assert!(py.status.success(), "{name}: {}", String::from_utf8_lossy(&py.stderr));
        assert_eq!(String::from_utf8_lossy(&py.stdout), ours, "{name}: PyTorch's d2l predict_ch8 on the exported weights");
        // And the same perplexity on a text, by grulm eval's protocol (B=8, T=10).
        let text = dir.write(
            "text.txt",
            "a model reads this line of plain words and we count how well it guesses each next letter \
             then we ask python to do the same with the weights it was given and the two numbers must agree \
             to the sixth decimal place or one of the two programs computes something else than it says",
        );
        let o = grulm(dir.path(), &["eval", "--run", &run, "--corpus", &text.display().to_string(), "--json"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let ours: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/pytorch_perplexity.py");
        let py = std::process::Command::new(std::path::Path::new(&venv).join("bin/python"))
            .args([script, &dir.join(&run).display().to_string(), &weights.display().to_string(), &text.display().to_string(), "8", "10"])
            .output()
            .unwrap();
        assert!(py.status.success(), "{name}: {}", String::from_utf8_lossy(&py.stderr));
        let theirs: f64 = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap();
        let ppl = ours["perplexity"].as_f64().unwrap();
        assert!((ppl - theirs).abs() <= 1e-6, "{name}: grulm eval {ppl} vs PyTorch {theirs}");
        assert!((ours["bits_per_char"].as_f64().unwrap() - ppl.log2()).abs() < 1e-12);
    }
    // d2l's reset-before GRU is not a function PyTorch has: one line, exit 2.
    dir.write("before.toml", small_config(&corpus, ""));
    let o = grulm(dir.path(), &["train", "--config", "before.toml", "--set", "train.epochs=1"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let o = grulm(dir.path(), &["export", "--run", "runs/before"]);
    assert_fails(&o, 2, &["reset_gate = \"before\"", "nn.GRU", "reset_gate = \"after\" to export"]);
}

#[test]
fn tensorboard_events_match_metrics() {
    use std::io::Write;
    let Some(venv) = crate::helpers::venv() else { return };
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("tensorboard");
    dir.write("exp.toml", small_config(&corpus, "val_every = 1\n").replace("[data]\n", "[data]\nval_fraction = 0.2\n"));
    let train = |args: &[&str]| {
        let o = grulm(dir.path(), &[&["train", "--config", "exp.toml", "--out", "run"][..], args].concat());
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        stdout(&o)
    };
    let run = dir.join("run");
    let event_files = || std::fs::read_dir(run.join("tb")).map(|d| d.count()).unwrap_or(0);
    // Epochs 1-2 (checkpoint at 2), then 3-4 resumed. Then the epoch-2 checkpoint is
    // put back, as if the run had been killed after logging epochs 3 and 4 but
    // before its epoch-4 checkpoint, and resumed to epoch 5: TensorBoard must show
    // the epochs 3 and 4 of the third process only, as metrics.jsonl does.
    train(&["--set", "train.epochs=2"]);
    let epoch2 = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    train(&["--resume", "--set", "train.epochs=4"]);
    std::fs::write(run.join("checkpoint.safetensors"), epoch2).unwrap();
    let last = train(&["--resume", "--set", "train.epochs=5"]);
    assert_eq!(event_files(), 3, "one event file per process");

    let read = || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tensorboard_read.py");
        let py = std::process::Command::new(std::path::Path::new(&venv).join("bin/python"))
            .args([script, &run.display().to_string()])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "TensorBoard's reader (scripts/setup-libtorch.sh installs tensorboard into the venv): {}",
            String::from_utf8_lossy(&py.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&py.stdout).unwrap()
    };
    let tb = read();
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(metrics.len(), 5);
    fn field(m: &serde_json::Value, k: &str) -> f64 {
        m[k].as_f64().unwrap()
    }
    type Metric = fn(&serde_json::Value) -> f64;
    let expected: [(&str, Metric); 7] = [
        ("perplexity/train", |m| field(m, "train_ppl")),
        ("perplexity/val", |m| field(m, "val_ppl")),
        ("loss/train", |m| field(m, "train_ppl").ln()),
        ("loss/val", |m| field(m, "val_ppl").ln()),
        ("lr", |m| field(m, "lr")),
        ("grad_norm", |m| field(m, "grad_norm")),
        ("tokens_per_s", |m| field(m, "tokens_per_s")),
    ];
    let scalars = tb["scalars"].as_object().unwrap();
    assert_eq!(scalars.len(), expected.len(), "{scalars:?}");
    for (tag, f) in expected {
        let events: Vec<(u64, f64)> = tb["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("{tag} missing"))
            .iter()
            .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap()))
            .collect();
        // TensorBoard stores f32: each value is the metric rounded to f32, exactly.
        let want: Vec<(u64, f64)> = metrics.iter().map(|m| (m["epoch"].as_u64().unwrap(), f(m) as f32 as f64)).collect();
        assert_eq!(events, want, "{tag}");
    }
    // The end-of-training predictions as text: the last process's, at epoch 5, as
    // printed; the first process's (epoch 2) stays, the second's (epoch 4) is gone.
    let texts = tb["texts"]["samples"].as_array().expect("samples text");
    let steps: Vec<u64> = texts.iter().map(|e| e[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 5]);
    let samples: Vec<String> = texts[1][1].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert_eq!(samples.len(), 2);
    for s in &samples {
        assert!(s.starts_with("time traveller") || s.starts_with("traveller"), "{s}");
        assert!(last.lines().any(|l| l == s), "{s:?} not printed: {last}");
    }

    // A record torn by a kill mid-write is dropped on --resume; the rest is kept.
    let newest = std::fs::read_dir(run.join("tb")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let whole = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&newest).unwrap().write_all(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 2]).unwrap();
    train(&["--resume", "--set", "train.epochs=6"]);
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), whole);
    let steps: Vec<u64> = read()["scalars"]["perplexity/train"].as_array().unwrap().iter().map(|e| e[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);

    // --force replaces the event files with the new run's one; tensorboard = false writes none.
    train(&["--force", "--set", "train.epochs=1"]);
    assert_eq!(event_files(), 1);
    assert_eq!(read()["scalars"]["perplexity/train"].as_array().unwrap().len(), 1);
    train(&["--force", "--set", "train.epochs=1", "--set", "train.tensorboard=false"]);
    assert!(!run.join("tb").exists(), "train.tensorboard = false writes no tb/");
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let dir = TempDir::new("completions");
    let o = grulm(dir.path(), &["completions", "bash"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let script = dir.write("grulm.bash", &o.stdout);
    // What bash does on `grulm tr<TAB>` and `grulm parity --ce<TAB>`: set the words
    // and call the function `complete -p grulm` names.
    let run = |words: &str, cword: usize| {
        let cmd = format!(
            "source {}; f=$(complete -p grulm | sed -E 's/.*-F ([^ ]+).*/\\1/'); COMP_WORDS=({words}); COMP_CWORD={cword}; \
             COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}; $f grulm \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash").args(["-c", &cmd]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(run("grulm tr", 1), ["train"]);
    assert_eq!(run("grulm parity --ce", 2), ["--cell"]);
    let o = grulm(dir.path(), &["completions", "tcsh"]);
    assert_fails(&o, 2, &["tcsh", "bash"]);
}

#[test]
fn perplexity_plot_of_a_short_run_has_whole_epoch_ticks_and_a_title_that_fits() {
    let dir = TempDir::new("plot");
    let name = format!("a-text-with-a-name-longer-than-the-plot-is-wide-{}.txt", "x".repeat(40));
    std::fs::create_dir_all(dir.join("some/deep/directory")).unwrap();
    dir.write(&format!("some/deep/directory/{name}"), "the time traveller for so it will be convenient to speak of him ".repeat(20));
    for (epochs, want) in [(5, &["1", "2", "3", "4", "5"][..]), (3, &["1", "2", "3"])] {
        let c = cfg_on(&dir, &format!("some/deep/directory/{name}"), "");
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "run", "--force", "--set", &format!("train.epochs={epochs}")]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let svg = std::fs::read_to_string(dir.join("run/perplexity.svg")).unwrap();
        // (x, y, text) of every <text> element.
        let texts: Vec<(f64, f64, String)> = svg
            .split("<text ")
            .skip(1)
            .map(|t| {
                let attr = |k: &str| t.split(&format!("{k}=\"")).nth(1).unwrap().split('"').next().unwrap().parse::<f64>().unwrap();
                let body = t.split_once('>').unwrap().1.split("</text>").next().unwrap().trim().to_string();
                (attr("x"), attr("y"), body)
            })
            .collect();
        // The x axis's tick labels: the lowest row of numbers.
        let numbers: Vec<&(f64, f64, String)> = texts.iter().filter(|t| t.2.parse::<f64>().is_ok()).collect();
        let bottom = numbers.iter().map(|t| t.1).fold(f64::MIN, f64::max);
        let ticks: Vec<&str> = numbers.iter().filter(|t| t.1 == bottom).map(|t| t.2.as_str()).collect();
        assert_eq!(ticks, want, "{epochs} epochs");
        let title = &texts[0].2;
        assert!(title.starts_with("scratch GRU") && title.contains(" on a-text-with-a-name"), "{title}");
        assert!(!title.contains("directory"), "the file name, not the path: {title}");
        assert!(title.chars().count() <= 72 && title.ends_with('…'), "{title}");
    }
}

#[test]
fn best_checkpoint_and_early_stopping() {
    let dir = TempDir::new("best");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let base = [
        "train",
        "--config",
        &c,
        "--out",
        "run",
        "--set",
        "data.val_fraction=0.2",
        "--set",
        "model.reset_gate=\"after\"",
        "--set",
        "train.val_every=1",
        "--set",
        "train.lr=5",
        "--set",
        "train.epochs=300",
    ];
    let o = grulm(dir.path(), &[&base[..], &["--set", "train.patience=3"]].concat());
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let metrics: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let vals: Vec<f64> = metrics.iter().map(|m| m["val_ppl"].as_f64().unwrap()).collect();
    let n = vals.len();
    assert!(n < 300, "stopped early");
    // The best is the lowest validation perplexity; the three after it are not lower.
    let (best_i, best) = vals.iter().copied().enumerate().fold((0, f64::INFINITY), |a, (i, v)| if v < a.1 { (i, v) } else { a });
    assert_eq!(best_i, n - 4, "{vals:?}");
    assert!(stdout(&o)
        .contains(&format!("early stop after epoch {n}: 3 validations without a better perplexity than {best:.3} (epoch {})", best_i + 1)));
    let ck = grulm::platform::tensorfile::load(&dir.join("run/best.safetensors")).unwrap();
    assert_eq!(ck.metadata["grulm.epoch"], (best_i + 1).to_string());
    // The weights in best.safetensors give that perplexity again; the last ones the last.
    let eval = |which: &str| -> f64 {
        let o = grulm(dir.path(), &["eval", "--run", "run", "--split", "val", "--json", "--checkpoint", which]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["perplexity"].as_f64().unwrap()
    };
    assert_eq!(eval("best"), best);
    assert_eq!(eval("last"), vals[n - 1]);
    // Drawn (temperature 1, one seed), not greedy: three epochs apart, the two
    // models' greedy text can be the same loop of words.
    let drawn = ["sample", "--run", "run", "--len", "200", "--temperature", "1", "--seed", "7"];
    let sample = |which: &str| stdout(&grulm(dir.path(), &[&drawn[..], &["--checkpoint", which]].concat()));
    assert_eq!(sample("best"), stdout(&grulm(dir.path(), &drawn)), "best by default");
    assert_ne!(sample("best"), sample("last"));
    // export too: best by default.
    let export = |args: &[&str]| {
        let o = grulm(dir.path(), &[&["export", "--run", "run"][..], args].concat());
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    };
    export(&["--out", "default.safetensors"]);
    export(&["--checkpoint", "best", "--out", "best.safetensors"]);
    export(&["--checkpoint", "last", "--out", "last.safetensors"]);
    // Compared tensor by tensor: the files' metadata order varies from run to run.
    let same = |a: &str, b: &str| {
        let (mut x, mut y) = (
            grulm::platform::tensorfile::load(&dir.join(a)).unwrap().tensors,
            grulm::platform::tensorfile::load(&dir.join(b)).unwrap().tensors,
        );
        x.sort_by(|p, q| p.0.cmp(&q.0));
        y.sort_by(|p, q| p.0.cmp(&q.0));
        x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| p.0 == q.0 && p.1.equal(&q.1))
    };
    assert!(same("default.safetensors", "best.safetensors"));
    assert!(!same("best.safetensors", "last.safetensors"));
    // Resumed with the same patience it stays stopped; with more it goes on.
    let o = grulm(dir.path(), &["train", "--out", "run", "--resume"]);
    assert!(stdout(&o).contains(&format!("the run stopped early at epoch {n} (train.patience = 3)")), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().count(), n);
    let o = grulm(
        dir.path(),
        &["train", "--out", "run", "--resume", "--set", "train.patience=6", "--set", format!("train.epochs={}", n + 2).as_str()],
    );
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().count(), n + 2);
    // Patience needs a validation split.
    let o = grulm(dir.path(), &["train", "--out", "other", "--set", "data.corpus=\"x.txt\"", "--set", "train.patience=3"]);
    assert_fails(&o, 2, &["--set train.patience=3: train.patience = 3: expected 0 without a validation split (set data.val_fraction"]);
}

#[test]
fn an_explicit_best_checkpoint_needs_a_run_that_has_one() {
    let dir = TempDir::new("nobest");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    // No validation split, so no best.safetensors (reset after: export takes it).
    let o = grulm(dir.path(), &["train", "--config", &c, "--out", "run", "--set", "model.reset_gate=\"after\""]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let why = "--checkpoint best: run run has no best checkpoint (best.safetensors): it has no validation split (data.val_fraction = 0); use --checkpoint last for its last weights";
    let commands: [&[&str]; 4] = [
        &["sample", "--run", "run", "--len", "5"],
        &["eval", "--run", "run"],
        &["export", "--run", "run", "--out", "w.safetensors"],
        &["gates", "--run", "run", "--text", "the time", "--out", "g.svg"],
    ];
    for args in commands {
        assert_fails(&grulm(dir.path(), &[args, &["--checkpoint", "best"]].concat()), 2, &[why]);
        assert!(!dir.join("w.safetensors").exists() && !dir.join("g.svg").exists(), "{args:?}: nothing written");
        // The default falls back to the last weights, and says so; --checkpoint last is quiet.
        let fallback = grulm(dir.path(), args);
        assert!(fallback.status.success(), "{args:?}: {}", crate::helpers::stderr(&fallback));
        assert_eq!(
            crate::helpers::stderr(&fallback),
            "grulm: run run has no best checkpoint: it has no validation split (data.val_fraction = 0); using its last weights (model.safetensors)\n",
            "{args:?}"
        );
        let last = grulm(dir.path(), &[args, &["--checkpoint", "last"]].concat());
        assert!(last.status.success() && last.stderr.is_empty(), "{args:?}: {}", crate::helpers::stderr(&last));
        assert_eq!(stdout(&fallback), stdout(&last), "{args:?}: the default is the last weights");
        let _ = std::fs::remove_file(dir.join("w.safetensors"));
        let _ = std::fs::remove_file(dir.join("g.svg"));
    }
    // eval on another text: its characters outside the vocabulary (this run's is the
    // letters of x.txt) count as unknown. "Jazz, quiz!" preprocesses (d2l: runs of
    // non-letters to one space, stripped, lower case) to "jazz quiz": 9 tokens, of
    // which j, z, z, q, u, z are not in x.txt.
    dir.write("q.txt", "Jazz, quiz!");
    let o = grulm(dir.path(), &["eval", "--run", "run", "--checkpoint", "last", "--corpus", "q.txt", "--json"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((j["tokens"].as_u64(), j["unknown"].as_u64()), (Some(9), Some(6)), "{j}");
    // A run that validates but was stopped before its first validation.
    let child = crate::helpers::grulm_cmd(
        dir.path(),
        &[
            "train",
            "--config",
            &c,
            "--out",
            "early",
            "--set",
            "data.val_fraction=0.2",
            "--set",
            "train.epochs=3",
            "--set",
            "train.val_every=2",
        ],
    )
    .env("GRULM_TEST_PAUSE", "step:1:2")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    crate::helpers::wait_paused(&dir.join("early"));
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(130));
    assert_fails(
        &grulm(dir.path(), &["sample", "--run", "early", "--checkpoint", "best"]),
        2,
        &["run early has no best checkpoint (best.safetensors): it has not validated yet (0 epoch(s) done, train.val_every = 2)"],
    );
}

#[test]
fn init_from_fine_tunes_another_runs_weights() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("finetune");
    dir.write("pre.toml", small_config(&corpus, ""));
    let o = grulm(dir.path(), &["train", "--config", "pre.toml", "--out", "pre"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    // A small text of its own, in the letters the Time Machine has.
    dir.write("small.txt", "a model that read a book now reads a much shorter text about the same things ".repeat(30));
    let tune = |out: &str, sets: &[&str]| {
        let mut args = vec!["train", "--config", "pre.toml", "--out", out, "--init-from", "pre", "--set", "data.corpus=\"small.txt\""];
        for s in sets {
            args.extend(["--set", s]);
        }
        grulm(dir.path(), &args)
    };
    // With a vanishing lr the fine-tuned weights stay the pre-trained ones: the same
    // perplexity on the new text, and the pre-trained vocabulary.
    let o = tune("still", &["train.lr=1e-12", "train.epochs=1"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(stdout(&o)
        .contains(&format!("initialised from {} (a fresh optimizer)", std::path::Path::new("pre").join("model.safetensors").display())));
    assert_eq!(
        std::fs::read_to_string(dir.join("still/vocab.json")).unwrap(),
        std::fs::read_to_string(dir.join("pre/vocab.json")).unwrap()
    );
    let ppl = |run: &str| -> f64 {
        let o = grulm(dir.path(), &["eval", "--run", run, "--corpus", "small.txt", "--json"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["perplexity"].as_f64().unwrap()
    };
    assert!((ppl("still") - ppl("pre")).abs() < 1e-6, "{} vs {}", ppl("still"), ppl("pre"));
    // Fine-tuning for real lowers it, and starts below a model trained from scratch.
    let o = tune("tuned", &["train.epochs=2"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(ppl("tuned") < ppl("pre"));
    let first = |run: &str| crate::helpers::metrics_without_timing(&dir.join(run))[0]["train_ppl"].as_f64().unwrap();
    let o = grulm(
        dir.path(),
        &[
            "train",
            "--config",
            "pre.toml",
            "--out",
            "scratch",
            "--set",
            "data.corpus=\"small.txt\"",
            "--set",
            "train.epochs=2",
            "--set",
            "sample.prefixes=[\"a model\"]",
        ],
    );
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(first("tuned") < first("scratch"), "{} vs {}", first("tuned"), first("scratch"));
    // A fine-tuned run resumes (from its own files).
    let o = grulm(dir.path(), &["train", "--out", "tuned", "--resume", "--set", "train.epochs=3"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    // Mistakes: another model; characters the pre-trained vocabulary lacks; with --resume.
    assert_fails(&tune("x", &["model.hidden_size=64"]), 2, &["train.init_from = \"pre\": its model differs in model.hidden_size = 32"]);
    dir.write("shout.txt", "WHAT? NO! ".repeat(40) + &"the time machine ".repeat(40));
    let o = grulm(
        dir.path(),
        &[
            "train",
            "--config",
            "pre.toml",
            "--out",
            "x",
            "--init-from",
            "pre",
            "--set",
            "data.corpus=\"shout.txt\"",
            "--set",
            "data.preprocess=\"raw\"",
        ],
    );
    assert_fails(
        &o,
        2,
        &["its vocabulary (28 tokens) lacks characters of corpus shout.txt: \"W\" \"H\" \"A\" \"T\" \"?\" \"N\" \"O\" \"!\"; fine-tuning keeps"],
    );
    assert!(!dir.join("x").exists(), "nothing written");
    let o = grulm(dir.path(), &["train", "--out", "tuned", "--resume", "--init-from", "pre"]);
    assert_fails(&o, 2, &["--init-from", "--resume"]);
}

#[test]
fn schedule_and_sampling_keys_through_the_binary() {
    let dir = TempDir::new("keys");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let sets = ["train.epochs=3", "train.lr_schedule=\"step\"", "train.lr_decay=0.5", "train.warmup_epochs=1", "sample.top_p=0.01"];
    let mut args = vec!["train", "--config", &c, "--out", "run"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = grulm(dir.path(), &args);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let lrs: Vec<f64> = crate::helpers::metrics_without_timing(&dir.join("run")).iter().map(|m| m["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs, [1.0, 1.0, 0.5], "warm-up 1 epoch, then halved every epoch");
    // sample.top_p = 0.01 from the run's config: only the most likely character, as --greedy.
    let sample = |extra: &[&str]| stdout(&grulm(dir.path(), &[&["sample", "--run", "run", "--len", "40"][..], extra].concat()));
    assert_eq!(sample(&[]), sample(&["--greedy"]));
    assert_fails(
        &grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", "train.lr_decay=1.5"]),
        2,
        &["train.lr_decay = 1.5: expected a finite number in (0, 1]"],
    );
}

#[test]
fn dropout_through_the_binary() {
    let dir = TempDir::new("dropout");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    // Two layers, so both places get masks (between the layers, before the output).
    let train = |out: &str, extra: &[&str]| {
        let base = [
            "train",
            "--config",
            &c,
            "--out",
            out,
            "--set",
            "data.val_fraction=0.2",
            "--set",
            "model.num_layers=2",
            "--set",
            "train.val_every=1",
        ];
        let o = grulm(dir.path(), &[&base[..], extra].concat());
        assert!(o.status.success(), "{out}: {}", crate::helpers::stderr(&o));
    };
    let with = ["--set", "model.dropout=0.5", "--set", "train.epochs=3"];
    train("plain", &["--set", "train.epochs=3"]);
    train("drop", &with);
    let (plain, drop) = (metrics_without_timing(&dir.join("plain")), metrics_without_timing(&dir.join("drop")));
    assert_ne!(plain[0]["train_ppl"], drop[0]["train_ppl"], "training with dropout differs from dropout 0");
    // The same seed draws the same masks: a second run is identical.
    train("again", &with);
    assert_eq!(metrics_without_timing(&dir.join("again")), drop);
    // Resumed after 2 epochs, the third draws the masks the uninterrupted run drew.
    train("resumed", &["--set", "model.dropout=0.5", "--set", "train.epochs=2"]);
    let o = grulm(dir.path(), &["train", "--out", "resumed", "--resume", "--set", "train.epochs=3"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(metrics_without_timing(&dir.join("resumed")), drop);
    // Evaluation and sampling use no masks: eval repeats itself exactly and
    // equals the trainer's own validation of the last epoch.
    let eval = || {
        let o = grulm(dir.path(), &["eval", "--run", "drop", "--split", "val", "--json", "--checkpoint", "last"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["perplexity"].as_f64().unwrap()
    };
    assert_eq!(eval(), eval());
    assert_eq!(eval(), drop[2]["val_ppl"].as_f64().unwrap());
    let sample = || stdout(&grulm(dir.path(), &["sample", "--run", "drop", "--len", "40", "--temperature", "1", "--seed", "3"]));
    assert_eq!(sample(), sample());
    // The key is in the saved config only when set; dropout may change on resume.
    assert!(std::fs::read_to_string(dir.join("drop/config.toml")).unwrap().contains("dropout = 0.5"));
    assert!(!std::fs::read_to_string(dir.join("plain/config.toml")).unwrap().contains("dropout"));
    let o = grulm(dir.path(), &["train", "--out", "drop", "--resume", "--set", "train.epochs=4", "--set", "model.dropout=0.2"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    for bad in ["1", "-0.1", "\"half\""] {
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", &format!("model.dropout={bad}")]);
        assert_fails(&o, 2, &[&format!("model.dropout = {bad}: expected a"), "in [0, 1)"]);
    }
    // grulm parity --dropout: libtorch's masks and the scratch model's agree.
    let o = grulm(dir.path(), &["parity", "--cell", "lstm", "--layers", "2", "--dropout", "0.3"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(stdout(&o).matches("dropout 0.3 in the training step").count(), 2, "{}", stdout(&o));
    assert_eq!(stdout(&o).matches("tolerance 1e-10: ok").count(), 2, "{}", stdout(&o));
    assert_fails(&grulm(dir.path(), &["parity", "--dropout", "1.5"]), 2, &["--dropout 1.5: expected a number from 0 to below 1"]);
}

#[test]
fn weight_drop_through_the_binary() {
    let dir = TempDir::new("weight-drop");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let train = |out: &str, extra: &[&str]| {
        let base = ["train", "--config", &c, "--out", out, "--set", "data.val_fraction=0.2", "--set", "train.val_every=1"];
        let o = grulm(dir.path(), &[&base[..], extra].concat());
        assert!(o.status.success(), "{out}: {}", crate::helpers::stderr(&o));
    };
    // The scratch GRU and the built-in LSTM, each against itself without weight drop.
    for (name, model) in
        [("gru", &["--set", "model.cell=\"gru\""][..]), ("lstm", &["--set", "model.kind=\"builtin\"", "--set", "model.cell=\"lstm\""])]
    {
        let with = [model, &["--set", "model.weight_drop=0.5", "--set", "train.epochs=3"]].concat();
        train(&format!("{name}-plain"), &[model, &["--set", "train.epochs=3"]].concat());
        train(&format!("{name}-wd"), &with);
        let (plain, wd) =
            (metrics_without_timing(&dir.join(&format!("{name}-plain"))), metrics_without_timing(&dir.join(&format!("{name}-wd"))));
        assert_ne!(plain[0]["train_ppl"], wd[0]["train_ppl"], "{name}: training with weight drop differs from weight drop 0");
        // The same seed draws the same masks, and a run resumed after 2 epochs
        // draws in its third what the uninterrupted run drew.
        train(&format!("{name}-again"), &with);
        assert_eq!(metrics_without_timing(&dir.join(&format!("{name}-again"))), wd, "{name}");
        train(&format!("{name}-resumed"), &[model, &["--set", "model.weight_drop=0.5", "--set", "train.epochs=2"]].concat());
        let o = grulm(dir.path(), &["train", "--out", &format!("{name}-resumed"), "--resume", "--set", "train.epochs=3"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        assert_eq!(metrics_without_timing(&dir.join(&format!("{name}-resumed"))), wd, "{name}: resumed");
        // Evaluation drops nothing: eval gives the trainer's own validation of the last epoch.
        let o = grulm(dir.path(), &["eval", "--run", &format!("{name}-wd"), "--split", "val", "--json", "--checkpoint", "last"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let ppl = serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["perplexity"].as_f64().unwrap();
        assert_eq!(ppl, wd[2]["val_ppl"].as_f64().unwrap(), "{name}");
    }
    // The key is in the saved config when set, and may change on resume.
    assert!(std::fs::read_to_string(dir.join("gru-wd/config.toml")).unwrap().contains("weight_drop = 0.5"));
    assert!(!std::fs::read_to_string(dir.join("gru-plain/config.toml")).unwrap().contains("weight_drop"));
    let o = grulm(dir.path(), &["train", "--out", "gru-wd", "--resume", "--set", "train.epochs=4", "--set", "model.weight_drop=0.2"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    for bad in ["1", "-0.1", "\"half\""] {
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", &format!("model.weight_drop={bad}")]);
        assert_fails(&o, 2, &[&format!("model.weight_drop = {bad}: expected a"), "in [0, 1)"]);
    }
    let o =
        grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", "model.cell=\"mingru\"", "--set", "model.weight_drop=0.3"]);
    assert_fails(&o, 2, &["model.weight_drop = 0.3: expected 0 for model.cell = \"mingru\"", "no hidden-to-hidden weights"]);
    assert!(!dir.join("bad").exists(), "a refused config writes nothing");
}

#[test]
fn directory_and_list_corpora_through_the_binary() {
    let dir = TempDir::new("corpus-tree");
    let line = "static int count_the_blocks(struct inode *inode) { return inode->i_blocks; }\n";
    dir.write("tree/fs/a.c", line.repeat(30));
    dir.write("tree/fs/b.h", line.repeat(30).trim_end());
    dir.write("tree/fs/Kconfig", "config FS\n");
    dir.write("tree/notes.txt", "plain words\n".repeat(40));
    dir.write("tree/bin/blob.c", [0xffu8, 0xfe, 0x00]);
    let c = cfg_on(&dir, "tree/notes.txt", "");
    let run = |out: &str, sets: &[&str]| {
        let base = ["train.epochs=1", "data.preprocess=\"raw\"", "sample.prefixes=[\"s\"]"];
        crate::helpers::train_with(dir.path(), &c, out, &[&base[..], sets].concat())
    };
    // A directory with data.include: the two C files, sorted, recorded in the run's config.
    let o = run("dir", &["data.corpus=\"tree/fs\"", "data.include=\"*.c,*.h\""]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let saved = std::fs::read_to_string(dir.join("dir/config.toml")).unwrap();
    let bytes = 2 * line.len() * 30 - 1;
    assert!(saved.contains(&format!("# data.corpus was read from 2 file(s), {bytes} bytes in all")), "{saved}");
    let listed: Vec<&str> = saved.lines().filter_map(|l| l.strip_prefix("#   ")).collect();
    assert_eq!(listed, [format!("tree/fs/a.c ({} bytes)", line.len() * 30), format!("tree/fs/b.h ({} bytes)", line.len() * 30 - 1)]);
    assert!(saved.contains("corpus = \"tree/fs\"") && saved.contains("include = \"*.c,*.h\""));
    // The run resumes from its own config (the record is comments), and eval reads the same text.
    let o = grulm(dir.path(), &["train", "--out", "dir", "--resume", "--set", "train.epochs=2"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let o = grulm(dir.path(), &["eval", "--run", "dir", "--json"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let e: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["tokens"].as_u64().unwrap() as usize, bytes, "the two files, a.c ending in its own newline");
    assert_eq!(e["corpus"], "tree/fs");
    // --dry-run names the files and their size.
    let o = run("dry", &["data.corpus=[\"tree/notes.txt\", \"tree/fs\"]", "data.include=\"*.c,*.h\""]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let o = grulm(
        dir.path(),
        &[
            "train",
            "--config",
            &c,
            "--dry-run",
            "--set",
            "data.corpus=[\"tree/notes.txt\", \"tree/fs\"]",
            "--set",
            "data.include=\"*.c,*.h\"",
        ],
    );
    assert!(stdout(&o).contains(&format!("(3 file(s), {} bytes,", bytes + 12 * 40)), "{}", stdout(&o));
    // Bad input: one line each, nothing written.
    for (sets, needles) in [
        (vec!["data.corpus=\"tree\""], vec!["tree/bin/blob.c: not UTF-8 (invalid byte at offset 0)", "data.include"]),
        (
            vec!["data.corpus=\"tree/fs\"", "data.include=\"*.rs\""],
            vec!["corpus tree/fs: no file under it matches data.include = \"*.rs\""],
        ),
        (vec!["data.corpus=\"tree/notes.txt\"", "data.include=\"*.c\""], vec!["data.include = \"*.c\": applies to a directory corpus"]),
        (vec!["data.corpus=\"tree/missing\""], vec!["corpus tree/missing: no such file or directory"]),
        (
            vec!["data.corpus=[]"],
            vec!["data.corpus = []: expected \"timemachine\", a path to a text file or a directory, or a list of paths"],
        ),
        (vec!["data.corpus=[1]"], vec!["data.corpus = [1]: expected"]),
        (
            vec!["data.corpus=\"tree/fs\"", "data.include=\"fs/*.c\""],
            vec!["data.include = \"fs/*.c\": expected comma-separated file-name patterns"],
        ),
        (vec!["data.corpus=\"tree/fs\"", "data.include=\"*.c,\""], vec!["none empty"]),
    ] {
        let o = run("bad", &sets);
        assert_fails(&o, 2, &needles);
        assert!(!dir.join("bad").exists(), "{sets:?}: nothing written");
    }
}

/// One heatmap row read back: the unit and its value per character.
type Row = (usize, Vec<f64>);

/// A gates SVG read back: per gate (in order) its name and rows; the character
/// labels of every panel; the whole text.
struct GatesSvg {
    gates: Vec<(String, Vec<Row>)>,
    chars: Vec<String>,
    text: String,
}

fn attr<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let start = s.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&s[start..start + s[start..].find('"')?])
}

fn read_gates_svg(path: &std::path::Path) -> GatesSvg {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && text.trim_end().ends_with("</svg>"));
    let mut gates: Vec<(String, Vec<Row>)> = vec![];
    let mut chars = vec![];
    for line in text.lines() {
        if line.starts_with("<g class=\"gate\"") {
            gates.push((attr(line, "data-gate").unwrap().to_string(), vec![]));
        } else if line.starts_with("<g class=\"row\"") {
            gates.last_mut().unwrap().1.push((attr(line, "data-unit").unwrap().parse().unwrap(), vec![]));
        } else if line.starts_with("<use ") {
            let v: f64 = attr(line, "data-v").unwrap().parse().unwrap();
            // The colour drawn is the value's (to the rounding of data-v).
            let rgb = |hex: &str| (0..3).map(|k| i32::from_str_radix(&hex[1 + 2 * k..3 + 2 * k], 16).unwrap()).collect::<Vec<_>>();
            let (drawn, of_v) = (rgb(attr(line, "fill").unwrap()), rgb(&grulm::tools::gates::color(v)));
            assert!(drawn.iter().zip(&of_v).all(|(a, b)| (a - b).abs() <= 1), "{line}: colour of {v} is {of_v:?}");
            gates.last_mut().unwrap().1.last_mut().unwrap().1.push(v);
        } else if line.starts_with("<text class=\"char\"") {
            chars.push(line[line.find('>').unwrap() + 1..line.rfind("</text>").unwrap()].to_string());
        }
    }
    GatesSvg { gates, chars, text }
}

/// The top layer's gates of a run computed here from its weights file, in f64,
/// by the chapter's equations (scratch GRU, reset before: z, r) or PyTorch's
/// (a built-in LSTM: i, f, o): per gate, `[T][H]`.
fn gates_by_hand(run: &std::path::Path, text: &str, lstm: bool, layers: usize) -> Vec<Vec<Vec<f64>>> {
    let w: std::collections::HashMap<String, tch::Tensor> = grulm::platform::tensorfile::load(&run.join("model.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(tch::Kind::Double)))
        .collect();
    let vocab = grulm::data::Vocab::load(&run.join("vocab.json")).unwrap();
    let v = vocab.len() as i64;
    let h = if lstm { w["rnn.weight_hh_l0"].size()[1] } else { w["W_hz_l0"].size()[0] };
    let zeros = || tch::Tensor::zeros([1, h], (tch::Kind::Double, tch::Device::Cpu));
    let (mut hs, mut cs): (Vec<tch::Tensor>, Vec<tch::Tensor>) =
        ((0..layers).map(|_| zeros()).collect(), (0..layers).map(|_| zeros()).collect());
    let mut out = vec![vec![]; if lstm { 3 } else { 2 }];
    let rows = |t: &tch::Tensor| Vec::<Vec<f64>>::try_from(t).unwrap().remove(0);
    for c in text.chars() {
        let mut x = tch::Tensor::zeros([1, v], (tch::Kind::Double, tch::Device::Cpu));
        let _ = x.narrow(1, vocab.index(c), 1).fill_(1.0);
        for l in 0..layers {
            let p = |n: &str| &w[&format!("{n}_l{l}")];
            let hp = &hs[l];
            let (gates, h_new) = if lstm {
                let a = x.mm(&p("rnn.weight_ih").tr()) + p("rnn.bias_ih") + hp.mm(&p("rnn.weight_hh").tr()) + p("rnn.bias_hh");
                let g = a.chunk(4, 1); // PyTorch's order: i, f, g, o
                let (i, f, o) = (g[0].sigmoid(), g[1].sigmoid(), g[3].sigmoid());
                cs[l] = &f * &cs[l] + &i * g[2].tanh();
                let h_new = &o * cs[l].tanh();
                (vec![i, f, o], h_new)
            } else {
                let z = (x.mm(p("W_xz")) + hp.mm(p("W_hz")) + p("b_z")).sigmoid();
                let r = (x.mm(p("W_xr")) + hp.mm(p("W_hr")) + p("b_r")).sigmoid();
                let cand = (x.mm(p("W_xh")) + (&r * hp).mm(p("W_hh")) + p("b_h")).tanh();
                let h_new = &z * hp + (1.0 - &z) * cand;
                (vec![z, r], h_new)
            };
            if l == layers - 1 {
                for (k, g) in gates.iter().enumerate() {
                    out[k].push(rows(g));
                }
            }
            hs[l] = h_new.shallow_clone();
            x = h_new;
        }
    }
    out
}

#[test]
fn gates_picture_draws_the_models_own_activations() {
    let dir = TempDir::new("gates");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let train = |out: &str, sets: &[&str]| {
        let o = crate::helpers::train_with(dir.path(), &c, out, &[&["train.epochs=3"][..], sets].concat());
        assert!(o.status.success(), "{out}: {}", crate::helpers::stderr(&o));
    };
    train("gru", &["model.num_layers=2"]);
    train("lstm", &["model.kind=\"builtin\"", "model.cell=\"lstm\""]);
    train("rnn", &["model.cell=\"rnn\""]);

    // A 2-layer scratch GRU, chosen units: its top layer's Z and R, as computed here.
    let o = grulm(dir.path(), &["gates", "--run", "gru", "--text", "The Time Traveller", "--units", "5,0,3", "--out", "g.svg"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(
        stdout(&o).contains("wrote g.svg: update gate Z, reset gate R of the top layer over 18 characters, 3 of 8 units"),
        "{}",
        stdout(&o)
    );
    let svg = read_gates_svg(&dir.join("g.svg"));
    let text = "the time traveller"; // the run's d2l preprocessing lowercases
    let shown: Vec<String> = text.chars().map(|c| if c == ' ' { "␣".to_string() } else { c.to_string() }).collect();
    assert_eq!(svg.chars, [shown.clone(), shown.clone(), shown].concat(), "the characters under each heatmap and the mean lines");
    for title in ["update gate Z</text>", "reset gate R</text>", "mean over all 8 units</text>", "top layer (2 of 2)"] {
        assert!(svg.text.contains(title), "{title}");
    }
    assert_eq!(svg.text.matches("<polyline class=\"mean\"").count(), 2);
    let expected = gates_by_hand(&dir.join("gru"), text, false, 2);
    assert_eq!(svg.gates.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["z", "r"]);
    for (g, (_, rows)) in svg.gates.iter().enumerate() {
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 0, 3], "one row per chosen unit, in order");
        for (unit, values) in rows {
            assert_eq!(values.len(), 18, "one cell per character");
            for (t, v) in values.iter().enumerate() {
                let e = expected[g][t][*unit];
                assert!((v - e).abs() <= 6e-4, "gate {g} unit {unit} step {t}: drawn {v}, computed {e}");
            }
        }
    }
    // Without --units and more units than --max-units: those whose Z varies most.
    let o = grulm(dir.path(), &["gates", "--run", "gru", "--text", text, "--max-units", "4", "--out", "g4.svg"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let svg = read_gates_svg(&dir.join("g4.svg"));
    let std = |u: usize| {
        let z: Vec<f64> = expected[0].iter().map(|row| row[u]).collect();
        let m = z.iter().sum::<f64>() / z.len() as f64;
        z.iter().map(|x| (x - m).powi(2)).sum::<f64>()
    };
    let mut by_std: Vec<usize> = (0..8).collect();
    by_std.sort_by(|&a, &b| std(b).total_cmp(&std(a)));
    let mut drawn: Vec<usize> = svg.gates[0].1.iter().map(|r| r.0).collect();
    drawn.sort();
    let mut top4 = by_std[..4].to_vec();
    top4.sort();
    assert_eq!(drawn, top4);

    // A built-in LSTM (one layer): input, forget and output gates through the
    // layout table, every unit, rows sorted by the input gate's mean; RUN/gates.svg.
    let o = grulm(dir.path(), &["gates", "--run", "lstm", "--text", "time to speak"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let svg = read_gates_svg(&dir.join("lstm/gates.svg"));
    assert!(
        svg.text.contains("input gate I</text>") && svg.text.contains("forget gate F</text>") && svg.text.contains("output gate O</text>")
    );
    let expected = gates_by_hand(&dir.join("lstm"), "time to speak", true, 1);
    assert_eq!(svg.gates.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["i", "f", "o"]);
    for (g, (_, rows)) in svg.gates.iter().enumerate() {
        let mut units: Vec<usize> = rows.iter().map(|r| r.0).collect();
        units.sort();
        assert_eq!(units, (0..8).collect::<Vec<_>>());
        for (unit, values) in rows {
            for (t, v) in values.iter().enumerate() {
                assert!((v - expected[g][t][*unit]).abs() <= 6e-4, "LSTM gate {g} unit {unit} step {t}");
            }
        }
    }
    let means: Vec<f64> = svg.gates[0].1.iter().map(|r| r.1.iter().sum::<f64>() / r.1.len() as f64).collect();
    assert!(means.windows(2).all(|m| m[0] >= m[1] - 1e-3), "{means:?}");

    // Mistakes: one line each.
    let gates = |args: &[&str]| grulm(dir.path(), &[&["gates"][..], args].concat());
    assert_fails(&gates(&["--run", "rnn", "--text", "time"]), 2, &["model.cell = \"rnn\"", "has no gates"]);
    assert_fails(&gates(&["--run", "gru", "--text", "quiz"]), 2, &["--text: characters outside the model's vocabulary: 'q', 'u', 'z'"]);
    assert_fails(
        &gates(&["--run", "gru", "--text", "time", "--units", "8"]),
        2,
        &["--units 8: the model has 8 hidden units, numbered 0 to 7"],
    );
    assert_fails(&gates(&["--run", "gru", "--text", "time", "--max-units", "0"]), 2, &["--max-units 0: expected 1 to 1024"]);
    assert_fails(&gates(&["--run", "gru", "--text", &"time".repeat(101)]), 2, &["--text: 404 characters; grulm gates draws at most 400"]);
    assert_fails(&gates(&["--run", "gru", "--text", "123"]), 2, &["--text: nothing is left of the text after the run's preprocessing"]);
}

#[test]
fn minimal_cells_through_the_binary() {
    // model.cell = "mingru" | "minlstm": trained, sampled, evaluated and drawn
    // by the binary; what they cannot do is refused in one line each.
    let dir = TempDir::new("mincells");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let train = |out: &str, sets: &[&str]| {
        let mut args = vec!["train", "--config", &c, "--out", out, "--set", "train.epochs=3", "--set", "data.val_fraction=0.2"];
        for s in sets {
            args.extend(["--set", s]);
        }
        grulm(dir.path(), &args)
    };
    for (cell, name) in [("mingru", "minGRU"), ("minlstm", "minLSTM")] {
        let o = train(cell, &[&format!("model.cell=\"{cell}\""), "model.num_layers=2", "model.dropout=0.2"]);
        assert!(o.status.success(), "{cell}: {}", crate::helpers::stderr(&o));
        assert!(stdout(&o).contains(&format!("scratch {name} (2 layer(s), H=8)")), "{}", stdout(&o));
        let m = metrics_without_timing(&dir.join(cell));
        let ppl = |k: &str| m.iter().map(|e| e[k].as_f64().unwrap()).collect::<Vec<_>>();
        assert!(ppl("train_ppl")[2] < ppl("train_ppl")[0], "{cell} learns: {:?}", ppl("train_ppl"));
        assert!(std::fs::read_to_string(dir.join(&format!("{cell}/config.toml"))).unwrap().contains(&format!("cell = \"{cell}\"")));
        let o = grulm(dir.path(), &["eval", "--run", cell, "--split", "val", "--json", "--checkpoint", "last"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let eval: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(eval["perplexity"].as_f64(), m[2]["val_ppl"].as_f64(), "eval is the trainer's own validation");
        let o = grulm(dir.path(), &["sample", "--run", cell, "--len", "30", "--prefix", "time "]);
        assert!(o.status.success() && stdout(&o).starts_with("time "), "{}", crate::helpers::stderr(&o));
        assert_fails(&grulm(dir.path(), &["export", "--run", cell]), 2, &[&format!("no {name} cell (model.cell = \"{cell}\")")]);
        assert_fails(
            &grulm(dir.path(), &["parity", "--cell", cell]),
            2,
            &[&format!("--cell {cell}: libtorch has no {name} cell to compare with")],
        );
    }
    // The minGRU's update gate Z in `grulm gates`, computed here from the
    // weights file by the paper's equations (two layers, f64).
    let o = grulm(dir.path(), &["gates", "--run", "mingru", "--text", "time to speak", "--out", "g.svg", "--checkpoint", "last"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(stdout(&o).contains("update gate Z of the top layer over 13 characters"), "{}", stdout(&o));
    let w: std::collections::HashMap<String, tch::Tensor> = grulm::platform::tensorfile::load(&dir.join("mingru/model.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(tch::Kind::Double)))
        .collect();
    assert!(!w.keys().any(|n| n.starts_with("W_h") && n != "W_hq"), "no hidden weights: {:?}", w.keys());
    let vocab = grulm::data::Vocab::load(&dir.join("mingru/vocab.json")).unwrap();
    let mut hs: Vec<tch::Tensor> = (0..2).map(|_| tch::Tensor::zeros([1, 8], (tch::Kind::Double, tch::Device::Cpu))).collect();
    let mut expected: Vec<Vec<f64>> = vec![];
    for ch in "time to speak".chars() {
        let mut x = tch::Tensor::zeros([1, vocab.len() as i64], (tch::Kind::Double, tch::Device::Cpu));
        let _ = x.narrow(1, vocab.index(ch), 1).fill_(1.0);
        for (l, h) in hs.iter_mut().enumerate() {
            let p = |n: &str| &w[&format!("{n}_l{l}")];
            let z = (x.mm(p("W_xz")) + p("b_z")).sigmoid();
            *h = (1.0 - &z) * &*h + &z * (x.mm(p("W_xh")) + p("b_h"));
            if l == 1 {
                expected.push(Vec::<Vec<f64>>::try_from(&z).unwrap().remove(0));
            }
            x = h.shallow_clone();
        }
    }
    let svg = read_gates_svg(&dir.join("g.svg"));
    assert_eq!(svg.gates.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["z"]);
    for (unit, values) in &svg.gates[0].1 {
        for (t, v) in values.iter().enumerate() {
            assert!((v - expected[t][*unit]).abs() <= 6e-4, "unit {unit} step {t}: drawn {v}, computed {}", expected[t][*unit]);
        }
    }
    // What the minimal cells do not have: one line each.
    for (set, needle) in [
        (
            "model.kind=\"builtin\"",
            "model.kind = \"builtin\": expected \"scratch\" for model.cell = \"mingru\" (libtorch has no minGRU cell)",
        ),
        ("model.reset_gate=\"after\"", "model.reset_gate = \"after\": expected no value for model.cell = \"mingru\""),
        ("model.gru_gates=\"reset-only\"", "model.gru_gates"),
    ] {
        assert_fails(&train("bad", &["model.cell=\"mingru\"", set]), 2, &[needle]);
    }
    assert_fails(&train("bad", &["model.cell=\"mingrux\""]), 2, &["model.cell = \"mingrux\"", "or \"mingru\" or \"minlstm\""]);
}

#[test]
fn progress_lines_without_a_terminal() {
    // stdout is a pipe here, as in a Slurm log: with train.progress_seconds
    // below one step's time, a line after every minibatch but each epoch's last.
    let dir = TempDir::new("progress");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let run = |out: &str, every: &str| {
        let o = grulm(
            dir.path(),
            &["train", "--config", &c, "--out", out, "--set", "train.epochs=2", "--set", &format!("train.progress_seconds={every}")],
        );
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        stdout(&o)
    };
    let out = run("fine", "0.000001");
    let n: usize = out.split(" minibatches of ").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    for epoch in [1, 2] {
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("epoch {epoch}: minibatch "))).collect();
        assert_eq!(lines.len(), n - 1, "{out}");
        for (k, l) in lines.iter().enumerate() {
            assert!(l.starts_with(&format!("epoch {epoch}: minibatch {}/{n} (", k + 1)), "{l}");
            for part in [" tokens/s, loss ", " (perplexity ", ") over the last 1, epoch ends in "] {
                assert!(l.contains(part), "{l}");
            }
            assert!(l.ends_with('s'), "{l}");
        }
    }
    // The printed losses are the trainer's: with the epoch's mean (its train_ppl),
    // they leave for the last, unprinted step a loss between 0 and ln V + 0.5.
    let m = metrics_without_timing(&dir.join("fine"));
    let printed: f64 = out
        .lines()
        .filter(|l| l.starts_with("epoch 1: minibatch "))
        .map(|l| l.split("loss ").nth(1).unwrap().split(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let last = n as f64 * m[0]["train_ppl"].as_f64().unwrap().ln() - printed;
    assert!(last > 0.0 && last < 20f64.ln() + 0.5, "the last step's loss would be {last}");
    // Off: none.
    assert!(!run("off", "0").contains(": minibatch "));
    assert!(std::fs::read_to_string(dir.join("fine/config.toml")).unwrap().contains("progress_seconds = 0.000001"));
    for bad in ["-1", "\"often\""] {
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", &format!("train.progress_seconds={bad}")]);
        assert_fails(&o, 2, &[&format!("train.progress_seconds = {bad}: expected a"), ">= 0 (0: no progress lines)"]);
    }
}

#[test]
fn bf16_precision_through_the_binary() {
    // train.precision = "bf16" through --set: the run says how its products
    // are computed, records the key, learns, and may resume in f32 (the key
    // is resumable); a bad value is one line and writes nothing.
    let dir = TempDir::new("bf16");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let o = crate::helpers::train_with(dir.path(), &c, "mixed", &["train.precision=bf16", "train.epochs=20", "train.predict_every=0"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("train.precision = bf16: bf16 inputs, f32 accumulation; kernel "), "{out}");
    let saved = std::fs::read_to_string(dir.join("mixed/config.toml")).unwrap();
    assert!(saved.contains("precision = \"bf16\""), "{saved}");
    let m = metrics_without_timing(&dir.join("mixed"));
    let (first, last) = (m[0]["train_ppl"].as_f64().unwrap(), m[19]["train_ppl"].as_f64().unwrap());
    assert!(first / last >= 1.5, "perplexity {first:.2} -> {last:.2} in bf16");
    let o = grulm(dir.path(), &["train", "--out", "mixed", "--resume", "--set", "train.precision=f32", "--set", "train.epochs=21"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(!stdout(&o).contains("train.precision = bf16"), "{}", stdout(&o));
    assert_eq!(metrics_without_timing(&dir.join("mixed")).len(), 21);
    for (set, expected) in [
        ("train.precision=fp16", "train.precision = \"fp16\": expected \"f32\" or \"bf16\""),
        ("train.precision=16", "train.precision = 16: expected \"f32\" or \"bf16\""),
    ] {
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--set", set]);
        assert_fails(&o, 2, &[expected]);
    }
    let o = grulm(dir.path(), &["train", "--config", &c, "--out", "bad", "--device", "cuda", "--set", "train.precision=bf16"]);
    assert_eq!(o.status.code(), Some(2), "{}", crate::helpers::stderr(&o));
    assert!(!dir.join("bad").exists(), "a refused config writes nothing");
}

#[test]
fn epoch_steps_and_max_minutes_through_the_binary() {
    let dir = TempDir::new("epoch-steps");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    let c = &c;
    let train = |out: &str, sets: &[&str]| {
        let base = ["data.val_fraction=0.2", "train.predict_every=0"];
        let o = crate::helpers::train_with(dir.path(), c, out, &[&base[..], sets].concat());
        assert!(o.status.success(), "{out}: {}", crate::helpers::stderr(&o));
        stdout(&o)
    };
    // Epochs of 7 minibatches: validation, the best weights and checkpoints count them.
    let out = train("steps", &["train.epoch_steps=7", "train.epochs=5", "train.val_every=2", "train.checkpoint_every=2"]);
    assert!(out.contains("7 minibatches of 4x5 per epoch (train.epoch_steps; a pass over the text is "), "{out}");
    let m = metrics_without_timing(&dir.join("steps"));
    let val: Vec<bool> = m.iter().map(|e| !e["val_ppl"].is_null()).collect();
    assert_eq!(val, [false, true, false, true, true], "every 2 epochs of 7 steps, and the last");
    let best = grulm::platform::tensorfile::load(&dir.join("steps/best.safetensors")).unwrap();
    let best_epoch: usize = best.metadata["grulm.epoch"].parse().unwrap();
    assert!([2, 4, 5].contains(&best_epoch));
    // The unit is the run's: a resume may not change it.
    let o = grulm(dir.path(), &["train", "--out", "steps", "--resume", "--set", "train.epoch_steps=8"]);
    assert_fails(&o, 2, &["--resume: train.epoch_steps differ(s) from the run's"]);
    // A time limit stops after the epoch that reaches it, validated and checkpointed.
    let out = train("clock", &["train.max_minutes=0.000001", "train.epochs=50", "train.val_every=10"]);
    assert!(out.contains("time is up after epoch 1: ") && out.contains("reached train.max_minutes = 0.000001"), "{out}");
    let m = metrics_without_timing(&dir.join("clock"));
    assert_eq!(m.len(), 1);
    assert!(m[0]["val_ppl"].as_f64().is_some(), "the last epoch validates");
    assert!(dir.join("clock/checkpoint.safetensors").exists());
    // A resumed run stays stopped until the limit is raised.
    let o = grulm(dir.path(), &["train", "--out", "clock", "--resume"]);
    assert!(stdout(&o).contains("of its train.max_minutes = 0.000001; raise it with --set train.max_minutes=M to go on"), "{}", stdout(&o));
    assert_eq!(metrics_without_timing(&dir.join("clock")).len(), 1);
    let o = grulm(dir.path(), &["train", "--out", "clock", "--resume", "--set", "train.max_minutes=0", "--set", "train.epochs=3"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(metrics_without_timing(&dir.join("clock")).len(), 3);
    for (set, expected) in [
        ("train.epoch_steps=-1", "train.epoch_steps = -1: expected an integer from"),
        ("train.epoch_steps=2.5", "train.epoch_steps = 2.5: expected an integer from"),
        ("train.max_minutes=-1", "train.max_minutes = -1: expected a finite number >= 0 minutes"),
        ("train.max_minutes=\"30m\"", "train.max_minutes = \"30m\": expected a number >= 0 minutes"),
    ] {
        let o = grulm(dir.path(), &["train", "--config", c, "--out", "bad", "--set", set]);
        assert_fails(&o, 2, &[expected]);
    }
    assert!(!dir.join("bad").exists(), "a refused config writes nothing");
}
