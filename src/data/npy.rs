//! NumPy input and output: `.npz` archives holding `samples` `[N, D]`,
//! `labels` `[N, L]` (float32 or float64; a 1-D array is one column) and,
//! optionally, per-event `weights` `[N]` (or `[N, 1]`).

use super::EventSet;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, NpzWriter};
use std::path::Path;

fn read_array(npz: &mut NpzReader<std::fs::File>, path: &Path, name: &str) -> Result<Array2<f32>> {
    let names =
        npz.names().map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
    let entry =
        names.iter().find(|n| n.as_str() == name || n.as_str() == format!("{name}.npy")).cloned().ok_or_else(|| {
            Error::Data(format!("{}: no array '{name}' (archive holds: {})", path.display(), names.join(", ")))
        })?;
    let bad = |e: ndarray_npy::ReadNpzError| {
        Error::Data(format!("{}: array '{name}': {e} (need a 1-D or 2-D float32/float64 array)", path.display()))
    };
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>(&entry) {
        return Ok(a);
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix2>(&entry) {
        return Ok(a.mapv(|v| v as f32));
    }
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix1>(&entry) {
        return Ok(column(a));
    }
    match npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix1>(&entry) {
        Ok(a) => Ok(column(a.mapv(|v| v as f32))),
        Err(e) => Err(bad(e)),
    }
}

fn column(a: Array1<f32>) -> Array2<f32> {
    let n = a.len();
    a.into_shape_with_order((n, 1)).unwrap_or_else(|_| Array2::zeros((0, 1)))
}

/// Reads an `.npz` with `samples` and `labels` arrays.
pub fn read_npz(path: &Path, feature_names: Vec<String>, label_names: Vec<String>) -> Result<EventSet> {
    read_npz_with(path, feature_names, label_names, true)
}

/// Reads an `.npz` with a `samples` array and, where the archive has one, a
/// `labels` array (observed data have none: their events get zero label
/// columns). `label_names` apply only when labels are present.
pub fn read_npz_maybe_labeled(path: &Path, feature_names: Vec<String>, label_names: Vec<String>) -> Result<EventSet> {
    read_npz_with(path, feature_names, label_names, false)
}

fn read_npz_with(
    path: &Path,
    feature_names: Vec<String>,
    label_names: Vec<String>,
    labels_required: bool,
) -> Result<EventSet> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
    let samples = read_array(&mut npz, path, "samples")?;
    let has_labels = labels_required
        || npz
            .names()
            .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?
            .iter()
            .any(|n| n == "labels" || n == "labels.npy");
    let (labels, label_names) = if has_labels {
        (read_array(&mut npz, path, "labels")?, label_names)
    } else {
        (Array2::zeros((samples.nrows(), 0)), Vec::new())
    };
    let has_weights = npz
        .names()
        .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?
        .iter()
        .any(|n| n == "weights" || n == "weights.npy");
    let source = path.display().to_string();
    let events = EventSet::new(samples, labels, feature_names, label_names, &source)?;
    if !has_weights {
        return Ok(events);
    }
    let w = read_array(&mut npz, path, "weights")?;
    if w.ncols() != 1 {
        return Err(Error::Data(format!(
            "{source}: array 'weights' has shape [{}, {}]: need one weight per event ([N] or [N, 1])",
            w.nrows(),
            w.ncols()
        )));
    }
    let events = events.with_weights(w.column(0).to_owned(), &format!("{source}: array 'weights'"))?;
    events.check_label_weights(&source)?;
    Ok(events)
}

/// Writes `samples` and `labels` as float32 arrays to an `.npz`, through a
/// temporary file renamed into place when complete.
pub fn write_npz(path: &Path, samples: &Array2<f32>, labels: &Array2<f32>) -> Result<()> {
    write_npz_weighted(path, samples, labels, None)
}

/// [`write_npz`] plus, when given, the per-event `weights` as a 1-D float32 array.
pub fn write_npz_weighted(
    path: &Path,
    samples: &Array2<f32>,
    labels: &Array2<f32>,
    weights: Option<&Array1<f32>>,
) -> Result<()> {
    let tmp = crate::atomic::sibling(path, "tmp");
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut npz = NpzWriter::new(file);
        let werr = |e: ndarray_npy::WriteNpzError| Error::Data(format!("{}: {e}", path.display()));
        npz.add_array("samples", samples).map_err(werr)?;
        npz.add_array("labels", labels).map_err(werr)?;
        if let Some(w) = weights {
            npz.add_array("weights", w).map_err(werr)?;
        }
        let file = npz.finish().map_err(werr)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One array of a [`NpzStreamWriter`]: where its zip entry lies and how far it is written.
struct NpzSlot {
    entry: String,
    rows: u64,
    cols: u64,
    local_at: u64,
    data_at: u64,
    size: u64,
    written: u64,
    crc: flate2::Crc,
}

const ZIP64_LOCAL_EXTRA: u64 = 20;
const ZIP64_CENTRAL_EXTRA: u16 = 28;
/// DOS date 1980-01-01, time 00:00.
const DOS_DATE: u16 = 0x21;

/// The `.npy` (version 1.0) header of a C-order little-endian float32 array
/// of shape `[rows, cols]`, padded to a multiple of 64 bytes as NumPy writes it.
fn npy_header(rows: u64, cols: u64) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// Writes an `.npz` archive of 2-D float32 arrays whose shapes are known in
/// advance, rows at a time, without holding the arrays in memory: the same
/// archive [`write_npz`] writes (stored entries `<name>.npy`, readable by
/// [`read_npz`] and `numpy.load`), with ZIP64 size fields so any size works.
///
/// Each entry's `.npy` header is written first; rows go straight to their
/// place in the file; [`finish`](Self::finish) fills in the CRC-32 of each
/// entry, writes the central directory, fsyncs and renames the temporary
/// sibling into place. Dropping the writer unfinished (an error) removes the
/// temporary file, so `path` never holds a partial archive.
pub struct NpzStreamWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::fs::File>,
    slots: Vec<NpzSlot>,
    end: u64,
    bytes: Vec<u8>,
}

impl NpzStreamWriter {
    /// Creates the temporary archive for `arrays` = (name, rows, columns).
    ///
    /// # Errors
    /// No arrays, a repeated or empty name, or the temporary file cannot be written.
    pub fn create(path: &Path, arrays: &[(&str, usize, usize)]) -> Result<Self> {
        use std::io::Write;
        if arrays.is_empty() {
            return Err(Error::Data(format!("{}: no arrays to write", path.display())));
        }
        let mut slots: Vec<NpzSlot> = Vec::with_capacity(arrays.len());
        let mut at = 0u64;
        for &(name, rows, cols) in arrays {
            if name.is_empty() || slots.iter().any(|s| s.entry == format!("{name}.npy")) {
                return Err(Error::Data(format!("{}: invalid or repeated array name '{name}'", path.display())));
            }
            let entry = format!("{name}.npy");
            let header = npy_header(rows as u64, cols as u64);
            let data = (rows as u64)
                .checked_mul(cols as u64)
                .and_then(|v| v.checked_mul(4))
                .ok_or_else(|| Error::Data(format!("{}: array '{name}' is too large", path.display())))?;
            let local_len = 30 + entry.len() as u64 + ZIP64_LOCAL_EXTRA;
            let mut crc = flate2::Crc::new();
            crc.update(&header);
            let slot = NpzSlot {
                local_at: at,
                data_at: at + local_len + header.len() as u64,
                size: header.len() as u64 + data,
                rows: rows as u64,
                cols: cols as u64,
                written: 0,
                crc,
                entry,
            };
            at = slot.data_at + data;
            slots.push(slot);
        }
        let tmp = crate::atomic::sibling(path, "tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let mut w =
            NpzStreamWriter { path: path.to_path_buf(), tmp, file: Some(file), slots, end: at, bytes: Vec::new() };
        // Local headers (CRC filled in by `finish`) and .npy headers.
        for i in 0..w.slots.len() {
            let rec = w.local_header(i);
            let s = &w.slots[i];
            let header = npy_header(s.rows, s.cols);
            let (off, tmp) = (s.local_at, w.tmp.clone());
            let f = w.file_mut()?;
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(off))
                .and_then(|_| f.write_all(&rec))
                .and_then(|_| f.write_all(&header))
                .map_err(|e| Error::io(&tmp, e))?;
        }
        Ok(w)
    }

    fn file_mut(&mut self) -> Result<&mut std::fs::File> {
        let p = self.path.clone();
        self.file.as_mut().ok_or_else(|| Error::io(p, std::io::Error::other("the archive is already finished")))
    }

    fn local_header(&self, i: usize) -> Vec<u8> {
        let s = &self.slots[i];
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&45u16.to_le_bytes()); // version needed: ZIP64
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&0u16.to_le_bytes()); // stored
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&s.crc.sum().to_le_bytes());
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&(s.entry.len() as u16).to_le_bytes());
        h.extend_from_slice(&(ZIP64_LOCAL_EXTRA as u16).to_le_bytes());
        h.extend_from_slice(s.entry.as_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(&s.size.to_le_bytes());
        h.extend_from_slice(&s.size.to_le_bytes());
        h
    }

    /// Appends rows to array number `index` (row-major, a multiple of its column count).
    ///
    /// # Errors
    /// A length that is not whole rows, more rows than declared, or I/O.
    pub fn append(&mut self, index: usize, values: &[f32]) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let p = self.path.display().to_string();
        let s = self.slots.get(index).ok_or_else(|| Error::Data(format!("{p}: no array number {index}")))?;
        let cols = s.cols.max(1);
        let rows = values.len() as u64 / cols;
        if !(values.len() as u64).is_multiple_of(cols) || s.written + rows > s.rows {
            return Err(Error::Data(format!(
                "{p}: array '{}': {} values do not fit its {} columns and {} remaining rows",
                s.entry,
                values.len(),
                s.cols,
                s.rows - s.written
            )));
        }
        let off = s.data_at + s.written * s.cols * 4;
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        bytes.reserve(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let tmp = self.tmp.clone();
        let f = self.file_mut()?;
        f.seek(SeekFrom::Start(off)).and_then(|_| f.write_all(&bytes)).map_err(|e| Error::io(&tmp, e))?;
        let s = &mut self.slots[index];
        s.crc.update(&bytes);
        s.written += rows;
        self.bytes = bytes;
        Ok(())
    }

    /// Checks every array is complete, writes the CRCs and the central
    /// directory, fsyncs and renames the archive into place.
    ///
    /// # Errors
    /// An incomplete array, or I/O (the temporary file is removed).
    pub fn finish(mut self) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        for s in &self.slots {
            if s.written != s.rows {
                return Err(Error::Data(format!(
                    "{}: array '{}' has {} of its {} rows",
                    self.path.display(),
                    s.entry,
                    s.written,
                    s.rows
                )));
            }
        }
        let mut tail: Vec<u8> = Vec::new();
        for s in &self.slots {
            tail.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            tail.extend_from_slice(&45u16.to_le_bytes()); // made by
            tail.extend_from_slice(&45u16.to_le_bytes()); // needed
            tail.extend_from_slice(&0u16.to_le_bytes());
            tail.extend_from_slice(&0u16.to_le_bytes());
            tail.extend_from_slice(&0u16.to_le_bytes());
            tail.extend_from_slice(&DOS_DATE.to_le_bytes());
            tail.extend_from_slice(&s.crc.sum().to_le_bytes());
            tail.extend_from_slice(&u32::MAX.to_le_bytes());
            tail.extend_from_slice(&u32::MAX.to_le_bytes());
            tail.extend_from_slice(&(s.entry.len() as u16).to_le_bytes());
            tail.extend_from_slice(&ZIP64_CENTRAL_EXTRA.to_le_bytes());
            tail.extend_from_slice(&0u16.to_le_bytes()); // comment
            tail.extend_from_slice(&0u16.to_le_bytes()); // disk
            tail.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            tail.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            tail.extend_from_slice(&u32::MAX.to_le_bytes()); // local header offset: in the extra
            tail.extend_from_slice(s.entry.as_bytes());
            tail.extend_from_slice(&1u16.to_le_bytes());
            tail.extend_from_slice(&24u16.to_le_bytes());
            tail.extend_from_slice(&s.size.to_le_bytes());
            tail.extend_from_slice(&s.size.to_le_bytes());
            tail.extend_from_slice(&s.local_at.to_le_bytes());
        }
        let (cd_at, cd_len, n) = (self.end, tail.len() as u64, self.slots.len() as u64);
        let eocd64_at = cd_at + cd_len;
        tail.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        tail.extend_from_slice(&44u64.to_le_bytes());
        tail.extend_from_slice(&45u16.to_le_bytes());
        tail.extend_from_slice(&45u16.to_le_bytes());
        tail.extend_from_slice(&0u32.to_le_bytes());
        tail.extend_from_slice(&0u32.to_le_bytes());
        tail.extend_from_slice(&n.to_le_bytes());
        tail.extend_from_slice(&n.to_le_bytes());
        tail.extend_from_slice(&cd_len.to_le_bytes());
        tail.extend_from_slice(&cd_at.to_le_bytes());
        tail.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        tail.extend_from_slice(&0u32.to_le_bytes());
        tail.extend_from_slice(&eocd64_at.to_le_bytes());
        tail.extend_from_slice(&1u32.to_le_bytes());
        tail.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        tail.extend_from_slice(&0u16.to_le_bytes());
        tail.extend_from_slice(&0u16.to_le_bytes());
        tail.extend_from_slice(&(n as u16).to_le_bytes());
        tail.extend_from_slice(&(n as u16).to_le_bytes());
        tail.extend_from_slice(&u32::try_from(cd_len).unwrap_or(u32::MAX).to_le_bytes());
        tail.extend_from_slice(&u32::try_from(cd_at).unwrap_or(u32::MAX).to_le_bytes());
        tail.extend_from_slice(&0u16.to_le_bytes());
        let locals: Vec<(u64, Vec<u8>)> =
            (0..self.slots.len()).map(|i| (self.slots[i].local_at, self.local_header(i))).collect();
        let (tmp, path) = (self.tmp.clone(), self.path.clone());
        let f = self.file_mut()?;
        let io = |e| Error::io(&tmp, e);
        for (at, rec) in &locals {
            f.seek(SeekFrom::Start(*at)).and_then(|_| f.write_all(rec)).map_err(io)?;
        }
        f.seek(SeekFrom::Start(cd_at)).and_then(|_| f.write_all(&tail)).map_err(io)?;
        f.sync_all().map_err(io)?;
        self.file = None;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.tmp = std::path::PathBuf::new();
        Ok(())
    }
}

impl Drop for NpzStreamWriter {
    fn drop(&mut self) {
        self.file = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Where a stored (uncompressed) 1-D or 2-D little-endian float array lies in an `.npz`.
struct StoredArray {
    /// Byte offset of the first element in the archive file.
    data_at: u64,
    /// Bytes per element (4 or 8).
    item: usize,
    rows: usize,
    cols: usize,
}

/// Finds the array `name` in the archive and parses its `.npy` header;
/// `None` when it is compressed or of a layout the row reader does not
/// handle (big-endian, Fortran order, not float32/float64, more than two
/// dimensions): the caller then reads the whole array.
fn stored_array(path: &Path, name: &str) -> Result<Option<StoredArray>> {
    use std::io::{Read, Seek, SeekFrom};
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io(p, e));
    let bad = |e: zip::result::ZipError| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display()));
    let mut zip = zip::ZipArchive::new(open(path)?).map_err(bad)?;
    let entry = [format!("{name}.npy"), name.to_string()].into_iter().find(|n| zip.index_for_name(n).is_some());
    let Some(entry) = entry else {
        return Err(Error::Data(format!("{}: no array '{name}'", path.display())));
    };
    let (data_start, stored) = {
        let f = zip.by_name(&entry).map_err(bad)?;
        (f.data_start(), f.compression() == zip::CompressionMethod::Stored)
    };
    if !stored {
        return Ok(None);
    }
    let mut file = open(path)?;
    let mut head = [0u8; 12];
    file.seek(SeekFrom::Start(data_start)).and_then(|_| file.read_exact(&mut head)).map_err(|e| Error::io(path, e))?;
    if &head[..6] != b"\x93NUMPY" {
        return Ok(None);
    }
    let (len, skip) = match head[6] {
        1 => (usize::from(u16::from_le_bytes([head[8], head[9]])), 10),
        2 | 3 => (u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize, 12),
        _ => return Ok(None),
    };
    let mut dict = vec![0u8; len];
    file.seek(SeekFrom::Start(data_start + skip as u64))
        .and_then(|_| file.read_exact(&mut dict))
        .map_err(|e| Error::io(path, e))?;
    let dict = String::from_utf8_lossy(&dict).replace(' ', "");
    let item = if dict.contains("'descr':'<f4'") {
        4
    } else if dict.contains("'descr':'<f8'") {
        8
    } else {
        return Ok(None);
    };
    if !dict.contains("'fortran_order':False") {
        return Ok(None);
    }
    let shape = dict.split("'shape':(").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
    let dims: Vec<usize> = shape.split(',').filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    let (rows, cols) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        _ => return Ok(None),
    };
    Ok(Some(StoredArray { data_at: data_start + (skip + len) as u64, item, rows, cols }))
}

/// Rows and columns of the array `name` (a 1-D array is one column), read
/// from its header alone where the array is stored uncompressed.
pub fn npz_shape(path: &Path, name: &str) -> Result<(usize, usize)> {
    match stored_array(path, name)? {
        Some(a) => Ok((a.rows, a.cols)),
        None => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut npz = NpzReader::new(file)
                .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
            Ok(read_array(&mut npz, path, name)?.dim())
        }
    }
}

/// The rows `rows` (in that order) of the array `name`, as float32 `[rows, D]`.
/// A stored array is read by seeking, a run of consecutive rows at a time, so
/// memory holds only the rows asked for; a compressed one is read whole and
/// then selected.
///
/// # Errors
/// A row beyond the array, an unreadable archive or array.
pub fn read_npz_rows(path: &Path, name: &str, rows: &[usize]) -> Result<Array2<f32>> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(a) = stored_array(path, name)? else {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut npz = NpzReader::new(file)
            .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
        let all = read_array(&mut npz, path, name)?;
        if let Some(&r) = rows.iter().find(|&&r| r >= all.nrows()) {
            return Err(Error::Data(format!(
                "{}: array '{name}' has {} rows, row {r} asked",
                path.display(),
                all.nrows()
            )));
        }
        return Ok(super::select_rows(&all, rows));
    };
    if let Some(&r) = rows.iter().find(|&&r| r >= a.rows) {
        return Err(Error::Data(format!("{}: array '{name}' has {} rows, row {r} asked", path.display(), a.rows)));
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let row_bytes = a.cols * a.item;
    let mut out = Vec::with_capacity(rows.len() * a.cols);
    let mut buf = Vec::new();
    let mut k = 0;
    while k < rows.len() {
        // A run of consecutive rows.
        let start = rows[k];
        let mut end = k + 1;
        while end < rows.len() && rows[end] == rows[end - 1] + 1 && end - k < 65536 {
            end += 1;
        }
        let n = end - k;
        buf.resize(n * row_bytes, 0);
        file.seek(SeekFrom::Start(a.data_at + (start * row_bytes) as u64))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(path, e))?;
        if a.item == 4 {
            out.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        } else {
            out.extend(
                buf.chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32),
            );
        }
        k = end;
    }
    Array2::from_shape_vec((rows.len(), a.cols), out).map_err(|e| Error::Data(format!("internal: {e}")))
}

/// The labels and weights of an `.npz` (`labels`, optional `weights`) and its
/// number of events, without its `samples`: the index of a shard-local read.
///
/// # Errors
/// As [`read_npz`] for the arrays read; `samples` and `labels` of different lengths.
pub fn index_npz(path: &Path) -> Result<(Array2<f32>, Option<Array1<f32>>)> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut npz = NpzReader::new(file)
        .map_err(|e| Error::Data(format!("{}: not a readable .npz archive: {e}", path.display())))?;
    let labels = read_array(&mut npz, path, "labels")?;
    let (n, _) = npz_shape(path, "samples")?;
    if n == 0 {
        return Err(Error::Data(format!("{source}: no events")));
    }
    if labels.nrows() != n {
        return Err(Error::Data(format!("{source}: {n} rows of samples but {} rows of labels", labels.nrows())));
    }
    if let Some(((i, j), v)) = labels.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Data(format!("{source}: labels[{i}, {j}] is {v} (non-finite values are not accepted)")));
    }
    let has_weights = npz
        .names()
        .map_err(|e| Error::Data(format!("{source}: not a readable .npz archive: {e}")))?
        .iter()
        .any(|n| n == "weights" || n == "weights.npy");
    let weights = if has_weights {
        let w = read_array(&mut npz, path, "weights")?;
        if w.ncols() != 1 || w.nrows() != n {
            return Err(Error::Data(format!(
                "{source}: array 'weights' has shape [{}, {}]: need one weight per event ([{n}] or [{n}, 1])",
                w.nrows(),
                w.ncols()
            )));
        }
        if let Some((i, v)) = w.column(0).iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Data(format!(
                "{source}: array 'weights': weights[{i}] is {v} (non-finite weights are not accepted)"
            )));
        }
        Some(w.column(0).to_owned())
    } else {
        None
    };
    Ok((labels, weights))
}
