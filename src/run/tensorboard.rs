//! TensorBoard event files in the run's `tb/`: `tensorboard --logdir runs`.
//!
//! Per epoch (the step is the epoch number, as in `metrics.jsonl`):
//!
//! | tag                | value                                               |
//! |--------------------|-----------------------------------------------------|
//! | `perplexity/train` | `train_ppl`                                         |
//! | `perplexity/val`   | `val_ppl`, on the epochs that have it               |
//! | `loss/train`       | ln `train_ppl`: the mean cross-entropy per token    |
//! | `loss/val`         | ln `val_ppl`                                        |
//! | `lr`               | the learning rate                                   |
//! | `grad_norm`        | the mean global gradient norm before clipping       |
//! | `tokens_per_s`     | training throughput                                 |
//!
//! and at the end, `samples`: the end-of-training predictions as a text summary
//! (one row per prefix in TensorBoard's Text tab).
//!
//! The format (TFRecord framing, CRC-32C, the protobuf messages) comes from the
//! `tensorboard-rs` and `tensorboard-proto` crates. grulm uses their record writer
//! and messages but not their `SummaryWriter`: that one writes from a background
//! thread that panics on any I/O error (a full disk would abort training), while
//! here a failed write is an error like any other file of the run.
//!
//! Each process writes its own file. `--resume` first drops from the earlier files
//! what they logged after the checkpoint it resumes from ([`truncate`]), as it
//! truncates `metrics.jsonl`, so every epoch is shown once, from the process that
//! trained the weights the run kept. (TensorBoard's own answer, a
//! `SessionLog.START` event, is honoured by some of its readers and not others:
//! the legacy `EventAccumulator` purges scalars but not text.)
use crate::platform::fsutil;
use crate::run::metrics::EpochMetrics;
use anyhow::{Context, Result};
use protobuf::{Message, RepeatedField};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::{Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Value};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::{TensorShapeProto, TensorShapeProto_Dim};
use tensorboard_proto::types::DataType;
use tensorboard_rs::masked_crc32c::masked_crc32c;
use tensorboard_rs::record_writer::RecordWriter;

/// The run's subdirectory.
pub const DIR: &str = "tb";
/// What every event file's name starts with (TensorBoard finds files by it).
pub(crate) const FILE_PREFIX: &str = "events.out.tfevents.";

pub(crate) struct EventWriter {
    path: PathBuf,
    out: RecordWriter<BufWriter<File>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl EventWriter {
    /// A new event file in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secs = now() as u64;
        // TensorBoard reads a directory's files in name order: time, then a
        // counter in case two processes start in the same second.
        let path = (0..)
            .map(|n| dir.join(format!("{FILE_PREFIX}{secs:010}.grulm.{}.{n}", std::process::id())))
            .find(|p| !p.exists())
            .expect("an unused name");
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter { path, out: RecordWriter::new(BufWriter::new(file)) };
        let mut version = Event::new();
        version.set_file_version("brain.Event:2".into());
        w.write(version, 0)?;
        w.flush()?;
        Ok(w)
    }

    fn write(&mut self, mut e: Event, step: i64) -> Result<()> {
        e.set_wall_time(now());
        e.set_step(step);
        let bytes = e.write_to_bytes().context("encoding a TensorBoard event")?;
        self.out.write(&bytes).with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn summary(&mut self, values: Vec<Summary_Value>, step: usize) -> Result<()> {
        let mut s = Summary::new();
        s.set_value(RepeatedField::from_vec(values));
        let mut e = Event::new();
        e.set_summary(s);
        self.write(e, step as i64)
    }

    /// One epoch's scalars, flushed so a running TensorBoard shows them.
    pub fn epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        let mut scalars = vec![
            ("perplexity/train", m.train_ppl),
            ("loss/train", m.train_ppl.ln()),
            ("lr", m.lr),
            ("grad_norm", m.grad_norm),
            ("tokens_per_s", m.tokens_per_s),
        ];
        if let Some(v) = m.val_ppl {
            scalars.extend([("perplexity/val", v), ("loss/val", v.ln())]);
        }
        let values = scalars
            .into_iter()
            .map(|(tag, x)| {
                let mut v = Summary_Value::new();
                v.set_tag(tag.into());
                // TensorBoard's scalars are f32.
                v.set_simple_value(x as f32);
                v
            })
            .collect();
        self.summary(values, m.epoch)?;
        self.flush()
    }

    /// `texts` as one text summary (a 1-D string tensor: a table row each).
    pub fn text(&mut self, tag: &str, texts: &[String], step: usize) -> Result<()> {
        let mut plugin = SummaryMetadata_PluginData::new();
        plugin.set_plugin_name("text".into());
        let mut meta = SummaryMetadata::new();
        meta.set_plugin_data(plugin);
        let mut dim = TensorShapeProto_Dim::new();
        dim.set_size(texts.len() as i64);
        let mut shape = TensorShapeProto::new();
        shape.set_dim(RepeatedField::from_vec(vec![dim]));
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_STRING);
        tensor.set_tensor_shape(shape);
        tensor.set_string_val(RepeatedField::from_vec(texts.iter().map(|t| t.as_bytes().to_vec()).collect()));
        let mut v = Summary_Value::new();
        v.set_tag(tag.into());
        v.set_metadata(meta);
        v.set_tensor(tensor);
        self.summary(vec![v], step)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Drops from the event files in `dir` every event logged after `epoch` (for
/// `--resume` from that epoch's checkpoint), and a torn last record (a kill
/// mid-write). A file is rewritten atomically, and only if it changes.
pub(crate) fn truncate(dir: &Path, epoch: usize) -> Result<()> {
    for path in event_files(dir) {
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut kept = Vec::with_capacity(bytes.len());
        let mut pos = 0;
        while let Some((data, next)) = record(&bytes, pos) {
            // An event that does not parse is dropped with everything after it.
            let Ok(e) = Event::parse_from_bytes(data) else { break };
            if e.get_step() <= epoch as i64 {
                kept.extend_from_slice(&bytes[pos..next]);
            }
            pos = next;
        }
        if kept.len() != bytes.len() {
            fsutil::write_atomic(&path, &kept)?;
        }
    }
    Ok(())
}

/// The TFRecord at `pos`: u64 length, masked CRC-32C of the length, the data,
/// masked CRC-32C of the data (all little-endian). None at the end, or where a
/// record is torn or its checksums do not match.
fn record(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    let len_bytes = bytes.get(pos..pos + 8)?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes.try_into().ok()?)).ok()?;
    let data = bytes.get(pos + 12..(pos + 12).checked_add(len)?)?;
    let ok = u32_at(pos + 8)? == masked_crc32c(len_bytes) && u32_at(pos + 12 + len)? == masked_crc32c(data);
    ok.then_some((data, pos + 16 + len))
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut files: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(FILE_PREFIX)).map(|e| e.path()).collect();
    files.sort();
    files
}

/// Removes grulm's event files from `dir` (for `train --force`), nothing else.
pub(crate) fn remove_event_files(dir: &Path) -> Result<()> {
    for path in event_files(dir) {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let _ = std::fs::remove_dir(dir); // only if now empty
    Ok(())
}
