//! How a run talks to the world while it trains: requests in ([`Controls`],
//! polled every step), progress out ([`Observer`]), resource use of every
//! rank ([`RankFacts`]), and how it ended ([`Finish`], [`TrainOutcome`]).

use super::checkpoint::{self, TrainState};
use super::history::EpochRecord;
use crate::comm::Communicator;
use crate::error::Result;
use crate::flow::Model;
use crate::resources::process_usage;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Requests that reach the trainer between steps: from signal handlers or the
/// control plane. Cheap to poll (atomics); shared through an `Arc`.
#[derive(Debug, Default)]
pub struct Controls {
    /// Stop at the next step boundary, saving a resumable mid-epoch checkpoint.
    pub stop_now: AtomicBool,
    /// Stop at the next epoch boundary, with a checkpoint.
    pub stop_after_epoch: AtomicBool,
    /// Write a checkpoint at the next epoch boundary.
    pub checkpoint: AtomicBool,
    /// Epochs completed when rank 0 last took the requests at an epoch's
    /// end. Held while it does, so a request's promised epoch
    /// ([`Controls::request_checkpoint`]) is always the one it is written at.
    boundary: std::sync::Mutex<u64>,
}

impl Controls {
    /// Asks for a checkpoint; returns the epoch (completed epochs) at whose
    /// end it will be written.
    pub fn request_checkpoint(&self) -> u64 {
        let boundary = self.boundary.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint.store(true, std::sync::atomic::Ordering::Relaxed);
        *boundary + 1
    }

    /// At the end of epoch `done` (rank 0): takes a checkpoint request that
    /// arrived since the last step, and moves the boundary, in one step
    /// with respect to [`Controls::request_checkpoint`].
    pub fn take_checkpoint_at_epoch_end(&self, done: u64) -> bool {
        let mut boundary = self.boundary.lock().unwrap_or_else(|p| p.into_inner());
        *boundary = done;
        self.checkpoint.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the boundary a (resumed) run starts from.
    pub fn start_at(&self, epochs_done: u64) {
        *self.boundary.lock().unwrap_or_else(|p| p.into_inner()) = epochs_done;
    }
}

/// Progress reported to an observer (the control plane, a progress display).
pub trait Observer: Send + Sync {
    /// After every step (cheap: called on the hot path; must not block).
    /// `loss` is the mean NLL of the global batch (NaN when not known without
    /// a device sync).
    fn on_step(&self, _epoch: usize, _step: usize, _steps: usize, _global_step: u64, _loss: f64) {}
    /// After every epoch.
    fn on_epoch(&self, _record: &EpochRecord) {}
    /// Before a checkpoint is written (rank 0).
    fn on_checkpoint_start(&self) {}
    /// After a checkpoint was written (rank 0).
    fn on_checkpoint(&self, _state: &TrainState, _path: &Path) {}
    /// Per-rank resource use, gathered every few hundred steps and at epoch ends.
    fn on_rank_facts(&self, _facts: &[RankFacts]) {}
}

/// Resource use of one rank, sent to rank 0 now and then (a few numbers, one collective).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankFacts {
    /// Resident memory of the process, bytes.
    pub rss_bytes: f64,
    /// Process CPU use since the previous sample, percent of one core.
    pub cpu_percent: f64,
    /// Wall time of the last step, seconds.
    pub last_step_seconds: f64,
}

/// Steps between two gatherings of [`RankFacts`].
pub const RANK_FACTS_EVERY: u64 = 200;

/// Gathers every rank's facts on every rank (one all-reduce of 3 numbers per rank).
pub(super) fn gather_facts(comm: &dyn Communicator, mine: RankFacts) -> Result<Vec<RankFacts>> {
    let w = comm.size();
    let mut buf = vec![0.0; 3 * w];
    let r = comm.rank();
    buf[3 * r] = mine.rss_bytes;
    buf[3 * r + 1] = mine.cpu_percent;
    buf[3 * r + 2] = mine.last_step_seconds;
    comm.allreduce_sum_f64(&mut buf)?;
    Ok(buf.chunks(3).map(|c| RankFacts { rss_bytes: c[0], cpu_percent: c[1], last_step_seconds: c[2] }).collect())
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// All epochs done.
    Completed,
    /// Stopped on request at a step boundary (mid-epoch checkpoint written).
    StoppedMidEpoch,
    /// Stopped on request at an epoch boundary (checkpoint written).
    StoppedAtEpoch,
    /// Stopped before the last epoch because the validation NLL stopped
    /// improving (`training.early_stopping_patience`); the model is final.
    EarlyStopped,
}

impl Finish {
    /// Whether training is over and the model final (completed or stopped early),
    /// as opposed to interrupted on request.
    pub fn is_final(self) -> bool {
        matches!(self, Finish::Completed | Finish::EarlyStopped)
    }
}

/// The result of training.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained model.
    pub model: Model,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// How training ended.
    pub finish: Finish,
    /// Checkpoints written by this process, in order.
    pub checkpoints: Vec<PathBuf>,
    /// This rank's busy time in training steps (loss and gradient, before the
    /// all-reduce; host time) and the local events they processed: a slow rank
    /// shows up as more seconds per event than the others.
    pub busy: (f64, u64),
}

/// Optional parts of a run: where checkpoints go, requests, observer.
#[derive(Default)]
pub struct Hooks {
    /// Checkpoint directory (written by rank 0). None: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Requests polled every step.
    pub controls: Arc<Controls>,
    /// Progress observer.
    pub observer: Option<Arc<dyn Observer>>,
    /// A checkpoint to continue from.
    pub resume: Option<checkpoint::Loaded>,
    /// Gather [`RankFacts`] on rank 0 every [`RANK_FACTS_EVERY`] steps (must be
    /// the same on all ranks: it adds a collective).
    pub gather_rank_facts: bool,
}

/// Samples this rank's resource use and gathers every rank's on rank 0's
/// observer (a collective: every rank calls it at the same steps).
pub(super) struct FactsSampler {
    /// When and at how many CPU seconds the previous sample was taken.
    mark: (Instant, f64),
}

impl FactsSampler {
    /// Starts measuring CPU use from now.
    pub(super) fn new() -> Self {
        FactsSampler { mark: (Instant::now(), process_usage().1) }
    }

    /// One sample of every rank, handed to the observer on rank 0.
    pub(super) fn sample(
        &mut self,
        comm: &dyn Communicator,
        observer: Option<&Arc<dyn Observer>>,
        last_step_seconds: f64,
    ) -> Result<()> {
        let (rss, cpu) = process_usage();
        let dt = self.mark.0.elapsed().as_secs_f64().max(1e-9);
        let mine = RankFacts { rss_bytes: rss, cpu_percent: 100.0 * (cpu - self.mark.1) / dt, last_step_seconds };
        self.mark = (Instant::now(), cpu);
        let all = gather_facts(comm, mine)?;
        if let Some(o) = observer.filter(|_| comm.is_root()) {
            o.on_rank_facts(&all);
        }
        Ok(())
    }
}
