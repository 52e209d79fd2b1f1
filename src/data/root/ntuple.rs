//! RNTuple (ROOT 7's columnar format), binary format version 1.0: the
//! `ROOT::RNTuple` anchor, the header, footer and page-list envelopes, and
//! the pages of numeric columns.
//!
//! Layout (ROOT `tree/ntuple/doc/BinaryFormatSpecification.md`, "RNTuple
//! Binary Format Specification 1.0.0.1"; uproot `models/RNTuple.py` read for
//! comparison):
//!
//! * **Anchor**: the payload of a `ROOT::RNTuple` key, big-endian like every
//!   TKey payload: a 4-byte byte count and a 2-byte class version, then the
//!   format version (epoch, major, minor, patch as u16), seek / compressed
//!   size / length of the header and of the footer envelope, the maximum key
//!   size (u64 each), and an XXH3 checksum.
//! * Everything else is **little-endian**. An **envelope** is a ROOT
//!   compression-block payload (see [`super::compress`]) that decompresses to
//!   a u64 (type id in the low 16 bits, length in the high 48), the payload,
//!   and an XXH3-64 checksum. **Frames**: an i64 size (negative for a list
//!   frame, followed by a u32 item count) that counts the whole frame, so a
//!   reader skips to the frame's end whatever it understood of it.
//!   **Locators**: an i32 size and a u64 file offset (a negative size marks a
//!   non-standard locator; type 1, "large", has a u64 size and offset).
//! * **Header**: feature flags, name, description, writer, then list frames of
//!   field records (versions, parent id, structural role, flags, name, type
//!   name, alias, description, and the array size / source field / type
//!   checksum the flags announce), column records (type, bits on storage,
//!   field id, flags, representation index, first element index if deferred,
//!   value range if quantized), alias columns and extra type information.
//!   Field and column ids are positions in these lists, continued by the
//!   footer's schema extension.
//! * **Footer**: feature flags, header checksum, the schema extension record
//!   frame, and the cluster groups, each with a link to its page list.
//! * **Page list**: header checksum, cluster summaries (first entry, entry
//!   count with flags in the top byte), and per cluster, per column, the page
//!   descriptors (element count, whose sign bit announces a checksum after the
//!   page, and a locator), the column's first element index in the cluster
//!   (negative: the column is suppressed there, another representation is
//!   used) and its compression settings.
//! * **Pages** decompress to `ceil(elements × bits / 8)` bytes. Split columns
//!   store all first bytes, then all second bytes, …; `SplitIndex*` pages are
//!   then delta-encoded (the first value as is) and `SplitInt*` zigzag-encoded.
//!   `Bit` columns pack eight booleans per byte, least significant bit first;
//!   `Real32Trunc` / `Real32Quant` pack their `bits`-wide values the same way.
//!   Index (offset) columns hold per entry the end offset of its collection,
//!   counted from the start of the cluster.
//!
//! What maps onto a [`Column`]: top-level leaf fields of the numeric types
//! (`bool`, `char`, `std::[u]int{8,16,32,64}_t`, `float`, `double`; from any
//! column type the specification allows for them, `Double32_t` and
//! `Float16_t` included), collections of such leaves (`std::vector<T>`,
//! `ROOT::RVec<T>`, untyped collections and projections of them) as
//! [`Column::Jagged`], fixed-size arrays (`std::array<T, N>`) as jagged with N
//! values per entry, `ROOT::RNTupleCardinality<T>` (the collection sizes) and
//! `std::atomic<T>` / enums through their single subfield. Strings, records,
//! variants, nested collections and streamed objects are reported as
//! unsupported, naming the field and its type.
//!
//! The XXH3-64 checksums of the anchor, of every envelope and of the pages
//! that carry one (ROOT writes them by default) are verified, so a corrupted
//! byte there is an error, not a wrong number. Every read is bounds-checked,
//! every length is checked against what is present before memory is reserved.

use std::collections::HashMap;
use std::sync::Arc;

use super::compress;
use super::cursor::Cursor;
use super::error::{ctx_prefix, Fail, PResult, RootError};
use super::file::{FileInner, KeyHeader, MAX_OBJECT};
use super::tree::edit_distance;
use super::values::{Column, ElemType, Values};
use xxhash_rust::xxh3::xxh3_64;

/// Most items (fields, columns, clusters, pages) one list frame may hold; a
/// list must also have at least its items' minimum size in bytes.
const MAX_LIST: usize = 1 << 24;

/// Most zero elements synthesised for a deferred column in one cluster
/// (the only values not backed by bytes in the file).
const MAX_DEFERRED_ZEROS: u64 = 1 << 26;

// ---------------------------------------------------------------------------
// Little-endian reader with frames
// ---------------------------------------------------------------------------

/// Bounds-checked little-endian reader over an envelope payload.
struct Le<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Le<'a> {
    fn new(data: &'a [u8]) -> Self {
        Le { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize) -> PResult<&'a [u8]> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n).and_then(|e| data.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => {
                Err(Fail::Truncated(format!("need {n} bytes at byte {} of a {}-byte record", self.pos, data.len())))
            }
        }
    }

    fn arr<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> PResult<i32> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> PResult<i64> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn f64(&mut self) -> PResult<f64> {
        Ok(f64::from_le_bytes(self.arr()?))
    }

    /// A u32 length and that many UTF-8 bytes.
    fn string(&mut self) -> PResult<String> {
        let n = self.u32()? as usize;
        if n > self.remaining() {
            return Err(Fail::Truncated(format!(
                "string of {n} bytes at byte {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        Ok(String::from_utf8_lossy(self.bytes(n)?).into_owned())
    }

    /// Feature flags: u64 words, continued while the sign bit is set.
    fn feature_flags(&mut self) -> PResult<()> {
        for _ in 0..64 {
            let w = self.u64()?;
            if w & !(1 << 63) != 0 {
                return Err(Fail::Unsupported(
                    format!("feature flags {w:#x}"),
                    "this RNTuple uses format features that this reader does not know".into(),
                ));
            }
            if w >> 63 == 0 {
                return Ok(());
            }
        }
        Err(Fail::Malformed("feature flags never end".into()))
    }

    /// Opens a frame at the current position: returns a reader over the
    /// frame's contents (positioned after its preamble), the item count for a
    /// list frame, and moves this reader past the frame.
    fn frame(&mut self, what: &str) -> PResult<(Le<'a>, Option<usize>)> {
        let start = self.pos;
        let size = self.i64()?;
        let abs = size.unsigned_abs();
        let list = size < 0;
        let pre = if list { 12 } else { 8 };
        let avail = self.data.len().saturating_sub(start);
        if abs < pre as u64 || abs > avail as u64 {
            return Err(Fail::Malformed(format!(
                "{what} frame at byte {start} claims {abs} bytes ({avail} left in the record)"
            )));
        }
        let end = start + abs as usize;
        let items = if list { Some(self.u32()? as usize) } else { None };
        let data = self.data.get(..end).unwrap_or(&[]);
        let inner = Le { data, pos: self.pos };
        self.pos = end;
        Ok((inner, items))
    }

    /// A list frame whose items each take at least `min_item` bytes.
    fn list(&mut self, what: &str, min_item: usize) -> PResult<(Le<'a>, usize)> {
        let (inner, items) = self.frame(what)?;
        let Some(n) = items else {
            return Err(Fail::Malformed(format!("{what}: expected a list frame, found a record frame")));
        };
        if n > MAX_LIST || n.saturating_mul(min_item.max(1)) > inner.remaining() {
            return Err(Fail::Malformed(format!(
                "{what}: list of {n} items does not fit in {} bytes",
                inner.remaining()
            )));
        }
        Ok((inner, n))
    }

    /// A record frame.
    fn record(&mut self, what: &str) -> PResult<Le<'a>> {
        match self.frame(what)? {
            (inner, None) => Ok(inner),
            (_, Some(_)) => Err(Fail::Malformed(format!("{what}: expected a record frame, found a list frame"))),
        }
    }

    /// A locator: (file offset, stored size).
    fn locator(&mut self) -> PResult<Locator> {
        let start = self.pos;
        let size = self.i32()?;
        if size >= 0 {
            let offset = self.u64()?;
            return Ok(Locator { offset, size: size as u64 });
        }
        let head = size as u32;
        let own = (head & 0xffff) as usize;
        let kind = (head >> 24) & 0x7f;
        if kind != 1 {
            return Err(Fail::Unsupported(
                format!("locator type {kind}"),
                "only on-file locators (standard and large) are supported".into(),
            ));
        }
        let size = self.u64()?;
        let offset = self.u64()?;
        if own > self.pos - start {
            self.bytes(own - (self.pos - start))?;
        }
        Ok(Locator { offset, size })
    }
}

// ---------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------

/// A byte range of the file.
#[derive(Clone, Copy, Debug)]
struct Locator {
    offset: u64,
    size: u64,
}

/// Structural roles of fields.
const ROLE_LEAF: u16 = 0;
const ROLE_COLLECTION: u16 = 1;
const ROLE_RECORD: u16 = 2;
const ROLE_VARIANT: u16 = 3;
const ROLE_STREAMER: u16 = 4;

/// One field record.
#[derive(Clone, Debug)]
struct FieldDesc {
    name: String,
    type_name: String,
    parent: u32,
    role: u16,
    flags: u16,
    repetition: u64,
}

/// Column types (specification table "Column Description").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColType {
    Bit,
    Byte,
    Char,
    Int8,
    UInt8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Real16,
    Real32,
    Real64,
    Index32,
    Index64,
    Switch,
    SplitInt16,
    SplitUInt16,
    SplitInt32,
    SplitUInt32,
    SplitInt64,
    SplitUInt64,
    SplitReal16,
    SplitReal32,
    SplitReal64,
    SplitIndex32,
    SplitIndex64,
    Real32Trunc,
    Real32Quant,
}

impl ColType {
    fn from_code(c: u16) -> Option<ColType> {
        use ColType::*;
        Some(match c {
            0x00 => Bit,
            0x01 => Byte,
            0x02 => Char,
            0x03 => Int8,
            0x04 => UInt8,
            0x05 => Int16,
            0x06 => UInt16,
            0x07 => Int32,
            0x08 => UInt32,
            0x09 => Int64,
            0x0A => UInt64,
            0x0B => Real16,
            0x0C => Real32,
            0x0D => Real64,
            0x0E => Index32,
            0x0F => Index64,
            0x10 => Switch,
            0x11 => SplitInt16,
            0x12 => SplitUInt16,
            0x13 => SplitInt32,
            0x14 => SplitUInt32,
            0x15 => SplitInt64,
            0x16 => SplitUInt64,
            0x17 => SplitReal16,
            0x18 => SplitReal32,
            0x19 => SplitReal64,
            0x1A => SplitIndex32,
            0x1B => SplitIndex64,
            0x1C => Real32Trunc,
            0x1D => Real32Quant,
            _ => return None,
        })
    }

    /// Fixed bits on storage (`None` for the variable-width float types).
    fn fixed_bits(self) -> Option<u16> {
        use ColType::*;
        Some(match self {
            Bit => 1,
            Byte | Char | Int8 | UInt8 => 8,
            Int16 | UInt16 | Real16 | SplitInt16 | SplitUInt16 | SplitReal16 => 16,
            Int32 | UInt32 | Real32 | Index32 | SplitInt32 | SplitUInt32 | SplitReal32 | SplitIndex32 => 32,
            Int64 | UInt64 | Real64 | Index64 | SplitInt64 | SplitUInt64 | SplitReal64 | SplitIndex64 => 64,
            Switch => 96,
            Real32Trunc | Real32Quant => return None,
        })
    }

    fn is_index(self) -> bool {
        matches!(self, ColType::Index32 | ColType::Index64 | ColType::SplitIndex32 | ColType::SplitIndex64)
    }

    fn is_split(self) -> bool {
        use ColType::*;
        matches!(
            self,
            SplitInt16
                | SplitUInt16
                | SplitInt32
                | SplitUInt32
                | SplitInt64
                | SplitUInt64
                | SplitReal16
                | SplitReal32
                | SplitReal64
                | SplitIndex32
                | SplitIndex64
        )
    }
}

/// One (physical) column record.
#[derive(Clone, Debug)]
struct ColumnDesc {
    code: u16,
    ctype: Option<ColType>,
    bits: u16,
    field: u32,
    repr: u16,
    deferred: bool,
    range: Option<(f64, f64)>,
}

impl ColumnDesc {
    fn type_label(&self) -> String {
        match self.ctype {
            Some(t) => format!("{t:?}"),
            None => format!("unknown column type {:#x}", self.code),
        }
    }
}

/// Pages of one column in one cluster.
#[derive(Clone, Debug, Default)]
struct ColumnPages {
    /// (elements, locator, followed by a checksum) per page.
    pages: Vec<(u64, Locator, bool)>,
    /// Index of the first element of the column in this cluster; negative
    /// when the column is suppressed in the cluster.
    element_offset: i64,
}

/// One cluster: its entries and, per physical column id, its pages.
#[derive(Clone, Debug)]
struct Cluster {
    first_entry: u64,
    entries: u64,
    columns: Vec<ColumnPages>,
}

/// How a top-level field is presented, or why it cannot be.
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// One value per entry from field `field`'s first column.
    Scalar { field: usize, elem: ElemType },
    /// A collection of numeric leaves: index column of `coll`, values of `child`.
    Jagged { coll: usize, child: usize, elem: ElemType },
    /// A fixed-size array of `n` numeric leaves in `child`.
    Fixed { child: usize, n: u64, elem: ElemType },
    /// Collection sizes from the index column of `field`.
    Cardinality { field: usize, elem: ElemType },
    /// Not readable as numbers.
    Unsupported(String),
}

/// How a top-level field maps onto a [`Column`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// One number per entry.
    Scalar(ElemType),
    /// A variable number of numbers per entry (`std::vector<T>`, `ROOT::RVec<T>`, ...).
    Jagged(ElemType),
    /// `N` numbers per entry (`std::array<T, N>`), read as [`Column::Jagged`].
    Fixed(ElemType, u64),
    /// Not readable as numbers (strings, records, variants, nested collections, ...).
    Unsupported(String),
}

/// Public description of a top-level field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field name.
    pub name: String,
    /// C++ type name as stored (`float`, `std::vector<std::int32_t>`, ...).
    pub type_name: String,
    /// How it is read.
    pub kind: FieldKind,
}

/// An RNTuple: its schema and cluster/page index; values are read with
/// [`RNTuple::read`].
#[derive(Debug)]
pub struct RNTuple {
    file: Arc<FileInner>,
    name: String,
    entries: u64,
    fields: Vec<FieldDesc>,
    columns: Vec<ColumnDesc>,
    /// Per field: its columns (physical ids, aliases resolved) grouped by
    /// representation index.
    field_columns: Vec<Vec<Vec<usize>>>,
    /// Per field: its subfields.
    children: Vec<Vec<usize>>,
    clusters: Vec<Cluster>,
    plans: Vec<Plan>,
    infos: Vec<FieldInfo>,
    index: HashMap<String, usize>,
    max_key_size: u64,
}

/// The anchor's members.
#[derive(Debug)]
struct Anchor {
    epoch: u16,
    major: u16,
    seek_header: u64,
    nbytes_header: u64,
    len_header: u64,
    seek_footer: u64,
    nbytes_footer: u64,
    len_footer: u64,
    max_key_size: u64,
}

fn parse_anchor(payload: &[u8]) -> PResult<Anchor> {
    let mut c = Cursor::new(payload, 0);
    let count = c.u32()?;
    if count & 0x4000_0000 == 0 {
        return Err(Fail::Malformed(format!("anchor byte count {count:#x} lacks the byte-count flag")));
    }
    let _class_version = c.i16()?;
    let epoch = c.u16()?;
    let major = c.u16()?;
    let _minor = c.u16()?;
    let _patch = c.u16()?;
    let mut v = [0u64; 7];
    for x in v.iter_mut() {
        *x = c.i64()? as u64;
    }
    let [seek_header, nbytes_header, len_header, seek_footer, nbytes_footer, len_footer, max_key_size] = v;
    let fields = payload.get(6..70).unwrap_or(&[]);
    let stored = c.i64()? as u64;
    let actual = xxh3_64(fields);
    if stored != actual {
        return Err(Fail::Malformed(format!(
            "anchor checksum {stored:#018x} does not match its contents ({actual:#018x})"
        )));
    }
    Ok(Anchor {
        epoch,
        major,
        seek_header,
        nbytes_header,
        len_header,
        seek_footer,
        nbytes_footer,
        len_footer,
        max_key_size,
    })
}

/// Schema lists (header, or footer schema extension).
#[derive(Default)]
struct Schema {
    fields: Vec<FieldDesc>,
    columns: Vec<ColumnDesc>,
    /// (physical column id, field id)
    aliases: Vec<(u32, u32)>,
}

fn parse_field(r: &mut Le<'_>) -> PResult<FieldDesc> {
    let _field_version = r.u32()?;
    let _type_version = r.u32()?;
    let parent = r.u32()?;
    let role = r.u16()?;
    let flags = r.u16()?;
    let name = r.string()?;
    let type_name = r.string()?;
    let _alias = r.string()?;
    let _description = r.string()?;
    let repetition = if flags & 1 != 0 { r.u64()? } else { 0 };
    Ok(FieldDesc { name, type_name, parent, role, flags, repetition })
}

fn parse_column(r: &mut Le<'_>) -> PResult<ColumnDesc> {
    let code = r.u16()?;
    let bits = r.u16()?;
    let field = r.u32()?;
    let flags = r.u16()?;
    let repr = r.u16()?;
    let deferred = flags & 1 != 0;
    if deferred {
        let _first = r.i64()?;
    }
    let range = if flags & 2 != 0 { Some((r.f64()?, r.f64()?)) } else { None };
    Ok(ColumnDesc { code, ctype: ColType::from_code(code), bits, field, repr, deferred, range })
}

/// Reads the four schema list frames (fields, columns, alias columns, extra
/// type information) into `s`; stops quietly at the end of `r` (an empty
/// schema extension).
fn parse_schema(r: &mut Le<'_>, s: &mut Schema) -> PResult<()> {
    if r.remaining() == 0 {
        return Ok(());
    }
    let (mut l, n) = r.list("field list", 8)?;
    for i in 0..n {
        let mut f = l.record(&format!("field record {i}"))?;
        s.fields.push(parse_field(&mut f).map_err(|e| prefix(e, &format!("field record {i}")))?);
    }
    if r.remaining() == 0 {
        return Ok(());
    }
    let (mut l, n) = r.list("column list", 8)?;
    for i in 0..n {
        let mut f = l.record(&format!("column record {i}"))?;
        s.columns.push(parse_column(&mut f).map_err(|e| prefix(e, &format!("column record {i}")))?);
    }
    if r.remaining() == 0 {
        return Ok(());
    }
    let (mut l, n) = r.list("alias column list", 8)?;
    for i in 0..n {
        let mut f = l.record(&format!("alias column record {i}"))?;
        let phys = f.u32()?;
        let field = f.u32()?;
        s.aliases.push((phys, field));
    }
    if r.remaining() == 0 {
        return Ok(());
    }
    // Extra type information: nothing needed from it, but it must be a frame.
    let _ = r.list("extra type information list", 8)?;
    Ok(())
}

/// Adds `what: ` in front of a failure's message.
fn prefix(f: Fail, what: &str) -> Fail {
    match f {
        Fail::Truncated(d) => Fail::Truncated(format!("{what}: {d}")),
        Fail::Malformed(d) => Fail::Malformed(format!("{what}: {d}")),
        other => other,
    }
}

/// Element type of a leaf from its C++ type name.
fn elem_of_type(t: &str) -> Option<ElemType> {
    let t = t.strip_prefix("std::").unwrap_or(t);
    Some(match t {
        "bool" => ElemType::Bool,
        "char" | "int8_t" | "signed char" => ElemType::I8,
        "uint8_t" | "unsigned char" | "byte" => ElemType::U8,
        "int16_t" => ElemType::I16,
        "uint16_t" => ElemType::U16,
        "int32_t" => ElemType::I32,
        "uint32_t" => ElemType::U32,
        "int64_t" => ElemType::I64,
        "uint64_t" => ElemType::U64,
        "float" => ElemType::F32,
        "double" => ElemType::F64,
        _ => return None,
    })
}

/// The value type a column type decodes to.
fn natural_elem(t: ColType) -> Option<ElemType> {
    use ColType::*;
    Some(match t {
        Bit => ElemType::Bool,
        Byte | UInt8 => ElemType::U8,
        Char | Int8 => ElemType::I8,
        Int16 | SplitInt16 => ElemType::I16,
        UInt16 | SplitUInt16 => ElemType::U16,
        Int32 | SplitInt32 => ElemType::I32,
        UInt32 | SplitUInt32 => ElemType::U32,
        Int64 | SplitInt64 => ElemType::I64,
        UInt64 | SplitUInt64 => ElemType::U64,
        Real16 | SplitReal16 | Real32 | SplitReal32 | Real32Trunc | Real32Quant => ElemType::F32,
        Real64 | SplitReal64 => ElemType::F64,
        Index32 | Index64 | SplitIndex32 | SplitIndex64 => ElemType::U64,
        Switch => return None,
    })
}

// ---------------------------------------------------------------------------
// Page decoding
// ---------------------------------------------------------------------------

/// Reverses the split encoding of `n` elements of `size` bytes in place order.
fn unsplit(data: &[u8], size: usize) -> Vec<u8> {
    let n = data.len() / size.max(1);
    let mut out = vec![0u8; n * size];
    for (b, plane) in data.chunks_exact(n.max(1)).take(size).enumerate() {
        for (i, &x) in plane.iter().enumerate() {
            if let Some(o) = out.get_mut(i * size + b) {
                *o = x;
            }
        }
    }
    out
}

/// IEEE-754 half precision to single precision.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let mut e: i32 = -14;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads `n` values `bits` wide from a little-endian bit stream.
fn unpack_bits(data: &[u8], n: usize, bits: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut pos = 0usize;
    for _ in 0..n {
        let mut v: u64 = 0;
        let mut got = 0u32;
        while got < bits {
            let byte = data.get(pos / 8).copied().unwrap_or(0) as u64;
            let off = (pos % 8) as u32;
            let take = (8 - off).min(bits - got);
            v |= ((byte >> off) & ((1u64 << take) - 1)) << got;
            got += take;
            pos += take as usize;
        }
        out.push(v as u32);
    }
    out
}

macro_rules! le_vec {
    ($data:expr, $t:ty, $n:expr) => {
        $data.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n]))).collect::<Vec<$t>>()
    };
}

/// Decodes one decompressed page of `n` elements.
fn decode_page(col: &ColumnDesc, t: ColType, data: &[u8], n: usize) -> PResult<Values> {
    use ColType::*;
    let size = (t.fixed_bits().unwrap_or(0) / 8) as usize;
    let owned;
    let data = if t.is_split() {
        owned = unsplit(data, size);
        &owned[..]
    } else {
        data
    };
    Ok(match t {
        Bit => Values::Bool((0..n).map(|i| data.get(i / 8).is_some_and(|b| (b >> (i % 8)) & 1 == 1)).collect()),
        Byte | UInt8 => Values::U8(data.to_vec()),
        Char | Int8 => Values::I8(data.iter().map(|&b| b as i8).collect()),
        Int16 => Values::I16(le_vec!(data, i16, 2)),
        UInt16 | SplitUInt16 => Values::U16(le_vec!(data, u16, 2)),
        Int32 => Values::I32(le_vec!(data, i32, 4)),
        UInt32 | SplitUInt32 => Values::U32(le_vec!(data, u32, 4)),
        Int64 => Values::I64(le_vec!(data, i64, 8)),
        UInt64 | SplitUInt64 => Values::U64(le_vec!(data, u64, 8)),
        SplitInt16 => {
            Values::I16(le_vec!(data, u16, 2).into_iter().map(|u| ((u >> 1) as i16) ^ -((u & 1) as i16)).collect())
        }
        SplitInt32 => {
            Values::I32(le_vec!(data, u32, 4).into_iter().map(|u| ((u >> 1) as i32) ^ -((u & 1) as i32)).collect())
        }
        SplitInt64 => {
            Values::I64(le_vec!(data, u64, 8).into_iter().map(|u| ((u >> 1) as i64) ^ -((u & 1) as i64)).collect())
        }
        Real16 | SplitReal16 => Values::F32(le_vec!(data, u16, 2).into_iter().map(half_to_f32).collect()),
        Real32 | SplitReal32 => Values::F32(le_vec!(data, f32, 4)),
        Real64 | SplitReal64 => Values::F64(le_vec!(data, f64, 8)),
        Index32 => Values::U64(le_vec!(data, u32, 4).into_iter().map(u64::from).collect()),
        Index64 => Values::U64(le_vec!(data, u64, 8)),
        SplitIndex32 | SplitIndex64 => {
            let raw: Vec<u64> = if t == SplitIndex32 {
                le_vec!(data, u32, 4).into_iter().map(u64::from).collect()
            } else {
                le_vec!(data, u64, 8)
            };
            let mut acc = 0u64;
            Values::U64(
                raw.into_iter()
                    .map(|d| {
                        acc = acc.wrapping_add(d);
                        acc
                    })
                    .collect(),
            )
        }
        Real32Trunc => {
            let b = u32::from(col.bits);
            Values::F32(unpack_bits(data, n, b).into_iter().map(|v| f32::from_bits(v << (32 - b))).collect())
        }
        Real32Quant => {
            let b = u32::from(col.bits);
            let (lo, hi) = col.range.unwrap_or((0.0, 0.0));
            let den = ((1u64 << b) - 1) as f64;
            Values::F32(
                unpack_bits(data, n, b).into_iter().map(|q| (lo + f64::from(q) * (hi - lo) / den) as f32).collect(),
            )
        }
        Switch => return Err(Fail::Unsupported("Switch column".into(), "variants are not supported".into())),
    })
}

/// Converts values to another element type (`as` casts; `bool` is `x != 0`).
fn cast(v: Values, t: ElemType) -> Values {
    if v.elem_type() == t {
        return v;
    }
    macro_rules! conv {
        ($src:expr, $f:expr) => {{
            let f = $f;
            match t {
                ElemType::Bool => Values::Bool($src.into_iter().map(|x| f(x) != 0.0).collect()),
                ElemType::I8 => Values::I8($src.into_iter().map(|x| f(x) as i8).collect()),
                ElemType::U8 => Values::U8($src.into_iter().map(|x| f(x) as u8).collect()),
                ElemType::I16 => Values::I16($src.into_iter().map(|x| f(x) as i16).collect()),
                ElemType::U16 => Values::U16($src.into_iter().map(|x| f(x) as u16).collect()),
                ElemType::I32 => Values::I32($src.into_iter().map(|x| f(x) as i32).collect()),
                ElemType::U32 => Values::U32($src.into_iter().map(|x| f(x) as u32).collect()),
                ElemType::I64 => Values::I64($src.into_iter().map(|x| f(x) as i64).collect()),
                ElemType::U64 => Values::U64($src.into_iter().map(|x| f(x) as u64).collect()),
                ElemType::F32 => Values::F32($src.into_iter().map(|x| f(x) as f32).collect()),
                ElemType::F64 => Values::F64($src.into_iter().map(|x| f(x)).collect()),
            }
        }};
    }
    // Integers go through i128 so that 64-bit values convert exactly; floats through f64.
    macro_rules! conv_int {
        ($src:expr) => {{
            match t {
                ElemType::Bool => Values::Bool($src.into_iter().map(|x| x as i128 != 0).collect()),
                ElemType::I8 => Values::I8($src.into_iter().map(|x| x as i128 as i8).collect()),
                ElemType::U8 => Values::U8($src.into_iter().map(|x| x as i128 as u8).collect()),
                ElemType::I16 => Values::I16($src.into_iter().map(|x| x as i128 as i16).collect()),
                ElemType::U16 => Values::U16($src.into_iter().map(|x| x as i128 as u16).collect()),
                ElemType::I32 => Values::I32($src.into_iter().map(|x| x as i128 as i32).collect()),
                ElemType::U32 => Values::U32($src.into_iter().map(|x| x as i128 as u32).collect()),
                ElemType::I64 => Values::I64($src.into_iter().map(|x| x as i128 as i64).collect()),
                ElemType::U64 => Values::U64($src.into_iter().map(|x| x as i128 as u64).collect()),
                ElemType::F32 => Values::F32($src.into_iter().map(|x| x as f32).collect()),
                ElemType::F64 => Values::F64($src.into_iter().map(|x| x as f64).collect()),
            }
        }};
    }
    match v {
        Values::Bool(x) => conv_int!(x.into_iter().map(u8::from).collect::<Vec<u8>>()),
        Values::I8(x) => conv_int!(x),
        Values::U8(x) => conv_int!(x),
        Values::I16(x) => conv_int!(x),
        Values::U16(x) => conv_int!(x),
        Values::I32(x) => conv_int!(x),
        Values::U32(x) => conv_int!(x),
        Values::I64(x) => conv_int!(x),
        Values::U64(x) => conv_int!(x),
        Values::F32(x) => conv!(x, |y: f32| y as f64),
        Values::F64(x) => conv!(x, |y: f64| y),
    }
}

/// Appends `b` to `a` (same element type; otherwise `b` is cast first).
fn append(a: &mut Values, b: Values) {
    let b = cast(b, a.elem_type());
    match (a, b) {
        (Values::Bool(x), Values::Bool(y)) => x.extend(y),
        (Values::I8(x), Values::I8(y)) => x.extend(y),
        (Values::U8(x), Values::U8(y)) => x.extend(y),
        (Values::I16(x), Values::I16(y)) => x.extend(y),
        (Values::U16(x), Values::U16(y)) => x.extend(y),
        (Values::I32(x), Values::I32(y)) => x.extend(y),
        (Values::U32(x), Values::U32(y)) => x.extend(y),
        (Values::I64(x), Values::I64(y)) => x.extend(y),
        (Values::U64(x), Values::U64(y)) => x.extend(y),
        (Values::F32(x), Values::F32(y)) => x.extend(y),
        (Values::F64(x), Values::F64(y)) => x.extend(y),
        _ => {}
    }
}

/// `n` zeros of type `t`.
fn zeros(t: ElemType, n: usize) -> Values {
    match t {
        ElemType::Bool => Values::Bool(vec![false; n]),
        ElemType::I8 => Values::I8(vec![0; n]),
        ElemType::U8 => Values::U8(vec![0; n]),
        ElemType::I16 => Values::I16(vec![0; n]),
        ElemType::U16 => Values::U16(vec![0; n]),
        ElemType::I32 => Values::I32(vec![0; n]),
        ElemType::U32 => Values::U32(vec![0; n]),
        ElemType::I64 => Values::I64(vec![0; n]),
        ElemType::U64 => Values::U64(vec![0; n]),
        ElemType::F32 => Values::F32(vec![0.0; n]),
        ElemType::F64 => Values::F64(vec![0.0; n]),
    }
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

impl RNTuple {
    /// Parses the anchor payload of key `key` and the envelopes it points to.
    pub(super) fn open(file: Arc<FileInner>, name: String, key: &KeyHeader) -> Result<RNTuple, RootError> {
        let ps = file.path_str.clone();
        let label = format!("ntuple '{name}'");
        let ctx = |what: &str| ctx_prefix(&[label.clone(), what.to_string()]);
        let payload = file.read_object(key, &format!("ntuple '{name}' anchor"))?;
        let anchor = parse_anchor(&payload).map_err(|f| f.at(&ps, ctx("anchor")))?;
        if anchor.epoch != 1 {
            return Err(RootError::Malformed {
                path: ps,
                context: ctx("anchor"),
                detail: format!(
                    "unsupported RNTuple format version {}.{} (this reader reads epoch 1, i.e. RNTuple v1.x; \
                     files from ROOT before 6.34 use the pre-release format)",
                    anchor.epoch, anchor.major
                ),
            });
        }
        let header = read_envelope(
            &file,
            anchor.seek_header,
            anchor.nbytes_header,
            anchor.len_header,
            1,
            anchor.max_key_size,
            "header",
        )
        .map_err(|f| f.at(&ps, ctx("header envelope")))?;
        let footer = read_envelope(
            &file,
            anchor.seek_footer,
            anchor.nbytes_footer,
            anchor.len_footer,
            2,
            anchor.max_key_size,
            "footer",
        )
        .map_err(|f| f.at(&ps, ctx("footer envelope")))?;
        let mut schema = Schema::default();
        parse_header(&header, &mut schema).map_err(|f| f.at(&ps, ctx("header envelope")))?;
        let groups = parse_footer(&footer, &mut schema).map_err(|f| f.at(&ps, ctx("footer envelope")))?;
        let mut clusters = Vec::new();
        for (g, (link_len, loc)) in groups.iter().enumerate() {
            let what = format!("page list of cluster group {g}");
            let env = read_envelope(&file, loc.offset, loc.size, *link_len, 3, anchor.max_key_size, &what)
                .map_err(|f| f.at(&ps, ctx(&what)))?;
            parse_page_list(&env, &mut clusters).map_err(|f| f.at(&ps, ctx(&what)))?;
        }
        clusters.sort_by_key(|c| c.first_entry);
        let mut entries = 0u64;
        for (i, c) in clusters.iter().enumerate() {
            if c.first_entry != entries {
                return Err(RootError::Malformed {
                    path: ps,
                    context: ctx(""),
                    detail: format!("cluster {i} starts at entry {}, expected {entries}", c.first_entry),
                });
            }
            entries = entries.checked_add(c.entries).ok_or_else(|| RootError::Malformed {
                path: ps.clone(),
                context: ctx(""),
                detail: "entry count overflows".into(),
            })?;
        }
        let mut nt = RNTuple {
            file,
            name,
            entries,
            fields: schema.fields,
            columns: schema.columns,
            field_columns: Vec::new(),
            children: Vec::new(),
            clusters,
            plans: Vec::new(),
            infos: Vec::new(),
            index: HashMap::new(),
            max_key_size: anchor.max_key_size,
        };
        let label = format!("ntuple '{}'", nt.name);
        nt.build_index(&schema.aliases).map_err(|f| f.at(&ps, ctx_prefix(&[label, "schema".into()])))?;
        Ok(nt)
    }

    fn build_index(&mut self, aliases: &[(u32, u32)]) -> PResult<()> {
        let nf = self.fields.len();
        let mut fc: Vec<Vec<Vec<usize>>> = vec![Vec::new(); nf];
        let mut add = |field: u32, phys: usize, repr: u16| -> PResult<()> {
            let slot = fc.get_mut(field as usize).ok_or_else(|| {
                Fail::Malformed(format!("column {phys} belongs to field {field}, but there are {nf} fields"))
            })?;
            let r = repr as usize;
            if r > 64 {
                return Err(Fail::Malformed(format!("column {phys}: representation index {repr}")));
            }
            if slot.len() <= r {
                slot.resize(r + 1, Vec::new());
            }
            if let Some(s) = slot.get_mut(r) {
                s.push(phys);
            }
            Ok(())
        };
        for (i, c) in self.columns.iter().enumerate() {
            add(c.field, i, c.repr)?;
        }
        for &(phys, field) in aliases {
            let c = self
                .columns
                .get(phys as usize)
                .ok_or_else(|| Fail::Malformed(format!("alias column refers to column {phys}")))?;
            add(field, phys as usize, c.repr)?;
        }
        self.field_columns = fc;
        let mut children = vec![Vec::new(); nf];
        for (i, f) in self.fields.iter().enumerate() {
            if f.parent as usize != i {
                if let Some(c) = children.get_mut(f.parent as usize) {
                    c.push(i);
                }
            }
        }
        self.children = children;
        for (i, f) in self.fields.iter().enumerate() {
            if f.parent as usize != i {
                continue;
            }
            let plan = self.plan(i, 0);
            let kind = match &plan {
                Plan::Scalar { elem, .. } | Plan::Cardinality { elem, .. } => FieldKind::Scalar(*elem),
                Plan::Jagged { elem, .. } => FieldKind::Jagged(*elem),
                Plan::Fixed { elem, n, .. } => FieldKind::Fixed(*elem, *n),
                Plan::Unsupported(r) => FieldKind::Unsupported(r.clone()),
            };
            self.index.entry(f.name.clone()).or_insert(self.infos.len());
            self.infos.push(FieldInfo { name: f.name.clone(), type_name: f.type_name.clone(), kind });
            self.plans.push(plan);
        }
        Ok(())
    }

    /// Subfields of field `id`.
    fn children(&self, id: usize) -> Vec<usize> {
        self.children.get(id).cloned().unwrap_or_default()
    }

    /// The column slots of field `id` (first representation), with their types.
    fn slot_types(&self, id: usize) -> Vec<&ColumnDesc> {
        self.field_columns
            .get(id)
            .and_then(|r| r.first())
            .map(|v| v.iter().filter_map(|&c| self.columns.get(c)).collect())
            .unwrap_or_default()
    }

    /// Checks that field `id` is a numeric leaf with one column per
    /// representation; returns its element type.
    fn leaf_elem(&self, id: usize) -> Result<ElemType, String> {
        let Some(f) = self.fields.get(id) else { return Err("missing field".into()) };
        let reprs = self.field_columns.get(id).map(|r| r.as_slice()).unwrap_or(&[]);
        for r in reprs {
            if r.len() != 1 {
                return Err(format!(
                    "a leaf stored in {} columns (strings and other multi-column types are not numeric)",
                    r.len()
                ));
            }
            let c = r.first().and_then(|&c| self.columns.get(c));
            match c.and_then(|c| c.ctype) {
                Some(t) if natural_elem(t).is_some() && !t.is_index() => {}
                _ => {
                    let label = c.map(|c| c.type_label()).unwrap_or_default();
                    return Err(format!("column type {label} cannot hold a number of this field"));
                }
            }
        }
        if let Some(e) = elem_of_type(&f.type_name) {
            return Ok(e);
        }
        // Unknown C++ name (a typedef the writer did not resolve): use the column type.
        match self.slot_types(id).first().and_then(|c| c.ctype).and_then(natural_elem) {
            Some(e) if !reprs.is_empty() => Ok(e),
            _ => Err("not a numeric type".into()),
        }
    }

    /// How top-level (or nested, at `depth`) field `id` is read.
    fn plan(&self, id: usize, depth: usize) -> Plan {
        let Some(f) = self.fields.get(id) else { return Plan::Unsupported("missing field".into()) };
        if depth > 8 {
            return Plan::Unsupported("too deeply nested".into());
        }
        let children = self.children(id);
        let has_columns = self.field_columns.get(id).is_some_and(|r| !r.is_empty());
        let repetitive = f.flags & 1 != 0;
        match f.role {
            ROLE_LEAF if f.type_name.starts_with("ROOT::RNTupleCardinality<") => match self.slot_types(id).as_slice() {
                [c] if c.ctype.is_some_and(ColType::is_index) => {
                    let elem = if f.type_name.contains("uint32_t") { ElemType::U32 } else { ElemType::U64 };
                    Plan::Cardinality { field: id, elem }
                }
                _ => Plan::Unsupported("a cardinality field without an index column".into()),
            },
            ROLE_LEAF if repetitive && !has_columns => match children.as_slice() {
                [c] => match self.plan(*c, depth + 1) {
                    Plan::Scalar { field, elem } => Plan::Fixed { child: field, n: f.repetition, elem },
                    Plan::Unsupported(r) => Plan::Unsupported(r),
                    _ => Plan::Unsupported("fixed-size arrays of collections or arrays are not supported".into()),
                },
                _ => Plan::Unsupported("a fixed-size array without exactly one subfield".into()),
            },
            ROLE_LEAF if repetitive => match self.leaf_elem(id) {
                // std::bitset<N>: N bits per entry in one Bit column.
                Ok(elem) => Plan::Fixed { child: id, n: f.repetition, elem },
                Err(r) => Plan::Unsupported(r),
            },
            ROLE_LEAF if !has_columns && children.len() == 1 => {
                // std::atomic<T>, enums: the value lives in the single subfield.
                match children.first().map(|&c| self.plan(c, depth + 1)) {
                    Some(p @ Plan::Scalar { .. }) => p,
                    Some(Plan::Unsupported(r)) => Plan::Unsupported(r),
                    _ => Plan::Unsupported("a wrapper around a non-numeric type".into()),
                }
            }
            ROLE_LEAF if !has_columns => Plan::Unsupported("a leaf field without columns".into()),
            ROLE_LEAF => match self.leaf_elem(id) {
                Ok(elem) => Plan::Scalar { field: id, elem },
                Err(r) => Plan::Unsupported(r),
            },
            ROLE_COLLECTION => {
                match self.slot_types(id).as_slice() {
                    [c] if c.ctype.is_some_and(ColType::is_index) => {}
                    _ => return Plan::Unsupported("a collection without an index column".into()),
                }
                let [child] = children.as_slice() else {
                    return Plan::Unsupported(format!("a collection with {} subfields", children.len()));
                };
                match self.plan(*child, depth + 1) {
                    Plan::Scalar { field, elem } => Plan::Jagged { coll: id, child: field, elem },
                    Plan::Unsupported(r) if self.fields.get(*child).is_some_and(|c| c.role == ROLE_RECORD) => {
                        Plan::Unsupported(format!("collections of records are not supported ({r})"))
                    }
                    Plan::Unsupported(r) => Plan::Unsupported(r),
                    _ => Plan::Unsupported("nested collections are not supported".into()),
                }
            }
            ROLE_RECORD => Plan::Unsupported("records (structs, pairs, tuples) are not supported".into()),
            ROLE_VARIANT => Plan::Unsupported("variants are not supported".into()),
            ROLE_STREAMER => Plan::Unsupported("objects stored with the ROOT streamer are not supported".into()),
            r => Plan::Unsupported(format!("unknown structural role {r}")),
        }
    }
}

/// Reads and decompresses one envelope and checks its type; returns the
/// payload between the type/length word and the checksum.
fn read_envelope(
    file: &FileInner,
    seek: u64,
    nbytes: u64,
    len: u64,
    want_type: u16,
    max_key_size: u64,
    what: &str,
) -> PResult<Vec<u8>> {
    if len > MAX_OBJECT as u64 || nbytes > MAX_OBJECT as u64 || len < 16 {
        return Err(Fail::Malformed(format!("{what}: length {len} / stored size {nbytes} out of range")));
    }
    if max_key_size > 0 && nbytes > max_key_size {
        return Err(Fail::Unsupported(
            format!("{what} of {nbytes} bytes"),
            format!("split over several keys (max key size {max_key_size})"),
        ));
    }
    let raw = file.read_at(seek, nbytes as usize, what).map_err(|e| Fail::Truncated(strip_path(&e, file)))?;
    let data = compress::decompress(&raw, len as usize)?;
    if data.len() != len as usize {
        return Err(Fail::Malformed(format!("{what}: decompressed to {} bytes, expected {len}", data.len())));
    }
    let mut r = Le::new(&data);
    let word = r.u64()?;
    let t = (word & 0xffff) as u16;
    let l = word >> 16;
    if t != want_type {
        return Err(Fail::Malformed(format!("{what}: envelope type {t}, expected {want_type}")));
    }
    if l > len || l < 16 {
        return Err(Fail::Malformed(format!("{what}: envelope length {l}, the link says {len}")));
    }
    let body = (l as usize) - 8;
    check_xxh3(data.get(..body).unwrap_or(&[]), data.get(body..body + 8), what)?;
    Ok(data.get(8..body).unwrap_or(&[]).to_vec())
}

/// Checks `bytes` against the little-endian XXH3-64 `stored` after them.
fn check_xxh3(bytes: &[u8], stored: Option<&[u8]>, what: &str) -> PResult<()> {
    let stored = stored
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| Fail::Truncated(format!("{what}: checksum missing")))?;
    let actual = xxh3_64(bytes);
    if stored != actual {
        return Err(Fail::Malformed(format!(
            "{what}: checksum {stored:#018x} does not match the contents ({actual:#018x}); the file is corrupt"
        )));
    }
    Ok(())
}

/// The message of a file-level error without its path prefix.
fn strip_path(e: &RootError, file: &FileInner) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("{}: ", file.path_str)).map(str::to_string).unwrap_or(s)
}

fn parse_header(env: &[u8], s: &mut Schema) -> PResult<()> {
    let mut r = Le::new(env);
    r.feature_flags()?;
    let _name = r.string()?;
    let _description = r.string()?;
    let _writer = r.string()?;
    parse_schema(&mut r, s)
}

/// Parses the footer; returns the page-list links (length, locator) of the cluster groups.
fn parse_footer(env: &[u8], s: &mut Schema) -> PResult<Vec<(u64, Locator)>> {
    let mut r = Le::new(env);
    r.feature_flags()?;
    let _header_checksum = r.u64()?;
    let mut ext = r.record("schema extension")?;
    parse_schema(&mut ext, s).map_err(|f| prefix(f, "schema extension"))?;
    let (mut l, n) = r.list("cluster group list", 8)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut g = l.record(&format!("cluster group {i}"))?;
        let _min_entry = g.u64()?;
        let _span = g.u64()?;
        let _nclusters = g.u32()?;
        let len = g.u64()?;
        let loc = g.locator()?;
        out.push((len, loc));
    }
    Ok(out)
}

fn parse_page_list(env: &[u8], clusters: &mut Vec<Cluster>) -> PResult<()> {
    let mut r = Le::new(env);
    let _header_checksum = r.u64()?;
    let (mut l, n) = r.list("cluster summaries", 8)?;
    let mut summaries = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = l.record(&format!("cluster summary {i}"))?;
        let first = c.u64()?;
        let word = c.u64()?;
        if (word >> 56) & 1 != 0 {
            return Err(Fail::Unsupported("sharded cluster".into(), format!("cluster summary {i} is sharded")));
        }
        summaries.push((first, word & 0x00ff_ffff_ffff_ffff));
    }
    let (mut top, nc) = r.list("page locations", 12)?;
    if nc != n {
        return Err(Fail::Malformed(format!("{n} cluster summaries but page locations for {nc} clusters")));
    }
    for (ci, (first, entries)) in summaries.into_iter().enumerate() {
        let (mut cols, ncol) = top.list(&format!("cluster {ci} column list"), 12)?;
        let mut columns = Vec::with_capacity(ncol);
        for k in 0..ncol {
            let (mut pages, np) = cols.list(&format!("cluster {ci} column {k} page list"), 16)?;
            let mut v = Vec::with_capacity(np);
            for _ in 0..np {
                let ne = pages.i32()?;
                let loc = pages.locator()?;
                v.push((u64::from(ne.unsigned_abs()), loc, ne < 0));
            }
            let element_offset = pages.i64()?;
            if element_offset >= 0 {
                let _compression = pages.u32()?;
            }
            columns.push(ColumnPages { pages: v, element_offset });
        }
        clusters.push(Cluster { first_entry: first, entries, columns });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

impl RNTuple {
    /// Name of the ntuple (its key name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Number of clusters.
    pub fn clusters(&self) -> usize {
        self.clusters.len()
    }

    /// Names of the top-level fields, in schema order.
    pub fn field_names(&self) -> Vec<String> {
        self.infos.iter().map(|f| f.name.clone()).collect()
    }

    /// Descriptions of the top-level fields.
    pub fn fields(&self) -> &[FieldInfo] {
        &self.infos
    }

    /// Description of one top-level field.
    pub fn field_info(&self, name: &str) -> Result<&FieldInfo, RootError> {
        self.index.get(name).and_then(|&i| self.infos.get(i)).ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> RootError {
        let names: Vec<&str> = self.infos.iter().map(|f| f.name.as_str()).collect();
        RootError::FieldNotFound {
            path: self.file.path_str.clone(),
            ntuple: self.name.clone(),
            field: name.to_string(),
            suggestions: suggestions(name, &names, "the ntuple has no fields", "fields include"),
        }
    }

    /// Reads a whole top-level field.
    pub fn read(&self, name: &str) -> Result<Column, RootError> {
        let i = self.index.get(name).copied().ok_or_else(|| self.not_found(name))?;
        let info = self.infos.get(i).ok_or_else(|| self.not_found(name))?;
        let plan = self.plans.get(i).cloned().unwrap_or(Plan::Unsupported("missing".into()));
        let ps = &self.file.path_str;
        let ctx = ctx_prefix(&[format!("ntuple '{}'", self.name), format!("field '{name}'")]);
        let unsupported = |reason: String| RootError::UnsupportedField {
            path: ps.clone(),
            ntuple: self.name.clone(),
            field: name.to_string(),
            type_name: info.type_name.clone(),
            reason: reason.into_boxed_str(),
        };
        let r = match plan {
            Plan::Unsupported(reason) => return Err(unsupported(reason)),
            Plan::Scalar { field, elem } => self.read_scalar(field, elem).map(Column::Scalar),
            Plan::Cardinality { field, elem } => self.read_cardinality(field, elem).map(Column::Scalar),
            Plan::Jagged { coll, child, elem } => self.read_jagged(coll, child, elem),
            Plan::Fixed { child, n, elem } => self.read_fixed(child, n, elem),
        };
        r.map_err(|f| match f {
            Fail::Unsupported(t, reason) => unsupported(format!("{t}: {reason}")),
            f => f.at(ps, ctx.clone()),
        })
    }

    /// Values of a leaf that has one value per entry.
    fn read_scalar(&self, field: usize, elem: ElemType) -> PResult<Values> {
        let mut out = Values::with_capacity(elem, 0);
        for (ci, c) in self.clusters.iter().enumerate() {
            let v = self.read_cluster_column(field, 0, ci, c.first_entry, c.entries, elem)?;
            append(&mut out, v);
        }
        Ok(out)
    }

    /// Cluster-relative end offsets of a collection, per cluster.
    fn read_offsets(&self, field: usize, ci: usize) -> PResult<Vec<u64>> {
        let c = self.clusters.get(ci).ok_or_else(|| Fail::Malformed(format!("cluster {ci} missing")))?;
        match self.read_cluster_column(field, 0, ci, c.first_entry, c.entries, ElemType::U64)? {
            Values::U64(v) => {
                if v.windows(2).any(|w| w.first() > w.get(1)) {
                    return Err(Fail::Malformed(format!("cluster {ci}: collection offsets decrease")));
                }
                Ok(v)
            }
            _ => Err(Fail::Malformed("index column did not decode to offsets".into())),
        }
    }

    fn read_cardinality(&self, field: usize, elem: ElemType) -> PResult<Values> {
        let mut sizes = Vec::new();
        for ci in 0..self.clusters.len() {
            let offs = self.read_offsets(field, ci)?;
            let mut prev = 0u64;
            for o in offs {
                sizes.push(o - prev);
                prev = o;
            }
        }
        Ok(cast(Values::U64(sizes), elem))
    }

    fn read_jagged(&self, coll: usize, child: usize, elem: ElemType) -> PResult<Column> {
        let mut offsets = vec![0u64];
        let mut values = Values::with_capacity(elem, 0);
        let mut base = 0u64;
        for ci in 0..self.clusters.len() {
            let offs = self.read_offsets(coll, ci)?;
            let n = offs.last().copied().unwrap_or(0);
            let v = self.read_cluster_column(child, 0, ci, base, n, elem)?;
            append(&mut values, v);
            offsets.extend(offs.iter().map(|o| base.saturating_add(*o)));
            base = base.saturating_add(n);
        }
        Ok(Column::Jagged { offsets, values })
    }

    fn read_fixed(&self, child: usize, n: u64, elem: ElemType) -> PResult<Column> {
        if n == 0 {
            return Err(Fail::Malformed("fixed-size array of size 0".into()));
        }
        let mut values = Values::with_capacity(elem, 0);
        let mut base = 0u64;
        for (ci, c) in self.clusters.iter().enumerate() {
            let count = c.entries.checked_mul(n).ok_or_else(|| Fail::Malformed("array size overflows".into()))?;
            let v = self.read_cluster_column(child, 0, ci, base, count, elem)?;
            append(&mut values, v);
            base = base.saturating_add(count);
        }
        let offsets = (0..=self.entries).map(|i| i.saturating_mul(n)).collect();
        Ok(Column::Jagged { offsets, values })
    }

    /// Reads `n` elements of column slot `slot` of `field` in cluster `ci`,
    /// whose first element has the global index `start`, as `elem` values.
    fn read_cluster_column(
        &self,
        field: usize,
        slot: usize,
        ci: usize,
        start: u64,
        n: u64,
        elem: ElemType,
    ) -> PResult<Values> {
        let cluster = self.clusters.get(ci).ok_or_else(|| Fail::Malformed(format!("cluster {ci} missing")))?;
        if n.saturating_mul(8) > MAX_OBJECT as u64 {
            return Err(Fail::Malformed(format!("cluster {ci}: {n} elements is more than this reader allows")));
        }
        let reprs = self.field_columns.get(field).map(|r| r.as_slice()).unwrap_or(&[]);
        // The representation that is not suppressed in this cluster.
        let mut chosen = None;
        for r in reprs {
            let Some(&phys) = r.get(slot) else { continue };
            if let Some(cp) = cluster.columns.get(phys) {
                if cp.element_offset >= 0 {
                    chosen = Some((phys, cp));
                    break;
                }
            }
        }
        let Some((phys, cp)) = chosen else {
            // Column added after this cluster was written (deferred): zeros.
            let deferred = reprs.iter().filter_map(|r| r.get(slot)).any(|&p| {
                self.columns.get(p).is_some_and(|c| c.deferred)
                    && cluster.columns.get(p).is_none_or(|cp| cp.pages.is_empty())
            });
            if n == 0 || (deferred && n <= MAX_DEFERRED_ZEROS) {
                return Ok(zeros(elem, n as usize));
            }
            return Err(Fail::Malformed(format!("cluster {ci}: no column data for this field")));
        };
        let desc = self.columns.get(phys).ok_or_else(|| Fail::Malformed(format!("column {phys} missing")))?;
        let t = desc
            .ctype
            .ok_or_else(|| Fail::Unsupported(format!("column type {:#x}", desc.code), "unknown column type".into()))?;
        let bits = match t.fixed_bits() {
            Some(b) if b == desc.bits => u64::from(b),
            Some(b) => {
                return Err(Fail::Malformed(format!(
                    "column {phys} ({t:?}) has {} bits on storage, expected {b}",
                    desc.bits
                )))
            }
            None => {
                let ok = match t {
                    ColType::Real32Trunc => (10..=31).contains(&desc.bits),
                    _ => (1..=32).contains(&desc.bits) && desc.range.is_some(),
                };
                if !ok {
                    return Err(Fail::Malformed(format!("column {phys} ({t:?}) with {} bits on storage", desc.bits)));
                }
                u64::from(desc.bits)
            }
        };
        let present: u64 = cp.pages.iter().map(|(k, _, _)| *k).fold(0u64, |a, k| a.saturating_add(k));
        let offset = cp.element_offset as u64;
        let lead = if desc.deferred && offset > start { (offset - start).min(n) } else { 0 };
        if lead.saturating_add(present) != n {
            return Err(Fail::Malformed(format!(
                "cluster {ci}: column {phys} has {present} elements{}, expected {n}",
                if lead > 0 { format!(" after {lead} deferred zeros") } else { String::new() }
            )));
        }
        if lead > MAX_DEFERRED_ZEROS {
            return Err(Fail::Malformed(format!("cluster {ci}: column {phys} claims {lead} leading zeros")));
        }
        let mut out = zeros(elem, lead as usize);
        let natural =
            natural_elem(t).ok_or_else(|| Fail::Unsupported(format!("{t:?} column"), "not numeric".into()))?;
        for (pi, (k, loc, has_sum)) in cp.pages.iter().enumerate() {
            let k = *k as usize;
            let what = format!("cluster {ci} column {phys} page {pi} at offset {}", loc.offset);
            let len = (k as u64).saturating_mul(bits).div_ceil(8);
            if len > MAX_OBJECT as u64 || loc.size > MAX_OBJECT as u64 {
                return Err(Fail::Malformed(format!("{what}: page of {len} bytes is too large")));
            }
            if self.max_key_size > 0 && loc.size > self.max_key_size {
                return Err(Fail::Unsupported(
                    format!("page of {} bytes", loc.size),
                    format!("split over several keys (max key size {})", self.max_key_size),
                ));
            }
            let stored = loc.size as usize + if *has_sum { 8 } else { 0 };
            let with_sum = self
                .file
                .read_at(loc.offset, stored, &what)
                .map_err(|e| Fail::Truncated(strip_path(&e, &self.file)))?;
            let raw = with_sum.get(..loc.size as usize).unwrap_or(&[]);
            if *has_sum {
                check_xxh3(raw, with_sum.get(loc.size as usize..), &what)?;
            }
            let data = compress::decompress(raw, len as usize).map_err(|f| prefix(f, &what))?;
            if data.len() != len as usize {
                return Err(Fail::Malformed(format!("{what}: {} bytes, expected {len}", data.len())));
            }
            let v = decode_page(desc, t, &data, k).map_err(|f| prefix(f, &what))?;
            if v.len() != k || v.elem_type() != natural {
                return Err(Fail::Malformed(format!("{what}: decoded {} of {k} elements", v.len())));
            }
            append(&mut out, v);
        }
        Ok(out)
    }
}

/// `" (did you mean: a, b?)"`, or a few names, for a name that is not there.
pub(super) fn suggestions(name: &str, names: &[&str], none: &str, include: &str) -> String {
    let lq = name.to_lowercase();
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .map(|b| {
            let d = edit_distance(name, b);
            let lname = b.to_lowercase();
            let d = if !lq.is_empty() && (lname.contains(&lq) || lq.contains(&lname)) { d.min(2) } else { d };
            (d, *b)
        })
        .collect();
    scored.sort();
    let close: Vec<&str> =
        scored.iter().filter(|(d, _)| *d <= name.chars().count().max(4) / 2 + 1).take(5).map(|(_, n)| *n).collect();
    if close.is_empty() {
        let some: Vec<&str> = names.iter().take(5).copied().collect();
        if some.is_empty() {
            format!(" ({none})")
        } else {
            format!(" ({include}: {})", some.join(", "))
        }
    } else {
        format!(" (did you mean: {}?)", close.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7e00).is_nan());
        assert_eq!(half_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn split_zigzag_delta() {
        // Two u32 values 0x04030201 and 0x08070605, split: 01 05 02 06 03 07 04 08.
        let d = [1u8, 5, 2, 6, 3, 7, 4, 8];
        assert_eq!(unsplit(&d, 4), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let col = ColumnDesc {
            code: 0x13,
            ctype: Some(ColType::SplitInt32),
            bits: 32,
            field: 0,
            repr: 0,
            deferred: false,
            range: None,
        };
        // zigzag: 0 -> 0, 1 -> -1, 2 -> 1, 3 -> -2
        let raw: Vec<u8> = [0u32, 1, 2, 3].iter().flat_map(|x| x.to_le_bytes()).collect();
        let split: Vec<u8> = (0..4).flat_map(|b| raw.chunks(4).map(move |c| c[b])).collect();
        assert_eq!(decode_page(&col, ColType::SplitInt32, &split, 4).ok(), Some(Values::I32(vec![0, -1, 1, -2])));
        let raw: Vec<u8> = [3u64, 0, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let split: Vec<u8> = (0..8).flat_map(|b| raw.chunks(8).map(move |c| c[b])).collect();
        assert_eq!(decode_page(&col, ColType::SplitIndex64, &split, 3).ok(), Some(Values::U64(vec![3, 3, 5])));
    }

    #[test]
    fn bits_unpack_lsb_first() {
        assert_eq!(unpack_bits(&[0b1010_1101, 0b0000_0001], 3, 3), vec![0b101, 0b101, 0b110]);
        let col =
            ColumnDesc { code: 0, ctype: Some(ColType::Bit), bits: 1, field: 0, repr: 0, deferred: false, range: None };
        assert_eq!(
            decode_page(&col, ColType::Bit, &[0b0000_0101], 3).ok(),
            Some(Values::Bool(vec![true, false, true]))
        );
    }

    #[test]
    fn casts_keep_64_bit_integers() {
        assert_eq!(cast(Values::U64(vec![u64::MAX]), ElemType::U64), Values::U64(vec![u64::MAX]));
        assert_eq!(cast(Values::I32(vec![-3]), ElemType::I64), Values::I64(vec![-3]));
        assert_eq!(cast(Values::U8(vec![0, 2]), ElemType::Bool), Values::Bool(vec![false, true]));
        assert_eq!(cast(Values::F32(vec![1.5]), ElemType::F64), Values::F64(vec![1.5]));
    }
}
