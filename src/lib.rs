//! FEDHEX: conditional normalizing flows (a Masked Autoregressive Flow of MADE
//! blocks) trained on Monte Carlo simulated at a sparse grid of generator
//! parameters, generating events at any parameter point in between.
//!
//! Components and what each owns:
//! - [`atomic`]: atomic file and directory writes (the bottom layer).
//! - [`config`]: the run configuration (TOML), defaults and `--set` overrides.
//! - [`data`]: [`data::EventSet`], readers/writers, generators, whitening.
//! - [`flow`]: the conditional MAF in tch and the self-describing model file.
//! - [`comm`]: the [`comm::Communicator`] trait between training ranks, and
//!   the stall watchdog (progress marks, heartbeat files, step timeout).
//! - [`train`]: shard plan, schedule, Adam with saveable state, the driver.
//! - [`device`]: device and thread selection; [`resources`]: memory and CPU use of this process.
//! - [`app`]: the composition root: a whole run with its input, control plane, signals.
//! - [`analysis`]: metrics between sample sets and plots.
//! - [`logging`]: the binaries' log output (rank on every line, colour only on a terminal).
//! - [`generate`]: sampling at requested labels, in one process or over ranks
//!   ([`generate::distributed`]); [`bench`]: throughput measurement.
//!
//! Model code knows nothing of MPI or gRPC; the training driver and
//! generation over ranks see other ranks only through a `Communicator`.
#![warn(missing_docs)]

pub mod analysis;
pub mod app;
pub mod atomic;
pub mod bench;
pub mod comm;
pub mod config;
pub mod control;
pub mod data;
pub mod device;
pub mod error;
pub mod flow;
pub mod generate;
pub mod knn;
pub mod logging;
pub mod resources;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
