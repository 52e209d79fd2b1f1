//! The self-describing model file: exact round trips for any depth, and clear
//! errors for corrupt or mismatched files.

mod common;
use common::*;
use fedhex::flow::model::{MODEL_JSON, MODEL_WEIGHTS};
use fedhex::flow::Model;
use tch::{Kind, Tensor};

#[test]
fn save_load_round_trip_is_exact_for_any_depth() {
    for hidden in [vec![16], vec![16, 16], vec![8, 8, 8]] {
        for blocks in [1, 2, 5] {
            let model = random_model(blocks, &hidden, 100 + blocks as i64);
            let dir = tmpdir();
            let path = dir.path().join("m");
            model.save(&path).unwrap();
            let loaded = Model::load(&path, dev()).unwrap();
            // Every draw under the seeded lock: an unseeded one could land inside
            // another test's seeded section and change its samples.
            let (xs, cs) = {
                let _rng = fedhex::rng::seeded(40 + blocks as u64);
                (Tensor::randn([64, 2], (Kind::Float, dev())), Tensor::rand([64, 2], (Kind::Float, dev())))
            };
            let a = vec_of(&tch::no_grad(|| model.log_prob(&xs, &cs)));
            let b = vec_of(&tch::no_grad(|| loaded.log_prob(&xs, &cs)));
            assert_eq!(a, b, "log_prob differs after load (hidden {hidden:?}, blocks {blocks})");
            let sa = {
                let _rng = fedhex::rng::seeded(9);
                vec_of(&model.sample(&cs))
            };
            let sb = {
                let _rng = fedhex::rng::seeded(9);
                vec_of(&loaded.sample(&cs))
            };
            assert_eq!(sa, sb, "samples differ after load (hidden {hidden:?}, blocks {blocks})");
            assert_eq!(loaded.flow.config(), model.flow.config());
            assert_eq!(loaded.features, model.features);
            assert_eq!(loaded.labels, model.labels);
        }
    }
}

#[test]
fn spline_models_save_and_load_exactly() {
    for kind in [fedhex::flow::Transform::Spline, fedhex::flow::Transform::AffineSpline] {
        spline_model_round_trip(kind);
    }
}

fn spline_model_round_trip(kind: fedhex::flow::Transform) {
    let model = random_model_with(kind, 3, &[16, 16], 5);
    let dir = tmpdir();
    let path = dir.path().join("m");
    model.save(&path).unwrap();
    let loaded = Model::load(&path, dev()).unwrap();
    assert_eq!(loaded.flow.config(), model.flow.config());
    assert_eq!(loaded.flow.config().transform, kind);
    let (xs, cs) = {
        let _rng = fedhex::rng::seeded(43);
        (Tensor::randn([64, 2], (Kind::Float, dev())) * 2.0, Tensor::rand([64, 2], (Kind::Float, dev())))
    };
    let a = vec_of(&tch::no_grad(|| model.log_prob(&xs, &cs)));
    assert_eq!(a, vec_of(&tch::no_grad(|| loaded.log_prob(&xs, &cs))));
    let draw = |m: &Model| {
        let _rng = fedhex::rng::seeded(9);
        vec_of(&m.sample(&cs))
    };
    assert_eq!(draw(&model), draw(&loaded));
    // Guard: an affine model from the same seed gives other densities.
    let affine = random_model(3, &[16, 16], 5);
    assert_ne!(a, vec_of(&tch::no_grad(|| affine.log_prob(&xs, &cs))));
}

#[test]
fn lu_models_save_and_load_exactly() {
    use fedhex::flow::{Permutation, Transform};
    for kind in [Transform::Affine, Transform::AffineSpline] {
        let model = random_model_perm(kind, Permutation::Lu, 3, &[16, 16], 5);
        assert!(mixing_distance(&model.flow).0 > 0.3, "{kind:?}: mixings close to the reversal");
        let dir = tmpdir();
        let path = dir.path().join("m");
        model.save(&path).unwrap();
        let json = std::fs::read_to_string(path.join(MODEL_JSON)).unwrap();
        assert!(json.contains("\"permutation\": \"lu\""), "{json}");
        let loaded = Model::load(&path, dev()).unwrap();
        assert_eq!(loaded.flow.config(), model.flow.config());
        assert_eq!(loaded.flow.orders(), model.flow.orders());
        // The mixings are stored by name and come back bit for bit.
        let vars = loaded.flow.var_store().variables();
        for k in 0..2 {
            for part in ["lower", "upper", "log_diag", "bias"] {
                let name = format!("mix{k}.{part}");
                let want = &model.flow.var_store().variables()[&name];
                assert_eq!(vec_of(&vars[&name]), vec_of(want), "{kind:?}: {name}");
            }
        }
        let (xs, cs) = {
            let _rng = fedhex::rng::seeded(43);
            (Tensor::randn([64, 2], (Kind::Float, dev())) * 2.0, Tensor::rand([64, 2], (Kind::Float, dev())))
        };
        let a = vec_of(&tch::no_grad(|| model.log_prob(&xs, &cs)));
        assert_eq!(a, vec_of(&tch::no_grad(|| loaded.log_prob(&xs, &cs))), "{kind:?}: log_prob differs after load");
        let draw = |m: &Model| {
            let _rng = fedhex::rng::seeded(9);
            vec_of(&m.sample(&cs))
        };
        assert_eq!(draw(&model), draw(&loaded), "{kind:?}: samples differ after load");
        // Guard: the same model without mixings (Reverse, same seed) gives other densities.
        let reverse = random_model_perm(kind, Permutation::Reverse, 3, &[16, 16], 5);
        assert_ne!(a, vec_of(&tch::no_grad(|| reverse.log_prob(&xs, &cs))), "{kind:?}");
    }
}

#[test]
fn a_model_file_from_before_splines_and_lu_still_loads() {
    // Files written before spline blocks and learned mixings lack the spline
    // fields and have no `mix*` tensors; they load as affine, reverse-order flows.
    let model = random_model(3, &[16], 7);
    let dir = tmpdir();
    let path = dir.path().join("m");
    model.save(&path).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join(MODEL_JSON)).unwrap()).unwrap();
    let flow = meta["flow"].as_object_mut().unwrap();
    for key in ["transform", "spline_bins", "spline_bound"] {
        assert!(flow.remove(key).is_some(), "the model file has no '{key}' to remove");
    }
    assert_eq!(flow["permutation"], "reverse");
    std::fs::write(path.join(MODEL_JSON), serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    let loaded = Model::load(&path, dev()).unwrap();
    assert_eq!(loaded.flow.config(), model.flow.config());
    assert!(loaded.flow.mixings().is_empty());
    assert!(!loaded.flow.var_store().variables().keys().any(|n| n.starts_with("mix")));
    let (xs, cs) = {
        let _rng = fedhex::rng::seeded(44);
        (Tensor::randn([32, 2], (Kind::Float, dev())), Tensor::rand([32, 2], (Kind::Float, dev())))
    };
    assert_eq!(vec_of(&tch::no_grad(|| model.log_prob(&xs, &cs))), vec_of(&tch::no_grad(|| loaded.log_prob(&xs, &cs))));
    // The same weights described as an LU flow lack its mixings: refused, naming one.
    meta["flow"]["permutation"] = serde_json::json!("lu");
    std::fs::write(path.join(MODEL_JSON), serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    let e = err_of(&path);
    assert!(e.contains("missing") && e.contains("mix"), "{e}");
}

#[test]
fn a_different_model_gives_different_results() {
    // Guards the round-trip test: two models must not agree by accident.
    let a = random_model(2, &[16], 1);
    let b = random_model(2, &[16], 2);
    let (xs, cs) = {
        let _rng = fedhex::rng::seeded(41);
        (Tensor::randn([8, 2], (Kind::Float, dev())), Tensor::rand([8, 2], (Kind::Float, dev())))
    };
    assert_ne!(vec_of(&tch::no_grad(|| a.log_prob(&xs, &cs))), vec_of(&tch::no_grad(|| b.log_prob(&xs, &cs))));
}

fn err_of(path: &std::path::Path) -> String {
    Model::load(path, dev()).expect_err("load must fail").to_string()
}

#[test]
fn corrupt_or_mismatched_model_files_are_refused_clearly() {
    let dir = tmpdir();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    random_model(2, &[16], 1).save(&a).unwrap();
    random_model(3, &[16, 16], 2).save(&b).unwrap();

    assert!(err_of(&dir.path().join("nope")).contains("no such model directory"));

    // Weights of another model.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(a.join(MODEL_JSON), mixed.join(MODEL_JSON)).unwrap();
    std::fs::copy(b.join(MODEL_WEIGHTS), mixed.join(MODEL_WEIGHTS)).unwrap();
    let e = err_of(&mixed);
    assert!(e.contains("does not match model.json"), "{e}");

    // Flipped byte in the weights.
    let mut bytes = std::fs::read(a.join(MODEL_WEIGHTS)).unwrap();
    let k = bytes.len() - 10;
    bytes[k] ^= 0x40;
    std::fs::write(mixed.join(MODEL_WEIGHTS), &bytes).unwrap();
    assert!(err_of(&mixed).contains("digest"));

    // Truncated description.
    let json = std::fs::read_to_string(a.join(MODEL_JSON)).unwrap();
    std::fs::write(mixed.join(MODEL_JSON), &json[..json.len() / 2]).unwrap();
    let e = err_of(&mixed);
    assert!(e.contains("model.json") && e.contains("not a valid model description"), "{e}");

    // Description whose architecture does not fit the weights (digest patched to match).
    let mut meta: serde_json::Value = serde_json::from_str(&json).unwrap();
    meta["flow"]["hidden"] = serde_json::json!([17]);
    std::fs::write(mixed.join(MODEL_JSON), serde_json::to_string(&meta).unwrap()).unwrap();
    std::fs::copy(a.join(MODEL_WEIGHTS), mixed.join(MODEL_WEIGHTS)).unwrap();
    let e = err_of(&mixed);
    assert!(e.contains("shape"), "{e}");

    // Missing weights file.
    std::fs::remove_file(mixed.join(MODEL_WEIGHTS)).unwrap();
    let e = err_of(&mixed);
    assert!(e.contains(MODEL_WEIGHTS), "{e}");
}

#[test]
fn saving_over_an_existing_model_replaces_it_whole() {
    let dir = tmpdir();
    let p = dir.path().join("m");
    random_model(2, &[16], 1).save(&p).unwrap();
    let second = random_model(4, &[8, 8], 2);
    second.save(&p).unwrap();
    let loaded = Model::load(&p, dev()).unwrap();
    assert_eq!(loaded.flow.config().n_blocks, 4);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary directories left behind: {leftovers:?}");
}

#[test]
fn a_model_with_every_preprocessing_option_saves_and_loads_exactly() {
    use fedhex::data::transform::{Acceptance, Step, Transforms};
    let chains = [
        vec![Step::DivLabel { label: 1 }, Step::Log],
        vec![Step::Bounded { lo: -5.0 }],
        vec![Step::Logit { lo: -10.0, hi: 10.0 }],
        vec![Step::Shift { by: 0.5 }, Step::Scale { by: 2.0 }, Step::SubLabel { label: 0 }],
    ];
    for chain in chains {
        let ft = Transforms { chains: vec![chain.clone(), vec![]] };
        let lt = Transforms { chains: vec![vec![Step::Shift { by: -2.0 }, Step::Log], vec![]] };
        let acc = vec![Acceptance { feature: 1, lo: -5.0, hi: f64::INFINITY, expr: None }];
        let model = random_model(3, &[16], 7).with_preprocessing(ft, lt, acc).unwrap();
        let dir = tmpdir();
        let path = dir.path().join("m");
        model.save(&path).unwrap();
        let loaded = Model::load(&path, dev()).unwrap();
        assert_eq!(loaded.feature_transforms, model.feature_transforms, "{chain:?}");
        assert_eq!(loaded.label_transforms, model.label_transforms);
        assert_eq!(loaded.acceptance, model.acceptance);
        let (xs, cs) = {
            let _rng = fedhex::rng::seeded(42);
            (
                Tensor::rand([64, 2], (Kind::Float, dev())) * 0.9 + 0.05,
                Tensor::rand([64, 2], (Kind::Float, dev())) + 0.5,
            )
        };
        let a = vec_of(&tch::no_grad(|| model.log_prob(&xs, &cs)));
        let b = vec_of(&tch::no_grad(|| loaded.log_prob(&xs, &cs)));
        assert!(a.iter().all(|v| v.is_finite()), "{chain:?}: {a:?}");
        assert_eq!(a, b, "log_prob differs after load ({chain:?})");
        let sample = |m: &Model| {
            let _rng = fedhex::rng::seeded(3);
            vec_of(&m.sample(&cs))
        };
        assert_eq!(sample(&model), sample(&loaded), "samples differ after load ({chain:?})");
        // The raw-space density includes the preprocessing Jacobian: compare the
        // stated log|det dz/dx| with autograd (every stage is elementwise, so the
        // gradient of sum(z) holds the diagonal).
        let x = xs.to_device(dev()).set_requires_grad(true);
        let (z, ldj) = model.to_flow_space(&x, &cs);
        let g = Tensor::run_backward(&[z.sum(Kind::Float)], &[&x], false, false);
        let want = vec_of(&g[0].abs().log().sum_dim_intlist(1, false, Kind::Float));
        for (got, w) in vec_of(&ldj).iter().zip(&want) {
            assert!((got - w).abs() < 1e-3 * (1.0 + w.abs()), "{chain:?}: log|det| {got} vs autograd {w}");
        }
    }
}
