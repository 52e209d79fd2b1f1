//! Weighted references in the analysis: every weighted statistic against an
//! independent NumPy implementation on the same numbers (negative weights
//! included); unit weights reproduce the unweighted metrics; a weighted
//! reference equal in distribution to the generated events passes where the
//! unweighted reading of the same events fails; `fedhex analyze` on a
//! weighted `.npz` reference writes Σw² into `histograms.root` (read back by
//! uproot) and says in `report.json` that the reference is weighted; the
//! weighted label fit (sandwich covariance against finite differences, and a
//! reweighted sample fitted to the label its weights describe).
#![allow(clippy::needless_range_loop)]

mod common;

use fedhex::analysis::fit::{fit_label, fit_label_weighted, FitOptions, ScanKind};
use fedhex::analysis::metrics::{self, Binning, ClassifierConfig, CompareConfig, EnergyConfig};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{json, Value};
use std::time::Instant;
use tch::{Kind, Tensor};

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

fn close(a: f64, b: f64, rel: f64, what: &str) {
    assert!((a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-12, "{what}: rust {a} vs numpy {b}");
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const NUMPY: &str = r#"
import sys, json
import numpy as np
d = json.load(open(sys.argv[1]))
A = lambda v: np.asarray(v, dtype=float)

def wsort(x, w):
    o = np.lexsort((w, x))
    return x[o], w[o]

def moments(x, w):
    W, W2 = w.sum(), (w * w).sum()
    mu = (w * x).sum() / W
    var = (w * (x - mu) ** 2).sum() / (W - W2 / W)
    neff = W * W / W2
    c = neff / (neff - 1) / W**2
    d2 = (x - mu) ** 2
    s = np.sqrt(var)
    return dict(mean=mu, std=s, mean_err=np.sqrt(c * (w * w * d2).sum()),
                std_err=np.sqrt(c * (w * w * (d2 - var) ** 2).sum() / (4 * var)), n_eff=neff, sum=W)

def wquantile(x, w, ps):
    xs, ws = wsort(x, w)
    mid = np.cumsum(ws) - ws / 2
    P = np.maximum.accumulate((mid - mid[0]) / (mid[-1] - mid[0]))
    out = []
    for p in ps:
        k = np.searchsorted(P, p, side="left")
        if k == 0:
            out.append(xs[0])
        elif k >= len(xs):
            out.append(xs[-1])
        else:
            out.append(xs[k - 1] + (p - P[k - 1]) / (P[k] - P[k - 1]) * (xs[k] - xs[k - 1]))
    return out

def dedup(e):
    out = []
    for v in e:
        if not out or v != out[-1]:
            out.append(v)
    return out

def chi2_from_sums(w, w2, v, v2):
    W, V = w.sum(), v.sum()
    var = w2 / W**2 + v2 / V**2
    m = var > 0
    return float(((w / W - v / V) ** 2 / var)[m].sum()), int(m.sum()) - 1

def chi2(xr, wr, xg, wg, bins):
    lo = min(xr.min(), xg.min())
    inner = [e for e in dedup(wquantile(xr, wr, [i / bins for i in range(1, bins)])) if e > lo]
    k = len(inner) + 1
    ir, ig = np.searchsorted(inner, xr, side="right"), np.searchsorted(inner, xg, side="right")
    s = lambda i, w: (np.bincount(i, weights=w, minlength=k), np.bincount(i, weights=w * w, minlength=k))
    return chi2_from_sums(*s(ir, wr), *s(ig, wg))

def ecdf_pair(xr, wr, xg, wg):
    grid = np.unique(np.concatenate([xr, xg]))
    def F(x, w):
        xs, ws = wsort(x, w)
        c = np.concatenate([[0.0], np.cumsum(ws)])
        return c[np.searchsorted(xs, grid, side="right")] / ws.sum()
    return grid, F(xr, wr), F(xg, wg)

def kolmogorov_sf(lam):
    j = np.arange(1, 100001, dtype=float)
    return float(np.clip(2 * np.sum((-1) ** (j - 1) * np.exp(-2 * j * j * lam * lam)), 0, 1))

def ks_w1(xr, wr, xg, wg):
    grid, Fr, Fg = ecdf_pair(xr, wr, xg, wg)
    D = np.abs(Fr - Fg).max()
    W1 = (np.abs(Fr - Fg)[:-1] * np.diff(grid)).sum()
    nr, ng = wr.sum() ** 2 / (wr * wr).sum(), wg.sum() ** 2 / (wg * wg).sum()
    ne = nr * ng / (nr + ng)
    lam = (np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(ne)) * D
    return dict(D=D, W1=W1, n_eff=ne, p=kolmogorov_sf(lam))

def auc(s, l, w):
    sp, sn, wp, wn = s[l], s[~l], w[l], w[~l]
    cmp = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    return float((wp[:, None] * wn[None, :] * cmp).sum() / (wp.sum() * wn.sum()))

def energy(R, wr, G, wg):
    P = np.vstack([R, G])
    P = (P - P.mean(0)) / P.std(0)
    X, Y = P[: len(R)], P[len(R):]
    D = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    a, b = wr / wr.sum(), wg / wg.sum()
    return float(2 * a @ D(X, Y) @ b - a @ D(X, X) @ a - b @ D(Y, Y) @ b)

def pair(R, wr, G, wg, i, j, bins):
    ps = [k / bins for k in range(1, bins)]
    ea, eb = dedup(wquantile(R[:, i], wr, ps)), dedup(wquantile(R[:, j], wr, ps))
    cell = lambda X: np.searchsorted(ea, X[:, i], side="right") * (len(eb) + 1) + np.searchsorted(eb, X[:, j], side="right")
    k = (len(ea) + 1) * (len(eb) + 1)
    s = lambda c, w: (np.bincount(c, weights=w, minlength=k), np.bincount(c, weights=w * w, minlength=k))
    return chi2_from_sums(*s(cell(R), wr), *s(cell(G), wg))

out = {}
x, wx, y = A(d["x"]), A(d["wx"]), A(d["y"])
wy = A(d["wy"]) if d["wy"] is not None else np.ones_like(y)
out["moments"] = moments(x, wx)
pos = np.abs(wx)
out["moments_pos"] = moments(x, pos)
out["np_average"] = float(np.average(x, weights=pos))
out["np_cov"] = float(np.cov(x, aweights=pos))
out["quantiles"] = wquantile(x, wx, d["probs"])
out["quantiles_unit"] = wquantile(x, np.ones_like(x), d["probs"])
out["np_quantile"] = [float(q) for q in np.quantile(x, d["probs"])]
out["chi2"], out["ndf"] = chi2(x, wx, y, wy, d["bins"])
out.update(ks_w1(x, wx, y, wy))
out["auc"] = auc(A(d["scores"]), np.asarray(d["labels"], bool), A(d["aw"]))
R, G = A(d["R"]), A(d["G"])
wr = A(d["wr"])
wg = A(d["wg"]) if d["wg"] is not None else np.ones(len(G))
out["energy"] = energy(R, wr, G, wg)
out["pair_chi2"], out["pair_ndf"] = pair(R, wr, G, wg, 0, 2, d["pair_bins"])
print(json.dumps(out))
"#;

/// Weights of `n` events: positive around 1, a fraction `neg` of them negative.
fn weights(rng: &mut ChaCha8Rng, n: usize, neg: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            if rng.random::<f64>() < neg {
                -0.2 - 0.5 * u
            } else {
                0.3 + 1.4 * u
            }
        })
        .collect()
}

#[test]
fn weighted_statistics_match_numpy() {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x: Vec<f64> = (0..500).map(|_| 1.0 + normal(&mut rng)).collect();
    let wx = weights(&mut rng, x.len(), 0.15);
    let y: Vec<f64> = (0..400).map(|_| 1.1 + 0.9 * normal(&mut rng)).collect();
    let probs = [0.0, 0.05, 0.16, 0.5, 0.84, 0.95, 1.0];
    let bins = 12;
    // Scores with ties for the AUC.
    let scores: Vec<f64> = (0..300).map(|_| (rng.random::<f64>() * 10.0).floor() / 10.0).collect();
    let labels: Vec<bool> = (0..300).map(|i| i % 3 == 0).collect();
    let scores: Vec<f64> = scores.iter().zip(&labels).map(|(s, &l)| if l { (s + 0.2).min(0.9) } else { *s }).collect();
    let aw = weights(&mut rng, 300, 0.1);
    // Multivariate rows.
    let rr: Vec<Vec<f64>> = (0..150).map(|_| (0..3).map(|_| normal(&mut rng)).collect()).collect();
    let gg: Vec<Vec<f64>> =
        (0..120).map(|_| (0..3).map(|k| 0.2 * k as f64 + 1.1 * normal(&mut rng)).collect()).collect();
    let wr = weights(&mut rng, rr.len(), 0.1);
    let pair_bins = 4;

    let dir = common::tmpdir();
    let input = dir.path().join("numbers.json");
    let data = json!({
        "x": x, "wx": wx, "y": y, "wy": null, "probs": probs, "bins": bins,
        "scores": scores, "labels": labels, "aw": aw,
        "R": rr, "wr": wr, "G": gg, "wg": null, "pair_bins": pair_bins,
    });
    std::fs::write(&input, serde_json::to_vec(&data).unwrap()).unwrap();
    let py: Value = serde_json::from_str(&common::run_python(NUMPY, &[input.to_str().unwrap()])).unwrap();
    let tol = 1e-9;

    // Moments (negative weights; and positive ones against np.average / np.cov(aweights)).
    let m = metrics::moments_weighted(&x, Some(&wx)).unwrap();
    let pm = &py["moments"];
    close(m.mean, num(&pm["mean"]), tol, "weighted mean");
    close(m.std, num(&pm["std"]), tol, "weighted std");
    close(m.mean_err, num(&pm["mean_err"]), tol, "σ(mean)");
    close(m.std_err, num(&pm["std_err"]), tol, "σ(std)");
    close(m.n_eff.unwrap(), num(&pm["n_eff"]), tol, "n_eff");
    close(m.sum_weights.unwrap(), num(&pm["sum"]), tol, "Σw");
    let pos: Vec<f64> = wx.iter().map(|w| w.abs()).collect();
    let mp = metrics::moments_weighted(&x, Some(&pos)).unwrap();
    close(mp.mean, num(&py["np_average"]), tol, "mean vs np.average");
    close(mp.std * mp.std, num(&py["np_cov"]), tol, "variance vs np.cov(aweights)");
    close(mp.std_err, num(&py["moments_pos"]["std_err"]), tol, "σ(std), positive weights");

    // Quantiles; unit weights are NumPy's default (type 7).
    let q = metrics::quantiles_weighted(&x, Some(&wx), &probs).unwrap();
    let ones = vec![1.0; x.len()];
    let qu = metrics::quantiles_weighted(&x, Some(&ones), &probs).unwrap();
    for (k, p) in probs.iter().enumerate() {
        close(q[k], num(&py["quantiles"][k]), tol, &format!("weighted quantile {p}"));
        close(qu[k], num(&py["np_quantile"][k]), tol, &format!("unit-weight quantile {p} vs np.quantile"));
        close(qu[k], num(&py["quantiles_unit"][k]), tol, &format!("unit-weight quantile {p}"));
    }

    // χ² with reference-quantile bins, KS, Wasserstein-1 (reference weighted, generated not).
    let c = metrics::chi2_test_weighted(&x, Some(&wx), &y, None, Binning::ReferenceQuantiles { bins }).unwrap();
    close(c.chi2, num(&py["chi2"]), tol, "weighted χ²");
    assert_eq!(c.ndf as i64, py["ndf"].as_i64().unwrap(), "χ² ndf");
    let ks = metrics::ks_test_weighted(&x, Some(&wx), &y, None).unwrap();
    close(ks.statistic, num(&py["D"]), tol, "weighted KS D");
    close(ks.n_eff, num(&py["n_eff"]), tol, "KS effective size");
    close(ks.p_value, num(&py["p"]), 1e-7, "KS p-value");
    let w1 = metrics::wasserstein1_weighted(&x, Some(&wx), &y, None).unwrap();
    close(w1, num(&py["W1"]), tol, "weighted W1");
    // The bundle uses the same numbers.
    let cfg = CompareConfig { binning: Binning::ReferenceQuantiles { bins }, ..Default::default() };
    let cmp = metrics::compare_feature_weighted("x", &x, Some(&wx), &y, None, &cfg).unwrap();
    assert_eq!(cmp.chi2.chi2, c.chi2);
    assert_eq!(cmp.ks, ks);
    assert_eq!(cmp.wasserstein1, w1);
    assert_eq!(cmp.reference.mean, m.mean);
    let plain = metrics::compare_feature("x", &x, &y, &cfg).unwrap();
    assert_eq!(cmp.generated, plain.generated, "the unweighted side keeps its moments");

    // Weighted AUC with ties, against the O(n²) pair sum.
    close(metrics::auc_weighted(&scores, &labels, &aw), num(&py["auc"]), tol, "weighted AUC");

    // Energy V-statistic and the pair χ² (reference rows weighted).
    let e = metrics::energy_test_weighted(&rr, Some(&wr), &gg, None, &EnergyConfig::default()).unwrap();
    close(e.statistic, num(&py["energy"]), 1e-9, "weighted energy distance");
    assert!(e.note.contains("no p-value"), "{}", e.note);
    let pc = metrics::pair_chi2_weighted(&rr, Some(&wr), &gg, None, 0, 2, pair_bins).unwrap();
    close(pc.chi2, num(&py["pair_chi2"]), tol, "weighted pair χ²");
    assert_eq!(pc.ndf as i64, py["pair_ndf"].as_i64().unwrap());
    eprintln!("weighted statistics vs numpy: {:.2} s", t0.elapsed().as_secs_f64());
}

#[test]
fn unit_weights_reproduce_the_unweighted_metrics() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let r: Vec<Vec<f64>> = (0..700).map(|_| vec![normal(&mut rng), 0.5 * normal(&mut rng), normal(&mut rng)]).collect();
    let g: Vec<Vec<f64>> =
        (0..600).map(|_| vec![0.1 + normal(&mut rng), 0.5 * normal(&mut rng), 1.1 * normal(&mut rng)]).collect();
    let cfg = CompareConfig {
        energy: EnergyConfig { max_per_sample: 300, permutations: 20, ..Default::default() },
        classifier: ClassifierConfig { k: 20, max_per_sample: 500, ..Default::default() },
        ..Default::default()
    };
    let names = ["a", "b", "c"];
    // No weights: exactly the unweighted bundle.
    let plain = metrics::compare_samples(&names, &r, &g, &cfg).unwrap();
    let none = metrics::compare_samples_weighted(&names, &r, None, &g, None, &cfg).unwrap();
    assert_eq!(none.features, plain.features);
    assert_eq!(none.energy, Some(plain.energy));
    assert_eq!(none.energy_weighted, None);
    assert_eq!(none.classifier, plain.classifier);
    assert_eq!(
        metrics::pair_chi2_weighted(&r, None, &g, None, 0, 1, 6).unwrap(),
        metrics::pair_chi2(&r, &g, 0, 1, 6).unwrap()
    );
    // Unit weights: the same numbers through the weighted arithmetic.
    let ones = vec![1.0; r.len()];
    let unit = metrics::compare_samples_weighted(&names, &r, Some(&ones), &g, None, &cfg).unwrap();
    for (u, p) in unit.features.iter().zip(&plain.features) {
        for (a, b, what) in [
            (u.reference.mean, p.reference.mean, "mean"),
            (u.reference.std, p.reference.std, "std"),
            (u.reference.mean_err, p.reference.mean_err, "σ(mean)"),
            (u.ks.statistic, p.ks.statistic, "KS D"),
            (u.ks.p_value, p.ks.p_value, "KS p"),
            (u.wasserstein1, p.wasserstein1, "W1"),
        ] {
            close(a, b, 1e-12, &format!("{} {what}", u.feature));
        }
        // σ(std): the linearised variance agrees with the unweighted formula to O(1/n²).
        close(u.reference.std_err, p.reference.std_err, 1e-3, "σ(std)");
        for (qa, qb) in u.quantile_shifts.iter().zip(&p.quantile_shifts) {
            close(qa.shift_in_std.value, qb.shift_in_std.value, 1e-12, "quantile shift");
            close(qa.shift_in_std.uncertainty, qb.shift_in_std.uncertainty, 1e-12, "quantile shift σ");
        }
        assert_eq!(u.chi2.edges.len(), p.chi2.edges.len(), "the same bins");
        for (a, b) in u.chi2.edges.iter().zip(&p.chi2.edges) {
            close(*a, *b, 1e-12, "bin edge");
        }
        assert_eq!(u.reference.n_eff, Some(r.len() as f64));
    }
    close(unit.classifier.auc, plain.classifier.auc, 1e-12, "classifier AUC");
    close(unit.classifier.auc_null_std, plain.classifier.auc_null_std, 1e-12, "AUC null σ");
    // Unit weights, the weighted AUC is the Mann–Whitney AUC.
    let s: Vec<f64> = (0..200).map(|i| ((i * 37) % 11) as f64).collect();
    let l: Vec<bool> = (0..200).map(|i| i % 4 == 0).collect();
    assert_eq!(metrics::auc_weighted(&s, &l, &[1.0; 200]), metrics::auc(&s, &l));
    // Weights whose sum is not positive are refused, not misread.
    let neg = vec![-1.0; r.len()];
    assert!(metrics::compare_samples_weighted(&names, &r, Some(&neg), &g, None, &cfg).is_err());
    assert!(metrics::moments_weighted(&[1.0, 2.0], Some(&[1.0])).is_err());
}

/// `n` 2-D events of N(μ, σ²) per coordinate.
fn gaussian_rows(rng: &mut ChaCha8Rng, n: usize, mu: f64, sigma: f64) -> Vec<Vec<f64>> {
    (0..n).map(|_| (0..2).map(|_| mu + sigma * normal(rng)).collect()).collect()
}

#[test]
fn weighted_reference_equal_in_distribution_passes_where_the_unweighted_reading_fails() {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Generated: N(0, 1)². Reference: drawn from N(0.4, 1.3²)², weighted by
    // p/q back to N(0, 1)², 10 % of the events with a negative weight
    // (a signed factor of mean 1): equal in distribution to the generated.
    let g = gaussian_rows(&mut rng, 4000, 0.0, 1.0);
    let (mu, sq) = (0.4, 1.3);
    let r = gaussian_rows(&mut rng, 8000, mu, sq);
    let log_ratio =
        |x: &[f64]| -> f64 { x.iter().map(|&v| -0.5 * v * v + 0.5 * ((v - mu) / sq).powi(2) + sq.ln()).sum::<f64>() };
    let w: Vec<f64> = r
        .iter()
        .map(|x| {
            let sign = if rng.random::<f64>() < 0.1 { -1.0 } else { 1.1 / 0.9 };
            sign * log_ratio(x).exp()
        })
        .collect();
    let s = metrics::weight_summary(&w);
    assert!(s.negative_fraction > 0.07 && s.negative_fraction < 0.13, "{s:?}");
    let cfg = CompareConfig {
        energy: EnergyConfig { max_per_sample: 1000, permutations: 50, ..Default::default() },
        classifier: ClassifierConfig { k: 50, max_per_sample: 4000, ..Default::default() },
        ..Default::default()
    };
    let names = ["x", "y"];
    let weighted = metrics::compare_samples_weighted(&names, &r, Some(&w), &g, None, &cfg).unwrap();
    let unweighted = metrics::compare_samples_weighted(&names, &r, None, &g, None, &cfg).unwrap();
    let report = |c: &metrics::WeightedSampleComparison| {
        for f in &c.features {
            eprintln!(
                "  {}: Δμ/σ {:+.4} ± {:.4}, Δσ/σ {:+.4} ± {:.4}, χ²/ndf {:.2} (p {:.3}), KS D {:.4} (p {:.3})",
                f.feature,
                f.relative.mean_shift_in_std.unwrap().value,
                f.relative.mean_shift_in_std.unwrap().uncertainty,
                f.relative.std_rel_error.unwrap().value,
                f.relative.std_rel_error.unwrap().uncertainty,
                f.chi2.chi2_per_ndf,
                f.chi2.p_value,
                f.ks.statistic,
                f.ks.p_value
            );
        }
        eprintln!("  classifier AUC {:.4} (z {:+.2})", c.classifier.auc, c.classifier.z_score);
    };
    eprintln!("weighted reading (n_eff {:.0}):", s.n_eff);
    report(&weighted);
    eprintln!("unweighted reading:");
    report(&unweighted);
    for f in &weighted.features {
        let m = f.relative.mean_shift_in_std.unwrap();
        let sd = f.relative.std_rel_error.unwrap();
        assert!(m.value.abs() < 3.0 * m.uncertainty, "{}: weighted mean off {m:?}", f.feature);
        assert!(sd.value.abs() < 3.0 * sd.uncertainty, "{}: weighted width off {sd:?}", f.feature);
        assert!(f.chi2.p_value > 1e-3, "{}: weighted χ² p {}", f.feature, f.chi2.p_value);
        assert!(f.ks.p_value > 1e-3, "{}: weighted KS p {}", f.feature, f.ks.p_value);
    }
    assert!(weighted.classifier.z_score.abs() < 3.0, "weighted classifier z {}", weighted.classifier.z_score);
    assert!(weighted.energy.is_none() && weighted.energy_weighted.is_some());
    // The same events read without their weights are another distribution.
    for f in &unweighted.features {
        let m = f.relative.mean_shift_in_std.unwrap();
        assert!(m.value.abs() > 10.0 * m.uncertainty, "{}: unweighted mean should be off: {m:?}", f.feature);
        assert!(f.chi2.p_value < 1e-10 && f.ks.p_value < 1e-10, "{}: unweighted reading passes", f.feature);
    }
    assert!(unweighted.classifier.z_score > 5.0, "unweighted classifier z {}", unweighted.classifier.z_score);
    assert!(unweighted.energy.unwrap().p_value < 0.05);
    // The weighted energy distance is small where the samples agree.
    let e_w = weighted.energy_weighted.unwrap().statistic;
    let e_u = metrics::energy_test_weighted(&r, None, &g, None, &cfg.energy).unwrap().statistic;
    eprintln!("energy V-statistic: weighted {e_w:.2e}, unweighted reading {e_u:.2e}");
    assert!(e_w < 0.25 * e_u, "weighted energy {e_w} vs unweighted {e_u}");
    eprintln!("equal-in-distribution test: {:.2} s", t0.elapsed().as_secs_f64());
}

const HIST_CHECK: &str = r#"
import sys, json
import numpy as np
import uproot
npz, root, report = sys.argv[1], sys.argv[2], sys.argv[3]
d = np.load(npz)
x, lab, w = d["samples"].astype(float), d["labels"], d["weights"].astype(float)
rep = json.load(open(report))
f = uproot.open(root)
out = {"checked": 0, "max_diff": 0.0, "weighted_differs": 0, "generated_equal": 0}
for h in rep["histograms"]:
    th = f[h["name"]]
    values, variances = th.values(flow=True), th.variances(flow=True)
    edges = th.axis().edges()
    if h["sample"] == "reference":
        label = np.asarray(h["label"], dtype=np.float32)
        sel = np.all(lab == label, axis=1)
        col = x[sel, rep["features"].index(h["feature"])]
        ws = w[sel]
        idx = np.searchsorted(edges, col, side="right")   # ROOT bin number: 0 underflow, n+1 overflow
        n = len(edges) + 1
        sw = np.bincount(idx, weights=ws, minlength=n)
        sw2 = np.bincount(idx, weights=ws * ws, minlength=n)
        out["max_diff"] = max(out["max_diff"], float(np.abs(sw - values).max()), float(np.abs(sw2 - variances).max()))
        out["checked"] += 1
        out["weighted_differs"] += int(not np.allclose(values, variances))
    elif h["sample"] == "generated":
        out["generated_equal"] += int(np.array_equal(values, variances))
print(json.dumps(out))
"#;

#[test]
fn analyze_cli_on_a_weighted_npz_reference() {
    let t0 = Instant::now();
    let dir = common::tmpdir();
    let model_dir = dir.path().join("model");
    common::random_model(2, &[8], 3).save(&model_dir).unwrap();
    // Two labels, 300 events each, 12 % negative weights.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let labels = [[0.25f32, 0.5], [0.75, 0.5]];
    let n = 300;
    let samples = Array2::from_shape_fn((2 * n, 2), |_| normal(&mut rng) as f32);
    let label_rows = Array2::from_shape_fn((2 * n, 2), |(i, j)| labels[i / n][j]);
    let w: Vec<f32> = weights(&mut rng, 2 * n, 0.12).into_iter().map(|v| v as f32).collect();
    let reference = dir.path().join("reference.npz");
    fedhex::data::npy::write_npz_weighted(&reference, &samples, &label_rows, Some(&Array1::from(w.clone()))).unwrap();
    // A weighted second reference (the statistical floor), all weights positive.
    let samples2 = Array2::from_shape_fn((2 * n, 2), |_| normal(&mut rng) as f32);
    let w2: Vec<f32> = weights(&mut rng, 2 * n, 0.0).into_iter().map(|v| v as f32).collect();
    let reference2 = dir.path().join("reference2.npz");
    fedhex::data::npy::write_npz_weighted(&reference2, &samples2, &label_rows, Some(&Array1::from(w2))).unwrap();
    let out = dir.path().join("report");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_fedhex"))
        .args(["analyze", "--model"])
        .arg(&model_dir)
        .arg("--reference")
        .arg(&reference)
        .arg("--reference2")
        .arg(&reference2)
        .arg("--out")
        .arg(&out)
        .args(["--max-plot-labels", "1"])
        .output()
        .unwrap();
    assert!(run.status.success(), "fedhex analyze failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let hist = out.join(fedhex::analysis::histograms::HISTOGRAMS_ROOT);
    let report = out.join(fedhex::analysis::report::REPORT_JSON);
    let check: Value = serde_json::from_str(&common::run_python(
        HIST_CHECK,
        &[reference.to_str().unwrap(), hist.to_str().unwrap(), report.to_str().unwrap()],
    ))
    .unwrap();
    eprintln!("histograms.root vs numpy: {check}");
    assert_eq!(check["checked"], 4, "2 labels × 2 features of reference histograms");
    assert!(num(&check["max_diff"]) < 1e-4, "Σw / Σw² differ from numpy: {check}");
    assert_eq!(check["weighted_differs"], 4, "weighted reference: Σw² ≠ Σw");
    assert_eq!(check["generated_equal"], 4, "unweighted generated: Σw² = counts");

    // report.json says the reference is weighted, with Σw, n_eff and the negative fraction.
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rw = &json["reference_weights"];
    let s = metrics::weight_summary(&w.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    close(num(&rw["sum"]), s.sum, 1e-12, "Σw in report.json");
    close(num(&rw["n_eff"]), s.n_eff, 1e-12, "n_eff in report.json");
    close(num(&rw["negative_fraction"]), s.negative_fraction, 1e-12, "negative fraction");
    assert!(s.negative_fraction > 0.05, "{s:?}");
    let m = &json["labels"][0]["metrics"];
    assert!(m["reference_weights"]["n_eff"].is_number(), "per-label weights: {m}");
    assert!(m["features"][0]["reference"]["n_eff"].is_number());
    assert!(m["features"][0]["generated"].get("n_eff").is_none(), "generated events are unweighted");
    assert!(m["energy"].is_null());
    assert!(m["energy_weighted"]["note"].as_str().unwrap().contains("no p-value"));
    assert!(m["classifier"]["n_eff_reference"].is_number());
    // The floor compares two weighted references.
    assert!(json["reference2_weights"]["n_eff"].is_number());
    let floor = &json["labels"][0]["floor"];
    assert!(floor["compared_weights"]["sum"].is_number() && floor["reference_weights"]["sum"].is_number());
    assert!(floor["features"][0]["generated"]["n_eff"].is_number(), "the second reference is weighted");
    for h in json["histograms"].as_array().unwrap().iter().filter(|h| h["sample"] == "reference2") {
        assert_ne!(h["counts"], h["sumw2"], "weighted second reference: Σw² ≠ Σw");
    }
    // Round trip and the readable pages.
    let back: fedhex::analysis::report::Report = serde_json::from_value(json).unwrap();
    assert!(back.reference_weights.is_some());
    let txt = std::fs::read_to_string(out.join(fedhex::analysis::report::REPORT_TXT)).unwrap();
    assert!(txt.contains("reference is weighted"), "{txt}");
    let html = std::fs::read_to_string(out.join(fedhex::analysis::report::REPORT_HTML)).unwrap();
    assert!(html.contains("reference is weighted"));
    eprintln!("fedhex analyze, weighted reference: {:.2} s", t0.elapsed().as_secs_f64());
}

/// Per-event `∇_θ log p(xᵢ | θ)` by central differences (the check of the
/// sandwich's autograd scores).
fn fd_scores(model: &fedhex::flow::Model, xs: &Tensor, theta: &[f64], h: f64) -> Vec<[f64; 2]> {
    let n = xs.size()[0];
    let lp = |t: &[f64]| -> Vec<f64> {
        let cs = Tensor::from_slice(&[t[0] as f32, t[1] as f32]).view([1, 2]).expand([n, 2], false);
        let v = tch::no_grad(|| model.log_prob(xs, &cs)).to_kind(Kind::Double);
        Vec::<f64>::try_from(v).unwrap()
    };
    let mut g = vec![[0.0; 2]; n as usize];
    for k in 0..2 {
        let (mut a, mut b) = (theta.to_vec(), theta.to_vec());
        a[k] += h;
        b[k] -= h;
        let (pa, pb) = (lp(&a), lp(&b));
        for i in 0..n as usize {
            g[i][k] = (pa[i] - pb[i]) / (2.0 * h);
        }
    }
    g
}

fn inv2(m: &[Vec<f64>]) -> [[f64; 2]; 2] {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]]
}

#[test]
fn weighted_fit_sandwich_covariance_and_reweighting() {
    let t0 = Instant::now();
    let model = common::random_model(2, &[8], 3);
    let sample_at = |theta: [f32; 2], n: i64, seed: u64| -> Tensor {
        let _g = fedhex::rng::seeded(seed);
        let cs = Tensor::from_slice(&theta).view([1, 2]).expand([n, 2], false);
        tch::no_grad(|| model.sample(&cs))
    };
    let opts = FitOptions { scan: ScanKind::None, acceptance_samples: 0, ..Default::default() };
    let to_array = |t: &Tensor| -> Array2<f32> {
        let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        Array2::from_shape_vec((t.size()[0] as usize, 2), v).unwrap()
    };

    // (1) Events at θ₁ reweighted by p(x|θ₀)/p(x|θ₁) are events at θ₀: the weighted
    // fit finds θ₀ within its (sandwich) uncertainty, the unweighted one θ₁.
    let (th0, th1) = ([0.6f32, 0.4], [0.4f32, 0.6]);
    let n = 2000;
    let xs = sample_at(th1, n, 21);
    let lp = |t: [f32; 2]| {
        let cs = Tensor::from_slice(&t).view([1, 2]).expand([n, 2], false);
        tch::no_grad(|| model.log_prob(&xs, &cs)).to_kind(Kind::Double)
    };
    let w = Vec::<f64>::try_from((lp(th0) - lp(th1)).exp()).unwrap();
    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let events = to_array(&xs);
    let t1 = Instant::now();
    let wf = fit_label_weighted(&model, events.view(), Some(Array1::from(w32).view()), &opts).unwrap();
    eprintln!("weighted fit of {n} events: {:.2} s", t1.elapsed().as_secs_f64());
    let uf = fit_label(&model, events.view(), &opts).unwrap();
    eprintln!(
        "reweighted to {th0:?}: weighted fit {:?} ± {:?} (scaled {:?}; n_eff {:.0}), unweighted fit {:?} ± {:?}",
        wf.best,
        wf.uncertainty,
        wf.uncertainty_scaled,
        wf.weights.unwrap().n_eff,
        uf.best,
        uf.uncertainty
    );
    assert!(wf.covariance_method.as_deref().unwrap().contains("sandwich"));
    for k in 0..2 {
        let pull_w = (wf.best[k] - f64::from(th0[k])) / wf.uncertainty[k];
        let pull_u = (uf.best[k] - f64::from(th0[k])) / uf.uncertainty[k];
        assert!(pull_w.abs() < 3.0, "dimension {k}: weighted fit {} ± {} vs {}", wf.best[k], wf.uncertainty[k], th0[k]);
        assert!(pull_u.abs() > 5.0, "dimension {k}: the unweighted fit should miss θ₀ (pull {pull_u})");
    }

    // (2) The sandwich H⁻¹ J H⁻¹ with J = Σ wᵢ² uᵢuᵢᵀ from finite-difference scores
    // at the best fit (no acceptance cuts: uᵢ = −∇ log p).
    let g = fd_scores(&model, &xs, &wf.best, 1e-3);
    let mut j = [[0.0; 2]; 2];
    for i in 0..n as usize {
        for a in 0..2 {
            for b in 0..2 {
                j[a][b] += w[i] * w[i] * g[i][a] * g[i][b];
            }
        }
    }
    let hi = inv2(&wf.hessian);
    for a in 0..2 {
        for b in 0..2 {
            let v: f64 =
                (0..2).flat_map(|k| (0..2).map(move |l| (k, l))).map(|(k, l)| hi[a][k] * j[k][l] * hi[l][b]).sum();
            close(wf.covariance[a][b], v, 2e-3, &format!("sandwich covariance [{a}][{b}] vs finite differences"));
        }
    }
    // (3) Equal weights c: the same fit, the scaled uncertainty is the unweighted one.
    let ev = to_array(&sample_at([0.5, 0.5], 800, 4));
    let two = Array1::from(vec![2.0f32; 800]);
    let f2 = fit_label_weighted(&model, ev.view(), Some(two.view()), &opts).unwrap();
    let f1 = fit_label(&model, ev.view(), &opts).unwrap();
    for k in 0..2 {
        assert!((f2.best[k] - f1.best[k]).abs() < 0.05 * f1.uncertainty[k], "c = 2: {:?} vs {:?}", f2.best, f1.best);
        close(f2.uncertainty_scaled.as_ref().unwrap()[k], f1.uncertainty[k], 2e-2, "Σw²/Σw-scaled uncertainty");
        close(f2.nll_per_event, f1.nll_per_event, 1e-4, "NLL per unit weight");
    }
    eprintln!("weighted fits: {:.2} s", t0.elapsed().as_secs_f64());
}
