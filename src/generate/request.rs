//! What to generate, declared once for `fedhex sample` and `fedhex-worker
//! sample`: the model, the labels (`--label`, `--grid`, `--labels-from` read
//! through an optional `--config` selection), range cuts, events per label,
//! seed, batch, chunk, support margin and device ([`SampleArgs`]), and their
//! resolution against a loaded model ([`SampleRequest`]). Where the events go
//! is each binary's own argument.

use super::{check_labels, label_grid, parse_label, RangeCut, StreamOptions};
use crate::error::{Error, Result};
use crate::flow::Model;
use std::path::PathBuf;

/// The arguments of `fedhex sample` and `fedhex-worker sample` that say what
/// to generate and how (not where to).
#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// Model directory (or its model.json).
    #[arg(long)]
    pub model: PathBuf,
    /// A label point, comma separated (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A regular grid of labels: one lo:hi:n per label dimension (repeat the flag per dimension).
    #[arg(long = "grid")]
    pub grid: Vec<String>,
    /// Use the distinct labels of this reference file (.npz or .root with the model's label branches).
    #[arg(long = "labels-from")]
    pub labels_from: Option<PathBuf>,
    /// Read --labels-from through this run configuration's [data.root] selection (tree, expressions, cut).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Range cut on a generated feature, name=lo:hi (either side may be empty); events are
    /// resampled so n survive (repeatable).
    #[arg(long = "range")]
    pub ranges: Vec<String>,
    /// Events per label.
    #[arg(short = 'n', long, default_value_t = 10000)]
    pub n: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Events written per chunk (ROOT basket): bounds the memory held; does not change the events.
    #[arg(long, default_value_t = super::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Events per network call: with the seed and device it fixes the events.
    #[arg(long, default_value_t = super::DEFAULT_BATCH)]
    pub batch: usize,
    /// Drop (and redraw) events whose transformed features lie more than this many
    /// training-range widths outside the training range; `inf` keeps every finite event.
    #[arg(long = "support-margin", default_value_t = super::DEFAULT_SUPPORT_MARGIN)]
    pub support_margin: f64,
}

/// A [`SampleArgs`] resolved against its model: everything
/// [`stream_samples`](super::stream_samples) needs.
pub struct SampleRequest {
    /// The loaded model.
    pub model: Model,
    /// Every requested label, in order: `--label`s, then the `--grid`, then
    /// the distinct labels of `--labels-from`.
    pub labels: Vec<Vec<f32>>,
    /// The `--range` cuts.
    pub cuts: Vec<RangeCut>,
    /// One line per label outside the training range (extrapolation).
    pub warnings: Vec<String>,
    /// The device the model runs on.
    pub device: tch::Device,
}

impl SampleArgs {
    /// Checks the values that need no model: chunk, batch, support margin, `n`.
    ///
    /// # Errors
    /// A zero chunk, batch or `n`; a negative or NaN support margin.
    pub fn check(&self) -> Result<()> {
        if self.chunk == 0 || self.batch == 0 {
            return Err(Error::Config("--chunk and --batch must be at least 1".into()));
        }
        if self.support_margin.is_nan() || self.support_margin < 0.0 {
            return Err(Error::Config("--support-margin must be >= 0 (inf disables the support check)".into()));
        }
        if self.n == 0 {
            return Err(Error::Config("-n must be at least 1".into()));
        }
        Ok(())
    }

    /// Loads the model on the requested device (a GPU chosen by `local_rank`
    /// for `cuda`/`auto`) and resolves the labels and cuts.
    ///
    /// # Errors
    /// [`check`](Self::check)'s, a missing or corrupt model, unparsable or
    /// wrong-sized labels, an unreadable `--labels-from` or `--config`, no
    /// labels at all, a range on an unknown feature, too many events.
    pub fn resolve(&self, local_rank: usize) -> Result<SampleRequest> {
        self.check()?;
        let dev = crate::device::resolve(crate::device::parse_device(&self.device)?, local_rank)?;
        let model = Model::load(&self.model, dev)?;
        let mut labels: Vec<Vec<f32>> = self.labels.iter().map(|s| parse_label(s)).collect::<Result<_>>()?;
        if !self.grid.is_empty() {
            labels.extend(label_grid(&self.grid)?);
        }
        if let Some(p) = &self.labels_from {
            let reference = crate::data::files::read_events_selected(
                std::slice::from_ref(p),
                &model.features.names(),
                &model.labels.names(),
                "Events",
                true,
                crate::config::root_selection(self.config.as_deref())?.as_ref(),
            )?;
            labels.extend(reference.label_groups().labels);
        }
        if labels.is_empty() {
            return Err(Error::Config("no labels to generate at: give --label, --grid or --labels-from".into()));
        }
        let names = model.features.names();
        let cuts = self.ranges.iter().map(|r| RangeCut::parse(r, &names)).collect::<Result<_>>()?;
        let warnings = check_labels(&model, &labels)?;
        (labels.len() as u64)
            .checked_mul(self.n as u64)
            .ok_or_else(|| Error::Config(format!("{} labels x {} events is too many", labels.len(), self.n)))?;
        Ok(SampleRequest { model, labels, cuts, warnings, device: dev })
    }

    /// The [`StreamOptions`] of these arguments with the cuts `cuts`.
    pub fn stream_options<'a>(&self, cuts: &'a [RangeCut]) -> StreamOptions<'a> {
        StreamOptions {
            n_per_label: self.n,
            cuts,
            seed: self.seed,
            batch: self.batch,
            chunk: self.chunk,
            support_margin: self.support_margin,
        }
    }
}

impl SampleRequest {
    /// Events in the whole request (labels × events per label).
    pub fn total(&self, n_per_label: usize) -> u64 {
        self.labels.len() as u64 * n_per_label as u64
    }
}
