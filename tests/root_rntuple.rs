//! RNTuple reading (`fedhex::data::root::RNTuple`), value by value against
//! uproot: files uproot writes at test time (every numeric type, booleans,
//! jagged vectors, three clusters, each compression codec), and the ROOT-written
//! files of `tests/fixtures/root/rntuple/` (split/zigzag/delta encodings, Bit,
//! Real32Trunc/Quant, several cluster groups, deferred columns, alias columns).
//! Unsupported fields and missing fields must give errors that name them.
//!
//! Needs `FEDHEX_PYTHON` (a Python with uproot >= 5.7, awkward, numpy); the
//! helper script is `tests/fixtures/root/rntuple_uproot.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedhex::data::root::{Column, Dataset, FieldKind, RootError, RootFile, Values};

fn python() -> String {
    match std::env::var("FEDHEX_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!("FEDHEX_PYTHON is not set: set it to a Python with uproot >= 5.7, awkward and numpy"),
    }
}

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/rntuple_uproot.py"))
}

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/rntuple"))
}

/// Runs the helper script; returns stdout.
fn helper(args: &[&str]) -> String {
    let out = std::process::Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running FEDHEX_PYTHON: {e}"));
    assert!(out.status.success(), "rntuple_uproot.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One field as uproot reads it.
#[derive(Debug)]
enum Expected {
    Flat(Vec<String>),
    Jagged(Vec<u64>, Vec<String>),
    Unsupported(String),
}

/// `dump` output: entries and fields (type name, expected contents).
fn uproot_dump(path: &Path, name: &str) -> (u64, BTreeMap<String, (String, Expected)>) {
    let text = helper(&["dump", &path.display().to_string(), name]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON from dump: {e}"));
    let entries = v["entries"].as_u64().expect("entries");
    let mut out = BTreeMap::new();
    for (k, f) in v["fields"].as_object().expect("fields") {
        let tname = f["type"].as_str().unwrap_or_default().to_string();
        let strs = |x: &serde_json::Value| -> Vec<String> {
            x.as_array().expect("array").iter().map(|t| t.as_str().expect("token").to_string()).collect()
        };
        let e = if let Some(u) = f.get("unsupported") {
            Expected::Unsupported(u.as_str().unwrap_or_default().to_string())
        } else if let Some(o) = f.get("offsets") {
            Expected::Jagged(
                o.as_array().expect("offsets").iter().map(|x| x.as_u64().expect("offset")).collect(),
                strs(&f["values"]),
            )
        } else {
            Expected::Flat(strs(&f["values"]))
        };
        out.insert(k.clone(), (tname, e));
    }
    (entries, out)
}

/// Our values as the dump's tokens.
fn tokens(v: &Values) -> Vec<String> {
    match v {
        Values::Bool(x) => x.iter().map(|&b| u8::from(b).to_string()).collect(),
        Values::I8(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::U8(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::I16(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::U16(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::I32(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::U32(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::I64(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::U64(x) => x.iter().map(|y| y.to_string()).collect(),
        Values::F32(x) => x.iter().map(|y| format!("{:08x}", y.to_bits())).collect(),
        Values::F64(x) => x.iter().map(|y| format!("{:016x}", y.to_bits())).collect(),
    }
}

fn first_mismatch(ours: &[String], theirs: &[String]) -> String {
    let i = ours.iter().zip(theirs).position(|(a, b)| a != b);
    match i {
        Some(i) => format!("first difference at {i}: ours {} uproot {}", ours[i], theirs[i]),
        None => format!("lengths: ours {} uproot {}", ours.len(), theirs.len()),
    }
}

/// Compares every field of ntuple `name` in `path` with uproot; returns
/// (fields compared, fields refused by both).
fn compare_with_uproot(path: &Path, name: &str) -> (usize, usize) {
    let label = format!("{}:{name}", path.display());
    let file = RootFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    let nt = file.ntuple(name).unwrap_or_else(|e| panic!("{e}"));
    let (entries, fields) = uproot_dump(path, name);
    assert_eq!(nt.entries(), entries, "{label}: entries");
    let ours: Vec<String> = nt.field_names();
    let theirs: Vec<String> = fields.keys().cloned().collect();
    let mut sorted = ours.clone();
    sorted.sort();
    assert_eq!(sorted, theirs, "{label}: top-level field names");
    let (mut compared, mut refused) = (0, 0);
    for (fname, (tname, exp)) in &fields {
        let info = nt.field_info(fname).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&info.type_name, tname, "{label}: field '{fname}' type name");
        let got = nt.read(fname);
        match (exp, got) {
            (Expected::Flat(vals), Ok(Column::Scalar(v))) => {
                let t = tokens(&v);
                assert!(t == *vals, "{label}: field '{fname}' ({tname}): {}", first_mismatch(&t, vals));
                assert!(matches!(info.kind, FieldKind::Scalar(_)), "{label}: {fname}: kind {:?}", info.kind);
                compared += 1;
            }
            (Expected::Jagged(offs, vals), Ok(Column::Jagged { offsets, values })) => {
                assert_eq!(&offsets, offs, "{label}: field '{fname}' ({tname}) offsets");
                let t = tokens(&values);
                assert!(t == *vals, "{label}: field '{fname}' ({tname}): {}", first_mismatch(&t, vals));
                compared += 1;
            }
            (Expected::Unsupported(why), Err(e)) => {
                let msg = e.to_string();
                assert!(matches!(e, RootError::UnsupportedField { .. }), "{label}: {fname} ({why}): {msg}");
                assert!(
                    msg.contains(&format!("field '{fname}'")) && msg.contains(tname.as_str()) && msg.contains(name),
                    "{label}: the error should name the ntuple, the field and its type: {msg}"
                );
                assert!(matches!(info.kind, FieldKind::Unsupported(_)), "{label}: {fname}: kind {:?}", info.kind);
                refused += 1;
            }
            (exp, got) => panic!("{label}: field '{fname}' ({tname}): uproot {exp:?}, ours {got:?}"),
        }
    }
    (compared, refused)
}

#[test]
fn uproot_written_ntuples_match_uproot_for_every_codec() {
    let dir = tempfile::tempdir().expect("tempdir");
    for codec in ["none", "zlib", "lz4", "zstd", "lzma"] {
        let p = dir.path().join(format!("w_{codec}.root"));
        helper(&["write", &p.display().to_string(), codec]);
        let f = RootFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.ntuple_names(), vec!["Events".to_string()]);
        let nt = f.ntuple("Events").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(nt.clusters(), 3, "{codec}: one cluster per extend()");
        assert_eq!(nt.entries(), 1051);
        let (compared, refused) = compare_with_uproot(&p, "Events");
        assert_eq!((compared, refused), (14, 0), "{codec}: every field read");
        // Streaming open (positioned reads) gives the same columns.
        let fs = RootFile::open_streaming(&p).unwrap_or_else(|e| panic!("{e}"));
        let ns = fs.ntuple("Events").unwrap_or_else(|e| panic!("{e}"));
        for name in nt.field_names() {
            assert_eq!(ns.read(&name).ok(), nt.read(&name).ok(), "{codec}: {name} streaming");
        }
    }
}

#[test]
fn uproot_written_jagged_and_bool_fields_have_the_right_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.root");
    helper(&["write", &p.display().to_string(), "zstd"]);
    let nt = RootFile::open(&p).and_then(|f| f.ntuple("Events")).unwrap_or_else(|e| panic!("{e}"));
    match nt.read("Jet_pt").unwrap_or_else(|e| panic!("{e}")) {
        Column::Jagged { offsets, values: Values::F32(v) } => {
            assert_eq!(offsets.len(), 1052);
            assert_eq!(offsets[0], 0);
            assert_eq!(*offsets.last().expect("offsets") as usize, v.len());
        }
        other => panic!("Jet_pt: {other:?}"),
    }
    assert!(matches!(nt.read("flag"), Ok(Column::Scalar(Values::Bool(_)))));
    assert!(matches!(nt.read("u64"), Ok(Column::Scalar(Values::U64(_)))));
    assert!(matches!(nt.read("i8"), Ok(Column::Scalar(Values::I8(_)))));
    assert_eq!(
        nt.field_info("Jet_id").map(|f| f.kind.clone()).ok(),
        Some(FieldKind::Jagged(fedhex::data::root::ElemType::I32))
    );
}

/// The fixture files written by ROOT: (file, fields that must be read, fields
/// that must be refused).
const ROOT_FILES: &[(&str, usize, usize)] = &[
    ("Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root", 6, 1),
    ("cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root", 947, 22),
    ("ntpl001_staff_rntuple_v1-0-1-0.root", 9, 2),
    ("rntviewer-testfile-uncomp-single-rntuple-v1-0-0-0.root", 0, 2),
    ("test_1jag_int_float_rntuple_v1-0-0-0.root", 2, 0),
    ("test_atomic_bitset_rntuple_v1-0-0-0.root", 2, 0),
    ("test_bit_rntuple_v1-0-0-0.root", 1, 0),
    ("test_extension_columns_rntuple_v1-0-0-0.root", 3, 0),
    ("test_float_types_rntuple_v1-0-0-0.root", 11, 0),
    ("test_index_multicluster_rntuple_v1-0-0-0.root", 1, 0),
    ("test_int_5e4_rntuple_v1-0-0-0.root", 1, 0),
    ("test_int_float_rntuple_v1-0-0-0.root", 2, 0),
    ("test_multiple_cluster_groups_rntuple_v1-0-0-0.root", 2, 0),
    ("test_multiple_representations_rntuple_v1-0-0-0.root", 1, 0),
    ("test_nested_structs_rntuple_v1-0-0-0.root", 0, 1),
    ("test_split_3e4_rntuple_v1-0-0-0.root", 3, 0),
    ("test_splitint_rntuple_v1-0-1-0.root", 3, 0),
    ("test_stl_containers_rntuple_v1-0-0-0.root", 2, 11),
];

#[test]
fn root_written_ntuples_match_uproot() {
    let mut total = (0, 0);
    for &(file, want_read, want_refused) in ROOT_FILES {
        let p = fixtures().join(file);
        let f = RootFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
        let names = f.ntuple_names();
        assert!(!names.is_empty(), "{file}: no RNTuple found (keys {:?})", f.keys());
        for name in names {
            let (read, refused) = compare_with_uproot(&p, &name);
            eprintln!("{file}:{name}: {read} fields equal to uproot, {refused} refused by both");
            assert_eq!((read, refused), (want_read, want_refused), "{file}:{name}: fields read, refused");
            total.0 += read;
            total.1 += refused;
        }
    }
    eprintln!("ROOT-written RNTuples: {} fields equal to uproot, {} refused", total.0, total.1);
}

#[test]
fn dataset_opens_a_tree_or_an_ntuple_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (t, n) = (dir.path().join("t.root"), dir.path().join("n.root"));
    helper(&["pair", &t.display().to_string(), &n.display().to_string()]);
    let ft = RootFile::open(&t).unwrap_or_else(|e| panic!("{e}"));
    let fnt = RootFile::open(&n).unwrap_or_else(|e| panic!("{e}"));
    let dt = ft.dataset("Events").unwrap_or_else(|e| panic!("{e}"));
    let dn = fnt.dataset("Events").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(dt, Dataset::Tree(_)) && dt.kind() == "tree");
    assert!(matches!(dn, Dataset::Ntuple(_)) && dn.kind() == "ntuple");
    assert_eq!(dt.entries(), dn.entries());
    for name in ["mass", "width", "region", "genmass", "Jet_pt"] {
        assert!(dn.names().contains(&name.to_string()), "{name}");
        let a = dt.read(name).unwrap_or_else(|e| panic!("{e}"));
        let b = dn.read(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b, "{name}: TTree and RNTuple differ");
    }
    // `tree()` on an RNTuple key still says what the key is.
    let e = fnt.tree("Events").expect_err("not a TTree").to_string();
    assert!(e.contains("ROOT::RNTuple") && e.contains("Events"), "{e}");
    // A name that is neither lists what there is.
    let e = fnt.dataset("Evnts").expect_err("missing").to_string();
    assert!(e.contains("no TTree or RNTuple named 'Evnts'") && e.contains("Events"), "{e}");
    let e = ft.ntuple("Events").expect_err("a TTree").to_string();
    assert!(e.contains("is a TTree, not an RNTuple"), "{e}");
}

#[test]
fn missing_field_is_named_with_close_names() {
    let p = fixtures().join("test_split_3e4_rntuple_v1-0-0-0.root");
    let f = RootFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
    let name = f.ntuple_names().into_iter().next().expect("an ntuple");
    let nt = f.ntuple(&name).unwrap_or_else(|e| panic!("{e}"));
    let e = nt.read("one_int33").expect_err("missing field");
    let msg = e.to_string();
    assert!(matches!(e, RootError::FieldNotFound { .. }), "{msg}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("ntuple '{name}'")) && msg.contains("no field named 'one_int33'"), "{msg}");
    assert!(msg.contains("did you mean: one_int32"), "{msg}");
    let e = nt.read("zzzzzzzzzzzzz").expect_err("missing field").to_string();
    assert!(e.contains("fields include: one_int32"), "{e}");
}

#[test]
fn unsupported_fields_name_the_field_and_its_type() {
    let p = fixtures().join("test_stl_containers_rntuple_v1-0-0-0.root");
    let f = RootFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
    let name = f.ntuple_names().into_iter().next().expect("an ntuple");
    let nt = f.ntuple(&name).unwrap_or_else(|e| panic!("{e}"));
    for (field, type_name, reason) in [
        ("string", "std::string", "not numeric"),
        ("vector_vector_int32", "std::vector<std::vector<std::int32_t>>", "nested collections"),
        ("variant_int32_string", "std::variant<std::int32_t,std::string>", "variants"),
        ("lorentz_vector", "LV", "records"),
    ] {
        let msg = nt.read(field).expect_err("unsupported").to_string();
        assert!(
            msg.contains(&format!("field '{field}'")) && msg.contains(type_name) && msg.contains(reason),
            "{field}: {msg}"
        );
    }
    // What is supported in the same file reads fine.
    assert!(matches!(nt.read("vector_int32"), Ok(Column::Jagged { values: Values::I32(_), .. })));
    match nt.read("array_float") {
        Ok(Column::Jagged { offsets, values: Values::F32(v) }) => {
            assert_eq!(offsets, vec![0, 3, 6, 9, 12, 15]);
            assert_eq!(v.len(), 15);
        }
        other => panic!("array_float: {other:?}"),
    }
}

#[test]
fn corrupt_ntuple_metadata_is_an_error_naming_the_ntuple() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.root");
    helper(&["write", &p.display().to_string(), "none"]);
    let good = std::fs::read(&p).expect("read");
    let f = RootFile::from_bytes(&p, good.clone()).unwrap_or_else(|e| panic!("{e}"));
    let nt = f.ntuple("Events").unwrap_or_else(|e| panic!("{e}"));
    assert!(nt.read("f32").is_ok());
    // Cut the file just before its end (the footer envelope and the key list follow the data).
    let mut failed = 0;
    for cut in [good.len() / 2, good.len() - 400, good.len() - 200] {
        let bad = good[..cut].to_vec();
        match RootFile::from_bytes(&p, bad) {
            Err(_) => failed += 1,
            Ok(f) => match f.ntuple("Events") {
                Err(e) => {
                    failed += 1;
                    let msg = e.to_string();
                    assert!(msg.contains(&p.display().to_string()), "{msg}");
                }
                Ok(nt) => {
                    if nt.field_names().iter().any(|n| nt.read(n).is_err()) {
                        failed += 1;
                    }
                }
            },
        }
    }
    assert_eq!(failed, 3, "every truncation is noticed");
}

#[test]
fn corrupt_page_is_caught_by_its_checksum() {
    // ROOT writes an XXH3 checksum after every page; the first page of column 0
    // (`one_integers`) of this file is 40 bytes at offset 503 (uproot:
    // `page_link_list[0][0].pages[0].locator`).
    let p = fixtures().join("test_int_float_rntuple_v1-0-0-0.root");
    let mut data = std::fs::read(&p).expect("read");
    let good =
        RootFile::from_bytes(&p, data.clone()).and_then(|f| f.ntuple("ntuple")).unwrap_or_else(|e| panic!("{e}"));
    assert!(good.read("one_integers").is_ok());
    data[503 + 7] ^= 0x10;
    let f = RootFile::from_bytes(&p, data).unwrap_or_else(|e| panic!("{e}"));
    let nt = f.ntuple("ntuple").unwrap_or_else(|e| panic!("{e}"));
    let msg = nt.read("one_integers").expect_err("corrupt page").to_string();
    assert!(
        msg.contains("checksum") && msg.contains("field 'one_integers'") && msg.contains("ntuple 'ntuple'"),
        "{msg}"
    );
    assert_eq!(nt.read("two_floats").ok(), good.read("two_floats").ok(), "the other column is intact");
}
