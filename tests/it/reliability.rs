//! Bad input, numerical faults, crash safety: each case runs the real binary and
//! expects one clear line, the right exit code, no panic, nothing half-written.
use crate::helpers::{
    assert_fails, cfg_on, grulm, grulm_cmd, metrics_without_timing, small_config, stdout, timemachine, wait_paused, TempDir,
};
use std::path::Path;

const USAGE: i32 = 2;
const RUNTIME: i32 = 1;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn corpus_mistakes() {
    let dir = TempDir::new("corpus");
    std::fs::create_dir_all(dir.join("adir")).unwrap();
    dir.write("empty.txt", "");
    dir.write("latin1.txt", b"caf\xe9 au lait, the time traveller\n".repeat(10));
    dir.write("digits.txt", "1234 5678 !!! ??? ...\n".repeat(50));
    dir.write("short.txt", "abcdefghij".repeat(2)); // 20 tokens < 4*5+1
    dir.write("afile.txt", "x");
    let cases: &[(&str, &[&str])] = &[
        ("missing.txt", &["corpus missing.txt: no such file"]),
        ("adir", &["corpus adir: is a directory with no files"]),
        ("afile.txt/below", &["corpus afile.txt/below: cannot read:"]),
        ("empty.txt", &["corpus empty.txt: is empty"]),
        ("latin1.txt", &["corpus latin1.txt: not UTF-8 (invalid byte at offset 3)"]),
        ("digits.txt", &["corpus digits.txt: nothing is left after preprocessing", "data.preprocess = \"raw\""]),
        ("short.txt", &["corpus short.txt: 20 training tokens", "too few for one minibatch", "4 x 5 + 1 = 21"]),
    ];
    for (corpus, needles) in cases {
        let c = cfg_on(&dir, corpus, "");
        let o = grulm(dir.path(), &["train", "--config", &c, "--out", "run"]);
        assert_fails(&o, USAGE, needles);
        assert!(!dir.join("run").exists(), "{corpus}: nothing written for a bad corpus");
    }
    // max_tokens counts: a long text cut too short is refused the same way.
    dir.write("long.txt", "abcdefghij".repeat(100));
    let c = cfg_on(&dir, "long.txt", "");
    let c_text = std::fs::read_to_string(dir.join(&c)).unwrap().replace("max_tokens = 0", "max_tokens = 15");
    dir.write("c.toml", c_text);
    assert_fails(&grulm(dir.path(), &["train", "--config", "c.toml", "--out", "run"]), USAGE, &["15 training tokens", "too few"]);
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.write("secret.txt", "abc");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        let c = cfg_on(&dir, "secret.txt", "");
        assert_fails(&grulm(dir.path(), &["train", "--config", &c]), USAGE, &["corpus secret.txt: cannot read"]);
    }
}

#[test]
fn timemachine_download_failure_says_where_to_put_the_file() {
    let dir = TempDir::new("nonet");
    let o = grulm(dir.path(), &["train", "--set", "train.epochs=1"]);
    let err = assert_fails(
        &o,
        RUNTIME,
        &["put timemachine.txt (SHA-1 090b5e7e70c295757f55df93cb0a180b9691891a) in", "GRULM_DATA_DIR", "download of"],
    );
    assert!(err.contains(&dir.join("data").display().to_string()), "{err}");
    assert!(!dir.join("data/timemachine.txt").exists());
    // A wrong file in its place is refused, not trained on.
    std::fs::write(dir.join("data/timemachine.txt"), "not the book").unwrap();
    assert_fails(
        &grulm(dir.path(), &["train", "--set", "train.epochs=1"]),
        RUNTIME,
        &["timemachine.txt has SHA-1", "remove it to download it again"],
    );
}

#[test]
fn config_mistakes_through_the_binary() {
    let dir = TempDir::new("config");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let cases: &[(&str, &[&str], &str)] = &[
        ("[train]\nlrr = 1\n", &[], "c.toml: unknown key train.lrr; expected one of:"),
        ("[train]\nlr = \"x\"\n", &[], "c.toml: train.lr = \"x\": expected a number > 0"),
        ("[train\nlr = 1\n", &[], "c.toml:1:7: malformed TOML:"),
        ("[train]\nlr = -1\n", &[], "c.toml: train.lr = -1: expected a finite number > 0"),
        ("[train]\nlr = nan\n", &[], "c.toml: train.lr = nan: expected a finite number > 0"),
        ("", &["train.lr=0"], "--set train.lr=0: train.lr = 0: expected a finite number > 0"),
        ("[data]\nbatch_size = 0\n", &[], "c.toml: data.batch_size = 0: expected an integer from 1 to 65536"),
        ("[data]\nnum_steps = -3\n", &[], "c.toml: data.num_steps = -3: expected an integer from 1 to 65536"),
        ("[model]\nhidden_size = 0\n", &[], "c.toml: model.hidden_size = 0: expected an integer from 1 to 65536"),
        ("[model]\nnum_layers = -1\n", &[], "c.toml: model.num_layers = -1: expected an integer from 1 to 1024"),
        ("[train]\nepochs = 0\n", &[], "c.toml: train.epochs = 0: expected an integer from 1 to 1048576"),
        ("", &["data.batch_size=2000000"], "--set data.batch_size=2000000: data.batch_size = 2000000: expected an integer from 1 to 65536"),
        ("", &["data.num_steps=5000000"], "--set data.num_steps=5000000: data.num_steps = 5000000: expected an integer from 1 to 65536"),
        ("[model]\nhidden_size = 100000\n", &[], "c.toml: model.hidden_size = 100000: expected an integer from 1 to 65536"),
        ("[train]\ncheckpoint_every = 2000000\n", &[], "c.toml: train.checkpoint_every = 2000000: expected an integer from 0 to 1048576"),
        ("[train]\nthreads = 5000\n", &[], "c.toml: train.threads = 5000: expected an integer from 0 to 4096"),
        ("[sample]\nlen = 20000000\n", &[], "c.toml: sample.len = 20000000: expected an integer from 1 to 10000000"),
        ("[train]\ngrad_clip = -1\n", &[], "c.toml: train.grad_clip = -1: expected a finite number > 0"),
        ("[model]\nkind = \"transformer\"\n", &[], "c.toml: model.kind = \"transformer\": expected \"scratch\" or \"builtin\""),
        ("[train]\noptimizer = \"lion\"\n", &[], "c.toml: train.optimizer = \"lion\": expected \"sgd\" or \"adam\""),
        ("[data]\npartition = \"striped\"\n", &[], "c.toml: data.partition = \"striped\": expected \"sequential\" or \"random\""),
        ("[model]\nreset_gate = \"sideways\"\n", &[], "c.toml: model.reset_gate = \"sideways\": expected \"before\" or \"after\""),
        ("[model]\ncell = \"gru2\"\n", &[], "c.toml: model.cell = \"gru2\": expected \"gru\" or \"lstm\" or \"rnn\""),
        (
            "[model]\nkind = \"builtin\"\n",
            &["model.gru_gates=reset-only"],
            "--set model.gru_gates=reset-only: model.gru_gates = \"reset-only\": expected \"both\" for model.kind = \"builtin\"",
        ),
        ("[train]\ndevice = \"gpu\"\n", &[], "c.toml: train.device = \"gpu\": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
        ("", &["train.lr"], "--set train.lr: no '='; expected SECTION.KEY=VALUE"),
        ("", &["lr=0.5"], "--set lr=0.5: the key has no section"),
        (
            "",
            &["data.corpus=x.txt", "sample.prefixes=[\"xyz\"]"],
            "sample.prefixes: prefix \"xyz\" has characters outside the model's vocabulary: 'x', 'y', 'z'",
        ),
    ];
    for (text, sets, want) in cases {
        dir.write("c.toml", text);
        let mut args = vec!["train", "--config", "c.toml", "--out", "run"];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let err = assert_fails(&grulm(dir.path(), &args), USAGE, &[want]);
        assert!(!dir.join("run").exists(), "{text:?}: nothing written ({err})");
    }
    assert_fails(&grulm(dir.path(), &["train", "--config", "nope.toml"]), USAGE, &["config nope.toml: cannot read"]);
    assert_fails(&grulm(dir.path(), &["train", "--device", "tpu", "--set", "data.corpus=\"x.txt\""]), USAGE, &["device \"tpu\""]);
}

#[test]
fn cuda_where_there_is_none_says_why() {
    if tch::Cuda::is_available() {
        return;
    }
    let dir = TempDir::new("cuda");
    let o = grulm(dir.path(), &["parity", "--device", "cuda"]);
    let why =
        if grulm::platform::device::libtorch_has_cuda() { "libtorch has CUDA, but no GPU was found" } else { "was built without CUDA" };
    assert_fails(&o, USAGE, &["device \"cuda\"", why, "--device cpu"]);
}

/// A trained tiny run to sample from and break.
fn tiny_run(dir: &TempDir) {
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(dir, "x.txt", "[sample]\nlen = 10\n");
    let o = grulm(dir.path(), &["train", "--config", &c, "--out", "run"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
}

#[test]
fn sampling_mistakes() {
    let dir = TempDir::new("sample");
    tiny_run(&dir);
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["--prefix", ""], USAGE, &["the prefix is empty"]),
        (&["--prefix", "Time Traveller!"], USAGE, &["prefix \"Time Traveller!\" has characters outside the model's vocabulary: '!', 'T'"]),
        (&["--len", "0"], USAGE, &["--len 0: expected 1 to 10000000"]),
        (&["--len", "99999999999"], USAGE, &["--len 99999999999: expected 1 to 10000000"]),
        (&["--temperature", "0"], USAGE, &["--temperature 0: expected a number > 0"]),
        (&["--temperature=-1"], USAGE, &["--temperature -1: expected a number > 0"]),
        (&["--top-k", "0"], USAGE, &["--top-k 0: expected 1 to the vocabulary size"]),
        (&["--top-k", "500"], USAGE, &["top-k 500: expected 1 to"]),
    ];
    for (args, code, needles) in cases {
        let mut all = vec!["sample", "--run", "run"];
        all.extend(*args);
        assert_fails(&grulm(dir.path(), &all), *code, needles);
    }
    assert_fails(&grulm(dir.path(), &["sample", "--run", "nowhere"]), USAGE, &["run directory nowhere: no such directory"]);
    dir.write("notes.txt", "not a run");
    for cmd in ["sample", "eval", "export"] {
        assert_fails(
            &grulm(dir.path(), &[cmd, "--run", "notes.txt"]),
            USAGE,
            &["run directory notes.txt: is a file, expected a run directory"],
        );
    }
    // clap's own errors are one line too.
    assert_fails(&grulm(dir.path(), &["sample"]), USAGE, &["--run <RUN>", "grulm sample --help"]);
    assert_fails(&grulm(dir.path(), &["sample", "--run", "run", "--len", "many"]), USAGE, &["invalid value 'many' for '--len <LEN>'"]);
    assert_fails(&grulm(dir.path(), &["frobnicate"]), USAGE, &["unrecognized subcommand 'frobnicate'"]);
}

#[test]
fn long_samples_stream_in_bounded_memory() {
    let dir = TempDir::new("long");
    tiny_run(&dir);
    let rss = |len: &str| -> (usize, f64) {
        #[allow(clippy::zombie_processes)] // reaped by wait4 below
        let mut child = crate::helpers::grulm_cmd(dir.path(), &["sample", "--run", "run", "--len", len, "--temperature", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        // This child's own peak (wait4), not RUSAGE_CHILDREN's largest child of
        // the whole test process, which other tests' runs share.
        let (mut status, mut ru): (i32, libc::rusage) = (0, unsafe { std::mem::zeroed() });
        // SAFETY: waits for our own child (std's Child is never waited on after this)
        // and writes into the two values we pass.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        assert_eq!(pid, child.id() as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        // Characters generated: a sampled <unk> prints as its 5-character name.
        (text.trim_end_matches('\n').replace("<unk>", "?").chars().count(), ru.ru_maxrss as f64 / 1024.0)
    };
    let (n_small, _) = rss("1000");
    assert_eq!(n_small, "time traveller".len() + 1000);
    let (n_big, peak_big) = rss("100000");
    assert_eq!(n_big, "time traveller".len() + 100_000);
    // The whole output is 100 kB, so a run that held every step's tensors would
    // show; libtorch alone is a few hundred MiB.
    assert!(peak_big < 1024.0, "peak RSS {peak_big} MiB");
}

#[test]
fn checkpoint_mistakes() {
    let dir = TempDir::new("ckpt");
    tiny_run(&dir);
    let run = dir.join("run");
    let model = run.join("model.safetensors");
    let good = std::fs::read(&model).unwrap();
    let sample = || grulm(dir.path(), &["sample", "--run", "run", "--len", "5"]);
    assert!(sample().status.success());

    // No model file (a run stopped before writing it) but a checkpoint: its weights,
    // said in one line on stderr, and the same text, since both hold the same weights.
    let expected = stdout(&sample());
    std::fs::remove_file(&model).unwrap();
    for args in [&["sample", "--run", "run", "--len", "5", "--checkpoint", "last"][..], &["eval", "--run", "run", "--checkpoint", "last"]] {
        let o = grulm(dir.path(), args);
        assert!(o.status.success(), "{args:?}: {}", crate::helpers::stderr(&o));
        assert_eq!(
            crate::helpers::stderr(&o).trim(),
            format!(
                "grulm: {} is missing; using the weights in checkpoint.safetensors",
                Path::new("run").join("model.safetensors").display()
            )
        );
    }
    assert_eq!(stdout(&sample()), expected);
    let checkpoint = run.join("checkpoint.safetensors");
    let saved = std::fs::read(&checkpoint).unwrap();
    std::fs::remove_file(&checkpoint).unwrap();
    assert_fails(&sample(), RUNTIME, &["model.safetensors: no such file"]);
    std::fs::write(&checkpoint, saved).unwrap();
    std::fs::write(&model, &good[..good.len() / 2]).unwrap();
    assert_fails(&sample(), RUNTIME, &["model.safetensors: not a valid safetensors file", "truncated or corrupt"]);
    std::fs::write(&model, &good[..4]).unwrap();
    assert_fails(&sample(), RUNTIME, &["not a valid safetensors file (file shorter than a header)"]);
    let mut corrupt = good.clone();
    corrupt[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&model, &corrupt).unwrap();
    assert_fails(&sample(), RUNTIME, &["not a valid safetensors file"]);
    std::fs::write(&model, "this is a text file, not tensors\n".repeat(4)).unwrap();
    assert_fails(&sample(), RUNTIME, &["not a valid safetensors file"]);
    std::fs::write(&model, &good).unwrap();

    // Another config: the shapes no longer fit; the message names the tensor and both shapes.
    let cfg_path = run.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("hidden_size = 8", "hidden_size = 16")).unwrap();
    assert_fails(&sample(), RUNTIME, &["tensor W_hh_l0 has shape [8, 8], but this config's model needs [16, 16]"]);
    std::fs::write(&cfg_path, &cfg).unwrap();

    // A vocabulary that does not match the weights.
    let vocab_path = run.join("vocab.json");
    let vocab = std::fs::read_to_string(&vocab_path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&vocab).unwrap();
    let mut tokens: Vec<String> = v["idx_to_token"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let n = tokens.len();
    tokens.push("#".into());
    std::fs::write(&vocab_path, serde_json::json!({ "idx_to_token": tokens }).to_string()).unwrap();
    assert_fails(
        &sample(),
        RUNTIME,
        &[
            &format!("tensor W_hq has shape [8, {n}], but this config's model needs [8, {}]", n + 1),
            &format!("vocab.json has {} tokens", n + 1),
        ],
    );
    std::fs::write(&vocab_path, "{\"idx_to_token\": [\"a\"]}").unwrap();
    assert_fails(&sample(), USAGE, &["vocab.json", "the first token must be <unk>"]);
    std::fs::write(&vocab_path, &vocab).unwrap();
    assert!(sample().status.success());

    // Resuming on a changed corpus: the vocabulary differs.
    let text = std::fs::read_to_string(dir.join("x.txt")).unwrap();
    std::fs::write(dir.join("x.txt"), text + "zzz qqq").unwrap();
    assert_fails(
        &grulm(dir.path(), &["train", "--out", "run", "--resume", "--set", "train.epochs=2"]),
        USAGE,
        &["vocab.json: the vocabulary built from corpus x.txt", "differs from the run's"],
    );
}

#[test]
fn output_directory_mistakes() {
    let dir = TempDir::new("outdir");
    tiny_run(&dir);
    // An existing run is refused (and left as it was) unless --resume or --force.
    let before = std::fs::read(dir.join("run/model.safetensors")).unwrap();
    assert_fails(
        &grulm(dir.path(), &["train", "--config", "c.toml", "--out", "run"]),
        USAGE,
        &["run already holds a run; use --resume to continue it, --force to replace it"],
    );
    assert_eq!(std::fs::read(dir.join("run/model.safetensors")).unwrap(), before);
    // A path that cannot be a directory.
    assert_fails(
        &grulm(dir.path(), &["train", "--config", "c.toml", "--out", "x.txt/run"]),
        RUNTIME,
        &["cannot create run directory x.txt/run"],
    );
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("ro")).unwrap();
        std::fs::set_permissions(dir.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        assert_fails(&grulm(dir.path(), &["train", "--config", "c.toml", "--out", "ro/run"]), RUNTIME, &["ro/run"]);
    }
    // --resume where no run is.
    assert_fails(&grulm(dir.path(), &["train", "--out", "elsewhere", "--resume"]), USAGE, &["--resume:", "elsewhere"]);
}

#[test]
fn diverging_training_stops_and_keeps_the_last_good_checkpoint() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("nan");
    dir.write("exp.toml", small_config(&corpus, ""));
    // From the start, lr = 1e6: diverges in epoch 1, before any checkpoint.
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--out", "fresh", "--set", "train.lr=1e6"]);
    assert_fails(
        &o,
        RUNTIME,
        &["training diverged: the loss is", "at epoch 1, step", "no checkpoint was written yet", "lower train.lr (now 1000000)"],
    );
    assert!(!dir.join("fresh/checkpoint.safetensors").exists());
    // Four good epochs (checkpoints at 2 and 4), then resumed with lr = 1e6.
    assert!(grulm(dir.path(), &["train", "--config", "exp.toml", "--out", "run"]).status.success());
    let good = std::fs::read(dir.join("run/checkpoint.safetensors")).unwrap();
    let model = std::fs::read(dir.join("run/model.safetensors")).unwrap();
    let o = grulm(dir.path(), &["train", "--out", "run", "--resume", "--set", "train.epochs=8", "--set", "train.lr=1e6"]);
    assert_fails(&o, RUNTIME, &["training diverged: the loss is", "at epoch 5, step", "the last good checkpoint (epoch 4) is kept in run"]);
    // Never overwritten with non-finite weights; no metrics for the diverged epoch.
    assert_eq!(std::fs::read(dir.join("run/checkpoint.safetensors")).unwrap(), good);
    assert_eq!(std::fs::read(dir.join("run/model.safetensors")).unwrap(), model);
    assert_eq!(std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().count(), 4);
    // And the run recovers from it with a sane lr.
    let o = grulm(dir.path(), &["train", "--out", "run", "--resume", "--set", "train.epochs=6", "--set", "train.lr=0.5"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert_eq!(std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().count(), 6);
}

#[test]
fn sigkill_mid_run_leaves_a_loadable_checkpoint_and_resume_matches() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("kill");
    // A checkpoint every epoch.
    dir.write(
        "exp.toml",
        small_config(&corpus, "").replace("epochs = 4", "epochs = 40").replace("checkpoint_every = 2", "checkpoint_every = 1"),
    );
    let full = grulm(dir.path(), &["train", "--config", "exp.toml", "--out", "full"]);
    assert!(full.status.success());
    // Killed where it holds still (GRULM_TEST_PAUSE), whatever the machine's
    // speed: (pause, the checkpoint's epoch, the model file's epoch, a temporary
    // file left). In the middle of writing epoch 2's checkpoint (its temporary
    // file complete, not yet renamed; epoch 2's metrics line already written);
    // between epoch 3's checkpoint and its model file; in the middle of epoch 5.
    for (round, (pause, ck_epoch, model_epoch, tmp)) in
        [("write:checkpoint.safetensors:2", 1, 1, true), ("write:model.safetensors:3", 3, 2, true), ("step:5:7", 4, 4, false)]
            .into_iter()
            .enumerate()
    {
        let out = format!("killed{round}");
        let mut child = grulm_cmd(dir.path(), &["train", "--config", "exp.toml", "--out", &out])
            .env("GRULM_TEST_PAUSE", pause)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_paused(&dir.join(&out));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let run = dir.join(&out);
        let temporaries = || -> Vec<String> {
            std::fs::read_dir(&run)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        };
        assert_eq!(!temporaries().is_empty(), tmp, "round {round}: {:?}", temporaries());
        let ck = grulm::platform::tensorfile::load(&run.join("checkpoint.safetensors")).expect("complete, loadable checkpoint");
        let epoch: usize = ck.metadata["grulm.epoch"].parse().unwrap();
        assert_eq!(epoch, ck_epoch, "round {round}: the checkpoint's epoch");
        let model = grulm::platform::tensorfile::load(&run.join("model.safetensors")).expect("complete, loadable model");
        assert_eq!(model.metadata["grulm.epoch"], model_epoch.to_string(), "round {round}: the model file's epoch");
        let metrics = metrics_without_timing(&run);
        assert!(metrics.len() >= epoch, "metrics hold every epoch up to the checkpoint");
        assert!(grulm(dir.path(), &["sample", "--run", &out, "--len", "5"]).status.success());
        let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let o = grulm(dir.path(), &["train", "--out", &out, "--resume"]);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        assert_eq!(metrics_without_timing(&run), metrics_without_timing(&dir.join("full")), "round {round}: killed after epoch {epoch}");
        // Byte for byte: the lines up to the checkpoint are the ones written before
        // the kill, and every line is the uninterrupted run's, timing fields aside.
        let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let kept: String = before.split_inclusive('\n').take(epoch).collect();
        assert!(after.starts_with(&kept), "round {round}: the lines before the checkpoint were rewritten");
        let full_text = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
        let untimed = |text: &str| -> Vec<String> {
            let timing = ["\"tokens_per_s\":", "\"elapsed_s\":", "\"peak_rss_mib\":"];
            text.lines().map(|l| l.split(',').filter(|f| !timing.iter().any(|t| f.starts_with(t))).collect::<Vec<_>>().join(",")).collect()
        };
        assert_eq!(untimed(&after), untimed(&full_text), "round {round}");
        assert!(temporaries().is_empty(), "temporary files left after the resume: {:?}", temporaries());
    }
}

/// grulm under a virtual-memory limit (`ulimit -v`, KiB): libtorch's allocations
/// fail beyond it, whatever the machine has.
fn grulm_limited(dir: &Path, kib: u64, args: &[&str], debug: bool) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("ulimit -v {kib}; exec '{}' {}", env!("CARGO_BIN_EXE_grulm"), quoted.join(" "));
    let mut c = std::process::Command::new("bash");
    c.args(["-c", &script]).current_dir(dir).env("GRULM_DATA_DIR", dir.join("data"));
    if debug {
        c.env("GRULM_DEBUG", "1");
    }
    c.output().unwrap()
}

#[test]
fn too_large_for_memory_is_refused_before_allocating() {
    let dir = TempDir::new("oom");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    // About 1.6 TiB: more than any machine this runs on. Under a 4 GiB limit, an
    // attempt to allocate it would end in libtorch's message, not the estimate's.
    let args = ["train", "--config", &c, "--out", "run", "--set", "model.hidden_size=65536", "--set", "model.num_layers=16"];
    let o = grulm_limited(dir.path(), 4 << 20, &args, false);
    let err = assert_fails(
        &o,
        USAGE,
        &[
            "this run needs about ",
            "of memory (parameters ",
            "gradients ",
            "activations of one minibatch ",
            "GiB available; lower model.hidden_size (now 65536) or model.num_layers (now 16)",
        ],
    );
    assert!(!err.contains("libtorch"), "{err}");
    assert!(!dir.join("run").exists(), "nothing written");
    // --dry-run says the same, after the estimate; it writes nothing either.
    let o = grulm(dir.path(), &[&args[..], &["--dry-run"]].concat());
    assert_eq!(o.status.code(), Some(USAGE));
    assert!(stdout(&o).starts_with("corpus      x.txt (1 file(s), ") && stdout(&o).contains("\nparameters  "), "{}", stdout(&o));
    assert!(!dir.join("run").exists());

    // A config that fits: --dry-run's parameter count (a formula of the config) is
    // the count of the tensors training then allocates.
    for (i, set) in ["model.cell=\"lstm\"", "model.kind=\"builtin\"", "model.gru_gates=\"update-only\"", "model.reset_gate=\"after\""]
        .iter()
        .enumerate()
    {
        let out = format!("fits{i}");
        let base = ["train", "--config", &c, "--out", &out, "--set", "model.num_layers=2", "--set", set];
        let o = grulm(dir.path(), &[&base[..], &["--dry-run"]].concat());
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        let s = stdout(&o);
        assert!(
            s.contains("\nmemory      about ") && s.contains("\navailable   this machine has ") && s.ends_with("fits        yes\n"),
            "{s}"
        );
        let line = s.lines().find(|l| l.starts_with("parameters  ")).unwrap();
        let count = line.split_whitespace().nth(1).unwrap().to_string();
        assert!(!dir.join(&out).exists(), "--dry-run writes nothing");
        let o = grulm(dir.path(), &base);
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        assert!(stdout(&o).contains(&format!("): {count} parameters;")), "{set}: {count}: {}", stdout(&o));
    }
}

#[test]
fn libtorch_failures_are_one_line_naming_what_grulm_was_doing() {
    let dir = TempDir::new("torchfail");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(20));
    let c = cfg_on(&dir, "x.txt", "");
    // H = 12000: the estimate (about 3.5 GiB) fits this machine, but not a
    // 3.5 GiB address space, of which libtorch's libraries take about 2.7.
    let args = ["train", "--config", &c, "--out", "run", "--set", "model.hidden_size=12000"];
    let o = grulm_limited(dir.path(), 3_500_000, &args, false);
    let err = assert_fails(&o, RUNTIME, &["grulm: error: allocating the model: libtorch: ", "can't allocate memory"]);
    assert!(!err.contains("frame #") && err.len() < 400, "{err}");
    // GRULM_DEBUG=1: libtorch's whole message, for a bug report.
    let o = grulm_limited(dir.path(), 3_500_000, &[&args[..], &["--force"]].concat(), true);
    assert!(crate::helpers::stderr(&o).contains("frame #0"), "{}", crate::helpers::stderr(&o));
    // A small model (3.2 million weights) whose minibatch of 256 x 256 needs about
    // 3.3 GiB of activations: the model fits a 4 GB address space, its first step not.
    dir.write("big.txt", "the time traveller for so it will be convenient to speak of him ".repeat(2100));
    let big = [
        "train",
        "--config",
        &c,
        "--out",
        "run",
        "--force",
        "--set",
        "data.corpus=\"big.txt\"",
        "--set",
        "model.hidden_size=1024",
        "--set",
        "data.batch_size=256",
        "--set",
        "data.num_steps=256",
    ];
    let o = grulm_limited(dir.path(), 4_000_000, &big, false);
    assert_fails(&o, RUNTIME, &["grulm: error: epoch 1: training step 1 of 2: libtorch: ", "can't allocate memory"]);
    assert!(!dir.join("run/metrics.jsonl").exists() && !dir.join("run/checkpoint.safetensors").exists());
}

#[test]
fn a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = TempDir::new("pipe");
    tiny_run(&dir);
    // `grulm sample ... | head -c 20`: head exits after 20 bytes, with most of the
    // 200,000 characters still to write.
    let script = format!(
        "'{}' sample --run run --checkpoint last --len 200000 --temperature 1 2>err.txt | head -c 20 >/dev/null; echo ${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_grulm")
    );
    let o = std::process::Command::new("bash").args(["-c", &script]).current_dir(dir.path()).output().unwrap();
    assert_eq!(stdout(&o).trim(), "0", "grulm's exit status");
    assert_eq!(std::fs::read_to_string(dir.join("err.txt")).unwrap(), "", "nothing on stderr");
}

#[test]
fn sigint_and_sigterm_stop_with_a_checkpoint_that_resumes_exactly() {
    let Some(corpus) = timemachine() else { return };
    let dir = TempDir::new("signals");
    // Two epochs of 2999 minibatches each. With dropout, so the resumed steps must
    // draw the same masks.
    dir.write(
        "exp.toml",
        format!(
            "[data]\ncorpus = {:?}\nmax_tokens = 60000\nbatch_size = 4\nnum_steps = 5\n[model]\nhidden_size = 16\ndropout = 0.2\n[train]\nepochs = 2\ncheckpoint_every = 1\npredict_every = 0\ndevice = \"cpu\"\n",
            corpus.display().to_string()
        ),
    );
    let o = grulm(dir.path(), &["train", "--config", "exp.toml", "--out", "full"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let weights = |run: &str| {
        let mut t = grulm::platform::tensorfile::load(&dir.join(run).join("model.safetensors")).unwrap().tensors;
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let same_weights = |a: &str, b: &str| weights(a).iter().zip(weights(b)).all(|(x, y)| x.0 == y.0 && x.1.equal(&y.1));
    // Each run holds still at a minibatch (GRULM_TEST_PAUSE) until the test's
    // signals arrive, so they land there on any machine: SIGINT in epoch 1,
    // SIGTERM in epoch 2 (after epoch 1's checkpoint), then two signals at once
    // in epoch 2, the second of which exits at once; every run must resume.
    for (out, signals, pause, code) in [
        ("int", &[libc::SIGINT][..], "step:1:1000", 130),
        ("term", &[libc::SIGTERM], "step:2:2500", 143),
        // Two different signals (a second SIGINT sent at once could merge with the
        // first while it is pending): the run waits for both (/2), and the second
        // exits at once, with the code of the first handled (the kernel may
        // deliver them in either order).
        ("twice", &[libc::SIGINT, libc::SIGTERM], "step:2:1500/2", 0),
    ] {
        let child = grulm_cmd(dir.path(), &["train", "--config", "exp.toml", "--out", out])
            .env("GRULM_TEST_PAUSE", pause)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_paused(&dir.join(out));
        for &s in signals {
            // SAFETY: signals our own child.
            unsafe { libc::kill(child.id() as i32, s) };
        }
        let o = child.wait_with_output().unwrap();
        let err = crate::helpers::stderr(&o);
        match code {
            0 => assert!(matches!(o.status.code(), Some(130 | 143)), "{out}: {:?} {err}", o.status),
            _ => assert_eq!(o.status.code(), Some(code), "{out}: {err}"),
        }
        let ck = grulm::platform::tensorfile::load(&dir.join(out).join("checkpoint.safetensors")).expect("a whole checkpoint");
        if signals.len() == 1 {
            let (epoch, minibatch, name) = if out == "int" { (1, 1000, "SIGINT") } else { (2, 2500, "SIGTERM") };
            assert_eq!(err.lines().count(), 1, "{err}");
            assert_eq!(
                err.trim_end(),
                format!("grulm: stopped by {name} at epoch {epoch}, minibatch {minibatch} of 2999; checkpoint written; resume with: grulm train --out {out} --resume"),
            );
            assert_eq!(ck.metadata["grulm.epoch"], (epoch - 1).to_string(), "complete epochs");
            assert_eq!(ck.metadata["grulm.partial_steps"], minibatch.to_string());
        } else {
            assert!(err.contains("grulm: second signal: exiting now; the last checkpoint is intact"), "{err}");
            // The checkpoint is epoch 1's: the second signal came before the first
            // could write one.
            assert_eq!(ck.metadata["grulm.epoch"], "1");
            assert!(!ck.metadata.contains_key("grulm.partial_steps"));
        }
        let o = grulm(dir.path(), &["train", "--out", out, "--resume"]);
        assert!(o.status.success(), "{out}: {}", crate::helpers::stderr(&o));
        assert_eq!(metrics_without_timing(&dir.join(out)), metrics_without_timing(&dir.join("full")), "{out}");
        assert!(same_weights(out, "full"), "{out}: the resumed run ends with the uninterrupted run's weights");
    }
}

#[test]
fn sampling_options_top_p_num_samples_stop_prefix_file_interactive() {
    let dir = TempDir::new("sampleopts");
    tiny_run(&dir);
    let sample = |args: &[&str]| {
        let o = grulm(dir.path(), &[&["sample", "--run", "run", "--len", "60"][..], args].concat());
        assert!(o.status.success(), "{args:?}: {}", crate::helpers::stderr(&o));
        stdout(&o)
    };
    let greedy = sample(&["--greedy"]);
    // A nucleus this small keeps only the most likely character: greedy. At 1 it
    // keeps all: plain sampling, draw for draw.
    assert_eq!(sample(&["--top-p", "0.01", "--seed", "3"]), greedy);
    assert_eq!(sample(&["--top-p", "1", "--temperature", "1", "--seed", "3"]), sample(&["--temperature", "1", "--seed", "3"]));
    assert_ne!(sample(&["--top-p", "0.9", "--seed", "3"]), greedy);
    // N samples in one batch: greedy rows equal the single greedy sample; sampled
    // rows differ from each other; each is the prefix and 60 characters.
    let two = sample(&["--greedy", "--num-samples", "2"]);
    assert_eq!(two, format!("{greedy}\n{greedy}"));
    let three = sample(&["--temperature", "1", "--num-samples", "3", "--seed", "5"]);
    let rows: Vec<&str> = three.trim_end().split("\n\n").collect();
    assert_eq!(rows.len(), 3, "{three}");
    // (a sampled <unk> prints as its 5-character name)
    let chars = |r: &str| r.replace("<unk>", "?").chars().count();
    assert!(rows.iter().all(|r| r.starts_with("time traveller") && chars(r) == "time traveller".len() + 60), "{three}");
    assert!(rows[0] != rows[1] && rows[1] != rows[2], "{three}");
    assert_eq!(sample(&["--temperature", "1", "--num-samples", "3", "--seed", "5"]), three, "seeded");
    // --stop: the text up to and including the first stop string it generates.
    let generated = &greedy.trim_end_matches('\n')["time traveller".len()..];
    let stop = &generated[10..12]; // two characters it generates (maybe earlier too)
    let cut = generated.find(stop).unwrap() + 2;
    assert!(cut < 60);
    assert_eq!(sample(&["--greedy", "--stop", stop]), format!("time traveller{}\n", &generated[..cut]));
    assert_eq!(sample(&["--greedy", "--stop", "no such text"]), greedy);
    // Across the 256-character chunks in which samples are read back.
    let long = |extra: &[&str]| {
        let o = grulm(dir.path(), &[&["sample", "--run", "run", "--temperature", "1", "--seed", "7", "--len", "600"][..], extra].concat());
        assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
        stdout(&o)
    };
    let text = long(&[]);
    let gen = &text.trim_end_matches('\n')["time traveller".len()..];
    let stop: String = gen.chars().skip(254).take(5).collect();
    let cut = gen.find(&stop).unwrap() + stop.len();
    assert_eq!(long(&["--stop", &stop]), format!("time traveller{}\n", &gen[..cut]));
    // --prefix-file: the file's text (without its last newline) is the prefix.
    dir.write("prefix.txt", "the time\n");
    assert_eq!(sample(&["--prefix-file", "prefix.txt", "--greedy"]), sample(&["--prefix", "the time", "--greedy"]));
    // --interactive: a sample per line of stdin; a bad line is one line on stderr.
    let mut child = crate::helpers::grulm_cmd(dir.path(), &["sample", "--run", "run", "--len", "60", "--greedy", "--interactive"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"time traveller\nQ!\n\nthe time\n").unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), format!("{greedy}{}", sample(&["--prefix", "the time", "--greedy"])));
    // The default's note (the run has no best weights), then one line for the bad prefix.
    let err = crate::helpers::stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("has no best checkpoint") && lines[0].ends_with("using its last weights (model.safetensors)"), "{err}");
    assert!(lines[1].contains("prefix \"Q!\" has characters outside the model's vocabulary"), "{err}");
    // Mistakes.
    for (args, needle) in [
        (&["--top-p", "0"][..], "--top-p 0: expected a number in (0, 1]"),
        (&["--top-p", "1.5"], "--top-p 1.5: expected a number in (0, 1]"),
        (&["--num-samples", "0"], "--num-samples 0: expected 1 to 4096"),
        (&["--stop", ""], "--stop: the text is empty"),
        (&["--prefix", "a", "--prefix-file", "prefix.txt"], "--prefix"),
        (&["--prefix-file", "missing.txt"], "--prefix-file missing.txt: cannot read"),
    ] {
        assert_fails(&grulm(dir.path(), &[&["sample", "--run", "run"][..], args].concat()), USAGE, &[needle]);
    }
}

#[test]
fn one_process_per_run_directory() {
    let dir = TempDir::new("lock");
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(50));
    let c = cfg_on(&dir, "x.txt", "[sample]\nprefixes = [\"the\"]\n");
    // A run caught in the middle: it holds still in epoch 2 (GRULM_TEST_PAUSE),
    // after epoch 1's checkpoint, until it is killed.
    let child =
        grulm_cmd(dir.path(), &["train", "--config", &c, "--out", "run", "--set", "train.epochs=3", "--set", "train.checkpoint_every=1"])
            .env("GRULM_TEST_PAUSE", "step:2:1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    wait_paused(&dir.join("run"));
    let holder = format!("run directory run is in use by another grulm process (pid {})", child.id());
    // A resume, and a --force that would delete its files: both refused, nothing touched.
    let before = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert_fails(&grulm(dir.path(), &["train", "--out", "run", "--resume"]), 1, &[&holder]);
    assert_fails(&grulm(dir.path(), &["train", "--config", &c, "--out", "run", "--force"]), 1, &[&holder]);
    assert_eq!(std::fs::read_to_string(dir.join("run/config.toml")).unwrap(), before);
    // Readers are not writers: sampling from the running run works.
    assert!(grulm(dir.path(), &["sample", "--run", "run", "--len", "5", "--checkpoint", "last"]).status.success());
    // SIGKILL: the kernel drops the lock with the process; resuming works at once.
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    let o = grulm(dir.path(), &["train", "--out", "run", "--resume", "--set", "train.epochs=1"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
}
