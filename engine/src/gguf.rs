//! GGUF files through candle-core's reader: open with validation, read metadata, dequantize
//! tensors to f32. Malformed, truncated or hostile files give [`EngineError::Gguf`], never a
//! panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{EngineError, Result};

/// An open GGUF file: parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens and parses the header of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::ModelNotFound { path: path.to_path_buf() });
        }
        let file = File::open(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
        let mut reader = BufReader::new(file);
        // candle validates lengths against the file size; the unwind guard turns any panic left
        // in its parser (e.g. a zero alignment) into an error instead of taking the process down.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let content = match parsed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(gguf_err(path, e.to_string())),
            Err(_) => return Err(gguf_err(path, "malformed header".into())),
        };
        Ok(Self { path: path.to_path_buf(), content, reader })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata entries.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Metadata value `key`, or a [`EngineError::Metadata`] naming it.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| meta_err(key, "missing"))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)?.to_string().map(|s| s.as_str()).map_err(|e| meta_err(key, &e.to_string()))
    }

    /// An unsigned integer metadata value (any integer width).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => return Err(meta_err(key, "expected a non-negative integer")),
        };
        usize::try_from(n).map_err(|_| meta_err(key, "value too large"))
    }

    /// A float metadata value.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            _ => Err(meta_err(key, "expected a float")),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.get(key)?.to_vec().map_err(|e| meta_err(key, &e.to_string()))?;
        arr.iter().map(|v| v.to_string().cloned().map_err(|_| meta_err(key, "expected strings"))).collect()
    }

    /// An array of integers (token types and the like).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        let arr = self.get(key)?.to_vec().map_err(|e| meta_err(key, &e.to_string()))?;
        arr.iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => i32::try_from(*x).map_err(|_| meta_err(key, "value too large")),
                Value::U8(x) => Ok(*x as i32),
                Value::I8(x) => Ok(*x as i32),
                _ => Err(meta_err(key, "expected integers")),
            })
            .collect()
    }

    /// Shape of tensor `name` in row-major order (outer dimension first), if present.
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims().to_vec())
    }

    /// Storage type of tensor `name`, if present.
    pub fn tensor_dtype(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    /// Number of tensors in the file.
    pub fn tensor_count(&self) -> usize {
        self.content.tensor_infos.len()
    }

    /// Reads tensor `name`, checks it has `shape` (outer dimension first) and returns its
    /// values dequantized to f32, row-major.
    pub fn read_f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| tensor_err(name, "missing from the file"))?;
        let dtype = info.ggml_dtype;
        if !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1) {
            return Err(EngineError::UnsupportedDtype { tensor: name.into(), dtype: format!("{dtype:?}") });
        }
        if info.shape.dims() != shape {
            return Err(tensor_err(name, &format!("shape {:?}, expected {:?}", info.shape.dims(), shape)));
        }
        let path = self.path.clone();
        let (content, reader) = (&self.content, &mut self.reader);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> candle_core::Result<Vec<f32>> {
            let q = content.tensor(reader, name, &Device::Cpu)?;
            q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()
        }));
        match read {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(gguf_err(&path, format!("tensor {name}: {e}"))),
            Err(_) => Err(gguf_err(&path, format!("tensor {name}: malformed data"))),
        }
    }
}

impl GgufFile {
    /// Reads tensor `name` as stored (GGML block bytes), after checking its shape.
    pub fn read_raw(&mut self, name: &str, shape: &[usize]) -> Result<(GgmlDType, Vec<u8>)> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| tensor_err(name, "missing from the file"))?;
        if info.shape.dims() != shape {
            return Err(tensor_err(name, &format!("shape {:?}, expected {:?}", info.shape.dims(), shape)));
        }
        let dtype = info.ggml_dtype;
        let path = self.path.clone();
        let (content, reader) = (&self.content, &mut self.reader);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> candle_core::Result<Vec<u8>> {
            Ok(content.tensor(reader, name, &Device::Cpu)?.data()?.into_owned())
        }));
        match read {
            Ok(Ok(v)) => Ok((dtype, v)),
            Ok(Err(e)) => Err(gguf_err(&path, format!("tensor {name}: {e}"))),
            Err(_) => Err(gguf_err(&path, format!("tensor {name}: malformed data"))),
        }
    }
}

fn gguf_err(path: &Path, reason: String) -> EngineError {
    EngineError::Gguf { path: path.to_path_buf(), reason }
}

fn meta_err(key: &str, reason: &str) -> EngineError {
    EngineError::Metadata { key: key.into(), reason: reason.into() }
}

fn tensor_err(name: &str, reason: &str) -> EngineError {
    EngineError::Tensor { tensor: name.into(), reason: reason.into() }
}
