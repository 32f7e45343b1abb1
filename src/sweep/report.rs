//! `grulm sweep status` and `grulm sweep report`: what a sweep directory holds,
//! read from its manifest and its points' run directories.
use super::local::{state, State};
use super::Manifest;
use crate::infer::sample::{predict, Decode};
use crate::run::metrics::EpochMetrics;
use crate::run::{RunDir, Weights};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// One point's line of `sweep status`.
pub fn status(dir: &Path) -> Result<String> {
    let m = Manifest::load(dir)?;
    let mut out = String::new();
    let mut counts = std::collections::BTreeMap::new();
    // Queued array tasks, from squeue (nothing when it cannot be asked).
    let queued = m.slurm_job.as_deref().map(super::slurm::queue_states).unwrap_or_default();
    if let Some(job) = &m.slurm_job {
        out += &format!("Slurm job array {job}\n");
    }
    for p in &m.points {
        let task = m.slurm_tasks.iter().position(|t| *t == p.name);
        let in_queue = task.and_then(|k| queued.get(&k));
        let run = RunDir::new(dir.join(&p.dir));
        let cfg = run.load_config()?;
        let epochs = run.load_metrics().ok().and_then(|h| h.last().map(|e| e.epoch)).unwrap_or(0);
        let (word, detail) = match state(&run, &cfg) {
            State::Pending | State::Interrupted { .. } if in_queue.is_some() => {
                let job = format!("Slurm task {}_{}", m.slurm_job.as_deref().unwrap_or(""), task.unwrap_or(0));
                match in_queue.map(String::as_str) {
                    Some("RUNNING") => ("running", format!("{job}, starting")),
                    _ => ("queued", job),
                }
            }
            State::Pending => ("pending", String::new()),
            State::Running => ("running", format!("epoch {epochs} of {}", cfg.train.epochs)),
            State::Done => ("done", format!("{epochs} epoch(s)")),
            State::Interrupted { epochs } => ("interrupted", format!("checkpoint after epoch {epochs} of {}", cfg.train.epochs)),
            State::Failed(line) => ("failed", line),
        };
        *counts.entry(word).or_insert(0) += 1;
        out += &format!("{:<40} {word:<12} {detail}\n", p.name);
    }
    let summary: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
    out += &format!("{} point(s): {}\n", m.points.len(), summary.join(", "));
    Ok(out)
}

/// A finished (or partly trained) point's numbers.
struct Row {
    name: String,
    overrides: String,
    train_ppl: f64,
    val_ppl: Option<f64>,
    tokens_per_s: f64,
    wall_s: f64,
    sample: String,
    history: Vec<EpochMetrics>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The x axis of `report.svg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Perplexity per epoch.
    Epochs,
    /// Bits per character (log₂ of the perplexity) against minutes of training:
    /// points of different speeds compared at equal wall time.
    Minutes,
}

/// `sweep report`: a Markdown table (or CSV) of the points with metrics, the
/// lowest validation (else training) perplexity first, and `DIR/report.svg`.
pub fn report(dir: &Path, csv: bool, axis: Axis) -> Result<String> {
    let m = Manifest::load(dir)?;
    let mut rows = vec![];
    for p in &m.points {
        let run = RunDir::new(dir.join(&p.dir));
        let Ok(history) = run.load_metrics() else { continue };
        let Some(last) = history.last().cloned() else { continue };
        let crate::run::Trained { cfg, vocab, mut model, .. } = run.load_model(tch::Device::Cpu, Weights::Last)?;
        let prefix = &cfg.sample.prefixes[0];
        let text = predict(model.as_mut(), &vocab, prefix, cfg.sample.len, Decode::Greedy, tch::Device::Cpu)?;
        let overrides: Vec<String> = p.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(Row {
            name: p.name.clone(),
            overrides: overrides.join(" "),
            train_ppl: last.train_ppl,
            val_ppl: history.iter().rev().find_map(|e| e.val_ppl),
            tokens_per_s: median(history.iter().map(|e| e.tokens_per_s).collect()),
            wall_s: last.elapsed_s,
            sample: text.lines().next().unwrap_or("").to_string(),
            history,
        });
    }
    if rows.is_empty() {
        return Err(crate::usage!("sweep {}: no point has finished an epoch yet; see grulm sweep status {}", dir.display(), dir.display()));
    }
    let key = |r: &Row| r.val_ppl.unwrap_or(r.train_ppl);
    rows.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.name.cmp(&b.name)));
    draw(&rows, &dir.join("report.svg"), &m.file, axis)?;
    let val = |r: &Row| r.val_ppl.map_or(String::new(), |v| format!("{v:.3}"));
    let mut out = String::new();
    if csv {
        out += "point,overrides,train_ppl,val_ppl,tokens_per_s,wall_s,sample\n";
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        for r in &rows {
            out += &format!(
                "{},{},{},{},{:.0},{:.1},{}\n",
                q(&r.name),
                q(&r.overrides),
                r.train_ppl,
                r.val_ppl.map_or(String::new(), |v| v.to_string()),
                r.tokens_per_s,
                r.wall_s,
                q(&r.sample)
            );
        }
    } else {
        // The validation column only where some point validates.
        let any_val = rows.iter().any(|r| r.val_ppl.is_some());
        let (val_head, val_rule) = if any_val { (" val ppl |", "---:|") } else { ("", "") };
        out += &format!("| point | overrides | train ppl |{val_head} tokens/s | wall | sample |\n|---|---|---:|{val_rule}---:|---:|---|\n");
        for r in &rows {
            let v = if any_val { format!(" {} |", val(r)) } else { String::new() };
            out += &format!(
                "| {} | {} | {:.3} |{v} {:.0} | {:.0} s | {} |\n",
                r.name,
                r.overrides.replace('|', "\\|"),
                r.train_ppl,
                r.tokens_per_s,
                r.wall_s,
                r.sample.replace('|', "\\|")
            );
        }
    }
    Ok(out)
}

/// Every point's perplexity per epoch, or bits per character against minutes
/// (validation where it validates, else training), overlaid and labelled.
fn draw(rows: &[Row], path: &Path, title: &str, axis: Axis) -> Result<()> {
    let err = |e: String| anyhow!("drawing {}: {e}", path.display());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let point = |e: &EpochMetrics, ppl: f64| match axis {
            Axis::Epochs => (e.epoch as f64, ppl),
            Axis::Minutes => (e.elapsed_s / 60.0, ppl.log2()),
        };
        let curve = |r: &Row| -> Vec<(f64, f64)> {
            let val: Vec<(f64, f64)> = r.history.iter().filter_map(|e| e.val_ppl.map(|v| point(e, v))).collect();
            if val.is_empty() {
                r.history.iter().map(|e| point(e, e.train_ppl)).collect()
            } else {
                val
            }
        };
        let curves: Vec<Vec<(f64, f64)>> = rows.iter().map(curve).collect();
        let ys = || curves.iter().flatten().map(|p| p.1).filter(|v| v.is_finite());
        let name = Path::new(title).file_name().map_or(title.to_string(), |n| n.to_string_lossy().into_owned());
        let (caption, x_desc, y_desc, x, y, labels) = match axis {
            Axis::Epochs => {
                let last = curves.iter().flatten().map(|p| p.0).fold(2.0f64, f64::max);
                let top = ys().fold(1.0f64, f64::max).min(1e6) * 1.05;
                ("perplexity per epoch", "epoch", "perplexity", 1.0..last, 0.9..top.max(1.5), (last as usize).min(10))
            }
            Axis::Minutes => {
                let last = curves.iter().flatten().map(|p| p.0).fold(0.0f64, f64::max).max(1e-3) * 1.02;
                let (lo, hi) = (ys().fold(f64::INFINITY, f64::min), ys().fold(f64::NEG_INFINITY, f64::max));
                let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
                let pad = ((hi - lo) * 0.05).max(0.01);
                ("bits per character against minutes", "minutes of training", "bits per character", 0.0..last, lo - pad..hi + pad, 10)
            }
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("sweep {name}: {caption} (validation where measured)"), ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .right_y_label_area_size(0)
            .build_cartesian_2d(x, y)
            .map_err(|e| err(e.to_string()))?;
        let whole = |x: &f64| format!("{x:.0}");
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc).y_desc(y_desc).x_labels(labels);
        if axis == Axis::Epochs {
            mesh.x_label_formatter(&whole);
        }
        mesh.draw().map_err(|e| err(e.to_string()))?;
        for (k, (r, c)) in rows.iter().zip(&curves).enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(c.clone(), color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(r.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::platform::fsutil::write_atomic(path, svg.as_bytes())
}
