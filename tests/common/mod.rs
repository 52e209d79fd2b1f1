//! Shared helpers for integration tests.
#![allow(dead_code)]

use fedhex::comm::SingleProcess;
use fedhex::data::whiten::{WhitenSpec, Whitening};
use fedhex::flow::{Activation, Maf, MafConfig, Model, Permutation, Transform};
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

/// A MAF config for tests.
pub fn maf_cfg(d: i64, l: i64, blocks: usize, hidden: &[i64], act: Activation, perm: Permutation) -> MafConfig {
    MafConfig {
        features: d,
        context: l,
        n_blocks: blocks,
        hidden: hidden.to_vec(),
        activation: act,
        permutation: perm,
        permutation_seed: 7,
        log_scale_bound: 3.0,
        transform: Transform::Affine,
        spline_bins: 8,
        spline_bound: 5.0,
    }
}

/// Adds seeded noise to every weight so the flow is far from the identity.
/// Variables are visited in name order: the store's map iterates in a
/// per-process random order, which would hand the same draws to different
/// weights in every run.
pub fn scramble(flow: &Maf, scale: f64) {
    let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise = Tensor::randn(v.size(), (Kind::Float, dev())) * scale;
            let _ = v.g_add_(&noise);
        }
    });
}

/// Adds seeded noise of scale `scale` to every variable of the learned mixings
/// (`mix{k}.*`), in name order; draws nothing without mixings or at scale 0.
pub fn scramble_mixings(flow: &Maf, scale: f64) {
    let mut vars: Vec<(String, Tensor)> =
        flow.var_store().variables().into_iter().filter(|(n, _)| n.starts_with("mix")).collect();
    if scale == 0.0 || vars.is_empty() {
        return;
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let noise = Tensor::randn(v.size(), (Kind::Float, dev())) * scale;
            let _ = v.g_add_(&noise);
        }
    });
}

/// The largest entry of `|W - P|` over the flow's learned mixings (`P` the
/// reversal), and of `|b|`: how far the mixings are from their initial value.
pub fn mixing_distance(flow: &Maf) -> (f64, f64) {
    let mut w_far = 0f64;
    let mut b_far = 0f64;
    for mix in flow.mixings() {
        let d = mix.log_diag.size()[0];
        let p = Tensor::eye(d, (Kind::Float, dev())).flip([0]);
        let w = tch::no_grad(|| mix.weight());
        w_far = w_far.max((w - p).abs().max().double_value(&[]));
        b_far = b_far.max(mix.bias.abs().max().double_value(&[]));
    }
    (w_far, b_far)
}

/// A model with whitening fitted on a unit-square-ish random data set.
pub fn random_model(blocks: usize, hidden: &[i64], seed: i64) -> Model {
    random_model_of(maf_cfg(2, 2, blocks, hidden, Activation::Tanh, Permutation::Reverse), seed, 0.3)
}

/// A model of two features and two labels with blocks of kind `transform`, weights scrambled.
pub fn random_model_with(transform: Transform, blocks: usize, hidden: &[i64], seed: i64) -> Model {
    random_model_perm(transform, Permutation::Reverse, blocks, hidden, seed)
}

/// [`random_model_with`] with the order change `perm` between blocks (learned
/// mixings, [`Permutation::Lu`], scrambled like every other weight).
pub fn random_model_perm(transform: Transform, perm: Permutation, blocks: usize, hidden: &[i64], seed: i64) -> Model {
    let mut cfg = maf_cfg(2, 2, blocks, hidden, Activation::Tanh, perm);
    if transform == Transform::Affine {
        return random_model_of(cfg, seed, 0.3);
    }
    // 8 pieces on [-3, 3], so the scrambled flow visibly uses both the spline
    // and its identity tails; weights scrambled less, as spline slopes compound
    // faster than affine scales.
    cfg.transform = transform;
    cfg.spline_bound = 3.0;
    random_model_of(cfg, seed, 0.15)
}

/// A model of two features and two labels with the flow `cfg`, weights scrambled by `scale`.
pub fn random_model_of(cfg: MafConfig, seed: i64, scale: f64) -> Model {
    let _rng = fedhex::rng::seeded(seed as u64);
    let flow = Maf::new(cfg, dev()).unwrap();
    scramble(&flow, scale);
    // Learned mixings: as far from the reversal as affine flows' are, for every kind of block.
    scramble_mixings(&flow, (0.09 - scale * scale).max(0.0).sqrt());
    let xs = Array2::from_shape_fn((500, 2), |(i, j)| ((i * 7 + j * 13) % 101) as f32 / 50.0 - 1.0);
    let ls = Array2::from_shape_fn((500, 2), |(i, j)| ((i + j) % 5) as f32 * 0.25);
    let spec = |p: &str| WhitenSpec { names: vec![format!("{p}0"), format!("{p}1")], logit: vec![false; 2], eps: 1e-3 };
    let fw = Whitening::fit(xs.view(), &spec("x"), &SingleProcess).unwrap();
    let lw = Whitening::fit(ls.view(), &spec("l"), &SingleProcess).unwrap();
    Model::new(flow, fw, lw).unwrap()
}

/// A fresh temporary directory.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Tensor → Vec<f32>.
pub fn vec_of(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1).contiguous()).unwrap()
}

/// The device tests run on: `FEDHEX_TEST_DEVICE` (cpu, cuda, cuda:N), default cpu.
/// The GPU check script runs the flow tests with `FEDHEX_TEST_DEVICE=cuda`.
pub fn dev() -> Device {
    let spec = std::env::var("FEDHEX_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    fedhex::device::resolve(fedhex::device::parse_device(&spec).expect("FEDHEX_TEST_DEVICE"), 0)
        .expect("requested test device")
}

/// The small CPU training configuration most tests use: 4 blocks of
/// [32, 32], batch 256, learning rate 3e-3 → 2e-4, no progress bar.
pub fn small_cfg(epochs: usize, seed: u64) -> fedhex::config::RunConfig {
    let mut cfg = fedhex::config::RunConfig::default();
    cfg.network.n_blocks = 4;
    cfg.network.hidden = vec![32, 32];
    // The machinery under test, on the fast CPU path.
    cfg.network.transform = Transform::Affine;
    cfg.network.permutation = Permutation::Reverse;
    cfg.training.epochs = epochs;
    cfg.training.batch_size = 256;
    cfg.training.lr_initial = 3e-3;
    cfg.training.lr_final = 2e-4;
    cfg.training.seed = seed;
    cfg.training.device = "cpu".into();
    cfg.outputs.progress = false;
    cfg
}

/// The Python with uproot, awkward and numpy that peer-comparison tests run
/// (`FEDHEX_PYTHON`); a clear panic when it is not set.
pub fn python() -> String {
    match std::env::var("FEDHEX_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "FEDHEX_PYTHON is not set: set it to a Python with uproot, awkward and numpy \
             (e.g. FEDHEX_PYTHON=~/.cache/fedhex/torch-venv/bin/python) to run the ROOT/numpy comparison tests"
        ),
    }
}

/// Runs a Python snippet with arguments under [`python`] and returns its stdout.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running FEDHEX_PYTHON: {e}"));
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A model's weights as (name, bit patterns), name-sorted: for bit-exact comparisons.
pub fn weight_bits(m: &Model) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = m
        .flow
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, t)| (k, vec_of(&t).iter().map(|x| x.to_bits()).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs `fedhex-worker` (`worker`: the test's `CARGO_BIN_EXE_fedhex-worker`)
/// under a real `mpirun -n n` in `dir` with `args`, the environment
/// variables `env` passed to every rank, and a kill after 300 s; panics with
/// stderr when the job fails.
pub fn mpirun_ok(worker: &str, n: usize, dir: &std::path::Path, args: &[String], env: &[(&str, String)]) {
    let mut c = std::process::Command::new("timeout");
    c.args(["-s", "KILL", "300", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.args(["-n", &n.to_string(), worker]).args(args);
    c.current_dir(dir).env("OMPI_MCA_btl_vader_single_copy_mechanism", "none").env_remove("LD_LIBRARY_PATH");
    let o = c.output().expect("mpirun");
    assert!(o.status.success(), "mpirun -n {n} failed ({:?}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

/// A 3 x 3 Gaussian grid (full covariance, seed 4) of `n_per_label` events per label, written to `path`.
pub fn gaussian_grid_npz(path: &std::path::Path, n_per_label: usize) {
    use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Full { sigma: 0.1, rho: 0.5 },
        n_per_label,
        seed: 4,
    };
    let ev = spec.generate().unwrap();
    fedhex::data::npy::write_npz(path, &ev.samples, &ev.labels).unwrap();
}

/// A phi-omega production of a 3 x 3 grid (`n` events per point, seed 5)
/// written by `fedhex gen` (`fedhex`: the test's binary) into `dir`.
pub fn phiomega_grid(fedhex: &str, dir: &std::path::Path, n: usize) {
    let o = std::process::Command::new(fedhex)
        .args(["gen", "--model", "phi-omega", "--grid", "3x3", "-n", &n.to_string(), "--seed", "5", "--out"])
        .arg(dir)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(o.status.success(), "fedhex gen: {}", String::from_utf8_lossy(&o.stderr));
}
