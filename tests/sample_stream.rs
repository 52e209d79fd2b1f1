//! Streamed generation (`generate::stream_samples`) to `.root` and `.npz`
//! (`files::EventFileWriter`): several baskets / chunks read back by our
//! reader, uproot and numpy give exactly the in-memory events, for any chunk
//! size; range cuts keep exactly n per label; failures leave no file.
//!
//! Python peers need `FEDHEX_PYTHON` (a Python with uproot, awkward, numpy).

mod common;
use common::{random_model, run_python, tmpdir};
use fedhex::data::files::EventFileWriter;
use fedhex::data::root::{Column, RootFile};
use fedhex::data::EventSet;
use fedhex::flow::Model;
use fedhex::generate::{sample_with_cuts, stream_samples, RangeCut, StreamOptions, DEFAULT_SUPPORT_MARGIN};
use std::path::Path;
use std::process::{Command, Output};

fn labels() -> Vec<Vec<f32>> {
    vec![vec![0.25, 0.75], vec![0.5, 0.5], vec![1.0, 0.0]]
}

/// Streams to `out` with the given chunk size; returns the number of chunks.
fn stream_to(model: &Model, out: &Path, n: usize, cuts: &[RangeCut], chunk: usize) -> usize {
    let labels = labels();
    let total = (labels.len() * n) as u64;
    let mut w =
        EventFileWriter::create(out, "Events", &model.features.names(), &model.labels.names(), total, chunk).unwrap();
    let opts =
        StreamOptions { n_per_label: n, cuts, seed: 5, batch: 256, chunk, support_margin: DEFAULT_SUPPORT_MARGIN };
    let mut chunks = 0;
    let got = stream_samples(model, &labels, &opts, |c| {
        assert!(c.rows <= chunk && c.rows > 0);
        chunks += 1;
        w.write(c.samples, c.labels, c.rows)
    })
    .unwrap();
    assert_eq!(got.iter().map(|d| d.kept).sum::<u64>(), total);
    w.finish().unwrap();
    chunks
}

fn in_memory(model: &Model, n: usize, cuts: &[RangeCut]) -> EventSet {
    sample_with_cuts(model, &labels(), n, 5, 256, cuts).unwrap()
}

fn root_columns(path: &Path, names: &[&str]) -> Vec<Vec<f32>> {
    let f = RootFile::open(path).unwrap();
    let t = f.tree("Events").unwrap();
    names
        .iter()
        .map(|n| match t.read(n).unwrap() {
            Column::Scalar(fedhex::data::root::Values::F32(v)) => v,
            other => panic!("branch {n}: expected flat float, got {other:?}"),
        })
        .collect()
}

fn assert_same(ev: &EventSet, cols: &[Vec<f32>]) {
    let d = ev.samples.ncols();
    for (j, col) in cols.iter().enumerate() {
        let want: Vec<f32> = if j < d { ev.samples.column(j).to_vec() } else { ev.labels.column(j - d).to_vec() };
        assert_eq!(col.len(), want.len(), "column {j} length");
        assert!(col.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "column {j} differs");
    }
}

const CHECK: &str = r#"
import sys, numpy as np, uproot
root, npz, ref = sys.argv[1:4]
r = np.load(ref)
t = uproot.open(root)["Events"]
x = np.stack([t[n].array(library="np") for n in ("x0", "x1")], axis=1)
l = np.stack([t[n].array(library="np") for n in ("l0", "l1")], axis=1)
assert x.dtype == np.float32 and np.array_equal(x, r["samples"]), "uproot samples differ"
assert np.array_equal(l, r["labels"]), "uproot labels differ"
z = np.load(npz)
assert sorted(z.files) == ["labels", "samples"], z.files
assert z["samples"].dtype == np.float32 and z["samples"].shape == r["samples"].shape
assert np.array_equal(z["samples"], r["samples"]) and np.array_equal(z["labels"], r["labels"]), "numpy differs"
import zipfile
assert zipfile.ZipFile(npz).testzip() is None, "bad CRC"
print(t["x0"].num_baskets, t["l1"].num_baskets)
"#;

#[test]
fn streamed_root_and_npz_with_many_chunks_match_the_in_memory_events() {
    let dir = tmpdir();
    let d = dir.path();
    let model = random_model(2, &[8], 3);
    let n = 1000;
    let ev = in_memory(&model, n, &[]);
    assert_eq!(ev.len(), 3 * n);
    // 3000 events in chunks of 300: 10 baskets per branch.
    assert_eq!(stream_to(&model, &d.join("s.root"), n, &[], 300), 10);
    assert_eq!(stream_to(&model, &d.join("s.npz"), n, &[], 300), 10);
    let names = ["x0", "x1", "l0", "l1"];
    assert_same(&ev, &root_columns(&d.join("s.root"), &names));
    let z = fedhex::data::npy::read_npz(&d.join("s.npz"), vec![], vec![]).unwrap();
    assert_eq!(z.samples, ev.samples);
    assert_eq!(z.labels, ev.labels);
    // The same by uproot and numpy, against the in-memory writer's archive.
    fedhex::data::npy::write_npz(&d.join("ref.npz"), &ev.samples, &ev.labels).unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let out = run_python(CHECK, &[&p("s.root"), &p("s.npz"), &p("ref.npz")]);
    assert_eq!(out.trim(), "10 10", "baskets per branch seen by uproot");
    // Nothing but the outputs in the directory (no temporary files).
    let mut names: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["ref.npz", "s.npz", "s.root"]);
}

#[test]
fn events_do_not_depend_on_the_chunk_size() {
    let dir = tmpdir();
    let d = dir.path();
    let model = random_model(2, &[8], 4);
    let cut = RangeCut { feature: 0, lo: f64::NEG_INFINITY, hi: 0.0 };
    for cuts in [vec![], vec![cut]] {
        let mut first: Option<Vec<u8>> = None;
        for chunk in [1usize, 7, 256, 1 << 20] {
            let out = d.join(format!("c{chunk}.npz"));
            stream_to(&model, &out, 200, &cuts, chunk);
            let bytes = std::fs::read(&out).unwrap();
            match &first {
                None => first = Some(bytes),
                Some(f) => assert!(f == &bytes, "chunk {chunk} changed the .npz"),
            }
            let out = d.join(format!("c{chunk}.root"));
            stream_to(&model, &out, 200, &cuts, chunk);
            assert_same(&in_memory(&model, 200, &cuts), &root_columns(&out, &["x0", "x1", "l0", "l1"]));
        }
    }
    // A different seed gives different events.
    let a = in_memory(&model, 50, &[]);
    let b = sample_with_cuts(&model, &labels(), 50, 6, 256, &[]).unwrap();
    assert_ne!(a.samples, b.samples);
}

#[test]
fn range_cuts_keep_exactly_n_per_label_when_streamed() {
    let dir = tmpdir();
    let d = dir.path();
    let model = random_model(2, &[8], 5);
    let all = in_memory(&model, 2000, &[]);
    let mut x0: Vec<f32> = all.samples.column(0).to_vec();
    x0.sort_by(f32::total_cmp);
    // A cut that removes about 70% of the events.
    let lo = f64::from(x0[x0.len() * 7 / 10]);
    let cuts = [RangeCut { feature: 0, lo, hi: f64::INFINITY }];
    stream_to(&model, &d.join("cut.root"), 500, &cuts, 64);
    let cols = root_columns(&d.join("cut.root"), &["x0", "x1", "l0", "l1"]);
    assert_eq!(cols[0].len(), 1500);
    assert!(cols[0].iter().all(|&v| f64::from(v) >= lo), "the cut holds");
    for lab in labels() {
        let k = cols[2].iter().zip(&cols[3]).filter(|(a, b)| **a == lab[0] && **b == lab[1]).count();
        assert_eq!(k, 500, "events at {lab:?}");
    }
    assert_same(&in_memory(&model, 500, &cuts), &cols);
}

/// Generation drops events outside the training support (the feature range
/// widened by the margin) and redraws, so exactly n survive; with an infinite
/// margin the same model does produce such events.
#[test]
fn generation_keeps_to_the_training_support() {
    let model = random_model(2, &[8], 9);
    let ranges: Vec<[f64; 2]> = model.features.dims.iter().map(|d| [d.min, d.max]).collect();
    let draw = |margin: f64| {
        let opts =
            StreamOptions { n_per_label: 4000, cuts: &[], seed: 3, batch: 1024, chunk: 1000, support_margin: margin };
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let n = stream_samples(&model, &[vec![0.5, 0.25]], &opts, |c| {
            rows.extend(c.samples.chunks_exact(2).map(|r| r.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(n[0].kept, 4000);
        assert_eq!(rows.len(), 4000, "exactly n events survive (margin {margin})");
        rows
    };
    let outside = |rows: &[Vec<f32>], margin: f64| {
        rows.iter()
            .filter(|r| {
                r.iter().zip(&ranges).any(|(&v, [lo, hi])| {
                    let w = hi - lo;
                    f64::from(v) < lo - margin * w - 1e-5 || f64::from(v) > hi + margin * w + 1e-5
                })
            })
            .count()
    };
    let all = draw(f64::INFINITY);
    assert!(outside(&all, 0.0) > 40, "the unchecked model should leave the training range sometimes");
    for margin in [0.0, 0.1] {
        let kept = draw(margin);
        assert_eq!(outside(&kept, margin), 0, "margin {margin}: events outside the support were kept");
    }
    // A negative margin is refused.
    let opts = StreamOptions { n_per_label: 10, cuts: &[], seed: 3, batch: 64, chunk: 10, support_margin: -1.0 };
    let err = stream_samples(&model, &[vec![0.5, 0.25]], &opts, |_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("support margin"), "{err}");
}

#[test]
fn a_failure_mid_stream_leaves_no_file() {
    let dir = tmpdir();
    let d = dir.path();
    let model = random_model(2, &[8], 6);
    for f in ["fail.root", "fail.npz"] {
        let out = d.join(f);
        let mut w =
            EventFileWriter::create(&out, "Events", &model.features.names(), &model.labels.names(), 3000, 100).unwrap();
        let opts = StreamOptions {
            n_per_label: 1000,
            cuts: &[],
            seed: 1,
            batch: 256,
            chunk: 100,
            support_margin: DEFAULT_SUPPORT_MARGIN,
        };
        let mut chunks = 0;
        let err = stream_samples(&model, &labels(), &opts, |c| {
            chunks += 1;
            if chunks == 4 {
                return Err(fedhex::Error::Data("disk full (simulated)".into()));
            }
            w.write(c.samples, c.labels, c.rows)
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated"), "{err}");
        assert_eq!(chunks, 4, "generation stops at the first sink error");
        drop(w);
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{f}: a partial or temporary file was left");
    }
    // An .npz missing rows cannot be finished.
    let out = d.join("short.npz");
    let mut w = EventFileWriter::create(&out, "Events", &model.features.names(), &model.labels.names(), 10, 4).unwrap();
    w.write(&[0.0; 8], &[0.0; 8], 4).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("short.npz") && err.contains("4 of its 10 rows"), "{err}");
    // More rows than announced is refused.
    let mut w = EventFileWriter::create(&out, "Events", &model.features.names(), &model.labels.names(), 2, 4).unwrap();
    assert!(w.write(&[0.0; 8], &[0.0; 8], 4).is_err());
    drop(w);
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
}

fn fedhex(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedhex")).args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn sample_cli_streams_and_refuses_unwritable_outputs() {
    let dir = tmpdir();
    let d = dir.path();
    random_model(2, &[8], 7).save(&d.join("model")).unwrap();
    let run = |out: &str, chunk: &str, extra: &[&str]| {
        let mut a = vec!["sample", "--model", "model", "--label", "0.5,0.5", "--label", "0,1", "-n", "700"];
        a.extend(["--device", "cpu", "--chunk", chunk, "--out", out]);
        a.extend(extra);
        fedhex(&a, d)
    };
    for (out, chunk) in [("a.npz", "50"), ("b.npz", "1048576"), ("a.root", "50"), ("b.root", "1048576")] {
        let o = run(out, chunk, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("wrote 1400 events at 2 label(s)"));
    }
    assert_eq!(std::fs::read(d.join("a.npz")).unwrap(), std::fs::read(d.join("b.npz")).unwrap());
    let names = ["x0", "x1", "l0", "l1"];
    assert_eq!(root_columns(&d.join("a.root"), &names), root_columns(&d.join("b.root"), &names));
    let z = fedhex::data::npy::read_npz(&d.join("a.npz"), vec![], vec![]).unwrap();
    assert_same(&z, &root_columns(&d.join("a.root"), &names));
    // The same seed again gives the same file; 28 baskets of 50 events.
    let o = run("c.npz", "50", &[]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(d.join("a.npz")).unwrap(), std::fs::read(d.join("c.npz")).unwrap());
    let nb = run_python(
        "import sys, uproot; print(uproot.open(sys.argv[1])['Events']['x0'].num_baskets)",
        &[&d.join("a.root").display().to_string()],
    );
    assert_eq!(nb.trim(), "28");
    let before = std::fs::read_dir(d).unwrap().count();
    // Unwritable outputs: a missing directory, a path under a regular file.
    for (out, chunk) in [("nodir/x.npz", "50"), ("nodir/x.root", "50"), ("a.npz/x.root", "50"), ("a.npz/x.npz", "7")] {
        let o = run(out, chunk, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{out}: expected failure");
        assert!(err.contains(out), "{out}: error does not name the file: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A cut nothing passes (an error after 1,000,000 draws), a zero chunk: errors, and no file.
    let base = ["sample", "--model", "model", "--label", "0.5,0.5", "-n", "1", "--device", "cpu"];
    let o = fedhex(&[&base[..], &["--chunk", "1", "--range", "x0=1e30:", "--out", "cut.root"]].concat(), d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pass the range cuts"), "{err}");
    let o = fedhex(&[&base[..], &["--chunk", "0", "--out", "zero.npz"]].concat(), d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--chunk"), "{err}");
    assert_eq!(std::fs::read_dir(d).unwrap().count(), before, "a failed run left a file");
    assert!(!d.join("nodir").exists());
}

/// Every draw is accounted for: kept, or rejected by the range cut or the
/// support check, in the proportions an unconstrained sample shows.
#[test]
fn generation_reports_where_its_draws_went() {
    let model = random_model(2, &[8], 9);
    let lab = vec![0.5f32, 0.25];
    let free = sample_with_cuts(&model, std::slice::from_ref(&lab), 20_000, 11, 4096, &[]).unwrap();
    let col: Vec<f32> = free.samples.column(0).to_vec();
    let mut sorted = col.clone();
    sorted.sort_by(f32::total_cmp);
    let median = f64::from(sorted[sorted.len() / 2]);
    let cut = RangeCut { feature: 0, lo: median, hi: f64::INFINITY };
    let (n, batch) = (3000usize, 1024usize);
    let opts = StreamOptions {
        n_per_label: n,
        cuts: std::slice::from_ref(&cut),
        seed: 3,
        batch,
        chunk: 1000,
        support_margin: DEFAULT_SUPPORT_MARGIN,
    };
    let draws = stream_samples(&model, std::slice::from_ref(&lab), &opts, |_| Ok(())).unwrap();
    let d = &draws[0];
    assert_eq!(d.label, lab);
    assert_eq!(d.kept, n as u64);
    let accounted = d.kept + d.rejected_range + d.outside_support + d.rejected_acceptance;
    // Draws beyond the n-th accepted event of the last call are counted but not kept.
    assert!(accounted <= d.drawn && d.drawn - accounted <= batch as u64, "{d:?}");
    assert_eq!(d.rejected_acceptance, 0, "the model has no acceptance cuts");
    // The median is that of the in-support events (the default margin applies to both).
    let f = d.rejected_range as f64 / (d.drawn - d.outside_support) as f64;
    assert!((f - 0.5).abs() < 0.05, "about half the in-support draws fall below the median: {f} ({d:?})");
    // A zero margin rejects what lies beyond the training range: counted as support.
    let tight = StreamOptions { support_margin: 0.0, cuts: &[], ..opts.clone() };
    let t = &stream_samples(&model, &[lab], &tight, |_| Ok(())).unwrap()[0];
    let ranges: Vec<[f64; 2]> = model.features.dims.iter().map(|d| [d.min, d.max]).collect();
    let all = StreamOptions { support_margin: f64::INFINITY, n_per_label: 20_000, ..tight.clone() };
    let (mut beyond, mut total) = (0usize, 0usize);
    stream_samples(&model, &[vec![0.5, 0.25]], &all, |c| {
        for r in c.samples.chunks_exact(2) {
            total += 1;
            beyond += usize::from(r.iter().zip(&ranges).any(|(&v, [lo, hi])| f64::from(v) < *lo || f64::from(v) > *hi));
        }
        Ok(())
    })
    .unwrap();
    let beyond = beyond as f64 / total as f64;
    assert!(t.outside_support > 0, "{t:?}");
    assert!((t.support_fraction() - beyond).abs() < 0.02 + 0.2 * beyond, "{} vs {beyond}", t.support_fraction());
}
