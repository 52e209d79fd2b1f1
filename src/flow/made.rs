//! MADE: a masked autoencoder for distribution estimation (Germain et al. 2015,
//! arXiv:1502.03509), conditioned on labels, as used in a MAF block
//! (Papamakarios et al. 2017, arXiv:1705.07057).
//!
//! Degrees follow the paper: input `j` has degree `rank[j]` in `1..=D` (its
//! position in the block's order), hidden unit `k` of every layer has degree
//! `1 + k mod (D-1)` (0 when `D = 1`), a hidden unit sees units of degree `<=` its
//! own, and the outputs for input `j` see hidden units of degree `< rank[j]`. So
//! output `j` depends only on inputs earlier in the order: the Jacobian is
//! strictly triangular in that order. The labels enter every hidden layer
//! through an unmasked linear map, so every output may depend on them.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Init, Tensor};

/// Activation between hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x)
    #[default]
    Relu,
    /// tanh(x)
    Tanh,
    /// Gaussian error linear unit.
    Gelu,
    /// Exponential linear unit.
    Elu,
    /// x * sigmoid(x)
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Relu => xs.relu(),
            Activation::Tanh => xs.tanh(),
            Activation::Gelu => xs.gelu("none"),
            Activation::Elu => xs.elu(),
            Activation::Silu => xs.silu(),
        }
    }
}

/// Architecture of one MADE block.
#[derive(Debug, Clone, PartialEq)]
pub struct MadeConfig {
    /// Number of features `D`.
    pub features: i64,
    /// Number of conditioning labels `L`.
    pub context: i64,
    /// Widths of the hidden layers.
    pub hidden: Vec<i64>,
    /// Activation between layers.
    pub activation: Activation,
    /// Autoregressive order: `order[i]` is the feature handled `i`-th.
    pub order: Vec<i64>,
    /// Bound `B` of the log-scale: `s = B tanh(raw / B)`.
    pub log_scale_bound: f64,
    /// Outputs per feature: 2 (shift, log-scale) for an affine block, the
    /// spline's parameters for a spline block.
    pub params: i64,
}

/// A linear layer whose weight is multiplied by a fixed 0/1 mask.
#[derive(Debug)]
pub struct MaskedLinear {
    /// Weight `[out, in]`.
    pub ws: Tensor,
    /// Bias `[out]`.
    pub bs: Tensor,
    /// Fixed mask `[out, in]` (not a parameter).
    pub mask: Tensor,
}

impl MaskedLinear {
    /// Effective weight (weight times mask).
    pub fn weight(&self) -> Tensor {
        &self.ws * &self.mask
    }
}

/// One hidden layer: masked map of the previous layer plus a label map.
#[derive(Debug)]
struct Hidden {
    lin: MaskedLinear,
    /// Label weights `[width, L]` (unmasked); absent when `L = 0`.
    cs: Option<Tensor>,
}

/// A conditional MADE block producing shift and log-scale per feature.
#[derive(Debug)]
pub struct Made {
    cfg: MadeConfig,
    hidden: Vec<Hidden>,
    out: MaskedLinear,
    /// Label weights of the output layer, used only when there is no hidden layer.
    out_cond: Option<Tensor>,
}

/// Degrees of the inputs: `rank[j]` = 1 + position of feature `j` in `order`.
pub fn input_degrees(order: &[i64]) -> Vec<i64> {
    let mut rank = vec![0i64; order.len()];
    for (pos, &j) in order.iter().enumerate() {
        if let Some(r) = usize::try_from(j).ok().and_then(|j| rank.get_mut(j)) {
            *r = pos as i64 + 1;
        }
    }
    rank
}

fn hidden_degrees(width: i64, d: i64) -> Vec<i64> {
    (0..width).map(|k| if d <= 1 { 0 } else { 1 + k % (d - 1) }).collect()
}

fn mask(out_deg: &[i64], in_deg: &[i64], strict: bool) -> Tensor {
    let mut m = Vec::with_capacity(out_deg.len() * in_deg.len());
    for &o in out_deg {
        for &i in in_deg {
            m.push(if (strict && o > i) || (!strict && o >= i) { 1f32 } else { 0f32 });
        }
    }
    Tensor::from_slice(&m).view([out_deg.len() as i64, in_deg.len() as i64])
}

fn uniform(fan_in: i64) -> Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Builds a MADE block under `vs` (names `hidden{l}/weight|bias|cond`, `out/weight|bias`).
pub fn made(vs: &nn::Path, cfg: MadeConfig) -> Made {
    let d = cfg.features;
    let dev = vs.device();
    let in_deg = input_degrees(&cfg.order);
    let mut prev_deg = in_deg.clone();
    let mut hidden = Vec::with_capacity(cfg.hidden.len());
    for (l, &width) in cfg.hidden.iter().enumerate() {
        let p = vs / format!("hidden{l}");
        let fan_in = prev_deg.len() as i64 + cfg.context;
        let deg = hidden_degrees(width, d);
        let ws = p.var("weight", &[width, prev_deg.len() as i64], uniform(fan_in));
        let bs = p.var("bias", &[width], uniform(fan_in));
        let cs = (cfg.context > 0).then(|| p.var("cond", &[width, cfg.context], uniform(fan_in)));
        let m = mask(&deg, &prev_deg, false).to_device(dev);
        hidden.push(Hidden { lin: MaskedLinear { ws, bs, mask: m }, cs });
        prev_deg = deg;
    }
    // Outputs parameter by parameter, each for every feature: for an affine block
    // shift for each feature, then raw log-scale for each feature.
    let n_params = cfg.params.max(1);
    let out_deg: Vec<i64> = (0..n_params).flat_map(|_| in_deg.iter().copied()).collect();
    let p = vs / "out";
    // Small initial outputs: every block starts close to the identity map.
    let small = Init::Uniform { lo: -1e-3, up: 1e-3 };
    let ws = p.var("weight", &[n_params * d, prev_deg.len() as i64], small);
    let bs = p.var("bias", &[n_params * d], Init::Const(0.0));
    let m = mask(&out_deg, &prev_deg, true).to_device(dev);
    let out = MaskedLinear { ws, bs, mask: m };
    // A MADE without hidden layers still needs the labels: give the output its own label map.
    let out_cond =
        (hidden.is_empty() && cfg.context > 0).then(|| p.var("cond", &[n_params * d, cfg.context], Init::Const(0.0)));
    Made { cfg, hidden, out, out_cond }
}

impl Made {
    /// The block's configuration.
    pub fn config(&self) -> &MadeConfig {
        &self.cfg
    }

    /// Shift and log-scale for every feature.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `(mu: [N, D], s: [N, D])`
    pub fn forward(&self, xs: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        self.forward_with(xs, cs, &self.weights())
    }

    /// The effective (masked) weights of every layer, hidden layers first.
    /// Computed once and reused when the block runs many times without
    /// gradients (autoregressive sampling).
    pub fn weights(&self) -> Vec<Tensor> {
        self.hidden.iter().map(|h| h.lin.weight()).chain(std::iter::once(self.out.weight())).collect()
    }

    /// The layers' weights, masks and label weights, hidden layers first (for
    /// the fast path).
    pub(crate) fn parts(&self) -> Vec<super::engine::cpu::LayerParts<'_>> {
        let hidden = self.hidden.iter().map(|h| super::engine::cpu::LayerParts {
            weight: &h.lin.ws,
            mask: &h.lin.mask,
            cond: h.cs.as_ref(),
        });
        let out =
            super::engine::cpu::LayerParts { weight: &self.out.ws, mask: &self.out.mask, cond: self.out_cond.as_ref() };
        hidden.chain(std::iter::once(out)).collect()
    }

    /// [`Made::forward`] with precomputed effective weights from [`Made::weights`].
    pub fn forward_with(&self, xs: &Tensor, cs: &Tensor, ws: &[Tensor]) -> (Tensor, Tensor) {
        self.affine_of(&self.raw_with(xs, cs, ws))
    }

    /// Shift and bounded log-scale from the first `2 D` raw outputs.
    pub fn affine_of(&self, o: &Tensor) -> (Tensor, Tensor) {
        let d = self.cfg.features;
        let mu = o.narrow(1, 0, d);
        let b = self.cfg.log_scale_bound;
        let s = (o.narrow(1, d, d) / b).tanh() * b;
        (mu, s)
    }

    /// The raw outputs `[N, params * D]`, parameter by parameter.
    pub fn raw(&self, xs: &Tensor, cs: &Tensor) -> Tensor {
        self.raw_with(xs, cs, &self.weights())
    }

    /// Raw outputs `[N, params * D]` without the first `skip` parameters →
    /// `[N, D, params - skip]` (one row of spline parameters per feature).
    pub fn spline_params(&self, o: &Tensor, skip: i64) -> Tensor {
        let (n, d) = (o.size()[0], self.cfg.features);
        let p = self.cfg.params.max(1) - skip;
        o.narrow(1, skip * d, p * d).view([n, p, d]).transpose(1, 2)
    }

    /// [`Made::raw`] with precomputed effective weights from [`Made::weights`].
    pub fn raw_with(&self, xs: &Tensor, cs: &Tensor, ws: &[Tensor]) -> Tensor {
        let mut h = xs.shallow_clone();
        for (layer, w) in self.hidden.iter().zip(ws) {
            // [N, in] x [in, width] + bias (+ [N, L] x [L, width])
            let pre = match &layer.cs {
                Some(c) => cs.matmul(&c.tr()).addmm(&h, &w.tr()) + &layer.lin.bs,
                None => layer.lin.bs.addmm(&h, &w.tr()),
            };
            h = self.cfg.activation.apply(&pre);
        }
        let w_out = &ws[ws.len() - 1];
        let mut o = self.out.bs.addmm(&h, &w_out.tr()); // [N, 2D]
        if let Some(c) = &self.out_cond {
            o += cs.matmul(&c.tr());
        }
        o
    }
}
