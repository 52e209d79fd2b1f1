//! Communication between training ranks.
//!
//! The training driver talks to other ranks only through [`Communicator`], so the
//! same loop runs in a unit test ([`SingleProcess`]), under `mpirun -n 1`, or on
//! many nodes. Every call is collective: all ranks must make it in the same order.

use crate::error::{Error, Result};

pub mod heartbeat;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod progress;

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
    /// Every rank's `bytes`, indexed by rank, on every rank. The default makes
    /// one [`broadcast_bytes`](Self::broadcast_bytes) per rank: meant for
    /// small records (a manifest entry per rank), not for bulk data.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::with_capacity(self.size());
        for root in 0..self.size() {
            let mut buf = if root == self.rank() { bytes.to_vec() } else { Vec::new() };
            self.broadcast_bytes(root, &mut buf)?;
            all.push(buf);
        }
        Ok(all)
    }
    /// Rank `root`'s bytes `data`, cut into one part per rank (`sizes[r]`
    /// bytes for rank `r`, in rank order): each rank returns its own part.
    /// `data` and `sizes` are read on `root` only. The default makes one
    /// [`broadcast_bytes`](Self::broadcast_bytes) per rank (every rank sees
    /// every part); the MPI backend scatters, so a rank receives only its part.
    ///
    /// # Errors
    /// On `root`, `sizes` that do not cut `data` into one part per rank (the
    /// other ranks then receive empty parts).
    fn scatter_bytes(&self, root: usize, data: &[u8], sizes: &[usize]) -> Result<Vec<u8>> {
        let ranges = if self.rank() == root { part_ranges(data, sizes, self.size()) } else { Ok(Vec::new()) };
        let mut mine = Vec::new();
        for r in 0..self.size() {
            let mut buf = match &ranges {
                Ok(v) if !v.is_empty() => data[v[r].clone()].to_vec(),
                _ => Vec::new(),
            };
            self.broadcast_bytes(root, &mut buf)?;
            if r == self.rank() {
                mine = buf;
            }
        }
        ranges.map(|_| mine)
    }
    /// Ends the whole job with `code`; used on a fatal error so no rank is left
    /// waiting in a collective.
    fn abort(&self, code: i32) -> !;
    /// A function that ends the whole job with `code` from any thread (the
    /// step-timeout watchdog's; [`Communicator::abort`] needs `&self`, which
    /// may not leave the training thread). The default ends this process.
    fn aborter(&self) -> fn(i32) -> ! {
        exit_process
    }
    /// Whether this rank coordinates (writes checkpoints, serves control).
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The byte range of each rank's part of `data` cut by `sizes` (see
/// [`Communicator::scatter_bytes`]): an error unless there is one size per
/// rank and they add up to `data`'s length.
pub fn part_ranges(data: &[u8], sizes: &[usize], world: usize) -> Result<Vec<std::ops::Range<usize>>> {
    let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
    if sizes.len() != world || total != Some(data.len()) {
        return Err(Error::Comm(format!(
            "scatter: {} part sizes adding up to {total:?} for {world} ranks and {} bytes",
            sizes.len(),
            data.len()
        )));
    }
    let mut at = 0;
    Ok(sizes
        .iter()
        .map(|&s| {
            at += s;
            at - s..at
        })
        .collect())
}

/// Ends this process with `code` (the single-process [`Communicator::aborter`]).
pub fn exit_process(code: i32) -> ! {
    std::process::exit(code)
}

/// Makes a fallible, rank-local result collective: if any rank failed, every
/// rank returns the error of the lowest failing rank (prefixed with its rank),
/// so no rank is left waiting in a later collective.
pub fn agree<T>(comm: &dyn Communicator, local: Result<T>) -> Result<T> {
    if comm.size() == 1 {
        return local;
    }
    let me = comm.rank() as f64;
    let mut first_bad = [if local.is_err() { me } else { f64::INFINITY }];
    comm.allreduce_min_f64(&mut first_bad)?;
    if first_bad[0].is_infinite() {
        return local;
    }
    let root = first_bad[0] as usize;
    let mut msg = match &local {
        Err(e) if root == comm.rank() => e.to_string().into_bytes(),
        _ => Vec::new(),
    };
    comm.broadcast_bytes(root, &mut msg)?;
    match local {
        Err(e) if root == comm.rank() => Err(e),
        _ => Err(Error::Comm(format!("rank {root}: {}", String::from_utf8_lossy(&msg)))),
    }
}

/// Checks that every rank holds the same bytes (e.g. the configuration); an
/// error names the first rank that differs from rank 0.
pub fn check_same(comm: &dyn Communicator, what: &str, bytes: &[u8]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut root = bytes.to_vec();
    comm.broadcast_bytes(0, &mut root)?;
    let mut differs = [if root == bytes { f64::INFINITY } else { comm.rank() as f64 }];
    comm.allreduce_min_f64(&mut differs)?;
    if differs[0].is_finite() {
        return Err(Error::Comm(format!(
            "ranks disagree on the {what}: rank {} differs from rank 0 (all ranks must use the same)",
            differs[0] as usize
        )));
    }
    Ok(())
}

/// This process's index among the ranks on its node, from Slurm's or Open
/// MPI's environment (0 when neither is set).
pub fn local_rank() -> usize {
    ["SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Number of ranks on this node, from Slurm's or Open MPI's environment (1 when unknown).
pub fn local_size() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .or_else(|| std::env::var("SLURM_TASKS_PER_NODE").ok()?.split(['(', ',']).next()?.parse().ok())
        .unwrap_or(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cut_the_data_in_rank_order_and_must_cover_it() {
        let data = [1u8, 2, 3, 4, 5];
        assert_eq!(part_ranges(&data, &[2, 0, 3], 3).unwrap(), [0..2, 2..2, 2..5]);
        assert!(part_ranges(&data, &[2, 3], 3).is_err());
        assert!(part_ranges(&data, &[2, 0, 2], 3).is_err());
        assert!(part_ranges(&data, &[usize::MAX, 6, 0], 3).is_err());
        assert_eq!(SingleProcess.scatter_bytes(0, &data, &[5]).unwrap(), data);
        assert!(SingleProcess.scatter_bytes(0, &data, &[4]).is_err());
    }
}
