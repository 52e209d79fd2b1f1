//! The hand-written CPU engine (`fedhex::flow::engine::cpu`) against the libtorch
//! reference: log-prob, inverse and the training gradient, for hand-picked
//! shapes and for every combination of block transform, order between
//! blocks and activation (enumerated from the enums, so a new kind is
//! covered without touching this file; one the CPU engine declines must say
//! why).

mod common;
use clap::ValueEnum;
use common::*;
use fedhex::flow::engine::cpu::{to_host, FastMaf, FastTrainer};
use fedhex::flow::Engine;
use fedhex::flow::{Activation, Maf, MafConfig, Permutation, Transform};
use fedhex::train::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor};

/// A network shape: features, labels, blocks, hidden widths, activation,
/// order between blocks, block transform, spline bins and bound.
type Net = (i64, i64, usize, Vec<i64>, Activation, Permutation, Transform, i64, f64);

fn configs() -> Vec<Net> {
    use Activation::*;
    use Permutation::*;
    use Transform::*;
    vec![
        (2, 2, 10, vec![128], Relu, Reverse, Affine, 8, 5.0),
        (3, 2, 3, vec![16, 12], Tanh, Random, Affine, 8, 5.0),
        (4, 0, 2, vec![10], Elu, Random, Affine, 8, 5.0),
        (2, 3, 2, vec![], Silu, Reverse, Affine, 8, 5.0),
        (1, 1, 2, vec![8], Relu, Reverse, Affine, 8, 5.0),
        (5, 1, 2, vec![20, 20, 20], Silu, Random, Affine, 8, 5.0),
        // The default network (spline blocks after the affine ones, learned mixing).
        (2, 2, 10, vec![128], Relu, Lu, AffineSpline, 8, 5.0),
        // Narrow splines: many values outside the bound, where the map is the identity.
        (3, 2, 3, vec![16, 12], Tanh, Random, Spline, 4, 1.5),
        (4, 1, 3, vec![10], Elu, Lu, Affine, 8, 5.0),
        (2, 0, 3, vec![], Silu, Lu, AffineSpline, 3, 2.0),
        (1, 1, 2, vec![8], Relu, Reverse, Spline, 5, 2.5),
    ]
    .into_iter()
    .chain(every_kind())
    .collect()
}

/// One small network per (block transform, order between blocks, activation)
/// that the CPU engine implements.
fn every_kind() -> Vec<Net> {
    let mut v = Vec::new();
    for &t in Transform::value_variants() {
        for &p in Permutation::value_variants() {
            for &a in Activation::value_variants().iter().filter(|&&a| cpu_engine_has(a)) {
                v.push((3, 2, 3, vec![12], a, p, t, 4, 3.0));
            }
        }
    }
    v
}

/// Activations of the CPU engine (the others must be declined with a reason).
fn cpu_engine_has(a: Activation) -> bool {
    a != Activation::Gelu
}

#[test]
fn the_cpu_engine_declines_what_it_lacks_with_a_reason() {
    for &a in Activation::value_variants().iter().filter(|&&a| !cpu_engine_has(a)) {
        let flow = {
            let _rng = fedhex::rng::seeded(5);
            Maf::new(maf_cfg(2, 1, 2, &[8], a, Permutation::Reverse), Device::Cpu).unwrap()
        };
        let why = FastMaf::new(&flow).expect_err("declined");
        assert!(why.to_lowercase().contains(&format!("{a:?}").to_lowercase()), "{why}");
        assert!(!Engine::select(&flow).is_cpu());
        // libtorch still evaluates it.
        let lp = Engine::select(&flow).log_prob(
            &flow,
            &Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([3, 1], (Kind::Float, Device::Cpu)),
        );
        assert_eq!(lp.size(), vec![3]);
    }
}

/// The autograd reference runs single-threaded so its own rounding does not
/// change with the machine's load (MKL picks its blocking by thread count).
fn flow_for(i: usize) -> Maf {
    tch::set_num_threads(1);
    let (d, l, b, h, a, p, t, bins, bound) = configs()[i].clone();
    let _rng = fedhex::rng::seeded(11 + i as u64);
    let cfg = MafConfig { transform: t, spline_bins: bins, spline_bound: bound, ..maf_cfg(d, l, b, &h, a, p) };
    let flow = Maf::new(cfg, Device::Cpu).unwrap();
    // Deep flows with learned mixing compound the noise: keep their outputs moderate.
    scramble(&flow, if p == Permutation::Lu && b > 3 { 0.04 } else { 0.2 });
    flow
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(f64::from(v.abs()))).max(1e-3);
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max) / scale
}

#[test]
fn log_prob_and_inverse_match_autograd() {
    for i in 0..configs().len() {
        let flow = flow_for(i);
        let (d, l) = (flow.config().features, flow.config().context);
        let (x, c) = {
            let _rng = fedhex::rng::seeded(2000 + i as u64);
            (Tensor::randn([700, d], (Kind::Float, Device::Cpu)), Tensor::randn([700, l], (Kind::Float, Device::Cpu)))
        };
        let engine = Engine::select(&flow);
        assert!(engine.is_cpu(), "config {i}: the CPU engine declines this network: {:?}", FastMaf::new(&flow).err());
        let fast = engine.log_prob(&flow, &x, &c);
        let slow = tch::no_grad(|| flow.log_prob(&x, &c));
        let e = max_rel(&to_host(&fast), &to_host(&slow));
        eprintln!("config {i}: log-prob rel diff {e:e}");
        assert!(e < 1e-5, "config {i}: log-prob differs by {e} (relative)");
        let (xf, lf) = engine.inverse(&flow, &x, &c);
        let (xs, ls) = flow.inverse(&x, &c);
        let e = max_rel(&to_host(&xf), &to_host(&xs));
        eprintln!("config {i}: inverse rel diff {e:e}");
        assert!(e < 5e-5, "config {i}: inverse differs by {e}");
        let e = max_rel(&to_host(&lf), &to_host(&ls));
        eprintln!("config {i}: inverse logdet rel diff {e:e}");
        assert!(e < 5e-5, "config {i}: inverse logdet differs by {e}");
    }
}

/// The default network at D = 7, L = 3: its output layer (25 D = 175 rows)
/// is wider than its input (128), so it is stored input-major and sampling
/// takes the input-major row kernel; log-prob and inverse match autograd.
#[test]
fn default_network_at_seven_features_matches_autograd() {
    tch::set_num_threads(1);
    let _rng = fedhex::rng::seeded(77);
    let cfg = MafConfig {
        transform: Transform::AffineSpline,
        spline_bins: 8,
        spline_bound: 5.0,
        ..maf_cfg(7, 3, 10, &[128], Activation::Relu, Permutation::Lu)
    };
    let flow = Maf::new(cfg, Device::Cpu).unwrap();
    scramble(&flow, 0.04);
    let engine = FastMaf::new(&flow).expect("the CPU engine applies");
    let x = Tensor::randn([300, 7], (Kind::Float, Device::Cpu));
    let c = Tensor::randn([300, 3], (Kind::Float, Device::Cpu));
    let lp = engine.log_prob(&flow, &x, &c).expect("log-prob");
    let e = max_rel(&to_host(&lp), &to_host(&flow.log_prob(&x, &c)));
    assert!(e < 5e-5, "log-prob differs by {e}");
    let (xf, lf) = engine.inverse(&flow, &x, &c).expect("inverse");
    let (xs, ls) = flow.inverse(&x, &c);
    let e = max_rel(&to_host(&xf), &to_host(&xs));
    assert!(e < 5e-5, "inverse differs by {e}");
    let e = max_rel(&to_host(&lf), &to_host(&ls));
    assert!(e < 5e-5, "inverse log-det differs by {e}");
}

#[test]
fn log_prob_with_gradients_still_records_autograd() {
    let model = random_model(2, &[16], 3);
    // Seeded draws only: an unseeded one would move the generator under the other tests' seeded ones.
    let (x, c) = {
        let _rng = fedhex::rng::seeded(3000);
        (Tensor::randn([5, 2], (Kind::Float, Device::Cpu)), Tensor::randn([5, 2], (Kind::Float, Device::Cpu)))
    };
    assert!(model.engine.is_cpu());
    assert!(model.flow_log_prob(&x, &c).requires_grad(), "with gradients the model must use autograd");
    assert!(!tch::no_grad(|| model.flow_log_prob(&x, &c)).requires_grad());
}

#[test]
fn training_gradient_matches_autograd() {
    for i in 0..configs().len() {
        let flow = flow_for(i);
        let (d, l) = (flow.config().features, flow.config().context);
        let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
        let mut fast = FastTrainer::new(&flow, opt.names(), opt.numels()).expect("fast path applies");
        let n = 600;
        // Seeded data: the comparison is exact arithmetic vs f32 rounding, so a
        // fixed input keeps the test deterministic (an unseeded one occasionally
        // lands a ReLU input within rounding of 0, where the two may differ).
        let (x, c) = {
            let _rng = fedhex::rng::seeded(1000 + i as u64);
            (Tensor::randn([n, d], (Kind::Float, Device::Cpu)), Tensor::randn([n, l], (Kind::Float, Device::Cpu)))
        };
        let rows: Vec<i64> = (0..n).rev().step_by(2).collect();
        let idx = Tensor::from_slice(&rows);
        opt.zero_grad();
        let loss = flow.log_prob(&x.index_select(0, &idx), &c.index_select(0, &idx)).sum(Kind::Float).neg();
        loss.backward();
        let g_ref = to_host(&opt.flat_grad());
        let mut g = vec![0f32; fast.numel()];
        let (hx, hc) = (to_host(&x), to_host(&c));
        let fl = fast.loss_and_grad(opt.flat_params(), &hx, &hc, &rows, 1, &mut g);
        let lr = loss.double_value(&[]);
        eprintln!("config {i}: loss {fl} vs {lr}");
        assert!((fl - lr).abs() <= 1e-5 * lr.abs().max(1.0), "config {i}: loss {fl} vs {lr}");
        let e = max_rel(&g, &g_ref);
        eprintln!("config {i}: grad rel diff {e:e}");
        assert!(e < 2e-5, "config {i}: gradient differs by {e} (relative to its largest entry)");
        // Any number of threads gives the same bits.
        let mut g2 = vec![0f32; fast.numel()];
        let fl2 = fast.loss_and_grad(opt.flat_params(), &hx, &hc, &rows, 3, &mut g2);
        assert_eq!(fl.to_bits(), fl2.to_bits());
        assert!(g.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()), "config {i}: threads change the gradient");
    }
}

#[test]
fn flat_adam_keeps_names_values_and_steps_the_variables() {
    let flow = flow_for(1);
    let before: Vec<(String, Vec<f32>)> = {
        let mut v: Vec<_> = flow.var_store().variables().into_iter().map(|(k, t)| (k, to_host(&t))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
    let mut after: Vec<_> = flow.var_store().variables().into_iter().map(|(k, t)| (k, to_host(&t))).collect();
    after.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(before, after, "moving into the flat buffer changed a variable");
    let g = Tensor::ones([opt.numel()], (Kind::Float, Device::Cpu));
    opt.step_flat(&g, 1.0, 0.1);
    for (name, t) in flow.var_store().variables() {
        let old = &before.iter().find(|(n, _)| *n == name).unwrap().1;
        let new = to_host(&t);
        assert!(old.iter().zip(&new).all(|(o, n)| (o - n - 0.1).abs() < 1e-4), "{name} did not take the step");
    }
}

/// The weighted pass (the acceptance terms' flow samples) against autograd
/// of `Σ w_i NLL_i`, with weights of both signs, added onto a gradient
/// already in the buffer.
#[test]
fn weighted_gradient_matches_autograd_and_adds_on() {
    for i in [0, 3, 6, 7, 9] {
        let flow = flow_for(i);
        let (d, l) = (flow.config().features, flow.config().context);
        let mut opt = Adam::new(flow.var_store(), AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
        let mut fast = FastTrainer::new(&flow, opt.names(), opt.numels()).expect("fast path applies");
        let n = 300;
        let (x, c, w) = {
            let _rng = fedhex::rng::seeded(4000 + i as u64);
            let w = Tensor::randn([n], (Kind::Float, Device::Cpu));
            (Tensor::randn([n, d], (Kind::Float, Device::Cpu)), Tensor::randn([n, l], (Kind::Float, Device::Cpu)), w)
        };
        opt.zero_grad();
        let loss = (flow.log_prob(&x, &c) * &w).sum(Kind::Float).neg();
        loss.backward();
        let g_ref = to_host(&opt.flat_grad());
        let start: Vec<f32> = (0..fast.numel()).map(|k| (k % 7) as f32 - 3.0).collect();
        let mut g = start.clone();
        let fl = fast.add_weighted(opt.flat_params(), &to_host(&x), &to_host(&c), &to_host(&w), 1, &mut g);
        // The reference in f64 from the per-event log-densities (libtorch's f32
        // sum of terms of both signs loses more than the comparison allows).
        let lp = to_host(&tch::no_grad(|| flow.log_prob(&x, &c)));
        let wv = to_host(&w);
        let lr: f64 = lp.iter().zip(&wv).map(|(a, b)| -f64::from(*a) * f64::from(*b)).sum();
        let scale: f64 = lp.iter().zip(&wv).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
        eprintln!(
            "config {i}: weighted loss {fl} vs {lr} (f32 sum {}, scale {scale}, max lp {})",
            loss.double_value(&[]),
            lp.iter().fold(0f32, |m, v| m.max(v.abs()))
        );
        assert!((fl - lr).abs() <= 1e-5 * scale.max(1.0), "config {i}: weighted loss {fl} vs {lr}");
        let added: Vec<f32> = g.iter().zip(&start).map(|(a, b)| a - b).collect();
        let e = max_rel(&added, &g_ref);
        eprintln!("config {i}: weighted grad rel diff {e:e}");
        assert!(e < 2e-5, "config {i}: weighted gradient differs by {e}");
    }
}
