//! Bounds-checked big-endian reader over a byte slice.
//!
//! ROOT serializes everything big-endian (`TBufferFile`, see uproot
//! `source/cursor.py` and groot `rbytes/rbuffer.go`). Every read here checks
//! the remaining length and returns [`Fail::Truncated`] instead of panicking.
//! The cursor also knows its *displacement origin*: object references inside a
//! key's payload are numbered by their offset from the start of the key record
//! (i.e. payload offset + `fKeylen`), see uproot `deserialization.py`
//! `read_object_any`.

use super::error::{Fail, PResult};

/// A checked reader over `data` with a current position.
#[derive(Clone, Debug)]
pub(super) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    /// Added to `pos` to obtain the reference-map displacement.
    origin: u64,
}

macro_rules! be_read {
    ($name:ident, $t:ty, $n:expr) => {
        #[doc = concat!("Reads a big-endian `", stringify!($t), "`.")]
        pub(super) fn $name(&mut self) -> PResult<$t> {
            let b = self.array::<$n>()?;
            Ok(<$t>::from_be_bytes(b))
        }
    };
}

impl<'a> Cursor<'a> {
    /// New cursor at position 0 with displacement origin `origin`.
    pub(super) fn new(data: &'a [u8], origin: u64) -> Self {
        Cursor { data, pos: 0, origin }
    }

    /// Current position within the buffer.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// Displacement used for the object reference map.
    pub(super) fn displacement(&self) -> u64 {
        self.origin.saturating_add(self.pos as u64)
    }

    /// Total buffer length.
    pub(super) fn len(&self) -> usize {
        self.data.len()
    }

    /// Bytes left after the current position.
    pub(super) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Moves to an absolute position (may equal the length).
    pub(super) fn seek(&mut self, pos: usize) -> PResult<()> {
        if pos > self.data.len() {
            return Err(Fail::Truncated(format!("seek to byte {pos} of a {}-byte buffer", self.data.len())));
        }
        self.pos = pos;
        Ok(())
    }

    /// Skips `n` bytes.
    pub(super) fn skip(&mut self, n: usize) -> PResult<()> {
        let end = self.pos.checked_add(n).ok_or_else(|| Fail::Truncated(format!("skip of {n} bytes overflows")))?;
        self.seek(end)
    }

    /// Returns the next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> PResult<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len());
        match end.and_then(|e| data.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => {
                Err(Fail::Truncated(format!("need {n} bytes at byte {} of a {}-byte buffer", self.pos, data.len())))
            }
        }
    }

    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let s = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    be_read!(u8, u8, 1);
    be_read!(u16, u16, 2);
    be_read!(i16, i16, 2);
    be_read!(u32, u32, 4);
    be_read!(i32, i32, 4);
    be_read!(i64, i64, 8);

    /// Reads a ROOT `TString`: one length byte, or 255 followed by a 4-byte length.
    pub(super) fn tstring(&mut self) -> PResult<String> {
        let n = self.u8()?;
        let len = if n == 255 { self.u32()? as usize } else { n as usize };
        let b = self.bytes(len)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// Reads a NUL-terminated C string (class names after `kNewClassTag`), at most `max` bytes.
    pub(super) fn cstring(&mut self, max: usize) -> PResult<String> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let lim = rest.len().min(max);
        let window = rest.get(..lim).unwrap_or(&[]);
        match window.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = String::from_utf8_lossy(window.get(..i).unwrap_or(&[])).into_owned();
                self.pos += i + 1;
                Ok(s)
            }
            None => Err(Fail::Truncated(format!("unterminated class name at byte {}", self.pos))),
        }
    }

    /// Reads `n` big-endian values with `f`, checking first that `n * size` bytes remain.
    pub(super) fn vec_of<T>(
        &mut self,
        n: usize,
        size: usize,
        mut f: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<Vec<T>> {
        let need = n.saturating_mul(size);
        if need > self.remaining() {
            return Err(Fail::Truncated(format!(
                "array of {n} x {size} bytes at byte {} of a {}-byte buffer",
                self.pos,
                self.data.len()
            )));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }
}

/// Big-endian writer used by the file writer.
#[derive(Default, Debug, Clone)]
pub(super) struct WBuf {
    /// The bytes written so far.
    pub(super) buf: Vec<u8>,
}

impl WBuf {
    pub(super) fn new() -> Self {
        WBuf { buf: Vec::new() }
    }
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(super) fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Writes a `TString`.
    pub(super) fn tstring(&mut self, s: &str) {
        let b = s.as_bytes();
        if b.len() < 255 {
            self.buf.push(b.len() as u8);
        } else {
            self.buf.push(255);
            self.u32(b.len() as u32);
        }
        self.buf.extend_from_slice(b);
    }
    /// Reserves a 4-byte byte-count word plus a 2-byte version; returns its position.
    pub(super) fn begin_obj(&mut self, version: i16) -> usize {
        let at = self.buf.len();
        self.u32(0);
        self.i16(version);
        at
    }
    /// Patches the byte count reserved by `begin_obj` / `begin_count`.
    pub(super) fn end_obj(&mut self, at: usize) {
        let n = (self.buf.len() - at - 4) as u32 | 0x4000_0000;
        if let Some(s) = self.buf.get_mut(at..at + 4) {
            s.copy_from_slice(&n.to_be_bytes());
        }
    }
    /// Reserves a bare 4-byte byte-count word (for `WriteObjectAny`).
    pub(super) fn begin_count(&mut self) -> usize {
        let at = self.buf.len();
        self.u32(0);
        at
    }
}
