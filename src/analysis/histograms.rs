//! The report's histograms for reuse: `OUT/histograms.root` holds one `TH1D`
//! (with Σw², `fSumw2`) per label, feature and sample, and `report.json`
//! the same edges, contents and Σw² ([`HistogramRecord`]), so RooFit, combine
//! or pyhf pipelines can fit what the report shows.
//!
//! Binning: per label and feature, the binning of the report's four-panel
//! plot ([`plots::four_panel_range`] with [`AnalyzeOptions::bins`](super::report::AnalyzeOptions::bins)
//! equal bins), shared by all samples of that label and feature. Bins follow
//! ROOT (`[low, high)`); events outside go to the underflow and overflow
//! bins, so the contents, flows included, sum to the sample's events at the
//! label (its sum of weights, for a weighted reference). Unweighted samples
//! fill weight 1, so their Σw² equals the contents; a weighted reference
//! (`reference`, `reference2`) fills each event's weight, and its Σw² is the
//! sum of the squared weights (`h.variances()` in uproot).
//!
//! Names: `h_<label index>_<feature>_<sample>` (label index as in the report,
//! held-out labels first; feature sanitised to `[A-Za-z0-9_]`; sample
//! `reference`, `generated` or `reference2`); titles give the label values,
//! the feature and the sample.

use super::plots;
use crate::data::root::{write_histograms, Th1d};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the histograms in the report directory.
pub const HISTOGRAMS_ROOT: &str = "histograms.root";

/// One histogram of the report (also a `TH1D` in [`HISTOGRAMS_ROOT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramRecord {
    /// Key of the `TH1D` in `histograms.root`.
    pub name: String,
    /// Index of the label in the report's `labels`.
    pub label_index: usize,
    /// The label values.
    pub label: Vec<f32>,
    /// Feature name.
    pub feature: String,
    /// `reference`, `generated` or `reference2`.
    pub sample: String,
    /// Bin edges (`bins + 1` values).
    pub edges: Vec<f64>,
    /// Sum of the weights per bin (events, for an unweighted sample),
    /// underflow first and overflow last (`bins + 2` values).
    pub counts: Vec<f64>,
    /// Σw² per bin, laid out as `counts`.
    pub sumw2: Vec<f64>,
}

/// One sample at a label: its name, its events as rows of features and
/// their per-event weights (`None`: unweighted).
pub(crate) type SampleRows<'a> = (&'static str, &'a [Vec<f64>], Option<&'a [f64]>);

/// The samples at one label.
pub(crate) struct LabelSamples<'a> {
    /// The label values.
    pub label: &'a [f32],
    /// Reference first (it sets the binning), then the others.
    pub samples: Vec<SampleRows<'a>>,
}

fn sanitize(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// Fills the histograms of every label, feature and sample, writes them to
/// `dir/histograms.root` (atomically) and returns them for `report.json`.
/// A feature without a finite reference value at a label gets no
/// histograms there (a warning).
///
/// # Errors
/// The file cannot be written (the error names it).
pub(crate) fn write_report_histograms(
    dir: &Path,
    label_names: &[String],
    features: &[String],
    labels: &[LabelSamples<'_>],
    bins: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<HistogramRecord>> {
    let mut records = Vec::new();
    let mut hists = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for (i, ls) in labels.iter().enumerate() {
        let label_text: Vec<String> = ls
            .label
            .iter()
            .enumerate()
            .map(|(k, v)| format!("{}={v}", label_names.get(k).map_or("label", String::as_str)))
            .collect();
        for (j, feature) in features.iter().enumerate() {
            let column = |rows: &[Vec<f64>]| -> Vec<f64> { rows.iter().map(|r| r[j]).collect() };
            let Some((_, reference, _)) = ls.samples.first() else { continue };
            let Some((lo, hi)) = plots::four_panel_range(&column(reference)) else {
                warnings.push(format!("no finite reference value of {feature} at label {i}; no histograms there"));
                continue;
            };
            for (sample, rows, weights) in &ls.samples {
                let mut name = format!("h_{i}_{}_{sample}", sanitize(feature));
                if !taken.insert(name.clone()) {
                    name = format!("h_{i}_{}_{j}_{sample}", sanitize(feature));
                    taken.insert(name.clone());
                }
                let title = format!("{}; {feature}; {sample}", label_text.join(", "));
                let mut h = Th1d::uniform(&name, &title, bins.max(1), lo, hi)
                    .map_err(|e| Error::Data(format!("histogram {name}: {e}")))?;
                match weights {
                    None => column(rows).into_iter().for_each(|x| h.fill(x)),
                    Some(w) => column(rows).into_iter().zip(w.iter()).for_each(|(x, &wi)| h.fill_weighted(x, wi)),
                }
                records.push(HistogramRecord {
                    name,
                    label_index: i,
                    label: ls.label.to_vec(),
                    feature: feature.clone(),
                    sample: (*sample).to_string(),
                    edges: h.edges().to_vec(),
                    counts: h.values().to_vec(),
                    sumw2: h.variances().to_vec(),
                });
                hists.push(h);
            }
        }
    }
    write_histograms(&dir.join(HISTOGRAMS_ROOT), &hists).map_err(|e| Error::Data(e.to_string()))?;
    Ok(records)
}
