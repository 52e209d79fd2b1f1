//! A trained model: the flow plus everything needed to use it on raw values
//! (whitening of features and labels, names), saved as a self-describing
//! directory:
//!
//! ```text
//! MODEL_DIR/model.json          architecture, block orders, whitening, names, versions, weights digest
//! MODEL_DIR/model.safetensors   the weights, named by path (`made0.hidden0.weight`, ...)
//! ```
//!
//! Loading needs nothing else: no training configuration, any number of blocks
//! and hidden layers. The JSON records a digest of the weights file, so a
//! weights file from another model is refused rather than silently used.
//!
//! An ensemble ([`Model::ensemble`]: several flows trained alike with different
//! seeds, whose density is the equal-weight mixture of theirs) is the first
//! member's directory with each further member in a subdirectory, listed in
//! `members` of its `model.json` (format version 2); every member directory is
//! itself a loadable single model:
//!
//! ```text
//! MODEL_DIR/model.json, model.safetensors   member 0, "members": ["member-1", ...]
//! MODEL_DIR/member-1/model.json, ...        member 1
//! ```

use super::engine::Engine;
use super::maf::{Maf, MafConfig};
use crate::atomic::{replace_dir, sibling, write_synced};
use crate::data::transform::{Acceptance, Transforms};
use crate::data::whiten::Whitening;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Name of the description file inside a model directory.
pub const MODEL_JSON: &str = "model.json";
/// Name of the weights file inside a model directory.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// Format tag written into every model description.
pub const FORMAT: &str = "fedhex-model";
/// Version of the model directory layout of a single flow.
pub const FORMAT_VERSION: u32 = 1;
/// Layout version written for an ensemble (`members` in `model.json`); a
/// reader that knows only version 1 refuses it instead of using member 0 alone.
pub const ENSEMBLE_FORMAT_VERSION: u32 = 2;

/// The JSON description of a model (everything except the weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Version of FEDHEX that wrote the model.
    pub fedhex_version: String,
    /// Version of libtorch that wrote the model.
    pub libtorch_version: String,
    /// The flow's architecture.
    pub flow: MafConfig,
    /// Feature order of each block.
    pub orders: Vec<Vec<i64>>,
    /// Whitening of the features (names inside).
    pub features: Whitening,
    /// Whitening of the labels (names inside).
    pub labels: Whitening,
    /// Physics-aware feature transforms applied before the whitening (absent: none).
    #[serde(default, skip_serializing_if = "Transforms::is_identity")]
    pub feature_transforms: Transforms,
    /// Label transforms applied before the label whitening (absent: none).
    #[serde(default, skip_serializing_if = "Transforms::is_identity")]
    pub label_transforms: Transforms,
    /// Known acceptance cuts of the training data, applied to generated events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance: Vec<Acceptance>,
    /// FNV-1a 64 digest (hex) of the weights file.
    pub weights_digest: String,
    /// Free-form facts about training (epochs, losses, data); not needed to load.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Subdirectories holding the further members of an ensemble (absent: a single flow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A flow with its whitening, working on raw (physical) values.
#[derive(Debug)]
pub struct Model {
    /// The flow, working on whitened values (libtorch: the reference, and autograd).
    pub flow: Maf,
    /// The engine that evaluates and samples the flow without gradients
    /// (chosen once, in [`Engine::select`]).
    pub engine: Engine,
    /// Whitening of the features.
    pub features: Whitening,
    /// Whitening of the labels.
    pub labels: Whitening,
    /// Feature transforms applied before the feature whitening.
    pub feature_transforms: Transforms,
    /// Label transforms applied before the label whitening.
    pub label_transforms: Transforms,
    /// Known acceptance cuts of the training data (generated events are cut the same way).
    pub acceptance: Vec<Acceptance>,
    /// Facts about training, carried into the model file.
    pub training: serde_json::Value,
    /// The further flows of an ensemble (empty for a single flow): the model's
    /// density is then the equal-weight mixture of its own flow and theirs
    /// ([`Model::ensemble`]). Training uses only the model's own flow.
    pub members: Vec<Model>,
}

/// Version string of the libtorch this binary was built against.
pub fn libtorch_version() -> String {
    option_env!("FEDHEX_LIBTORCH_VERSION").unwrap_or("unknown").to_string()
}

fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Model {
    /// Builds a model from a flow and fitted whitening, checking dimensions agree.
    pub fn new(flow: Maf, features: Whitening, labels: Whitening) -> Result<Self> {
        let cfg = flow.config();
        if features.dim() as i64 != cfg.features || labels.dim() as i64 != cfg.context {
            return Err(Error::Config(format!(
                "flow has {} features and {} labels, whitening has {} and {}",
                cfg.features,
                cfg.context,
                features.dim(),
                labels.dim()
            )));
        }
        Ok(Model {
            engine: Engine::select(&flow),
            flow,
            features,
            labels,
            feature_transforms: Transforms::default(),
            label_transforms: Transforms::default(),
            acceptance: vec![],
            training: serde_json::Value::Null,
            members: vec![],
        })
    }

    /// Combines models of the same features, labels, preprocessing and
    /// acceptance cuts (typically trained from one configuration with
    /// different seeds) into an ensemble whose density is the equal-weight
    /// mixture of theirs. Averaging a few flows removes much of the
    /// seed-to-seed spread of a single one (docs/fidelity.md, "Ensembles").
    /// Ensembles among `models` are flattened into their members. Each model
    /// comes with a name (its path) for the errors.
    ///
    /// # Errors
    /// Fewer than two flows in all, or a model whose features, labels,
    /// transforms or acceptance cuts differ from the first one's (named).
    pub fn ensemble(models: Vec<(String, Model)>) -> Result<Model> {
        let mut flat: Vec<(String, Model)> = Vec::new();
        for (name, mut m) in models {
            let inner = std::mem::take(&mut m.members);
            flat.push((name.clone(), m));
            flat.extend(inner.into_iter().enumerate().map(|(i, m)| (format!("{name} (member {})", i + 1), m)));
        }
        if flat.len() < 2 {
            return Err(Error::Config(format!(
                "an ensemble needs at least two flows, got {}{}",
                flat.len(),
                flat.first().map(|(n, _)| format!(" ({n})")).unwrap_or_default()
            )));
        }
        let mut it = flat.into_iter();
        let (first_name, mut first) = it.next().ok_or_else(|| Error::Config("an ensemble needs flows".into()))?;
        for (name, m) in it {
            if let Some(why) = first.mismatch(&m) {
                return Err(Error::Config(format!(
                    "{name} cannot join an ensemble with {first_name}: {why}; an ensemble mixes models \
                     trained on the same features and labels with the same preprocessing"
                )));
            }
            first.members.push(m);
        }
        Ok(first)
    }

    /// Number of flows: 1, or the ensemble's size.
    pub fn n_members(&self) -> usize {
        1 + self.members.len()
    }

    /// Why `other` cannot be mixed with this model (`None` when it can).
    fn mismatch(&self, other: &Model) -> Option<String> {
        let (a, b) = (self.features.names(), other.features.names());
        if a != b {
            return Some(format!("features {b:?} against {a:?}"));
        }
        let (a, b) = (self.labels.names(), other.labels.names());
        if a != b {
            return Some(format!("labels {b:?} against {a:?}"));
        }
        if self.feature_transforms != other.feature_transforms {
            return Some("different feature transforms".into());
        }
        if self.label_transforms != other.label_transforms {
            return Some("different label transforms".into());
        }
        if self.acceptance != other.acceptance {
            return Some("different acceptance cuts".into());
        }
        if self.flow.device() != other.flow.device() {
            return Some(format!("device {:?} against {:?}", other.flow.device(), self.flow.device()));
        }
        None
    }

    /// Splits `n` rows among the flows of an ensemble: one member drawn per
    /// row, uniformly, from libtorch's generator (so the caller's seed fixes
    /// it), as the row indices of each member (on the CPU).
    fn member_rows(&self, n: i64) -> Vec<Tensor> {
        let k = self.n_members() as i64;
        let pick = Tensor::randint(k, [n], (Kind::Int64, Device::Cpu));
        (0..k).map(|j| pick.eq(j).nonzero().view([-1])).collect()
    }

    /// Runs `one` on each member's rows of `cs` and puts the results back in
    /// row order (`K` tensors per call, each with the rows first).
    fn mixture_rows<const K: usize>(&self, cs: &Tensor, one: impl Fn(&Model, &Tensor) -> [Tensor; K]) -> [Tensor; K] {
        let n = cs.size()[0];
        let rows = self.member_rows(n);
        let mut out: Option<[Tensor; K]> = None;
        let members = std::iter::once(self).chain(self.members.iter());
        for (m, idx) in members.zip(rows) {
            if idx.numel() == 0 {
                continue;
            }
            let idx = idx.to_device(cs.device());
            let part = one(m, &cs.index_select(0, &idx));
            let acc = out.get_or_insert_with(|| {
                std::array::from_fn(|i| {
                    let mut shape = part[i].size();
                    shape[0] = n;
                    Tensor::zeros(shape.as_slice(), (part[i].kind(), part[i].device()))
                })
            });
            for (a, p) in acc.iter_mut().zip(&part) {
                let _ = a.index_copy_(0, &idx.to_device(p.device()), p);
            }
        }
        out.unwrap_or_else(|| one(self, cs))
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.features.dim()
    }

    /// Number of labels.
    pub fn n_labels(&self) -> usize {
        self.labels.dim()
    }

    /// Sets the physics-aware transforms and acceptance cuts (checked against the dimensions).
    pub fn with_preprocessing(
        mut self,
        feature_transforms: Transforms,
        label_transforms: Transforms,
        acceptance: Vec<Acceptance>,
    ) -> Result<Self> {
        let (d, l) = (self.n_features(), self.n_labels());
        feature_transforms.validate(d, l, "feature")?;
        label_transforms.validate(l, 0, "label")?;
        if let Some(a) = acceptance.iter().find(|a| a.max_feature() >= d) {
            return Err(Error::Data(format!("acceptance cut on feature {} of {d}", a.max_feature())));
        }
        self.feature_transforms = feature_transforms;
        self.label_transforms = label_transforms;
        self.acceptance = acceptance;
        Ok(self)
    }

    /// The training range of each label in raw units (the label whitening's
    /// range mapped back through the label transforms, which are monotone).
    /// For an ensemble, the range every member was trained on (the intersection).
    pub fn label_ranges(&self) -> Vec<[f64; 2]> {
        let mut ranges = self.label_ranges_one();
        for m in &self.members {
            for (r, o) in ranges.iter_mut().zip(m.label_ranges_one()) {
                *r = [r[0].max(o[0]), r[1].min(o[1])];
            }
        }
        ranges
    }

    fn label_ranges_one(&self) -> Vec<[f64; 2]> {
        let l = self.n_labels() as i64;
        let ends: Vec<f64> =
            self.labels.dims.iter().map(|d| d.min).chain(self.labels.dims.iter().map(|d| d.max)).collect();
        let t = Tensor::from_slice(&ends).view([2, l]);
        let raw = self.label_transforms.inverse(&t, &t.narrow(1, 0, 0));
        let v = Vec::<f64>::try_from(raw.flatten(0, -1)).unwrap_or(ends);
        (0..l as usize)
            .map(|j| {
                let (a, b) = (v[j], v[l as usize + j]);
                [a.min(b), a.max(b)]
            })
            .collect()
    }

    /// Raw labels → the flow's conditioning input.
    ///
    /// # Shapes
    /// `cs: [N, L]` → `[N, L]`
    pub fn condition(&self, cs: &Tensor) -> Tensor {
        let dev = self.flow.device();
        let cs = cs.to_device(dev).to_kind(Kind::Float);
        let none = cs.narrow(1, 0, 0);
        self.labels.forward(&self.label_transforms.forward(&cs, &none).0)
    }

    /// Raw features → the flow's (whitened) space, and `log |det dz/dx|` per event.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` (raw labels) → `([N, D], [N])`
    pub fn to_flow_space(&self, xs: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        let dev = self.flow.device();
        let xs = xs.to_device(dev).to_kind(Kind::Float);
        let cs = cs.to_device(dev).to_kind(Kind::Float);
        let (y, ldj) = self.feature_transforms.forward(&xs, &cs);
        let z = self.features.forward(&y);
        let ldj = ldj + self.features.log_abs_det(&y);
        (z, ldj)
    }

    /// The flow's space → raw features (exact inverse of [`Model::to_flow_space`]).
    pub fn from_flow_space(&self, zs: &Tensor, cs: &Tensor) -> Tensor {
        let dev = self.flow.device();
        let cs = cs.to_device(dev).to_kind(Kind::Float);
        self.feature_transforms.inverse(&self.features.inverse(zs), &cs)
    }

    /// `log p(x | label)` of raw values (includes the preprocessing Jacobian),
    /// per event. Not normalised to the acceptance: the density of the flow
    /// before any acceptance cut.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `[N]`
    ///
    /// For an ensemble, the mixture's: `log (1/K Σ_k p_k(x | label))`.
    pub fn log_prob(&self, xs: &Tensor, cs: &Tensor) -> Tensor {
        if self.members.is_empty() {
            return self.log_prob_one(xs, cs);
        }
        let each: Vec<Tensor> =
            std::iter::once(self).chain(self.members.iter()).map(|m| m.log_prob_one(xs, cs)).collect();
        Tensor::stack(&each, 0).logsumexp([0i64].as_slice(), false) - (self.n_members() as f64).ln()
    }

    /// [`Model::log_prob`] of the model's own flow.
    fn log_prob_one(&self, xs: &Tensor, cs: &Tensor) -> Tensor {
        let (z, ldj) = self.to_flow_space(xs, cs);
        let c = self.condition(cs);
        self.flow_log_prob(&z, &c) + ldj
    }

    /// The flow's `log p(z | c)` in its own (whitened) space: by autograd when
    /// gradients are being recorded, else by the [`Engine`].
    ///
    /// # Shapes
    /// `zs: [N, D]`, `cs: [N, L]` (whitened) → `[N]`
    pub fn flow_log_prob(&self, zs: &Tensor, cs: &Tensor) -> Tensor {
        if crate::flow::engine::autograd_recording() {
            self.flow.log_prob(zs, cs)
        } else {
            self.engine.log_prob(&self.flow, zs, cs)
        }
    }

    /// Draws one event per row of whitened labels `cs` in the flow's space,
    /// by the [`Engine`] (see [`Engine::sample`]).
    pub fn flow_sample(&self, cs: &Tensor) -> Tensor {
        self.engine.sample(&self.flow, cs)
    }

    /// Draws one raw event per row of raw labels `cs`, before acceptance cuts
    /// (see [`Model::passes_acceptance`]).
    ///
    /// # Shapes
    /// `cs: [N, L]` → `[N, D]`
    ///
    /// An ensemble draws each row's member uniformly (from libtorch's
    /// generator, like the flows' own draws), then that member's event.
    pub fn sample(&self, cs: &Tensor) -> Tensor {
        if self.members.is_empty() {
            return self.sample_one(cs);
        }
        let [x] = self.mixture_rows(cs, |m, c| [m.sample_one(c)]);
        x
    }

    fn sample_one(&self, cs: &Tensor) -> Tensor {
        let c = self.condition(cs);
        let z = self.flow_sample(&c);
        tch::no_grad(|| self.from_flow_space(&z, cs))
    }

    /// Like [`Model::sample`], and also says per event whether it lies inside the
    /// training support: every transformed feature (before whitening) within the
    /// training range widened by `margin` times its width on each side, and every
    /// raw value finite. Events outside come from the far tails of the flow that
    /// no training event constrained (e.g. `exp` of a tail value through a
    /// `log_ratio` transform) and are dropped by generation.
    ///
    /// # Shapes
    /// `cs: [N, L]` → `([N, D], [N] bool)`
    ///
    /// An ensemble draws the member of each row as [`Model::sample`] does;
    /// each member checks its events against its own training range.
    pub fn sample_in_support(&self, cs: &Tensor, margin: f64) -> (Tensor, Tensor) {
        if self.members.is_empty() {
            return self.sample_in_support_one(cs, margin);
        }
        let [x, ok] = self.mixture_rows(cs, |m, c| {
            let (x, ok) = m.sample_in_support_one(c, margin);
            [x, ok]
        });
        (x, ok)
    }

    fn sample_in_support_one(&self, cs: &Tensor, margin: f64) -> (Tensor, Tensor) {
        let c = self.condition(cs);
        let z = self.flow_sample(&c);
        tch::no_grad(|| {
            let dev = z.device();
            let y = self.features.inverse(&z);
            let x = self.feature_transforms.inverse(&y, &cs.to_device(dev).to_kind(Kind::Float));
            let finite = x.isfinite().all_dim(1, false);
            if !margin.is_finite() {
                return (x, finite);
            }
            let bound = |f: &dyn Fn(&crate::data::whiten::DimWhitening) -> f64| {
                let v: Vec<f32> = self.features.dims.iter().map(|d| f(d) as f32).collect();
                Tensor::from_slice(&v).to_device(dev).view([1, -1])
            };
            let lo = bound(&|d| d.min - margin * (d.max - d.min));
            let hi = bound(&|d| d.max + margin * (d.max - d.min));
            let inside = y.ge_tensor(&lo).logical_and(&y.le_tensor(&hi)).all_dim(1, false);
            (x, finite.logical_and(&inside))
        })
    }

    /// Whether a raw event passes every acceptance cut of the training data.
    pub fn passes_acceptance(&self, row: &[f32]) -> bool {
        self.acceptance.iter().all(|a| a.keeps(row))
    }

    /// Boolean mask `[N]` of the raw events `xs: [N, D]` that pass every
    /// acceptance cut, on `xs`'s device.
    pub fn acceptance_mask(&self, xs: &Tensor) -> Tensor {
        let all = Tensor::ones([xs.size()[0]], (Kind::Bool, xs.device()));
        self.acceptance.iter().fold(all, |m, a| m.logical_and(&a.mask(xs).to_device(xs.device())))
    }

    /// Whether each raw event of `flat` (row-major, `d` features per event)
    /// passes every acceptance cut; expression cuts are evaluated column-wise.
    pub fn acceptance_of_rows(&self, flat: &[f32], d: usize) -> Vec<bool> {
        let n = flat.len() / d.max(1);
        let mut pass = vec![true; n];
        let Ok(view) = ndarray::ArrayView2::from_shape((n, d), &flat[..n * d]) else { return vec![false; n] };
        for a in &self.acceptance {
            for (p, k) in pass.iter_mut().zip(a.keeps_rows(view)) {
                *p &= k;
            }
        }
        pass
    }

    /// Writes the model directory atomically: into a temporary sibling first,
    /// fsynced, then renamed over `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        self.write_into(&tmp)?;
        replace_dir(&tmp, dir)
    }

    /// Writes `model.json` and `model.safetensors` into an existing directory
    /// (no atomicity of its own; used by [`Model::save`] and checkpoints), and
    /// an ensemble's further members into subdirectories `member-1`, ….
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        let weights = self.weights_bytes()?;
        let mut names = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            let name = format!("member-{}", i + 1);
            let sub = dir.join(&name);
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
            m.write_into(&sub)?;
            names.push(name);
        }
        let meta = ModelMeta {
            format: FORMAT.into(),
            format_version: if names.is_empty() { FORMAT_VERSION } else { ENSEMBLE_FORMAT_VERSION },
            fedhex_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: libtorch_version(),
            flow: self.flow.config().clone(),
            orders: self.flow.orders().to_vec(),
            features: self.features.clone(),
            labels: self.labels.clone(),
            feature_transforms: self.feature_transforms.clone(),
            label_transforms: self.label_transforms.clone(),
            acceptance: self.acceptance.clone(),
            weights_digest: fnv1a(&weights),
            training: self.training.clone(),
            members: names,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::model(dir, e.to_string()))?;
        write_synced(&dir.join(MODEL_WEIGHTS), &weights)?;
        write_synced(&dir.join(MODEL_JSON), &json)?;
        Ok(())
    }

    fn weights_bytes(&self) -> Result<Vec<u8>> {
        named_tensors_bytes(&self.flow.var_store().variables())
    }

    /// Loads a model directory (or the `model.json` inside it) onto `device`,
    /// with an ensemble's members.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::load_dir(path, device, true)
    }

    fn load_dir(path: &Path, device: Device, members_allowed: bool) -> Result<Self> {
        let dir =
            if path.is_file() { path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { path.to_path_buf() };
        if !dir.is_dir() {
            return Err(Error::model(path, "no such model directory"));
        }
        let json_path = dir.join(MODEL_JSON);
        let json = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let meta: ModelMeta = serde_json::from_slice(&json)
            .map_err(|e| Error::model(&json_path, format!("not a valid model description: {e}")))?;
        if meta.format != FORMAT {
            return Err(Error::model(&json_path, format!("format is '{}', expected '{FORMAT}'", meta.format)));
        }
        if meta.format_version > ENSEMBLE_FORMAT_VERSION {
            return Err(Error::model(
                &json_path,
                format!(
                    "format version {} is newer than this FEDHEX understands ({ENSEMBLE_FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        if !meta.members.is_empty() && !members_allowed {
            return Err(Error::model(&json_path, "an ensemble member lists members of its own"));
        }
        meta.features.validate().map_err(|e| Error::model(&json_path, e.to_string()))?;
        meta.labels.validate().map_err(|e| Error::model(&json_path, e.to_string()))?;
        let w_path = dir.join(MODEL_WEIGHTS);
        let bytes = std::fs::read(&w_path).map_err(|e| Error::io(&w_path, e))?;
        if fnv1a(&bytes) != meta.weights_digest {
            return Err(Error::model(
                &w_path,
                "weights file does not match model.json (digest differs): corrupt or from another model",
            ));
        }
        // The fresh weights are overwritten below; build them under the RNG lock
        // so their draws cannot disturb a concurrent seeded section.
        let mut flow = {
            let _rng = crate::rng::locked();
            Maf::with_orders(meta.flow.clone(), meta.orders.clone(), device)
                .map_err(|e| Error::model(&json_path, e.to_string()))?
        };
        let tensors = read_named_tensors(&bytes).map_err(|m| Error::model(&w_path, m))?;
        load_into(&mut flow, &tensors).map_err(|m| Error::model(&w_path, m))?;
        let mut model = Model::new(flow, meta.features, meta.labels)
            .and_then(|m| m.with_preprocessing(meta.feature_transforms, meta.label_transforms, meta.acceptance))
            .map_err(|e| Error::model(&json_path, e.to_string()))?;
        model.training = meta.training;
        for name in &meta.members {
            let plain = !name.is_empty()
                && std::path::Path::new(name).components().count() == 1
                && !name.contains(['/', '\\'])
                && name != ".."
                && name != ".";
            if !plain {
                return Err(Error::model(&json_path, format!("member '{name}' is not a subdirectory name")));
            }
            let m = Self::load_dir(&dir.join(name), device, false)?;
            if let Some(why) = model.mismatch(&m) {
                return Err(Error::model(&json_path, format!("member '{name}' does not fit the ensemble: {why}")));
            }
            model.members.push(m);
        }
        Ok(model)
    }
}

/// Copies named CPU tensors into the flow's variables after checking names and shapes.
pub fn load_into(flow: &mut Maf, tensors: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
    let named: Vec<(String, Vec<i64>)> = tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    flow.check_tensors(&named)?;
    let vars = flow.var_store().variables();
    tch::no_grad(|| {
        for (name, var) in vars {
            if let Some(src) = tensors.get(&name) {
                let mut var = var;
                var.copy_(src);
            }
        }
    });
    Ok(())
}

/// Serialises named tensors (f32) to safetensors bytes, names sorted.
pub fn named_tensors_bytes(vars: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(names.len());
    for name in names {
        let t = vars[name].to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Data(format!("tensor '{n}': {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> =
        [("writer".to_string(), format!("fedhex {}", env!("CARGO_PKG_VERSION")))].into();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Data(format!("safetensors: {e}")))
}

/// Parses safetensors bytes into named f32 CPU tensors.
pub fn read_named_tensors(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor '{name}' has dtype {:?}, expected F32", view.dtype()));
        }
        let vals: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::from_slice(&vals).view(shape.as_slice());
        out.insert(name, t);
    }
    Ok(out)
}
