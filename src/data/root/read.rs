//! Reading branch data from `TBasket`s.
//!
//! A basket on disk is a `TKey` whose header ends with the `TBasket` members
//! `fVersion`, `fBufferSize`, `fNevBufSize`, `fNevBuf`, `fLast` and a flag byte
//! (the last 19 bytes of `fKeylen`). Its payload (decompressed to `fObjlen`
//! bytes) holds the entry data in its first `fLast - fKeylen` bytes; if more
//! bytes follow, they are the entry-offset table: an i32 count, then one i32
//! per entry giving the entry's start measured from the key start (so
//! `fKeylen` must be subtracted). See uproot `models/TBasket.py` and groot
//! `rtree/basket.go`.
//!
//! Interpretations (uproot `interpretation/numerical.py`, `jagged.py`,
//! `identify.py`): flat leaves are plain big-endian arrays; counted arrays
//! (`x[n]`) use the entry offsets (or, without them, the counter branch);
//! `std::vector<T>` entries each start with a 4-byte byte count, a 2-byte
//! version and an i32 size (10 header bytes) before the values.
//!
//! The basket list of a branch is `fBasketSeek[0..]` up to `fWriteBasket` or
//! the first zero seek, followed by the baskets embedded in the TTree metadata
//! when the entry counts say some are missing.

use std::borrow::Cow;
use std::ops::Range;

use super::compress;
use super::cursor::Cursor;
use super::error::{ctx_prefix, Fail, PResult, RootError};
use super::file::{KeyHeader, MAX_OBJECT};
use super::tree::{BranchKind, BranchMeta, Tree};
use super::values::{Column, ElemType, Values};

/// One basket's decoded bytes.
struct BasketBytes<'a> {
    nevbuf: usize,
    data: Cow<'a, [u8]>,
    offsets: Option<Cow<'a, [usize]>>,
}

/// Where a basket lives.
enum BasketRef {
    Disk { index: usize, seek: u64, bytes: usize },
    Embedded(usize),
}

struct Plan {
    baskets: Vec<(BasketRef, Option<(u64, u64)>)>,
}

fn plan(b: &BranchMeta) -> Plan {
    let mut normal = 0usize;
    let limit = b.write_basket.max(0) as usize;
    for (i, &s) in b.basket_seek.iter().enumerate() {
        if s <= 0 || i >= limit || b.basket_bytes.get(i).is_none_or(|&n| n <= 0) {
            break;
        }
        normal += 1;
    }
    let mut baskets = Vec::new();
    for i in 0..normal {
        let start = b.basket_entry.get(i).copied();
        let stop = b.basket_entry.get(i + 1).copied();
        let range = match (start, stop) {
            (Some(a), Some(z)) if a >= 0 && z >= a && i + 1 < normal => Some((a as u64, z as u64)),
            _ => None,
        };
        baskets.push((
            BasketRef::Disk {
                index: i,
                seek: b.basket_seek.get(i).copied().unwrap_or(0) as u64,
                bytes: b.basket_bytes.get(i).copied().unwrap_or(0) as usize,
            },
            range,
        ));
    }
    let normal_entries = if normal == 0 { Some(0) } else { b.basket_entry.get(normal).copied() };
    if normal_entries != Some(b.entries) || normal == 0 {
        for i in 0..b.embedded.len() {
            baskets.push((BasketRef::Embedded(i), None));
        }
    }
    Plan { baskets }
}

fn load_disk<'t>(tree: &'t Tree, seek: u64, bytes: usize) -> Result<BasketBytes<'t>, Box<(Option<RootError>, Fail)>> {
    let raw =
        tree.file.read_at(seek, bytes, "basket").map_err(|e| Box::new((Some(e), Fail::Malformed(String::new()))))?;
    let r: PResult<BasketBytes<'t>> = (|| {
        let mut c = Cursor::new(&raw, 0);
        let key = KeyHeader::parse(&mut c)?;
        let keylen = key.keylen as usize;
        if keylen < 19 || keylen > raw.len() {
            return Err(Fail::Malformed(format!("basket fKeylen {}", key.keylen)));
        }
        c.seek(keylen - 19)?;
        let _v = c.u16()?;
        let _bufsize = c.i32()?;
        let _nevbufsize = c.i32()?;
        let nevbuf = c.i32()?;
        let last = c.i32()?;
        let stored = key.stored_len()?;
        let payload = raw.get(keylen..keylen.saturating_add(stored)).ok_or_else(|| {
            Fail::Truncated(format!("basket key claims {} bytes, fBasketBytes is {}", key.nbytes, raw.len()))
        })?;
        let objlen = usize::try_from(key.objlen).unwrap_or(usize::MAX);
        if key.objlen < 0 || objlen > MAX_OBJECT {
            return Err(Fail::Malformed(format!("basket fObjlen {}", key.objlen)));
        }
        let data = compress::decompress(payload, objlen)?;
        if nevbuf < 0 {
            return Err(Fail::Malformed(format!("basket fNevBuf {nevbuf}")));
        }
        let n = nevbuf as usize;
        let border = last as i64 - keylen as i64;
        if border < 0 || border as usize > data.len() {
            return Err(Fail::Malformed(format!(
                "basket fLast {last} outside its {} bytes (fKeylen {keylen})",
                data.len()
            )));
        }
        let border = border as usize;
        let offsets = if border != data.len() {
            let mut oc = Cursor::new(&data, 0);
            oc.seek(border)?;
            let count = oc.i32()?;
            if count < 0 || (count as usize) < n {
                return Err(Fail::Malformed(format!("entry offset table has {count} entries for {n} events")));
            }
            let raw_offs = oc.vec_of(n, 4, |c| c.i32())?;
            let mut offs = Vec::with_capacity(n + 1);
            for r in raw_offs {
                let o = r as i64 - keylen as i64;
                if o < 0 || o as usize > border {
                    return Err(Fail::Malformed(format!("entry offset {r} outside basket data")));
                }
                offs.push(o as usize);
            }
            offs.push(border);
            Some(Cow::Owned(offs))
        } else {
            None
        };
        let mut data = data;
        data.truncate(border);
        Ok(BasketBytes { nevbuf: n, data: Cow::Owned(data), offsets })
    })();
    r.map_err(|f| Box::new((None, f)))
}

/// Decodes one basket into `values` (and `offsets` for jagged kinds).
fn decode(
    kind: &BranchKind,
    bb: &BasketBytes<'_>,
    values: &mut Values,
    offsets: &mut Vec<u64>,
    counts: Option<&[u64]>,
) -> PResult<()> {
    let n = bb.nevbuf;
    let data: &[u8] = &bb.data;
    let push_entry = |values: &mut Values, offsets: &mut Vec<u64>, bytes: &[u8], size: usize| {
        values.push_be(bytes);
        let last = offsets.last().copied().unwrap_or(0);
        offsets.push(last + (bytes.len() / size) as u64);
    };
    match kind {
        BranchKind::Scalar(t) | BranchKind::Fixed(t, _) => {
            let per = match kind {
                BranchKind::Fixed(_, k) => *k,
                _ => 1,
            };
            let need = n.saturating_mul(per).saturating_mul(t.size());
            if data.len() != need {
                return Err(Fail::Malformed(format!(
                    "basket holds {} bytes, {n} entries of {per} x {t} need {need}",
                    data.len()
                )));
            }
            values.push_be(data);
            if per > 1 {
                for _ in 0..n {
                    let last = offsets.last().copied().unwrap_or(0);
                    offsets.push(last + per as u64);
                }
            }
        }
        BranchKind::Counted(t, _) => {
            let size = t.size();
            match (&bb.offsets, counts) {
                (Some(offs), _) => {
                    for w in offs.windows(2) {
                        let &[a, z] = w else { continue };
                        let bytes = data
                            .get(a..z)
                            .ok_or_else(|| Fail::Malformed(format!("entry offsets {a}..{z} not increasing")))?;
                        if bytes.len() % size != 0 {
                            return Err(Fail::Malformed(format!(
                                "entry of {} bytes is not a whole number of {t}",
                                bytes.len()
                            )));
                        }
                        push_entry(values, offsets, bytes, size);
                    }
                }
                (None, Some(cnts)) => {
                    if cnts.len() != n {
                        return Err(Fail::Malformed(format!(
                            "counter gives {} entries for a basket of {n}",
                            cnts.len()
                        )));
                    }
                    let mut pos = 0usize;
                    for &k in cnts {
                        let len = usize::try_from(k).unwrap_or(usize::MAX).saturating_mul(size);
                        let end = pos.saturating_add(len);
                        let bytes = data.get(pos..end).ok_or_else(|| {
                            Fail::Malformed(format!("counter values need more than the basket's {} bytes", data.len()))
                        })?;
                        push_entry(values, offsets, bytes, size);
                        pos = end;
                    }
                    if pos != data.len() {
                        return Err(Fail::Malformed(format!(
                            "counter values cover {pos} of the basket's {} bytes",
                            data.len()
                        )));
                    }
                }
                (None, None) => {
                    return Err(Fail::Malformed("jagged basket without entry offsets".into()));
                }
            }
        }
        BranchKind::Vector(t) => {
            let size = t.size();
            let offs = bb
                .offsets
                .as_ref()
                .ok_or_else(|| Fail::Malformed("std::vector basket without entry offsets".into()))?;
            for w in offs.windows(2) {
                let &[a, z] = w else { continue };
                let bytes =
                    data.get(a..z).ok_or_else(|| Fail::Malformed(format!("entry offsets {a}..{z} not increasing")))?;
                let mut c = Cursor::new(bytes, 0);
                let bcnt = c.u32()?;
                let version = c.u16()?;
                let count = c.i32()?;
                if bcnt & 0x4000_0000 == 0 || (bcnt & !0x4000_0000) as usize != bytes.len() - 4 {
                    return Err(Fail::Malformed(format!(
                        "std::vector entry byte count {:#x} does not match its {} bytes",
                        bcnt,
                        bytes.len()
                    )));
                }
                if version & 0x4000 != 0 {
                    return Err(Fail::Unsupported(format!("std::vector<{t}>"), "member-wise streaming".into()));
                }
                let body = bytes.get(10..).unwrap_or(&[]);
                if count < 0 || (count as usize).saturating_mul(size) != body.len() {
                    return Err(Fail::Malformed(format!(
                        "std::vector entry says {count} elements but has {} bytes",
                        body.len()
                    )));
                }
                push_entry(values, offsets, body, size);
            }
        }
        BranchKind::Unsupported(..) => {
            return Err(Fail::Malformed("unsupported kind".into()));
        }
    }
    Ok(())
}

fn elem_of(kind: &BranchKind) -> Option<ElemType> {
    match kind {
        BranchKind::Scalar(t) | BranchKind::Fixed(t, _) | BranchKind::Counted(t, _) | BranchKind::Vector(t) => Some(*t),
        BranchKind::Unsupported(..) => None,
    }
}

/// Reads a branch (or a range of its entries).
pub(super) fn read_branch(tree: &Tree, name: &str, range: Option<Range<u64>>) -> Result<Column, RootError> {
    read_branch_depth(tree, name, range, 0)
}

fn read_branch_depth(tree: &Tree, name: &str, range: Option<Range<u64>>, depth: usize) -> Result<Column, RootError> {
    let i = tree.lookup(name)?;
    let (Some(meta), Some(info)) = (tree.branches.get(i), tree.infos.get(i)) else {
        return Err(tree_err(tree, name, Fail::Malformed("branch index".into())));
    };
    if let BranchKind::Unsupported(t, r) = &info.kind {
        return Err(RootError::Unsupported {
            path: tree.file.path_str.clone(),
            tree: tree.name.clone(),
            branch: name.to_string(),
            type_name: t.clone(),
            reason: r.clone(),
        });
    }
    let Some(elem) = elem_of(&info.kind) else {
        return Err(tree_err(tree, name, Fail::Malformed("no element type".into())));
    };
    let total = meta.entries.max(0) as u64;
    if let Some(r) = range.as_ref().filter(|r| r.start > r.end || r.end > total) {
        return Err(RootError::InvalidArgument {
            path: tree.file.path_str.clone(),
            context: ctx_prefix(&[format!("tree '{}'", tree.name), format!("branch '{name}'")]),
            detail: format!("entry range {}..{} not within the {total} entries", r.start, r.end),
        });
    }
    let jagged = !matches!(info.kind, BranchKind::Scalar(_));
    let plan = plan(meta);
    let mut values = Values::with_capacity(elem, 0);
    let mut offsets: Vec<u64> = vec![0];
    let mut entry = 0u64; // first entry of the current basket
    let mut first_entry: Option<u64> = None; // first entry actually decoded
    let mut counter: Option<(u64, Vec<u64>)> = None;
    for (bref, known) in &plan.baskets {
        if let Some(r) = &range {
            // Stop after the range; skip baskets known to end before it.
            let done = first_entry.is_some() && entry >= r.end;
            let before = matches!(known, Some((a, z)) if *a == entry && *z <= r.start && r.start != r.end);
            if done {
                break;
            }
            if before {
                entry = known.map(|(_, z)| z).unwrap_or(entry);
                continue;
            }
        }
        let (bb, where_) = match bref {
            BasketRef::Disk { index, seek, bytes } => {
                let bb = load_disk(tree, *seek, *bytes).map_err(|b| {
                    let (e, f) = *b;
                    match e {
                        Some(e) => add_ctx(e, tree, name, *index, *seek),
                        None => f.at(
                            &tree.file.path_str,
                            ctx_prefix(&[
                                format!("tree '{}'", tree.name),
                                format!("branch '{name}'"),
                                format!("basket {index} at offset {seek}"),
                            ]),
                        ),
                    }
                })?;
                (bb, format!("basket {index} at offset {seek}"))
            }
            BasketRef::Embedded(k) => {
                let Some(e) = meta.embedded.get(*k) else {
                    continue;
                };
                (
                    BasketBytes {
                        nevbuf: e.nevbuf,
                        data: Cow::Borrowed(&e.data),
                        offsets: e.offsets.as_deref().map(Cow::Borrowed),
                    },
                    format!("embedded basket {k}"),
                )
            }
        };
        let bctx = || ctx_prefix(&[format!("tree '{}'", tree.name), format!("branch '{name}'"), where_.clone()]);
        if let Some((a, z)) = known {
            if *a == entry && z - a != bb.nevbuf as u64 {
                return Err(RootError::Malformed {
                    path: tree.file.path_str.clone(),
                    context: bctx(),
                    detail: format!("basket holds {} entries, fBasketEntry says {}", bb.nevbuf, z - a),
                });
            }
        }
        let nb = bb.nevbuf as u64;
        let overlaps = match &range {
            None => true,
            Some(r) => entry < r.end && entry + nb > r.start,
        };
        if !overlaps {
            entry += nb;
            continue;
        }
        if first_entry.is_none() {
            first_entry = Some(entry);
        }
        // Counter fallback for counted arrays stored without offsets.
        let mut cnt_slice: Option<Vec<u64>> = None;
        if let (BranchKind::Counted(_, cname), None) = (&info.kind, &bb.offsets) {
            if counter.is_none() {
                if depth > 4 || cname == name {
                    return Err(RootError::Malformed {
                        path: tree.file.path_str.clone(),
                        context: bctx(),
                        detail: "counter branch loop".into(),
                    });
                }
                let col = read_branch_depth(tree, cname, None, depth + 1)?;
                let Column::Scalar(v) = col else {
                    return Err(RootError::Malformed {
                        path: tree.file.path_str.clone(),
                        context: bctx(),
                        detail: format!("counter branch '{cname}' is not a scalar"),
                    });
                };
                let mut cv = Vec::with_capacity(v.len());
                for j in 0..v.len() {
                    let x = v.get_f64(j).unwrap_or(-1.0);
                    if !(0.0..=1e9).contains(&x) {
                        return Err(RootError::Malformed {
                            path: tree.file.path_str.clone(),
                            context: bctx(),
                            detail: format!("counter '{cname}' has value {x}"),
                        });
                    }
                    cv.push(x as u64);
                }
                counter = Some((0, cv));
            }
            if let Some((_, cv)) = &counter {
                let s = usize::try_from(entry).unwrap_or(usize::MAX);
                let e = s.saturating_add(bb.nevbuf);
                cnt_slice = Some(cv.get(s..e).map(|x| x.to_vec()).ok_or_else(|| RootError::Malformed {
                    path: tree.file.path_str.clone(),
                    context: bctx(),
                    detail: format!("counter branch '{}' has fewer entries", cname),
                })?);
            }
        }
        decode(&info.kind, &bb, &mut values, &mut offsets, cnt_slice.as_deref())
            .map_err(|f| f.at(&tree.file.path_str, bctx()))?;
        entry += nb;
    }
    let covered = match &range {
        None => entry == total,
        Some(r) => entry >= r.end,
    };
    if !covered {
        return Err(tree_err(
            tree,
            name,
            Fail::Malformed(format!("baskets hold {entry} entries, branch says {total}")),
        ));
    }
    let col = if jagged { Column::Jagged { offsets, values } } else { Column::Scalar(values) };
    match range {
        None => Ok(col),
        Some(r) => {
            let first = first_entry.unwrap_or(r.start);
            let s = r.start.saturating_sub(first) as usize;
            let e = r.end.saturating_sub(first) as usize;
            Ok(slice_column(col, s, e.max(s)))
        }
    }
}

fn slice_column(col: Column, s: usize, e: usize) -> Column {
    match col {
        Column::Scalar(v) => Column::Scalar(v.slice(s, e)),
        Column::Jagged { offsets, values } => {
            let e = e.min(offsets.len().saturating_sub(1));
            let s = s.min(e);
            let base = offsets.get(s).copied().unwrap_or(0);
            let top = offsets.get(e).copied().unwrap_or(base);
            let new_offsets: Vec<u64> = offsets.get(s..=e).unwrap_or(&[0]).iter().map(|o| o - base).collect();
            Column::Jagged { offsets: new_offsets, values: values.slice(base as usize, top as usize) }
        }
    }
}

fn tree_err(tree: &Tree, branch: &str, f: Fail) -> RootError {
    f.at(&tree.file.path_str, ctx_prefix(&[format!("tree '{}'", tree.name), format!("branch '{branch}'")]))
}

fn add_ctx(e: RootError, tree: &Tree, branch: &str, index: usize, seek: u64) -> RootError {
    let pre = ctx_prefix(&[
        format!("tree '{}'", tree.name),
        format!("branch '{branch}'"),
        format!("basket {index} at offset {seek}"),
    ]);
    match e {
        RootError::Truncated { path, context, detail } => {
            RootError::Truncated { path, context: format!("{pre}{context}"), detail }
        }
        RootError::Io { path, context, source } => RootError::Io { path, context: format!("{pre}{context}"), source },
        other => other,
    }
}
