//! The CUDA artefact (`kiln build --target nvptx64-nvidia-cuda`): the kernels as PTX (and a
//! cubin for one architecture when `ptxas` was found at build time), the **launch plan** (kernel
//! order, grid and block sizes, each argument's buffer) and the weights, in one byte string.
//! A `.so` artefact embeds it (`<name>_cuda_artefact`), `--emit ptx` writes the PTX beside it.
//!
//! Every buffer a kernel reads or writes is one of four device allocations made once at load
//! time: the caller's inputs and outputs, the workspace (the static memory plan, as on the CPU)
//! and the weights. Reading never trusts the bytes: every count and offset is checked against
//! the data's length and every argument against its buffer's size.
//!
//! Layout (little endian): `b"KILNCUDA"`, `u32` version, then the fields of [`CudaArtefact`]
//! in order; strings and byte strings are a `u64` length and the bytes; the weights come last,
//! 256-byte aligned from the start.

use crate::TensorInfo;

/// The artefact's first bytes.
pub const CUDA_MAGIC: &[u8; 8] = b"KILNCUDA";
/// The artefact format's version.
pub const CUDA_FORMAT_VERSION: u32 = 1;

/// A byte offset into one of the four device buffers of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buf {
    /// Caller's input `i`.
    Input(u32, u64),
    /// Caller's output `j`.
    Output(u32, u64),
    /// The workspace.
    Workspace(u64),
    /// The weights.
    Weights(u64),
}

/// One kernel launch of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The kernel's entry name in the module.
    pub kernel: String,
    pub grid: [u32; 3],
    /// Threads per block (1-D).
    pub block: u32,
    /// Static shared memory bytes (informative: the module declares it).
    pub smem: u32,
    /// The kernel's pointer parameters, in order.
    pub args: Vec<Buf>,
    /// Bytes each argument may touch from its offset (checked at load time).
    pub arg_bytes: Vec<u64>,
}

/// A device-to-device copy after the kernels (a graph output that is an input, a constant or
/// another output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Copy {
    pub dst: Buf,
    pub src: Buf,
    pub bytes: u64,
}

/// A compiled model for NVIDIA GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaArtefact {
    pub name: String,
    /// The architecture the PTX targets (`sm_80`) and the cubin (if any) was assembled for.
    pub sm: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub workspace_size: u64,
    /// Every kernel, one module (NUL-free text).
    pub ptx: String,
    /// The PTX assembled by `ptxas` for `sm` (empty: the driver JIT-compiles the PTX).
    pub cubin: Vec<u8>,
    pub launches: Vec<Launch>,
    pub copies: Vec<Copy>,
    pub weights: Vec<u8>,
}

/// Why an artefact could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CUDA artefact: {}", self.0)
    }
}
impl std::error::Error for FormatError {}

fn bad(m: impl Into<String>) -> FormatError {
    FormatError(m.into())
}

struct W(Vec<u8>);
impl W {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn buf(&mut self, b: Buf) {
        let (k, i, o) = match b {
            Buf::Input(i, o) => (0, i, o),
            Buf::Output(i, o) => (1, i, o),
            Buf::Workspace(o) => (2, 0, o),
            Buf::Weights(o) => (3, 0, o),
        };
        self.u32(k);
        self.u32(i);
        self.u64(o);
    }
    fn tensors(&mut self, ts: &[TensorInfo]) {
        self.u64(ts.len() as u64);
        for t in ts {
            self.bytes(t.name.as_bytes());
            self.u32(t.dtype as u32);
            self.u64(t.dims.len() as u64);
            for &d in &t.dims {
                self.u64(d as u64);
            }
            self.u64(t.nbytes as u64);
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}
impl<'a> R<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        let n = usize::try_from(n).map_err(|_| bad(format!("{what}: size {n}")))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad(format!("{what}: truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A count of items of at least `min_item` bytes each, checked against what is left.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u64(what)?;
        let left = (self.b.len() - self.at) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(bad(format!("{what}: count {n} exceeds the data")));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], FormatError> {
        let n = self.u64(what)?;
        self.take(n, what)
    }
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let b = self.bytes(what)?;
        if b.contains(&0) {
            return Err(bad(format!("{what}: NUL in string")));
        }
        String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what}: not UTF-8")))
    }
    fn buf(&mut self, what: &str) -> Result<Buf, FormatError> {
        let k = self.u32(what)?;
        let i = self.u32(what)?;
        let o = self.u64(what)?;
        Ok(match k {
            0 => Buf::Input(i, o),
            1 => Buf::Output(i, o),
            2 => Buf::Workspace(o),
            3 => Buf::Weights(o),
            _ => return Err(bad(format!("{what}: buffer kind {k}"))),
        })
    }
    fn tensors(&mut self, what: &str) -> Result<Vec<TensorInfo>, FormatError> {
        let n = self.count(what, 28)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string(what)?;
            let dtype = self.u32(what)? as i32;
            let rank = self.count(what, 8)?;
            if rank > 32 {
                return Err(bad(format!("{what} '{name}': rank {rank}")));
            }
            let mut dims = Vec::with_capacity(rank);
            let mut elems: u64 = 1;
            for _ in 0..rank {
                let d = self.u64(what)?;
                elems = elems
                    .checked_mul(d)
                    .ok_or_else(|| bad(format!("{what} '{name}': size overflows")))?;
                dims.push(d as i64);
            }
            let nbytes = self.u64(what)?;
            let esize = crate::dtype_size(dtype)
                .ok_or_else(|| bad(format!("{what} '{name}': dtype code {dtype}")))?
                as u64;
            if elems.checked_mul(esize) != Some(nbytes) || nbytes > 1 << 40 {
                return Err(bad(format!(
                    "{what} '{name}': {nbytes} bytes for {elems} elements"
                )));
            }
            v.push(TensorInfo {
                name,
                dtype,
                dims,
                nbytes: nbytes as usize,
            });
        }
        Ok(v)
    }
}

/// Weights start at a multiple of this from the artefact's first byte.
pub const WEIGHTS_ALIGN: usize = 256;

impl CudaArtefact {
    /// The artefact as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = W(CUDA_MAGIC.to_vec());
        w.u32(CUDA_FORMAT_VERSION);
        w.bytes(self.name.as_bytes());
        w.bytes(self.sm.as_bytes());
        w.tensors(&self.inputs);
        w.tensors(&self.outputs);
        w.u64(self.workspace_size);
        w.bytes(self.ptx.as_bytes());
        w.bytes(&self.cubin);
        w.u64(self.launches.len() as u64);
        for l in &self.launches {
            w.bytes(l.kernel.as_bytes());
            for g in l.grid {
                w.u32(g);
            }
            w.u32(l.block);
            w.u32(l.smem);
            w.u64(l.args.len() as u64);
            for (&a, &n) in l.args.iter().zip(&l.arg_bytes) {
                w.buf(a);
                w.u64(n);
            }
        }
        w.u64(self.copies.len() as u64);
        for c in &self.copies {
            w.buf(c.dst);
            w.buf(c.src);
            w.u64(c.bytes);
        }
        w.u64(self.weights.len() as u64);
        let pad = (WEIGHTS_ALIGN - (w.0.len() + 8) % WEIGHTS_ALIGN) % WEIGHTS_ALIGN;
        w.u64(pad as u64);
        w.0.extend(std::iter::repeat_n(0u8, pad));
        w.0.extend_from_slice(&self.weights);
        w.0
    }

    /// Read and check an artefact: structure, names, sizes, and every launch argument and copy
    /// inside its buffer.
    pub fn from_bytes(b: &[u8]) -> Result<CudaArtefact, FormatError> {
        let mut r = R { b, at: 0 };
        if r.take(8, "magic").ok() != Some(CUDA_MAGIC.as_slice()) {
            return Err(bad("not a kiln CUDA artefact (magic)"));
        }
        let v = r.u32("version")?;
        if v != CUDA_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {v} (this runtime reads {CUDA_FORMAT_VERSION})"
            )));
        }
        let name = r.string("name")?;
        let sm = r.string("sm")?;
        let inputs = r.tensors("input")?;
        let outputs = r.tensors("output")?;
        let workspace_size = r.u64("workspace size")?;
        if workspace_size > 1 << 44 {
            return Err(bad(format!("workspace of {workspace_size} bytes")));
        }
        let ptx = r.string("ptx")?;
        let cubin = r.bytes("cubin")?.to_vec();
        let n = r.count("launches", 40)?;
        let mut launches = Vec::with_capacity(n);
        for _ in 0..n {
            let kernel = r.string("kernel name")?;
            if kernel.is_empty()
                || !kernel
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_')
            {
                return Err(bad(format!("kernel name '{kernel}'")));
            }
            let grid = [r.u32("grid")?, r.u32("grid")?, r.u32("grid")?];
            let block = r.u32("block")?;
            let smem = r.u32("smem")?;
            if grid.contains(&0) || block == 0 || block > 1024 || smem > 227 * 1024 {
                return Err(bad(format!(
                    "kernel {kernel}: grid {grid:?}, block {block}, {smem} bytes of shared memory"
                )));
            }
            let na = r.count("arguments", 24)?;
            let (mut args, mut arg_bytes) = (Vec::with_capacity(na), Vec::with_capacity(na));
            for _ in 0..na {
                args.push(r.buf("argument")?);
                arg_bytes.push(r.u64("argument size")?);
            }
            launches.push(Launch {
                kernel,
                grid,
                block,
                smem,
                args,
                arg_bytes,
            });
        }
        let nc = r.count("copies", 56)?;
        let mut copies = Vec::with_capacity(nc);
        for _ in 0..nc {
            let dst = r.buf("copy")?;
            let src = r.buf("copy")?;
            let bytes = r.u64("copy size")?;
            copies.push(Copy { dst, src, bytes });
        }
        let wlen = r.u64("weights size")?;
        let pad = r.u64("weights padding")?;
        r.take(pad, "weights padding")?;
        let weights = r.take(wlen, "weights")?.to_vec();
        if r.at != b.len() {
            return Err(bad(format!("{} bytes after the weights", b.len() - r.at)));
        }
        let a = CudaArtefact {
            name,
            sm,
            inputs,
            outputs,
            workspace_size,
            ptx,
            cubin,
            launches,
            copies,
            weights,
        };
        a.check()?;
        Ok(a)
    }

    /// The size of the buffer `b` lies in.
    pub fn buf_size(&self, b: Buf) -> Option<u64> {
        match b {
            Buf::Input(i, _) => self.inputs.get(i as usize).map(|t| t.nbytes as u64),
            Buf::Output(j, _) => self.outputs.get(j as usize).map(|t| t.nbytes as u64),
            Buf::Workspace(_) => Some(self.workspace_size),
            Buf::Weights(_) => Some(self.weights.len() as u64),
        }
    }

    fn check(&self) -> Result<(), FormatError> {
        let inside = |b: Buf, n: u64| -> bool {
            let off = match b {
                Buf::Input(_, o) | Buf::Output(_, o) | Buf::Workspace(o) | Buf::Weights(o) => o,
            };
            self.buf_size(b)
                .is_some_and(|s| off.checked_add(n).is_some_and(|e| e <= s.max(off)) && off <= s)
        };
        for l in &self.launches {
            for (&a, &n) in l.args.iter().zip(&l.arg_bytes) {
                if !inside(a, n) {
                    return Err(bad(format!(
                        "kernel {}: argument {a:?} of {n} bytes outside its buffer",
                        l.kernel
                    )));
                }
            }
            if !self.ptx.contains(&format!(".entry {}(", l.kernel)) {
                return Err(bad(format!("kernel {} is not in the PTX", l.kernel)));
            }
        }
        for c in &self.copies {
            if !inside(c.dst, c.bytes) || !inside(c.src, c.bytes) {
                return Err(bad(format!("copy {c:?} outside its buffers")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CudaArtefact {
        CudaArtefact {
            name: "m".into(),
            sm: "sm_80".into(),
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: crate::KILN_DTYPE_F32,
                dims: vec![2, 3],
                nbytes: 24,
            }],
            outputs: vec![TensorInfo {
                name: "y".into(),
                dtype: crate::KILN_DTYPE_F32,
                dims: vec![2, 3],
                nbytes: 24,
            }],
            workspace_size: 64,
            ptx: ".visible .entry k0(\n)".into(),
            cubin: vec![],
            launches: vec![Launch {
                kernel: "k0".into(),
                grid: [1, 1, 1],
                block: 32,
                smem: 0,
                args: vec![Buf::Input(0, 0), Buf::Weights(0), Buf::Output(0, 0)],
                arg_bytes: vec![24, 8, 24],
            }],
            copies: vec![],
            weights: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let a = sample();
        let b = a.to_bytes();
        assert_eq!(CudaArtefact::from_bytes(&b).unwrap(), a);
        // every truncation and every single-byte flip is an error or a valid artefact, never
        // a panic
        for n in 0..b.len() {
            assert!(CudaArtefact::from_bytes(&b[..n]).is_err());
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0xA5;
            let _ = CudaArtefact::from_bytes(&c);
        }
        // an argument outside its buffer
        let mut a2 = a.clone();
        a2.launches[0].arg_bytes[1] = 9;
        let e = CudaArtefact::from_bytes(&a2.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("outside its buffer"), "{e}");
    }
}
