//! Training: the shard plan ([`shard`]), the learning-rate schedule
//! ([`schedule`]), Adam with saveable state ([`optim`]), early stopping
//! ([`early_stop`]) and the epoch/step driver ([`driver`]). The driver talks to other ranks only through a
//! [`crate::comm::Communicator`].

pub mod checkpoint;
pub mod clip;
pub mod driver;
pub mod early_stop;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod shard;

pub use driver::{train, train_events, Controls, EpochRecord, Finish, Hooks, Observer, RankFacts, TrainOutcome};
