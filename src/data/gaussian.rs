//! Gaussian test-bed generators, as the prototype had: events drawn from
//! `N(mean(label), cov(label))` at a set of label points laid out as a 2-D
//! grid, a line, a circle or an N-D unit cube, with covariance strategies that
//! are fixed, grow with the label, or rotate with it. The true mean and
//! covariance are known at every label, on or off the grid, which makes these
//! the reference for interpolation tests.

use super::EventSet;
use crate::error::{Error, Result};
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Where the label points lie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Layout {
    /// `n × n` grid on `[lo, hi]²`; labels 2-D, features 2-D, mean = label.
    Grid2d {
        /// Points per axis.
        n: usize,
        /// Lower end of both axes.
        lo: f64,
        /// Upper end of both axes.
        hi: f64,
    },
    /// `n` points on `[lo, hi]`; one label, `dim` features, mean = label × (1, …, 1).
    Line {
        /// Number of points.
        n: usize,
        /// Lower end.
        lo: f64,
        /// Upper end.
        hi: f64,
        /// Number of features.
        dim: usize,
    },
    /// `n` angles on a circle; label = angle (radians), mean = radius (cos, sin).
    Circle {
        /// Number of points.
        n: usize,
        /// Radius of the circle.
        radius: f64,
    },
    /// `n^dim` points on the unit cube `[0, 1]^dim`; labels and features `dim`-D, mean = label.
    Cube {
        /// Points per axis.
        n: usize,
        /// Dimension.
        dim: usize,
    },
}

/// How the covariance depends on the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Covariance {
    /// `σ² I`.
    Diagonal {
        /// Width.
        sigma: f64,
    },
    /// `σ² [(1 − ρ) I + ρ 1 1ᵀ]` (equal correlation `ρ` between all features).
    Full {
        /// Width.
        sigma: f64,
        /// Correlation.
        rho: f64,
    },
    /// `(σ (1 + g · mean(|label|)))² I`: widths grow with the label.
    Growing {
        /// Width at label 0.
        sigma: f64,
        /// Growth rate `g`.
        growth: f64,
    },
    /// `R(θ) diag(a², b², σ_b² …) R(θ)ᵀ` with `θ = turns · π · label₀`, rotating
    /// the first two features (a skew that turns with the label).
    Rotating {
        /// Width along the major axis.
        major: f64,
        /// Width along the minor axis (and of the other features).
        minor: f64,
        /// Half-turns per unit of the first label.
        turns: f64,
    },
}

/// A full generator description; saved beside the data so the truth can be
/// recomputed anywhere (`fedhex moments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianSpec {
    /// Label layout.
    pub layout: Layout,
    /// Covariance strategy.
    pub covariance: Covariance,
    /// Events per label point.
    pub n_per_label: usize,
    /// Seed of the generator.
    pub seed: u64,
}

fn linspace(n: usize, lo: f64, hi: f64) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![0.5 * (lo + hi)],
        _ => (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect(),
    }
}

impl GaussianSpec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("gaussian generator: {m}")));
        let (n, dim) = match &self.layout {
            Layout::Grid2d { lo, hi, .. } | Layout::Line { lo, hi, .. }
                if lo.partial_cmp(hi) != Some(std::cmp::Ordering::Less) =>
            {
                return bad("need lo < hi");
            }
            Layout::Grid2d { n, .. } => (*n, 2),
            Layout::Line { n, dim, .. } => (*n, *dim),
            Layout::Circle { n, .. } => (*n, 2),
            Layout::Cube { n, dim } => (*n, *dim),
        };
        if n == 0 || dim == 0 {
            return bad("need at least one point and one dimension");
        }
        if self.n_per_label == 0 {
            return bad("n_per_label must be positive");
        }
        let ok = match &self.covariance {
            Covariance::Diagonal { sigma } => *sigma > 0.0,
            Covariance::Full { sigma, rho } => *sigma > 0.0 && *rho > -1.0 / (dim as f64 - 1.0).max(1.0) && *rho < 1.0,
            Covariance::Growing { sigma, growth } => *sigma > 0.0 && *growth >= 0.0,
            Covariance::Rotating { major, minor, .. } => *major > 0.0 && *minor > 0.0,
        };
        if !ok {
            return bad("covariance parameters out of range (widths must be positive, |rho| < 1)");
        }
        Ok(())
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        match &self.layout {
            Layout::Grid2d { .. } | Layout::Circle { .. } => 2,
            Layout::Line { dim, .. } | Layout::Cube { dim, .. } => *dim,
        }
    }

    /// Number of labels.
    pub fn n_labels(&self) -> usize {
        match &self.layout {
            Layout::Grid2d { .. } => 2,
            Layout::Line { .. } | Layout::Circle { .. } => 1,
            Layout::Cube { dim, .. } => *dim,
        }
    }

    /// The label points of the layout.
    pub fn labels(&self) -> Vec<Vec<f64>> {
        match &self.layout {
            Layout::Grid2d { n, lo, hi } => {
                let ax = linspace(*n, *lo, *hi);
                ax.iter().flat_map(|&a| ax.iter().map(move |&b| vec![a, b])).collect()
            }
            Layout::Line { n, lo, hi, .. } => linspace(*n, *lo, *hi).into_iter().map(|a| vec![a]).collect(),
            Layout::Circle { n, .. } => {
                (0..*n).map(|i| vec![2.0 * std::f64::consts::PI * i as f64 / *n as f64]).collect()
            }
            Layout::Cube { n, dim } => {
                let ax = linspace(*n, 0.0, 1.0);
                let mut pts = vec![vec![]];
                for _ in 0..*dim {
                    pts =
                        pts.into_iter().flat_map(|p| ax.iter().map(move |&a| [p.clone(), vec![a]].concat())).collect();
                }
                pts
            }
        }
    }

    /// True mean at any label.
    pub fn mean(&self, label: &[f64]) -> Vec<f64> {
        let d = self.n_features();
        match &self.layout {
            Layout::Grid2d { .. } | Layout::Cube { .. } => label.to_vec(),
            Layout::Line { .. } => vec![label.first().copied().unwrap_or(0.0); d],
            Layout::Circle { radius, .. } => {
                let t = label.first().copied().unwrap_or(0.0);
                vec![radius * t.cos(), radius * t.sin()]
            }
        }
    }

    /// True covariance (`D × D`, row-major rows) at any label.
    pub fn cov(&self, label: &[f64]) -> Vec<Vec<f64>> {
        let d = self.n_features();
        let mut c = vec![vec![0.0; d]; d];
        match &self.covariance {
            Covariance::Diagonal { sigma } => (0..d).for_each(|i| c[i][i] = sigma * sigma),
            Covariance::Full { sigma, rho } => {
                for (i, row) in c.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = sigma * sigma * if i == j { 1.0 } else { *rho };
                    }
                }
            }
            Covariance::Growing { sigma, growth } => {
                let m = label.iter().map(|v| v.abs()).sum::<f64>() / label.len().max(1) as f64;
                let s = sigma * (1.0 + growth * m);
                (0..d).for_each(|i| c[i][i] = s * s);
            }
            Covariance::Rotating { major, minor, turns } => {
                (0..d).for_each(|i| c[i][i] = minor * minor);
                c[0][0] = major * major;
                if d >= 2 {
                    let t = turns * std::f64::consts::PI * label.first().copied().unwrap_or(0.0);
                    let (s, co) = t.sin_cos();
                    let (a, b) = (major * major, minor * minor);
                    c[0][0] = co * co * a + s * s * b;
                    c[1][1] = s * s * a + co * co * b;
                    c[0][1] = co * s * (a - b);
                    c[1][0] = c[0][1];
                }
            }
        }
        c
    }

    /// Draws `n` events at `label` with a generator seeded by `seed`.
    pub fn sample_at(&self, label: &[f64], n: usize, seed: u64) -> Result<Array2<f64>> {
        let l = cholesky(&self.cov(label))
            .ok_or_else(|| Error::Config(format!("covariance at label {label:?} is not positive definite")))?;
        let mean = self.mean(label);
        let d = mean.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = Array2::zeros((n, d));
        let mut z = vec![0.0; d];
        for mut row in out.rows_mut() {
            z.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut rng));
            for i in 0..d {
                row[i] = mean[i] + (0..=i).map(|k| l[i][k] * z[k]).sum::<f64>();
            }
        }
        Ok(out)
    }

    /// Generates the whole data set: `n_per_label` events at every label point.
    /// Each point has its own stream, seeded from `(seed, point index)`.
    pub fn generate(&self) -> Result<EventSet> {
        self.validate()?;
        let labels = self.labels();
        let (d, l, n) = (self.n_features(), self.n_labels(), self.n_per_label);
        let mut samples = Array2::<f32>::zeros((labels.len() * n, d));
        let mut lab = Array2::<f32>::zeros((labels.len() * n, l));
        for (g, label) in labels.iter().enumerate() {
            let xs = self.sample_at(label, n, self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ g as u64)?;
            for i in 0..n {
                for j in 0..d {
                    samples[[g * n + i, j]] = xs[[i, j]] as f32;
                }
                for j in 0..l {
                    lab[[g * n + i, j]] = label[j] as f32;
                }
            }
        }
        EventSet::new(samples, lab, vec![], vec![], "gaussian generator")
    }
}

/// Lower Cholesky factor of a symmetric positive-definite matrix.
pub fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            let v = a.get(i)?.get(j)? - s;
            if i == j {
                if v <= 0.0 {
                    return None;
                }
                l[i][j] = v.sqrt();
            } else {
                l[i][j] = v / l[j][j];
            }
        }
    }
    Some(l)
}

/// Sample mean and covariance of rows.
pub fn moments(xs: &Array2<f64>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (n, d) = xs.dim();
    let nf = n.max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|j| xs.column(j).sum() / nf).collect();
    let mut cov = vec![vec![0.0; d]; d];
    for row in xs.rows() {
        for i in 0..d {
            for j in 0..d {
                cov[i][j] += (row[i] - mean[i]) * (row[j] - mean[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    cov.iter_mut().flatten().for_each(|v| *v /= denom);
    (mean, cov)
}

/// Generated vs. true moments at one label.
#[derive(Debug, Clone, Serialize)]
pub struct MomentCheck {
    /// The label.
    pub label: Vec<f64>,
    /// Number of generated events there.
    pub n: usize,
    /// True mean.
    pub true_mean: Vec<f64>,
    /// Generated mean.
    pub mean: Vec<f64>,
    /// True covariance.
    pub true_cov: Vec<Vec<f64>>,
    /// Generated covariance.
    pub cov: Vec<Vec<f64>>,
    /// Largest |mean difference| in units of the true width of that feature.
    pub max_mean_pull: f64,
    /// Largest |relative difference| of a standard deviation.
    pub max_std_rel: f64,
    /// Largest |difference| of a correlation coefficient.
    pub max_corr_diff: f64,
}

/// Compares the moments of generated events with the generator's truth, label by label.
pub fn check_moments(spec: &GaussianSpec, events: &EventSet) -> Result<Vec<MomentCheck>> {
    if events.n_features() != spec.n_features() || events.n_labels() != spec.n_labels() {
        return Err(Error::Data(format!(
            "events have {} features and {} labels, the generator {} and {}",
            events.n_features(),
            events.n_labels(),
            spec.n_features(),
            spec.n_labels()
        )));
    }
    let groups = events.label_groups();
    let mut out = Vec::new();
    for (label, rows) in groups.labels.iter().zip(&groups.members) {
        let label: Vec<f64> = label.iter().map(|&v| f64::from(v)).collect();
        let xs = events.select(rows).samples.mapv(f64::from);
        let (mean, cov) = moments(&xs);
        let (tm, tc) = (spec.mean(&label), spec.cov(&label));
        let d = mean.len();
        let sd = |c: &Vec<Vec<f64>>, i: usize| c[i][i].max(0.0).sqrt();
        let corr = |c: &Vec<Vec<f64>>, i: usize, j: usize| c[i][j] / (sd(c, i) * sd(c, j)).max(1e-300);
        let max_mean_pull = (0..d).map(|i| ((mean[i] - tm[i]) / sd(&tc, i)).abs()).fold(0.0, f64::max);
        let max_std_rel = (0..d).map(|i| (sd(&cov, i) / sd(&tc, i) - 1.0).abs()).fold(0.0, f64::max);
        let mut max_corr_diff: f64 = 0.0;
        for i in 0..d {
            for j in 0..i {
                max_corr_diff = max_corr_diff.max((corr(&cov, i, j) - corr(&tc, i, j)).abs());
            }
        }
        out.push(MomentCheck {
            label,
            n: rows.len(),
            true_mean: tm,
            mean,
            true_cov: tc,
            cov,
            max_mean_pull,
            max_std_rel,
            max_corr_diff,
        });
    }
    Ok(out)
}
