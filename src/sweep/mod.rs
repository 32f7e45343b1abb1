//! `grulm sweep`: one experiment over many settings. A sweep file names a base
//! config and the overrides of each point; `sweep run` expands it into one run
//! directory per point and trains them ([`local`]); `sweep status` and `sweep
//! report` read what came out ([`report`]).
//!
//! ```toml
//! base = "configs/gru-scratch.toml"   # beside the current directory, else the sweep file
//! [set]                               # overrides of every point
//! train.epochs = 50
//! [grid]                              # the product of these lists (or [[runs]], or [random])
//! model.hidden_size = [64, 128]
//! train.lr = [0.5, 1, 2]
//! ```
//!
//! `[[runs]]` lists the points' overrides one by one; `[random]` draws
//! `samples` points (with `seed`), each key from a list or a `{ log_uniform =
//! [lo, hi] }` / `{ uniform = [lo, hi] }` range. Keys are the config's own
//! `section.key`. Every point's config is resolved and validated before
//! anything runs.
pub mod local;
pub mod report;
pub mod slurm;

use crate::config::Config;
use crate::usage;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The manifest in a sweep directory.
pub(crate) const MANIFEST: &str = "sweep.json";

/// One point of a sweep: its overrides and the config they resolve to.
pub(crate) struct Point {
    /// `003-hidden_size=128,lr=2`: its index, then its overrides.
    pub name: String,
    pub overrides: Vec<(String, Value)>,
    pub config: Config,
}

pub(crate) struct Sweep {
    pub file: PathBuf,
    pub base: PathBuf,
    pub points: Vec<Point>,
}

/// What `sweep.json` records: the sweep, and per point its overrides and run
/// directory (relative to the sweep directory).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    pub file: String,
    pub base: String,
    pub executor: String,
    /// The Slurm job array's id, when the sweep was submitted there.
    #[serde(default)]
    pub slurm_job: Option<String>,
    /// The points of that job's array tasks, in task order.
    #[serde(default)]
    pub slurm_tasks: Vec<String>,
    pub points: Vec<ManifestPoint>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ManifestPoint {
    pub name: String,
    pub dir: String,
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

impl Sweep {
    /// Reads and expands a sweep file, resolving and validating every point.
    pub fn load(path: &Path) -> Result<Sweep> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| usage!("sweep {shown}: cannot read: {e}"))?;
        let mut root: Table = text.parse().map_err(|e: toml::de::Error| usage!("sweep {shown}: malformed TOML: {}", e.message()))?;
        let bad = |what: &str| usage!("sweep {shown}: {what}");
        let base = match root.remove("base") {
            Some(Value::String(s)) => s,
            Some(v) => return Err(bad(&format!("base = {v}: expected the path of a config file"))),
            None => return Err(bad("no base: expected base = \"configs/NAME.toml\"")),
        };
        // The base beside the current directory (a repository's configs/), else
        // beside the sweep file.
        let base_path = [PathBuf::from(&base), path.parent().unwrap_or(Path::new(".")).join(&base)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| bad(&format!("base = {base:?}: no such file (looked in the current directory and beside the sweep file)")))?;
        let base_text = std::fs::read_to_string(&base_path).map_err(|e| bad(&format!("base {}: cannot read: {e}", base_path.display())))?;
        let fixed = match root.remove("set") {
            Some(Value::Table(t)) => flatten(&t, "[set]", &shown)?,
            Some(_) => return Err(bad("set: expected a table, [set]")),
            None => vec![],
        };
        let kinds: Vec<&str> = ["grid", "runs", "random"].into_iter().filter(|k| root.contains_key(*k)).collect();
        if kinds.len() > 1 {
            return Err(bad(&format!("has {}: expected one of [grid], [[runs]] or [random]", kinds.join(" and "))));
        }
        let points: Vec<Vec<(String, Value)>> = if let Some(v) = root.remove("grid") {
            let Value::Table(t) = v else { return Err(bad("grid: expected a table, [grid]")) };
            grid(&flatten(&t, "[grid]", &shown)?, &shown)?
        } else if let Some(v) = root.remove("runs") {
            let Value::Array(runs) = v else { return Err(bad("runs: expected [[runs]] tables")) };
            runs.iter()
                .enumerate()
                .map(|(i, r)| match r {
                    Value::Table(t) => flatten(t, &format!("[[runs]] {}", i + 1), &shown),
                    _ => Err(bad(&format!("runs {}: expected a table of overrides", i + 1))),
                })
                .collect::<Result<_>>()?
        } else if let Some(v) = root.remove("random") {
            let Value::Table(t) = v else { return Err(bad("random: expected a table, [random]")) };
            random(t, &shown)?
        } else {
            vec![vec![]]
        };
        if let Some(k) = root.keys().next() {
            return Err(bad(&format!("unknown key {k:?}: expected base, [set], and one of [grid], [[runs]], [random]")));
        }
        if points.is_empty() {
            return Err(bad("has no points"));
        }
        let base_shown = base_path.display().to_string();
        let mut out = Vec::with_capacity(points.len());
        for (i, overrides) in points.into_iter().enumerate() {
            let name = point_name(i + 1, &overrides);
            let sets: Vec<String> = fixed.iter().chain(&overrides).map(|(k, v)| format!("{k}={v}")).collect();
            let config = Config::parse(&base_text, &base_shown, &sets).map_err(|e| bad(&format!("point {name}: {e}")))?;
            out.push(Point { name, overrides, config });
        }
        Ok(Sweep { file: path.to_path_buf(), base: base_path, points: out })
    }

    /// The default sweep directory: `sweeps/<file stem>/`.
    pub(crate) fn default_dir(&self) -> PathBuf {
        let stem = self.file.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
        Path::new("sweeps").join(stem)
    }

    pub fn manifest(&self, executor: &str) -> Manifest {
        Manifest {
            file: self.file.display().to_string(),
            base: self.base.display().to_string(),
            executor: executor.into(),
            slurm_job: None,
            slurm_tasks: vec![],
            points: self
                .points
                .iter()
                .map(|p| ManifestPoint {
                    name: p.name.clone(),
                    dir: p.name.clone(),
                    overrides: p.overrides.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect(),
                })
                .collect(),
        }
    }
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| usage!("{}: cannot read: {e} (is {} a sweep directory?)", p.display(), dir.display()))?;
        serde_json::from_str(&text).map_err(|e| usage!("{}: not a grulm sweep manifest: {e}", p.display()))
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("manifest serializes") + "\n";
        crate::platform::fsutil::write_atomic(&dir.join(MANIFEST), text.as_bytes())
    }
}

fn toml_to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// `{section = {key = value}}` -> `[("section.key", value)]`, in the file's
/// (sorted) key order.
fn flatten(t: &Table, what: &str, shown: &str) -> Result<Vec<(String, Value)>> {
    let mut out = vec![];
    for (section, keys) in t {
        let Value::Table(keys) = keys else {
            return Err(usage!("sweep {shown}: {what}: {section} = {keys}: expected section.key = value, e.g. train.lr = 0.5"));
        };
        for (key, value) in keys {
            out.push((format!("{section}.{key}"), value.clone()));
        }
    }
    Ok(out)
}

/// The product of the lists, the first key varying slowest.
fn grid(keys: &[(String, Value)], shown: &str) -> Result<Vec<Vec<(String, Value)>>> {
    let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (key, values) in keys {
        let values = match values {
            Value::Array(a) if !a.is_empty() => a,
            v => return Err(usage!("sweep {shown}: [grid] {key} = {v}: expected a non-empty list of values")),
        };
        points =
            points.into_iter().flat_map(|p| values.iter().map(move |v| [p.clone(), vec![(key.clone(), v.clone())]].concat())).collect();
    }
    Ok(points)
}

/// `samples` points, each key drawn from its list or range (seeded).
fn random(mut t: Table, shown: &str) -> Result<Vec<Vec<(String, Value)>>> {
    let bad = |what: String| usage!("sweep {shown}: [random] {what}");
    let samples = match t.remove("samples") {
        Some(Value::Integer(n)) if (1..=10_000).contains(&n) => n as usize,
        Some(v) => return Err(bad(format!("samples = {v}: expected an integer from 1 to 10000"))),
        None => return Err(bad("has no samples: expected samples = N".into())),
    };
    let seed = match t.remove("seed") {
        Some(Value::Integer(n)) if n >= 0 => n as u64,
        Some(v) => return Err(bad(format!("seed = {v}: expected an integer >= 0"))),
        None => 0,
    };
    let keys = flatten(&t, "[random]", shown)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut points = vec![];
    for _ in 0..samples {
        let mut p = vec![];
        for (key, spec) in &keys {
            let v = match spec {
                Value::Array(a) if !a.is_empty() => a[rng.gen_range(0..a.len())].clone(),
                Value::Table(r) if r.len() == 1 => {
                    let (kind, range) = r.iter().next().expect("one entry");
                    let (lo, hi) = match range
                        .as_array()
                        .map(|a| a.iter().map(|x| x.as_float().or(x.as_integer().map(|i| i as f64))).collect::<Vec<_>>())
                    {
                        Some(v) if v.len() == 2 && v.iter().all(Option::is_some) => (v[0].unwrap_or(0.0), v[1].unwrap_or(0.0)),
                        _ => return Err(bad(format!("{key}: {kind} = {range}: expected [lo, hi]"))),
                    };
                    let x = match kind.as_str() {
                        "uniform" if lo < hi => rng.gen_range(lo..hi),
                        "log_uniform" if 0.0 < lo && lo < hi => (rng.gen_range(lo.ln()..hi.ln())).exp(),
                        _ => {
                            return Err(bad(format!(
                            "{key} = {spec}: expected a list, {{ uniform = [lo, hi] }} or {{ log_uniform = [lo, hi] }} with 0 < lo < hi"
                        )))
                        }
                    };
                    Value::Float(x)
                }
                v => return Err(bad(format!("{key} = {v}: expected a list, {{ uniform = [lo, hi] }} or {{ log_uniform = [lo, hi] }}"))),
            };
            p.push((key.clone(), v));
        }
        points.push(p);
    }
    Ok(points)
}

/// `003-hidden_size=128,lr=2`: the 1-based index, then each override as its
/// key's last part (the whole key where two would read alike) and a short value.
fn point_name(index: usize, overrides: &[(String, Value)]) -> String {
    let short = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let parts: Vec<String> = overrides
        .iter()
        .map(|(k, v)| {
            let key = if overrides.iter().filter(|(o, _)| short(o) == short(k)).count() > 1 { k.clone() } else { short(k) };
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Float(f) => format!("{}", (f * 1e4).round() / 1e4),
                other => other.to_string(),
            };
            format!("{key}={value}")
        })
        .collect();
    let label = if parts.is_empty() { "base".to_string() } else { parts.join(",") };
    let clean: String = label.chars().map(|c| if c.is_ascii_alphanumeric() || "._=,+-".contains(c) { c } else { '_' }).take(100).collect();
    format!("{index:03}-{clean}")
}
