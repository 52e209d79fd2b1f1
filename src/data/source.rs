//! ROOT files → [`EventSet`] through branch expressions ([`load`]): the
//! `[data.root]` input of a run. Writing events, and the choice between ROOT
//! and NumPy, live in [`super::files`]; the phi-omega production that writes
//! a grid of ROOT files lives with its generator ([`super::phiomega`]).
//!
//! # Reading
//!
//! A [`RootInput`] names the files, the tree, the features and labels (each a
//! name and a [branch expression](super::expr)), an optional cut and a minimum
//! number of events per label. `tree` names a TTree or an RNTuple (format
//! v1.0, as ROOT 6.34+ and uproot 5.7+ write it; an RNTuple's top-level
//! fields play the part of branches, `std::vector<T>` fields are jagged like
//! `T[n]` branches). In a TOML run configuration it reads:
//!
//! ```toml
//! [data.root]
//! files = ["mc/phiomega/", "extra/*_2018.root"]   # directories, files, globs
//! tree = "Events"
//! cut = "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220"
//! thresh = 100
//! weight = "genWeight"      # optional per-event weight expression
//! features = [
//!     { name = "phi",   expr = "CBL_RecoPhi_mass" },
//!     { name = "omega", expr = "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]" },
//! ]
//! labels = [
//!     { name = "labelphi",   expr = "GenPhi_mass[0]" },
//!     { name = "labelomega", expr = "GenOmega_mass[0]" },
//! ]
//! ```
//!
//! (`[[data.root.features]]` array-of-tables syntax works as well.)
//!
//! [`load`] does, in this order:
//! 1. **Expressions** are parsed before any file is touched; a syntax error
//!    names the feature, label or cut and the character position.
//! 2. **Files.** Every entry of [`RootInput::files`] is a file, a directory
//!    (searched for `*.root` up to [`RootInput::max_depth`] levels) or a glob
//!    (`*`, `?`, `[abc]`, `[a-z]`, `[!a-z]` within one path component; a
//!    directory it matches is searched like a directory entry, a file it
//!    matches is used whatever its extension). Names starting with `.` are
//!    skipped in directory searches and by wildcards (hidden and temporary
//!    files). All files are sorted by path and duplicates removed, so the
//!    event order does not depend on the order of the entries or the file
//!    system.
//! 3. **Per file** (files are read in parallel, results are put together in
//!    file order): open, find the tree (or RNTuple), read only the branches the
//!    expressions and the cut reference, evaluate the cut and then every
//!    feature and label expression column-wise.
//! 4. **Per event**: an event that fails the cut is dropped (a cut whose
//!    value is *invalid* — e.g. an out-of-range index not guarded by `and` —
//!    rejects the event and is counted in [`LoadReport::cut_invalid`]). An
//!    event that passes but for which some feature or label expression is
//!    invalid (an index out of range, negative or not an integer) is dropped
//!    and counted in [`LoadReport::dropped_invalid`] (so is one whose
//!    `weight` expression is invalid). An event whose values (weight included),
//!    converted to `f32`, include a NaN or an infinity (also a finite `f64`
//!    beyond the `f32` range) is dropped and counted in
//!    [`LoadReport::dropped_nonfinite`]: real productions carry the odd NaN
//!    from a failed fit, and one such event should neither abort a run nor
//!    poison the whitening statistics, so it is dropped and reported rather
//!    than treated as an error.
//! 5. **Labels.** Events are grouped by their label row (bitwise equal
//!    labels form one group, so files may hold one label point each or
//!    many); groups with fewer than [`RootInput::thresh`] events are dropped,
//!    listed in [`LoadReport::labels_dropped`] and in a warning. The kept
//!    events stay in file order.
//!
//! Any problem with the input is an error that names the file, tree, branch
//! or expression (missing path, directory without `.root` files, a glob
//! matching nothing, not a ROOT file, a truncated or corrupt file, missing
//! tree, missing branch, unsupported branch type, a branch used against its
//! kind, a selection that leaves no events). Nothing panics on bad input.
//!
//! # The phi-omega production files
//!
//! [`write_phiomega_grid`] writes one file per grid point, `phiomega_00000.root`,
//! `phiomega_00001.root`, … (sorted name order = point order), each with a
//! tree `Events` (entries = events) holding NanoAOD-like branches:
//!
//! | branch | type | content |
//! |---|---|---|
//! | `event` | `uint64` | event number within the file |
//! | `CBL_Region` | `int32` | 1 = signal region (about 90 %), 2 = sideband |
//! | `CBL_RecoPhi_mass` | `float` | reconstructed Φ mass `m_Φ` (GeV) |
//! | `nTwoProng`, `TwoProng_massPi0[nTwoProng]` | `int32`, `float[]` | 1–3 two-prong candidates per event; one is the ω, the others are unrelated (uniform 0.2–10 GeV) |
//! | `CBL_RecoPhi_twoprongindex` | `int32` | index of the ω two-prong in `TwoProng_massPi0` |
//! | `nPhoton`, `Photon_pt[nPhoton]` | `int32`, `float[]` | 1–2 photons; the Φ photon has `p_T = m_Φ/2 · u`, `u ~ U(0.3, 1)`, an extra one 20–100 GeV |
//! | `CBL_RecoPhi_photonindex` | `int32` | index of the Φ photon in `Photon_pt` |
//! | `nGenPhi`, `GenPhi_mass[nGenPhi]` | `int32`, `float[1]` | true `M_Φ` (one entry, as NanoAOD's generator particles) |
//! | `nGenOmega`, `GenOmega_mass[nGenOmega]` | `int32`, `float[1]` | true `M_ω` |
//!
//! Read them with the expressions of the TOML example above:
//! features `CBL_RecoPhi_mass` and `TwoProng_massPi0[CBL_RecoPhi_twoprongindex]`,
//! labels `GenPhi_mass[0]` and `GenOmega_mass[0]`, and, if wanted, the cut
//! `CBL_Region == 1` (signal region) or
//! `CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220` (with a
//! trigger-like photon threshold). The reconstructed masses of point `i` are
//! exactly `model.sample_seeded(M_Φ, M_ω, n, seed + i).events` (rounded to
//! `f32`), so tests can check every value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::expr::{self, Expr};
use super::root::{Column, RootFile, WHOLE_FILE_LIMIT};
use super::EventSet;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One named expression: a feature or a label column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Column name in the [`EventSet`] (and in files written from it).
    pub name: String,
    /// Branch expression giving the value per event (see [`super::expr`]).
    pub expr: String,
}

impl Variable {
    /// A variable `name = expr`.
    pub fn new(name: &str, expr: &str) -> Self {
        Variable { name: name.to_string(), expr: expr.to_string() }
    }
}

/// Where and how to read events from ROOT files (`[data.root]` in a run
/// configuration; see the [module documentation](self) for an example).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RootInput {
    /// Input files: each entry is a ROOT file, a directory searched for
    /// `*.root` up to `max_depth` levels deep, or a glob pattern (`*`, `?`,
    /// `[...]` within path components).
    pub files: Vec<String>,
    /// Name of the TTree or RNTuple (format v1.0, ROOT 6.34+, uproot 5.7+)
    /// to read in every file; files may mix the two.
    pub tree: String,
    /// Feature columns (the flow's `x`), in order.
    pub features: Vec<Variable>,
    /// Label columns (the generator parameters `θ`), in order.
    pub labels: Vec<Variable>,
    /// Event selection expression; empty means every event.
    pub cut: String,
    /// Minimum number of events a label point needs after all selections;
    /// label points with fewer are dropped (with a warning listing them).
    pub thresh: usize,
    /// How many directory levels a directory entry is searched: 1 = only the
    /// files directly in it, 3 (default) = down to `dir/a/b/*.root`.
    pub max_depth: usize,
    /// Per-event weight expression (e.g. `"genWeight * sf"`); empty means
    /// unweighted. Negative weights are kept; an event whose weight is not
    /// finite is dropped and counted with the non-finite events.
    pub weight: String,
}

impl Default for RootInput {
    fn default() -> Self {
        RootInput {
            files: Vec::new(),
            tree: "Events".to_string(),
            features: Vec::new(),
            labels: Vec::new(),
            cut: String::new(),
            thresh: 0,
            max_depth: 3,
            weight: String::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// A label point dropped because it had fewer events than the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DroppedLabel {
    /// The label values.
    pub label: Vec<f32>,
    /// Its number of events (below the threshold).
    pub events: usize,
}

/// What [`load`] read and dropped.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LoadReport {
    /// Number of files read.
    pub files: usize,
    /// Events (tree entries) in all files.
    pub events_read: u64,
    /// Events that passed the cut (all of them without a cut).
    pub passed_cut: u64,
    /// Events rejected because the cut's value was invalid (an unguarded
    /// out-of-range index); included in `events_read - passed_cut`.
    pub cut_invalid: u64,
    /// Events that passed the cut but had an invalid feature or label
    /// expression (index out of range, negative or not an integer).
    pub dropped_invalid: u64,
    /// Events that passed the cut but had a NaN or infinite feature or label
    /// value (after conversion to `f32`).
    pub dropped_nonfinite: u64,
    /// Events dropped because their label point was below `thresh`.
    pub dropped_thresh: u64,
    /// Events in the returned set.
    pub events_kept: u64,
    /// Number of label points in the returned set.
    pub labels_kept: usize,
    /// The minimum events per label that was applied.
    pub thresh: usize,
    /// The label points dropped by the threshold, sorted by label.
    pub labels_dropped: Vec<DroppedLabel>,
}

fn fmt_label(label: &[f32]) -> String {
    let parts: Vec<String> = label.iter().map(|v| format!("{v}")).collect();
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "read {} events from {} file(s); {} passed the cut", self.events_read, self.files, self.passed_cut)?;
        if self.cut_invalid > 0 {
            write!(f, " ({} rejected for an invalid cut value)", self.cut_invalid)?;
        }
        write!(
            f,
            "; dropped {} with an invalid index and {} non-finite; kept {} events at {} label points",
            self.dropped_invalid, self.dropped_nonfinite, self.events_kept, self.labels_kept
        )?;
        if !self.labels_dropped.is_empty() {
            let list: Vec<String> =
                self.labels_dropped.iter().map(|d| format!("{} ({} events)", fmt_label(&d.label), d.events)).collect();
            write!(
                f,
                "; {} label points below thresh {} dropped ({} events): {}",
                self.labels_dropped.len(),
                self.thresh,
                self.dropped_thresh,
                list.join(", ")
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Resolving the input paths
// ---------------------------------------------------------------------------

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Sorted names of the entries of `dir`.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
        .map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, dir.join(entry.file_name())));
    }
    out.sort();
    Ok(out)
}

/// `*.root` files in `dir`, `depth` levels deep (1 = the directory only).
fn search_dir(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for (name, path) in list_dir(dir)? {
        if is_hidden(&name) {
            continue;
        }
        if path.is_dir() {
            if depth > 1 {
                search_dir(&path, depth - 1, out)?;
            }
        } else if name.ends_with(".root") && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Expands a glob pattern into the paths it matches (files and directories),
/// with the `glob` crate: `*`, `?`, `[...]`, `[!...]` within one path
/// component; names starting with a dot match only a pattern that starts
/// with a dot.
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>> {
    let opts =
        glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
    let paths = glob::glob_with(pattern, opts).map_err(|e| {
        Error::Config(format!("data.root.files: glob \"{pattern}\": bad pattern ({} at character {})", e.msg, e.pos))
    })?;
    paths
        .map(|p| p.map_err(|e| Error::io(e.path(), std::io::Error::new(e.error().kind(), e.error().to_string()))))
        .collect()
}

/// Resolves the `files` entries into the sorted, de-duplicated list of ROOT
/// files to read.
///
/// # Errors
/// An entry that does not exist, a directory without `*.root` files within
/// `max_depth` levels, a glob that matches nothing, or an unreadable directory.
pub fn resolve_files(files: &[String], max_depth: usize) -> Result<Vec<PathBuf>> {
    if files.is_empty() {
        return Err(Error::Config("data.root.files: no input files given".into()));
    }
    let mut out = Vec::new();
    for entry in files {
        let path = Path::new(entry);
        if !has_wildcard(entry) || path.exists() {
            if path.is_dir() {
                let before = out.len();
                search_dir(path, max_depth, &mut out)?;
                if out.len() == before {
                    return Err(Error::Data(format!(
                        "input directory {entry}: no .root files found (searched {max_depth} level(s) deep)"
                    )));
                }
            } else if path.exists() {
                out.push(path.to_path_buf());
            } else {
                return Err(Error::Data(format!("input {entry}: no such file or directory")));
            }
            continue;
        }
        let matches = expand_glob(entry)?;
        if matches.is_empty() {
            return Err(Error::Data(format!("input glob \"{entry}\": matches no file")));
        }
        let before = out.len();
        for m in matches {
            if m.is_dir() {
                search_dir(&m, max_depth, &mut out)?;
            } else {
                out.push(m);
            }
        }
        if out.len() == before {
            return Err(Error::Data(format!(
                "input glob \"{entry}\": matches only directories without .root files (searched {max_depth} level(s) deep)"
            )));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// The parsed expressions and the branches they need.
struct Plan {
    tree: String,
    cut: Option<Expr>,
    /// Features, labels, then the weight (when there is one).
    vars: Vec<(String, Expr)>,
    n_features: usize,
    /// Whether the last entry of `vars` is the weight.
    weighted: bool,
    /// Branch name → what uses it (for error messages).
    branches: BTreeMap<String, Vec<String>>,
}

fn describe(kind: &str, name: &str, e: &Expr) -> String {
    if kind == "cut" || kind == "weight" {
        format!("{kind} \"{}\"", e.source())
    } else {
        format!("{kind} '{name}' = \"{}\"", e.source())
    }
}

impl Plan {
    fn new(input: &RootInput) -> Result<Plan> {
        if input.tree.is_empty() {
            return Err(Error::Config("data.root.tree: empty tree name".into()));
        }
        if input.features.is_empty() {
            return Err(Error::Config("data.root.features: at least one feature is needed".into()));
        }
        if input.max_depth == 0 {
            return Err(Error::Config("data.root.max_depth: must be at least 1".into()));
        }
        let mut seen = BTreeSet::new();
        let mut vars = Vec::new();
        let mut branches: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (kind, list) in [("feature", &input.features), ("label", &input.labels)] {
            for v in list {
                if v.name.is_empty() {
                    return Err(Error::Config(format!("data.root: a {kind} has an empty name (expr \"{}\")", v.expr)));
                }
                if !seen.insert(v.name.clone()) {
                    return Err(Error::Config(format!("data.root: the name '{}' is used twice", v.name)));
                }
                let e =
                    Expr::parse(&v.expr).map_err(|e| Error::Config(format!("data.root: {kind} '{}': {e}", v.name)))?;
                for b in e.branches() {
                    branches.entry(b).or_default().push(describe(kind, &v.name, &e));
                }
                vars.push((v.name.clone(), e));
            }
        }
        let weighted = !input.weight.trim().is_empty();
        if weighted {
            let e = Expr::parse(&input.weight).map_err(|e| Error::Config(format!("data.root: weight: {e}")))?;
            for b in e.branches() {
                branches.entry(b).or_default().push(describe("weight", "weight", &e));
            }
            vars.push(("weight".to_string(), e));
        }
        let cut = if input.cut.trim().is_empty() {
            None
        } else {
            let e = Expr::parse(&input.cut).map_err(|e| Error::Config(format!("data.root: cut: {e}")))?;
            for b in e.branches() {
                branches.entry(b).or_default().push(describe("cut", "", &e));
            }
            Some(e)
        };
        Ok(Plan { tree: input.tree.clone(), cut, vars, n_features: input.features.len(), weighted, branches })
    }

    fn width(&self) -> usize {
        self.vars.len()
    }

    /// Columns of features and labels (the weight excluded).
    fn n_columns(&self) -> usize {
        self.vars.len() - usize::from(self.weighted)
    }
}

/// What [`load_file`] keeps of each selected event.
#[derive(Clone, Copy)]
enum Keep<'a> {
    /// Features, labels and weight of every selected event.
    All,
    /// Labels and weight only (the index of a shard-local read), plus entry numbers.
    Index,
    /// Features, labels and weight of the selected events among these entry numbers (ascending).
    Entries(&'a [u64]),
}

/// The events one file contributes.
#[derive(Default)]
struct Part {
    /// Row-major `[kept, columns]`: features, labels, weight (`Keep::All`,
    /// `Keep::Entries`) or labels, weight (`Keep::Index`).
    rows: Vec<f32>,
    /// Entry number of each kept row (`Keep::Index`, `Keep::Entries`).
    entries: Vec<u64>,
    read: u64,
    passed: u64,
    cut_invalid: u64,
    invalid: u64,
    nonfinite: u64,
}

fn to_expr_column(c: Column) -> expr::Column {
    match c {
        Column::Scalar(v) => expr::Column::Scalar(v.to_f64()),
        Column::Jagged { offsets, values } => expr::Column::Jagged { offsets, values: values.to_f64() },
    }
}

/// Checks the file is as long as its header says (`fEND`): the reader only
/// follows pointers, so a copy that lost just its tail could otherwise pass.
fn check_length(path: &Path, head: &[u8], len: u64) -> Result<()> {
    if head.get(..4) != Some(b"root".as_slice()) {
        return Ok(()); // the reader reports what is wrong
    }
    let be4 = |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes);
    let end = match be4(4) {
        Some(v) if v >= 1_000_000 => head.get(12..20).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes),
        Some(_) => be4(12).map(i64::from),
        None => None,
    };
    match end {
        Some(end) if end > 0 && (end as u64) > len => Err(Error::Data(format!(
            "{}: truncated: the file has {len} bytes but its header says it ends at byte {end} (incomplete copy?)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Opens a ROOT file, checking its length first.
fn open_root(path: &Path) -> Result<RootFile> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let file = if len <= WHOLE_FILE_LIMIT {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        check_length(path, &bytes, bytes.len() as u64)?;
        RootFile::from_bytes(path, bytes)
    } else {
        let mut head = [0u8; 20];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
        check_length(path, &head, len)?;
        RootFile::open(path)
    };
    file.map_err(|e| Error::Data(e.to_string()))
}

fn load_file(path: &Path, plan: &Plan, keep: Keep<'_>) -> Result<Part> {
    let ps = path.display();
    let file = open_root(path)?;
    // A TTree or an RNTuple: both give one column per branch/field.
    let data = file.dataset(&plan.tree).map_err(|e| Error::Data(e.to_string()))?;
    let kind = data.kind();
    let n = usize::try_from(data.entries())
        .map_err(|_| Error::Data(format!("{ps}: {kind} '{}': too many entries", plan.tree)))?;
    let mut cols: BTreeMap<String, expr::Column> = BTreeMap::new();
    for (branch, users) in &plan.branches {
        let used = || format!(" (used by {})", users.join(", "));
        let col = data.read(branch).map_err(|e| Error::Data(format!("{e}{}", used())))?;
        if col.entries() < n {
            return Err(Error::Data(format!(
                "{ps}: {kind} '{}': {} '{branch}' has {} entries, the {kind} {n}{}",
                plan.tree,
                data.member_kind(),
                col.entries(),
                used()
            )));
        }
        cols.insert(branch.clone(), to_expr_column(col));
    }
    let ctx = |what: String, e: expr::ExprError| Error::Data(format!("{ps}: {kind} '{}': {what}: {e}", plan.tree));
    let mut part = Part { read: n as u64, ..Part::default() };
    let pass = match &plan.cut {
        Some(cut) => {
            let r = cut.eval_cut(&cols, n).map_err(|e| ctx("cut".into(), e))?;
            part.cut_invalid = r.invalid as u64;
            r.pass
        }
        None => vec![true; n],
    };
    let values: Vec<Vec<Option<f64>>> = plan
        .vars
        .iter()
        .enumerate()
        .map(|(j, (name, e))| {
            let kind = if j < plan.n_features {
                "feature"
            } else if j < plan.n_columns() {
                "label"
            } else {
                "weight"
            };
            e.eval(&cols, n).map_err(|err| ctx(format!("{kind} '{name}'"), err))
        })
        .collect::<Result<_>>()?;
    let width = plan.width();
    let mut row = Vec::with_capacity(width);
    let mut wanted = match keep {
        Keep::Entries(e) => e.iter().peekable(),
        _ => [].iter().peekable(),
    };
    for (i, _) in pass.iter().enumerate().filter(|(_, p)| **p) {
        if let Keep::Entries(_) = keep {
            while wanted.next_if(|&&e| e < i as u64).is_some() {}
            if wanted.peek() != Some(&&(i as u64)) {
                continue;
            }
        }
        part.passed += 1;
        row.clear();
        let mut valid = true;
        for v in &values {
            match v.get(i).copied().flatten() {
                Some(x) => row.push(x as f32),
                None => {
                    valid = false;
                    break;
                }
            }
        }
        if !valid {
            part.invalid += 1;
        } else if row.iter().any(|x| !x.is_finite()) {
            part.nonfinite += 1;
        } else {
            match keep {
                Keep::All => part.rows.extend_from_slice(&row),
                Keep::Index => {
                    part.rows.extend_from_slice(&row[plan.n_features..]);
                    part.entries.push(i as u64);
                }
                Keep::Entries(_) => {
                    part.rows.extend_from_slice(&row);
                    part.entries.push(i as u64);
                }
            }
        }
    }
    Ok(part)
}

/// Runs `f(i)` for `i in 0..n` on the available cores (at most 16 threads)
/// and returns the results in index order. After the first error no new
/// index is started; since indices are handed out in increasing order, every
/// index below a failed one has run, so the first error in index order is
/// the one returned, whatever the thread timing.
pub(crate) fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).clamp(1, 16).min(n.max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut local = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = f(i);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    local.push((i, r));
                }
                if let Ok(mut all) = results.lock() {
                    all.extend(local);
                }
            });
        }
    });
    let mut all = results.into_inner().map_err(|_| Error::Data("a worker thread panicked".into()))?;
    all.sort_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(all.len());
    for (_, r) in all {
        out.push(r?);
    }
    if out.len() != n {
        return Err(Error::Data(format!("internal: {} of {n} results", out.len())));
    }
    Ok(out)
}

/// Reads the events selected by `input` from its ROOT files.
///
/// See the [module documentation](self) for the steps, what is dropped and
/// why. The returned [`EventSet`] has the feature and label names of the
/// configuration; its events are in file order.
///
/// # Errors
/// Invalid configuration or expression syntax ([`Error::Config`]); input
/// paths, files, trees, branches or expressions that cannot be read or
/// evaluated, and a selection that leaves no events ([`Error::Data`] or
/// [`Error::Io`]); every message names the file, tree, branch or expression.
pub fn load(input: &RootInput) -> Result<(EventSet, LoadReport)> {
    let plan = Plan::new(input)?;
    let files = resolve_files(&input.files, input.max_depth)?;
    let parts = parallel_map(files.len(), |i| load_file(&files[i], &plan, Keep::All))?;
    let describe_input = || format!("tree '{}' in {} file(s) ({})", plan.tree, files.len(), input.files.join(", "));
    let mut report = LoadReport { files: files.len(), thresh: input.thresh, ..LoadReport::default() };
    let (flat, _) = gather(parts, &mut report);
    let width = plan.width();
    let n = flat.len() / width;
    no_events_left(&plan, n, &report, &describe_input)?;
    let all = Array2::from_shape_vec((n, width), flat).map_err(|e| Error::Data(format!("internal: {e}")))?;
    let events = plan.events(all, &describe_input())?;
    let rows = thresh_rows(&events.labels, input.thresh, &mut report, &describe_input)?;
    let events = if rows.len() == n { events } else { events.select(&rows) };
    events.check_label_weights(&describe_input())?;
    Ok((events, report))
}

/// Sums the parts' counts into `report`; their rows and entry numbers, concatenated in file order,
/// with the file index of each entry.
fn gather(parts: Vec<Part>, report: &mut LoadReport) -> (Vec<f32>, Vec<(u32, u64)>) {
    let total: usize = parts.iter().map(|p| p.rows.len()).sum();
    let mut flat = Vec::with_capacity(total);
    let mut at = Vec::new();
    for (f, p) in parts.into_iter().enumerate() {
        report.events_read += p.read;
        report.passed_cut += p.passed;
        report.cut_invalid += p.cut_invalid;
        report.dropped_invalid += p.invalid;
        report.dropped_nonfinite += p.nonfinite;
        flat.extend_from_slice(&p.rows);
        at.extend(p.entries.iter().map(|&e| (f as u32, e)));
    }
    (flat, at)
}

fn no_events_left(plan: &Plan, n: usize, report: &LoadReport, describe_input: &dyn Fn() -> String) -> Result<()> {
    if n == 0 {
        let cut = plan.cut.as_ref().map(|c| format!(" with cut \"{}\"", c.source())).unwrap_or_default();
        return Err(Error::Data(format!("{}: no events left{cut}: {report}", describe_input())));
    }
    Ok(())
}

impl Plan {
    /// The event set of rows `[features | labels | weight]`.
    fn events(&self, all: Array2<f32>, source: &str) -> Result<EventSet> {
        let cols = self.n_columns();
        let samples = all.slice(ndarray::s![.., ..self.n_features]).to_owned();
        let labels = all.slice(ndarray::s![.., self.n_features..cols]).to_owned();
        let events =
            EventSet::new(samples, labels, self.names(0..self.n_features), self.names(self.n_features..cols), source)?;
        if self.weighted {
            return events.with_weights(all.column(cols).to_owned(), source);
        }
        Ok(events)
    }

    fn names(&self, r: std::ops::Range<usize>) -> Vec<String> {
        self.vars[r].iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The rows of `labels` whose label point has at least `thresh` events, in
/// order; the dropped points go into `report` and a warning.
fn thresh_rows(
    labels: &Array2<f32>,
    thresh: usize,
    report: &mut LoadReport,
    describe_input: &dyn Fn() -> String,
) -> Result<Vec<usize>> {
    let n = labels.nrows();
    let groups = super::group_labels(labels);
    let mut keep = vec![false; n];
    for (label, members) in groups.labels.iter().zip(&groups.members) {
        if members.len() < thresh {
            report.labels_dropped.push(DroppedLabel { label: label.clone(), events: members.len() });
            report.dropped_thresh += members.len() as u64;
        } else {
            report.labels_kept += 1;
            for &i in members {
                keep[i] = true;
            }
        }
    }
    let rows: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
    report.events_kept = rows.len() as u64;
    if !report.labels_dropped.is_empty() {
        let list: Vec<String> =
            report.labels_dropped.iter().map(|d| format!("{} ({} events)", fmt_label(&d.label), d.events)).collect();
        tracing::warn!(
            "{}: {} label point(s) with fewer than thresh = {} events dropped: {}",
            describe_input(),
            report.labels_dropped.len(),
            thresh,
            list.join(", ")
        );
    }
    if rows.is_empty() {
        return Err(Error::Data(format!(
            "{}: every label point has fewer than thresh = {thresh} events: {report}",
            describe_input()
        )));
    }
    Ok(rows)
}

/// The events [`load`] would return, without their features: labels,
/// weights and where each event lives (file and entry). A shard-local read
/// plans on this index and then reads only its events' features
/// ([`read_indexed`]).
#[derive(Debug, Clone)]
pub struct RootIndex {
    /// The resolved input files, in read order.
    pub files: Vec<PathBuf>,
    /// Labels of the events, in [`load`]'s order.
    pub labels: Array2<f32>,
    /// Their weights (`weight` configured).
    pub weights: Option<ndarray::Array1<f32>>,
    /// File (index into `files`) and entry number of each event.
    pub at: Vec<(u32, u64)>,
    /// Feature names.
    pub feature_names: Vec<String>,
    /// Label names.
    pub label_names: Vec<String>,
}

/// Indexes the events selected by `input`: the same selection, drops,
/// threshold and order as [`load`], reading every file once but keeping only
/// labels, weights and entry numbers (a file's feature values live only
/// while it is read).
///
/// # Errors
/// As [`load`].
pub fn index(input: &RootInput) -> Result<(RootIndex, LoadReport)> {
    let plan = Plan::new(input)?;
    let files = resolve_files(&input.files, input.max_depth)?;
    let parts = parallel_map(files.len(), |i| load_file(&files[i], &plan, Keep::Index))?;
    let describe_input = || format!("tree '{}' in {} file(s) ({})", plan.tree, files.len(), input.files.join(", "));
    let mut report = LoadReport { files: files.len(), thresh: input.thresh, ..LoadReport::default() };
    let (flat, at) = gather(parts, &mut report);
    let width = plan.width() - plan.n_features;
    let n = at.len();
    no_events_left(&plan, n, &report, &describe_input)?;
    let all = Array2::from_shape_vec((n, width), flat).map_err(|e| Error::Data(format!("internal: {e}")))?;
    let n_labels = plan.n_columns() - plan.n_features;
    let labels = all.slice(ndarray::s![.., ..n_labels]).to_owned();
    let weights = plan.weighted.then(|| all.column(n_labels).to_owned());
    let rows = thresh_rows(&labels, input.thresh, &mut report, &describe_input)?;
    let what = describe_input();
    let index = RootIndex {
        files,
        labels,
        weights,
        at,
        feature_names: plan.names(0..plan.n_features),
        label_names: plan.names(plan.n_features..plan.n_columns()),
    };
    let index = if rows.len() == n { index } else { index.select(&rows) };
    if let Some(w) = &index.weights {
        // The label check of `load`, on the index.
        super::normalize_weights(&index.labels, &index.label_names, w, &what)?;
    }
    Ok((index, report))
}

impl RootIndex {
    /// Number of indexed events.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The indexed events at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> RootIndex {
        RootIndex {
            files: self.files.clone(),
            labels: super::select_rows(&self.labels, rows),
            weights: self.weights.as_ref().map(|w| w.select(ndarray::Axis(0), rows)),
            at: rows.iter().map(|&r| self.at[r]).collect(),
            feature_names: self.feature_names.clone(),
            label_names: self.label_names.clone(),
        }
    }
}

/// Reads the events `rows` of `index` (built by [`index`] from the same
/// `input`), in that order: only the files holding them are opened, and of
/// each only those entries are kept. The result equals
/// `load(input).select(rows)` value for value.
///
/// # Errors
/// As [`load`]; an indexed entry that is no longer selected (the file
/// changed since it was indexed) is an error naming the file.
pub fn read_indexed(input: &RootInput, index: &RootIndex, rows: &[usize]) -> Result<EventSet> {
    let plan = Plan::new(input)?;
    // Wanted entries per file, ascending.
    let mut per_file: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &r in rows {
        let (f, e) = *index.at.get(r).ok_or_else(|| Error::Data(format!("internal: index row {r} out of range")))?;
        per_file.entry(f).or_default().push(e);
    }
    for v in per_file.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let list: Vec<(u32, Vec<u64>)> = per_file.into_iter().collect();
    let parts = parallel_map(list.len(), |k| {
        let (f, wanted) = &list[k];
        let path = index.files.get(*f as usize).ok_or_else(|| Error::Data(format!("internal: file {f}")))?;
        let part = load_file(path, &plan, Keep::Entries(wanted))?;
        if part.entries != *wanted {
            return Err(Error::Data(format!(
                "{}: {} of {} indexed entries are no longer selected: the file changed while it was read",
                path.display(),
                wanted.len() - part.entries.len().min(wanted.len()),
                wanted.len()
            )));
        }
        Ok((*f, part))
    })?;
    // Row of (file, entry) in the parts.
    let width = plan.width();
    let mut slot: std::collections::HashMap<(u32, u64), (usize, usize)> = std::collections::HashMap::new();
    for (k, (f, part)) in parts.iter().enumerate() {
        for (j, &e) in part.entries.iter().enumerate() {
            slot.insert((*f, e), (k, j));
        }
    }
    let mut flat = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let (k, j) = slot[&index.at[r]];
        flat.extend_from_slice(&parts[k].1.rows[j * width..(j + 1) * width]);
    }
    let all = Array2::from_shape_vec((rows.len(), width), flat).map_err(|e| Error::Data(format!("internal: {e}")))?;
    let what = format!("tree '{}' in {} file(s) ({})", plan.tree, index.files.len(), input.files.join(", "));
    plan.events(all, &what)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

pub(crate) fn root_err(path: &Path, e: impl fmt::Display) -> Error {
    let s = e.to_string();
    let p = path.display().to_string();
    Error::Data(if s.starts_with(&p) { s } else { format!("{p}: {s}") })
}
