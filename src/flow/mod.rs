//! The conditional normalizing flow: MADE blocks ([`made`]), the optional
//! learned mixing between them ([`lu`]), rational-quadratic splines
//! ([`spline`]), their stack ([`maf`], libtorch: the reference), the
//! hand-written CPU engine ([`engine::cpu`], [`vmath`]) and the one place that
//! chooses between the two ([`engine`]), and the self-describing model file
//! ([`model`]). Knows nothing of MPI or gRPC.

pub mod engine;
pub mod lu;
pub mod made;
pub mod maf;
pub mod model;
pub mod spline;
pub mod vmath;

/// `ln 2π`, of the standard normal base density `−½ (|u|² + D ln 2π)`.
pub(crate) const LOG_2PI: f64 = 1.837_877_066_409_345_3;

pub use engine::Engine;
pub use made::Activation;
pub use maf::{Maf, MafConfig, Permutation, Transform};
pub use model::Model;
