//! Physics validation report: generated versus reference events, label by
//! label, with verdicts against the accuracy goal, plots and an HTML page.
//!
//! [`analyze`] takes a model directory, reference events (full Monte Carlo),
//! optionally generated events (otherwise it generates them with the model,
//! seeded), optionally an independent second reference sample (the
//! *statistical floor*: what two equally large Monte Carlo samples disagree
//! by) and a list of held-out labels, and writes into an output directory:
//!
//! ```text
//! OUT/report.json    everything (the serialised Report)
//! OUT/report.txt     readable tables and one verdict line per label
//! OUT/index.html     tables, verdicts and every plot (relative <img> paths; opens without a server)
//! OUT/histograms.root  one TH1D (with Σw²) per label, feature and sample (see [`super::histograms`])
//! OUT/plots/*.png    (or *.svg, AnalyzeOptions::plot_format) loss curves, grid overview, heat map, per-label four-panel and 2-D comparisons
//! ```
//!
//! The directory is written into a temporary sibling and renamed into place
//! when complete, so an error never leaves a partial report under the final
//! name (an older report there is replaced only by a complete new one).
//!
//! # Labels
//!
//! Reference events are grouped by label. A label is **interpolation** when
//! it is held out: listed in the model's `training.holdout_labels` (a JSON
//! array of label arrays), in [`AnalyzeOptions::holdout`], or, when the
//! model's `training.training_labels` is present, absent from it. Every other
//! label is **reproduction** (a label the model was trained on). Labels are
//! matched with a tolerance of `1e-4` of the training range per dimension.
//! Labels outside the training range are analysed but flagged as
//! extrapolation (a warning in the report and in the verdict).
//!
//! # Metrics and verdict
//!
//! Per label and feature: the one-dimensional metrics of
//! [`metrics::compare_feature`] (relative error of mean and standard
//! deviation with uncertainties, quantile shifts, χ²/ndf, KS, Wasserstein-1);
//! per label: the k-NN classifier AUC and the energy distance on all features.
//! The verdict compares with [`Goals`] (default: `|Δμ|/|μ| ≤ 1 %`,
//! `|Δσ|/σ ≤ 5 %`, AUC ≤ 0.55). For a feature whose reference mean is smaller
//! than its width (`|μ| < σ`, where a relative error of the mean means
//! little) the mean criterion is `|Δμ|/σ ≤ Goals::mean_in_std` instead.
//! With a second reference sample the same metrics are computed between the
//! two reference samples, and a label is *at the statistical floor* when for
//! every feature `|Δ_gen| ≤ |Δ_floor| + 2 σ(Δ_gen)` (mean and width) and
//! `AUC_gen ≤ AUC_floor + 3 σ_null(AUC)`.
//!
//! # Weighted references
//!
//! A reference (or second reference) with per-event weights
//! ([`EventSet::weights`]) is compared as weighted everywhere: the weighted
//! metrics of [`metrics`] (section *Weighted samples*: moments, quantiles,
//! χ², KS, Wasserstein-1, the classifier with weighted votes and AUC, the
//! pair χ²; the energy distance as a V-statistic without a p-value, in
//! [`SampleMetrics::energy_weighted`]), weighted plots, and `TH1D`s filled
//! with the weights in `histograms.root` (Σw² = sum of squared weights).
//! Generated events are unweighted. `report.json` carries the
//! [`WeightSummary`] of the reference ([`Report::reference_weights`]) and of
//! each label's ([`SampleMetrics::reference_weights`]): Σw, n_eff and the
//! fraction of negative weights; the text and HTML pages say so. Every label's
//! reference weights must sum to a positive number.

use super::metrics::{
    self, ClassifierTestResult, CompareConfig, Comparison, EnergyTestResult, WeightSummary, WeightedEnergyResult,
};
use super::plot_backend::PlotFormat;
use super::plots::{self, PlotError};
use crate::atomic::{replace_dir, sibling};
use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::Model;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Device;

/// Fewest events a label needs in every sample that is compared at it.
pub const MIN_EVENTS_PER_LABEL: usize = 10;
/// Default for [`AnalyzeOptions::max_plot_labels`].
pub const DEFAULT_MAX_PLOT_LABELS: usize = 16;
/// Name of the JSON report inside the output directory.
pub const REPORT_JSON: &str = "report.json";
/// Name of the text report inside the output directory.
pub const REPORT_TXT: &str = "report.txt";
/// Name of the HTML page inside the output directory.
pub const REPORT_HTML: &str = "index.html";
/// Sub-directory of the output directory holding the plots.
pub const PLOTS_DIR: &str = "plots";

/// The accuracy goal a label is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Goals {
    /// Largest allowed `|Δμ|/|μ|` per feature (default 0.01).
    pub mean_rel: f64,
    /// Largest allowed `|Δσ|/σ` per feature (default 0.05).
    pub std_rel: f64,
    /// Largest allowed classifier AUC (default 0.55).
    pub auc: f64,
    /// Largest allowed `|Δμ|/σ` for features with `|μ| < σ` (default 0.1).
    pub mean_in_std: f64,
}

impl Default for Goals {
    fn default() -> Self {
        Goals { mean_rel: 0.01, std_rel: 0.05, auc: 0.55, mean_in_std: 0.1 }
    }
}

/// The metric drawn over the label grid in the heat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HeatMetric {
    /// Classifier AUC.
    #[default]
    Auc,
    /// Worst `|Δμ|/|μ|` over the features (in %).
    #[value(name = "mean")]
    MeanRelError,
    /// Worst `|Δσ|/σ` over the features (in %).
    #[value(name = "std")]
    StdRelError,
    /// Worst KS statistic over the features.
    Ks,
    /// Worst χ²/ndf over the features.
    #[value(name = "chi2")]
    Chi2Ndf,
    /// Worst Wasserstein-1 distance in reference widths over the features.
    #[value(name = "w1")]
    Wasserstein,
    /// Energy distance.
    Energy,
}

impl HeatMetric {
    /// All metrics, in the order of [`HeatMetric::name`]s accepted by [`HeatMetric::parse`].
    pub const ALL: [HeatMetric; 7] = [
        HeatMetric::Auc,
        HeatMetric::MeanRelError,
        HeatMetric::StdRelError,
        HeatMetric::Ks,
        HeatMetric::Chi2Ndf,
        HeatMetric::Wasserstein,
        HeatMetric::Energy,
    ];

    /// Short name (`auc`, `mean`, `std`, `ks`, `chi2`, `w1`, `energy`).
    pub fn name(self) -> &'static str {
        match self {
            HeatMetric::Auc => "auc",
            HeatMetric::MeanRelError => "mean",
            HeatMetric::StdRelError => "std",
            HeatMetric::Ks => "ks",
            HeatMetric::Chi2Ndf => "chi2",
            HeatMetric::Wasserstein => "w1",
            HeatMetric::Energy => "energy",
        }
    }

    /// Title used on the plot.
    pub fn title(self) -> &'static str {
        match self {
            HeatMetric::Auc => "classifier AUC",
            HeatMetric::MeanRelError => "worst |Δμ|/|μ| [%]",
            HeatMetric::StdRelError => "worst |Δσ|/σ [%]",
            HeatMetric::Ks => "worst KS D",
            HeatMetric::Chi2Ndf => "worst χ²/ndf",
            HeatMetric::Wasserstein => "worst W₁/σ",
            HeatMetric::Energy => "energy distance",
        }
    }

    /// Parses a short name (see [`HeatMetric::name`]).
    pub fn parse(s: &str) -> Result<Self> {
        HeatMetric::ALL.into_iter().find(|m| m.name() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = HeatMetric::ALL.iter().map(|m| m.name()).collect();
            Error::Config(format!("heat-map metric '{s}': expected one of {}", names.join(", ")))
        })
    }

    /// The fixed colour scale of the heat map, so that two reports compare at
    /// a glance: AUC 0.5–0.6 (0.5: indistinguishable), |Δμ|/|μ| 0–2 %,
    /// |Δσ|/σ 0–10 %, KS D 0–0.05, χ²/ndf 0–5, W₁/σ 0–0.1, energy distance
    /// 0–0.01. Values beyond the ends take the end colours.
    pub fn colour_range(self) -> (f64, f64) {
        match self {
            HeatMetric::Auc => (0.5, 0.6),
            HeatMetric::MeanRelError => (0.0, 2.0),
            HeatMetric::StdRelError => (0.0, 10.0),
            HeatMetric::Ks => (0.0, 0.05),
            HeatMetric::Chi2Ndf => (0.0, 5.0),
            HeatMetric::Wasserstein => (0.0, 0.1),
            HeatMetric::Energy => (0.0, 0.01),
        }
    }

    fn value(self, l: &LabelReport) -> f64 {
        self.of(&l.metrics)
    }

    /// The metric of one comparison (generated or second reference versus reference).
    fn of(self, m: &SampleMetrics) -> f64 {
        let worst = |f: &dyn Fn(&Comparison) -> Option<f64>| -> f64 {
            let v: Vec<f64> = m.features.iter().filter_map(f).collect();
            if v.is_empty() {
                f64::NAN
            } else {
                v.into_iter().fold(f64::NEG_INFINITY, f64::max)
            }
        };
        match self {
            HeatMetric::Auc => m.classifier.map_or(f64::NAN, |c| c.auc),
            HeatMetric::MeanRelError => worst(&|c| c.relative.mean_rel_error.map(|e| 100.0 * e.value.abs())),
            HeatMetric::StdRelError => worst(&|c| c.relative.std_rel_error.map(|e| 100.0 * e.value.abs())),
            HeatMetric::Ks => worst(&|c| Some(c.ks.statistic)),
            HeatMetric::Chi2Ndf => worst(&|c| Some(c.chi2.chi2_per_ndf)),
            HeatMetric::Wasserstein => worst(&|c| Some(c.wasserstein1_in_std)),
            HeatMetric::Energy => match (&m.energy, &m.energy_weighted) {
                (Some(e), _) => e.statistic,
                (None, Some(e)) => e.statistic,
                (None, None) => f64::NAN,
            },
        }
    }
}

/// What to analyse and where to write it. Build with [`AnalyzeOptions::new`]
/// and adjust the public fields.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Model directory (or its `model.json`). When it sits in a run directory
    /// (`RUN/model`), `RUN/history.csv` gives the loss curves.
    pub model: PathBuf,
    /// Reference events (full Monte Carlo), any number of labels.
    pub reference: EventSet,
    /// Generated events; `None`: generate with the model at every reference label.
    pub generated: Option<EventSet>,
    /// An independent second reference sample (statistical floor), optional.
    pub reference2: Option<EventSet>,
    /// Held-out labels in addition to the model's `training.holdout_labels`.
    pub holdout: Vec<Vec<f32>>,
    /// Events generated per label (`None`: as many as the reference has there).
    pub n_generate: Option<usize>,
    /// Seed of the generation (each label gets its own stream from it).
    pub seed: u64,
    /// Output directory (replaced atomically).
    pub out: PathBuf,
    /// Device of the model.
    pub device: Device,
    /// Metric settings.
    pub compare: CompareConfig,
    /// Accuracy goal.
    pub goals: Goals,
    /// Metric of the heat map over the label grid.
    pub heat_metric: HeatMetric,
    /// At most this many labels get per-label plots (held-out labels first).
    pub max_plot_labels: usize,
    /// Histogram bins of the four-panel plots.
    pub bins: usize,
    /// Events per network call when generating.
    pub chunk: usize,
    /// Image format of every plot (PNG or SVG).
    pub plot_format: PlotFormat,
}

impl AnalyzeOptions {
    /// Options with defaults: generate at every reference label, seed 1, CPU,
    /// default metrics and goals, AUC heat map, 16 plotted labels, 50 bins, PNG plots.
    pub fn new(model: impl Into<PathBuf>, reference: EventSet, out: impl Into<PathBuf>) -> Self {
        AnalyzeOptions {
            model: model.into(),
            reference,
            generated: None,
            reference2: None,
            holdout: Vec::new(),
            n_generate: None,
            seed: 1,
            out: out.into(),
            device: Device::Cpu,
            compare: CompareConfig::default(),
            goals: Goals::default(),
            heat_metric: HeatMetric::default(),
            max_plot_labels: DEFAULT_MAX_PLOT_LABELS,
            bins: 50,
            chunk: 65536,
            plot_format: PlotFormat::Png,
        }
    }
}

/// Whether a label was held out of training or used in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// Held out of training: the model interpolates here.
    Interpolation,
    /// A training label: the model reproduces what it saw.
    Reproduction,
}

impl LabelKind {
    fn describe(self) -> &'static str {
        match self {
            LabelKind::Interpolation => "interpolation (held-out labels)",
            LabelKind::Reproduction => "reproduction (training labels)",
        }
    }
}

/// Metrics of one sample against the reference at one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMetrics {
    /// Reference events at the label.
    pub n_reference: usize,
    /// Events of the compared sample at the label.
    pub n_compared: usize,
    /// One-dimensional metrics per feature (features whose metrics failed are missing, see `errors`).
    pub features: Vec<Comparison>,
    /// Energy-distance test on all features (neither sample weighted).
    pub energy: Option<EnergyTestResult>,
    /// The weighted energy distance, without a p-value, where a sample is
    /// weighted (see [`metrics::WeightedEnergyResult`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_weighted: Option<WeightedEnergyResult>,
    /// Classifier two-sample test on all features.
    pub classifier: Option<ClassifierTestResult>,
    /// Metrics that could not be computed, and why.
    pub errors: Vec<String>,
    /// The reference's weights at this label, when weighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_weights: Option<WeightSummary>,
    /// The compared sample's weights at this label, when weighted (a
    /// weighted second reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_weights: Option<WeightSummary>,
}

/// The worst deviations of one comparison, in the units of the goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worst {
    /// Worst mean deviation: `|Δμ|/|μ|`, or `|Δμ|/σ` where `mean_is_relative` is false.
    pub mean: f64,
    /// Its uncertainty.
    pub mean_uncertainty: f64,
    /// Whether `mean` is `|Δμ|/|μ|` (true) or `|Δμ|/σ` (false).
    pub mean_is_relative: bool,
    /// The feature with the worst mean deviation (relative to its goal).
    pub mean_feature: String,
    /// Worst `|Δσ|/σ`.
    pub std: f64,
    /// Its uncertainty.
    pub std_uncertainty: f64,
    /// The feature with the worst width deviation.
    pub std_feature: String,
    /// Classifier AUC, when computed.
    pub auc: Option<f64>,
    /// Standard deviation of the AUC under the null, when computed.
    pub auc_null_std: Option<f64>,
}

/// The judgement of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every criterion of the goal met (false when a metric is missing).
    pub meets_goal: bool,
    /// Worst deviations, generated versus reference.
    pub worst: Worst,
    /// Worst deviations, second reference versus reference (the floor).
    pub floor: Option<Worst>,
    /// Generated deviations consistent with the floor (see the module docs).
    pub at_floor: Option<bool>,
    /// Criteria that failed, one phrase each.
    pub failures: Vec<String>,
    /// One readable line.
    pub line: String,
}

/// Everything about one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelReport {
    /// The label values.
    pub label: Vec<f32>,
    /// Held out or trained on.
    pub kind: LabelKind,
    /// Outside the training range.
    pub extrapolation: bool,
    /// Whether the generated events were made here (true) or read from a file.
    pub generated_here: bool,
    /// Where the draws went when generated here: the fractions rejected by
    /// the acceptance cuts and by the support check (never silent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draws: Option<crate::generate::LabelDraws>,
    /// Generated versus reference.
    pub metrics: SampleMetrics,
    /// Second reference versus reference (the statistical floor), when available.
    pub floor: Option<SampleMetrics>,
    /// The judgement.
    pub verdict: Verdict,
    /// Plot files of this label, relative to the output directory.
    pub plots: Vec<String>,
    /// With three or more features, the pairs whose joint distribution the
    /// generated events reproduce worst (2-D χ²/ndf, worst first; their 2-D
    /// plots are drawn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst_pairs: Vec<PairDiscrepancy>,
}

/// The 2-D χ² of one pair of features ([`crate::analysis::metrics::pair_chi2`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairDiscrepancy {
    /// The two feature names.
    pub features: [String; 2],
    /// χ²/ndf of the generated against the reference events.
    pub chi2_per_ndf: f64,
    /// The same for the second reference (the statistical floor), when available.
    pub floor_chi2_per_ndf: Option<f64>,
}

/// Cells per axis of the pair χ² ([`PairDiscrepancy`]).
const PAIR_BINS: usize = 8;
/// Pairs of features plotted per label (the worst by 2-D χ²/ndf).
const WORST_PAIRS: usize = 3;

/// The [`WORST_PAIRS`] pairs of features with the largest 2-D χ²/ndf (none below three features).
fn worst_pairs(
    names: &[String],
    reference: Weighted<'_>,
    generated: &[Vec<f64>],
    floor: Option<Weighted<'_>>,
) -> Vec<(usize, usize, PairDiscrepancy)> {
    let d = names.len();
    if d < 3 {
        return Vec::new();
    }
    let chi = |a: Weighted<'_>, i, j| {
        metrics::pair_chi2_weighted(reference.0, reference.1, a.0, a.1, i, j, PAIR_BINS).ok().map(|c| c.chi2_per_ndf)
    };
    let mut all: Vec<(usize, usize, PairDiscrepancy)> = (0..d)
        .flat_map(|i| (i + 1..d).map(move |j| (i, j)))
        .filter_map(|(i, j)| {
            let c = chi((generated, None), i, j)?;
            let features = [names[i].clone(), names[j].clone()];
            Some((
                i,
                j,
                PairDiscrepancy { features, chi2_per_ndf: c, floor_chi2_per_ndf: floor.and_then(|f| chi(f, i, j)) },
            ))
        })
        .collect();
    all.sort_by(|a, b| b.2.chi2_per_ndf.total_cmp(&a.2.chi2_per_ndf));
    all.truncate(WORST_PAIRS);
    all
}

/// Counts and worst values of one group of labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Number of labels.
    pub labels: usize,
    /// Labels meeting the goal.
    pub meeting_goal: usize,
    /// Labels at the statistical floor (of those with a floor).
    pub at_floor: usize,
    /// Labels with a floor.
    pub with_floor: usize,
    /// Worst `|Δμ|/|μ|` over labels and features (relative ones only).
    pub worst_mean_rel: Option<f64>,
    /// Worst `|Δσ|/σ` over labels and features.
    pub worst_std_rel: Option<f64>,
    /// Largest AUC over labels.
    pub worst_auc: Option<f64>,
    /// Mean AUC over labels.
    pub mean_auc: Option<f64>,
    /// One readable line.
    pub line: String,
}

/// A plot in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlotEntry {
    /// File relative to the output directory.
    pub file: String,
    /// Caption.
    pub title: String,
}

/// The whole report (written as `report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// FEDHEX version.
    pub fedhex_version: String,
    /// The model directory analysed.
    pub model: String,
    /// Feature names.
    pub features: Vec<String>,
    /// Label names.
    pub label_names: Vec<String>,
    /// Training range `[min, max]` per label dimension.
    pub label_range: Vec<[f64; 2]>,
    /// The held-out labels used.
    pub holdout: Vec<Vec<f32>>,
    /// The goal.
    pub goals: Goals,
    /// Seed of the generation.
    pub seed: u64,
    /// Metric settings.
    pub compare: CompareConfig,
    /// Warnings (extrapolation, unmatched labels, missing history, ...).
    pub warnings: Vec<String>,
    /// Held-out labels.
    pub interpolation: GroupSummary,
    /// Training labels.
    pub reproduction: GroupSummary,
    /// Every label, held-out first.
    pub labels: Vec<LabelReport>,
    /// Plots not tied to one label.
    pub plots: Vec<PlotEntry>,
    /// The heat-map metric.
    pub heat_metric: HeatMetric,
    /// Where the report was written.
    pub out: String,
    /// Every histogram of `histograms.root` (see [`super::histograms`]).
    #[serde(default)]
    pub histograms: Vec<super::histograms::HistogramRecord>,
    /// The reference's weights (all labels), when the reference is weighted:
    /// every metric then uses them (see [`metrics`], *Weighted samples*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_weights: Option<WeightSummary>,
    /// The second reference's weights, when it is weighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference2_weights: Option<WeightSummary>,
}

// ---------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------

fn check_dims(es: &EventSet, model: &Model, what: &str) -> Result<()> {
    if es.n_labels() != model.n_labels() {
        return Err(Error::Data(format!(
            "{what} events have {} label column(s) ({}) but the model is conditioned on {} label(s) ({})",
            es.n_labels(),
            es.label_names.join(", "),
            model.n_labels(),
            model.labels.names().join(", ")
        )));
    }
    if es.n_features() != model.n_features() {
        return Err(Error::Data(format!(
            "{what} events have {} feature column(s) ({}) but the model has {} feature(s) ({})",
            es.n_features(),
            es.feature_names.join(", "),
            model.n_features(),
            model.features.names().join(", ")
        )));
    }
    Ok(())
}

/// Labels match by the crate's one rule ([`crate::data::same_label`]).
fn same_label(a: &[f32], b: &[f32]) -> bool {
    crate::data::same_label_f32(a, b)
}

fn fmt_label(l: &[f32]) -> String {
    let parts: Vec<String> = l.iter().map(|v| format!("{v}")).collect();
    format!("({})", parts.join(", "))
}

/// Labels listed in a JSON array of arrays of numbers under `training[key]`.
fn labels_from_training(model: &Model, key: &str, warnings: &mut Vec<String>) -> Option<Vec<Vec<f32>>> {
    let v = model.training.get(key)?;
    let parse = || -> Option<Vec<Vec<f32>>> {
        v.as_array()?
            .iter()
            .map(|l| l.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<Vec<f32>>>())
            .collect()
    };
    match parse() {
        Some(ls) => Some(ls),
        None => {
            warnings.push(format!("model training.{key} is not an array of label arrays; ignored"));
            None
        }
    }
}

/// A data error with `what: ` in front of its message.
fn prefixed(what: &str, e: Error) -> Error {
    match e {
        Error::Data(m) => Error::Data(format!("{what}: {m}")),
        other => other,
    }
}

/// Label groups of an event set as (label, row indices).
fn groups_of(es: &EventSet) -> Vec<(Vec<f32>, Vec<usize>)> {
    let g = es.label_groups();
    g.labels.into_iter().zip(g.members).collect()
}

fn find_group<'a>(groups: &'a [(Vec<f32>, Vec<usize>)], label: &[f32]) -> Option<&'a [usize]> {
    groups.iter().find(|(l, _)| same_label(l, label)).map(|(_, m)| m.as_slice())
}

fn rows_f64(es: &EventSet, idx: &[usize]) -> Vec<Vec<f64>> {
    idx.iter().map(|&i| es.samples.row(i).iter().map(|&v| f64::from(v)).collect()).collect()
}

fn column(rows: &[Vec<f64>], j: usize) -> Vec<f64> {
    rows.iter().map(|r| r[j]).collect()
}

/// The weights of rows `idx` of `es` as f64, `None` when unweighted.
fn weights_f64(es: &EventSet, idx: &[usize]) -> Option<Vec<f64>> {
    es.weights.as_ref().map(|w| idx.iter().map(|&i| f64::from(w[i])).collect())
}

/// Rows of events with their weights (`None`: unweighted).
type Weighted<'a> = (&'a [Vec<f64>], Option<&'a [f64]>);

/// The [`WeightSummary`] of a weighted event set, `None` when unweighted.
fn summary_of(es: &EventSet) -> Option<WeightSummary> {
    es.weights.as_ref().map(|w| metrics::weight_summary(&w.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
}

/// `reference weighted: Σw …, n_eff …, negative weights: …` for the text and HTML pages.
fn weights_line(what: &str, w: &WeightSummary) -> String {
    format!(
        "{what} is weighted: {} events, Σw = {:.6}, n_eff = (Σw)²/Σw² = {:.1}, negative weights: {:.2} % of the events \
         ({:.2} % of Σ|w|); every metric uses the weights (the energy distance without a p-value)",
        w.events,
        w.sum,
        w.n_eff,
        100.0 * w.negative_fraction,
        100.0 * w.negative_weight_fraction
    )
}

// ---------------------------------------------------------------------------
// Metrics and verdicts
// ---------------------------------------------------------------------------

fn sample_metrics(
    names: &[String],
    reference: Weighted<'_>,
    other: Weighted<'_>,
    cfg: &CompareConfig,
) -> SampleMetrics {
    let ((reference, rw), (other, ow)) = (reference, other);
    let mut errors = Vec::new();
    let mut features = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match metrics::compare_feature_weighted(name, &column(reference, j), rw, &column(other, j), ow, cfg) {
            Ok(c) => features.push(c),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    let weighted = rw.is_some() || ow.is_some();
    let (energy, energy_weighted) = if weighted {
        let e = metrics::energy_test_weighted(reference, rw, other, ow, &cfg.energy)
            .map_err(|e| errors.push(format!("energy distance: {e}")))
            .ok();
        (None, e)
    } else {
        let e = metrics::energy_test(reference, other, &cfg.energy)
            .map_err(|e| errors.push(format!("energy test: {e}")))
            .ok();
        (e, None)
    };
    let classifier = if weighted {
        metrics::classifier_test_weighted(reference, rw, other, ow, &cfg.classifier)
    } else {
        metrics::classifier_test(reference, other, &cfg.classifier)
    }
    .map_err(|e| errors.push(format!("classifier test: {e}")))
    .ok();
    SampleMetrics {
        n_reference: reference.len(),
        n_compared: other.len(),
        features,
        energy,
        energy_weighted,
        classifier,
        errors,
        reference_weights: rw.map(metrics::weight_summary),
        compared_weights: ow.map(metrics::weight_summary),
    }
}

/// Mean deviation of one feature: (value, uncertainty, relative?) with relative
/// `|Δμ|/|μ|` when `|μ| ≥ σ`, else `|Δμ|/σ`.
fn mean_deviation(c: &Comparison) -> Option<(f64, f64, bool)> {
    if c.reference.mean.abs() >= c.reference.std {
        if let Some(e) = c.relative.mean_rel_error {
            return Some((e.value.abs(), e.uncertainty, true));
        }
    }
    c.relative.mean_shift_in_std.map(|e| (e.value.abs(), e.uncertainty, false))
}

fn worst_of(m: &SampleMetrics, goals: &Goals) -> Worst {
    let mut w = Worst {
        mean: 0.0,
        mean_uncertainty: 0.0,
        mean_is_relative: true,
        mean_feature: String::new(),
        std: 0.0,
        std_uncertainty: 0.0,
        std_feature: String::new(),
        auc: m.classifier.map(|c| c.auc),
        auc_null_std: m.classifier.map(|c| c.auc_null_std),
    };
    let mut worst_score = -1.0;
    for c in &m.features {
        if let Some((v, u, rel)) = mean_deviation(c) {
            let score = v / if rel { goals.mean_rel } else { goals.mean_in_std };
            if score > worst_score {
                worst_score = score;
                (w.mean, w.mean_uncertainty, w.mean_is_relative, w.mean_feature) = (v, u, rel, c.feature.clone());
            }
        }
        if let Some(e) = c.relative.std_rel_error {
            if e.value.abs() > w.std || w.std_feature.is_empty() {
                (w.std, w.std_uncertainty, w.std_feature) = (e.value.abs(), e.uncertainty, c.feature.clone());
            }
        }
    }
    w
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

fn mean_text(w: &Worst) -> String {
    if w.mean_is_relative {
        format!("|Δμ|/μ {} ± {} [{}]", pct(w.mean), pct(w.mean_uncertainty), w.mean_feature)
    } else {
        format!("|Δμ|/σ {:.3} ± {:.3} [{}]", w.mean, w.mean_uncertainty, w.mean_feature)
    }
}

fn verdict(
    label: &[f32],
    kind: LabelKind,
    extrapolation: bool,
    m: &SampleMetrics,
    floor: Option<&SampleMetrics>,
    goals: &Goals,
) -> Verdict {
    let worst = worst_of(m, goals);
    let mut failures = Vec::new();
    let mean_goal = if worst.mean_is_relative { goals.mean_rel } else { goals.mean_in_std };
    if worst.mean > mean_goal {
        failures.push(format!(
            "mean of {} off by {}",
            worst.mean_feature,
            if worst.mean_is_relative { pct(worst.mean) } else { format!("{:.3} σ", worst.mean) }
        ));
    }
    if worst.std > goals.std_rel {
        failures.push(format!("width of {} off by {}", worst.std_feature, pct(worst.std)));
    }
    match worst.auc {
        Some(a) if a > goals.auc => failures.push(format!("classifier AUC {a:.3} > {:.2}", goals.auc)),
        Some(_) => {}
        None => failures.push("classifier AUC not computed".into()),
    }
    for e in &m.errors {
        failures.push(format!("metric missing: {e}"));
    }
    let meets_goal = failures.is_empty();
    let (floor_worst, at_floor) = match floor {
        Some(f) => {
            let fw = worst_of(f, goals);
            let ok_features = m.features.iter().all(|c| {
                let Some(fc) = f.features.iter().find(|x| x.feature == c.feature) else { return false };
                let mean_ok = match (mean_deviation(c), mean_deviation(fc)) {
                    (Some((v, u, r)), Some((fv, _, fr))) if r == fr => v <= fv + 2.0 * u,
                    _ => false,
                };
                let std_ok = match (c.relative.std_rel_error, fc.relative.std_rel_error) {
                    (Some(e), Some(fe)) => e.value.abs() <= fe.value.abs() + 2.0 * e.uncertainty,
                    _ => false,
                };
                mean_ok && std_ok
            });
            let auc_ok = match (m.classifier, f.classifier) {
                (Some(c), Some(fc)) => c.auc <= fc.auc + 3.0 * c.auc_null_std,
                _ => false,
            };
            (Some(fw), Some(ok_features && auc_ok && m.errors.is_empty()))
        }
        None => (None, None),
    };
    let kind_s = match kind {
        LabelKind::Interpolation => "interpolation",
        LabelKind::Reproduction => "reproduction",
    };
    let auc_s = worst.auc.map_or("AUC n/a".to_string(), |a| format!("AUC {a:.3}"));
    let mut line = format!(
        "{} {kind_s}{}: {} the goal ({}, |Δσ|/σ {} [{}], {auc_s})",
        fmt_label(label),
        if extrapolation { " (EXTRAPOLATION)" } else { "" },
        if meets_goal { "MEETS" } else { "MISSES" },
        mean_text(&worst),
        pct(worst.std),
        worst.std_feature,
    );
    if !failures.is_empty() {
        let _ = write!(line, " — {}", failures.join("; "));
    }
    match (&floor_worst, at_floor) {
        (Some(fw), Some(ok)) => {
            let _ = write!(
                line,
                "; {} the statistical floor (reference2: {}, |Δσ|/σ {}, {})",
                if ok { "AT" } else { "ABOVE" },
                mean_text(fw),
                pct(fw.std),
                fw.auc.map_or("AUC n/a".to_string(), |a| format!("AUC {a:.3}"))
            );
        }
        _ => line.push_str("; no statistical floor (no second reference sample at this label)"),
    }
    Verdict { meets_goal, worst, floor: floor_worst, at_floor, failures, line }
}

fn summarize(labels: &[LabelReport], kind: LabelKind) -> GroupSummary {
    let ls: Vec<&LabelReport> = labels.iter().filter(|l| l.kind == kind).collect();
    let fold = |v: Vec<f64>| -> Option<f64> { v.into_iter().filter(|x| x.is_finite()).reduce(f64::max) };
    let worst_mean_rel =
        fold(ls.iter().filter(|l| l.verdict.worst.mean_is_relative).map(|l| l.verdict.worst.mean).collect());
    let worst_std_rel = fold(ls.iter().map(|l| l.verdict.worst.std).collect());
    let aucs: Vec<f64> = ls.iter().filter_map(|l| l.verdict.worst.auc).collect();
    let worst_auc = fold(aucs.clone());
    let mean_auc = (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64);
    let meeting_goal = ls.iter().filter(|l| l.verdict.meets_goal).count();
    let with_floor = ls.iter().filter(|l| l.verdict.at_floor.is_some()).count();
    let at_floor = ls.iter().filter(|l| l.verdict.at_floor == Some(true)).count();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".to_string(), f);
    let line = if ls.is_empty() {
        format!("{}: no labels", kind.describe())
    } else {
        format!(
            "{}: {} label(s), {meeting_goal} meet the goal{}; worst |Δμ|/μ {}, worst |Δσ|/σ {}, worst AUC {}, mean AUC {}",
            kind.describe(),
            ls.len(),
            if with_floor > 0 { format!(", {at_floor} of {with_floor} at the statistical floor") } else { String::new() },
            opt(worst_mean_rel, &pct),
            opt(worst_std_rel, &pct),
            opt(worst_auc, &|a| format!("{a:.3}")),
            opt(mean_auc, &|a| format!("{a:.3}")),
        )
    };
    GroupSummary {
        labels: ls.len(),
        meeting_goal,
        at_floor,
        with_floor,
        worst_mean_rel,
        worst_std_rel,
        worst_auc,
        mean_auc,
        line,
    }
}

// ---------------------------------------------------------------------------
// Output directory
// ---------------------------------------------------------------------------

/// Creates the temporary sibling of `out` (parents created as needed).
fn prepare_output(out: &Path) -> Result<PathBuf> {
    if out.as_os_str().is_empty() {
        return Err(Error::Config("output directory: empty path".into()));
    }
    if out.exists() && !out.is_dir() {
        return Err(Error::Data(format!("output directory {}: exists and is not a directory", out.display())));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::Data(format!("output directory {}: cannot create {}: {e}", out.display(), parent.display()))
        })?;
    }
    let tmp = sibling(out, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| {
        Error::Data(format!("output directory {}: not writable ({}: {e})", out.display(), tmp.display()))
    })?;
    std::fs::create_dir(tmp.join(PLOTS_DIR)).map_err(|e| Error::io(tmp.join(PLOTS_DIR), e))?;
    Ok(tmp)
}

fn model_dir_of(model: &Path) -> PathBuf {
    if model.is_file() {
        model.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        model.to_path_buf()
    }
}

/// The finite values, sorted.
fn sorted_values(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut s: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

fn safe_name(s: &str) -> String {
    let t: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if t.is_empty() {
        "x".into()
    } else {
        t
    }
}

/// A plot error: writing failures abort the report, unplottable data becomes a warning.
fn plot_result(r: std::result::Result<(), PlotError>, warnings: &mut Vec<String>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(PlotError::InvalidInput { path, message }) => {
            warnings.push(format!(
                "plot {} skipped: {message}",
                path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned())
            ));
            Ok(false)
        }
        Err(e @ PlotError::Write { .. }) => Err(Error::Data(e.to_string())),
    }
}

// ---------------------------------------------------------------------------
// The analysis
// ---------------------------------------------------------------------------

/// Runs the whole analysis and writes the report directory (see the module docs).
///
/// # Errors
/// An unreadable model; reference, generated or second-reference events
/// whose label or feature dimension differs from the model's; a held-out
/// label with no reference events; fewer than [`MIN_EVENTS_PER_LABEL`]
/// reference events at a label, or generated events missing at a reference
/// label; an output directory that cannot be created or written. In every
/// error case nothing is left under the output path.
pub fn analyze(opts: &AnalyzeOptions) -> Result<Report> {
    let model = Model::load(&opts.model, opts.device)?;
    let mut warnings = Vec::new();
    check_dims(&opts.reference, &model, "reference")?;
    if let Some(g) = &opts.generated {
        check_dims(g, &model, "generated")?;
        if g.weights.is_some() {
            warnings
                .push("the generated events carry weights: ignored (generated events are compared unweighted)".into());
        }
    }
    if let Some(r2) = &opts.reference2 {
        check_dims(r2, &model, "second reference")?;
    }
    let mut holdout: Vec<Vec<f32>> = labels_from_training(&model, "holdout_labels", &mut warnings).unwrap_or_default();
    crate::generate::check_labels(&model, &holdout).map_err(|e| prefixed("model training.holdout_labels", e))?;
    crate::generate::check_labels(&model, &opts.holdout).map_err(|e| prefixed("held-out label", e))?;
    for h in &opts.holdout {
        if !holdout.iter().any(|x| same_label(x, h)) {
            holdout.push(h.clone());
        }
    }
    let trained = labels_from_training(&model, "training_labels", &mut warnings);

    let ref_groups = groups_of(&opts.reference);
    for h in &opts.holdout {
        if find_group(&ref_groups, h).is_none() {
            let have: Vec<String> = ref_groups.iter().take(20).map(|(l, _)| fmt_label(l)).collect();
            return Err(Error::Data(format!(
                "held-out label {}: the reference has no events there (reference labels: {}{})",
                fmt_label(h),
                have.join(", "),
                if ref_groups.len() > 20 { ", ..." } else { "" }
            )));
        }
    }
    for (l, m) in &ref_groups {
        if m.len() < MIN_EVENTS_PER_LABEL {
            return Err(Error::Data(format!(
                "reference label {}: {} event(s), at least {MIN_EVENTS_PER_LABEL} are needed",
                fmt_label(l),
                m.len()
            )));
        }
        if let Some(w) = weights_f64(&opts.reference, m) {
            let sum: f64 = w.iter().sum();
            if sum.is_nan() || sum <= 0.0 {
                return Err(Error::Data(format!(
                    "reference label {}: the weights of its {} events sum to {sum}; a positive sum is needed",
                    fmt_label(l),
                    m.len()
                )));
            }
        }
    }
    let labels: Vec<Vec<f32>> = ref_groups.iter().map(|(l, _)| l.clone()).collect();
    let extrap_warnings = crate::generate::check_labels(&model, &labels)?;
    warnings.extend(extrap_warnings);
    let gen_groups = opts.generated.as_ref().map(groups_of);
    if let Some(gg) = &gen_groups {
        for l in &labels {
            match find_group(gg, l) {
                None => return Err(Error::Data(format!("generated events: none at reference label {}", fmt_label(l)))),
                Some(m) if m.len() < MIN_EVENTS_PER_LABEL => {
                    return Err(Error::Data(format!(
                        "generated events at label {}: {} event(s), at least {MIN_EVENTS_PER_LABEL} are needed",
                        fmt_label(l),
                        m.len()
                    )))
                }
                Some(_) => {}
            }
        }
        let extra = gg.iter().filter(|(g, _)| !labels.iter().any(|l| same_label(l, g))).count();
        if extra > 0 {
            warnings.push(format!("{extra} generated label(s) have no reference events and are ignored"));
        }
    }
    if matches!(opts.n_generate, Some(0)) {
        return Err(Error::Config("events to generate per label must be positive".into()));
    }
    let r2_groups = opts.reference2.as_ref().map(groups_of);

    let tmp = prepare_output(&opts.out)?;
    let built = build(
        opts,
        &model,
        &ref_groups,
        gen_groups.as_deref(),
        r2_groups.as_deref(),
        &holdout,
        trained.as_deref(),
        warnings,
        &tmp,
    );
    match built {
        Ok(report) => match replace_dir(&tmp, &opts.out) {
            Ok(()) => Ok(report),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

type Groups = [(Vec<f32>, Vec<usize>)];

#[allow(clippy::too_many_arguments)]
fn build(
    opts: &AnalyzeOptions,
    model: &Model,
    ref_groups: &Groups,
    gen_groups: Option<&Groups>,
    r2_groups: Option<&Groups>,
    holdout: &[Vec<f32>],
    trained: Option<&[Vec<f32>]>,
    mut warnings: Vec<String>,
    dir: &Path,
) -> Result<Report> {
    let names = model.features.names();
    let label_names = model.labels.names();
    let range: Vec<[f64; 2]> = model.label_ranges();
    let outside = |l: &[f32]| l.iter().zip(&range).any(|(v, r)| f64::from(*v) < r[0] || f64::from(*v) > r[1]);

    // Per label: reference rows, generated rows, floor rows.
    struct Work {
        label: Vec<f32>,
        kind: LabelKind,
        reference: Vec<Vec<f64>>,
        /// The reference's weights, when weighted.
        ref_w: Option<Vec<f64>>,
        generated: Vec<Vec<f64>>,
        floor: Option<Vec<Vec<f64>>>,
        /// The second reference's weights, when weighted.
        floor_w: Option<Vec<f64>>,
        generated_here: bool,
        draws: Option<crate::generate::LabelDraws>,
    }
    let mut work = Vec::with_capacity(ref_groups.len());
    for (i, (label, members)) in ref_groups.iter().enumerate() {
        let held = holdout.iter().any(|h| same_label(h, label))
            || trained.is_some_and(|t| !t.iter().any(|x| same_label(x, label)));
        let kind = if held { LabelKind::Interpolation } else { LabelKind::Reproduction };
        let reference = rows_f64(&opts.reference, members);
        let ref_w = weights_f64(&opts.reference, members);
        let (generated, generated_here, draws) = match (gen_groups, &opts.generated) {
            (Some(gg), Some(g)) => {
                let m = find_group(gg, label)
                    .ok_or_else(|| Error::Data(format!("generated events: none at {}", fmt_label(label))))?;
                (rows_f64(g, m), false, None)
            }
            _ => {
                let n = opts.n_generate.unwrap_or(members.len());
                let seed = crate::rng::mix_seed(opts.seed, i as u64);
                let (g, mut draws) =
                    crate::generate::sample_with_draws(model, std::slice::from_ref(label), n, seed, opts.chunk, &[])?;
                let all: Vec<usize> = (0..g.len()).collect();
                (rows_f64(&g, &all), true, draws.pop())
            }
        };
        let floor = match (r2_groups, &opts.reference2) {
            (Some(rg), Some(r2)) => match find_group(rg, label) {
                Some(m)
                    if weights_f64(r2, m).is_some_and(|w| {
                        w.iter().sum::<f64>().partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                    }) =>
                {
                    warnings.push(format!(
                        "second reference at {}: its weights sum to ≤ 0; no floor there",
                        fmt_label(label)
                    ));
                    None
                }
                Some(m) if m.len() >= MIN_EVENTS_PER_LABEL => Some((rows_f64(r2, m), weights_f64(r2, m))),
                Some(m) => {
                    warnings.push(format!(
                        "second reference at {}: only {} event(s); no floor there",
                        fmt_label(label),
                        m.len()
                    ));
                    None
                }
                None => {
                    warnings.push(format!("second reference: no events at {}; no floor there", fmt_label(label)));
                    None
                }
            },
            _ => None,
        };
        let (floor, floor_w) = match floor {
            Some((rows, w)) => (Some(rows), w),
            None => (None, None),
        };
        work.push(Work {
            label: label.clone(),
            kind,
            reference,
            ref_w,
            generated,
            floor,
            floor_w,
            generated_here,
            draws,
        });
    }
    // Held-out labels first, then training labels (each group in label order).
    work.sort_by_key(|w| w.kind != LabelKind::Interpolation);

    let mut labels = Vec::with_capacity(work.len());
    for w in &work {
        let reference: Weighted<'_> = (&w.reference, w.ref_w.as_deref());
        let floor: Option<Weighted<'_>> = w.floor.as_deref().map(|r2| (r2, w.floor_w.as_deref()));
        let m = sample_metrics(&names, reference, (&w.generated, None), &opts.compare);
        let f = floor.map(|r2| sample_metrics(&names, reference, r2, &opts.compare));
        let extrapolation = outside(&w.label);
        let verdict = verdict(&w.label, w.kind, extrapolation, &m, f.as_ref(), &opts.goals);
        labels.push(LabelReport {
            label: w.label.clone(),
            kind: w.kind,
            extrapolation,
            generated_here: w.generated_here,
            draws: w.draws.clone(),
            metrics: m,
            floor: f,
            verdict,
            plots: Vec::new(),
            worst_pairs: worst_pairs(&names, reference, &w.generated, floor).into_iter().map(|(_, _, p)| p).collect(),
        });
    }

    // Plots.
    let pdir = dir.join(PLOTS_DIR);
    let rel = |f: &str| format!("{PLOTS_DIR}/{f}");
    let ext = opts.plot_format.ext();
    let mut plots_list = Vec::new();
    let model_dir = model_dir_of(&opts.model);
    let history = model_dir.parent().map(|p| p.join("history.csv"));
    match history.as_ref().filter(|h| h.is_file()) {
        Some(h) => match crate::train::history::read_loss_curves(h) {
            Ok((train, val)) => {
                if plot_result(
                    plots::loss_curves(pdir.join(format!("loss_curves.{ext}")), &train, &val),
                    &mut warnings,
                )? {
                    plots_list.push(PlotEntry {
                        file: rel(&format!("loss_curves.{ext}")),
                        title: format!("Training and validation loss ({})", h.display()),
                    });
                }
            }
            Err(e) => warnings.push(format!("{}: not a usable loss history ({e}); no loss curves", h.display())),
        },
        None => warnings.push(format!(
            "no history.csv beside the model directory {} (not in a run directory); no loss curves",
            model_dir.display()
        )),
    }
    let d = names.len();
    let l_dim = label_names.len();
    let pair = |r: &Vec<f64>| [r[0], r[1]];
    if d >= 2 && l_dim == 2 {
        let refs_of = |held: bool| -> Vec<plots::LabelledEvents> {
            work.iter()
                .filter(|w| (w.kind == LabelKind::Interpolation) == held)
                .map(|w| ([f64::from(w.label[0]), f64::from(w.label[1])], w.reference.iter().map(pair).collect()))
                .collect()
        };
        let gens: Vec<plots::LabelledEvents> = work
            .iter()
            .map(|w| ([f64::from(w.label[0]), f64::from(w.label[1])], w.generated.iter().map(pair).collect()))
            .collect();
        if plot_result(
            plots::grid_overview_split(
                pdir.join(format!("grid_overview.{ext}")),
                &refs_of(false),
                &refs_of(true),
                &gens,
                [&names[0], &names[1]],
                "reference",
            ),
            &mut warnings,
        )? {
            plots_list.push(PlotEntry {
                file: rel(&format!("grid_overview.{ext}")),
                title: "All labels: reference events at training labels (blue) and held-out labels (green), \
                        generated events (orange)"
                    .into(),
            });
        }
    } else {
        warnings.push(format!("grid overview needs ≥ 2 features and 2 labels (have {d} and {l_dim}); not drawn"));
    }
    // Heat map of the chosen metric over the label grid.
    {
        let pts: Vec<[f64; 2]> =
            labels.iter().map(|l| [f64::from(l.label[0]), l.label.get(1).map_or(0.0, |v| f64::from(*v))]).collect();
        let values: Vec<f64> = labels.iter().map(|l| opts.heat_metric.value(l)).collect();
        let marked: Vec<bool> = labels.iter().map(|l| l.kind == LabelKind::Interpolation).collect();
        let axis1 = label_names.get(1).cloned().unwrap_or_default();
        if l_dim > 2 {
            warnings.push(format!("heat map shows the first two of {l_dim} label dimensions"));
        }
        let file = format!("heat_map_{}.{ext}", opts.heat_metric.name());
        // The statistical floor: the median of the metric between the two reference samples.
        let floors = sorted_values(labels.iter().filter_map(|l| l.floor.as_ref()).map(|f| opts.heat_metric.of(f)));
        let (lo, hi) = opts.heat_metric.colour_range();
        let scale = plots::HeatScale {
            range: Some((lo, hi)),
            mark: (!floors.is_empty()).then(|| (floors[floors.len() / 2], "statistical floor".to_string())),
        };
        if plot_result(
            plots::heat_map_named(
                pdir.join(&file),
                &pts,
                &values,
                opts.heat_metric.title(),
                &marked,
                [&label_names[0], &axis1],
                &scale,
            ),
            &mut warnings,
        )? {
            plots_list.push(PlotEntry {
                file: rel(&file),
                title: format!(
                    "{} over the label grid (held-out labels framed in red; fixed colour scale {}–{}{})",
                    opts.heat_metric.title(),
                    lo,
                    hi,
                    if floors.is_empty() { "" } else { ", red line on the bar: the statistical floor" }
                ),
            });
        }
    }
    // Per-label plots, held-out labels first.
    if labels.len() > opts.max_plot_labels {
        warnings.push(format!(
            "per-label plots drawn for the first {} of {} labels (held-out labels first)",
            opts.max_plot_labels,
            labels.len()
        ));
    }
    for (i, (lr, w)) in labels.iter_mut().zip(&work).enumerate().take(opts.max_plot_labels) {
        for (j, name) in names.iter().enumerate() {
            let file = format!("label{i:02}_{}.{ext}", safe_name(name));
            let r = plots::four_panel_weighted(
                pdir.join(&file),
                name,
                &column(&w.reference, j),
                w.ref_w.as_deref(),
                &column(&w.generated, j),
                None,
                opts.bins,
            );
            if plot_result(r, &mut warnings)? {
                lr.plots.push(rel(&file));
            }
        }
        // Two features: their joint distribution; more: the worst pairs by 2-D χ²/ndf.
        let pairs: Vec<(usize, usize)> = if d == 2 {
            vec![(0, 1)]
        } else {
            lr.worst_pairs
                .iter()
                .filter_map(|p| {
                    let at = |n: &String| names.iter().position(|m| m == n);
                    Some((at(&p.features[0])?, at(&p.features[1])?))
                })
                .collect()
        };
        for (a, b) in pairs {
            let file = if d == 2 {
                format!("label{i:02}_2d.{ext}")
            } else {
                format!("label{i:02}_2d_{}_{}.{ext}", safe_name(&names[a]), safe_name(&names[b]))
            };
            let pick = |r: &Vec<f64>| [r[a], r[b]];
            let rp: Vec<[f64; 2]> = w.reference.iter().map(pick).collect();
            let gp: Vec<[f64; 2]> = w.generated.iter().map(pick).collect();
            let r = plots::compare_2d_weighted(
                pdir.join(&file),
                &rp,
                w.ref_w.as_deref(),
                &gp,
                None,
                [&names[a], &names[b]],
            );
            if plot_result(r, &mut warnings)? {
                lr.plots.push(rel(&file));
            }
        }
    }

    let histograms = {
        use super::histograms::{write_report_histograms, LabelSamples};
        let samples: Vec<LabelSamples<'_>> = work
            .iter()
            .map(|w| LabelSamples {
                label: &w.label,
                samples: [
                    ("reference", Some(&w.reference), w.ref_w.as_deref()),
                    ("generated", Some(&w.generated), None),
                    ("reference2", w.floor.as_ref(), w.floor_w.as_deref()),
                ]
                .into_iter()
                .filter_map(|(s, rows, weights)| Some((s, rows?.as_slice(), weights)))
                .collect(),
            })
            .collect();
        write_report_histograms(dir, &label_names, &names, &samples, opts.bins, &mut warnings)?
    };
    let interpolation = summarize(&labels, LabelKind::Interpolation);
    let reproduction = summarize(&labels, LabelKind::Reproduction);
    let report = Report {
        fedhex_version: env!("CARGO_PKG_VERSION").into(),
        model: opts.model.display().to_string(),
        features: names,
        label_names,
        label_range: range,
        holdout: holdout.to_vec(),
        goals: opts.goals,
        seed: opts.seed,
        compare: opts.compare.clone(),
        warnings,
        interpolation,
        reproduction,
        labels,
        plots: plots_list,
        heat_metric: opts.heat_metric,
        out: opts.out.display().to_string(),
        histograms,
        reference_weights: summary_of(&opts.reference),
        reference2_weights: opts.reference2.as_ref().and_then(summary_of),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Data(format!("report.json: {e}")))?;
    crate::atomic::write_synced(&dir.join(REPORT_JSON), &json)?;
    crate::atomic::write_synced(&dir.join(REPORT_TXT), render_text(&report).as_bytes())?;
    crate::atomic::write_synced(&dir.join(REPORT_HTML), render_html(&report).as_bytes())?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Text and HTML
// ---------------------------------------------------------------------------

const TABLE_HEAD: [&str; 12] =
    ["feature", "μ ref", "μ gen", "Δμ/μ", "σ ref", "σ gen", "Δσ/σ", "max|Δq|/σ", "χ²/ndf", "KS D", "KS p", "W₁/σ"];

fn est(e: Option<metrics::Estimate>, scale: f64) -> String {
    e.map_or("n/a".into(), |e| format!("{:+.2}±{:.2}", scale * e.value, scale * e.uncertainty))
}

fn feature_row(c: &Comparison) -> [String; 12] {
    let qmax = c.quantile_shifts.iter().map(|q| q.shift_in_std.value.abs()).fold(0.0, f64::max);
    [
        c.feature.clone(),
        format!("{:.5}", c.reference.mean),
        format!("{:.5}", c.generated.mean),
        format!("{}%", est(c.relative.mean_rel_error, 100.0)),
        format!("{:.5}", c.reference.std),
        format!("{:.5}", c.generated.std),
        format!("{}%", est(c.relative.std_rel_error, 100.0)),
        format!("{qmax:.3}"),
        format!("{:.2}", c.chi2.chi2_per_ndf),
        format!("{:.4}", c.ks.statistic),
        format!("{:.3}", c.ks.p_value),
        format!("{:.4}", c.wasserstein1_in_std),
    ]
}

/// ` (weighted: Σw …, n_eff …)` of a label's reference, empty when unweighted.
fn label_weights_note(m: &SampleMetrics) -> String {
    m.reference_weights.map_or(String::new(), |w| {
        format!(" (weighted: Σw {:.4}, n_eff {:.1}, {:.1} % negative)", w.sum, w.n_eff, 100.0 * w.negative_fraction)
    })
}

fn multi_line(m: &SampleMetrics) -> String {
    let c = m.classifier.map_or("classifier n/a".into(), |c| {
        format!("classifier AUC {:.4} ± {:.4} (z {:+.1})", c.auc, c.auc_null_std, c.z_score)
    });
    let e = match (&m.energy, &m.energy_weighted) {
        (Some(e), _) => format!("energy distance {:.3e} (p {:.3})", e.statistic, e.p_value),
        (None, Some(e)) => {
            format!("weighted energy distance {:.3e} (V-statistic; no p-value with weights)", e.statistic)
        }
        (None, None) => "energy n/a".into(),
    };
    format!("{c}; {e}")
}

/// `a–b 2-D χ²/ndf 3.1 (floor 1.0), …` of [`LabelReport::worst_pairs`].
fn pairs_line(pairs: &[PairDiscrepancy]) -> String {
    pairs
        .iter()
        .map(|p| {
            let floor = p.floor_chi2_per_ndf.map(|f| format!(" (floor {f:.2})")).unwrap_or_default();
            format!("{}–{} 2-D χ²/ndf {:.2}{floor}", p.features[0], p.features[1], p.chi2_per_ndf)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `; of N draws, a % failed the acceptance cuts and b % fell outside the
/// training support` (the redraws of the generation, never silent).
fn draws_note(d: &crate::generate::LabelDraws) -> String {
    format!(
        "; of {} draws, {:.2} % failed the acceptance cuts and {:.3} % fell outside the training support{}",
        d.drawn,
        100.0 * d.acceptance_fraction(),
        100.0 * d.support_fraction(),
        if d.support_fraction() > crate::generate::SUPPORT_WARN_FRACTION { " (unreliable tails)" } else { "" }
    )
}

fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "FEDHEX {} validation report", r.fedhex_version);
    let _ = writeln!(s, "model: {}", r.model);
    let _ = writeln!(s, "features: {}; labels: {}", r.features.join(", "), r.label_names.join(", "));
    let _ = writeln!(
        s,
        "goal: |Δμ|/μ ≤ {}, |Δσ|/σ ≤ {}, AUC ≤ {} (|Δμ|/σ ≤ {} where |μ| < σ)",
        pct(r.goals.mean_rel),
        pct(r.goals.std_rel),
        r.goals.auc,
        r.goals.mean_in_std
    );
    for (what, w) in [("reference", &r.reference_weights), ("second reference", &r.reference2_weights)] {
        if let Some(w) = w {
            let _ = writeln!(s, "{}", weights_line(what, w));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "SUMMARY");
    let _ = writeln!(s, "  {}", r.interpolation.line);
    let _ = writeln!(s, "  {}", r.reproduction.line);
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "\nWARNINGS");
        for w in &r.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    for kind in [LabelKind::Interpolation, LabelKind::Reproduction] {
        let _ = writeln!(s, "\n{}", kind.describe().to_uppercase());
        for l in r.labels.iter().filter(|l| l.kind == kind) {
            let _ = writeln!(
                s,
                "\nlabel {} — {} reference{} / {} generated events{}",
                fmt_label(&l.label),
                l.metrics.n_reference,
                label_weights_note(&l.metrics),
                l.metrics.n_compared,
                if l.extrapolation { " — EXTRAPOLATION" } else { "" }
            );
            let mut rows = vec![TABLE_HEAD.map(String::from)];
            rows.extend(l.metrics.features.iter().map(feature_row));
            let widths: Vec<usize> =
                (0..12).map(|k| rows.iter().map(|row| row[k].chars().count()).max().unwrap_or(0)).collect();
            for row in &rows {
                let cells: Vec<String> =
                    row.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
                let _ = writeln!(s, "  {}", cells.join("  "));
            }
            let _ = writeln!(s, "  multivariate: {}", multi_line(&l.metrics));
            if let Some(d) = &l.draws {
                let _ = writeln!(s, "  generation: {}", draws_note(d).trim_start_matches("; "));
            }
            if !l.worst_pairs.is_empty() {
                let _ = writeln!(s, "  worst pairs: {}", pairs_line(&l.worst_pairs));
            }
            if let Some(f) = &l.floor {
                let _ = writeln!(s, "  floor (reference2 vs reference): {}", multi_line(f));
            }
            for e in &l.metrics.errors {
                let _ = writeln!(s, "  metric error: {e}");
            }
            let _ = writeln!(s, "  verdict: {}", l.verdict.line);
        }
    }
    let _ = writeln!(s, "\nVERDICTS");
    for l in &r.labels {
        let _ = writeln!(s, "  {}", l.verdict.line);
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn render_html(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>FEDHEX report</title>\n<style>\n\
         body{{font-family:sans-serif;margin:1.5em;max-width:1400px}} table{{border-collapse:collapse;margin:0.5em 0}}\n\
         td,th{{border:1px solid #bbb;padding:2px 6px;text-align:right;font-size:90%}} th{{background:#eee}}\n\
         td:first-child{{text-align:left}} .pass{{color:#070;font-weight:bold}} .fail{{color:#b00;font-weight:bold}}\n\
         img{{max-width:100%;border:1px solid #ddd;margin:4px 0}} .warn{{color:#a60}}\n</style></head><body>\n"
    );
    let _ = writeln!(h, "<h1>FEDHEX validation report</h1>");
    let _ = writeln!(
        h,
        "<p>model <code>{}</code>; features {}; labels {}; FEDHEX {}</p>",
        esc(&r.model),
        esc(&r.features.join(", ")),
        esc(&r.label_names.join(", ")),
        esc(&r.fedhex_version)
    );
    let _ = writeln!(
        h,
        "<p>goal: |Δμ|/μ ≤ {}, |Δσ|/σ ≤ {}, classifier AUC ≤ {} (|Δμ|/σ ≤ {} for features with |μ| &lt; σ)</p>",
        pct(r.goals.mean_rel),
        pct(r.goals.std_rel),
        r.goals.auc,
        r.goals.mean_in_std
    );
    for (what, w) in [("reference", &r.reference_weights), ("second reference", &r.reference2_weights)] {
        if let Some(w) = w {
            let _ = writeln!(h, "<p>{}</p>", esc(&weights_line(what, w)));
        }
    }
    let _ = writeln!(
        h,
        "<h2>Summary</h2><ul><li>{}</li><li>{}</li></ul>",
        esc(&r.interpolation.line),
        esc(&r.reproduction.line)
    );
    if !r.warnings.is_empty() {
        let _ = writeln!(h, "<h2>Warnings</h2><ul>");
        for w in &r.warnings {
            let _ = writeln!(h, "<li class=\"warn\">{}</li>", esc(w));
        }
        let _ = writeln!(h, "</ul>");
    }
    let _ = writeln!(h, "<h2>Verdicts</h2><table><tr><th>label</th><th>kind</th><th>goal</th><th>worst mean</th><th>worst |Δσ|/σ</th><th>AUC</th><th>floor</th></tr>");
    for (i, l) in r.labels.iter().enumerate() {
        let w = &l.verdict.worst;
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#label{i}\">{}</a></td><td>{}{}</td><td class=\"{}\">{}</td><td>{}</td><td>{} [{}]</td><td>{}</td><td>{}</td></tr>",
            esc(&fmt_label(&l.label)),
            match l.kind {
                LabelKind::Interpolation => "interpolation",
                LabelKind::Reproduction => "reproduction",
            },
            if l.extrapolation { " (extrapolation)" } else { "" },
            if l.verdict.meets_goal { "pass" } else { "fail" },
            if l.verdict.meets_goal { "meets" } else { "misses" },
            esc(&mean_text(w)),
            pct(w.std),
            esc(&w.std_feature),
            w.auc.map_or("n/a".into(), |a| format!("{a:.3}")),
            match l.verdict.at_floor {
                Some(true) => "at floor",
                Some(false) => "above floor",
                None => "n/a",
            }
        );
    }
    let _ = writeln!(h, "</table>");
    if !r.plots.is_empty() {
        let _ = writeln!(h, "<h2>Overview</h2>");
        for p in &r.plots {
            let _ = writeln!(h, "<h3>{}</h3><img src=\"{}\" alt=\"{}\">", esc(&p.title), esc(&p.file), esc(&p.title));
        }
    }
    for kind in [LabelKind::Interpolation, LabelKind::Reproduction] {
        let _ = writeln!(h, "<h2>{}</h2>", esc(kind.describe()));
        for (i, l) in r.labels.iter().enumerate().filter(|(_, l)| l.kind == kind) {
            let _ = writeln!(
                h,
                "<h3 id=\"label{i}\">label {}{}</h3><p>{} reference{} / {} generated events{}{}</p>",
                esc(&fmt_label(&l.label)),
                if l.extrapolation { " (extrapolation)" } else { "" },
                l.metrics.n_reference,
                esc(&label_weights_note(&l.metrics)),
                l.metrics.n_compared,
                if l.generated_here { " (generated for this report)" } else { "" },
                esc(&l.draws.as_ref().map(draws_note).unwrap_or_default())
            );
            let _ = write!(h, "<table><tr>");
            for c in TABLE_HEAD {
                let _ = write!(h, "<th>{}</th>", esc(c));
            }
            let _ = writeln!(h, "</tr>");
            for c in &l.metrics.features {
                let _ = write!(h, "<tr>");
                for cell in feature_row(c) {
                    let _ = write!(h, "<td>{}</td>", esc(&cell));
                }
                let _ = writeln!(h, "</tr>");
            }
            let _ = writeln!(h, "</table><p>multivariate: {}</p>", esc(&multi_line(&l.metrics)));
            if !l.worst_pairs.is_empty() {
                let _ = writeln!(h, "<p>worst pairs: {}</p>", esc(&pairs_line(&l.worst_pairs)));
            }
            if let Some(f) = &l.floor {
                let _ = writeln!(h, "<p>floor (reference2 vs reference): {}</p>", esc(&multi_line(f)));
            }
            let _ = writeln!(
                h,
                "<p class=\"{}\">{}</p>",
                if l.verdict.meets_goal { "pass" } else { "fail" },
                esc(&l.verdict.line)
            );
            for p in &l.plots {
                let _ = writeln!(h, "<img src=\"{}\" alt=\"{}\">", esc(p), esc(p));
            }
        }
    }
    let _ = writeln!(h, "</body></html>");
    h
}

// ---------------------------------------------------------------------------
// Reading events for the CLI
// ---------------------------------------------------------------------------
