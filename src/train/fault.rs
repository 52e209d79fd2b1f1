//! Test-only fault injection (`FEDHEX_FAULT`), so tests can kill a rank or
//! stop a run at an exact step.

use super::observe::Controls;
use std::sync::atomic::Ordering;

/// Test-only fault injection, read from `FEDHEX_FAULT` before global step `STEP`:
/// * `kill:RANK:STEP`: SIGKILL this process (rank `RANK`), to test that a
///   killed job fails cleanly and resumes exactly;
/// * `stop:STEP`: rank 0 asks for a stop now, as `fedhex-ctl stop --now` does
///   (a mid-epoch checkpoint after that step);
/// * `stop-after-epoch:STEP`: rank 0 asks for a stop at the end of the epoch;
/// * `sigstop:RANK:STEP`: SIGSTOP this process (rank `RANK`): a rank that
///   stalls without dying, until someone sends it SIGCONT (or the step
///   timeout ends the job).
pub(super) fn fault_at_step(rank: usize, global_step: u64, controls: &Controls) {
    #[derive(PartialEq)]
    enum Fault {
        Kill(usize),
        SigStop(usize),
        Stop,
        StopAfterEpoch,
    }
    // Read once: the environment lookup takes a process-wide lock.
    static FAULT: std::sync::OnceLock<Option<(Fault, u64)>> = std::sync::OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let f = std::env::var("FEDHEX_FAULT").ok()?;
        let parts: Vec<&str> = f.split(':').collect();
        match parts.as_slice() {
            ["kill", r, s] => Some((Fault::Kill(r.parse().ok()?), s.parse().ok()?)),
            ["sigstop", r, s] => Some((Fault::SigStop(r.parse().ok()?), s.parse().ok()?)),
            ["stop", s] => Some((Fault::Stop, s.parse().ok()?)),
            ["stop-after-epoch", s] => Some((Fault::StopAfterEpoch, s.parse().ok()?)),
            _ => None,
        }
    });
    match fault {
        Some((Fault::Kill(r), s)) if (*r, *s) == (rank, global_step) => {
            // SAFETY: raise() only delivers a signal to this process.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
        Some((Fault::SigStop(r), s)) if (*r, *s) == (rank, global_step) => {
            // SAFETY: raise() only delivers a signal to this process.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
        }
        Some((Fault::Stop, s)) if *s == global_step && rank == 0 => controls.stop_now.store(true, Ordering::Relaxed),
        Some((Fault::StopAfterEpoch, s)) if *s == global_step && rank == 0 => {
            controls.stop_after_epoch.store(true, Ordering::Relaxed)
        }
        _ => {}
    }
}
