//! A small little-endian byte encoding for what rank 0 sends the other ranks
//! before training (a shard's locator, the label groups): fixed-width
//! integers and floats, length-prefixed strings and arrays. Decoding checks
//! every length, so a truncated or corrupt message is an error, never a panic.

use crate::error::{Error, Result};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn strs(&mut self, v: &[String]) {
        self.len(v.len());
        v.iter().for_each(|s| self.str(s));
    }
    pub fn path(&mut self, p: &Path) {
        self.bytes(p.as_os_str().as_bytes());
    }
    pub fn f32s<'a>(&mut self, v: impl ExactSizeIterator<Item = &'a f32>) {
        self.len(v.len());
        self.0.reserve(4 * v.len());
        v.for_each(|x| self.0.extend_from_slice(&x.to_le_bytes()));
    }
}

/// Reads values back in the order they were written.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `buf`; `what` names the message in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    fn bad(&self, why: &str) -> Error {
        Error::Comm(format!("{}: {why} (a corrupt message between ranks)", self.what))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(self.bad("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `item` bytes each: at most what is left.
    pub fn len(&mut self, item: usize) -> Result<usize> {
        let n = usize::try_from(self.u64()?).map_err(|_| self.bad("length out of range"))?;
        if n.saturating_mul(item.max(1)) > self.buf.len() {
            return Err(self.bad("length past the end"));
        }
        Ok(n)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }
    pub fn strs(&mut self) -> Result<Vec<String>> {
        let n = self.len(8)?;
        (0..n).map(|_| self.str()).collect()
    }
    pub fn path(&mut self) -> Result<PathBuf> {
        Ok(PathBuf::from(std::ffi::OsString::from_vec(self.bytes()?.to_vec())))
    }
    pub fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.len(4)?;
        let b = self.take(4 * n)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    /// Checks the whole message was read.
    pub fn end(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u8(3);
        w.u32(7);
        w.u64(u64::MAX);
        w.strs(&["a".into(), "été".into()]);
        w.path(Path::new("/x/y.root"));
        w.f32s([1.5f32, -0.0, f32::MIN_POSITIVE].iter());
        let b = w.0;
        let mut r = Reader::new(&b, "test");
        assert_eq!((r.u8().unwrap(), r.u32().unwrap(), r.u64().unwrap()), (3, 7, u64::MAX));
        assert_eq!(r.strs().unwrap(), vec!["a".to_string(), "été".to_string()]);
        assert_eq!(r.path().unwrap(), PathBuf::from("/x/y.root"));
        let f = r.f32s().unwrap();
        assert_eq!(
            f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            [1.5f32, -0.0, f32::MIN_POSITIVE].map(f32::to_bits)
        );
        r.end().unwrap();
        for cut in 0..b.len() {
            let mut r = Reader::new(&b[..cut], "test");
            let all = (|| -> Result<()> {
                r.u8()?;
                r.u32()?;
                r.u64()?;
                r.strs()?;
                r.path()?;
                r.f32s()?;
                Ok(())
            })();
            assert!(all.is_err(), "{cut} bytes decoded");
        }
    }
}
