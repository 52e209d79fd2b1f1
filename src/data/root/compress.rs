//! ROOT's block compression framing.
//!
//! A compressed object (key payload or basket) is a sequence of blocks, each
//! with a 9-byte header: two algorithm letters (`ZL` zlib, `XZ` lzma/xz, `L4`
//! lz4, `ZS` zstd, `CS` the pre-2000 ROOT algorithm), one method byte, then the
//! compressed and the uncompressed size as 3-byte little-endian integers. `L4`
//! blocks carry an extra 8-byte big-endian XXH64 checksum of the compressed
//! bytes, counted in the compressed size. A payload whose stored size equals
//! its uncompressed size is not compressed at all. See uproot `compression.py`
//! and groot `riofs/key.go` / `internal/rcompress`.
//!
//! Decompression is bounded: every block is decoded into at most its declared
//! size (a decoder that wants to produce more is an error), the total is
//! capped by the caller's declared object length, and memory grows only as
//! data is actually produced. Decoders: `flate2` (zlib), `lzma-rs` (xz),
//! `lz4_flex` (lz4 block format; the XXH64 checksum is verified here), `ruzstd`
//! (zstd, window at most 100 MiB).

use std::io::{Read, Write};

use super::error::{Fail, PResult};

/// Size of a block header.
const HEADER: usize = 9;
/// Largest payload a block can describe (3-byte sizes).
pub(super) const MAX_BLOCK: usize = 0xff_ffff;

/// Decompresses `src` (the stored payload) into exactly `objlen` bytes.
///
/// If `src.len() == objlen` the payload is stored uncompressed and is returned as is.
pub(super) fn decompress(src: &[u8], objlen: usize) -> PResult<Vec<u8>> {
    if src.len() == objlen {
        return Ok(src.to_vec());
    }
    // Each block header is 9 bytes and holds at most MAX_BLOCK bytes, so the
    // declared length must be reachable from the number of bytes present.
    let max_blocks = src.len() / HEADER + 1;
    if objlen > max_blocks.saturating_mul(MAX_BLOCK) {
        return Err(Fail::Malformed(format!("uncompressed length {objlen} impossible for {} stored bytes", src.len())));
    }
    let mut out: Vec<u8> = Vec::with_capacity(objlen.min(src.len().saturating_mul(8)).min(1 << 26));
    let mut pos = 0usize;
    let mut block = 0usize;
    while pos < src.len() {
        let hdr = src.get(pos..pos + HEADER).ok_or_else(|| {
            Fail::Truncated(format!("compression block {block} header at byte {pos} of {}", src.len()))
        })?;
        let mut h = [0u8; HEADER];
        h.copy_from_slice(hdr);
        let hdr = h;
        let algo = [hdr[0], hdr[1]];
        let csize = hdr[3] as usize | (hdr[4] as usize) << 8 | (hdr[5] as usize) << 16;
        let usize_ = hdr[6] as usize | (hdr[7] as usize) << 8 | (hdr[8] as usize) << 16;
        pos += HEADER;
        let body = src.get(pos..pos.saturating_add(csize)).ok_or_else(|| {
            Fail::Truncated(format!(
                "compression block {block} claims {csize} bytes at byte {pos}, payload has {}",
                src.len()
            ))
        })?;
        pos += csize;
        if out.len().saturating_add(usize_) > objlen {
            return Err(Fail::Malformed(format!(
                "compression blocks decompress to more than the declared {objlen} bytes"
            )));
        }
        let start = out.len();
        match &algo {
            b"ZL" => {
                let mut d = flate2::read::ZlibDecoder::new(body);
                read_limited(&mut d, &mut out, usize_, "zlib")?;
            }
            b"XZ" => {
                let mut w = LimitedWriter { out: &mut out, limit: start + usize_ };
                let mut input = body;
                lzma_rs::xz_decompress(&mut input, &mut w)
                    .map_err(|e| Fail::Decompress("lzma".into(), e.to_string()))?;
            }
            b"L4" => {
                let (sum, data) = match (body.get(..8), body.get(8..)) {
                    (Some(s), Some(d)) => (s, d),
                    _ => {
                        return Err(Fail::Decompress("lz4".into(), "block shorter than its checksum".into()));
                    }
                };
                let mut sb = [0u8; 8];
                sb.copy_from_slice(sum);
                let expected = u64::from_be_bytes(sb);
                let got = xxh64(data, 0);
                if got != expected {
                    return Err(Fail::Decompress(
                        "lz4".into(),
                        format!("checksum mismatch (stored {expected:#018x}, computed {got:#018x})"),
                    ));
                }
                out.resize(start + usize_, 0);
                let dst = out.get_mut(start..).unwrap_or(&mut []);
                let n = lz4_flex::block::decompress_into(data, dst)
                    .map_err(|e| Fail::Decompress("lz4".into(), e.to_string()))?;
                out.truncate(start + n);
            }
            b"ZS" => {
                let mut input = body;
                let mut d = ruzstd::StreamingDecoder::new(&mut input)
                    .map_err(|e| Fail::Decompress("zstd".into(), e.to_string()))?;
                read_limited(&mut d, &mut out, usize_, "zstd")?;
            }
            b"CS" => {
                return Err(Fail::Unsupported(
                    "compression".into(),
                    "the old ROOT 'CS' algorithm is not supported".into(),
                ));
            }
            other => {
                return Err(Fail::Malformed(format!(
                    "unknown compression algorithm {:?} in block {block}",
                    String::from_utf8_lossy(other)
                )));
            }
        }
        let got = out.len() - start;
        if got != usize_ {
            return Err(Fail::Decompress(
                algo_name(&algo).into(),
                format!("block {block} decompressed to {got} bytes, header says {usize_}"),
            ));
        }
        block += 1;
    }
    if out.len() != objlen {
        return Err(Fail::Malformed(format!("decompressed {} bytes, key says {objlen}", out.len())));
    }
    Ok(out)
}

fn algo_name(a: &[u8; 2]) -> &'static str {
    match a {
        b"ZL" => "zlib",
        b"XZ" => "lzma",
        b"L4" => "lz4",
        b"ZS" => "zstd",
        _ => "unknown",
    }
}

/// Reads from `r` into `out`, at most `limit` bytes; more is an error.
fn read_limited(r: &mut impl Read, out: &mut Vec<u8>, limit: usize, algo: &str) -> PResult<()> {
    let start = out.len();
    let mut take = r.take(limit as u64 + 1);
    take.read_to_end(out).map_err(|e| Fail::Decompress(algo.into(), e.to_string()))?;
    if out.len() - start > limit {
        return Err(Fail::Decompress(algo.into(), format!("block produces more than the declared {limit} bytes")));
    }
    Ok(())
}

/// `Write` sink that refuses to grow past `limit` total bytes.
struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            return Err(std::io::Error::other("block produces more than its declared size"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compresses `data` with zlib into ROOT blocks. Returns `None` when the result
/// would not be smaller than the input (ROOT then stores the bytes as they are).
pub(super) fn compress_zlib(data: &[u8], level: u32) -> Option<Vec<u8>> {
    if data.is_empty() || level == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    for chunk in data.chunks(MAX_BLOCK) {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)));
        enc.write_all(chunk).ok()?;
        let c = enc.finish().ok()?;
        if c.len() > MAX_BLOCK || c.len() >= chunk.len() {
            return None;
        }
        out.extend_from_slice(b"ZL");
        out.push(8);
        let cl = c.len() as u32;
        let ul = chunk.len() as u32;
        out.extend_from_slice(&cl.to_le_bytes()[..3]);
        out.extend_from_slice(&ul.to_le_bytes()[..3]);
        out.extend_from_slice(&c);
    }
    if out.len() < data.len() {
        Some(out)
    } else {
        None
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn rd64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(a)
}
fn rd32(b: &[u8]) -> u64 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(a) as u64
}
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}
fn merge(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 hash (used for the checksum of ROOT's LZ4 blocks).
pub(super) fn xxh64(data: &[u8], seed: u64) -> u64 {
    let len = data.len() as u64;
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while rest.len() >= 32 {
            v1 = round(v1, rd64(rest));
            v2 = round(v2, rd64(rest.get(8..).unwrap_or(&[])));
            v3 = round(v3, rd64(rest.get(16..).unwrap_or(&[])));
            v4 = round(v4, rd64(rest.get(24..).unwrap_or(&[])));
            rest = rest.get(32..).unwrap_or(&[]);
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = merge(h, v1);
        h = merge(h, v2);
        h = merge(h, v3);
        merge(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h ^= round(0, rd64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = rest.get(8..).unwrap_or(&[]);
    }
    if rest.len() >= 4 {
        h ^= rd32(rest).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = rest.get(4..).unwrap_or(&[]);
    }
    for &b in rest {
        h ^= (b as u64).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_known_values() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"Nobody inspects the spammish repetition", 0), 0xFBCE_A83C_8A37_8BF1);
    }

    #[test]
    fn zlib_roundtrip() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 7).to_be_bytes()).collect();
        let c = compress_zlib(&data, 6).unwrap_or_default();
        assert!(!c.is_empty());
        assert_eq!(decompress(&c, data.len()), Ok(data));
    }
}
