//! The `.asc8` file: a versioned, checksummed, little-endian container for an int8 model.
//!
//! ```text
//! offset  size  content
//! 0       8     magic  b"ASC8INT8"
//! 8       4     format version, u32 LE (FORMAT_VERSION)
//! 12      4     flags, u32 LE (0; reserved)
//! 16      8     header length H, u64 LE
//! 24      H     header, UTF-8 JSON (see `Header`)
//! ..            zero padding to a multiple of 64 bytes: the data section starts at D
//! D       N     tensor blobs, each at D + offset (offset a multiple of 64), raw LE
//!               (i8, i32 or f32), zero padding between blobs; N = header.data_len
//! D+N     4     CRC-32 (IEEE 802.3, as zlib) of bytes 0..D+N, u32 LE
//! D+N+4   4     end marker b"8TNI"
//! ```
//! See `FORMAT.md` beside this file for the header fields.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Int8Error;
use super::graph::{Graph, ModelMeta, Tensor, TensorData, TensorMap};

/// The first eight bytes of every `.asc8` file.
pub const MAGIC: [u8; 8] = *b"ASC8INT8";
/// The last four bytes of every `.asc8` file.
pub const END_MARKER: [u8; 4] = *b"8TNI";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of the data section and of every tensor blob.
pub const ALIGN: usize = 64;
/// The recommended file extension.
pub const EXTENSION: &str = "asc8";

/// One entry of the header's tensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Tensor name (ops refer to it).
    pub name: String,
    /// `i8`, `i32` or `f32`.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte offset from the start of the data section (a multiple of 64).
    pub offset: u64,
    /// Byte length (`numel * dtype size`).
    pub nbytes: u64,
}

/// The JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Model name, config, front end and labels.
    pub meta: ModelMeta,
    /// The op graph (buffers with their qparams, ops with tensor references).
    pub graph: Graph,
    /// The tensor table.
    pub tensors: Vec<TensorEntry>,
    /// Length of the data section in bytes.
    pub data_len: u64,
}

/// CRC-32 (IEEE 802.3 polynomial 0xEDB88320, reflected, init and final xor 0xFFFFFFFF).
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn align_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn dtype_size(dtype: &str) -> Option<usize> {
    match dtype {
        "i8" => Some(1),
        "i32" | "f32" => Some(4),
        _ => None,
    }
}

/// Serializes a model to bytes.
pub fn to_bytes(meta: &ModelMeta, graph: &Graph, tensors: &TensorMap) -> Vec<u8> {
    let mut entries = Vec::with_capacity(tensors.len());
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let offset = data.len();
        match &t.data {
            TensorData::I8(v) => data.extend(v.iter().map(|&x| x as u8)),
            TensorData::I32(v) => v
                .iter()
                .for_each(|x| data.extend_from_slice(&x.to_le_bytes())),
            TensorData::F32(v) => v
                .iter()
                .for_each(|x| data.extend_from_slice(&x.to_le_bytes())),
        }
        let nbytes = data.len() - offset;
        data.resize(align_up(data.len()), 0);
        entries.push(TensorEntry {
            name: name.clone(),
            dtype: t.data.dtype().to_string(),
            shape: t.shape.clone(),
            offset: offset as u64,
            nbytes: nbytes as u64,
        });
    }
    let header = Header {
        meta: meta.clone(),
        graph: graph.clone(),
        tensors: entries,
        data_len: data.len() as u64,
    };
    let json = serde_json::to_vec(&header).expect("the header serializes to JSON");
    let mut out = Vec::with_capacity(24 + json.len() + ALIGN + data.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(align_up(out.len()), 0);
    out.extend_from_slice(&data);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&END_MARKER);
    out
}

/// Writes a model atomically: to `<path>.tmp`, flushed to disk, then renamed over `path`.
pub fn write(
    path: &Path,
    meta: &ModelMeta,
    graph: &Graph,
    tensors: &TensorMap,
) -> Result<(), Int8Error> {
    let bytes = to_bytes(meta, graph, tensors);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let io = |source| Int8Error::Io {
        path: path.to_path_buf(),
        source,
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Parses the bytes of a model file; `path` only names the file in errors.
/// Checks magic, version, lengths, the checksum, the header and every tensor's bounds; the
/// graph itself is validated by the caller.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<(ModelMeta, Graph, TensorMap), Int8Error> {
    let p = || path.to_path_buf();
    let truncated = |what: String| Int8Error::Truncated { path: p(), what };
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(Int8Error::BadMagic {
            path: p(),
            found: bytes[..bytes.len().min(8)].to_vec(),
            expected: MAGIC.to_vec(),
        });
    }
    if bytes.len() < 24 {
        return Err(truncated(format!(
            "{} bytes, shorter than the 24-byte preamble",
            bytes.len()
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(Int8Error::Version {
            path: p(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let hlen = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let hend = 24u64
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            truncated(format!(
                "header of {hlen} bytes does not fit in {} bytes",
                bytes.len()
            ))
        })? as usize;
    let header: Header = serde_json::from_slice(&bytes[24..hend])
        .map_err(|source| Int8Error::Header { path: p(), source })?;
    let dstart = align_up(hend);
    let total = (dstart as u64)
        .checked_add(header.data_len)
        .and_then(|x| x.checked_add(8));
    if total.is_none_or(|t| t > bytes.len() as u64) {
        return Err(truncated(format!(
            "{} bytes, the header announces {} data bytes after offset {dstart} plus an 8-byte trailer",
            bytes.len(),
            header.data_len
        )));
    }
    let dend = dstart + header.data_len as usize;
    if bytes.len() != dend + 8 {
        return Err(Int8Error::Invalid {
            context: path.display().to_string(),
            msg: format!(
                "{} trailing bytes after the trailer",
                bytes.len() - dend - 8
            ),
        });
    }
    let stored = u32::from_le_bytes(bytes[dend..dend + 4].try_into().expect("4 bytes"));
    let computed = crc32(&bytes[..dend]);
    if stored != computed || bytes[dend + 4..] != END_MARKER {
        return Err(Int8Error::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    let data = &bytes[dstart..dend];
    let invalid = |msg: String| Int8Error::Invalid {
        context: path.display().to_string(),
        msg,
    };
    let mut tensors = TensorMap::new();
    for e in &header.tensors {
        let size = dtype_size(&e.dtype)
            .ok_or_else(|| invalid(format!("tensor '{}': unknown dtype '{}'", e.name, e.dtype)))?;
        let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(size)) != Some(e.nbytes as usize) {
            return Err(invalid(format!(
                "tensor '{}': {} bytes for {} {:?}",
                e.name, e.nbytes, e.dtype, e.shape
            )));
        }
        let end = e
            .offset
            .checked_add(e.nbytes)
            .filter(|&x| x <= data.len() as u64);
        let Some(end) = end else {
            return Err(invalid(format!(
                "tensor '{}': bytes {}..+{} lie outside the {}-byte data section",
                e.name,
                e.offset,
                e.nbytes,
                data.len()
            )));
        };
        let raw = &data[e.offset as usize..end as usize];
        let td = match e.dtype.as_str() {
            "i8" => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
            "i32" => TensorData::I32(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            _ => TensorData::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
        };
        if tensors
            .insert(
                e.name.clone(),
                Tensor {
                    shape: e.shape.clone(),
                    data: td,
                },
            )
            .is_some()
        {
            return Err(invalid(format!("tensor '{}' appears twice", e.name)));
        }
    }
    Ok((header.meta, header.graph, tensors))
}

/// Reads and parses a model file.
pub fn read(path: &Path) -> Result<(ModelMeta, Graph, TensorMap), Int8Error> {
    let bytes = std::fs::read(path).map_err(|source| Int8Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(path, &bytes)
}
