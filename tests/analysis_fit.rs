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

/// Pull study of the truncated-likelihood fit next to the acceptance cut
/// (phi-omega, M_ω = 0.6 GeV between the grid rows 0.5 and 0.75, where the
/// acceptance changes fastest with the label):
/// pseudo-experiments drawn from the trained model itself (so the model is
/// exactly right and only the likelihood's normalisation is under test), cut
/// as the data are, and fitted back. With the acceptance normaliser the pulls
/// have mean ~0 and width ~1; the density before the cut alone is biased.
#[test]
fn truncated_fit_pulls_are_unbiased_next_to_the_acceptance_cut() {
    use fedhex::data::phiomega::PhiOmegaModel;
    use fedhex::data::EventSet;
    let gen = PhiOmegaModel::default();
    let (mut xs, mut ls) = (Vec::new(), Vec::new());
    for (i, &mp) in [1000.0, 1500.0, 2000.0].iter().enumerate() {
        for (j, &mo) in [0.5, 0.75, 1.0, 1.5].iter().enumerate() {
            let s = gen.sample_seeded(mp, mo, 2500, (10 * i + j) as u64).unwrap();
            for e in s.events {
                xs.extend([e[0] as f32, e[1] as f32]);
                ls.extend([mp as f32, mo as f32]);
            }
        }
    }
    let n = ls.len() / 2;
    let events = EventSet::new(
        Array2::from_shape_vec((n, 2), xs).unwrap(),
        Array2::from_shape_vec((n, 2), ls).unwrap(),
        vec!["phi".into(), "omega".into()],
        vec!["labelphi".into(), "labelomega".into()],
        "phi-omega test grid",
    )
    .unwrap();
    let mut cfg = small_cfg(6, 3);
    cfg.data.feature_transforms = [("phi", "log_ratio(labelphi)"), ("omega", "log_ratio(labelomega)")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cfg.data.label_transforms =
        [("labelphi", "log"), ("labelomega", "log")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    cfg.data.acceptance = vec!["omega > 0.415".into()];
    let t0 = Instant::now();
    let model = train_events(&cfg, &events).unwrap().model;
    eprintln!("training: {:.1} s", t0.elapsed().as_secs_f64());

    // Pseudo-experiments: 2000 accepted events each from the model at the truth.
    let truth = [1500.0f32, 0.6];
    let (n_exp, n_ev) = (200, 2000);
    let pool = {
        let _rng = fedhex::rng::seeded(77);
        let m = 3 * n_exp * n_ev;
        let cs = tch::Tensor::from_slice(&truth).view([1, 2]).expand([m as i64, 2], false);
        let x = model.sample(&cs);
        let flat: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
        let pass = model.acceptance_of_rows(&flat, 2);
        let kept: Vec<f32> = flat
            .chunks(2)
            .zip(&pass)
            .filter(|(r, &p)| p && r.iter().all(|v| v.is_finite()))
            .flat_map(|(r, _)| r.to_vec())
            .collect();
        eprintln!("acceptance at the truth: {:.3}", kept.len() as f64 / 2.0 / m as f64);
        kept
    };
    assert!(pool.len() >= 2 * n_exp * n_ev, "too few accepted pseudo-events");
    let fit_pulls = |samples: usize| -> Vec<[f64; 2]> {
        (0..n_exp)
            .map(|k| {
                let ev = Array2::from_shape_vec((n_ev, 2), pool[2 * k * n_ev..2 * (k + 1) * n_ev].to_vec()).unwrap();
                let opts = FitOptions {
                    start: Some(truth.iter().map(|&v| f64::from(v)).collect()),
                    iterations: 0,
                    scan: ScanKind::None,
                    truth: Some(truth.iter().map(|&v| f64::from(v)).collect()),
                    acceptance_samples: samples,
                    seed: k as u64,
                    ..Default::default()
                };
                let r = fit_label(&model, ev.view(), &opts).unwrap();
                let p = r.pulls.unwrap();
                [p[0], p[1]]
            })
            .collect()
    };
    let stats = |p: &[[f64; 2]], k: usize| -> (f64, f64) {
        let n = p.len() as f64;
        let m = p.iter().map(|v| v[k]).sum::<f64>() / n;
        let s = (p.iter().map(|v| (v[k] - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        (m, s)
    };
    let t1 = Instant::now();
    let truncated = fit_pulls(5_000);
    eprintln!("{n_exp} truncated fits: {:.1} s", t1.elapsed().as_secs_f64());
    let naive = fit_pulls(0);
    eprintln!("| likelihood | pull M_Φ mean | pull M_Φ width | pull M_ω mean | pull M_ω width |");
    eprintln!("| --- | --- | --- | --- | --- |");
    for (name, p) in [("truncated (normalised to the acceptance)", &truncated), ("density before the cut", &naive)] {
        let (a, b) = (stats(p, 0), stats(p, 1));
        eprintln!("| {name} | {:+.3} | {:.3} | {:+.3} | {:.3} |", a.0, a.1, b.0, b.1);
    }
    for k in 0..2 {
        let (m, s) = stats(&truncated, k);
        let tol = 0.2;
        assert!(m.abs() < tol, "label {k}: pull mean {m:.3}");
        assert!((0.8..1.2).contains(&s), "label {k}: pull width {s:.3}");
    }
    // Far from the cut every flow sample may pass (Ẑ = 1): the fit must still
    // work (a degenerate normaliser once crashed libtorch's double backward).
    let far = [2000.0f32, 3.0];
    let ev = {
        let _rng = fedhex::rng::seeded(78);
        let cs = tch::Tensor::from_slice(&far).view([1, 2]).expand([n_ev as i64, 2], false);
        let flat: Vec<f32> = Vec::try_from(model.sample(&cs).flatten(0, -1)).unwrap();
        Array2::from_shape_vec((n_ev, 2), flat).unwrap()
    };
    let opts = FitOptions {
        start: Some(far.iter().map(|&v| f64::from(v)).collect()),
        iterations: 0,
        scan: ScanKind::None,
        acceptance_samples: 2000,
        ..Default::default()
    };
    let r = fit_label(&model, ev.view(), &opts).unwrap();
    assert!(r.best.iter().chain(&r.uncertainty).all(|v| v.is_finite()), "{:?} ± {:?}", r.best, r.uncertainty);
    // The normaliser matters here: without it the M_ω pulls are biased.
    let (m_naive, _) = stats(&naive, 1);
    assert!(
        m_naive.abs() > 0.3,
        "the density before the cut gives unbiased M_ω pulls ({m_naive:.3}): the test proves nothing"
    );
}
