//! Shard-local reading (issue #22): a rank indexes the input and reads the
//! features of its own events only. For 1, 2 and 3 ranks, ROOT and `.npz`,
//! weighted or not, with held-out labels, a cut and a threshold, every
//! rank's events (features, labels, weights, order) and plan equal those of
//! reading the whole input and selecting the shard — so training gives the
//! same weights (tests/golden.rs checks them bit for bit through the new
//! loader, on 1 and 2 ranks).

mod common;
use common::*;
use fedhex::app::run::{load_shard, load_shard_full};
use fedhex::comm::Communicator;
use fedhex::config::RunConfig;
use fedhex::data::source::{RootInput, Variable};
use fedhex::error::Result;

/// One rank of a world whose ranks all agree: collectives return the local value.
struct RankOf {
    rank: usize,
    size: usize,
}

impl Communicator for RankOf {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
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

fn same_shards(cfg: &RunConfig, what: &str) -> usize {
    let mut total = 0;
    for size in 1..=3 {
        for rank in 0..size {
            let comm = RankOf { rank, size };
            let (a, pa) = load_shard(cfg, &comm).unwrap_or_else(|e| panic!("{what}: {e}"));
            let (b, pb) = load_shard_full(cfg, &comm).unwrap();
            assert_eq!(a, b, "{what}: rank {rank} of {size}: the shard-local events differ");
            assert_eq!(pa.local_is_val, pb.local_is_val, "{what}: rank {rank} of {size}");
            assert_eq!((pa.n_train, pa.n_val, &pa.group_sizes), (pb.n_train, pb.n_val, &pb.group_sizes));
            total += a.len();
        }
    }
    total
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
    let e = load_shard(&cfg, &RankOf { rank: 0, size: 1 }).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("bad.npz: samples[700, 1] is NaN"), "{e}");
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
