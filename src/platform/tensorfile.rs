//! safetensors files: written atomically, read with one-line errors, assigned
//! to a model with shape checks.
use crate::platform::fsutil;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Named tensors and the file's string metadata.
pub struct TensorFile {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        other => bail!("cannot save tensors of kind {other:?}"),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        _ => return None,
    })
}

/// Writes `tensors` (copied to the CPU) and `metadata` to `path` atomically.
/// `format: pt` is added so that `safetensors.torch.load_file` reads it.
pub(crate) fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<()> {
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let n = t.numel();
        let mut data = vec![0u8; n * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, n)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        bytes.push((name.clone(), dtype_of(t.kind())?, shape, data));
    }
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| anyhow!("tensor {name}: {e:?}"))?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = metadata.clone();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    let buf = safetensors::tensor::serialize(views, &Some(meta)).map_err(|e| anyhow!("cannot serialize {}: {e:?}", path.display()))?;
    fsutil::write_atomic(path, &buf)
}

/// Reads a safetensors file; a missing, truncated or corrupt file is an error
/// naming it (never a panic).
pub fn load(path: &Path) -> Result<TensorFile> {
    let shown = path.display();
    let buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("checkpoint {shown}: no such file"),
        Err(e) => bail!("checkpoint {shown}: cannot read: {e}"),
    };
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        anyhow!("checkpoint {shown}: not a valid safetensors file ({}); it may be truncated or corrupt", describe_st_error(&e))
    })?;
    let (_, header) = SafeTensors::read_metadata(&buf).map_err(|e| anyhow!("checkpoint {shown}: bad header ({e:?})"))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| anyhow!("checkpoint {shown}: tensor {name}: {e:?}"))?;
        let kind =
            kind_of(view.dtype()).ok_or_else(|| anyhow!("checkpoint {shown}: tensor {name} has unsupported dtype {:?}", view.dtype()))?;
        let size: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &size, kind).with_context(|| format!("checkpoint {shown}: tensor {name}"))?;
        tensors.push((name, t));
    }
    Ok(TensorFile { tensors, metadata })
}

fn describe_st_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "file shorter than a header".into(),
        E::HeaderTooLarge | E::InvalidHeaderLength => "impossible header length".into(),
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => "header is not safetensors JSON".into(),
        E::MetadataIncompleteBuffer => "data shorter than its header says".into(),
        other => format!("{other:?}"),
    }
}

/// Copies `src` tensors into the model's parameters `dst` (matched by name),
/// converting dtype and device. Every parameter must be present with its shape;
/// the error names the tensor and both shapes.
pub fn assign(dst: &[(String, Tensor)], src: &[(String, Tensor)], source: &str) -> Result<()> {
    let by_name: HashMap<&str, &Tensor> = src.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, p) in dst {
        let Some(s) = by_name.get(name.as_str()) else {
            bail!("{source}: tensor {name} is missing (the checkpoint was saved from another model or config)");
        };
        if s.size() != p.size() {
            bail!(
                "{source}: tensor {name} has shape {:?}, but this config's model needs {:?} (the checkpoint comes from another config)",
                s.size(),
                p.size()
            );
        }
    }
    tch::no_grad(|| {
        for (name, p) in dst {
            let mut p = p.shallow_clone();
            p.copy_(by_name[name.as_str()]);
        }
    });
    Ok(())
}

/// True when every tensor is finite (one host read for all of them).
pub(crate) fn all_finite(tensors: &[(String, Tensor)]) -> bool {
    tch::no_grad(|| {
        let flags: Vec<Tensor> = tensors.iter().map(|(_, t)| t.isfinite().all()).collect();
        bool::try_from(Tensor::stack(&flags, 0).all()).unwrap_or(false)
    })
}
