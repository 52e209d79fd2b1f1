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
            for perm in [Permutation::Reverse, Permutation::Lu] {
                let model = random_model_perm(kind, perm, blocks, &hidden, 21);
                if perm == Permutation::Lu {
                    assert!(mixing_distance(&model.flow).0 > 0.3, "{kind:?}: mixings close to the reversal");
                }
                let label = [0.3f32, 0.7];
                let (lo, hi) = sample_box(&model, label);
                let total = integrate_2d(&model, label, lo, hi, 500);
                assert!(
                    (total - 1.0).abs() < 0.01,
                    "{kind:?} {perm:?} blocks {blocks} hidden {hidden:?}: integral {total}"
                );
            }
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

#[test]
fn an_lu_flow_samples_what_it_evaluates_and_inverts_exactly() {
    for kind in TRANSFORMS {
        let model = random_model_perm(kind, Permutation::Lu, 4, &[24, 24], 8);
        let flow = &model.flow;
        assert_eq!(flow.mixings().len(), 3, "a mixing between each pair of blocks");
        // The hand-written CPU path takes learned mixings (tests/fast_grad.rs checks it against autograd).
        assert!(fedhex::flow::engine::cpu::FastMaf::new(flow).is_ok(), "the fast path declines learned mixings");
        // The scrambled mixings are far from the reversal: the checks are not those of a Reverse flow.
        let (w_far, b_far) = mixing_distance(flow);
        assert!(w_far > 0.3 && b_far > 0.1, "{kind:?}: mixings close to the reversal ({w_far}, {b_far})");
        sample_and_log_prob_agree_for(&model);
        // Each mixing on its own: inverse undoes forward, log|det| is that of W.
        let x = {
            let _rng = fedhex::rng::seeded(6);
            Tensor::randn([64, 2], (Kind::Float, dev())) * 2.0
        };
        for (k, mix) in flow.mixings().iter().enumerate() {
            let (z, ld) = tch::no_grad(|| mix.forward(&x));
            let back = tch::no_grad(|| mix.inverse(&z));
            let err = (&back - &x).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{kind:?} mixing {k}: inverse(forward(x)) differs from x by {err}");
            let w = vec_of(&tch::no_grad(|| mix.weight()));
            let det = f64::from(w[0]) * f64::from(w[3]) - f64::from(w[1]) * f64::from(w[2]);
            let got = ld.double_value(&[0]);
            assert!((det.abs().ln() - got).abs() < 1e-5, "{kind:?} mixing {k}: log|det W| {} vs {got}", det.abs().ln());
        }
    }
}

fn sample_and_log_prob_agree_for(model: &fedhex::flow::Model) {
    let flow = &model.flow;
    let rng = fedhex::rng::seeded(2);
    let cs = Tensor::randn([256, 2], (Kind::Float, dev()));
    let engine = &model.engine;
    let (x, lp_sample) = engine.sample_with_log_prob(flow, &cs);
    let lp = engine.log_prob(flow, &x, &cs);
    let diff = (&lp - &lp_sample).abs().max().double_value(&[]);
    assert!(diff < 2e-3, "log_prob from sampling and evaluation differ by {diff}");
    // inverse(forward(x)) = x
    let x0 = Tensor::randn([256, 2], (Kind::Float, dev()));
    let (u, logdet_f) = tch::no_grad(|| flow.forward(&x0, &cs));
    let (x1, logdet_i) = engine.inverse(flow, &u, &cs);
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
    for (kind, perm) in TRANSFORMS.iter().flat_map(|&k| [(k, Permutation::Reverse), (k, Permutation::Lu)]) {
        let model = random_model_perm(kind, perm, 3, &[16], 13);
        if perm == Permutation::Lu {
            assert!(mixing_distance(&model.flow).0 > 0.3, "{kind:?}: mixings close to the reversal");
        }
        for point in [[0.1f32, 0.3], [-1.7, 2.2], [3.0, -0.5], [4.5, -3.6]] {
            let x = Tensor::from_slice(&point).view([1, 2]).to_device(dev());
            let jac = jacobian(|x| model.flow.forward(x, &cs).0, &x);
            let det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0];
            let (_, logdet) = tch::no_grad(|| model.flow.forward(&x, &cs));
            let got = logdet.double_value(&[0]);
            assert!(
                (det.abs().ln() - got).abs() < 1e-4,
                "{kind:?} {perm:?} at {point:?}: autograd {} vs flow {got}",
                det.abs().ln()
            );
        }
    }
}

/// A 3 × 3 grid of Gaussians whose covariance turns with the label, 400 events each.
fn small_grid() -> fedhex::data::EventSet {
    use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Rotating { major: 0.1, minor: 0.04, turns: 0.5 },
        n_per_label: 400,
        seed: 5,
    };
    spec.generate().unwrap()
}

#[test]
fn density_of_a_trained_flow_integrates_to_one() {
    let events = small_grid();
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

/// Copies the MADE weights of a flow with reversed orders in its odd blocks
/// (`Permutation::Reverse`) into a flow of natural orders that reverses the
/// features between blocks instead (an untrained `Permutation::Lu`): in odd
/// blocks the inputs of the first layer and the outputs of the last (every
/// parameter's `D` rows) are reversed; hidden units are unchanged.
fn copy_reversed_blocks(from: &Maf, to: &Maf) {
    let d = from.config().features;
    let src = from.var_store().variables();
    let dst = to.var_store().variables();
    assert_eq!(src.len() + 4 * to.mixings().len(), dst.len(), "the flows differ in more than their mixings");
    let no_hidden = from.config().hidden.is_empty();
    tch::no_grad(|| {
        for (name, t) in &src {
            let odd = name
                .strip_prefix("made")
                .and_then(|r| r.split('.').next())
                .and_then(|k| k.parse::<usize>().ok())
                .expect("MADE variable")
                % 2
                == 1;
            let mut v = t.shallow_clone();
            if odd {
                if name.ends_with(".hidden0.weight") || (no_hidden && name.ends_with(".out.weight")) {
                    v = v.flip([1]);
                }
                if name.contains(".out.") {
                    // [params * D, ...] → [params, D, ...], features reversed.
                    let size = v.size();
                    let mut split = vec![size[0] / d, d];
                    split.extend_from_slice(&size[1..]);
                    v = v.view(split.as_slice()).flip([1]).reshape(size.as_slice());
                }
            }
            let mut target = dst[name].shallow_clone();
            target.copy_(&v);
        }
    });
}

#[test]
fn an_untrained_lu_flow_is_the_reverse_flow() {
    for (kind, blocks, hidden) in
        [(Transform::Affine, 4, vec![16, 16]), (Transform::AffineSpline, 3, vec![12]), (Transform::Spline, 2, vec![])]
    {
        let mut cfg = maf_cfg(2, 2, blocks, &hidden, Activation::Tanh, Permutation::Reverse);
        cfg.transform = kind;
        cfg.spline_bound = 3.0;
        let _rng = fedhex::rng::seeded(31);
        let reverse = Maf::new(cfg.clone(), dev()).unwrap();
        scramble(&reverse, 0.3);
        let lu = Maf::new(fedhex::flow::MafConfig { permutation: Permutation::Lu, ..cfg }, dev()).unwrap();
        // Every block in natural order; each mixing exactly the reversal, no shift.
        assert!(lu.orders().iter().all(|o| *o == [0, 1]), "{:?}", lu.orders());
        assert_eq!(lu.mixings().len(), blocks - 1);
        for mix in lu.mixings() {
            assert_eq!(vec_of(&tch::no_grad(|| mix.weight())), [0.0, 1.0, 1.0, 0.0]);
            assert_eq!(vec_of(&mix.bias), [0.0, 0.0]);
            assert_eq!(mix.log_abs_det().double_value(&[]), 0.0);
        }
        copy_reversed_blocks(&reverse, &lu);
        let xs = Tensor::randn([128, 2], (Kind::Float, dev())) * 1.5;
        let cs = Tensor::randn([128, 2], (Kind::Float, dev()));
        let (u_rev, ld_rev) = tch::no_grad(|| reverse.forward(&xs, &cs));
        let (u_lu, ld_lu) = tch::no_grad(|| lu.forward(&xs, &cs));
        // An odd number of reversals between the blocks leaves the base point reversed.
        let u_lu = if (blocks - 1) % 2 == 1 { u_lu.flip([1]) } else { u_lu };
        let du = (&u_lu - &u_rev).abs().max().double_value(&[]);
        let dld = (&ld_lu - &ld_rev).abs().max().double_value(&[]);
        assert!(du < 1e-5 && dld < 1e-5, "{kind:?} blocks {blocks}: base points differ by {du}, log-dets by {dld}");
        // Relative: scrambled flows reach log-densities of order 1e3 (the
        // Reverse flow's log_prob may also take the fast CPU path, other rounding).
        let lp_rev = tch::no_grad(|| reverse.log_prob(&xs, &cs));
        let rel = ((tch::no_grad(|| lu.log_prob(&xs, &cs)) - &lp_rev).abs() / (lp_rev.abs() + 1.0)).max();
        let rel = rel.double_value(&[]);
        assert!(rel < 1e-5, "{kind:?} blocks {blocks}: log_prob differs by {rel} (relative)");
        // The flow is not trivially the identity: the comparison can tell blocks apart.
        assert!((&u_rev - &xs).abs().max().double_value(&[]) > 0.1);
        // And sampling inverts the same map.
        let us = Tensor::randn([64, 2], (Kind::Float, dev()));
        let us_lu = if (blocks - 1) % 2 == 1 { us.flip([1]) } else { us.shallow_clone() };
        let (x_rev, _) = reverse.inverse(&us, &cs.narrow(0, 0, 64));
        let (x_lu, _) = lu.inverse(&us_lu, &cs.narrow(0, 0, 64));
        let dx = (&x_lu - &x_rev).abs().max().double_value(&[]);
        assert!(dx < 1e-4, "{kind:?} blocks {blocks}: inverses differ by {dx}");
    }
}

#[test]
fn an_lu_flow_trains_its_mixing_and_integrates_to_one() {
    let events = small_grid();
    let mut cfg = fedhex::config::RunConfig::default();
    cfg.network.n_blocks = 3;
    cfg.network.hidden = vec![16, 16];
    cfg.network.permutation = Permutation::Lu;
    cfg.training.epochs = 4;
    cfg.training.batch_size = 128;
    cfg.training.lr_initial = 3e-3;
    cfg.training.device = "cpu".into();
    let out = fedhex::train::train_events(&cfg, &events).unwrap();
    let h = &out.history;
    assert!(h[h.len() - 1].val_nll < h[0].val_nll, "the LU model did not train");
    let flow = &out.model.flow;
    assert_eq!(flow.config().permutation, Permutation::Lu);
    assert_eq!(flow.mixings().len(), 2);
    // Every factor of every mixing moved away from its initial value.
    for (k, mix) in flow.mixings().iter().enumerate() {
        let moved = |t: Tensor, what: &str| {
            let m = t.abs().max().double_value(&[]);
            assert!(m > 1e-3, "mixing {k}: {what} not trained (max |change| {m})");
        };
        moved(mix.lower.tril(-1), "lower");
        moved(mix.upper.triu(1), "upper");
        moved(mix.log_diag.shallow_clone(), "log_diag");
        moved(mix.bias.shallow_clone(), "bias");
    }
    for label in [[0.25f32, 0.75], [0.5, 0.5]] {
        let (lo, hi) = sample_box(&out.model, label);
        let total = integrate_2d(&out.model, label, lo, hi, 500);
        assert!((total - 1.0).abs() < 0.01, "trained LU model at {label:?}: integral {total}");
    }
}
