//! Ensembles (`Model::ensemble`, `fedhex ensemble`): the density is the
//! equal-weight mixture of the members', sampling picks a member per event,
//! the directory round-trips exactly, and bad combinations are refused clearly.

mod common;
use common::*;
use fedhex::flow::model::MODEL_JSON;
use fedhex::flow::Model;
use std::process::Command;
use tch::{Kind, Tensor};

/// A random model whose raw features are those of `random_model(.., seed)`
/// moved by `shift` (its feature whitening's range moved), so that events of
/// two such models with different shifts can be told apart.
fn shifted_model(seed: i64, shift: f64) -> Model {
    let mut m = random_model(2, &[16], seed);
    for d in &mut m.features.dims {
        d.min += shift;
        d.max += shift;
    }
    m
}

fn labels(n: i64) -> Tensor {
    let _rng = fedhex::rng::seeded(5);
    Tensor::rand([n, 2], (Kind::Float, dev()))
}

#[test]
fn the_density_is_the_mixture_of_the_members() {
    let a = random_model(2, &[16], 1);
    let b = random_model(3, &[16, 16], 2);
    let c = random_model(2, &[8], 3);
    let (xs, cs) = {
        let _rng = fedhex::rng::seeded(7);
        (Tensor::randn([64, 2], (Kind::Float, dev())), Tensor::rand([64, 2], (Kind::Float, dev())))
    };
    let lp = |m: &Model| vec_of(&tch::no_grad(|| m.log_prob(&xs, &cs)));
    let (la, lb, lc) = (lp(&a), lp(&b), lp(&c));
    let ens = Model::ensemble(vec![("a".into(), a), ("b".into(), b), ("c".into(), c)]).unwrap();
    assert_eq!(ens.n_members(), 3);
    let got = lp(&ens);
    for i in 0..la.len() {
        let want = ((f64::from(la[i]).exp() + f64::from(lb[i]).exp() + f64::from(lc[i]).exp()) / 3.0).ln();
        assert!((f64::from(got[i]) - want).abs() < 1e-4 * want.abs().max(1.0), "row {i}: {} against {want}", got[i]);
    }
}

#[test]
fn sampling_draws_each_member_equally_often_and_is_seeded() {
    let ens =
        Model::ensemble(vec![("lo".into(), shifted_model(1, 0.0)), ("hi".into(), shifted_model(2, 100.0))]).unwrap();
    let cs = labels(4000);
    let draw = |seed| {
        let _rng = fedhex::rng::seeded(seed);
        vec_of(&ens.sample(&cs))
    };
    let x = draw(11);
    assert_eq!(x, draw(11), "the same seed must give the same events");
    assert_ne!(x, draw(12), "another seed must give other events");
    let rows: Vec<&[f32]> = x.chunks_exact(2).collect();
    let high = rows.iter().filter(|r| r[0] > 50.0).count();
    // Every event is one member's: both of its features on the same side.
    assert!(rows.iter().all(|r| (r[0] > 50.0) == (r[1] > 50.0)), "an event mixes two members");
    // Binomial(4000, 1/2): standard deviation 32 events; 5 of them allowed.
    assert!((high as i64 - 2000).abs() < 160, "{high} of 4000 events from the second member");
    // The interleaving is per event, not in blocks: the first events already hold both.
    assert!(rows[..64].iter().any(|r| r[0] > 50.0) && rows[..64].iter().any(|r| r[0] < 50.0));

    // The support check is each member's own: both members' events pass theirs.
    let (xs, ok) = {
        let _rng = fedhex::rng::seeded(13);
        ens.sample_in_support(&cs, 0.5)
    };
    let ok = Vec::<bool>::try_from(ok.to_device(tch::Device::Cpu)).unwrap();
    let xs = vec_of(&xs);
    let inside_hi = xs.chunks_exact(2).zip(&ok).filter(|(r, &k)| k && r[0] > 50.0).count();
    let inside_lo = xs.chunks_exact(2).zip(&ok).filter(|(r, &k)| k && r[0] < 50.0).count();
    assert!(inside_hi > 1500 && inside_lo > 1500, "kept {inside_lo} low and {inside_hi} high events");

    // Far from one member the mixture is the other's density halved.
    let lo = shifted_model(1, 0.0);
    let pts = {
        let _rng = fedhex::rng::seeded(3);
        lo.sample(&cs.narrow(0, 0, 100))
    };
    let want = vec_of(&tch::no_grad(|| lo.log_prob(&pts, &cs.narrow(0, 0, 100))));
    let got = vec_of(&tch::no_grad(|| ens.log_prob(&pts, &cs.narrow(0, 0, 100))));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - (w - std::f32::consts::LN_2)).abs() < 1e-4, "{g} against {w} - ln 2");
    }
}

#[test]
fn the_label_range_is_the_one_every_member_was_trained_on() {
    let a = random_model(2, &[16], 1);
    let mut b = random_model(2, &[16], 2);
    b.labels.dims[0].min += 0.25;
    b.labels.dims[1].max -= 0.25;
    let (ra, rb) = (a.label_ranges(), b.label_ranges());
    assert!(rb[0][0] > ra[0][0] && rb[1][1] < ra[1][1], "{ra:?} {rb:?}");
    let ens = Model::ensemble(vec![("a".into(), a), ("b".into(), b)]).unwrap();
    let r = ens.label_ranges();
    assert_eq!(r[0], [rb[0][0], ra[0][1].min(rb[0][1])]);
    assert_eq!(r[1], [ra[1][0].max(rb[1][0]), rb[1][1]]);
}

#[test]
fn an_ensemble_saves_and_loads_exactly_and_flattens() {
    let ab = Model::ensemble(vec![("a".into(), random_model(2, &[16], 1)), ("b".into(), random_model(2, &[16], 2))])
        .unwrap();
    let abc = Model::ensemble(vec![("ab".into(), ab), ("c".into(), random_model(4, &[8, 8], 3))]).unwrap();
    assert_eq!(abc.n_members(), 3, "a nested ensemble is flattened");
    let dir = tmpdir();
    let path = dir.path().join("e");
    abc.save(&path).unwrap();
    let loaded = Model::load(&path, dev()).unwrap();
    assert_eq!(loaded.n_members(), 3);
    assert_eq!(loaded.members[1].flow.config().n_blocks, 4);
    let (xs, cs) = {
        let _rng = fedhex::rng::seeded(8);
        (Tensor::randn([32, 2], (Kind::Float, dev())), Tensor::rand([32, 2], (Kind::Float, dev())))
    };
    let lp = |m: &Model| vec_of(&tch::no_grad(|| m.log_prob(&xs, &cs)));
    assert_eq!(lp(&abc), lp(&loaded));
    let s = |m: &Model| {
        let _rng = fedhex::rng::seeded(4);
        vec_of(&m.sample(&cs))
    };
    assert_eq!(s(&abc), s(&loaded));
    // Each member's directory is a single model of its own.
    let third = Model::load(&path.join("member-2"), dev()).unwrap();
    assert_eq!(third.n_members(), 1);
    assert_eq!(lp(&third), lp(&abc.members[1]));
    // A reader of single models only is told the layout is newer.
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join(MODEL_JSON)).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 2);
    assert_eq!(meta["members"], serde_json::json!(["member-1", "member-2"]));
}

#[test]
fn bad_ensembles_are_refused_naming_the_model() {
    let e = Model::ensemble(vec![("only/one".into(), random_model(2, &[16], 1))]).unwrap_err().to_string();
    assert!(e.contains("at least two") && e.contains("only/one"), "{e}");

    let mut other = random_model(2, &[16], 2);
    other.features.dims[1].name = "y1".into();
    let e = Model::ensemble(vec![("first".into(), random_model(2, &[16], 1)), ("second/model".into(), other)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("second/model") && e.contains("features") && e.contains("y1"), "{e}");

    let cut = random_model(2, &[16], 2)
        .with_preprocessing(
            Default::default(),
            Default::default(),
            vec![fedhex::data::transform::Acceptance { feature: 0, lo: 0.0, hi: f64::INFINITY, expr: None }],
        )
        .unwrap();
    let e = Model::ensemble(vec![("first".into(), random_model(2, &[16], 1)), ("cut".into(), cut)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut") && e.contains("acceptance"), "{e}");

    // Damaged directories: a member missing, a member that is itself an
    // ensemble, a member name that leaves the directory.
    let dir = tmpdir();
    let path = dir.path().join("e");
    Model::ensemble(vec![("a".into(), random_model(2, &[16], 1)), ("b".into(), random_model(2, &[16], 2))])
        .unwrap()
        .save(&path)
        .unwrap();
    let json = path.join(MODEL_JSON);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let with_members = |members: serde_json::Value| {
        let mut m = meta.clone();
        m["members"] = members;
        std::fs::write(&json, serde_json::to_vec(&m).unwrap()).unwrap();
        Model::load(&path, dev()).expect_err("load must fail").to_string()
    };
    let e = with_members(serde_json::json!(["member-1", "member-9"]));
    assert!(e.contains("member-9"), "{e}");
    let e = with_members(serde_json::json!(["../e"]));
    assert!(e.contains("'../e'") && e.contains("not a subdirectory"), "{e}");
    std::fs::write(&json, serde_json::to_vec(&meta).unwrap()).unwrap();
    let member_json = path.join("member-1").join(MODEL_JSON);
    let mut inner: serde_json::Value = serde_json::from_slice(&std::fs::read(&member_json).unwrap()).unwrap();
    inner["members"] = serde_json::json!(["x"]);
    std::fs::write(&member_json, serde_json::to_vec(&inner).unwrap()).unwrap();
    let e = Model::load(&path, dev()).expect_err("load must fail").to_string();
    assert!(e.contains("member-1") && e.contains("members of its own"), "{e}");
}

fn fedhex(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fedhex")).args(args).output().expect("run fedhex")
}

#[test]
fn fedhex_ensemble_combines_model_directories_for_sample() {
    let dir = tmpdir();
    let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    shifted_model(1, 0.0).save(dir.path().join("a").as_path()).unwrap();
    shifted_model(2, 100.0).save(dir.path().join("b").as_path()).unwrap();
    let out = fedhex(&["ensemble", "--out", &p("e"), &p("a"), &p("b")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ensemble of 2 flows"));
    let out = fedhex(&["sample", "--model", &p("e"), "--label", "0.5,0.5", "-n", "2000", "--out", &p("s.npz")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = fedhex::data::npy::read_npz(&dir.path().join("s.npz"), vec![], vec![]).unwrap();
    let x0 = events.samples.column(0);
    let high = x0.iter().filter(|&&v| v > 50.0).count();
    assert!((high as i64 - 1000).abs() < 120, "{high} of 2000 sampled events from the second member");

    // A model of other features: refused, naming it, and nothing written.
    let mut other = random_model(2, &[16], 3);
    other.features.dims[0].name = "q".into();
    other.save(dir.path().join("c").as_path()).unwrap();
    let out = fedhex(&["ensemble", "--out", &p("bad"), &p("a"), &p("c")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&p("c")) && err.contains("features"), "{err}");
    assert!(!dir.path().join("bad").exists(), "partial output left behind");
    // A missing model: named.
    let out = fedhex(&["ensemble", "--out", &p("bad"), &p("a"), &p("nope")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!dir.path().join("bad").exists());
}
