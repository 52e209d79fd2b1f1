//! Stalled ranks: heartbeat files, the diagnosis of who holds a run up, and
//! the watchdog thread that reports it and enforces `training.step_timeout`.
//!
//! # Channel
//!
//! Each rank's watchdog thread writes `RUN_DIR/heartbeat/rank-N.json` (its
//! [`Progress`], host, pid and the time) by write-and-rename, without
//! fsync, **only once the rank has made no progress for a second**, and
//! then at most once a second. A run whose steps take milliseconds writes
//! nothing while it moves; when it stops moving every live rank writes once
//! a second, and a rank that is stopped (SIGSTOP), swapped out or hung in the
//! kernel falls silent. Readers are rare: rank 0 reads the files only while
//! it has itself made no progress for two seconds (when it moves, every rank
//! has reached its last collective), at most every
//! `clamp(control.stall_seconds / 10, 1, 10)` seconds; a rank whose step
//! timeout expires reads the files of the lower ranks (a live one that got
//! as far reports instead), and the reporting rank reads them all once. The
//! files are read and written on a thread of their own (`Io`): a file
//! system that hangs delays no decision of the watchdog.
//!
//! Why files and not MPI or gRPC: the run directory is already shared by
//! every rank (checkpoints, resume), a file is read while its writer is
//! stopped, any rank (not only rank 0, which may be the stalled one) and
//! `fedhex-ctl` itself can read them, and nothing here touches the training
//! thread: MPI is initialised `MPI_THREAD_FUNNELED` (only the training thread
//! may call it, and it is blocked in the collective that stalls), and a gRPC
//! report from every rank would put a client and a runtime on every rank and
//! tell nothing when rank 0 is the stalled one. Clocks of the nodes are
//! assumed to agree to well under a second (NTP), as the thresholds are
//! seconds to minutes.
//!
//! # Who holds a run up
//!
//! Every rank makes the same collectives in the same order (the
//! [`Progress`] mark counts them). While some rank waits inside collective
//! `c`, the ranks that hold the run up are those that have not entered `c`
//! and those whose heartbeat fell silent; when nobody waits (one rank, or
//! every rank busy), every rank that makes no progress holds it up. When
//! every live rank waits inside the same collective, nobody is missing from
//! it: MPI or the network hangs.

use super::progress::{everyone_reached, unix_ms, Activity, Progress, ProgressSnapshot};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The heartbeat directory's name under the run directory.
pub const DIR: &str = "heartbeat";
/// How often the watchdog thread looks (and, when the rank stands still, writes).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A rank whose heartbeat is older than this while it should be writing is
/// not responding (stopped, swapped out, hung in the kernel or file system).
pub const SILENT_AFTER_S: f64 = 3.0;
/// Extra seconds a rank that is not the reporter waits before it aborts
/// itself (in case the reporter cannot).
pub const BACKUP_S: f64 = 5.0;
/// Exit code of a job aborted by the step timeout.
pub const STALL_EXIT_CODE: i32 = 4;

/// One rank's heartbeat file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// The job (every rank of one start of a run writes the same): files of
    /// an earlier start of the run are ignored.
    pub job: String,
    /// The rank.
    pub rank: usize,
    /// Ranks in the job.
    pub size: usize,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Twice the collectives completed, plus one while inside one.
    pub mark: u64,
    /// Unix ms of the rank's last progress.
    pub since_ms: u64,
    /// Global training steps completed.
    pub step: u64,
    /// What it does.
    pub activity: Activity,
    /// Unix ms at which the file was written.
    pub beat_ms: u64,
}

/// Path of rank `rank`'s heartbeat file in `dir` (`RUN_DIR/heartbeat`).
pub fn beat_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.json"))
}

/// Writes a heartbeat file: a temporary sibling renamed over it (readers see
/// the old or the new one), not fsynced (a heartbeat matters only while the
/// job lives).
pub fn write_beat(dir: &Path, beat: &Beat) -> Result<()> {
    let path = beat_path(dir, beat.rank);
    let tmp = crate::atomic::sibling(&path, "tmp");
    let json = serde_json::to_vec(beat).map_err(|e| Error::Comm(format!("heartbeat: {e}")))?;
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Reads rank `rank`'s heartbeat, if there is a readable one of `job`.
pub fn read_beat(dir: &Path, rank: usize, job: &str) -> Option<Beat> {
    let b: Beat = serde_json::from_slice(&std::fs::read(beat_path(dir, rank)).ok()?).ok()?;
    (b.job == job && b.rank == rank).then_some(b)
}

/// Every heartbeat of the newest job in `dir`, by rank (for `fedhex-ctl`
/// when rank 0 does not answer): `None` when there is none.
pub fn read_newest_job(dir: &Path) -> Option<Vec<Option<Beat>>> {
    let beats: Vec<Beat> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rank-"))
        .filter_map(|e| serde_json::from_slice::<Beat>(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    let newest = beats.iter().max_by_key(|b| b.beat_ms)?;
    let (job, size) = (newest.job.clone(), newest.size);
    let mut out = vec![None; size];
    for b in beats.into_iter().filter(|b| b.job == job && b.rank < size) {
        let r = b.rank;
        out[r] = Some(b);
    }
    Some(out)
}

/// Where a rank is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankState {
    /// Inside collective number `collective` (counted from 1 since the start).
    Waiting {
        /// The collective's number.
        collective: u64,
    },
    /// Between collectives.
    Busy(Activity),
}

/// One rank as a diagnosis sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RankProgress {
    /// The rank.
    pub rank: usize,
    /// Its host ("?" when unknown).
    pub host: String,
    /// Its process id (0 when unknown).
    pub pid: u32,
    /// Twice the collectives it completed, plus one while inside one.
    pub mark: u64,
    /// Where it is.
    pub state: RankState,
    /// Global training steps it completed (as far as known).
    pub step: u64,
    /// Seconds since its last progress (NaN when unknown).
    pub seconds_since_progress: f64,
    /// Seconds since it last showed life, when it should have (None: it is
    /// the diagnosing rank, or nothing is known).
    pub silent_seconds: Option<f64>,
    /// Whether its process responds (heartbeats come).
    pub responding: bool,
    /// Whether it holds the run up (see the module documentation); only
    /// meaningful once the run stands still.
    pub holds_up: bool,
}

impl RankProgress {
    /// Where it is, in words: `computing`, `waiting in a collective`, ...
    pub fn activity(&self) -> String {
        if !self.responding {
            return format!("not responding for {:.0} s", self.silent_seconds.unwrap_or(f64::NAN));
        }
        match self.state {
            RankState::Waiting { .. } => "waiting in a collective".into(),
            RankState::Busy(Activity::Setup) => "setting up".into(),
            RankState::Busy(Activity::Training) => "computing".into(),
            RankState::Busy(Activity::Checkpoint) => "writing a checkpoint".into(),
            RankState::Busy(Activity::Finishing) => "finishing".into(),
        }
    }

    /// One sentence naming the rank, its host and process, how long it has
    /// made no progress, and what it does.
    pub fn describe(&self) -> String {
        let pid = if self.pid > 0 { format!(", pid {}", self.pid) } else { String::new() };
        let what = if !self.responding {
            format!(
                "its process has not responded for {:.0} s (stopped, swapped out, or hung in the kernel or file system)",
                self.silent_seconds.unwrap_or(f64::NAN)
            )
        } else {
            match self.state {
                RankState::Waiting { .. } => "it waits in a collective".into(),
                RankState::Busy(Activity::Checkpoint) => "it is writing a checkpoint".into(),
                RankState::Busy(a) => format!(
                    "it is {} and has not reached the collective (its process responds: \
                     stuck in its own work, e.g. I/O, the device, a deadlock)",
                    match a {
                        Activity::Setup => "setting up",
                        Activity::Finishing => "finishing",
                        _ => "computing",
                    }
                ),
            }
        };
        format!(
            "rank {} (host {}{pid}) has made no progress for {:.0} s, after global step {}: {what}",
            self.rank, self.host, self.seconds_since_progress, self.step
        )
    }
}

/// Every rank's progress as one rank (or `fedhex-ctl`) sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// By rank.
    pub ranks: Vec<RankProgress>,
    /// Every rank responds and waits in the same collective: none is missing
    /// from it (MPI or the network hangs); every rank then holds the run up.
    pub all_waiting: bool,
}

impl Diagnosis {
    /// Every rank at the diagnosing rank's progress (`me`, `snap`): what a
    /// rank knows without reading heartbeats while it moves (every rank
    /// reached its last collective). Nobody holds the run up.
    pub fn moving(me: usize, snap: &ProgressSnapshot, hosts: &[String], size: usize, now_ms: u64) -> Self {
        let mut d = diagnose(Some((me, snap)), &vec![None; size], hosts, now_ms, now_ms);
        for r in d.ranks.iter_mut().filter(|r| r.rank != me) {
            r.mark = snap.mark;
            r.state = RankState::Busy(snap.activity);
            r.silent_seconds = None;
            r.responding = true;
        }
        for r in &mut d.ranks {
            r.holds_up = false;
        }
        d.all_waiting = false;
        d
    }

    /// The ranks that hold the run up.
    pub fn holding_up(&self) -> impl Iterator<Item = &RankProgress> {
        self.ranks.iter().filter(|r| r.holds_up)
    }

    /// Who holds the run up and for how long, in a sentence or two; when
    /// every rank waits in the same collective, says so.
    pub fn summary(&self) -> String {
        if self.all_waiting {
            let secs = self.ranks.iter().map(|r| r.seconds_since_progress).fold(f64::NAN, f64::min);
            return format!(
                "every rank has waited in the same collective for {secs:.0} s: none is missing from it \
                 (MPI or the network hangs)"
            );
        }
        let holders: Vec<String> = self.holding_up().map(RankProgress::describe).collect();
        if holders.is_empty() {
            return String::new();
        }
        let waiting: Vec<String> = self
            .ranks
            .iter()
            .filter(|r| !r.holds_up && matches!(r.state, RankState::Waiting { .. }))
            .map(|r| r.rank.to_string())
            .collect();
        let mut s = holders.join("; ");
        if !waiting.is_empty() {
            let (who, verb) = if waiting.len() == 1 { ("rank", "waits") } else { ("ranks", "wait") };
            let them = if holders.len() == 1 { "it" } else { "them" };
            s.push_str(&format!("; {who} {} {verb} for {them} in a collective", waiting.join(", ")));
        }
        s
    }
}

/// Diagnoses the ranks from the heartbeats `beats` (by rank; `None`: no
/// usable file) read at `read_ms`, and, when a rank diagnoses, its own
/// progress `me` (which also bounds every other rank's from below).
/// `hosts` names ranks without a heartbeat (may be empty).
pub fn diagnose(
    me: Option<(usize, &ProgressSnapshot)>,
    beats: &[Option<Beat>],
    hosts: &[String],
    read_ms: u64,
    now_ms: u64,
) -> Diagnosis {
    let secs = |ms: u64| if ms == 0 { f64::NAN } else { now_ms.saturating_sub(ms) as f64 / 1000.0 };
    // Every rank has reached `floor`, as `me` or any heartbeat knows it, at
    // about `floor_ms` (when that rank left the previous collective), with
    // `floor_step` training steps done.
    let mut known: Vec<(u64, u64, u64)> =
        beats.iter().flatten().filter(|b| b.mark > 0).map(|b| (everyone_reached(b.mark), b.since_ms, b.step)).collect();
    if let Some((_, s)) = me {
        known.push((s.everyone_reached(), s.left_ms, s.step));
    }
    let (floor, floor_ms, floor_step) = known.into_iter().max().unwrap_or((0, 0, 0));
    let mut ranks: Vec<RankProgress> = (0..beats.len())
        .map(|r| {
            let host = beats[r]
                .as_ref()
                .map(|b| b.host.clone())
                .or_else(|| hosts.get(r).cloned())
                .unwrap_or_else(|| "?".into());
            if let Some((_, s)) = me.filter(|(m, _)| *m == r) {
                return RankProgress {
                    rank: r,
                    host,
                    pid: std::process::id(),
                    mark: s.mark,
                    state: state_of(s.mark, s.activity),
                    step: s.step,
                    seconds_since_progress: secs(s.since_ms),
                    silent_seconds: None,
                    responding: true,
                    holds_up: false,
                };
            }
            let (mark, since_ms, step, activity, pid, life_ms) = match &beats[r] {
                Some(b) if b.mark >= floor => {
                    (b.mark, b.since_ms, b.step, b.activity, b.pid, b.beat_ms.max(b.since_ms).max(floor_ms))
                }
                Some(b) => (floor, floor_ms, floor_step, Activity::Training, b.pid, b.beat_ms.max(floor_ms)),
                None => (floor, floor_ms, floor_step, Activity::Training, 0, floor_ms),
            };
            // Silence counts up to the read (a file cannot be newer than that).
            let silent = (life_ms > 0).then(|| read_ms.saturating_sub(life_ms) as f64 / 1000.0);
            RankProgress {
                rank: r,
                host,
                pid,
                mark,
                state: state_of(mark, activity),
                step,
                seconds_since_progress: secs(since_ms),
                silent_seconds: silent,
                responding: silent.is_none_or(|s| s <= SILENT_AFTER_S),
                holds_up: false,
            }
        })
        .collect();
    let top = ranks.iter().map(|r| r.mark).max().unwrap_or(0);
    let all_waiting = top % 2 == 1 && ranks.iter().all(|r| r.responding && r.mark == top);
    for r in &mut ranks {
        r.holds_up = all_waiting || !r.responding || r.mark < top || top % 2 == 0;
    }
    Diagnosis { ranks, all_waiting }
}

fn state_of(mark: u64, activity: Activity) -> RankState {
    if mark % 2 == 1 {
        RankState::Waiting { collective: mark.div_ceil(2) }
    } else {
        RankState::Busy(activity)
    }
}

/// Called with a diagnosis every [`BEAT_EVERY`] (rank 0's control plane).
pub type Report = Box<dyn FnMut(&Diagnosis) + Send>;
/// Called with the message before the watchdog aborts the job.
pub type BeforeAbort = Box<dyn FnOnce(&str) + Send>;

/// What a rank's watchdog does.
pub struct WatchdogConfig {
    /// The run directory (heartbeats go to its `heartbeat/`).
    pub run_dir: PathBuf,
    /// The job's identifier (the same on every rank).
    pub job: String,
    /// This rank.
    pub rank: usize,
    /// Ranks in the job.
    pub size: usize,
    /// This host's name.
    pub host: String,
    /// Every rank's host, where known (names ranks without a heartbeat).
    pub hosts: Vec<String>,
    /// Write heartbeats (several ranks).
    pub write_beats: bool,
    /// `training.step_timeout` in seconds, when on.
    pub step_timeout: Option<f64>,
    /// `control.stall_seconds` (how often rank 0 re-reads heartbeats).
    pub stall_seconds: f64,
    /// Ends the job from this thread ([`crate::comm::Communicator::aborter`]).
    pub abort: fn(i32) -> !,
    /// What to append to the abort message (how to resume).
    pub abort_hint: String,
    /// Receives a diagnosis every second (rank 0 with a control plane).
    pub report: Option<Report>,
    /// Runs before the abort (rank 0: marks the control plane failed).
    pub before_abort: Option<BeforeAbort>,
}

/// The watchdog thread of one rank; [`Watchdog::finish`] (or dropping it)
/// stops it and removes this rank's heartbeat.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    /// The watchdog thread; it hands back the heartbeat thread when it ends.
    thread: Option<std::thread::JoinHandle<Io>>,
    beat_file: Option<PathBuf>,
}

impl Watchdog {
    /// Starts the thread; with heartbeats, writes this rank's first one now
    /// (so its host and pid are known from the start). A heartbeat that
    /// cannot be written is a warning, never an error: it must not stop a run.
    pub fn start(cfg: WatchdogConfig, progress: Arc<Progress>) -> Result<Self> {
        let dir = cfg.run_dir.join(DIR);
        let mut beat_file = None;
        if cfg.write_beats {
            match std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(&dir, e))
                .and_then(|()| write_beat(&dir, &beat_of(&cfg, &progress.snapshot(), unix_ms())))
            {
                Ok(()) => beat_file = Some(beat_path(&dir, cfg.rank)),
                Err(e) => tracing::warn!("heartbeat: {e}; stalled ranks will not be named"),
            }
        }
        let io = Io::start(dir, cfg.job.clone())?;
        let (tx, rx) = mpsc::channel::<()>();
        let mut cfg = cfg;
        let thread = std::thread::Builder::new()
            .name("fedhex-watchdog".into())
            .spawn(move || {
                watch(&mut cfg, &io, &progress, &rx);
                io
            })
            .map_err(|e| Error::Comm(format!("cannot start the watchdog thread: {e}")))?;
        Ok(Watchdog { stop: Some(tx), thread: Some(thread), beat_file })
    }

    /// Stops the thread and removes this rank's heartbeat (and the
    /// directory, once empty).
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The last heartbeat is written before the file is removed.
            if let Ok(io) = t.join() {
                io.close();
            }
        }
        if let Some(f) = self.beat_file.take() {
            let _ = std::fs::remove_file(&f);
            if let Some(d) = f.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn beat_of(cfg: &WatchdogConfig, s: &ProgressSnapshot, now_ms: u64) -> Beat {
    Beat {
        job: cfg.job.clone(),
        rank: cfg.rank,
        size: cfg.size,
        host: cfg.host.clone(),
        pid: std::process::id(),
        mark: s.mark,
        since_ms: s.since_ms,
        step: s.step,
        activity: s.activity,
        beat_ms: now_ms,
    }
}

/// How long the watchdog waits for heartbeats to be read before it goes on
/// without them (a hung file system must not stop a step timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A heartbeat file job for [`Io`]'s thread.
enum IoJob {
    /// Write this beat.
    Write(Beat),
    /// Read the beats of these ranks (`None`: skip) and send them back.
    Read(Vec<Option<usize>>, mpsc::SyncSender<Vec<Option<Beat>>>),
}

/// The heartbeat files, read and written on a thread of their own: on a
/// shared file system that hangs (a common cause of stalls), the watchdog's
/// own decisions never wait for it. A job that finds the queue full is
/// dropped (a write) or fails at once (a read), and a read not answered in
/// [`READ_TIMEOUT`] is given up.
struct Io {
    jobs: mpsc::SyncSender<IoJob>,
    thread: std::thread::JoinHandle<()>,
}

impl Io {
    fn start(dir: PathBuf, job: String) -> Result<Self> {
        // Room for a tick's jobs (a write and up to three reads): a full queue
        // means the thread is stuck in the file system.
        let (tx, rx) = mpsc::sync_channel::<IoJob>(8);
        let thread = std::thread::Builder::new()
            .name("fedhex-heartbeat".into())
            .spawn(move || {
                let mut failing = false;
                for j in rx {
                    match j {
                        IoJob::Write(b) => match write_beat(&dir, &b) {
                            Ok(()) => failing = false,
                            Err(e) if !failing => {
                                tracing::warn!("heartbeat: {e}");
                                failing = true;
                            }
                            Err(_) => {}
                        },
                        IoJob::Read(ranks, reply) => {
                            let beats = ranks.iter().map(|r| r.and_then(|r| read_beat(&dir, r, &job))).collect();
                            let _ = reply.send(beats);
                        }
                    }
                }
            })
            .map_err(|e| Error::Comm(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Io { jobs: tx, thread })
    }

    /// Lets the thread finish its jobs and end.
    fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }

    /// Hands a beat to the thread; dropped when it is still busy with the last one.
    fn write(&self, beat: Beat) {
        let _ = self.jobs.try_send(IoJob::Write(beat));
    }

    /// The beats of `ranks` (`None` entries stay `None`), or `None` when the
    /// files cannot be read within [`READ_TIMEOUT`].
    fn read(&self, ranks: Vec<Option<usize>>) -> Option<Vec<Option<Beat>>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs.try_send(IoJob::Read(ranks, tx)).ok()?;
        rx.recv_timeout(READ_TIMEOUT).ok()
    }

    /// Every other rank's beat.
    fn read_others(&self, cfg: &WatchdogConfig) -> Option<Vec<Option<Beat>>> {
        self.read((0..cfg.size).map(|r| (r != cfg.rank).then_some(r)).collect())
    }
}

/// The thread's loop: heartbeat, report, step timeout, once a [`BEAT_EVERY`].
fn watch(cfg: &mut WatchdogConfig, io: &Io, progress: &Progress, stop: &mpsc::Receiver<()>) {
    let mut last_write = unix_ms();
    // Rank 0's cache of the others' heartbeats and when it read them.
    let mut cached: (Vec<Option<Beat>>, u64) = (vec![None; cfg.size], 0);
    let reread_ms = (cfg.stall_seconds / 10.0).clamp(1.0, 10.0) as u64 * 1000;
    // Since when this thread has run without a gap: a gap means this process was
    // frozen (stopped, swapped out), and its own wait restarts from the thaw; the
    // launcher thaws a stopped rank to kill it, and it must not then blame anyone.
    let (mut last_tick, mut thawed) = (unix_ms(), 0);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(BEAT_EVERY) {
        let snap = progress.snapshot();
        let now = unix_ms();
        if now.saturating_sub(last_tick) as f64 > 1000.0 * (BEAT_EVERY.as_secs_f64() + SILENT_AFTER_S) {
            thawed = now;
        }
        last_tick = now;
        let still_ms = now.saturating_sub(snap.since_ms);
        if cfg.write_beats && still_ms >= 1000 && now.saturating_sub(last_write) >= 900 {
            io.write(beat_of(cfg, &snap, now));
            last_write = now;
        }
        if cfg.report.is_some() {
            let diag = if cfg.size > 1 && still_ms < 2000 {
                Diagnosis::moving(cfg.rank, &snap, &cfg.hosts, cfg.size, now)
            } else {
                if cfg.size > 1 && now.saturating_sub(cached.1) >= reread_ms {
                    if let Some(beats) = io.read_others(cfg) {
                        cached = (beats, unix_ms());
                    }
                }
                // Silence is judged as of the reading.
                diagnose(Some((cfg.rank, &snap)), &cached.0, &cfg.hosts, cached.1, now)
            };
            if let Some(report) = cfg.report.as_mut() {
                report(&diag);
            }
        }
        if let Some(timeout) = cfg.step_timeout {
            let waited_ms = now.saturating_sub(snap.since_ms.max(thawed));
            if snap.armed && snap.inside() && waited_ms as f64 >= timeout * 1000.0 {
                step_timeout(cfg, io, &snap, timeout, waited_ms);
            }
        }
    }
}

/// The step timeout expired on this rank (inside a collective, no
/// progress): the reporter names the ranks that hold the run up and aborts
/// the job; the others do the same [`BACKUP_S`] later, should it not have.
/// The reporter is this rank unless a lower one is alive and as far as it
/// (waiting in the same or a later collective): reading those few files
/// decides it, so not every rank reads every heartbeat.
fn step_timeout(cfg: &mut WatchdogConfig, io: &Io, snap: &ProgressSnapshot, timeout: f64, still_ms: u64) {
    let read_ms = unix_ms();
    let as_far_and_alive =
        |b: &Beat| b.mark >= snap.mark && (read_ms.saturating_sub(b.beat_ms) as f64) / 1000.0 <= SILENT_AFTER_S;
    // Unreadable heartbeats: rank 0 reports, the others back it up.
    let reporter = match io.read((0..cfg.rank).map(Some).collect()) {
        Some(lower) => lower.iter().flatten().all(|b| !as_far_and_alive(b)),
        None => cfg.rank == 0,
    };
    if !reporter && (still_ms as f64) < (timeout + BACKUP_S) * 1000.0 {
        return;
    }
    let (beats, readable) = match io.read_others(cfg) {
        Some(b) => (b, true),
        None => (vec![None; cfg.size], false),
    };
    let diag = diagnose(Some((cfg.rank, snap)), &beats, &cfg.hosts, unix_ms(), unix_ms());
    let mut summary = diag.summary();
    if !readable {
        summary = "the heartbeat files cannot be read (the run directory's file system does not answer), \
                   so the rank that holds the run up is unknown"
            .into();
    } else if summary.is_empty() {
        summary = "no heartbeat names the rank that holds the run up".into();
    }
    let msg = format!(
        "step timeout: rank {} has waited {:.0} s in a collective after global step {} \
         (training.step_timeout = {timeout} s): {summary}. Aborting the job{}",
        cfg.rank,
        still_ms as f64 / 1000.0,
        snap.step,
        if cfg.abort_hint.is_empty() { String::new() } else { format!("; {}", cfg.abort_hint) }
    );
    tracing::error!("{msg}");
    if let Some(f) = cfg.before_abort.take() {
        f(&msg);
    }
    (cfg.abort)(STALL_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(mark: u64, since_ms: u64, left_ms: u64, step: u64) -> ProgressSnapshot {
        ProgressSnapshot { mark, since_ms, left_ms, step, activity: Activity::Training, armed: true }
    }

    fn beat(rank: usize, mark: u64, since_ms: u64, beat_ms: u64) -> Beat {
        Beat {
            job: "j".into(),
            rank,
            size: 3,
            host: format!("h{rank}"),
            pid: 100 + rank as u32,
            mark,
            since_ms,
            step: 41,
            activity: Activity::Training,
            beat_ms,
        }
    }

    #[test]
    fn a_silent_rank_behind_the_collective_holds_the_run_up() {
        // Rank 0 waits in collective 50 (mark 99) since t = 10 s; rank 1 waits too
        // and beats; rank 2 last beat long ago and is behind.
        let now = 30_000;
        let me = snap(99, 10_000, 9_990, 41);
        let beats = vec![None, Some(beat(1, 99, 10_010, 29_500)), Some(beat(2, 40, 1_000, 2_000))];
        let d = diagnose(Some((0, &me)), &beats, &[], now, now);
        let holders: Vec<usize> = d.holding_up().map(|r| r.rank).collect();
        assert_eq!(holders, vec![2]);
        let r2 = &d.ranks[2];
        assert!(!r2.responding);
        assert_eq!(r2.mark, 97, "bounded below by what rank 0 knows");
        assert!((r2.seconds_since_progress - 19.99).abs() < 1e-9, "{}", r2.seconds_since_progress);
        let s = d.summary();
        assert!(s.contains("rank 2 (host h2, pid 102)") && s.contains("not responded"), "{s}");
        assert!(s.contains("ranks 0, 1 wait for it"), "{s}");
    }

    #[test]
    fn a_live_rank_that_has_not_arrived_holds_the_run_up_and_a_full_house_blames_nobody() {
        let now = 30_000;
        let me = snap(99, 10_000, 9_990, 41);
        let beats = vec![None, Some(beat(1, 98, 9_990, 29_800))];
        let d = diagnose(Some((0, &me)), &beats, &[], now, now);
        assert_eq!(d.holding_up().map(|r| r.rank).collect::<Vec<_>>(), vec![1]);
        assert!(d.ranks[1].responding);
        assert!(d.summary().contains("has not reached the collective"), "{}", d.summary());
        let beats = vec![None, Some(beat(1, 99, 10_000, 29_800))];
        let d = diagnose(Some((0, &me)), &beats, &[], now, now);
        assert!(d.all_waiting);
        assert_eq!(d.holding_up().count(), 2, "every rank is stalled");
        assert!(d.summary().contains("none is missing"), "{}", d.summary());
    }

    #[test]
    fn alone_a_rank_that_stands_still_holds_up_its_run() {
        let me = snap(10, 1_000, 1_000, 5);
        let d = diagnose(Some((0, &me)), &[None], &["here".into()], 9_000, 9_000);
        assert!(d.ranks[0].holds_up);
        assert_eq!(d.ranks[0].host, "here");
        assert!((d.ranks[0].seconds_since_progress - 8.0).abs() < 1e-9);
        let moving = Diagnosis::moving(0, &me, &[], 1, 9_000);
        assert_eq!(moving.holding_up().count(), 0);
    }

    #[test]
    fn a_file_system_that_hangs_does_not_hold_up_the_watchdog() {
        // A FIFO without a writer: opening it to read blocks, as a hung file system does.
        let dir = tempfile::tempdir().unwrap();
        let fifo = beat_path(dir.path(), 0);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let io = Io::start(dir.path().to_path_buf(), "j".into()).unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(io.read(vec![None, Some(0)]), None, "a read that hangs is given up");
        let waited = t0.elapsed();
        assert!(waited >= READ_TIMEOUT && waited < READ_TIMEOUT * 2, "{waited:?}");
        for _ in 0..20 {
            io.write(beat(1, 1, 1, 1));
        }
        let t1 = std::time::Instant::now();
        assert_eq!(io.read(vec![Some(1)]), None);
        assert!(t1.elapsed() < READ_TIMEOUT * 2, "writes and reads never block the caller");
    }

    #[test]
    fn heartbeat_files_round_trip_and_other_jobs_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let b = beat(1, 7, 100, 200);
        write_beat(dir.path(), &b).unwrap();
        assert_eq!(read_beat(dir.path(), 1, "j"), Some(b.clone()));
        assert_eq!(read_beat(dir.path(), 1, "other"), None);
        let mut old = beat(0, 3, 10, 20);
        old.job = "old".into();
        write_beat(dir.path(), &old).unwrap();
        let all = read_newest_job(dir.path()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].as_ref(), all[1].as_ref()), (None, Some(&b)));
    }
}
