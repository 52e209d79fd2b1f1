//! Analysis of generated events: two-sample metrics ([`metrics`]), PNG
//! plots ([`plots`]), the validation report ([`report`]) and the
//! maximum-likelihood label fit ([`fit`]). Reads samples and model files,
//! never trains.

pub mod fit;
pub mod metrics;
pub mod plots;
pub mod report;
