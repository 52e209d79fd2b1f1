//! The control plane: rank 0 of a run publishes a status snapshot and a
//! stream of events; a gRPC service ([`grpc`]) serves them and takes
//! commands; [`client`] is what `fedhex-ctl` uses.
//!
//! The trainer never waits on the service: it updates the snapshot under a
//! short `std::sync::Mutex` (never held across a step or an await) and sends
//! events into a bounded broadcast ring; commands reach it as atomic flags
//! (see [`crate::train::Controls`]) that rank 0 folds into the per-step
//! all-reduce, so every rank acts on the same step.

pub mod client;
pub mod grpc;
pub mod status;

pub use status::{CheckpointInfo, Event, Phase, RankInfo, StallInfo, Stamped, Status};

use crate::train::checkpoint::TrainState;
use crate::train::{Controls, EpochRecord, Observer, RankFacts};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Generated protobuf types and service stubs (package `fedhex.v1`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("fedhex.v1");
    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fedhex_descriptor");
}

pub use pb::RunState;

/// Serialises a run state (an `i32` on the wire) by its name, as
/// `fedhex-ctl` prints it (`training`, `finished`, ...).
pub fn serialize_run_state<S: serde::Serializer>(state: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&client::state_name(*state))
}

/// Events kept for slow watchers; older ones are skipped, never queued without bound.
pub const EVENT_RING: usize = 256;
/// Most step events per second put into the ring.
pub const MAX_STEP_EVENTS_PER_S: f64 = 10.0;

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A request from the control plane to the trainer, independent of the wire
/// format (the service converts protobuf requests into these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Write a checkpoint at the next epoch boundary.
    Checkpoint,
    /// Stop gracefully: after the current step (`now`) or at the end of the epoch.
    Stop {
        /// After the current step instead of at the epoch's end.
        now: bool,
    },
}

/// Shared state between the trainer (writer) and the service (readers).
#[derive(Debug)]
pub struct ControlState {
    status: Mutex<Status>,
    events: broadcast::Sender<Stamped>,
    /// Flags the service sets and the trainer polls.
    pub controls: Arc<Controls>,
    pace: Mutex<Pace>,
}

#[derive(Debug)]
struct Pace {
    last_event: Instant,
    last_step: Option<(Instant, u64)>,
    events_per_s: f64,
    batch: f64,
}

impl ControlState {
    /// A new state for a run.
    pub fn new(run_id: String, epochs: usize, world_size: usize, batch: usize, controls: Arc<Controls>) -> Arc<Self> {
        let status = Status {
            run_id,
            phase: Phase::Starting,
            epoch: 0,
            epochs: epochs as u64,
            step: 0,
            steps_per_epoch: 0,
            global_step: 0,
            train_loss: f64::NAN,
            val_loss: f64::NAN,
            last_step_loss: f64::NAN,
            events_per_second: 0.0,
            eta_seconds: f64::NAN,
            last_checkpoint: None,
            world_size: world_size as u32,
            ranks: Vec::new(),
            message: String::new(),
            started_unix_time: unix_now(),
            stall_seconds: crate::config::DEFAULT_STALL_SECONDS,
            stall: String::new(),
        };
        let (events, _) = broadcast::channel(EVENT_RING);
        let pace = Pace { last_event: Instant::now(), last_step: None, events_per_s: 0.0, batch: batch as f64 };
        Arc::new(ControlState { status: Mutex::new(status), events, controls, pace: Mutex::new(pace) })
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn emit(&self, event: Event) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Stamped { unix_time: unix_now(), event });
    }

    /// A receiver of future events.
    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.events.subscribe()
    }

    /// Changes the run's phase and tells watchers.
    pub fn set_phase(&self, phase: Phase, message: Option<String>) {
        self.update(|s| {
            s.phase = phase;
            if let Some(m) = message {
                s.message = m;
            }
        });
        self.emit(Event::Phase(phase));
    }

    /// Records the static facts of every rank (host, device, threads).
    pub fn set_ranks(&self, ranks: Vec<RankInfo>) {
        self.update(|s| s.ranks = ranks);
    }

    /// Sets `control.stall_seconds`, after how long without progress a rank
    /// that holds the run up is stalled.
    pub fn set_stall_seconds(&self, seconds: f64) {
        self.update(|s| s.stall_seconds = seconds);
    }

    /// Takes every rank's progress (the watchdog thread's diagnosis, once a
    /// second): updates the ranks' facts, marks the ranks stalled that hold
    /// the run up and have made no progress for `stall_seconds`, with
    /// `summary` (who holds the run up) as the status's `stall`, and logs and
    /// tells watchers when a rank stalls or moves again.
    pub fn report_progress(&self, ranks: &[RankActivity], summary: &str) {
        let mut changes = Vec::new();
        self.update(|s| {
            let limit = s.stall_seconds;
            for a in ranks {
                let Some(info) = s.ranks.iter_mut().find(|i| i.rank as usize == a.rank) else { continue };
                let stalled = a.holds_up && a.seconds_since_progress >= limit;
                info.seconds_since_progress = a.seconds_since_progress;
                info.activity.clone_from(&a.activity);
                if a.pid > 0 {
                    info.pid = a.pid;
                }
                if stalled != info.stalled {
                    changes.push(StallInfo {
                        rank: info.rank,
                        host: info.host.clone(),
                        seconds: a.seconds_since_progress,
                        message: if stalled { summary.to_string() } else { String::new() },
                        cleared: !stalled,
                    });
                }
                info.stalled = stalled;
            }
            s.stall = if s.ranks.iter().any(|r| r.stalled) { summary.to_string() } else { String::new() };
        });
        for c in changes {
            if c.cleared {
                tracing::info!(rank = c.rank, host = %c.host, "rank {} moves again", c.rank);
            } else {
                tracing::warn!(rank = c.rank, host = %c.host, "stalled: {}", c.message);
            }
            self.emit(Event::Stall(c));
        }
    }

    /// Whether the run has ended (finished or failed).
    pub fn ended(&self) -> bool {
        self.snapshot().phase.ended()
    }

    /// Carries out a command; returns the epoch at whose end it takes effect
    /// (for a stop now: the epoch in progress).
    pub fn apply(&self, cmd: Command) -> u64 {
        match cmd {
            Command::Checkpoint => self.request_checkpoint(),
            Command::Stop { now } => self.request_stop(now),
        }
    }

    /// Asks for a checkpoint at the next epoch boundary; returns that epoch.
    pub fn request_checkpoint(&self) -> u64 {
        self.controls.request_checkpoint()
    }

    /// Asks for a graceful stop; returns the epoch at whose end it happens.
    pub fn request_stop(&self, now: bool) -> u64 {
        if now {
            self.controls.stop_now.store(true, Ordering::Relaxed);
        } else {
            self.controls.stop_after_epoch.store(true, Ordering::Relaxed);
        }
        self.set_phase(Phase::Stopping, None);
        self.snapshot().epoch + u64::from(!now)
    }
}

/// One rank's progress as the stall watchdog sees it (see
/// [`ControlState::report_progress`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RankActivity {
    /// The rank.
    pub rank: usize,
    /// Its process id (0: unknown).
    pub pid: u32,
    /// Seconds since its last progress (NaN: unknown).
    pub seconds_since_progress: f64,
    /// What it does, in words.
    pub activity: String,
    /// Whether the run waits for it.
    pub holds_up: bool,
}

/// The trainer-side [`Observer`] that feeds a [`ControlState`].
#[derive(Debug, Clone)]
pub struct ControlObserver(pub Arc<ControlState>);

impl Observer for ControlObserver {
    fn on_step(&self, epoch: usize, step: usize, steps: usize, global_step: u64, loss: f64) {
        let st = &self.0;
        let now = Instant::now();
        let (emit, eps, batch) = {
            let mut p = st.pace.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, g)) = p.last_step {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 && global_step > g {
                    let inst = p.batch * (global_step - g) as f64 / dt;
                    p.events_per_s = if p.events_per_s > 0.0 { 0.9 * p.events_per_s + 0.1 * inst } else { inst };
                }
            }
            p.last_step = Some((now, global_step));
            let emit = now.duration_since(p.last_event).as_secs_f64() >= 1.0 / MAX_STEP_EVENTS_PER_S;
            if emit {
                p.last_event = now;
            }
            (emit, p.events_per_s, p.batch)
        };
        let mut eta = f64::NAN;
        st.update(|s| {
            if matches!(s.phase, Phase::Starting | Phase::Checkpointing) {
                s.phase = Phase::Training;
            }
            s.epoch = epoch as u64;
            s.step = step as u64;
            s.steps_per_epoch = steps as u64;
            s.global_step = global_step;
            s.last_step_loss = loss;
            s.events_per_second = eps;
            let left_steps = (s.epochs.saturating_sub(epoch as u64) * steps as u64).saturating_sub(step as u64);
            if eps > 0.0 {
                eta = left_steps as f64 * batch / eps;
            }
            s.eta_seconds = eta;
        });
        if emit {
            st.emit(Event::Step {
                epoch: epoch as u64,
                step: step as u64,
                steps_per_epoch: steps as u64,
                global_step,
                loss,
                events_per_second: eps,
            });
        }
    }

    fn on_epoch(&self, r: &EpochRecord) {
        self.0.update(|s| {
            s.epoch = r.epoch as u64;
            s.step = 0;
            s.train_loss = r.train_nll;
            s.val_loss = r.val_nll;
        });
        self.0.emit(Event::Epoch {
            epoch: r.epoch as u64,
            train_loss: r.train_nll,
            val_loss: r.val_nll,
            learning_rate: r.lr,
            seconds: r.seconds,
            events_per_second: r.events_per_s,
        });
    }

    fn on_checkpoint_start(&self) {
        if self.0.snapshot().phase != Phase::Stopping {
            self.0.set_phase(Phase::Checkpointing, None);
        }
    }

    fn on_checkpoint(&self, state: &TrainState, path: &Path) {
        let info = CheckpointInfo {
            epoch: state.epoch as u64,
            step_in_epoch: state.step_in_epoch as u64,
            path: path.display().to_string(),
            unix_time: unix_now(),
        };
        self.0.update(|s| {
            s.last_checkpoint = Some(info.clone());
            if s.phase == Phase::Checkpointing {
                s.phase = Phase::Training;
            }
        });
        self.0.emit(Event::Checkpoint(info));
    }

    fn on_rank_facts(&self, facts: &[RankFacts]) {
        self.0.update(|s| {
            for (info, f) in s.ranks.iter_mut().zip(facts) {
                info.rss_bytes = f.rss_bytes as u64;
                info.cpu_percent = f.cpu_percent;
                info.last_step_seconds = f.last_step_seconds;
            }
        });
    }
}
