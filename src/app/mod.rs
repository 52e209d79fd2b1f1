//! The composition root the binaries call: a whole training run with its
//! input, control plane, signals and run directory ([`run`]). It sits above
//! `train` (the loop, which knows nothing of gRPC) and `control` (the gRPC
//! service, which knows nothing of how a run is wired).

pub mod run;
