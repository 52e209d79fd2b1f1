//! Two-sample comparison metrics for generated versus reference events.
//!
//! Everything here works on plain slices: one-dimensional samples are `&[f64]`,
//! multivariate samples are slices of rows (anything that is `AsRef<[f64]>`,
//! e.g. `&[Vec<f64>]`, `&[[f64; 2]]`, or the row views returned by
//! [`rows_from_flat`] for a row-major `&[f64]` buffer).
//!
//! # Non-finite values
//!
//! NaN and ±∞ never panic.  Every one-dimensional function first **drops**
//! non-finite values (the count of dropped values is reported where a result
//! struct has room for it, e.g. [`Comparison::n_dropped_reference`]); the
//! multivariate functions drop every **row** that has at least one
//! non-finite coordinate.  If fewer values than a metric needs remain, an
//! error ([`MetricsError::TooFewValues`]) is returned.  Sorting uses
//! [`f64::total_cmp`].
//!
//! # One-dimensional metrics
//!
//! * **Moments** ([`moments`]): mean `x̄`, sample standard deviation `s`
//!   (denominator `n − 1`), their uncertainties `σ(x̄) = s/√n` and the
//!   large-sample `σ(s)² ≈ (m₄ − s⁴ (n−3)/(n−1)) / (4 n s²)` with the sample
//!   fourth central moment `m₄` (exact for any distribution to O(1/n); for a
//!   Gaussian it reduces to `s²/(2(n−1))`).
//! * **Relative errors** ([`relative_errors`]): `(x̄_g − x̄_r)/|x̄_r|`,
//!   `(x̄_g − x̄_r)/s_r` and `(s_g − s_r)/s_r`, with first-order (Gaussian)
//!   error propagation of the uncertainties above, both samples independent.
//! * **Quantile shifts** ([`quantile_shifts`]): `(Q_g(p) − Q_r(p))/s_r` at the
//!   probabilities [`DEFAULT_QUANTILES`] = (0.05, 0.16, 0.5, 0.84, 0.95).
//!   Quantiles are Hyndman & Fan type 7 (linear interpolation of order
//!   statistics, the R / NumPy default).  The uncertainty of each quantile
//!   uses the asymptotic `σ(Q_p)² = p(1−p) / (n f(Q_p)²)` with the sparsity
//!   `1/f` estimated by the Siddiqui–Bloch–Gastwirth difference quotient
//!   `(Q(p+h) − Q(p−h)) / 2h`, `h = n^{-1/3}/2` (clipped to the unit interval).
//! * **Binned χ²** ([`chi2_test`]): the standard two-sample χ² for unweighted
//!   histograms of unequal size, N. D. Gagunashvili, "Comparison of weighted
//!   and unweighted histograms", arXiv:physics/0605123 (the "UU" test of ROOT's
//!   `TH1::Chi2Test`):
//!   `χ² = 1/(N M) Σᵢ (M nᵢ − N mᵢ)² / (nᵢ + mᵢ)`, `ndf = k − 1`,
//!   where `nᵢ, mᵢ` are the reference and generated counts, `N, M` the totals
//!   (the "weights" `1/N`, `1/M` normalise the shapes) and the sum runs over
//!   the `k` bins that are non-empty in at least one sample (bins empty in
//!   both are skipped).  It is the squared difference of the normalised
//!   histograms divided by the statistical variance of that difference from
//!   both samples, evaluated at the pooled estimate `(nᵢ+mᵢ)/(N+M)` of the bin
//!   probability; for `N = M` it is `Σ (nᵢ−mᵢ)²/(nᵢ+mᵢ)`.  For weighted
//!   histograms [`chi2_weighted`] uses the normalised-difference form
//!   `Σ (wᵢ/W − vᵢ/V)² / (σ²(wᵢ)/W² + σ²(vᵢ)/V²)` with `σ²` the sums of
//!   squared weights.  The p-value is `Q(ndf/2, χ²/2)` with the regularised
//!   upper incomplete gamma function implemented here ([`gamma_p`],
//!   [`gamma_q`]: series and Lentz continued fraction, Numerical Recipes 3rd
//!   ed. §6.2; `ln Γ` by the Lanczos approximation, g = 7, n = 9).
//!
//!   **Binning choice.**  The default, [`Binning::ReferenceQuantiles`], puts
//!   the inner bin edges at the reference quantiles `i/k`, so every bin has
//!   the same expected reference population (no sparse tail bins, which keeps
//!   the χ² approximation valid) and the outermost bins are open-ended, so
//!   generated events outside the reference range are counted, not lost.
//!   Repeated edges (discrete data) are merged.  [`Binning::Uniform`] uses `k`
//!   equal bins over the shared range `[min, max]` of both samples.
//! * **Kolmogorov–Smirnov** ([`ks_test`]): `D = sup |F_r − F_g|` from the
//!   merged sorted samples (ties handled exactly), with the asymptotic
//!   p-value `Q_KS(λ)`, `λ = (√nₑ + 0.12 + 0.11/√nₑ) D`, `nₑ = NM/(N+M)`
//!   (Stephens 1970; Numerical Recipes §14.3.3), where
//!   `Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} e^{−2j²λ²}` and for small λ the
//!   equivalent Jacobi-theta form `1 − √(2π)/λ Σ_{j≥1} e^{−(2j−1)²π²/(8λ²)}`
//!   ([`kolmogorov_sf`]).
//! * **Wasserstein-1** ([`wasserstein1`]): `W₁ = ∫ |F_r(x) − F_g(x)| dx`,
//!   computed exactly for the two empirical CDFs by a merge of the sorted
//!   samples (valid for unequal sample sizes).
//!
//! # Multivariate metrics
//!
//! Both multivariate tests standardise every coordinate with the mean and
//! standard deviation of the **pooled** (reference + generated) subsample.
//! Pooled standardisation is invariant under relabelling, which keeps the
//! permutation test exact and treats both samples symmetrically.
//!
//! * **Energy distance** ([`energy_test`]), Székely & Rizzo, "Energy
//!   statistics", J. Stat. Plan. Inference 143 (2013) 1249:
//!   `E = 2 E|X−Y| − E|X−X'| − E|Y−Y'|` (Euclidean norm), estimated with the
//!   U-statistics (within-sample means exclude `i = j`), so `E` fluctuates
//!   around 0 under the null.  The p-value is from a seeded permutation test,
//!   `p = (1 + #{E_perm ≥ E_obs}) / (1 + P)`.  The pairwise distance matrix of
//!   the pooled sample is computed once; each sample is first subsampled
//!   (without replacement, seeded) to at most
//!   [`EnergyConfig::max_per_sample`] rows so the cost stays bounded at
//!   `O(P (n+m)²/2)`.
//! * **Classifier two-sample test** ([`classifier_test`]), Lopez-Paz & Oquab,
//!   "Revisiting classifier two-sample tests", ICLR 2017 (arXiv:1610.06545):
//!   the score of a point is the fraction of generated events among its `k`
//!   nearest neighbours (Euclidean, standardised features) in the training
//!   folds of a **stratified** k-fold split, and the reported AUC is the
//!   Mann–Whitney AUC (mid-ranks for ties) of the out-of-fold scores.
//!   Under the null the AUC is 0.5 with standard deviation
//!   `√((N+M+1)/(12 N M))` (reported as [`ClassifierTestResult::auc_null_std`];
//!   indicative only: the out-of-fold scores are not independent, and the
//!   observed null spread is ≈ 25 % larger, e.g. 0.0072 instead of 0.0058 for
//!   5k vs 5k in 2-D).
//!
//!   *Why k-NN:* it is non-parametric and consistent (its AUC approaches the
//!   Bayes-optimal AUC for any difference in shape, including multimodal and
//!   correlation differences that a logistic regression on low-order
//!   polynomial features cannot see), has a single robust hyper-parameter,
//!   no training loop that can fail to converge, and with a k-d tree runs in
//!   `O(n log n)` for the low dimensions used here.  Stratified folds keep
//!   the class ratio of every training set equal, which removes the known
//!   negative bias of cross-validated AUC under the null.  Each sample is
//!   subsampled (seeded) to at most [`ClassifierConfig::max_per_sample`]
//!   rows (default 20 000, i.e. no subsampling for 20k vs 20k; that case
//!   takes ≈ 0.25 s in 2-D in a release build on one core, k = 50, 5 folds).
//!
//! # Bundles
//!
//! [`compare_feature`] gives a [`Comparison`] (serde-serialisable) with all
//! one-dimensional metrics of one feature; [`compare_samples`] compares whole
//! sample sets (every feature plus the two multivariate tests).
//!
//! # Weighted samples
//!
//! The `*_weighted` functions take per-event weights `wᵢ` (any sign; `None`
//! = unweighted) for either sample: a weighted reference (Monte Carlo with
//! generator weights) against the unweighted generated events, or two
//! weighted references (the statistical floor). With `W = Σw`, `W₂ = Σw²`
//! and the effective (Kish) size `n_eff = W²/W₂` (`= n` without weights):
//!
//! * **Moments** ([`moments_weighted`]): `x̄ = Σwx/W`; the variance with
//!   reliability weights `s² = Σw(x−x̄)² / (W − W₂/W)` (NumPy's
//!   `np.cov(x, aweights=w)`; `n − 1` for unit weights). Uncertainties: the
//!   linearised (sandwich) variances of these ratio estimators,
//!   `σ(x̄)² = c Σw²(x−x̄)²` and `σ(s²)² = c Σw²((x−x̄)² − s²)²`,
//!   `σ(s) = σ(s²)/2s`, with `c = n_eff/((n_eff − 1) W²)`. Where the weights
//!   do not depend on x this is `σ(x̄) = s/√n_eff`; for unit weights it is
//!   `s/√n` exactly (and `σ(s)` the unweighted formula up to `O(1/n²)`).
//!   Where they do (importance weights such as `p/q`), `s/√n_eff` is wrong:
//!   for a N(0.4, 1.3²) sample weighted to N(0, 1) (4000 events, 200
//!   repetitions) the pulls of the mean had an RMS of 0.83 with
//!   `s/√n_eff` and 0.97 with the linearised variance, those of the width
//!   0.71 with `s/√(2(n_eff−1))` and 0.93 with it.
//! * **Quantiles** ([`quantiles_weighted`]): values sorted ascending (ties
//!   by weight), each value placed at the centre of its weight,
//!   `M_k = Σ_{j<k} w_j + w_k/2`, rescaled so the smallest value sits at 0
//!   and the largest at 1: `p_k = (M_k − M_1)/(M_n − M_1)`; negative weights
//!   can make `p_k` decrease, so the running maximum is taken. `Q(p)`
//!   interpolates linearly between the values around the first `p_k ≥ p`.
//!   With equal weights `p_k = (k−1)/(n−1)`: Hyndman & Fan type 7, the
//!   unweighted definition. Quantile uncertainties use `n_eff`.
//! * **χ²** ([`chi2_test_weighted`]): the same bins (inner edges at the
//!   weighted reference quantiles), per-bin `Σw` and `Σw²` (`Σw² = count`
//!   for an unweighted sample), and [`chi2_weighted`].
//! * **KS and Wasserstein-1** ([`ks_test_weighted`],
//!   [`wasserstein1_weighted`]): the weighted ECDFs
//!   `F(x) = Σ_{xᵢ ≤ x} wᵢ / W` (with negative weights not monotone; the sup
//!   and the integral are taken over every value of both samples); the KS
//!   p-value with `nₑ = n_eff,r n_eff,g / (n_eff,r + n_eff,g)`.
//! * **Classifier test** ([`classifier_test_weighted`]): weighted k-NN votes
//!   (generated weight over all weight among the `k` neighbours, each
//!   class's weights rescaled to mean 1 over the rows used, a class's
//!   neighbourhood weight below zero counted as zero) and the weighted
//!   Mann–Whitney AUC ([`auc_weighted`]); `auc_null_std` with the effective
//!   sizes. Standardisation and neighbours are unweighted (geometry only).
//! * **Energy distance** ([`energy_test_weighted`]): the weighted
//!   V-statistic ([`WeightedEnergyResult`]) **without a p-value**: the
//!   permutation test is unsound with weights, because the weighted
//!   reference's events are drawn from another distribution than the one
//!   they represent, so they are not exchangeable with the other sample's
//!   under the null ([`WEIGHTED_ENERGY_NOTE`] says so in every result).
//!
//! Where neither sample is weighted, [`compare_feature_weighted`],
//! [`compare_samples_weighted`] and [`pair_chi2_weighted`] return the
//! unweighted functions' results bit for bit.

mod weighted;
pub use weighted::{
    auc_weighted, chi2_test_weighted, classifier_test_weighted, compare_feature_weighted, compare_samples_weighted,
    energy_test_weighted, ks_test_weighted, moments_weighted, pair_chi2_weighted, quantile_shifts_weighted,
    quantiles_weighted, wasserstein1_weighted, weight_summary, WeightSummary, WeightedEnergyResult,
    WeightedSampleComparison, WEIGHTED_ENERGY_NOTE,
};

use crate::knn::KdTree;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Errors of the metric functions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// A sample has fewer finite values (or rows) than the metric needs.
    #[error("{which} sample has {n} finite values, at least {min} are needed")]
    TooFewValues {
        /// Which sample ("reference" or "generated").
        which: &'static str,
        /// Number of finite values (or rows) found.
        n: usize,
        /// Minimum number required.
        min: usize,
    },
    /// Rows or names of inconsistent dimension.
    #[error("dimension mismatch in {context}: expected {expected}, got {got}")]
    DimensionMismatch {
        /// Where the mismatch was found.
        context: String,
        /// Expected dimension.
        expected: usize,
        /// Dimension found.
        got: usize,
    },
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias of this module.
pub type MetricsResult<T> = Result<T, MetricsError>;

/// Probabilities at which [`quantile_shifts`] compares the samples by default.
pub const DEFAULT_QUANTILES: [f64; 5] = [0.05, 0.16, 0.5, 0.84, 0.95];

const REF: &str = "reference";
const GEN: &str = "generated";

/// A value with its (one standard deviation) statistical uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Central value.
    pub value: f64,
    /// Statistical uncertainty (1σ).
    pub uncertainty: f64,
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Finite values of `x`, sorted ascending, and the number of dropped values.
fn finite_sorted(x: &[f64]) -> (Vec<f64>, usize) {
    let mut v: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_unstable_by(f64::total_cmp);
    let dropped = x.len() - v.len();
    (v, dropped)
}

fn require(which: &'static str, n: usize, min: usize) -> MetricsResult<()> {
    if n < min {
        Err(MetricsError::TooFewValues { which, n, min })
    } else {
        Ok(())
    }
}

/// Splits a row-major buffer into row views of length `dim`.
///
/// Errors if `dim == 0` or `data.len()` is not a multiple of `dim`.
pub fn rows_from_flat(data: &[f64], dim: usize) -> MetricsResult<Vec<&[f64]>> {
    if dim == 0 {
        return Err(MetricsError::InvalidArgument("dim must be > 0".into()));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(MetricsError::DimensionMismatch {
            context: "row-major buffer length".into(),
            expected: dim * (data.len() / dim + 1),
            got: data.len(),
        });
    }
    Ok(data.chunks_exact(dim).collect())
}

/// Quantile of an ascending, finite, non-empty slice (Hyndman & Fan type 7).
///
/// `p` is clamped to `[0, 1]`; returns NaN for an empty slice or NaN `p`.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() || p.is_nan() {
        return f64::NAN;
    }
    let p = p.clamp(0.0, 1.0);
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = h - lo as f64;
    sorted[lo] + frac * (sorted[hi] - sorted[lo])
}

// ---------------------------------------------------------------------------
// Moments and relative errors
// ---------------------------------------------------------------------------

/// Mean and standard deviation of a sample with their uncertainties.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Number of finite values used.
    pub n: usize,
    /// Sample mean.
    pub mean: f64,
    /// Uncertainty of the mean, `s/√n`.
    pub mean_err: f64,
    /// Sample standard deviation (denominator `n − 1`).
    pub std: f64,
    /// Large-sample uncertainty of `std` (see module docs).
    pub std_err: f64,
    /// Weighted samples only: the sum of the weights `Σw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_weights: Option<f64>,
    /// Weighted samples only: the effective sample size `(Σw)²/Σw²` that the
    /// uncertainties use in place of `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_eff: Option<f64>,
}

/// Mean, standard deviation and their uncertainties of the finite values.
///
/// Needs at least two finite values.
pub fn moments(x: &[f64]) -> MetricsResult<Moments> {
    let v: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    moments_finite(&v, "input")
}

fn moments_finite(v: &[f64], which: &'static str) -> MetricsResult<Moments> {
    let n = v.len();
    require(which, n, 2)?;
    let nf = n as f64;
    let mean = v.iter().sum::<f64>() / nf;
    let (mut m2, mut m4) = (0.0, 0.0);
    for &x in v {
        let d = x - mean;
        let d2 = d * d;
        m2 += d2;
        m4 += d2 * d2;
    }
    let var = m2 / (nf - 1.0);
    let m4 = m4 / nf;
    let std = var.sqrt();
    let var_s2 = ((m4 - var * var * (nf - 3.0) / (nf - 1.0)) / nf).max(0.0);
    let std_err = if var > 0.0 { (var_s2 / (4.0 * var)).sqrt() } else { 0.0 };
    Ok(Moments { n, mean, mean_err: std / nf.sqrt(), std, std_err, sum_weights: None, n_eff: None })
}

/// Relative differences of the first two moments, generated versus reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RelativeErrors {
    /// `(x̄_g − x̄_r)/|x̄_r|`; `None` if the reference mean is exactly 0.
    pub mean_rel_error: Option<Estimate>,
    /// `(x̄_g − x̄_r)/s_r`; `None` if the reference std is 0.
    pub mean_shift_in_std: Option<Estimate>,
    /// `(s_g − s_r)/s_r`; `None` if the reference std is 0.
    pub std_rel_error: Option<Estimate>,
}

/// Relative errors of mean and standard deviation with propagated uncertainties.
pub fn relative_errors(reference: &Moments, generated: &Moments) -> RelativeErrors {
    let (r, g) = (reference, generated);
    let mean_rel_error = (r.mean != 0.0).then(|| {
        let ratio = g.mean / r.mean;
        Estimate {
            value: (g.mean - r.mean) / r.mean.abs(),
            uncertainty: (g.mean_err.powi(2) + ratio.powi(2) * r.mean_err.powi(2)).sqrt() / r.mean.abs(),
        }
    });
    let (mean_shift_in_std, std_rel_error) = if r.std > 0.0 {
        let shift = (g.mean - r.mean) / r.std;
        let rel_s = r.std_err / r.std;
        let ratio = g.std / r.std;
        (
            Some(Estimate {
                value: shift,
                uncertainty: ((g.mean_err.powi(2) + r.mean_err.powi(2)) / r.std.powi(2)
                    + shift.powi(2) * rel_s.powi(2))
                .sqrt(),
            }),
            Some(Estimate {
                value: ratio - 1.0,
                uncertainty: ((g.std_err / r.std).powi(2) + ratio.powi(2) * rel_s.powi(2)).sqrt(),
            }),
        )
    } else {
        (None, None)
    };
    RelativeErrors { mean_rel_error, mean_shift_in_std, std_rel_error }
}

// ---------------------------------------------------------------------------
// Quantiles
// ---------------------------------------------------------------------------

/// Shift of one quantile, generated versus reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantileShift {
    /// Probability `p`.
    pub p: f64,
    /// Reference quantile `Q_r(p)`.
    pub reference: f64,
    /// Generated quantile `Q_g(p)`.
    pub generated: f64,
    /// `(Q_g(p) − Q_r(p))/s_r` with its asymptotic uncertainty.
    pub shift_in_std: Estimate,
}

fn quantile_uncertainty(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len() as f64;
    let h = 0.5 * n.powf(-1.0 / 3.0);
    let lo = (p - h).max(0.0);
    let hi = (p + h).min(1.0);
    if hi <= lo {
        return 0.0;
    }
    let sparsity = (quantile_sorted(sorted, hi) - quantile_sorted(sorted, lo)) / (hi - lo);
    (p * (1.0 - p) / n).sqrt() * sparsity
}

/// Quantile shifts `(Q_g(p) − Q_r(p))/s_r` at the probabilities `probs`.
///
/// Non-finite values are dropped; every `p` must lie in `[0, 1]`.
/// Needs at least two finite values per sample and a reference with
/// non-zero standard deviation.
pub fn quantile_shifts(reference: &[f64], generated: &[f64], probs: &[f64]) -> MetricsResult<Vec<QuantileShift>> {
    let (r, _) = finite_sorted(reference);
    let (g, _) = finite_sorted(generated);
    let mr = moments_finite(&r, REF)?;
    require(GEN, g.len(), 2)?;
    quantile_shifts_sorted(&r, &g, mr.std, probs)
}

fn quantile_shifts_sorted(r: &[f64], g: &[f64], ref_std: f64, probs: &[f64]) -> MetricsResult<Vec<QuantileShift>> {
    if !(ref_std.is_finite() && ref_std > 0.0) {
        return Err(MetricsError::InvalidArgument(
            "reference standard deviation is zero; quantile shifts undefined".into(),
        ));
    }
    probs
        .iter()
        .map(|&p| {
            if !(0.0..=1.0).contains(&p) {
                return Err(MetricsError::InvalidArgument(format!("quantile probability {p} outside [0, 1]")));
            }
            let qr = quantile_sorted(r, p);
            let qg = quantile_sorted(g, p);
            let unc = (quantile_uncertainty(r, p).powi(2) + quantile_uncertainty(g, p).powi(2)).sqrt() / ref_std;
            Ok(QuantileShift {
                p,
                reference: qr,
                generated: qg,
                shift_in_std: Estimate { value: (qg - qr) / ref_std, uncertainty: unc },
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Incomplete gamma function and χ² distribution
// ---------------------------------------------------------------------------

/// Natural logarithm of the gamma function for `x > 0` (Lanczos, g = 7, n = 9;
/// relative accuracy ~1e-15).  Uses the reflection formula for `x < 0.5`.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.5 {
        // Γ(x)Γ(1−x) = π / sin(πx)
        let s = (std::f64::consts::PI * x).sin();
        return (std::f64::consts::PI / s.abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

const GAMMA_EPS: f64 = 1e-15;
const GAMMA_TINY: f64 = 1e-300;
const GAMMA_MAX_ITER: usize = 10_000;

fn gamma_series(a: f64, x: f64) -> f64 {
    // P(a,x) = e^{-x} x^a / Γ(a+1) Σ_n x^n / ((a+1)...(a+n))
    let mut ap = a;
    let mut del = 1.0 / a;
    let mut sum = del;
    for _ in 0..GAMMA_MAX_ITER {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * GAMMA_EPS {
            break;
        }
    }
    (sum.ln() - x + a * x.ln() - ln_gamma(a)).exp()
}

fn gamma_cont_frac(a: f64, x: f64) -> f64 {
    // Q(a,x) by the modified Lentz method (Numerical Recipes eq. 6.2.7).
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / GAMMA_TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..GAMMA_MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < GAMMA_TINY {
            d = GAMMA_TINY;
        }
        c = b + an / c;
        if c.abs() < GAMMA_TINY {
            c = GAMMA_TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < GAMMA_EPS {
            break;
        }
    }
    (h.ln() - x + a * x.ln() - ln_gamma(a)).exp()
}

/// Regularised lower incomplete gamma function `P(a, x) = γ(a, x)/Γ(a)`.
///
/// Defined for `a > 0`, `x ≥ 0`; returns NaN otherwise (and for NaN input),
/// and 1 for `x = +∞`.
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if !(a.is_finite() && a > 0.0) || x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        0.0
    } else if x.is_infinite() {
        1.0
    } else if x < a + 1.0 {
        gamma_series(a, x)
    } else {
        1.0 - gamma_cont_frac(a, x)
    }
}

/// Regularised upper incomplete gamma function `Q(a, x) = 1 − P(a, x)`,
/// computed directly (no cancellation) in the tail.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if !(a.is_finite() && a > 0.0) || x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        1.0
    } else if x.is_infinite() {
        0.0
    } else if x < a + 1.0 {
        1.0 - gamma_series(a, x)
    } else {
        gamma_cont_frac(a, x)
    }
}

/// Survival function of the χ² distribution, `P(χ²_ndf ≥ chi2) = Q(ndf/2, chi2/2)`.
///
/// Returns 1 for `ndf = 0` or `chi2 ≤ 0`, NaN for NaN `chi2`.
pub fn chi2_sf(chi2: f64, ndf: usize) -> f64 {
    if chi2.is_nan() {
        return f64::NAN;
    }
    if ndf == 0 || chi2 <= 0.0 {
        return 1.0;
    }
    gamma_q(ndf as f64 / 2.0, chi2 / 2.0)
}

// ---------------------------------------------------------------------------
// Binned χ²
// ---------------------------------------------------------------------------

/// How the χ² test bins the data (see the module docs for the rationale).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Binning {
    /// `bins` bins with inner edges at the reference quantiles `i/bins`
    /// (equal expected reference population); outer bins are open-ended.
    ReferenceQuantiles {
        /// Number of bins (≥ 2).
        bins: usize,
    },
    /// `bins` equal-width bins over the shared range `[min, max]` of both samples.
    Uniform {
        /// Number of bins (≥ 2).
        bins: usize,
    },
}

impl Default for Binning {
    fn default() -> Self {
        Binning::ReferenceQuantiles { bins: 40 }
    }
}

/// Result of a binned two-sample χ² test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chi2Result {
    /// The χ² value.
    pub chi2: f64,
    /// Degrees of freedom: used bins − 1.
    pub ndf: usize,
    /// `chi2 / ndf` (0 when `ndf = 0`, i.e. all data in one bin).
    pub chi2_per_ndf: f64,
    /// `P(χ²_ndf ≥ chi2)`; 1 when `ndf = 0`.
    pub p_value: f64,
    /// Number of bins used (non-empty in at least one sample).
    pub bins_used: usize,
    /// Bin edges, `bins_used_total + 1` values; the outer edges are the
    /// minimum and maximum of both samples (for quantile binning the outer
    /// bins are open-ended, so these are only indicative).
    pub edges: Vec<f64>,
}

/// Bin edges (including the outer edges) for two sorted, finite, non-empty samples.
fn bin_edges(binning: Binning, r: &[f64], g: &[f64]) -> MetricsResult<Vec<f64>> {
    bin_edges_with(binning, r, g, &|p| quantile_sorted(r, p))
}

/// [`bin_edges`] with the reference quantile function `ref_quantile`
/// (weighted samples pass their weighted quantile).
fn bin_edges_with(
    binning: Binning,
    r: &[f64],
    g: &[f64],
    ref_quantile: &dyn Fn(f64) -> f64,
) -> MetricsResult<Vec<f64>> {
    let lo = r[0].min(g[0]);
    let hi = r[r.len() - 1].max(g[g.len() - 1]);
    let mut inner: Vec<f64> = match binning {
        Binning::ReferenceQuantiles { bins } | Binning::Uniform { bins } if bins < 2 => {
            return Err(MetricsError::InvalidArgument(format!("number of bins must be ≥ 2, got {bins}")))
        }
        Binning::ReferenceQuantiles { bins } => (1..bins).map(|i| ref_quantile(i as f64 / bins as f64)).collect(),
        Binning::Uniform { bins } => (1..bins).map(|i| lo + (hi - lo) * i as f64 / bins as f64).collect(),
    };
    inner.dedup();
    // An inner edge equal to the overall minimum would leave an always-empty first bin.
    inner.retain(|&e| e > lo);
    let mut edges = Vec::with_capacity(inner.len() + 2);
    edges.push(lo);
    edges.extend(inner);
    edges.push(hi);
    Ok(edges)
}

/// Counts of a sorted sample in the bins defined by `edges` (outer bins open).
/// A value equal to an inner edge goes to the bin above it.
fn counts_sorted(sorted: &[f64], edges: &[f64]) -> Vec<u64> {
    let inner = &edges[1..edges.len() - 1];
    let mut counts = Vec::with_capacity(inner.len() + 1);
    let mut prev = 0usize;
    for &e in inner {
        let pos = sorted.partition_point(|&x| x < e);
        counts.push((pos - prev) as u64);
        prev = pos;
    }
    counts.push((sorted.len() - prev) as u64);
    counts
}

/// Two-sample χ² test of binned shapes (Gagunashvili "UU" test, see module docs).
///
/// Non-finite values are dropped; each sample needs at least one finite value.
pub fn chi2_test(reference: &[f64], generated: &[f64], binning: Binning) -> MetricsResult<Chi2Result> {
    let (r, _) = finite_sorted(reference);
    let (g, _) = finite_sorted(generated);
    require(REF, r.len(), 1)?;
    require(GEN, g.len(), 1)?;
    chi2_sorted(&r, &g, binning)
}

fn chi2_sorted(r: &[f64], g: &[f64], binning: Binning) -> MetricsResult<Chi2Result> {
    let edges = bin_edges(binning, r, g)?;
    let cr = counts_sorted(r, &edges);
    let cg = counts_sorted(g, &edges);
    let mut res = chi2_from_counts(&cr, &cg)?;
    res.edges = edges;
    Ok(res)
}

/// Two-sample χ² ("UU" test) from two unweighted histograms with the same bins.
///
/// `χ² = 1/(N M) Σ (M nᵢ − N mᵢ)² / (nᵢ + mᵢ)` over bins non-empty in at
/// least one histogram, `ndf = used bins − 1`.  Both totals must be > 0.
/// The returned `edges` are empty.
pub fn chi2_from_counts(reference: &[u64], generated: &[u64]) -> MetricsResult<Chi2Result> {
    if reference.len() != generated.len() {
        return Err(MetricsError::DimensionMismatch {
            context: "histogram bins".into(),
            expected: reference.len(),
            got: generated.len(),
        });
    }
    let n_tot: u64 = reference.iter().sum();
    let m_tot: u64 = generated.iter().sum();
    require(REF, n_tot as usize, 1)?;
    require(GEN, m_tot as usize, 1)?;
    let (nt, mt) = (n_tot as f64, m_tot as f64);
    let mut chi2 = 0.0;
    let mut used = 0usize;
    for (&n, &m) in reference.iter().zip(generated) {
        if n + m == 0 {
            continue;
        }
        used += 1;
        let (n, m) = (n as f64, m as f64);
        chi2 += (mt * n - nt * m).powi(2) / (n + m);
    }
    chi2 /= nt * mt;
    Ok(finish_chi2(chi2, used))
}

/// Two-sample χ² of the joint distribution of features `i` and `j`: a
/// `bins × bins` grid of the reference's marginal quantiles (so every row
/// and column holds the same reference count and the test sees the
/// dependence, not the marginals' shapes), [`chi2_from_counts`] on its
/// cells. Rows with a non-finite value in either feature are dropped.
/// Used to find the pairs of features a flow reproduces worst.
pub fn pair_chi2<R: AsRef<[f64]>>(
    reference: &[R],
    generated: &[R],
    i: usize,
    j: usize,
    bins: usize,
) -> MetricsResult<Chi2Result> {
    if bins < 2 {
        return Err(MetricsError::InvalidArgument(format!("number of bins must be ≥ 2, got {bins}")));
    }
    let pairs = |rows: &[R]| -> MetricsResult<Vec<[f64; 2]>> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let r = r.as_ref();
            let (Some(&a), Some(&b)) = (r.get(i), r.get(j)) else {
                return Err(MetricsError::DimensionMismatch {
                    context: "pair of features".into(),
                    expected: i.max(j) + 1,
                    got: r.len(),
                });
            };
            if a.is_finite() && b.is_finite() {
                out.push([a, b]);
            }
        }
        Ok(out)
    };
    let (r, g) = (pairs(reference)?, pairs(generated)?);
    require(REF, r.len(), 1)?;
    require(GEN, g.len(), 1)?;
    let edges = |c: usize| -> Vec<f64> {
        let mut v: Vec<f64> = r.iter().map(|p| p[c]).collect();
        v.sort_by(f64::total_cmp);
        let mut e: Vec<f64> = (1..bins).map(|k| quantile_sorted(&v, k as f64 / bins as f64)).collect();
        e.dedup();
        e
    };
    let (ea, eb) = (edges(0), edges(1));
    let cell = |p: &[f64; 2]| ea.partition_point(|&e| e <= p[0]) * (eb.len() + 1) + eb.partition_point(|&e| e <= p[1]);
    let n_cells = (ea.len() + 1) * (eb.len() + 1);
    let count = |v: &[[f64; 2]]| {
        let mut c = vec![0u64; n_cells];
        for p in v {
            c[cell(p)] += 1;
        }
        c
    };
    chi2_from_counts(&count(&r), &count(&g))
}

fn finish_chi2(chi2: f64, used: usize) -> Chi2Result {
    let ndf = used.saturating_sub(1);
    Chi2Result {
        chi2,
        ndf,
        chi2_per_ndf: if ndf > 0 { chi2 / ndf as f64 } else { 0.0 },
        p_value: chi2_sf(chi2, ndf),
        bins_used: used,
        edges: Vec::new(),
    }
}

/// χ² of two weighted histograms with the same bins.
///
/// `w`, `w2` are the per-bin sums of weights and of squared weights of the
/// reference; `v`, `v2` those of the generated sample.
/// `χ² = Σ (wᵢ/W − vᵢ/V)² / (w2ᵢ/W² + v2ᵢ/V²)` over bins with a non-zero
/// variance, `ndf = used bins − 1`.  Totals `W`, `V` must be positive.
pub fn chi2_weighted(w: &[f64], w2: &[f64], v: &[f64], v2: &[f64]) -> MetricsResult<Chi2Result> {
    let k = w.len();
    for (len, ctx) in [(w2.len(), "w2"), (v.len(), "v"), (v2.len(), "v2")] {
        if len != k {
            return Err(MetricsError::DimensionMismatch {
                context: format!("weighted histogram {ctx}"),
                expected: k,
                got: len,
            });
        }
    }
    let wt: f64 = w.iter().sum();
    let vt: f64 = v.iter().sum();
    if !(wt > 0.0 && vt > 0.0 && wt.is_finite() && vt.is_finite()) {
        return Err(MetricsError::InvalidArgument("weighted histogram totals must be positive and finite".into()));
    }
    let mut chi2 = 0.0;
    let mut used = 0usize;
    for i in 0..k {
        let var = w2[i] / (wt * wt) + v2[i] / (vt * vt);
        if !(var.is_finite() && var > 0.0) {
            continue;
        }
        used += 1;
        chi2 += (w[i] / wt - v[i] / vt).powi(2) / var;
    }
    Ok(finish_chi2(chi2, used))
}

// ---------------------------------------------------------------------------
// Kolmogorov–Smirnov
// ---------------------------------------------------------------------------

/// Result of a two-sample Kolmogorov–Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// `D = sup |F_r − F_g|`.
    pub statistic: f64,
    /// Effective sample size `N M/(N + M)`.
    pub n_eff: f64,
    /// Asymptotic p-value `Q_KS((√nₑ + 0.12 + 0.11/√nₑ) D)`.
    pub p_value: f64,
}

/// Survival function of the Kolmogorov distribution, `P(K > λ)`.
///
/// Uses the alternating series `2 Σ (−1)^{j−1} e^{−2j²λ²}` for `λ ≥ 1.18`
/// and the Jacobi-theta form `1 − √(2π)/λ Σ e^{−(2j−1)²π²/(8λ²)}` below,
/// both converged to double precision.  Returns 1 for `λ ≤ 0`, NaN for NaN.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        let pi2 = std::f64::consts::PI * std::f64::consts::PI;
        let y = -pi2 / (8.0 * lambda * lambda);
        let mut sum = 0.0;
        for j in 1..=50u32 {
            let k = (2 * j - 1) as f64;
            let term = (k * k * y).exp();
            sum += term;
            if term < 1e-17 * sum {
                break;
            }
        }
        (1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum).clamp(0.0, 1.0)
    } else {
        let mut sum = 0.0;
        let mut sign = 1.0;
        for j in 1..=100u32 {
            let jf = j as f64;
            let term = (-2.0 * jf * jf * lambda * lambda).exp();
            sum += sign * term;
            sign = -sign;
            if term < 1e-17 {
                break;
            }
        }
        (2.0 * sum).clamp(0.0, 1.0)
    }
}

/// Two-sample Kolmogorov–Smirnov test (non-finite values dropped).
pub fn ks_test(reference: &[f64], generated: &[f64]) -> MetricsResult<KsResult> {
    let (r, _) = finite_sorted(reference);
    let (g, _) = finite_sorted(generated);
    require(REF, r.len(), 1)?;
    require(GEN, g.len(), 1)?;
    Ok(ks_sorted(&r, &g))
}

fn ks_sorted(a: &[f64], b: &[f64]) -> KsResult {
    let (n, m) = (a.len(), b.len());
    let (nf, mf) = (n as f64, m as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    while i < n && j < m {
        let x = if a[i] <= b[j] { a[i] } else { b[j] };
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / nf - j as f64 / mf).abs());
    }
    let n_eff = nf * mf / (nf + mf);
    let sq = n_eff.sqrt();
    let lambda = (sq + 0.12 + 0.11 / sq) * d;
    KsResult { statistic: d, n_eff, p_value: kolmogorov_sf(lambda) }
}

// ---------------------------------------------------------------------------
// Wasserstein-1
// ---------------------------------------------------------------------------

/// Exact 1-D Wasserstein-1 distance `∫ |F_r − F_g| dx` of the empirical
/// distributions (non-finite values dropped).
pub fn wasserstein1(reference: &[f64], generated: &[f64]) -> MetricsResult<f64> {
    let (r, _) = finite_sorted(reference);
    let (g, _) = finite_sorted(generated);
    require(REF, r.len(), 1)?;
    require(GEN, g.len(), 1)?;
    Ok(wasserstein_sorted(&r, &g))
}

fn wasserstein_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len(), b.len());
    let (nf, mf) = (n as f64, m as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut prev = a[0].min(b[0]);
    let mut w = 0.0;
    while i < n || j < m {
        let take_a = j >= m || (i < n && a[i] <= b[j]);
        let x = if take_a { a[i] } else { b[j] };
        w += (i as f64 / nf - j as f64 / mf).abs() * (x - prev);
        prev = x;
        if take_a {
            i += 1;
        } else {
            j += 1;
        }
    }
    w
}

// ---------------------------------------------------------------------------
// Multivariate helpers
// ---------------------------------------------------------------------------

/// Finite rows of `rows` as a row-major buffer; checks the common dimension.
fn finite_rows<R: AsRef<[f64]>>(rows: &[R], dim: usize, which: &'static str) -> MetricsResult<(Vec<f64>, usize)> {
    let mut out = Vec::with_capacity(rows.len() * dim);
    let mut dropped = 0;
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        if row.len() != dim {
            return Err(MetricsError::DimensionMismatch {
                context: format!("{which} row {i}"),
                expected: dim,
                got: row.len(),
            });
        }
        if row.iter().all(|v| v.is_finite()) {
            out.extend_from_slice(row);
        } else {
            dropped += 1;
        }
    }
    Ok((out, dropped))
}

fn common_dim<R: AsRef<[f64]>>(reference: &[R], generated: &[R]) -> MetricsResult<usize> {
    let dim = reference.first().or(generated.first()).map(|r| r.as_ref().len()).unwrap_or(0);
    if dim == 0 {
        return Err(MetricsError::InvalidArgument("multivariate samples need rows of dimension ≥ 1".into()));
    }
    Ok(dim)
}

/// Random subsample (without replacement) of at most `max` rows.
fn subsample(data: &[f64], dim: usize, max: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    subsample_weighted(data, None, dim, max, rng).0
}

/// [`subsample`] of rows and, when given, their weights (the same rows, the
/// same random numbers as without weights).
fn subsample_weighted(
    data: &[f64],
    weights: Option<&[f64]>,
    dim: usize,
    max: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f64>, Option<Vec<f64>>) {
    let n = data.len() / dim;
    if n <= max {
        return (data.to_vec(), weights.map(<[f64]>::to_vec));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let (chosen, _) = idx.partial_shuffle(rng, max);
    let mut out = Vec::with_capacity(max * dim);
    for &i in chosen.iter() {
        out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
    }
    (out, weights.map(|w| chosen.iter().map(|&i| w[i]).collect()))
}

/// Standardises the pooled rows (`a` then `b`) in place with pooled mean/std.
fn standardize_pooled(pooled: &mut [f64], dim: usize) {
    let n = (pooled.len() / dim) as f64;
    for d in 0..dim {
        let mean = pooled.iter().skip(d).step_by(dim).sum::<f64>() / n;
        let var = pooled.iter().skip(d).step_by(dim).map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
        for x in pooled.iter_mut().skip(d).step_by(dim) {
            *x = (*x - mean) / sd;
        }
    }
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

// ---------------------------------------------------------------------------
// Energy distance
// ---------------------------------------------------------------------------

/// Largest allowed [`EnergyConfig::max_per_sample`]: the pooled distance
/// matrix of `2 × 5000` rows takes 400 MB.
pub const ENERGY_MAX_PER_SAMPLE: usize = 5000;

/// Configuration of [`energy_test`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyConfig {
    /// Each sample is subsampled to at most this many rows
    /// (2 ≤ value ≤ [`ENERGY_MAX_PER_SAMPLE`]).
    pub max_per_sample: usize,
    /// Number of permutations for the p-value.
    pub permutations: usize,
    /// Seed of the subsampling and the permutations (ChaCha8).
    pub seed: u64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig { max_per_sample: 1000, permutations: 200, seed: 0x5EED_E4E6 }
    }
}

/// Result of the energy-distance permutation test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyTestResult {
    /// Energy distance (U-statistic) in pooled-standardised units.
    pub statistic: f64,
    /// Permutation p-value `(1 + #{E_perm ≥ E_obs})/(1 + P)`.
    pub p_value: f64,
    /// Reference rows used (after dropping non-finite rows and subsampling).
    pub n_reference_used: usize,
    /// Generated rows used.
    pub n_generated_used: usize,
    /// Number of permutations.
    pub permutations: usize,
}

/// Energy-distance two-sample test with a seeded permutation p-value.
///
/// Rows with a non-finite coordinate are dropped; at least two rows per
/// sample must remain.
pub fn energy_test<R: AsRef<[f64]>>(
    reference: &[R],
    generated: &[R],
    config: &EnergyConfig,
) -> MetricsResult<EnergyTestResult> {
    let dim = common_dim(reference, generated)?;
    let (r, _) = finite_rows(reference, dim, REF)?;
    let (g, _) = finite_rows(generated, dim, GEN)?;
    energy_flat(&r, &g, dim, config)
}

fn energy_flat(r: &[f64], g: &[f64], dim: usize, config: &EnergyConfig) -> MetricsResult<EnergyTestResult> {
    if !(2..=ENERGY_MAX_PER_SAMPLE).contains(&config.max_per_sample) {
        return Err(MetricsError::InvalidArgument(format!(
            "energy test: max_per_sample must lie in [2, {ENERGY_MAX_PER_SAMPLE}], got {}",
            config.max_per_sample
        )));
    }
    require(REF, r.len() / dim, 2)?;
    require(GEN, g.len() / dim, 2)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut pooled = subsample(r, dim, config.max_per_sample, &mut rng);
    let n = pooled.len() / dim;
    pooled.extend(subsample(g, dim, config.max_per_sample, &mut rng));
    let total = pooled.len() / dim;
    let m = total - n;
    standardize_pooled(&mut pooled, dim);

    // Condensed upper-triangular distance matrix, row i holds j > i.
    let mut dmat = Vec::with_capacity(total * (total - 1) / 2);
    for i in 0..total {
        let pi = &pooled[i * dim..(i + 1) * dim];
        for j in (i + 1)..total {
            dmat.push(dist(pi, &pooled[j * dim..(j + 1) * dim]));
        }
    }
    let (nf, mf) = (n as f64, m as f64);
    let statistic = |labels: &[bool]| -> f64 {
        // labels[i] == true for the generated group.
        let (mut s_aa, mut s_bb, mut s_ab) = (0.0, 0.0, 0.0);
        let mut k = 0;
        for i in 0..total {
            let li = labels[i];
            let row = &dmat[k..k + (total - i - 1)];
            k += total - i - 1;
            let (mut same, mut cross) = (0.0, 0.0);
            for (d, &lj) in row.iter().zip(&labels[i + 1..]) {
                if lj == li {
                    same += d;
                } else {
                    cross += d;
                }
            }
            if li {
                s_bb += same;
            } else {
                s_aa += same;
            }
            s_ab += cross;
        }
        2.0 * s_ab / (nf * mf) - 2.0 * s_aa / (nf * (nf - 1.0)) - 2.0 * s_bb / (mf * (mf - 1.0))
    };
    let mut labels: Vec<bool> = (0..total).map(|i| i >= n).collect();
    let observed = statistic(&labels);
    let mut exceed = 0usize;
    for _ in 0..config.permutations {
        labels.shuffle(&mut rng);
        if statistic(&labels) >= observed {
            exceed += 1;
        }
    }
    Ok(EnergyTestResult {
        statistic: observed,
        p_value: (1 + exceed) as f64 / (1 + config.permutations) as f64,
        n_reference_used: n,
        n_generated_used: m,
        permutations: config.permutations,
    })
}

// ---------------------------------------------------------------------------
// Classifier two-sample test (k-NN with a k-d tree)
// ---------------------------------------------------------------------------

/// Configuration of [`classifier_test`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Number of neighbours `k` (≥ 1).
    pub k: usize,
    /// Number of stratified cross-validation folds (≥ 2).
    pub folds: usize,
    /// Each sample is subsampled to at most this many rows.
    pub max_per_sample: usize,
    /// Seed of the subsampling and the fold assignment (ChaCha8).
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig { k: 50, folds: 5, max_per_sample: 20_000, seed: 0xC1A5_51F1 }
    }
}

/// Result of the classifier two-sample test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTestResult {
    /// Out-of-fold ROC AUC of separating generated from reference (0.5 = indistinguishable).
    pub auc: f64,
    /// Standard deviation of the AUC under the null, `√((N+M+1)/(12 N M))`.
    pub auc_null_std: f64,
    /// `(auc − 0.5)/auc_null_std` (indicative).
    pub z_score: f64,
    /// Reference rows used.
    pub n_reference_used: usize,
    /// Generated rows used.
    pub n_generated_used: usize,
    /// Neighbours used.
    pub k: usize,
    /// Folds used.
    pub folds: usize,
    /// Weighted test only: the effective reference size `(Σw)²/Σw²` of the
    /// rows used (it replaces `N` in `auc_null_std`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_eff_reference: Option<f64>,
    /// Weighted test only: the effective generated size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_eff_generated: Option<f64>,
}

/// Mann–Whitney AUC `P(score₁ > score₀) + ½ P(=)` with mid-ranks for ties.
///
/// `labels[i] == true` marks the positive class.  Returns NaN if a class is empty.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let n = scores.len().min(labels.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n_pos = labels[..n].iter().filter(|&&l| l).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return f64::NAN;
    }
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]].total_cmp(&scores[order[i]]) == Ordering::Equal {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if labels[o] {
                rank_sum_pos += mid_rank;
            }
        }
        i = j + 1;
    }
    let (p, q) = (n_pos as f64, n_neg as f64);
    (rank_sum_pos - p * (p + 1.0) / 2.0) / (p * q)
}

/// Classifier two-sample test: out-of-fold AUC of a k-NN classifier
/// (see the module docs for the method and its justification).
///
/// Rows with a non-finite coordinate are dropped; each sample needs at least
/// `folds` rows, and every training set at least `k` rows.
pub fn classifier_test<R: AsRef<[f64]>>(
    reference: &[R],
    generated: &[R],
    config: &ClassifierConfig,
) -> MetricsResult<ClassifierTestResult> {
    let dim = common_dim(reference, generated)?;
    let (r, _) = finite_rows(reference, dim, REF)?;
    let (g, _) = finite_rows(generated, dim, GEN)?;
    classifier_flat(&r, &g, dim, config)
}

fn classifier_flat(r: &[f64], g: &[f64], dim: usize, config: &ClassifierConfig) -> MetricsResult<ClassifierTestResult> {
    classifier_core(r, None, g, None, dim, config)
}

/// The classifier test with optional per-row weights of either sample (see
/// [`classifier_test_weighted`]); without weights the unweighted arithmetic.
fn classifier_core(
    r: &[f64],
    rw: Option<&[f64]>,
    g: &[f64],
    gw: Option<&[f64]>,
    dim: usize,
    config: &ClassifierConfig,
) -> MetricsResult<ClassifierTestResult> {
    let (k, folds) = (config.k, config.folds);
    if k == 0 || folds < 2 || config.max_per_sample < folds {
        return Err(MetricsError::InvalidArgument(format!(
            "classifier test needs k ≥ 1, folds ≥ 2 and max_per_sample ≥ folds \
             (k = {k}, folds = {folds}, max_per_sample = {})",
            config.max_per_sample
        )));
    }
    require(REF, r.len() / dim, folds)?;
    require(GEN, g.len() / dim, folds)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (mut pooled, r_w) = subsample_weighted(r, rw, dim, config.max_per_sample, &mut rng);
    let n = pooled.len() / dim;
    let (g_rows, g_w) = subsample_weighted(g, gw, dim, config.max_per_sample, &mut rng);
    pooled.extend(g_rows);
    let total = pooled.len() / dim;
    let m = total - n;
    if total.saturating_sub(total / folds + 2) < k {
        return Err(MetricsError::InvalidArgument(format!("classifier test: k = {k} exceeds the training-set size")));
    }
    standardize_pooled(&mut pooled, dim);
    let labels: Vec<bool> = (0..total).map(|i| i >= n).collect();
    // Weighted: every row's weight, each class rescaled to mean 1 (the votes
    // then compare densities, not the classes' arbitrary weight totals).
    let weighted = r_w.is_some() || g_w.is_some();
    let mut sizes = None;
    let weights: Option<Vec<f64>> = if weighted {
        let mut all = Vec::with_capacity(total);
        let mut eff = [0.0; 2];
        for (c, (w, len, which)) in [(r_w, n, REF), (g_w, m, GEN)].into_iter().enumerate() {
            let w = w.unwrap_or_else(|| vec![1.0; len]);
            let sum: f64 = w.iter().sum();
            if !(sum > 0.0 && sum.is_finite()) {
                return Err(MetricsError::InvalidArgument(format!(
                    "classifier test: the {which} weights of the rows used sum to {sum}; a positive sum is needed"
                )));
            }
            eff[c] = sum * sum / w.iter().map(|v| v * v).sum::<f64>();
            let scale = len as f64 / sum;
            all.extend(w.iter().map(|v| v * scale));
        }
        sizes = Some(eff);
        Some(all)
    } else {
        None
    };

    // Stratified fold assignment.
    let mut fold_of = vec![0usize; total];
    for range in [0..n, n..total] {
        let mut idx: Vec<usize> = range.collect();
        idx.shuffle(&mut rng);
        for (pos, i) in idx.into_iter().enumerate() {
            fold_of[i] = pos % folds;
        }
    }

    let mut scores = vec![0.0; total];
    let mut heap = BinaryHeap::with_capacity(k + 1);
    for f in 0..folds {
        let train: Vec<usize> = (0..total).filter(|&i| fold_of[i] != f).collect();
        let tree = KdTree::new(&pooled, dim, train);
        for i in (0..total).filter(|&i| fold_of[i] == f) {
            tree.knn(&pooled[i * dim..(i + 1) * dim], k, &mut heap);
            scores[i] = match &weights {
                None => {
                    let n_gen = heap.iter().filter(|h| labels[h.1]).count();
                    n_gen as f64 / heap.len().max(1) as f64
                }
                Some(w) => {
                    let (mut wg, mut wr) = (0.0, 0.0);
                    for h in heap.iter() {
                        if labels[h.1] {
                            wg += w[h.1];
                        } else {
                            wr += w[h.1];
                        }
                    }
                    // A neighbourhood whose weights cancel to ≤ 0 has no density of that class.
                    let (wg, wr) = (wg.max(0.0), wr.max(0.0));
                    if wg + wr > 0.0 {
                        wg / (wg + wr)
                    } else {
                        0.5
                    }
                }
            };
        }
    }
    let (a, (nf, mf)) = match (&weights, sizes) {
        (Some(w), Some([ne, me])) => (auc_weighted(&scores, &labels, w), (ne, me)),
        _ => (auc(&scores, &labels), (n as f64, m as f64)),
    };
    let null_std = ((nf + mf + 1.0) / (12.0 * nf * mf)).sqrt();
    Ok(ClassifierTestResult {
        auc: a,
        auc_null_std: null_std,
        z_score: (a - 0.5) / null_std,
        n_reference_used: n,
        n_generated_used: m,
        k,
        folds,
        n_eff_reference: sizes.map(|s| s[0]),
        n_eff_generated: sizes.map(|s| s[1]),
    })
}

// ---------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------

/// Configuration of [`compare_feature`] and [`compare_samples`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// Binning of the χ² test.
    pub binning: Binning,
    /// Probabilities of the quantile shifts.
    pub quantiles: Vec<f64>,
    /// Energy-distance test settings.
    pub energy: EnergyConfig,
    /// Classifier test settings.
    pub classifier: ClassifierConfig,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            binning: Binning::default(),
            quantiles: DEFAULT_QUANTILES.to_vec(),
            energy: EnergyConfig::default(),
            classifier: ClassifierConfig::default(),
        }
    }
}

/// All one-dimensional metrics of one feature, generated versus reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Feature name.
    pub feature: String,
    /// Non-finite reference values dropped.
    pub n_dropped_reference: usize,
    /// Non-finite generated values dropped.
    pub n_dropped_generated: usize,
    /// Reference moments.
    pub reference: Moments,
    /// Generated moments.
    pub generated: Moments,
    /// Relative errors of mean and std.
    pub relative: RelativeErrors,
    /// Quantile shifts in units of the reference std.
    pub quantile_shifts: Vec<QuantileShift>,
    /// Binned χ² test.
    pub chi2: Chi2Result,
    /// Kolmogorov–Smirnov test.
    pub ks: KsResult,
    /// Wasserstein-1 distance in the units of the feature.
    pub wasserstein1: f64,
    /// Wasserstein-1 distance divided by the reference std.
    pub wasserstein1_in_std: f64,
}

/// Compares one feature (non-finite values dropped and counted).
///
/// Needs at least two finite values per sample and a reference with
/// non-zero spread.
pub fn compare_feature(
    name: &str,
    reference: &[f64],
    generated: &[f64],
    config: &CompareConfig,
) -> MetricsResult<Comparison> {
    let (r, dr) = finite_sorted(reference);
    let (g, dg) = finite_sorted(generated);
    let mr = moments_finite(&r, REF)?;
    let mg = moments_finite(&g, GEN)?;
    let quantile_shifts = quantile_shifts_sorted(&r, &g, mr.std, &config.quantiles)?;
    let chi2 = chi2_sorted(&r, &g, config.binning)?;
    let ks = ks_sorted(&r, &g);
    let w1 = wasserstein_sorted(&r, &g);
    Ok(Comparison {
        feature: name.to_string(),
        n_dropped_reference: dr,
        n_dropped_generated: dg,
        relative: relative_errors(&mr, &mg),
        reference: mr,
        generated: mg,
        quantile_shifts,
        chi2,
        ks,
        wasserstein1: w1,
        wasserstein1_in_std: w1 / mr.std,
    })
}

/// Comparison of two whole multivariate sample sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleComparison {
    /// Reference rows dropped because of a non-finite coordinate.
    pub n_dropped_reference: usize,
    /// Generated rows dropped because of a non-finite coordinate.
    pub n_dropped_generated: usize,
    /// One comparison per feature (on the rows kept).
    pub features: Vec<Comparison>,
    /// Energy-distance test on all features.
    pub energy: EnergyTestResult,
    /// Classifier two-sample test on all features.
    pub classifier: ClassifierTestResult,
}

/// Compares whole sample sets: every feature (named by `names`, one per
/// column) plus the energy and classifier tests on all features jointly.
///
/// Rows with any non-finite coordinate are dropped from everything.
pub fn compare_samples<R: AsRef<[f64]>, S: AsRef<str>>(
    names: &[S],
    reference: &[R],
    generated: &[R],
    config: &CompareConfig,
) -> MetricsResult<SampleComparison> {
    let dim = names.len();
    if dim == 0 {
        return Err(MetricsError::InvalidArgument("compare_samples needs at least one feature name".into()));
    }
    let (r, dr) = finite_rows(reference, dim, REF)?;
    let (g, dg) = finite_rows(generated, dim, GEN)?;
    let column = |data: &[f64], d: usize| -> Vec<f64> { data.iter().skip(d).step_by(dim).copied().collect() };
    let features = names
        .iter()
        .enumerate()
        .map(|(d, name)| compare_feature(name.as_ref(), &column(&r, d), &column(&g, d), config))
        .collect::<MetricsResult<Vec<_>>>()?;
    Ok(SampleComparison {
        n_dropped_reference: dr,
        n_dropped_generated: dg,
        features,
        energy: energy_flat(&r, &g, dim, &config.energy)?,
        classifier: classifier_flat(&r, &g, dim, &config.classifier)?,
    })
}
