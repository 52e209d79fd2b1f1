//! Writing a ROOT file that holds one TTree of numeric branches.
//!
//! Layout written (uproot `writing/_cascade.py` `create_empty` and
//! `writing/_cascadetree.py`; groot `riofs/file.go`, `rtree/writer.go`):
//!
//! ```text
//! 0      file header ("root", version, fBEGIN=100, fEND, fSeekFree, ... fSeekInfo, UUID)
//! 100    TFile key + name/title + TDirectory record (fSeekKeys, fNbytesKeys)
//!        one TBasket key per basket (key header ends with the TBasket members;
//!        payload = big-endian values [+ entry-offset table for jagged branches])
//!        TTree key (TTree v20 / TBranch v13 / TLeafX v1 metadata)
//!        StreamerInfo key (TList of TStreamerInfo, see `streamers.rs`)
//!        keys list (key header + count + TTree key header)
//!        free-segments record (one TFree from fEND to 2000000000)
//! ```
//!
//! All keys use the 64-bit key layout (version 1004); the file header and
//! directory switch to their 64-bit layouts only past 2 GB. The file is written
//! to a temporary name in the target directory, fsynced and renamed, so the
//! final name never holds a partial file.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::compress;
use super::cursor::WBuf;
use super::error::{path_str, RootError};
use super::streamers::{self, tnamed, tobject};
use super::values::{Column, ElemType, Values};

pub(super) const BEGIN: u64 = 100;
const KEY_VERSION: i16 = 1004;
pub(super) const DIR_RECORD: usize = 60;
const START_BIG: u64 = 2_000_000_000;

/// Compression used for written baskets and metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Store everything uncompressed.
    None,
    /// zlib ("ZL") with level 1..=9.
    Zlib(u32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zlib(1)
    }
}

impl Compression {
    fn code(self) -> i32 {
        match self {
            Compression::None => 100,
            Compression::Zlib(l) => 100 + l.clamp(1, 9) as i32,
        }
    }
}

/// Writes `WriteObjectAny` records, tracking class tags for back references.
pub(super) struct ObjWriter {
    origin: u64,
    classes: HashMap<String, u32>,
}

impl ObjWriter {
    /// `origin`: key length of the key whose payload is being written.
    pub(super) fn new(origin: u64) -> Self {
        ObjWriter { origin, classes: HashMap::new() }
    }

    /// Writes byte count, class tag (new or reference) and `body`; returns the
    /// object's reference tag (for later plain object references).
    pub(super) fn write_any(&mut self, w: &mut WBuf, class: &str, body: impl FnOnce(&mut Self, &mut WBuf)) -> u32 {
        let beg = w.len();
        let obj_tag = (self.origin + beg as u64 + 2) as u32;
        let at = w.begin_count();
        match self.classes.get(class) {
            Some(&tag) => w.u32(tag | 0x8000_0000),
            None => {
                let tag = (self.origin + w.len() as u64 + 2) as u32;
                self.classes.insert(class.to_string(), tag);
                w.u32(0xFFFF_FFFF);
                w.bytes(class.as_bytes());
                w.u8(0);
            }
        }
        body(self, w);
        w.end_obj(at);
        obj_tag
    }
}

/// One branch to write.
#[derive(Clone, Debug)]
enum WBranch {
    Flat { name: String, values: Values },
    Jagged { name: String, counter: String, offsets: Vec<u64>, values: Values },
}

impl WBranch {
    fn name(&self) -> &str {
        match self {
            WBranch::Flat { name, .. } | WBranch::Jagged { name, .. } => name,
        }
    }
    fn entries(&self) -> usize {
        match self {
            WBranch::Flat { values, .. } => values.len(),
            WBranch::Jagged { offsets, .. } => offsets.len().saturating_sub(1),
        }
    }
}

/// Builder for a ROOT file with one TTree of numeric branches.
///
/// ```ignore
/// // `root` is this module (e.g. `fedhex::data::root`).
/// use root::{TreeWriter, Values};
/// let mut w = TreeWriter::new("events");
/// w.add_branch("x", Values::F64(vec![1.0, 2.0]))?;
/// w.add_branch("n", Values::I32(vec![3, 4]))?;
/// w.write(std::path::Path::new("/tmp/out.root"))?;
/// ```
#[derive(Clone, Debug)]
pub struct TreeWriter {
    tree_name: String,
    title: String,
    compression: Compression,
    basket_entries: usize,
    branches: Vec<WBranch>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TreeWriter {
    /// New writer for a tree called `tree_name`, zlib level 1, baskets of up to 32768 entries.
    pub fn new(tree_name: &str) -> Self {
        TreeWriter {
            tree_name: tree_name.to_string(),
            title: String::new(),
            compression: Compression::default(),
            basket_entries: 32_768,
            branches: Vec::new(),
        }
    }

    /// Sets the tree title.
    pub fn title(&mut self, title: &str) -> &mut Self {
        self.title = title.to_string();
        self
    }

    /// Sets the compression.
    pub fn compression(&mut self, c: Compression) -> &mut Self {
        self.compression = c;
        self
    }

    /// Sets the maximum number of entries per basket (at least 1).
    pub fn basket_entries(&mut self, n: usize) -> &mut Self {
        self.basket_entries = n.max(1);
        self
    }

    fn invalid(&self, detail: String) -> RootError {
        RootError::InvalidArgument {
            path: "(TreeWriter)".into(),
            context: format!("tree '{}': ", self.tree_name),
            detail,
        }
    }

    fn check_name(&self, name: &str) -> Result<(), RootError> {
        if name.is_empty() || name.len() > 200 || name.contains(['/', ':', '[', ']', ' ', '\0', ';']) {
            return Err(self.invalid(format!("invalid branch name {name:?}")));
        }
        if self.branches.iter().any(|b| b.name() == name) {
            return Err(self.invalid(format!("branch '{name}' added twice")));
        }
        Ok(())
    }

    /// Adds a flat branch (one value per entry).
    pub fn add_branch(&mut self, name: &str, values: Values) -> Result<&mut Self, RootError> {
        self.check_name(name)?;
        if self.branches.iter().any(|b| matches!(b, WBranch::Jagged { counter, .. } if counter == name)) {
            return Err(self.invalid(format!("'{name}' is already the counter of a jagged branch")));
        }
        self.branches.push(WBranch::Flat { name: name.to_string(), values });
        Ok(self)
    }

    /// Adds a counted jagged branch `name[counter]`; the int32 counter branch
    /// is created automatically (once per counter name, shared by all branches
    /// naming it, which must then have equal counts).
    pub fn add_jagged(
        &mut self,
        name: &str,
        counter: &str,
        offsets: Vec<u64>,
        values: Values,
    ) -> Result<&mut Self, RootError> {
        self.check_name(name)?;
        if counter == name || self.branches.iter().any(|b| matches!(b, WBranch::Flat { name: n, .. } if n == counter)) {
            return Err(self.invalid(format!("counter name '{counter}' is taken by another branch")));
        }
        if self.branches.iter().any(|b| matches!(b, WBranch::Jagged { name: n, .. } if n == counter)) {
            return Err(self.invalid(format!("counter name '{counter}' is taken by another branch")));
        }
        if counter.is_empty() || counter.contains(['/', ':', '[', ']', ' ', '\0', ';']) {
            return Err(self.invalid(format!("invalid counter name {counter:?}")));
        }
        if offsets.first() != Some(&0)
            || offsets.windows(2).any(|w| w[1] < w[0])
            || offsets.last().copied() != Some(values.len() as u64)
        {
            return Err(self.invalid(format!(
                "branch '{name}': offsets must start at 0, not decrease and end at {}",
                values.len()
            )));
        }
        if offsets.windows(2).any(|w| w[1] - w[0] > i32::MAX as u64) {
            return Err(self.invalid(format!("branch '{name}': an entry is too long")));
        }
        let counts = |o: &[u64]| -> Vec<u64> { o.windows(2).map(|w| w[1] - w[0]).collect() };
        let mine = counts(&offsets);
        for b in &self.branches {
            let clash = match b {
                WBranch::Jagged { counter: c, offsets: o, name: n, .. } if c == counter && counts(o) != mine => Some(n),
                _ => None,
            };
            if let Some(n) = clash {
                {
                    return Err(self.invalid(format!(
                        "branches '{n}' and '{name}' share counter '{counter}' but have different counts"
                    )));
                }
            }
        }
        self.branches.push(WBranch::Jagged { name: name.to_string(), counter: counter.to_string(), offsets, values });
        Ok(self)
    }

    /// Adds a [`Column`]: scalar columns as flat branches, jagged ones with
    /// the counter name `n<name>`.
    pub fn add_column(&mut self, name: &str, column: Column) -> Result<&mut Self, RootError> {
        match column {
            Column::Scalar(v) => self.add_branch(name, v),
            Column::Jagged { offsets, values } => {
                let counter = format!("n{name}");
                self.add_jagged(name, &counter, offsets, values)
            }
        }
    }

    /// Writes the file (atomically: temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), RootError> {
        let ps = path_str(path);
        let entries = self.branches.first().map(|b| b.entries()).unwrap_or(0);
        for b in &self.branches {
            if b.entries() != entries {
                return Err(RootError::InvalidArgument {
                    path: ps,
                    context: format!("tree '{}': ", self.tree_name),
                    detail: format!(
                        "branch '{}' has {} entries, branch '{}' has {entries}",
                        b.name(),
                        b.entries(),
                        self.branches.first().map(|b| b.name()).unwrap_or("")
                    ),
                });
            }
        }
        if self.tree_name.is_empty() || self.tree_name.contains(['/', ';', '\0']) {
            return Err(RootError::InvalidArgument {
                path: ps,
                context: String::new(),
                detail: format!("invalid tree name {:?}", self.tree_name),
            });
        }
        let (fname, tmp) = tmp_sibling(path);
        let io =
            |e: std::io::Error, what: &str| RootError::Io { path: ps.clone(), context: what.to_string(), source: e };
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| io(e, "creating temporary file: "))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut w, &fname).map_err(|e| io(e, "writing: "))?;
            let file = w.into_inner().map_err(|e| io(e.into_error(), "writing: "))?;
            file.sync_all().map_err(|e| io(e, "fsync: "))?;
            drop(file);
            fs::rename(&tmp, path).map_err(|e| io(e, "renaming temporary file: "))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Branch order on disk: each counter right before its first jagged user.
    fn layout(&self) -> Vec<DiskBranch<'_>> {
        let mut out: Vec<DiskBranch<'_>> = Vec::new();
        let mut counters_done: Vec<&str> = Vec::new();
        for b in &self.branches {
            match b {
                WBranch::Flat { name, values } => out.push(DiskBranch {
                    name,
                    elem: values.elem_type(),
                    data: DiskData::Flat(values),
                    counter: None,
                    is_counter: false,
                }),
                WBranch::Jagged { name, counter, offsets, values } => {
                    if !counters_done.contains(&counter.as_str()) {
                        counters_done.push(counter);
                        out.push(DiskBranch {
                            name: counter,
                            elem: ElemType::I32,
                            data: DiskData::Counts(offsets),
                            counter: None,
                            is_counter: true,
                        });
                    }
                    out.push(DiskBranch {
                        name,
                        elem: values.elem_type(),
                        data: DiskData::Jagged(offsets, values),
                        counter: Some(counter),
                        is_counter: false,
                    });
                }
            }
        }
        out
    }

    fn write_to<W: Write + Seek>(&self, w: &mut W, fname: &str) -> std::io::Result<()> {
        let now = datime_now();
        let uuid = uuid_bytes(fname);
        let entries = self.branches.first().map(|b| b.entries()).unwrap_or(0);
        let branches = self.layout();

        // Reserve header + top directory record; rewritten at the end.
        let top_key_len = key_len("TFile", fname, "");
        let nbytes_name = top_key_len + tstring_len(fname) + tstring_len("");
        let top_len = nbytes_name + DIR_RECORD;
        w.write_all(&vec![0u8; BEGIN as usize + top_len])?;
        let mut pos = BEGIN + top_len as u64;

        // Baskets.
        let mut metas: Vec<BranchOut> = Vec::with_capacity(branches.len());
        for b in &branches {
            let mut bo = BranchOut::default();
            let mut start = 0usize;
            while start < entries {
                let end = (start + self.basket_entries).min(entries);
                let (key, objlen, nbytes) = self.basket(b, start, end, pos, fname, now)?;
                w.write_all(&key)?;
                bo.bytes.push(nbytes as i32);
                bo.entry.push(start as i64);
                bo.seek.push(pos as i64);
                bo.tot += objlen as i64;
                bo.zip += nbytes as i64;
                pos += key.len() as u64;
                start = end;
            }
            bo.max_count = b.max_count();
            metas.push(bo);
        }

        self.write_tail(w, fname, &branches, &metas, entries, Tail { pos, now, uuid, nbytes_name })
    }

    /// Writes everything after the baskets (TTree, StreamerInfo, keys list,
    /// free segments), then rewrites the file header and top directory at
    /// offset 0; leaves `w` positioned at the end of the file.
    fn write_tail<W: Write + Seek>(
        &self,
        w: &mut W,
        fname: &str,
        branches: &[DiskBranch<'_>],
        metas: &[BranchOut],
        entries: usize,
        tail: Tail,
    ) -> std::io::Result<()> {
        let Tail { mut pos, now, uuid, nbytes_name } = tail;
        // TTree.
        let tree_keylen = key_len("TTree", &self.tree_name, &self.title);
        let tree_obj = self.tree_object(branches, metas, entries, tree_keylen as u64);
        let (tree_key, tree_hdr) = self.key_record("TTree", &self.tree_name, &self.title, &tree_obj, pos, now, 1)?;
        w.write_all(&tree_key)?;
        let tree_pos = pos;
        pos += tree_key.len() as u64;
        let _ = tree_pos;

        // StreamerInfo.
        let mut leaf_classes: Vec<&str> = Vec::new();
        for b in branches {
            let c = leaf_class_name(b.elem);
            if !leaf_classes.contains(&c) {
                leaf_classes.push(c);
            }
        }
        let si_keylen = key_len("TList", "StreamerInfo", "Doubly linked list");
        let si_obj = streamers::streamer_list(si_keylen as u64, &leaf_classes);
        let (si_key, _) = self.key_record("TList", "StreamerInfo", "Doubly linked list", &si_obj, pos, now, 1)?;
        let seek_info = pos;
        let nbytes_info = si_key.len();
        w.write_all(&si_key)?;
        pos += si_key.len() as u64;

        // Keys list.
        let mut kl = WBuf::new();
        kl.i32(1);
        kl.bytes(&tree_hdr);
        let seek_keys = pos;
        let klist = raw_key("TFile", fname, "", &kl.buf, kl.buf.len(), pos, BEGIN, now, 1);
        let nbytes_keys = klist.len();
        w.write_all(&klist)?;
        pos += klist.len() as u64;

        // Free segments.
        let free_keylen = key_len("TFile", fname, "");
        let free_len = free_keylen + 10;
        let end = pos + free_len as u64;
        let big = end > START_BIG;
        let free_data = {
            let mut f = WBuf::new();
            if big {
                f.u16(1001);
                f.i64(end as i64);
                f.i64((START_BIG.max(end) * 2) as i64);
            } else {
                f.u16(1);
                f.i32(end as i32);
                f.i32(START_BIG as i32);
            }
            f.buf
        };
        let free_rec = raw_key("TFile", fname, "", &free_data, free_data.len(), pos, BEGIN, now, 1);
        let seek_free = pos;
        let nbytes_free = free_rec.len();
        w.write_all(&free_rec)?;
        let end = pos + free_rec.len() as u64;

        // Header and top directory.
        let mut h = WBuf::new();
        h.bytes(b"root");
        if big {
            h.i32(62400 + 1_000_000);
            h.i32(BEGIN as i32);
            h.i64(end as i64);
            h.i64(seek_free as i64);
        } else {
            h.i32(62400);
            h.i32(BEGIN as i32);
            h.i32(end as i32);
            h.i32(seek_free as i32);
        }
        h.i32(nbytes_free as i32);
        h.i32(1); // nfree
        h.i32(nbytes_name as i32);
        h.u8(if big { 8 } else { 4 });
        h.i32(match self.compression {
            Compression::None => 0,
            c => c.code(),
        });
        if big {
            h.i64(seek_info as i64);
        } else {
            h.i32(seek_info as i32);
        }
        h.i32(nbytes_info as i32);
        h.u16(1);
        h.bytes(&uuid);
        h.buf.resize(BEGIN as usize, 0);

        let mut d = WBuf::new();
        let dir_big = seek_keys > i32::MAX as u64;
        d.i16(if dir_big { 1005 } else { 5 });
        d.u32(now);
        d.u32(now);
        d.i32(nbytes_keys as i32);
        d.i32(nbytes_name as i32);
        if dir_big {
            d.i64(BEGIN as i64);
            d.i64(0);
            d.i64(seek_keys as i64);
        } else {
            d.i32(BEGIN as i32);
            d.i32(0);
            d.i32(seek_keys as i32);
        }
        d.u16(1);
        d.bytes(&uuid);
        d.buf.resize(DIR_RECORD, 0);
        let mut top = WBuf::new();
        top.tstring(fname);
        top.tstring("");
        top.bytes(&d.buf);
        let top_rec = raw_key("TFile", fname, "", &top.buf, top.buf.len(), BEGIN, 0, now, 1);
        w.seek(SeekFrom::Start(0))?;
        w.write_all(&h.buf)?;
        w.write_all(&top_rec)?;
        w.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Builds one basket key; returns (bytes, uncompressed size incl. key, stored size incl. key).
    fn basket(
        &self,
        b: &DiskBranch<'_>,
        start: usize,
        end: usize,
        pos: u64,
        fname: &str,
        now: u32,
    ) -> std::io::Result<(Vec<u8>, usize, usize)> {
        let _ = fname;
        let keylen = key_len("TBasket", b.name, &self.tree_name) + 19;
        let size = b.elem.size();
        let mut data: Vec<u8> = Vec::new();
        let mut offs: Option<Vec<i32>> = None;
        match &b.data {
            DiskData::Flat(v) => v.write_be(start, end, &mut data),
            DiskData::Counts(o) => {
                for i in start..end {
                    let c = o.get(i + 1).copied().unwrap_or(0) - o.get(i).copied().unwrap_or(0);
                    data.extend_from_slice(&(c as i32).to_be_bytes());
                }
            }
            DiskData::Jagged(o, v) => {
                let mut table = Vec::with_capacity(end - start + 1);
                for i in start..end {
                    table.push(keylen as i32 + data.len() as i32);
                    let a = o.get(i).copied().unwrap_or(0) as usize;
                    let z = o.get(i + 1).copied().unwrap_or(0) as usize;
                    v.write_be(a, z, &mut data);
                }
                offs = Some(table);
            }
        }
        if data.len() + keylen > i32::MAX as usize / 2 {
            return Err(std::io::Error::other(format!(
                "basket of branch '{}' too large ({} bytes); use smaller baskets",
                b.name,
                data.len()
            )));
        }
        let last = keylen + data.len();
        let n = end - start;
        let nevbufsize = match &offs {
            Some(_) => n as i32 + 2,
            None => size as i32,
        };
        let mut payload = data;
        if let Some(table) = &offs {
            payload.extend_from_slice(&(n as i32 + 1).to_be_bytes());
            for o in table {
                payload.extend_from_slice(&o.to_be_bytes());
            }
            payload.extend_from_slice(&0i32.to_be_bytes());
        }
        let objlen = payload.len();
        let stored = self.compress(&payload);
        let nbytes = keylen + stored.len();
        let mut k = WBuf::new();
        k.i32(nbytes as i32);
        k.i16(KEY_VERSION);
        k.i32(objlen as i32);
        k.u32(now);
        k.i16(keylen as i16);
        k.i16(1);
        k.i64(pos as i64);
        k.i64(BEGIN as i64);
        k.tstring("TBasket");
        k.tstring(b.name);
        k.tstring(&self.tree_name);
        k.u16(3);
        k.i32(32000);
        k.i32(nevbufsize);
        k.i32(n as i32);
        k.i32(last as i32);
        k.u8(0);
        debug_assert_eq!(k.len(), keylen);
        k.bytes(&stored);
        let _ = size;
        Ok((k.buf, keylen + objlen, nbytes))
    }

    fn compress<'a>(&self, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match self.compression {
            Compression::None => std::borrow::Cow::Borrowed(payload),
            Compression::Zlib(l) => match compress::compress_zlib(payload, l.clamp(1, 9)) {
                Some(c) => std::borrow::Cow::Owned(c),
                None => std::borrow::Cow::Borrowed(payload),
            },
        }
    }

    /// A complete key record (header + stored payload) and its header bytes alone.
    #[allow(clippy::too_many_arguments)]
    fn key_record(
        &self,
        class: &str,
        name: &str,
        title: &str,
        obj: &[u8],
        pos: u64,
        now: u32,
        cycle: i16,
    ) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        if obj.len() > i32::MAX as usize / 2 {
            return Err(std::io::Error::other("object too large"));
        }
        let stored = self.compress(obj);
        let rec = raw_key(class, name, title, &stored, obj.len(), pos, BEGIN, now, cycle);
        let hl = key_len(class, name, title);
        let hdr = rec.get(..hl).map(|s| s.to_vec()).unwrap_or_default();
        Ok((rec, hdr))
    }

    /// Serializes the TTree (v20) with its branches and leaves.
    fn tree_object(&self, branches: &[DiskBranch<'_>], metas: &[BranchOut], entries: usize, origin: u64) -> Vec<u8> {
        let mut ow = ObjWriter::new(origin);
        let mut w = WBuf::new();
        let tot: i64 = metas.iter().map(|m| m.tot).sum();
        let zip: i64 = metas.iter().map(|m| m.zip).sum();
        let at = w.begin_obj(20);
        tnamed(&mut w, &self.tree_name, &self.title, 0x0300_0008);
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
        w.i64(entries as i64);
        w.i64(tot);
        w.i64(zip);
        w.i64(tot); // fSavedBytes
        w.i64(0); // fFlushedBytes
        w.f64(1.0); // fWeight
        w.i32(0); // fTimerInterval
        w.i32(25); // fScanField
        w.i32(0); // fUpdate
        w.i32(1000); // fDefaultEntryOffsetLen
        w.i32(0); // fNClusterRange
        w.i64(1_000_000_000_000); // fMaxEntries
        w.i64(1_000_000_000_000); // fMaxEntryLoop
        w.i64(0); // fMaxVirtualSize
        w.i64(-300_000_000); // fAutoSave
        w.i64(self.basket_entries as i64); // fAutoFlush
        w.i64(1_000_000); // fEstimate
        w.u8(0); // fClusterRangeEnd (null)
        w.u8(0); // fClusterSize (null)
        io_features(&mut w);
        // fBranches
        let mut leaf_tags: Vec<u32> = Vec::new();
        let mut leaf_by_name: HashMap<&str, u32> = HashMap::new();
        let arr = w.begin_obj(3);
        tobject(&mut w, 0x0300_0000);
        w.tstring("");
        w.i32(branches.len() as i32);
        w.i32(0);
        for (b, m) in branches.iter().zip(metas) {
            let letter = b.elem.leaf_letter();
            let dims = match b.counter {
                Some(c) => format!("[{c}]"),
                None => String::new(),
            };
            let btitle = format!("{}{dims}/{letter}", b.name);
            let count_tag = b.counter.and_then(|c| leaf_by_name.get(c).copied());
            let mut this_leaf = 0u32;
            ow.write_any(&mut w, "TBranch", |ow, w| {
                let at = w.begin_obj(13);
                tnamed(w, b.name, &btitle, 0x0300_0000);
                let a = w.begin_obj(2); // TAttFill
                w.i16(0);
                w.i16(1001);
                w.end_obj(a);
                w.i32(0); // fCompress (0: let the reader decide per basket, as uproot does)
                w.i32(32000); // fBasketSize
                w.i32(if b.counter.is_some() { 1000 } else { 0 }); // fEntryOffsetLen
                w.i32(m.seek.len() as i32); // fWriteBasket
                w.i64(entries as i64); // fEntryNumber
                io_features(w);
                w.i32(0); // fOffset
                let max_baskets = m.seek.len() + 1;
                w.i32(max_baskets as i32);
                w.i32(0); // fSplitLevel
                w.i64(entries as i64);
                w.i64(0); // fFirstEntry
                w.i64(m.tot);
                w.i64(m.zip);
                empty_objarray(w); // fBranches
                                   // fLeaves
                let la = w.begin_obj(3);
                tobject(w, 0x0300_0000);
                w.tstring("");
                w.i32(1);
                w.i32(0);
                let cls = leaf_class_name(b.elem);
                this_leaf = ow.write_any(w, cls, |_, w| {
                    let at = w.begin_obj(1);
                    let lt = w.begin_obj(2);
                    tnamed(w, b.name, &format!("{}{dims}", b.name), 0x0300_0000);
                    w.i32(1); // fLen
                    w.i32(b.elem.size() as i32); // fLenType
                    w.i32(0); // fOffset
                    w.u8(u8::from(b.is_counter)); // fIsRange
                    w.u8(u8::from(matches!(b.elem, ElemType::U8 | ElemType::U16 | ElemType::U32 | ElemType::U64)));
                    w.u32(count_tag.unwrap_or(0)); // fLeafCount (object reference)
                    w.end_obj(lt);
                    min_max(w, b.elem, if b.is_counter { m.max_count } else { 0 });
                    w.end_obj(at);
                });
                w.end_obj(la);
                empty_objarray(w); // fBaskets
                w.u8(1);
                for i in 0..max_baskets {
                    w.i32(m.bytes.get(i).copied().unwrap_or(0));
                }
                w.u8(1);
                for i in 0..max_baskets {
                    w.i64(m.entry.get(i).copied().unwrap_or(if i == m.seek.len() { entries as i64 } else { 0 }));
                }
                w.u8(1);
                for i in 0..max_baskets {
                    w.i64(m.seek.get(i).copied().unwrap_or(0));
                }
                w.tstring(""); // fFileName
                w.end_obj(at);
            });
            leaf_by_name.insert(b.name, this_leaf);
            leaf_tags.push(this_leaf);
        }
        w.end_obj(arr);
        // fLeaves: references to the leaves written above.
        let la = w.begin_obj(3);
        tobject(&mut w, 0x0300_0000);
        w.tstring("");
        w.i32(leaf_tags.len() as i32);
        w.i32(0);
        for t in &leaf_tags {
            w.u32(*t);
        }
        w.end_obj(la);
        w.u32(0); // fAliases
        w.i32(0); // fIndexValues (TArrayD, empty)
        w.i32(0); // fIndex (TArrayI, empty)
        w.u32(0); // fTreeIndex
        w.u32(0); // fFriends
        w.u32(0); // fUserInfo
        w.u32(0); // fBranchRef
        w.end_obj(at);
        w.buf
    }
}

fn io_features(w: &mut WBuf) {
    // ROOT::TIOFeatures is a "foreign" class: version 0 followed by its checksum.
    let at = w.begin_obj(0);
    w.u32(0x1aa1_2f10);
    w.u8(0);
    w.end_obj(at);
}

fn empty_objarray(w: &mut WBuf) {
    let at = w.begin_obj(3);
    tobject(w, 0x0300_0000);
    w.tstring("");
    w.i32(0);
    w.i32(0);
    w.end_obj(at);
}

fn min_max(w: &mut WBuf, t: ElemType, max: i64) {
    match t {
        ElemType::Bool | ElemType::I8 | ElemType::U8 => {
            w.u8(0);
            w.u8(max.clamp(0, 127) as u8);
        }
        ElemType::I16 | ElemType::U16 => {
            w.i16(0);
            w.i16(max.clamp(0, i16::MAX as i64) as i16);
        }
        ElemType::I32 | ElemType::U32 => {
            w.i32(0);
            w.i32(max.clamp(0, i32::MAX as i64) as i32);
        }
        ElemType::I64 | ElemType::U64 => {
            w.i64(0);
            w.i64(max);
        }
        ElemType::F32 => {
            w.f32(0.0);
            w.f32(0.0);
        }
        ElemType::F64 => {
            w.f64(0.0);
            w.f64(0.0);
        }
    }
}

fn leaf_class_name(t: ElemType) -> &'static str {
    match t {
        ElemType::Bool => "TLeafO",
        ElemType::I8 | ElemType::U8 => "TLeafB",
        ElemType::I16 | ElemType::U16 => "TLeafS",
        ElemType::I32 | ElemType::U32 => "TLeafI",
        ElemType::I64 | ElemType::U64 => "TLeafL",
        ElemType::F32 => "TLeafF",
        ElemType::F64 => "TLeafD",
    }
}

enum DiskData<'a> {
    Flat(&'a Values),
    Counts(&'a [u64]),
    Jagged(&'a [u64], &'a Values),
}

struct DiskBranch<'a> {
    name: &'a str,
    elem: ElemType,
    data: DiskData<'a>,
    counter: Option<&'a str>,
    is_counter: bool,
}

impl DiskBranch<'_> {
    fn max_count(&self) -> i64 {
        match &self.data {
            DiskData::Counts(o) => o.windows(2).map(|w| (w[1] - w[0]) as i64).max().unwrap_or(0),
            _ => 0,
        }
    }
}

/// The file name of `path` and a unique hidden temporary sibling of it.
pub(super) fn tmp_sibling(path: &Path) -> (String, PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fname = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "out.root".into());
    let tmp = dir.join(format!(".{fname}.tmp-{}-{}", std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    (fname, tmp)
}

/// Writes a ROOT file with one TTree of flat branches chunk by chunk: each
/// [`write_chunk`](Self::write_chunk) call appends one basket per branch, and
/// [`finish`](Self::finish) writes the TTree metadata (basket seek, size and
/// first-entry arrays), the streamer list and the header. Memory use is one
/// chunk plus a few numbers per basket, whatever the number of entries.
///
/// The file is written under a hidden temporary sibling name and renamed into
/// place by `finish`; dropping the writer before that (an error, a panic)
/// removes the temporary file, so `path` never holds a partial file.
///
/// ```ignore
/// use root::{Compression, ElemType, StreamingTreeWriter, Values};
/// let mut w = StreamingTreeWriter::create(path, "Events", &[("x", ElemType::F32)], Compression::default(), 1 << 20)?;
/// w.write_chunk(&[Values::F32(vec![1.0, 2.0])])?;
/// w.write_chunk(&[Values::F32(vec![3.0])])?;
/// w.finish()?;
/// ```
pub struct StreamingTreeWriter {
    config: TreeWriter,
    metas: Vec<BranchOut>,
    entries: usize,
    out: Option<BufWriter<File>>,
    path: PathBuf,
    tmp: PathBuf,
    fname: String,
    pos: u64,
    now: u32,
    uuid: [u8; 16],
    nbytes_name: usize,
}

impl StreamingTreeWriter {
    /// Creates the temporary file and reserves its header. `branches` are
    /// (name, type) of the flat branches in order; `chunk_hint` is the
    /// expected entries per chunk (recorded as the tree's auto-flush size).
    ///
    /// # Errors
    /// An invalid or repeated branch name, an invalid tree name, no branches,
    /// or the temporary file cannot be created in the target directory.
    pub fn create(
        path: &Path,
        tree_name: &str,
        branches: &[(&str, ElemType)],
        compression: Compression,
        chunk_hint: usize,
    ) -> Result<Self, RootError> {
        let ps = path_str(path);
        let invalid = |detail: String| RootError::InvalidArgument {
            path: ps.clone(),
            context: format!("tree '{tree_name}': "),
            detail,
        };
        if tree_name.is_empty() || tree_name.contains(['/', ';', '\0']) {
            return Err(invalid(format!("invalid tree name {tree_name:?}")));
        }
        if branches.is_empty() {
            return Err(invalid("no branches to write".into()));
        }
        let mut config = TreeWriter::new(tree_name);
        config.compression(compression).basket_entries(chunk_hint);
        for (name, elem) in branches {
            config.add_branch(name, Values::with_capacity(*elem, 0)).map_err(|e| match e {
                RootError::InvalidArgument { context, detail, .. } => {
                    RootError::InvalidArgument { path: ps.clone(), context, detail }
                }
                other => other,
            })?;
        }
        let (fname, tmp) = tmp_sibling(path);
        let file = File::create(&tmp).map_err(|e| RootError::Io {
            path: ps.clone(),
            context: "creating temporary file: ".into(),
            source: e,
        })?;
        let mut w = StreamingTreeWriter {
            metas: branches.iter().map(|_| BranchOut::default()).collect(),
            config,
            entries: 0,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            path: path.to_path_buf(),
            tmp,
            now: datime_now(),
            uuid: uuid_bytes(&fname),
            fname,
            pos: 0,
            nbytes_name: 0,
        };
        let nbytes_name = key_len("TFile", &w.fname, "") + tstring_len(&w.fname) + tstring_len("");
        let top_len = nbytes_name + DIR_RECORD;
        w.nbytes_name = nbytes_name;
        w.pos = BEGIN + top_len as u64;
        let reserve = vec![0u8; BEGIN as usize + top_len];
        w.out_mut()?.write_all(&reserve).map_err(|e| w.io(e, "writing: "))?;
        Ok(w)
    }

    fn io(&self, e: std::io::Error, what: &str) -> RootError {
        RootError::Io { path: path_str(&self.path), context: what.to_string(), source: e }
    }

    fn out_mut(&mut self) -> Result<&mut BufWriter<File>, RootError> {
        let e = std::io::Error::other("the writer is already finished");
        let ps = path_str(&self.path);
        self.out.as_mut().ok_or(RootError::Io { path: ps, context: String::new(), source: e })
    }

    /// Entries written so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Appends one chunk: one [`Values`] per branch, in the order given to
    /// [`create`](Self::create), all of the same length and type; writes one
    /// basket per branch. An empty chunk writes nothing.
    ///
    /// # Errors
    /// A wrong number of columns, a column of the wrong type or length, or I/O.
    pub fn write_chunk(&mut self, columns: &[Values]) -> Result<(), RootError> {
        let ps = path_str(&self.path);
        let invalid = |detail: String| RootError::InvalidArgument {
            path: ps.clone(),
            context: format!("tree '{}': ", self.config.tree_name),
            detail,
        };
        let names: Vec<String> = self.config.branches.iter().map(|b| b.name().to_string()).collect();
        if columns.len() != names.len() {
            return Err(invalid(format!("chunk has {} columns for {} branches", columns.len(), names.len())));
        }
        let n = columns.first().map_or(0, Values::len);
        for ((c, b), name) in columns.iter().zip(&self.config.branches).zip(&names) {
            let want = match b {
                WBranch::Flat { values, .. } | WBranch::Jagged { values, .. } => values.elem_type(),
            };
            if c.elem_type() != want || c.len() != n {
                return Err(invalid(format!(
                    "chunk column of branch '{name}' is {} x {}, expected {n} x {want}",
                    c.len(),
                    c.elem_type()
                )));
            }
        }
        if n == 0 {
            return Ok(());
        }
        let start = self.entries;
        for (i, (c, name)) in columns.iter().zip(&names).enumerate() {
            let b = DiskBranch { name, elem: c.elem_type(), data: DiskData::Flat(c), counter: None, is_counter: false };
            let (key, objlen, nbytes) =
                self.config.basket(&b, 0, n, self.pos, &self.fname, self.now).map_err(|e| self.io(e, "writing: "))?;
            self.out_mut()?.write_all(&key).map_err(|e| self.io(e, "writing: "))?;
            let bo = &mut self.metas[i];
            bo.bytes.push(nbytes as i32);
            bo.entry.push(start as i64);
            bo.seek.push(self.pos as i64);
            bo.tot += objlen as i64;
            bo.zip += nbytes as i64;
            self.pos += key.len() as u64;
        }
        self.entries += n;
        Ok(())
    }

    /// Writes the tree metadata and header, fsyncs and renames the file into place.
    ///
    /// # Errors
    /// I/O (the temporary file is removed).
    pub fn finish(mut self) -> Result<(), RootError> {
        let mut w = self.out.take().ok_or_else(|| self.io(std::io::Error::other("already finished"), ""))?;
        let branches = self.config.layout();
        let tail = Tail { pos: self.pos, now: self.now, uuid: self.uuid, nbytes_name: self.nbytes_name };
        self.config
            .write_tail(&mut w, &self.fname, &branches, &self.metas, self.entries, tail)
            .map_err(|e| self.io(e, "writing: "))?;
        let file = w.into_inner().map_err(|e| self.io(e.into_error(), "writing: "))?;
        file.sync_all().map_err(|e| self.io(e, "fsync: "))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| self.io(e, "renaming temporary file: "))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for StreamingTreeWriter {
    fn drop(&mut self) {
        self.out = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Where the tail of a file starts and what the header needs from the head.
struct Tail {
    pos: u64,
    now: u32,
    uuid: [u8; 16],
    nbytes_name: usize,
}

#[derive(Default)]
struct BranchOut {
    bytes: Vec<i32>,
    entry: Vec<i64>,
    seek: Vec<i64>,
    tot: i64,
    zip: i64,
    max_count: i64,
}

pub(super) fn tstring_len(s: &str) -> usize {
    let n = s.len();
    if n < 255 {
        1 + n
    } else {
        5 + n
    }
}

/// Length of a 64-bit key header with these strings.
pub(super) fn key_len(class: &str, name: &str, title: &str) -> usize {
    4 + 2 + 4 + 4 + 2 + 2 + 8 + 8 + tstring_len(class) + tstring_len(name) + tstring_len(title)
}

/// A key header followed by `stored` (objlen is the uncompressed size).
#[allow(clippy::too_many_arguments)]
pub(super) fn raw_key(
    class: &str,
    name: &str,
    title: &str,
    stored: &[u8],
    objlen: usize,
    pos: u64,
    pdir: u64,
    now: u32,
    cycle: i16,
) -> Vec<u8> {
    let kl = key_len(class, name, title);
    let mut k = WBuf::new();
    k.i32((kl + stored.len()) as i32);
    k.i16(KEY_VERSION);
    k.i32(objlen as i32);
    k.u32(now);
    k.i16(kl as i16);
    k.i16(cycle);
    k.i64(pos as i64);
    k.i64(pdir as i64);
    k.tstring(class);
    k.tstring(name);
    k.tstring(title);
    k.bytes(stored);
    k.buf
}

/// Current time in ROOT's `TDatime` packing (UTC).
pub(super) fn datime_now() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    (((year - 1995).clamp(0, 63) as u32) << 26)
        | ((month as u32) << 22)
        | ((day as u32) << 17)
        | ((h as u32) << 12)
        | ((mi as u32) << 6)
        | s as u32
}

/// A version-4-like UUID from time, pid and name (uniqueness is cosmetic).
pub(super) fn uuid_bytes(name: &str) -> [u8; 16] {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
    let mut h = compress::xxh64(name.as_bytes(), nanos ^ u64::from(std::process::id()));
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        h = compress::xxh64(&h.to_le_bytes(), nanos);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}
