use std::fmt;
use std::path::PathBuf;

/// Errors of the runtime API.
#[derive(Debug)]
pub enum Error {
    /// A null pointer where the descriptor needs one.
    NullPointer(&'static str),
    /// The descriptor's `abi_version` is not [`crate::KILN_ABI_VERSION`].
    AbiVersion { found: u32, expected: u32 },
    /// The descriptor is malformed (bad rank, dtype, size, name...).
    BadDescriptor(String),
    /// Wrong number of inputs or outputs.
    Arity {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A buffer has the wrong size in bytes.
    Size {
        what: &'static str,
        index: usize,
        name: String,
        expected: usize,
        got: usize,
    },
    /// An input or output has the wrong element type for a typed helper.
    DType {
        what: &'static str,
        index: usize,
        name: String,
        found: &'static str,
        expected: &'static str,
    },
    /// The workspace is too small or misaligned for this model.
    Workspace(String),
    /// A buffer could not be allocated.
    Alloc { what: String, bytes: usize },
    /// `run` returned a nonzero status.
    Status(i32),
    /// Loading a shared library or resolving its symbol failed.
    Load { path: PathBuf, message: String },
    /// A `.npy` file is malformed or unsupported.
    Npy(String),
    /// An I/O error, with the file involved.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn npy(msg: impl Into<String>) -> Error {
        Error::Npy(msg.into())
    }
}

/// Human-readable meaning of a `KILN_*` status code.
pub fn status_str(code: i32) -> &'static str {
    match code {
        crate::KILN_OK => "ok",
        crate::KILN_ERR_NULL => "null pointer",
        crate::KILN_ERR_ALIGN => "misaligned workspace",
        crate::KILN_ERR_ARITY => "wrong number of buffers",
        crate::KILN_ERR_SIZE => "wrong buffer size",
        crate::KILN_ERR_ABI => "unsupported ABI version",
        crate::KILN_ERR_INDEX => "index out of range",
        crate::KILN_ERR_DIVIDE => "integer division by zero or overflow",
        crate::KILN_ERR_LOOP => "a loop ran past its bound of iterations",
        _ => "unknown status",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NullPointer(what) => write!(f, "model descriptor: null {what}"),
            Error::AbiVersion { found, expected } => write!(
                f,
                "model descriptor has ABI version {found}, this runtime supports {}..={expected}",
                crate::KILN_ABI_VERSION_MIN
            ),
            Error::BadDescriptor(m) => write!(f, "malformed model descriptor: {m}"),
            Error::Arity {
                what,
                expected,
                got,
            } => write!(f, "model expects {expected} {what}, got {got}"),
            Error::Size {
                what,
                index,
                name,
                expected,
                got,
            } => write!(
                f,
                "{what} {index} ('{name}') must be {expected} bytes, got {got}"
            ),
            Error::DType {
                what,
                index,
                name,
                found,
                expected,
            } => write!(
                f,
                "{what} {index} ('{name}') has dtype {found}, expected {expected}"
            ),
            Error::Workspace(m) => write!(f, "workspace: {m}"),
            Error::Alloc { what, bytes } => write!(f, "cannot allocate {bytes} bytes for {what}"),
            Error::Status(c) => write!(f, "model run failed with status {c} ({})", status_str(*c)),
            Error::Load { path, message } => {
                write!(f, "cannot load model from {}: {message}", path.display())
            }
            Error::Npy(m) => write!(f, "npy: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
