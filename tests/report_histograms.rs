//! The report's reusable histograms: `histograms.root` (read back by uproot)
//! agrees with the histograms in `report.json`, whose counts sum to each
//! sample's events at each label; `plot_format = Svg` writes only `.svg`
//! plots, referenced by `index.html`. No training: a random model with given
//! generated events.

mod common;

use fedhex::analysis::histograms::{HistogramRecord, HISTOGRAMS_ROOT};
use fedhex::analysis::plot_backend::PlotFormat;
use fedhex::analysis::report::{analyze, AnalyzeOptions, Report, REPORT_HTML, REPORT_JSON};
use fedhex::data::EventSet;
use ndarray::Array2;
use std::path::Path;

const LABELS: [[f32; 2]; 2] = [[0.5, 0.5], [0.25, 0.75]];

/// `n[g]` events at label `g`: a smooth deterministic spread, shifted; with
/// `outliers`, a few events far outside the reference range.
fn events(n: [usize; 2], shift: f32, outliers: bool) -> EventSet {
    let total: usize = n.iter().sum();
    let mut s = Array2::<f32>::zeros((total, 2));
    let mut l = Array2::<f32>::zeros((total, 2));
    let mut row = 0;
    for (g, &k) in n.iter().enumerate() {
        for i in 0..k {
            let u = (i as f32 + 0.5) / k as f32;
            s[[row, 0]] = (u - 0.5) * 2.0 + shift + if outliers && i % 97 == 0 { 40.0 } else { 0.0 };
            s[[row, 1]] = ((i * 37 % k) as f32 / k as f32).powi(2) - if outliers && i % 89 == 0 { 30.0 } else { 0.0 };
            l[[row, 0]] = LABELS[g][0];
            l[[row, 1]] = LABELS[g][1];
            row += 1;
        }
    }
    EventSet::new(s, l, vec![], vec![], "test events").unwrap()
}

fn run(dir: &Path, format: PlotFormat) -> Report {
    let model_dir = dir.join("model");
    common::random_model(2, &[8], 3).save(&model_dir).unwrap();
    let mut opts = AnalyzeOptions::new(&model_dir, events([400, 300], 0.0, false), dir.join("report"));
    opts.generated = Some(events([350, 300], 0.05, true));
    opts.reference2 = Some(events([400, 250], -0.02, false));
    opts.bins = 20;
    opts.plot_format = format;
    analyze(&opts).unwrap()
}

const DUMP: &str = r#"
import sys, json, uproot
f = uproot.open(sys.argv[1])
out = {}
for k in f.keys(cycle=False):
    h = f[k]
    out[k] = {"class": h.classname, "title": h.title, "values": h.values(flow=True).tolist(),
              "variances": h.variances(flow=True).tolist(), "edges": h.axis().edges().tolist()}
print(json.dumps(out))
"#;

#[test]
fn histograms_root_matches_report_json() {
    let dir = common::tmpdir();
    let report = run(dir.path(), PlotFormat::Png);
    let out = dir.path().join("report");
    // report.json carries the histograms and parses back.
    let back: Report = serde_json::from_slice(&std::fs::read(out.join(REPORT_JSON)).unwrap()).unwrap();
    assert_eq!(back.histograms, report.histograms);
    let hs: &[HistogramRecord] = &report.histograms;
    // 2 labels × 2 features × 3 samples.
    assert_eq!(hs.len(), 12);
    let n_at = |sample: &str, label: usize| -> f64 {
        let by_label = match sample {
            "reference" => [400.0, 300.0],
            "generated" => [350.0, 300.0],
            _ => [400.0, 250.0],
        };
        by_label[label]
    };
    for h in hs {
        let label = report.labels[h.label_index].label.clone();
        assert_eq!(h.label, label);
        let g = LABELS.iter().position(|l| l.to_vec() == label).unwrap();
        assert_eq!(h.name, format!("h_{}_{}_{}", h.label_index, h.feature, h.sample));
        assert_eq!(h.edges.len(), 21);
        assert_eq!(h.counts.len(), 22);
        assert_eq!(h.counts.iter().sum::<f64>(), n_at(&h.sample, g), "{}", h.name);
        assert_eq!(h.sumw2, h.counts, "unweighted events: Σw² = counts");
        if h.sample == "generated" {
            assert!(h.counts[0] + h.counts[21] > 0.0, "{}: the outliers are in the flow bins", h.name);
        }
    }
    // Samples of one label and feature share the binning.
    for h in hs {
        let r = hs.iter().find(|x| x.label_index == h.label_index && x.feature == h.feature && x.sample == "reference");
        assert_eq!(h.edges, r.unwrap().edges);
    }
    // uproot reads the same histograms from histograms.root.
    let dump = common::run_python(DUMP, &[out.join(HISTOGRAMS_ROOT).to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(dump.trim()).unwrap();
    assert_eq!(v.as_object().unwrap().len(), hs.len());
    for h in hs {
        let g = &v[&h.name];
        assert_eq!(g["class"], "TH1D", "{}", h.name);
        let floats = |k: &str| -> Vec<f64> { g[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        assert_eq!(floats("values"), h.counts);
        assert_eq!(floats("variances"), h.sumw2);
        let edges = floats("edges");
        assert!(edges.iter().zip(&h.edges).all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs().max(1.0)), "{}", h.name);
        let title = g["title"].as_str().unwrap();
        assert!(title.contains(&h.feature) && title.contains(&h.sample) && title.contains("l0="), "{title}");
    }
    // PNG plots by default.
    let plots: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!plots.is_empty() && plots.iter().all(|p| p.ends_with(".png")), "{plots:?}");
}

#[test]
fn svg_plots_are_referenced_by_the_html() {
    let dir = common::tmpdir();
    let report = run(dir.path(), PlotFormat::Svg);
    let out = dir.path().join("report");
    let plots: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(plots.len() >= 4, "{plots:?}");
    assert!(plots.iter().all(|p| p.ends_with(".svg")), "not only SVG: {plots:?}");
    let html = std::fs::read_to_string(out.join(REPORT_HTML)).unwrap();
    assert!(!html.contains(".png"), "the HTML names a PNG");
    for p in &plots {
        assert!(html.contains(&format!("plots/{p}")), "{p} not in index.html");
        let svg = std::fs::read_to_string(out.join("plots").join(p)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{p} is not an SVG document");
    }
    assert!(report.labels.iter().flat_map(|l| &l.plots).all(|p| p.ends_with(".svg")));
}

#[test]
fn old_reports_without_histograms_still_parse() {
    let dir = common::tmpdir();
    let report = run(dir.path(), PlotFormat::Png);
    let mut v = serde_json::to_value(&report).unwrap();
    v.as_object_mut().unwrap().remove("histograms");
    let back: Report = serde_json::from_value(v).unwrap();
    assert!(back.histograms.is_empty());
}

#[test]
fn unwritable_output_names_the_path_and_leaves_no_histograms() {
    let dir = common::tmpdir();
    let model_dir = dir.path().join("model");
    common::random_model(2, &[8], 3).save(&model_dir).unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let out = blocker.join("report");
    let mut opts = AnalyzeOptions::new(&model_dir, events([400, 300], 0.0, false), &out);
    opts.generated = Some(events([350, 300], 0.05, true));
    let e = analyze(&opts).unwrap_err().to_string();
    assert!(e.contains(blocker.to_str().unwrap()), "{e}");
    let left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|f| f.contains("report") || f.contains(HISTOGRAMS_ROOT)), "{left:?}");
}
