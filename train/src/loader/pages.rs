//! Fast path for the log-mel column: decode the selected rows of a row group straight from the
//! column chunk's pages into a compact `f32` buffer.
//!
//! Why: the Arrow reader decodes a repetition and a definition level for each of the 16,640
//! values of a row and builds the list from them; measured on one 512-row row group of 256x65
//! log-mel (zstd-1 + BYTE_STREAM_SPLIT, one core): page decompression 17 ms, Arrow reader
//! 93-109 ms. Every log-mel row has exactly `logmel_len` non-null values (the schema is a
//! non-null `FixedSizeList` of non-null items, validated at open), so the levels carry no
//! information: this decoder skips them and reads the values (PLAIN or BYTE_STREAM_SPLIT),
//! decoding only the value ranges of the selected rows, and skips pages holding no selected
//! row without decompressing them (when the offset index is present). Any other layout
//! (dictionary pages, other encodings, bit-packed levels) returns `Ok(false)` and the caller
//! uses the Arrow reader.
//!
//! Values are float32 (Parquet `FLOAT`) or float16 (`FIXED_LEN_BYTE_ARRAY(2)`, data-specs
//! [`LogmelType::Float16`](data_specs::LogmelType)); float16 values are widened to f32 (exactly:
//! every binary16 value is an f32) as they are copied, with F16C instructions when the CPU has
//! them (the `half` crate checks at run time).

use std::sync::Arc;

use std::cell::RefCell;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::serialized_reader::SerializedPageReader;

use super::shards::Shard;

/// Decodes the log-mel of `local_rows` (ascending) of row group `rg` into `dests[k]`
/// (`logmel_len` values each). Result: `Ok(true)` decoded, `Ok(false)` unsupported layout,
/// `Err(msg)`.
pub(crate) fn decode_logmel(
    shard: &Shard,
    rg: usize,
    logmel_len: usize,
    local_rows: &[u32],
    dests: &mut [&mut [f32]],
) -> Result<bool, String> {
    let Some(leaf) = shard.logmel_leaf else {
        return Ok(false);
    };
    let md = shard.reader_meta.metadata();
    let rg_md = md.row_group(rg);
    let chunk = rg_md.column(leaf);
    let descr = chunk.column_descr();
    let (max_rep, max_def) = (descr.max_rep_level(), descr.max_def_level());
    // Bytes per value: float32, or float16 stored as 2-byte fixed-length byte arrays.
    let width = match descr.physical_type() {
        PhysicalType::FLOAT => 4usize,
        PhysicalType::FIXED_LEN_BYTE_ARRAY if descr.type_length() == 2 => 2,
        _ => return Ok(false),
    };
    let locations = md
        .page_index_for_row_group(rg)
        .page_locations(leaf)
        .cloned();
    let can_skip = locations.is_some();
    let mut pages = SerializedPageReader::new(
        Arc::new(shard.bytes.clone()),
        chunk,
        rg_md.num_rows() as usize,
        locations,
    )
    .map_err(|e| e.to_string())?;
    let len = logmel_len as u64;
    let total = rg_md.num_rows() as u64 * len;
    let mut v0: u64 = 0; // index of the page's first value in the row group
    loop {
        if can_skip
            && let Some(meta) = pages.peek_next_page().map_err(|e| e.to_string())?
            && !meta.is_dict
            && let Some(n) = meta.num_levels
        {
            let (first_row, last_row) = (v0 / len, (v0 + n as u64).saturating_sub(1) / len);
            let i = local_rows.partition_point(|&r| (r as u64) < first_row);
            if n > 0 && local_rows.get(i).is_none_or(|&r| r as u64 > last_row) {
                pages.skip_next_page().map_err(|e| e.to_string())?;
                v0 += n as u64;
                continue;
            }
        }
        let Some(page) = pages.get_next_page().map_err(|e| e.to_string())? else {
            break;
        };
        let (values, n, encoding) = match &page {
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                let mut at = 0usize;
                for (max, enc) in [(max_rep, rep_level_encoding), (max_def, def_level_encoding)] {
                    if max == 0 {
                        continue;
                    }
                    if *enc != Encoding::RLE {
                        return Ok(false);
                    }
                    let Some(b) = buf.get(at..at + 4) else {
                        return Err("truncated level header".into());
                    };
                    at += 4 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                }
                let Some(values) = buf.get(at..) else {
                    return Err("levels longer than the page".into());
                };
                (values, *num_values as u64, *encoding)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                num_nulls,
                encoding,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                if *num_nulls != 0 {
                    return Err("null log-mel values".into());
                }
                let at = (*def_levels_byte_len + *rep_levels_byte_len) as usize;
                let Some(values) = buf.get(at..) else {
                    return Err("levels longer than the page".into());
                };
                (values, *num_values as u64, *encoding)
            }
            Page::DictionaryPage { .. } => return Ok(false),
        };
        if values.len() as u64 != n * width as u64 {
            return Err(format!(
                "a log-mel page holds {} value bytes for {n} values (nulls in a non-null column?)",
                values.len()
            ));
        }
        let bss = match encoding {
            Encoding::PLAIN => false,
            Encoding::BYTE_STREAM_SPLIT => true,
            _ => return Ok(false),
        };
        // Selected rows overlapping the page's values [v0, v0 + n).
        let first_row = v0 / len;
        let start = local_rows.partition_point(|&r| (r as u64) < first_row);
        for (k, &row) in local_rows.iter().enumerate().skip(start) {
            let (r0, r1) = (row as u64 * len, (row as u64 + 1) * len);
            if r0 >= v0 + n {
                break;
            }
            let (a, b) = (r0.max(v0), r1.min(v0 + n));
            let dst = &mut dests[k][(a - r0) as usize..(b - r0) as usize];
            let (a, b) = ((a - v0) as usize, (b - v0) as usize);
            let n = n as usize;
            match (bss, width) {
                // BYTE_STREAM_SPLIT: byte j of value i is at values[j * n + i].
                (true, 4) => {
                    let (s0, s1, s2, s3) = (
                        &values[a..b],
                        &values[n + a..n + b],
                        &values[2 * n + a..2 * n + b],
                        &values[3 * n + a..3 * n + b],
                    );
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = f32::from_le_bytes([s0[i], s1[i], s2[i], s3[i]]);
                    }
                }
                (true, _) => {
                    let (s0, s1) = (&values[a..b], &values[n + a..n + b]);
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = half::f16::from_le_bytes([s0[i], s1[i]]).to_f32();
                    }
                }
                (false, 4) => copy_plain(shard, &values[a * 4..b * 4], dst)?,
                (false, _) => copy_plain_f16(shard, &values[a * 2..b * 2], dst)?,
            }
        }
        v0 += n;
    }
    if v0 != total {
        return Err(format!(
            "the log-mel column holds {v0} values, expected {total} ({} rows x {len})",
            rg_md.num_rows()
        ));
    }
    Ok(true)
}

thread_local! {
    /// Raw float16 values (their bits) of [`copy_plain_f16`], reused per thread.
    static F16_SCRATCH: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Copies PLAIN (little-endian) float16 values into `dst`, widened to f32: read like
/// [`copy_plain`] (with `pread` when the bytes lie in the shard's map) into a per-thread
/// buffer, then converted.
fn copy_plain_f16(shard: &Shard, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    debug_assert_eq!(src.len(), dst.len() * 2);
    F16_SCRATCH.with(|cell| {
        let mut raw = cell.borrow_mut();
        raw.clear();
        raw.resize(dst.len(), 0);
        read_bytes(shard, src, bytemuck::cast_slice_mut(&mut raw[..]))?;
        #[cfg(not(target_endian = "little"))]
        for v in raw.iter_mut() {
            *v = u16::from_le(*v);
        }
        raw.reinterpret_cast::<half::f16>()
            .convert_to_f32_slice(dst);
        Ok(())
    })
}

/// Copies `src` (bytes of a page) into `dst`: with `pread` from the file when they lie in the
/// shard's map (see [`copy_plain`]), by `memcpy` otherwise.
fn read_bytes(shard: &Shard, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let base = shard.map.as_ptr() as usize;
        let at = (src.as_ptr() as usize).wrapping_sub(base);
        if at
            .checked_add(src.len())
            .is_some_and(|end| end <= shard.map.len())
        {
            return shard
                .file
                .read_exact_at(dst, at as u64)
                .map_err(|e| format!("reading log-mel values at byte {at}: {e}"));
        }
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// Copies PLAIN (little-endian) f32 values into `dst`. When the bytes lie in the shard's map
/// (an uncompressed page is a slice of it) they are read with `pread` from the file instead:
/// the kernel copies them from the page cache, and the map's pages are never faulted in,
/// mapped or left resident (measured: touching the map cost a quarter of the loader's time in
/// page faults and unmapping).
fn copy_plain(shard: &Shard, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    debug_assert_eq!(src.len(), dst.len() * 4);
    read_bytes(shard, src, bytemuck::cast_slice_mut(dst))?;
    #[cfg(not(target_endian = "little"))]
    for d in dst.iter_mut() {
        *d = f32::from_bits(u32::from_le(d.to_bits()));
    }
    Ok(())
}
