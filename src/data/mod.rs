//! Event data: [`EventSet`] (samples `[N, D]` and labels `[N, L]`, f32), label
//! grouping, readers and writers ([`npy`]), synthetic generators ([`gaussian`],
//! [`phiomega`], [`phiomega_nd`])
//! and whitening ([`whiten`]).

pub mod efficiency;
pub mod expr;
pub mod files;
pub mod gaussian;
pub mod npy;
pub mod phiomega;
pub mod phiomega_nd;
pub mod root;
pub mod source;
pub mod transform;
pub mod whiten;

use crate::error::{Error, Result};
use ndarray::{Array2, Axis};

/// A set of events: features and the labels (generator parameters) they were simulated at.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSet {
    /// Features, one row per event.
    pub samples: Array2<f32>,
    /// Labels, one row per event.
    pub labels: Array2<f32>,
    /// Name of each feature column.
    pub feature_names: Vec<String>,
    /// Name of each label column.
    pub label_names: Vec<String>,
}

/// Default names `prefix0, prefix1, ...`.
pub fn default_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn check_finite(name: &str, source: &str, a: &Array2<f32>) -> Result<()> {
    for ((i, j), v) in a.indexed_iter() {
        if !v.is_finite() {
            return Err(Error::Data(format!("{source}: {name}[{i}, {j}] is {v} (non-finite values are not accepted)")));
        }
    }
    Ok(())
}

impl EventSet {
    /// Validates and builds an event set. `source` names where the data came
    /// from, for error messages. Names default to `x0..`, `label0..` when empty.
    pub fn new(
        samples: Array2<f32>,
        labels: Array2<f32>,
        feature_names: Vec<String>,
        label_names: Vec<String>,
        source: &str,
    ) -> Result<Self> {
        if samples.nrows() == 0 {
            return Err(Error::Data(format!("{source}: no events")));
        }
        if samples.ncols() == 0 {
            return Err(Error::Data(format!("{source}: samples have no feature columns")));
        }
        if samples.nrows() != labels.nrows() {
            return Err(Error::Data(format!(
                "{source}: {} rows of samples but {} rows of labels",
                samples.nrows(),
                labels.nrows()
            )));
        }
        let feature_names = if feature_names.is_empty() { default_names("x", samples.ncols()) } else { feature_names };
        let label_names = if label_names.is_empty() { default_names("label", labels.ncols()) } else { label_names };
        if feature_names.len() != samples.ncols() {
            return Err(Error::Data(format!(
                "{source}: {} feature names for {} feature columns",
                feature_names.len(),
                samples.ncols()
            )));
        }
        if label_names.len() != labels.ncols() {
            return Err(Error::Data(format!(
                "{source}: {} label names for {} label columns",
                label_names.len(),
                labels.ncols()
            )));
        }
        check_finite("samples", source, &samples)?;
        check_finite("labels", source, &labels)?;
        Ok(EventSet { samples, labels, feature_names, label_names })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.samples.nrows()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of features `D`.
    pub fn n_features(&self) -> usize {
        self.samples.ncols()
    }

    /// Number of labels `L`.
    pub fn n_labels(&self) -> usize {
        self.labels.ncols()
    }

    /// The events at the given row indices, in that order.
    pub fn select(&self, rows: &[usize]) -> EventSet {
        EventSet {
            samples: self.samples.select(Axis(0), rows),
            labels: self.labels.select(Axis(0), rows),
            feature_names: self.feature_names.clone(),
            label_names: self.label_names.clone(),
        }
    }

    /// Groups events by identical label rows (bitwise), groups sorted by label.
    pub fn label_groups(&self) -> LabelGroups {
        let mut keyed: Vec<(Vec<u32>, usize)> = self
            .labels
            .rows()
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r.iter().map(|v| total_key(*v)).collect(), i))
            .collect();
        keyed.sort();
        let mut labels: Vec<Vec<f32>> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut last: Option<&Vec<u32>> = None;
        for (key, i) in &keyed {
            if last != Some(key) {
                labels.push(self.labels.row(*i).to_vec());
                members.push(Vec::new());
                last = Some(key);
            }
            if let Some(m) = members.last_mut() {
                m.push(*i);
            }
        }
        LabelGroups { labels, members }
    }
}

/// Order-preserving integer key of a float (sorts like `f32::total_cmp`).
fn total_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Events grouped by label point.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelGroups {
    /// The distinct label rows, sorted.
    pub labels: Vec<Vec<f32>>,
    /// Event indices of each group, ascending.
    pub members: Vec<Vec<usize>>,
}

impl LabelGroups {
    /// Number of distinct labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Whether two labels are the same point: every value within a relative
/// 1e-5 of the larger (configured labels are decimal, the data's and model
/// files' float32, efficiency tables rounded decimals; float32 rounding is
/// 6e-8). The one rule for matching labels anywhere: held-out and
/// validation labels, efficiency tables, the report's reference labels.
pub fn same_label(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same_label_value(x, y))
}

/// One value of [`same_label`]: within a relative 1e-5 of the larger.
pub fn same_label_value(x: f64, y: f64) -> bool {
    x == y || (x - y).abs() <= 1e-5 * x.abs().max(y.abs())
}

/// [`same_label`] of two float32 labels.
pub fn same_label_f32(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same_label_value(f64::from(x), f64::from(y)))
}
