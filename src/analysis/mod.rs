//! Analysis of generated events: two-sample metrics ([`metrics`]), PNG or SVG
//! plots ([`plots`]), the validation report ([`report`]) with its reusable
//! histograms ([`histograms`]) and the
//! maximum-likelihood label fit ([`fit`]). Reads samples and model files,
//! never trains.

pub mod fit;
pub mod histograms;
pub mod metrics;
pub mod plot_backend;
pub mod plots;
pub mod report;
