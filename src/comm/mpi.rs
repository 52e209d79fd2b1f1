//! The MPI backend of [`Communicator`] (rsmpi on the system's MPI library).
//! The only file that imports `mpi`.
//!
//! MPI is initialised with `MPI_THREAD_FUNNELED`: only the training thread
//! makes MPI calls (MPI-4.0 §11.6); the control plane reaches the trainer
//! through channels, never through MPI.

use super::Communicator;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::Partition;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

/// A world communicator over MPI. Dropping it finalises MPI.
pub struct MpiComm {
    world: SimpleCommunicator,
    // The send side of the per-step gradient all-reduce, reused so the hot
    // loop does not allocate (MPI needs separate send and receive buffers here).
    send_f32: std::cell::RefCell<Vec<f32>>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm").field("rank", &self.rank()).field("size", &self.size()).finish()
    }
}

impl MpiComm {
    /// Initialises MPI (once per process) and returns the world communicator.
    pub fn init() -> Result<Self> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Comm("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        Ok(MpiComm { world, send_f32: std::cell::RefCell::new(Vec::new()), _universe: universe })
    }

    /// Version string of the MPI library.
    pub fn library_version() -> String {
        mpi::environment::library_version().unwrap_or_else(|_| "unknown".into()).lines().next().unwrap_or("").into()
    }

    fn reduce_f64(&self, buf: &mut [f64], op: SystemOperation) {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, op);
    }

    /// [`Communicator::scatter_bytes`] in rounds of at most `round_bytes`
    /// bytes in all (the trait's uses `i32::MAX`, MPI's limit; tests use
    /// small rounds): a plain scatter of each part's size, then one
    /// scatterv per round.
    ///
    /// # Errors
    /// As [`Communicator::scatter_bytes`].
    pub fn scatter_bytes_in_rounds(
        &self,
        root: usize,
        data: &[u8],
        sizes: &[usize],
        round_bytes: usize,
    ) -> Result<Vec<u8>> {
        let is_root = self.rank() == root;
        let ranges = if is_root { super::part_ranges(data, sizes, self.size()) } else { Ok(Vec::new()) };
        let ranges_ok = ranges.as_deref().unwrap_or_default();
        let chunk = (round_bytes.min(i32::MAX as usize) / self.size()).max(1);
        let root_proc = self.world.process_at_rank(root as i32);
        // First a plain scatter of [bytes of this rank's part, rounds].
        let mut head = [0u64; 2];
        if is_root {
            let lens: Vec<usize> = (0..self.size()).map(|r| ranges_ok.get(r).map_or(0, |p| p.len())).collect();
            let rounds = lens.iter().map(|l| l.div_ceil(chunk)).max().unwrap_or(0) as u64;
            let all: Vec<u64> = lens.iter().flat_map(|&l| [l as u64, rounds]).collect();
            root_proc.scatter_into_root(&all[..], &mut head[..]);
        } else {
            root_proc.scatter_into(&mut head[..]);
        }
        let len = usize::try_from(head[0]).map_err(|_| Error::Comm("scatter: part too large".into()))?;
        // A real allocation even for 0 bytes (Open MPI rejects a dangling pointer).
        let mut out = vec![0u8; len.max(1)];
        for k in 0..head[1] as usize {
            let piece = |r: &std::ops::Range<usize>| {
                (r.start + (k * chunk).min(r.len()))..(r.start + ((k + 1) * chunk).min(r.len()))
            };
            let (lo, hi) = ((k * chunk).min(len), ((k + 1) * chunk).min(len));
            let recv = if hi > lo { &mut out[lo..hi] } else { &mut out[..0] };
            if is_root {
                scatter_round(&root_proc, data, ranges_ok, piece, round_bytes, recv);
            } else {
                root_proc.scatter_varcount_into(recv);
            }
        }
        out.truncate(len);
        ranges.map(|_| out)
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let mut send = self.send_f32.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, SystemOperation::sum());
        Ok(())
    }

    fn allreduce_min_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, SystemOperation::min());
        Ok(())
    }

    fn allreduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, SystemOperation::max());
        Ok(())
    }

    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        let root_proc = self.world.process_at_rank(root as i32);
        let mut len = [buf.len() as u64];
        root_proc.broadcast_into(&mut len[..]);
        buf.resize(len[0] as usize, 0);
        // An empty Vec's pointer is dangling; Open MPI rejects it even for 0 bytes.
        if !buf.is_empty() {
            root_proc.broadcast_into(&mut buf[..]);
        }
        Ok(())
    }

    fn scatter_bytes(&self, root: usize, data: &[u8], sizes: &[usize]) -> Result<Vec<u8>> {
        // MPI counts and displacements are ints: rounds of at most i32::MAX bytes in all.
        self.scatter_bytes_in_rounds(root, data, sizes, i32::MAX as usize)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn aborter(&self) -> fn(i32) -> ! {
        abort_world
    }
}

/// Rank `root`'s side of one round of [`MpiComm::scatter_bytes_in_rounds`]:
/// the `piece` of each rank's range of `data` to that rank. Pieces within
/// the first `limit` bytes of `data` (all of them, below 2 GiB in all) are
/// sent straight from `data`; otherwise the round's pieces are copied
/// together first.
fn scatter_round(
    root: &mpi::topology::Process<'_>,
    data: &[u8],
    ranges: &[std::ops::Range<usize>],
    piece: impl Fn(&std::ops::Range<usize>) -> std::ops::Range<usize>,
    limit: usize,
    recv: &mut [u8],
) {
    let pieces: Vec<std::ops::Range<usize>> = ranges.iter().map(&piece).collect();
    let counts: Vec<mpi::Count> = pieces.iter().map(|p| p.len() as mpi::Count).collect();
    let end = pieces.iter().map(|p| p.end).max().unwrap_or(0);
    if end <= limit.min(i32::MAX as usize) && !data.is_empty() {
        let displs: Vec<mpi::Count> = pieces.iter().map(|p| p.start as mpi::Count).collect();
        root.scatter_varcount_into_root(&Partition::new(&data[..end.max(1)], counts, displs), recv);
    } else {
        let mut send: Vec<u8> = Vec::new();
        let mut displs = Vec::with_capacity(pieces.len());
        for p in &pieces {
            displs.push(send.len() as mpi::Count);
            send.extend_from_slice(&data[p.clone()]);
        }
        send.push(0); // never empty
        root.scatter_varcount_into_root(&Partition::new(&send[..], counts, displs), recv);
    }
}

/// `MPI_Abort` on `MPI_COMM_WORLD`, from any thread. MPI runs
/// `MPI_THREAD_FUNNELED`, and this is the one call made off the training
/// thread: the step-timeout watchdog makes it when the training thread is
/// blocked in a collective and the job is to end anyway; Open MPI carries
/// it out through its runtime (the launcher kills every rank). Should it not
/// return within 20 s, the process exits by itself, which the launcher also
/// treats as the job's failure.
fn abort_world(code: i32) -> ! {
    let _ = std::thread::Builder::new().name("fedhex-abort".into()).spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        // SAFETY: _exit ends the process at once; nothing is shared with it.
        unsafe { libc::_exit(code) }
    });
    SimpleCommunicator::world().abort(code)
}
