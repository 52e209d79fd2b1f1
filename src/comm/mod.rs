//! Communication between training ranks.
//!
//! The training driver talks to other ranks only through [`Communicator`], so the
//! same loop runs in a unit test ([`SingleProcess`]), under `mpirun -n 1`, or on
//! many nodes. Every call is collective: all ranks must make it in the same order.

use crate::error::Result;

/// Collective operations the trainer needs. Buffers are host memory.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks in the job.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over all ranks, in place.
    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Element-wise minimum over all ranks, in place.
    fn allreduce_min_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Element-wise maximum over all ranks, in place.
    fn allreduce_max_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank with rank `root`'s bytes.
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()>;
    /// Waits for every rank.
    fn barrier(&self) -> Result<()>;
    /// Ends the whole job with `code`; used on a fatal error so no rank is left
    /// waiting in a collective.
    fn abort(&self, code: i32) -> !;
    /// Whether this rank coordinates (writes checkpoints, serves control).
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The trivial world of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn allreduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn allreduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn allreduce_min_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn allreduce_max_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
