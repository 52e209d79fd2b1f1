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
        for (v, dim) in lab.iter().zip(&model.labels.dims) {
            let v = f64::from(*v);
            if v < dim.min || v > dim.max {
                warnings.push(format!(
                    "label {lab:?}: {} = {v} is outside the training range [{}, {}] (extrapolation)",
                    dim.name, dim.min, dim.max
                ));
            }
        }
    }
    Ok(warnings)
}

/// Draws `n` events at each label, `chunk` events per network call.
pub fn sample_at_labels(model: &Model, labels: &[Vec<f32>], n: usize, seed: u64, chunk: usize) -> Result<EventSet> {
    check_labels(model, labels)?;
    if labels.is_empty() || n == 0 {
        return Err(Error::Data("nothing to generate: need at least one label and n > 0".into()));
    }
    let (d, l) = (model.n_features(), model.n_labels());
    let total = labels.len() * n;
    let mut samples = Array2::<f32>::zeros((total, d));
    let mut labs = Array2::<f32>::zeros((total, l));
    let _rng = crate::rng::seeded(seed);
    let chunk = chunk.max(1);
    let mut row = 0;
    for lab in labels {
        let mut left = n;
        while left > 0 {
            let m = left.min(chunk);
            let cs = Tensor::from_slice(lab).view([1, l as i64]).expand([m as i64, l as i64], false);
            let xs = model.sample(&cs).to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
            let mut buf = vec![0f32; m * d];
            xs.copy_data(&mut buf, m * d);
            for i in 0..m {
                for j in 0..d {
                    samples[[row + i, j]] = buf[i * d + j];
                }
                for j in 0..l {
                    labs[[row + i, j]] = lab[j];
                }
            }
            row += m;
            left -= m;
        }
    }
    EventSet::new(samples, labs, model.features.names(), model.labels.names(), "generated events")
}

/// Parses `"0.55,0.45"` into a label vector.
pub fn parse_label(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|_| Error::Config(format!("label '{s}': '{p}' is not a number"))))
        .collect()
}
