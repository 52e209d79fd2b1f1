//! `TTree`, `TBranch`, `TBranchElement` and `TLeaf` metadata.
//!
//! The TTree key's payload is a `TBufferFile` stream (uproot `models/TTree.py`,
//! `models/TBranch.py`, `models/TLeaf.py`, `models/TObjArray.py`,
//! `deserialization.py`; groot `rtree/tree.go`, `rtree/branch.go`,
//! `rtree/leaf.go`). Each versioned object starts with a 4-byte byte count
//! (flag `0x40000000`) and a 2-byte class version; the parser reads the members
//! it needs and then jumps to the end given by the byte count, so unknown
//! trailing members never derail it. Polymorphic members (`TObjArray`
//! elements, `fLeafCount`) are written with `WriteObjectAny`: a byte count, then
//! either `kNewClassTag` + a NUL-terminated class name, a class reference
//! (`0x80000000 | offset`), or a plain object reference (offset of an earlier
//! object, 0 for null). Offsets count from the start of the key record, i.e.
//! payload position + `fKeylen`, plus `kMapOffset` (2).
//!
//! Supported layouts: `TTree` v16-v20, `TBranch` v10-v13, `TBranchElement`
//! v8-v10, all `TLeaf` subclasses (only their common `TLeaf` part is decoded),
//! and `TBasket`s embedded in `TBranch::fBaskets` (written when a file is
//! saved with baskets still in memory, e.g. CMS NanoAOD).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::cursor::Cursor;
use super::error::{ctx_prefix, malformed, Fail, PResult, RootError};
use super::file::{FileInner, KeyHeader};
use super::read;
use super::values::{Column, ElemType};

const K_BYTE_COUNT: u32 = 0x4000_0000;
const K_CLASS_MASK: u32 = 0x8000_0000;
const K_NEW_CLASS: u32 = 0xFFFF_FFFF;
const K_MAP_OFFSET: u64 = 2;
const K_IS_REFERENCED: u32 = 1 << 4;
const MAX_NESTING: usize = 64;

/// How the values of a branch are laid out in its baskets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchKind {
    /// One value per entry.
    Scalar(ElemType),
    /// A fixed number of values per entry (`x[3]`); read as a regular jagged column.
    Fixed(ElemType, usize),
    /// A variable number per entry given by the counter leaf (`x[n]`).
    Counted(ElemType, String),
    /// `std::vector<T>` of a numeric `T`.
    Vector(ElemType),
    /// Anything else: `(type name, reason)`.
    Unsupported(String, String),
}

/// Description of one branch.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchInfo {
    /// Branch name.
    pub name: String,
    /// Branch title (for leaf lists, e.g. `Muon_Px[NMuon]/F`).
    pub title: String,
    /// ROOT class (`TBranch`, `TBranchElement`, ...).
    pub class: String,
    /// Type in the spelling uproot's `typename` uses (`float`, `float[]`, `std::vector<int32_t>`, ...).
    pub type_name: String,
    /// Layout.
    pub kind: BranchKind,
    /// Number of entries the branch claims.
    pub entries: u64,
}

/// Basket bookkeeping of one branch.
#[derive(Clone, Debug, Default)]
pub(super) struct BranchMeta {
    pub(super) name: String,
    pub(super) title: String,
    pub(super) class: String,
    pub(super) entries: i64,
    pub(super) write_basket: i32,
    pub(super) basket_bytes: Vec<i32>,
    pub(super) basket_entry: Vec<i64>,
    pub(super) basket_seek: Vec<i64>,
    pub(super) embedded: Vec<EmbeddedBasket>,
    pub(super) leaves: Vec<LeafMeta>,
    pub(super) element: Option<ElementMeta>,
    pub(super) has_children: bool,
}

/// `TBranchElement` members that matter for typing.
#[derive(Clone, Debug, Default)]
pub(super) struct ElementMeta {
    pub(super) class_name: String,
    /// `fType` (0 top-level/member, 3/31 TClonesArray, 4/41 STL, ...).
    pub(super) ftype: i32,
    pub(super) streamer_type: i32,
}

/// `TLeaf` members that matter for typing.
#[derive(Clone, Debug, Default)]
pub(super) struct LeafMeta {
    pub(super) class: String,
    pub(super) name: String,
    pub(super) title: String,
    pub(super) len: i32,
    pub(super) len_type: i32,
    pub(super) unsigned: bool,
    pub(super) count: Option<String>,
}

/// A basket stored inside the TTree metadata.
#[derive(Clone, Debug)]
pub(super) struct EmbeddedBasket {
    pub(super) nevbuf: usize,
    pub(super) data: Vec<u8>,
    /// `nevbuf + 1` offsets into `data` when the basket has an entry-offset table.
    pub(super) offsets: Option<Vec<usize>>,
}

/// An open TTree: its branch metadata, ready to read columns.
#[derive(Debug, Clone)]
pub struct Tree {
    pub(super) file: Arc<FileInner>,
    pub(super) name: String,
    pub(super) title: String,
    pub(super) entries: u64,
    pub(super) branches: Vec<BranchMeta>,
    pub(super) infos: Vec<BranchInfo>,
    pub(super) index: HashMap<String, usize>,
}

#[derive(Clone, Debug)]
enum RefEntry {
    Class(String),
    Leaf(String),
    Object,
}

enum Any<T> {
    Null,
    Ref(Option<RefEntry>),
    Obj(T),
}

struct Parser<'a> {
    c: Cursor<'a>,
    refs: HashMap<u64, RefEntry>,
    depth: usize,
    /// Name of the leaf just parsed, registered by `read_any` under its reference key.
    pending_leaf: Option<String>,
}

impl<'a> Parser<'a> {
    /// Reads a byte count + version; returns `(version, end position)`.
    fn header(&mut self, what: &str) -> PResult<(u16, usize)> {
        let start = self.c.pos();
        let raw = self.c.u32()?;
        if raw & K_BYTE_COUNT == 0 {
            return Err(malformed(format!("{what} at byte {start} has no byte count")));
        }
        let cnt = (raw & !K_BYTE_COUNT) as usize;
        let end = start + 4 + cnt;
        if end > self.c.len() {
            return Err(Fail::Truncated(format!(
                "{what} at byte {start} claims {cnt} bytes, buffer has {}",
                self.c.len().saturating_sub(start + 4)
            )));
        }
        let version = self.c.u16()?;
        if version & 0x4000 != 0 {
            return Err(Fail::Unsupported(what.into(), "member-wise streaming".into()));
        }
        Ok((version, end))
    }

    fn skip_object(&mut self, what: &str) -> PResult<()> {
        let (_, end) = self.header(what)?;
        self.c.seek(end)
    }

    fn tobject(&mut self) -> PResult<()> {
        let version = self.c.i16()?;
        if version as u16 & 0x4000 != 0 {
            self.c.skip(4)?;
        }
        let _id = self.c.u32()?;
        let bits = self.c.u32()?;
        if bits & K_IS_REFERENCED != 0 {
            self.c.skip(2)?;
        }
        Ok(())
    }

    fn tnamed(&mut self) -> PResult<(String, String)> {
        let (_, end) = self.header("TNamed")?;
        self.tobject()?;
        let name = self.c.tstring()?;
        let title = self.c.tstring()?;
        self.c.seek(end)?;
        Ok((name, title))
    }

    /// `TBufferFile::ReadObjectAny`.
    fn read_any<T>(&mut self, mut parse: impl FnMut(&mut Self, &str) -> PResult<T>) -> PResult<Any<T>> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(malformed("objects nested too deeply"));
        }
        let r = self.read_any_inner(&mut parse);
        self.depth -= 1;
        r
    }

    fn read_any_inner<T>(&mut self, parse: &mut impl FnMut(&mut Self, &str) -> PResult<T>) -> PResult<Any<T>> {
        let beg = self.c.displacement();
        let start_pos = self.c.pos();
        let bcnt = self.c.u32()?;
        let (tag, end, start) = if bcnt & K_BYTE_COUNT != 0 && bcnt != K_NEW_CLASS {
            let cnt = (bcnt & !K_BYTE_COUNT) as usize;
            let end = start_pos + 4 + cnt;
            if end > self.c.len() {
                return Err(Fail::Truncated(format!(
                    "object at byte {start_pos} claims {cnt} bytes, buffer has {}",
                    self.c.len().saturating_sub(start_pos + 4)
                )));
            }
            let start = self.c.displacement();
            (self.c.u32()?, Some(end), Some(start))
        } else {
            (bcnt, None, None)
        };
        if tag & K_CLASS_MASK == 0 {
            if tag == 0 {
                return Ok(Any::Null);
            }
            let found = self.refs.get(&(tag as u64)).cloned();
            if let Some(e) = end {
                self.c.seek(e)?;
            }
            return Ok(Any::Ref(found));
        }
        let class = if tag == K_NEW_CLASS {
            let name = self.c.cstring(256)?;
            let key = match start {
                Some(s) => s + K_MAP_OFFSET,
                None => self.refs.len() as u64 + 1,
            };
            self.refs.insert(key, RefEntry::Class(name.clone()));
            name
        } else {
            let r = (tag & !K_CLASS_MASK) as u64;
            match self.refs.get(&r) {
                Some(RefEntry::Class(n)) => n.clone(),
                _ => {
                    return Err(malformed(format!("unknown class reference {r} at byte {start_pos}")));
                }
            }
        };
        self.pending_leaf = None;
        let obj = parse(self, &class)?;
        let key = match end {
            Some(_) => beg + K_MAP_OFFSET,
            None => self.refs.len() as u64 + 1,
        };
        let entry = match self.pending_leaf.take() {
            Some(n) => RefEntry::Leaf(n),
            None => RefEntry::Object,
        };
        self.refs.insert(key, entry);
        if let Some(e) = end {
            self.c.seek(e)?;
        }
        Ok(Any::Obj(obj))
    }

    /// Registers a parsed leaf's name under the key `read_any` used.
    fn objarray<T>(
        &mut self,
        what: &str,
        mut parse: impl FnMut(&mut Self, &str) -> PResult<Option<T>>,
    ) -> PResult<Vec<T>> {
        let (_, end) = self.header(what)?;
        self.tobject()?;
        let _name = self.c.tstring()?;
        let n = self.c.i32()?;
        let _lower = self.c.i32()?;
        if n < 0 || (n as usize).saturating_mul(4) > end.saturating_sub(self.c.pos()) {
            return Err(malformed(format!("{what} claims {n} elements")));
        }
        let mut out = Vec::new();
        for _ in 0..n {
            if let Any::Obj(Some(x)) = self.read_any(&mut parse)? {
                out.push(x);
            }
        }
        self.c.seek(end)?;
        Ok(out)
    }

    fn ttree(&mut self) -> PResult<(String, String, i64, Vec<BranchMeta>)> {
        let (version, end) = self.header("TTree")?;
        if !(16..=20).contains(&version) {
            return Err(Fail::Unsupported(
                format!("TTree version {version}"),
                "only versions 16-20 (ROOT >= 5.30) are supported".into(),
            ));
        }
        let (name, title) = self.tnamed()?;
        self.skip_object("TAttLine")?;
        self.skip_object("TAttFill")?;
        self.skip_object("TAttMarker")?;
        let entries = self.c.i64()?;
        // Fixed-size members between fEntries and fBranches (uproot `_ttreeNN_format1`).
        let (n_q_before, n_i, has_ncluster, n_q_after) = match version {
            16 => (3, 3, false, 5),
            17 => (3, 4, false, 5),
            18 => (4, 4, false, 6),
            _ => (4, 4, true, 6),
        };
        self.c.skip(8 * n_q_before + 8 + 4 * n_i)?;
        let ncluster = if has_ncluster { self.c.i32()? } else { 0 };
        self.c.skip(8 * n_q_after)?;
        if has_ncluster {
            if ncluster < 0 {
                return Err(malformed(format!("fNClusterRange {ncluster}")));
            }
            let n = ncluster as usize;
            self.c.skip(1)?;
            self.c.skip(n.saturating_mul(8))?;
            self.c.skip(1)?;
            self.c.skip(n.saturating_mul(8))?;
        }
        if version >= 20 {
            self.skip_object("TIOFeatures")?;
        }
        let mut branches = Vec::new();
        let top = self.objarray("TTree::fBranches", |p, cls| p.branch(cls))?;
        for b in top {
            flatten(b, &mut branches);
        }
        self.c.seek(end)?;
        Ok((name, title, entries, branches))
    }

    fn branch(&mut self, cls: &str) -> PResult<Option<BranchNode>> {
        if cls == "TBranch" {
            return self.tbranch_body(cls).map(|(m, c)| Some(BranchNode(m, c)));
        }
        if !cls.starts_with("TBranch") {
            return Ok(None);
        }
        let (version, end) = self.header(cls)?;
        let (mut meta, children) = self.tbranch_body(cls)?;
        if cls == "TBranchElement" && (8..=10).contains(&version) {
            let class_name = self.c.tstring()?;
            let _parent = self.c.tstring()?;
            let _clones = self.c.tstring()?;
            let _checksum = self.c.u32()?;
            if version >= 10 {
                self.c.i16()?;
            } else {
                self.c.i32()?;
            }
            let _id = self.c.i32()?;
            let ftype = self.c.i32()?;
            let streamer_type = self.c.i32()?;
            meta.element = Some(ElementMeta { class_name, ftype, streamer_type });
        } else if cls == "TBranchElement" {
            meta.element = Some(ElementMeta {
                class_name: format!("TBranchElement version {version}"),
                ftype: i32::MIN,
                streamer_type: i32::MIN,
            });
        }
        self.c.seek(end)?;
        Ok(Some(BranchNode(meta, children)))
    }

    fn tbranch_body(&mut self, cls: &str) -> PResult<(BranchMeta, Vec<BranchNode>)> {
        let (version, end) = self.header("TBranch")?;
        if !(10..=13).contains(&version) {
            return Err(Fail::Unsupported(
                format!("TBranch version {version}"),
                "only versions 10-13 are supported".into(),
            ));
        }
        let (name, title) = self.tnamed()?;
        self.skip_object("TAttFill")?;
        let _compress = self.c.i32()?;
        let _basket_size = self.c.i32()?;
        let _entry_offset_len = self.c.i32()?;
        let write_basket = self.c.i32()?;
        let _entry_number = self.c.i64()?;
        if version >= 13 {
            self.skip_object("TIOFeatures")?;
        }
        let _offset = self.c.i32()?;
        let max_baskets = self.c.i32()?;
        let _split = self.c.i32()?;
        let entries = self.c.i64()?;
        if version >= 11 {
            let _first = self.c.i64()?;
        }
        let _tot = self.c.i64()?;
        let _zip = self.c.i64()?;
        let children = self.objarray("TBranch::fBranches", |p, c| p.branch(c))?;
        let leaves = self.objarray("TBranch::fLeaves", |p, c| p.leaf(c))?;
        let embedded = self.objarray("TBranch::fBaskets", |p, c| p.embedded_basket(c))?;
        if max_baskets < 0 {
            return Err(malformed(format!("branch '{name}': fMaxBaskets {max_baskets}")));
        }
        let n = max_baskets as usize;
        self.c.skip(1)?;
        let basket_bytes = self.c.vec_of(n, 4, |c| c.i32())?;
        self.c.skip(1)?;
        let basket_entry = self.c.vec_of(n, 8, |c| c.i64())?;
        self.c.skip(1)?;
        let basket_seek = self.c.vec_of(n, 8, |c| c.i64())?;
        self.c.seek(end)?;
        let meta = BranchMeta {
            name,
            title,
            class: cls.to_string(),
            entries,
            write_basket,
            basket_bytes,
            basket_entry,
            basket_seek,
            embedded,
            leaves,
            element: None,
            has_children: !children.is_empty(),
        };
        Ok((meta, children))
    }

    fn leaf(&mut self, cls: &str) -> PResult<Option<LeafMeta>> {
        if !cls.starts_with("TLeaf") {
            return Ok(None);
        }
        let (_, end) = self.header(cls)?;
        let (_, lend) = self.header("TLeaf")?;
        let (name, title) = self.tnamed()?;
        let len = self.c.i32()?;
        let len_type = self.c.i32()?;
        let _offset = self.c.i32()?;
        let _is_range = self.c.u8()?;
        let unsigned = self.c.u8()? != 0;
        let count = match self.read_any(|p, c| p.leaf(c))? {
            Any::Null => None,
            Any::Ref(Some(RefEntry::Leaf(n))) => Some(n),
            Any::Ref(_) => Some(String::new()),
            Any::Obj(Some(l)) => Some(l.name),
            Any::Obj(None) => Some(String::new()),
        };
        self.c.seek(lend)?;
        self.c.seek(end)?;
        self.pending_leaf = Some(name.clone());
        Ok(Some(LeafMeta { class: cls.to_string(), name, title, len, len_type, unsigned, count }))
    }

    fn embedded_basket(&mut self, cls: &str) -> PResult<Option<EmbeddedBasket>> {
        if cls != "TBasket" {
            return Ok(None);
        }
        let obj_start = self.c.pos();
        let nbytes = self.c.i32()?;
        let _version = self.c.i16()?;
        let _objlen = self.c.i32()?;
        let _datime = self.c.u32()?;
        let keylen = self.c.i16()?;
        let _cycle = self.c.i16()?;
        if keylen < 19 {
            return Err(malformed(format!("embedded basket fKeylen {keylen}")));
        }
        self.c.seek(obj_start + keylen as usize - 19)?;
        let _bversion = self.c.u16()?;
        let _buffer_size = self.c.i32()?;
        let nevbufsize = self.c.i32()?;
        let nevbuf = self.c.i32()?;
        let last = self.c.i32()?;
        self.c.skip(1)?;
        if nbytes > keylen as i32 {
            // A header-only copy of a basket that lives on disk.
            return Ok(None);
        }
        let border = last as i64 - keylen as i64;
        if nevbuf < 0 || border < 0 || border as usize > self.c.remaining() {
            return Err(malformed(format!("embedded basket: fNevBuf {nevbuf}, fLast {last}, fKeylen {keylen}")));
        }
        let n = nevbuf as usize;
        let border = border as usize;
        let has_offsets = (nevbufsize as i64) * (nevbuf as i64) + keylen as i64 != last as i64;
        let offsets = if has_offsets {
            let _count = self.c.i32()?;
            let raw = self.c.vec_of(n, 4, |c| c.i32())?;
            let mut offs = Vec::with_capacity(n + 1);
            for r in raw {
                let o = r as i64 - keylen as i64;
                if o < 0 || o as usize > border {
                    return Err(malformed(format!("embedded basket entry offset {r} outside data")));
                }
                offs.push(o as usize);
            }
            offs.push(border);
            Some(offs)
        } else {
            None
        };
        self.c.skip(keylen as usize)?;
        let data = self.c.bytes(border)?.to_vec();
        Ok(Some(EmbeddedBasket { nevbuf: n, data, offsets }))
    }
}

/// A branch with its sub-branches, before flattening.
struct BranchNode(BranchMeta, Vec<BranchNode>);

fn flatten(b: BranchNode, out: &mut Vec<BranchMeta>) {
    let BranchNode(meta, children) = b;
    out.push(meta);
    for c in children {
        flatten(c, out);
    }
}

/// Maps a C++/ROOT scalar type name to an element type.
fn elem_from_cpp(name: &str) -> Option<ElemType> {
    Some(match name.trim() {
        "bool" | "Bool_t" => ElemType::Bool,
        "char" | "Char_t" | "int8_t" | "signed char" => ElemType::I8,
        "unsigned char" | "UChar_t" | "uint8_t" | "Byte_t" => ElemType::U8,
        "short" | "Short_t" | "int16_t" | "short int" => ElemType::I16,
        "unsigned short" | "UShort_t" | "uint16_t" | "unsigned short int" => ElemType::U16,
        "int" | "Int_t" | "int32_t" => ElemType::I32,
        "unsigned int" | "UInt_t" | "uint32_t" | "unsigned" => ElemType::U32,
        "long" | "Long_t" | "long long" | "Long64_t" | "int64_t" | "long int" => ElemType::I64,
        "unsigned long" | "ULong_t" | "unsigned long long" | "ULong64_t" | "uint64_t" | "unsigned long int" => {
            ElemType::U64
        }
        "float" | "Float_t" => ElemType::F32,
        "double" | "Double_t" => ElemType::F64,
        _ => return None,
    })
}

fn leaf_elem(leaf: &LeafMeta) -> Option<ElemType> {
    let u = leaf.unsigned;
    Some(match leaf.class.as_str() {
        "TLeafO" => ElemType::Bool,
        "TLeafB" => {
            if u {
                ElemType::U8
            } else {
                ElemType::I8
            }
        }
        "TLeafS" => {
            if u {
                ElemType::U16
            } else {
                ElemType::I16
            }
        }
        "TLeafI" => {
            if u {
                ElemType::U32
            } else {
                ElemType::I32
            }
        }
        "TLeafL" | "TLeafG" => {
            if u {
                ElemType::U64
            } else {
                ElemType::I64
            }
        }
        "TLeafF" => ElemType::F32,
        "TLeafD" => ElemType::F64,
        _ => return None,
    })
}

fn classify(b: &BranchMeta) -> BranchKind {
    let unsupported = |t: &str, r: &str| BranchKind::Unsupported(t.to_string(), r.to_string());
    if let Some(el) = &b.element {
        let cname: String = el.class_name.chars().filter(|c| !c.is_whitespace()).collect();
        let inner =
            cname.strip_prefix("std::").unwrap_or(&cname).strip_prefix("vector<").and_then(|s| s.strip_suffix('>'));
        if let Some(inner) = inner {
            let inner = inner.strip_prefix("std::").unwrap_or(inner);
            // Restore the spaces of multi-word types.
            let spaced = inner.replace("unsigned", "unsigned ").replace("longlong", "long long").replace("  ", " ");
            if let Some(t) = elem_from_cpp(&spaced) {
                if b.has_children {
                    return unsupported(&el.class_name, "split std::vector branch");
                }
                if el.ftype != 0 && el.ftype != -1 {
                    return unsupported(&el.class_name, &format!("TBranchElement fType {}", el.ftype));
                }
                if el.streamer_type != -1 && el.streamer_type != 500 {
                    return unsupported(&el.class_name, &format!("streamer type {}", el.streamer_type));
                }
                return BranchKind::Vector(t);
            }
            return unsupported(&el.class_name, "only std::vector of bool/integer/float/double is supported");
        }
        return unsupported(
            &el.class_name,
            "only flat numeric leaves, counted arrays and std::vector<number> are supported",
        );
    }
    if b.class != "TBranch" {
        return unsupported(&b.class, "branch class not supported");
    }
    let leaf = match b.leaves.as_slice() {
        [l] => l,
        [] => return unsupported("(no leaf)", "branch has no leaf"),
        ls => {
            return unsupported(&b.title, &format!("leaf lists with {} leaves are not supported", ls.len()));
        }
    };
    let Some(t) = leaf_elem(leaf) else {
        let tn = match leaf.class.as_str() {
            "TLeafC" => "char*",
            "TLeafF16" => "Float16_t",
            "TLeafD32" => "Double32_t",
            other => other,
        };
        return unsupported(tn, &format!("leaf class {} is not supported", leaf.class));
    };
    if leaf.len_type > 0 && leaf.len_type as usize != t.size() {
        return unsupported(&leaf.class, &format!("fLenType {} for {}", leaf.len_type, t));
    }
    match &leaf.count {
        Some(c) if c.is_empty() => unsupported(&leaf.title, "counter leaf could not be resolved"),
        Some(c) => {
            if leaf.len > 1 {
                unsupported(&leaf.title, "counted arrays with fixed inner dimensions")
            } else {
                BranchKind::Counted(t, c.clone())
            }
        }
        None if leaf.len > 1 => BranchKind::Fixed(t, leaf.len as usize),
        None if leaf.len < 1 => unsupported(&leaf.title, &format!("fLen {}", leaf.len)),
        None => BranchKind::Scalar(t),
    }
}

fn type_name(kind: &BranchKind) -> String {
    match kind {
        BranchKind::Scalar(t) => t.cpp_name().to_string(),
        BranchKind::Fixed(t, n) => format!("{}[{n}]", t.cpp_name()),
        BranchKind::Counted(t, _) => format!("{}[]", t.cpp_name()),
        BranchKind::Vector(t) => format!("std::vector<{}>", t.cpp_name()),
        BranchKind::Unsupported(t, _) => t.clone(),
    }
}

/// Levenshtein distance (for "did you mean").
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        if let Some(c0) = cur.first_mut() {
            *c0 = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            if let Some(x) = cur.get_mut(j + 1) {
                *x = sub.min(del).min(ins);
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

impl Tree {
    /// Parses a TTree payload.
    pub(super) fn parse(
        file: Arc<FileInner>,
        name: String,
        key: &KeyHeader,
        payload: &[u8],
    ) -> Result<Tree, RootError> {
        let mut p = Parser {
            c: Cursor::new(payload, key.keylen.max(0) as u64),
            refs: HashMap::new(),
            depth: 0,
            pending_leaf: None,
        };
        let (_n, title, entries, branches) =
            p.ttree().map_err(|f| f.at(&file.path_str, ctx_prefix(&[format!("tree '{name}'")])))?;
        if entries < 0 {
            return Err(RootError::Malformed {
                path: file.path_str.clone(),
                context: ctx_prefix(&[format!("tree '{name}'")]),
                detail: format!("fEntries {entries}"),
            });
        }
        let mut index = HashMap::new();
        let mut infos = Vec::with_capacity(branches.len());
        for (i, b) in branches.iter().enumerate() {
            index.entry(b.name.clone()).or_insert(i);
            let kind = classify(b);
            infos.push(BranchInfo {
                name: b.name.clone(),
                title: b.title.clone(),
                class: b.class.clone(),
                type_name: type_name(&kind),
                kind,
                entries: b.entries.max(0) as u64,
            });
        }
        Ok(Tree { file, name, title, entries: entries as u64, branches, infos, index })
    }

    /// Tree name (as given to [`super::RootFile::tree`], without cycle).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tree title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Number of entries (`fEntries`).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Names of all branches, sub-branches included, in file order.
    pub fn branch_names(&self) -> Vec<String> {
        self.infos.iter().map(|b| b.name.clone()).collect()
    }

    /// Descriptions of all branches.
    pub fn branches(&self) -> &[BranchInfo] {
        &self.infos
    }

    /// Description (type, class, entries) of one branch.
    pub fn branch_info(&self, name: &str) -> Result<&BranchInfo, RootError> {
        let i = self.lookup(name)?;
        self.infos.get(i).ok_or_else(|| self.not_found(name))
    }

    pub(super) fn lookup(&self, name: &str) -> Result<usize, RootError> {
        self.index.get(name).copied().ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> RootError {
        let mut scored: Vec<(usize, &str)> = self
            .infos
            .iter()
            .map(|b| {
                let d = edit_distance(name, &b.name);
                let lname = b.name.to_lowercase();
                let lq = name.to_lowercase();
                let d = if !lq.is_empty() && (lname.contains(&lq) || lq.contains(&lname)) { d.min(2) } else { d };
                (d, b.name.as_str())
            })
            .collect();
        scored.sort();
        let close: Vec<&str> =
            scored.iter().filter(|(d, _)| *d <= name.chars().count().max(4) / 2 + 1).take(5).map(|(_, n)| *n).collect();
        let suggestions = if close.is_empty() {
            let some: Vec<&str> = self.infos.iter().take(5).map(|b| b.name.as_str()).collect();
            if some.is_empty() {
                " (the tree has no branches)".to_string()
            } else {
                format!(" (branches include: {})", some.join(", "))
            }
        } else {
            format!(" (did you mean: {}?)", close.join(", "))
        };
        RootError::BranchNotFound {
            path: self.file.path_str.clone(),
            tree: self.name.clone(),
            branch: name.to_string(),
            suggestions,
        }
    }

    /// Reads a whole branch.
    pub fn read(&self, name: &str) -> Result<Column, RootError> {
        read::read_branch(self, name, None)
    }

    /// Reads entries `range` of a branch; only the baskets that overlap it are read.
    pub fn read_range(&self, name: &str, range: Range<u64>) -> Result<Column, RootError> {
        read::read_branch(self, name, Some(range))
    }
}
