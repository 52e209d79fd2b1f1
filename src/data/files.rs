//! Event files: the one place that chooses a format from a path (`.root`:
//! a ROOT TTree with one float branch per feature and label; anything else:
//! NumPy `.npz` with `samples [N, D]` and `labels [N, L]`), reads events named
//! as a model's features and labels, writes an [`EventSet`], and streams
//! generated events to a file chunk by chunk ([`EventFileWriter`]). Every
//! write is atomic: the file appears under its name only when complete.

use super::root::{ElemType, StreamingTreeWriter, TreeWriter, Values};
use super::source::{root_err, RootInput, Variable};
use super::EventSet;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The format of an event file, from its extension (or named: `root`, `npz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `.root` (any case): a ROOT TTree.
    Root,
    /// Anything else: a NumPy `.npz` archive.
    Npz,
}

impl Format {
    /// The format `path` is read or written in.
    pub fn of(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("root")) {
            Format::Root
        } else {
            Format::Npz
        }
    }

    /// The file extension written for this format (`root`, `npz`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Root => "root",
            Format::Npz => "npz",
        }
    }
}

/// Reads and concatenates event files whose columns are named as `features`
/// and `labels` (a model's): ROOT trees `tree` with flat branches of those
/// names, or `.npz` archives (their columns take the names when the counts
/// match). Without `with_labels` no label branch is read from ROOT files and
/// `.npz` files need no `labels` array (observed data).
pub fn read_events(
    paths: &[PathBuf],
    features: &[String],
    labels: &[String],
    tree: &str,
    with_labels: bool,
) -> Result<EventSet> {
    read_events_selected(paths, features, labels, tree, with_labels, None)
}

/// [`read_events`], reading ROOT files through a run's `[data.root]`
/// selection when one is given: its tree, feature and label expressions and
/// cut (not its files nor its label threshold), so a NanoAOD-style reference
/// needs no flattening and sees exactly the selection the model was trained
/// with. The selection's feature (and label) names must be the model's, in
/// its order. `.npz` files are read as without a selection.
///
/// # Errors
/// As [`read_events`]; a selection whose names differ from the model's.
pub fn read_events_selected(
    paths: &[PathBuf],
    features: &[String],
    labels: &[String],
    tree: &str,
    with_labels: bool,
    selection: Option<&RootInput>,
) -> Result<EventSet> {
    if let Some(sel) = selection {
        let names = |v: &[Variable]| v.iter().map(|x| x.name.clone()).collect::<Vec<String>>();
        for (what, got, want, check) in
            [("features", names(&sel.features), features, true), ("labels", names(&sel.labels), labels, with_labels)]
        {
            if check && got != want {
                return Err(Error::Config(format!(
                    "[data.root] {what} ({}) differ from the model's ({}): the selection must describe the model's columns in order",
                    got.join(", "),
                    want.join(", ")
                )));
            }
        }
    }
    if paths.is_empty() {
        return Err(Error::Config("no event files given".into()));
    }
    let mut parts = Vec::with_capacity(paths.len());
    for p in paths {
        let es = match Format::of(p) {
            Format::Root => {
                let var = |n: &String| Variable::new(n, n);
                let input = match selection {
                    Some(sel) => RootInput {
                        files: vec![p.display().to_string()],
                        labels: if with_labels { sel.labels.clone() } else { Vec::new() },
                        thresh: 0,
                        ..sel.clone()
                    },
                    None => RootInput {
                        files: vec![p.display().to_string()],
                        tree: tree.to_string(),
                        features: features.iter().map(var).collect(),
                        labels: if with_labels { labels.iter().map(var).collect() } else { Vec::new() },
                        ..Default::default()
                    },
                };
                super::source::load(&input)?.0
            }
            Format::Npz => {
                let mut es = if with_labels {
                    super::npy::read_npz(p, vec![], vec![])?
                } else {
                    super::npy::read_npz_maybe_labeled(p, vec![], vec![])?
                };
                if es.n_features() == features.len() {
                    es.feature_names = features.to_vec();
                }
                if es.n_labels() == labels.len() {
                    es.label_names = labels.to_vec();
                }
                es
            }
        };
        parts.push(es);
    }
    concat(parts)
}

/// Concatenates event sets with equal dimensions (names from the first).
pub fn concat(parts: Vec<EventSet>) -> Result<EventSet> {
    let mut it = parts.into_iter();
    let first = it.next().ok_or_else(|| Error::Data("no event sets to concatenate".into()))?;
    let rest: Vec<EventSet> = it.collect();
    if rest.is_empty() {
        return Ok(first);
    }
    for r in &rest {
        if r.n_features() != first.n_features() || r.n_labels() != first.n_labels() {
            return Err(Error::Data(format!(
                "event files differ in dimensions: {} features / {} labels versus {} / {}",
                first.n_features(),
                first.n_labels(),
                r.n_features(),
                r.n_labels()
            )));
        }
    }
    let mut s = vec![first.samples.view()];
    s.extend(rest.iter().map(|r| r.samples.view()));
    let mut l = vec![first.labels.view()];
    l.extend(rest.iter().map(|r| r.labels.view()));
    let samples = ndarray::concatenate(ndarray::Axis(0), &s).map_err(|e| Error::Data(format!("concatenate: {e}")))?;
    let labels = ndarray::concatenate(ndarray::Axis(0), &l).map_err(|e| Error::Data(format!("concatenate: {e}")))?;
    // Weighted when any part is (the unweighted parts' events weigh 1).
    let weights = (first.weights.is_some() || rest.iter().any(|r| r.weights.is_some())).then(|| {
        let all: Vec<f32> =
            std::iter::once(&first).chain(&rest).flat_map(|r| (0..r.len()).map(|i| r.weight(i))).collect();
        ndarray::Array1::from(all)
    });
    let es = EventSet::new(samples, labels, first.feature_names.clone(), first.label_names.clone(), "event files")?;
    match weights {
        Some(w) => es.with_weights(w, "event files"),
        None => Ok(es),
    }
}

/// Writes `events` in the format of `path` ([`Format::of`]); `tree` names the ROOT tree.
pub fn write_events(path: &Path, events: &EventSet, tree: &str) -> Result<()> {
    match Format::of(path) {
        Format::Root => write_root(path, events, tree),
        Format::Npz => super::npy::write_npz_weighted(path, &events.samples, &events.labels, events.weights.as_ref()),
    }
}

/// Writes `events` as a ROOT file with one tree `tree` holding one `float`
/// branch per feature and per label, named as in the [`EventSet`]. The file
/// is written under a temporary name and renamed, so `path` never holds a
/// partial file.
///
/// # Errors
/// A name that is not a valid branch name (empty, or containing `/ : [ ] ;`
/// or a space), a feature and a label with the same name, or an I/O failure.
pub fn write_root(path: &Path, events: &EventSet, tree: &str) -> Result<()> {
    let mut w = TreeWriter::new(tree);
    let columns = events
        .feature_names
        .iter()
        .zip(events.samples.columns())
        .chain(events.label_names.iter().zip(events.labels.columns()));
    for (name, col) in columns {
        w.add_branch(name, Values::F32(col.to_vec())).map_err(|e| root_err(path, e))?;
    }
    w.write(path).map_err(|e| root_err(path, e))
}

/// Writes generated events to a file chunk by chunk, holding one chunk in
/// memory: a `.root` file (tree with one float branch per feature and per
/// label, one basket per branch per chunk) or, for any other extension, an
/// `.npz` with float32 arrays `samples [N, D]` and `labels [N, L]` (the
/// layouts of [`write_root`] and [`write_npz`](super::npy::write_npz)).
///
/// The output appears under its name only when [`finish`](Self::finish)
/// succeeds; an error or a drop before that leaves no file behind.
pub enum EventFileWriter {
    /// ROOT output.
    Root {
        /// The tree writer.
        writer: StreamingTreeWriter,
        /// Output path (for error messages).
        path: PathBuf,
        /// Feature count.
        d: usize,
        /// Label count.
        l: usize,
    },
    /// NumPy output.
    Npz(super::npy::NpzStreamWriter),
}

impl EventFileWriter {
    /// Starts `path` for `total` events of the named features and labels,
    /// written in chunks of about `chunk` events; `tree` names the ROOT tree.
    ///
    /// # Errors
    /// Invalid branch names (ROOT), or the file cannot be created.
    pub fn create(
        path: &Path,
        tree: &str,
        feature_names: &[String],
        label_names: &[String],
        total: u64,
        chunk: usize,
    ) -> Result<Self> {
        let (d, l) = (feature_names.len(), label_names.len());
        let rows = usize::try_from(total).map_err(|_| Error::Data(format!("{}: too many events", path.display())))?;
        if Format::of(path) == Format::Root {
            let branches: Vec<(&str, ElemType)> =
                feature_names.iter().chain(label_names).map(|n| (n.as_str(), ElemType::F32)).collect();
            let writer = StreamingTreeWriter::create(path, tree, &branches, Default::default(), chunk)
                .map_err(|e| root_err(path, e))?;
            Ok(EventFileWriter::Root { writer, path: path.to_path_buf(), d, l })
        } else {
            let w = super::npy::NpzStreamWriter::create(path, &[("samples", rows, d), ("labels", rows, l)])?;
            Ok(EventFileWriter::Npz(w))
        }
    }

    /// Appends `rows` events: `samples` row-major `[rows, D]`, `labels` `[rows, L]`.
    ///
    /// # Errors
    /// Lengths that do not match, more events than announced, or I/O.
    pub fn write(&mut self, samples: &[f32], labels: &[f32], rows: usize) -> Result<()> {
        match self {
            EventFileWriter::Root { writer, path, d, l } => {
                if samples.len() != rows * *d || labels.len() != rows * *l {
                    return Err(Error::Data(format!("{}: chunk of {rows} events has the wrong size", path.display())));
                }
                let mut cols: Vec<Values> = Vec::with_capacity(*d + *l);
                for j in 0..*d {
                    cols.push(Values::F32(samples.iter().skip(j).step_by(*d).copied().collect()));
                }
                for j in 0..*l {
                    cols.push(Values::F32(labels.iter().skip(j).step_by(*l).copied().collect()));
                }
                writer.write_chunk(&cols).map_err(|e| root_err(path, e))
            }
            EventFileWriter::Npz(w) => {
                w.append(0, samples)?;
                w.append(1, labels)
            }
        }
    }

    /// Completes the file and moves it into place.
    ///
    /// # Errors
    /// Fewer events than announced (.npz), or I/O.
    pub fn finish(self) -> Result<()> {
        match self {
            EventFileWriter::Root { writer, path, .. } => writer.finish().map_err(|e| root_err(&path, e)),
            EventFileWriter::Npz(w) => w.finish(),
        }
    }
}
