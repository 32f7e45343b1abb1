//! Temporary directories, the real binary, and the corpus.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("grulm-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The grulm binary, run in `dir` with the data directory pointed at `dir/data`
/// (so nothing is downloaded unless a test wants it).
pub fn grulm(dir: &Path, args: &[&str]) -> Output {
    grulm_cmd(dir, args).output().expect("run grulm")
}

/// `grulm train --config CONFIG --out OUT --set S...` in `dir`.
pub fn train_with(dir: &Path, config: &str, out: &str, sets: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config, "--out", out];
    for s in sets {
        args.extend(["--set", s]);
    }
    grulm(dir, &args)
}

pub fn grulm_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_grulm"));
    c.args(args).current_dir(dir).env("GRULM_DATA_DIR", dir.join("data")).env("GRULM_TIMEMACHINE_URL", "http://127.0.0.1:9/unreachable");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run: the exit code, one line on stderr containing every
/// `needle`, and no panic or backtrace.
pub fn assert_fails(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}\nstdout: {}", stdout(o));
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("downloading ")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("grulm: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE") && !err.contains("internal error"), "{err}");
    err
}

/// Records that the running test skips its checks (`why`): on stderr, as a file
/// in `$GRULM_SKIP_LOG` (make test sets it and ends with a line counting them),
/// and as a failure where every test must run (`GRULM_REQUIRE_ALL=1`, as CI sets).
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("unnamed").to_string();
    if std::env::var("GRULM_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test} would be skipped ({why}), but GRULM_REQUIRE_ALL=1 requires every test to run");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Some(dir) = std::env::var_os("GRULM_SKIP_LOG") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(&test), format!("{why}\n"));
    }
}

/// The set-up venv (`make test` exports VIRTUAL_ENV), for tests that run its
/// Python (torch, tensorboard); `None` (skipped) without one, as with LIBTORCH.
pub fn venv() -> Option<PathBuf> {
    let v = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
    if v.is_none() {
        skip("no VIRTUAL_ENV with torch and tensorboard (make test sets it up)");
    }
    v
}

/// The Time Machine from `../shared/data` (or `$GRULM_TEST_CORPUS`, which CI
/// sets and which must then exist). `None` (skipped) only when no copy is
/// reachable and none was promised.
pub fn timemachine() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRULM_TEST_CORPUS") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GRULM_TEST_CORPUS={} does not exist", p.display());
        return Some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let places = [root.join("../shared/data/timemachine.txt"), root.join("data/timemachine.txt")];
    if let Some(p) = places.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    skip(&format!(
        "no timemachine.txt: GRULM_TEST_CORPUS is unset, and neither {} nor {} exists",
        places[0].display(),
        places[1].display()
    ));
    None
}

/// `c.toml` in `dir`: a config on `corpus` (a path relative to `dir`) with d2l's
/// sizes scaled down to a tiny model (B=4, T=5, H=8, one epoch); returns its name.
pub fn cfg_on(dir: &TempDir, corpus: &str, extra: &str) -> String {
    let text = format!(
        "[data]\ncorpus = {corpus:?}\nbatch_size = 4\nnum_steps = 5\nmax_tokens = 0\n[model]\nhidden_size = 8\n[train]\nepochs = 1\ndevice = \"cpu\"\n{extra}"
    );
    dir.write("c.toml", text);
    "c.toml".into()
}

/// A run directory's config for a small, fast experiment on `corpus`.
pub fn small_config(corpus: &Path, extra: &str) -> String {
    format!(
        "[data]\ncorpus = {:?}\nmax_tokens = 3000\nbatch_size = 8\nnum_steps = 10\n[model]\nhidden_size = 32\n[train]\nepochs = 4\ncheckpoint_every = 2\npredict_every = 0\ndevice = \"cpu\"\n{extra}",
        corpus.display().to_string()
    )
}

/// Metrics lines without the timing (and memory) fields.
pub fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("elapsed_s");
            o.remove("peak_rss_mib");
            v
        })
        .collect()
}

/// How long a test waits for something a run will write (`wait_for`): long
/// enough for a slow or busy machine, since it only bounds a hang; what a test
/// asserts never depends on how fast the machine is.
pub const WAIT_S: u64 = 600;

/// Waits until the run in `run` holds still where `GRULM_TEST_PAUSE` told it to
/// (it has written its marker there).
pub fn wait_paused(run: &Path) {
    wait_for(&run.join(grulm::platform::test_pause::MARKER), WAIT_S);
}

/// Waits until `path` exists, at most `secs` seconds.
pub fn wait_for(path: &Path, secs: u64) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(secs), "{} never appeared in {secs} s", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `body` alone in a child process of this test binary, the test `name`
/// (its full path, `models::...`) and nothing else. libtorch has one random
/// generator per process and the tests run in threads: a test that seeds it
/// and needs the draws that follow (dropout masks) would otherwise see other
/// tests' draws in between, now and then.
pub fn alone(name: &str, body: impl FnOnce()) {
    const VAR: &str = "GRULM_TEST_ALONE";
    if std::env::var(VAR).as_deref() == Ok(name) {
        body();
        return;
    }
    let o = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, name)
        .output()
        .expect("run the test binary");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "{name} (alone in a child process) failed:\n{out}");
    assert!(out.contains("1 passed"), "{name} did not run in the child process:\n{out}");
}
