//! Atomic output files: the one way kiln writes a file (artefacts, `.npy` outputs, generated
//! docs). The bytes go to a new file beside the destination, which is then renamed over it, so
//! a reader never sees half a file and a failure leaves nothing behind.
//!
//! The destination may be a symbolic link: the file it names is written (the link stays a
//! link). Anything at the end of the links that is not a regular file — a directory, a
//! device such as `/dev/stdout`'s terminal or pipe, a socket — is refused rather than replaced.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Symbolic links followed at most (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// The path an output for `dest` is written to: `dest` itself, or, when `dest` is a symbolic
/// link, the file at the end of its links (relative targets are resolved beside each link; the
/// file need not exist yet). An existing file there that is not a regular file is an error.
pub fn output_target(dest: &Path) -> io::Result<PathBuf> {
    // what the links lead to, as the kernel resolves them (also "magic" links such as
    // /proc/self/fd/1, whose text is no path)
    if let Ok(m) = fs::metadata(dest)
        && !m.is_file()
    {
        return Err(not_a_file(&m, dest, dest));
    }
    let mut p = dest.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&p)?;
                p = if t.is_absolute() {
                    t
                } else {
                    p.parent().unwrap_or(Path::new("")).join(t)
                };
            }
            Ok(m) if m.is_file() => return Ok(p),
            Ok(m) => return Err(not_a_file(&m, dest, &p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("more than {MAX_LINKS} symbolic links"),
    ))
}

fn not_a_file(m: &fs::Metadata, dest: &Path, end: &Path) -> io::Error {
    let what = if m.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    let via = if end == dest {
        match fs::canonicalize(dest) {
            Ok(c) if c != dest => format!(" (the link leads to {})", c.display()),
            _ => String::new(),
        }
    } else {
        format!(" (the link leads to {})", end.display())
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}{via}: refusing to replace it with an output file"),
    )
}

/// A fresh name `.<file>.tmp<pid>.<n>` in `dest`'s directory.
fn temp_name(dest: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(file);
    name.push(format!(".tmp{}.{n}", std::process::id()));
    Ok(dir.join(name))
}

/// Writes `bytes` to `dest` atomically (see the module docs). Errors name the path involved.
pub fn write(dest: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let target = output_target(dest).map_err(io_err(dest))?;
    let (tmp, mut f) = loop {
        let tmp = temp_name(&target).map_err(io_err(&target))?;
        // create_new: never opens an existing file or follows a link planted at the name
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&tmp)(e)),
        }
    };
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))
        .and_then(|_| {
            drop(f);
            fs::rename(&tmp, &target).map_err(io_err(&target))
        });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A new, empty, private directory `.<file>.tmp<pid>.<n>` beside `dest` (created with
/// `mkdir`, which fails rather than reuse anything already there).
pub fn temp_dir_beside(dest: &Path) -> io::Result<PathBuf> {
    loop {
        let d = temp_name(dest)?;
        match fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Produces `dest` atomically with a tool that writes a file itself (a linker, `ar`): `make`
/// gets a path in a private temporary directory beside the destination, and the file it
/// writes there is renamed over the destination (see the module docs for links). The
/// directory is removed in every case. `io_err` turns an I/O error on a path into `E`.
pub fn produce<E>(
    dest: &Path,
    io_err: impl Fn(PathBuf, io::Error) -> E,
    make: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let target = output_target(dest).map_err(|e| io_err(dest.to_path_buf(), e))?;
    let dir = temp_dir_beside(&target).map_err(|e| io_err(target.clone(), e))?;
    let file = target
        .file_name()
        .map(|f| dir.join(f))
        .unwrap_or_else(|| dir.join("out"));
    let r = make(&file)
        .and_then(|()| fs::rename(&file, &target).map_err(|e| io_err(target.clone(), e)));
    let _ = fs::remove_dir_all(&dir);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(d: &Path) -> Vec<String> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    }

    #[test]
    fn writes_through_links_and_refuses_non_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        // a plain file is replaced
        let f = p.join("out.bin");
        write(&f, b"one").unwrap();
        write(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        // a link (relative, through a second link) stays a link; its file gets the bytes
        std::os::unix::fs::symlink("out.bin", p.join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", p.join("l2")).unwrap();
        write(&p.join("l2"), b"three").unwrap();
        assert!(
            fs::symlink_metadata(p.join("l2"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            fs::symlink_metadata(p.join("l1"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&f).unwrap(), b"three");
        // a dangling link creates the file it names
        std::os::unix::fs::symlink("new.bin", p.join("dangling")).unwrap();
        write(&p.join("dangling"), b"four").unwrap();
        assert_eq!(fs::read(p.join("new.bin")).unwrap(), b"four");
        // a link to a character device (as /dev/stdout is) and a directory are refused
        std::os::unix::fs::symlink("/dev/null", p.join("null")).unwrap();
        let e = write(&p.join("null"), b"x").unwrap_err().to_string();
        assert!(
            e.contains("not a regular file") && e.contains("/dev/null"),
            "{e}"
        );
        assert!(
            fs::symlink_metadata(p.join("null"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        fs::create_dir(p.join("dir")).unwrap();
        let e = write(&p.join("dir"), b"x").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        // a loop of links
        std::os::unix::fs::symlink("b", p.join("a")).unwrap();
        std::os::unix::fs::symlink("a", p.join("b")).unwrap();
        assert!(write(&p.join("a"), b"x").is_err());
        // a tool writing through `produce`, succeeding and failing
        let io = |path: PathBuf, e: io::Error| format!("{}: {e}", path.display());
        produce(&p.join("l2"), io, |tmp| {
            fs::write(tmp, b"five").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"five");
        let r: Result<(), String> = produce(&p.join("never"), io, |tmp| {
            fs::write(tmp, b"half").unwrap();
            Err("tool failed".into())
        });
        assert!(r.is_err());
        assert!(!p.join("never").exists());
        assert!(leftovers(p).is_empty(), "{:?}", leftovers(p));
    }
}
