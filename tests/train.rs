//! Single-process training: recovers the truth off the grid, is deterministic,
//! and writes a complete run directory.

mod common;
use common::*;
use fedhex::config::RunConfig;
use fedhex::data::gaussian::{check_moments, Covariance, GaussianSpec, Layout};
use fedhex::flow::{Model, Permutation, Transform};
use fedhex::train::train_events;
use tch::Device;

fn spec() -> GaussianSpec {
    GaussianSpec {
        layout: Layout::Grid2d { n: 4, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Rotating { major: 0.08, minor: 0.03, turns: 0.5 },
        n_per_label: 1500,
        seed: 3,
    }
}

#[test]
fn training_recovers_mean_and_covariance_off_the_grid() {
    let spec = spec();
    let events = spec.generate().unwrap();
    let out = train_events(&small_cfg(10, 1), &events).unwrap();
    let h = &out.history;
    assert!(h.last().unwrap().val_nll < h[0].val_nll, "validation loss did not improve: {h:?}");
    // Off-grid labels (the grid is at 0, 1/3, 2/3, 1).
    let labels = vec![vec![0.5f32, 0.5], vec![0.2, 0.8], vec![0.85, 0.15]];
    let generated = fedhex::generate::sample_at_labels(&out.model, &labels, 20000, 7, 8192).unwrap();
    let checks = check_moments(&spec, &generated).unwrap();
    assert_eq!(checks.len(), 3);
    for c in checks {
        // Stated tolerance: means within 0.25 true widths, widths within 10%,
        // correlations within 0.15. The generator's correlation turns with the
        // label: between the grid rows 2/3 and 1 it falls from 0.72 to 0, so
        // (0.85, 0.15) is a genuinely hard interpolation point.
        eprintln!("{:?}: pull {:.3} width {:.3} corr {:.3}", c.label, c.max_mean_pull, c.max_std_rel, c.max_corr_diff);
        assert!(c.max_mean_pull < 0.25, "{:?}: mean off by {} widths", c.label, c.max_mean_pull);
        assert!(c.max_std_rel < 0.10, "{:?}: width off by {}", c.label, c.max_std_rel);
        assert!(c.max_corr_diff < 0.15, "{:?}: correlation off by {}", c.label, c.max_corr_diff);
    }
}

#[test]
fn same_config_and_seed_give_identical_weights() {
    let mut small = spec();
    small.n_per_label = 300;
    let events = small.generate().unwrap();
    // The reference network (affine blocks) and the default one (spline blocks
    // and learned mixing), each through its hand-written CPU pass.
    for (transform, perm) in [(Transform::Affine, Permutation::Reverse), (Transform::AffineSpline, Permutation::Lu)] {
        let weights = |seed| {
            let mut cfg = small_cfg(2, seed);
            cfg.network.transform = transform;
            cfg.network.permutation = perm;
            let out = train_events(&cfg, &events).unwrap();
            // Compare digests so a failure prints a line, not every weight.
            let digest = format!("{:x}", weight_digest(&out.model));
            (digest, out.history)
        };
        let (a, ha) = weights(5);
        let (b, hb) = weights(5);
        assert_eq!(a, b, "{transform:?}: same seed, different weights (bit-level digest)");
        let nll = |h: &[fedhex::train::EpochRecord]| h.iter().map(|r| r.train_nll).collect::<Vec<_>>();
        assert_eq!(nll(&ha), nll(&hb));
        let (c, _) = weights(6);
        assert_ne!(a, c, "{transform:?}: a different seed must change the weights");
    }
}

/// With `training.ema_decay` the returned model carries the weight average:
/// different weights from the same run without it, a validation loss of its
/// own recorded in the model's training facts, and still deterministic.
#[test]
fn weight_average_replaces_the_final_weights() {
    let mut small = spec();
    small.n_per_label = 300;
    let events = small.generate().unwrap();
    let run = |ema: f64| {
        let mut cfg = small_cfg(3, 4);
        cfg.training.ema_decay = ema;
        train_events(&cfg, &events).unwrap()
    };
    let (plain, avg, again) = (run(0.0), run(0.95), run(0.95));
    assert_ne!(weight_digest(&plain.model), weight_digest(&avg.model), "the average must replace the weights");
    assert_eq!(weight_digest(&avg.model), weight_digest(&again.model), "the average is deterministic");
    // The training trajectory itself is unchanged by keeping an average.
    let nll = |o: &fedhex::train::TrainOutcome| o.history.iter().map(|r| r.train_nll).collect::<Vec<_>>();
    assert_eq!(nll(&plain), nll(&avg));
    let ema_val = avg.model.training["ema_val_nll"].as_f64().expect("ema_val_nll recorded");
    let last_val = avg.history.last().unwrap().val_nll;
    eprintln!("validation NLL: last weights {last_val:.4}, average {ema_val:.4}");
    assert!(ema_val.is_finite() && (ema_val - last_val).abs() < 0.2, "{ema_val} vs {last_val}");
    assert!(plain.model.training["ema_val_nll"].is_null());
}

/// Gradient clipping: a cap the gradients never reach changes nothing (bit for
/// bit), a tight one changes the trajectory, on the fast CPU path and the
/// autograd path alike; bad settings are configuration errors.
#[test]
fn gradient_clipping_acts_only_above_its_cap() {
    let mut small = spec();
    small.n_per_label = 300;
    let events = small.generate().unwrap();
    for transform in [fedhex::flow::Transform::Affine, fedhex::flow::Transform::AffineSpline] {
        let run = |abs: f64, rel: f64| {
            let mut cfg = small_cfg(2, 4);
            cfg.network.transform = transform;
            cfg.training.clip_grad_norm = abs;
            cfg.training.clip_grad_relative = rel;
            train_events(&cfg, &events).unwrap()
        };
        let (plain, loose, tight, relative) = (run(0.0, 0.0), run(1e9, 0.0), run(1e-3, 0.0), run(0.0, 1.0));
        assert_eq!(weight_digest(&plain.model), weight_digest(&loose.model), "{transform:?}: an unreached cap");
        assert_ne!(weight_digest(&plain.model), weight_digest(&tight.model), "{transform:?}: a tight cap is ignored");
        // A relative cap of 1 clips every step whose norm is above the running average.
        assert_ne!(weight_digest(&plain.model), weight_digest(&relative.model), "{transform:?}: relative cap ignored");
        for h in [&tight.history, &relative.history] {
            assert!(h.iter().all(|r| r.train_nll.is_finite()), "{transform:?}: {h:?}");
        }
    }
    for (key, value) in [("clip_grad_norm", -1.0), ("clip_grad_relative", 0.5), ("clip_grad_relative", f64::NAN)] {
        let mut cfg = small_cfg(1, 4);
        if key == "clip_grad_norm" {
            cfg.training.clip_grad_norm = value;
        } else {
            cfg.training.clip_grad_relative = value;
        }
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(&format!("training.{key}")), "{err}");
    }
}

#[test]
fn run_directory_holds_model_history_and_config() {
    let mut small = spec();
    small.n_per_label = 200;
    let events = small.generate().unwrap();
    let dir = tmpdir();
    let mut cfg = small_cfg(3, 1);
    cfg.outputs.run_dir = dir.path().join("run");
    let out = train_events(&cfg, &events).unwrap();
    fedhex::train::driver::write_run(&cfg.outputs.run_dir, &cfg, &out).unwrap();
    let hist = std::fs::read_to_string(dir.path().join("run/history.csv")).unwrap();
    let lines: Vec<&str> = hist.lines().collect();
    assert_eq!(lines[0], fedhex::train::history::HISTORY_HEADER);
    assert_eq!(lines.len(), 1 + 3, "one line per epoch");
    for (i, l) in lines[1..].iter().enumerate() {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols[0], (i + 1).to_string());
        assert!(cols[1].parse::<f64>().unwrap().is_finite() && cols[2].parse::<f64>().unwrap().is_finite());
    }
    let saved = RunConfig::load(&dir.path().join("run/config.toml"), &[]).unwrap();
    assert_eq!(saved, cfg);
    let m = Model::load(&dir.path().join("run/model"), Device::Cpu).unwrap();
    assert_eq!(m.training["epochs"], 3);
}

/// FNV-1a over names and weight bits.
fn md5_like(v: &[(String, Vec<u32>)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, w) in v {
        for b in k.bytes().chain(w.iter().flat_map(|x| x.to_le_bytes())) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Digest of a model's weights: names and bit patterns, name-sorted.
fn weight_digest(m: &Model) -> u64 {
    md5_like(&weight_bits(m))
}

/// Sets `stop_now` once epoch 0 has run `at` steps.
struct StopAt(std::sync::Arc<fedhex::train::Controls>, usize);

impl fedhex::train::Observer for StopAt {
    fn on_step(&self, epoch: usize, step: usize, _steps: usize, _global_step: u64, _loss: f64) {
        if epoch == 0 && step == self.1 {
            self.0.stop_now.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// With `batch_strata` following the world size, a run resumed mid-epoch on
/// another world size finishes that epoch with the batches it started with
/// (each event still once), and only later epochs use the new world's strata.
#[test]
fn a_mid_epoch_resume_finishes_the_epoch_with_its_own_batches() {
    use fedhex::comm::SingleProcess;
    use fedhex::train::{checkpoint, driver::single_process_plan, train, Hooks};
    let mut small = spec();
    small.n_per_label = 200;
    let events = small.generate().unwrap();
    let mut cfg = small_cfg(1, 4);
    cfg.training.batch_size = 64;
    cfg.training.batch_strata = 2;
    let (ordered, plan) = single_process_plan(&cfg, &events).unwrap();
    let digest = |m: &Model| format!("{:x}", weight_digest(m));
    // Uninterrupted: one epoch of two-strata batches, as a 2-rank job draws them.
    let whole = train(&cfg, ordered.clone(), &plan, &SingleProcess, Device::Cpu, Hooks::default()).unwrap();
    // Stopped after a few steps of the same batches...
    let dir = tmpdir();
    let controls = std::sync::Arc::new(fedhex::train::Controls::default());
    let hooks = Hooks {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        controls: controls.clone(),
        observer: Some(std::sync::Arc::new(StopAt(controls, 4))),
        ..Hooks::default()
    };
    let stopped = train(&cfg, ordered.clone(), &plan, &SingleProcess, Device::Cpu, hooks).unwrap();
    assert_eq!(stopped.finish, fedhex::train::Finish::StoppedMidEpoch);
    // ...then resumed by one rank with the default strata (the world size, 1),
    // from a checkpoint that a 2-rank job would have written.
    let resumed = |written_by: usize| {
        let mut loaded = checkpoint::load(&checkpoint::latest(dir.path()).unwrap(), Device::Cpu).unwrap();
        assert!(loaded.state.mid_epoch());
        loaded.state.world_size = written_by;
        let mut cfg = cfg.clone();
        cfg.training.batch_strata = 0;
        let hooks = Hooks { resume: Some(loaded), ..Hooks::default() };
        digest(&train(&cfg, ordered.clone(), &plan, &SingleProcess, Device::Cpu, hooks).unwrap().model)
    };
    assert_eq!(resumed(2), digest(&whole.model), "the resumed epoch must keep the 2-rank batches");
    assert_ne!(resumed(1), digest(&whole.model), "one stratum gives other batches: the check above proves nothing");
}
