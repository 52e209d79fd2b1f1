//! One training step's arithmetic, shared by training and `fedhex bench`:
//! the batch's loss and gradient ([`GradientPass`]: the CPU engine's pass or
//! libtorch autograd), the one all-reduce per step, whose packet carries
//! `[gradients | loss | stop_now | stop_after_epoch | checkpoint]` (every rank
//! learns the global gradient, the global loss and whether anyone asked to
//! stop, and acts on the same step), then clipping and the Adam update.

use super::clip::GradClip;
use super::observe::Controls;
use super::optim::Adam;
use crate::comm::Communicator;
use crate::error::Result;
use crate::flow::engine::cpu::{to_host, FastTrainer, NEGATIVE_WEIGHT_NLL_CEIL};
use crate::flow::Maf;
use std::sync::atomic::Ordering;
use tch::{Device, Kind, Tensor};

/// This rank's summed loss and gradient of its part of a global batch.
pub enum Gradient {
    /// By the hand-written CPU pass: the gradient is already in the packet.
    Host {
        /// The summed loss.
        loss: f64,
    },
    /// By autograd, on the model's device.
    Device {
        /// The summed loss (a scalar tensor).
        loss: Tensor,
        /// The flat gradient.
        flat: Tensor,
    },
}

/// The requests every rank acts on after a step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags {
    /// Some rank was asked to stop now.
    pub stop_now: bool,
    /// Some rank was asked for a checkpoint.
    pub checkpoint: bool,
}

/// The all-reduce packet `[gradients | loss | stop_now | stop_after_epoch | checkpoint]`,
/// kept between steps (no allocation per step).
pub struct Packet {
    buf: Vec<f32>,
    n_params: usize,
}

/// Slots after the gradients: loss and three request flags.
const EXTRA: usize = 4;

impl Packet {
    /// An empty packet for `n_params` gradient entries.
    pub fn new(n_params: usize) -> Self {
        Packet { buf: Vec::new(), n_params }
    }

    /// The gradient part, for the CPU pass to write into.
    pub fn gradients_mut(&mut self) -> &mut [f32] {
        self.buf.resize(self.n_params + EXTRA, 0.0);
        &mut self.buf[..self.n_params]
    }

    /// The gradient part (summed over ranks after [`Packet::exchange`]).
    pub fn gradients(&self) -> &[f32] {
        &self.buf[..self.n_params.min(self.buf.len())]
    }

    /// Fills the packet with `grad`'s loss (and its gradient, when it is on
    /// the device) and this rank's requests, and sums it over the ranks.
    /// Returns the global loss and the requests; a stop at the epoch's end
    /// asked on any rank is recorded in `controls` on every rank.
    pub fn exchange(&mut self, comm: &dyn Communicator, grad: &Gradient, controls: &Controls) -> Result<(f64, Flags)> {
        let n = self.n_params;
        self.buf.resize(n + EXTRA, 0.0);
        self.buf[n] = match grad {
            Gradient::Host { loss } => *loss as f32,
            Gradient::Device { loss, flat } => {
                flat.to_device(Device::Cpu).copy_data(&mut self.buf[..n], n);
                loss.double_value(&[]) as f32
            }
        };
        self.buf[n + 1] = f32::from(u8::from(controls.stop_now.load(Ordering::Relaxed)));
        self.buf[n + 2] = f32::from(u8::from(controls.stop_after_epoch.load(Ordering::Relaxed)));
        self.buf[n + 3] = f32::from(u8::from(controls.checkpoint.swap(false, Ordering::Relaxed)));
        comm.allreduce_sum_f32(&mut self.buf)?;
        if self.buf[n + 2] > 0.0 {
            controls.stop_after_epoch.store(true, Ordering::Relaxed);
        }
        let flags = Flags { stop_now: self.buf[n + 1] > 0.0, checkpoint: self.buf[n + 3] > 0.0 };
        Ok((f64::from(self.buf[n]), flags))
    }
}

/// The requests of a single process (nothing to exchange).
pub fn local_flags(controls: &Controls) -> Flags {
    Flags {
        stop_now: controls.stop_now.load(Ordering::Relaxed),
        checkpoint: controls.checkpoint.swap(false, Ordering::Relaxed),
    }
}

fn sum_of_squares(g: &[f32]) -> f64 {
    g.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// Clips and applies the summed gradient of `global_count` events: from the
/// packet (after an all-reduce or the CPU pass) or from the device. The mean
/// gradient's norm is computed where clipping needs it or debug logging shows it.
#[allow(clippy::too_many_arguments)]
pub fn update(
    opt: &mut Adam,
    clip: &mut GradClip,
    packet: &Packet,
    device_grad: Option<&Tensor>,
    global_count: usize,
    lr: f64,
    global_step: u64,
) {
    let mean = 1.0 / global_count as f64;
    let need_norm = clip.active() || tracing::enabled!(tracing::Level::DEBUG);
    let sum_sq = match (need_norm, device_grad) {
        (false, _) => 0.0,
        (true, None) => sum_of_squares(packet.gradients()),
        (true, Some(flat)) => flat.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]),
    };
    let scale = mean * clip.factor(sum_sq.sqrt() * mean);
    if need_norm {
        tracing::debug!(step = global_step, grad_norm = sum_sq.sqrt() * mean, clipped = scale < mean, "gradient");
    }
    match device_grad {
        None => opt.step_host(packet.gradients(), scale, lr),
        Some(flat) => opt.step_flat(flat, scale, lr),
    }
}

/// How a batch's summed loss and gradient are computed: the CPU engine's
/// pass over host copies of the (whitened) events, or libtorch autograd,
/// chosen once by [`crate::flow::engine::trainer`].
pub enum GradientPass {
    /// The hand-written CPU pass, with the events `x` `[N, D]` and `c` `[N, L]` row-major on the host.
    Cpu {
        /// The pass.
        trainer: Box<FastTrainer>,
        /// The features, read in place (a CPU tensor) or copied to the host.
        x: HostBuf,
        /// The conditions, likewise.
        c: HostBuf,
        /// Host copy of the event weights (weighted events only).
        w: Option<Vec<f32>>,
    },
    /// libtorch autograd on the flow's device.
    Autograd {
        /// The event weights `[N]` (weighted events only).
        w: Option<Tensor>,
    },
}

impl GradientPass {
    /// The pass for `flow` trained by `opt` on the events `(x, c)`.
    pub fn new(flow: &Maf, opt: &Adam, x: &Tensor, c: &Tensor) -> Self {
        Self::weighted(flow, opt, x, c, None)
    }

    /// [`GradientPass::new`] for weighted events: the loss is `Σ wᵢ NLLᵢ` over
    /// the batch (`w` `[N]`, one weight per event of `x`); `None` is unweighted.
    pub fn weighted(flow: &Maf, opt: &Adam, x: &Tensor, c: &Tensor, w: Option<&Tensor>) -> Self {
        match crate::flow::engine::trainer(flow, opt.names(), opt.numels()) {
            Some(t) => {
                GradientPass::Cpu { trainer: Box::new(t), x: HostBuf::of(x), c: HostBuf::of(c), w: w.map(to_host) }
            }
            None => GradientPass::Autograd { w: w.map(Tensor::shallow_clone) },
        }
    }

    /// The summed NLL of the events `rows` of `(x, c)` and its gradient: by
    /// the CPU pass into the packet, plus `extra` flow samples `(z, c, w)`
    /// weighted in the NLL; or by autograd, plus `extra_term` (a scalar to add
    /// to the loss before the backward pass). `extra` and `extra_term` are
    /// the same acceptance terms for the two passes; only one is called.
    #[allow(clippy::too_many_arguments)]
    pub fn gradient(
        &mut self,
        flow: &Maf,
        opt: &mut Adam,
        (x, c): (&Tensor, &Tensor),
        rows: &[i64],
        packet: &mut Packet,
        extra: impl FnOnce() -> Option<(Tensor, Tensor, Tensor)>,
        extra_term: impl FnOnce(&mut Adam) -> Option<Tensor>,
    ) -> Gradient {
        match self {
            GradientPass::Cpu { trainer, x, c, w: hw } => {
                let (hx, hc) = (x.as_slice(), c.as_slice());
                let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
                let loss = match hw {
                    None => trainer.loss_and_grad(opt.flat_params(), hx, hc, rows, threads, packet.gradients_mut()),
                    Some(hw) => {
                        let wts: Vec<f32> = rows.iter().map(|&r| usize::try_from(r).map_or(0.0, |r| hw[r])).collect();
                        let grad = packet.gradients_mut();
                        trainer.loss_and_grad_weighted(opt.flat_params(), hx, hc, rows, &wts, threads, grad)
                    }
                };
                if let Some((z, cz, wk)) = extra() {
                    // + Σ wk log p(z) = Σ (-wk) NLL(z).
                    let (hz, hcz, hw) = (to_host(&z), to_host(&cz), to_host(&-wk));
                    trainer.add_weighted(opt.flat_params(), &hz, &hcz, &hw, threads, packet.gradients_mut());
                }
                Gradient::Host { loss }
            }
            GradientPass::Autograd { w } => {
                let idx = Tensor::from_slice(rows).to_device(flow.device());
                let (xb, cb) = (x.index_select(0, &idx), c.index_select(0, &idx));
                let norm = extra_term(opt);
                opt.zero_grad();
                let lp = flow.log_prob(&xb, &cb);
                let lp = match w {
                    Some(w) => {
                        // A negatively weighted event counts no lower than the floor (the CPU pass's rule).
                        let wb = w.index_select(0, &idx);
                        let d = xb.size()[1] as f64;
                        let floor = -(NEGATIVE_WEIGHT_NLL_CEIL + 0.5 * d * (2.0 * std::f64::consts::PI).ln());
                        lp.where_self(&wb.ge(0.0), &lp.clamp_min(floor)) * wb
                    }
                    None => lp,
                };
                let loss = lp.sum(Kind::Float).neg();
                match norm {
                    Some(norm) => (&loss + norm).backward(),
                    None => loss.backward(),
                }
                Gradient::Device { loss, flat: opt.flat_grad() }
            }
        }
    }
}

/// Row-major `f32` data the CPU pass reads: a contiguous float CPU tensor in
/// place (no second copy of the training events), or a host copy of any other.
pub enum HostBuf {
    /// The tensor itself (kept alive here; its storage is read, never written).
    InPlace(Tensor),
    /// A host copy.
    Copied(Vec<f32>),
}

impl HostBuf {
    /// `t` in place when it is a contiguous float tensor on the CPU, else a copy.
    pub fn of(t: &Tensor) -> Self {
        if t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() {
            HostBuf::InPlace(t.shallow_clone())
        } else {
            HostBuf::Copied(to_host(t))
        }
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        match self {
            HostBuf::InPlace(t) => {
                let n = t.numel();
                if n == 0 {
                    return &[];
                }
                // SAFETY: `t` is a contiguous float32 CPU tensor (checked in `of`)
                // holding `n` elements; this enum owns a handle to it, so its
                // storage outlives the slice, and nothing writes to it (the
                // training events are never modified in place).
                unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
            }
            HostBuf::Copied(v) => v,
        }
    }
}
