//! Generation at requested labels from a loaded model: whitens the labels,
//! samples in network calls of bounded size, de-whitens, and hands the events
//! over in chunks ([`stream_samples`]) or all at once ([`sample_with_cuts`]).
//! Seeded: the same seed gives the same events, and a label's events depend
//! on its number in the request, not on who generates it
//! ([`stream_samples_from`]).
//!
//! - [`request`]: what to generate ([`SampleArgs`], shared by `fedhex sample`
//!   and `fedhex-worker sample`), resolved against a model.
//! - [`distributed`]: the labels split over ranks, a file per rank and a
//!   manifest (`fedhex-worker sample`).

pub mod distributed;
pub mod request;

pub use request::{SampleArgs, SampleRequest};

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

/// Default events per network call of [`stream_samples`] (`fedhex sample --batch`).
pub const DEFAULT_BATCH: usize = 65_536;

/// Default events per chunk handed to the sink (`fedhex sample --chunk`).
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// What [`stream_samples`] generates and how.
#[derive(Debug, Clone)]
pub struct StreamOptions<'a> {
    /// Events per label that survive the cuts.
    pub n_per_label: usize,
    /// Range cuts; events outside any are dropped and more are drawn.
    pub cuts: &'a [RangeCut],
    /// Seed of the generation.
    pub seed: u64,
    /// Events per network call (at most). Together with the seed it fixes the events.
    pub batch: usize,
    /// Events per chunk handed to the sink (the last one may be shorter).
    /// Bounds the memory held; does not change the events.
    pub chunk: usize,
    /// Support check: events whose transformed features lie further than this
    /// many training-range widths outside the training range (or are not
    /// finite) are dropped and redrawn ([`Model::sample_in_support`]);
    /// `f64::INFINITY` keeps all finite events.
    pub support_margin: f64,
}

/// Default [`StreamOptions::support_margin`]: a tenth of the training range
/// beyond each end. The range already spans ~1 M training events' extremes, so
/// true events beyond it are rarer than one in millions, while a flow's
/// over-heavy tails there inflate widths (measured in docs/fidelity.md).
pub const DEFAULT_SUPPORT_MARGIN: f64 = 0.1;

/// One chunk of generated events, row-major: `rows` events of the model's
/// `D` features and `L` labels, in label order then draw order.
#[derive(Debug, Clone, Copy)]
pub struct EventChunk<'a> {
    /// Features, `rows * D` values.
    pub samples: &'a [f32],
    /// Labels, `rows * L` values.
    pub labels: &'a [f32],
    /// Events in this chunk.
    pub rows: usize,
}

/// Where the draws at one label went: every event the flow produced is
/// counted once, in the first test it failed (the model's acceptance cuts,
/// then the support check, then the range cuts), so a redraw is never silent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelDraws {
    /// The label values.
    pub label: Vec<f32>,
    /// Events drawn from the flow.
    pub drawn: u64,
    /// Finite but failing the model's acceptance cuts (those its training
    /// data had): the expected loss, `1 - efficiency`.
    pub rejected_acceptance: u64,
    /// Accepted (or not finite) but beyond the support margin
    /// ([`Model::sample_in_support`]): where the model is unreliable.
    pub outside_support: u64,
    /// Passing both but outside a requested range cut.
    pub rejected_range: u64,
    /// Events handed on (`n_per_label`).
    pub kept: u64,
}

impl LabelDraws {
    fn of(label: &[f32]) -> Self {
        LabelDraws {
            label: label.to_vec(),
            drawn: 0,
            rejected_acceptance: 0,
            outside_support: 0,
            rejected_range: 0,
            kept: 0,
        }
    }

    /// `count / drawn` (0 when nothing was drawn).
    pub fn fraction(&self, count: u64) -> f64 {
        if self.drawn == 0 {
            0.0
        } else {
            count as f64 / self.drawn as f64
        }
    }

    /// The fraction of draws outside the training support.
    pub fn support_fraction(&self) -> f64 {
        self.fraction(self.outside_support)
    }

    /// The fraction of draws failing the acceptance cuts.
    pub fn acceptance_fraction(&self) -> f64 {
        self.fraction(self.rejected_acceptance)
    }
}

/// Fraction of draws outside the training support above which a label's
/// generation is flagged (a warning, and in the report): the support check
/// is a guard against a few stray events, not a routine.
pub const SUPPORT_WARN_FRACTION: f64 = 0.001;

/// Prints a per-label table of [`LabelDraws`] (the worst `max_rows` labels
/// by support rejection when there are more), for `fedhex sample`.
pub fn draws_table(draws: &[LabelDraws], max_rows: usize) -> String {
    let mut order: Vec<&LabelDraws> = draws.iter().collect();
    let truncated = order.len() > max_rows;
    if truncated {
        order.sort_by(|a, b| b.support_fraction().total_cmp(&a.support_fraction()));
        order.truncate(max_rows);
    }
    let mut out = format!("{:>28} {:>10} {:>12} {:>12} {:>10}\n", "label", "drawn", "acceptance", "support", "range");
    for d in order {
        let lab = d.label.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "{:>28} {:>10} {:>11.3}% {:>11.3}% {:>9.3}%\n",
            lab,
            d.drawn,
            100.0 * d.acceptance_fraction(),
            100.0 * d.support_fraction(),
            100.0 * d.fraction(d.rejected_range)
        ));
    }
    if truncated {
        out.push_str(&format!(
            "({} labels; the {max_rows} with the most draws outside the support shown)\n",
            draws.len()
        ));
    }
    out
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of network call `block` at label number `label` of a generation seeded with `seed`.
fn block_seed(seed: u64, label: usize, block: usize) -> i64 {
    splitmix64(splitmix64(splitmix64(seed) ^ label as u64) ^ block as u64) as i64
}

/// Generates `opts.n_per_label` events at each of `labels` and hands them to
/// `sink` in chunks of `opts.chunk` events (the last may be shorter), so the
/// memory held is one chunk and one network call, whatever the total.
/// Returns, per label, where the draws went ([`LabelDraws`]; `kept` sums to
/// `labels.len() * n_per_label`).
///
/// Events at a label are drawn in network calls of at most `opts.batch`
/// events; call `k` at label number `i` reseeds libtorch's generator from
/// `(seed, i, k)`. The events therefore depend on the seed, the batch size,
/// the model and the device (CPU and CUDA generators differ) but not on the
/// chunk size: any chunking gives the same events in the same order. With
/// range cuts (and the model's acceptance cuts, those its training data had),
/// events outside a cut are dropped and further calls are made
/// until exactly `n_per_label` survive at each label.
///
/// # Errors
/// Labels that do not fit the model, nothing to generate, cuts that keep
/// fewer than 1 in 10,000 events at a label, or the first error of `sink`
/// (generation stops there).
pub fn stream_samples(
    model: &Model,
    labels: &[Vec<f32>],
    opts: &StreamOptions<'_>,
    sink: impl FnMut(&EventChunk<'_>) -> Result<()>,
) -> Result<Vec<LabelDraws>> {
    stream_samples_from(model, labels, 0, opts, sink)
}

/// [`stream_samples`] for a contiguous slice of a larger request: `labels`
/// are labels number `first_label..first_label + labels.len()` of it, and
/// label `i` of the slice is seeded as label number `first_label + i`. The
/// events at a label depend only on the model, the label, its number in the
/// request, the seed, the batch size and the device, so generating a request
/// slice by slice (on several ranks, in several jobs) and concatenating the
/// slices in order gives the events of [`stream_samples`] on the whole
/// request, bit for bit ([`distributed`]).
///
/// # Errors
/// Those of [`stream_samples`].
pub fn stream_samples_from(
    model: &Model,
    labels: &[Vec<f32>],
    first_label: usize,
    opts: &StreamOptions<'_>,
    mut sink: impl FnMut(&EventChunk<'_>) -> Result<()>,
) -> Result<Vec<LabelDraws>> {
    check_labels(model, labels)?;
    let n = opts.n_per_label;
    if labels.is_empty() || n == 0 {
        return Err(Error::Data("nothing to generate: need at least one label and n > 0".into()));
    }
    let total = (labels.len() as u64)
        .checked_mul(n as u64)
        .ok_or_else(|| Error::Data(format!("{} labels x {n} events is too many", labels.len())))?;
    let mut stats = Vec::with_capacity(labels.len());
    let (d, l) = (model.n_features(), model.n_labels());
    let (batch, chunk) = (opts.batch.max(1), opts.chunk.max(1));
    let cap = (chunk as u64).min(total) as usize;
    let mut samples: Vec<f32> = Vec::with_capacity(cap * d);
    let mut labs: Vec<f32> = Vec::with_capacity(cap * l);
    let mut buf: Vec<f32> = Vec::new();
    let mut flush = |samples: &mut Vec<f32>, labs: &mut Vec<f32>| -> Result<()> {
        let rows = samples.len() / d.max(1);
        if rows > 0 {
            sink(&EventChunk { samples, labels: labs, rows })?;
        }
        samples.clear();
        labs.clear();
        Ok(())
    };
    if opts.support_margin.is_nan() || opts.support_margin < 0.0 {
        return Err(Error::Config(format!("support margin {} must be >= 0", opts.support_margin)));
    }
    let mut keep: Vec<bool> = Vec::new();
    for (i, lab) in labels.iter().enumerate() {
        let (mut kept, mut drawn) = (0usize, 0usize);
        let mut st = LabelDraws::of(lab);
        let mut block = 0usize;
        while kept < n {
            if drawn >= 10_000 * n.max(100) {
                return Err(Error::Data(format!(
                    "label {lab:?}: only {kept} of {drawn} generated events pass the range cuts \
                     ({} outside the training support); loosen them",
                    st.outside_support
                )));
            }
            let need = n - kept;
            // Without cuts draw what is missing; with cuts, what is missing
            // divided by the acceptance seen so far (plus 10%).
            let m = if (opts.cuts.is_empty() && model.acceptance.is_empty() && st.outside_support == 0) || drawn == 0 {
                need
            } else if kept == 0 {
                batch
            } else {
                (need as f64 * drawn as f64 / kept as f64 * 1.1).ceil() as usize + 16
            }
            .clamp(1, batch);
            {
                let _rng = crate::rng::seeded(0);
                tch::manual_seed(block_seed(opts.seed, first_label + i, block));
                let cs = Tensor::from_slice(lab).view([1, l as i64]).expand([m as i64, l as i64], false);
                let (xs, ok) = model.sample_in_support(&cs, opts.support_margin);
                let xs = xs.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
                buf.resize(m * d, 0.0);
                xs.f_copy_data(&mut buf, m * d)?;
                keep.resize(m, false);
                ok.to_device(tch::Device::Cpu).f_copy_data(&mut keep, m)?;
            }
            drawn += m;
            block += 1;
            let accepted = model.acceptance_of_rows(&buf, d);
            st.drawn += m as u64;
            for ((row, &ok), &acc) in buf.chunks_exact(d.max(1)).zip(&keep).zip(&accepted) {
                // Acceptance first: where the cuts remove events the training
                // data had none, so the truncated likelihood fixes only the
                // mass there, not its shape, and those draws lie outside the
                // training range by construction; they are the expected
                // rejections (1 - efficiency), not support failures.
                let finite = row.iter().all(|v| v.is_finite());
                if finite && !acc {
                    st.rejected_acceptance += 1;
                } else if !ok {
                    st.outside_support += 1;
                } else if !opts.cuts.iter().all(|c| c.keeps(row)) {
                    st.rejected_range += 1;
                } else if kept < n {
                    samples.extend_from_slice(row);
                    labs.extend_from_slice(lab);
                    kept += 1;
                    if samples.len() >= chunk * d {
                        flush(&mut samples, &mut labs)?;
                    }
                }
            }
        }
        st.kept = kept as u64;
        if st.support_fraction() > SUPPORT_WARN_FRACTION {
            tracing::warn!(
                "label {lab:?}: {} of {drawn} generated events ({:.2} %) fell outside the training \
                 support and were redrawn; the model's tails are unreliable here",
                st.outside_support,
                100.0 * st.support_fraction()
            );
        }
        stats.push(st);
    }
    flush(&mut samples, &mut labs)?;
    debug_assert_eq!(stats.iter().map(|s| s.kept).sum::<u64>(), total);
    Ok(stats)
}

/// Draws `n` events at each label, at most `batch` events per network call
/// (the events of [`stream_samples`] with the same seed and batch).
pub fn sample_at_labels(model: &Model, labels: &[Vec<f32>], n: usize, seed: u64, batch: usize) -> Result<EventSet> {
    sample_with_cuts(model, labels, n, seed, batch, &[])
}

/// Like [`sample_at_labels`], keeping only events inside every range cut; draws
/// more until `n` survive per label (an error if fewer than 1 in 10,000 pass).
/// Holds all events in memory; see [`stream_samples`] for large `n`.
pub fn sample_with_cuts(
    model: &Model,
    labels: &[Vec<f32>],
    n: usize,
    seed: u64,
    batch: usize,
    cuts: &[RangeCut],
) -> Result<EventSet> {
    Ok(sample_with_draws(model, labels, n, seed, batch, cuts)?.0)
}

/// [`sample_with_cuts`], also returning where the draws went per label.
pub fn sample_with_draws(
    model: &Model,
    labels: &[Vec<f32>],
    n: usize,
    seed: u64,
    batch: usize,
    cuts: &[RangeCut],
) -> Result<(EventSet, Vec<LabelDraws>)> {
    let (d, l) = (model.n_features(), model.n_labels());
    let mut samples: Vec<f32> = Vec::new();
    let mut labs: Vec<f32> = Vec::new();
    let opts = StreamOptions {
        n_per_label: n,
        cuts,
        seed,
        batch,
        chunk: DEFAULT_CHUNK,
        support_margin: DEFAULT_SUPPORT_MARGIN,
    };
    let draws = stream_samples(model, labels, &opts, |c| {
        samples.extend_from_slice(c.samples);
        labs.extend_from_slice(c.labels);
        Ok(())
    })?;
    let rows = samples.len() / d.max(1);
    let samples = Array2::from_shape_vec((rows, d), samples).map_err(|e| Error::Data(e.to_string()))?;
    let labs = Array2::from_shape_vec((rows, l), labs).map_err(|e| Error::Data(e.to_string()))?;
    let set = EventSet::new(samples, labs, model.features.names(), model.labels.names(), "generated events")?;
    Ok((set, draws))
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
