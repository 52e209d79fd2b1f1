//! The conditional normalizing flow: MADE blocks ([`made`]), their stack
//! ([`maf`]) and the self-describing model file ([`model`]). Knows nothing of
//! MPI or gRPC.

pub mod fast;
pub mod made;
pub mod maf;
pub mod model;
pub mod spline;
pub mod vmath;

pub use made::Activation;
pub use maf::{Maf, MafConfig, Permutation, Transform};
pub use model::Model;
