//! From a data set's label groups to the shard plan: which labels validate
//! (`data.validation_labels`), which are held out (`data.holdout_labels`),
//! and the plan every rank computes alike ([`make_plan`]).

use super::shard::ShardPlan;
use crate::config::RunConfig;
use crate::data::same_label;
use crate::data::wire::{Reader, Writer};
use crate::data::{EventSet, LabelGroups};
use crate::error::{Error, Result};

/// Whether a label row of the data is the configured label `h` ([`same_label`]).
pub(crate) fn is_label<'a>(row: impl IntoIterator<Item = &'a f32>, h: &[f64]) -> bool {
    let mut n = 0;
    let all = row.into_iter().zip(h).all(|(&a, &b)| {
        n += 1;
        crate::data::same_label_value(f64::from(a), b)
    });
    all && n == h.len()
}

/// What the shard plan needs of a data set's label groups: each group's
/// label and number of events. O(labels), not O(events): rank 0 sends it to
/// every rank ([`GroupSummary::to_bytes`]) so that each computes its own plan.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    /// The distinct label rows, sorted (as [`LabelGroups::labels`]).
    pub labels: Vec<Vec<f32>>,
    /// Events per group.
    pub sizes: Vec<usize>,
}

impl GroupSummary {
    /// The summary of `groups`.
    pub fn of(groups: &LabelGroups) -> Self {
        GroupSummary { labels: groups.labels.clone(), sizes: groups.members.iter().map(Vec::len).collect() }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of events in all groups.
    pub fn n_events(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// The summary as bytes ([`GroupSummary::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.len(self.labels.len());
        for (label, &size) in self.labels.iter().zip(&self.sizes) {
            w.f32s(label.iter());
            w.len(size);
        }
        w.0
    }

    /// Decodes [`GroupSummary::to_bytes`].
    ///
    /// # Errors
    /// [`Error::Comm`] for truncated or corrupt bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "label groups");
        let n = r.len(16)?;
        let mut out = GroupSummary { labels: Vec::with_capacity(n), sizes: Vec::with_capacity(n) };
        for _ in 0..n {
            out.labels.push(r.f32s()?);
            let size = r.u64()?;
            out.sizes.push(usize::try_from(size).map_err(|_| Error::Comm("label groups: size out of range".into()))?);
        }
        r.end()?;
        Ok(out)
    }
}

/// Indices (into `groups`) of the label groups named by `data.validation_labels`,
/// sorted; an error naming the key and the label for a label with the wrong number
/// of values, one also held out, or one without events.
pub fn validation_groups(cfg: &RunConfig, groups: &GroupSummary, n_labels: usize) -> Result<Vec<usize>> {
    let d = &cfg.data;
    let mut out = Vec::new();
    for v in &d.validation_labels {
        if v.len() != n_labels {
            return Err(Error::Config(format!(
                "data.validation_labels: {v:?} has {} values, the data has {n_labels} labels",
                v.len()
            )));
        }
        if d.holdout_labels.iter().any(|h| same_label(h, v)) {
            return Err(Error::Config(format!(
                "data.validation_labels: {v:?} is also in data.holdout_labels: a label either validates or is left out"
            )));
        }
        let found: Vec<usize> = (0..groups.len()).filter(|&g| is_label(&groups.labels[g], v)).collect();
        if found.is_empty() {
            return Err(Error::Config(format!("data.validation_labels: no events at label {v:?} in the input")));
        }
        out.extend(found);
    }
    out.sort_unstable();
    out.dedup();
    // Outside the training labels' range a logit of the labels is not finite.
    if d.logit_labels && !out.is_empty() {
        let train: Vec<&Vec<f32>> = (0..groups.len()).filter(|g| !out.contains(g)).map(|g| &groups.labels[g]).collect();
        for &g in &out {
            let lab = &groups.labels[g];
            let inside = (0..n_labels).all(|j| {
                let lo = train.iter().map(|t| t[j]).fold(f32::INFINITY, f32::min);
                let hi = train.iter().map(|t| t[j]).fold(f32::NEG_INFINITY, f32::max);
                lab[j] >= lo && lab[j] <= hi
            });
            if !inside {
                return Err(Error::Config(format!(
                    "data.validation_labels: {lab:?} lies outside the range of the training labels, where \
                     data.logit_labels is not finite: validate at labels inside the grid"
                )));
            }
        }
    }
    Ok(out)
}

/// The shard plan of `rank` of `world` for events grouped as `groups`, with the
/// configured validation; a configuration error when it leaves no training events,
/// or no validation events while early stopping needs them.
pub fn make_plan(
    cfg: &RunConfig,
    groups: &GroupSummary,
    n_labels: usize,
    world: usize,
    rank: usize,
) -> Result<ShardPlan> {
    let val_groups = validation_groups(cfg, groups, n_labels)?;
    let plan = ShardPlan::new(&groups.sizes, world, rank, cfg.data.validation_fraction, &val_groups, cfg.training.seed);
    if plan.n_train == 0 {
        return Err(Error::Config(format!(
            "data.validation_labels: {:?} leave no events for training",
            cfg.data.validation_labels
        )));
    }
    let strata = cfg.training.batch_strata;
    if strata > plan.n_train {
        return Err(Error::Config(format!(
            "training.batch_strata = {strata} exceeds the {} training events: use 0 (the world size) or fewer strata",
            plan.n_train
        )));
    }
    let patience = cfg.training.early_stopping_patience;
    if patience > 0 && plan.n_val == 0 {
        return Err(Error::Config(format!(
            "training.early_stopping_patience = {patience} needs validation events, but data.validation_fraction = {} \
             selects none: raise it or set data.validation_labels",
            cfg.data.validation_fraction
        )));
    }
    Ok(plan)
}

/// Removes the events at the held-out labels; every held-out label must exist in the data.
pub fn drop_holdout(events: EventSet, holdout: &[Vec<f64>]) -> Result<EventSet> {
    match holdout_keep(&events.labels, holdout)? {
        Some(keep) => Ok(events.select(&keep)),
        None => Ok(events),
    }
}

/// The rows of `labels` outside the held-out labels (`None`: no label held
/// out, keep all); every held-out label must exist in the data.
pub fn holdout_keep(labels: &ndarray::Array2<f32>, holdout: &[Vec<f64>]) -> Result<Option<Vec<usize>>> {
    if holdout.is_empty() {
        return Ok(None);
    }
    let l = labels.ncols();
    let same = |row: ndarray::ArrayView1<'_, f32>, h: &[f64]| is_label(row, h);
    for h in holdout {
        if h.len() != l {
            return Err(Error::Config(format!(
                "data.holdout_labels: {h:?} has {} values, the data has {l} labels",
                h.len()
            )));
        }
        if !labels.rows().into_iter().any(|r| same(r, h)) {
            return Err(Error::Config(format!("data.holdout_labels: no events at label {h:?} in the input")));
        }
    }
    let keep: Vec<usize> = (0..labels.nrows()).filter(|&i| !holdout.iter().any(|h| same(labels.row(i), h))).collect();
    if keep.is_empty() {
        return Err(Error::Data("data.holdout_labels leave no events for training".into()));
    }
    tracing::info!(
        held_out = labels.nrows() - keep.len(),
        labels = holdout.len(),
        "held-out labels removed from training"
    );
    Ok(Some(keep))
}

/// The training weights of `events`: smoothed over `data.weight_smoothing`
/// neighbours ([`EventSet::smoothed_weights`]), then rescaled to mean 1 per
/// label ([`EventSet::normalized_weights`]); `None` for unweighted events.
/// Every rank computes them on the whole input, before sharding, so they do
/// not depend on the world size.
pub fn training_weights(cfg: &RunConfig, events: &EventSet) -> Result<Option<ndarray::Array1<f32>>> {
    let Some(raw) = &events.weights else { return Ok(None) };
    let smoothed = events.smoothed_weights(cfg.data.weight_smoothing).unwrap_or_else(|| raw.clone());
    normalized_training_weights(cfg, &events.labels, &events.label_names, &smoothed).map(Some)
}

/// Weights `w` of events at `labels`, rescaled to mean 1 per label (what
/// [`training_weights`] does after its smoothing); notes negative weights in the log.
pub fn normalized_training_weights(
    cfg: &RunConfig,
    labels: &ndarray::Array2<f32>,
    label_names: &[String],
    w: &ndarray::Array1<f32>,
) -> Result<ndarray::Array1<f32>> {
    let negative = w.iter().filter(|&&v| v < 0.0).count();
    if negative > 0 {
        tracing::info!(
            negative,
            events = w.len(),
            smoothing = cfg.data.weight_smoothing,
            "negative event weights: the weighted NLL is right on average, its noise is larger \
             (data.weight_smoothing averages weights over neighbours)"
        );
    }
    crate::data::normalize_weights(labels, label_names, w, "training events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_summaries_round_trip() {
        let labels = ndarray::array![[1.0f32, 2.0], [0.5, -0.0], [1.0, 2.0]];
        let s = GroupSummary::of(&crate::data::group_labels(&labels));
        assert_eq!((s.len(), s.n_events()), (2, 3));
        let b = s.to_bytes();
        assert_eq!(GroupSummary::from_bytes(&b).unwrap(), s);
        assert!((0..b.len()).all(|cut| GroupSummary::from_bytes(&b[..cut]).is_err()));
        let none = GroupSummary { labels: vec![], sizes: vec![] };
        assert_eq!(GroupSummary::from_bytes(&none.to_bytes()).unwrap(), none);
    }
}
