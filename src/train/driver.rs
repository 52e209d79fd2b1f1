//! The epoch/step loop: each rank computes the summed NLL of its part of the
//! global batch, the gradients are all-reduced as one flat buffer and divided
//! by the global event count, and every rank applies the same Adam step.

use super::optim::{Adam, AdamConfig};
use super::schedule::learning_rate;
use super::shard::ShardPlan;
use crate::comm::{Communicator, SingleProcess};
use crate::config::RunConfig;
use crate::data::whiten::{WhitenSpec, Whitening};
use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::{Maf, Model};
use ndarray::Array2;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Losses and timing of one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// Epochs completed (1 after the first epoch).
    pub epoch: usize,
    /// Mean NLL per training event (whitened space) over the epoch.
    pub train_nll: f64,
    /// Mean NLL per validation event after the epoch (NaN without validation).
    pub val_nll: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
    /// Training events per second (all ranks).
    pub events_per_s: f64,
}

/// The result of training.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained model.
    pub model: Model,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
}

/// Header of `history.csv`.
pub const HISTORY_HEADER: &str = "epoch,train_nll,val_nll,lr,seconds,events_per_s";

/// Writes the loss history as CSV, atomically.
pub fn write_history(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::from(HISTORY_HEADER);
    s.push('\n');
    for r in history {
        s.push_str(&format!(
            "{},{:.8},{:.8},{:.6e},{:.3},{:.1}\n",
            r.epoch, r.train_nll, r.val_nll, r.lr, r.seconds, r.events_per_s
        ));
    }
    let tmp = crate::flow::model::sibling(path, "tmp");
    crate::flow::model::write_synced(&tmp, s.as_bytes())?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn to_tensor(a: &Array2<f32>) -> Tensor {
    let (n, d) = a.dim();
    let flat: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&flat).view([n as i64, d as i64])
}

/// Sum of `-log p` over `xs` in chunks, without gradients.
fn nll_sum(flow: &Maf, xs: &Tensor, cs: &Tensor, chunk: i64) -> f64 {
    tch::no_grad(|| {
        let n = xs.size()[0];
        let mut total = 0.0;
        let mut i = 0;
        while i < n {
            let m = chunk.min(n - i);
            total -= flow.log_prob(&xs.narrow(0, i, m), &cs.narrow(0, i, m)).sum(Kind::Double).double_value(&[]);
            i += m;
        }
        total
    })
}

/// Trains on one process: groups `events` by label, plans, trains, and (when
/// `run_dir` is set in the configuration) writes the model and history.
pub fn train_events(cfg: &RunConfig, events: &EventSet) -> Result<TrainOutcome> {
    let groups = events.label_groups();
    let order: Vec<usize> = groups.members.iter().flatten().copied().collect();
    let sizes: Vec<usize> = groups.members.iter().map(Vec::len).collect();
    let ordered = events.select(&order);
    let plan = ShardPlan::new(&sizes, 1, 0, cfg.data.validation_fraction, cfg.training.seed);
    let device = crate::device::resolve(crate::device::parse_device(&cfg.training.device)?, 0)?;
    train(cfg, &ordered, &plan, &SingleProcess, device)
}

/// Trains across the ranks of `comm`. `local` holds this rank's events in plan
/// order (group by group, its chunk of each group).
pub fn train(
    cfg: &RunConfig,
    local: &EventSet,
    plan: &ShardPlan,
    comm: &dyn Communicator,
    device: Device,
) -> Result<TrainOutcome> {
    if local.len() != plan.local_is_val.len() {
        return Err(Error::Data(format!(
            "rank {}: holds {} events but the shard plan assigns it {}",
            comm.rank(),
            local.len(),
            plan.local_is_val.len()
        )));
    }
    if plan.n_train == 0 {
        return Err(Error::Data("no training events left after the validation split".into()));
    }
    let t = &cfg.training;
    let train_rows: Vec<usize> = (0..local.len()).filter(|&i| !plan.local_is_val[i]).collect();
    let val_rows: Vec<usize> = (0..local.len()).filter(|&i| plan.local_is_val[i]).collect();
    let train_set = local.select(&train_rows);
    let val_set = local.select(&val_rows);

    let d = &cfg.data;
    let fspec = WhitenSpec {
        names: local.feature_names.clone(),
        logit: vec![d.logit_features; local.n_features()],
        eps: d.logit_eps,
    };
    let lspec = WhitenSpec {
        names: local.label_names.clone(),
        logit: vec![d.logit_labels; local.n_labels()],
        eps: d.logit_eps,
    };
    let fw = Whitening::fit(train_set.samples.view(), &fspec, comm)?;
    let lw = Whitening::fit(train_set.labels.view(), &lspec, comm)?;

    let flow = {
        let _rng = crate::rng::seeded(t.seed);
        Maf::new(cfg.network.maf(local.n_features(), local.n_labels()), device)?
    };
    let mut model = Model::new(flow, fw, lw)?;

    let white = |set: &EventSet| -> (Tensor, Tensor) {
        let x = model.features.forward(&to_tensor(&set.samples).to_device(device));
        let c = model.labels.forward(&to_tensor(&set.labels).to_device(device));
        (x, c)
    };
    let (train_x, train_c) = white(&train_set);
    let (val_x, val_c) = white(&val_set);

    let mut opt =
        Adam::new(model.flow.var_store(), AdamConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps });
    let steps_per_epoch = plan.steps_per_epoch(t.batch_size);
    let show_bar = comm.is_root() && cfg.outputs.progress && std::io::stderr().is_terminal();
    let check_every = if device == Device::Cpu { 1 } else { 32 };
    let mut history: Vec<EpochRecord> = Vec::with_capacity(t.epochs);
    let mut global_step: u64 = 0;
    let mut flat_host: Vec<f32> = Vec::new();

    for epoch in 0..t.epochs {
        let started = Instant::now();
        let steps = plan.epoch_steps(t.seed, epoch, t.batch_size);
        let bar = show_bar.then(|| {
            let b = indicatif::ProgressBar::new(steps.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("{}/{}", epoch + 1, t.epochs));
            b
        });
        let mut loss_acc = Tensor::zeros([], (Kind::Double, device));
        let mut window_start = 0usize;
        let mut lr = 0.0;
        for (k, step) in steps.iter().enumerate() {
            lr = learning_rate(t, epoch as f64 + k as f64 / steps_per_epoch as f64);
            let idx = Tensor::from_slice(&step.local).to_device(device);
            let x = train_x.index_select(0, &idx);
            let c = train_c.index_select(0, &idx);
            opt.zero_grad();
            let loss = model.flow.log_prob(&x, &c).sum(Kind::Float).neg();
            loss.backward();
            let mut flat = opt.flat_grad();
            if comm.size() > 1 {
                let cpu = flat.to_device(Device::Cpu);
                flat_host.resize(cpu.numel(), 0.0);
                cpu.copy_data(&mut flat_host, cpu.numel());
                comm.allreduce_sum_f32(&mut flat_host)?;
                flat = Tensor::from_slice(&flat_host).to_device(device);
            }
            opt.step_flat(&flat, 1.0 / step.global_count as f64, lr);
            loss_acc += loss.detach().to_kind(Kind::Double);
            global_step += 1;
            if (k + 1) % check_every == 0 || k + 1 == steps.len() {
                let v = loss_acc.double_value(&[]);
                if !v.is_finite() {
                    return Err(Error::Train(format!(
                        "non-finite loss in epoch {}, steps {}..={} (global step {global_step}); \
                         lower training.lr_initial or check the input data",
                        epoch + 1,
                        window_start + 1,
                        k + 1
                    )));
                }
                window_start = k + 1;
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut sums = [loss_acc.double_value(&[]), nll_sum(&model.flow, &val_x, &val_c, 65536)];
        comm.allreduce_sum_f64(&mut sums)?;
        let seconds = started.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_nll: sums[0] / plan.n_train as f64,
            val_nll: if plan.n_val > 0 { sums[1] / plan.n_val as f64 } else { f64::NAN },
            lr,
            seconds,
            events_per_s: plan.n_train as f64 / seconds.max(1e-9),
        };
        if !rec.val_nll.is_finite() && plan.n_val > 0 {
            return Err(Error::Train(format!("non-finite validation loss after epoch {}", epoch + 1)));
        }
        if comm.is_root() {
            tracing::info!(
                epoch = rec.epoch,
                epochs = t.epochs,
                train_nll = rec.train_nll,
                val_nll = rec.val_nll,
                lr = rec.lr,
                events_per_s = rec.events_per_s as u64,
                "epoch done"
            );
        }
        history.push(rec);
    }
    model.training = serde_json::json!({
        "epochs": t.epochs,
        "steps": global_step,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "world_size": comm.size(),
        "train_events": plan.n_train,
        "validation_events": plan.n_val,
        "labels": plan.group_sizes.len(),
        "final_train_nll": history.last().map(|r| r.train_nll),
        "final_val_nll": history.last().map(|r| r.val_nll).filter(|v| v.is_finite()),
    });
    Ok(TrainOutcome { model, history })
}

/// Writes a finished run into `run_dir`: `model/`, `history.csv`, `config.toml`.
pub fn write_run(run_dir: &Path, cfg: &RunConfig, outcome: &TrainOutcome) -> Result<()> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let cfg_path = run_dir.join("config.toml");
    std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
    write_history(&run_dir.join("history.csv"), &outcome.history)?;
    outcome.model.save(&run_dir.join("model"))
}
