//! One-dimensional histograms (`TH1D`) and a writer for a ROOT file holding
//! them, readable by ROOT, uproot, RooFit, combine and pyhf pipelines.
//!
//! On disk a `TH1D` (class version 3) is its `TH1` base (version 8: `TNamed`,
//! `TAttLine`, `TAttFill`, `TAttMarker`, `fNcells`, three `TAxis` v10 with
//! their `TAttAxis` v4, bar settings, the statistics sums, `fContour`,
//! `fSumw2`, `fOption`, the `fFunctions` `TList`, an empty `fBuffer`, the
//! error and overflow options) followed by its `TArrayD` base (`fN` and the
//! bin contents, under- and overflow included). `TArrayD` members carry no
//! version header. Layout and streamer infos as read by uproot
//! (`models/TH.py`, `writing/identify.py`) and groot (`rhist/h1.go`,
//! `rhist/axis.go`); the file skeleton (header, top directory, keys list,
//! free segments) is the one [`TreeWriter`](super::TreeWriter) writes.
//!
//! Bins follow ROOT: bin `i` (1..=n) is `[edge[i-1], edge[i])`; bin 0 is the
//! underflow (`x < edge[0]`, `-inf` included), bin `n + 1` the overflow
//! (`x ≥ edge[n]`, `+inf` included); NaN is not filled. The statistics sums
//! (`fTsumw`, `fTsumw2`, `fTsumwx`, `fTsumwx2`) cover the in-range bins only,
//! as ROOT's default; `fEntries` counts every fill.
//!
//! ```ignore
//! use root::{write_histograms, Th1d};
//! let mut h = Th1d::uniform("h_x", "x at label 1", 10, 0.0, 1.0)?;
//! h.fill(0.25);
//! h.fill_weighted(0.5, 2.0);
//! write_histograms(std::path::Path::new("hists.root"), &[h])?;
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::compress;
use super::cursor::WBuf;
use super::error::{path_str, RootError};
use super::streamers::{self, tnamed, tobject};
use super::write::{datime_now, key_len, raw_key, tmp_sibling, tstring_len, uuid_bytes, BEGIN, DIR_RECORD};

/// A one-dimensional histogram of doubles with per-bin sums of squared
/// weights (ROOT's `TH1D` with `Sumw2`).
#[derive(Clone, Debug, PartialEq)]
pub struct Th1d {
    name: String,
    title: String,
    edges: Vec<f64>,
    uniform: bool,
    sumw: Vec<f64>,
    sumw2: Vec<f64>,
    entries: f64,
    tsumw: f64,
    tsumw2: f64,
    tsumwx: f64,
    tsumwx2: f64,
}

fn invalid(name: &str, detail: String) -> RootError {
    RootError::InvalidArgument { path: "(Th1d)".into(), context: format!("histogram '{name}': "), detail }
}

impl Th1d {
    /// `nbins` equal bins on `[lo, hi)`.
    ///
    /// # Errors
    /// No bins, a non-finite range or `lo ≥ hi`, or an invalid name.
    pub fn uniform(name: &str, title: &str, nbins: usize, lo: f64, hi: f64) -> Result<Self, RootError> {
        if nbins == 0 || !lo.is_finite() || !hi.is_finite() || lo >= hi {
            return Err(invalid(
                name,
                format!("needs ≥ 1 bin and a finite range lo < hi (got {nbins} bins on [{lo}, {hi}])"),
            ));
        }
        let w = (hi - lo) / nbins as f64;
        let mut edges: Vec<f64> = (0..=nbins).map(|i| lo + w * i as f64).collect();
        edges[nbins] = hi;
        let mut h = Self::with_edges(name, title, edges)?;
        h.uniform = true;
        Ok(h)
    }

    /// Bins with the given edges (strictly increasing, finite, at least two).
    ///
    /// # Errors
    /// Fewer than two edges, non-finite or non-increasing edges, or an invalid name.
    pub fn with_edges(name: &str, title: &str, edges: Vec<f64>) -> Result<Self, RootError> {
        if name.is_empty() || name.contains(['/', ';', '\0']) {
            return Err(invalid(name, format!("invalid histogram name {name:?}")));
        }
        if edges.len() < 2 || edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[1] <= w[0]) {
            return Err(invalid(name, "edges must be ≥ 2 finite, strictly increasing values".into()));
        }
        let cells = edges.len() + 1;
        Ok(Th1d {
            name: name.to_string(),
            title: title.to_string(),
            edges,
            uniform: false,
            sumw: vec![0.0; cells],
            sumw2: vec![0.0; cells],
            entries: 0.0,
            tsumw: 0.0,
            tsumw2: 0.0,
            tsumwx: 0.0,
            tsumwx2: 0.0,
        })
    }

    /// The histogram's name (its key in the file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The histogram's title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Number of in-range bins.
    pub fn nbins(&self) -> usize {
        self.edges.len() - 1
    }

    /// Bin edges (`nbins + 1` values).
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// Sum of weights per bin, underflow first and overflow last (`nbins + 2` values).
    pub fn values(&self) -> &[f64] {
        &self.sumw
    }

    /// Sum of squared weights per bin, laid out as [`values`](Self::values).
    pub fn variances(&self) -> &[f64] {
        &self.sumw2
    }

    /// The bin `x` falls in: 0 underflow, `1..=nbins`, `nbins + 1` overflow; `None` for NaN.
    pub fn bin_of(&self, x: f64) -> Option<usize> {
        if x.is_nan() {
            return None;
        }
        let n = self.nbins();
        if x < self.edges[0] {
            return Some(0);
        }
        if x >= self.edges[n] {
            return Some(n + 1);
        }
        // First edge strictly greater than x: bin index (1-based).
        Some(self.edges.partition_point(|&e| e <= x).clamp(1, n))
    }

    /// Fills `x` with weight 1.
    pub fn fill(&mut self, x: f64) {
        self.fill_weighted(x, 1.0);
    }

    /// Fills `x` with weight `w` (NaN `x` is ignored).
    pub fn fill_weighted(&mut self, x: f64, w: f64) {
        let Some(b) = self.bin_of(x) else { return };
        self.entries += 1.0;
        self.sumw[b] += w;
        self.sumw2[b] += w * w;
        if b >= 1 && b <= self.nbins() {
            self.tsumw += w;
            self.tsumw2 += w * w;
            self.tsumwx += w * x;
            self.tsumwx2 += w * x * x;
        }
    }

    /// Serializes the object (the key payload, uncompressed).
    fn serialize(&self) -> Vec<u8> {
        let mut w = WBuf::new();
        let th1d = w.begin_obj(3);
        let th1 = w.begin_obj(8);
        tnamed(&mut w, &self.name, &self.title, 0x0300_0008);
        let a = w.begin_obj(2); // TAttLine
        w.i16(602);
        w.i16(1);
        w.i16(1);
        w.end_obj(a);
        let a = w.begin_obj(2); // TAttFill
        w.i16(0);
        w.i16(1001);
        w.end_obj(a);
        let a = w.begin_obj(2); // TAttMarker
        w.i16(1);
        w.i16(1);
        w.f32(1.0);
        w.end_obj(a);
        w.i32(self.sumw.len() as i32); // fNcells
        let n = self.nbins();
        let xbins: &[f64] = if self.uniform { &[] } else { &self.edges };
        axis(&mut w, "xaxis", n, self.edges[0], self.edges[n], xbins);
        axis(&mut w, "yaxis", 1, 0.0, 1.0, &[]);
        axis(&mut w, "zaxis", 1, 0.0, 1.0, &[]);
        w.i16(0); // fBarOffset
        w.i16(1000); // fBarWidth
        w.f64(self.entries);
        w.f64(self.tsumw);
        w.f64(self.tsumw2);
        w.f64(self.tsumwx);
        w.f64(self.tsumwx2);
        w.f64(-1111.0); // fMaximum
        w.f64(-1111.0); // fMinimum
        w.f64(0.0); // fNormFactor
        tarrayd(&mut w, &[]); // fContour
        tarrayd(&mut w, &self.sumw2); // fSumw2
        w.tstring(""); // fOption
        let l = w.begin_obj(5); // fFunctions: an empty TList, streamed in place
        tobject(&mut w, 0x0300_0000);
        w.tstring("");
        w.i32(0);
        w.end_obj(l);
        w.i32(0); // fBufferSize
        w.u8(0); // fBuffer: no array
        w.i32(0); // fBinStatErrOpt (kNormal)
        w.i32(2); // fStatOverflows (kNeutral)
        w.end_obj(th1);
        tarrayd(&mut w, &self.sumw); // the TArrayD base: bin contents
        w.end_obj(th1d);
        w.buf
    }
}

/// A `TArrayD` as a member or base: `fN` and the values, no version header.
fn tarrayd(w: &mut WBuf, v: &[f64]) {
    w.i32(v.len() as i32);
    for &x in v {
        w.f64(x);
    }
}

/// A `TAxis` (v10) with ROOT's default attributes; `xbins` empty for equal bins.
fn axis(w: &mut WBuf, name: &str, nbins: usize, lo: f64, hi: f64, xbins: &[f64]) {
    let at = w.begin_obj(10);
    tnamed(w, name, "", 0x0300_0000);
    let a = w.begin_obj(4); // TAttAxis
    w.i32(510); // fNdivisions
    w.i16(1); // fAxisColor
    w.i16(1); // fLabelColor
    w.i16(42); // fLabelFont
    w.f32(0.005); // fLabelOffset
    w.f32(0.035); // fLabelSize
    w.f32(0.03); // fTickLength
    w.f32(1.0); // fTitleOffset
    w.f32(0.035); // fTitleSize
    w.i16(1); // fTitleColor
    w.i16(42); // fTitleFont
    w.end_obj(a);
    w.i32(nbins as i32);
    w.f64(lo);
    w.f64(hi);
    tarrayd(w, xbins);
    w.i32(0); // fFirst
    w.i32(0); // fLast
    w.u16(0); // fBits2
    w.u8(0); // fTimeDisplay
    w.tstring(""); // fTimeFormat
    w.u32(0); // fLabels (null)
    w.u32(0); // fModLabs (null)
    w.end_obj(at);
}

/// Stored form of a payload: zlib level 1 when it shrinks, else as is.
fn stored(payload: &[u8]) -> Vec<u8> {
    compress::compress_zlib(payload, 1).unwrap_or_else(|| payload.to_vec())
}

/// Writes `hists` into a new ROOT file at `path`, one key per histogram
/// (named by [`Th1d::name`], cycle 1), with the streamer infos of `TH1D` and
/// its members. The file is written to a hidden temporary sibling, fsynced
/// and renamed, so `path` never holds a partial file.
///
/// # Errors
/// Two histograms with the same name, a file over 2 GB, or I/O (the error
/// names `path`).
pub fn write_histograms(path: &Path, hists: &[Th1d]) -> Result<(), RootError> {
    let ps = path_str(path);
    let mut seen = std::collections::HashSet::new();
    for h in hists {
        if !seen.insert(h.name.as_str()) {
            return Err(RootError::InvalidArgument {
                path: ps,
                context: String::new(),
                detail: format!("two histograms named '{}'", h.name),
            });
        }
    }
    let (fname, tmp) = tmp_sibling(path);
    let bytes = file_bytes(&fname, hists).map_err(|e| RootError::Io {
        path: ps.clone(),
        context: "writing: ".into(),
        source: e,
    })?;
    let io = |e: std::io::Error, what: &str| RootError::Io { path: ps.clone(), context: what.to_string(), source: e };
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| io(e, "creating temporary file: "))?;
        file.write_all(&bytes).map_err(|e| io(e, "writing: "))?;
        file.sync_all().map_err(|e| io(e, "fsync: "))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io(e, "renaming temporary file: "))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The whole file in memory (small 32-bit layout).
fn file_bytes(fname: &str, hists: &[Th1d]) -> std::io::Result<Vec<u8>> {
    let now = datime_now();
    let uuid = uuid_bytes(fname);
    let nbytes_name = key_len("TFile", fname, "") + tstring_len(fname) + tstring_len("");
    let mut out = vec![0u8; BEGIN as usize + nbytes_name + DIR_RECORD];

    let mut headers: Vec<Vec<u8>> = Vec::with_capacity(hists.len());
    for h in hists {
        let obj = h.serialize();
        let pos = out.len() as u64;
        let rec = raw_key("TH1D", &h.name, &h.title, &stored(&obj), obj.len(), pos, BEGIN, now, 1);
        headers.push(rec[..key_len("TH1D", &h.name, &h.title)].to_vec());
        out.extend_from_slice(&rec);
    }

    let si_keylen = key_len("TList", "StreamerInfo", "Doubly linked list");
    let si_obj = streamers::th1d_streamer_list(si_keylen as u64);
    let seek_info = out.len() as u64;
    let si = raw_key(
        "TList",
        "StreamerInfo",
        "Doubly linked list",
        &stored(&si_obj),
        si_obj.len(),
        seek_info,
        BEGIN,
        now,
        1,
    );
    let nbytes_info = si.len();
    out.extend_from_slice(&si);

    let mut kl = WBuf::new();
    kl.i32(headers.len() as i32);
    for h in &headers {
        kl.bytes(h);
    }
    let seek_keys = out.len() as u64;
    let klist = raw_key("TFile", fname, "", &kl.buf, kl.buf.len(), seek_keys, BEGIN, now, 1);
    let nbytes_keys = klist.len();
    out.extend_from_slice(&klist);

    let seek_free = out.len() as u64;
    let end = seek_free + (key_len("TFile", fname, "") + 10) as u64;
    if end > i32::MAX as u64 {
        return Err(std::io::Error::other("histogram file over 2 GB"));
    }
    let mut f = WBuf::new();
    f.u16(1);
    f.i32(end as i32);
    f.i32(2_000_000_000);
    let free = raw_key("TFile", fname, "", &f.buf, f.buf.len(), seek_free, BEGIN, now, 1);
    let nbytes_free = free.len();
    out.extend_from_slice(&free);
    debug_assert_eq!(out.len() as u64, end);

    let mut h = WBuf::new();
    h.bytes(b"root");
    h.i32(62400);
    h.i32(BEGIN as i32);
    h.i32(end as i32);
    h.i32(seek_free as i32);
    h.i32(nbytes_free as i32);
    h.i32(1); // nfree
    h.i32(nbytes_name as i32);
    h.u8(4);
    h.i32(101); // fCompress: zlib level 1
    h.i32(seek_info as i32);
    h.i32(nbytes_info as i32);
    h.u16(1);
    h.bytes(&uuid);
    h.buf.resize(BEGIN as usize, 0);

    let mut d = WBuf::new();
    d.i16(5);
    d.u32(now);
    d.u32(now);
    d.i32(nbytes_keys as i32);
    d.i32(nbytes_name as i32);
    d.i32(BEGIN as i32);
    d.i32(0);
    d.i32(seek_keys as i32);
    d.u16(1);
    d.bytes(&uuid);
    d.buf.resize(DIR_RECORD, 0);
    let mut top = WBuf::new();
    top.tstring(fname);
    top.tstring("");
    top.bytes(&d.buf);
    let top_rec = raw_key("TFile", fname, "", &top.buf, top.buf.len(), BEGIN, 0, now, 1);
    out[..BEGIN as usize].copy_from_slice(&h.buf);
    out[BEGIN as usize..BEGIN as usize + top_rec.len()].copy_from_slice(&top_rec);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_follow_root() {
        let mut h = Th1d::with_edges("h", "", vec![0.0, 1.0, 3.0]).unwrap();
        assert_eq!(h.bin_of(-0.1), Some(0));
        assert_eq!(h.bin_of(0.0), Some(1));
        assert_eq!(h.bin_of(1.0), Some(2));
        assert_eq!(h.bin_of(2.999), Some(2));
        assert_eq!(h.bin_of(3.0), Some(3));
        assert_eq!(h.bin_of(f64::INFINITY), Some(3));
        assert_eq!(h.bin_of(f64::NEG_INFINITY), Some(0));
        assert_eq!(h.bin_of(f64::NAN), None);
        h.fill_weighted(0.5, 2.0);
        h.fill(5.0);
        assert_eq!(h.values(), &[0.0, 2.0, 0.0, 1.0]);
        assert_eq!(h.variances(), &[0.0, 4.0, 0.0, 1.0]);
        assert!(Th1d::with_edges("h", "", vec![0.0, 0.0]).is_err());
        assert!(Th1d::uniform("h", "", 0, 0.0, 1.0).is_err());
        assert!(Th1d::uniform("a/b", "", 1, 0.0, 1.0).is_err());
    }
}
