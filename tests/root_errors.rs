//! Bad input: every failure is a `RootError` naming the file (and tree,
//! branch, key where relevant), never a panic and never a wrong value.

mod root_common;

use std::path::PathBuf;

use fedhex::data::root as rr;
use root_common::*;
use rr::{Column, RootError, RootFile};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fedhex-root-err-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    d.join(name)
}

#[test]
fn missing_file() {
    let p = tmp("does-not-exist.root");
    let e = RootFile::open(&p).expect_err("missing file");
    assert!(matches!(e, RootError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("does-not-exist.root"), "{e}");
}

#[test]
fn empty_file() {
    let p = tmp("empty.root");
    std::fs::write(&p, b"").unwrap_or_else(|e| panic!("{e}"));
    let e = RootFile::open(&p).expect_err("empty file");
    assert!(matches!(e, RootError::NotRoot { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("{}: not a ROOT file (empty file)", p.display()));
}

#[test]
fn not_a_root_file() {
    let p = tmp("text.root");
    std::fs::write(&p, b"this is not a ROOT file at all, just text\n").unwrap_or_else(|e| panic!("{e}"));
    let e = RootFile::open(&p).expect_err("text file");
    assert_eq!(e.to_string(), format!("{}: not a ROOT file (bad magic)", p.display()));
    let e = RootFile::from_bytes(&p, b"ro".to_vec()).expect_err("short");
    assert!(matches!(e, RootError::NotRoot { .. }), "{e:?}");
}

/// Reads every branch of every tree; returns the columns or the first error.
type Everything = Vec<(String, Result<Column, RootError>)>;

fn read_everything(f: &RootFile) -> Result<Everything, RootError> {
    let mut out = Vec::new();
    for name in f.tree_names() {
        let t = f.tree(&name)?;
        for b in t.branch_names() {
            out.push((format!("{name}/{b}"), t.read(&b)));
        }
    }
    Ok(out)
}

#[test]
fn truncated_files_error_or_read_correctly() {
    for file in [
        "uproot-HZZ.root",
        "uproot-HZZ-lz4.root",
        "uproot-stl_containers.root",
        "nanoAOD_2015_CMS_Open_Data_ttbar.root",
    ] {
        let path = data_file(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let full = RootFile::open(&path).and_then(|f| read_everything(&f)).unwrap_or_else(|e| panic!("{e}"));
        let n = bytes.len();
        let step = (n / 150).max(1);
        let mut cuts: Vec<usize> = (0..n).step_by(step).collect();
        cuts.extend([1, 3, 4, 50, 99, 100, 101, n - 1]);
        let (mut errors, mut same) = (0, 0);
        for cut in cuts {
            let label = PathBuf::from(format!("{file}@{cut}"));
            let data = bytes[..cut].to_vec();
            match RootFile::from_bytes(&label, data).and_then(|f| read_everything(&f)) {
                Err(e) => {
                    assert!(e.to_string().starts_with(&format!("{file}@{cut}: ")), "{e}");
                    errors += 1;
                }
                Ok(cols) => {
                    for ((name, got), (_, want)) in cols.iter().zip(&full) {
                        match (got, want) {
                            (Ok(g), Ok(w)) => {
                                assert_eq!(
                                    value_tokens(g.values()),
                                    value_tokens(w.values()),
                                    "{file} cut at {cut}: {name} differs"
                                );
                                assert_eq!(offsets_of(g), offsets_of(w), "{file} cut at {cut}: {name} differs");
                            }
                            (Err(e), _) => {
                                let msg = e.to_string();
                                assert!(msg.starts_with(&format!("{file}@{cut}: ")), "{msg}");
                                assert!(msg.contains("branch '") || msg.contains("tree '"), "{msg}");
                            }
                            (Ok(_), Err(_)) => {
                                panic!("{file} cut at {cut}: {name} read although unsupported")
                            }
                        }
                    }
                    same += 1;
                }
            }
        }
        assert!(errors > 100, "{file}: only {errors} truncations failed ({same} opened)");
    }
    let path = data_file("uproot-HZZ.root");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let p = tmp("cut.root");
    std::fs::write(&p, &bytes[..3000]).unwrap_or_else(|e| panic!("{e}"));
    let e = RootFile::open(&p).and_then(|f| f.tree("events").map(|_| ())).expect_err("cut file");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}: ", p.display())) && msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_tree_lists_trees() {
    let f = RootFile::open(&data_file("uproot-HZZ.root")).unwrap_or_else(|e| panic!("{e}"));
    let e = f.tree("Events").expect_err("wrong case");
    assert!(matches!(e, RootError::TreeNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("uproot-HZZ.root") && msg.contains("'Events'") && msg.contains("events"), "{msg}");
    let e = f.tree("dir/events").expect_err("no directory");
    assert!(matches!(e, RootError::TreeNotFound { .. }), "{e:?}");
}

#[test]
fn missing_branch_suggests_close_names() {
    let f = RootFile::open(&data_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("Events").unwrap_or_else(|e| panic!("{e}"));
    let e = t.read("Photon_PT").expect_err("no such branch");
    let msg = e.to_string();
    assert!(matches!(e, RootError::BranchNotFound { .. }), "{e:?}");
    assert!(msg.contains("tree 'Events'") && msg.contains("'Photon_PT'"), "{msg}");
    assert!(msg.contains("did you mean") && msg.contains("Photon_pt"), "{msg}");
    assert!(t.branch_info("nMuons").map(|_| ()).expect_err("typo").to_string().contains("nMuon"));
    assert!(t.read_range("nPhoton", std::ops::Range { start: 5, end: 3 }).is_err());
}

#[test]
fn unsupported_branch_types_name_the_type() {
    let f = RootFile::open(&data_file("uproot-Zmumu.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("events").unwrap_or_else(|e| panic!("{e}"));
    let e = t.read("Type").expect_err("char* branch");
    assert!(matches!(e, RootError::Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("uproot-Zmumu.root") && msg.contains("branch 'Type'") && msg.contains("char*"), "{msg}");
    let f = RootFile::open(&data_file("uproot-stl_containers.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("tree").unwrap_or_else(|e| panic!("{e}"));
    for b in ["string", "vector_string", "vector_vector_int32", "map_int32_int16", "set_int32"] {
        let e = t.read(b).expect_err(b);
        assert!(matches!(e, RootError::Unsupported { .. }), "{b}: {e:?}");
    }
}

#[test]
fn corrupted_basket_reports_branch_and_basket() {
    // Flip bytes inside the compressed payload of the first basket of Muon_Px.
    let path = data_file("uproot-HZZ.root");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let f = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("events").unwrap_or_else(|e| panic!("{e}"));
    let want = t.read("Muon_Px").unwrap_or_else(|e| panic!("{e}"));
    // Find the basket by its key name after the class name "TBasket".
    let needle = b"\x07TBasket\x07Muon_Px";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("basket not found"));
    for b in bytes.iter_mut().skip(at + 60).take(40) {
        *b ^= 0x5a;
    }
    let label = PathBuf::from("corrupt.root");
    let f = RootFile::from_bytes(&label, bytes).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("events").unwrap_or_else(|e| panic!("{e}"));
    match t.read("Muon_Px") {
        Ok(c) => assert_eq!(
            value_tokens(c.values()),
            value_tokens(want.values()),
            "corruption produced different values without an error"
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("corrupt.root: tree 'events': branch 'Muon_Px': basket 0 at offset "), "{msg}");
        }
    }
}
