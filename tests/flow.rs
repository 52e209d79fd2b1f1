//! Properties of the conditional MAF: autoregressive structure, normalisation,
//! invertibility, change of variables.

mod common;
use common::*;
use fedhex::flow::made::{made, MadeConfig};
use fedhex::flow::{Activation, Maf, Permutation, Transform};

/// Every kind of block.
const TRANSFORMS: [Transform; 3] = [Transform::Affine, Transform::Spline, Transform::AffineSpline];
use tch::{nn, Kind, Tensor};

/// d out_j / d x_i for one event, by autograd: `[outputs][inputs]`.
fn jacobian(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Vec<Vec<f64>> {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    let n_out = y.size()[1];
    (0..n_out)
        .map(|j| {
            let g = Tensor::run_backward(&[y.select(1, j).sum(Kind::Float)], &[&x], true, false);
            vec_of(&g[0]).into_iter().map(f64::from).collect()
        })
        .collect()
}

#[test]
fn made_is_autoregressive_in_its_order() {
    for (hidden, order) in [
        (vec![16], vec![0, 1, 2, 3]),
        (vec![12, 12], vec![2, 0, 3, 1]),
        (vec![10, 10, 10], vec![3, 2, 1, 0]),
        (vec![], vec![1, 3, 0, 2]),
    ] {
        let _rng = fedhex::rng::seeded(3);
        let vs = nn::VarStore::new(dev());
        let cfg = MadeConfig {
            features: 4,
            context: 2,
            hidden: hidden.clone(),
            activation: Activation::Tanh,
            order: order.clone(),
            log_scale_bound: 3.0,
            params: 2,
        };
        let block = made(&vs.root(), cfg);
        // Large random weights: every allowed connection is visibly non-zero.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, dev())) * 0.7));
            }
        });
        let rank = fedhex::flow::made::input_degrees(&order);
        let cs = Tensor::randn([1, 2], (Kind::Float, dev()));
        let x = Tensor::randn([1, 4], (Kind::Float, dev()));
        for part in 0..2 {
            let jac = jacobian(
                |x| {
                    let (mu, s) = block.forward(x, &cs);
                    if part == 0 {
                        mu
                    } else {
                        s
                    }
                },
                &x,
            );
            for (j, row) in jac.iter().enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    if rank[i] >= rank[j] {
                        assert_eq!(v, 0.0, "hidden {hidden:?}: output {j} depends on input {i} (order {order:?})");
                    } else {
                        assert!(v.abs() > 1e-7, "hidden {hidden:?}: allowed dependence {j}<-{i} missing");
                    }
                }
            }
        }
    }
}

#[test]
fn each_block_of_a_maf_has_a_triangular_jacobian() {
    let _rng = fedhex::rng::seeded(11);
    let flow = Maf::new(maf_cfg(3, 1, 4, &[16, 16], Activation::Gelu, Permutation::Random), dev()).unwrap();
    scramble(&flow, 0.5);
    let cs = Tensor::randn([1, 1], (Kind::Float, dev()));
    let x = Tensor::randn([1, 3], (Kind::Float, dev()));
    for (k, block) in flow.blocks().iter().enumerate() {
        let rank = flow.input_degrees(k).unwrap();
        let jac = jacobian(|x| (x - block.forward(x, &cs).0) * (-block.forward(x, &cs).1).exp(), &x);
        for (j, row) in jac.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                if rank[i] > rank[j] {
                    assert_eq!(v, 0.0, "block {k}: u{j} depends on later x{i}");
                }
            }
        }
    }
}

fn integrate_2d(model: &fedhex::flow::Model, label: [f32; 2], lo: [f64; 2], hi: [f64; 2], n: i64) -> f64 {
    let gx = Tensor::linspace(lo[0], hi[0], n, (Kind::Float, dev()));
    let gy = Tensor::linspace(lo[1], hi[1], n, (Kind::Float, dev()));
    let grid = Tensor::meshgrid_indexing(&[&gx, &gy], "ij");
    let xs = Tensor::stack(&[grid[0].flatten(0, -1), grid[1].flatten(0, -1)], 1);
    let cs = Tensor::from_slice(&label).view([1, 2]).expand([n * n, 2], false);
    let lp = tch::no_grad(|| model.log_prob(&xs, &cs));
    let cell = (hi[0] - lo[0]) / (n - 1) as f64 * (hi[1] - lo[1]) / (n - 1) as f64;
    lp.exp().sum(Kind::Double).double_value(&[]) * cell
}

fn sample_box(model: &fedhex::flow::Model, label: [f32; 2]) -> ([f64; 2], [f64; 2]) {
    let _rng = fedhex::rng::seeded(5);
    let cs = Tensor::from_slice(&label).view([1, 2]).expand([20000, 2], false);
    let xs = model.sample(&cs);
    let mut lo = [0.0; 2];
    let mut hi = [0.0; 2];
    for j in 0..2usize {
        let c = xs.select(1, j as i64);
        let (a, b) = (c.min().double_value(&[]), c.max().double_value(&[]));
        let pad = 0.5 * (b - a);
        lo[j] = a - pad;
        hi[j] = b + pad;
    }
    (lo, hi)
}

#[test]
fn density_of_a_random_flow_integrates_to_one() {
    for (blocks, hidden) in [(3, vec![16]), (5, vec![16, 16])] {
        for kind in TRANSFORMS {
            let model = random_model_with(kind, blocks, &hidden, 21);
            let label = [0.3f32, 0.7];
            let (lo, hi) = sample_box(&model, label);
            let total = integrate_2d(&model, label, lo, hi, 500);
            assert!((total - 1.0).abs() < 0.01, "{kind:?} blocks {blocks} hidden {hidden:?}: integral {total}");
        }
    }
}

#[test]
fn sample_and_log_prob_agree_and_inverse_undoes_forward() {
    sample_and_log_prob_agree_for(&random_model(4, &[24, 24], 8));
}

#[test]
fn a_spline_flow_samples_what_it_evaluates_and_inverts_exactly() {
    for kind in [Transform::Spline, Transform::AffineSpline] {
        let model = random_model_with(kind, 4, &[24, 24], 8);
        sample_and_log_prob_agree_for(&model);
        // The scrambled splines are far from the identity: the test above is not trivial.
        let cs = Tensor::zeros([64, 2], (Kind::Float, dev()));
        let x = Tensor::linspace(-2.5, 2.5, 128, (Kind::Float, dev())).view([64, 2]);
        let (u, _) = tch::no_grad(|| model.flow.forward(&x, &cs));
        assert!((&u - &x).abs().max().double_value(&[]) > 0.1, "a scrambled {kind:?} flow is the identity");
    }
}

fn sample_and_log_prob_agree_for(model: &fedhex::flow::Model) {
    let flow = &model.flow;
    let rng = fedhex::rng::seeded(2);
    let cs = Tensor::randn([256, 2], (Kind::Float, dev()));
    let (x, lp_sample) = flow.sample_with_log_prob(&cs);
    let lp = tch::no_grad(|| flow.log_prob(&x, &cs));
    let diff = (&lp - &lp_sample).abs().max().double_value(&[]);
    assert!(diff < 2e-3, "log_prob from sampling and evaluation differ by {diff}");
    // inverse(forward(x)) = x
    let x0 = Tensor::randn([256, 2], (Kind::Float, dev()));
    let (u, logdet_f) = tch::no_grad(|| flow.forward(&x0, &cs));
    let (x1, logdet_i) = flow.inverse(&u, &cs);
    let err = (&x1 - &x0).abs().max().double_value(&[]);
    assert!(err < 1e-4, "inverse(forward(x)) differs from x by {err}");
    let derr = (&logdet_f - &logdet_i).abs().max().double_value(&[]);
    assert!(derr < 1e-3, "log-determinants differ by {derr}");
    // Raw space: the whitening is inverted exactly as well.
    drop(rng);
    let _rng = fedhex::rng::seeded(4);
    let xs = model.sample(&cs);
    let back = model.features.inverse(&model.features.forward(&xs));
    assert!((&back - &xs).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn log_det_matches_autograd_jacobian() {
    let cs = Tensor::from_slice(&[0.2f32, -0.4]).view([1, 2]).to_device(dev());
    // Inside the spline interval, on its edge, and in its identity tail.
    for kind in TRANSFORMS {
        let model = random_model_with(kind, 3, &[16], 13);
        for point in [[0.1f32, 0.3], [-1.7, 2.2], [3.0, -0.5], [4.5, -3.6]] {
            let x = Tensor::from_slice(&point).view([1, 2]).to_device(dev());
            let jac = jacobian(|x| model.flow.forward(x, &cs).0, &x);
            let det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0];
            let (_, logdet) = tch::no_grad(|| model.flow.forward(&x, &cs));
            let got = logdet.double_value(&[0]);
            assert!(
                (det.abs().ln() - got).abs() < 1e-4,
                "{kind:?} at {point:?}: autograd {} vs flow {got}",
                det.abs().ln()
            );
        }
    }
}

#[test]
fn density_of_a_trained_flow_integrates_to_one() {
    use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Rotating { major: 0.1, minor: 0.04, turns: 0.5 },
        n_per_label: 400,
        seed: 5,
    };
    let events = spec.generate().unwrap();
    for transform in TRANSFORMS {
        let mut cfg = fedhex::config::RunConfig::default();
        cfg.network.n_blocks = 3;
        cfg.network.hidden = vec![16, 16];
        cfg.network.transform = transform;
        cfg.training.epochs = 4;
        cfg.training.batch_size = 128;
        cfg.training.lr_initial = 3e-3;
        cfg.training.device = "cpu".into();
        let out = fedhex::train::train_events(&cfg, &events).unwrap();
        let h = &out.history;
        assert!(h[h.len() - 1].val_nll < h[0].val_nll, "{transform:?}: the model did not train");
        assert_eq!(out.model.flow.config().transform, transform);
        for label in [[0.25f32, 0.75], [0.5, 0.5]] {
            let (lo, hi) = sample_box(&out.model, label);
            let total = integrate_2d(&out.model, label, lo, hi, 500);
            assert!((total - 1.0).abs() < 0.01, "trained {transform:?} model at {label:?}: integral {total}");
        }
    }
}
