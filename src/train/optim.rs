//! Adam (Kingma & Ba 2014, arXiv:1412.6980, Algorithm 1) with its moments
//! owned as named tensors, so they can be checkpointed and restored exactly
//! (tch's built-in optimiser cannot save its state).
//!
//! The step takes one flat gradient buffer (the same buffer the ranks
//! all-reduce), already summed over ranks; `scale` turns the summed per-event
//! gradients into a mean.
//!
//! The parameters, the moments and the update all live in flat buffers: at
//! construction every variable's storage is moved into a view of one flat
//! parameter tensor (names, shapes and values unchanged), so a step is a
//! handful of ops on three tensors instead of a handful per variable.
//!
//! On the CPU the step is one pass of plain Rust over the three flat buffers
//! ([`Adam::step_host`]): no libtorch op, so no allocation and no OpenMP
//! region per step (an OpenMP region leaves libtorch's worker threads
//! spinning for a while, taking cores from the fast path's own threads).

use crate::error::{Error, Result};
use std::collections::HashMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
}

/// Adam over a fixed, name-sorted list of parameters.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    numels: Vec<i64>,
    /// All parameters, name-sorted and concatenated; the variables are views of it.
    flat: Tensor,
    /// First moment, flat.
    m: Tensor,
    /// Second moment, flat.
    v: Tensor,
    /// Number of steps taken.
    pub step: i64,
    /// Exponential moving average of the flat parameters and its decay, when enabled.
    ema: Option<(Tensor, f64)>,
}

/// The elements of a contiguous f32 CPU tensor of `n` elements as a mutable
/// slice, or `None` if it is not one.
///
/// # Safety
/// No other reference to the tensor's data may be used while the slice lives.
#[allow(clippy::mut_from_ref)] // the tensor's storage is not a Rust borrow; see # Safety
unsafe fn host_mut(t: &Tensor, n: usize) -> Option<&mut [f32]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float || !t.is_contiguous() || t.numel() != n {
        return None;
    }
    let ptr = t.data_ptr() as *mut f32;
    if ptr.is_null() {
        return (n == 0).then_some(&mut []);
    }
    // SAFETY: `ptr` points at `n` f32 of the tensor's storage (checked above);
    // exclusivity is the caller's promise.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

impl Adam {
    /// An optimiser for every trainable variable of `vs`. Moves the
    /// variables' storage into one flat buffer (their values are unchanged);
    /// build one optimiser per variable store: a later one takes the storage over.
    pub fn new(vs: &VarStore, cfg: AdamConfig) -> Self {
        let vars = vs.variables();
        let mut names: Vec<String> = vars.keys().cloned().collect();
        names.sort();
        let mut params: Vec<Tensor> = names.iter().map(|n| vars[n].shallow_clone()).collect();
        let numels: Vec<i64> = params.iter().map(|p| p.numel() as i64).collect();
        let total: i64 = numels.iter().sum();
        let flat = Tensor::zeros([total], (Kind::Float, vs.device()));
        tch::no_grad(|| {
            let mut offset = 0;
            for (p, &n) in params.iter_mut().zip(&numels) {
                let mut view = flat.narrow(0, offset, n).view_(p.size());
                view.copy_(p);
                p.set_data(&view);
                offset += n;
            }
        });
        let m = flat.zeros_like();
        let v = flat.zeros_like();
        Adam { cfg, names, params, numels, flat, m, v, step: 0, ema: None }
    }

    /// Keeps an exponential moving average of the weights, updated after every
    /// step with decay `min(decay, (1 + t) / (10 + t))` at step `t` (the usual
    /// warm-up, so early weights fade quickly). Starts from the current weights.
    pub fn enable_ema(&mut self, decay: f64) {
        self.ema = Some((self.flat.detach().copy(), decay));
    }

    /// Copies the averaged weights into the parameters (the variables see them),
    /// if an average is kept; returns whether it did. Training should not go on after this.
    pub fn swap_in_ema(&mut self) -> bool {
        match &self.ema {
            Some((e, _)) => {
                tch::no_grad(|| self.flat.copy_(e));
                true
            }
            None => false,
        }
    }

    /// Whether a weight average is kept.
    pub fn has_ema(&self) -> bool {
        self.ema.is_some()
    }

    /// A copy of the weights a finished run saves, flat: the average when one
    /// is kept, else the parameters (early stopping keeps the best epoch's).
    pub fn kept_weights(&self) -> Tensor {
        match &self.ema {
            Some((e, _)) => e.detach().copy(),
            None => self.flat.detach().copy(),
        }
    }

    /// Copies flat weights (from [`Adam::kept_weights`]) into the parameters
    /// (the variables see them). Training should not go on after this.
    pub fn set_weights(&mut self, flat: &Tensor) {
        tch::no_grad(|| self.flat.copy_(flat));
    }

    /// A flat buffer of [`Adam::numel`] elements as named tensors, by parameter name.
    pub fn named(&self, flat: &Tensor) -> HashMap<String, Tensor> {
        self.names.iter().enumerate().map(|(i, n)| (n.clone(), self.moment(flat, i))).collect()
    }

    /// The inverse of [`Adam::named`]; `what` names the source in errors.
    pub fn flat_from(&self, tensors: &HashMap<String, Tensor>, what: &str) -> Result<Tensor> {
        let flat = self.flat.detach().zeros_like();
        tch::no_grad(|| -> Result<()> {
            for (i, n) in self.names.iter().enumerate() {
                let src = tensors.get(n).ok_or_else(|| Error::Train(format!("{what} lacks '{n}'")))?;
                let mut dst = self.moment(&flat, i);
                if src.size() != dst.size() {
                    return Err(Error::Train(format!("{what}: '{n}' has the wrong shape")));
                }
                dst.copy_(src);
            }
            Ok(())
        })?;
        Ok(flat)
    }

    /// Total number of parameters (length of the flat gradient).
    pub fn numel(&self) -> i64 {
        self.numels.iter().sum()
    }

    /// The parameter names, sorted: the order of the flat buffers.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Elements of each parameter, in [`Adam::names`] order.
    pub fn numels(&self) -> &[i64] {
        &self.numels
    }

    /// The flat parameter tensor (every variable is a view of it).
    pub fn flat_params(&self) -> &Tensor {
        &self.flat
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Concatenates all gradients (zeros where undefined) into one flat f32 buffer.
    pub fn flat_grad(&self) -> Tensor {
        let parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    Tensor::zeros([p.numel() as i64], (Kind::Float, p.device()))
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// One Adam update with gradient `flat * scale` and learning rate `lr`
    /// (on the CPU through [`Adam::step_host`], so the same arithmetic).
    pub fn step_flat(&mut self, flat: &Tensor, scale: f64, lr: f64) {
        if self.flat.device() == Device::Cpu {
            let g = flat.to_kind(Kind::Float).contiguous();
            let n = g.numel();
            let mut host = vec![0f32; n];
            g.copy_data(&mut host, n);
            self.step_host(&host, scale, lr);
            return;
        }
        self.step_libtorch(flat, scale, lr);
    }

    /// One Adam update on the CPU from a host gradient `grad * scale` (length
    /// [`Adam::numel`]), in f32, element by element:
    /// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
    /// `p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)`.
    /// Plain IEEE operations (no fused multiply-add), so the same bits on
    /// any x86-64. On another device (or a length mismatch) it falls back to
    /// [`Adam::step_flat`] with a tensor of `grad`.
    pub fn step_host(&mut self, grad: &[f32], scale: f64, lr: f64) {
        let n = self.flat.numel();
        if self.flat.device() != Device::Cpu || grad.len() != n {
            let g = Tensor::from_slice(grad).to_device(self.flat.device());
            // A GPU step (or a wrong length, which panics in libtorch as before).
            self.step_libtorch(&g, scale, lr);
            return;
        }
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps, scale) = (b1 as f32, b2 as f32, self.cfg.eps as f32, scale as f32);
        let (c1, c2) = (1.0 - b1, 1.0 - b2);
        // SAFETY: `flat`, `m` and `v` are contiguous f32 CPU tensors of `n`
        // elements made in `new` (checked below), owned by `self` and not
        // otherwise borrowed during this call; the variables are views of
        // `flat` but nothing reads them while the slices live.
        let (p, m, v) = unsafe { (host_mut(&self.flat, n), host_mut(&self.m, n), host_mut(&self.v, n)) };
        let (Some(p), Some(m), Some(v)) = (p, m, v) else {
            let g = Tensor::from_slice(grad);
            self.step -= 1;
            self.step_libtorch(&g, f64::from(scale), lr);
            return;
        };
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(grad) {
            let g = g * scale;
            *m = *m * b1 + g * c1;
            *v = *v * b2 + (g * g) * c2;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p -= *m / denom * step_size;
        }
        tch::no_grad(|| self.update_ema());
    }

    /// Moves the weight average (if kept) towards the current weights.
    fn update_ema(&mut self) {
        if let Some((e, decay)) = &mut self.ema {
            let d = decay.min((1.0 + self.step as f64) / (10.0 + self.step as f64));
            let _ = e.g_mul_scalar_(d);
            let _ = e.g_add_(&(&self.flat * (1.0 - d)));
        }
    }

    fn step_libtorch(&mut self, flat: &Tensor, scale: f64, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            let g = flat * scale;
            let _ = self.m.g_mul_scalar_(b1);
            let _ = self.m.g_add_(&(&g * (1.0 - b1)));
            let _ = self.v.g_mul_scalar_(b2);
            let _ = self.v.g_add_(&(g.square() * (1.0 - b2)));
            let denom = self.v.sqrt() / bc2_sqrt + self.cfg.eps;
            let _ = self.flat.g_sub_(&(&self.m / denom * step_size));
            self.update_ema();
        });
    }

    fn moment(&self, t: &Tensor, i: usize) -> Tensor {
        let offset: i64 = self.numels[..i].iter().sum();
        t.narrow(0, offset, self.numels[i]).view_(self.params[i].size())
    }

    /// The optimiser state as named tensors (`adam.m.<param>`, `adam.v.<param>`, `adam.step`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len() + 1);
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("adam.m.{n}"), self.moment(&self.m, i)));
            out.push((format!("adam.v.{n}"), self.moment(&self.v, i)));
        }
        if let Some((e, _)) = &self.ema {
            for (i, n) in self.names.iter().enumerate() {
                out.push((format!("ema.{n}"), self.moment(e, i)));
            }
        }
        out.push(("adam.step".into(), Tensor::from_slice(&[self.step as f32])));
        out
    }

    /// Restores a state written by [`Adam::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| tensors.get(k).ok_or_else(|| Error::Train(format!("optimiser state lacks '{k}'")));
        let step = get("adam.step")?.double_value(&[0]);
        tch::no_grad(|| -> Result<()> {
            for (i, n) in self.names.iter().enumerate() {
                for (kind, mut dst) in [("m", self.moment(&self.m, i)), ("v", self.moment(&self.v, i))] {
                    let src = get(&format!("adam.{kind}.{n}"))?;
                    if src.size() != dst.size() {
                        return Err(Error::Train(format!("optimiser state 'adam.{kind}.{n}' has the wrong shape")));
                    }
                    dst.copy_(src);
                }
            }
            if let Some((e, _)) = &self.ema {
                for (i, n) in self.names.iter().enumerate() {
                    let mut dst = self.moment(e, i);
                    let src = get(&format!("ema.{n}")).map_err(|_| {
                        Error::Train(format!(
                            "optimiser state lacks the weight average 'ema.{n}' (training.ema_decay was 0 when it was written)"
                        ))
                    })?;
                    if src.size() != dst.size() {
                        return Err(Error::Train(format!("optimiser state 'ema.{n}' has the wrong shape")));
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step as i64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.var_copy("a", &Tensor::from_slice(&[1.0f32, -2.0]));
        let _ = root.var_copy("b", &Tensor::from_slice(&[0.5f32]));
        vs
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap_or_default()
    }

    /// The average follows `e ← d e + (1 − d) w` with the warm-up decay, is
    /// saved in the state, restored from it, and swapped into the weights.
    #[test]
    fn weight_average_follows_the_weights_and_round_trips() {
        let cfg = AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        let vs = store();
        let mut opt = Adam::new(&vs, cfg);
        opt.enable_ema(0.5);
        let mut expect: Vec<f64> = values(opt.flat_params()).iter().map(|&v| f64::from(v)).collect();
        let grads = Tensor::from_slice(&[0.3f32, -1.0, 2.0]);
        for t in 1..=5 {
            opt.step_flat(&grads, 1.0, 0.1);
            let d = 0.5f64.min((1.0 + t as f64) / (10.0 + t as f64));
            let w = values(opt.flat_params());
            for (e, &w) in expect.iter_mut().zip(&w) {
                *e = d * *e + (1.0 - d) * f64::from(w);
            }
        }
        let state = opt.state();
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"ema.a") && names.contains(&"ema.b"), "{names:?}");
        // A fresh optimiser restores the average from the state.
        let vs2 = store();
        let mut opt2 = Adam::new(&vs2, cfg);
        opt2.enable_ema(0.5);
        opt2.load_state(&state.into_iter().collect()).unwrap();
        assert!(opt2.swap_in_ema());
        let got = values(opt2.flat_params());
        for (g, e) in got.iter().zip(&expect) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "average {g} vs {e}");
        }
        // The variables see the swapped-in weights.
        let a = values(&vs2.variables()["a"]);
        assert_eq!(a, got[..2].to_vec());
        // A state without an average cannot feed an optimiser that keeps one.
        let plain = Adam::new(&store(), cfg).state().into_iter().collect();
        let mut opt3 = Adam::new(&store(), cfg);
        opt3.enable_ema(0.5);
        let e = opt3.load_state(&plain).unwrap_err().to_string();
        assert!(e.contains("ema.a"), "{e}");
        assert!(!Adam::new(&store(), cfg).swap_in_ema());
    }
}
