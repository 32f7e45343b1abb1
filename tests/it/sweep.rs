//! `grulm sweep` through the real binary: expansion, the local executor,
//! idempotence, failures, interruption, status and report.
use crate::helpers::{assert_fails, grulm, grulm_cmd, metrics_without_timing, stdout, wait_paused, TempDir};
use std::time::{Duration, Instant};

/// A tiny corpus and base config in `dir`, and the sweep file `s.toml` with `body`.
fn setup(dir: &TempDir, body: &str) {
    dir.write("x.txt", "the time traveller for so it will be convenient to speak of him ".repeat(40));
    dir.write(
        "c.toml",
        "# tiny\n[data]\ncorpus = \"x.txt\"\nbatch_size = 4\nnum_steps = 5\nmax_tokens = 0\nval_fraction = 0.2\n[model]\nhidden_size = 8\n[train]\ndevice = \"cpu\"\nval_every = 1\nthreads = 1\n",
    );
    dir.write("s.toml", format!("base = \"c.toml\"\n{body}"));
}

fn manifest(dir: &TempDir) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("out/sweep.json")).unwrap()).unwrap()
}

#[test]
fn a_grid_runs_locally_once_and_reports() {
    let dir = TempDir::new("sweep-grid");
    setup(&dir, "[set]\ntrain.epochs = 3\n[grid]\nmodel.hidden_size = [8, 16]\ntrain.lr = [0.5, 2]\n");
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out", "--jobs", "2"]);
    assert!(o.status.success(), "{}{}", stdout(&o), crate::helpers::stderr(&o));
    let names = ["001-hidden_size=8,lr=0.5", "002-hidden_size=8,lr=2", "003-hidden_size=16,lr=0.5", "004-hidden_size=16,lr=2"];
    let m = manifest(&dir);
    let listed: Vec<&str> = m["points"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(listed, names);
    assert_eq!(m["points"][3]["overrides"], serde_json::json!({"model.hidden_size": 16, "train.lr": 2}));
    for n in names {
        assert!(stdout(&o).contains(&format!("sweep: done {n} in ")), "{}", stdout(&o));
    }
    // Each point is a normal run: the same config trained directly gives the same numbers.
    let point = dir.join("out").join(names[3]);
    let direct = grulm(dir.path(), &["train", "--config", point.join("config.toml").to_str().unwrap(), "--out", "direct"]);
    assert!(direct.status.success(), "{}", crate::helpers::stderr(&direct));
    assert_eq!(metrics_without_timing(&point), metrics_without_timing(&dir.join("direct")));
    // Again: nothing to do, nothing touched.
    let before = std::fs::read_to_string(point.join("metrics.jsonl")).unwrap();
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("4 point(s) in out: 4 already done, 0 to run"), "{}", stdout(&o));
    assert_eq!(std::fs::read_to_string(point.join("metrics.jsonl")).unwrap(), before);
    // Status and report.
    let s = stdout(&grulm(dir.path(), &["sweep", "status", "out"]));
    assert!(s.lines().filter(|l| l.contains(" done ")).count() == 4 && s.contains("4 point(s): 4 done"), "{s}");
    let o = grulm(dir.path(), &["sweep", "report", "out"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let table = stdout(&o);
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 4, "{table}");
    let vals: Vec<f64> = rows.iter().map(|r| r.split(" | ").nth(3).unwrap().parse().unwrap()).collect();
    assert!(vals.windows(2).all(|w| w[0] <= w[1]), "sorted by validation perplexity: {vals:?}");
    assert!(rows.iter().all(|r| r.contains("time traveller")), "{table}");
    let csv = stdout(&grulm(dir.path(), &["sweep", "report", "out", "--csv"]));
    assert!(csv.starts_with("point,overrides,train_ppl,val_ppl,tokens_per_s,wall_s,sample\n") && csv.lines().count() == 5, "{csv}");
    let svg = std::fs::read_to_string(dir.join("out/report.svg")).unwrap();
    assert!(names.iter().all(|n| svg.contains(n)), "every point labelled");
    // A changed [set] would change every point: refused, naming one.
    dir.write("s.toml", "base = \"c.toml\"\n[set]\ntrain.epochs = 4\n[grid]\nmodel.hidden_size = [8, 16]\ntrain.lr = [0.5, 2]\n");
    assert_fails(
        &grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]),
        2,
        &["point 001-hidden_size=8,lr=0.5 in out was set up with another config (train.epochs = 3 there, 4 now)"],
    );
}

#[test]
fn a_sweep_on_a_time_budget_is_done_and_reports_against_minutes() {
    let dir = TempDir::new("sweep-clock");
    // Each point stops after its first epoch, by the clock: done, not interrupted.
    setup(&dir, "[set]\ntrain.epochs = 1000\ntrain.max_minutes = 0.000001\n[grid]\nmodel.hidden_size = [8, 16]\n");
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]);
    assert!(o.status.success(), "{}{}", stdout(&o), crate::helpers::stderr(&o));
    for n in ["001-hidden_size=8", "002-hidden_size=16"] {
        assert!(stdout(&o).contains(&format!("sweep: done {n} in ")), "{}", stdout(&o));
        assert_eq!(metrics_without_timing(&dir.join("out").join(n)).len(), 1);
    }
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]);
    assert!(stdout(&o).contains("2 point(s) in out: 2 already done, 0 to run"), "{}", stdout(&o));
    let s = stdout(&grulm(dir.path(), &["sweep", "status", "out"]));
    assert!(s.contains("2 point(s): 2 done"), "{s}");
    // The plot against wall time, in bits per character; by default, per epoch.
    let o = grulm(dir.path(), &["sweep", "report", "out", "--against", "minutes"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let svg = std::fs::read_to_string(dir.join("out/report.svg")).unwrap();
    assert!(svg.contains("bits per character against minutes") && svg.contains("minutes of training"), "{svg}");
    assert!(!svg.contains("perplexity per epoch"), "{svg}");
    grulm(dir.path(), &["sweep", "report", "out"]);
    let svg = std::fs::read_to_string(dir.join("out/report.svg")).unwrap();
    assert!(svg.contains("perplexity per epoch") && !svg.contains("minutes of training"), "{svg}");
    assert_fails(&grulm(dir.path(), &["sweep", "report", "out", "--against", "hours"]), 2, &["hours"]);
}

#[test]
fn sweep_mistakes_and_failures() {
    let dir = TempDir::new("sweep-bad");
    // A bad value: one line naming the point and the key; nothing created.
    setup(&dir, "[grid]\ntrain.lr = [1, -1]\n");
    assert_fails(&grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]), 2, &["sweep s.toml: point 002-lr=-1:", "train.lr"]);
    assert!(!dir.join("out").exists());
    for (body, needle) in [
        ("[grid]\ntrain.lr = 1\n", "[grid] train.lr = 1: expected a non-empty list"),
        ("[grid]\nlr = [1]\n", "expected section.key = value"),
        ("[grid]\ntrain.lr = [1]\n[random]\nsamples = 2\n", "expected one of [grid], [[runs]] or [random]"),
        ("[random]\nsamples = 2\ntrain.lr = { log_uniform = [0, 1] }\n", "0 < lo < hi"),
        ("[grid]\ntrain.lr = [1]\n[extra]\nx = 1\n", "unknown key \"extra\""),
    ] {
        setup(&dir, body);
        assert_fails(&grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]), 2, &[needle]);
    }
    // A point that fails at run time is reported failed with its error; the others finish.
    setup(&dir, "[set]\ntrain.epochs = 2\n[[runs]]\ndata.corpus = \"missing.txt\"\n[[runs]]\ntrain.lr = 2\n");
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out", "--jobs", "2"]);
    assert_fails(&o, 1, &["sweep: 1 of 2 point(s) failed: 001-corpus=missing.txt"]);
    let s = stdout(&grulm(dir.path(), &["sweep", "status", "out"]));
    assert!(s.contains("001-corpus=missing.txt") && s.contains("failed") && s.contains("corpus missing.txt: no such file"), "{s}");
    assert!(s.contains("002-lr=2") && s.contains("1 done, 1 failed"), "{s}");
    // Random points: drawn from the seed, so the same file gives the same points.
    setup(
        &dir,
        "[set]\ntrain.epochs = 1\n[random]\nsamples = 3\nseed = 4\ntrain.lr = { log_uniform = [0.1, 4.0] }\nmodel.hidden_size = [4, 8]\n",
    );
    assert!(grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "rnd"]).status.success());
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "rnd"]);
    assert!(stdout(&o).contains("3 point(s) in rnd: 3 already done"), "{}", stdout(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rnd/sweep.json")).unwrap()).unwrap();
    let lrs: Vec<f64> = m["points"].as_array().unwrap().iter().map(|p| p["overrides"]["train.lr"].as_f64().unwrap()).collect();
    assert!(lrs.iter().all(|&l| (0.1..4.0).contains(&l)), "{lrs:?}");
}

#[test]
fn an_interrupted_sweep_resumes_to_the_same_numbers() {
    let dir = TempDir::new("sweep-int");
    setup(&dir, "[set]\ntrain.epochs = 80\ntrain.checkpoint_every = 1\ntrain.val_every = 20\n[grid]\ntrain.lr = [1, 2]\n");
    // Both points hold still in epoch 3 (GRULM_TEST_PAUSE, which the sweep's
    // trainers inherit) until the sweep passes the signal on: both are running
    // when it comes, on any machine.
    let child = grulm_cmd(dir.path(), &["sweep", "run", "s.toml", "--out", "out", "--jobs", "2"])
        .env("GRULM_TEST_PAUSE", "step:3:2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for p in ["001-lr=1", "002-lr=2"] {
        wait_paused(&dir.join("out").join(p));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}{}", stdout(&o), crate::helpers::stderr(&o));
    assert!(crate::helpers::stderr(&o).contains("sweep stopped by SIGINT: 2 point(s) checkpointed"), "{}", crate::helpers::stderr(&o));
    let s = stdout(&grulm(dir.path(), &["sweep", "status", "out"]));
    assert!(s.contains("2 interrupted"), "{s}");
    for p in ["001-lr=1", "002-lr=2"] {
        let ck = grulm::platform::tensorfile::load(&dir.join("out").join(p).join("checkpoint.safetensors")).unwrap();
        assert_eq!((ck.metadata["grulm.epoch"].as_str(), ck.metadata["grulm.partial_steps"].as_str()), ("2", "2"), "{p}");
    }
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "out"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    assert!(stdout(&o).contains("sweep: resume 001-lr=1"), "{}", stdout(&o));
    // The resumed points end where uninterrupted runs of their configs end.
    for p in ["001-lr=1", "002-lr=2"] {
        let cfg = dir.join("out").join(p).join("config.toml");
        let direct = grulm(dir.path(), &["train", "--config", cfg.to_str().unwrap(), "--out", p]);
        assert!(direct.status.success());
        assert_eq!(metrics_without_timing(&dir.join("out").join(p)), metrics_without_timing(&dir.join(p)), "{p}");
    }
}

// ---------------------------------------------------------------------------
// A real Slurm: scripts/slurm-local.sh starts one (.ci/run does, as root).

/// Whether a Slurm cluster answers here (`SLURM_CONF` set and `sinfo` working);
/// otherwise the test is logged as skipped.
fn slurm_up() -> bool {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && std::process::Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if !up {
        crate::helpers::skip(
            "no Slurm cluster: SLURM_CONF is unset or sinfo fails (scripts/slurm-local.sh start DIR starts one; .ci/run does)",
        );
    }
    up
}

/// `grulm sweep run s.toml --out OUT --executor slurm EXTRA...`, which must succeed; its stdout.
fn submit(dir: &TempDir, out: &str, extra: &[&str]) -> String {
    let o = grulm(dir.path(), &[&["sweep", "run", "s.toml", "--out", out, "--executor", "slurm"][..], extra].concat());
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    stdout(&o)
}

/// Polls `grulm sweep status DIR` until no point is pending, queued, running or
/// interrupted; returns the last status.
fn wait_settled(dir: &TempDir, sweep: &str, secs: u64) -> String {
    let t = Instant::now();
    loop {
        let s = stdout(&grulm(dir.path(), &["sweep", "status", sweep]));
        let last = s.lines().last().unwrap_or("").to_string();
        if !["pending", "queued", "running", "interrupted"].iter().any(|w| last.contains(w)) && last.contains("point(s)") {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "the Slurm sweep did not settle in {secs} s:\n{s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_slurm_job_array_trains_what_the_local_executor_trains() {
    if !slurm_up() {
        return;
    }
    let dir = TempDir::new("sweep-slurm");
    setup(&dir, "[set]\ntrain.epochs = 3\n[grid]\nmodel.hidden_size = [8, 16]\ntrain.lr = [0.5, 2]\n");
    let out = submit(&dir, "out", &[]);
    assert!(out.contains("submitted Slurm job array"), "{out}");
    let script = std::fs::read_to_string(dir.join("out/sweep.sbatch")).unwrap();
    for line in ["#SBATCH --array=0-3", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120", "#SBATCH --cpus-per-task=1"] {
        assert!(script.contains(line), "{line}\n{script}");
    }
    assert!(manifest(&dir)["slurm_job"].as_str().is_some_and(|j| !j.is_empty()));
    let s = wait_settled(&dir, "out", 900);
    assert!(s.contains("4 point(s): 4 done"), "{s}");
    // The same sweep here, one process at a time: the same numbers, bit for bit.
    let o = grulm(dir.path(), &["sweep", "run", "s.toml", "--out", "local", "--jobs", "1"]);
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    for p in manifest(&dir)["points"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert_eq!(metrics_without_timing(&dir.join("out").join(name)), metrics_without_timing(&dir.join("local").join(name)), "{name}");
    }
    // Submitted again: nothing left to do, nothing submitted.
    let out = submit(&dir, "out", &[]);
    assert!(out.contains("all 4 point(s) in out already done"), "{out}");
    // A point failing at run time shows as failed with its error; the other finishes.
    setup(&dir, "[set]\ntrain.epochs = 2\n[[runs]]\ndata.corpus = \"missing.txt\"\n[[runs]]\ntrain.lr = 2\n");
    // With the resource flags, which go into the script as sbatch options.
    submit(&dir, "bad", &["--max-concurrent", "1", "--mem", "500M", "--time", "10:00", "--partition", "debug"]);
    let script = std::fs::read_to_string(dir.join("bad/sweep.sbatch")).unwrap();
    for line in ["#SBATCH --array=0-1%1", "#SBATCH --mem=500M", "#SBATCH --time=10:00", "#SBATCH --partition=debug"] {
        assert!(script.contains(line), "{line}\n{script}");
    }
    let s = wait_settled(&dir, "bad", 900);
    assert!(s.contains("1 done, 1 failed") && s.contains("corpus missing.txt: no such file"), "{s}");
}

#[test]
fn a_requeued_slurm_task_resumes_from_its_checkpoint() {
    if !slurm_up() {
        return;
    }
    let dir = TempDir::new("sweep-requeue");
    setup(&dir, "[set]\ntrain.epochs = 120\ntrain.checkpoint_every = 1\ntrain.val_every = 40\n[grid]\ntrain.lr = [2]\n");
    // The task holds still in epoch 2 (GRULM_TEST_PAUSE: sbatch passes the
    // environment on) until Slurm's signal comes; the requeued task, whose run
    // directory holds the pause's marker, goes through.
    let o = grulm_cmd(dir.path(), &["sweep", "run", "s.toml", "--out", "out", "--executor", "slurm"])
        .env("GRULM_TEST_PAUSE", "step:2:3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", crate::helpers::stderr(&o));
    let job = manifest(&dir)["slurm_job"].as_str().unwrap().to_string();
    wait_paused(&dir.join("out/001-lr=2"));
    // Preempted in the middle of its run: Slurm sends SIGTERM and queues it again.
    let o = std::process::Command::new("scontrol").args(["requeue", &format!("{job}_0")]).output().unwrap();
    assert!(o.status.success(), "scontrol requeue: {}", String::from_utf8_lossy(&o.stderr));
    // Slurm 22.05 starts a requeued task again after about 3 minutes.
    let s = wait_settled(&dir, "out", 1200);
    assert!(s.contains("1 point(s): 1 done"), "{s}");
    let log = std::fs::read_to_string(dir.join("out/001-lr=2/train.log")).unwrap();
    assert!(
        log.contains("grulm: stopped by SIGTERM at epoch 2, minibatch 3 of "),
        "the task was stopped where it held still, and checkpointed:\n{log}"
    );
    // And it ends where an uninterrupted run ends.
    let cfg = dir.join("out/001-lr=2/config.toml");
    assert!(grulm(dir.path(), &["train", "--config", cfg.to_str().unwrap(), "--out", "direct"]).status.success());
    assert_eq!(metrics_without_timing(&dir.join("out/001-lr=2")), metrics_without_timing(&dir.join("direct")));
}
