//! Run configuration: one TOML file with sections `[data]`, `[network]`,
//! `[training]`, `[outputs]` and `[control]`, in the spirit of the prototype's `param.TOML`.
//!
//! Unknown keys are errors. Any key can be overridden from the command line
//! with `--set section.key=value` (the value in TOML syntax, e.g.
//! `--set network.hidden=[64,64]`). A copy of the effective configuration is
//! saved in the run directory. Relative paths are relative to the working
//! directory of the process.

use crate::error::{Error, Result};
use crate::flow::{Activation, MafConfig, Permutation};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Input data.
    pub data: DataConfig,
    /// Flow architecture.
    pub network: NetworkConfig,
    /// Optimisation.
    pub training: TrainingConfig,
    /// Where results go.
    pub outputs: OutputConfig,
    /// The gRPC control plane of a running job.
    pub control: ControlConfig,
}

/// `[control]`: the gRPC control plane served by rank 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve the control plane (status, watch, checkpoint, stop).
    pub enabled: bool,
    /// Address to listen on; port 0 picks a free port (written to RUN_DIR/control.json).
    pub listen: String,
    /// PEM certificate for TLS (empty: plaintext); clients trust it via control.json's `tls_ca`.
    pub tls_cert: PathBuf,
    /// PEM private key for TLS.
    pub tls_key: PathBuf,
    /// PEM certificate of the CA that signed `tls_cert`, recorded in control.json for clients
    /// (empty: `tls_cert` itself).
    pub tls_ca: PathBuf,
    /// Seconds without progress after which a rank that holds the run up is reported
    /// stalled (`fedhex-ctl status` and `watch`, rank 0's log); at least 5.
    pub stall_seconds: f64,
}

/// The default of `control.stall_seconds`: longer than any healthy pause of a
/// run (a validation pass, a checkpoint), short enough to be noticed.
pub const DEFAULT_STALL_SECONDS: f64 = 300.0;

/// The smallest `control.stall_seconds` and `training.step_timeout`: time for
/// a few heartbeats, so a silent rank is told from a live one
/// ([`crate::comm::heartbeat`] deems a rank silent after 3 s).
pub const MIN_WATCH_SECONDS: f64 = 5.0;

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            listen: "127.0.0.1:0".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_ca: PathBuf::new(),
            stall_seconds: DEFAULT_STALL_SECONDS,
        }
    }
}

/// `[data]`: where events come from and how they are preprocessed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Input `.npz` with `samples` [N, D] and `labels` [N, L] arrays.
    pub path: PathBuf,
    /// Feature names (empty: x0, x1, ...).
    pub features: Vec<String>,
    /// Label names (empty: label0, label1, ...).
    pub labels: Vec<String>,
    /// Fraction of each label's events held back for validation.
    pub validation_fraction: f64,
    /// Whole labels left out of training (and validation), e.g. [[1500.0, 3.0]]:
    /// the points where `fedhex analyze` measures interpolation.
    pub holdout_labels: Vec<Vec<f64>>,
    /// Whole labels whose events all become validation events, e.g. [[1500.0, 3.0]]:
    /// validation then measures interpolation to unseen labels, not only reproduction of
    /// trained ones (in addition to `validation_fraction` of the other labels).
    pub validation_labels: Vec<Vec<f64>>,
    /// Apply a logit after min-max scaling of the features.
    pub logit_features: bool,
    /// Apply a logit after min-max scaling of the labels.
    pub logit_labels: bool,
    /// Margin keeping the logit finite at the ends of the range.
    pub logit_eps: f64,
    /// Physics-aware transforms per feature name, e.g. `{ omega = "log_ratio(labelomega)" }`
    /// (steps: log, shift(a), scale(a), bounded(lo), logit(lo, hi), div(L), sub(L), log_ratio(L)).
    pub feature_transforms: std::collections::BTreeMap<String, String>,
    /// Transforms per label name, e.g. `{ labelomega = "log" }` (no steps that refer to labels).
    pub label_transforms: std::collections::BTreeMap<String, String>,
    /// Known acceptance cuts that truncated the data, e.g. `["omega > 0.415"]`: training uses
    /// the truncated likelihood and generated events are cut the same way.
    pub acceptance: Vec<String>,
    /// CSV of the acceptance efficiency per label (simulated events kept by `acceptance`, see
    /// [`crate::data::efficiency`]): training then uses the censored likelihood, which also
    /// learns how much of the distribution the cut removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance_efficiency: Option<PathBuf>,
    /// Weighted events only (`data.root.weight`, or a `weights` array in the `.npz`):
    /// average each event's weight over its k nearest neighbours at its label before
    /// training (0 = the weights as read). For samples whose negative weights cancel
    /// positive ones locally (subtractions, NLO); see `EventSet::smoothed_weights`.
    pub weight_smoothing: usize,
    /// ROOT input (files, tree, branch expressions, cut); replaces `path` when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<crate::data::source::RootInput>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::from("data/grid.npz"),
            features: vec![],
            labels: vec![],
            validation_fraction: 0.1,
            holdout_labels: vec![],
            validation_labels: vec![],
            logit_features: false,
            logit_labels: false,
            logit_eps: 1e-3,
            feature_transforms: Default::default(),
            label_transforms: Default::default(),
            acceptance: vec![],
            acceptance_efficiency: None,
            weight_smoothing: 0,
            root: None,
        }
    }
}

/// `[network]`: the conditional MAF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Number of MADE blocks.
    pub n_blocks: usize,
    /// Hidden layer widths of each MADE.
    pub hidden: Vec<i64>,
    /// Activation: relu, tanh, gelu, elu or silu.
    pub activation: Activation,
    /// Order change between blocks: reverse, random or lu (learned linear mixing).
    pub permutation: Permutation,
    /// Seed of random orders.
    pub permutation_seed: u64,
    /// Bound B of each block's log-scale, s = B tanh(raw / B).
    pub log_scale_bound: f64,
    /// Element-wise map of each block: affine, spline or affine_spline.
    pub transform: crate::flow::Transform,
    /// Pieces of each rational-quadratic spline.
    pub spline_bins: i64,
    /// Half-width of the interval each spline covers, in whitened units; identity outside.
    pub spline_bound: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            n_blocks: 10,
            hidden: vec![128],
            activation: Activation::Relu,
            // Learned mixing between blocks: measured best at unsimulated labels (docs/fidelity.md).
            permutation: Permutation::Lu,
            permutation_seed: 0,
            log_scale_bound: 3.0,
            // Measured best at unsimulated labels (docs/fidelity.md).
            transform: crate::flow::Transform::AffineSpline,
            spline_bins: 8,
            spline_bound: 5.0,
        }
    }
}

impl NetworkConfig {
    /// The flow configuration for `features` features and `context` labels.
    pub fn maf(&self, features: usize, context: usize) -> MafConfig {
        MafConfig {
            features: features as i64,
            context: context as i64,
            n_blocks: self.n_blocks,
            hidden: self.hidden.clone(),
            activation: self.activation,
            permutation: self.permutation,
            permutation_seed: self.permutation_seed,
            log_scale_bound: self.log_scale_bound,
            transform: self.transform,
            spline_bins: self.spline_bins,
            spline_bound: self.spline_bound,
        }
    }
}

/// Shape of the learning-rate schedule from `lr_initial` to `lr_final`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Geometric decay (the prototype's exponential decay).
    #[default]
    Exponential,
    /// Straight line.
    Linear,
    /// Half cosine.
    Cosine,
    /// `lr_initial` throughout.
    Constant,
}

/// `[training]`: optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Number of epochs (each = every training event once).
    pub epochs: usize,
    /// Global batch size (summed over ranks).
    pub batch_size: usize,
    /// Strata of the shuffle (1: a plain shuffle; 0: the world size). Every global batch
    /// holds an even share of each stratum, a stratum being one rank's shard for that
    /// many ranks: with 0 every rank gets the same part of every batch (±1 event) and
    /// none waits for another; a 1-rank run with `N` draws the batches of an `N`-rank run.
    pub batch_strata: usize,
    /// Learning rate at the start.
    pub lr_initial: f64,
    /// Learning rate reached after `lr_decay_epochs`.
    pub lr_final: f64,
    /// Epochs over which the rate goes from initial to final (0: all epochs).
    pub lr_decay_epochs: f64,
    /// exponential, linear, cosine or constant.
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many epochs (0: none).
    pub warmup_epochs: f64,
    /// Seed of weight initialisation and shuffling.
    pub seed: u64,
    /// Intra-op threads per process (0: all cores of this process).
    pub threads: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    pub device: String,
    /// Adam beta1.
    pub adam_beta1: f64,
    /// Adam beta2.
    pub adam_beta2: f64,
    /// Adam epsilon.
    pub adam_eps: f64,
    /// Continue from the newest complete checkpoint in the run directory: never or auto.
    pub resume: Resume,
    /// Flow samples drawn per training event (at labels where the flow puts mass outside
    /// `data.acceptance`) to estimate the gradient of the acceptance normaliser: a whole
    /// number per event, or a fraction in (0, 1) of the step's events (chosen at random,
    /// weighted up: cheaper, noisier); 0: off.
    pub acceptance_samples: f64,
    /// Exponential moving average of the weights with this decay per step (0: off); the
    /// saved model carries the averaged weights, checkpoints both (exact resume).
    pub ema_decay: f64,
    /// Stop when the validation NLL has not decreased for this many epochs (0: off); the
    /// saved model then carries the weights of the best-validation epoch.
    pub early_stopping_patience: usize,
    /// Largest L2 norm of the mean gradient per step (0: no clipping); larger gradients are
    /// scaled down to it, so one batch with extreme events cannot throw the weights off.
    pub clip_grad_norm: f64,
    /// Cap on the mean gradient's norm as a multiple of the running average of recent
    /// norms (0: none); adapts to any model's and data set's gradient scale.
    pub clip_grad_relative: f64,
    /// Seconds a rank may wait in a collective during training (in practice the per-step
    /// all-reduce) before the job is aborted, naming the rank that holds it up (0: off, the
    /// default; else at least 5). Several ranks only; must exceed the longest checkpoint
    /// write and validation pass.
    pub step_timeout: f64,
}

/// Whether a run continues from an existing checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Resume {
    /// Always start from scratch.
    #[default]
    Never,
    /// Continue from the newest complete checkpoint when there is one.
    Auto,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            epochs: 20,
            batch_size: 1024,
            batch_strata: 1,
            lr_initial: 1e-3,
            lr_final: 1e-4,
            lr_decay_epochs: 0.0,
            schedule: Schedule::Exponential,
            warmup_epochs: 0.0,
            seed: 42,
            threads: 0,
            device: "auto".into(),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            resume: Resume::Never,
            acceptance_samples: 1.0,
            ema_decay: 0.0,
            clip_grad_norm: 0.0,
            clip_grad_relative: 10.0,
            early_stopping_patience: 0,
            step_timeout: 0.0,
        }
    }
}

/// `[outputs]`: results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Run directory: model/, history.csv, config.toml.
    pub run_dir: PathBuf,
    /// Show a progress bar when attached to a terminal.
    pub progress: bool,
    /// Write a checkpoint every this many epochs (0: only at the end and on request).
    pub checkpoint_every: usize,
    /// Checkpoints kept: the newest this many plus the best by validation loss.
    pub keep_checkpoints: usize,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { run_dir: PathBuf::from("runs/fedhex"), progress: true, checkpoint_every: 5, keep_checkpoints: 3 }
    }
}

/// One line of documentation per key, used by [`default_toml`].
const KEY_DOCS: &[(&str, &str)] = &[
    (
        "data.path",
        "input .npz holding `samples` [N, D] and `labels` [N, L] (float32 or float64); see [data.root] below for ROOT",
    ),
    ("data.features", "feature names, in column order (empty: x0, x1, ...)"),
    ("data.labels", "label names, in column order (empty: label0, label1, ...)"),
    ("data.validation_fraction", "fraction of each label's events held back for validation, in [0, 1)"),
    (
        "data.holdout_labels",
        "whole labels left out of training, e.g. [[1500.0, 3.0]]: where analyze measures interpolation",
    ),
    (
        "data.validation_labels",
        "whole labels whose events all validate (besides validation_fraction of the others), e.g. [[1500.0, 3.0]]: \
         validation on unseen labels (interpolation)",
    ),
    ("data.logit_features", "logit after min-max scaling of features (turns hard edges into tails)"),
    ("data.logit_labels", "logit after min-max scaling of labels"),
    ("data.logit_eps", "margin keeping the logit finite at the range ends, in [0, 0.5)"),
    (
        "data.feature_transforms",
        "per-feature chains, e.g. { omega = \"log_ratio(labelomega)\" }: log, shift(a), scale(a), bounded(lo), \
         logit(lo, hi), div(LABEL), sub(LABEL), log_ratio(LABEL), joined by |",
    ),
    ("data.label_transforms", "per-label chains, e.g. { labelomega = \"log\" } (steps that do not refer to labels)"),
    (
        "data.acceptance",
        "known acceptance cuts of the data, e.g. [\"omega > 0.415\"]: truncated-likelihood training, generated events cut alike",
    ),
    (
        "data.weight_smoothing",
        "weighted input only: average each event's weight over its k nearest neighbours at its label before training \
         (0: weights as read); lowers the noise of negative weights that cancel positive ones locally, at the cost of \
         smoothing over the neighbours' distance; reads the whole input on every rank",
    ),
    (
        "training.acceptance_samples",
        "flow samples per event and step for the acceptance normaliser of the truncated likelihood: 1, 2, ... per event, or a fraction in (0, 1) of the step's events (cheaper, noisier; docs/speed.md); 0: off",
    ),
    ("network.n_blocks", "number of MADE blocks in the MAF"),
    ("network.hidden", "hidden layer widths of every MADE, e.g. [128] or [64, 64, 64]"),
    ("network.activation", "relu, tanh, gelu, elu or silu"),
    (
        "network.permutation",
        "feature order change between blocks: reverse, random, or lu (a learned invertible linear map z = P L U x + b \
         between consecutive blocks, starting at the reversal)",
    ),
    ("network.permutation_seed", "seed of the random orders"),
    ("network.log_scale_bound", "bound B of each block's log-scale: s = B tanh(raw / B) (affine blocks)"),
    (
        "network.transform",
        "element-wise map of each block: affine (shift and scale), spline (rational-quadratic, identity outside the bound) or affine_spline (shift and scale, then a spline)",
    ),
    ("network.spline_bins", "pieces of each spline (spline blocks), 2 to 64"),
    ("network.spline_bound", "half-width B of the interval each spline covers, in whitened units (spline blocks)"),
    ("training.epochs", "number of epochs; one epoch = every training event exactly once"),
    ("training.batch_size", "global batch size (all ranks together)"),
    (
        "training.batch_strata",
        "every batch takes an even share of each of this many rank shards (1: plain shuffle; 0: the world size, equal rank shares)",
    ),
    ("training.lr_initial", "learning rate at the start"),
    ("training.lr_final", "learning rate reached after lr_decay_epochs"),
    ("training.lr_decay_epochs", "epochs from lr_initial to lr_final (0: all epochs)"),
    ("training.schedule", "exponential, linear, cosine or constant"),
    (
        "training.ema_decay",
        "exponential moving average of the weights, decay per step (e.g. 0.999; 0: off): the saved model gets the average",
    ),
    (
        "training.clip_grad_norm",
        "largest L2 norm of the mean gradient per step, larger ones are scaled down to it (0: no clipping)",
    ),
    (
        "training.clip_grad_relative",
        "cap on the mean gradient's norm as a multiple of the running average of recent norms (0: none)",
    ),
    (
        "training.early_stopping_patience",
        "stop when the validation NLL has not decreased for this many epochs (0: off); the model keeps the best epoch's weights",
    ),
    ("training.warmup_epochs", "linear warm-up from 0 over this many epochs (0: none)"),
    ("training.seed", "seed of weight initialisation and shuffling (same seed -> same weights)"),
    ("training.threads", "intra-op threads per process (0: all available cores)"),
    ("training.device", "auto, cpu, cuda or cuda:N"),
    ("training.adam_beta1", "Adam beta1"),
    ("training.adam_beta2", "Adam beta2"),
    ("training.adam_eps", "Adam epsilon"),
    ("training.resume", "never, or auto: continue from the newest complete checkpoint in the run directory"),
    (
        "training.step_timeout",
        "seconds a rank may wait in a collective while training (the per-step all-reduce) before the job aborts, \
         naming the rank that holds it up and its host (0: off; else >= 5, above the longest checkpoint write; \
         several ranks only)",
    ),
    ("outputs.run_dir", "run directory: model/, history.csv, config.toml, checkpoints/"),
    ("outputs.progress", "show a progress bar when attached to a terminal"),
    ("outputs.checkpoint_every", "checkpoint every this many epochs (0: only at the end and on request)"),
    ("control.enabled", "serve the gRPC control plane from rank 0 (fedhex-ctl status/watch/checkpoint/stop)"),
    ("control.listen", "listen address; 127.0.0.1:0 = local only, free port; 0.0.0.0:PORT for cluster use"),
    ("control.tls_cert", "PEM certificate for TLS (rustls); empty = plaintext"),
    ("control.tls_key", "PEM private key for TLS"),
    ("control.tls_ca", "PEM certificate of the CA clients should trust (empty: tls_cert)"),
    (
        "control.stall_seconds",
        "seconds without progress after which a rank that holds the run up is reported stalled \
         (fedhex-ctl status/watch, rank 0's log); >= 5",
    ),
    ("outputs.keep_checkpoints", "checkpoints kept: the newest this many plus the best by validation loss"),
];

/// The full default configuration as TOML, with a comment above every key.
pub fn default_toml() -> String {
    let value = toml::Value::try_from(RunConfig::default()).unwrap_or(toml::Value::Table(Default::default()));
    let mut out =
        String::from("# FEDHEX run configuration (defaults). Override any key with --set section.key=value.\n");
    if let toml::Value::Table(sections) = value {
        for section in ["data", "network", "training", "outputs", "control"] {
            out.push_str(&format!("\n[{section}]\n"));
            if let Some(toml::Value::Table(keys)) = sections.get(section) {
                for (key, v) in keys {
                    let full = format!("{section}.{key}");
                    let doc = KEY_DOCS.iter().find(|(k, _)| *k == full).map(|(_, d)| *d).unwrap_or("(undocumented)");
                    out.push_str(&format!("# {doc}\n{key} = {v}\n"));
                }
            }
            if section == "data" {
                out.push_str(ROOT_EXAMPLE);
            }
        }
    }
    out
}

/// The optional `[data.root]` section, shown commented out in the defaults.
const ROOT_EXAMPLE: &str = r#"
# ROOT input instead of `path` (uncomment): files are files, directories or globs;
# features and labels are branch expressions; events failing `cut` are dropped;
# labels with fewer than `thresh` events are dropped with a warning.
# [data.root]
# files = ["mc/phiomega/"]
# tree = "Events"
# cut = "CBL_Region == 1"
# thresh = 100
# max_depth = 3
# features = [{ name = "phi", expr = "CBL_RecoPhi_mass" }, { name = "omega", expr = "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]" }]
# labels = [{ name = "labelphi", expr = "GenPhi_mass[0]" }, { name = "labelomega", expr = "GenOmega_mass[0]" }]
#
# Recommended preprocessing for detector responses (under [data]; docs/fidelity.md
# has the measurements): each reconstructed mass as a log-ratio to its true mass,
# log labels, and the acceptance cut the simulation applied:
# feature_transforms = { phi = "log_ratio(labelphi)", omega = "log_ratio(labelomega)" }
# label_transforms = { labelphi = "log", labelomega = "log" }
# acceptance = ["omega > 0.415"]
# and, if the production recorded it, the acceptance efficiency per label (CSV:
# the labels, then `efficiency` or `generated,accepted`; `fedhex gen` writes one):
# censored-likelihood training, which also learns how much the cut removed
# (measured stable with 2 features; it diverged with 7 features and 5 cuts, see
# docs/fidelity.md, so N-dimensional runs keep the truncated likelihood).
# acceptance_efficiency = "mc/phiomega/acceptance.csv"
"#;

/// Keys that have a documentation line (for tests).
pub fn documented_keys() -> Vec<&'static str> {
    KEY_DOCS.iter().map(|(k, _)| *k).collect()
}

/// The `--set` overrides plus the `--listen ADDR` flag of the training
/// binaries (as `control.listen`), in the order they apply.
pub fn overrides(set: &[String], listen: Option<&str>) -> Vec<String> {
    let mut all = set.to_vec();
    if let Some(l) = listen {
        all.push(format!("control.listen={}", toml::Value::String(l.to_string())));
    }
    all
}

/// Applies one `section.key=value` override to a TOML document.
pub fn apply_set(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--set '{assignment}': expected section.key=value")))?;
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Config(format!("--set '{assignment}': malformed key '{key}'")));
    }
    let mut table = doc;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(Error::Config(format!("--set '{assignment}': '{p}' is not a section"))),
        };
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl RunConfig {
    /// Parses TOML text, applies overrides, validates. `origin` names the source in errors.
    pub fn from_toml(text: &str, sets: &[String], origin: &str) -> Result<Self> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.message())))?;
        for s in sets {
            apply_set(&mut doc, s)?;
        }
        let cfg: RunConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("{origin}: {}", e.message())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file and applies overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, sets, &path.display().to_string())
    }

    /// The configuration as TOML (saved in the run directory).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let d = &self.data;
        if !(0.0..1.0).contains(&d.validation_fraction) {
            return bad(format!("data.validation_fraction must be in [0, 1), got {}", d.validation_fraction));
        }
        if !(0.0..0.5).contains(&d.logit_eps) {
            return bad(format!("data.logit_eps must be in [0, 0.5), got {}", d.logit_eps));
        }
        if d.acceptance_efficiency.is_some() && d.acceptance.is_empty() {
            return bad("data.acceptance_efficiency needs data.acceptance (the cuts the efficiencies belong to)".into());
        }
        self.network.maf(1, 0).validate()?;
        let t = &self.training;
        if t.epochs == 0 {
            return bad("training.epochs must be at least 1".into());
        }
        if t.batch_size == 0 {
            return bad("training.batch_size must be at least 1".into());
        }
        for (name, v) in [("lr_initial", t.lr_initial), ("lr_final", t.lr_final)] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!("training.{name} must be positive, got {v}"));
            }
        }
        if !(t.clip_grad_norm >= 0.0 && t.clip_grad_norm.is_finite()) {
            return bad(format!("training.clip_grad_norm must be >= 0 (0: off), got {}", t.clip_grad_norm));
        }
        if !(t.clip_grad_relative == 0.0 || (t.clip_grad_relative >= 1.0 && t.clip_grad_relative.is_finite())) {
            return bad(format!("training.clip_grad_relative must be 0 (off) or >= 1, got {}", t.clip_grad_relative));
        }
        let a = t.acceptance_samples;
        if !(a.is_finite() && a >= 0.0 && (a <= 1.0 || a.fract() == 0.0) && a <= 1024.0) {
            return bad(format!(
                "training.acceptance_samples must be 0 (off), a fraction in (0, 1) or a whole number up to 1024, got {a}"
            ));
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return bad(format!("training.ema_decay must be in [0, 1), got {}", t.ema_decay));
        }
        if t.early_stopping_patience > 0 && d.validation_fraction == 0.0 && d.validation_labels.is_empty() {
            return bad(format!(
                "training.early_stopping_patience = {} needs validation events: set data.validation_fraction > 0 \
                 or data.validation_labels",
                t.early_stopping_patience
            ));
        }
        if !(t.lr_decay_epochs >= 0.0 && t.warmup_epochs >= 0.0) {
            return bad("training.lr_decay_epochs and warmup_epochs must be >= 0".into());
        }
        if !(0.0..1.0).contains(&t.adam_beta1) || !(0.0..1.0).contains(&t.adam_beta2) || t.adam_eps <= 0.0 {
            return bad("training.adam_beta1/beta2 must be in [0, 1) and adam_eps > 0".into());
        }
        crate::device::parse_device(&t.device)?;
        let min = MIN_WATCH_SECONDS;
        if !(t.step_timeout == 0.0 || (t.step_timeout >= min && t.step_timeout.is_finite())) {
            return bad(format!(
                "training.step_timeout must be 0 (off) or at least {min} seconds, got {}",
                t.step_timeout
            ));
        }
        let stall = self.control.stall_seconds;
        if !(stall >= min && stall.is_finite()) {
            return bad(format!("control.stall_seconds must be at least {min} seconds, got {stall}"));
        }
        Ok(())
    }
}

/// The `[data.root]` selection of the run configuration at `config`, if one
/// is given: how `sample --labels-from`, `analyze` and `fit` read ROOT
/// references the way training read its input.
///
/// # Errors
/// An unreadable or invalid configuration, or one without `[data.root]`.
pub fn root_selection(config: Option<&Path>) -> Result<Option<crate::data::source::RootInput>> {
    let Some(path) = config else { return Ok(None) };
    match RunConfig::load(path, &[])?.data.root {
        Some(root) => Ok(Some(root)),
        None => {
            Err(Error::Config(format!("--config {}: no [data.root] section to read the events with", path.display())))
        }
    }
}

/// The arguments of `fedhex train` and `fedhex-worker train`, declared once.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The run configuration (TOML).
    #[arg(long, env = "FEDHEX_CONFIG")]
    pub config: PathBuf,
    /// Override a key: section.key=value (TOML value), repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Continue from the newest complete checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    /// Control-plane listen address (as control.listen), e.g. 0.0.0.0:0 for cluster use.
    #[arg(long)]
    pub listen: Option<String>,
}

impl TrainArgs {
    /// The configuration file with the overrides applied.
    pub fn load(&self) -> Result<RunConfig> {
        RunConfig::load(&self.config, &overrides(&self.set, self.listen.as_deref()))
    }
}
