//! Robustness property test: mutated versions of the real files (truncated,
//! bytes flipped, size-like fields overwritten, pieces of two files spliced,
//! pieces of a file copied over other places of it) are opened and every
//! branch of every tree and every field of every RNTuple is read. Nothing may panic
//! (panics are caught and reported as failures) and every case must finish
//! quickly. `FEDHEX_FUZZ_ITERS` sets the number of mutated inputs (default
//! 500); `FEDHEX_FUZZ_SEED` the seed.

mod root_common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fedhex::data::root as rr;
use root_common::*;
use rr::{RootFile, TreeWriter, Values};

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for f in [
        "uproot-HZZ.root",
        "uproot-HZZ-lzma.root",
        "uproot-HZZ-lz4.root",
        "uproot-HZZ-zstd.root",
        "uproot-HZZ-uncompressed.root",
        "uproot-Zmumu.root",
        "uproot-stl_containers.root",
        "uproot-vectorVectorDouble.root",
        "nanoAOD_2015_CMS_Open_Data_ttbar.root",
    ] {
        let p = data_file(f);
        v.push((f.to_string(), std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"))));
    }
    // RNTuples written by ROOT (split/zigzag/delta, Bit, Real32Quant, several
    // cluster groups, deferred and alias columns) and by uproot (plain columns).
    for f in [
        "test_split_3e4_rntuple_v1-0-0-0.root",
        "test_splitint_rntuple_v1-0-1-0.root",
        "test_float_types_rntuple_v1-0-0-0.root",
        "test_extension_columns_rntuple_v1-0-0-0.root",
        "test_multiple_cluster_groups_rntuple_v1-0-0-0.root",
        "test_multiple_representations_rntuple_v1-0-0-0.root",
        "test_stl_containers_rntuple_v1-0-0-0.root",
        "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root",
        "uproot-rntuple-zlib.root",
    ] {
        let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/rntuple")).join(f);
        v.push((f.to_string(), std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))));
    }
    // A file from our own writer (flat + jagged).
    let dir = std::env::temp_dir().join(format!("fedhex-root-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let p = dir.join("w.root");
    let mut w = TreeWriter::new("t");
    w.basket_entries(50);
    let n = 300usize;
    let _ = w.add_branch("a", Values::F64((0..n).map(|i| i as f64).collect()));
    let offs: Vec<u64> = (0..=n as u64).map(|i| i * 2).collect();
    let _ = w.add_jagged("j", "nj", offs, Values::I32((0..2 * n as i32).collect()));
    w.write(&p).unwrap_or_else(|e| panic!("{e}"));
    v.push(("written.root".into(), std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"))));
    let _ = std::fs::remove_dir_all(&dir);
    v
}

fn mutate(rng: &mut Rng, corpus: &[(String, Vec<u8>)]) -> (String, Vec<u8>) {
    let (name, base) = &corpus[rng.below(corpus.len())];
    let mut d = base.clone();
    let kind = rng.below(7);
    let desc;
    match kind {
        0 => {
            let cut = rng.below(d.len() + 1);
            d.truncate(cut);
            desc = format!("{name}: truncated at {cut}");
        }
        1 => {
            let k = 1 + rng.below(16);
            for _ in 0..k {
                let i = rng.below(d.len());
                if let Some(b) = d.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            desc = format!("{name}: {k} bit flips (rng state {})", rng.0);
        }
        2 => {
            // Overwrite a 4-byte word with a size-like value, preferably in metadata.
            let k = 1 + rng.below(4);
            for _ in 0..k {
                let i = if rng.below(2) == 0 { rng.below(d.len().min(600)) } else { rng.below(d.len()) };
                let vals =
                    [0u32, 1, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x4000_0000, 0x8000_0000, d.len() as u32, rng.next() as u32];
                let v = vals[rng.below(vals.len())].to_be_bytes();
                for (j, b) in v.iter().enumerate() {
                    if let Some(x) = d.get_mut(i + j) {
                        *x = *b;
                    }
                }
            }
            desc = format!("{name}: {k} words overwritten (rng state {})", rng.0);
        }
        3 => {
            let (other, ob) = &corpus[rng.below(corpus.len())];
            let a = rng.below(d.len() + 1);
            let b = rng.below(ob.len() + 1);
            let mut s = d[..a].to_vec();
            s.extend_from_slice(&ob[b..]);
            d = s;
            desc = format!("{name}[..{a}] + {other}[{b}..]");
        }
        4 => {
            // Random bytes over a region near the tree metadata (the end of the file).
            let len = 1 + rng.below(64);
            let start = d.len().saturating_sub(rng.below(d.len().min(20_000) + 1));
            for i in start..(start + len).min(d.len()) {
                d[i] = rng.next() as u8;
            }
            desc = format!("{name}: random bytes at {start}");
        }
        5 => {
            // Splice a piece of the file over another place of it (a page or
            // envelope where another one should be; offsets stay valid).
            let l = 16 + rng.below(600);
            let a = rng.below(d.len().saturating_sub(l) + 1);
            let b = rng.below(d.len().saturating_sub(l) + 1);
            let chunk: Vec<u8> = d.get(a..(a + l).min(d.len())).unwrap_or(&[]).to_vec();
            for (j, x) in chunk.iter().enumerate() {
                if let Some(y) = d.get_mut(b + j) {
                    *y = *x;
                }
            }
            desc = format!("{name}: {l} bytes at {a} copied over {b}");
        }
        _ => {
            // Delete or duplicate a chunk (shifts every later offset).
            let a = rng.below(d.len() + 1);
            let l = rng.below(200).min(d.len() - a);
            if rng.below(2) == 0 {
                d.drain(a..a + l);
            } else {
                let chunk = d[a..a + l].to_vec();
                d.splice(a..a, chunk);
            }
            desc = format!("{name}: chunk of {l} at {a} deleted/duplicated");
        }
    }
    (desc, d)
}

fn exercise(label: &str, data: Vec<u8>) -> usize {
    let mut n = 0;
    let Ok(f) = RootFile::from_bytes(&PathBuf::from(label), data) else {
        return 0;
    };
    let _ = f.keys();
    for t in f.tree_names() {
        let Ok(tree) = f.tree(&t) else { continue };
        for b in tree.branch_names() {
            let _ = tree.branch_info(&b);
            if tree.read(&b).is_ok() {
                n += 1;
            }
        }
        let _ = tree.read_range("nMuon", 1..3);
    }
    for name in f.ntuple_names() {
        let Ok(nt) = f.ntuple(&name) else { continue };
        for field in nt.field_names() {
            let _ = nt.field_info(&field);
            if nt.read(&field).is_ok() {
                n += 1;
            }
        }
        let _ = nt.read("no such field");
    }
    n
}

#[test]
fn mutated_files_never_panic() {
    let iters: usize = std::env::var("FEDHEX_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let seed: u64 = std::env::var("FEDHEX_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let corpus = corpus();
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut columns = 0usize;
    let start = Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..iters {
        let (desc, data) = mutate(&mut rng, &corpus);
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| exercise(&format!("case{i}"), data)));
        let dt = t0.elapsed();
        match r {
            Ok(n) => columns += n,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("case {i} ({desc}): panic: {msg}"));
            }
        }
        if dt > slowest.0 {
            slowest = (dt, desc.clone());
        }
        if dt > Duration::from_secs(20) {
            failures.push(format!("case {i} ({desc}) took {dt:?}"));
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz: {iters} inputs in {:?}, {columns} columns read successfully, slowest {:?} ({})",
        start.elapsed(),
        slowest.0,
        slowest.1
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
