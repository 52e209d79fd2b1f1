//! The epoch/step loop: each rank computes the summed NLL of its part of the
//! global batch, the gradients are all-reduced as one flat buffer and divided
//! by the global event count, and every rank applies the same Adam step.
//!
//! The parts live beside this file: where a run starts ([`super::setup`]),
//! one step's exchange and update ([`super::step`]), the acceptance terms
//! ([`super::acceptance`]), requests and progress ([`super::observe`]) and
//! `history.csv` ([`super::history`]). This file holds the loop: [`train`]
//! builds a [`Trainer`], runs its epochs, and finishes the model.

use super::acceptance::AcceptanceTerms;
use super::checkpoint::{self, TrainState};
use super::clip::GradClip;
use super::early_stop::EarlyStopping;
use super::fault::fault_at_step;
use super::history::{write_history, EpochRecord};
use super::observe::{Controls, FactsSampler, Finish, Hooks, Observer, TrainOutcome, RANK_FACTS_EVERY};
use super::optim::Adam;
use super::schedule::learning_rate;
use super::setup::{self, nll_sum, Whitened};
use super::shard::{ShardPlan, Step};
use super::step::{local_flags, update, Gradient, GradientPass, Packet};
use crate::comm::{Communicator, SingleProcess};
use crate::config::RunConfig;
use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::Model;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Orders events by label group and builds the single-process plan.
pub fn single_process_plan(cfg: &RunConfig, events: &EventSet) -> Result<(EventSet, ShardPlan)> {
    let groups = events.label_groups();
    let order: Vec<usize> = groups.members.iter().flatten().copied().collect();
    let plan = super::plan::make_plan(cfg, &super::plan::GroupSummary::of(&groups), events.n_labels(), 1, 0)?;
    let mut ordered = events.select(&order);
    // Weights rescaled to mean 1 per label, as `app::run::load_shard` does.
    ordered.weights = super::plan::training_weights(cfg, &ordered)?;
    Ok((ordered, plan))
}

/// Trains on one process without checkpoints (tests, small jobs).
pub fn train_events(cfg: &RunConfig, events: &EventSet) -> Result<TrainOutcome> {
    let (ordered, plan) = single_process_plan(cfg, events)?;
    let device = crate::device::resolve(crate::device::parse_device(&cfg.training.device)?, 0)?;
    train(cfg, ordered, &plan, &SingleProcess, device, Hooks::default())
}

/// How an epoch ended.
enum EpochEnd {
    /// Go on with the next epoch.
    Next,
    /// Leave the loop.
    Stop(Finish),
}

/// Running sums of the epoch in progress.
struct EpochSums {
    /// Summed training loss of the steps done (global after an all-reduce).
    loss_sum: f64,
    /// Losses of single-process autograd steps not yet read from the device.
    loss_acc: Tensor,
    /// Seconds in the all-reduce.
    comm_seconds: f64,
    /// Learning rate of the last step.
    lr: f64,
}

/// Everything a run carries from step to step and epoch to epoch.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    plan: &'a ShardPlan,
    comm: &'a dyn Communicator,
    checkpoint_dir: Option<PathBuf>,
    controls: Arc<Controls>,
    observer: Option<Arc<dyn Observer>>,
    gather_rank_facts: bool,
    model: Model,
    opt: Adam,
    clip: GradClip,
    /// Early-stopping state and the best weights so far (`training.early_stopping_patience > 0`).
    early: Option<EarlyStopping>,
    best_weights: Option<Tensor>,
    /// How a batch's loss and gradient are computed (CPU engine or autograd).
    pass: GradientPass,
    train: Whitened,
    val: Whitened,
    acceptance: Option<AcceptanceTerms>,
    /// The state the run started from (resume).
    start: TrainState,
    resumed_world: usize,
    history: Vec<EpochRecord>,
    global_step: u64,
    checkpoints: Vec<PathBuf>,
    packet: Packet,
    pending_checkpoint: bool,
    facts: FactsSampler,
    last_step_seconds: f64,
    /// This rank's busy seconds in steps and its local events.
    busy: (f64, u64),
    show_bar: bool,
    /// Steps between reads of the loss from the device (1 on the CPU or with several ranks).
    check_every: usize,
    /// What the run records of this rank's events.
    shard: ShardFacts,
}

/// What training keeps of this rank's events besides the whitened tensors.
pub(super) struct ShardFacts {
    /// Whether the events are weighted.
    pub weighted: bool,
    /// The distinct labels of the rank's events, sorted.
    pub labels: Vec<Vec<f32>>,
    /// Feature count.
    pub n_features: usize,
    /// Label count.
    pub n_labels: usize,
    /// Feature names.
    pub feature_names: Vec<String>,
    /// Label names.
    pub label_names: Vec<String>,
}

/// Trains across the ranks of `comm`. `local` holds this rank's events in plan
/// order (group by group, its chunk of each group).
pub fn train(
    cfg: &RunConfig,
    local: EventSet,
    plan: &ShardPlan,
    comm: &dyn Communicator,
    device: Device,
    hooks: Hooks,
) -> Result<TrainOutcome> {
    let mut tr = Trainer::new(cfg, local, plan, comm, device, hooks)?;
    let t = &cfg.training;
    // A resumed run that had already stopped early (or stops under a smaller patience) trains no further.
    let stopped_before = tr.early.as_ref().is_some_and(|es| es.should_stop(t.early_stopping_patience));
    let mut finish = if stopped_before && tr.start.epoch < t.epochs { Finish::EarlyStopped } else { Finish::Completed };
    let last_epoch = if stopped_before { tr.start.epoch } else { t.epochs };
    for epoch in tr.start.epoch..last_epoch {
        if let EpochEnd::Stop(f) = tr.epoch(epoch)? {
            finish = f;
            break;
        }
    }
    tr.finish(finish)
}

impl<'a> Trainer<'a> {
    fn new(
        cfg: &'a RunConfig,
        local: EventSet,
        plan: &'a ShardPlan,
        comm: &'a dyn Communicator,
        device: Device,
        hooks: Hooks,
    ) -> Result<Self> {
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
        let shard = ShardFacts {
            weighted: local.weights.is_some(),
            labels: local.label_groups().labels,
            n_features: local.n_features(),
            n_labels: local.n_labels(),
            feature_names: local.feature_names.clone(),
            label_names: local.label_names.clone(),
        };
        // The events live on as the training and validation sets only (memory: one copy).
        drop(local);
        let Hooks { checkpoint_dir, controls, observer, resume, gather_rank_facts } = hooks;
        let start = setup::start(cfg, &shard, &train_set, comm, device, resume)?;
        controls.start_at(start.state.epoch as u64);
        let model = start.model;
        // Raw labels are kept only for the acceptance terms' flow samples.
        let keep_raw = !model.acceptance.is_empty() && cfg.training.acceptance_samples != 0.0;
        let train = setup::whitened(&model, &train_set, "training events", keep_raw)?;
        let val = setup::whitened(&model, &val_set, "validation events", false)?;
        let acceptance = AcceptanceTerms::new(cfg, &model, &train_set)?;
        let opt = setup::optimizer(cfg, &model, start.optimizer.as_ref())?;
        let state = start.state;
        let clip = GradClip { avg: state.grad_norm_avg, ..GradClip::new(t.clip_grad_norm, t.clip_grad_relative) };
        let early = (t.early_stopping_patience > 0).then(|| state.early_stopping.clone().unwrap_or_default());
        let best_weights = best_weights(&early, &state, start.best.as_ref(), &opt, comm, model.flow.device())?;
        let pass = GradientPass::weighted(&model.flow, &opt, &train.x, &train.c, train.w.as_ref());
        let n_params = opt.numel() as usize;
        Ok(Trainer {
            cfg,
            plan,
            comm,
            checkpoint_dir,
            controls,
            observer,
            gather_rank_facts,
            model,
            opt,
            clip,
            early,
            best_weights,
            pass,
            train,
            val,
            acceptance,
            history: state.history.clone(),
            global_step: state.global_step,
            start: state,
            resumed_world: start.resumed_world,
            checkpoints: Vec::new(),
            packet: Packet::new(n_params),
            pending_checkpoint: false,
            facts: FactsSampler::new(),
            last_step_seconds: 0.0,
            busy: (0.0, 0),
            show_bar: comm.is_root() && cfg.outputs.progress && std::io::stderr().is_terminal(),
            check_every: if device == Device::Cpu || comm.size() > 1 { 1 } else { 32 },
            shard,
        })
    }

    /// One epoch: its steps from where the run stands, then the epoch's end.
    fn epoch(&mut self, epoch: usize) -> Result<EpochEnd> {
        let cfg = self.cfg;
        let t = &cfg.training;
        let started = Instant::now();
        // A mid-epoch resume finishes the epoch with the batches it started with.
        let resuming = epoch == self.start.epoch;
        let world = if resuming && self.start.step_in_epoch > 0 { self.resumed_world } else { self.comm.size() };
        let strata = if t.batch_strata == 0 { world } else { t.batch_strata };
        let steps = self.plan.epoch_steps(t.seed, epoch, t.batch_size, strata);
        let first = if resuming { self.start.step_in_epoch } else { 0 };
        let bar = self.show_bar.then(|| {
            let b = indicatif::ProgressBar::new(steps.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("{}/{}", epoch + 1, t.epochs));
            b.set_position(first as u64);
            b
        });
        let mut sums = EpochSums {
            loss_sum: if resuming { self.start.partial_loss_sum } else { 0.0 },
            loss_acc: Tensor::zeros([], (Kind::Double, self.model.flow.device())),
            comm_seconds: 0.0,
            lr: learning_rate(t, epoch as f64),
        };
        if let Some(a) = self.acceptance.as_mut() {
            a.start_epoch(&self.model, (t.seed, epoch), &self.start, self.comm)?;
        }
        for (k, step) in steps.iter().enumerate().skip(first) {
            let stop_now = self.step(epoch, (k, steps.len()), step, &mut sums)?;
            if let Some(b) = &bar {
                b.inc(1);
            }
            if stop_now && k + 1 < steps.len() {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                let state = TrainState {
                    epoch,
                    step_in_epoch: k + 1,
                    global_step: self.global_step,
                    partial_loss_sum: sums.loss_sum,
                    history: self.history.clone(),
                    early_stopping: self.early.clone(),
                    grad_norm_avg: self.clip.avg,
                    acceptance_weights: self.acceptance.as_ref().map(AcceptanceTerms::by_label),
                    ..self.start.clone()
                };
                self.save(state)?;
                return Ok(EpochEnd::Stop(Finish::StoppedMidEpoch));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        self.end_epoch(epoch, started, (steps.len(), first), sums)
    }

    /// This rank's summed loss and gradient of its part of the batch `local`
    /// ([`GradientPass`]). With acceptance cuts the truncated likelihood's
    /// normaliser is a weighted sum of log-densities of flow samples, added
    /// by the same pass (with weights) or by autograd.
    fn gradient(&mut self, local: &[i64]) -> Gradient {
        let seed =
            crate::rng::mix_seed_parts(self.cfg.training.seed, &[self.global_step, self.comm.rank() as u64, 0xacc]);
        let conds = (&self.train.c, &self.train.raw_c);
        let (model, acceptance) = (&self.model, self.acceptance.as_ref());
        self.pass.gradient(
            &model.flow,
            &mut self.opt,
            (&self.train.x, &self.train.c),
            local,
            &mut self.packet,
            || acceptance.and_then(|a| a.step_samples(model, conds, local, seed)),
            |opt| {
                acceptance.and_then(|a| {
                    opt.zero_grad();
                    a.step_term(model, conds, local, seed)
                })
            },
        )
    }

    /// One step `k` of `n`: gradient, exchange, update, progress. Returns
    /// whether a stop now was asked for (on any rank).
    fn step(&mut self, epoch: usize, (k, n): (usize, usize), step: &Step, sums: &mut EpochSums) -> Result<bool> {
        let cfg = self.cfg;
        let t = &cfg.training;
        let step_started = Instant::now();
        sums.lr = learning_rate(t, epoch as f64 + k as f64 / self.plan.steps_per_epoch(t.batch_size) as f64);
        fault_at_step(self.comm.rank(), self.global_step, &self.controls);
        let grad = self.gradient(&step.local);
        self.busy.0 += step_started.elapsed().as_secs_f64();
        self.busy.1 += step.local.len() as u64;
        let (step_loss, flags) = if self.comm.size() > 1 {
            let t0 = Instant::now();
            let (loss, flags) = self.packet.exchange(self.comm, &grad, &self.controls)?;
            sums.comm_seconds += t0.elapsed().as_secs_f64();
            (Some(loss), flags)
        } else {
            let flags = local_flags(&self.controls);
            match &grad {
                Gradient::Host { loss } => (Some(*loss), flags),
                Gradient::Device { loss, .. } => {
                    sums.loss_acc += loss.detach().to_kind(Kind::Double);
                    (None, flags)
                }
            }
        };
        self.pending_checkpoint |= flags.checkpoint;
        // After an all-reduce or the CPU pass the summed gradient is in the packet.
        let device_grad = match &grad {
            Gradient::Device { flat, .. } if self.comm.size() == 1 => Some(flat),
            _ => None,
        };
        update(&mut self.opt, &mut self.clip, &self.packet, device_grad, step.global_count, sums.lr, self.global_step);
        self.global_step += 1;
        self.last_step_seconds = step_started.elapsed().as_secs_f64();
        if self.gather_rank_facts && self.global_step.is_multiple_of(RANK_FACTS_EVERY) {
            self.facts.sample(self.comm, self.observer.as_ref(), self.last_step_seconds)?;
        }
        if let Some(l) = step_loss {
            sums.loss_sum += l;
        }
        if (k + 1) % self.check_every == 0 || k + 1 == n || flags.stop_now {
            self.check_loss(epoch, k, sums, step_loss)?;
            if let Some(o) = &self.observer {
                let mean = step_loss.map_or(f64::NAN, |l| l / step.global_count as f64);
                o.on_step(epoch, k + 1, n, self.global_step, mean);
            }
        }
        Ok(flags.stop_now)
    }

    /// Reads pending device losses into the epoch's sum and stops the run on a non-finite one.
    fn check_loss(&self, epoch: usize, k: usize, sums: &mut EpochSums, step_loss: Option<f64>) -> Result<()> {
        if step_loss.is_none() {
            sums.loss_sum += sums.loss_acc.double_value(&[]);
            sums.loss_acc = Tensor::zeros([], (Kind::Double, self.model.flow.device()));
        }
        if sums.loss_sum.is_finite() {
            return Ok(());
        }
        let last = self
            .checkpoint_dir
            .as_deref()
            .and_then(checkpoint::latest)
            .map_or("none".to_string(), |p| p.display().to_string());
        Err(Error::Train(format!(
            "non-finite loss in epoch {}, step {} (global step {}); last good checkpoint: {last}; \
             lower training.lr_initial or check the input data",
            epoch + 1,
            k + 1,
            self.global_step
        )))
    }

    /// The epoch's end: validation, the record, early stopping, history.csv
    /// and checkpoints, and whether to go on.
    fn end_epoch(
        &mut self,
        epoch: usize,
        started: Instant,
        (n_steps, first): (usize, usize),
        sums: EpochSums,
    ) -> Result<EpochEnd> {
        let (cfg, comm, plan) = (self.cfg, self.comm, self.plan);
        let t = &cfg.training;
        // [train loss | validation NLL | stop after this epoch]: the stop flag is
        // agreed here too, so a request that reaches one rank after the epoch's
        // last step cannot make the ranks leave the loop at different epochs.
        let mut agreed = [
            if comm.size() > 1 { 0.0 } else { sums.loss_sum },
            nll_sum(&self.model, &self.val.x, &self.val.c, self.val.w.as_ref(), 65536),
            f64::from(u8::from(self.controls.stop_after_epoch.load(Ordering::Relaxed))),
            self.val.w_sum,
        ];
        comm.allreduce_sum_f64(&mut agreed)?;
        let stop = agreed[2] > 0.0;
        if self.early.is_some() && comm.size() > 1 {
            // MPI does not promise bit-identical all-reduce results on every rank;
            // early stopping acts on rank 0's value, so all ranks stop at the same epoch.
            for slot in [1, 3] {
                let mut bytes = agreed[slot].to_le_bytes().to_vec();
                comm.broadcast_bytes(0, &mut bytes)?;
                let arr: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Train("validation NLL broadcast: expected 8 bytes".into()))?;
                agreed[slot] = f64::from_le_bytes(arr);
            }
        }
        if comm.size() > 1 {
            agreed[0] = sums.loss_sum;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_nll: agreed[0] / plan.n_train as f64,
            // The weighted mean (Σ w NLL / Σ w); the plain mean when unweighted (Σ w = n_val).
            val_nll: if plan.n_val > 0 { agreed[1] / agreed[3] } else { f64::NAN },
            lr: sums.lr,
            seconds,
            events_per_s: plan.n_train as f64 * (n_steps - first) as f64 / n_steps as f64 / seconds.max(1e-9),
            allreduce_seconds: sums.comm_seconds,
        };
        if !rec.val_nll.is_finite() && plan.n_val > 0 {
            return Err(Error::Train(format!("non-finite validation loss after epoch {}", epoch + 1)));
        }
        self.report_epoch(&rec)?;
        let done = epoch + 1;
        let stop_early = self.observe_early_stopping(done, rec.val_nll);
        self.history.push(rec);
        if comm.is_root() {
            if let Some(dir) = self.checkpoint_dir.as_deref().and_then(Path::parent) {
                write_history(&dir.join("history.csv"), &self.history)?;
            }
        }
        let every = cfg.outputs.checkpoint_every;
        if self.pending_checkpoint
            || stop
            || stop_early
            || done == t.epochs
            || (every > 0 && done.is_multiple_of(every))
        {
            let state = TrainState {
                epoch: done,
                step_in_epoch: 0,
                global_step: self.global_step,
                partial_loss_sum: 0.0,
                history: self.history.clone(),
                early_stopping: self.early.clone(),
                grad_norm_avg: self.clip.avg,
                acceptance_weights: None,
                ..self.start.clone()
            };
            self.save(state)?;
            self.pending_checkpoint = false;
        }
        if stop_early {
            return Ok(EpochEnd::Stop(Finish::EarlyStopped));
        }
        if stop && done < t.epochs {
            return Ok(EpochEnd::Stop(Finish::StoppedAtEpoch));
        }
        Ok(EpochEnd::Next)
    }

    /// Logs the epoch, tells the observer, takes a late checkpoint request, samples rank facts.
    fn report_epoch(&mut self, rec: &EpochRecord) -> Result<()> {
        if self.comm.is_root() {
            tracing::info!(
                epoch = rec.epoch,
                epochs = self.cfg.training.epochs,
                train_nll = rec.train_nll,
                val_nll = rec.val_nll,
                lr = rec.lr,
                events_per_s = rec.events_per_s as u64,
                allreduce_s = rec.allreduce_seconds,
                "epoch done"
            );
        }
        if let Some(o) = &self.observer {
            o.on_epoch(rec);
        }
        // A checkpoint request that came after this epoch's last step was promised
        // for this epoch's end (the boundary had not moved yet): take it now, and
        // move the boundary in the same step. Only rank 0 writes.
        if self.comm.is_root() {
            self.pending_checkpoint |= self.controls.take_checkpoint_at_epoch_end(rec.epoch as u64);
        }
        if self.gather_rank_facts {
            self.facts.sample(self.comm, self.observer.as_ref(), self.last_step_seconds)?;
        }
        Ok(())
    }

    /// Feeds epoch `done`'s validation NLL to early stopping (keeping the best
    /// weights); whether to stop before the last epoch.
    fn observe_early_stopping(&mut self, done: usize, val_nll: f64) -> bool {
        let patience = self.cfg.training.early_stopping_patience;
        let Some(es) = self.early.as_mut() else { return false };
        if es.observe(done, val_nll) {
            self.best_weights = Some(self.opt.kept_weights());
        }
        let stop_early = es.should_stop(patience) && done < self.cfg.training.epochs;
        if stop_early && self.comm.is_root() {
            tracing::info!(
                epoch = done,
                best_epoch = es.best.map_or(0, |b| b.epoch),
                best_val_nll = es.best.map_or(f64::NAN, |b| b.val_nll),
                "early stopping: no lower validation NLL for {patience} epochs"
            );
        }
        stop_early
    }

    /// Writes a checkpoint (rank 0, when the run has a checkpoint directory).
    fn save(&mut self, state: TrainState) -> Result<()> {
        let Some(dir) = self.checkpoint_dir.as_ref().filter(|_| self.comm.is_root()) else { return Ok(()) };
        if let Some(o) = &self.observer {
            o.on_checkpoint_start();
        }
        let best = self.best_weights.as_ref().map(|b| self.opt.named(b));
        let path = checkpoint::write(dir, &self.model, &self.opt, &state, best.as_ref())?;
        checkpoint::prune(dir, self.cfg.outputs.keep_checkpoints)?;
        tracing::info!(epoch = state.epoch, step = state.step_in_epoch, "checkpoint written: {}", path.display());
        if let Some(o) = &self.observer {
            o.on_checkpoint(&state, &path);
        }
        self.checkpoints.push(path);
        Ok(())
    }

    /// The final model: the best epoch's weights (early stopping) or the weight
    /// average, and the training facts it carries.
    fn finish(mut self, finish: Finish) -> Result<TrainOutcome> {
        let (cfg, comm, plan) = (self.cfg, self.comm, self.plan);
        let t = &cfg.training;
        // The saved model carries the weight average (checkpoints keep both) or, with
        // early stopping, the best epoch's weights (its average, when one is kept).
        let restored_best = match (&self.early, &self.best_weights) {
            (Some(_), Some(w)) => {
                self.opt.set_weights(w);
                true
            }
            _ => false,
        };
        let averaged = if restored_best { self.opt.has_ema() } else { self.opt.swap_in_ema() };
        let ema_val_nll = if averaged {
            let mut v = [nll_sum(&self.model, &self.val.x, &self.val.c, self.val.w.as_ref(), 65536), self.val.w_sum];
            comm.allreduce_sum_f64(&mut v)?;
            let v = (plan.n_val > 0).then(|| v[0] / v[1]);
            if comm.is_root() {
                tracing::info!(val_nll = v.unwrap_or(f64::NAN), "weights replaced by their moving average");
            }
            v.filter(|v| v.is_finite())
        } else {
            None
        };
        let history = self.history;
        let early = self.early;
        self.model.training = serde_json::json!({
            "epochs": history.len(),
            "steps": self.global_step,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "world_size": comm.size(),
            "train_events": plan.n_train,
            "validation_events": plan.n_val,
            "weighted": self.shard.weighted,
            "weight_smoothing": cfg.data.weight_smoothing,
            "labels": plan.group_sizes.len(),
            "holdout_labels": cfg.data.holdout_labels,
            "validation_labels": cfg.data.validation_labels,
            "training_labels": std::mem::take(&mut self.shard.labels)
                .into_iter()
                .filter(|l| !cfg.data.validation_labels.iter().any(|v| super::plan::is_label(l, v)))
                .collect::<Vec<_>>(),
            "final_train_nll": history.last().map(|r| r.train_nll),
            "final_val_nll": history.last().map(|r| r.val_nll).filter(|v| v.is_finite()),
            "ema_decay": t.ema_decay,
            "ema_val_nll": ema_val_nll,
            "early_stopping_patience": t.early_stopping_patience,
            "best_epoch": early.as_ref().and_then(|e| e.best).map(|b| b.epoch),
            "best_val_nll": early.as_ref().and_then(|e| e.best).map(|b| b.val_nll),
            "stopped_early": finish == Finish::EarlyStopped,
        });
        Ok(TrainOutcome { model: self.model, history, finish, checkpoints: self.checkpoints, busy: self.busy })
    }
}

/// The best weights so far, from a resumed checkpoint's early-stopping state.
fn best_weights(
    early: &Option<EarlyStopping>,
    state: &TrainState,
    loaded: Option<&std::collections::HashMap<String, Tensor>>,
    opt: &Adam,
    comm: &dyn Communicator,
    device: Device,
) -> Result<Option<Tensor>> {
    let Some(es) = early else { return Ok(None) };
    if state.early_stopping.is_none() && !state.history.is_empty() && comm.is_root() {
        tracing::warn!(
            "the checkpoint was written without early stopping: the best epoch is sought from epoch {} on",
            state.epoch + 1
        );
    }
    if es.best.is_none() {
        return Ok(None);
    }
    let named = loaded.ok_or_else(|| {
        Error::Train(format!(
            "the checkpoint has an early-stopping state but no {}: it is incomplete",
            checkpoint::BEST
        ))
    })?;
    Ok(Some(opt.flat_from(named, checkpoint::BEST)?.to_device(device)))
}

/// Writes a finished run into `run_dir`: `model/`, `history.csv`, `config.toml`.
pub fn write_run(run_dir: &Path, cfg: &RunConfig, outcome: &TrainOutcome) -> Result<()> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let cfg_path = run_dir.join("config.toml");
    std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
    write_history(&run_dir.join("history.csv"), &outcome.history)?;
    outcome.model.save(&run_dir.join("model"))
}
