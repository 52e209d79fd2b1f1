//! Tests of `fedhex::data::source`: loading ROOT files through branch
//! expressions into an `EventSet` (phi-omega productions, files written by
//! uproot, real CMS NanoAOD), cuts, dropped events, label thresholds, input
//! resolution, every kind of bad input, and `write_root` read back by uproot.
//!
//! Python peers need `FEDHEX_PYTHON` (a Python with uproot, awkward, numpy).

use std::path::{Path, PathBuf};

use fedhex::data::phiomega::{LabelGrid, PhiOmegaModel};
mod common;
mod root_common;
use common::run_python;
use fedhex::data::files::write_root;
use fedhex::data::phiomega::write_phiomega_grid;
use fedhex::data::root::{Column, RootFile, Values};
use fedhex::data::source::{load, LoadReport, RootInput, Variable};
use fedhex::data::EventSet;
use fedhex::Error;
use ndarray::Array2;

fn shared_data() -> PathBuf {
    let p = root_common::data_dir();
    assert!(p.is_dir(), "{} missing (tests/fixtures/root/files, or $FEDHEX_SHARED_DATA/root)", p.display());
    p
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The configuration reading phi-omega production files.
fn phiomega_input(files: Vec<String>, cut: &str) -> RootInput {
    RootInput {
        files,
        features: vec![
            Variable::new("phi", "CBL_RecoPhi_mass"),
            Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"),
        ],
        labels: vec![Variable::new("labelphi", "GenPhi_mass[0]"), Variable::new("labelomega", "GenOmega_mass[0]")],
        cut: cut.to_string(),
        ..RootInput::default()
    }
}

const SEED: u64 = 11;
const N: usize = 300;

/// A 3×2 production with `N` events per point.
fn small_grid(dir: &Path) -> (Vec<[f64; 2]>, Vec<PathBuf>) {
    let points = LabelGrid::new(3, 2).points().expect("grid");
    let paths = write_phiomega_grid(dir, &PhiOmegaModel::default(), &points, N, SEED).expect("write grid");
    (points, paths)
}

/// The generator's events of point `i` as f32 rows `[phi, omega, M_phi, M_omega]`.
fn generator_rows(points: &[[f64; 2]], i: usize) -> Vec<[f32; 4]> {
    let [mp, mo] = points[i];
    let sample = PhiOmegaModel::default().sample_seeded(mp, mo, N, SEED + i as u64).expect("sample");
    sample.events.iter().map(|e| [e[0] as f32, e[1] as f32, mp as f32, mo as f32]).collect()
}

fn rows_of(set: &EventSet) -> Vec<[f32; 4]> {
    (0..set.len()).map(|i| [set.samples[[i, 0]], set.samples[[i, 1]], set.labels[[i, 0]], set.labels[[i, 1]]]).collect()
}

fn scalar_f64(c: Column) -> Vec<f64> {
    match c {
        Column::Scalar(v) => v.to_f64(),
        other => panic!("expected a scalar column, got {other:?}"),
    }
}

fn jagged_f64(c: Column) -> (Vec<u64>, Vec<f64>) {
    match c {
        Column::Jagged { offsets, values } => (offsets, values.to_f64()),
        other => panic!("expected a jagged column, got {other:?}"),
    }
}

fn err_text(r: Result<(EventSet, LoadReport), Error>) -> String {
    match r {
        Ok((set, rep)) => panic!("expected an error, loaded {} events: {rep}", set.len()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message does not mention {p:?}:\n{msg}");
    }
}

// ---------------------------------------------------------------------------
// phi-omega productions
// ---------------------------------------------------------------------------

#[test]
fn phiomega_grid_loads_with_generator_values() {
    let dir = tmp();
    let (points, paths) = small_grid(dir.path());
    assert_eq!(paths.len(), 6);
    let (set, rep) = load(&phiomega_input(vec![s(dir.path())], "")).expect("load");
    assert_eq!(set.feature_names, ["phi", "omega"]);
    assert_eq!(set.label_names, ["labelphi", "labelomega"]);
    assert_eq!(set.len(), 6 * N);
    assert_eq!(
        (rep.files, rep.events_read, rep.passed_cut, rep.dropped_invalid, rep.dropped_nonfinite, rep.events_kept),
        (6, 6 * N as u64, 6 * N as u64, 0, 0, 6 * N as u64)
    );
    assert_eq!(rep.labels_kept, 6);
    let rows = rows_of(&set);
    for i in 0..points.len() {
        assert_eq!(rows[i * N..(i + 1) * N], generator_rows(&points, i)[..], "point {i}");
    }
    // The files are a pure function of the arguments.
    let again = tmp();
    let (_, paths2) = small_grid(again.path());
    for (a, b) in paths.iter().zip(&paths2) {
        assert_eq!(std::fs::read(a).expect("read").len(), std::fs::read(b).expect("read").len());
    }
    let (set2, _) = load(&phiomega_input(vec![s(again.path())], "")).expect("load");
    assert_eq!(set2, set);
    // The production's bookkeeping: every loaded label has the generator's efficiency.
    let table = fedhex::data::efficiency::EfficiencyTable::read(&dir.path().join("acceptance.csv"), 2).expect("table");
    let effs = table.for_labels(&set.label_groups().labels).expect("every label listed");
    for (lab, eff) in set.label_groups().labels.iter().zip(effs) {
        let i = points.iter().position(|p| p[0] as f32 == lab[0] && p[1] as f32 == lab[1]).expect("a grid point");
        let sample = PhiOmegaModel::default().sample_seeded(points[i][0], points[i][1], N, SEED + i as u64).unwrap();
        assert!((eff - sample.efficiency).abs() < 1e-7, "{lab:?}: table {eff}, generator {}", sample.efficiency);
    }
}

#[test]
fn phiomega_branches_are_nanoaod_like() {
    let dir = tmp();
    let (points, paths) = small_grid(dir.path());
    let f = RootFile::open(&paths[4]).expect("open");
    let t = f.tree("Events").expect("tree");
    assert_eq!(t.entries(), N as u64);
    for b in [
        "event",
        "CBL_Region",
        "CBL_RecoPhi_mass",
        "nTwoProng",
        "TwoProng_massPi0",
        "CBL_RecoPhi_twoprongindex",
        "nPhoton",
        "Photon_pt",
        "CBL_RecoPhi_photonindex",
        "nGenPhi",
        "GenPhi_mass",
        "nGenOmega",
        "GenOmega_mass",
    ] {
        t.branch_info(b).unwrap_or_else(|e| panic!("{e}"));
    }
    let (off, gen) = jagged_f64(t.read("GenPhi_mass").expect("read"));
    assert_eq!(off, (0..=N as u64).collect::<Vec<_>>());
    assert!(gen.iter().all(|&m| m == points[4][0]));
    let (off, _) = jagged_f64(t.read("TwoProng_massPi0").expect("read"));
    let counts: Vec<u64> = off.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(counts.iter().all(|&c| (1..=3).contains(&c)));
    assert!(counts.iter().any(|&c| c > 1), "some events should have several two-prongs");
    let idx = scalar_f64(t.read("CBL_RecoPhi_twoprongindex").expect("read"));
    assert!(idx.iter().zip(&counts).all(|(&i, &c)| i >= 0.0 && (i as u64) < c));
    let region = scalar_f64(t.read("CBL_Region").expect("read"));
    let n1 = region.iter().filter(|&&r| r == 1.0).count();
    assert!(n1 > N * 8 / 10 && n1 < N, "region 1 fraction {n1}/{N}");
}

/// The cut evaluated by hand from the raw branches.
#[test]
fn cut_semantics_match_raw_branches() {
    let dir = tmp();
    let (points, paths) = small_grid(dir.path());
    let cut = "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220";
    let (set, rep) = load(&phiomega_input(vec![s(dir.path())], cut)).expect("load");
    let mut expected = Vec::new();
    let mut n_region1 = 0;
    let mut n_two_photons = 0;
    for (i, p) in paths.iter().enumerate() {
        let f = RootFile::open(p).expect("open");
        let t = f.tree("Events").expect("tree");
        let region = scalar_f64(t.read("CBL_Region").expect("read"));
        let pidx = scalar_f64(t.read("CBL_RecoPhi_photonindex").expect("read"));
        let (off, pt) = jagged_f64(t.read("Photon_pt").expect("read"));
        let gen = generator_rows(&points, i);
        for e in 0..N {
            let lead = pt[off[e] as usize + pidx[e] as usize];
            if region[e] == 1.0 {
                n_region1 += 1;
            }
            if off[e + 1] - off[e] > 1 {
                n_two_photons += 1;
            }
            if region[e] == 1.0 && lead > 220.0 {
                expected.push(gen[e]);
            }
        }
    }
    assert!(expected.len() < n_region1 && n_region1 < 6 * N, "the cut should remove events on both terms");
    assert_eq!(rows_of(&set), expected);
    assert_eq!(rep.passed_cut, expected.len() as u64);
    assert_eq!(rep.events_read, 6 * N as u64);
    assert_eq!(rep.cut_invalid, 0);

    // Negation and the single term.
    let (_, rep) = load(&phiomega_input(vec![s(dir.path())], "CBL_Region == 1")).expect("load");
    assert_eq!(rep.passed_cut, n_region1 as u64);
    let (_, rep) = load(&phiomega_input(vec![s(dir.path())], "not CBL_Region == 1")).expect("load");
    assert_eq!(rep.passed_cut, (6 * N - n_region1) as u64);

    // A guarded index is valid everywhere; an unguarded one rejects and counts.
    let (_, rep) = load(&phiomega_input(vec![s(dir.path())], "len(Photon_pt) > 1 and Photon_pt[1] > 0")).expect("load");
    assert_eq!((rep.passed_cut, rep.cut_invalid), (n_two_photons as u64, 0));
    let (_, rep) = load(&phiomega_input(vec![s(dir.path())], "Photon_pt[1] > 0")).expect("load");
    assert_eq!((rep.passed_cut, rep.cut_invalid), (n_two_photons as u64, (6 * N - n_two_photons) as u64));
}

// ---------------------------------------------------------------------------
// A file written by uproot: jagged branches, bad indices, non-finite values
// ---------------------------------------------------------------------------

/// Event content of the uproot file, generated here and handed to Python.
struct UprootData {
    counts: Vec<usize>,
    values: Vec<f64>,
    idx: Vec<i32>,
    mass: Vec<f64>,
    label: Vec<i32>,
}

const UPROOT_WRITER: &str = r#"
import json, sys
import numpy as np, awkward as ak, uproot
d = json.load(open(sys.argv[1]))
mass = np.array(d["mass"], dtype=np.float64)
mass[d["nan_at"]] = np.nan
mass[d["inf_at"]] = -np.inf
jag = ak.unflatten(np.array(d["values"], dtype=np.float32), np.array(d["counts"], dtype=np.int64))
data = {
    "TwoProng": ak.zip({"massPi0": jag}),
    "idx": np.array(d["idx"], dtype=np.int32),
    "mass": mass,
    "label": np.array(d["label"], dtype=np.int32),
}
with uproot.recreate(sys.argv[2]) as f:
    f.mktree("Events", {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()})
    f["Events"].extend(data)
"#;

/// Writes the uproot file; returns its content. Events: label 1000 for
/// `n_a`, 2000 for `n_b`; NaN masses at events 21, 71, 121, ..., -inf at
/// 2, 79, 156, ..., an `f32`-overflowing 1e300 at event 6.
fn write_uproot_file(path: &Path, n_a: usize, n_b: usize) -> (UprootData, Vec<usize>, Vec<usize>) {
    let n = n_a + n_b;
    let mut d = UprootData { counts: vec![], values: vec![], idx: vec![], mass: vec![], label: vec![] };
    for e in 0..n {
        let c = e % 4;
        d.counts.push(c);
        for k in 0..c {
            d.values.push(0.25 * (e * 3 + k) as f64);
        }
        d.idx.push((e % 5) as i32 - 1); // -1..=3: negative, in range or not
        d.mass.push(if e == 6 { 1e300 } else { 100.0 + e as f64 });
        d.label.push(if e < n_a { 1000 } else { 2000 });
    }
    let nan_at: Vec<usize> = (0..n).filter(|e| e % 50 == 21).collect();
    let inf_at: Vec<usize> = (0..n).filter(|e| e % 77 == 2).collect();
    let json = serde_json::json!({
        "counts": d.counts, "values": d.values, "idx": d.idx, "mass": d.mass, "label": d.label,
        "nan_at": nan_at, "inf_at": inf_at,
    });
    let jpath = path.with_extension("json");
    std::fs::write(&jpath, json.to_string()).expect("write json");
    run_python(UPROOT_WRITER, &[&s(&jpath), &s(path)]);
    for e in &nan_at {
        d.mass[*e] = f64::NAN;
    }
    for e in &inf_at {
        d.mass[*e] = f64::NEG_INFINITY;
    }
    (d, nan_at, inf_at)
}

fn uproot_input(path: &Path) -> RootInput {
    RootInput {
        files: vec![s(path)],
        features: vec![Variable::new("mass", "mass"), Variable::new("tp", "TwoProng_massPi0[idx]")],
        labels: vec![Variable::new("label", "label")],
        ..RootInput::default()
    }
}

#[test]
fn uproot_file_drops_and_counts_invalid_and_nonfinite() {
    let dir = tmp();
    let path = dir.path().join("uproot.root");
    let (d, _, _) = write_uproot_file(&path, 480, 20);
    let n = d.mass.len();
    let (set, rep) = load(&uproot_input(&path)).expect("load");
    let mut offs = vec![0usize];
    for c in &d.counts {
        offs.push(offs.last().copied().unwrap_or(0) + c);
    }
    let (mut invalid, mut nonfinite, mut rows) = (0u64, 0u64, Vec::new());
    for (e, (&i, &count)) in d.idx.iter().zip(&d.counts).enumerate() {
        if i < 0 || i as usize >= count {
            invalid += 1;
            continue;
        }
        let m = d.mass[e] as f32;
        let tp = d.values[offs[e] + i as usize] as f32;
        if !m.is_finite() {
            nonfinite += 1;
            continue;
        }
        rows.push([m, tp, d.label[e] as f32]);
    }
    assert!(invalid > 0 && nonfinite >= 3, "the file must hold both kinds: {invalid} {nonfinite}");
    assert_eq!(rep.events_read, n as u64);
    assert_eq!(rep.passed_cut, n as u64);
    assert_eq!(rep.dropped_invalid, invalid);
    assert_eq!(rep.dropped_nonfinite, nonfinite);
    assert_eq!(rep.events_kept, rows.len() as u64);
    let got: Vec<[f32; 3]> =
        (0..set.len()).map(|i| [set.samples[[i, 0]], set.samples[[i, 1]], set.labels[[i, 0]]]).collect();
    assert_eq!(got, rows);
    let text = rep.to_string();
    assert_mentions(&text, &[&format!("{invalid} with an invalid index"), &format!("{nonfinite} non-finite")]);
}

#[test]
fn thresh_drops_small_label_and_lists_it() {
    let dir = tmp();
    let path = dir.path().join("uproot.root");
    write_uproot_file(&path, 480, 20);
    let (all, rep_all) = load(&uproot_input(&path)).expect("load");
    let small = (0..all.len()).filter(|&i| all.labels[[i, 0]] == 2000.0).count();
    assert!(small > 0 && small < 50);
    assert!(rep_all.labels_dropped.is_empty());
    assert_eq!(rep_all.labels_kept, 2);

    let input = RootInput { thresh: 50, ..uproot_input(&path) };
    let (set, rep) = load(&input).expect("load");
    assert_eq!(rep.labels_kept, 1);
    assert_eq!(rep.labels_dropped.len(), 1);
    assert_eq!(rep.labels_dropped[0].label, vec![2000.0]);
    assert_eq!(rep.labels_dropped[0].events, small);
    assert_eq!(rep.dropped_thresh, small as u64);
    assert_eq!(set.len(), all.len() - small);
    assert!(set.labels.iter().all(|&l| l == 1000.0));
    assert_mentions(&rep.to_string(), &["[2000]", "thresh 50"]);
    let json = serde_json::to_value(&rep).expect("json");
    assert_eq!(json["labels_dropped"][0]["events"], small);

    // Thresh at exactly the small group's size keeps it.
    let (_, rep) = load(&RootInput { thresh: small, ..uproot_input(&path) }).expect("load");
    assert_eq!(rep.labels_kept, 2);
    // Above every group: an error that says so.
    let msg = err_text(load(&RootInput { thresh: 100_000, ..uproot_input(&path) }));
    assert_mentions(&msg, &["thresh = 100000", "[1000]", "[2000]"]);
}

// ---------------------------------------------------------------------------
// Real CMS NanoAOD
// ---------------------------------------------------------------------------

#[test]
fn nanoaod_leading_photon_matches_uproot() {
    let file = shared_data().join("nanoAOD_2015_CMS_Open_Data_ttbar.root");
    let code = r#"
import sys, uproot
t = uproot.open(sys.argv[1])["Events"]
n = t["nPhoton"].array(library="np")
pt = t["Photon_pt"].array()
run = t["run"].array(library="np")
print(" ".join(repr(float(p[0])) for p, k in zip(pt, n) if k > 0))
print(" ".join(str(int(r)) for r, k in zip(run, n) if k > 0))
print(sum(1 for k in n if k == 1))
"#;
    let out = run_python(code, &[&s(&file)]);
    let mut lines = out.lines();
    let pts: Vec<f32> =
        lines.next().unwrap_or_default().split_whitespace().map(|v| v.parse::<f64>().expect("float") as f32).collect();
    let runs: Vec<f32> =
        lines.next().unwrap_or_default().split_whitespace().map(|v| v.parse::<f64>().expect("int") as f32).collect();
    let exactly_one: u64 = lines.next().unwrap_or_default().trim().parse().expect("count");
    assert!(pts.len() > 10);

    let input = RootInput {
        files: vec![s(&file)],
        features: vec![Variable::new("pt0", "Photon_pt[0]")],
        labels: vec![Variable::new("run", "run")],
        cut: "nPhoton > 0".into(),
        ..RootInput::default()
    };
    let (set, rep) = load(&input).expect("load");
    assert_eq!(rep.events_read, 200);
    assert_eq!(rep.passed_cut, pts.len() as u64);
    assert_eq!(rep.dropped_invalid, 0);
    assert_eq!(set.samples.column(0).to_vec(), pts);
    assert_eq!(set.labels.column(0).to_vec(), runs);

    // The second photon: events with exactly one photon are invalid.
    let input = RootInput { features: vec![Variable::new("pt1", "Photon_pt[1]")], ..input };
    let (set, rep) = load(&input).expect("load");
    assert_eq!(rep.dropped_invalid, exactly_one);
    assert_eq!(set.len() as u64, pts.len() as u64 - exactly_one);
}

// ---------------------------------------------------------------------------
// Input resolution
// ---------------------------------------------------------------------------

#[test]
fn directories_globs_depth_and_dedup() {
    let dir = tmp();
    let (_, paths) = small_grid(&dir.path().join("a/b"));
    // A hidden copy and a non-ROOT file must be ignored by directory searches.
    std::fs::copy(&paths[0], dir.path().join("a/b/.hidden.root")).expect("copy");
    std::fs::write(dir.path().join("a/b/notes.txt"), "not data").expect("write");
    let count = |files: Vec<String>, depth: usize| -> Result<usize, Error> {
        let input = RootInput { max_depth: depth, ..phiomega_input(files, "") };
        load(&input).map(|(_, r)| r.files)
    };
    let root = s(dir.path());
    assert_eq!(count(vec![root.clone()], 3).expect("depth 3"), 6);
    let msg = count(vec![root.clone()], 2).expect_err("depth 2 is too shallow").to_string();
    assert_mentions(&msg, &[&root, "no .root files"]);
    assert_eq!(count(vec![format!("{root}/a/b/phiomega_0000[0-2].root")], 1).expect("glob"), 3);
    assert_eq!(count(vec![format!("{root}/*/b/phiomega_*[13].root")], 1).expect("glob"), 2);
    assert_eq!(count(vec![format!("{root}/a/?")], 1).expect("glob on a directory"), 6);
    // The same files through several entries are read once.
    let (set, rep) = load(&phiomega_input(
        vec![s(&paths[1]), format!("{root}/a/b"), s(&paths[1]), format!("{root}/a/*/*.root")],
        "",
    ))
    .expect("load");
    assert_eq!(rep.files, 6);
    assert_eq!(set.len(), 6 * N);
    // Files come in sorted order whatever the order of the entries.
    let (set2, _) = load(&phiomega_input(vec![s(&paths[5]), s(&paths[0])], "")).expect("load");
    let (set3, _) = load(&phiomega_input(vec![s(&paths[0]), s(&paths[5])], "")).expect("load");
    assert_eq!(set2, set3);
    assert_eq!(set2.labels[[0, 0]], 1000.0);
}

#[test]
fn config_from_toml_and_unknown_fields() {
    let text = r#"
        files = ["mc/"]
        cut = "CBL_Region == 1"
        thresh = 20
        [[features]]
        name = "phi"
        expr = "CBL_RecoPhi_mass"
        [[features]]
        name = "omega"
        expr = "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"
        [[labels]]
        name = "labelphi"
        expr = "GenPhi_mass[0]"
    "#;
    let cfg: RootInput = toml::from_str(text).expect("parse");
    assert_eq!(cfg.tree, "Events");
    assert_eq!(cfg.max_depth, 3);
    assert_eq!(cfg.thresh, 20);
    assert_eq!(cfg.features[1], Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"));
    let inline: RootInput =
        toml::from_str(r#"features = [{ name = "phi", expr = "CBL_RecoPhi_mass" }]"#).expect("inline tables");
    assert_eq!(inline.features, vec![Variable::new("phi", "CBL_RecoPhi_mass")]);
    let e = toml::from_str::<RootInput>("file = [\"x\"]").expect_err("unknown field");
    assert!(e.to_string().contains("file"), "{e}");
    let e = toml::from_str::<RootInput>("features = [{ name = \"a\", exp = \"b\" }]").expect_err("unknown field");
    assert!(e.to_string().contains("exp"), "{e}");
}

// ---------------------------------------------------------------------------
// Bad input: one clear error naming the thing, never a panic
// ---------------------------------------------------------------------------

#[test]
fn bad_paths_name_the_path() {
    let dir = tmp();
    let missing = s(&dir.path().join("nope/x.root"));
    assert_mentions(&err_text(load(&phiomega_input(vec![missing.clone()], ""))), &[&missing, "no such file"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).expect("mkdir");
    assert_mentions(&err_text(load(&phiomega_input(vec![s(&empty)], ""))), &[&s(&empty), "no .root files"]);
    let glob = format!("{}/*.root", s(&empty));
    assert_mentions(&err_text(load(&phiomega_input(vec![glob.clone()], ""))), &[&glob, "matches no file"]);
    let bad_glob = format!("{}/[a.root", s(&empty));
    assert_mentions(&err_text(load(&phiomega_input(vec![bad_glob.clone()], ""))), &[&bad_glob, "bad pattern"]);
    assert_mentions(&err_text(load(&phiomega_input(vec![], ""))), &["no input files"]);
}

#[test]
fn not_root_truncated_and_corrupt_files_name_the_file() {
    let dir = tmp();
    let (_, paths) = small_grid(&dir.path().join("grid"));
    let text = dir.path().join("text.root");
    std::fs::write(&text, "this is not a ROOT file at all").expect("write");
    assert_mentions(&err_text(load(&phiomega_input(vec![s(&text)], ""))), &[&s(&text), "not a ROOT file"]);
    let empty = dir.path().join("empty.root");
    std::fs::write(&empty, "").expect("write");
    assert_mentions(&err_text(load(&phiomega_input(vec![s(&empty)], ""))), &[&s(&empty), "not a ROOT file"]);

    let bytes = std::fs::read(&paths[0]).expect("read");
    let bad = dir.path().join("bad.root");
    // Truncated anywhere: an error naming the file.
    for cut in (8..bytes.len()).step_by(bytes.len() / 40) {
        std::fs::write(&bad, &bytes[..cut]).expect("write");
        let msg = err_text(load(&phiomega_input(vec![s(&bad)], "")));
        assert_mentions(&msg, &[&s(&bad)]);
    }
    // Corrupted bytes: an error naming the file, or (for bytes no read
    // touches) a load that still returns the right number of events.
    let mut errors = 0;
    for at in (100..bytes.len()).step_by(bytes.len() / 60) {
        let mut b = bytes.clone();
        for x in &mut b[at..(at + 16).min(bytes.len())] {
            *x ^= 0x5A;
        }
        std::fs::write(&bad, &b).expect("write");
        match load(&phiomega_input(vec![s(&bad)], "")) {
            Err(e) => {
                errors += 1;
                assert_mentions(&e.to_string(), &[&s(&bad)]);
            }
            Ok((_, rep)) => assert_eq!(rep.events_read, N as u64),
        }
    }
    assert!(errors > 10, "corruption should mostly be detected ({errors})");
    // A bad file among good ones: the error names the bad one.
    let mut files: Vec<String> = paths.iter().map(|p| s(p)).collect();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).expect("write");
    files.push(s(&bad));
    assert_mentions(&err_text(load(&phiomega_input(files, ""))), &[&s(&bad)]);
}

#[test]
fn missing_tree_and_branch_name_file_tree_branch_and_expression() {
    let dir = tmp();
    let (_, paths) = small_grid(dir.path());
    let f = s(&paths[0]);
    let input = RootInput { tree: "Evnts".into(), ..phiomega_input(vec![f.clone()], "") };
    assert_mentions(&err_text(load(&input)), &[&f, "Evnts", "Events"]);

    let mut input = phiomega_input(vec![f.clone()], "");
    input.features[1] = Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongidx]");
    assert_mentions(
        &err_text(load(&input)),
        &[&f, "tree 'Events'", "CBL_RecoPhi_twoprongidx", "feature 'omega'", "CBL_RecoPhi_twoprongindex"],
    );
    let input = phiomega_input(vec![f.clone()], "CBL_Regio == 1");
    assert_mentions(&err_text(load(&input)), &[&f, "CBL_Regio", "cut \"CBL_Regio == 1\""]);
    // A branch used against its kind.
    let mut input = phiomega_input(vec![f.clone()], "");
    input.labels[0] = Variable::new("labelphi", "GenPhi_mass");
    assert_mentions(&err_text(load(&input)), &[&f, "label 'labelphi'", "GenPhi_mass", "position"]);
    let mut input = phiomega_input(vec![f.clone()], "");
    input.features[0] = Variable::new("phi", "CBL_RecoPhi_mass[0]");
    assert_mentions(&err_text(load(&input)), &[&f, "feature 'phi'", "CBL_RecoPhi_mass[0]"]);
}

#[test]
fn unsupported_branch_type_is_named() {
    let file = s(&shared_data().join("uproot-Zmumu.root"));
    let input = RootInput {
        files: vec![file.clone()],
        tree: "events".into(),
        features: vec![Variable::new("m", "M")],
        labels: vec![],
        cut: "Type == 1".into(),
        ..RootInput::default()
    };
    assert_mentions(&err_text(load(&input)), &[&file, "events", "'Type'", "unsupported", "cut \"Type == 1\""]);
    // The same file without the string branch loads.
    let (set, rep) = load(&RootInput { cut: "M > 90".into(), ..input }).expect("load");
    assert!(!set.is_empty() && rep.passed_cut < rep.events_read);
}

#[test]
fn expression_syntax_errors_give_position() {
    let mut input = phiomega_input(vec!["does-not-matter".into()], "");
    input.features[1] = Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex");
    let msg = err_text(load(&input));
    assert_mentions(&msg, &["feature 'omega'", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex", "position 42"]);
    let input = phiomega_input(vec!["does-not-matter".into()], "CBL_Region === 1");
    assert_mentions(&err_text(load(&input)), &["cut", "CBL_Region === 1", "position"]);
    // Configuration mistakes.
    let mut input = phiomega_input(vec!["x".into()], "");
    input.labels[0].name = "phi".into();
    assert_mentions(&err_text(load(&input)), &["'phi' is used twice"]);
    let input = RootInput { features: vec![], ..phiomega_input(vec!["x".into()], "") };
    assert_mentions(&err_text(load(&input)), &["at least one feature"]);
}

#[test]
fn empty_selection_is_an_error_naming_the_cut() {
    let dir = tmp();
    small_grid(dir.path());
    let msg = err_text(load(&phiomega_input(vec![s(dir.path())], "CBL_Region == 7")));
    assert_mentions(&msg, &["no events left", "CBL_Region == 7", "tree 'Events'", "1800 events"]);
    // Only invalid indices left: also an error, with the count.
    let mut input = phiomega_input(vec![s(dir.path())], "");
    input.features[1] = Variable::new("omega", "TwoProng_massPi0[5]");
    assert_mentions(&err_text(load(&input)), &["no events left", "1800 with an invalid index"]);
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

#[test]
fn write_root_read_back_by_uproot() {
    let dir = tmp();
    let n = 257;
    let samples = Array2::from_shape_fn((n, 2), |(i, j)| (i as f32 * 1.37 + j as f32 * 1000.0).sin() * 1e3 + 0.1);
    let labels = Array2::from_shape_fn((n, 2), |(i, j)| [1000.0 + (i % 3) as f32 * 250.0, 0.5 + (i % 4) as f32][j]);
    let names = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
    let events =
        EventSet::new(samples, labels, names("phi", "omega"), names("labelphi", "labelomega"), "test").expect("set");
    let out = dir.path().join("gen.root");
    write_root(&out, &events, "Generated").expect("write");
    // No temporary file is left next to it.
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).expect("ls").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("gen.root")]);

    let code = r#"
import sys, uproot
t = uproot.open(sys.argv[1])[sys.argv[2]]
for k in t.keys():
    print(k, t[k].typename, " ".join(repr(float(v)) for v in t[k].array(library="np")))
"#;
    let text = run_python(code, &[&s(&out), "Generated"]);
    let mut seen = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let name = it.next().expect("name").to_string();
        assert_eq!(it.next(), Some("float"), "{name}");
        let vals: Vec<f32> = it.map(|v| v.parse::<f64>().expect("float") as f32).collect();
        let col = match events.feature_names.iter().position(|f| *f == name) {
            Some(j) => events.samples.column(j).to_vec(),
            None => {
                let j = events.label_names.iter().position(|f| *f == name).expect("known name");
                events.labels.column(j).to_vec()
            }
        };
        assert_eq!(vals, col, "{name}");
        seen.push(name);
    }
    assert_eq!(seen, ["phi", "omega", "labelphi", "labelomega"]);

    // And back through load.
    let input = RootInput {
        files: vec![s(&out)],
        tree: "Generated".into(),
        features: vec![Variable::new("phi", "phi"), Variable::new("omega", "omega")],
        labels: vec![Variable::new("labelphi", "labelphi"), Variable::new("labelomega", "labelomega")],
        ..RootInput::default()
    };
    let (back, _) = load(&input).expect("load");
    assert_eq!(back, events);

    // A name clash between a feature and a label is an error naming the file.
    let clash = EventSet { label_names: names("phi", "x"), ..events.clone() };
    let bad = dir.path().join("clash.root");
    let msg = write_root(&bad, &clash, "Generated").expect_err("clash").to_string();
    assert_mentions(&msg, &[&s(&bad), "'phi'"]);
    assert!(!bad.exists());
    // Values survive exactly even for odd f32s.
    let odd = Array2::from_shape_vec((2, 1), vec![f32::MIN_POSITIVE, f32::MAX]).expect("shape");
    let odd = EventSet::new(odd, Array2::zeros((2, 1)), vec![], vec![], "odd").expect("set");
    let p = dir.path().join("odd.root");
    write_root(&p, &odd, "t").expect("write");
    let f = RootFile::open(&p).expect("open");
    assert_eq!(
        f.tree("t").expect("tree").read("x0").expect("read"),
        Column::Scalar(Values::F32(vec![f32::MIN_POSITIVE, f32::MAX]))
    );
}

// ---------------------------------------------------------------------------
// RNTuple input
// ---------------------------------------------------------------------------

/// Writes the same 600 events as a TTree (`mktree`) and as an RNTuple of two
/// clusters with uproot (`tests/fixtures/root/rntuple_uproot.py pair`).
fn write_tree_and_ntuple(dir: &Path) -> (PathBuf, PathBuf) {
    let (t, n) = (dir.join("tree.root"), dir.join("ntuple.root"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/rntuple_uproot.py");
    let code =
        "import runpy, sys; p = sys.argv[1]; sys.argv = [p] + sys.argv[2:]; runpy.run_path(p, run_name='__main__')";
    run_python(code, &[script, "pair", &s(&t), &s(&n)]);
    (t, n)
}

fn pair_input(file: &Path) -> RootInput {
    RootInput {
        files: vec![s(file)],
        tree: "Events".into(),
        features: vec![Variable::new("mass", "mass"), Variable::new("lead", "Jet_pt[0]")],
        labels: vec![Variable::new("m", "genmass"), Variable::new("w", "width * 2")],
        cut: "region == 1 and Jet_pt[0] > 20".into(),
        ..RootInput::default()
    }
}

#[test]
fn rntuple_input_gives_the_same_events_as_the_ttree() {
    let dir = tmp();
    let (t, n) = write_tree_and_ntuple(dir.path());
    assert!(RootFile::open(&n).expect("open").ntuple_names() == vec!["Events".to_string()]);
    let (from_tree, rep_tree) = load(&pair_input(&t)).expect("TTree input");
    let (from_ntuple, rep_ntuple) = load(&pair_input(&n)).expect("RNTuple input");
    assert!(from_tree.len() > 50 && rep_tree.passed_cut < rep_tree.events_read, "{rep_tree}");
    assert_eq!(rep_tree.cut_invalid, rep_ntuple.cut_invalid);
    assert!(rep_tree.cut_invalid > 0, "events without jets make Jet_pt[0] invalid: {rep_tree}");
    assert_eq!(rows_of(&from_tree), rows_of(&from_ntuple));
    assert_eq!(from_tree, from_ntuple);
    assert_eq!(format!("{rep_tree}"), format!("{rep_ntuple}"));
    // A directory holding both reads both, in path order (ntuple.root, tree.root).
    let both = RootInput { files: vec![s(dir.path())], ..pair_input(&t) };
    let (set, rep) = load(&both).expect("mixed input");
    assert_eq!(rep.files, 2);
    assert_eq!(set.len(), 2 * from_tree.len());
    let rows = rows_of(&set);
    assert_eq!(rows[..from_tree.len()], rows_of(&from_ntuple)[..]);
}

#[test]
fn rntuple_input_errors_name_file_ntuple_and_field() {
    let dir = tmp();
    let (_, n) = write_tree_and_ntuple(dir.path());
    let f = s(&n);
    let mut input = pair_input(&n);
    input.features[1] = Variable::new("lead", "Jet_ptt[0]");
    assert_mentions(
        &err_text(load(&input)),
        &[&f, "ntuple 'Events'", "no field named 'Jet_ptt'", "did you mean: Jet_pt", "feature 'lead'"],
    );
    let input = RootInput { tree: "Evnts".into(), ..pair_input(&n) };
    assert_mentions(&err_text(load(&input)), &[&f, "Evnts", "no TTree or RNTuple", "Events"]);
    // A jagged field used as a scalar is named like a jagged branch.
    let mut input = pair_input(&n);
    input.features[1] = Variable::new("lead", "Jet_pt");
    assert_mentions(&err_text(load(&input)), &[&f, "ntuple 'Events'", "feature 'lead'", "Jet_pt"]);
    // An unsupported field type names the field and its type.
    let strings =
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/root/rntuple/ntpl001_staff_rntuple_v1-0-1-0.root");
    let input = RootInput {
        files: vec![strings.to_string()],
        tree: "Staff".into(),
        features: vec![Variable::new("age", "Age")],
        labels: vec![],
        cut: "Nation == 1".into(),
        ..RootInput::default()
    };
    assert_mentions(
        &err_text(load(&input)),
        &[strings, "ntuple 'Staff'", "field 'Nation'", "std::string", "unsupported"],
    );
    let (set, _) = load(&RootInput { cut: "Age > 40".into(), ..input }).expect("numeric fields of the same file load");
    assert!(!set.is_empty());
}
