//! Generation over ranks (`fedhex-worker sample`): the labels of a request
//! are split into contiguous slices, one per rank; each rank streams its
//! slice to its own file in the output directory, and rank 0 writes a
//! manifest naming every file, its rank, its labels, the events per label
//! and the draws accounting ([`Manifest`]).
//!
//! # The same events as `fedhex sample`
//! [`stream_samples_from`] seeds each label by its number in the whole
//! request, so a label's events do not depend on the rank (or the job) that
//! generates it: the part files read in manifest order are the events of
//! `fedhex sample` with the same model, labels, seed, batch and device type,
//! bit for bit, for any number of ranks and any `--part I/N` split.
//!
//! # Splitting
//! Every label asks for the same number of events, so balancing the events
//! is balancing the labels: `n` labels over `k` slices give slice `i` the
//! labels `⌈n·i/k⌉ .. ⌈n·(i+1)/k⌉` ([`slice`]); slice sizes differ by at most
//! one label, and the slices, in order, are the labels in order. `--part I/N`
//! first takes slice `I` of `N` of the request (an array job's task), which
//! the ranks then split again. Ranks beyond the number of labels write no
//! file.
//!
//! # All or nothing
//! The output directory is built under a hidden sibling (`.DIR.tmp.PID`, PID
//! of rank 0, on the same file system) and renamed to `DIR` only after every
//! rank finished its file and rank 0 wrote the manifest; each part file is
//! itself written atomically. Any rank's error (a bad model or label on one
//! rank, a full disk) ends every rank with the lowest failing rank's error,
//! and rank 0 removes the sibling: `DIR` is complete or absent. A process
//! killed outright (no error path) may leave the hidden sibling, never a
//! half-written `DIR`. An existing non-empty `DIR` is refused unless
//! `--force`, which replaces it whole.

use super::request::{SampleArgs, SampleRequest};
use super::{stream_samples_from, LabelDraws};
use crate::comm::{agree, check_same, local_rank, local_size, Communicator};
use crate::data::files::{EventFileWriter, Format};
use crate::error::{Error, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The manifest's file name in the output directory.
pub const MANIFEST: &str = "manifest.json";

/// [`Manifest::format`]: what the JSON file is.
pub const MANIFEST_FORMAT: &str = "fedhex-sample-parts";

/// [`Manifest::version`] written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// The tree name of ROOT part files (that of `fedhex sample`).
pub const TREE: &str = "Events";

/// Slice `index` of `count` of a request (`--part I/N`, 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// Which slice, `0..count`.
    pub index: usize,
    /// Slices the request is split into.
    pub count: usize,
}

impl Part {
    /// The whole request.
    pub const WHOLE: Part = Part { index: 0, count: 1 };
}

impl std::str::FromStr for Part {
    type Err = String;

    /// Parses `I/N` (0-based, `I < N`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Part { index, count }),
            _ => Err(format!("part '{s}': expected I/N with 0 <= I < N, e.g. 3/10 (0-based)")),
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Slice `index` of `count` contiguous, balanced slices of `n` items:
/// `⌈n·index/count⌉ .. ⌈n·(index+1)/count⌉`. The slices cover `0..n` in
/// order, their sizes differ by at most one, and the larger ones come first
/// (with more slices than items, the last slices are empty).
pub fn slice(n: usize, count: usize, index: usize) -> Range<usize> {
    let k = count.max(1) as u128;
    let at = |i: usize| ((n as u128 * i as u128).div_ceil(k)) as usize;
    at(index)..at(index + 1)
}

/// The arguments of `fedhex-worker sample`: what to generate
/// ([`SampleArgs`], shared with `fedhex sample`) and where the parts go.
#[derive(Debug, Clone, clap::Args)]
pub struct PartsArgs {
    /// What to generate.
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Output directory: one part-RRRRR.EXT per rank that has labels, and manifest.json.
    /// It appears only when complete; must be on storage every rank can write.
    #[arg(long)]
    pub out: PathBuf,
    /// File format of the parts (ROOT tree Events, or .npz), as `fedhex sample` writes by extension.
    #[arg(long, value_enum, default_value = "root")]
    pub format: Format,
    /// Generate only slice I of N of the labels (0-based contiguous slices, e.g. one Slurm
    /// array task: --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).
    #[arg(long, default_value = "0/1")]
    pub part: Part,
    /// Replace an existing non-empty output directory (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// Intra-op threads per rank (0: the node's cores divided among its ranks).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// `DIR/manifest.json`: what a directory of part files holds. Reading the
/// files of [`files`](Self::files) in order gives the events of the
/// request's slice [`part`](Self::part) in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] of the writer.
    pub version: u32,
    /// The model directory as given.
    pub model: PathBuf,
    /// The model's feature names (the first branches / `samples` columns).
    pub features: Vec<String>,
    /// The model's label names (the last branches / `labels` columns).
    pub label_names: Vec<String>,
    /// Format of the part files.
    pub file_format: Format,
    /// Tree name in ROOT part files.
    pub tree: String,
    /// Seed of the generation.
    pub seed: u64,
    /// Events per network call (with the seed and device type it fixes the events).
    pub batch: usize,
    /// Events per label.
    pub n_per_label: usize,
    /// The support margin; `null` when the support check was off (`inf`).
    pub support_margin: Option<f64>,
    /// The `--range` cuts as given.
    pub ranges: Vec<String>,
    /// Labels in the whole request (before `--part`).
    pub labels_total: usize,
    /// Which slice of the request this directory holds.
    pub part: Part,
    /// Number (in the whole request) of this slice's first label.
    pub first_label: usize,
    /// Labels in this slice.
    pub labels: usize,
    /// Events in all files.
    pub events: u64,
    /// Ranks of the job.
    pub ranks: usize,
    /// The part files, in label order (= rank order).
    pub files: Vec<PartFile>,
}

/// One part file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartFile {
    /// File name inside the output directory.
    pub file: String,
    /// Rank that wrote it.
    pub rank: usize,
    /// Number (in the whole request) of its first label; its labels are
    /// `first_label .. first_label + labels.len()`.
    pub first_label: usize,
    /// Its labels, in order.
    pub labels: Vec<Vec<f32>>,
    /// Events per label (the events of label `j` follow those of label `j - 1`).
    pub events_per_label: Vec<u64>,
    /// Events in the file.
    pub events: u64,
    /// The device that generated it (`cpu`, `cuda:N`): CPU and CUDA events differ.
    pub device: String,
    /// Where the draws went, per label (as `fedhex sample` writes to OUT.draws.json).
    pub draws: Vec<LabelDraws>,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`.
    ///
    /// # Errors
    /// A missing or unreadable file, another format, a newer version.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not a sample manifest: {e}", path.display())))?;
        if m.format != MANIFEST_FORMAT || m.version > MANIFEST_VERSION {
            return Err(Error::Data(format!(
                "{}: format '{}' version {} (this build reads '{MANIFEST_FORMAT}' up to version {MANIFEST_VERSION})",
                path.display(),
                m.format,
                m.version
            )));
        }
        Ok(m)
    }

    /// The part files' paths under `dir`, in order.
    pub fn paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.files.iter().map(|f| dir.join(&f.file)).collect()
    }

    /// Every label's [`LabelDraws`], in order (the OUT.draws.json of `fedhex sample`).
    pub fn draws(&self) -> Vec<LabelDraws> {
        self.files.iter().flat_map(|f| f.draws.iter().cloned()).collect()
    }
}

/// The name of rank `rank`'s part file.
pub fn part_name(rank: usize, format: Format) -> String {
    format!("part-{rank:05}.{}", format.extension())
}

/// What every rank must agree on (checked byte for byte across ranks): the
/// labels, the options that fix the events, and the output.
#[derive(serde::Serialize)]
struct Agreed<'a> {
    model: &'a Path,
    labels: &'a [Vec<f32>],
    ranges: &'a [String],
    n: usize,
    seed: u64,
    batch: usize,
    support_margin: Option<f64>,
    out: &'a Path,
    format: Format,
    part: Part,
    force: bool,
}

/// Generates the request of `args` over the ranks of `comm` into
/// `args.out` (module docs). Collective: every rank calls it with the same
/// arguments; every rank returns the same manifest or the same error.
///
/// # Errors
/// Any rank's error (the lowest failing rank's, prefixed with its rank on
/// the others): bad arguments, model or labels, ranks disagreeing on them,
/// a `--part` slice without labels, an existing non-empty output without
/// `force`, an output directory some rank cannot see, generation or I/O.
pub fn sample_parts(comm: &dyn Communicator, args: &PartsArgs) -> Result<Manifest> {
    let threads =
        if args.threads == 0 { (crate::device::available_cores() / local_size().max(1)).max(1) } else { args.threads };
    crate::device::set_threads(threads);
    // 1. Every rank loads the model and resolves the labels; one error for all.
    let (slice_range, request) = agree(comm, prepare(args))?;
    let SampleRequest { model, labels, cuts, warnings, device } = request;
    let s = &args.sample;
    let support_margin = s.support_margin.is_finite().then_some(s.support_margin);
    let same = Agreed {
        model: &s.model,
        labels: &labels,
        ranges: &s.ranges,
        n: s.n,
        seed: s.seed,
        batch: s.batch,
        support_margin,
        out: &args.out,
        format: args.format,
        part: args.part,
        force: args.force,
    };
    let bytes = serde_json::to_vec(&same).map_err(|e| Error::Data(e.to_string()))?;
    check_same(comm, "sample request (model, labels, options, output)", &bytes)?;
    if comm.is_root() {
        for w in &warnings {
            tracing::warn!("{w}");
        }
        if comm.size() > slice_range.len() {
            tracing::warn!(
                "{} ranks for {} labels: ranks {}.. have no labels and write no file",
                comm.size(),
                slice_range.len(),
                slice_range.len()
            );
        }
    }
    // 2. Rank 0 makes the hidden sibling; every rank must see it.
    let tmp = agree(comm, if comm.is_root() { start_output(&args.out, args.force) } else { Ok(PathBuf::new()) })?;
    let mut tmp_bytes = tmp.to_string_lossy().into_owned().into_bytes();
    comm.broadcast_bytes(0, &mut tmp_bytes)?;
    let tmp = PathBuf::from(String::from_utf8_lossy(&tmp_bytes).into_owned());
    let result = (|| -> Result<Manifest> {
        agree(
            comm,
            if tmp.is_dir() {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "rank {} does not see {} next to the output directory {}: the output must be on \
                     storage every rank shares",
                    comm.rank(),
                    tmp.display(),
                    args.out.display()
                )))
            },
        )?;
        // 3. Each rank streams its labels to its own file.
        let mine = slice(slice_range.len(), comm.size(), comm.rank());
        let first = slice_range.start + mine.start;
        let local = if mine.is_empty() {
            Ok(None)
        } else {
            let labs = &labels[slice_range.start..slice_range.end][mine.clone()];
            write_part(&model, labs, first, &cuts, s, &tmp, comm.rank(), args.format, device).map(Some)
        };
        let local = agree(comm, local)?;
        // 4. Gather the entries; rank 0 writes the manifest last and renames.
        let bytes = match &local {
            Some(f) => serde_json::to_vec(f).map_err(|e| Error::Data(e.to_string()))?,
            None => Vec::new(),
        };
        let files = comm
            .all_gather_bytes(&bytes)?
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|b| serde_json::from_slice::<PartFile>(&b).map_err(|e| Error::Comm(format!("manifest entry: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let events = files.iter().map(|f| f.events).sum();
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            model: s.model.clone(),
            features: model.features.names(),
            label_names: model.labels.names(),
            file_format: args.format,
            tree: TREE.into(),
            seed: s.seed,
            batch: s.batch,
            n_per_label: s.n,
            support_margin,
            ranges: s.ranges.clone(),
            labels_total: labels.len(),
            part: args.part,
            first_label: slice_range.start,
            labels: slice_range.len(),
            events,
            ranks: comm.size(),
            files,
        };
        let finished = if comm.is_root() { finish_output(&tmp, &args.out, &manifest) } else { Ok(()) };
        agree(comm, finished)?;
        Ok(manifest)
    })();
    if result.is_err() && comm.is_root() && tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// This rank's model, labels and slice of the request.
fn prepare(args: &PartsArgs) -> Result<(Range<usize>, SampleRequest)> {
    let req = args.sample.resolve(local_rank())?;
    let part = args.part;
    if part.count == 0 || part.index >= part.count {
        return Err(Error::Config(format!("--part {part}: need 0 <= I < N")));
    }
    let range = slice(req.labels.len(), part.count, part.index);
    if range.is_empty() {
        return Err(Error::Config(format!(
            "--part {part}: slice {} of {} has no labels (the request has {} labels; use at most {} parts)",
            part.index,
            part.count,
            req.labels.len(),
            req.labels.len()
        )));
    }
    Ok((range, req))
}

/// Rank 0: refuses an existing non-empty `out` without `force`, creates the
/// hidden sibling that becomes `out`, and returns it.
fn start_output(out: &Path, force: bool) -> Result<PathBuf> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Config(format!("--out {}: exists and is not a directory", out.display())));
        }
        let non_empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some();
        if non_empty && !force {
            return Err(Error::Config(format!(
                "--out {}: the directory exists and is not empty (--force replaces it)",
                out.display()
            )));
        }
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = crate::atomic::sibling(out, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Rank 0, after every part is written: the manifest, then the rename.
fn finish_output(tmp: &Path, out: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| Error::Data(e.to_string()))?;
    crate::atomic::write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    crate::atomic::replace_dir(tmp, out)
}

/// Streams `labels` (numbers `first..` of the request) to this rank's file.
#[allow(clippy::too_many_arguments)]
fn write_part(
    model: &crate::flow::Model,
    labels: &[Vec<f32>],
    first: usize,
    cuts: &[super::RangeCut],
    s: &SampleArgs,
    dir: &Path,
    rank: usize,
    format: Format,
    device: tch::Device,
) -> Result<PartFile> {
    let name = part_name(rank, format);
    let path = dir.join(&name);
    let total = labels.len() as u64 * s.n as u64;
    let (features, label_names) = (model.features.names(), model.labels.names());
    let mut writer = EventFileWriter::create(&path, TREE, &features, &label_names, total, s.chunk)?;
    tracing::info!(
        "rank {rank}: labels {first}..{} ({} labels, {total} events) -> {name}",
        first + labels.len(),
        labels.len()
    );
    let opts = s.stream_options(cuts);
    let draws = stream_samples_from(model, labels, first, &opts, |c| writer.write(c.samples, c.labels, c.rows))?;
    writer.finish()?;
    Ok(PartFile {
        file: name,
        rank,
        first_label: first,
        labels: labels.to_vec(),
        events_per_label: draws.iter().map(|d| d.kept).collect(),
        events: draws.iter().map(|d| d.kept).sum(),
        device: device_name(device),
        draws,
    })
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_in_order_and_balance() {
        for n in 0..40 {
            for k in 1..9 {
                let parts: Vec<Range<usize>> = (0..k).map(|i| slice(n, k, i)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[k - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{n} over {k}: {sizes:?}");
            }
        }
        assert_eq!([slice(10, 3, 0), slice(10, 3, 1), slice(10, 3, 2)], [0..4, 4..7, 7..10]);
        // More slices than items: the last ones are empty.
        assert_eq!([slice(2, 3, 0), slice(2, 3, 1), slice(2, 3, 2)], [0..1, 1..2, 2..2]);
    }

    #[test]
    fn parts_parse_zero_based() {
        assert_eq!("3/10".parse::<Part>().unwrap(), Part { index: 3, count: 10 });
        assert_eq!("0/1".parse::<Part>().unwrap(), Part::WHOLE);
        for bad in ["10/10", "1", "a/3", "1/0", "-1/3"] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
        assert_eq!(Part { index: 2, count: 5 }.to_string(), "2/5");
    }
}
