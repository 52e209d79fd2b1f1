//! Whitening of features and labels, as the prototype did it: per dimension,
//! min-max to the unit interval, an optional logit (so a hard edge becomes a
//! tail), then standardisation.
//!
//! For a dimension with range `[lo, hi]`, margin `eps` and moments `(mean, std)`
//! of the intermediate value:
//!
//! ```text
//! y  = (x - lo) / (hi - lo)
//! y' = logit(eps + (1 - 2 eps) y)      if logit, else y
//! z  = (y' - mean) / std
//! log|dz/dx| = -ln(hi - lo) - ln(std) [+ ln(1 - 2 eps) - ln(u) - ln(1 - u)],  u = eps + (1 - 2 eps) y
//! ```
//!
//! The statistics are reduced across ranks through a [`Communicator`] so every
//! rank normalises identically; they are stored in the model file.

use crate::comm::Communicator;
use crate::error::{Error, Result};
use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How one dimension is transformed; the fitted statistics are filled in by [`Whitening::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimWhitening {
    /// Name of the feature or label.
    pub name: String,
    /// Lower end of the min-max range.
    pub min: f64,
    /// Upper end of the min-max range.
    pub max: f64,
    /// Whether the logit is applied after min-max scaling.
    pub logit: bool,
    /// Margin that keeps the logit finite at the range ends.
    pub eps: f64,
    /// Mean of the intermediate value (after min-max and logit).
    pub mean: f64,
    /// Standard deviation of the intermediate value.
    pub std: f64,
}

impl DimWhitening {
    fn range(&self) -> f64 {
        self.max - self.min
    }
}

/// Whitening of a group of dimensions (all features, or all labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whitening {
    /// One entry per dimension, in column order.
    pub dims: Vec<DimWhitening>,
}

/// Per-dimension options for [`Whitening::fit`].
#[derive(Debug, Clone)]
pub struct WhitenSpec {
    /// Dimension names.
    pub names: Vec<String>,
    /// Logit flag per dimension.
    pub logit: Vec<bool>,
    /// Logit margin.
    pub eps: f64,
}

impl Whitening {
    /// Fits the statistics on `data` (rows = events), reduced over all ranks of `comm`.
    ///
    /// Degenerate dimensions (a single value) get a unit range and unit width so
    /// the transform stays invertible.
    pub fn fit(data: ArrayView2<'_, f32>, spec: &WhitenSpec, comm: &dyn Communicator) -> Result<Self> {
        Self::fit_weighted(data, None, spec, comm)
    }

    /// [`Whitening::fit`] with per-event weights: the range is the events'
    /// (whatever their weight), the moments are weighted (`Σ w y / Σ w`); with
    /// `None` every weight is 1 and the result is [`Whitening::fit`]'s, bit for bit.
    pub fn fit_weighted(
        data: ArrayView2<'_, f32>,
        weights: Option<ArrayView1<'_, f32>>,
        spec: &WhitenSpec,
        comm: &dyn Communicator,
    ) -> Result<Self> {
        let d = data.ncols();
        if let Some(w) = &weights {
            if w.len() != data.nrows() {
                return Err(Error::Data(format!("whitening: {} weights for {} events", w.len(), data.nrows())));
            }
        }
        let weight = |i: usize| weights.as_ref().map_or(1.0, |w| f64::from(w[i]));
        if spec.names.len() != d || spec.logit.len() != d {
            return Err(Error::Data(format!(
                "whitening: {} columns but {} names and {} logit flags",
                d,
                spec.names.len(),
                spec.logit.len()
            )));
        }
        if !(0.0..0.5).contains(&spec.eps) {
            return Err(Error::Config(format!("logit eps must be in [0, 0.5), got {}", spec.eps)));
        }
        let mut lo = vec![f64::INFINITY; d];
        let mut hi = vec![f64::NEG_INFINITY; d];
        for row in data.rows() {
            for (j, &v) in row.iter().enumerate() {
                lo[j] = lo[j].min(f64::from(v));
                hi[j] = hi[j].max(f64::from(v));
            }
        }
        let mut count = [match &weights {
            Some(w) => w.iter().map(|&v| f64::from(v)).sum(),
            None => data.nrows() as f64,
        }];
        comm.allreduce_min_f64(&mut lo)?;
        comm.allreduce_max_f64(&mut hi)?;
        comm.allreduce_sum_f64(&mut count)?;
        if count[0] <= 0.0 || !count[0].is_finite() {
            return Err(Error::Data(format!(
                "whitening: no events (or a weight sum of {}) to fit the statistics on",
                count[0]
            )));
        }
        let mut dims: Vec<DimWhitening> = (0..d)
            .map(|j| {
                let (min, max) = if hi[j] > lo[j] { (lo[j], hi[j]) } else { (lo[j] - 0.5, lo[j] + 0.5) };
                DimWhitening {
                    name: spec.names[j].clone(),
                    min,
                    max,
                    logit: spec.logit[j],
                    eps: spec.eps,
                    mean: 0.0,
                    std: 1.0,
                }
            })
            .collect();
        // Second pass: moments of the intermediate value.
        let mut sums = vec![0.0f64; 2 * d];
        for (i, row) in data.rows().into_iter().enumerate() {
            let w = weight(i);
            for (j, &v) in row.iter().enumerate() {
                let y = dims[j].pre(f64::from(v));
                if weights.is_some() {
                    sums[2 * j] += w * y;
                    sums[2 * j + 1] += w * y * y;
                } else {
                    sums[2 * j] += y;
                    sums[2 * j + 1] += y * y;
                }
            }
        }
        comm.allreduce_sum_f64(&mut sums)?;
        for (j, dim) in dims.iter_mut().enumerate() {
            let mean = sums[2 * j] / count[0];
            let var = (sums[2 * j + 1] / count[0] - mean * mean).max(0.0);
            dim.mean = mean;
            dim.std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
        }
        Ok(Whitening { dims })
    }

    /// Number of dimensions.
    pub fn dim(&self) -> usize {
        self.dims.len()
    }

    /// Names of the dimensions.
    pub fn names(&self) -> Vec<String> {
        self.dims.iter().map(|d| d.name.clone()).collect()
    }

    /// Checks that every statistic is finite and usable.
    pub fn validate(&self) -> Result<()> {
        for d in &self.dims {
            let ok = d.min.is_finite()
                && d.max.is_finite()
                && d.max > d.min
                && d.mean.is_finite()
                && d.std.is_finite()
                && d.std > 0.0
                && (0.0..0.5).contains(&d.eps);
            if !ok {
                return Err(Error::Data(format!("whitening of '{}' has invalid statistics: {d:?}", d.name)));
            }
        }
        Ok(())
    }

    fn stat(&self, device: Device, f: impl Fn(&DimWhitening) -> f64) -> Tensor {
        let v: Vec<f32> = self.dims.iter().map(|d| f(d) as f32).collect();
        Tensor::from_slice(&v).to_device(device)
    }

    fn any_logit(&self) -> bool {
        self.dims.iter().any(|d| d.logit)
    }

    /// Raw values → whitened values.
    ///
    /// # Shapes
    /// `xs: [N, D]` → `[N, D]`
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let dev = xs.device();
        let y = (xs - self.stat(dev, |d| d.min)) / self.stat(dev, |d| d.range());
        let y = if self.any_logit() {
            let eps = self.stat(dev, |d| d.eps);
            let u = &eps + (-&eps * 2.0 + 1.0) * &y;
            let lg = u.log() - (-&u + 1.0).log();
            lg.where_self(&self.stat(dev, |d| f64::from(u8::from(d.logit))).gt(0.5), &y)
        } else {
            y
        };
        (y - self.stat(dev, |d| d.mean)) / self.stat(dev, |d| d.std)
    }

    /// Whitened values → raw values (exact inverse of [`Whitening::forward`]).
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        let dev = zs.device();
        let y = zs * self.stat(dev, |d| d.std) + self.stat(dev, |d| d.mean);
        let y = if self.any_logit() {
            let eps = self.stat(dev, |d| d.eps);
            let u = (y.sigmoid() - &eps) / (-&eps * 2.0 + 1.0);
            u.where_self(&self.stat(dev, |d| f64::from(u8::from(d.logit))).gt(0.5), &y)
        } else {
            y
        };
        y * self.stat(dev, |d| d.range()) + self.stat(dev, |d| d.min)
    }

    /// `log |det dz/dx|` per event: add it to a density of whitened values to get
    /// the density of raw values.
    ///
    /// # Shapes
    /// `xs: [N, D]` → `[N]`
    pub fn log_abs_det(&self, xs: &Tensor) -> Tensor {
        let dev = xs.device();
        let n = xs.size()[0];
        let constant: f64 = self.dims.iter().map(|d| -d.range().ln() - d.std.ln()).sum();
        let base = Tensor::full([n], constant, (Kind::Float, dev));
        if !self.any_logit() {
            return base;
        }
        let eps = self.stat(dev, |d| d.eps);
        let y = (xs - self.stat(dev, |d| d.min)) / self.stat(dev, |d| d.range());
        let u = &eps + (-&eps * 2.0 + 1.0) * &y;
        let term = (-&eps * 2.0 + 1.0).log() - u.log() - (-&u + 1.0).log();
        let mask = self.stat(dev, |d| f64::from(u8::from(d.logit))).gt(0.5);
        // `where`, not a product: the logit term is NaN outside the range on
        // dimensions without logit, and NaN * 0 would poison the sum.
        let term = term.where_self(&mask, &term.zeros_like());
        base + term.sum_dim_intlist(1, false, Kind::Float)
    }
}

impl DimWhitening {
    /// Min-max and logit of one raw value (before standardisation).
    fn pre(&self, x: f64) -> f64 {
        let y = (x - self.min) / self.range();
        if self.logit {
            let u = self.eps + (1.0 - 2.0 * self.eps) * y;
            (u / (1.0 - u)).ln()
        } else {
            y
        }
    }
}
