//! Helpers shared by the `root_*` integration tests: locating the reference
//! data, parsing the expected-value files written by
//! `tests/fixtures/root/make_expected.py`, and comparing columns bit-exactly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use fedhex::data::root as rr;
use rr::{Column, Values};

/// Directory with the reference ROOT files: `tests/fixtures/root/files` in the
/// repository, or `$FEDHEX_SHARED_DATA/root` when that variable is set.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("FEDHEX_SHARED_DATA") {
        Some(base) => PathBuf::from(base).join("root"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/files")),
    }
}

/// Path of one reference file; panics with a clear message if missing.
pub fn data_file(name: &str) -> PathBuf {
    let p = data_dir().join(name);
    assert!(
        p.exists(),
        "reference file {} missing (tests/fixtures/root/files, or $FEDHEX_SHARED_DATA/root when set)",
        p.display()
    );
    p
}

/// Directory with the expected-value files.
pub fn expected_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/expected"))
}

/// One branch digest line.
#[derive(Debug, Clone)]
pub struct Digest {
    pub name: String,
    pub type_name: String,
    /// `None` when uproot does not read it as plain numbers.
    pub numbers: Option<(u64, u64, u64)>,
}

/// One fully dumped branch.
#[derive(Debug, Clone)]
pub struct Dump {
    pub type_name: String,
    pub offsets: Option<Vec<u64>>,
    /// Raw tokens (decimal ints, 0/1 bools or hex float bits).
    pub values: Vec<String>,
}

/// Parsed expected file.
#[derive(Debug, Clone)]
pub struct Expected {
    pub tree: String,
    pub entries: u64,
    pub digests: Vec<Digest>,
    pub dumps: HashMap<String, Dump>,
}

/// Reads `expected/<stem>.txt`.
pub fn expected(stem: &str) -> Expected {
    let p = expected_dir().join(format!("{stem}.txt"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut e = Expected { tree: String::new(), entries: 0, digests: Vec::new(), dumps: HashMap::new() };
    let mut current: Option<String> = None;
    for line in text.lines() {
        let mut it = line.split(' ');
        match it.next() {
            Some("tree") => {
                e.tree = it.next().unwrap_or_default().to_string();
                e.entries = it.next().unwrap_or("0").parse().unwrap_or(0);
            }
            Some("digest") => {
                let name = it.next().unwrap_or_default().to_string();
                let type_name = it.next().unwrap_or_default().to_string();
                let rest: Vec<&str> = it.collect();
                let numbers = if rest.first() == Some(&"-") {
                    None
                } else {
                    let p = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                    Some((p(0), p(1), p(2)))
                };
                e.digests.push(Digest { name, type_name, numbers });
            }
            Some("branch") => {
                let name = it.next().unwrap_or_default().to_string();
                let type_name = it.next().unwrap_or_default().to_string();
                e.dumps.insert(name.clone(), Dump { type_name, offsets: None, values: Vec::new() });
                current = Some(name);
            }
            Some("o") => {
                if let Some(d) = current.as_ref().and_then(|c| e.dumps.get_mut(c)) {
                    d.offsets = Some(it.filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(u64::MAX)).collect());
                }
            }
            Some("v") => {
                if let Some(d) = current.as_ref().and_then(|c| e.dumps.get_mut(c)) {
                    d.values = it.filter(|s| !s.is_empty()).map(str::to_string).collect();
                }
            }
            _ => {}
        }
    }
    e
}

/// Each value as the u64 the digest formula uses.
pub fn value_bits(v: &Values) -> Vec<u64> {
    match v {
        Values::Bool(x) => x.iter().map(|&b| b as u64).collect(),
        Values::I8(x) => x.iter().map(|&b| b as i64 as u64).collect(),
        Values::U8(x) => x.iter().map(|&b| b as u64).collect(),
        Values::I16(x) => x.iter().map(|&b| b as i64 as u64).collect(),
        Values::U16(x) => x.iter().map(|&b| b as u64).collect(),
        Values::I32(x) => x.iter().map(|&b| b as i64 as u64).collect(),
        Values::U32(x) => x.iter().map(|&b| b as u64).collect(),
        Values::I64(x) => x.iter().map(|&b| b as u64).collect(),
        Values::U64(x) => x.clone(),
        Values::F32(x) => x.iter().map(|&b| b.to_bits() as u64).collect(),
        Values::F64(x) => x.iter().map(|&b| b.to_bits()).collect(),
    }
}

/// The digest hash: sum of (i + 1) * bits_i, wrapping.
pub fn hsum(bits: &[u64]) -> u64 {
    bits.iter().enumerate().fold(0u64, |acc, (i, &b)| acc.wrapping_add(b.wrapping_mul(i as u64 + 1)))
}

/// Value tokens in the expected-file spelling.
pub fn value_tokens(v: &Values) -> Vec<String> {
    match v {
        Values::F32(_) | Values::F64(_) => value_bits(v).iter().map(|b| format!("{b:x}")).collect(),
        Values::Bool(x) => x.iter().map(|&b| if b { "1" } else { "0" }.to_string()).collect(),
        Values::I8(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::U8(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::I16(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::U16(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::I32(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::U32(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::I64(x) => x.iter().map(|b| b.to_string()).collect(),
        Values::U64(x) => x.iter().map(|b| b.to_string()).collect(),
    }
}

/// Whether an uproot typename is one this reader must decode.
pub fn is_supported_type(t: &str) -> bool {
    let base = t.strip_prefix("std::vector<").and_then(|s| s.strip_suffix('>')).unwrap_or(t);
    let base = base.split('[').next().unwrap_or(base);
    let suffix_ok = match t.find('[') {
        None => true,
        Some(i) => {
            let s = &t[i..];
            s == "[]" || (s.starts_with('[') && s.ends_with(']') && s[1..s.len() - 1].parse::<u32>().is_ok())
        }
    };
    suffix_ok
        && matches!(
            base,
            "bool"
                | "int8_t"
                | "uint8_t"
                | "int16_t"
                | "uint16_t"
                | "int32_t"
                | "uint32_t"
                | "int64_t"
                | "uint64_t"
                | "float"
                | "double"
        )
}

/// Offsets of a column (`None` for scalars).
pub fn offsets_of(c: &Column) -> Option<&[u64]> {
    match c {
        Column::Scalar(_) => None,
        Column::Jagged { offsets, .. } => Some(offsets),
    }
}
