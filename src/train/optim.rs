//! Adam (Kingma & Ba 2014, arXiv:1412.6980, Algorithm 1) with its moments
//! owned as named tensors, so they can be checkpointed and restored exactly
//! (tch's built-in optimiser cannot save its state).
//!
//! The step takes one flat gradient buffer (the same buffer the ranks
//! all-reduce), already summed over ranks; `scale` turns the summed per-event
//! gradients into a mean.

use crate::error::{Error, Result};
use std::collections::HashMap;
use tch::{nn::VarStore, Kind, Tensor};

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
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of steps taken.
    pub step: i64,
}

impl Adam {
    /// An optimiser for every trainable variable of `vs`.
    pub fn new(vs: &VarStore, cfg: AdamConfig) -> Self {
        let vars = vs.variables();
        let mut names: Vec<String> = vars.keys().cloned().collect();
        names.sort();
        let params: Vec<Tensor> = names.iter().map(|n| vars[n].shallow_clone()).collect();
        let numels = params.iter().map(|p| p.numel() as i64).collect();
        let m = params.iter().map(|p| p.zeros_like()).collect();
        let v = params.iter().map(|p| p.zeros_like()).collect();
        Adam { cfg, names, params, numels, m, v, step: 0 }
    }

    /// Total number of parameters (length of the flat gradient).
    pub fn numel(&self) -> i64 {
        self.numels.iter().sum()
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

    /// One Adam update with gradient `flat * scale` and learning rate `lr`.
    pub fn step_flat(&mut self, flat: &Tensor, scale: f64, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        tch::no_grad(|| {
            let mut offset = 0;
            for (i, p) in self.params.iter_mut().enumerate() {
                let n = self.numels[i];
                let g = flat.narrow(0, offset, n).view_as(p) * scale;
                offset += n;
                let m = &mut self.m[i];
                let _ = m.g_mul_scalar_(b1);
                let _ = m.g_add_(&(&g * (1.0 - b1)));
                let v = &mut self.v[i];
                let _ = v.g_mul_scalar_(b2);
                let _ = v.g_add_(&(g.square() * (1.0 - b2)));
                let denom = v.sqrt() / bc2_sqrt + self.cfg.eps;
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        });
    }

    /// The optimiser state as named tensors (`adam.m.<param>`, `adam.v.<param>`, `adam.step`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len() + 1);
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("adam.m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("adam.v.{n}"), self.v[i].shallow_clone()));
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
                for (kind, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                    let src = get(&format!("adam.{kind}.{n}"))?;
                    if src.size() != dst.size() {
                        return Err(Error::Train(format!("optimiser state 'adam.{kind}.{n}' has the wrong shape")));
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
