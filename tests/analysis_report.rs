//! Validation report: a tiny model trained in the test, reference events from
//! the generator at a held-out off-grid label and at a training label;
//! checks every output file, the label classification, the statistical floor,
//! extrapolation warnings, and that bad input gives a clear error and leaves
//! nothing behind.

mod common;
use fedhex::analysis::report::{analyze, AnalyzeOptions, LabelKind, REPORT_HTML, REPORT_JSON, REPORT_TXT};
use fedhex::config::RunConfig;
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::data::EventSet;
use fedhex::train::train_events;
use ndarray::Array2;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn spec() -> GaussianSpec {
    GaussianSpec {
        layout: Layout::Grid2d { n: 4, lo: 1.0, hi: 2.0 },
        covariance: Covariance::Diagonal { sigma: 0.08 },
        n_per_label: 1000,
        seed: 5,
    }
}

fn report_cfg(run_dir: &Path) -> RunConfig {
    let mut cfg = common::small_cfg(8, 1);
    cfg.outputs.run_dir = run_dir.to_path_buf();
    cfg
}

/// Events of the generator at the given labels, `n` each.
fn reference(spec: &GaussianSpec, labels: &[[f64; 2]], n: usize, seed: u64) -> EventSet {
    let mut s = Array2::<f32>::zeros((labels.len() * n, 2));
    let mut l = Array2::<f32>::zeros((labels.len() * n, 2));
    for (g, lab) in labels.iter().enumerate() {
        let xs = spec.sample_at(lab, n, seed + g as u64).unwrap();
        for i in 0..n {
            for j in 0..2 {
                s[[g * n + i, j]] = xs[[i, j]] as f32;
                l[[g * n + i, j]] = lab[j] as f32;
            }
        }
    }
    EventSet::new(s, l, vec![], vec![], "test reference").unwrap()
}

/// PNG signature and IHDR chunk; returns (width, height).
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"), "{}: no PNG signature", path.display());
    assert_eq!(&b[12..16], b"IHDR", "{}: no IHDR", path.display());
    let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    assert!(b.len() > 10_000, "{}: only {} bytes", path.display(), b.len());
    (w, h)
}

/// Nothing named like the output or its temporary siblings remains in `parent`.
fn assert_no_output(parent: &Path, name: &str) {
    let left: Vec<String> = std::fs::read_dir(parent)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|f| f.contains(name)), "output left behind in {}: {left:?}", parent.display());
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    lonely_model: PathBuf,
    spec: GaussianSpec,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let spec = spec();
    let run = root.join("run");
    let cfg = report_cfg(&run);
    let t = Instant::now();
    let mut out = train_events(&cfg, &spec.generate().unwrap()).unwrap();
    eprintln!("training: {:.1} s", t.elapsed().as_secs_f64());
    // The held-out label is recorded in the model, as a training with hold-outs would.
    out.model.training["holdout_labels"] = serde_json::json!([[1.5, 1.5]]);
    fedhex::train::driver::write_run(&run, &cfg, &out).unwrap();
    let lonely_model = root.join("lonely");
    out.model.save(&lonely_model).unwrap();
    Setup { _dir: dir, model: run.join("model"), lonely_model, root, spec }
}

#[test]
fn report_with_held_out_and_training_labels() {
    let t0 = Instant::now();
    let s = setup();
    let grid = s.spec.labels();
    let train_label = [grid[5][0], grid[5][1]]; // (4/3, 4/3)
    let labels = [[1.5, 1.5], train_label];
    let mut opts = AnalyzeOptions::new(&s.model, reference(&s.spec, &labels, 3000, 100), s.root.join("report"));
    opts.reference2 = Some(reference(&s.spec, &labels, 3000, 200));
    opts.seed = 7;
    let t1 = Instant::now();
    let report = analyze(&opts).unwrap();
    eprintln!("analyze: {:.1} s", t1.elapsed().as_secs_f64());
    eprintln!("held-out accuracy: {}", report.interpolation.line);
    eprintln!("training labels:   {}", report.reproduction.line);
    for l in &report.labels {
        eprintln!("  {}", l.verdict.line);
    }
    let out = s.root.join("report");
    for f in [REPORT_JSON, REPORT_TXT, REPORT_HTML] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Held-out first, classified from the model's training.holdout_labels.
    assert_eq!(report.labels.len(), 2);
    assert_eq!(report.labels[0].label, vec![1.5f32, 1.5]);
    assert_eq!(report.labels[0].kind, LabelKind::Interpolation);
    assert_eq!(report.labels[1].kind, LabelKind::Reproduction);
    assert_eq!((report.interpolation.labels, report.reproduction.labels), (1, 1));
    for l in &report.labels {
        assert!(!l.extrapolation && l.generated_here);
        assert_eq!((l.metrics.n_reference, l.metrics.n_compared), (3000, 3000));
        assert_eq!(l.metrics.features.len(), 2);
        assert!(l.metrics.errors.is_empty(), "{:?}", l.metrics.errors);
        let auc = l.metrics.classifier.unwrap().auc;
        assert!(auc > 0.3 && auc < 0.8, "AUC {auc}");
        // The floor (two reference samples) is close to 0.5 and present.
        let floor = l.floor.as_ref().expect("floor");
        assert!((floor.classifier.unwrap().auc - 0.5).abs() < 0.05);
        assert!(l.verdict.at_floor.is_some() && l.verdict.floor.is_some());
        assert!(l.verdict.line.contains("the goal") && l.verdict.line.contains("statistical floor"));
    }
    // report.json holds everything and parses back.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(REPORT_JSON)).unwrap()).unwrap();
    assert_eq!(json["labels"].as_array().unwrap().len(), 2);
    assert_eq!(json["labels"][0]["kind"], "interpolation");
    assert!(json["labels"][0]["metrics"]["features"][0]["ks"]["statistic"].is_number());
    assert!(json["labels"][0]["metrics"]["features"][0]["chi2"]["chi2_per_ndf"].is_number());
    assert!(json["labels"][0]["metrics"]["features"][0]["wasserstein1"].is_number());
    assert!(json["labels"][0]["metrics"]["features"][0]["quantile_shifts"].as_array().unwrap().len() == 5);
    assert!(json["labels"][0]["metrics"]["energy"]["statistic"].is_number());
    let text = std::fs::read_to_string(out.join(REPORT_TXT)).unwrap();
    assert!(text.contains("INTERPOLATION") && text.contains("REPRODUCTION") && text.contains("VERDICTS"));
    assert!(text.contains("(1.5, 1.5)"));
    // Every plot: loss curves, grid overview, heat map, 2 labels × (2 features + 2-D).
    let html = std::fs::read_to_string(out.join(REPORT_HTML)).unwrap();
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(out.join("plots")).unwrap().map(|e| e.unwrap().path()).collect();
    pngs.sort();
    let names: Vec<String> = pngs.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    eprintln!("plots: {names:?}");
    assert_eq!(pngs.len(), 3 + 2 * 3, "{names:?}");
    for n in ["loss_curves.png", "grid_overview.png", "heat_map_auc.png", "label00_x0.png", "label01_2d.png"] {
        assert!(names.iter().any(|x| x == n), "{n} missing: {names:?}");
    }
    for (p, n) in pngs.iter().zip(&names) {
        let (w, h) = png_size(p);
        assert!(w >= 1200 && h >= 400, "{n}: {w}×{h}");
        assert!(html.contains(&format!("src=\"plots/{n}\"")), "index.html does not show {n}");
    }
    assert!(html.contains("<table>") && html.contains("interpolation"));
    assert!(!html.contains("src=\"/"), "absolute image paths");
    assert_no_output(&s.root, ".report.");

    // Generated events given, model outside a run directory, an extrapolated
    // label, and a CLI hold-out: no loss curves (warned), extrapolation flagged.
    let far = [[2.3, 1.5]];
    let model = fedhex::flow::Model::load(&s.lonely_model, tch::Device::Cpu).unwrap();
    let gen = fedhex::generate::sample_at_labels(&model, &[vec![2.3f32, 1.5]], 1500, 3, 4096).unwrap();
    let mut opts = AnalyzeOptions::new(&s.lonely_model, reference(&s.spec, &far, 1500, 300), s.root.join("report2"));
    opts.generated = Some(gen);
    opts.holdout = vec![vec![2.3, 1.5]];
    let r2 = analyze(&opts).unwrap();
    eprintln!("extrapolation: {}", r2.labels[0].verdict.line);
    assert!(r2.warnings.iter().any(|w| w.contains("extrapolation")), "{:?}", r2.warnings);
    assert!(r2.warnings.iter().any(|w| w.contains("history.csv")), "{:?}", r2.warnings);
    assert!(r2.labels[0].extrapolation && !r2.labels[0].generated_here);
    assert_eq!(r2.labels[0].kind, LabelKind::Interpolation);
    assert!(r2.labels[0].verdict.line.contains("EXTRAPOLATION"));
    assert!(!s.root.join("report2/plots/loss_curves.png").exists());
    assert!(s.root.join("report2/plots/label00_2d.png").is_file());
    eprintln!("total: {:.1} s", t0.elapsed().as_secs_f64());

    bad_inputs(&s);
}

fn bad_inputs(s: &Setup) {
    let lab = [[1.5, 1.5]];
    let good = || reference(&s.spec, &lab, 200, 400);
    let out = s.root.join("bad");
    let run = |opts: AnalyzeOptions| -> String {
        let e = analyze(&opts).expect_err("bad input must fail").to_string();
        assert_no_output(&s.root, "bad");
        e
    };
    // Wrong label dimension.
    let r = good();
    let three = EventSet::new(r.samples.clone(), Array2::from_elem((r.len(), 3), 1.5), vec![], vec![], "t").unwrap();
    let e = run(AnalyzeOptions::new(&s.model, three, &out));
    assert!(e.contains("3 label column(s)") && e.contains("2 label(s)"), "{e}");
    // Wrong feature dimension.
    let one = EventSet::new(Array2::from_elem((r.len(), 1), 1.5), r.labels.clone(), vec![], vec![], "t").unwrap();
    let e = run(AnalyzeOptions::new(&s.model, one, &out));
    assert!(e.contains("1 feature column(s)"), "{e}");
    // A held-out label without reference events.
    let mut o = AnalyzeOptions::new(&s.model, good(), &out);
    o.holdout = vec![vec![1.9, 1.1]];
    let e = run(o);
    assert!(e.contains("held-out label (1.9, 1.1)") && e.contains("no events"), "{e}");
    // A held-out label of the wrong dimension.
    let mut o = AnalyzeOptions::new(&s.model, good(), &out);
    o.holdout = vec![vec![1.5]];
    let e = run(o);
    assert!(e.contains("held-out label") && e.contains("1 values"), "{e}");
    // Too few reference events at a label.
    let e = run(AnalyzeOptions::new(&s.model, reference(&s.spec, &lab, 5, 1), &out));
    assert!(e.contains("5 event(s)"), "{e}");
    // Generated events missing at a reference label.
    let mut o = AnalyzeOptions::new(&s.model, good(), &out);
    o.generated = Some(reference(&s.spec, &[[1.0, 1.0]], 100, 2));
    let e = run(o);
    assert!(e.contains("generated events: none at reference label (1.5, 1.5)"), "{e}");
    // Unwritable output: its parent is a regular file.
    let file = s.root.join("bad_parent_file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = analyze(&AnalyzeOptions::new(&s.model, good(), file.join("bad_out"))).unwrap_err().to_string();
    assert!(e.contains("bad_out") || e.contains("bad_parent_file"), "{e}");
    assert!(!file.join("bad_out").exists());
    std::fs::remove_file(&file).unwrap();
    // Missing model.
    let e = run(AnalyzeOptions::new(s.root.join("no_model"), good(), &out));
    assert!(e.contains("no_model"), "{e}");
    // A failing analysis leaves an older complete report untouched.
    let before = std::fs::read(s.root.join("report2").join(REPORT_JSON)).unwrap();
    let mut o = AnalyzeOptions::new(&s.model, good(), s.root.join("report2"));
    o.holdout = vec![vec![1.9, 1.1]];
    assert!(analyze(&o).is_err());
    assert_eq!(std::fs::read(s.root.join("report2").join(REPORT_JSON)).unwrap(), before);
}
