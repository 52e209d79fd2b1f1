//! `TFile` header, `TKey`s and `TDirectory` key lists.
//!
//! Layout (uproot `reading.py` `ReadOnlyFile`/`ReadOnlyDirectory`/`ReadOnlyKey`,
//! groot `riofs/file.go`, `riofs/key.go`, `riofs/dir.go`):
//!
//! * byte 0: `"root"`, `fVersion` (i32; `>= 1000000` means 64-bit seek
//!   pointers), `fBEGIN`, `fEND`, `fSeekFree`, `fNbytesFree`, `nfree`,
//!   `fNbytesName`, `fUnits`, `fCompress`, `fSeekInfo`, `fNbytesInfo`, UUID;
//! * `fBEGIN + fNbytesName`: the top `TDirectory` record (`fVersion` i16, `> 1000`
//!   means 64-bit seeks, two dates, `fNbytesKeys`, `fNbytesName`, `fSeekDir`,
//!   `fSeekParent`, `fSeekKeys`);
//! * `fSeekKeys`: a `TKey` header followed by an i32 count and that many `TKey` headers;
//! * a `TKey` header: `fNbytes` i32, `fVersion` i16 (`> 1000`: 64-bit seeks),
//!   `fObjlen` i32, `fDatime`, `fKeylen` i16, `fCycle` i16, `fSeekKey`, `fSeekPdir`,
//!   then class name, name and title as `TString`s; the object's bytes
//!   (possibly compressed, see [`super::compress`]) follow at `fSeekKey + fKeylen`.
//!
//! Subdirectories are keys of class `TDirectory`/`TDirectoryFile` whose payload
//! is again a `TDirectory` record.
//!
//! Files up to [`WHOLE_FILE_LIMIT`] bytes are read into memory in one call;
//! larger files are read piecewise with positioned reads.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::compress;
use super::cursor::Cursor;
use super::dataset::Dataset;
use super::error::{ctx_prefix, path_str, Fail, PResult, RootError};
use super::ntuple::RNTuple;
use super::tree::Tree;

/// Files up to this size are read into memory at once.
pub const WHOLE_FILE_LIMIT: u64 = 64 << 20;
/// Largest object (TTree metadata, basket) the reader will decompress (bytes).
pub const MAX_OBJECT: usize = 1 << 30;
/// Maximum directory nesting followed.
const MAX_DEPTH: usize = 16;

/// Where the bytes come from.
#[derive(Debug)]
enum Source {
    Memory(Vec<u8>),
    Disk(Mutex<File>),
}

/// Shared state of an open file (used by [`Tree`] to read baskets).
#[derive(Debug)]
pub(super) struct FileInner {
    pub(super) path: PathBuf,
    pub(super) path_str: String,
    source: Source,
    pub(super) len: u64,
}

impl FileInner {
    /// Reads `len` bytes at `off`; `what` names the record for the error.
    pub(super) fn read_at(&self, off: u64, len: usize, what: &str) -> Result<Cow<'_, [u8]>, RootError> {
        let end = off.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(RootError::Truncated {
                path: self.path_str.clone(),
                context: String::new(),
                detail: format!("{what} at {off} claims {len} bytes, file has {}", self.len),
            });
        }
        match &self.source {
            Source::Memory(v) => {
                let s = off as usize;
                v.get(s..s + len).map(Cow::Borrowed).ok_or_else(|| RootError::Truncated {
                    path: self.path_str.clone(),
                    context: String::new(),
                    detail: format!("{what} at {off} claims {len} bytes, file has {}", self.len),
                })
            }
            Source::Disk(m) => {
                let mut f = m.lock().unwrap_or_else(|p| p.into_inner());
                let mut buf = vec![0u8; len];
                f.seek(SeekFrom::Start(off)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| RootError::Io {
                    path: self.path_str.clone(),
                    context: format!("reading {what} at {off}: "),
                    source: e,
                })?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Reads and decompresses the object a key points to.
    pub(super) fn read_object(&self, key: &KeyHeader, what: &str) -> Result<Vec<u8>, RootError> {
        let stored = key.stored_len().map_err(|f| f.at(&self.path_str, ctx_prefix(&[what.to_string()])))?;
        let objlen = usize::try_from(key.objlen).unwrap_or(usize::MAX);
        if key.objlen < 0 || objlen > MAX_OBJECT {
            return Err(RootError::Malformed {
                path: self.path_str.clone(),
                context: ctx_prefix(&[what.to_string()]),
                detail: format!("object length {} out of range", key.objlen),
            });
        }
        let start = key.seek_key.saturating_add(key.keylen as u64);
        let raw = self.read_at(start, stored, what)?;
        compress::decompress(&raw, objlen)
            .map_err(|f| f.at(&self.path_str, ctx_prefix(&[format!("{what} at offset {}", key.seek_key)])))
    }
}

/// A parsed `TKey` header.
#[derive(Clone, Debug)]
pub(super) struct KeyHeader {
    pub(super) nbytes: i32,
    pub(super) objlen: i32,
    pub(super) keylen: i16,
    pub(super) cycle: i16,
    pub(super) seek_key: u64,
    pub(super) class: String,
    pub(super) name: String,
    pub(super) title: String,
}

impl KeyHeader {
    /// Parses a key header at the cursor.
    pub(super) fn parse(c: &mut Cursor<'_>) -> PResult<KeyHeader> {
        let nbytes = c.i32()?;
        let version = c.i16()?;
        let objlen = c.i32()?;
        let _datime = c.u32()?;
        let keylen = c.i16()?;
        let cycle = c.i16()?;
        let (seek_key, _seek_pdir) =
            if version > 1000 { (c.i64()?, c.i64()?) } else { (c.i32()? as i64, c.i32()? as i64) };
        let class = c.tstring()?;
        let name = c.tstring()?;
        let title = c.tstring()?;
        if seek_key < 0 || keylen < 0 || nbytes < 0 {
            return Err(Fail::Malformed(format!(
                "key '{name}' has negative size or position (fNbytes {nbytes}, fKeylen {keylen}, fSeekKey {seek_key})"
            )));
        }
        Ok(KeyHeader { nbytes, objlen, keylen, cycle, seek_key: seek_key as u64, class, name, title })
    }

    /// Number of stored (possibly compressed) payload bytes.
    pub(super) fn stored_len(&self) -> PResult<usize> {
        let n = self.nbytes as i64 - self.keylen as i64;
        if n < 0 {
            return Err(Fail::Malformed(format!(
                "key '{}': fNbytes {} smaller than fKeylen {}",
                self.name, self.nbytes, self.keylen
            )));
        }
        Ok(n as usize)
    }
}

/// Public description of one key in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Name, with `dir/` prefixes for keys inside subdirectories.
    pub name: String,
    /// Class name (`TTree`, `TH1F`, `TDirectoryFile`, ...).
    pub class: String,
    /// Cycle number.
    pub cycle: i16,
    /// Title.
    pub title: String,
}

/// An open ROOT file.
///
/// Opening reads the file header and the top directory's key list only; a
/// [`Tree`] reads its metadata on [`RootFile::tree`], and baskets are read on
/// [`Tree::read`].
#[derive(Debug)]
pub struct RootFile {
    inner: std::sync::Arc<FileInner>,
    keys: Vec<(String, KeyHeader)>,
    /// File format version (e.g. 62208 for ROOT 6.22/08).
    pub version: i32,
    /// `fCompress` of the file header (algorithm * 100 + level).
    pub compression: i32,
}

impl RootFile {
    /// Opens a ROOT file and reads its key list (subdirectories included).
    /// Files up to [`WHOLE_FILE_LIMIT`] bytes are read into memory at once.
    pub fn open(path: &Path) -> Result<RootFile, RootError> {
        Self::open_with_limit(path, WHOLE_FILE_LIMIT)
    }

    /// Like [`RootFile::open`] but never reads the whole file: every record is
    /// fetched with a positioned read when needed (lower memory for big files).
    pub fn open_streaming(path: &Path) -> Result<RootFile, RootError> {
        Self::open_with_limit(path, 0)
    }

    fn open_with_limit(path: &Path, whole_file_limit: u64) -> Result<RootFile, RootError> {
        let ps = path_str(path);
        let io_err =
            |e: std::io::Error, what: &str| RootError::Io { path: ps.clone(), context: what.to_string(), source: e };
        let mut f = File::open(path).map_err(|e| io_err(e, "opening: "))?;
        let len = f.metadata().map_err(|e| io_err(e, "stat: "))?.len();
        if len == 0 {
            return Err(RootError::NotRoot { path: ps, reason: "empty file".into() });
        }
        let source = if len <= whole_file_limit {
            let mut v = Vec::with_capacity(len as usize);
            f.read_to_end(&mut v).map_err(|e| io_err(e, "reading: "))?;
            Source::Memory(v)
        } else {
            Source::Disk(Mutex::new(f))
        };
        let len = match &source {
            Source::Memory(v) => v.len() as u64,
            Source::Disk(_) => len,
        };
        Self::from_source(path, source, len)
    }

    /// Parses a ROOT file held in memory; `path` is only used in messages.
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<RootFile, RootError> {
        let len = data.len() as u64;
        if len == 0 {
            return Err(RootError::NotRoot { path: path_str(path), reason: "empty file".into() });
        }
        Self::from_source(path, Source::Memory(data), len)
    }

    fn from_source(path: &Path, source: Source, len: u64) -> Result<RootFile, RootError> {
        let ps = path_str(path);
        let inner = FileInner { path: path.to_path_buf(), path_str: ps.clone(), source, len };
        let head = inner.read_at(0, (len.min(80)) as usize, "file header")?;
        if head.get(..4) != Some(b"root".as_slice()) {
            return Err(RootError::NotRoot { path: ps, reason: "bad magic".into() });
        }
        let hdr = parse_header(&head).map_err(|f| f.at(&ps, "file header: ".into()))?;
        drop(head);
        let inner = std::sync::Arc::new(inner);
        let mut file = RootFile { inner, keys: Vec::new(), version: hdr.version, compression: hdr.compress };
        // Top directory record.
        let dir_at = (hdr.begin as u64).saturating_add(hdr.nbytes_name as u64);
        let dir = file.read_dir_record(dir_at, "top directory")?;
        let mut keys = Vec::new();
        let mut visited = Vec::new();
        file.collect_keys(&dir, "", 0, &mut keys, &mut visited)?;
        file.keys = keys;
        Ok(file)
    }

    /// Path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read_dir_record(&self, at: u64, what: &str) -> Result<DirRecord, RootError> {
        let avail = self.inner.len.saturating_sub(at).min(64) as usize;
        let raw = self.inner.read_at(at, avail, what)?;
        let mut c = Cursor::new(&raw, 0);
        parse_dir(&mut c).map_err(|f| f.at(&self.inner.path_str, ctx_prefix(&[format!("{what} at {at}")])))
    }

    fn collect_keys(
        &self,
        dir: &DirRecord,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, KeyHeader)>,
        visited: &mut Vec<u64>,
    ) -> Result<(), RootError> {
        if depth > MAX_DEPTH || visited.contains(&dir.seek_keys) {
            return Ok(());
        }
        visited.push(dir.seek_keys);
        let ps = &self.inner.path_str;
        let what = if prefix.is_empty() {
            "key list".to_string()
        } else {
            format!("key list of directory '{}'", prefix.trim_end_matches('/'))
        };
        if dir.seek_keys == 0 {
            return Ok(());
        }
        let nbytes = usize::try_from(dir.nbytes_keys).unwrap_or(0);
        if nbytes == 0 || dir.nbytes_keys < 0 {
            return Err(RootError::Malformed {
                path: ps.clone(),
                context: ctx_prefix(&[what]),
                detail: format!("fNbytesKeys is {}", dir.nbytes_keys),
            });
        }
        let raw = self.inner.read_at(dir.seek_keys, nbytes, &what)?;
        let mut c = Cursor::new(&raw, 0);
        let parsed: PResult<Vec<KeyHeader>> = (|| {
            let _listkey = KeyHeader::parse(&mut c)?;
            let n = c.i32()?;
            if n < 0 || (n as usize).saturating_mul(26) > c.remaining() {
                return Err(Fail::Malformed(format!("key count {n} does not fit in {} bytes", c.remaining())));
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(KeyHeader::parse(&mut c)?);
            }
            Ok(v)
        })();
        let keys = parsed.map_err(|f| f.at(ps, ctx_prefix(&[format!("{what} at {}", dir.seek_keys)])))?;
        for k in keys {
            let full = format!("{prefix}{}", k.name);
            let is_dir = k.class == "TDirectory" || k.class == "TDirectoryFile";
            if is_dir {
                let payload = self.inner.read_object(&k, &format!("directory '{full}'"))?;
                let mut c = Cursor::new(&payload, 0);
                let sub = parse_dir(&mut c).map_err(|f| f.at(ps, ctx_prefix(&[format!("directory '{full}'")])))?;
                out.push((full.clone(), k));
                self.collect_keys(&sub, &format!("{full}/"), depth + 1, out, visited)?;
            } else {
                out.push((full, k));
            }
        }
        Ok(())
    }

    /// All keys (subdirectory contents as `dir/name`), every cycle.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|(n, k)| KeyInfo { name: n.clone(), class: k.class.clone(), cycle: k.cycle, title: k.title.clone() })
            .collect()
    }

    /// Names of all TTrees (highest cycle only).
    pub fn tree_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (n, k) in &self.keys {
            if k.class == "TTree" && !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    }

    /// Names of all RNTuples (`ROOT::RNTuple` keys, highest cycle only).
    pub fn ntuple_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (n, k) in &self.keys {
            if k.class == NTUPLE_CLASS && !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    }

    /// The key `name` (`"dir/name"`, `"name;cycle"`), highest cycle first;
    /// returns the name without cycle and the key.
    fn find_key<'s, 'n>(&'s self, name: &'n str) -> Option<(&'n str, &'s KeyHeader)> {
        let (base, cycle) = match name.rsplit_once(';') {
            Some((b, c)) => match c.parse::<i16>() {
                Ok(c) => (b, Some(c)),
                Err(_) => (name, None),
            },
            None => (name, None),
        };
        let base = base.trim_start_matches('/');
        self.keys
            .iter()
            .filter(|(n, k)| n == base && cycle.is_none_or(|c| c == k.cycle))
            .max_by_key(|(_, k)| k.cycle)
            .map(|(_, k)| (base, k))
    }

    /// Opens the TTree `name` (`"dir/tree"` for subdirectories; `"name;cycle"` picks a cycle).
    pub fn tree(&self, name: &str) -> Result<Tree, RootError> {
        let Some((base, key)) = self.find_key(name) else {
            return Err(RootError::TreeNotFound {
                path: self.inner.path_str.clone(),
                name: name.to_string(),
                available: list_or_none(self.tree_names()),
            });
        };
        if key.class != "TTree" {
            return Err(RootError::NotATree {
                path: self.inner.path_str.clone(),
                name: name.to_string(),
                class: key.class.clone(),
            });
        }
        let payload = self.inner.read_object(key, &format!("tree '{base}'"))?;
        Tree::parse(self.inner.clone(), base.to_string(), key, &payload)
    }

    /// Opens the RNTuple `name` (format v1.x; `"dir/name"`, `"name;cycle"` as for [`RootFile::tree`]).
    pub fn ntuple(&self, name: &str) -> Result<RNTuple, RootError> {
        match self.find_key(name) {
            Some((_, key)) if key.class != NTUPLE_CLASS => Err(RootError::InvalidArgument {
                path: self.inner.path_str.clone(),
                context: String::new(),
                detail: format!("key '{name}' is a {}, not an RNTuple", key.class),
            }),
            _ => match self.dataset(name)? {
                Dataset::Ntuple(n) => Ok(n),
                Dataset::Tree(t) => Err(RootError::InvalidArgument {
                    path: self.inner.path_str.clone(),
                    context: String::new(),
                    detail: format!("'{}' is a TTree, not an RNTuple", t.name()),
                }),
            },
        }
    }

    /// Opens `name` as whichever it is, a TTree or an RNTuple.
    pub fn dataset(&self, name: &str) -> Result<Dataset, RootError> {
        let Some((base, key)) = self.find_key(name) else {
            let mut all = self.tree_names();
            all.extend(self.ntuple_names());
            return Err(RootError::DatasetNotFound {
                path: self.inner.path_str.clone(),
                name: name.to_string(),
                available: list_or_none(all),
            });
        };
        match key.class.as_str() {
            "TTree" => self.tree(name).map(Dataset::Tree),
            NTUPLE_CLASS => RNTuple::open(self.inner.clone(), base.to_string(), key).map(Dataset::Ntuple),
            other => Err(RootError::NotADataset {
                path: self.inner.path_str.clone(),
                name: name.to_string(),
                class: other.to_string(),
            }),
        }
    }
}

/// Class name of RNTuple anchors.
const NTUPLE_CLASS: &str = "ROOT::RNTuple";

fn list_or_none(v: Vec<String>) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

#[derive(Debug)]
struct FileHeaderFields {
    version: i32,
    begin: i32,
    nbytes_name: i32,
    compress: i32,
}

fn parse_header(b: &[u8]) -> PResult<FileHeaderFields> {
    let mut c = Cursor::new(b, 0);
    c.skip(4)?;
    let version = c.i32()?;
    let begin = c.i32()?;
    let big = version >= 1_000_000;
    if big {
        let _end = c.i64()?;
        let _seek_free = c.i64()?;
    } else {
        let _end = c.i32()?;
        let _seek_free = c.i32()?;
    }
    let _nbytes_free = c.i32()?;
    let _nfree = c.i32()?;
    let nbytes_name = c.i32()?;
    let _units = c.u8()?;
    let compress = c.i32()?;
    if begin < 0 || nbytes_name < 0 {
        return Err(Fail::Malformed(format!("fBEGIN {begin} / fNbytesName {nbytes_name} negative")));
    }
    Ok(FileHeaderFields { version: version % 1_000_000, begin, nbytes_name, compress })
}

/// The part of a `TDirectory` record the reader needs.
#[derive(Debug, Clone)]
struct DirRecord {
    nbytes_keys: i32,
    seek_keys: u64,
}

fn parse_dir(c: &mut Cursor<'_>) -> PResult<DirRecord> {
    let version = c.i16()?;
    let _ctime = c.u32()?;
    let _mtime = c.u32()?;
    let nbytes_keys = c.i32()?;
    let _nbytes_name = c.i32()?;
    let seek_keys = if version > 1000 {
        let _seek_dir = c.i64()?;
        let _seek_parent = c.i64()?;
        c.i64()?
    } else {
        let _seek_dir = c.i32()?;
        let _seek_parent = c.i32()?;
        c.i32()? as i64
    };
    if seek_keys < 0 {
        return Err(Fail::Malformed(format!("fSeekKeys {seek_keys} negative")));
    }
    Ok(DirRecord { nbytes_keys, seek_keys: seek_keys as u64 })
}
