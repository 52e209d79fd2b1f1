//! A run's input indexed before it is read ([`InputIndex`]): every event's
//! label and weight and where it lives, without its features. Training plans
//! its shards on the index; each rank then reads the features of its own
//! events only ([`InputIndex::read`]), so memory and reading per rank follow
//! the shard, not the whole data set.
//!
//! The index holds the events [`super::source::load`] (ROOT) or
//! [`super::npy::read_npz`] (`.npz`) would return, in the same order, and
//! [`InputIndex::read`] of some rows returns exactly those loaders' events
//! at these rows: the plan, the local events and so the trained weights are
//! the ones of a full read.
//!
//! * ROOT: every file is read once for the index (cut, labels, weight and,
//!   since an event with an invalid or non-finite feature is dropped, the
//!   features — each file's values live only while it is read), then a rank
//!   reopens the files holding its events and keeps only their entries.
//! * `.npz`: the index reads `labels` (and `weights`) and only the header of
//!   `samples`; a rank reads its rows of `samples` by seeking (stored
//!   archives, as numpy's `savez` and fedhex write them; a compressed
//!   archive is decompressed and selected).

use super::npy;
use super::source::{self, RootIndex, RootInput};
use super::EventSet;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2, Axis};
use std::path::PathBuf;

/// Where the indexed events live.
#[derive(Debug, Clone)]
enum Locator {
    /// ROOT input: the selection and its index.
    Root { input: Box<RootInput>, index: RootIndex },
    /// An `.npz`: the archive, and the archive row of each indexed event
    /// (`None`: every row in order, stored as nothing).
    Npz { path: PathBuf, rows: Option<Vec<usize>>, features: Vec<String> },
}

/// Labels, weights and locations of a run's input events (see the module docs).
#[derive(Debug, Clone)]
pub struct InputIndex {
    /// Labels `[N, L]` of the events, in the full loader's order.
    pub labels: Array2<f32>,
    /// The events' weights as read (weighted input only).
    pub weights: Option<Array1<f32>>,
    /// Label names.
    pub label_names: Vec<String>,
    locator: Locator,
}

impl InputIndex {
    /// Indexes the ROOT selection `root`, or else the `.npz` at `path` (with
    /// the configured feature and label names; empty names default as in
    /// [`EventSet::new`]).
    ///
    /// # Errors
    /// As the full loaders, for everything but the feature values of an `.npz`
    /// (checked by [`InputIndex::read`] on the rows read).
    pub fn build(
        root: Option<&RootInput>,
        path: &std::path::Path,
        features: &[String],
        labels: &[String],
    ) -> Result<Self> {
        match root {
            Some(input) => {
                let (index, report) = source::index(input)?;
                tracing::info!("{report}");
                Ok(InputIndex {
                    labels: index.labels.clone(),
                    weights: index.weights.clone(),
                    label_names: index.label_names.clone(),
                    locator: Locator::Root { input: Box::new(input.clone()), index },
                })
            }
            None => {
                let (lab, weights) = npy::index_npz(path)?;
                let label_names =
                    if labels.is_empty() { super::default_names("label", lab.ncols()) } else { labels.to_vec() };
                if label_names.len() != lab.ncols() {
                    return Err(Error::Data(format!(
                        "{}: {} label names for {} label columns",
                        path.display(),
                        label_names.len(),
                        lab.ncols()
                    )));
                }
                if let Some(w) = &weights {
                    super::normalize_weights(&lab, &label_names, w, &path.display().to_string())?;
                }
                Ok(InputIndex {
                    labels: lab,
                    weights,
                    label_names,
                    locator: Locator::Npz { path: path.to_path_buf(), rows: None, features: features.to_vec() },
                })
            }
        }
    }

    /// Number of indexed events.
    pub fn len(&self) -> usize {
        self.labels.nrows()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The indexed events at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> InputIndex {
        InputIndex {
            labels: self.labels.select(Axis(0), rows),
            weights: self.weights.as_ref().map(|w| w.select(Axis(0), rows)),
            label_names: self.label_names.clone(),
            locator: match &self.locator {
                Locator::Root { input, index } => Locator::Root { input: input.clone(), index: index.select(rows) },
                Locator::Npz { path, rows: at, features } => Locator::Npz {
                    path: path.clone(),
                    rows: Some(rows.iter().map(|&r| at.as_ref().map_or(r, |a| a[r])).collect()),
                    features: features.clone(),
                },
            },
        }
    }

    /// No events, with the input's columns (a rank whose shard is empty).
    fn empty(&self) -> Result<EventSet> {
        let feature_names = match &self.locator {
            Locator::Root { index, .. } => index.feature_names.clone(),
            Locator::Npz { path, features, .. } => {
                let (_, d) = npy::npz_shape(path, "samples")?;
                if features.is_empty() {
                    super::default_names("x", d)
                } else {
                    features.clone()
                }
            }
        };
        Ok(EventSet {
            samples: Array2::zeros((0, feature_names.len())),
            labels: Array2::zeros((0, self.labels.ncols())),
            feature_names,
            label_names: self.label_names.clone(),
            weights: self.weights.as_ref().map(|_| Array1::zeros(0)),
        })
    }

    /// The events at `rows` of the index, with features, labels and weights,
    /// in that order: only their files (ROOT) or rows (`.npz`) are read.
    ///
    /// # Errors
    /// Unreadable files or rows; non-finite feature values of an `.npz`
    /// (naming the archive row).
    pub fn read(&self, rows: &[usize]) -> Result<EventSet> {
        if rows.is_empty() {
            return self.empty();
        }
        match &self.locator {
            Locator::Root { input, index } => source::read_indexed(input, index, rows),
            Locator::Npz { path, rows: at, features } => {
                let file_rows: Vec<usize> = rows.iter().map(|&r| at.as_ref().map_or(r, |a| a[r])).collect();
                let samples = npy::read_npz_rows(path, "samples", &file_rows)?;
                let source = path.display().to_string();
                if let Some(((i, j), v)) = samples.indexed_iter().find(|(_, v)| !v.is_finite()) {
                    return Err(Error::Data(format!(
                        "{source}: samples[{}, {j}] is {v} (non-finite values are not accepted)",
                        file_rows[i]
                    )));
                }
                let labels = self.labels.select(Axis(0), rows);
                let es = EventSet::new(samples, labels, features.clone(), self.label_names.clone(), &source)?;
                match &self.weights {
                    Some(w) => es.with_weights(w.select(Axis(0), rows), &source),
                    None => Ok(es),
                }
            }
        }
    }
}
