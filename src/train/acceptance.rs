//! The acceptance terms of the likelihood, for data cut by known acceptance
//! cuts (`data.acceptance`): the truncated likelihood `p(x | c) / Z(c)`
//! (each event's flow samples weighted `1 / Ẑ(c)`, `Ẑ` estimated at each
//! epoch start) or, with the production's efficiencies, the censored one
//! (rejected samples weighted `−(1 − ε)/ε`). Both enter a step as a weighted
//! sum of log-densities of flow samples drawn at the step's labels.

use super::checkpoint::{LabelWeight, TrainState};
use crate::comm::Communicator;
use crate::config::RunConfig;
use crate::data::efficiency::EfficiencyTable;
use crate::data::transform::Acceptance;
use crate::data::{EventSet, LabelGroups};
use crate::error::{Error, Result};
use crate::flow::Model;
use tch::{Device, Kind, Tensor};

/// Every event must pass the declared acceptance: it describes how the data were cut.
pub(super) fn check_acceptance(acceptance: &[Acceptance], set: &EventSet, what: &str) -> Result<()> {
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
///
/// The probes of `Ẑ` are shared out: the ranks agree on the union of their
/// training labels, each probes every `size`-th of them (seeded by the label,
/// so `Ẑ` does not depend on the world size), and a sum gives every rank all
/// of them. The probe costs `1/size` of what it would on every rank.
fn acceptance_group_weights(
    model: &Model,
    (groups, all): (&LabelGroups, &[Vec<f32>]),
    efficiency: Option<&[f64]>,
    seed: u64,
    comm: &dyn Communicator,
) -> Result<Vec<LabelWeight>> {
    if let Some(eff) = efficiency {
        let w = eff.iter().map(|&eps| (-(1.0 - eps) / eps) as f32);
        return Ok(groups.labels.iter().zip(w).map(|(l, weight)| LabelWeight { label: l.clone(), weight }).collect());
    }
    let t0 = std::time::Instant::now();
    let mut z = vec![0f64; all.len()];
    for (i, lab) in all.iter().enumerate().skip(comm.rank()).step_by(comm.size()) {
        z[i] = probe_acceptance(model, lab, label_seed(seed, lab));
    }
    tracing::debug!(
        labels = all.len(),
        probed_here = all.len().saturating_sub(comm.rank()).div_ceil(comm.size()),
        seconds = format!("{:.2}", t0.elapsed().as_secs_f64()),
        "acceptance probe"
    );
    comm.allreduce_sum_f64(&mut z)?;
    Ok(all
        .iter()
        .zip(z)
        .map(|(label, z)| LabelWeight {
            label: label.clone(),
            weight: if z < ACCEPTANCE_ACTIVE_BELOW { (1.0 / z.max(0.05)) as f32 } else { 0.0 },
        })
        .collect())
}

/// The bit patterns of a label row (exact identity, a hashable key).
fn label_bits(lab: &[f32]) -> Vec<u32> {
    lab.iter().map(|v| v.to_bits()).collect()
}

/// The probe seed of one label in one epoch (`seed` is already the epoch's).
fn label_seed(seed: u64, lab: &[f32]) -> u64 {
    let parts: Vec<u64> = lab.iter().map(|v| u64::from(v.to_bits())).collect();
    crate::rng::mix_seed_parts(seed, &parts)
}

/// The union of every rank's `labels` (`width` values each), sorted by bit
/// pattern: the same list on every rank.
fn agreed_labels(labels: &[Vec<f32>], width: usize, comm: &dyn Communicator) -> Result<Vec<Vec<f32>>> {
    let mut all: Vec<Vec<u32>> = labels.iter().map(|l| label_bits(l)).collect();
    if comm.size() > 1 {
        let mine: Vec<u8> = all.iter().flatten().flat_map(|b| b.to_le_bytes()).collect();
        for bytes in comm.all_gather_bytes(&mine)? {
            let words: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            all.extend(words.chunks(width.max(1)).map(<[u32]>::to_vec));
        }
    }
    all.sort_unstable();
    all.dedup();
    Ok(all.into_iter().map(|l| l.into_iter().map(f32::from_bits).collect()).collect())
}

/// The flow's probability to pass the acceptance at label `lab`, from
/// [`ACCEPTANCE_PROBE`] samples drawn with `seed`.
fn probe_acceptance(model: &Model, lab: &[f32], seed: u64) -> f64 {
    let l = model.n_labels() as i64;
    let _rng = crate::rng::seeded(seed);
    tch::no_grad(|| {
        let raw = Tensor::from_slice(lab).view([1, l]).expand([ACCEPTANCE_PROBE, l], false);
        let x = model.sample(&raw).to_device(Device::Cpu);
        let pass = model.acceptance_mask(&x);
        pass.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    })
}

/// The weights of `groups` among per-label weights `stored` (every rank's
/// labels, or a mid-epoch checkpoint's), in the order of `groups`; `None`
/// when any label is missing.
fn restored_group_weights(stored: &[LabelWeight], groups: &LabelGroups) -> Option<Vec<f32>> {
    let by_label: std::collections::HashMap<Vec<u32>, f32> =
        stored.iter().map(|w| (label_bits(&w.label), w.weight)).collect();
    groups.labels.iter().map(|lab| by_label.get(&label_bits(lab)).copied()).collect()
}

/// Per training event, its label group's weight (`group_weights`).
fn acceptance_event_weights(groups: &LabelGroups, group_weights: &[f32], n_events: usize, device: Device) -> Tensor {
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
    (w, ev): (&Tensor, Option<&Tensor>),
    reps: f64,
    seed: u64,
) -> Tensor {
    match acceptance_samples(model, (c, raw_c, gid), (w, ev), reps, seed) {
        Some((z, cz, wk)) => (model.flow.log_prob(&z, &cz) * wk).sum(Kind::Float),
        None => Tensor::zeros([], (Kind::Float, c.device())),
    }
}

/// The samples of [`acceptance_term`] (flow space), their labels and their
/// weights: the term is `Σ wk log p(z | cz)`. `None` where no sample is used.
/// With event weights `ev`, each event's samples carry its weight too (the
/// event's `log Z` term is weighted like its `log p`).
fn acceptance_samples(
    model: &Model,
    (c, raw_c, gid): (&Tensor, &Tensor, &Tensor),
    (w, ev): (&Tensor, Option<&Tensor>),
    reps: f64,
    seed: u64,
) -> Option<(Tensor, Tensor, Tensor)> {
    let active = w.ne(0.0).nonzero().squeeze_dim(1);
    let n_active = active.size()[0];
    if n_active == 0 {
        return None;
    }
    let _rng = crate::rng::seeded(seed);
    // `reps` samples per event, or one each for a random `reps` share of the
    // events; each sample's weight is divided by the samples per event.
    let (sel, per_event) = if reps >= 1.0 {
        (active.repeat([reps as i64]), reps)
    } else {
        let m = ((reps * n_active as f64).ceil() as i64).clamp(1, n_active);
        let pick = Tensor::randperm(n_active, (Kind::Int64, active.device())).narrow(0, 0, m);
        (active.index_select(0, &pick), m as f64 / n_active as f64)
    };
    let c_sel = c.index_select(0, &sel);
    let w_sel = w.index_select(0, &sel);
    let (z, keep, wk) = {
        tch::no_grad(|| {
            let z = model.flow_sample(&c_sel);
            let x = model.from_flow_space(&z, &raw_c.index_select(0, &sel));
            let pass = x.select(1, 0).isfinite().logical_and(&model.acceptance_mask(&x));
            // Truncated events use their accepted samples, censored ones their rejected samples.
            let truncated = w_sel.gt(0.0);
            let use_sample = pass.eq_tensor(&truncated);
            let mut wk = &w_sel * use_sample.to_kind(Kind::Float) / per_event;
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
            if let Some(ev) = ev {
                wk *= ev.index_select(0, &sel);
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

/// The acceptance terms of a run: the training events' label groups, the
/// efficiencies (censored likelihood), and the sample weights of the epoch in
/// progress.
pub(super) struct AcceptanceTerms {
    groups: LabelGroups,
    /// Efficiency of each group (censored likelihood), same order as `groups`.
    efficiency: Option<Vec<f64>>,
    /// The label group of each training event (the censored term's per-label estimate).
    gid: Tensor,
    /// Per training event, the weight of its flow samples in this epoch.
    weights: Tensor,
    /// The weights of every rank's labels, for a mid-epoch checkpoint.
    by_label: Vec<LabelWeight>,
    /// Flow samples per event and step, or the fraction of events sampled
    /// (`training.acceptance_samples`).
    reps: f64,
    /// The training events' weights (weighted events only).
    event_w: Option<Tensor>,
    /// Every rank's training labels ([`agreed_labels`]), gathered at the first probe.
    all_labels: Option<Vec<Vec<f32>>>,
}

impl AcceptanceTerms {
    /// The terms of a run with acceptance cuts and `training.acceptance_samples > 0`; `None` otherwise.
    pub(super) fn new(cfg: &RunConfig, model: &Model, train_set: &EventSet) -> Result<Option<Self>> {
        if model.acceptance.is_empty() || cfg.training.acceptance_samples == 0.0 {
            return Ok(None);
        }
        let groups = train_set.label_groups();
        let efficiency = match &cfg.data.acceptance_efficiency {
            Some(path) => Some(EfficiencyTable::read(path, model.n_labels())?.for_labels(&groups.labels)?),
            None => None,
        };
        let mut gid = vec![0i64; train_set.len()];
        for (g, members) in groups.members.iter().enumerate() {
            for &i in members {
                if let Some(slot) = gid.get_mut(i) {
                    *slot = g as i64;
                }
            }
        }
        let device = model.flow.device();
        Ok(Some(AcceptanceTerms {
            groups,
            efficiency,
            gid: Tensor::from_slice(&gid).to_device(device),
            weights: Tensor::new(),
            by_label: Vec::new(),
            reps: cfg.training.acceptance_samples,
            event_w: train_set.weights.as_ref().map(|w| Tensor::from_slice(&w.to_vec()).to_device(device)),
            all_labels: None,
        }))
    }

    /// Sets the sample weights of `epoch`: estimated from the model now, or,
    /// on a mid-epoch resume into that epoch, the ones its checkpoint kept.
    ///
    /// # Errors
    /// A failed collective of the shared probe.
    pub(super) fn start_epoch(
        &mut self,
        model: &Model,
        (seed, epoch): (u64, usize),
        start: &TrainState,
        comm: &dyn Communicator,
    ) -> Result<()> {
        let restored = match &start.acceptance_weights {
            Some(stored) if epoch == start.epoch && start.mid_epoch() => {
                restored_group_weights(stored, &self.groups).map(|gw| (gw, stored.clone()))
            }
            _ => None,
        };
        // Every rank restores, or every rank estimates (the probe is collective).
        let mut lacking = [if restored.is_none() { 1.0 } else { 0.0 }];
        comm.allreduce_max_f64(&mut lacking)?;
        let (gw, by_label) = match restored {
            Some(r) if lacking[0] == 0.0 => r,
            _ => {
                if start.mid_epoch() && epoch == start.epoch && start.acceptance_weights.is_some() {
                    tracing::warn!(
                        "the checkpoint lacks acceptance weights of some training labels: \
                         estimated again, so the resumed epoch is no longer bit-identical"
                    );
                }
                let seed = crate::rng::mix_seed_parts(seed, &[epoch as u64, 0xacc]);
                let labels = match self.all_labels.take() {
                    Some(l) => l,
                    None => agreed_labels(&self.groups.labels, model.n_labels(), comm)?,
                };
                let all =
                    acceptance_group_weights(model, (&self.groups, &labels), self.efficiency.as_deref(), seed, comm);
                self.all_labels = Some(labels);
                let all = all?;
                let gw = restored_group_weights(&all, &self.groups).ok_or_else(|| {
                    Error::Data("acceptance probe: a training label is missing from the ranks' agreed labels".into())
                })?;
                (gw, all)
            }
        };
        let n = self.gid.size()[0] as usize;
        self.weights = acceptance_event_weights(&self.groups, &gw, n, model.flow.device());
        self.by_label = by_label;
        Ok(())
    }

    /// The weights of the epoch in progress per label, for a mid-epoch checkpoint.
    pub(super) fn by_label(&self) -> Vec<LabelWeight> {
        self.by_label.clone()
    }

    /// A step's inputs: `(c, raw_c, gid)` of its events and their weights.
    #[allow(clippy::type_complexity)]
    fn step_inputs(
        &self,
        c: &Tensor,
        raw_c: &Tensor,
        local: &[i64],
    ) -> ((Tensor, Tensor, Tensor), (Tensor, Option<Tensor>)) {
        let idx = Tensor::from_slice(local).to_device(c.device());
        let data = (c.index_select(0, &idx), raw_c.index_select(0, &idx), self.gid.index_select(0, &idx));
        let ev = self.event_w.as_ref().map(|w| w.index_select(0, &idx));
        (data, (self.weights.index_select(0, &idx), ev))
    }

    /// The step's flow samples, their labels and weights ([`acceptance_samples`]).
    pub(super) fn step_samples(
        &self,
        model: &Model,
        (c, raw_c): (&Tensor, &Tensor),
        local: &[i64],
        seed: u64,
    ) -> Option<(Tensor, Tensor, Tensor)> {
        let ((c, raw_c, gid), (w, ev)) = self.step_inputs(c, raw_c, local);
        acceptance_samples(model, (&c, &raw_c, &gid), (&w, ev.as_ref()), self.reps, seed)
    }

    /// The step's term by autograd ([`acceptance_term`]); `None` when it carries no gradient.
    pub(super) fn step_term(
        &self,
        model: &Model,
        (c, raw_c): (&Tensor, &Tensor),
        local: &[i64],
        seed: u64,
    ) -> Option<Tensor> {
        let ((c, raw_c, gid), (w, ev)) = self.step_inputs(c, raw_c, local);
        let norm = acceptance_term(model, (&c, &raw_c, &gid), (&w, ev.as_ref()), self.reps, seed);
        norm.requires_grad().then_some(norm)
    }
}
