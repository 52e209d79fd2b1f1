//! `TH1D` files written by `write_histograms` read back by uproot (Python
//! from `FEDHEX_PYTHON`; ROOT itself is not required): contents and Σw² with
//! under/overflow, edges (equal and variable bins), names and titles compared
//! bit-exactly; bad output paths give an error naming the path and leave no
//! file behind.

mod common;

use fedhex::data::root::{write_histograms, Th1d};
use serde_json::Value;

/// uproot's view of every histogram in `path`, as JSON with float bit patterns.
const DUMP: &str = r#"
import sys, json, numpy as np, uproot
f = uproot.open(sys.argv[1])
bits = lambda a: [int(x) for x in np.asarray(a, dtype=">f8").view(">u8")]
out = []
for key in f.keys(cycle=False):
    h = f[key]
    out.append({
        "key": key, "class": h.classname, "name": h.name, "title": h.title,
        "values": bits(h.values(flow=True)), "variances": bits(h.variances(flow=True)),
        "edges": bits(h.axis().edges()), "entries": float(h.member("fEntries")),
        "tsumw": float(h.member("fTsumw")), "tsumw2": float(h.member("fTsumw2")),
    })
names = sorted(f.file.streamers)
print(json.dumps({"hists": out, "streamers": names}))
"#;

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("u64")).collect()
}

fn sample_hists() -> Vec<Th1d> {
    // Equal bins, weighted fills (Σw² ≠ contents), both flows, infinities, NaN ignored.
    let mut a = Th1d::uniform("h_0_x_reference", "label (1.5, 2) · x · reference", 4, 0.0, 2.0).unwrap();
    for (x, w) in [(0.1, 2.0), (0.2, 0.5), (0.6, 1.0), (1.99, 3.0), (2.0, 1.5), (-0.1, 0.25), (f64::INFINITY, 1.0)] {
        a.fill_weighted(x, w);
    }
    a.fill(f64::NEG_INFINITY);
    a.fill(f64::NAN);
    // Variable edges.
    let mut b = Th1d::with_edges("h_var", "variable bins", vec![-1.0, 0.0, 0.5, 3.0]).unwrap();
    for (i, x) in [-2.0, -0.5, 0.0, 0.25, 0.5, 2.9, 3.0, 7.0].iter().enumerate() {
        b.fill_weighted(*x, 0.5 + i as f64);
    }
    // Empty, with a title longer than 255 bytes (the long TString form).
    let c = Th1d::uniform("h_empty", &"t".repeat(300), 1, -1.0, 1.0).unwrap();
    vec![a, b, c]
}

#[test]
fn th1d_round_trip_through_uproot() {
    let dir = common::tmpdir();
    let path = dir.path().join("h.root");
    let hists = sample_hists();
    write_histograms(&path, &hists).unwrap();
    let out = common::run_python(DUMP, &[path.to_str().unwrap()]);
    let v: Value = serde_json::from_str(out.trim()).expect("uproot dump is JSON");
    let got = v["hists"].as_array().unwrap();
    assert_eq!(got.len(), hists.len());
    for (h, g) in hists.iter().zip(got) {
        assert_eq!(g["key"], h.name());
        assert_eq!(g["class"], "TH1D");
        assert_eq!(g["name"], h.name());
        assert_eq!(g["title"], h.title());
        assert_eq!(u64s(&g["values"]), bits(h.values()), "{}", h.name());
        assert_eq!(u64s(&g["variances"]), bits(h.variances()), "{}", h.name());
        assert_eq!(u64s(&g["edges"]), bits(h.edges()), "{}", h.name());
    }
    // Known contents, written out by hand.
    assert_eq!(hists[0].values(), &[0.25 + 1.0, 2.5, 1.0, 0.0, 3.0, 1.5 + 1.0]);
    assert_eq!(hists[0].variances(), &[0.0625 + 1.0, 4.25, 1.0, 0.0, 9.0, 2.25 + 1.0]);
    assert_eq!(u64s(&got[0]["edges"]), bits(&[0.0, 0.5, 1.0, 1.5, 2.0]));
    assert_eq!(got[0]["entries"], 8.0); // every fill but the NaN
    assert_eq!(got[0]["tsumw"], 6.5);
    assert_eq!(got[0]["tsumw2"], 4.25 + 1.0 + 9.0);
    // Weights 0.5 + i for x = -2, -0.5, 0, 0.25, 0.5, 2.9, 3, 7.
    assert_eq!(hists[1].values(), &[0.5, 1.5, 2.5 + 3.5, 4.5 + 5.5, 6.5 + 7.5]);
    assert_eq!(u64s(&got[1]["edges"]), bits(&[-1.0, 0.0, 0.5, 3.0]));
    let streamers: Vec<&str> = v["streamers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for c in [
        "TH1D",
        "TH1",
        "TNamed",
        "TObject",
        "TAttLine",
        "TAttFill",
        "TAttMarker",
        "TAxis",
        "TAttAxis",
        "TArrayD",
        "TArray",
        "TList",
    ] {
        assert!(streamers.contains(&c), "no streamer info for {c}: {streamers:?}");
    }
}

#[test]
fn bad_output_paths_name_the_path_and_leave_nothing() {
    let dir = common::tmpdir();
    let hists = sample_hists();
    // A missing directory.
    let missing = dir.path().join("no/such/dir/h.root");
    let e = write_histograms(&missing, &hists).unwrap_err().to_string();
    assert!(e.contains(missing.to_str().unwrap()), "{e}");
    // A parent that is a file.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("h.root");
    let e = write_histograms(&under_file, &hists).unwrap_err().to_string();
    assert!(e.contains(under_file.to_str().unwrap()), "{e}");
    // The target is a non-empty directory: the rename fails, the temporary file is removed.
    let target = dir.path().join("taken.root");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = write_histograms(&target, &hists).unwrap_err().to_string();
    assert!(e.contains(target.to_str().unwrap()), "{e}");
    let mut left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["plain", "taken.root"]);
    // Duplicate names are refused before anything is written.
    let twice = [hists[0].clone(), hists[0].clone()];
    let dup = dir.path().join("dup.root");
    assert!(write_histograms(&dup, &twice).unwrap_err().to_string().contains("two histograms"));
    assert!(!dup.exists());
}

/// The streamer infos in the file are complete enough for uproot to build
/// the histogram classes from them (built-in models of TH1D and its parts off; TArrayD has a custom streamer and keeps its model) and read the same values.
#[test]
fn th1d_readable_from_the_files_own_streamers() {
    let dir = common::tmpdir();
    let path = dir.path().join("h.root");
    write_histograms(&path, &sample_hists()).unwrap();
    let code = r#"
import sys, numpy as np, uproot
cc = dict(uproot.classes)
for c in ["TH1D", "TH1", "TAxis", "TAttAxis", "TAttLine", "TAttFill", "TAttMarker"]:
    cc.pop(c, None)
f = uproot.open(sys.argv[1], custom_classes=cc)
a = uproot.open(sys.argv[1])
for k in a.keys(cycle=False):
    h, ref = f[k], a[k]
    assert type(h).__module__.startswith("uproot.dynamic"), type(h)
    assert np.array_equal(np.asarray(h.member("fSumw2")), ref.variances(flow=True))
    assert h.member("fXaxis").member("fNbins") == len(ref.axis().edges()) - 1
print("ok")
"#;
    assert_eq!(common::run_python(code, &[path.to_str().unwrap()]).trim(), "ok");
}
