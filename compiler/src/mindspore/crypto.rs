//! MindSpore's encrypted stream format (shared by `.ckpt` and `.mindir`), and user keys.
//!
//! The plaintext is cut into blocks; each block is
//! `u32 magic | [16-byte GCM tag] | i32 block_len | i32 iv_len(16) | iv | i32 cipher_len | cipher`
//! (little-endian; `block_len = 4 + iv_len + 4 + cipher_len`). AES-GCM uses no AAD; files from
//! MindSpore 1.7 use the first 12 bytes of the stored IV as the nonce, newer ones probably all
//! 16, so both are tried (16 first). AES-CBC uses PKCS#7 padding.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce, Tag};

pub const MAGIC_GCM: u32 = 0x7F3A_5ED8;
pub const MAGIC_CBC: u32 = 0x7F3A_5ED9;
pub const MAGIC_SM4_CBC: u32 = 0x7F3A_5EDA;

/// Environment variable holding the decryption key (see [`DecryptKey::parse`]).
pub const KEY_ENV: &str = "KILN_DECRYPT_KEY";

/// An AES key (16, 24 or 32 bytes). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptKey(Vec<u8>);

impl std::fmt::Debug for DecryptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecryptKey({} bytes)", self.0.len())
    }
}

impl DecryptKey {
    /// A key from its raw bytes (16, 24 or 32).
    pub fn from_bytes(k: &[u8]) -> Result<Self, String> {
        if matches!(k.len(), 16 | 24 | 32) {
            Ok(DecryptKey(k.to_vec()))
        } else {
            Err(format!(
                "decryption key must be 16, 24 or 32 bytes (AES-128/192/256), got {}",
                k.len()
            ))
        }
    }

    /// Parse a key as written in a key file or in `KILN_DECRYPT_KEY`:
    /// `hex:<hex digits>` or `raw:<bytes>` say which; otherwise text that is all hex digits and
    /// decodes to 16, 24 or 32 bytes is hex, and anything else is the raw key bytes. One trailing
    /// newline (`\n` or `\r\n`) is ignored. MindSpore's `enc_key=b"0123456789ABCDEF"` is thus
    /// given as the 16 characters `0123456789ABCDEF` (16 hex digits would be only 8 bytes).
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let t = text
            .strip_suffix(b"\r\n")
            .or_else(|| text.strip_suffix(b"\n"))
            .unwrap_or(text);
        if let Some(h) = t.strip_prefix(b"hex:") {
            return Self::from_bytes(&unhex(h).ok_or("key after 'hex:' is not valid hex")?);
        }
        if let Some(r) = t.strip_prefix(b"raw:") {
            return Self::from_bytes(r);
        }
        if let Some(k) = unhex(t).filter(|k| matches!(k.len(), 16 | 24 | 32)) {
            return Ok(DecryptKey(k));
        }
        Self::from_bytes(t)
    }

    /// The key from `--decrypt-key-file FILE`, else from `KILN_DECRYPT_KEY`, else none.
    pub fn from_file_or_env(file: Option<&std::path::Path>) -> Result<Option<Self>, String> {
        if let Some(f) = file {
            let b = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            return Self::parse(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", f.display()));
        }
        match std::env::var_os(KEY_ENV) {
            Some(v) if !v.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                Self::parse(v.as_bytes())
                    .map(Some)
                    .map_err(|e| format!("{KEY_ENV}: {e}"))
            }
            _ => Ok(None),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn unhex(h: &[u8]) -> Option<Vec<u8>> {
    if h.is_empty() || !h.len().is_multiple_of(2) {
        return None;
    }
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    h.chunks_exact(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

/// The encryption mode a file starts with, if it is a MindSpore cipher stream.
pub fn cipher_mode(bytes: &[u8]) -> Option<&'static str> {
    let m = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    match m {
        MAGIC_GCM => Some("AES-GCM"),
        MAGIC_CBC => Some("AES-CBC"),
        MAGIC_SM4_CBC => Some("SM4-CBC"),
        _ => None,
    }
}

struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated encrypted block: {what} ({n} bytes) at offset {} runs past the end ({} bytes)",
                self.pos,
                self.b.len()
            ));
        };
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let s = self.take(4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Decrypt a whole MindSpore cipher stream. Errors say whether the key is wrong or the file is
/// damaged (GCM authenticates; for CBC a wrong key shows up as bad padding).
pub fn decrypt(bytes: &[u8], key: &DecryptKey) -> Result<Vec<u8>, String> {
    let mut r = Rd { b: bytes, pos: 0 };
    let mut out = Vec::new();
    let mut block = 0usize;
    while r.pos < bytes.len() {
        let start = r.pos;
        let magic = r.i32("magic")? as u32;
        let gcm = match magic {
            MAGIC_GCM => true,
            MAGIC_CBC => false,
            MAGIC_SM4_CBC => return Err("SM4-CBC encryption is not supported".into()),
            m => {
                return Err(format!(
                    "encrypted block {block} at offset {start}: bad magic {m:#010x}"
                ));
            }
        };
        let tag = if gcm {
            Some(r.take(16, "GCM tag")?)
        } else {
            None
        };
        let block_len = r.i32("block length")?;
        let iv_len = r.i32("IV length")?;
        if iv_len != 16 {
            return Err(format!(
                "encrypted block {block} at offset {start}: IV length {iv_len}, expected 16 \
                 (the oldest GCM format without a tag is not supported)"
            ));
        }
        let iv = r.take(16, "IV")?;
        let cipher_len = r.i32("cipher length")?;
        let clen = usize::try_from(cipher_len)
            .map_err(|_| format!("encrypted block {block}: negative cipher length"))?;
        if i64::from(block_len) != 4 + 16 + 4 + i64::from(cipher_len) {
            return Err(format!(
                "encrypted block {block} at offset {start}: block length {block_len} does not match cipher length {cipher_len}"
            ));
        }
        let cipher = r.take(clen, "ciphertext")?;
        let plain = match tag {
            Some(tag) => gcm_decrypt(key.bytes(), iv, tag, cipher),
            None => cbc_decrypt(key.bytes(), iv, cipher),
        }
        .map_err(|e| format!("encrypted block {block} at offset {start}: {e}"))?;
        out.extend_from_slice(&plain);
        block += 1;
    }
    Ok(out)
}

fn gcm_decrypt(key: &[u8], iv: &[u8], tag: &[u8], cipher: &[u8]) -> Result<Vec<u8>, String> {
    macro_rules! try_gcm {
        ($aes:ty, $n:ty, $nonce:expr) => {{
            let mut buf = cipher.to_vec();
            AesGcm::<$aes, $n>::new_from_slice(key).ok().and_then(|c| {
                c.decrypt_in_place_detached(
                    Nonce::<$n>::from_slice($nonce),
                    b"",
                    &mut buf,
                    Tag::from_slice(tag),
                )
                .ok()
                .map(|()| buf)
            })
        }};
    }
    macro_rules! both {
        ($aes:ty) => {
            try_gcm!($aes, U16, iv).or_else(|| try_gcm!($aes, U12, &iv[..12]))
        };
    }
    let r: Option<Vec<u8>> = match key.len() {
        16 => both!(aes::Aes128),
        24 => both!(aes::Aes192),
        32 => both!(aes::Aes256),
        n => return Err(format!("bad AES key length {n}")),
    };
    r.ok_or_else(|| {
        "AES-GCM authentication failed: wrong decryption key, or the file is corrupted".into()
    })
}

fn cbc_decrypt(key: &[u8], iv: &[u8], cipher: &[u8]) -> Result<Vec<u8>, String> {
    macro_rules! dec {
        ($aes:ty) => {
            cbc::Decryptor::<$aes>::new_from_slices(key, iv)
                .map_err(|_| "bad key or IV length".to_string())?
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .map_err(|_| {
                    "AES-CBC decryption failed (bad padding): wrong decryption key, or the file is corrupted"
                        .to_string()
                })
        };
    }
    match key.len() {
        16 => dec!(aes::Aes128),
        24 => dec!(aes::Aes192),
        32 => dec!(aes::Aes256),
        n => Err(format!("bad AES key length {n}")),
    }
}

/// Encrypt `plain` in MindSpore's stream format (one block per `block_size` bytes). kiln never
/// writes encrypted models itself; this exists so tests can build encrypted files with a known
/// key. `iv` is used for every block (tests only).
pub fn encrypt(
    plain: &[u8],
    key: &DecryptKey,
    gcm: bool,
    iv: [u8; 16],
    block_size: usize,
) -> Result<Vec<u8>, String> {
    use aes::cipher::BlockEncryptMut;
    let mut out = Vec::new();
    for chunk in plain.chunks(block_size.max(1)) {
        let (tag, cipher): (Option<Vec<u8>>, Vec<u8>) = if gcm {
            macro_rules! enc {
                ($aes:ty) => {{
                    let c = AesGcm::<$aes, U16>::new_from_slice(key.bytes())
                        .map_err(|_| "bad key length")?;
                    let mut buf = chunk.to_vec();
                    let t = c
                        .encrypt_in_place_detached(Nonce::<U16>::from_slice(&iv), b"", &mut buf)
                        .map_err(|_| "encryption failed")?;
                    (Some(t.to_vec()), buf)
                }};
            }
            match key.bytes().len() {
                16 => enc!(aes::Aes128),
                24 => enc!(aes::Aes192),
                _ => enc!(aes::Aes256),
            }
        } else {
            macro_rules! enc {
                ($aes:ty) => {
                    cbc::Encryptor::<$aes>::new_from_slices(key.bytes(), &iv)
                        .map_err(|_| "bad key length")?
                        .encrypt_padded_vec_mut::<Pkcs7>(chunk)
                };
            }
            let c = match key.bytes().len() {
                16 => enc!(aes::Aes128),
                24 => enc!(aes::Aes192),
                _ => enc!(aes::Aes256),
            };
            (None, c)
        };
        out.extend_from_slice(&(if gcm { MAGIC_GCM } else { MAGIC_CBC }).to_le_bytes());
        if let Some(t) = tag {
            out.extend_from_slice(&t);
        }
        let clen = i32::try_from(cipher.len()).map_err(|_| "block too large")?;
        out.extend_from_slice(&(4 + 16 + 4 + clen).to_le_bytes());
        out.extend_from_slice(&16i32.to_le_bytes());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&clen.to_le_bytes());
        out.extend_from_slice(&cipher);
    }
    Ok(out)
}
