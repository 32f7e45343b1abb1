//! Running a sweep as a Slurm job array: `DIR/sweep.sbatch` holds one array
//! task per point still to train, each a normal `grulm train` on its point's
//! run directory (starting it, or resuming its checkpoint), submitted with
//! `sbatch --parsable`; the job id goes into the manifest.
//!
//! What the script assumes of a real cluster: grulm's binary at the path it
//! was started from (on storage the nodes share), libtorch found through the
//! binary's rpath or `LD_LIBRARY_PATH` (sbatch passes the submitting
//! environment on), the sweep directory and the corpus on shared storage, and
//! the working directory of the submission (relative corpus paths resolve
//! there). Preemption: `--requeue`, and SIGTERM 120 s before the time limit
//! (`--signal=B:TERM@120`); the task `exec`s grulm, so grulm gets the signal,
//! writes a checkpoint and exits, and the requeued task resumes from it.
use super::local::{prepare, to_train, LOG};
use super::{Point, Sweep};
use crate::usage;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// What `--executor slurm` asks of the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlurmOptions {
    /// `%M`: array tasks at a time (None: as many as Slurm allows).
    pub max_concurrent: Option<usize>,
    pub cpus_per_task: usize,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub partition: Option<String>,
    /// GPUs per task: `--gres=gpu:N`, and `--device cuda` for grulm.
    pub gpus: usize,
    /// `--device` for every point (default: cuda with GPUs, else the point's own).
    pub device: Option<String>,
}

/// Single-quoted for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script for `points`, in array order.
pub fn script(sweep: &Sweep, dir: &Path, points: &[&Point], o: &SlurmOptions) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find grulm's own binary")?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let dir = std::path::absolute(dir).context("cannot resolve the sweep directory")?;
    let stem = sweep.file.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("# grulm sweep {}: one array task per point; written by grulm sweep run --executor slurm\n", sweep.file.display());
    s += &format!("#SBATCH --job-name=grulm-{}\n", stem.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_"));
    let limit = o.max_concurrent.map_or(String::new(), |m| format!("%{m}"));
    s += &format!("#SBATCH --array=0-{}{limit}\n", points.len() - 1);
    s += &format!("#SBATCH --cpus-per-task={}\n", o.cpus_per_task);
    if let Some(m) = &o.mem {
        s += &format!("#SBATCH --mem={m}\n");
    }
    if let Some(t) = &o.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    if let Some(p) = &o.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if o.gpus > 0 {
        s += &format!("#SBATCH --gres=gpu:{}\n", o.gpus);
    }
    s += "#SBATCH --requeue\n#SBATCH --signal=B:TERM@120\n";
    s += &format!("#SBATCH --output={}/logs/%A_%a.out\n", dir.display());
    s += "set -u\n";
    s += &format!("cd {}\n", quote(&cwd.display().to_string()));
    s += &format!("points=({})\n", points.iter().map(|p| quote(&p.name)).collect::<Vec<_>>().join(" "));
    // 1: the point leaves train.threads at 0 (one per core), so it gets the task's CPUs.
    s += &format!(
        "auto_threads=({})\n",
        points.iter().map(|p| if p.config.train.threads == 0 { "1" } else { "0" }).collect::<Vec<_>>().join(" ")
    );
    s += &format!("run={}/\"${{points[$SLURM_ARRAY_TASK_ID]}}\"\n", quote(&dir.display().to_string()));
    let device = o.device.clone().or((o.gpus > 0).then(|| "cuda".to_string()));
    let mut extra = String::from("--quiet");
    if let Some(d) = device {
        extra += &format!(" --device {}", quote(&d));
    }
    s += "echo \"grulm sweep task $SLURM_ARRAY_TASK_ID (restart ${SLURM_RESTART_COUNT:-0}): $run on $(hostname)\"\n";
    s += "threads=()\n";
    s += "if [ \"${auto_threads[$SLURM_ARRAY_TASK_ID]}\" = 1 ]; then threads=(--set \"train.threads=$SLURM_CPUS_PER_TASK\"); fi\n";
    s += &format!("exe={}\n", quote(&exe.display().to_string()));
    s += &format!("# exec: grulm itself gets Slurm's SIGTERM, checkpoints and exits; a requeued task resumes.\nif [ -f \"$run/checkpoint.safetensors\" ]; then\n  exec \"$exe\" train --out \"$run\" --resume {extra} \"${{threads[@]}}\" >> \"$run/{LOG}\" 2>&1\nelse\n  exec \"$exe\" train --config \"$run/config.toml\" --out \"$run\" --force {extra} \"${{threads[@]}}\" >> \"$run/{LOG}\" 2>&1\nfi\n");
    Ok(s)
}

/// `grulm sweep run --executor slurm`: writes and submits the job array.
pub fn run(sweep: &Sweep, dir: &Path, o: &SlurmOptions) -> Result<()> {
    let mut manifest = prepare(sweep, dir, "slurm")?;
    let (todo, already) = to_train(sweep, dir)?;
    let todo: Vec<&Point> = todo.into_iter().map(|i| &sweep.points[i]).collect();
    if todo.is_empty() {
        println!(
            "sweep {}: all {} point(s) in {} already done; grulm sweep report {}",
            sweep.file.display(),
            sweep.points.len(),
            dir.display(),
            dir.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}/logs", dir.display()))?;
    let path = dir.join("sweep.sbatch");
    crate::platform::fsutil::write_atomic(&path, script(sweep, dir, &todo, o)?.as_bytes())?;
    let out =
        Command::new("sbatch").arg("--parsable").arg(&path).output().map_err(|e| {
            usage!("--executor slurm: cannot run sbatch ({e}); is Slurm installed here, and SLURM_CONF set if it needs one?")
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("sbatch {} failed: {}", path.display(), err.lines().last().unwrap_or("").trim());
    }
    let job = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
    manifest.slurm_job = Some(job.clone());
    manifest.slurm_tasks = todo.iter().map(|p| p.name.clone()).collect();
    manifest.save(dir)?;
    println!(
        "sweep {}: {} point(s) in {}: {already} already done; submitted Slurm job array {job} with {} task(s); logs in {}; grulm sweep status {}",
        sweep.file.display(),
        sweep.points.len(),
        dir.display(),
        todo.len(),
        dir.join("logs").display(),
        dir.display()
    );
    Ok(())
}

/// Per array task index, what `squeue` says of the job (PENDING, RUNNING, ...),
/// or nothing when squeue cannot be asked.
pub(crate) fn queue_states(job: &str) -> std::collections::HashMap<usize, String> {
    let mut out = std::collections::HashMap::new();
    let Ok(o) = Command::new("squeue").args(["-h", "-r", "-j", job, "-o", "%K %T"]).output() else { return out };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(s)) = (it.next(), it.next()) {
            if let Ok(k) = k.parse() {
                out.insert(k, s.to_string());
            }
        }
    }
    out
}
