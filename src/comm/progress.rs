//! How far this rank has got, in a form other threads read without waiting:
//! [`Progress`] is a handful of atomics the training thread updates around
//! every collective ([`Watched`] wraps any [`Communicator`] to do so) and
//! after every step; the heartbeat thread ([`super::heartbeat`]) reads them.
//!
//! Every rank makes the same collectives in the same order, so the number of
//! collectives a rank has entered is a clock shared by all ranks: a rank
//! inside collective `c` waits for exactly the ranks that have not entered
//! `c` yet. That is how a stalled rank is told apart from the healthy ones
//! that wait for it (all of them make no progress).
//!
//! Cost: two reads of the coarse clock and four atomic stores per
//! collective, two per step; no lock, no allocation, no system call (the
//! clock is read in the vDSO); docs/speed.md has it measured.

use super::Communicator;
use crate::error::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch (0 if the clock is before it), from the
/// coarse clock on Linux (a few nanoseconds per read instead of tens; its
/// resolution, a few milliseconds, is far below the seconds that matter here).
pub fn unix_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec it is given, nothing else.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 && ts.tv_sec >= 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a rank does between collectives, as far as the driver tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Before the first training step: reading input, building the model.
    Setup,
    /// Training steps (and the validation pass at an epoch's end).
    Training,
    /// Writing a checkpoint (rank 0).
    Checkpoint,
    /// Training is over: writing the model, the summary.
    Finishing,
}

impl Activity {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Activity::Training,
            2 => Activity::Checkpoint,
            3 => Activity::Finishing,
            _ => Activity::Setup,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Activity::Setup => 0,
            Activity::Training => 1,
            Activity::Checkpoint => 2,
            Activity::Finishing => 3,
        }
    }
}

/// This rank's progress, shared between the training thread (writer) and
/// the heartbeat thread (reader).
#[derive(Debug)]
pub struct Progress {
    /// Twice the collectives completed, plus one while inside one.
    mark: AtomicU64,
    /// Unix ms of the last change of `mark`, `step` or `activity`.
    since_ms: AtomicU64,
    /// Unix ms at which the last collective completed.
    left_ms: AtomicU64,
    /// Global training steps completed.
    step: AtomicU64,
    /// An [`Activity`].
    activity: AtomicU8,
    /// Whether `training.step_timeout` applies now (while training).
    armed: AtomicBool,
}

/// A copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Twice the collectives completed, plus one while inside one.
    pub mark: u64,
    /// Unix ms of the last progress.
    pub since_ms: u64,
    /// Unix ms at which the last collective completed (0: none yet).
    pub left_ms: u64,
    /// Global training steps completed.
    pub step: u64,
    /// What the rank does.
    pub activity: Activity,
    /// Whether the step timeout applies.
    pub armed: bool,
}

impl ProgressSnapshot {
    /// Whether the rank is inside a collective.
    pub fn inside(&self) -> bool {
        self.mark % 2 == 1
    }

    /// The lowest mark every rank of the job has reached, as this rank knows
    /// it: inside collective `c` (mark `2c - 1`), every rank entered `c - 1`
    /// (mark `2c - 3`); after collective `c` (mark `2c`), every rank entered `c`.
    pub fn everyone_reached(&self) -> u64 {
        everyone_reached(self.mark)
    }
}

/// The lowest mark every rank has reached when one rank is at `mark` (see
/// [`ProgressSnapshot::everyone_reached`]).
pub fn everyone_reached(mark: u64) -> u64 {
    if mark % 2 == 1 {
        mark.saturating_sub(2)
    } else {
        mark.saturating_sub(1)
    }
}

impl Default for Progress {
    fn default() -> Self {
        let now = unix_ms();
        Progress {
            mark: AtomicU64::new(0),
            since_ms: AtomicU64::new(now),
            left_ms: AtomicU64::new(0),
            step: AtomicU64::new(0),
            activity: AtomicU8::new(Activity::Setup.as_u8()),
            armed: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// A fresh record (no collective yet, progress now).
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// The training thread enters a collective.
    pub fn enter(&self) {
        self.since_ms.store(unix_ms(), Ordering::Relaxed);
        self.bump_mark();
    }

    /// The training thread left a collective.
    pub fn leave(&self) {
        let now = unix_ms();
        self.since_ms.store(now, Ordering::Relaxed);
        self.left_ms.store(now, Ordering::Relaxed);
        self.bump_mark();
    }

    /// One more half-collective. Only the training thread writes the mark,
    /// so a load and a store do (no read-modify-write).
    fn bump_mark(&self) {
        self.mark.store(self.mark.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// A training step completed (`global_step` steps since the start).
    pub fn step_done(&self, global_step: u64) {
        self.since_ms.store(unix_ms(), Ordering::Relaxed);
        self.step.store(global_step, Ordering::Release);
    }

    /// The rank turns to `activity`.
    pub fn set_activity(&self, activity: Activity) {
        self.since_ms.store(unix_ms(), Ordering::Relaxed);
        self.activity.store(activity.as_u8(), Ordering::Release);
    }

    /// Arms (training) or disarms the step timeout.
    pub fn arm(&self, armed: bool) {
        self.armed.store(armed, Ordering::Release);
    }

    /// A consistent copy: re-read until no progress happened while reading
    /// (a reader never waits for the writer; it retries at most a few times).
    pub fn snapshot(&self) -> ProgressSnapshot {
        let read = || ProgressSnapshot {
            mark: self.mark.load(Ordering::Acquire),
            since_ms: self.since_ms.load(Ordering::Relaxed),
            left_ms: self.left_ms.load(Ordering::Relaxed),
            step: self.step.load(Ordering::Acquire),
            activity: Activity::from_u8(self.activity.load(Ordering::Acquire)),
            armed: self.armed.load(Ordering::Acquire),
        };
        let mut b = read();
        for _ in 0..4 {
            let a = b;
            b = read();
            if a == b {
                break;
            }
        }
        // Still moving after a few reads: the rank progresses, any read will do.
        b
    }
}

/// A [`Communicator`] that records every collective in a [`Progress`]
/// (entered, left) around the wrapped one's; results are the wrapped
/// communicator's, untouched.
pub struct Watched<'a> {
    inner: &'a dyn Communicator,
    progress: Arc<Progress>,
}

impl<'a> Watched<'a> {
    /// Wraps `inner`, recording into `progress`.
    pub fn new(inner: &'a dyn Communicator, progress: Arc<Progress>) -> Self {
        Watched { inner, progress }
    }

    /// The record.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    fn around<T>(&self, op: impl FnOnce(&dyn Communicator) -> T) -> T {
        self.progress.enter();
        let out = op(self.inner);
        self.progress.leave();
        out
    }
}

impl Communicator for Watched<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.around(|c| c.allreduce_sum_f32(buf))
    }
    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.around(|c| c.allreduce_sum_f64(buf))
    }
    fn allreduce_min_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.around(|c| c.allreduce_min_f64(buf))
    }
    fn allreduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.around(|c| c.allreduce_max_f64(buf))
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        self.around(|c| c.broadcast_bytes(root, buf))
    }
    fn barrier(&self) -> Result<()> {
        self.around(|c| c.barrier())
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.around(|c| c.all_gather_bytes(bytes))
    }
    fn scatter_bytes(&self, root: usize, data: &[u8], sizes: &[usize]) -> Result<Vec<u8>> {
        self.around(|c| c.scatter_bytes(root, data, sizes))
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
    fn aborter(&self) -> fn(i32) -> ! {
        self.inner.aborter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::SingleProcess;

    #[test]
    fn marks_count_collectives_and_the_lower_bound_follows() {
        let p = Progress::new();
        let w = Watched::new(&SingleProcess, p.clone());
        assert_eq!(p.snapshot().mark, 0);
        w.barrier().unwrap();
        w.allreduce_sum_f64(&mut [1.0]).unwrap();
        let s = p.snapshot();
        assert_eq!((s.mark, s.inside(), s.everyone_reached()), (4, false, 3));
        p.enter();
        let s = p.snapshot();
        assert_eq!((s.mark, s.inside(), s.everyone_reached()), (5, true, 3));
        p.step_done(7);
        p.set_activity(Activity::Checkpoint);
        let s = p.snapshot();
        assert_eq!((s.step, s.activity), (7, Activity::Checkpoint));
        assert!(s.left_ms > 0 && s.since_ms >= s.left_ms);
    }
}
