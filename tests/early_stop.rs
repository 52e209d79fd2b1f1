//! Validation on whole held-out labels (`data.validation_labels`) and early
//! stopping (`training.early_stopping_patience`): which events validate, when
//! training stops, which weights are saved, exact resume, and clear errors.

mod common;
use common::*;
use fedhex::app::run::{run, RunOptions};
use fedhex::config::{RunConfig, Schedule};
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::data::EventSet;
use fedhex::flow::Model;
use fedhex::train::driver::single_process_plan;
use fedhex::train::{checkpoint, train_events, Controls, EpochRecord, Finish, Observer};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The centre of the 3 × 3 grid on [0, 1]²: an interpolation point.
const CENTRE: [f64; 2] = [0.5, 0.5];

fn grid(n_per_label: usize) -> EventSet {
    GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Full { sigma: 0.1, rho: 0.5 },
        n_per_label,
        seed: 11,
    }
    .generate()
    .unwrap()
}

/// Rows of `events` at `label` (compared in float32, as the data hold it).
fn rows_at(events: &EventSet, label: &[f64]) -> Vec<usize> {
    (0..events.len()).filter(|&i| events.labels.row(i).iter().zip(label).all(|(&a, &b)| a == b as f32)).collect()
}

#[test]
fn validation_labels_validate_every_event_there_and_nothing_else() {
    let events = grid(120);
    let at_centre = rows_at(&events, &CENTRE).len();
    assert!(at_centre > 0 && at_centre < events.len());
    for fraction in [0.0, 0.1] {
        let mut cfg = small_cfg(1, 2);
        cfg.data.validation_fraction = fraction;
        cfg.data.validation_labels = vec![CENTRE.to_vec()];
        let (ordered, plan) = single_process_plan(&cfg, &events).unwrap();
        let val: Vec<usize> = (0..ordered.len()).filter(|&i| plan.local_is_val[i]).collect();
        let train: Vec<usize> = (0..ordered.len()).filter(|&i| !plan.local_is_val[i]).collect();
        let centre_rows = rows_at(&ordered, &CENTRE);
        // Every event at the validation label validates, none of them trains.
        assert!(centre_rows.iter().all(|&i| plan.local_is_val[i]), "fraction {fraction}");
        assert!(train.iter().all(|i| !centre_rows.contains(i)));
        // The other labels keep their validation fraction: 8 labels x round(f x 120).
        let expected_val = at_centre + 8 * (fraction * 120.0_f64).round() as usize;
        assert_eq!((plan.n_val, val.len()), (expected_val, expected_val), "fraction {fraction}");
        assert_eq!(plan.n_train, events.len() - expected_val);
    }
}

/// Training with a validation label sees exactly what training on the data
/// without that label sees: the weights are bit-identical.
#[test]
fn training_never_sees_the_validation_labels() {
    let events = grid(100);
    let centre = rows_at(&events, &CENTRE);
    let without: Vec<usize> = (0..events.len()).filter(|i| !centre.contains(i)).collect();
    let mut cfg = small_cfg(2, 3);
    cfg.data.validation_fraction = 0.0;
    let dropped = train_events(&cfg, &events.select(&without)).unwrap();
    cfg.data.validation_labels = vec![CENTRE.to_vec()];
    let validated = train_events(&cfg, &events).unwrap();
    assert_eq!(validated.model.training["validation_events"], centre.len());
    assert_eq!(validated.model.training["train_events"], without.len());
    assert_eq!(weight_bits(&dropped.model), weight_bits(&validated.model), "the validation label changed training");
    assert!(dropped.history[1].val_nll.is_nan() && validated.history[1].val_nll.is_finite());
    // The model lists the validation label apart from its training labels.
    let trained = validated.model.training["training_labels"].as_array().unwrap();
    assert_eq!(trained.len(), 8);
    assert!(!trained.contains(&serde_json::json!([0.5, 0.5])));
    assert_eq!(validated.model.training["validation_labels"], serde_json::json!([CENTRE]));
}

/// A setting that overfits quickly: few training events, a constant high
/// learning rate, validation on the unseen centre label.
fn overfitting_cfg(dir: &Path, epochs: usize, patience: usize) -> RunConfig {
    let mut cfg = small_cfg(epochs, 5);
    cfg.data.path = dir.join("grid.npz");
    cfg.data.validation_fraction = 0.0;
    cfg.data.validation_labels = vec![CENTRE.to_vec()];
    cfg.training.batch_size = 32;
    cfg.training.lr_initial = 1e-2;
    cfg.training.schedule = Schedule::Constant;
    cfg.training.early_stopping_patience = patience;
    cfg.training.threads = 1;
    cfg.outputs.run_dir = dir.join("run");
    cfg.outputs.checkpoint_every = 1;
    cfg.outputs.keep_checkpoints = 1;
    cfg.control.enabled = false;
    cfg
}

fn write_grid(dir: &Path, n_per_label: usize) -> EventSet {
    let events = grid(n_per_label);
    fedhex::data::npy::write_npz(&dir.join("grid.npz"), &events.samples, &events.labels).unwrap();
    events
}

/// Mean NLL (flow space, as the history records it) of `model` on `events`.
fn flow_nll(model: &Model, events: &EventSet) -> f64 {
    let to = |a: &ndarray::Array2<f32>| {
        Tensor::from_slice(&a.iter().copied().collect::<Vec<f32>>()).view([a.nrows() as i64, a.ncols() as i64])
    };
    let (xs, cs) = (to(&events.samples), to(&events.labels));
    tch::no_grad(|| {
        let z = model.to_flow_space(&xs, &cs).0;
        let lp = model.flow.log_prob(&z, &model.condition(&cs));
        -lp.sum(Kind::Double).double_value(&[]) / events.len() as f64
    })
}

/// Asks for a stop after a given epoch (as `fedhex-ctl stop` would).
struct StopAfter(usize, Arc<Controls>);

impl Observer for StopAfter {
    fn on_epoch(&self, r: &EpochRecord) {
        if r.epoch == self.0 {
            self.1.stop_after_epoch.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn early_stopping_stops_after_patience_keeps_the_best_weights_and_resumes_exactly() {
    let dir = tmpdir();
    let d = dir.path();
    let events = write_grid(d, 30);
    let (epochs, patience) = (60, 3);
    let cfg = overfitting_cfg(d, epochs, patience);
    let out = run(&cfg, &fedhex::comm::SingleProcess, RunOptions::default()).unwrap();
    let h = &out.history;
    let vals: Vec<f64> = h.iter().map(|r| r.val_nll).collect();
    eprintln!("validation NLL per epoch: {vals:.4?}");
    // The stop came before the last epoch, exactly `patience` epochs after the minimum.
    assert_eq!(out.finish, Finish::EarlyStopped, "no early stop in {epochs} epochs");
    assert!(h.len() < epochs);
    let best = (0..vals.len()).fold(0, |b, i| if vals[i] < vals[b] { i } else { b });
    assert_eq!(h.len(), best + 1 + patience, "stopped {} epochs after the best", h.len() - best - 1);
    // The saved model is the best epoch's, recorded as such.
    let m = Model::load(&d.join("run/model"), Device::Cpu).unwrap();
    assert_eq!(m.training["best_epoch"], best + 1);
    let recorded = m.training["best_val_nll"].as_f64().unwrap();
    assert!(close(recorded, vals[best], 1e-12), "{recorded} vs {}", vals[best]);
    assert_eq!(m.training["stopped_early"], true);
    assert_eq!(m.training["epochs"], h.len());
    let centre = events.select(&rows_at(&events, &CENTRE));
    let saved = flow_nll(&m, &centre);
    assert!(close(saved, vals[best], 1e-5), "saved model: {saved} vs best {}", vals[best]);
    assert!((saved - vals[vals.len() - 1]).abs() > 1e-4, "the last epoch's weights were saved, not the best");
    let csv = std::fs::read_to_string(d.join("run/history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + h.len());
    // The best checkpoint holds the best weights.
    let (state, last) = checkpoint::list(&d.join("run/checkpoints")).pop().unwrap();
    assert_eq!(state.epoch, h.len());
    assert!(last.join(checkpoint::BEST).exists());

    // Interrupted one epoch after the best and resumed: the same stop, bit-identical weights.
    let cfg2 = RunConfig {
        outputs: fedhex::config::OutputConfig { run_dir: d.join("again"), ..cfg.outputs.clone() },
        ..cfg.clone()
    };
    let controls = Arc::new(Controls::default());
    let opts = RunOptions {
        controls: controls.clone(),
        // Asked during epoch best + 1's end, acted on at the end of the next epoch.
        observer: Some(Arc::new(StopAfter(best + 1, controls.clone()))),
        ..Default::default()
    };
    let first = run(&cfg2, &fedhex::comm::SingleProcess, opts).unwrap();
    assert_eq!((first.finish, first.history.len()), (Finish::StoppedAtEpoch, best + 2));
    assert!(!d.join("again/model").exists());
    let resumed = run(&cfg2, &fedhex::comm::SingleProcess, RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.finish, Finish::EarlyStopped);
    assert_eq!(resumed.history.len(), vals.len());
    assert!(resumed.history.iter().zip(&vals).all(|(r, v)| close(r.val_nll, *v, 1e-12)), "{:?}", resumed.history);
    let again = Model::load(&d.join("again/model"), Device::Cpu).unwrap();
    assert_eq!(weight_bits(&again), weight_bits(&m), "resumed run saved different weights");
    // Resuming a run that already stopped early trains no further.
    let done = run(&cfg2, &fedhex::comm::SingleProcess, RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!((done.finish, done.history.len()), (Finish::EarlyStopped, h.len()));
    assert_eq!(weight_bits(&Model::load(&d.join("again/model"), Device::Cpu).unwrap()), weight_bits(&m));
}

/// With a weight average the saved model is the average at the best epoch:
/// not the final average, and deterministic.
#[test]
fn early_stopping_with_a_weight_average_saves_the_best_epochs_average() {
    let dir = tmpdir();
    let d = dir.path();
    write_grid(d, 30);
    let mut cfg = overfitting_cfg(d, 60, 2);
    cfg.training.ema_decay = 0.9;
    cfg.outputs.checkpoint_every = 0;
    let go = |cfg: &RunConfig| train_events(cfg, &grid(30)).unwrap();
    let a = go(&cfg);
    assert_eq!(a.finish, Finish::EarlyStopped);
    let b = go(&cfg);
    assert_eq!(weight_bits(&a.model), weight_bits(&b.model));
    // The same run without early stopping, cut at the same epoch, ends on the final average.
    let mut plain = cfg.clone();
    plain.training.early_stopping_patience = 0;
    plain.training.epochs = a.history.len();
    let p = go(&plain);
    assert_eq!(
        p.history.iter().map(|r| r.val_nll).collect::<Vec<_>>(),
        a.history.iter().map(|r| r.val_nll).collect::<Vec<_>>()
    );
    assert_ne!(weight_bits(&a.model), weight_bits(&p.model), "the best epoch's average must replace the final one");
    let ema = a.model.training["ema_val_nll"].as_f64().expect("the saved average's validation NLL");
    assert!(ema.is_finite());
}

/// A change to a configuration.
type Change = Box<dyn Fn(&mut RunConfig)>;

#[test]
fn bad_validation_and_early_stopping_settings_are_config_errors_before_any_output() {
    let dir = tmpdir();
    let d = dir.path();
    write_grid(d, 20);
    let cases: Vec<(&str, Change, &str)> = vec![
        ("wrong length", Box::new(|c| c.data.validation_labels = vec![vec![0.5]]), "[0.5] has 1 values"),
        ("no events", Box::new(|c| c.data.validation_labels = vec![vec![0.3, 0.5]]), "no events at label [0.3, 0.5]"),
        (
            "also held out",
            Box::new(|c| c.data.holdout_labels = vec![CENTRE.to_vec()]),
            "[0.5, 0.5] is also in data.holdout_labels",
        ),
        (
            "no training left",
            Box::new(|c| {
                c.data.validation_labels =
                    (0..3).flat_map(|i| (0..3).map(move |j| vec![i as f64 / 2.0, j as f64 / 2.0])).collect()
            }),
            "leave no events for training",
        ),
        (
            "outside the grid with logit labels",
            // A whole edge row validates: the training labels no longer reach 1 in the first dimension.
            Box::new(|c| {
                c.data.validation_labels = vec![vec![1.0, 0.0], vec![1.0, 0.5], vec![1.0, 1.0]];
                c.data.logit_labels = true
            }),
            "[1.0, 0.0] lies outside the range",
        ),
        (
            "more strata than events",
            Box::new(|c| c.training.batch_strata = 1_000_000_000_000),
            "training.batch_strata = 1000000000000 exceeds the",
        ),
        (
            "patience without validation",
            Box::new(|c| c.data.validation_labels.clear()),
            "training.early_stopping_patience = 3 needs validation events",
        ),
    ];
    for (what, change, needle) in cases {
        let mut cfg = overfitting_cfg(d, 2, 3);
        change(&mut cfg);
        let e = run(&cfg, &fedhex::comm::SingleProcess, RunOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, fedhex::error::Error::Config(_)), "{what}: {msg}");
        let key = match what {
            w if w.starts_with("patience") => "training.early_stopping_patience",
            w if w.starts_with("more strata") => "training.batch_strata",
            _ => "data.validation_labels",
        };
        assert!(msg.contains(key) && msg.contains(needle), "{what}: {msg}");
        assert!(!d.join("run").exists(), "{what}: a run directory was left behind");
        // The same check through the single-process entry point.
        assert!(train_events(&cfg, &grid(20)).unwrap_err().to_string().contains(needle), "{what}");
    }
    // Without any validation the configuration itself is refused.
    let e = RunConfig::from_toml(
        "[data]\nvalidation_fraction = 0.0\n[training]\nearly_stopping_patience = 2\n",
        &[],
        "run.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("training.early_stopping_patience"), "{e}");
}

/// Whether `a` and `b` agree to `rel` relative (JSON keeps f64 to within an ulp).
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}
