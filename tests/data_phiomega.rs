//! Tests of `fedhex::data::phiomega`.

use fedhex::data::phiomega::{self, LabelGrid, PhiOmegaError, PhiOmegaModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn column(ev: &[[f64; 2]], c: usize) -> Vec<f64> {
    ev.iter().map(|e| e[c]).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Gaussian width from the upper half of a peak at `centre`:
/// for a Gaussian, E[x − μ | x > μ] = σ √(2/π).  The low-side tail and the
/// shoulder do not enter.
fn upper_half_sigma(v: &[f64], centre: f64) -> f64 {
    let up: Vec<f64> = v.iter().filter(|&&x| x > centre).map(|x| x - centre).collect();
    mean(&up) * (std::f64::consts::PI / 2.0).sqrt()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn deterministic_for_a_seed() {
    let m = PhiOmegaModel::default();
    let a = m.sample_seeded(2000.0, 3.0, 1000, 42).unwrap();
    let b = m.sample_seeded(2000.0, 3.0, 1000, 42).unwrap();
    assert_eq!(a, b);
    let c = m.sample_seeded(2000.0, 3.0, 1000, 43).unwrap();
    assert_ne!(a.events, c.events);
    // The generic API with an explicit ChaCha8Rng gives the same stream.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let d = m.sample(2000.0, 3.0, 1000, &mut rng).unwrap();
    assert_eq!(a.events, d);
}

#[test]
fn exactly_n_events_and_cut_holds() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &n in &[0usize, 1, 17, 5000] {
        for &(mp, mo) in &[(1000.0, 0.5), (3250.0, 0.5), (2000.0, 1.0), (3250.0, 9.5)] {
            let ev = m.sample(mp, mo, n, &mut rng).unwrap();
            assert_eq!(ev.len(), n);
            assert!(ev.iter().all(|e| e[1] > phiomega::DEFAULT_OMEGA_CUT && e[0] > 0.0));
            assert!(ev.iter().all(|e| e[0].is_finite() && e[1].is_finite()));
        }
    }
    // A configurable cut.
    let tight = PhiOmegaModel { omega_cut: 1.0, ..Default::default() };
    let s = tight.sample_with_efficiency(2000.0, 1.1, 3000, &mut rng).unwrap();
    assert_eq!(s.events.len(), 3000);
    assert!(s.events.iter().all(|e| e[1] > 1.0));
    assert!(s.efficiency < 0.9 && s.trials > 3000);
}

#[test]
fn acceptance_efficiency_is_reported_and_consistent() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let eff = |mo: f64, rng: &mut ChaCha8Rng| m.acceptance(2000.0, mo, rng, 40_000).unwrap();
    let a05 = eff(0.5, &mut rng);
    let a10 = eff(1.0, &mut rng);
    let a50 = eff(5.0, &mut rng);
    assert_eq!(a05.n_trials, 40_000);
    // The cut at 0.415 GeV bites at 0.5 GeV (−1.8 σ, plus most of the shoulder).
    assert!(a05.efficiency < 0.95 && a05.efficiency > 0.5, "{a05:?}");
    assert!(a05.efficiency < a10.efficiency && a10.efficiency <= a50.efficiency);
    assert!(a50.efficiency > 0.999);
    // Efficiency reported by the rejection sampler agrees within errors.
    let s = m.sample_with_efficiency(2000.0, 0.5, 40_000, &mut rng).unwrap();
    let sigma = (a05.uncertainty.powi(2) + a05.efficiency * (1.0 - a05.efficiency) / s.trials as f64).sqrt();
    assert!((s.efficiency - a05.efficiency).abs() < 4.0 * sigma);
    assert_eq!(s.efficiency, 40_000.0 / s.trials as f64);
}

#[test]
fn mean_phi_mass_close_to_true_mass() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &mp in &[1000.0, 2000.0, 3250.0] {
        for &mo in &[0.5, 5.0, 9.5] {
            let ev = m.sample(mp, mo, 20_000, &mut rng).unwrap();
            let mean_phi = mean(&column(&ev, 0));
            assert!((mean_phi / mp - 1.0).abs() < 0.03, "M_Φ={mp}: {mean_phi}");
            // Bias is negative (radiative tail, shoulder) but not absent.
            assert!(mean_phi < mp);
            let mean_omega = mean(&column(&ev, 1));
            assert!((mean_omega / mo - 1.0).abs() < 0.1, "M_ω={mo}: {mean_omega}");
        }
    }
}

#[test]
fn widths_grow_with_mass() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let w_phi =
        |mp: f64, rng: &mut ChaCha8Rng| upper_half_sigma(&column(&m.sample(mp, 5.0, 30_000, rng).unwrap(), 0), mp);
    let (lo, hi) = (w_phi(1000.0, &mut rng), w_phi(3250.0, &mut rng));
    assert!(hi > 2.0 * lo, "σ(m_Φ): {lo} at 1 TeV, {hi} at 3.25 TeV");
    // Relative Φ resolution improves with mass (stochastic term).
    assert!(hi / 3250.0 < lo / 1000.0);
    let w_om =
        |mo: f64, rng: &mut ChaCha8Rng| upper_half_sigma(&column(&m.sample(2000.0, mo, 30_000, rng).unwrap(), 1), mo);
    let (lo, hi) = (w_om(2.0, &mut rng), w_om(9.0, &mut rng));
    assert!(hi > 3.0 * lo, "σ(m_ω): {lo} at 2 GeV, {hi} at 9 GeV");
    // The sampled width matches the documented formula (⊕ shared scale).
    for &(mp, mo) in &[(1500.0, 3.0), (3000.0, 7.5)] {
        let ev = m.sample(mp, mo, 40_000, &mut rng).unwrap();
        let expect_phi = m.phi_core_sigma(mp).hypot(m.scale_sigma * mp);
        let expect_om = m.omega_core_sigma(mp, mo).hypot(m.scale_sigma * mo);
        let got_phi = upper_half_sigma(&column(&ev, 0), mp);
        let got_om = upper_half_sigma(&column(&ev, 1), mo);
        assert!((got_phi / expect_phi - 1.0).abs() < 0.05, "{got_phi} vs {expect_phi}");
        assert!((got_om / expect_om - 1.0).abs() < 0.05, "{got_om} vs {expect_om}");
    }
}

#[test]
fn omega_width_is_steep_and_non_linear_at_low_mass() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let target = [(0.5, 0.046), (1.0, 0.105), (1.5, 0.151)];
    let w: Vec<f64> = target
        .iter()
        .map(|&(mo, _)| {
            let ev = m.sample(2000.0, mo, 60_000, &mut rng).unwrap();
            upper_half_sigma(&column(&ev, 1), mo)
        })
        .collect();
    for (i, &(mo, t)) in target.iter().enumerate() {
        assert!((w[i] / t - 1.0).abs() < 0.1, "σ_ω({mo}) = {} vs ≈{t}", w[i]);
    }
    assert!(w[0] < w[1] && w[1] < w[2]);
    // Steeper than proportional between 0.5 and 1 GeV (σ/M rises) ...
    assert!(w[1] / w[0] > 2.1, "ratio {}", w[1] / w[0]);
    // ... and less than proportional between 1 and 1.5 GeV (σ/M falls).
    assert!(w[2] / w[1] < 1.47, "ratio {}", w[2] / w[1]);
    // The slope drops by > 20 % from the first interval to the second.
    assert!((w[1] - w[0]) > 1.2 * (w[2] - w[1]));
}

#[test]
fn reconstructed_masses_are_positively_correlated() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let ev = m.sample(2000.0, 5.0, 20_000, &mut rng).unwrap();
    let r = pearson(&column(&ev, 0), &column(&ev, 1));
    assert!(r > 0.1, "ρ = {r}");
    // The shared energy scale alone correlates them (σ(ρ̂) ≈ 0.007).
    let no_shoulder = PhiOmegaModel { shoulder_fraction: 0.0, ..Default::default() };
    let ev = no_shoulder.sample(2000.0, 5.0, 20_000, &mut rng).unwrap();
    let r_scale = pearson(&column(&ev, 0), &column(&ev, 1));
    assert!(r_scale > 0.05, "ρ (scale only) = {r_scale}");
    let no_scale = PhiOmegaModel { shoulder_fraction: 0.0, scale_sigma: 0.0, ..Default::default() };
    let ev = no_scale.sample(2000.0, 5.0, 20_000, &mut rng).unwrap();
    let r0 = pearson(&column(&ev, 0), &column(&ev, 1));
    assert!(r0.abs() < 0.03, "ρ without shared effects = {r0}");
}

#[test]
fn low_mass_shoulder_and_tail_exist() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let ev = m.sample(2000.0, 6.0, 40_000, &mut rng).unwrap();
    let om = column(&ev, 1);
    let sig = m.omega_core_sigma(2000.0, 6.0);
    // Fraction far below the peak (> 3σ low): a Gaussian would give 0.0013.
    let low = om.iter().filter(|&&x| x < 6.0 - 3.0 * sig).count() as f64 / om.len() as f64;
    assert!(low > 0.05, "low-side fraction {low}");
    // Far above the peak: nothing beyond Gaussian expectations.
    let high = om.iter().filter(|&&x| x > 6.0 + 3.0 * sig).count() as f64 / om.len() as f64;
    assert!(high < 0.005, "high-side fraction {high}");
    // No shoulder, no tail → symmetric.
    let sym = PhiOmegaModel { shoulder_fraction: 0.0, omega_tail_alpha: 50.0, ..Default::default() };
    let ev = sym.sample(2000.0, 6.0, 40_000, &mut rng).unwrap();
    let low = ev.iter().filter(|e| e[1] < 6.0 - 3.0 * sig).count() as f64 / ev.len() as f64;
    assert!(low < 0.005, "symmetric low-side fraction {low}");
}

#[test]
fn invalid_inputs_are_rejected() {
    let m = PhiOmegaModel::default();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (mp, mo) in [
        (0.0, 1.0),
        (-5.0, 1.0),
        (f64::NAN, 1.0),
        (f64::INFINITY, 1.0),
        (2000.0, 0.0),
        (2000.0, -1.0),
        (2000.0, f64::NAN),
    ] {
        assert!(matches!(m.sample(mp, mo, 10, &mut rng), Err(PhiOmegaError::InvalidMass { .. })), "({mp}, {mo})");
        assert!(m.acceptance(mp, mo, &mut rng, 10).is_err());
    }
    let bad = PhiOmegaModel { phi_tail_n: 1.0, ..Default::default() };
    assert!(matches!(
        bad.sample(2000.0, 1.0, 10, &mut rng),
        Err(PhiOmegaError::InvalidParameter { name: "phi_tail_n", .. })
    ));
    let bad = PhiOmegaModel { shoulder_fraction: f64::NAN, ..Default::default() };
    assert!(bad.validate().is_err());
    // True ω mass far below the cut: the rejection loop gives up with an error.
    assert!(matches!(m.sample(2000.0, 0.05, 10, &mut rng), Err(PhiOmegaError::AcceptanceTooLow { .. })));
}

#[test]
fn label_grid_and_midpoints() {
    let g = phiomega::grid(10, 10).unwrap();
    assert_eq!(g.len(), 100);
    assert_eq!(g[0], [1000.0, 0.5]);
    assert_eq!(g[99], [3250.0, 9.5]);
    assert!((g[1][1] - 1.5).abs() < 1e-12 && (g[10][0] - 1250.0).abs() < 1e-9);
    assert_eq!(LabelGrid::default().points().unwrap(), g);
    let mid = phiomega::midpoints(10, 10).unwrap();
    assert_eq!(mid.len(), 81);
    assert!((mid[0][0] - 1125.0).abs() < 1e-9 && (mid[0][1] - 1.0).abs() < 1e-12);
    // No midpoint coincides with a grid point.
    for p in &mid {
        assert!(g.iter().all(|q| (p[0] - q[0]).abs() > 1.0 || (p[1] - q[1]).abs() > 0.1));
    }
    assert!(phiomega::grid(0, 3).is_err());
    let custom = LabelGrid { m_phi_range: [500.0, 400.0], ..Default::default() };
    assert!(custom.points().is_err());
}

#[test]
fn model_parameters_serialise_round_trip() {
    let m = PhiOmegaModel { omega_cut: 0.5, ..Default::default() };
    let json = serde_json::to_string(&m).unwrap();
    let back: PhiOmegaModel = serde_json::from_str(&json).unwrap();
    assert_eq!(m, back);
    // Missing fields fall back to the defaults.
    let partial: PhiOmegaModel = serde_json::from_str(r#"{"scale_sigma": 0.02}"#).unwrap();
    assert_eq!(partial.scale_sigma, 0.02);
    assert_eq!(partial.omega_cut, PhiOmegaModel::default().omega_cut);
}
