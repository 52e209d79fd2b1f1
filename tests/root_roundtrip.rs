//! Round trips through uproot: files written by `TreeWriter` are read back by
//! uproot (Python from `FEDHEX_PYTHON`), and files written by uproot are read
//! by the Rust reader. Both directions compare names, types and every value
//! bit-exactly against uproot's dump (`tests/fixtures/root/dump_tree.py`).

mod root_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fedhex::data::root as rr;
use root_common::*;
use rr::{Column, Compression, RootFile, TreeWriter, Values};

fn python() -> String {
    match std::env::var("FEDHEX_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "FEDHEX_PYTHON is not set: set it to a Python with uproot, awkward and numpy \
             (e.g. FEDHEX_PYTHON=~/.cache/fedhex/torch-venv/bin/python) to run the uproot round-trip tests"
        ),
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root")).join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fedhex-root-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// Runs uproot's dump of `tree` in `file`.
fn uproot_dump(file: &Path, tree: &str) -> Expected {
    let out = Command::new(python())
        .arg(script("dump_tree.py"))
        .arg(file)
        .arg(tree)
        .output()
        .unwrap_or_else(|e| panic!("running FEDHEX_PYTHON: {e}"));
    assert!(
        out.status.success(),
        "uproot failed to read {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_expected_text(&String::from_utf8_lossy(&out.stdout))
}

fn parse_expected_text(text: &str) -> Expected {
    let mut e = Expected { tree: String::new(), entries: 0, digests: Vec::new(), dumps: Default::default() };
    let mut order = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let mut it = line.split(' ');
        match it.next() {
            Some("tree") => {
                e.tree = it.next().unwrap_or_default().into();
                e.entries = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            }
            Some("branch") => {
                let name: String = it.next().unwrap_or_default().into();
                let tn: String = it.next().unwrap_or_default().into();
                e.dumps.insert(name.clone(), Dump { type_name: tn.clone(), offsets: None, values: Vec::new() });
                order.push(Digest { name: name.clone(), type_name: tn, numbers: None });
                cur = Some(name);
            }
            Some("o") => {
                if let Some(d) = cur.as_ref().and_then(|c| e.dumps.get_mut(c)) {
                    d.offsets = Some(it.filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(u64::MAX)).collect());
                }
            }
            Some("v") => {
                if let Some(d) = cur.as_ref().and_then(|c| e.dumps.get_mut(c)) {
                    d.values = it.filter(|s| !s.is_empty()).map(str::to_string).collect();
                }
            }
            _ => {}
        }
    }
    e.digests = order;
    e
}

/// Deterministic test data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn sample_writer(n: usize, seed: u64) -> (TreeWriter, Vec<(String, String, Column)>) {
    let mut r = Lcg(seed);
    let mut w = TreeWriter::new("events");
    w.title("written by fedhex");
    let mut cols: Vec<(String, String, Column)> = Vec::new();
    let f32s: Vec<f32> = (0..n).map(|_| (r.next() as f32 / 1e10).sin() * 100.0).collect();
    let f64s: Vec<f64> = (0..n).map(|i| if i == 3 { f64::NAN } else { (r.next() as f64).ln() * -1.5 }).collect();
    let i32s: Vec<i32> = (0..n).map(|_| r.next() as i32).collect();
    let i64s: Vec<i64> = (0..n).map(|_| r.next() as i64 - (1 << 52)).collect();
    let u32s: Vec<u32> = (0..n).map(|_| r.next() as u32).collect();
    let u64s: Vec<u64> = (0..n).map(|_| r.next() << 11 | 7).collect();
    let bools: Vec<bool> = (0..n).map(|_| r.next() % 3 == 1).collect();
    let i8s: Vec<i8> = (0..n).map(|_| r.next() as i8).collect();
    let u16s: Vec<u16> = (0..n).map(|_| r.next() as u16).collect();
    let flat: Vec<(&str, &str, Values)> = vec![
        ("x_f32", "float", Values::F32(f32s)),
        ("x_f64", "double", Values::F64(f64s)),
        ("x_i32", "int32_t", Values::I32(i32s)),
        ("x_i64", "int64_t", Values::I64(i64s)),
        ("x_u32", "uint32_t", Values::U32(u32s)),
        ("x_u64", "uint64_t", Values::U64(u64s)),
        ("x_bool", "bool", Values::Bool(bools)),
        ("x_i8", "int8_t", Values::I8(i8s)),
        ("x_u16", "uint16_t", Values::U16(u16s)),
    ];
    for (name, tn, v) in flat {
        w.add_branch(name, v.clone()).unwrap_or_else(|e| panic!("{e}"));
        cols.push((name.into(), tn.into(), Column::Scalar(v)));
    }
    let mut offsets = vec![0u64];
    for _ in 0..n {
        let k = r.next() % 5;
        offsets.push(offsets.last().copied().unwrap_or(0) + k);
    }
    let total = *offsets.last().unwrap_or(&0) as usize;
    let pt: Vec<f32> = (0..total).map(|i| i as f32 * 0.25 + 0.125).collect();
    let eta: Vec<f64> = (0..total).map(|i| -(i as f64) / 7.0).collect();
    let counts: Vec<i32> = offsets.windows(2).map(|w| (w[1] - w[0]) as i32).collect();
    w.add_jagged("Muon_pt", "nMuon", offsets.clone(), Values::F32(pt.clone())).unwrap_or_else(|e| panic!("{e}"));
    w.add_jagged("Muon_eta", "nMuon", offsets.clone(), Values::F64(eta.clone())).unwrap_or_else(|e| panic!("{e}"));
    cols.push(("nMuon".into(), "int32_t".into(), Column::Scalar(Values::I32(counts))));
    cols.push((
        "Muon_pt".into(),
        "float[]".into(),
        Column::Jagged { offsets: offsets.clone(), values: Values::F32(pt) },
    ));
    cols.push(("Muon_eta".into(), "double[]".into(), Column::Jagged { offsets, values: Values::F64(eta) }));
    // Expected on-disk order: flat branches, then the counter, then the jagged ones.
    (w, cols)
}

fn check_against_dump(exp: &Expected, cols: &[(String, String, Column)], what: &str) {
    let names: Vec<&str> = exp.digests.iter().map(|d| d.name.as_str()).collect();
    let want: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, want, "{what}: branch names/order");
    for (name, tn, col) in cols {
        let d = exp.dumps.get(name).unwrap_or_else(|| panic!("{what}: uproot lacks {name}"));
        assert_eq!(&d.type_name, tn, "{what}: type of {name}");
        assert_eq!(d.offsets.as_deref(), offsets_of(col), "{what}: offsets of {name}");
        assert_eq!(d.values, value_tokens(col.values()), "{what}: values of {name}");
    }
}

#[test]
fn treewriter_output_reads_back_in_uproot_and_rust() {
    let dir = tmpdir("write");
    for (tag, n, basket, comp) in [
        ("zlib", 1000usize, 32768usize, Compression::Zlib(1)),
        ("zlib-small-baskets", 1000, 37, Compression::Zlib(6)),
        ("uncompressed", 500, 100, Compression::None),
        ("empty", 0, 100, Compression::Zlib(1)),
    ] {
        let (mut w, cols) = sample_writer(n, 42 + n as u64);
        w.compression(comp).basket_entries(basket);
        let path = dir.join(format!("{tag}.root"));
        w.write(&path).unwrap_or_else(|e| panic!("{e}"));
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

        // Rust reads it back.
        let f = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let t = f.tree("events").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.entries(), n as u64, "{tag}");
        for (name, tn, col) in &cols {
            let got = t.read(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(value_tokens(got.values()), value_tokens(col.values()), "{tag}: {name}");
            assert_eq!(offsets_of(&got), offsets_of(col), "{tag}: {name}");
            assert_eq!(&t.branch_info(name).map(|b| b.type_name.clone()).unwrap_or_default(), tn);
        }

        // uproot reads it back.
        let exp = uproot_dump(&path, "events");
        assert_eq!(exp.entries, n as u64, "{tag}: uproot entries");
        check_against_dump(&exp, &cols, tag);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uproot_written_file_reads_in_rust() {
    let dir = tmpdir("uproot");
    let path = dir.join("uproot.root");
    let out = Command::new(python())
        .arg(script("write_uproot.py"))
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running FEDHEX_PYTHON: {e}"));
    assert!(out.status.success(), "uproot write failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let exp = uproot_dump(&path, "t");
    let f = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.entries(), exp.entries);
    assert_eq!(t.branch_names(), exp.digests.iter().map(|d| d.name.clone()).collect::<Vec<_>>());
    for d in &exp.digests {
        let dump = &exp.dumps[&d.name];
        let col = t.read(&d.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.branch_info(&d.name).map(|b| b.type_name.clone()).unwrap_or_default(),
            dump.type_name,
            "{}",
            d.name
        );
        assert_eq!(offsets_of(&col), dump.offsets.as_deref(), "{}", d.name);
        assert_eq!(value_tokens(col.values()), dump.values, "{}", d.name);
    }
    // Tree in a subdirectory.
    let keys = f.keys();
    assert!(keys.iter().any(|k| k.name == "sub" && k.class.starts_with("TDirectory")), "{keys:?}");
    assert!(keys.iter().any(|k| k.name == "sub/t2" && k.class == "TTree"), "{keys:?}");
    let t2 = f.tree("sub/t2").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t2.read("a").ok(), Some(Column::Scalar(Values::I32((0..10).collect()))));
    // Streaming mode reads the same.
    let fs = RootFile::open_streaming(&path).unwrap_or_else(|e| panic!("{e}"));
    let ts = fs.tree("t").unwrap_or_else(|e| panic!("{e}"));
    for b in t.branch_names() {
        let a = t.read(&b).unwrap_or_else(|e| panic!("{e}"));
        let s = ts.read(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value_tokens(a.values()), value_tokens(s.values()), "{b}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = TreeWriter::new("t");
    assert!(w.add_branch("a", Values::F32(vec![1.0])).is_ok());
    assert!(w.add_branch("a", Values::F32(vec![1.0])).is_err(), "duplicate");
    assert!(w.add_branch("bad/name", Values::F32(vec![1.0])).is_err());
    assert!(w.add_jagged("j", "n", vec![0, 2], Values::F32(vec![1.0])).is_err(), "offsets end");
    assert!(w.add_jagged("j", "a", vec![0, 1], Values::F32(vec![1.0])).is_err(), "counter clash");
    assert!(w.add_branch("b", Values::F32(vec![1.0, 2.0])).is_ok());
    let dir = tmpdir("bad");
    let err = w.write(&dir.join("x.root")).expect_err("length mismatch");
    assert!(err.to_string().contains("x.root"), "{err}");
    assert!(!dir.join("x.root").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
