//! Which engine computes a flow, chosen in one place.
//!
//! Two engines compute the same flow. libtorch ([`Maf`]) is the reference:
//! any device, autograd, every block kind. The hand-written CPU engine
//! ([`cpu`]) writes the forward, backward and sampling passes out and
//! is several times faster on CPUs. [`Engine::select`] (evaluation and
//! sampling) and [`trainer`] (the training step) pick the CPU engine wherever
//! it applies and log which engine runs; where it declines a CPU flow the
//! reason is a warning, never silent, because it costs a factor of several.

pub mod cpu;

use crate::flow::maf::{base_log_prob, Maf};
use cpu::{FastMaf, FastTrainer};
use tch::{Device, Kind, Tensor};

/// The engine that evaluates and samples a flow without gradients.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The hand-written CPU passes.
    Cpu(FastMaf),
    /// libtorch ops, with the reason the CPU engine does not apply.
    Libtorch(String),
}

/// Logs the choice: debug for the CPU engine and for devices it does not
/// serve, a warning when it declines a CPU flow.
fn log_choice(what: &str, flow: &Maf, declined: Option<&str>) {
    match declined {
        None => {
            tracing::debug!("{what}: the hand-written CPU engine");
            static ONCE: std::sync::Once = std::sync::Once::new();
            if cfg!(target_arch = "x86_64") && !cpu::vector_kernels() {
                ONCE.call_once(|| {
                    tracing::warn!(
                        "this CPU lacks AVX2 and FMA: the CPU engine runs its portable kernels \
                         (the same results, several times slower)"
                    )
                });
            }
        }
        Some(why) if flow.device() == Device::Cpu => {
            tracing::warn!("{what}: libtorch, several times slower on a CPU than the CPU engine, which declined: {why}")
        }
        Some(why) => tracing::debug!("{what}: libtorch ({why})"),
    }
}

impl Engine {
    /// The CPU engine where it applies to `flow`, else libtorch; logs the choice.
    pub fn select(flow: &Maf) -> Engine {
        match FastMaf::new(flow) {
            Ok(f) => {
                log_choice("flow evaluation", flow, None);
                Engine::Cpu(f)
            }
            Err(why) => {
                log_choice("flow evaluation", flow, Some(&why));
                Engine::Libtorch(why)
            }
        }
    }

    /// Whether the hand-written CPU engine runs.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Engine::Cpu(_))
    }

    /// `log p(x | c)` per event, without gradients.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `[N]`
    pub fn log_prob(&self, flow: &Maf, xs: &Tensor, cs: &Tensor) -> Tensor {
        if let Engine::Cpu(f) = self {
            if let Some(lp) = f.log_prob(flow, xs, cs) {
                return lp;
            }
        }
        tch::no_grad(|| flow.log_prob(xs, cs))
    }

    /// Base → data: `x` and `log |det du/dx|` at that `x`, without gradients.
    ///
    /// # Shapes
    /// `us: [N, D]`, `cs: [N, L]` → `(x: [N, D], logdet: [N])`
    pub fn inverse(&self, flow: &Maf, us: &Tensor, cs: &Tensor) -> (Tensor, Tensor) {
        if let Engine::Cpu(f) = self {
            if let Some(r) = f.inverse(flow, us, cs) {
                return r;
            }
        }
        flow.inverse(us, cs)
    }

    /// Draws one event per row of `cs` (libtorch's global RNG for the base
    /// draws; seed it for reproducible samples), with `log p(x | c)` of each.
    ///
    /// # Shapes
    /// `cs: [N, L]` → `([N, D], [N])`
    pub fn sample_with_log_prob(&self, flow: &Maf, cs: &Tensor) -> (Tensor, Tensor) {
        let n = cs.size()[0];
        let u = Tensor::randn([n, flow.config().features], (Kind::Float, flow.device()));
        let (x, logdet) = self.inverse(flow, &u, &cs.to_device(flow.device()));
        let lp = base_log_prob(&u) + logdet;
        (x, lp)
    }

    /// Draws one event per row of `cs` (see [`Engine::sample_with_log_prob`]).
    pub fn sample(&self, flow: &Maf, cs: &Tensor) -> Tensor {
        self.sample_with_log_prob(flow, cs).0
    }
}

/// The CPU engine's training pass for `flow` with the optimiser's flat
/// parameter layout (`names`, `numels`), or `None` (train by libtorch
/// autograd); logs the choice.
pub fn trainer(flow: &Maf, names: &[String], numels: &[i64]) -> Option<FastTrainer> {
    match FastTrainer::new(flow, names, numels) {
        Ok(t) => {
            log_choice("training step", flow, None);
            Some(t)
        }
        Err(why) => {
            log_choice("training step", flow, Some(&why));
            None
        }
    }
}

/// Whether autograd records operations on this thread (tch has no query for
/// the grad mode: a product with a tensor that requires grad tells).
pub fn autograd_recording() -> bool {
    (Tensor::zeros([], (Kind::Float, Device::Cpu)).set_requires_grad(true) * 1.0).requires_grad()
}
