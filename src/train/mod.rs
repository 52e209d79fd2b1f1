//! Training. The loop ([`driver`]) and its parts, one concern per file:
//! where a run starts ([`setup`]), one step's all-reduce packet and update
//! ([`step`]), the acceptance terms of the likelihood ([`acceptance`]),
//! requests and progress ([`observe`]), `history.csv` ([`history`]),
//! checkpoints ([`checkpoint`]), the shard plan ([`shard`]), the
//! learning-rate schedule ([`schedule`]), Adam with saveable state
//! ([`optim`]), gradient clipping ([`clip`]), early stopping
//! ([`early_stop`]) and the shard plan of a data set's labels ([`plan`]). A
//! whole run with its input, control plane and outputs is `app::run`.
//! The loop talks to other ranks only through a [`crate::comm::Communicator`].

mod acceptance;
pub mod checkpoint;
pub mod clip;
pub mod driver;
pub mod early_stop;
mod fault;
pub mod history;
pub mod observe;
pub mod optim;
pub mod plan;
pub mod schedule;
mod setup;
pub mod shard;
pub mod step;

pub use driver::{train, train_events};
pub use history::EpochRecord;
pub use observe::{Controls, Finish, Hooks, Observer, RankFacts, TrainOutcome};
