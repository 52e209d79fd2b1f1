//! Reads the reference ROOT files and compares every value with what uproot
//! reads (expected files from `tests/fixtures/root/make_expected.py`).

mod root_common;

use fedhex::data::root as rr;
use root_common::*;
use rr::{BranchKind, Column, RootError, RootFile};

/// Compares every branch of `file` with the digests (and full dumps) of `stem`.
fn check_file(file: &str, stem: &str) -> (usize, usize) {
    let exp = expected(stem);
    let path = data_file(file);
    let f = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree(&exp.tree).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.entries(), exp.entries, "{file}: entries");
    let names = t.branch_names();
    assert_eq!(names, exp.digests.iter().map(|d| d.name.clone()).collect::<Vec<_>>(), "{file}: branch names");
    let (mut read, mut unsupported) = (0, 0);
    for d in &exp.digests {
        let info = t.branch_info(&d.name).unwrap_or_else(|e| panic!("{e}"));
        let result = t.read(&d.name);
        if !is_supported_type(&d.type_name) {
            match result {
                Err(RootError::Unsupported { .. }) => unsupported += 1,
                other => panic!("{file}: {} ({}) should be unsupported, got {other:?}", d.name, d.type_name),
            }
            continue;
        }
        assert_eq!(info.type_name, d.type_name, "{file}: type of {}", d.name);
        let col = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(col.entries() as u64, exp.entries, "{file}: {} entries", d.name);
        let (n, hv, ho) = d.numbers.unwrap_or_else(|| panic!("{file}: no digest for {}", d.name));
        let bits = value_bits(col.values());
        assert_eq!(bits.len() as u64, n, "{file}: {} value count", d.name);
        assert_eq!(hsum(&bits), hv, "{file}: {} value hash", d.name);
        let oh = offsets_of(&col).map(hsum).unwrap_or(0);
        assert_eq!(oh, ho, "{file}: {} offsets hash", d.name);
        if let Some(dump) = exp.dumps.get(&d.name) {
            assert_eq!(offsets_of(&col), dump.offsets.as_deref(), "{file}: {} offsets", d.name);
            assert_eq!(value_tokens(col.values()), dump.values, "{file}: {} values", d.name);
        }
        read += 1;
    }
    (read, unsupported)
}

#[test]
fn nanoaod_all_branches_match_uproot() {
    let (read, unsupported) = check_file("nanoAOD_2015_CMS_Open_Data_ttbar.root", "nanoAOD_2015_CMS_Open_Data_ttbar");
    assert_eq!((read, unsupported), (947, 0));
}

#[test]
fn nanoaod_photon_pt_is_jagged_per_entry() {
    let f = RootFile::open(&data_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("Events").unwrap_or_else(|e| panic!("{e}"));
    let n = t.read("nPhoton").unwrap_or_else(|e| panic!("{e}"));
    let p = t.read("Photon_pt").unwrap_or_else(|e| panic!("{e}"));
    let Column::Scalar(rr::Values::U32(counts)) = n else { panic!("nPhoton type {n:?}") };
    assert_eq!(&counts[..12], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3, 1]);
    let Column::Jagged { offsets, values } = p else { panic!("Photon_pt not jagged") };
    assert_eq!(offsets.len(), 201);
    for (i, w) in offsets.windows(2).enumerate() {
        assert_eq!(w[1] - w[0], counts[i] as u64, "entry {i}");
    }
    assert_eq!(offsets[0..3], [0, 0, 1]);
    assert!((values.get_f64(0).unwrap_or(0.0) - 31.149578).abs() < 1e-5);
    let info = t.branch_info("Photon_pt").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.kind, BranchKind::Counted(rr::ElemType::F32, "nPhoton".into()));
    assert_eq!(t.branch_info("event").map(|b| b.type_name.clone()).ok(), Some("uint64_t".into()));
}

#[test]
fn hzz_every_compression_matches_uproot() {
    for v in ["", "-zlib", "-lzma", "-lz4", "-zstd", "-uncompressed"] {
        let (read, unsupported) = check_file(&format!("uproot-HZZ{v}.root"), "uproot-HZZ");
        assert_eq!((read, unsupported), (51, 0), "uproot-HZZ{v}");
    }
}

#[test]
fn zmumu_matches_uproot_and_rejects_char_star() {
    for v in ["", "-zstd"] {
        let (read, unsupported) = check_file(&format!("uproot-Zmumu{v}.root"), "uproot-Zmumu");
        assert_eq!((read, unsupported), (19, 1), "uproot-Zmumu{v}");
    }
}

#[test]
fn stl_containers_vector_int_reads_others_are_errors() {
    let (read, unsupported) = check_file("uproot-stl_containers.root", "uproot-stl_containers");
    assert_eq!(read, 1);
    assert_eq!(unsupported, 25);
    let f = RootFile::open(&data_file("uproot-stl_containers.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("tree").unwrap_or_else(|e| panic!("{e}"));
    let c = t.read("vector_int32").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c,
        Column::Jagged {
            offsets: vec![0, 1, 3, 6, 10, 15],
            values: rr::Values::I32(vec![1, 1, 2, 1, 2, 3, 1, 2, 3, 4, 1, 2, 3, 4, 5]),
        }
    );
}

#[test]
fn vector_vector_double_is_a_clean_error() {
    let path = data_file("uproot-vectorVectorDouble.root");
    let f = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("t").unwrap_or_else(|e| panic!("{e}"));
    let err = t.read("x").expect_err("vector<vector<double>> must not be read");
    let msg = err.to_string();
    assert!(matches!(err, RootError::Unsupported { .. }), "{msg}");
    assert!(msg.contains("uproot-vectorVectorDouble.root"), "{msg}");
    assert!(msg.contains("tree 't'") && msg.contains("branch 'x'"), "{msg}");
    assert!(msg.contains("vector<vector<double>"), "{msg}");
}

#[test]
fn read_range_equals_slice_of_full_read() {
    let f = RootFile::open(&data_file("uproot-HZZ.root")).unwrap_or_else(|e| panic!("{e}"));
    let t = f.tree("events").unwrap_or_else(|e| panic!("{e}"));
    for name in ["NMuon", "Muon_Px", "MET_px"] {
        let full = t.read(name).unwrap_or_else(|e| panic!("{e}"));
        for (a, z) in [(0u64, 0u64), (0, 1), (5, 17), (100, 2421), (2420, 2421)] {
            let part = t.read_range(name, a..z).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(part.entries() as u64, z - a, "{name} {a}..{z}");
            match (&full, &part) {
                (Column::Scalar(v), Column::Scalar(p)) => {
                    assert_eq!(&v.slice(a as usize, z as usize), p)
                }
                (Column::Jagged { offsets, values }, Column::Jagged { offsets: po, values: pv }) => {
                    let base = offsets[a as usize];
                    let want: Vec<u64> = offsets[a as usize..=z as usize].iter().map(|o| o - base).collect();
                    assert_eq!(&want, po);
                    assert_eq!(&values.slice(base as usize, offsets[z as usize] as usize), pv);
                }
                _ => panic!("kind changed"),
            }
        }
        assert!(t.read_range(name, 0..2422).is_err());
    }
}

#[test]
fn streaming_open_reads_the_same_as_in_memory() {
    let path = data_file("nanoAOD_2015_CMS_Open_Data_ttbar.root");
    let a = RootFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let b = RootFile::open_streaming(&path).unwrap_or_else(|e| panic!("{e}"));
    let (ta, tb) =
        (a.tree("Events").unwrap_or_else(|e| panic!("{e}")), b.tree("Events").unwrap_or_else(|e| panic!("{e}")));
    for name in ["nPhoton", "Photon_pt", "event", "Jet_nConstituents"] {
        let (x, y) = (ta.read(name).unwrap_or_else(|e| panic!("{e}")), tb.read(name).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(value_tokens(x.values()), value_tokens(y.values()), "{name}");
        assert_eq!(offsets_of(&x), offsets_of(&y), "{name}");
    }
    let path = data_file("uproot-HZZ-zstd.root");
    let a = RootFile::open(&path).and_then(|f| f.tree("events")).and_then(|t| t.read("Muon_Px"));
    let b = RootFile::open_streaming(&path).and_then(|f| f.tree("events")).and_then(|t| t.read("Muon_Px"));
    assert_eq!(a.ok(), b.ok());
}

#[test]
fn keys_list_names_classes_cycles() {
    let f = RootFile::open(&data_file("uproot-HZZ.root")).unwrap_or_else(|e| panic!("{e}"));
    let keys = f.keys();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "events");
    assert_eq!(keys[0].class, "TTree");
    assert_eq!(keys[0].cycle, 1);
    assert!(f.tree("events;1").is_ok());
}
