//! `grulm gates`: a picture of a trained model's gates over a text.
//!
//! The chapter's point is that the update gate Z decides when to keep the old
//! state (Z ≈ 1 copies H_{t-1} through) and the reset gate R when to forget it
//! (R ≈ 0 lets the candidate ignore H_{t-1}). This runs a run's model over a
//! text from a zero state and draws, per character (x axis, the characters
//! written under it), the top layer's gate activations: one heatmap per gate
//! (rows: hidden units; colour: the activation in [0, 1]) and a line of each
//! gate's mean over all units. An LSTM has its input, forget and output gates.
//!
//! The activations come from the scratch cell's readable step
//! ([`crate::model::top_layer_gates`]); a built-in run's weights go through the
//! layout table into the cell that computes the same function. Every heatmap
//! cell carries its value (`data-v`, 3 decimals) beside its colour, so a script
//! (or the test) can read back what is drawn: per gate (`<g class="gate"
//! data-gate="z">`), a row per unit (`<g class="row" data-unit="17">`), a cell
//! per character in order.
use crate::platform::{fsutil, tensorfile};
use crate::run::{RunDir, Weights};
use crate::{data, usage};
use anyhow::Result;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Longest text drawn: one column of [`CELL_W`] pixels per character.
pub(crate) const MAX_CHARS: usize = 400;
/// Columns are this wide (pixels).
const CELL_W: usize = 12;
/// Left margin (unit labels) and right margin (colour bar).
const LEFT: usize = 56;
const RIGHT: usize = 72;
/// Height of the mean-line panel.
const MEAN_H: usize = 90;
/// The mean lines' colours, one per gate (matplotlib's tab10).
const LINE_COLORS: [&str; 3] = ["#1f77b4", "#ff7f0e", "#2ca02c"];

/// One gate's activations: its name (`z`, `r`; `i`, `f`, `o`) and `[T][H]`.
pub struct GateValues {
    pub name: &'static str,
    pub values: Vec<Vec<f32>>,
}

/// What the gate is called in the picture.
pub(crate) fn label(name: &str) -> String {
    match name {
        "z" => "update gate Z".into(),
        "r" => "reset gate R".into(),
        "i" => "input gate I".into(),
        "f" => "forget gate F".into(),
        "o" => "output gate O".into(),
        other => format!("gate {other}"),
    }
}

/// The units drawn, in row order, and how they were chosen (for the subtitle).
/// `explicit`: these, in this order. Otherwise every unit when there are at
/// most `max` of them, else the `max` whose first gate varies most over the
/// text (standard deviation); either way sorted by the first gate's mean, the
/// most open on top.
pub(crate) fn choose_units(first: &GateValues, explicit: Option<&[usize]>, max: usize) -> (Vec<usize>, String) {
    let h = first.values.first().map_or(0, Vec::len);
    if let Some(u) = explicit {
        return (u.to_vec(), format!("units {}", u.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")));
    }
    let t = first.values.len() as f64;
    let mean = |j: usize| first.values.iter().map(|row| row[j] as f64).sum::<f64>() / t;
    let std = |j: usize| (first.values.iter().map(|row| (row[j] as f64 - mean(j)).powi(2)).sum::<f64>() / t).sqrt();
    let mut units: Vec<usize> = (0..h).collect();
    let how = if h > max {
        units.sort_by(|&a, &b| std(b).total_cmp(&std(a)).then(a.cmp(&b)));
        units.truncate(max);
        format!("the {max} of {h} units whose {} varies most", label(first.name))
    } else {
        format!("all {h} units")
    };
    units.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)).then(a.cmp(&b)));
    (units, format!("{how}, sorted by the mean of {}", label(first.name)))
}

/// Viridis (matplotlib's), 9 stops, interpolated: `#rrggbb` for v in [0, 1].
pub fn color(v: f64) -> String {
    const STOPS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 45.0, 123.0),
        (59.0, 82.0, 139.0),
        (44.0, 114.0, 142.0),
        (33.0, 145.0, 140.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let x = v.clamp(0.0, 1.0) * 8.0;
    let k = (x.floor() as usize).min(7);
    let f = x - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A character as a label: visible stand-ins for blanks, XML-escaped.
fn shown(c: char) -> String {
    match c {
        ' ' => "␣".into(),
        '\n' => "↵".into(),
        '\t' => "⇥".into(),
        c => escape(&c.to_string()),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The picture's measures, in pixels.
struct Frame {
    /// Characters (columns).
    t: usize,
    /// One unit's row.
    row_h: usize,
    heat_h: usize,
    /// A gate's panel: title, heatmap, characters.
    panel_h: usize,
    /// Where the first panel starts (under the title and notes).
    head: usize,
}

/// The picture: a heatmap per gate (rows `units`, a column per character) and
/// the mean lines, as an SVG document. `notes` go under the title, a line each.
pub fn svg(chars: &[char], gates: &[GateValues], units: &[usize], title: &str, notes: &[String]) -> String {
    let t = chars.len();
    let row_h = (360 / units.len().max(1)).clamp(3, 10);
    let heat_h = row_h * units.len();
    let f = Frame { t, row_h, heat_h, panel_h: 22 + heat_h + 22, head: 30 + 16 * notes.len() };
    let mut s = String::with_capacity(60 * t * units.len() * gates.len() + 4096);
    header(&mut s, &f, gates.len(), title, notes);
    let mut y0 = f.head;
    for g in gates {
        gate_panel(&mut s, &f, chars, g, units, y0);
        y0 += f.panel_h + 8;
    }
    colour_bar(&mut s, &f);
    mean_panel(&mut s, &f, chars, gates, y0);
    s += "</svg>\n";
    s
}

/// The document's start: its size, the shared cell, the title and notes.
fn header(s: &mut String, f: &Frame, panels: usize, title: &str, notes: &[String]) {
    // Wide enough for the title and notes (about 7 pixels a character).
    let text_w = std::iter::once(title.chars().count() * 8).chain(notes.iter().map(|n| n.chars().count() * 7)).max().unwrap_or(0);
    let width = (LEFT + f.t * CELL_W + RIGHT).max(LEFT + text_w);
    let height = f.head + panels * (f.panel_h + 8) + 30 + MEAN_H + 22 + 10;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = write!(
        s,
        "\n<defs><rect id=\"c\" width=\"{CELL_W}\" height=\"{}\"/></defs>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        f.row_h
    );
    let _ = writeln!(s, r#"<text x="{LEFT}" y="20" font-size="15">{}</text>"#, escape(title));
    for (k, n) in notes.iter().enumerate() {
        let _ = writeln!(s, r##"<text x="{LEFT}" y="{}" font-size="12" fill="#444">{}</text>"##, 38 + 16 * k, escape(n));
    }
}

/// The text's characters under a panel, at height `y`.
fn chars_row(s: &mut String, chars: &[char], y: usize) {
    for (k, &c) in chars.iter().enumerate() {
        let x = LEFT + k * CELL_W + CELL_W / 2;
        let _ = writeln!(s, r#"<text class="char" x="{x}" y="{y}" font-size="11" text-anchor="middle">{}</text>"#, shown(c));
    }
}

/// One gate's heatmap, from height `y0`: a row per unit, a cell per character.
fn gate_panel(s: &mut String, f: &Frame, chars: &[char], g: &GateValues, units: &[usize], y0: usize) {
    let row_h = f.row_h;
    let _ = writeln!(s, r#"<g class="gate" data-gate="{}">"#, g.name);
    let _ = writeln!(s, r#"<text class="panel-title" x="{LEFT}" y="{}" font-size="13">{}</text>"#, y0 + 15, label(g.name));
    let top = y0 + 22;
    for (r, &u) in units.iter().enumerate() {
        let y = top + r * row_h;
        if row_h >= 8 || r % 5 == 0 {
            let _ = writeln!(
                s,
                r#"<text class="unit" x="{}" y="{}" font-size="{}" text-anchor="end">{u}</text>"#,
                LEFT - 4,
                y + row_h.min(9),
                row_h.clamp(7, 9)
            );
        }
        // A row of cells: one shared rectangle (`#c`) placed per character,
        // which keeps the file about 55 bytes per cell.
        let _ = writeln!(s, r#"<g class="row" data-unit="{u}" transform="translate(0,{y})">"#);
        for (k, row) in g.values.iter().enumerate() {
            let v = row[u] as f64;
            let _ = writeln!(s, r##"<use xlink:href="#c" x="{}" fill="{}" data-v="{v:.3}"/>"##, LEFT + k * CELL_W, color(v));
        }
        *s += "</g>\n";
    }
    chars_row(s, chars, top + f.heat_h + 15);
    *s += "</g>\n";
}

/// The colour bar, beside the first heatmap.
fn colour_bar(s: &mut String, f: &Frame) {
    let (bx, by, bh) = (LEFT + f.t * CELL_W + 16, f.head + 22, 120);
    for k in 0..bh {
        let v = 1.0 - k as f64 / (bh - 1) as f64;
        let _ = writeln!(s, r#"<rect x="{bx}" y="{}" width="14" height="1" fill="{}"/>"#, by + k, color(v));
    }
    for (v, y) in [("1", by + 4), ("0.5", by + bh / 2 + 4), ("0", by + bh)] {
        let _ = writeln!(s, r#"<text x="{}" y="{y}" font-size="10">{v}</text>"#, bx + 18);
    }
}

/// The mean of each gate over all units, per character, on a 0..1 axis, from height `y0`.
fn mean_panel(s: &mut String, f: &Frame, chars: &[char], gates: &[GateValues], y0: usize) {
    let t = f.t;
    let h_all = gates.first().and_then(|g| g.values.first()).map_or(0, Vec::len);
    let _ = writeln!(s, r#"<text class="panel-title" x="{LEFT}" y="{}" font-size="13">mean over all {h_all} units</text>"#, y0 + 15);
    let top = y0 + 22;
    let y_of = |v: f64| top as f64 + (1.0 - v) * MEAN_H as f64;
    for v in [0.0, 0.5, 1.0] {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ccc" stroke-width="1"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{v}</text>"##,
            LEFT + t * CELL_W,
            LEFT - 4,
            y + 3.0
        );
    }
    for (gi, g) in gates.iter().enumerate() {
        let points: Vec<String> = g
            .values
            .iter()
            .enumerate()
            .map(|(k, row)| {
                let m = row.iter().map(|&v| v as f64).sum::<f64>() / row.len() as f64;
                format!("{},{:.1}", LEFT + k * CELL_W + CELL_W / 2, y_of(m))
            })
            .collect();
        let c = LINE_COLORS[gi % LINE_COLORS.len()];
        let _ = writeln!(
            s,
            r#"<polyline class="mean" data-gate="{}" points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            g.name,
            points.join(" ")
        );
        let ly = top + 12 + gi * 14;
        let lx = LEFT + t * CELL_W + 8;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}" font-size="10">{}</text>"#,
            lx + 14,
            lx + 18,
            ly + 3,
            g.name.to_uppercase()
        );
    }
    chars_row(s, chars, top + MEAN_H + 15);
}

/// What `grulm gates` was asked for (flags already checked for form).
pub struct Request<'a> {
    pub run: &'a Path,
    /// The flag the text came from (`--text`, `--text-file`), for errors.
    pub flag: &'a str,
    pub text: String,
    /// Where the SVG goes [default: RUN/gates.svg].
    pub out: Option<PathBuf>,
    pub units: Option<&'a [usize]>,
    pub max_units: usize,
    pub weights: Weights,
}

/// Runs a run's model over the text and writes the picture atomically;
/// returns the line saying what was drawn where.
pub fn draw(r: &Request) -> Result<String> {
    let (run_dir, flag) = (RunDir::new(r.run), r.flag);
    let cfg = run_dir.load_config()?;
    if !cfg.model.cell.has_sigmoid_gates() {
        return Err(usage!(
            "--run {}: the run's cell is an RNN (model.cell = \"rnn\"), which has no gates; grulm gates draws a GRU's or an LSTM's",
            r.run.display()
        ));
    }
    let vocab = run_dir.load_vocab().map_err(|e| usage!("{e:#}"))?;
    let chars = data::preprocess(&r.text, cfg.data.preprocess);
    if chars.is_empty() {
        return Err(usage!(
            "{flag}: nothing is left of the text after the run's preprocessing (data.preprocess = {:?})",
            cfg.data.preprocess
        ));
    }
    if chars.len() > MAX_CHARS {
        return Err(usage!("{flag}: {} characters; grulm gates draws at most {MAX_CHARS} (a column each)", chars.len()));
    }
    let unknown = vocab.unknown(chars.iter().copied());
    if !unknown.is_empty() {
        return Err(usage!(
            "{flag}: characters outside the model's vocabulary: {unknown} (the vocabulary has {} tokens; see {})",
            vocab.len(),
            run_dir.file(crate::run::VOCAB).display()
        ));
    }
    let h = cfg.model.hidden_size;
    if let Some(u) = r.units.and_then(|u| u.iter().find(|&&u| u >= h)) {
        return Err(usage!("--units {u}: the model has {h} hidden units, numbered 0 to {}", h - 1));
    }
    let chosen = run_dir.weights_file(r.weights)?;
    chosen.say_notes();
    let weights = chosen.path;
    let file = tensorfile::load(&weights)?;
    let tokens = tch::Tensor::from_slice(&vocab.encode(&chars)).view([1, -1]);
    let values = crate::model::top_layer_gates(&cfg.model, &file.tensors, vocab.len() as i64, &tokens)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", weights.display()))?
        .into_iter()
        .map(|(name, t)| Ok(GateValues { name, values: Vec::<Vec<f32>>::try_from(t.to_kind(tch::Kind::Float))? }))
        .collect::<Result<Vec<_>>>()?;
    let (units, how) = choose_units(&values[0], r.units, r.max_units);
    let l = cfg.model.num_layers;
    let described = cfg.model.init(vocab.len() as i64, tch::Device::Cpu, tch::Kind::Float).describe();
    let file_name = weights.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let title = format!("{described}: top layer ({l} of {l}), {file_name}");
    let notes = [how, format!("{} characters from a zero state; colour: the activation, from 0 to 1", chars.len())];
    let out = r.out.clone().unwrap_or_else(|| run_dir.file("gates.svg"));
    fsutil::write_atomic(&out, svg(&chars, &values, &units, &title, &notes).as_bytes())?;
    Ok(format!(
        "wrote {}: {} of the top layer over {} characters, {} of {h} units",
        out.display(),
        values.iter().map(|g| label(g.name)).collect::<Vec<_>>().join(", "),
        chars.len(),
        units.len()
    ))
}
