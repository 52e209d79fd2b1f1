//! A run's input indexed before it is read ([`InputIndex`]): every event's
//! label and weight and where it lives, without its features; and one
//! rank's part of it ([`ShardLocator`]). Training indexes the input on rank
//! 0 alone, plans the shards there, and sends each rank the locator of its
//! own events (labels, weights, and runs of ROOT entries or `.npz` rows);
//! each rank then reads the features of its own events only
//! ([`ShardLocator::read`]). Memory and reading per rank follow the shard,
//! not the whole data set; only rank 0 holds (and spends the time on) the
//! index of the whole input.
//!
//! The index holds the events [`super::source::load`] (ROOT) or
//! [`super::npy::read_npz`] (`.npz`) would return, in the same order, and
//! [`InputIndex::read`] of some rows — or [`ShardLocator::read`] of the
//! locator of these rows — returns exactly those loaders' events at these
//! rows: the plan, the local events and so the trained weights are the ones
//! of a full read.
//!
//! * ROOT: every file is read once for the index (cut, labels, weight and,
//!   since an event with an invalid or non-finite feature is dropped, the
//!   features — each file's values live only while it is read), then a rank
//!   reopens the files holding its events and keeps only their entries.
//! * `.npz`: the index reads `labels` (and `weights`) and only the header of
//!   `samples`; a rank reads its rows of `samples` by seeking (stored
//!   archives, as numpy's `savez` and fedhex write them; a compressed
//!   archive is decompressed and selected).
//!
//! A locator names its events as [`Run`]s: consecutive entries (rows) of one
//! file, in the order the events come out — a shard is a chunk of every
//! label group, so for inputs stored label by label it is a few runs per
//! file. Its bytes ([`ShardLocator::to_bytes`]) are checked when decoded.

use super::npy;
use super::source::{self, RootIndex, RootInput};
use super::wire::{Reader, Writer};
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
            labels: super::select_rows(&self.labels, rows),
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
                let labels = super::select_rows(&self.labels, rows);
                let es = EventSet::new(samples, labels, features.clone(), self.label_names.clone(), &source)?;
                match &self.weights {
                    Some(w) => es.with_weights(w.select(Axis(0), rows), &source),
                    None => Ok(es),
                }
            }
        }
    }
}

/// `len` consecutive entries (ROOT) or archive rows (`.npz`) of one file,
/// from `first`: the unit a [`ShardLocator`] names its events in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index of the file (into [`Place::Root`]'s files; 0 for an `.npz`).
    pub file: u32,
    /// The first entry or row.
    pub first: u64,
    /// Number of consecutive entries or rows.
    pub len: u64,
}

/// Run-length encodes locations `(file, entry)` in their order: consecutive
/// entries of one file become one [`Run`]; the order is kept, so
/// [`decode_runs`] gives back exactly `at`.
pub fn encode_runs(at: impl IntoIterator<Item = (u32, u64)>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (file, entry) in at {
        match runs.last_mut() {
            Some(r) if r.file == file && r.first.checked_add(r.len) == Some(entry) => r.len += 1,
            _ => runs.push(Run { file, first: entry, len: 1 }),
        }
    }
    runs
}

/// The locations `(file, entry)` of `runs`, in order (see [`encode_runs`]).
pub fn decode_runs(runs: &[Run]) -> impl Iterator<Item = (u32, u64)> + '_ {
    runs.iter().flat_map(|r| (0..r.len).map(move |k| (r.file, r.first + k)))
}

/// Where one rank's events are in the input files.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// ROOT input: the files holding the events, and runs of their entries.
    Root {
        /// The files (only those holding events of the shard).
        files: Vec<PathBuf>,
        /// Entries, in the order the events come out.
        runs: Vec<Run>,
    },
    /// An `.npz` archive and runs of its rows.
    Npz {
        /// The archive.
        path: PathBuf,
        /// The configured feature names (empty: defaults).
        features: Vec<String>,
        /// Archive rows, in the order the events come out (file 0).
        runs: Vec<Run>,
    },
}

/// One rank's part of an indexed input: the labels and training weights of
/// its events and where they live, built by the rank that indexed the input
/// ([`InputIndex::locator`]), sent as bytes ([`ShardLocator::to_bytes`]) and
/// read by its rank ([`ShardLocator::read`]) without indexing the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLocator {
    /// Labels `[n, L]` of the events, in shard order.
    pub labels: Array2<f32>,
    /// Their weights (weighted input), as the index held them.
    pub weights: Option<Array1<f32>>,
    /// Label names.
    pub label_names: Vec<String>,
    /// Where the events live.
    pub place: Place,
}

const LOCATOR_MAGIC: &[u8; 4] = b"FXSL";

impl InputIndex {
    /// The locator of the indexed events at `rows`, in that order (what
    /// [`InputIndex::read`] of `rows` reads).
    pub fn locator(&self, rows: &[usize]) -> ShardLocator {
        let place = match &self.locator {
            Locator::Root { index, .. } => {
                // Only the files holding these events, renumbered in file order.
                let mut number = vec![u32::MAX; index.files.len()];
                rows.iter().for_each(|&r| number[index.at[r].0 as usize] = 0);
                let mut files = Vec::new();
                for (f, n) in number.iter_mut().enumerate().filter(|(_, n)| **n == 0) {
                    *n = files.len() as u32;
                    files.push(index.files[f].clone());
                }
                let runs = encode_runs(rows.iter().map(|&r| (number[index.at[r].0 as usize], index.at[r].1)));
                Place::Root { files, runs }
            }
            Locator::Npz { path, rows: at, features } => Place::Npz {
                path: path.clone(),
                features: features.clone(),
                runs: encode_runs(rows.iter().map(|&r| (0, at.as_ref().map_or(r, |a| a[r]) as u64))),
            },
        };
        ShardLocator {
            labels: super::select_rows(&self.labels, rows),
            weights: self.weights.as_ref().map(|w| w.select(Axis(0), rows)),
            label_names: self.label_names.clone(),
            place,
        }
    }
}

impl ShardLocator {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.labels.nrows()
    }

    /// Whether the shard is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The locator as bytes (little-endian, versioned; [`ShardLocator::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_bytes(&mut out);
        out
    }

    /// Appends [`ShardLocator::to_bytes`] to `out` (the parts of several
    /// ranks, one after the other, without a copy of each).
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        let mut w = Writer(std::mem::take(out));
        w.0.extend_from_slice(LOCATOR_MAGIC);
        w.u8(1);
        w.len(self.labels.nrows());
        w.strs(&self.label_names);
        w.f32s(self.labels.iter());
        match &self.weights {
            Some(v) => {
                w.u8(1);
                w.f32s(v.iter());
            }
            None => w.u8(0),
        }
        let runs = match &self.place {
            Place::Root { files, runs } => {
                w.u8(0);
                w.len(files.len());
                files.iter().for_each(|f| w.path(f));
                runs
            }
            Place::Npz { path, features, runs } => {
                w.u8(1);
                w.path(path);
                w.strs(features);
                runs
            }
        };
        w.len(runs.len());
        for r in runs {
            w.u32(r.file);
            w.u64(r.first);
            w.u64(r.len);
        }
        *out = w.0;
    }

    /// Decodes [`ShardLocator::to_bytes`]; every length and file number is
    /// checked, so corrupt bytes are an error.
    ///
    /// # Errors
    /// [`Error::Comm`] for bytes that are not a consistent locator.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Comm(format!("shard locator: {why} (a corrupt message between ranks)"));
        if bytes.get(..4) != Some(&LOCATOR_MAGIC[..]) {
            return Err(bad("not a shard locator"));
        }
        let mut r = Reader::new(&bytes[4..], "shard locator");
        if r.u8()? != 1 {
            return Err(bad("unknown version"));
        }
        let n = usize::try_from(r.u64()?).map_err(|_| bad("too many events"))?;
        let label_names = r.strs()?;
        let flat = r.f32s()?;
        if flat.len() != n.saturating_mul(label_names.len()) {
            return Err(bad("labels do not match the events"));
        }
        let labels = Array2::from_shape_vec((n, label_names.len()), flat).map_err(|e| bad(&e.to_string()))?;
        let weights = match r.u8()? {
            0 => None,
            _ => {
                let w = r.f32s()?;
                if w.len() != n {
                    return Err(bad("weights do not match the events"));
                }
                Some(Array1::from(w))
            }
        };
        let (place, n_files) = match r.u8()? {
            0 => {
                let k = r.len(8)?;
                let files = (0..k).map(|_| r.path()).collect::<Result<Vec<_>>>()?;
                (Place::Root { files, runs: read_runs(&mut r)? }, k)
            }
            _ => {
                let path = r.path()?;
                let features = r.strs()?;
                (Place::Npz { path, features, runs: read_runs(&mut r)? }, 1)
            }
        };
        r.end()?;
        let runs = match &place {
            Place::Root { runs, .. } | Place::Npz { runs, .. } => runs,
        };
        let mut total = 0u64;
        for run in runs {
            if run.file as usize >= n_files || run.first.checked_add(run.len).is_none() {
                return Err(bad("a run outside the files"));
            }
            total = total.checked_add(run.len).ok_or_else(|| bad("too many events"))?;
        }
        if total != n as u64 {
            return Err(bad("runs do not match the events"));
        }
        Ok(ShardLocator { labels, weights, label_names, place })
    }

    /// Reads the located events (features, labels, weights), in order: only
    /// their files (ROOT; `root` is the run's selection) or rows (`.npz`).
    /// The events equal [`InputIndex::read`] of the rows the locator was
    /// made of, with the locator's weights.
    ///
    /// # Errors
    /// As [`InputIndex::read`]; a locator of the other input kind than the
    /// configuration's.
    pub fn read(self, root: Option<&RootInput>) -> Result<EventSet> {
        let n = self.len();
        let weights = self.weights.clone();
        let index = self.into_index(root)?;
        let rows: Vec<usize> = (0..n).collect();
        let mut events = index.read(&rows)?;
        events.weights = weights;
        Ok(events)
    }

    /// The index of the located events, in order.
    fn into_index(self, root: Option<&RootInput>) -> Result<InputIndex> {
        let locator = match (self.place, root) {
            (Place::Root { files, runs }, Some(input)) => Locator::Root {
                index: RootIndex {
                    files,
                    labels: self.labels.clone(),
                    weights: self.weights.clone(),
                    at: decode_runs(&runs).collect(),
                    feature_names: input.features.iter().map(|v| v.name.clone()).collect(),
                    label_names: self.label_names.clone(),
                },
                input: Box::new(input.clone()),
            },
            (Place::Npz { path, features, runs }, None) => {
                let rows = decode_runs(&runs)
                    .map(|(_, r)| usize::try_from(r).map_err(|_| Error::Comm("shard locator: row out of range".into())))
                    .collect::<Result<Vec<_>>>()?;
                Locator::Npz { path, rows: Some(rows), features }
            }
            _ => return Err(Error::Comm("shard locator: not of the configured input kind (ROOT or .npz)".into())),
        };
        Ok(InputIndex { labels: self.labels, weights: self.weights, label_names: self.label_names, locator })
    }
}

fn read_runs(r: &mut Reader<'_>) -> Result<Vec<Run>> {
    let k = r.len(20)?;
    (0..k).map(|_| Ok(Run { file: r.u32()?, first: r.u64()?, len: r.u64()? })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn run(file: u32, first: u64, len: u64) -> Run {
        Run { file, first, len }
    }

    #[test]
    fn runs_keep_the_order_and_join_only_consecutive_entries() {
        assert!(encode_runs([]).is_empty());
        let at = [(0, 5), (0, 6), (0, 8), (1, 9), (1, 10), (0, 11), (0, 10), (2, u64::MAX), (2, 0)];
        let runs = encode_runs(at);
        assert_eq!(
            runs,
            [run(0, 5, 2), run(0, 8, 1), run(1, 9, 2), run(0, 11, 1), run(0, 10, 1), run(2, u64::MAX, 1), run(2, 0, 1)]
        );
        assert_eq!(decode_runs(&runs).collect::<Vec<_>>(), at);
        assert_eq!(encode_runs((0..1000).map(|e| (3, e + 7))), [run(3, 7, 1000)]);
    }

    fn locators() -> Vec<ShardLocator> {
        let root = ShardLocator {
            labels: array![[1.0, 2.0], [1.0, 2.0], [3.0, -0.0]],
            weights: Some(array![0.5, -1.5, f32::MIN_POSITIVE]),
            label_names: vec!["a".into(), "b".into()],
            place: Place::Root {
                files: vec!["/d/x.root".into(), "rel/y é.root".into()],
                runs: vec![run(1, 4, 2), run(0, 0, 1)],
            },
        };
        let npz = ShardLocator {
            labels: array![[0.25], [0.25]],
            weights: None,
            label_names: vec!["m".into()],
            place: Place::Npz { path: "g.npz".into(), features: vec![], runs: vec![run(0, 9, 1), run(0, 3, 1)] },
        };
        let empty = ShardLocator {
            labels: Array2::zeros((0, 2)),
            weights: Some(Array1::zeros(0)),
            label_names: vec!["a".into(), "b".into()],
            place: Place::Root { files: vec![], runs: vec![] },
        };
        vec![root, npz, empty]
    }

    #[test]
    fn locators_round_trip_and_refuse_corrupt_bytes() {
        for l in locators() {
            let b = l.to_bytes();
            assert_eq!(ShardLocator::from_bytes(&b).unwrap(), l);
            for cut in 0..b.len() {
                assert!(ShardLocator::from_bytes(&b[..cut]).is_err(), "{cut} of {} bytes", b.len());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(ShardLocator::from_bytes(&longer).is_err());
        }
        // Parts of several ranks, one after the other.
        let mut all = Vec::new();
        let sizes: Vec<usize> = locators()
            .iter()
            .map(|l| {
                let before = all.len();
                l.write_bytes(&mut all);
                all.len() - before
            })
            .collect();
        let ranges = crate::comm::part_ranges(&all, &sizes, 3).unwrap();
        for (l, r) in locators().into_iter().zip(ranges) {
            assert_eq!(ShardLocator::from_bytes(&all[r]).unwrap(), l);
        }
        // A run past the files, runs that do not cover the events, an overflowing run.
        let mut l = locators().remove(0);
        for runs in [vec![run(2, 0, 3)], vec![run(0, 0, 2)], vec![run(0, u64::MAX, 3)]] {
            l.place = Place::Root { files: vec!["f".into()], runs };
            let e = ShardLocator::from_bytes(&l.to_bytes()).unwrap_err().to_string();
            assert!(e.contains("shard locator"), "{e}");
        }
    }

    #[test]
    fn a_locator_of_the_other_input_kind_is_refused() {
        let npz = locators().remove(1);
        let e = npz.read(Some(&RootInput::default())).unwrap_err().to_string();
        assert!(e.contains("not of the configured input kind"), "{e}");
    }
}
