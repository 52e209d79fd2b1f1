//! Event data: [`EventSet`] (samples `[N, D]` and labels `[N, L]`, f32), label
//! grouping, readers and writers ([`npy`]), synthetic generators ([`gaussian`],
//! [`phiomega`], [`phiomega_nd`])
//! and whitening ([`whiten`]).

pub mod efficiency;
pub mod expr;
pub mod files;
pub mod gaussian;
pub mod input;
pub mod npy;
pub mod phiomega;
pub mod phiomega_nd;
pub mod root;
pub mod source;
pub mod transform;
pub mod whiten;
pub(crate) mod wire;

use crate::error::{Error, Result};
use ndarray::{Array1, Array2, Axis};

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
    /// Per-event weights (Monte Carlo weights, possibly negative), or `None`
    /// for unweighted events (every weight 1; the arithmetic then stays the
    /// unweighted one, bit for bit). See [`EventSet::with_weights`].
    pub weights: Option<Array1<f32>>,
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
        Ok(EventSet { samples, labels, feature_names, label_names, weights: None })
    }

    /// The same events with per-event `weights` (one per event, finite;
    /// negative allowed). `source` names the data for error messages.
    pub fn with_weights(mut self, weights: Array1<f32>, source: &str) -> Result<Self> {
        if weights.len() != self.len() {
            return Err(Error::Data(format!("{source}: {} weights for {} events", weights.len(), self.len())));
        }
        if let Some((i, v)) = weights.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Data(format!("{source}: weights[{i}] is {v} (non-finite weights are not accepted)")));
        }
        self.weights = Some(weights);
        Ok(self)
    }

    /// The weight of event `i` (1 for unweighted events).
    pub fn weight(&self, i: usize) -> f32 {
        self.weights.as_ref().map_or(1.0, |w| w[i])
    }

    /// Every label point's sum of weights must be positive: a label whose
    /// weights sum to zero or less has no probability density to learn. The
    /// error names the label and its sum. Unweighted events always pass.
    pub fn check_label_weights(&self, source: &str) -> Result<()> {
        match &self.weights {
            Some(w) => self.normalize_weights(w, source).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The weights rescaled per label point to mean 1 (`w · n_label / Σ_label w`),
    /// or `None` for unweighted events. Training uses these: each label keeps the
    /// share of the loss its number of events gives it, as without weights,
    /// whatever the cross-section normalisation of its sample; within a label the
    /// loss is the weighted NLL `Σ wᵢ (−log pᵢ) / Σ wᵢ`.
    ///
    /// # Errors
    /// A label whose weights sum to zero or less ([`EventSet::check_label_weights`]).
    pub fn normalized_weights(&self, source: &str) -> Result<Option<Array1<f32>>> {
        self.weights.as_ref().map(|w| self.normalize_weights(w, source)).transpose()
    }

    /// `w` (one weight per event of this set) rescaled per label point to mean 1
    /// ([`normalize_weights`]).
    pub fn normalize_weights(&self, w: &Array1<f32>, source: &str) -> Result<Array1<f32>> {
        normalize_weights(&self.labels, &self.label_names, w, source)
    }

    /// The weights averaged over each event's `k` nearest neighbours at its
    /// label (itself included; distances in the features scaled by the
    /// label's weighted standard deviation), or `None` for unweighted events.
    ///
    /// Why: where positive and negative weights cancel (a subtraction, NLO
    /// samples), the weighted NLL is right only on average; its per-batch
    /// noise drives the flow's density in those regions on a random walk.
    /// Averaging over neighbours cancels the weights locally first, at the
    /// price of smoothing the distribution over the neighbours' distance
    /// (choose `k` well below the events per label). `k ≤ 1` leaves the
    /// weights as they are.
    pub fn smoothed_weights(&self, k: usize) -> Option<Array1<f32>> {
        let w = self.weights.as_ref()?;
        if k <= 1 {
            return Some(w.clone());
        }
        let d = self.n_features();
        let mut out = w.clone();
        let groups = self.label_groups();
        let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
        for members in &groups.members {
            let n = members.len();
            // Scale each feature by its spread at this label (unweighted, so
            // negative weights cannot make it vanish).
            let mut scale = vec![0f64; d];
            for (j, s) in scale.iter_mut().enumerate() {
                let mean = members.iter().map(|&i| f64::from(self.samples[[i, j]])).sum::<f64>() / n as f64;
                let var =
                    members.iter().map(|&i| (f64::from(self.samples[[i, j]]) - mean).powi(2)).sum::<f64>() / n as f64;
                *s = if var > 0.0 { 1.0 / var.sqrt() } else { 1.0 };
            }
            let points: Vec<f64> = members
                .iter()
                .flat_map(|&i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| f64::from(self.samples[[i, j]]) * scale[j])
                .collect();
            let tree = crate::knn::KdTree::new(&points, d, (0..n).collect());
            let kk = k.min(n);
            for (a, &i) in members.iter().enumerate() {
                tree.knn(&points[a * d..(a + 1) * d], kk, &mut heap);
                let sum: f64 = heap.iter().map(|h| f64::from(w[members[h.1]])).sum();
                out[i] = (sum / heap.len().max(1) as f64) as f32;
            }
        }
        Some(out)
    }

    /// Sum of the weights (the number of events when unweighted).
    pub fn weight_sum(&self) -> f64 {
        match &self.weights {
            Some(w) => w.iter().map(|&v| f64::from(v)).sum(),
            None => self.len() as f64,
        }
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
            samples: select_rows(&self.samples, rows),
            labels: select_rows(&self.labels, rows),
            feature_names: self.feature_names.clone(),
            label_names: self.label_names.clone(),
            weights: self.weights.as_ref().map(|w| w.select(Axis(0), rows)),
        }
    }

    /// Groups events by identical label rows (bitwise), groups sorted by label.
    pub fn label_groups(&self) -> LabelGroups {
        group_labels(&self.labels)
    }
}

/// Rows `rows` of `a`, in that order: `a.select(Axis(0), rows)` without
/// ndarray's view per selected row (about 50 bytes and a copy step each,
/// which on millions of rows cost more than the rows themselves).
///
/// # Panics
/// On a row out of range, as `select`.
pub fn select_rows<T: Clone>(a: &Array2<T>, rows: &[usize]) -> Array2<T> {
    let w = a.ncols();
    let Some(s) = a.as_slice() else { return a.select(Axis(0), rows) };
    let mut flat = Vec::with_capacity(rows.len() * w);
    for &r in rows {
        flat.extend_from_slice(&s[r * w..(r + 1) * w]);
    }
    Array2::from_shape_vec((rows.len(), w), flat).unwrap_or_else(|_| a.select(Axis(0), rows))
}

/// Groups the rows of `labels` by identical values (bitwise), groups sorted
/// by label, members ascending: [`EventSet::label_groups`] of labels alone
/// (a shard-local read groups its index before it reads any feature).
pub fn group_labels(labels: &Array2<f32>) -> LabelGroups {
    // One pass with a map from label key to group (a data set has few
    // distinct labels), then the groups sorted by key: beside the labels only
    // the members' indices are held (a sort of per-event keys cost ~20 bytes
    // per event more, the largest transient of loading at 10^7 events).
    let mut map: std::collections::HashMap<Vec<u32>, usize> = std::collections::HashMap::new();
    let mut keyed: Vec<(Vec<u32>, Vec<usize>)> = Vec::new();
    let mut key: Vec<u32> = Vec::with_capacity(labels.ncols());
    for (i, row) in labels.rows().into_iter().enumerate() {
        key.clear();
        key.extend(row.iter().map(|v| total_key(*v)));
        let g = match map.get(key.as_slice()) {
            Some(&g) => g,
            None => {
                map.insert(key.clone(), keyed.len());
                keyed.push((key.clone(), Vec::new()));
                keyed.len() - 1
            }
        };
        keyed[g].1.push(i);
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(keyed.len());
    let mut members = Vec::with_capacity(keyed.len());
    for (_, m) in keyed {
        out.push(labels.row(m[0]).to_vec());
        members.push(m);
    }
    LabelGroups { labels: out, members }
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

/// `w` (one weight per row of `labels`) rescaled per label point to mean 1
/// (`w · n_label / Σ_label w`); an error naming the first label (with
/// `label_names`) whose weights sum to zero or less.
pub fn normalize_weights(
    labels: &Array2<f32>,
    label_names: &[String],
    w: &Array1<f32>,
    source: &str,
) -> Result<Array1<f32>> {
    if w.len() != labels.nrows() {
        return Err(Error::Data(format!("{source}: {} weights for {} events", w.len(), labels.nrows())));
    }
    let groups = group_labels(labels);
    let mut out = Array1::<f32>::zeros(w.len());
    for (label, members) in groups.labels.iter().zip(&groups.members) {
        let sum: f64 = members.iter().map(|&i| f64::from(w[i])).sum();
        if sum.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            let names: Vec<String> = label_names.iter().zip(label).map(|(n, v)| format!("{n} = {v}")).collect();
            return Err(Error::Data(format!(
                "{source}: the weights of the {} events at label [{}] sum to {sum}: \
                 a label's weights must sum to a positive number",
                members.len(),
                names.join(", ")
            )));
        }
        let scale = members.len() as f64 / sum;
        for &i in members {
            out[i] = (f64::from(w[i]) * scale) as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_rows_is_select() {
        let a = Array2::from_shape_fn((5, 3), |(i, j)| (10 * i + j) as f32);
        let t = a.t().to_owned().reversed_axes(); // the same values, column-major
        let none = Array2::<f32>::zeros((4, 0));
        for rows in [vec![], vec![4, 0, 0, 2], (0..5).collect()] {
            assert_eq!(select_rows(&a, &rows), a.select(Axis(0), &rows));
            assert_eq!(select_rows(&t, &rows), a.select(Axis(0), &rows));
            let r: Vec<usize> = rows.iter().filter(|&&r| r < 4).copied().collect();
            assert_eq!(select_rows(&none, &r).dim(), (r.len(), 0));
        }
    }
}
