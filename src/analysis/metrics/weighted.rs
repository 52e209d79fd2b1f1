//! Weighted two-sample metrics: a sample whose events carry Monte Carlo
//! weights (any sign) against another, weighted or not (the definitions are
//! in the parent module's docs, section *Weighted samples*).
//!
//! Every function takes the weights as `Option<&[f64]>`, one per value (or
//! row); `None` is an unweighted sample. Where **both** samples are
//! unweighted the bundles ([`compare_feature_weighted`],
//! [`compare_samples_weighted`], [`pair_chi2_weighted`]) call the unweighted
//! functions, so their results are bit for bit those of [`compare_feature`],
//! [`compare_samples`] and [`pair_chi2`]. Non-finite values are dropped with
//! their weights; a non-finite weight or a weight count that differs from the
//! value count is an error.

use super::*;

/// How the weights of one sample are distributed (for the report).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightSummary {
    /// Number of events.
    pub events: usize,
    /// `Σw`.
    pub sum: f64,
    /// `Σw²`.
    pub sum_sq: f64,
    /// Effective sample size `(Σw)²/Σw²` (Kish).
    pub n_eff: f64,
    /// Events with a negative weight.
    pub negative_events: usize,
    /// `negative_events / events`.
    pub negative_fraction: f64,
    /// `Σ_{w<0} |w| / Σ|w|`: the share of the absolute weight that is negative.
    pub negative_weight_fraction: f64,
}

/// The [`WeightSummary`] of `w` (non-finite weights are skipped).
pub fn weight_summary(w: &[f64]) -> WeightSummary {
    let (mut sum, mut sum_sq, mut neg, mut neg_abs, mut abs, mut events) = (0.0, 0.0, 0usize, 0.0, 0.0, 0usize);
    for &v in w.iter().filter(|v| v.is_finite()) {
        events += 1;
        sum += v;
        sum_sq += v * v;
        abs += v.abs();
        if v < 0.0 {
            neg += 1;
            neg_abs -= v;
        }
    }
    WeightSummary {
        events,
        sum,
        sum_sq,
        n_eff: if sum_sq > 0.0 { sum * sum / sum_sq } else { 0.0 },
        negative_events: neg,
        negative_fraction: if events > 0 { neg as f64 / events as f64 } else { 0.0 },
        negative_weight_fraction: if abs > 0.0 { neg_abs / abs } else { 0.0 },
    }
}

// ---------------------------------------------------------------------------
// One-dimensional weighted samples
// ---------------------------------------------------------------------------

/// Finite values sorted by (value, weight) with their weights; `weighted`
/// false for a sample given without weights (its weights are then all 1).
pub(super) struct WSample {
    pub(super) x: Vec<f64>,
    pub(super) w: Vec<f64>,
    pub(super) sum: f64,
    pub(super) sum_sq: f64,
    pub(super) weighted: bool,
}

impl WSample {
    fn n_eff(&self) -> f64 {
        self.sum * self.sum / self.sum_sq
    }
}

fn check_weights(n: usize, w: &[f64], which: &'static str) -> MetricsResult<()> {
    if w.len() != n {
        return Err(MetricsError::DimensionMismatch { context: format!("{which} weights"), expected: n, got: w.len() });
    }
    if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(MetricsError::InvalidArgument(format!("{which} weight {i} is {v}")));
    }
    Ok(())
}

/// The finite values of `x` with their weights, sorted; and the number dropped.
pub(super) fn wsorted(x: &[f64], w: Option<&[f64]>, which: &'static str) -> MetricsResult<(WSample, usize)> {
    let Some(w) = w else {
        let (x, dropped) = finite_sorted(x);
        let n = x.len() as f64;
        return Ok((WSample { w: vec![1.0; x.len()], x, sum: n, sum_sq: n, weighted: false }, dropped));
    };
    check_weights(x.len(), w, which)?;
    let mut pairs: Vec<(f64, f64)> = x.iter().zip(w).filter(|(v, _)| v.is_finite()).map(|(&v, &w)| (v, w)).collect();
    let dropped = x.len() - pairs.len();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (x, w): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let sum = w.iter().sum();
    let sum_sq = w.iter().map(|v| v * v).sum();
    Ok((WSample { x, w, sum, sum_sq, weighted: true }, dropped))
}

fn positive_sum(s: &WSample, which: &'static str) -> MetricsResult<()> {
    if s.sum > 0.0 && s.sum.is_finite() {
        Ok(())
    } else {
        Err(MetricsError::InvalidArgument(format!("{which} weights sum to {}; a positive sum is needed", s.sum)))
    }
}

/// Moments of a sorted weighted sample; an unweighted one gets [`moments`]'s numbers.
pub(super) fn wmoments(s: &WSample, which: &'static str) -> MetricsResult<Moments> {
    if !s.weighted {
        return moments_finite(&s.x, which);
    }
    require(which, s.x.len(), 2)?;
    positive_sum(s, which)?;
    let sw = s.sum;
    let mean = s.x.iter().zip(&s.w).map(|(x, w)| w * x).sum::<f64>() / sw;
    let mut m2 = 0.0;
    for (&x, &w) in s.x.iter().zip(&s.w) {
        m2 += w * (x - mean) * (x - mean);
    }
    let denom = sw - s.sum_sq / sw;
    let n_eff = s.n_eff();
    if !(denom > 0.0 && n_eff > 1.0) {
        return Err(MetricsError::InvalidArgument(format!(
            "{which} sample: effective size (Σw)²/Σw² = {n_eff} ≤ 1, no weighted variance"
        )));
    }
    let var = m2 / denom;
    if var.is_nan() || var < 0.0 {
        return Err(MetricsError::InvalidArgument(format!(
            "{which} sample: the weighted variance is {var} (negative weights dominate)"
        )));
    }
    // Linearised (sandwich) variances of the two ratio estimators,
    // Σw²(x−x̄)²/W² and Σw²((x−x̄)² − s²)²/W², times n_eff/(n_eff − 1)
    // (so that σ(x̄) = s/√n exactly for unit weights).
    let scale = n_eff / (n_eff - 1.0) / (sw * sw);
    let (mut v_mean, mut v_var) = (0.0, 0.0);
    for (&x, &w) in s.x.iter().zip(&s.w) {
        let d2 = (x - mean) * (x - mean);
        v_mean += w * w * d2;
        v_var += w * w * (d2 - var) * (d2 - var);
    }
    let std = var.sqrt();
    let std_err = if var > 0.0 { (v_var * scale / (4.0 * var)).sqrt() } else { 0.0 };
    Ok(Moments {
        n: s.x.len(),
        mean,
        mean_err: (v_mean * scale).sqrt(),
        std,
        std_err,
        sum_weights: Some(sw),
        n_eff: Some(n_eff),
    })
}

/// Weighted mean, standard deviation and their uncertainties (see the
/// module docs); `None` weights give [`moments`].
///
/// Needs at least two finite values, a positive `Σw` and an effective size
/// above 1.
pub fn moments_weighted(x: &[f64], w: Option<&[f64]>) -> MetricsResult<Moments> {
    let (s, _) = wsorted(x, w, "input")?;
    wmoments(&s, "input")
}

/// The plotting positions of a sorted weighted sample: `p_k = (M_k − M_1)/(M_n − M_1)`
/// with `M_k = Σ_{j<k} w_j + w_k/2`, made non-decreasing by a running maximum.
pub(super) fn positions(s: &WSample, which: &'static str) -> MetricsResult<Vec<f64>> {
    let n = s.x.len();
    require(which, n, 1)?;
    if n == 1 {
        return Ok(vec![0.0]);
    }
    let mut mid = Vec::with_capacity(n);
    let mut cum = 0.0;
    for &w in &s.w {
        mid.push(cum + 0.5 * w);
        cum += w;
    }
    let (first, span) = (mid[0], mid[n - 1] - mid[0]);
    if !(span > 0.0 && span.is_finite()) {
        return Err(MetricsError::InvalidArgument(format!(
            "{which} weights: the weight between the smallest and largest value is {span}; weighted quantiles need it positive"
        )));
    }
    let mut run = f64::NEG_INFINITY;
    Ok(mid
        .into_iter()
        .map(|m| {
            run = run.max((m - first) / span);
            run
        })
        .collect())
}

/// Weighted quantile of a sorted sample with its [`positions`].
pub(super) fn wquantile_at(x: &[f64], pos: &[f64], p: f64) -> f64 {
    if x.is_empty() || p.is_nan() {
        return f64::NAN;
    }
    let p = p.clamp(0.0, 1.0);
    let k = pos.partition_point(|&q| q < p);
    if k == 0 {
        return x[0];
    }
    if k >= x.len() {
        return x[x.len() - 1];
    }
    let frac = (p - pos[k - 1]) / (pos[k] - pos[k - 1]);
    x[k - 1] + frac * (x[k] - x[k - 1])
}

/// Weighted quantiles of the finite values of `x` at the probabilities
/// `probs` (clamped to `[0, 1]`; see the module docs for the definition;
/// `None` weights give Hyndman & Fan type 7).
pub fn quantiles_weighted(x: &[f64], w: Option<&[f64]>, probs: &[f64]) -> MetricsResult<Vec<f64>> {
    let (s, _) = wsorted(x, w, "input")?;
    let pos = positions(&s, "input")?;
    Ok(probs.iter().map(|&p| wquantile_at(&s.x, &pos, p)).collect())
}

/// A sorted weighted sample with its plotting positions, ready for quantiles.
struct Quantiles<'a> {
    s: &'a WSample,
    pos: Vec<f64>,
}

impl<'a> Quantiles<'a> {
    fn new(s: &'a WSample, which: &'static str) -> MetricsResult<Self> {
        Ok(Quantiles { s, pos: if s.weighted { positions(s, which)? } else { Vec::new() } })
    }

    fn at(&self, p: f64) -> f64 {
        if self.s.weighted {
            wquantile_at(&self.s.x, &self.pos, p)
        } else {
            quantile_sorted(&self.s.x, p)
        }
    }

    /// `σ(Q_p)` as [`quantile_uncertainty`] with `n_eff` in place of `n`.
    fn uncertainty(&self, p: f64) -> f64 {
        if !self.s.weighted {
            return quantile_uncertainty(&self.s.x, p);
        }
        let n = self.s.n_eff();
        let h = 0.5 * n.powf(-1.0 / 3.0);
        let (lo, hi) = ((p - h).max(0.0), (p + h).min(1.0));
        if hi <= lo {
            return 0.0;
        }
        let sparsity = (self.at(hi) - self.at(lo)) / (hi - lo);
        (p * (1.0 - p) / n).sqrt() * sparsity
    }
}

fn wquantile_shifts(r: &WSample, g: &WSample, ref_std: f64, probs: &[f64]) -> MetricsResult<Vec<QuantileShift>> {
    if !r.weighted && !g.weighted {
        return quantile_shifts_sorted(&r.x, &g.x, ref_std, probs);
    }
    if !(ref_std.is_finite() && ref_std > 0.0) {
        return Err(MetricsError::InvalidArgument(
            "reference standard deviation is zero; quantile shifts undefined".into(),
        ));
    }
    let (qr, qg) = (Quantiles::new(r, REF)?, Quantiles::new(g, GEN)?);
    probs
        .iter()
        .map(|&p| {
            if !(0.0..=1.0).contains(&p) {
                return Err(MetricsError::InvalidArgument(format!("quantile probability {p} outside [0, 1]")));
            }
            let (a, b) = (qr.at(p), qg.at(p));
            let unc = (qr.uncertainty(p).powi(2) + qg.uncertainty(p).powi(2)).sqrt() / ref_std;
            Ok(QuantileShift {
                p,
                reference: a,
                generated: b,
                shift_in_std: Estimate { value: (b - a) / ref_std, uncertainty: unc },
            })
        })
        .collect()
}

/// Weighted quantile shifts `(Q_g(p) − Q_r(p))/s_r` (weighted quantiles and
/// the weighted reference std; uncertainties with `n_eff`).
pub fn quantile_shifts_weighted(
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
    probs: &[f64],
) -> MetricsResult<Vec<QuantileShift>> {
    let (r, _) = wsorted(reference, reference_weights, REF)?;
    let (g, _) = wsorted(generated, generated_weights, GEN)?;
    let mr = wmoments(&r, REF)?;
    require(GEN, g.x.len(), 2)?;
    wquantile_shifts(&r, &g, mr.std, probs)
}

/// Per-bin `Σw` and `Σw²` of a sorted weighted sample in the bins of `edges`
/// (outer bins open; a value on an inner edge goes to the bin above).
fn wsums(s: &WSample, edges: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let inner = &edges[1..edges.len() - 1];
    let (mut sw, mut sw2) = (Vec::with_capacity(inner.len() + 1), Vec::with_capacity(inner.len() + 1));
    let mut prev = 0usize;
    let mut push = |from: usize, to: usize| {
        let w = &s.w[from..to];
        sw.push(w.iter().sum::<f64>());
        sw2.push(w.iter().map(|v| v * v).sum::<f64>());
    };
    for &e in inner {
        let pos = s.x.partition_point(|&x| x < e);
        push(prev, pos);
        prev = pos;
    }
    push(prev, s.x.len());
    (sw, sw2)
}

fn wchi2(r: &WSample, g: &WSample, binning: Binning) -> MetricsResult<Chi2Result> {
    if !r.weighted && !g.weighted {
        return chi2_sorted(&r.x, &g.x, binning);
    }
    positive_sum(r, REF)?;
    positive_sum(g, GEN)?;
    let q = Quantiles::new(r, REF)?;
    let edges = bin_edges_with(binning, &r.x, &g.x, &|p| q.at(p))?;
    let (w, w2) = wsums(r, &edges);
    let (v, v2) = wsums(g, &edges);
    let mut res = chi2_weighted(&w, &w2, &v, &v2)?;
    res.edges = edges;
    Ok(res)
}

/// Binned χ² of two samples, either weighted: the bins of [`chi2_test`]
/// (reference quantiles from the weighted reference), per-bin `Σw` and
/// `Σw²`, and [`chi2_weighted`]. Both unweighted: [`chi2_test`].
pub fn chi2_test_weighted(
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
    binning: Binning,
) -> MetricsResult<Chi2Result> {
    let (r, _) = wsorted(reference, reference_weights, REF)?;
    let (g, _) = wsorted(generated, generated_weights, GEN)?;
    require(REF, r.x.len(), 1)?;
    require(GEN, g.x.len(), 1)?;
    wchi2(&r, &g, binning)
}

/// Weighted KS: `D = sup |F_r − F_g|` of the weighted ECDFs, the p-value with
/// the effective sizes.
fn wks(a: &WSample, b: &WSample) -> KsResult {
    if !a.weighted && !b.weighted {
        return ks_sorted(&a.x, &b.x);
    }
    let (n, m) = (a.x.len(), b.x.len());
    let (mut i, mut j) = (0usize, 0usize);
    let (mut ca, mut cb) = (0.0, 0.0);
    let mut d: f64 = 0.0;
    while i < n && j < m {
        let x = if a.x[i] <= b.x[j] { a.x[i] } else { b.x[j] };
        while i < n && a.x[i] <= x {
            ca += a.w[i];
            i += 1;
        }
        while j < m && b.x[j] <= x {
            cb += b.w[j];
            j += 1;
        }
        d = d.max((ca / a.sum - cb / b.sum).abs());
    }
    // One sample exhausted: the other's ECDF still moves (with negative weights it need not be monotone).
    while i < n {
        ca += a.w[i];
        i += 1;
        if i == n || a.x[i] != a.x[i - 1] {
            d = d.max((ca / a.sum - cb / b.sum).abs());
        }
    }
    while j < m {
        cb += b.w[j];
        j += 1;
        if j == m || b.x[j] != b.x[j - 1] {
            d = d.max((ca / a.sum - cb / b.sum).abs());
        }
    }
    let (na, nb) = (a.n_eff(), b.n_eff());
    let n_eff = na * nb / (na + nb);
    let sq = n_eff.sqrt();
    let lambda = (sq + 0.12 + 0.11 / sq) * d;
    KsResult { statistic: d, n_eff, p_value: kolmogorov_sf(lambda) }
}

/// Weighted two-sample Kolmogorov–Smirnov test (see the module docs);
/// both unweighted: [`ks_test`].
pub fn ks_test_weighted(
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
) -> MetricsResult<KsResult> {
    let (r, g) = two_samples(reference, reference_weights, generated, generated_weights)?;
    Ok(wks(&r, &g))
}

/// Both samples sorted with their weights, each non-empty with a positive weight sum.
fn two_samples(
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
) -> MetricsResult<(WSample, WSample)> {
    let (r, _) = wsorted(reference, reference_weights, REF)?;
    let (g, _) = wsorted(generated, generated_weights, GEN)?;
    require(REF, r.x.len(), 1)?;
    require(GEN, g.x.len(), 1)?;
    positive_sum(&r, REF)?;
    positive_sum(&g, GEN)?;
    Ok((r, g))
}

fn wwasserstein(a: &WSample, b: &WSample) -> f64 {
    if !a.weighted && !b.weighted {
        return wasserstein_sorted(&a.x, &b.x);
    }
    let (n, m) = (a.x.len(), b.x.len());
    let (mut i, mut j) = (0usize, 0usize);
    let (mut ca, mut cb) = (0.0, 0.0);
    let mut prev = a.x[0].min(b.x[0]);
    let mut w = 0.0;
    while i < n || j < m {
        let take_a = j >= m || (i < n && a.x[i] <= b.x[j]);
        let x = if take_a { a.x[i] } else { b.x[j] };
        w += (ca / a.sum - cb / b.sum).abs() * (x - prev);
        prev = x;
        if take_a {
            ca += a.w[i];
            i += 1;
        } else {
            cb += b.w[j];
            j += 1;
        }
    }
    w
}

/// Weighted Wasserstein-1 `∫ |F_r − F_g| dx` of the weighted ECDFs;
/// both unweighted: [`wasserstein1`].
pub fn wasserstein1_weighted(
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
) -> MetricsResult<f64> {
    let (r, g) = two_samples(reference, reference_weights, generated, generated_weights)?;
    Ok(wwasserstein(&r, &g))
}

/// [`compare_feature`] with per-value weights of either sample (see the
/// module docs, *Weighted samples*). Both `None`: [`compare_feature`]
/// itself. The weighted sample's [`Moments`] carry `sum_weights` and `n_eff`.
pub fn compare_feature_weighted(
    name: &str,
    reference: &[f64],
    reference_weights: Option<&[f64]>,
    generated: &[f64],
    generated_weights: Option<&[f64]>,
    config: &CompareConfig,
) -> MetricsResult<Comparison> {
    if reference_weights.is_none() && generated_weights.is_none() {
        return compare_feature(name, reference, generated, config);
    }
    let (r, dr) = wsorted(reference, reference_weights, REF)?;
    let (g, dg) = wsorted(generated, generated_weights, GEN)?;
    let mr = wmoments(&r, REF)?;
    let mg = wmoments(&g, GEN)?;
    positive_sum(&g, GEN)?;
    let quantile_shifts = wquantile_shifts(&r, &g, mr.std, &config.quantiles)?;
    let chi2 = wchi2(&r, &g, config.binning)?;
    let ks = wks(&r, &g);
    let w1 = wwasserstein(&r, &g);
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

// ---------------------------------------------------------------------------
// Weighted AUC, classifier, energy
// ---------------------------------------------------------------------------

/// Weighted Mann–Whitney AUC: `Σ_{i∈pos, j∈neg} wᵢ wⱼ ([sᵢ > sⱼ] + ½[sᵢ = sⱼ]) / (Σ_pos w · Σ_neg w)`.
///
/// `labels[i] == true` marks the positive class. With unit weights it is
/// [`auc`]. NaN when a class's weights do not sum to a positive number.
pub fn auc_weighted(scores: &[f64], labels: &[bool], weights: &[f64]) -> f64 {
    let n = scores.len().min(labels.len()).min(weights.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut pos_total, mut neg_total) = (0.0, 0.0);
    for i in 0..n {
        if labels[i] {
            pos_total += weights[i];
        } else {
            neg_total += weights[i];
        }
    }
    if !(pos_total > 0.0 && neg_total > 0.0) {
        return f64::NAN;
    }
    let (mut num, mut neg_below) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]].total_cmp(&scores[order[i]]) == Ordering::Equal {
            j += 1;
        }
        let (mut p, mut q) = (0.0, 0.0);
        for &o in &order[i..=j] {
            if labels[o] {
                p += weights[o];
            } else {
                q += weights[o];
            }
        }
        num += p * (neg_below + 0.5 * q);
        neg_below += q;
        i = j + 1;
    }
    num / (pos_total * neg_total)
}

/// Finite rows with their weights; the number of rows dropped.
fn finite_rows_weighted<R: AsRef<[f64]>>(
    rows: &[R],
    w: Option<&[f64]>,
    dim: usize,
    which: &'static str,
) -> MetricsResult<(Vec<f64>, Option<Vec<f64>>, usize)> {
    let Some(w) = w else {
        let (r, d) = finite_rows(rows, dim, which)?;
        return Ok((r, None, d));
    };
    check_weights(rows.len(), w, which)?;
    let (r, d) = finite_rows(rows, dim, which)?;
    let kept: Vec<f64> =
        rows.iter().zip(w).filter(|(r, _)| r.as_ref().iter().all(|v| v.is_finite())).map(|(_, &w)| w).collect();
    Ok((r, Some(kept), d))
}

/// Classifier two-sample test with sample weights: each event's k-NN score
/// is the fraction of generated weight among its neighbours (each class's
/// weights rescaled to mean 1; a class's neighbour weight below zero counts
/// as zero) and the AUC is [`auc_weighted`]; `auc_null_std` uses the
/// effective sizes. Both `None`: [`classifier_test`]; unit weights give its
/// scores and AUC.
pub fn classifier_test_weighted<R: AsRef<[f64]>>(
    reference: &[R],
    reference_weights: Option<&[f64]>,
    generated: &[R],
    generated_weights: Option<&[f64]>,
    config: &ClassifierConfig,
) -> MetricsResult<ClassifierTestResult> {
    let dim = common_dim(reference, generated)?;
    let (r, rw, _) = finite_rows_weighted(reference, reference_weights, dim, REF)?;
    let (g, gw, _) = finite_rows_weighted(generated, generated_weights, dim, GEN)?;
    classifier_core(&r, rw.as_deref(), &g, gw.as_deref(), dim, config)
}

/// The energy distance of weighted samples, without a p-value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedEnergyResult {
    /// Weighted V-statistic `2 Σ aᵢ bⱼ |xᵢ − yⱼ| − Σ aᵢ aⱼ |xᵢ − xⱼ| − Σ bᵢ bⱼ |yᵢ − yⱼ|`
    /// (`a = w/Σw` of the reference rows used, `b` of the compared rows), in
    /// pooled-standardised units. It includes the `i = j` terms (zero
    /// distance), so it is positive under the null by `O(1/n_eff)`: not the
    /// U-statistic of [`EnergyTestResult::statistic`].
    pub statistic: f64,
    /// Reference rows used.
    pub n_reference_used: usize,
    /// Compared rows used.
    pub n_generated_used: usize,
    /// `(Σw)²/Σw²` of the reference rows used.
    pub n_eff_reference: f64,
    /// `(Σw)²/Σw²` of the compared rows used.
    pub n_eff_generated: f64,
    /// Why there is no p-value.
    pub note: String,
}

/// Why [`WeightedEnergyResult`] has no p-value.
pub const WEIGHTED_ENERGY_NOTE: &str = "no p-value: a permutation test is unsound with weights (the weighted \
     reference's events are not drawn from the distribution they represent, so they are not exchangeable with \
     the other sample's under the null)";

/// Weighted energy distance (V-statistic, see [`WeightedEnergyResult`]) of
/// two samples, either weighted, with the subsampling and pooled
/// standardisation of [`energy_test`]; no permutation p-value (see
/// [`WEIGHTED_ENERGY_NOTE`]).
pub fn energy_test_weighted<R: AsRef<[f64]>>(
    reference: &[R],
    reference_weights: Option<&[f64]>,
    generated: &[R],
    generated_weights: Option<&[f64]>,
    config: &EnergyConfig,
) -> MetricsResult<WeightedEnergyResult> {
    let dim = common_dim(reference, generated)?;
    let (r, rw, _) = finite_rows_weighted(reference, reference_weights, dim, REF)?;
    let (g, gw, _) = finite_rows_weighted(generated, generated_weights, dim, GEN)?;
    energy_weighted_flat(&r, rw.as_deref(), &g, gw.as_deref(), dim, config)
}

fn energy_weighted_flat(
    r: &[f64],
    rw: Option<&[f64]>,
    g: &[f64],
    gw: Option<&[f64]>,
    dim: usize,
    config: &EnergyConfig,
) -> MetricsResult<WeightedEnergyResult> {
    if !(2..=ENERGY_MAX_PER_SAMPLE).contains(&config.max_per_sample) {
        return Err(MetricsError::InvalidArgument(format!(
            "energy test: max_per_sample must lie in [2, {ENERGY_MAX_PER_SAMPLE}], got {}",
            config.max_per_sample
        )));
    }
    require(REF, r.len() / dim, 2)?;
    require(GEN, g.len() / dim, 2)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (mut pooled, a) = subsample_weighted(r, rw, dim, config.max_per_sample, &mut rng);
    let n = pooled.len() / dim;
    let (g_rows, b) = subsample_weighted(g, gw, dim, config.max_per_sample, &mut rng);
    pooled.extend(g_rows);
    let total = pooled.len() / dim;
    let m = total - n;
    standardize_pooled(&mut pooled, dim);
    let norm = |w: Option<Vec<f64>>, len: usize, which: &'static str| -> MetricsResult<(Vec<f64>, f64)> {
        let w = w.unwrap_or_else(|| vec![1.0; len]);
        let sum: f64 = w.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return Err(MetricsError::InvalidArgument(format!(
                "energy test: the {which} weights of the rows used sum to {sum}; a positive sum is needed"
            )));
        }
        let n_eff = sum * sum / w.iter().map(|v| v * v).sum::<f64>();
        Ok((w.into_iter().map(|v| v / sum).collect(), n_eff))
    };
    let (a, ne) = norm(a, n, REF)?;
    let (b, me) = norm(b, m, GEN)?;
    let c: Vec<f64> = a.into_iter().chain(b).collect();
    let (mut s_aa, mut s_bb, mut s_ab) = (0.0, 0.0, 0.0);
    for i in 0..total {
        let pi = &pooled[i * dim..(i + 1) * dim];
        for j in (i + 1)..total {
            let d = dist(pi, &pooled[j * dim..(j + 1) * dim]) * c[i] * c[j];
            match (i >= n, j >= n) {
                (false, false) => s_aa += d,
                (true, true) => s_bb += d,
                _ => s_ab += d,
            }
        }
    }
    Ok(WeightedEnergyResult {
        statistic: 2.0 * s_ab - 2.0 * s_aa - 2.0 * s_bb,
        n_reference_used: n,
        n_generated_used: m,
        n_eff_reference: ne,
        n_eff_generated: me,
        note: WEIGHTED_ENERGY_NOTE.into(),
    })
}

// ---------------------------------------------------------------------------
// Pairs and bundles
// ---------------------------------------------------------------------------

/// [`pair_chi2`] with weights: the `bins × bins` grid of the weighted
/// reference's marginal quantiles, per-cell `Σw` and `Σw²`, and
/// [`chi2_weighted`]. Both `None`: [`pair_chi2`].
pub fn pair_chi2_weighted<R: AsRef<[f64]>>(
    reference: &[R],
    reference_weights: Option<&[f64]>,
    generated: &[R],
    generated_weights: Option<&[f64]>,
    i: usize,
    j: usize,
    bins: usize,
) -> MetricsResult<Chi2Result> {
    if reference_weights.is_none() && generated_weights.is_none() {
        return pair_chi2(reference, generated, i, j, bins);
    }
    if bins < 2 {
        return Err(MetricsError::InvalidArgument(format!("number of bins must be ≥ 2, got {bins}")));
    }
    let pairs = |rows: &[R], w: Option<&[f64]>, which: &'static str| -> MetricsResult<Vec<([f64; 2], f64)>> {
        if let Some(w) = w {
            check_weights(rows.len(), w, which)?;
        }
        let mut out = Vec::with_capacity(rows.len());
        for (k, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            let (Some(&a), Some(&b)) = (r.get(i), r.get(j)) else {
                return Err(MetricsError::DimensionMismatch {
                    context: "pair of features".into(),
                    expected: i.max(j) + 1,
                    got: r.len(),
                });
            };
            if a.is_finite() && b.is_finite() {
                out.push(([a, b], w.map_or(1.0, |w| w[k])));
            }
        }
        Ok(out)
    };
    let r = pairs(reference, reference_weights, REF)?;
    let g = pairs(generated, generated_weights, GEN)?;
    require(REF, r.len(), 1)?;
    require(GEN, g.len(), 1)?;
    let edges = |c: usize| -> MetricsResult<Vec<f64>> {
        let xs: Vec<f64> = r.iter().map(|p| p.0[c]).collect();
        let ws: Vec<f64> = r.iter().map(|p| p.1).collect();
        let (s, _) = wsorted(&xs, reference_weights.map(|_| ws.as_slice()), REF)?;
        let q = Quantiles::new(&s, REF)?;
        let mut e: Vec<f64> = (1..bins).map(|k| q.at(k as f64 / bins as f64)).collect();
        e.dedup();
        Ok(e)
    };
    let (ea, eb) = (edges(0)?, edges(1)?);
    let cell = |p: &[f64; 2]| ea.partition_point(|&e| e <= p[0]) * (eb.len() + 1) + eb.partition_point(|&e| e <= p[1]);
    let n_cells = (ea.len() + 1) * (eb.len() + 1);
    let sums = |v: &[([f64; 2], f64)]| {
        let (mut s, mut s2) = (vec![0.0; n_cells], vec![0.0; n_cells]);
        for (p, w) in v {
            let c = cell(p);
            s[c] += w;
            s2[c] += w * w;
        }
        (s, s2)
    };
    let ((w, w2), (v, v2)) = (sums(&r), sums(&g));
    chi2_weighted(&w, &w2, &v, &v2)
}

/// [`compare_samples`] with per-row weights of either sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedSampleComparison {
    /// Reference rows dropped because of a non-finite coordinate.
    pub n_dropped_reference: usize,
    /// Generated rows dropped because of a non-finite coordinate.
    pub n_dropped_generated: usize,
    /// One comparison per feature (on the rows kept).
    pub features: Vec<Comparison>,
    /// The energy permutation test, when neither sample is weighted.
    pub energy: Option<EnergyTestResult>,
    /// The weighted energy distance (no p-value), when a sample is weighted.
    pub energy_weighted: Option<WeightedEnergyResult>,
    /// Classifier two-sample test on all features (weighted).
    pub classifier: ClassifierTestResult,
}

/// Compares whole sample sets of which either may be weighted: every
/// feature by [`compare_feature_weighted`], the classifier test with
/// weights, and the energy distance: the permutation test when neither
/// sample is weighted (then every number is [`compare_samples`]'s), the
/// weighted V-statistic without a p-value otherwise.
pub fn compare_samples_weighted<R: AsRef<[f64]>, S: AsRef<str>>(
    names: &[S],
    reference: &[R],
    reference_weights: Option<&[f64]>,
    generated: &[R],
    generated_weights: Option<&[f64]>,
    config: &CompareConfig,
) -> MetricsResult<WeightedSampleComparison> {
    let dim = names.len();
    if dim == 0 {
        return Err(MetricsError::InvalidArgument("compare_samples needs at least one feature name".into()));
    }
    let (r, rw, dr) = finite_rows_weighted(reference, reference_weights, dim, REF)?;
    let (g, gw, dg) = finite_rows_weighted(generated, generated_weights, dim, GEN)?;
    let column = |data: &[f64], d: usize| -> Vec<f64> { data.iter().skip(d).step_by(dim).copied().collect() };
    let features = names
        .iter()
        .enumerate()
        .map(|(d, name)| {
            compare_feature_weighted(
                name.as_ref(),
                &column(&r, d),
                rw.as_deref(),
                &column(&g, d),
                gw.as_deref(),
                config,
            )
        })
        .collect::<MetricsResult<Vec<_>>>()?;
    let weighted = rw.is_some() || gw.is_some();
    Ok(WeightedSampleComparison {
        n_dropped_reference: dr,
        n_dropped_generated: dg,
        features,
        energy: if weighted { None } else { Some(energy_flat(&r, &g, dim, &config.energy)?) },
        energy_weighted: if weighted {
            Some(energy_weighted_flat(&r, rw.as_deref(), &g, gw.as_deref(), dim, &config.energy)?)
        } else {
            None
        },
        classifier: classifier_core(&r, rw.as_deref(), &g, gw.as_deref(), dim, &config.classifier)?,
    })
}
