//! Tests of `fedhex::data::phiomega_nd` and `fedhex gen --model phi-omega-nd`.

use fedhex::data::efficiency::EfficiencyTable;
use fedhex::data::phiomega_nd::{self as nd, NdGrid, PhiOmegaNdError, PhiOmegaNdModel, FEATURES, LABELS};
use std::f64::consts::PI;
use std::path::Path;
use std::process::Command;

const M_PHI: usize = 0;
const M_OMEGA: usize = 1;
const PT_G: usize = 2;
const PT_W: usize = 3;
const ETA_G: usize = 4;
const ETA_W: usize = 5;
const DPHI: usize = 6;

fn column(ev: &[nd::NdEvent], c: usize) -> Vec<f64> {
    ev.iter().map(|e| e[c]).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Gaussian width from the upper half of a peak at `centre`:
/// E[x − μ | x > μ] = σ √(2/π) for a Gaussian (the low-side tails do not enter).
fn upper_half_sigma(v: &[f64], centre: f64) -> f64 {
    let up: Vec<f64> = v.iter().filter(|&&x| x > centre).map(|x| x - centre).collect();
    mean(&up) * (PI / 2.0).sqrt()
}

fn read_grid(dir: &Path) -> (String, Vec<fedhex::data::EventSet>) {
    let csv = std::fs::read_to_string(dir.join("acceptance.csv")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "root"))
        .collect();
    files.sort();
    let events = files
        .iter()
        .map(|f| {
            fedhex::data::files::read_events(
                std::slice::from_ref(f),
                &FEATURES.map(String::from),
                &LABELS.map(String::from),
                "Events",
                true,
            )
            .unwrap()
        })
        .collect();
    (csv, events)
}

#[test]
fn production_is_deterministic_for_a_seed() {
    let m = PhiOmegaNdModel::default();
    let points = [[1000.0, 0.5, 0.005], [2500.0, 4.0, 0.03]];
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    nd::write_nd_grid(a.path(), &m, &points, 300, 7).unwrap();
    nd::write_nd_grid(b.path(), &m, &points, 300, 7).unwrap();
    nd::write_nd_grid(c.path(), &m, &points, 300, 8).unwrap();
    let (ga, gb, gc) = (read_grid(a.path()), read_grid(b.path()), read_grid(c.path()));
    assert_eq!(ga.1.len(), 2, "one ROOT file per point");
    // Same seed: the same events bit for bit and the same bookkeeping (the
    // ROOT files themselves differ only in their creation time and UUID).
    assert!(ga == gb, "same seed, different events or acceptance.csv");
    assert_ne!(ga.1[0].samples, gc.1[0].samples, "another seed gives other events");
    // The in-memory sampler is deterministic too, and the evaluation sets.
    let s1 = m.sample_seeded([1500.0, 2.0, 0.02], 200, 3).unwrap();
    assert_eq!(s1, m.sample_seeded([1500.0, 2.0, 0.02], 200, 3).unwrap());
    let e1 = nd::event_set(&m, &nd::default_eval_points()[..2], 100, 5).unwrap();
    assert!(e1 == nd::event_set(&m, &nd::default_eval_points()[..2], 100, 5).unwrap());
}

#[test]
fn reconstructed_masses_peak_at_the_true_masses() {
    let m = PhiOmegaNdModel::default();
    for (label, seed) in [([2000.0, 3.0, 0.005], 11), ([1000.0, 6.0, 0.005], 12), ([3000.0, 1.0, 0.005], 13)] {
        let s = m.sample_seeded(label, 20_000, seed).unwrap();
        let phi = column(&s.events, M_PHI);
        let sigma = upper_half_sigma(&phi, quantile(&phi, 0.5));
        // The expected core resolution: half the photon and two-prong energy
        // resolutions in quadrature (m² ∝ E_γ E_ω, at E ≈ M_Φ/2) and the
        // shared energy scale, which moves m_Φ fully.
        let e = label[0] / 2.0;
        let r = 0.25 * (m.photon_resolution(e).powi(2) + m.twoprong_resolution(e).powi(2)) + m.scale_sigma.powi(2);
        let expected = label[0] * r.sqrt();
        assert!(
            (sigma / expected - 1.0).abs() < 0.35,
            "{label:?}: core width {sigma:.2} GeV, expected about {expected:.2}"
        );
        let median = quantile(&phi, 0.5);
        assert!((median - label[0]).abs() < 0.5 * sigma, "{label:?}: median m_phi {median:.1}, core σ {sigma:.2}");
        // The low-side tails and the shoulder pull the mean down, by at most a few σ.
        let mu = mean(&phi);
        assert!(mu < median && median - mu < 3.0 * sigma, "{label:?}: mean {mu:.1} vs median {median:.1}");
        let omega = column(&s.events, M_OMEGA);
        let mo = quantile(&omega, 0.5);
        assert!((mo / label[1] - 1.0).abs() < 0.05, "{label:?}: median m_omega {mo:.3}");
    }
}

#[test]
fn acceptance_cuts_hold_exactly() {
    let m = PhiOmegaNdModel::default();
    for (i, label) in
        [[1000.0, 0.5, 0.045], [3000.0, 8.5, 0.005], [1000.0, 8.5, 0.005], [3000.0, 0.5, 0.045]].into_iter().enumerate()
    {
        let s = m.sample_seeded(label, 5000, i as u64).unwrap();
        assert_eq!(s.events.len(), 5000);
        assert!(s.efficiency < 1.0 && s.trials > 5000, "{label:?}: some events must be cut");
        for e in &s.events {
            assert!(e.iter().all(|v| v.is_finite()), "{e:?}");
            assert!(e[PT_G] > 50.0 && e[PT_W] > 50.0, "{e:?}");
            assert!(e[ETA_G].abs() < 2.5 && e[ETA_W].abs() < 2.5, "{e:?}");
            assert!(e[M_OMEGA] > 0.4 && e[M_PHI] > 0.0, "{e:?}");
            assert!((0.0..=PI).contains(&e[DPHI]), "{e:?}");
        }
        // The η cut is not trivially passed: the accepted η reach the edge.
        let eta = column(&s.events, ETA_G);
        assert!(eta.iter().any(|&x| x.abs() > 2.3), "{label:?}: no photon near |η| = 2.5");
    }
    // The declared cuts are the ones applied.
    assert_eq!(m.cuts(), vec!["pt_g > 50", "pt_w > 50", "abs(eta_g) < 2.5", "abs(eta_w) < 2.5", "m_omega > 0.4"]);
}

#[test]
fn photon_and_two_prong_are_back_to_back_at_low_pt() {
    let slow = PhiOmegaNdModel { pt_scale_const: 0.5, pt_scale_slope: 0.0, ..Default::default() };
    let s = slow.sample_seeded([1000.0, 3.0, 0.005], 5000, 21).unwrap();
    let dphi = column(&s.events, DPHI);
    assert!(PI - mean(&dphi) < 0.01, "mean Δφ {} at p_T ≈ 1 GeV", mean(&dphi));
    // With the default spectrum (mean p_T 120 GeV at 1 TeV) the pair is visibly acoplanar.
    let s = PhiOmegaNdModel::default().sample_seeded([1000.0, 3.0, 0.005], 5000, 21).unwrap();
    let dphi = column(&s.events, DPHI);
    assert!(PI - mean(&dphi) > 0.05, "mean Δφ {} with the default spectrum", mean(&dphi));
    // The p_T of the Φ balances: pt_g and pt_w are close to p* = M/2 on average.
    let ptg = mean(&column(&s.events, PT_G));
    assert!((200.0..500.0).contains(&ptg), "mean photon p_T {ptg}");
}

#[test]
fn efficiency_table_matches_counts_and_varies_with_the_labels() {
    let m = PhiOmegaNdModel::default();
    let points = [[1000.0, 0.5, 0.005], [3000.0, 8.5, 0.005], [3000.0, 8.5, 0.045]];
    let dir = tempfile::tempdir().unwrap();
    let files = nd::write_nd_grid(dir.path(), &m, &points, 3000, 4).unwrap();
    let csv_path = dir.path().join("acceptance.csv");
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("M_phi,M_omega,W_phi,generated,accepted,efficiency"));
    let mut effs = Vec::new();
    for (line, point) in lines.zip(&points) {
        let cells: Vec<f64> = line.split(',').map(|c| c.parse().unwrap()).collect();
        assert_eq!(&cells[..3], point);
        assert_eq!(cells[4], 3000.0);
        assert!((cells[5] - cells[4] / cells[3]).abs() < 1e-8, "{line}");
        effs.push((cells[5], cells[3]));
    }
    let table = EfficiencyTable::read(&csv_path, 3).unwrap();
    for (p, (e, _)) in points.iter().zip(&effs) {
        assert_eq!(table.lookup(p), Some(*e));
    }
    // Light, central-production-poor Φ with M_ω at the cut loses far more
    // than a heavy one: the difference is many binomial errors.
    let ((e0, n0), (e1, n1)) = (effs[0], effs[1]);
    let err = (e0 * (1.0 - e0) / n0 + e1 * (1.0 - e1) / n1).sqrt();
    assert!(e1 - e0 > 5.0 * err, "efficiency {e0:.4} at {:?} vs {e1:.4} at {:?}", points[0], points[1]);
    // The ROOT files hold the features and labels as flat branches.
    let ev = fedhex::data::files::read_events(
        &files[1..2],
        &FEATURES.map(String::from),
        &LABELS.map(String::from),
        "Events",
        true,
    )
    .unwrap();
    assert_eq!(ev.len(), 3000);
    assert_eq!(ev.labels.row(0).to_vec(), vec![3000.0f32, 8.5, 0.005]);
    assert!(ev.samples.column(PT_W).iter().all(|&v| v > 50.0));
}

#[test]
fn width_label_widens_the_mass_peak() {
    let m = PhiOmegaNdModel::default();
    let iqr = |w: f64| {
        let s = m.sample_seeded([2000.0, 3.0, w], 20_000, 31).unwrap();
        let phi = column(&s.events, M_PHI);
        quantile(&phi, 0.75) - quantile(&phi, 0.25)
    };
    let (narrow, mid, wide) = (iqr(0.005), iqr(0.025), iqr(0.045));
    assert!(narrow < mid && mid < wide, "IQR {narrow:.1} < {mid:.1} < {wide:.1} GeV");
    // A Breit–Wigner's IQR is Γ (90 GeV at W = 4.5 %), far above the resolution.
    assert!(wide > 2.0 * narrow && wide > 0.7 * 0.045 * 2000.0, "IQR {narrow:.1} vs {wide:.1} GeV");
    // The line shape stays within its truncation (3 Γ) plus the resolution.
    let s = m.sample_seeded([2000.0, 3.0, 0.045], 20_000, 32).unwrap();
    let max = column(&s.events, M_PHI).into_iter().fold(f64::MIN, f64::max);
    assert!(max < 2000.0 * (1.0 + 3.0 * 0.045) + 100.0, "max m_phi {max}");
}

#[test]
fn default_evaluation_points_are_off_the_grid_in_every_label() {
    let grid = NdGrid::default();
    let axes = grid.axes();
    assert_eq!(grid.points().unwrap().len(), 75);
    let points = nd::default_eval_points();
    assert!(points.len() >= 10);
    for p in &points {
        for (k, axis) in axes.iter().enumerate() {
            let (lo, hi) = (axis[0], axis[axis.len() - 1]);
            assert!(p[k] > lo && p[k] < hi, "{p:?}: label {k} outside the grid");
            assert!(axis.iter().all(|g| (g - p[k]).abs() > 1e-3 * (hi - lo)), "{p:?}: label {k} on the grid");
        }
    }
    let parsed = NdGrid::parse(" 2 x3x 4").unwrap();
    assert_eq!(parsed.counts, [2, 3, 4]);
    assert_eq!(parsed.points().unwrap().len(), 24);
}

#[test]
fn bad_labels_parameters_and_grids_name_the_culprit() {
    let m = PhiOmegaNdModel::default();
    let err = |label| m.sample_seeded(label, 10, 1).unwrap_err().to_string();
    assert!(err([-1.0, 3.0, 0.01]).contains("M_phi"));
    assert!(err([f64::NAN, 3.0, 0.01]).contains("M_phi"));
    assert!(err([1000.0, 0.0, 0.01]).contains("M_omega"));
    assert!(err([1000.0, 3.0, -0.01]).contains("W_phi"));
    assert!(err([1000.0, 3.0, 0.4]).contains("W_phi"), "{}", err([1000.0, 3.0, 0.4]));
    assert!(err([20_000.0, 3.0, 0.01]).contains("sqrt_s"));
    let bad = PhiOmegaNdModel { photon_tail_n: 0.5, ..Default::default() };
    assert!(matches!(
        bad.sample_seeded([1000.0, 3.0, 0.01], 10, 1),
        Err(PhiOmegaNdError::InvalidParameter { name: "photon_tail_n", .. })
    ));
    // Cuts nothing can pass: the rejection loop gives up with the label.
    let hopeless = PhiOmegaNdModel { pt_g_min: 1e6, min_efficiency: 0.01, ..Default::default() };
    let e = hopeless.sample_seeded([1000.0, 3.0, 0.01], 10, 1).unwrap_err();
    assert!(matches!(e, PhiOmegaNdError::AcceptanceTooLow { accepted: 0, .. }), "{e}");
    for spec in ["5x5", "5x5x0", "axbxc", "5x5x3x2", ""] {
        let e = NdGrid::parse(spec).unwrap_err().to_string();
        assert!(e.contains(&format!("'{spec}'")), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let e = nd::write_nd_grid(dir.path(), &m, &[[1000.0, 3.0, 0.01]], 0, 1).unwrap_err().to_string();
    assert!(e.contains("events per point"), "{e}");
}

#[test]
fn cli_writes_a_grid_and_evaluation_points_and_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let fedhex = env!("CARGO_BIN_EXE_fedhex");
    let run =
        |args: &[&str]| Command::new(fedhex).arg("gen").args(["--model", "phi-omega-nd"]).args(args).output().unwrap();
    let grid = dir.path().join("grid");
    let out = run(&["--grid", "2x1x2", "-n", "100", "--out", grid.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(grid.join("acceptance.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert_eq!(std::fs::read_dir(&grid).unwrap().count(), 5);
    let refs = dir.path().join("ref.root");
    let out = run(&["--at-default", "--at", "1100,2.2,0.02", "-n", "50", "--out", refs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = fedhex::data::files::read_events(
        &[refs],
        &FEATURES.map(String::from),
        &LABELS.map(String::from),
        "Events",
        true,
    )
    .unwrap();
    assert_eq!(ev.len(), 50 * (nd::default_eval_points().len() + 1));
    assert_eq!(ev.label_groups().len(), nd::default_eval_points().len() + 1);
    let o = dir.path().join("x.root");
    let o = o.to_str().unwrap();
    for (args, needle) in [
        (vec!["--grid", "5x5", "--out", o], "--grid"),
        (vec!["--at", "1000,2", "--out", o], "--at"),
        (vec!["--at=-5,1,0.01", "--out", o], "M_phi"),
        (vec!["--at", "1000,1,abc", "--out", o], "--at"),
        (vec!["--at", "1000,1,0.01", "-n", "0", "--out", o], "-n"),
        (vec!["--at-default", "--grid", "5x5x3", "--out", o], "--grid"),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let out = Command::new(fedhex).args(["gen", "--model", "phi-omega", "--at-default", "--out", o]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--at-default"));
}
