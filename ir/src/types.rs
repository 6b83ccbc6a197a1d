//! Tensor types: element type, static shape, layout and quantization parameters.

use crate::DType;
use std::fmt;

/// Physical data layout of a tensor. Layout is part of a value's type, so a layout pass is a type
/// rewrite plus inserted conversions. `Plain` is the logical row-major order of the shape
/// (NCHW for images, as ONNX defines them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    #[default]
    Plain,
    /// Channels-last (NHWC) for a logically NCHW tensor.
    Nhwc,
    /// Channel-blocked NCHW[c]: `N, C/c, H, W, c`.
    Nchwc(u32),
    /// Ascend NC1HWC0 (C0 = 16 for fp16).
    Nc1hwc0(u32),
    /// Ascend FRACTAL_Z weight layout.
    FractalZ,
}

impl Layout {
    pub fn is_plain(self) -> bool {
        self == Layout::Plain
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Plain => write!(f, "plain"),
            Layout::Nhwc => write!(f, "nhwc"),
            Layout::Nchwc(c) => write!(f, "nchw{c}c"),
            Layout::Nc1hwc0(c) => write!(f, "nc1hwc0_{c}"),
            Layout::FractalZ => write!(f, "fractal_z"),
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "plain" => Layout::Plain,
            "nhwc" => Layout::Nhwc,
            "fractal_z" => Layout::FractalZ,
            _ => {
                if let Some(c) = s.strip_prefix("nchw").and_then(|r| r.strip_suffix('c')) {
                    Layout::Nchwc(c.parse().map_err(|_| format!("bad layout '{s}'"))?)
                } else if let Some(c) = s.strip_prefix("nc1hwc0_") {
                    Layout::Nc1hwc0(c.parse().map_err(|_| format!("bad layout '{s}'"))?)
                } else {
                    return Err(format!("unknown layout '{s}'"));
                }
            }
        })
    }
}

/// Affine quantization parameters (`real = scale * (q - zero_point)`), per tensor or per axis.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    /// `None` = per-tensor; `Some(axis)` = per-channel along `axis`.
    pub axis: Option<usize>,
}

/// The type of a value: element type, static shape, layout and optional quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub quant: Option<QuantParams>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorType {
            dtype,
            shape: shape.into(),
            layout: Layout::Plain,
            quant: None,
        }
    }
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(DType::F32, shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// Row-major element strides of the logical shape.
    pub fn strides(&self) -> Vec<usize> {
        strides_of(&self.shape)
    }
    pub fn with_shape(&self, shape: impl Into<Vec<usize>>) -> Self {
        TensorType {
            shape: shape.into(),
            ..self.clone()
        }
    }
    pub fn with_layout(&self, layout: Layout) -> Self {
        TensorType {
            layout,
            ..self.clone()
        }
    }
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType {
            dtype,
            quant: None,
            ..self.clone()
        }
    }
}

/// Row-major strides (in elements) of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")?;
        if !self.layout.is_plain() {
            write!(f, "@{}", self.layout)?;
        }
        if let Some(q) = &self.quant {
            write!(f, " quant(scale={:?}, zp={:?}", q.scale, q.zero_point)?;
            if let Some(a) = q.axis {
                write!(f, ", axis={a}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}
