//! Shard-local reading (issue #22): rank 0 indexes the input and sends every
//! rank the locator of its events; each rank reads the features of its own
//! events only. For 1, 2 and 3 ranks (threads of one process, talking
//! through an in-process communicator), ROOT and `.npz`, weighted or not,
//! with held-out labels, a cut and a threshold, every rank's events
//! (features, labels, weights, order) and plan equal those of reading the
//! whole input and selecting the shard — so training gives the same weights
//! (tests/golden.rs checks them bit for bit through the new loader, on 1 and
//! 2 ranks under `mpirun`). Rank 0's index errors reach every rank.

mod common;
use common::*;
use fedhex::app::run::{load_shard, load_shard_full};
use fedhex::comm::Communicator;
use fedhex::config::RunConfig;
use fedhex::data::source::{RootInput, Variable};
use fedhex::data::EventSet;
use fedhex::error::Result;
use fedhex::train::shard::ShardPlan;
use std::sync::{Arc, Barrier, Mutex};

/// What the ranks of one in-process world share: a barrier and one slot per rank.
struct World {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One rank (a thread) of an in-process world: every collective exchanges
/// each rank's bytes through the shared slots, so rank 0's broadcasts and
/// scatters really reach the other ranks.
struct Threaded {
    rank: usize,
    size: usize,
    world: Arc<World>,
}

impl Threaded {
    /// Every rank's `mine`, indexed by rank.
    fn exchange(&self, mine: Vec<u8>) -> Vec<Vec<u8>> {
        self.world.slots.lock().unwrap()[self.rank] = mine;
        self.world.barrier.wait();
        let all = self.world.slots.lock().unwrap().clone();
        self.world.barrier.wait();
        all
    }

    fn reduce_f64(&self, buf: &mut [f64], op: fn(f64, f64) -> f64) {
        let all = self.exchange(buf.iter().flat_map(|v| v.to_le_bytes()).collect());
        for (i, v) in buf.iter_mut().enumerate() {
            let of = |b: &Vec<u8>| f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
            *v = all.iter().skip(1).fold(of(&all[0]), |a, b| op(a, of(b)));
        }
    }
}

impl Communicator for Threaded {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(buf.iter().flat_map(|v| v.to_le_bytes()).collect());
        for (i, v) in buf.iter_mut().enumerate() {
            *v = all.iter().map(|b| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap())).sum();
        }
        Ok(())
    }
    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, |a, b| a + b);
        Ok(())
    }
    fn allreduce_min_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, f64::min);
        Ok(())
    }
    fn allreduce_max_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_f64(buf, f64::max);
        Ok(())
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        let mine = if self.rank == root { std::mem::take(buf) } else { Vec::new() };
        *buf = self.exchange(mine).swap_remove(root);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange(Vec::new());
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `f` on every rank of a world of `size` threads, results by rank.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&dyn Communicator) -> T + Sync) -> Vec<T> {
    let world = Arc::new(World { barrier: Barrier::new(size), slots: Mutex::new(vec![Vec::new(); size]) });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let comm = Threaded { rank, size, world: world.clone() };
                let f = &f;
                s.spawn(move || f(&comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

type Shard = std::result::Result<(EventSet, ShardPlan), String>;

/// Every rank's shard-local and full-read shard, on `size` ranks.
fn shards(cfg: &RunConfig, size: usize) -> Vec<(Shard, Shard)> {
    on_ranks(size, |comm| {
        let local = load_shard(cfg, comm).map_err(|e| e.to_string());
        let full = load_shard_full(cfg, comm).map_err(|e| e.to_string());
        (local, full)
    })
}

fn same_shards(cfg: &RunConfig, what: &str) -> usize {
    let mut total = 0;
    for size in 1..=3 {
        for (rank, (a, b)) in shards(cfg, size).into_iter().enumerate() {
            let (a, pa) = a.unwrap_or_else(|e| panic!("{what}: rank {rank} of {size}: {e}"));
            let (b, pb) = b.unwrap_or_else(|e| panic!("{what}: rank {rank} of {size}: full read: {e}"));
            assert!(!a.is_empty(), "{what}: rank {rank} of {size}: no events");
            assert_eq!(a, b, "{what}: rank {rank} of {size}: the shard-local events differ");
            assert_eq!((pa.world, pa.rank), (size, rank));
            assert_eq!(pa.local_is_val, pb.local_is_val, "{what}: rank {rank} of {size}");
            assert_eq!((pa.n_train, pa.n_val, &pa.group_sizes), (pb.n_train, pb.n_val, &pb.group_sizes));
            total += a.len();
        }
    }
    total
}

/// The error every rank of `size` returns from `load_shard`.
fn errors(cfg: &RunConfig, size: usize) -> Vec<String> {
    on_ranks(size, |comm| load_shard(cfg, comm).err().map(|e| e.to_string()).unwrap_or_default())
}

#[test]
fn npz_shards_equal_the_full_read() {
    let dir = tmpdir();
    let path = dir.path().join("grid.npz");
    gaussian_grid_npz(&path, 101);
    let mut cfg = small_cfg(1, 3);
    cfg.data.path = path.clone();
    cfg.data.holdout_labels = vec![vec![0.5, 0.5]];
    assert_eq!(same_shards(&cfg, "npz") % (8 * 101), 0, "every event once per world size");
    // Weighted (negative weights too), and float64 arrays written by numpy.
    let w = dir.path().join("w.npz");
    run_python(
        "import sys, numpy as np\nd = np.load(sys.argv[1])\nn = len(d['labels'])\n\
         np.savez(sys.argv[2], samples=d['samples'].astype(np.float64), labels=d['labels'], \
         weights=np.where(np.arange(n) % 7 == 0, -0.5, 1.0 + np.arange(n) % 3))",
        &[path.to_str().unwrap(), w.to_str().unwrap()],
    );
    cfg.data.path = w;
    cfg.data.features = vec!["a".into(), "b".into()];
    same_shards(&cfg, "weighted npz");
    // Non-finite features are refused naming the archive row, as the full read refuses them.
    let bad = dir.path().join("bad.npz");
    run_python(
        "import sys, numpy as np\nd = np.load(sys.argv[1])\ns = d['samples'].copy()\ns[700, 1] = np.nan\n\
         np.savez(sys.argv[2], samples=s, labels=d['labels'])",
        &[path.to_str().unwrap(), bad.to_str().unwrap()],
    );
    cfg.data.path = bad;
    cfg.data.features = vec![];
    for size in [1, 2] {
        for e in errors(&cfg, size) {
            assert!(e.contains("bad.npz: samples[700, 1] is NaN"), "{size} ranks: {e}");
        }
    }
    // Rank 0's index errors reach every rank: a missing file, a label whose weights sum to < 0.
    cfg.data.path = dir.path().join("missing.npz");
    let e = errors(&cfg, 2);
    assert!(e[0].contains("missing.npz") && e[1].contains("rank 0:") && e[1].contains("missing.npz"), "{e:?}");
    let neg = dir.path().join("neg.npz");
    run_python(
        "import sys, numpy as np\nd = np.load(sys.argv[1])\nl = d['labels']\n\
         w = np.where((l[:, 0] == l[0, 0]) & (l[:, 1] == l[0, 1]), -1.0, 1.0)\n\
         np.savez(sys.argv[2], samples=d['samples'], labels=l, weights=w)",
        &[path.to_str().unwrap(), neg.to_str().unwrap()],
    );
    cfg.data.path = neg;
    cfg.data.holdout_labels = vec![];
    for e in errors(&cfg, 2) {
        assert!(e.contains("neg.npz") && e.contains("sum to -101"), "{e}");
    }
}

#[test]
fn root_shards_equal_the_full_read() {
    let dir = tmpdir();
    phiomega_grid(env!("CARGO_BIN_EXE_fedhex"), dir.path(), 300);
    let mut cfg = small_cfg(1, 3);
    cfg.data.root = Some(RootInput {
        files: vec![dir.path().display().to_string()],
        features: vec![
            Variable::new("phi", "CBL_RecoPhi_mass"),
            Variable::new("omega", "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"),
        ],
        labels: vec![Variable::new("labelphi", "GenPhi_mass[0]"), Variable::new("labelomega", "GenOmega_mass[0]")],
        cut: "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 100".into(),
        thresh: 10,
        ..RootInput::default()
    });
    let n = same_shards(&cfg, "root");
    assert!(n > 3 * 1000, "{n}");
    // Weighted by an expression, with a label held out.
    let (all, _) = fedhex::data::source::load(cfg.data.root.as_ref().unwrap()).unwrap();
    let h: Vec<f64> = all.labels.row(0).iter().map(|&v| f64::from(v)).collect();
    cfg.data.holdout_labels = vec![h];
    if let Some(r) = cfg.data.root.as_mut() {
        r.weight = "0.5 + (event % 3) - 0.9 * (event % 5 == 0)".into();
    }
    let (weighted, _) = fedhex::data::source::load(cfg.data.root.as_ref().unwrap()).unwrap();
    assert!(weighted.weights.as_ref().is_some_and(|w| w.iter().any(|&v| v < 0.0)), "negative weights are read");
    same_shards(&cfg, "weighted root");
}
