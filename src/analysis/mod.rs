//! Analysis of generated events: two-sample metrics ([`metrics`]) and PNG
//! plots ([`plots`]). Reads samples and model files, never trains.

pub mod metrics;
pub mod plots;
