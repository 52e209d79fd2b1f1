//! Generation at requested labels from a loaded model: whitens the labels,
//! samples in chunks, de-whitens. Seeded: the same seed gives the same events.

use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::Model;
use ndarray::Array2;
use tch::{Kind, Tensor};

/// Checks requested labels against the model: dimension must match; labels
/// outside the training range are allowed (extrapolation) but reported.
/// Returns one warning line per extrapolated label.
pub fn check_labels(model: &Model, labels: &[Vec<f32>]) -> Result<Vec<String>> {
    let l = model.n_labels();
    let mut warnings = Vec::new();
    for lab in labels {
        if lab.len() != l {
            return Err(Error::Data(format!(
                "label {lab:?} has {} values but the model is conditioned on {l} labels ({})",
                lab.len(),
                model.labels.names().join(", ")
            )));
        }
        if let Some(v) = lab.iter().find(|v| !v.is_finite()) {
            return Err(Error::Data(format!("label {lab:?} contains the non-finite value {v}")));
        }
        for ((v, dim), [lo, hi]) in lab.iter().zip(&model.labels.dims).zip(model.label_ranges()) {
            let v = f64::from(*v);
            if v < lo || v > hi {
                warnings.push(format!(
                    "label {lab:?}: {} = {v} is outside the training range [{lo}, {hi}] (extrapolation)",
                    dim.name
                ));
            }
        }
    }
    Ok(warnings)
}

/// A range cut on one generated feature (the prototype's `ranges`), applied by
/// resampling so that exactly `n` events per label survive.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeCut {
    /// Feature index.
    pub feature: usize,
    /// Lower bound (inclusive).
    pub lo: f64,
    /// Upper bound (inclusive).
    pub hi: f64,
}

impl RangeCut {
    /// Parses `name=lo:hi` (either bound may be empty) against the model's feature names.
    pub fn parse(spec: &str, names: &[String]) -> Result<Self> {
        let bad = || Error::Config(format!("range '{spec}': expected feature=lo:hi, e.g. omega=0.415:"));
        let (name, range) = spec.split_once('=').ok_or_else(bad)?;
        let (lo, hi) = range.split_once(':').ok_or_else(bad)?;
        let feature = names.iter().position(|n| n == name.trim()).ok_or_else(|| {
            Error::Config(format!("range '{spec}': no feature '{}' (the model has: {})", name.trim(), names.join(", ")))
        })?;
        let num = |t: &str, default: f64| -> Result<f64> {
            if t.trim().is_empty() {
                Ok(default)
            } else {
                t.trim().parse().map_err(|_| bad())
            }
        };
        let (lo, hi) = (num(lo, f64::NEG_INFINITY)?, num(hi, f64::INFINITY)?);
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            return Err(Error::Config(format!("range '{spec}': empty interval")));
        }
        Ok(RangeCut { feature, lo, hi })
    }

    fn keeps(&self, row: &[f32]) -> bool {
        row.get(self.feature).is_some_and(|&v| f64::from(v) >= self.lo && f64::from(v) <= self.hi)
    }
}

/// Draws `n` events at each label, `chunk` events per network call.
pub fn sample_at_labels(model: &Model, labels: &[Vec<f32>], n: usize, seed: u64, chunk: usize) -> Result<EventSet> {
    sample_with_cuts(model, labels, n, seed, chunk, &[])
}

/// Like [`sample_at_labels`], keeping only events inside every range cut and the
/// model's acceptance (the cuts its training data had); draws
/// more until `n` survive per label (an error if fewer than 1 in 10,000 pass).
pub fn sample_with_cuts(
    model: &Model,
    labels: &[Vec<f32>],
    n: usize,
    seed: u64,
    chunk: usize,
    cuts: &[RangeCut],
) -> Result<EventSet> {
    check_labels(model, labels)?;
    if labels.is_empty() || n == 0 {
        return Err(Error::Data("nothing to generate: need at least one label and n > 0".into()));
    }
    let (d, l) = (model.n_features(), model.n_labels());
    let mut samples: Vec<f32> = Vec::with_capacity(labels.len() * n * d);
    let mut labs: Vec<f32> = Vec::with_capacity(labels.len() * n * l);
    let _rng = crate::rng::seeded(seed);
    let chunk = chunk.max(1);
    for lab in labels {
        let mut kept = 0usize;
        let mut drawn = 0usize;
        while kept < n {
            if drawn >= 10_000 * n.max(100) {
                return Err(Error::Data(format!(
                    "label {lab:?}: only {kept} of {drawn} generated events pass the range cuts; loosen them"
                )));
            }
            let m = (n - kept).min(chunk).max(if cuts.is_empty() && model.acceptance.is_empty() {
                1
            } else {
                chunk.min(4096)
            });
            let cs = Tensor::from_slice(lab).view([1, l as i64]).expand([m as i64, l as i64], false);
            let xs = model.sample(&cs).to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
            let mut buf = vec![0f32; m * d];
            xs.copy_data(&mut buf, m * d);
            drawn += m;
            for row in buf.chunks_exact(d) {
                if kept < n && cuts.iter().all(|c| c.keeps(row)) && model.passes_acceptance(row) {
                    samples.extend_from_slice(row);
                    labs.extend_from_slice(lab);
                    kept += 1;
                }
            }
        }
    }
    let rows = samples.len() / d;
    let samples = Array2::from_shape_vec((rows, d), samples).map_err(|e| Error::Data(e.to_string()))?;
    let labs = Array2::from_shape_vec((rows, l), labs).map_err(|e| Error::Data(e.to_string()))?;
    EventSet::new(samples, labs, model.features.names(), model.labels.names(), "generated events")
}

/// A regular grid of labels from `lo:hi:n` per label dimension, e.g.
/// `["1000:3250:19", "0.5:9.5:19"]` (19 points = the 10 grid values and the 9 midpoints).
pub fn label_grid(specs: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut axes = Vec::with_capacity(specs.len());
    for s in specs {
        let p: Vec<&str> = s.split(':').collect();
        let parsed = (p.len() == 3)
            .then(|| {
                Some((
                    p[0].trim().parse::<f64>().ok()?,
                    p[1].trim().parse::<f64>().ok()?,
                    p[2].trim().parse::<usize>().ok()?,
                ))
            })
            .flatten();
        let (lo, hi, n) =
            parsed.ok_or_else(|| Error::Config(format!("grid axis '{s}': expected lo:hi:n, e.g. 0.5:9.5:19")))?;
        if n == 0 || (n > 1 && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)) {
            return Err(Error::Config(format!("grid axis '{s}': need n >= 1 and lo < hi")));
        }
        axes.push(
            (0..n)
                .map(|i| if n == 1 { lo } else { lo + (hi - lo) * i as f64 / (n - 1) as f64 } as f32)
                .collect::<Vec<f32>>(),
        );
    }
    let mut points: Vec<Vec<f32>> = vec![vec![]];
    for ax in axes {
        points = points.into_iter().flat_map(|p| ax.iter().map(move |&v| [p.clone(), vec![v]].concat())).collect();
    }
    Ok(points)
}

/// Parses `"0.55,0.45"` into a label vector.
pub fn parse_label(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|_| Error::Config(format!("label '{s}': '{p}' is not a number"))))
        .collect()
}
