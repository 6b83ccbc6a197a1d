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
    /// Ascend NC1HWC0 of a rank-4 NCHW tensor: `[N, ceil(C/c0), H, W, c0]`, the channels
    /// zero-padded to a multiple of `c0` (16 for 16/32-bit elements, 32 for 8-bit).
    Nc1hwc0(u32),
    /// Ascend FRACTAL_Z of a rank-4 convolution filter `[Cout, Cin/groups, kh, kw]`:
    /// `[G * C1 * kh * kw, N1, 16, c0]` (GE's grouped form; `groups` 1 is the plain
    /// `[C1*kh*kw, ceil(Cout/16), 16, c0]`), see [`crate::layout::physical_shape`].
    FractalZ { c0: u32, groups: u32 },
    /// Ascend FRACTAL_NZ of a matrix `[.., M, N]` (rank >= 2):
    /// `[.., ceil(N/n0), ceil(M/16), 16, n0]`, zero-padded (`n0` = 16, 32 for 8-bit).
    FractalNz(u32),
}

impl Layout {
    pub fn is_plain(self) -> bool {
        self == Layout::Plain
    }
    /// A layout activations may take (plain, channels-last, channel-blocked, NC1HWC0), as
    /// opposed to the weight layouts (FRACTAL_Z, FRACTAL_NZ) only relayouts of constants
    /// produce.
    pub fn is_activation(self) -> bool {
        !matches!(self, Layout::FractalZ { .. } | Layout::FractalNz(_))
    }
    /// Whether a tensor of type `t` can be stored in this layout (rank, and the channel
    /// multiple a channel-blocked layout needs).
    pub fn fits(self, t: &TensorType) -> bool {
        match self {
            Layout::Plain => true,
            Layout::Nhwc => t.rank() == 4,
            Layout::Nchwc(c) => c > 0 && t.rank() == 4 && t.shape[1].is_multiple_of(c as usize),
            Layout::Nc1hwc0(c0) => c0 > 0 && t.rank() == 4,
            Layout::FractalZ { c0, groups } => {
                c0 > 0 && groups > 0 && t.rank() == 4 && t.shape[0].is_multiple_of(groups as usize)
            }
            Layout::FractalNz(n0) => n0 > 0 && t.rank() >= 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Plain => write!(f, "plain"),
            Layout::Nhwc => write!(f, "nhwc"),
            Layout::Nchwc(c) => write!(f, "nchw{c}c"),
            Layout::Nc1hwc0(c) => write!(f, "nc1hwc0_{c}"),
            Layout::FractalZ { c0, groups: 1 } => write!(f, "fractal_z_{c0}"),
            Layout::FractalZ { c0, groups } => write!(f, "fractal_z_{c0}_g{groups}"),
            Layout::FractalNz(n0) => write!(f, "fractal_nz_{n0}"),
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "plain" => Layout::Plain,
            "nhwc" => Layout::Nhwc,
            _ => {
                let num = |x: &str| x.parse::<u32>().map_err(|_| format!("bad layout '{s}'"));
                if let Some(r) = s.strip_prefix("fractal_z_") {
                    let (c0, groups) = match r.split_once("_g") {
                        Some((c, g)) => (num(c)?, num(g)?),
                        None => (num(r)?, 1),
                    };
                    return Ok(Layout::FractalZ { c0, groups });
                }
                if let Some(r) = s.strip_prefix("fractal_nz_") {
                    return Ok(Layout::FractalNz(num(r)?));
                }
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
