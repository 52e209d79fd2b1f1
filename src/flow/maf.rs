//! The conditional Masked Autoregressive Flow: a stack of MADE blocks with a
//! change of autoregressive order between blocks and a standard normal base
//! (Papamakarios et al. 2017, arXiv:1705.07057).
//!
//! Block `k` maps `x` to `u = (x - mu(x, c)) * exp(-s(x, c))`, so
//! `log p(x | c) = log N(u_K; 0, I) - sum_k sum_j s_kj`. Sampling inverts the
//! blocks from last to first; each inversion takes `D` passes of the network
//! (after pass `i` the first `i` features in the block's order are exact).
//!
//! The "permutation between blocks" is realised by giving each block its own
//! order of the features (the degrees of its masks), which is equivalent to
//! permuting the data between blocks but costs no gather. With
//! [`Permutation::Lu`] every block keeps the natural order and a learned
//! invertible linear map ([`super::lu`]) sits between consecutive blocks
//! instead; untrained, it is the reversal, so the flow equals the
//! [`Permutation::Reverse`] one.

use super::lu::{lu_mixing, LuMixing};
use super::made::{input_degrees, made, Activation, Made, MadeConfig};
use super::spline::{self, SplineSpec};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// How the feature order changes from one block to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Permutation {
    /// Alternate natural and reversed order.
    #[default]
    Reverse,
    /// A seeded random order per block (`permutation_seed`).
    Random,
    /// A learned linear map `z = P L U x + b` between consecutive blocks
    /// ([`super::lu`]), starting at the reversal; every block in natural order.
    /// Not between the data and the first block nor after the last: the
    /// whitening already fixes the data's scale and shift, and the flow then
    /// equals the [`Permutation::Reverse`] one until trained.
    Lu,
}

/// The element-wise map of each block, conditioned on earlier features and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// Shift and scale, `u = (x - mu) exp(-s)` (the MAF paper's block).
    #[default]
    Affine,
    /// Monotonic rational-quadratic spline on `[-spline_bound, spline_bound]`,
    /// identity outside ([`super::spline`]); every block maps that box onto
    /// itself, so data beyond the bound are modelled by the base's tails only.
    Spline,
    /// Shift and scale, then a spline (`u = f((x - mu) exp(-s))`): the affine
    /// part moves tails into the spline's interval.
    #[serde(rename = "affine_spline")]
    #[value(name = "affine_spline")]
    AffineSpline,
}

fn default_spline_bins() -> i64 {
    8
}

fn default_spline_bound() -> f64 {
    5.0
}

/// Architecture of the conditional MAF; stored in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MafConfig {
    /// Number of features `D`.
    pub features: i64,
    /// Number of labels `L` (conditioning inputs).
    pub context: i64,
    /// Number of MADE blocks.
    pub n_blocks: usize,
    /// Hidden layer widths of every MADE.
    pub hidden: Vec<i64>,
    /// Activation between hidden layers.
    pub activation: Activation,
    /// Order change between blocks.
    pub permutation: Permutation,
    /// Seed of the random orders.
    pub permutation_seed: u64,
    /// Bound `B` of each block's log-scale, `s = B tanh(raw / B)` (affine blocks).
    pub log_scale_bound: f64,
    /// Element-wise map of each block (files written before splines: affine).
    #[serde(default)]
    pub transform: Transform,
    /// Pieces of each spline (spline blocks).
    #[serde(default = "default_spline_bins")]
    pub spline_bins: i64,
    /// Half-width of the interval each spline covers, in whitened units (spline blocks).
    #[serde(default = "default_spline_bound")]
    pub spline_bound: f64,
}

impl MafConfig {
    /// Checks sizes and bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.features < 1 {
            return bad(format!("network: need at least one feature, got {}", self.features));
        }
        if self.context < 0 {
            return bad(format!("network: negative number of labels {}", self.context));
        }
        if self.n_blocks < 1 {
            return bad("network.n_blocks must be at least 1".into());
        }
        if let Some(w) = self.hidden.iter().find(|&&w| w < 1) {
            return bad(format!("network.hidden: every width must be >= 1, got {w}"));
        }
        if !(self.log_scale_bound > 0.0 && self.log_scale_bound.is_finite()) {
            return bad(format!("network.log_scale_bound must be positive, got {}", self.log_scale_bound));
        }
        if self.transform != Transform::Affine {
            if !(2..=64).contains(&self.spline_bins) {
                return bad(format!("network.spline_bins must be in 2..=64, got {}", self.spline_bins));
            }
            if !(self.spline_bound > 0.0 && self.spline_bound.is_finite()) {
                return bad(format!("network.spline_bound must be positive, got {}", self.spline_bound));
            }
        }
        Ok(())
    }

    /// The spline's shape, for spline blocks.
    pub fn spline(&self) -> Option<SplineSpec> {
        (self.transform != Transform::Affine).then_some(SplineSpec { bins: self.spline_bins, bound: self.spline_bound })
    }

    /// Network outputs per feature of each block ahead of the spline's: 2
    /// (shift, log-scale) where the block has an affine part, else 0.
    pub fn affine_params(&self) -> i64 {
        if self.transform == Transform::Spline {
            0
        } else {
            2
        }
    }

    /// Network outputs per feature of each block.
    pub fn params_per_feature(&self) -> i64 {
        self.affine_params() + self.spline().map_or(0, |s| s.params_per_feature())
    }

    /// The feature order of each block.
    pub fn orders(&self) -> Vec<Vec<i64>> {
        let natural: Vec<i64> = (0..self.features).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.permutation_seed);
        (0..self.n_blocks)
            .map(|k| match self.permutation {
                Permutation::Reverse if k % 2 == 1 => natural.iter().rev().copied().collect(),
                Permutation::Reverse | Permutation::Lu => natural.clone(),
                Permutation::Random => {
                    let mut o = natural.clone();
                    o.shuffle(&mut rng);
                    o
                }
            })
            .collect()
    }
}

/// A conditional MAF and the variables it owns.
pub struct Maf {
    cfg: MafConfig,
    orders: Vec<Vec<i64>>,
    vs: nn::VarStore,
    blocks: Vec<Made>,
    /// The learned map after block `k`, for every block but the last
    /// ([`Permutation::Lu`]; empty otherwise).
    mixings: Vec<LuMixing>,
}

impl std::fmt::Debug for Maf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maf").field("cfg", &self.cfg).field("orders", &self.orders).finish()
    }
}

use super::LOG_2PI;

impl Maf {
    /// A freshly initialised flow (initialisation uses libtorch's global RNG:
    /// hold [`crate::rng::seeded`] around this call for reproducible weights).
    pub fn new(cfg: MafConfig, device: Device) -> Result<Self> {
        let orders = cfg.orders();
        Self::with_orders(cfg, orders, device)
    }

    /// A flow with explicit block orders (as stored in a model file).
    pub fn with_orders(cfg: MafConfig, orders: Vec<Vec<i64>>, device: Device) -> Result<Self> {
        cfg.validate()?;
        if orders.len() != cfg.n_blocks {
            return Err(Error::Config(format!("{} block orders for {} blocks", orders.len(), cfg.n_blocks)));
        }
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            if sorted != (0..cfg.features).collect::<Vec<_>>() {
                return Err(Error::Config(format!("block order {o:?} is not a permutation of 0..{}", cfg.features)));
            }
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let blocks = orders
            .iter()
            .enumerate()
            .map(|(k, order)| {
                made(
                    &(&root / format!("made{k}")),
                    MadeConfig {
                        features: cfg.features,
                        context: cfg.context,
                        hidden: cfg.hidden.clone(),
                        activation: cfg.activation,
                        order: order.clone(),
                        log_scale_bound: cfg.log_scale_bound,
                        params: cfg.params_per_feature(),
                    },
                )
            })
            .collect();
        // Built after the blocks and from constants only: the blocks get the
        // same initial weights as under the other permutations.
        let mixings = match cfg.permutation {
            Permutation::Lu => (0..cfg.n_blocks.saturating_sub(1))
                .map(|k| lu_mixing(&(&root / format!("mix{k}")), cfg.features))
                .collect(),
            Permutation::Reverse | Permutation::Random => vec![],
        };
        Ok(Maf { cfg, orders, vs, blocks, mixings })
    }

    /// The architecture.
    pub fn config(&self) -> &MafConfig {
        &self.cfg
    }

    /// The feature order of each block.
    pub fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    /// The variables (weights), named by path, e.g. `made3.hidden0.weight`.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access to the variables (loading, optimiser).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The blocks, in data → base order.
    pub fn blocks(&self) -> &[Made] {
        &self.blocks
    }

    /// The learned maps between blocks, in data → base order: `mixings()[k]`
    /// follows block `k` (empty unless [`Permutation::Lu`]).
    pub fn mixings(&self) -> &[LuMixing] {
        &self.mixings
    }

    /// Data → base: `u` and `log |det du/dx|`.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `(u: [N, D], logdet: [N])`
    pub fn forward(&self, xs: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        // log |det| of the learned maps between blocks, [N] (none: no maps).
        let mut mix_ld: Option<Tensor> = None;
        let (u, logdet) = if let Some(spec) = self.cfg.spline() {
            let mut u = xs.shallow_clone();
            let mut lds = Vec::with_capacity(self.blocks.len());
            let skip = self.cfg.affine_params();
            for (k, block) in self.blocks.iter().enumerate() {
                let o = block.raw(&u, cs);
                if skip > 0 {
                    let (mu, s) = block.affine_of(&o);
                    u = (u - mu) * s.neg().exp();
                    lds.push(s.neg());
                }
                let (y, ld) = spline::forward(&u, &block.spline_params(&o, skip), spec);
                lds.push(ld);
                u = self.mix_after(k, y, &mut mix_ld);
            }
            // [N, D] per block → summed over blocks and features.
            let logdet = Tensor::stack(&lds, 0).sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float);
            (u, logdet)
        } else {
            let mut u = xs.shallow_clone();
            let mut s_sum: Option<Tensor> = None;
            for (k, block) in self.blocks.iter().enumerate() {
                let (mu, s) = block.forward(&u, cs);
                u = self.mix_after(k, (u - mu) * s.neg().exp(), &mut mix_ld);
                s_sum = Some(match s_sum {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
            let logdet = match s_sum {
                Some(s) => s.sum_dim_intlist(1, false, Kind::Float).neg(),
                None => Tensor::zeros([xs.size()[0]], (Kind::Float, xs.device())),
            };
            (u, logdet)
        };
        match mix_ld {
            Some(m) => (u, logdet + m),
            None => (u, logdet),
        }
    }

    /// Data → base through the learned map after block `k`, if there is one,
    /// adding its `log |det|` to `acc`.
    fn mix_after(&self, k: usize, u: Tensor, acc: &mut Option<Tensor>) -> Tensor {
        let Some(mix) = self.mixings.get(k) else { return u };
        let (z, ld) = mix.forward(&u);
        *acc = Some(match acc.take() {
            Some(a) => a + ld,
            None => ld,
        });
        z
    }

    /// `log p(x | c)` per event through libtorch ops (recorded by autograd when
    /// gradients are enabled): the reference for the CPU engine
    /// ([`super::engine::Engine`]).
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `[N]`
    pub fn log_prob(&self, xs: &Tensor, cs: &Tensor) -> Tensor {
        let (u, logdet) = self.forward(xs, cs);
        base_log_prob(&u) + logdet
    }

    /// Base → data: `x` and `log |det du/dx|` at that `x` (the same quantity
    /// [`Maf::forward`] returns), without gradients, through libtorch ops: the
    /// reference for the CPU engine.
    ///
    /// # Shapes
    /// `us: [N, D]`, `cs: [N, L]` → `(x: [N, D], logdet: [N])`
    pub fn inverse(&self, us: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let d = self.cfg.features;
            let mut y = us.shallow_clone();
            let mut logdet = Tensor::zeros([us.size()[0]], (Kind::Float, us.device()));
            let spec = self.cfg.spline();
            for (k, block) in self.blocks.iter().enumerate().rev() {
                // Undo the learned map that follows block k in the data → base direction.
                if let Some(mix) = self.mixings.get(k) {
                    y = mix.inverse(&y);
                    logdet += mix.log_abs_det();
                }
                let ws = block.weights();
                let mut x = y.zeros_like();
                if let Some(spec) = spec {
                    let skip = self.cfg.affine_params();
                    let mut ld_last = None;
                    for _ in 0..d {
                        let o = block.raw_with(&x, cs, &ws);
                        let (z, mut ld) = spline::inverse(&y, &block.spline_params(&o, skip), spec);
                        x = z;
                        if skip > 0 {
                            let (mu, s) = block.affine_of(&o);
                            x = x * s.exp() + mu;
                            ld -= s;
                        }
                        ld_last = Some(ld);
                    }
                    if let Some(ld) = ld_last {
                        logdet += ld.sum_dim_intlist(1, false, Kind::Float);
                    }
                    y = x;
                    continue;
                }
                let mut s_last = None;
                for _ in 0..d {
                    let (mu, s) = block.forward_with(&x, cs, &ws);
                    x = &y * s.exp() + mu;
                    s_last = Some(s);
                }
                if let Some(s) = s_last {
                    logdet -= s.sum_dim_intlist(1, false, Kind::Float);
                }
                y = x;
            }
            (y, logdet)
        })
    }

    /// Draws one event per row of `cs` through libtorch ops (libtorch's global
    /// RNG; seed it with `tch::manual_seed` for reproducible samples); the
    /// engine-aware way is [`super::engine::Engine::sample`].
    ///
    /// # Shapes
    /// `cs: [N, L]` → `[N, D]`
    pub fn sample(&self, cs: &Tensor) -> Tensor {
        self.sample_with_log_prob(cs).0
    }

    /// Like [`Maf::sample`], also returning `log p(x | c)` of each draw.
    pub fn sample_with_log_prob(&self, cs: &Tensor) -> (Tensor, Tensor) {
        let n = cs.size()[0];
        let u = Tensor::randn([n, self.cfg.features], (Kind::Float, self.device()));
        let (x, logdet) = self.inverse(&u, &cs.to_device(self.device()));
        let lp = base_log_prob(&u) + logdet;
        (x, lp)
    }

    /// Checks that a set of named tensors has exactly this flow's names and shapes.
    pub fn check_tensors(&self, named: &[(String, Vec<i64>)]) -> std::result::Result<(), String> {
        let vars = self.vs.variables();
        for (name, shape) in named {
            match vars.get(name) {
                None => return Err(format!("unexpected tensor '{name}' (not part of this architecture)")),
                Some(t) if t.size() != *shape => {
                    return Err(format!("tensor '{name}' has shape {shape:?}, architecture needs {:?}", t.size()))
                }
                Some(_) => {}
            }
        }
        if let Some(missing) = vars.keys().find(|k| !named.iter().any(|(n, _)| n == *k)) {
            return Err(format!("tensor '{missing}' is missing"));
        }
        Ok(())
    }

    /// Autoregressive degree of each input of block `k` (for tests and docs).
    pub fn input_degrees(&self, k: usize) -> Option<Vec<i64>> {
        self.orders.get(k).map(|o| input_degrees(o))
    }
}

/// `log N(u; 0, I)` per row.
pub fn base_log_prob(u: &Tensor) -> Tensor {
    let d = u.size()[1] as f64;
    (u * u).sum_dim_intlist(1, false, Kind::Float) * -0.5 - 0.5 * d * LOG_2PI
}
