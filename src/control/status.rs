//! The control plane's domain state: what a run reports ([`Status`],
//! [`RankInfo`], [`CheckpointInfo`]), its phase ([`Phase`]) and its events
//! ([`Event`]). The trainer side and the service logic use these; protobuf
//! appears only at the service edge, through the conversions here.

use super::pb;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading input, building the model.
    Starting,
    /// Taking steps.
    Training,
    /// Writing a checkpoint.
    Checkpointing,
    /// A stop was asked for.
    Stopping,
    /// Ended with a final model or a clean stop.
    Finished,
    /// Ended with an error.
    Failed,
}

impl Phase {
    /// Whether the run has ended.
    pub fn ended(self) -> bool {
        matches!(self, Phase::Finished | Phase::Failed)
    }
}

/// Static facts and resource use of one rank.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankInfo {
    /// Rank number.
    pub rank: u32,
    /// Host name.
    pub host: String,
    /// `cpu` or the GPU.
    pub device: String,
    /// Memory of the device (host memory for the CPU), bytes.
    pub device_memory_bytes: u64,
    /// Resident memory of the rank's process, bytes.
    pub rss_bytes: u64,
    /// Process CPU use (100 = one core).
    pub cpu_percent: f64,
    /// Wall time of the last step, seconds.
    pub last_step_seconds: f64,
    /// Threads of the rank.
    pub threads: u32,
    /// Process id of the rank.
    pub pid: u32,
    /// Seconds since the rank last made progress (entered or left a collective,
    /// finished a step); NaN while unknown.
    pub seconds_since_progress: f64,
    /// What the rank does: `computing`, `waiting in a collective`, `not responding for 12 s`, ...
    pub activity: String,
    /// No progress for `control.stall_seconds` while holding the run up.
    pub stalled: bool,
}

/// A checkpoint that was written.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// Complete epochs in it.
    pub epoch: u64,
    /// Steps of the next epoch in it (0 at an epoch boundary).
    pub step_in_epoch: u64,
    /// Its directory.
    pub path: String,
    /// When it was written.
    pub unix_time: f64,
}

/// The snapshot of a run the trainer updates and the service reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Identifier of the run.
    pub run_id: String,
    /// Where the run is.
    pub phase: Phase,
    /// Epochs completed (the epoch in progress while stepping).
    pub epoch: u64,
    /// Epochs requested.
    pub epochs: u64,
    /// Steps done in the current epoch.
    pub step: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Steps since the start.
    pub global_step: u64,
    /// Training NLL of the last completed epoch (NaN before the first).
    pub train_loss: f64,
    /// Validation NLL of the last completed epoch.
    pub val_loss: f64,
    /// Mean NLL of the last global batch.
    pub last_step_loss: f64,
    /// Training events per second (smoothed).
    pub events_per_second: f64,
    /// Seconds left at the current speed (NaN while unknown).
    pub eta_seconds: f64,
    /// The last checkpoint written.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Ranks of the run.
    pub world_size: u32,
    /// Every rank's facts.
    pub ranks: Vec<RankInfo>,
    /// Error text when failed.
    pub message: String,
    /// When the run started.
    pub started_unix_time: f64,
    /// `control.stall_seconds`: after how long without progress a rank is stalled.
    pub stall_seconds: f64,
    /// Who holds the run up and for how long, while some rank is stalled (else empty).
    pub stall: String,
}

/// Something that happened in a run, for watchers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step (paced: at most a few per second).
    Step {
        /// Epoch in progress.
        epoch: u64,
        /// Steps done in it.
        step: u64,
        /// Steps per epoch.
        steps_per_epoch: u64,
        /// Steps since the start.
        global_step: u64,
        /// Mean NLL of the global batch.
        loss: f64,
        /// Training events per second.
        events_per_second: f64,
    },
    /// An epoch ended.
    Epoch {
        /// Epochs completed.
        epoch: u64,
        /// Its training NLL.
        train_loss: f64,
        /// Its validation NLL.
        val_loss: f64,
        /// Learning rate at its end.
        learning_rate: f64,
        /// Its wall time.
        seconds: f64,
        /// Its training events per second.
        events_per_second: f64,
    },
    /// A checkpoint was written.
    Checkpoint(CheckpointInfo),
    /// The phase changed.
    Phase(Phase),
    /// A rank stalled (no progress for `control.stall_seconds` while holding
    /// the run up), or moves again.
    Stall(StallInfo),
}

/// A rank that stalled or moves again.
#[derive(Debug, Clone, PartialEq)]
pub struct StallInfo {
    /// The rank.
    pub rank: u32,
    /// Its host.
    pub host: String,
    /// Seconds since its last progress.
    pub seconds: f64,
    /// Who holds the run up, in words.
    pub message: String,
    /// It moves again.
    pub cleared: bool,
}

/// An event with its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// Seconds since the Unix epoch.
    pub unix_time: f64,
    /// What happened.
    pub event: Event,
}

impl From<Phase> for pb::RunState {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Starting => pb::RunState::Starting,
            Phase::Training => pb::RunState::Training,
            Phase::Checkpointing => pb::RunState::Checkpointing,
            Phase::Stopping => pb::RunState::Stopping,
            Phase::Finished => pb::RunState::Finished,
            Phase::Failed => pb::RunState::Failed,
        }
    }
}

impl From<&RankInfo> for pb::RankInfo {
    fn from(r: &RankInfo) -> Self {
        pb::RankInfo {
            rank: r.rank,
            host: r.host.clone(),
            device: r.device.clone(),
            device_memory_bytes: r.device_memory_bytes,
            rss_bytes: r.rss_bytes,
            cpu_percent: r.cpu_percent,
            last_step_seconds: r.last_step_seconds,
            threads: r.threads,
            pid: r.pid,
            seconds_since_progress: r.seconds_since_progress,
            activity: r.activity.clone(),
            stalled: r.stalled,
        }
    }
}

impl From<&CheckpointInfo> for pb::CheckpointInfo {
    fn from(c: &CheckpointInfo) -> Self {
        pb::CheckpointInfo {
            epoch: c.epoch,
            step_in_epoch: c.step_in_epoch,
            path: c.path.clone(),
            unix_time: c.unix_time,
        }
    }
}

impl From<&Status> for pb::StatusReply {
    fn from(s: &Status) -> Self {
        pb::StatusReply {
            run_id: s.run_id.clone(),
            state: pb::RunState::from(s.phase) as i32,
            epoch: s.epoch,
            epochs: s.epochs,
            step: s.step,
            steps_per_epoch: s.steps_per_epoch,
            global_step: s.global_step,
            train_loss: s.train_loss,
            val_loss: s.val_loss,
            last_step_loss: s.last_step_loss,
            events_per_second: s.events_per_second,
            eta_seconds: s.eta_seconds,
            last_checkpoint: s.last_checkpoint.as_ref().map(Into::into),
            world_size: s.world_size,
            ranks: s.ranks.iter().map(Into::into).collect(),
            message: s.message.clone(),
            started_unix_time: s.started_unix_time,
            stall_seconds: s.stall_seconds,
            stall: s.stall.clone(),
        }
    }
}

impl From<&Stamped> for pb::Event {
    fn from(e: &Stamped) -> Self {
        use pb::event::Kind;
        let kind = match &e.event {
            Event::Step { epoch, step, steps_per_epoch, global_step, loss, events_per_second } => {
                Kind::Step(pb::StepEvent {
                    epoch: *epoch,
                    step: *step,
                    steps_per_epoch: *steps_per_epoch,
                    global_step: *global_step,
                    loss: *loss,
                    events_per_second: *events_per_second,
                })
            }
            Event::Epoch { epoch, train_loss, val_loss, learning_rate, seconds, events_per_second } => {
                Kind::Epoch(pb::EpochEvent {
                    epoch: *epoch,
                    train_loss: *train_loss,
                    val_loss: *val_loss,
                    learning_rate: *learning_rate,
                    seconds: *seconds,
                    events_per_second: *events_per_second,
                })
            }
            Event::Checkpoint(c) => Kind::Checkpoint(c.into()),
            Event::Phase(p) => Kind::State(pb::RunState::from(*p) as i32),
            Event::Stall(st) => Kind::Stall(pb::StallEvent {
                rank: st.rank,
                host: st.host.clone(),
                seconds: st.seconds,
                message: st.message.clone(),
                cleared: st.cleared,
            }),
        };
        pb::Event { unix_time: e.unix_time, kind: Some(kind) }
    }
}
