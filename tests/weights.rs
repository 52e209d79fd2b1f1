//! Event weights (issue #20): weighted training (`Σ wᵢ (−log pᵢ) / Σ wᵢ` per
//! label), negative weights, and the errors of bad weights. Each check is
//! paired with a control that shows it could fail: the same data trained
//! without their weights give a visibly different model.

mod common;
use common::*;
use fedhex::data::EventSet;
use fedhex::flow::Model;
use fedhex::train::train_events;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use tch::{Kind, Tensor};

/// Two correlated Gaussian features around each label of a 3 × 3 grid (σ = 0.1).
fn grid(n_per_label: usize, seed: u64) -> EventSet {
    use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
    GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Full { sigma: 0.1, rho: 0.5 },
        n_per_label,
        seed,
    }
    .generate()
    .unwrap()
}

/// Mean and standard deviation of each feature of `n` model samples at `label`.
fn sampled_moments(m: &Model, label: &[f32], n: i64) -> Vec<(f64, f64)> {
    let _rng = fedhex::rng::seeded(99);
    let l = label.len() as i64;
    let cs = Tensor::from_slice(label).view([1, l]).expand([n, l], false);
    let xs = tch::no_grad(|| m.sample(&cs)).to_kind(Kind::Double);
    (0..xs.size()[1])
        .map(|j| {
            let c = xs.select(1, j);
            (c.mean(Kind::Double).double_value(&[]), c.std(true).double_value(&[]))
        })
        .collect()
}

/// Median, half the 16–84 % interquantile range, and the fraction beyond
/// `|x| > edge` of each feature of `n` model samples at `label`: robust to the
/// far tails a flow may put where the weights leave it unconstrained.
fn sampled_quantiles(m: &Model, label: &[f32], n: i64, edge: f64) -> Vec<(f64, f64, f64)> {
    let _rng = fedhex::rng::seeded(99);
    let l = label.len() as i64;
    let cs = Tensor::from_slice(label).view([1, l]).expand([n, l], false);
    let xs = tch::no_grad(|| m.sample(&cs)).to_kind(Kind::Double);
    (0..xs.size()[1])
        .map(|j| {
            let mut v: Vec<f64> = Vec::<f64>::try_from(xs.select(1, j).contiguous()).unwrap();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            let outside = v.iter().filter(|x| x.abs() > edge).count() as f64 / v.len() as f64;
            (q(0.5), (q(0.8413) - q(0.1587)) / 2.0, outside)
        })
        .collect()
}

/// Mean `−log p` of `events` under `m`.
fn mean_nll(m: &Model, events: &EventSet) -> f64 {
    let flat = |a: &Array2<f32>| {
        let v: Vec<f32> = a.iter().copied().collect();
        Tensor::from_slice(&v).view([a.nrows() as i64, a.ncols() as i64])
    };
    let lp = tch::no_grad(|| m.log_prob(&flat(&events.samples), &flat(&events.labels)));
    -lp.mean(Kind::Double).double_value(&[])
}

/// Half of the events (those right of their label in the first feature) are
/// duplicated, each copy with weight ½; the others weigh 1. The weighted
/// model must match the model of the original events; trained without the
/// weights, the same events put 2/3 of the mass to the right (a shift of
/// 0.27 σ), which the check sees.
#[test]
fn duplicated_events_at_half_weight_train_the_original_model() {
    let original = grid(1000, 21);
    let mut rows = Vec::new();
    let mut w = Vec::new();
    for i in 0..original.len() {
        let right = original.samples[[i, 0]] > original.labels[[i, 0]];
        rows.push(i);
        w.push(if right { 0.5 } else { 1.0 });
        if right {
            rows.push(i);
            w.push(0.5);
        }
    }
    let dup = original.select(&rows);
    assert!(dup.len() > original.len() * 14 / 10, "about half the events are duplicated");
    let weighted = dup.clone().with_weights(Array1::from(w), "test").unwrap();

    let mut cfg = small_cfg(12, 3);
    cfg.data.validation_fraction = 0.1;
    let m_orig = train_events(&cfg, &original).unwrap();
    let m_weighted = train_events(&cfg, &weighted).unwrap();
    let m_unweighted = train_events(&cfg, &dup).unwrap();

    // The validation NLL is the weighted mean: comparable with the original's.
    let (v_o, v_w) = (m_orig.history.last().unwrap().val_nll, m_weighted.history.last().unwrap().val_nll);
    assert!(v_o.is_finite() && v_w.is_finite());
    assert!((v_o - v_w).abs() < 0.1, "validation NLL: original {v_o:.4}, weighted {v_w:.4}");

    let test = grid(1000, 77);
    let nll = |m: &Model| mean_nll(m, &test);
    let (n_o, n_w, n_u) = (nll(&m_orig.model), nll(&m_weighted.model), nll(&m_unweighted.model));
    eprintln!("NLL on independent events: original {n_o:.4}, weighted {n_w:.4}, unweighted duplicates {n_u:.4}");
    assert!((n_w - n_o).abs() < 0.05, "weighted model's NLL {n_w:.4} vs original {n_o:.4}");

    let mut worst_w: f64 = 0.0;
    let mut least_u = f64::INFINITY;
    for label in [[0.5f32, 0.5], [0.0, 1.0], [1.0, 0.5]] {
        let o = sampled_moments(&m_orig.model, &label, 20_000);
        let wm = sampled_moments(&m_weighted.model, &label, 20_000);
        let u = sampled_moments(&m_unweighted.model, &label, 20_000);
        eprintln!("label {label:?}: x0 mean original {:.4}, weighted {:.4}, unweighted {:.4}", o[0].0, wm[0].0, u[0].0);
        worst_w = worst_w.max((wm[0].0 - o[0].0).abs() / 0.1);
        least_u = least_u.min((u[0].0 - o[0].0).abs() / 0.1);
        for j in 0..2 {
            assert!(
                (wm[j].1 / o[j].1 - 1.0).abs() < 0.1,
                "label {label:?} feature {j}: width {} vs {}",
                wm[j].1,
                o[j].1
            );
        }
    }
    // Statistics of 1000 events per label and training noise: ≲ 0.1 σ; the
    // unweighted duplicates are 0.27 σ off.
    assert!(worst_w < 0.12, "weighted model's mean is {worst_w:.3} σ from the original's");
    assert!(least_u > 0.2, "control: unweighted duplicates only {least_u:.3} σ off (the test could not fail)");
}

/// Signal plus background, minus an independent background sample at weight
/// −1 (a sideband subtraction): the weighted model recovers the signal's
/// shape; without the weights it learns the sum. Without the floor on
/// negatively weighted events (`NEGATIVE_WEIGHT_NLL_CEIL`) this loss ran to
/// −7·10¹¹ and the flow put 89 % of its mass far outside the data.
#[test]
fn negative_weights_subtract_a_background() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n_sig, n_bkg) = (6000, 3000);
    let normal = Normal::new(0.0f32, 0.1).unwrap();
    let mut x = Vec::new();
    let mut w = vec![1.0f32; n_sig];
    for _ in 0..n_sig {
        x.extend([normal.sample(&mut rng), normal.sample(&mut rng)]);
    }
    for sign in [1.0f32, -1.0] {
        for _ in 0..n_bkg {
            x.extend([rng.random_range(-0.6f32..0.6), rng.random_range(-0.6f32..0.6)]);
            w.push(sign);
        }
    }
    let n = w.len();
    let samples = Array2::from_shape_vec((n, 2), x).unwrap();
    let labels = Array2::from_elem((n, 1), 1.0f32);
    let plain = EventSet::new(samples, labels, vec![], vec![], "test").unwrap();
    let weighted = plain.clone().with_weights(Array1::from(w), "test").unwrap();

    let mut cfg = small_cfg(15, 4);
    cfg.data.validation_fraction = 0.0;
    let m_u = train_events(&cfg, &plain).unwrap();
    let mu = sampled_quantiles(&m_u.model, &[1.0], 20_000, 0.6);
    // As read, and averaged over 16 neighbours (data.weight_smoothing).
    for k in [0, 16] {
        cfg.data.weight_smoothing = k;
        let m_w = train_events(&cfg, &weighted).unwrap();
        let mw = sampled_quantiles(&m_w.model, &[1.0], 20_000, 0.6);
        eprintln!("k = {k}: weighted (median, width, outside): {mw:?}; unweighted: {mu:?}");
        for j in 0..2 {
            assert!(mw[j].0.abs() < 0.02, "k = {k}, feature {j}: weighted median {}", mw[j].0);
            assert!(
                (mw[j].1 / 0.1 - 1.0).abs() < 0.15,
                "k = {k}, feature {j}: weighted width {} (signal 0.1)",
                mw[j].1
            );
            assert!(mw[j].2 < 0.01, "k = {k}, feature {j}: weighted model puts {} beyond the data", mw[j].2);
            // Control: the unweighted sum is much wider (the flat background).
            assert!(mu[j].1 > 0.15, "control: unweighted width {}", mu[j].1);
        }
        // The floor bounds the loss: it stays near the signal's entropy, not minus infinity.
        let last = m_w.history.last().unwrap().train_nll;
        assert!(last.is_finite() && last > 0.0, "k = {k}: training loss {last}");
    }
}

/// A label whose weights sum to zero or less is an error naming it; an
/// unweighted set and a weighted one with unit weights train the same model
/// up to the weighted pass's arithmetic (same loss to float precision).
#[test]
fn bad_weights_are_named_and_unit_weights_change_nothing() {
    let ev = grid(50, 8);
    let mut w = Array1::from_elem(ev.len(), 1.0f32);
    let at = |i: usize| ev.labels.row(i).to_vec();
    let target = at(0);
    for i in 0..ev.len() {
        if at(i) == target {
            w[i] = -1.0;
        }
    }
    let bad = ev.clone().with_weights(w, "test").unwrap();
    let err = match train_events(&small_cfg(1, 1), &bad) {
        Ok(_) => panic!("a negative label sum must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("sum to -50") && err.contains(&format!("label0 = {}", target[0])), "{err}");
    let nan = ev.clone().with_weights(Array1::from_elem(ev.len(), f32::NAN), "weights.npz");
    assert!(nan.err().unwrap().to_string().contains("weights.npz: weights[0] is NaN"));
    let short = ev.clone().with_weights(Array1::from_elem(3, 1.0), "weights.npz");
    assert!(short.err().unwrap().to_string().contains("3 weights for 450 events"));

    let cfg = small_cfg(2, 2);
    let unit = ev.clone().with_weights(Array1::from_elem(ev.len(), 1.0), "test").unwrap();
    let a = train_events(&cfg, &ev).unwrap();
    let b = train_events(&cfg, &unit).unwrap();
    for (ra, rb) in a.history.iter().zip(&b.history) {
        assert!((ra.train_nll - rb.train_nll).abs() < 1e-4 * ra.train_nll.abs().max(1.0), "{ra:?} vs {rb:?}");
        assert!((ra.val_nll - rb.val_nll).abs() < 1e-4 * ra.val_nll.abs().max(1.0), "{ra:?} vs {rb:?}");
    }
}

/// Weighted `.npz` input through the real `fedhex-worker` under `mpirun`:
/// 1 and 2 ranks train, the model records that it was weighted, and a
/// label with a non-positive weight sum stops the run before it starts.
#[test]
fn weighted_npz_trains_under_mpirun_and_bad_sums_are_refused() {
    let worker = env!("CARGO_BIN_EXE_fedhex-worker");
    let dir = tmpdir();
    let ev = grid(200, 31);
    let w: Vec<f32> = (0..ev.len()).map(|i| if i % 5 == 0 { -0.25 } else { 1.0 + (i % 3) as f32 * 0.5 }).collect();
    let weighted = ev.clone().with_weights(Array1::from(w), "test").unwrap();
    let data = dir.path().join("w.npz");
    fedhex::data::files::write_events(&data, &weighted, "Events").unwrap();
    // What the writer wrote is what the reader reads.
    let back = fedhex::data::npy::read_npz(&data, vec![], vec![]).unwrap();
    assert_eq!(back.weights, weighted.weights);
    let cfg_path = dir.path().join("run.toml");
    let toml = |data: &std::path::Path, run: &std::path::Path| {
        format!(
            "[data]\npath = \"{}\"\n[network]\nn_blocks = 2\nhidden = [16, 16]\n[training]\nepochs = 2\ndevice = \"cpu\"\n\
             [outputs]\nrun_dir = \"{}\"\nprogress = false\n",
            data.display(),
            run.display()
        )
    };
    for n in [1, 2] {
        let run = dir.path().join(format!("run{n}"));
        std::fs::write(&cfg_path, toml(&data, &run)).unwrap();
        let args: Vec<String> = vec!["train".into(), "--config".into(), cfg_path.display().to_string()];
        mpirun_ok(worker, n, dir.path(), &args, &[]);
        let model = Model::load(&run.join("model"), tch::Device::Cpu).unwrap();
        assert_eq!(model.training["weighted"], true, "{n} ranks");
        let h = std::fs::read_to_string(run.join("history.csv")).unwrap();
        assert!(!h.contains("NaN") && !h.contains("inf"), "{h}");
    }
    // Every weight of one label negative: refused, naming the label; no run directory.
    let mut w2: Vec<f32> = vec![1.0; ev.len()];
    let first = ev.labels.row(0).to_vec();
    for (i, v) in w2.iter_mut().enumerate() {
        if ev.labels.row(i).to_vec() == first {
            *v = -1.0;
        }
    }
    let bad = ev.clone().with_weights(Array1::from(w2), "test").unwrap();
    let bad_path = dir.path().join("bad.npz");
    fedhex::data::files::write_events(&bad_path, &bad, "Events").unwrap();
    let run = dir.path().join("bad_run");
    std::fs::write(&cfg_path, toml(&bad_path, &run)).unwrap();
    let o = std::process::Command::new(worker)
        .args(["train", "--config", cfg_path.to_str().unwrap()])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("bad.npz") && err.contains("sum to -200") && err.contains(&format!("label0 = {}", first[0])),
        "{err}"
    );
    assert!(!run.exists(), "a refused run leaves no directory");
}

const WEIGHTED_WRITER: &str = r#"
import sys, numpy as np, uproot
n = 300
rng = np.random.default_rng(3)
gw = rng.normal(1.0, 0.8, n).astype(np.float32)
gw[17] = np.nan
gw[40] = np.inf
sf = rng.uniform(0.9, 1.1, n)
data = {"mass": rng.normal(100.0, 5.0, n), "label": np.where(np.arange(n) < 150, 1.0, 2.0),
        "genWeight": gw, "sf": sf}
with uproot.recreate(sys.argv[1]) as f:
    f.mktree("Events", {k: v.dtype for k, v in data.items()})
    f["Events"].extend(data)
with uproot.recreate(sys.argv[2]) as f:
    f["Events"] = data
w = (gw.astype(np.float64) * sf).astype(np.float32)
keep = np.isfinite(w)
print(" ".join(repr(float(v)) for v in w[keep]))
print(type(uproot.open(sys.argv[2])["Events"]).__name__)
"#;

/// `data.root.weight` is an expression over branches, read alike from a
/// TTree and an RNTuple written by uproot; its value equals numpy's
/// `float32(genWeight * sf)`; events with a non-finite weight are dropped and
/// counted; a weight naming a missing branch is an error that says so.
#[test]
fn root_weight_expression_matches_uproot_in_ttree_and_rntuple() {
    use fedhex::data::source::{load, RootInput, Variable};
    let dir = tmpdir();
    let (tt, nt) = (dir.path().join("tree.root"), dir.path().join("ntuple.root"));
    let out = run_python(WEIGHTED_WRITER, &[tt.to_str().unwrap(), nt.to_str().unwrap()]);
    let mut lines = out.lines();
    let want: Vec<f32> = lines.next().unwrap().split_whitespace().map(|v| v.parse::<f64>().unwrap() as f32).collect();
    let kind = lines.next().unwrap().trim().to_string();
    assert!(kind.contains("RNTuple"), "uproot must write an RNTuple for the second file: {kind}");
    let input = |p: &std::path::Path| RootInput {
        files: vec![p.display().to_string()],
        features: vec![Variable::new("mass", "mass")],
        labels: vec![Variable::new("label", "label")],
        weight: "genWeight * sf".into(),
        ..RootInput::default()
    };
    let (a, rep) = load(&input(&tt)).unwrap();
    let (b, _) = load(&input(&nt)).unwrap();
    assert_eq!(a, b, "TTree and RNTuple load the same weighted events");
    assert_eq!(rep.dropped_nonfinite, 2);
    // Events stay in file order; the label grouping does not reorder them.
    assert_eq!(a.weights.as_ref().unwrap().to_vec(), want);
    let bad = RootInput { weight: "genWeight * scale_factor".into(), ..input(&tt) };
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("scale_factor") && err.contains("weight \"genWeight * scale_factor\""), "{err}");
}
