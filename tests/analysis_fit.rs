//! Maximum-likelihood label fit: events generated at a known off-grid label
//! are fitted back within the stated uncertainty, the uncertainty matches the
//! Cramér–Rao bound of the true (Gaussian) model, the scans are drawn, the fit
//! is deterministic, and bad input is refused.
#![allow(clippy::needless_range_loop)]

mod common;
use common::small_cfg;
use fedhex::analysis::fit::{fit_label, FitOptions, ScanKind};
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::train::train_events;
use ndarray::Array2;
use std::time::Instant;

const SIGMA: f64 = 0.1;

fn spec() -> GaussianSpec {
    GaussianSpec {
        layout: Layout::Grid2d { n: 5, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Diagonal { sigma: SIGMA },
        n_per_label: 1000,
        seed: 11,
    }
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR"
}

#[test]
fn fit_recovers_an_off_grid_label_within_its_uncertainty() {
    let t0 = Instant::now();
    let spec = spec();
    let out = train_events(&small_cfg(8, 1), &spec.generate().unwrap()).unwrap();
    eprintln!("training: {:.1} s", t0.elapsed().as_secs_f64());
    let model = out.model;
    let truth = [0.55, 0.4];
    let n = 300;
    let xs = spec.sample_at(&truth, n, 99).unwrap();
    let events: Array2<f32> = xs.mapv(|v| v as f32);
    let sample_mean: Vec<f64> = (0..2).map(|j| xs.column(j).sum() / n as f64).collect();
    let dir = common::tmpdir();
    let opts = FitOptions { out: Some(dir.path().join("scans")), truth: Some(truth.to_vec()), ..Default::default() };
    let t1 = Instant::now();
    let fit = fit_label(&model, events.view(), &opts).unwrap();
    eprintln!("fit: {:.2} s", t1.elapsed().as_secs_f64());
    eprintln!(
        "truth {truth:?}; sample mean (the exact-model ML estimate) {sample_mean:?}\nfit {:?} ± {:?} (Hessian by {}), \
         pulls {:?}, NLL {:.3}, converged {}, warnings {:?}",
        fit.best, fit.uncertainty, fit.hessian_method, fit.pulls, fit.nll, fit.converged, fit.warnings
    );
    assert!(fit.converged, "fit did not converge: {fit:?}");
    assert_eq!(fit.n_events, n);
    assert_eq!(fit.label_names.len(), 2);
    // The true model is N(θ, σ² I): the Cramér–Rao bound is σ/√n per dimension.
    let cr = SIGMA / (n as f64).sqrt();
    for k in 0..2 {
        let (b, u) = (fit.best[k], fit.uncertainty[k]);
        assert!(u.is_finite() && u > 0.6 * cr && u < 1.6 * cr, "dimension {k}: σ = {u}, Cramér–Rao {cr}");
        assert!((b - truth[k]).abs() < 3.0 * u, "dimension {k}: fit {b} ± {u}, truth {}", truth[k]);
        // The scan's ΔNLL = ½ interval agrees with the curvature (the NLL is near-parabolic here).
        let s = &fit.scans[k];
        assert_eq!(s.kind, ScanKind::Slice);
        let [lo, hi] = s.interval.expect("ΔNLL = ½ crossings inside the scan");
        let half = 0.5 * (hi - lo);
        assert!((half / u - 1.0).abs() < 0.3, "dimension {k}: scan half-width {half}, σ {u}");
        assert!(lo < b && b < hi);
        let png = std::fs::read(dir.path().join("scans").join(s.plot.as_ref().unwrap())).unwrap();
        assert!(is_png(&png), "scan plot is not a PNG");
    }
    // Covariance is symmetric and the inverse of the Hessian.
    let (h, c) = (&fit.hessian, &fit.covariance);
    for i in 0..2 {
        for j in 0..2 {
            let e: f64 = (0..2).map(|k| h[i][k] * c[k][j]).sum();
            assert!((e - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6, "H·V ≠ 1: {h:?} {c:?}");
        }
    }
    // Deterministic: the same fit again gives bit-identical results.
    let again = fit_label(&model, events.view(), &FitOptions { out: None, ..opts.clone() }).unwrap();
    assert_eq!(
        again.best.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        fit.best.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(again.nll.to_bits(), fit.nll.to_bits());
    // A profile scan and a start at the range centre without the coarse scan reach the same point.
    let t2 = Instant::now();
    let prof = fit_label(
        &model,
        events.view(),
        &FitOptions { scan: ScanKind::Profile, grid_points: 0, out: None, ..opts.clone() },
    )
    .unwrap();
    eprintln!("profile fit from the centre: {:.2} s, best {:?}", t2.elapsed().as_secs_f64(), prof.best);
    for k in 0..2 {
        assert!((prof.best[k] - fit.best[k]).abs() < 0.05 * fit.uncertainty[k], "{:?} vs {:?}", prof.best, fit.best);
        assert_eq!(prof.scans[k].kind, ScanKind::Profile);
        let [lo, hi] = prof.scans[k].interval.unwrap();
        // A profile is never narrower than the slice.
        let [slo, shi] = fit.scans[k].interval.unwrap();
        assert!(hi - lo >= 0.98 * (shi - slo), "profile {lo}..{hi} narrower than slice {slo}..{shi}");
    }
    eprintln!("total: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn fit_refuses_bad_input() {
    let model = common::random_model(2, &[8], 3);
    let ok = Array2::<f32>::from_elem((20, 2), 0.1);
    let err = |e: fedhex::Error| e.to_string();
    let e = err(fit_label(&model, Array2::<f32>::zeros((0, 2)).view(), &FitOptions::default()).unwrap_err());
    assert!(e.contains("no events"), "{e}");
    let e = err(fit_label(&model, Array2::<f32>::zeros((5, 3)).view(), &FitOptions::default()).unwrap_err());
    assert!(e.contains("3 feature column(s)") && e.contains("x0, x1"), "{e}");
    let mut bad = ok.clone();
    bad[[4, 1]] = f32::NAN;
    let e = err(fit_label(&model, bad.view(), &FitOptions::default()).unwrap_err());
    assert!(e.contains("event 4, feature 1"), "{e}");
    let e =
        err(fit_label(&model, ok.view(), &FitOptions { truth: Some(vec![0.5]), ..Default::default() }).unwrap_err());
    assert!(e.contains("truth"), "{e}");
    let e = err(fit_label(&model, ok.view(), &FitOptions { start: Some(vec![0.5, f64::NAN]), ..Default::default() })
        .unwrap_err());
    assert!(e.contains("start"), "{e}");
}
