//! A run's starting point: the model (fresh: transforms, whitening fitted
//! across ranks, seeded initial weights; or from a checkpoint), the training
//! state it starts from, the optimiser, and the training and validation
//! events in the flow's space.

use super::acceptance::check_acceptance;
use super::checkpoint::{self, TrainState};
use super::optim::{Adam, AdamConfig};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::data::transform::{Acceptance, Transforms};
use crate::data::whiten::{WhitenSpec, Whitening};
use crate::data::EventSet;
use crate::error::{Error, Result};
use crate::flow::{Maf, Model};
use ndarray::Array2;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Where a run starts.
pub(super) struct Start {
    /// The model: fresh or the checkpoint's.
    pub model: Model,
    /// The training state to continue from (epoch 0 for a fresh run).
    pub state: TrainState,
    /// The checkpoint's optimiser state.
    pub optimizer: Option<HashMap<String, Tensor>>,
    /// The checkpoint's best-validation weights (early stopping).
    pub best: Option<HashMap<String, Tensor>>,
    /// The world size whose batches the epoch in progress at a resume was
    /// drawn for (its strata, when `batch_strata` follows the world size).
    pub resumed_world: usize,
}

/// The model and state to start from: `resume`'s, checked against the
/// configuration, or a fresh model fitted to `train_set`.
pub(super) fn start(
    cfg: &RunConfig,
    local: &super::driver::ShardFacts,
    train_set: &EventSet,
    comm: &dyn Communicator,
    device: Device,
    resume: Option<checkpoint::Loaded>,
) -> Result<Start> {
    let t = &cfg.training;
    let fresh = TrainState {
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
    let Some(loaded) = resume else {
        let model = fresh_model(cfg, local, train_set, comm, device)?;
        return Ok(Start { model, state: fresh, optimizer: None, best: None, resumed_world: comm.size() });
    };
    if loaded.model.flow.config() != &cfg.network.maf(local.n_features, local.n_labels) {
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
    let resumed_world = loaded.state.world_size;
    let state = TrainState { config: fresh.config, world_size: comm.size(), ..loaded.state };
    Ok(Start { model: loaded.model, state, optimizer: Some(loaded.optimizer), best: loaded.best, resumed_world })
}

/// A fresh model: the configured transforms and acceptance, whitening fitted
/// on every rank's training events, initial weights from `training.seed`.
fn fresh_model(
    cfg: &RunConfig,
    local: &super::driver::ShardFacts,
    train_set: &EventSet,
    comm: &dyn Communicator,
    device: Device,
) -> Result<Model> {
    let d = &cfg.data;
    let ft = Transforms::from_specs(&d.feature_transforms, &local.feature_names, &local.label_names, "feature", true)?;
    let lt = Transforms::from_specs(&d.label_transforms, &local.label_names, &[], "label", false)?;
    let acceptance =
        d.acceptance.iter().map(|a| Acceptance::parse(a, &local.feature_names)).collect::<Result<Vec<_>>>()?;
    let fx = transformed_features(&ft, train_set, "training events")?;
    let lx = transformed_labels(&lt, train_set, "training events")?;
    let fspec = WhitenSpec {
        names: local.feature_names.clone(),
        logit: vec![d.logit_features; local.n_features],
        eps: d.logit_eps,
    };
    let lspec =
        WhitenSpec { names: local.label_names.clone(), logit: vec![d.logit_labels; local.n_labels], eps: d.logit_eps };
    let w = train_set.weights.as_ref().map(|w| w.view());
    let fw = Whitening::fit_weighted(fx.view(), w, &fspec, comm)?;
    let lw = Whitening::fit_weighted(lx.view(), w, &lspec, comm)?;
    let flow = {
        let _rng = crate::rng::seeded(cfg.training.seed);
        Maf::new(cfg.network.maf(local.n_features, local.n_labels), device)?
    };
    Model::new(flow, fw, lw)?.with_preprocessing(ft, lt, acceptance)
}

/// Events in the flow's space: features `x`, conditions `c` and raw labels.
pub(super) struct Whitened {
    /// Whitened features `[N, D]`.
    pub x: Tensor,
    /// Whitened labels (the flow's condition) `[N, L]`.
    pub c: Tensor,
    /// Raw labels `[N, L]`.
    pub raw_c: Tensor,
    /// Per-event weights `[N]` (normalised per label, [`EventSet::normalized_weights`]),
    /// `None` for unweighted events.
    pub w: Option<Tensor>,
    /// The sum of the weights (the number of events when unweighted).
    pub w_sum: f64,
}

/// `set` in the flow's space, with clear errors for values outside a
/// transform's domain or the acceptance.
/// `keep_raw`: keep the raw labels (for the acceptance terms); otherwise
/// `raw_c` is an empty tensor.
pub(super) fn whitened(m: &Model, set: &EventSet, what: &str, keep_raw: bool) -> Result<Whitened> {
    transformed_features(&m.feature_transforms, set, what)?;
    check_acceptance(&m.acceptance, set, what)?;
    let raw_c = to_tensor(&set.labels).to_device(m.flow.device());
    let (x, c) = to_flow_space_chunked(m, set, &raw_c);
    let raw_c = if keep_raw { raw_c } else { Tensor::new() };
    let w = set.weights.as_ref().map(|w| Tensor::from_slice(&w.to_vec()).to_device(m.flow.device()));
    Ok(Whitened { x, c, raw_c, w, w_sum: set.weight_sum() })
}

/// Rows whitened at a time: the transforms' temporaries stay a few MB
/// whatever the number of events (the results are elementwise, so the bits
/// do not depend on the chunking).
const WHITEN_CHUNK: usize = 65536;

/// `set`'s features and conditions in the flow's space, computed a chunk of
/// rows at a time into preallocated tensors.
fn to_flow_space_chunked(m: &Model, set: &EventSet, raw_c: &Tensor) -> (Tensor, Tensor) {
    let (n, d) = set.samples.dim();
    let l = set.labels.ncols();
    let dev = m.flow.device();
    tch::no_grad(|| {
        let x = Tensor::empty([n as i64, d as i64], (Kind::Float, dev));
        let c = Tensor::empty([n as i64, l as i64], (Kind::Float, dev));
        let mut i = 0;
        while i < n {
            let k = WHITEN_CHUNK.min(n - i);
            let rows = set.samples.slice(ndarray::s![i..i + k, ..]);
            let flat: Vec<f32> = rows.iter().copied().collect();
            let xs = Tensor::from_slice(&flat).view([k as i64, d as i64]);
            let cs = raw_c.narrow(0, i as i64, k as i64);
            x.narrow(0, i as i64, k as i64).copy_(&m.to_flow_space(&xs, &cs).0);
            c.narrow(0, i as i64, k as i64).copy_(&m.condition(&cs));
            i += k;
        }
        (x, c)
    })
}

/// Adam over the model's variables, with the checkpoint's state when resuming.
pub(super) fn optimizer(cfg: &RunConfig, model: &Model, state: Option<&HashMap<String, Tensor>>) -> Result<Adam> {
    let t = &cfg.training;
    let mut opt =
        Adam::new(model.flow.var_store(), AdamConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps });
    if t.ema_decay > 0.0 {
        opt.enable_ema(t.ema_decay);
    }
    if let Some(st) = state {
        opt.load_state(st)?;
    }
    Ok(opt)
}

fn to_tensor(a: &Array2<f32>) -> Tensor {
    let (n, d) = a.dim();
    let flat: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&flat).view([n as i64, d as i64])
}

/// Sum of `-log p` over `xs` (weighted by `ws` where given, negative weights
/// with training's floor) in chunks, without gradients.
pub(super) fn nll_sum(model: &Model, xs: &Tensor, cs: &Tensor, ws: Option<&Tensor>, chunk: i64) -> f64 {
    tch::no_grad(|| {
        let n = xs.size()[0];
        let mut total = 0.0;
        let mut i = 0;
        while i < n {
            let m = chunk.min(n - i);
            let lp = model.flow_log_prob(&xs.narrow(0, i, m), &cs.narrow(0, i, m));
            let lp = match ws {
                Some(w) => {
                    // Negatively weighted events count no lower than training's floor.
                    let wb = w.narrow(0, i, m).to_kind(Kind::Double);
                    let d = xs.size()[1] as f64;
                    let floor = -(crate::flow::engine::cpu::NEGATIVE_WEIGHT_NLL_CEIL
                        + 0.5 * d * (2.0 * std::f64::consts::PI).ln());
                    let lp = lp.to_kind(Kind::Double);
                    lp.where_self(&wb.ge(0.0), &lp.clamp_min(floor)) * wb
                }
                None => lp,
            };
            total -= lp.sum(Kind::Double).double_value(&[]);
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
