//! Known acceptance cuts: a flow trained on truncated data with the truncated
//! likelihood learns the distribution *before* the cut (so the cut's effect at
//! each label is exact), generated events are cut alike, and data that violate
//! the declared cut are refused.

mod common;
use fedhex::config::RunConfig;
use fedhex::data::EventSet;
use fedhex::train::train_events;
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use tch::{Kind, Tensor};

const SIGMA: f64 = 0.3;
const LABELS: [f64; 9] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0];

/// x0 ~ N(c, 0.3) kept only where x0 > 0 (rejection), x1 ~ N(0, 1): at c = 0 the cut removes half.
fn truncated_data(n_per_label: usize) -> EventSet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let z = Normal::new(0.0, 1.0).unwrap();
    let (mut xs, mut ls) = (Vec::new(), Vec::new());
    for &c in &LABELS {
        let mut kept = 0;
        while kept < n_per_label {
            let x0 = c + SIGMA * z.sample(&mut rng);
            let x1 = z.sample(&mut rng);
            if x0 > 0.0 {
                xs.extend([x0 as f32, x1 as f32]);
                ls.push(c as f32);
                kept += 1;
            }
        }
    }
    let n = ls.len();
    EventSet::new(
        Array2::from_shape_vec((n, 2), xs).unwrap(),
        Array2::from_shape_vec((n, 1), ls).unwrap(),
        vec!["x".into(), "y".into()],
        vec!["c".into()],
        "truncated test data",
    )
    .unwrap()
}

fn cfg(acceptance: bool) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.network.n_blocks = 4;
    cfg.network.hidden = vec![32];
    cfg.network.transform = fedhex::flow::Transform::Affine;
    cfg.network.permutation = fedhex::flow::Permutation::Reverse;
    cfg.training.epochs = 10;
    cfg.training.batch_size = 256;
    cfg.training.lr_initial = 3e-3;
    cfg.training.lr_final = 3e-4;
    cfg.training.seed = 3;
    cfg.training.device = "cpu".into();
    cfg.training.threads = 1;
    cfg.outputs.progress = false;
    if acceptance {
        cfg.data.acceptance = vec!["x > 0".into()];
    }
    cfg
}

/// Fraction of the flow's own (uncut) draws at label `c` with x0 < 0, and their mean.
fn uncut_draws(model: &fedhex::flow::Model, c: f64) -> (f64, f64) {
    let n = 20_000;
    let cs = Tensor::full([n, 1], c, (Kind::Float, tch::Device::Cpu));
    let x0 = {
        let _rng = fedhex::rng::seeded(17);
        model.sample(&cs).select(1, 0)
    };
    let below = f64::try_from(x0.lt(0.0).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
    let mean = f64::try_from(x0.mean(Kind::Double)).unwrap();
    (below, mean)
}

#[test]
fn truncated_likelihood_learns_the_distribution_before_the_cut() {
    let data = truncated_data(1000);
    let with = train_events(&cfg(true), &data).unwrap().model;
    let without = train_events(&cfg(false), &data).unwrap().model;
    // At c = 0 the true uncut distribution has half its mass below the cut, mean 0.
    let (below_w, mean_w) = uncut_draws(&with, 0.0);
    let (below_wo, mean_wo) = uncut_draws(&without, 0.0);
    eprintln!("c=0: with acceptance: P(x<0) {below_w:.3}, mean {mean_w:.3}; without: {below_wo:.3}, {mean_wo:.3}");
    assert!((below_w - 0.5).abs() < 0.12, "with the truncated likelihood P(x<0) = {below_w}, want ~0.5");
    assert!(mean_w.abs() < 0.1, "with the truncated likelihood the uncut mean is {mean_w}, want ~0");
    assert!(below_wo < 0.2, "the plain likelihood should put little mass below the cut, got {below_wo}");
    // Far from the cut both agree with the truth.
    let (_, mean_far) = uncut_draws(&with, 2.0);
    assert!((mean_far - 2.0).abs() < 0.05, "mean at c = 2: {mean_far}");
    // Generated events are cut like the data: at c = 0 every one passes and their
    // mean is that of the truncated Gaussian, SIGMA·sqrt(2/π) ≈ 0.239.
    let (gen, draws) = fedhex::generate::sample_with_draws(&with, &[vec![0.0]], 20_000, 5, 4096, &[]).unwrap();
    // Half the flow's mass lies before the cut, outside the training range: those
    // draws are the acceptance's rejections, not support failures.
    let d = &draws[0];
    eprintln!("draws at c = 0: {d:?}");
    assert!((d.acceptance_fraction() - below_w).abs() < 0.03, "{d:?} vs P(x<0) = {below_w}");
    assert!(d.support_fraction() < 0.01, "{d:?}");
    let x0 = gen.samples.column(0);
    assert!(x0.iter().all(|&v| v > 0.0), "a generated event fails the acceptance");
    let mean = x0.iter().map(|&v| f64::from(v)).sum::<f64>() / x0.len() as f64;
    let want = SIGMA * (2.0 / std::f64::consts::PI).sqrt();
    assert!((mean - want).abs() < 0.04, "generated truncated mean {mean}, want {want}");
}

#[test]
fn data_outside_the_declared_acceptance_are_refused() {
    let mut data = truncated_data(50);
    data.samples[[7, 0]] = -0.5;
    let mut c = cfg(true);
    c.training.epochs = 1;
    let e = train_events(&c, &data).unwrap_err().to_string();
    assert!(e.contains("event") && e.contains("x = -0.5") && e.contains("acceptance"), "{e}");
    let mut c = cfg(false);
    c.training.epochs = 1;
    c.data.acceptance = vec!["z > 0".into()];
    let e = train_events(&c, &truncated_data(50)).unwrap_err().to_string();
    assert!(e.contains("no feature 'z'"), "{e}");
    c.data.acceptance = vec![];
    c.data.feature_transforms = [("x".to_string(), "log".to_string())].into_iter().collect();
    let mut bad = truncated_data(50);
    bad.samples[[3, 0]] = 0.0;
    let e = train_events(&c, &bad).unwrap_err().to_string();
    assert!(e.contains("'x'") && e.contains("log") && e.contains("> 0"), "{e}");
}

/// x0 ~ 0.7 N(1 + c/2, 0.3) + 0.3 N(-0.2, 0.3), kept where x0 > 0: three
/// quarters of the second component lie below the cut, where the kept events
/// say nothing about it; only the production's bookkeeping (generated vs.
/// accepted) tells how much is there.
/// Returns the kept events and the efficiency table's CSV.
fn hidden_component_data(n_per_label: usize) -> (EventSet, String) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let z = Normal::new(0.0, 1.0).unwrap();
    let (mut xs, mut ls) = (Vec::new(), Vec::new());
    let mut csv = String::from("c,generated,accepted\n");
    for c in [0.0f64, 1.0, 2.0] {
        let (mut kept, mut generated) = (0usize, 0usize);
        while kept < n_per_label {
            generated += 1;
            let u: f64 = rand::Rng::random(&mut rng);
            let x0 = if u < 0.7 { 1.0 + c / 2.0 } else { -0.2 } + SIGMA * z.sample(&mut rng);
            let x1 = z.sample(&mut rng);
            if x0 > 0.0 {
                xs.extend([x0 as f32, x1 as f32]);
                ls.push(c as f32);
                kept += 1;
            }
        }
        csv.push_str(&format!("{c},{generated},{kept}\n"));
    }
    let n = ls.len();
    let set = EventSet::new(
        Array2::from_shape_vec((n, 2), xs).unwrap(),
        Array2::from_shape_vec((n, 1), ls).unwrap(),
        vec!["x".into(), "y".into()],
        vec!["c".into()],
        "hidden-component test data",
    )
    .unwrap();
    (set, csv)
}

/// With the acceptance efficiency per label the censored likelihood learns how
/// much of the distribution the cut removed (here 0.3 · Φ(0.2/0.3) ≈ 22.4 %); the truncated
/// likelihood cannot, and a missing label or a bad table is a clear error.
#[test]
fn censored_likelihood_learns_how_much_the_cut_removed() {
    // 0.3 P(N(-0.2, 0.3) < 0) + 0.7 P(N(1, 0.3) < 0) (the latter ~3e-4).
    const TRUTH: f64 = 0.3 * 0.747_507 + 0.7 * 0.000_429;
    let (data, csv) = hidden_component_data(2000);
    let dir = common::tmpdir();
    let table = dir.path().join("acceptance.csv");
    std::fs::write(&table, &csv).unwrap();
    let mut with = cfg(true);
    with.data.acceptance_efficiency = Some(table.clone());
    with.training.epochs = 30;
    let censored = train_events(&with, &data).unwrap().model;
    let truncated = train_events(&cfg(true), &data).unwrap().model;
    for c in [0.0, 1.0, 2.0] {
        let (below_c, _) = uncut_draws(&censored, c);
        let (below_t, _) = uncut_draws(&truncated, c);
        eprintln!("c={c}: P(x<0) censored {below_c:.3}, truncated {below_t:.3} (truth {TRUTH:.3})");
        assert!((below_c - TRUTH).abs() < 0.05, "c = {c}: censored likelihood P(x<0) = {below_c}, want {TRUTH}");
        assert!(below_t < 0.12, "c = {c}: the truncated likelihood should not find the hidden mass, got {below_t}");
    }
    // Generated events are still cut like the data.
    let gen = fedhex::generate::sample_at_labels(&censored, &[vec![0.5]], 5000, 5, 4096).unwrap();
    assert!(gen.samples.column(0).iter().all(|&v| v > 0.0), "a generated event fails the acceptance");
    // A training label missing from the table.
    std::fs::write(&table, "c,efficiency\n0,0.7\n1,0.7\n").unwrap();
    let mut short = with.clone();
    short.training.epochs = 1;
    let e = train_events(&short, &data).unwrap_err().to_string();
    assert!(e.contains("acceptance.csv") && e.contains("no efficiency") && e.contains("2.0"), "{e}");
    // Efficiencies without the cuts they belong to.
    let mut no_cut = cfg(false);
    no_cut.data.acceptance_efficiency = Some(table);
    let e = no_cut.validate().unwrap_err().to_string();
    assert!(e.contains("data.acceptance_efficiency") && e.contains("data.acceptance"), "{e}");
}
