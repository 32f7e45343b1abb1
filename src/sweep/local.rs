//! Running a sweep's points on this machine: `--jobs N` grulm processes at a
//! time, each a normal `grulm train` in its point's run directory (its output
//! in `train.log` there), the CPU threads split between them.
//!
//! Idempotent: a point already done is skipped, an interrupted one resumes from
//! its checkpoint, and a point whose directory holds another config is an
//! error. Ctrl-C (or SIGTERM) is passed on to the running trainers once (they
//! run in their own process group, so the terminal does not signal them
//! twice): each writes a checkpoint and stops, and the next `sweep run` goes on.
use super::{Manifest, Sweep};
use crate::config::Config;
use crate::error::Interrupted;
use crate::platform::interrupt;
use crate::run::RunDir;
use crate::usage;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keys the executor sets for a point (threads, device); a point's saved
/// config may differ from the sweep's in these alone.
const EXECUTOR_KEYS: &[&str] = &["train.threads", "train.device"];

/// Where a point stands, read from its run directory.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing trained yet.
    Pending,
    /// A grulm process holds its run directory.
    Running,
    /// Trained to `train.epochs`, or stopped early by `train.patience`.
    Done,
    /// A checkpoint after `epochs` complete epochs: the next run resumes it.
    Interrupted { epochs: usize },
    /// Its last run ended in this error line.
    Failed(String),
}

/// The file in a point's run directory that holds its trainer's output.
pub(crate) const LOG: &str = "train.log";

/// The state of the run in `run`, trained with `cfg`.
pub fn state(run: &RunDir, cfg: &Config) -> State {
    if run.busy() {
        return State::Running;
    }
    let history = run.load_metrics().unwrap_or_default();
    let epochs = history.last().map_or(0, |m| m.epoch);
    let stopped_early = crate::run::metrics::patience_spent(&history, cfg.train.patience)
        || crate::run::metrics::time_spent(&history, cfg.train.max_minutes);
    if epochs >= cfg.train.epochs || (epochs > 0 && stopped_early) {
        return State::Done;
    }
    let last_line =
        std::fs::read_to_string(run.file(LOG)).ok().and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string));
    match last_line {
        Some(l) if l.starts_with("grulm: error") => State::Failed(l),
        _ if run.file(crate::run::CHECKPOINT).exists() => State::Interrupted { epochs },
        _ => State::Pending,
    }
}

/// Writes the sweep directory: the manifest, and each point's run directory
/// with its resolved `config.toml`. A point whose directory already holds a
/// config must hold this one (but for the executor's keys).
pub(crate) fn prepare(sweep: &Sweep, dir: &Path, executor: &str) -> Result<Manifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create sweep directory {}", dir.display()))?;
    for p in &sweep.points {
        let run = RunDir::new(dir.join(&p.name));
        if run.file(crate::run::CONFIG).exists() {
            let saved = run.load_config()?;
            let differ: Vec<String> =
                saved.differing_keys(&p.config).into_iter().filter(|k| !EXECUTOR_KEYS.contains(&k.as_str())).collect();
            if !differ.is_empty() {
                return Err(usage!(
                    "sweep {}: point {} in {} was set up with another config ({}); the sweep file changed since: use another --out, or remove that directory",
                    sweep.file.display(),
                    p.name,
                    dir.display(),
                    differ.iter().map(|k| format!("{k} = {} there, {} now", saved.value_of(k), p.config.value_of(k))).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    for p in &sweep.points {
        let run = RunDir::new(dir.join(&p.name));
        if !run.file(crate::run::CONFIG).exists() {
            std::fs::create_dir_all(&run.path).with_context(|| format!("cannot create {}", run.path.display()))?;
            run.save_config(&p.config, None)?;
        }
    }
    let mut manifest = sweep.manifest(executor);
    if let (Ok(old), "slurm") = (Manifest::load(dir), executor) {
        (manifest.slurm_job, manifest.slurm_tasks) = (old.slurm_job, old.slurm_tasks);
    }
    manifest.save(dir)?;
    Ok(manifest)
}

/// The points still to train (indices), and how many are done already. A
/// point another process is training is an error: wait for it.
pub(crate) fn to_train(sweep: &Sweep, dir: &Path) -> Result<(Vec<usize>, usize)> {
    let (mut todo, mut already) = (vec![], 0);
    for (i, p) in sweep.points.iter().enumerate() {
        match state(&RunDir::new(dir.join(&p.name)), &p.config) {
            State::Done => already += 1,
            State::Running => {
                bail!("sweep: point {} in {} is being trained by another process; wait for it, then run again", p.name, dir.display())
            }
            _ => todo.push(i),
        }
    }
    Ok((todo, already))
}

/// `grulm sweep run --executor local`.
pub fn run(sweep: &Sweep, dir: &Path, jobs: usize, device: Option<&str>) -> Result<()> {
    prepare(sweep, dir, "local")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = jobs.max(1);
    let pool = Pool {
        sweep,
        dir,
        exe: std::env::current_exe().context("cannot find grulm's own binary")?,
        threads: (cores / jobs).max(1),
        device,
    };
    let n = sweep.points.len();
    let (queue, already) = to_train(sweep, dir)?;
    println!(
        "sweep {}: {n} point(s) in {}: {already} already done, {} to run, {jobs} at a time with {} thread(s) each",
        sweep.file.display(),
        dir.display(),
        queue.len(),
        pool.threads
    );
    interrupt::install();
    let mut queue = queue.into_iter();
    let mut running: Vec<(usize, Child, Instant)> = vec![];
    let (mut failed, mut stopped, mut forwarded) = (vec![], 0, false);
    loop {
        while running.len() < jobs && interrupt::requested().is_none() {
            let Some(i) = queue.next() else { break };
            running.push((i, pool.start(i)?, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if let (Some(sig), false) = (interrupt::requested(), forwarded) {
            forwarded = true;
            for (_, child, _) in &running {
                // SAFETY: signals our own child.
                unsafe { libc::kill(child.id() as i32, sig) };
            }
        }
        let mut k = 0;
        while k < running.len() {
            let Some(status) = running[k].1.try_wait()? else {
                k += 1;
                continue;
            };
            let (i, _, t0) = running.swap_remove(k);
            match pool.ended(i, status, t0.elapsed().as_secs_f64()) {
                Ended::Done => {}
                Ended::Failed(name) => failed.push(name),
                Ended::Stopped => stopped += 1,
            }
        }
    }
    if let Some(signal) = interrupt::requested() {
        let message = format!(
            "sweep stopped by {}: {stopped} point(s) checkpointed; run the same command again to go on",
            interrupt::signal_name(signal)
        );
        return Err(anyhow::Error::new(Interrupted { signal, message }));
    }
    if !failed.is_empty() {
        bail!("sweep: {} of {n} point(s) failed: {}; see train.log in their directories", failed.len(), failed.join(", "));
    }
    println!("sweep: all {n} point(s) done; grulm sweep report {}", dir.display());
    Ok(())
}

/// How a point's `grulm train` ended.
enum Ended {
    Done,
    /// Its name.
    Failed(String),
    /// By a signal, checkpointed.
    Stopped,
}

/// What the local executor starts each point's `grulm train` with.
struct Pool<'a> {
    sweep: &'a Sweep,
    dir: &'a Path,
    exe: std::path::PathBuf,
    /// CPU threads per point (unless its config sets them).
    threads: usize,
    device: Option<&'a str>,
}

impl Pool<'_> {
    /// Starts point `i`'s training in its directory, its output in its log.
    fn start(&self, i: usize) -> Result<Child> {
        let p = &self.sweep.points[i];
        let run = RunDir::new(self.dir.join(&p.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.file(LOG))
            .with_context(|| format!("cannot open {}", run.file(LOG).display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("train");
        // A checkpoint (interrupted, or failed late) resumes; otherwise the
        // point starts over (--force: its directory holds only its config).
        let resume = run.file(crate::run::CHECKPOINT).exists();
        if resume {
            cmd.args(["--out".as_ref(), run.path.as_os_str(), "--resume".as_ref()]);
        } else {
            cmd.args([
                "--config".as_ref(),
                run.file(crate::run::CONFIG).as_os_str(),
                "--out".as_ref(),
                run.path.as_os_str(),
                "--force".as_ref(),
            ]);
        }
        cmd.arg("--quiet");
        if p.config.train.threads == 0 {
            cmd.args(["--set", &format!("train.threads={}", self.threads)]);
        }
        if let Some(d) = self.device {
            cmd.args(["--device", d]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", self.exe.display()))?;
        let how = if resume { "resume" } else { "start" };
        println!("sweep: {how} {} ({} of {})", p.name, i + 1, self.sweep.points.len());
        Ok(child)
    }

    /// Says how point `i` ended, from what its run directory holds.
    fn ended(&self, i: usize, status: std::process::ExitStatus, secs: f64) -> Ended {
        let p = &self.sweep.points[i];
        let run = RunDir::new(self.dir.join(&p.name));
        match state(&run, &p.config) {
            State::Done => {
                let last = run.load_metrics().ok().and_then(|m| m.last().cloned());
                let ppl = last.map_or(String::new(), |m| {
                    format!(": perplexity {:.2}{}", m.train_ppl, m.val_ppl.map_or(String::new(), |v| format!(", val {v:.2}")))
                });
                println!("sweep: done {} in {secs:.1} s{ppl}", p.name);
                Ended::Done
            }
            State::Failed(line) => {
                println!("sweep: failed {} ({status}): {line}", p.name);
                Ended::Failed(p.name.clone())
            }
            _ => {
                println!("sweep: stopped {} ({status}); the next sweep run resumes it", p.name);
                Ended::Stopped
            }
        }
    }
}
