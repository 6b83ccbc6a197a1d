//! A small, defensive reader/writer for NumPy `.npy` files (format versions 1, 2 and 3).
//!
//! Only little-endian (or single-byte) scalar dtypes in C order are supported; the dtype is
//! represented by its ABI code (`KILN_DTYPE_*`). Readers check the header and the data size
//! against the file length before allocating, so absurd shapes fail cleanly. Writers go through
//! [`crate::atomic::write`] (a temporary file beside the destination renamed into place).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{Error, KILN_DTYPE_BF16, KILN_DTYPE_F32, dtype_size};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers longer than this are rejected (NumPy itself writes a few hundred bytes).
pub const MAX_HEADER_LEN: usize = 1 << 20;

/// A dense C-order array read from or to be written to a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Npy {
    /// ABI dtype code (`KILN_DTYPE_*`).
    pub dtype: i32,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, `numel * dtype size` of them.
    pub data: Vec<u8>,
}

/// `.npy` descr for ABI dtype `code` (`"<f4"`, `"|u1"`, ...).
pub fn descr_for_code(code: i32) -> Option<&'static str> {
    Some(match code {
        1 => "<f4",
        2 => "|u1",
        3 => "|i1",
        4 => "<u2",
        5 => "<i2",
        6 => "<i4",
        7 => "<i8",
        9 => "|b1",
        10 => "<f2",
        11 => "<f8",
        12 => "<u4",
        13 => "<u8",
        16 => "<V2",
        _ => return None,
    })
}

/// ABI dtype code for a `.npy` descr. Accepts `<`, `|` and `=` (little-endian host) byte
/// orders, and `>` for single-byte types; `V2` is read as bf16.
pub fn code_for_descr(descr: &str) -> Option<i32> {
    let (order, ty) = descr.split_at_checked(1)?;
    let code = match ty {
        "f4" => 1,
        "u1" => 2,
        "i1" => 3,
        "u2" => 4,
        "i2" => 5,
        "i4" => 6,
        "i8" => 7,
        "b1" => 9,
        "f2" => 10,
        "f8" => 11,
        "u4" => 12,
        "u8" => 13,
        "V2" => 16,
        _ => return None,
    };
    let single = dtype_size(code) == Some(1);
    let ok = match order {
        "<" | "|" => true,
        "=" => cfg!(target_endian = "little"),
        ">" => single,
        _ => false,
    };
    ok.then_some(code)
}

/// Number of bytes of an array of `shape` with elements of `esize` bytes, `None` on overflow.
fn byte_len(shape: &[usize], esize: usize) -> Option<usize> {
    shape.iter().try_fold(esize, |acc, &d| acc.checked_mul(d))
}

impl Npy {
    /// An array from raw little-endian bytes; checks that `data` matches `shape`.
    pub fn new(dtype: i32, shape: Vec<usize>, data: Vec<u8>) -> Result<Npy, Error> {
        let esize =
            dtype_size(dtype).ok_or_else(|| Error::npy(format!("unknown dtype code {dtype}")))?;
        let want = byte_len(&shape, esize)
            .ok_or_else(|| Error::npy(format!("shape {shape:?} overflows")))?;
        if data.len() != want {
            return Err(Error::npy(format!(
                "shape {shape:?} needs {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(Npy { dtype, shape, data })
    }

    /// An f32 array. Panics if `values.len()` is not the product of `shape`.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Npy {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape {shape:?} does not match {} values",
            values.len()
        );
        Npy {
            dtype: KILN_DTYPE_F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The elements of an f32 array.
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        if self.dtype != KILN_DTYPE_F32 {
            return Err(Error::npy(format!(
                "expected f32 data, found {}",
                crate::dtype_name(self.dtype).unwrap_or("?")
            )));
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The `.npy` descr of this array's dtype.
    pub fn descr(&self) -> &'static str {
        descr_for_code(self.dtype).unwrap_or("<V2")
    }

    /// Encodes the whole file (version 1 header when it fits, else version 2).
    pub fn to_bytes(&self) -> Vec<u8> {
        let descr = if self.dtype == KILN_DTYPE_BF16 {
            "<V2"
        } else {
            self.descr()
        };
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => {
                let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
                format!("({})", dims.join(", "))
            }
        };
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad with spaces so the data starts on a 64-byte boundary; end with '\n'.
        let build = |prefix: usize| {
            let unpadded = prefix + dict.len() + 1;
            let pad = (64 - unpadded % 64) % 64;
            let mut h = dict.clone();
            h.extend(std::iter::repeat_n(' ', pad));
            h.push('\n');
            h
        };
        let h1 = build(10);
        let mut out = Vec::with_capacity(h1.len() + 12 + self.data.len());
        out.extend_from_slice(MAGIC);
        if let Ok(len) = u16::try_from(h1.len()) {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(h1.as_bytes());
        } else {
            let h2 = build(12);
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&(h2.len() as u32).to_le_bytes());
            out.extend_from_slice(h2.as_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// Parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub dtype: i32,
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the file.
    pub data_offset: usize,
    /// Size of the data in bytes.
    pub data_len: usize,
}

/// Parses the preamble + header from the start of a file. `prefix` must hold at least the
/// whole header (it may hold more). Returns `Ok(Err(n))` if more bytes are needed: `n` in
/// total.
fn parse_header(prefix: &[u8]) -> Result<Result<Header, usize>, Error> {
    if prefix.len() < 10 {
        return Ok(Err(12));
    }
    if &prefix[..6] != MAGIC {
        return Err(Error::npy("not a .npy file (bad magic)"));
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10),
        2 | 3 => {
            if prefix.len() < 12 {
                return Ok(Err(12));
            }
            (
                u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(Error::npy(format!(
                "unsupported format version {major}.{minor}"
            )));
        }
    };
    if hlen > MAX_HEADER_LEN {
        return Err(Error::npy(format!("header length {hlen} is too large")));
    }
    let end = start + hlen;
    if prefix.len() < end {
        return Ok(Err(end));
    }
    let text = std::str::from_utf8(&prefix[start..end])
        .map_err(|_| Error::npy("header is not valid text"))?;
    if major == 1 && !text.is_ascii() {
        return Err(Error::npy("version 1 header is not ASCII"));
    }
    let dict = parse_dict(text)?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in dict {
        match (k.as_str(), v) {
            ("descr", Lit::Str(s)) => descr = Some(s),
            ("descr", _) => return Err(Error::npy("structured dtypes are not supported")),
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Tuple(t)) => shape = Some(t),
            (k @ ("fortran_order" | "shape"), _) => {
                return Err(Error::npy(format!("header key '{k}' has the wrong type")));
            }
            _ => {}
        }
    }
    let descr = descr.ok_or_else(|| Error::npy("header lacks 'descr'"))?;
    let fortran = fortran.ok_or_else(|| Error::npy("header lacks 'fortran_order'"))?;
    let shape = shape.ok_or_else(|| Error::npy("header lacks 'shape'"))?;
    if fortran {
        return Err(Error::npy(
            "Fortran-order arrays are not supported (save with np.ascontiguousarray)",
        ));
    }
    let dtype =
        code_for_descr(&descr).ok_or_else(|| Error::npy(format!("unsupported dtype '{descr}'")))?;
    let esize = dtype_size(dtype).expect("known dtype");
    let data_len = byte_len(&shape, esize)
        .ok_or_else(|| Error::npy(format!("shape {shape:?} is too large")))?;
    Ok(Ok(Header {
        dtype,
        shape,
        data_offset: end,
        data_len,
    }))
}

#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    Other,
}

/// Parses the Python dict literal of a `.npy` header.
fn parse_dict(text: &str) -> Result<Vec<(String, Lit)>, Error> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    p.ws();
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        let val = p.literal()?;
        out.push((key, val));
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.ws();
        p.expect(b'}')?;
        break;
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(Error::npy("trailing characters after header dict"));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), Error> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(Error::npy(format!(
                "malformed header: expected '{}' at byte {}",
                c as char, self.i
            )))
        }
    }
    fn string(&mut self) -> Result<String, Error> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(Error::npy(format!(
                    "malformed header: expected a string at byte {}",
                    self.i
                )));
            }
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == q {
                let s = std::str::from_utf8(&self.s[start..self.i])
                    .map_err(|_| Error::npy("malformed header string"))?
                    .to_string();
                self.i += 1;
                return Ok(s);
            }
            if c == b'\\' {
                return Err(Error::npy("escapes in header strings are not supported"));
            }
            self.i += 1;
        }
        Err(Error::npy("malformed header: unterminated string"))
    }
    fn word(&mut self) -> &str {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or("")
    }
    fn literal(&mut self) -> Result<Lit, Error> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Lit::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b')') {
                        break;
                    }
                    let w = self.word().to_string();
                    let digits = w.strip_suffix('L').unwrap_or(&w);
                    let d: usize = digits.parse().map_err(|_| {
                        Error::npy(format!("malformed header: bad dimension '{w}'"))
                    })?;
                    dims.push(d);
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    self.expect(b')')?;
                    break;
                }
                Ok(Lit::Tuple(dims))
            }
            Some(b'[' | b'{') => {
                // Structured dtype descriptions; skip balanced brackets, strings aside.
                let mut depth = 0usize;
                while let Some(c) = self.peek() {
                    match c {
                        b'\'' | b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'[' | b'{' | b'(' => depth += 1,
                        b']' | b'}' | b')' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(Lit::Other);
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Err(Error::npy("malformed header: unbalanced brackets"))
            }
            _ => match self.word() {
                "True" => Ok(Lit::Bool(true)),
                "False" => Ok(Lit::Bool(false)),
                "" => Err(Error::npy(format!(
                    "malformed header: unexpected character at byte {}",
                    self.i
                ))),
                _ => Ok(Lit::Other),
            },
        }
    }
}

/// Decodes a whole `.npy` file held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<Npy, Error> {
    let h = match parse_header(bytes)? {
        Ok(h) => h,
        Err(_) => return Err(Error::npy("truncated header")),
    };
    let avail = bytes.len() - h.data_offset;
    if avail != h.data_len {
        return Err(Error::npy(format!(
            "shape {:?} needs {} data bytes, file has {avail}",
            h.shape, h.data_len
        )));
    }
    Ok(Npy {
        dtype: h.dtype,
        shape: h.shape,
        data: bytes[h.data_offset..].to_vec(),
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a `.npy` file. The data size implied by the header is checked against the file's
/// length before the data is allocated.
pub fn read(path: &Path) -> Result<Npy, Error> {
    let with_path = |e: Error| match e {
        Error::Npy(m) => Error::Npy(format!("{}: {m}", path.display())),
        e => e,
    };
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut head = Vec::new();
    let h = loop {
        match parse_header(&head).map_err(with_path)? {
            Ok(h) => break h,
            Err(need) => {
                if need as u64 > file_len {
                    return Err(with_path(Error::npy("truncated header")));
                }
                let old = head.len();
                head.resize(need, 0);
                f.read_exact(&mut head[old..]).map_err(io_err(path))?;
            }
        }
    };
    let avail = file_len - h.data_offset as u64;
    if avail != h.data_len as u64 {
        return Err(with_path(Error::npy(format!(
            "shape {:?} needs {} data bytes, file has {avail}",
            h.shape, h.data_len
        ))));
    }
    let mut data = vec![0u8; h.data_len];
    f.read_exact(&mut data).map_err(io_err(path))?;
    Ok(Npy {
        dtype: h.dtype,
        shape: h.shape,
        data,
    })
}

/// Writes an array to a `.npy` file atomically.
pub fn write(path: &Path, array: &Npy) -> Result<(), Error> {
    let esize = dtype_size(array.dtype)
        .ok_or_else(|| Error::npy(format!("unknown dtype code {}", array.dtype)))?;
    if byte_len(&array.shape, esize) != Some(array.data.len()) {
        return Err(Error::npy(format!(
            "shape {:?} does not match {} data bytes",
            array.shape,
            array.data.len()
        )));
    }
    crate::atomic::write(path, &array.to_bytes())
}
