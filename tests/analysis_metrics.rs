//! Tests of `fedhex::analysis::metrics`.
//!
//! Statistical tests use fixed seeds, so they are deterministic; the
//! tolerances are several standard deviations of the respective statistic,
//! so a wrong implementation fails them while a correct one passes.

use fedhex::analysis::metrics::{self, Binning, ClassifierConfig, CompareConfig, EnergyConfig, MetricsError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn gauss(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = Normal::new(mean, sd).unwrap();
    (0..n).map(|_| d.sample(&mut rng)).collect()
}

/// Correlated 2-D Gaussian rows (ρ = 0.5), mean shifted by `shift` along x.
fn gauss2(n: usize, shift: f64, seed: u64) -> Vec<[f64; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = Normal::new(0.0, 1.0).unwrap();
    (0..n)
        .map(|_| {
            let a: f64 = d.sample(&mut rng);
            let b: f64 = d.sample(&mut rng);
            [a + shift, 0.5 * a + 0.75f64.sqrt() * b]
        })
        .collect()
}

fn small_energy() -> EnergyConfig {
    EnergyConfig { max_per_sample: 500, permutations: 100, seed: 7 }
}

// ---------------------------------------------------------------------------
// Special functions, checked against closed forms computed here.
// ---------------------------------------------------------------------------

/// erf by its Taylor series (fine for |z| < 3), independent of the module.
fn erf_series(z: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = z; // (-1)^n z^{2n+1} / n!
    for n in 0..200 {
        sum += term / (2 * n + 1) as f64;
        term *= -z * z / (n + 1) as f64;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

/// Q(n, x) for integer n via the Poisson sum Σ_{k<n} e^{-x} x^k / k!.
fn q_integer(n: u32, x: f64) -> f64 {
    let mut term = (-x).exp();
    let mut sum = 0.0;
    for k in 0..n {
        if k > 0 {
            term *= x / k as f64;
        }
        sum += term;
    }
    sum
}

#[test]
fn incomplete_gamma_matches_closed_forms() {
    for &x in &[0.01, 0.1, 0.5, 1.0, 2.0, 3.7, 10.0, 30.0] {
        // k = 2 degrees of freedom: P(1, x/2) = 1 − e^{−x/2}.
        let expect = 1.0 - (-x / 2.0f64).exp();
        assert!((metrics::gamma_p(1.0, x / 2.0) - expect).abs() < 1e-13, "x={x}");
        assert!((metrics::chi2_sf(x, 2) - (-x / 2.0f64).exp()).abs() < 1e-13);
        // k = 4: Q(2, x/2) = e^{−x/2}(1 + x/2).
        let q4 = (-x / 2.0f64).exp() * (1.0 + x / 2.0);
        assert!((metrics::chi2_sf(x, 4) - q4).abs() < 1e-13, "x={x}");
        // P + Q = 1
        let (p, q) = (metrics::gamma_p(3.3, x), metrics::gamma_q(3.3, x));
        assert!((p + q - 1.0).abs() < 1e-13);
    }
    // k = 1: P(1/2, x) = erf(√x).
    for &x in &[0.01, 0.2, 1.0, 2.5, 4.0] {
        let e = erf_series(f64::sqrt(x));
        assert!((metrics::gamma_p(0.5, x) - e).abs() < 1e-12, "x={x}");
    }
    // Integer a, both the series and the continued-fraction branch.
    for &(n, x) in &[(5u32, 2.0), (5, 9.0), (10, 10.0), (50, 45.0), (50, 60.0), (3, 25.0)] {
        let q = q_integer(n, x);
        let got = metrics::gamma_q(n as f64, x);
        assert!((got - q).abs() < 1e-12 * q.max(1e-3), "n={n} x={x}: {got} vs {q}");
    }
    // Relative accuracy deep in the tail: Q(1, 50) = e^{−50}.
    let tail = metrics::chi2_sf(100.0, 2);
    assert!((tail / (-50.0f64).exp() - 1.0).abs() < 1e-10);
    // ln Γ.
    assert!((metrics::ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    let mut fact = 1.0f64;
    for n in 1..30u32 {
        assert!((metrics::ln_gamma(n as f64) - fact.ln()).abs() < 1e-12 * fact.ln().max(1.0));
        fact *= n as f64;
    }
    // Invalid input gives NaN, not a panic.
    assert!(metrics::gamma_p(-1.0, 1.0).is_nan());
    assert!(metrics::gamma_q(1.0, f64::NAN).is_nan());
    assert!(metrics::chi2_sf(f64::NAN, 3).is_nan());
}

/// Kolmogorov survival function by the alternating series only.
fn kolmogorov_sf_alternating(l: f64) -> f64 {
    let mut s = 0.0;
    for j in 1..2000 {
        let j = j as f64;
        s += if j as i64 % 2 == 1 { 1.0 } else { -1.0 } * (-2.0 * j * j * l * l).exp();
    }
    2.0 * s
}

#[test]
fn kolmogorov_distribution_matches_tables_and_series() {
    // Critical values of the Kolmogorov distribution (e.g. Smirnov 1948 tables):
    // P(K > 1.2238) = 0.10, 1.3581 → 0.05, 1.6276 → 0.01, 1.9495 → 0.001.
    for &(l, p) in &[(1.22385, 0.10), (1.35810, 0.05), (1.62762, 0.01), (1.94947, 0.001)] {
        let got = metrics::kolmogorov_sf(l);
        assert!((got - p).abs() < 2e-5, "λ={l}: {got} vs {p}");
    }
    // Below 1.18 the implementation uses the theta form; compare with the
    // alternating series (converges, slowly, everywhere above ~0.3).
    for &l in &[0.5, 0.7, 0.9, 1.0, 1.1, 1.17, 1.19, 1.5, 2.5] {
        let a = kolmogorov_sf_alternating(l);
        assert!((metrics::kolmogorov_sf(l) - a).abs() < 1e-10, "λ={l}");
    }
    // P(K ≤ 1) = 0.7300003 (known value).
    assert!((1.0 - metrics::kolmogorov_sf(1.0) - 0.730_000_3).abs() < 1e-6);
    assert_eq!(metrics::kolmogorov_sf(0.0), 1.0);
    assert!(metrics::kolmogorov_sf(0.05) > 0.999_999);
}

#[test]
fn ks_statistic_and_p_value_on_constructed_samples() {
    // a = 0..100, b = 10..110: the ECDFs differ by exactly 0.1 on [0, 10).
    let a: Vec<f64> = (0..100).map(|i| i as f64).collect();
    let b: Vec<f64> = (10..110).map(|i| i as f64).collect();
    let r = metrics::ks_test(&a, &b).unwrap();
    assert!((r.statistic - 0.1).abs() < 1e-12);
    assert!((r.n_eff - 50.0).abs() < 1e-12);
    let l = (50f64.sqrt() + 0.12 + 0.11 / 50f64.sqrt()) * 0.1;
    assert!((r.p_value - kolmogorov_sf_alternating(l)).abs() < 1e-10);
    // Ties: identical discrete samples have D = 0.
    let c = vec![1.0, 1.0, 2.0, 2.0, 3.0];
    let r = metrics::ks_test(&c, &c).unwrap();
    assert_eq!(r.statistic, 0.0);
    assert_eq!(r.p_value, 1.0);
    // Unequal sizes: {0} vs {0, 1}: D = 0.5.
    assert!((metrics::ks_test(&[0.0], &[0.0, 1.0]).unwrap().statistic - 0.5).abs() < 1e-15);
}

// ---------------------------------------------------------------------------
// Wasserstein, χ² from counts, moments
// ---------------------------------------------------------------------------

#[test]
fn wasserstein_of_shifted_sample_equals_shift() {
    let a = gauss(3000, 2.0, 1.5, 1);
    for &shift in &[0.0, 0.25, -1.7, 10.0] {
        let b: Vec<f64> = a.iter().map(|x| x + shift).collect();
        let w = metrics::wasserstein1(&a, &b).unwrap();
        assert!((w - f64::abs(shift)).abs() < 1e-9, "shift {shift}: {w}");
    }
    // Hand-computed unequal sizes.
    assert!((metrics::wasserstein1(&[0.0], &[1.0, 1.0]).unwrap() - 1.0).abs() < 1e-15);
    assert!((metrics::wasserstein1(&[0.0, 1.0], &[0.0]).unwrap() - 0.5).abs() < 1e-15);
    // Order of the input does not matter.
    let mut rev = a.clone();
    rev.reverse();
    assert!(metrics::wasserstein1(&a, &rev).unwrap().abs() < 1e-15);
}

#[test]
fn chi2_from_counts_hand_examples() {
    // Proportional histograms: χ² = 0; the empty-in-both bin is skipped.
    let r = metrics::chi2_from_counts(&[10, 0, 20, 5], &[20, 0, 40, 10]).unwrap();
    assert_eq!(r.bins_used, 3);
    assert_eq!(r.ndf, 2);
    assert!(r.chi2.abs() < 1e-12);
    assert!((r.p_value - 1.0).abs() < 1e-12);
    // Equal totals: χ² = Σ (n−m)²/(n+m) = 100/90 + 100/110.
    let expect_equal = 100.0 / 90.0 + 100.0 / 110.0;
    let r = metrics::chi2_from_counts(&[40, 60], &[50, 50]).unwrap();
    assert!((r.chi2 - expect_equal).abs() < 1e-12);
    // ndf = 1: p = erfc(√(χ²/2)).
    assert!((r.p_value - (1.0 - erf_series((expect_equal / 2.0).sqrt()))).abs() < 1e-12);
    // Unequal totals, by hand: N=100, M=50; bins (40,25),(60,25):
    // [(50·40−100·25)² /65 + (50·60−100·25)²/85] / 5000
    let expect = ((2000.0f64 - 2500.0).powi(2) / 65.0 + (3000.0f64 - 2500.0).powi(2) / 85.0) / 5000.0;
    let r = metrics::chi2_from_counts(&[40, 60], &[25, 25]).unwrap();
    assert!((r.chi2 - expect).abs() < 1e-12);
    // Weighted version with unit weights and equal totals agrees with Σ(n−m)²/(n+m).
    let w = metrics::chi2_weighted(&[40.0, 60.0], &[40.0, 60.0], &[50.0, 50.0], &[50.0, 50.0]).unwrap();
    assert!((w.chi2 - expect_equal).abs() < 1e-12);
    assert!(matches!(metrics::chi2_from_counts(&[1, 2], &[1]), Err(MetricsError::DimensionMismatch { .. })));
}

#[test]
fn moments_and_uncertainties_are_consistent() {
    // Spread of the mean / std over repetitions matches the quoted errors.
    let reps = 200;
    let (mut means, mut stds, mut mean_err, mut std_err) = (vec![], vec![], 0.0, 0.0);
    for s in 0..reps {
        let m = metrics::moments(&gauss(500, 3.0, 2.0, 1000 + s)).unwrap();
        means.push(m.mean);
        stds.push(m.std);
        mean_err += m.mean_err / reps as f64;
        std_err += m.std_err / reps as f64;
    }
    let spread = |v: &[f64]| {
        let mu = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    assert!((spread(&means) / mean_err - 1.0).abs() < 0.15);
    assert!((spread(&stds) / std_err - 1.0).abs() < 0.15);
    // Gaussian: σ(s) ≈ σ/√(2(n−1)).
    assert!((std_err / (2.0 / (2.0f64 * 499.0).sqrt()) - 1.0).abs() < 0.1);
}

#[test]
fn non_finite_values_are_dropped_not_fatal() {
    let mut a = gauss(1000, 0.0, 1.0, 3);
    let b = gauss(1000, 0.0, 1.0, 4);
    a[5] = f64::NAN;
    a[17] = f64::INFINITY;
    a[99] = f64::NEG_INFINITY;
    let c = metrics::compare_feature("x", &a, &b, &CompareConfig::default()).unwrap();
    assert_eq!(c.n_dropped_reference, 3);
    assert_eq!(c.n_dropped_generated, 0);
    assert_eq!(c.reference.n, 997);
    assert!(c.ks.p_value.is_finite() && c.chi2.chi2.is_finite());
    let all_nan = vec![f64::NAN; 10];
    assert!(matches!(metrics::ks_test(&all_nan, &b), Err(MetricsError::TooFewValues { .. })));
    // Multivariate: rows with NaN are dropped.
    let mut r = gauss2(300, 0.0, 5);
    r[0][1] = f64::NAN;
    let g = gauss2(300, 0.0, 6);
    let s = metrics::compare_samples(
        &["x", "y"],
        &r,
        &g,
        &CompareConfig {
            energy: small_energy(),
            classifier: ClassifierConfig { k: 10, ..Default::default() },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.n_dropped_reference, 1);
    assert_eq!(s.energy.n_reference_used, 299);
}

// ---------------------------------------------------------------------------
// Null hypothesis: two independent samples from the same distribution
// ---------------------------------------------------------------------------

#[test]
fn identical_distributions_are_compatible_1d() {
    let seeds = 10u64;
    let (mut chi_sum, mut ks_p_sum) = (0.0, 0.0);
    for s in 0..seeds {
        let a = gauss(5000, 1.0, 2.0, 10 + 2 * s);
        let b = gauss(5000, 1.0, 2.0, 11 + 2 * s);
        let c = metrics::compare_feature("x", &a, &b, &CompareConfig::default()).unwrap();
        assert!((0.5..1.7).contains(&c.chi2.chi2_per_ndf), "χ²/ndf = {}", c.chi2.chi2_per_ndf);
        assert_eq!(c.chi2.ndf, 39);
        assert!(c.ks.p_value > 1e-3, "KS p = {}", c.ks.p_value);
        let shift = c.relative.mean_shift_in_std.unwrap();
        assert!(shift.value.abs() < 4.0 * shift.uncertainty);
        let rel_s = c.relative.std_rel_error.unwrap();
        assert!(rel_s.value.abs() < 4.0 * rel_s.uncertainty);
        for q in &c.quantile_shifts {
            assert!(q.shift_in_std.value.abs() < 4.5 * q.shift_in_std.uncertainty, "{q:?}");
        }
        chi_sum += c.chi2.chi2_per_ndf;
        ks_p_sum += c.ks.p_value;
    }
    let chi_mean = chi_sum / seeds as f64;
    let ks_mean = ks_p_sum / seeds as f64;
    // Mean of 10 χ²/ndf (ndf = 39): 1 ± 0.07; mean of 10 uniform p-values: 0.5 ± 0.09.
    assert!((0.8..1.2).contains(&chi_mean), "mean χ²/ndf = {chi_mean}");
    assert!((0.2..0.8).contains(&ks_mean), "mean KS p = {ks_mean}");
    // Uniform binning, too.
    let a = gauss(5000, 0.0, 1.0, 90);
    let b = gauss(7000, 0.0, 1.0, 91);
    let c = metrics::chi2_test(&a, &b, Binning::Uniform { bins: 30 }).unwrap();
    assert!((0.5..1.7).contains(&c.chi2_per_ndf), "{c:?}");
}

#[test]
fn identical_distributions_are_compatible_2d() {
    let a = gauss2(5000, 0.0, 21);
    let b = gauss2(5000, 0.0, 22);
    let clf = metrics::classifier_test(&a, &b, &ClassifierConfig::default()).unwrap();
    assert!((clf.auc - 0.5).abs() < 0.03, "AUC = {}", clf.auc);
    assert_eq!(clf.n_reference_used, 5000);
    let e = metrics::energy_test(&a, &b, &small_energy()).unwrap();
    assert!(e.p_value > 0.01, "energy p = {}", e.p_value);
    // Energy p-values under the null are roughly uniform over seeds.
    let mut small = 0;
    for s in 0..10u64 {
        let a = gauss2(400, 0.0, 100 + 2 * s);
        let b = gauss2(400, 0.0, 101 + 2 * s);
        let e = metrics::energy_test(&a, &b, &small_energy()).unwrap();
        if e.p_value < 0.05 {
            small += 1;
        }
    }
    assert!(small <= 3, "{small} of 10 null energy tests had p < 0.05");
}

// ---------------------------------------------------------------------------
// Alternatives: the metrics must detect real differences
// ---------------------------------------------------------------------------

#[test]
fn mean_shift_of_a_tenth_sigma_is_detected() {
    let a = gauss(20_000, 0.0, 1.0, 31);
    let b = gauss(20_000, 0.1, 1.0, 32);
    let cfg = CompareConfig { binning: Binning::ReferenceQuantiles { bins: 20 }, ..Default::default() };
    let c = metrics::compare_feature("x", &a, &b, &cfg).unwrap();
    assert!(c.ks.p_value < 0.01, "KS p = {}", c.ks.p_value);
    assert!(c.chi2.chi2_per_ndf > 2.0, "χ²/ndf = {}", c.chi2.chi2_per_ndf);
    assert!(c.chi2.p_value < 1e-4);
    let shift = c.relative.mean_shift_in_std.unwrap();
    assert!((shift.value - 0.1).abs() < 4.0 * shift.uncertainty, "{shift:?}");
    // The median moves by ≈ 0.1σ.
    let med = c.quantile_shifts.iter().find(|q| q.p == 0.5).unwrap();
    assert!((med.shift_in_std.value - 0.1).abs() < 0.05);
    assert!((c.wasserstein1 - 0.1).abs() < 0.03, "W1 = {}", c.wasserstein1);
}

#[test]
fn ten_percent_wider_distribution_is_detected() {
    let a = gauss(50_000, 5.0, 1.0, 41);
    let b = gauss(50_000, 5.0, 1.1, 42);
    let c = metrics::compare_feature("x", &a, &b, &CompareConfig::default()).unwrap();
    assert!(c.ks.p_value < 0.01, "KS p = {}", c.ks.p_value);
    assert!(c.chi2.chi2_per_ndf > 3.0, "χ²/ndf = {}", c.chi2.chi2_per_ndf);
    let rel = c.relative.std_rel_error.unwrap();
    assert!((rel.value - 0.1).abs() < 4.0 * rel.uncertainty, "{rel:?}");
    // Outer quantiles move outwards by ≈ ±0.1 × 1.645σ, the median stays.
    let q = |p: f64| c.quantile_shifts.iter().find(|q| q.p == p).unwrap().shift_in_std.value;
    assert!(q(0.05) < -0.1 && q(0.95) > 0.1);
    assert!(q(0.5).abs() < 0.03);
}

#[test]
fn multivariate_tests_detect_a_shift() {
    let a = gauss2(5000, 0.0, 51);
    let b = gauss2(5000, 0.5, 52);
    let clf = metrics::classifier_test(&a, &b, &ClassifierConfig::default()).unwrap();
    assert!(clf.auc > 0.53, "AUC = {}", clf.auc);
    assert!(clf.z_score > 5.0);
    let e = metrics::energy_test(&a, &b, &small_energy()).unwrap();
    assert!(e.p_value < 0.02, "energy p = {}", e.p_value);
    assert!(e.statistic > 0.0);
    // A pure correlation change (same marginals) is seen by the classifier.
    let mut rng = ChaCha8Rng::seed_from_u64(53);
    let c: Vec<[f64; 2]> = (0..5000)
        .map(|_| {
            let x: f64 = rng.sample(rand_distr::StandardNormal);
            let y: f64 = rng.sample(rand_distr::StandardNormal);
            [x, -0.5 * x + 0.75f64.sqrt() * y]
        })
        .collect();
    let clf = metrics::classifier_test(&a, &c, &ClassifierConfig::default()).unwrap();
    assert!(clf.auc > 0.53, "AUC (correlation flip) = {}", clf.auc);
}

// ---------------------------------------------------------------------------
// Bundles, serialisation, flat rows
// ---------------------------------------------------------------------------

#[test]
fn compare_samples_bundles_everything_and_serialises() {
    let a = gauss2(2000, 0.0, 61);
    let b = gauss2(2500, 0.0, 62);
    let flat_a: Vec<f64> = a.iter().flatten().copied().collect();
    let rows = metrics::rows_from_flat(&flat_a, 2).unwrap();
    assert_eq!(rows.len(), 2000);
    let b_rows: Vec<Vec<f64>> = b.iter().map(|r| r.to_vec()).collect();
    let b_slices: Vec<&[f64]> = b_rows.iter().map(|r| r.as_slice()).collect();
    let cfg = CompareConfig { energy: small_energy(), ..Default::default() };
    let s = metrics::compare_samples(&["m_phi", "m_omega"], &rows, &b_slices, &cfg).unwrap();
    assert_eq!(s.features.len(), 2);
    assert_eq!(s.features[1].feature, "m_omega");
    assert_eq!(s.features[0].generated.n, 2500);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"chi2_per_ndf\"") && json.contains("\"auc\""));
    // Same result from Vec rows and fixed-size rows (seeded, deterministic).
    let s2 = metrics::compare_samples(&["m_phi", "m_omega"], &a, &b, &cfg).unwrap();
    assert_eq!(s.classifier.auc, s2.classifier.auc);
    assert_eq!(s.energy.p_value, s2.energy.p_value);
    // Errors.
    let huge = EnergyConfig { max_per_sample: metrics::ENERGY_MAX_PER_SAMPLE + 1, ..Default::default() };
    assert!(matches!(metrics::energy_test(&a, &b, &huge), Err(MetricsError::InvalidArgument(_))));
    assert!(metrics::rows_from_flat(&flat_a[..5], 2).is_err());
    assert!(matches!(
        metrics::compare_samples(&["only_one"], &a, &b, &cfg),
        Err(MetricsError::DimensionMismatch { .. })
    ));
}

/// Three features where the third is correlated with the first in the
/// reference only: the pair χ² flags (0, 2) and no other pair, while every
/// marginal is the same standard normal.
#[test]
fn pair_chi2_finds_the_pair_whose_dependence_is_wrong() {
    let n = 20_000;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let normal = Normal::new(0.0, 1.0).unwrap();
    let mut draw = |rho: f64| -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                let (a, b, c): (f64, f64, f64) =
                    (normal.sample(&mut rng), normal.sample(&mut rng), normal.sample(&mut rng));
                vec![a, b, rho * a + (1.0 - rho * rho).sqrt() * c]
            })
            .collect()
    };
    let (reference, generated, same) = (draw(0.5), draw(0.0), draw(0.5));
    let chi = |g: &[Vec<f64>], i, j| metrics::pair_chi2(&reference, g, i, j, 8).unwrap();
    let bad = chi(&generated, 0, 2);
    assert_eq!(bad.ndf, 63);
    assert!(bad.chi2_per_ndf > 5.0 && bad.p_value < 1e-6, "{bad:?}");
    for (i, j) in [(0, 1), (1, 2)] {
        let ok = chi(&generated, i, j);
        assert!(ok.chi2_per_ndf < 1.6, "pair ({i}, {j}): {ok:?}");
    }
    let floor = chi(&same, 0, 2);
    assert!(floor.chi2_per_ndf < 1.6 && floor.p_value > 1e-4, "{floor:?}");
    // The 1-D marginals cannot tell.
    let col = |s: &[Vec<f64>], k: usize| s.iter().map(|r| r[k]).collect::<Vec<f64>>();
    let m =
        metrics::chi2_test(&col(&reference, 2), &col(&generated, 2), Binning::ReferenceQuantiles { bins: 20 }).unwrap();
    assert!(m.chi2_per_ndf < 2.0, "{m:?}");
    assert!(matches!(metrics::pair_chi2(&reference, &generated, 0, 5, 8), Err(MetricsError::DimensionMismatch { .. })));
    assert!(metrics::pair_chi2(&reference, &generated, 0, 1, 1).is_err());
}
