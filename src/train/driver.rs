//! The epoch/step loop: each rank computes the summed NLL of its part of the
//! global batch, the gradients are all-reduced as one flat buffer and divided
//! by the global event count, and every rank applies the same Adam step.
//!
//! The flat buffer carries three more numbers: the batch's summed loss and
//! this rank's stop and checkpoint requests. So one collective per step tells
//! every rank the global loss and whether anyone asked to stop — every rank
//! acts on the same step, and nothing else is exchanged in the hot loop.

use super::checkpoint::{self, LabelWeight, TrainState};
use super::clip::GradClip;
use super::optim::{Adam, AdamConfig};
use super::schedule::learning_rate;
use super::shard::ShardPlan;
use crate::comm::{Communicator, SingleProcess};
use crate::config::RunConfig;
use crate::data::efficiency::EfficiencyTable;
use crate::data::transform::{Acceptance, Transforms};
use crate::data::whiten::{WhitenSpec, Whitening};
use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::fast::to_host;
use crate::flow::{Maf, Model};
use ndarray::Array2;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// Seconds this rank (rank 0) spent in the gradient all-reduce.
    #[serde(default)]
    pub allreduce_seconds: f64,
}

/// Requests that reach the trainer between steps: from signal handlers or the
/// control plane. Cheap to poll (atomics); shared through an `Arc`.
#[derive(Debug, Default)]
pub struct Controls {
    /// Stop at the next step boundary, saving a resumable mid-epoch checkpoint.
    pub stop_now: AtomicBool,
    /// Stop at the next epoch boundary, with a checkpoint.
    pub stop_after_epoch: AtomicBool,
    /// Write a checkpoint at the next epoch boundary.
    pub checkpoint: AtomicBool,
}

/// Progress reported to an observer (the control plane, a progress display).
pub trait Observer: Send + Sync {
    /// After every step (cheap: called on the hot path; must not block).
    /// `loss` is the mean NLL of the global batch (NaN when not known without
    /// a device sync).
    fn on_step(&self, _epoch: usize, _step: usize, _steps: usize, _global_step: u64, _loss: f64) {}
    /// After every epoch.
    fn on_epoch(&self, _record: &EpochRecord) {}
    /// Before a checkpoint is written (rank 0).
    fn on_checkpoint_start(&self) {}
    /// After a checkpoint was written (rank 0).
    fn on_checkpoint(&self, _state: &TrainState, _path: &Path) {}
    /// Per-rank resource use, gathered every few hundred steps and at epoch ends.
    fn on_rank_facts(&self, _facts: &[RankFacts]) {}
}

/// Resource use of one rank, sent to rank 0 now and then (a few numbers, one collective).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankFacts {
    /// Resident memory of the process, bytes.
    pub rss_bytes: f64,
    /// Process CPU use since the previous sample, percent of one core.
    pub cpu_percent: f64,
    /// Wall time of the last step, seconds.
    pub last_step_seconds: f64,
}

/// Steps between two gatherings of [`RankFacts`].
pub const RANK_FACTS_EVERY: u64 = 200;

/// (resident bytes, CPU seconds used) of this process, from /proc (0 elsewhere).
pub fn process_usage() -> (f64, f64) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// Gathers every rank's facts on every rank (one all-reduce of 3 numbers per rank).
fn gather_facts(comm: &dyn Communicator, mine: RankFacts) -> Result<Vec<RankFacts>> {
    let w = comm.size();
    let mut buf = vec![0.0; 3 * w];
    let r = comm.rank();
    buf[3 * r] = mine.rss_bytes;
    buf[3 * r + 1] = mine.cpu_percent;
    buf[3 * r + 2] = mine.last_step_seconds;
    comm.allreduce_sum_f64(&mut buf)?;
    Ok(buf.chunks(3).map(|c| RankFacts { rss_bytes: c[0], cpu_percent: c[1], last_step_seconds: c[2] }).collect())
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// All epochs done.
    Completed,
    /// Stopped on request at a step boundary (mid-epoch checkpoint written).
    StoppedMidEpoch,
    /// Stopped on request at an epoch boundary (checkpoint written).
    StoppedAtEpoch,
    /// Stopped before the last epoch because the validation NLL stopped
    /// improving (`training.early_stopping_patience`); the model is final.
    EarlyStopped,
}

impl Finish {
    /// Whether training is over and the model final (completed or stopped early),
    /// as opposed to interrupted on request.
    pub fn is_final(self) -> bool {
        matches!(self, Finish::Completed | Finish::EarlyStopped)
    }
}

/// The result of training.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained model.
    pub model: Model,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// How training ended.
    pub finish: Finish,
    /// Checkpoints written by this process, in order.
    pub checkpoints: Vec<PathBuf>,
    /// This rank's busy time in training steps (loss and gradient, before the
    /// all-reduce; host time) and the local events they processed: a slow rank
    /// shows up as more seconds per event than the others.
    pub busy: (f64, u64),
}

/// Optional parts of a run: where checkpoints go, requests, observer.
#[derive(Default)]
pub struct Hooks {
    /// Checkpoint directory (written by rank 0). None: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Requests polled every step.
    pub controls: Arc<Controls>,
    /// Progress observer.
    pub observer: Option<Arc<dyn Observer>>,
    /// A checkpoint to continue from.
    pub resume: Option<checkpoint::Loaded>,
    /// Gather [`RankFacts`] on rank 0 every [`RANK_FACTS_EVERY`] steps (must be
    /// the same on all ranks: it adds a collective).
    pub gather_rank_facts: bool,
}

/// Header of `history.csv`.
pub const HISTORY_HEADER: &str = "epoch,train_nll,val_nll,lr,seconds,events_per_s,allreduce_seconds";

/// Writes the loss history as CSV, atomically.
pub fn write_history(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::from(HISTORY_HEADER);
    s.push('\n');
    for r in history {
        s.push_str(&format!(
            "{},{:.8},{:.8},{:.6e},{:.3},{:.1},{:.4}\n",
            r.epoch, r.train_nll, r.val_nll, r.lr, r.seconds, r.events_per_s, r.allreduce_seconds
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

/// Raw features after the model's transforms, with a clear error for values outside a step's domain.
fn transformed_features(ft: &Transforms, set: &EventSet, what: &str) -> Result<Array2<f32>> {
    let mut fx = set.samples.clone();
    ft.apply_rows(&mut fx, &set.labels, &set.feature_names, &set.label_names, what)?;
    Ok(fx)
}

/// Raw labels after the label transforms.
fn transformed_labels(lt: &Transforms, set: &EventSet, what: &str) -> Result<Array2<f32>> {
    let mut lx = set.labels.clone();
    let none = Array2::<f32>::zeros((set.labels.nrows(), 0));
    lt.apply_rows(&mut lx, &none, &set.label_names, &[], what)?;
    Ok(lx)
}

/// Every event must pass the declared acceptance: it describes how the data were cut.
fn check_acceptance(acceptance: &[Acceptance], set: &EventSet, what: &str) -> Result<()> {
    for a in acceptance {
        if let Some(i) = a.keeps_rows(set.samples.view()).iter().position(|&p| !p) {
            let row = set.samples.row(i);
            let values = match &a.expr {
                Some(_) => set
                    .feature_names
                    .iter()
                    .zip(row.iter())
                    .map(|(n, v)| format!("{n} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                None => format!(
                    "{} = {}",
                    set.feature_names.get(a.feature).map_or("?", String::as_str),
                    row.get(a.feature).copied().unwrap_or(f32::NAN)
                ),
            };
            return Err(Error::Data(format!(
                "{what}: event {i} has {values} outside the declared acceptance ({}): \
                 data.acceptance must describe how the data were cut",
                a.describe(&set.feature_names)
            )));
        }
    }
    Ok(())
}

/// A seed derived from `seed` and a few integers (SplitMix64 steps).
fn mix_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h = h.wrapping_add(p).wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h >> 1
}

/// Flow samples per training label used to estimate its acceptance at each epoch start.
const ACCEPTANCE_PROBE: i64 = 2000;
/// Labels whose estimated acceptance is at least this get no normaliser term (it would only add noise).
const ACCEPTANCE_ACTIVE_BELOW: f64 = 0.995;

/// Per training label group, the weight of its events' flow samples in the
/// acceptance terms ([`acceptance_term`]):
///
/// * truncated likelihood (no efficiencies): `1 / Ẑ(c)`, from the flow's
///   probability `Ẑ` to pass the acceptance at the label, estimated at each
///   epoch start; 0 where the flow already puts (almost) everything inside
///   the acceptance;
/// * censored likelihood (efficiency `ε` of the label known):
///   `-r = -(1 - ε) / ε`, the rejected events per kept event; 0 where `ε = 1`.
fn acceptance_group_weights(
    model: &Model,
    groups: &crate::data::LabelGroups,
    efficiency: Option<&[f64]>,
    seed: u64,
) -> Vec<f32> {
    let l = model.n_labels() as i64;
    let _rng = crate::rng::seeded(seed);
    tch::no_grad(|| {
        groups
            .labels
            .iter()
            .enumerate()
            .map(|(g, lab)| {
                (match efficiency.and_then(|e| e.get(g)) {
                    Some(&eps) => -(1.0 - eps) / eps,
                    None => {
                        let raw = Tensor::from_slice(lab).view([1, l]).expand([ACCEPTANCE_PROBE, l], false);
                        let x = model.sample(&raw).to_device(Device::Cpu);
                        let pass = model
                            .acceptance
                            .iter()
                            .fold(Tensor::ones([ACCEPTANCE_PROBE], (Kind::Bool, Device::Cpu)), |m, a| {
                                m.logical_and(&a.mask(&x))
                            });
                        let z = pass.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
                        if z < ACCEPTANCE_ACTIVE_BELOW {
                            1.0 / z.max(0.05)
                        } else {
                            0.0
                        }
                    }
                }) as f32
            })
            .collect()
    })
}

/// The group weights of a mid-epoch checkpoint, in the order of `groups`;
/// `None` (estimate them again) when the checkpoint lacks any of the labels.
fn restored_group_weights(stored: &[LabelWeight], groups: &crate::data::LabelGroups) -> Option<Vec<f32>> {
    groups
        .labels
        .iter()
        .map(|lab| {
            let same = |w: &&LabelWeight| w.label.len() == lab.len() && w.label.iter().zip(lab).all(|(a, b)| a.to_bits() == b.to_bits());
            stored.iter().find(same).map(|w| w.weight)
        })
        .collect()
}

/// Per training event, its label group's weight (`group_weights`).
fn acceptance_event_weights(
    groups: &crate::data::LabelGroups,
    group_weights: &[f32],
    n_events: usize,
    device: Device,
) -> Tensor {
    let mut w = vec![0f32; n_events];
    for (members, &v) in groups.members.iter().zip(group_weights) {
        if v != 0.0 {
            for &i in members {
                if let Some(slot) = w.get_mut(i) {
                    *slot = v;
                }
            }
        }
    }
    Tensor::from_slice(&w).to_device(device)
}

/// The acceptance terms of the likelihood for one step's events (`c`, `raw_c`,
/// weights `w` from [`acceptance_weights`], label group `gid` of each event),
/// estimated with `reps` flow samples per event at its label (no gradient
/// through the sampling). Returns a scalar to add to the summed NLL.
///
/// * Truncated (`w_i > 0`): `log Z(c_i)` has the gradient
///   `E[∇ log p(x̃ | c_i) | x̃ accepted]`: each *accepted* sample weighted `w_i / reps`.
/// * Censored (`w_i = -r < 0`): the `r` rejected events per kept event add
///   `-r log(1 - Z(c_i))`, gradient `-r E[∇ log p | x̃ rejected]`, estimated per
///   label group from this step's *rejected* samples (a ratio estimator: weight
///   `w_i · S_g / (R_g · reps)` with `S_g` samples and `R_g` rejected ones in the
///   group). Unlike a weight fixed per epoch this cannot run away when the
///   flow's rejected fraction changes within an epoch, and it needs no
///   estimate of `Z`; a group without rejected samples in a step gets no push.
///
/// Events with `w_i = 0` are skipped.
fn acceptance_term(
    model: &Model,
    (c, raw_c, gid): (&Tensor, &Tensor, &Tensor),
    w: &Tensor,
    reps: usize,
    seed: u64,
) -> Tensor {
    match acceptance_samples(model, (c, raw_c, gid), w, reps, seed) {
        Some((z, cz, wk)) => (model.flow.log_prob(&z, &cz) * wk).sum(Kind::Float),
        None => Tensor::zeros([], (Kind::Float, c.device())),
    }
}

/// The samples of [`acceptance_term`] (flow space), their labels and their
/// weights: the term is `Σ wk log p(z | cz)`. `None` where no sample is used.
fn acceptance_samples(
    model: &Model,
    (c, raw_c, gid): (&Tensor, &Tensor, &Tensor),
    w: &Tensor,
    reps: usize,
    seed: u64,
) -> Option<(Tensor, Tensor, Tensor)> {
    let active = w.ne(0.0).nonzero().squeeze_dim(1);
    if active.size()[0] == 0 {
        return None;
    }
    let sel = active.repeat([reps as i64]);
    let c_sel = c.index_select(0, &sel);
    let w_sel = w.index_select(0, &sel);
    let (z, keep, wk) = {
        let _rng = crate::rng::seeded(seed);
        tch::no_grad(|| {
            let z = model.flow.sample(&c_sel);
            let x = model.from_flow_space(&z, &raw_c.index_select(0, &sel));
            let pass = model.acceptance.iter().fold(x.select(1, 0).isfinite(), |m, a| m.logical_and(&a.mask(&x)));
            // Truncated events use their accepted samples, censored ones their rejected samples.
            let truncated = w_sel.gt(0.0);
            let use_sample = pass.eq_tensor(&truncated);
            let mut wk = &w_sel * use_sample.to_kind(Kind::Float) / reps as f64;
            let censored = truncated.logical_not();
            if censored.any().int64_value(&[]) != 0 {
                let g_sel = gid.index_select(0, &sel);
                let n = g_sel.max().int64_value(&[]) + 1;
                let count = |m: &Tensor| {
                    Tensor::zeros([n], (Kind::Float, c.device())).index_add(0, &g_sel, &m.to_kind(Kind::Float))
                };
                let samples = count(&censored);
                let rejected = count(&censored.logical_and(&pass.logical_not()));
                let ratio = (samples / rejected.clamp_min(1.0)).index_select(0, &g_sel);
                wk = wk.where_self(&truncated, &(&wk * ratio));
            }
            let keep = use_sample.nonzero().squeeze_dim(1);
            let wk = wk.index_select(0, &keep);
            (z, keep, wk)
        })
    };
    if keep.size()[0] == 0 {
        return None;
    }
    Some((z.index_select(0, &keep), c_sel.index_select(0, &keep), wk))
}

/// Test-only fault injection, read from `FEDHEX_FAULT` before global step `STEP`:
/// * `kill:RANK:STEP`: SIGKILL this process (rank `RANK`), to test that a
///   killed job fails cleanly and resumes exactly;
/// * `stop:STEP`: rank 0 asks for a stop now, as `fedhex-ctl stop --now` does
///   (a mid-epoch checkpoint after that step);
/// * `stop-after-epoch:STEP`: rank 0 asks for a stop at the end of the epoch.
fn fault_at_step(rank: usize, global_step: u64, controls: &Controls) {
    #[derive(PartialEq)]
    enum Fault {
        Kill(usize),
        Stop,
        StopAfterEpoch,
    }
    // Read once: the environment lookup takes a process-wide lock.
    static FAULT: std::sync::OnceLock<Option<(Fault, u64)>> = std::sync::OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let f = std::env::var("FEDHEX_FAULT").ok()?;
        let parts: Vec<&str> = f.split(':').collect();
        match parts.as_slice() {
            ["kill", r, s] => Some((Fault::Kill(r.parse().ok()?), s.parse().ok()?)),
            ["stop", s] => Some((Fault::Stop, s.parse().ok()?)),
            ["stop-after-epoch", s] => Some((Fault::StopAfterEpoch, s.parse().ok()?)),
            _ => None,
        }
    });
    match fault {
        Some((Fault::Kill(r), s)) if (*r, *s) == (rank, global_step) => {
            // SAFETY: raise() only delivers a signal to this process.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
        Some((Fault::Stop, s)) if *s == global_step && rank == 0 => controls.stop_now.store(true, Ordering::Relaxed),
        Some((Fault::StopAfterEpoch, s)) if *s == global_step && rank == 0 => {
            controls.stop_after_epoch.store(true, Ordering::Relaxed)
        }
        _ => {}
    }
}

fn sum_of_squares(g: &[f32]) -> f64 {
    g.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// Orders events by label group and builds the single-process plan.
pub fn single_process_plan(cfg: &RunConfig, events: &EventSet) -> Result<(EventSet, ShardPlan)> {
    let groups = events.label_groups();
    let order: Vec<usize> = groups.members.iter().flatten().copied().collect();
    let plan = super::run::make_plan(cfg, &groups, events.n_labels(), 1, 0)?;
    Ok((events.select(&order), plan))
}

/// Trains on one process without checkpoints (tests, small jobs).
pub fn train_events(cfg: &RunConfig, events: &EventSet) -> Result<TrainOutcome> {
    let (ordered, plan) = single_process_plan(cfg, events)?;
    let device = crate::device::resolve(crate::device::parse_device(&cfg.training.device)?, 0)?;
    train(cfg, &ordered, &plan, &SingleProcess, device, Hooks::default())
}

/// Trains across the ranks of `comm`. `local` holds this rank's events in plan
/// order (group by group, its chunk of each group).
pub fn train(
    cfg: &RunConfig,
    local: &EventSet,
    plan: &ShardPlan,
    comm: &dyn Communicator,
    device: Device,
    hooks: Hooks,
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

    let mut opt_state = None;
    // The world size whose batches the epoch in progress at a resume was drawn
    // for (its strata, when `batch_strata` follows the world size).
    let mut resumed_world = comm.size();
    let mut start = TrainState {
        epoch: 0,
        step_in_epoch: 0,
        global_step: 0,
        seed: t.seed,
        world_size: comm.size(),
        partial_loss_sum: 0.0,
        history: vec![],
        config: cfg.to_toml()?,
        fedhex_version: env!("CARGO_PKG_VERSION").into(),
        early_stopping: None,
        grad_norm_avg: None,
        acceptance_weights: None,
    };
    let mut loaded_best = None;
    let mut model = match hooks.resume {
        Some(loaded) => {
            if loaded.model.flow.config() != &cfg.network.maf(local.n_features(), local.n_labels()) {
                return Err(Error::Train(format!(
                    "checkpoint {} has a different network than the configuration; \
                     resume with the same [network] section or start a new run directory",
                    loaded.path.display()
                )));
            }
            if loaded.state.world_size != comm.size() {
                tracing::warn!(
                    "checkpoint {} was written with {} ranks, resuming with {}: the run stays valid \
                     but is no longer bit-identical to an uninterrupted one",
                    loaded.path.display(),
                    loaded.state.world_size,
                    comm.size()
                );
            }
            if comm.is_root() {
                tracing::info!(
                    "resuming from {} (epoch {}, step {})",
                    loaded.path.display(),
                    loaded.state.epoch,
                    loaded.state.step_in_epoch
                );
            }
            opt_state = Some(loaded.optimizer);
            loaded_best = loaded.best;
            resumed_world = loaded.state.world_size;
            start = TrainState { config: start.config, world_size: comm.size(), ..loaded.state };
            loaded.model
        }
        None => {
            let d = &cfg.data;
            let ft = Transforms::from_specs(
                &d.feature_transforms,
                &local.feature_names,
                &local.label_names,
                "feature",
                true,
            )?;
            let lt = Transforms::from_specs(&d.label_transforms, &local.label_names, &[], "label", false)?;
            let acceptance =
                d.acceptance.iter().map(|a| Acceptance::parse(a, &local.feature_names)).collect::<Result<Vec<_>>>()?;
            let fx = transformed_features(&ft, &train_set, "training events")?;
            let lx = transformed_labels(&lt, &train_set, "training events")?;
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
            let fw = Whitening::fit(fx.view(), &fspec, comm)?;
            let lw = Whitening::fit(lx.view(), &lspec, comm)?;
            let flow = {
                let _rng = crate::rng::seeded(t.seed);
                Maf::new(cfg.network.maf(local.n_features(), local.n_labels()), device)?
            };
            Model::new(flow, fw, lw)?.with_preprocessing(ft, lt, acceptance)?
        }
    };
    let model_device = model.flow.device();
    let white = |m: &Model, set: &EventSet, what: &str| -> Result<(Tensor, Tensor, Tensor)> {
        // Clear errors for values outside a transform's domain or the acceptance.
        transformed_features(&m.feature_transforms, set, what)?;
        check_acceptance(&m.acceptance, set, what)?;
        let raw_c = to_tensor(&set.labels).to_device(model_device);
        let (x, c) = tch::no_grad(|| (m.to_flow_space(&to_tensor(&set.samples), &raw_c).0, m.condition(&raw_c)));
        Ok((x, c, raw_c))
    };
    let (train_x, train_c, train_raw_c) = white(&model, &train_set, "training events")?;
    let (val_x, val_c, _) = white(&model, &val_set, "validation events")?;
    let correct_acceptance = !model.acceptance.is_empty() && t.acceptance_samples > 0;
    let train_groups = if correct_acceptance { Some(train_set.label_groups()) } else { None };
    // Censored likelihood: the efficiency of each training label (same order as the groups).
    let efficiency = match (&cfg.data.acceptance_efficiency, &train_groups) {
        (Some(path), Some(groups)) => Some(EfficiencyTable::read(path, model.n_labels())?.for_labels(&groups.labels)?),
        _ => None,
    };
    let mut acceptance_weight: Option<Tensor> = None;
    // The same weights per label group, for a mid-epoch checkpoint.
    let mut group_weights: Option<Vec<LabelWeight>> = None;
    // The label group of each training event (for the censored term's per-label estimate).
    let train_gid = train_groups.as_ref().map(|groups| {
        let mut gid = vec![0i64; train_set.len()];
        for (g, members) in groups.members.iter().enumerate() {
            for &i in members {
                if let Some(slot) = gid.get_mut(i) {
                    *slot = g as i64;
                }
            }
        }
        Tensor::from_slice(&gid).to_device(model_device)
    });

    let mut opt =
        Adam::new(model.flow.var_store(), AdamConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps });
    if t.ema_decay > 0.0 {
        opt.enable_ema(t.ema_decay);
    }
    if let Some(st) = &opt_state {
        opt.load_state(st)?;
    }
    // Early stopping: the state and the best weights so far (from the checkpoint on resume).
    let mut clip = GradClip { avg: start.grad_norm_avg, ..GradClip::new(t.clip_grad_norm, t.clip_grad_relative) };
    let patience = t.early_stopping_patience;
    let mut early = (patience > 0).then(|| start.early_stopping.clone().unwrap_or_default());
    let mut best_weights: Option<Tensor> = None;
    if let Some(es) = &early {
        if start.early_stopping.is_none() && !start.history.is_empty() && comm.is_root() {
            tracing::warn!(
                "the checkpoint was written without early stopping: the best epoch is sought from epoch {} on",
                start.epoch + 1
            );
        }
        if es.best.is_some() {
            let named = loaded_best.as_ref().ok_or_else(|| {
                Error::Train(format!(
                    "the checkpoint has an early-stopping state but no {}: it is incomplete",
                    checkpoint::BEST
                ))
            })?;
            best_weights = Some(opt.flat_from(named, checkpoint::BEST)?.to_device(model_device));
        }
    }
    // The hand-written CPU training pass where it applies (else autograd), with host copies of the data.
    let mut fast = crate::flow::fast::FastTrainer::new(&model.flow, opt.names(), opt.numels());
    let fast_data = fast.as_ref().map(|_| (to_host(&train_x), to_host(&train_c)));
    let steps_per_epoch = plan.steps_per_epoch(t.batch_size);
    let show_bar = comm.is_root() && cfg.outputs.progress && std::io::stderr().is_terminal();
    let check_every = if device == Device::Cpu || comm.size() > 1 { 1 } else { 32 };
    let mut history = start.history.clone();
    let mut global_step = start.global_step;
    let mut checkpoints = Vec::new();
    let n_params = opt.numel() as usize;
    let mut host: Vec<f32> = Vec::new();
    let controls = hooks.controls.clone();
    let mut pending_checkpoint = false;
    // A resumed run that had already stopped early (or stops under a smaller patience) trains no further.
    let stopped_before = early.as_ref().is_some_and(|es| es.should_stop(patience));
    let mut finish = if stopped_before && start.epoch < t.epochs { Finish::EarlyStopped } else { Finish::Completed };
    let last_epoch = if stopped_before { start.epoch } else { t.epochs };
    let mut usage_mark = (Instant::now(), process_usage().1);
    let mut facts = |comm: &dyn Communicator, last_step: f64| -> Result<()> {
        let (rss, cpu) = process_usage();
        let dt = usage_mark.0.elapsed().as_secs_f64().max(1e-9);
        let mine =
            RankFacts { rss_bytes: rss, cpu_percent: 100.0 * (cpu - usage_mark.1) / dt, last_step_seconds: last_step };
        usage_mark = (Instant::now(), cpu);
        let all = gather_facts(comm, mine)?;
        if let Some(o) = hooks.observer.as_ref().filter(|_| comm.is_root()) {
            o.on_rank_facts(&all);
        }
        Ok(())
    };
    let mut last_step_seconds = 0.0;
    let mut busy = (0.0f64, 0u64);

    let save = |model: &Model,
                opt: &Adam,
                state: TrainState,
                best: Option<&Tensor>,
                checkpoints: &mut Vec<PathBuf>|
     -> Result<()> {
        let Some(dir) = hooks.checkpoint_dir.as_ref().filter(|_| comm.is_root()) else { return Ok(()) };
        if let Some(o) = &hooks.observer {
            o.on_checkpoint_start();
        }
        let best = best.map(|b| opt.named(b));
        let path = checkpoint::write(dir, model, opt, &state, best.as_ref())?;
        checkpoint::prune(dir, cfg.outputs.keep_checkpoints)?;
        tracing::info!(epoch = state.epoch, step = state.step_in_epoch, "checkpoint written: {}", path.display());
        if let Some(o) = &hooks.observer {
            o.on_checkpoint(&state, &path);
        }
        checkpoints.push(path);
        Ok(())
    };

    'epochs: for epoch in start.epoch..last_epoch {
        let started = Instant::now();
        // A mid-epoch resume finishes the epoch with the batches it started with.
        let world = if epoch == start.epoch && start.step_in_epoch > 0 { resumed_world } else { comm.size() };
        let strata = if t.batch_strata == 0 { world } else { t.batch_strata };
        let steps = plan.epoch_steps(t.seed, epoch, t.batch_size, strata);
        let first = if epoch == start.epoch { start.step_in_epoch } else { 0 };
        let bar = show_bar.then(|| {
            let b = indicatif::ProgressBar::new(steps.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("{}/{}", epoch + 1, t.epochs));
            b.set_position(first as u64);
            b
        });
        let mut loss_sum = if epoch == start.epoch { start.partial_loss_sum } else { 0.0 };
        let mut comm_seconds = 0.0;
        let mut lr = learning_rate(t, epoch as f64);
        let mut loss_acc = Tensor::zeros([], (Kind::Double, model_device));
        if let Some(groups) = &train_groups {
            // A mid-epoch resume keeps the weights estimated at the start of its epoch.
            let restored = match &start.acceptance_weights {
                Some(stored) if epoch == start.epoch && start.mid_epoch() => {
                    let r = restored_group_weights(stored, groups);
                    if r.is_none() {
                        tracing::warn!(
                            "the checkpoint lacks acceptance weights of some training labels: \
                             estimated again, so the resumed epoch is no longer bit-identical"
                        );
                    }
                    r
                }
                _ => None,
            };
            let gw = restored.unwrap_or_else(|| {
                let seed = mix_seed(t.seed, &[epoch as u64, 0xacc]);
                acceptance_group_weights(&model, groups, efficiency.as_deref(), seed)
            });
            acceptance_weight = Some(acceptance_event_weights(groups, &gw, train_set.len(), model_device));
            group_weights = Some(
                groups.labels.iter().zip(&gw).map(|(l, &w)| LabelWeight { label: l.clone(), weight: w }).collect(),
            );
        }
        for (k, step) in steps.iter().enumerate().skip(first) {
            let step_started = Instant::now();
            lr = learning_rate(t, epoch as f64 + k as f64 / steps_per_epoch as f64);
            fault_at_step(comm.rank(), global_step, &controls);
            // The summed loss and gradient: by the hand-written CPU pass straight
            // into `host`, or by autograd. With acceptance cuts the truncated
            // likelihood's normaliser is a weighted sum of log-densities of flow
            // samples, added by the same pass (with weights) or by autograd.
            let mut fast_loss = None;
            let step_data = || -> Option<((Tensor, Tensor, Tensor), Tensor, u64)> {
                let (w, gid) = (acceptance_weight.as_ref()?, train_gid.as_ref()?);
                let idx = Tensor::from_slice(&step.local).to_device(model_device);
                let seed = mix_seed(t.seed, &[global_step, comm.rank() as u64, 0xacc]);
                let data =
                    (train_c.index_select(0, &idx), train_raw_c.index_select(0, &idx), gid.index_select(0, &idx));
                Some((data, w.index_select(0, &idx), seed))
            };
            let normaliser = |opt: &mut Adam| -> Option<Tensor> {
                let ((c, raw_c, gid), w, seed) = step_data()?;
                opt.zero_grad();
                let norm = acceptance_term(&model, (&c, &raw_c, &gid), &w, t.acceptance_samples, seed);
                norm.requires_grad().then_some(norm)
            };
            let (loss, flat) = match (fast.as_mut(), &fast_data) {
                (Some(f), Some((hx, hc))) => {
                    host.resize(n_params + 4, 0.0);
                    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
                    fast_loss =
                        Some(f.loss_and_grad(opt.flat_params(), hx, hc, &step.local, threads, &mut host[..n_params]));
                    let samples = step_data().and_then(|((c, raw_c, gid), w, seed)| {
                        acceptance_samples(&model, (&c, &raw_c, &gid), &w, t.acceptance_samples, seed)
                    });
                    if let Some((z, cz, wk)) = samples {
                        // + Σ wk log p(z) = Σ (-wk) NLL(z).
                        let (hz, hcz, hw) = (to_host(&z), to_host(&cz), to_host(&-wk));
                        f.add_weighted(opt.flat_params(), &hz, &hcz, &hw, threads, &mut host[..n_params]);
                    }
                    (Tensor::new(), Tensor::new())
                }
                _ => {
                    let idx = Tensor::from_slice(&step.local).to_device(model_device);
                    let x = train_x.index_select(0, &idx);
                    let c = train_c.index_select(0, &idx);
                    let norm = normaliser(&mut opt);
                    opt.zero_grad();
                    let loss = model.flow.log_prob(&x, &c).sum(Kind::Float).neg();
                    match norm {
                        Some(norm) => (&loss + norm).backward(),
                        None => loss.backward(),
                    }
                    let flat = opt.flat_grad();
                    (loss, flat)
                }
            };
            busy.0 += step_started.elapsed().as_secs_f64();
            busy.1 += step.local.len() as u64;
            let stop_now;
            let step_loss: Option<f64>;
            if comm.size() > 1 {
                // [gradients | loss | stop_now | stop_after_epoch | checkpoint]
                host.resize(n_params + 4, 0.0);
                host[n_params] = match fast_loss {
                    Some(l) => l as f32,
                    None => {
                        flat.to_device(Device::Cpu).copy_data(&mut host[..n_params], n_params);
                        loss.double_value(&[]) as f32
                    }
                };
                host[n_params + 1] = f32::from(u8::from(controls.stop_now.load(Ordering::Relaxed)));
                host[n_params + 2] = f32::from(u8::from(controls.stop_after_epoch.load(Ordering::Relaxed)));
                host[n_params + 3] = f32::from(u8::from(controls.checkpoint.swap(false, Ordering::Relaxed)));
                let t0 = Instant::now();
                comm.allreduce_sum_f32(&mut host)?;
                comm_seconds += t0.elapsed().as_secs_f64();
                step_loss = Some(f64::from(host[n_params]));
                stop_now = host[n_params + 1] > 0.0;
                if host[n_params + 2] > 0.0 {
                    controls.stop_after_epoch.store(true, Ordering::Relaxed);
                }
                pending_checkpoint |= host[n_params + 3] > 0.0;
            } else {
                stop_now = controls.stop_now.load(Ordering::Relaxed);
                pending_checkpoint |= controls.checkpoint.swap(false, Ordering::Relaxed);
                step_loss = fast_loss;
                if fast_loss.is_none() {
                    loss_acc += loss.detach().to_kind(Kind::Double);
                }
            }
            // The summed gradient is in `host` after an all-reduce or the fast pass.
            // The mean gradient's norm is needed to clip, or to log it at debug level.
            let mean = 1.0 / step.global_count as f64;
            let need_norm = clip.active() || tracing::enabled!(tracing::Level::DEBUG);
            let on_host = comm.size() > 1 || fast_loss.is_some();
            let sum_sq = match (need_norm, on_host) {
                (false, _) => 0.0,
                (true, true) => sum_of_squares(&host[..n_params]),
                (true, false) => flat.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]),
            };
            let scale = mean * clip.factor(sum_sq.sqrt() * mean);
            if need_norm {
                tracing::debug!(
                    step = global_step,
                    grad_norm = sum_sq.sqrt() * mean,
                    clipped = scale < mean,
                    "gradient"
                );
            }
            if on_host {
                opt.step_host(&host[..n_params], scale, lr);
            } else {
                opt.step_flat(&flat, scale, lr);
            }
            global_step += 1;
            last_step_seconds = step_started.elapsed().as_secs_f64();
            if hooks.gather_rank_facts && global_step % RANK_FACTS_EVERY == 0 {
                facts(comm, last_step_seconds)?;
            }
            if let Some(l) = step_loss {
                loss_sum += l;
            }
            if (k + 1) % check_every == 0 || k + 1 == steps.len() || stop_now {
                if step_loss.is_none() {
                    loss_sum += loss_acc.double_value(&[]);
                    loss_acc = Tensor::zeros([], (Kind::Double, model_device));
                }
                if !loss_sum.is_finite() {
                    let last = hooks
                        .checkpoint_dir
                        .as_deref()
                        .and_then(checkpoint::latest)
                        .map_or("none".to_string(), |p| p.display().to_string());
                    return Err(Error::Train(format!(
                        "non-finite loss in epoch {}, step {} (global step {global_step}); last good checkpoint: {last}; \
                         lower training.lr_initial or check the input data",
                        epoch + 1,
                        k + 1
                    )));
                }
                if let Some(o) = &hooks.observer {
                    o.on_step(
                        epoch,
                        k + 1,
                        steps.len(),
                        global_step,
                        step_loss.map_or(f64::NAN, |l| l / step.global_count as f64),
                    );
                }
            }
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
                    global_step,
                    partial_loss_sum: loss_sum,
                    history: history.clone(),
                    early_stopping: early.clone(),
                    grad_norm_avg: clip.avg,
                    acceptance_weights: group_weights.clone(),
                    ..start.clone()
                };
                save(&model, &opt, state, best_weights.as_ref(), &mut checkpoints)?;
                finish = Finish::StoppedMidEpoch;
                break 'epochs;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        // [train loss | validation NLL | stop after this epoch]: the stop flag is
        // agreed here too, so a request that reaches one rank after the epoch's
        // last step cannot make the ranks leave the loop at different epochs.
        let mut sums = [
            if comm.size() > 1 { 0.0 } else { loss_sum },
            nll_sum(&model.flow, &val_x, &val_c, 65536),
            f64::from(u8::from(controls.stop_after_epoch.load(Ordering::Relaxed))),
        ];
        comm.allreduce_sum_f64(&mut sums)?;
        let stop = sums[2] > 0.0;
        if early.is_some() && comm.size() > 1 {
            // MPI does not promise bit-identical all-reduce results on every rank;
            // early stopping acts on rank 0's value, so all ranks stop at the same epoch.
            let mut bytes = sums[1].to_le_bytes().to_vec();
            comm.broadcast_bytes(0, &mut bytes)?;
            let arr: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::Train("validation NLL broadcast: expected 8 bytes".into()))?;
            sums[1] = f64::from_le_bytes(arr);
        }
        if comm.size() > 1 {
            sums[0] = loss_sum;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_nll: sums[0] / plan.n_train as f64,
            val_nll: if plan.n_val > 0 { sums[1] / plan.n_val as f64 } else { f64::NAN },
            lr,
            seconds,
            events_per_s: plan.n_train as f64 * (steps.len() - first) as f64 / steps.len() as f64 / seconds.max(1e-9),
            allreduce_seconds: comm_seconds,
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
                allreduce_s = rec.allreduce_seconds,
                "epoch done"
            );
        }
        if let Some(o) = &hooks.observer {
            o.on_epoch(&rec);
        }
        // A checkpoint request that came after this epoch's last step but before the
        // observer saw the epoch end was promised for this epoch (the control plane
        // answers "after epoch <completed + 1>"): take it now. Only rank 0 writes.
        if comm.is_root() {
            pending_checkpoint |= controls.checkpoint.swap(false, Ordering::Relaxed);
        }
        if hooks.gather_rank_facts {
            facts(comm, last_step_seconds)?;
        }
        let done = epoch + 1;
        let mut stop_early = false;
        if let Some(es) = early.as_mut() {
            if es.observe(done, rec.val_nll) {
                best_weights = Some(opt.kept_weights());
            }
            stop_early = es.should_stop(patience) && done < t.epochs;
            if stop_early && comm.is_root() {
                tracing::info!(
                    epoch = done,
                    best_epoch = es.best.map_or(0, |b| b.epoch),
                    best_val_nll = es.best.map_or(f64::NAN, |b| b.val_nll),
                    "early stopping: no lower validation NLL for {patience} epochs"
                );
            }
        }
        history.push(rec);
        if comm.is_root() {
            if let Some(dir) = hooks.checkpoint_dir.as_deref().and_then(Path::parent) {
                write_history(&dir.join("history.csv"), &history)?;
            }
        }
        let every = cfg.outputs.checkpoint_every;
        if pending_checkpoint || stop || stop_early || done == t.epochs || (every > 0 && done % every == 0) {
            let state = TrainState {
                epoch: done,
                step_in_epoch: 0,
                global_step,
                partial_loss_sum: 0.0,
                history: history.clone(),
                early_stopping: early.clone(),
                grad_norm_avg: clip.avg,
                acceptance_weights: None,
                ..start.clone()
            };
            save(&model, &opt, state, best_weights.as_ref(), &mut checkpoints)?;
            pending_checkpoint = false;
        }
        if stop_early {
            finish = Finish::EarlyStopped;
            break;
        }
        if stop && done < t.epochs {
            finish = Finish::StoppedAtEpoch;
            break;
        }
    }
    // The saved model carries the weight average (checkpoints keep both) or, with
    // early stopping, the best epoch's weights (its average, when one is kept).
    let restored_best = match (&early, &best_weights) {
        (Some(_), Some(w)) => {
            opt.set_weights(w);
            true
        }
        _ => false,
    };
    let averaged = if restored_best { opt.has_ema() } else { opt.swap_in_ema() };
    let ema_val_nll = if averaged {
        let mut v = [nll_sum(&model.flow, &val_x, &val_c, 65536)];
        comm.allreduce_sum_f64(&mut v)?;
        let v = (plan.n_val > 0).then(|| v[0] / plan.n_val as f64);
        if comm.is_root() {
            tracing::info!(val_nll = v.unwrap_or(f64::NAN), "weights replaced by their moving average");
        }
        v.filter(|v| v.is_finite())
    } else {
        None
    };
    model.training = serde_json::json!({
        "epochs": history.len(),
        "steps": global_step,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "world_size": comm.size(),
        "train_events": plan.n_train,
        "validation_events": plan.n_val,
        "labels": plan.group_sizes.len(),
        "holdout_labels": cfg.data.holdout_labels,
        "validation_labels": cfg.data.validation_labels,
        "training_labels": local
            .label_groups()
            .labels
            .into_iter()
            .filter(|l| !cfg.data.validation_labels.iter().any(|v| super::run::is_label(l, v)))
            .collect::<Vec<_>>(),
        "final_train_nll": history.last().map(|r| r.train_nll),
        "final_val_nll": history.last().map(|r| r.val_nll).filter(|v| v.is_finite()),
        "ema_decay": t.ema_decay,
        "ema_val_nll": ema_val_nll,
        "early_stopping_patience": patience,
        "best_epoch": early.as_ref().and_then(|e| e.best).map(|b| b.epoch),
        "best_val_nll": early.as_ref().and_then(|e| e.best).map(|b| b.val_nll),
        "stopped_early": finish == Finish::EarlyStopped,
    });
    Ok(TrainOutcome { model, history, finish, checkpoints, busy })
}

/// Writes a finished run into `run_dir`: `model/`, `history.csv`, `config.toml`.
pub fn write_run(run_dir: &Path, cfg: &RunConfig, outcome: &TrainOutcome) -> Result<()> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let cfg_path = run_dir.join("config.toml");
    std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
    write_history(&run_dir.join("history.csv"), &outcome.history)?;
    outcome.model.save(&run_dir.join("model"))
}
