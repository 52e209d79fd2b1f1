//! A hand-written forward and backward pass of the MAF on the CPU, without
//! autograd and without libtorch dispatch.
//!
//! The reference network is tiny (about 60 kFLOP per training event), so the
//! autograd path spends most of its time dispatching a few hundred small ops
//! per step. Here every event runs through the whole stack in plain Rust,
//! with all intermediate values in a few KiB of scratch: forward (storing the
//! layer inputs and pre-activations), then backward, accumulating the
//! gradients of the combined weights.
//!
//! Each layer uses one *combined* weight matrix: the masked weight and the
//! label weight side by side, acting on `[previous layer, labels]`. The mask is
//! applied once per step when the effective weights are built, and once to
//! the gradient when it is mapped back to the parameters.
//!
//! Determinism: events are processed in fixed chunks of [`CHUNK`] events, each
//! chunk accumulating into its own buffer, and the chunk buffers are summed in
//! chunk order. The result is therefore bit-identical for any number of
//! threads and on any x86-64 CPU: the layer kernels' products and sums are
//! fused multiply-adds, one rounding each, in the AVX2 + FMA path and in the
//! portable one (`f32::mul_add`, correctly rounded with or without the
//! hardware instruction), in a fixed summation order.
//!
//! Masks: the hidden units of every MADE layer are kept sorted by degree (the
//! parameters keep their order; `Plan` maps between the two), so the
//! nonzero weights of each unit form a prefix or a suffix. Every kernel skips
//! the masked zeros (about half of a MADE's weights); skipping them only
//! leaves out additions of exact zeros, so the bits are those of the dense
//! product in the sorted order.
//!
//! Affine blocks with fixed orders (the reference network) run through the
//! tiled kernels here; spline blocks and learned LU mixing through [`ext`],
//! which reuses them for the MADE layers.
//!
//! The autograd path ([`crate::flow::Maf::log_prob`] with gradients) stays the
//! reference; `tests/fast_grad.rs` checks this pass against it.

use crate::flow::made::Activation;
use crate::flow::maf::{Maf, Permutation, Transform};
#[cfg(target_arch = "x86_64")]
use crate::flow::vmath::wide_kernels;
use crate::flow::vmath::{exp_in_place, tanh_in_place};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

mod spline_lu;

/// Events per chunk (the unit of work and of gradient accumulation).
pub const CHUNK: usize = 256;

/// Events per tile: a chunk runs block by block over a tile of events, so the
/// `tanh` and `exp` of the block outputs are computed eight lanes at a time.
const TILE: usize = 8;

use crate::flow::LOG_2PI;

/// One layer: `out = b + A [input, labels]`.
#[derive(Debug, Clone)]
struct Layer {
    /// Width of the previous layer (or `D` for the first layer).
    n_in: usize,
    /// Whether the labels are appended to the input.
    cond: bool,
    /// Combined input width: `n_in` (+ `L`).
    k_in: usize,
    /// Output width.
    n_out: usize,
    /// `A` stored `[k_in][n_out]` (true) or `[n_out][k_in]` (false): the
    /// contiguous dimension is the longer one.
    in_major: bool,
    /// Offset of `A` in the weight buffer (its bias follows it).
    off: usize,
    /// `mask[j * n_in + i]` of the masked part, `[n_out][n_in]`.
    mask: Vec<f32>,
    /// Whether output `j` reads any input: false for a row that the mask
    /// zeroes entirely and without labels (the first feature's outputs of a
    /// MADE), whose value is its bias. Output-major layers skip those rows.
    live: Vec<bool>,
    /// Parameter row of output `j`: hidden units are kept sorted by their
    /// MADE degree (a stable sort), so each unit's nonzero weights form a
    /// prefix or suffix and the kernels below skip the masked rest; the
    /// output layer keeps the parameter order.
    rows: Vec<usize>,
    /// Parameter column of masked input `i` (the previous layer's `rows`).
    cols: Vec<usize>,
    /// Output-major: row `j` reads the combined inputs `..span[j]` (the
    /// 8-aligned end of its nonzero weights, or `k_in`); the masked zeros
    /// beyond add nothing, so a dot over the span has the full dot's bits.
    span: Vec<usize>,
    /// Input-major: per block of 8 outputs (the last one partial), the
    /// combined inputs with a nonzero weight in the block, in order.
    blk_rows: Vec<Vec<usize>>,
    /// Input-major: per combined input, the 8-aligned output range of its
    /// nonzero weights (`n_out` for the end if it reaches the last, partial block).
    row_cols: Vec<(usize, usize)>,
    /// Output-major: per block of 8 masked inputs, the live rows with a
    /// nonzero weight in the block, in order (the backward's dL/d(inputs)).
    dz_rows: Vec<Vec<usize>>,
    /// `blk_rows` and `dz_rows` per pair of full blocks for the 512-bit
    /// kernels ([`pairs16`]).
    blk_rows16: Vec<Vec<(usize, u16)>>,
    dz_rows16: Vec<Vec<(usize, u16)>>,
    /// Output-major: the live rows grouped by equal span, in order within a
    /// group (the tiled forward runs several rows of a group at once), the
    /// groups by increasing span.
    span_groups: Vec<Vec<usize>>,
    /// The rows that are not live (their value is their bias).
    dead: Vec<usize>,
    /// Offset of the layer's input in an event record.
    rin: usize,
    /// Offset of the layer's pre-activation in an event record (hidden layers).
    rpre: usize,
    /// Parameter names: weight, bias, cond (if any).
    names: (String, String, Option<String>),
}

/// `e` rounded up to a multiple of 8, or `n` if that passes the last full block of `n`.
fn up8(e: usize, n: usize) -> usize {
    let e8 = e.div_ceil(8) * 8;
    if e8 > n / 8 * 8 {
        n
    } else {
        e8
    }
}

/// Per pair of full blocks of 8 (`2q`, `2q + 1`) of `0..n`, the rows listed
/// for either in `blocks`, in order, each with the 16-lane mask of the blocks
/// that list it: a masked multiply-add over the pair does, lane by lane, the
/// operations of the two blocks' lists in their order.
fn pairs16(blocks: &[Vec<usize>], n: usize) -> Vec<Vec<(usize, u16)>> {
    (0..n / 16)
        .map(|q| {
            let (lo, hi) = (&blocks[2 * q], &blocks[2 * q + 1]);
            let mut rows: Vec<usize> = lo.iter().chain(hi).copied().collect();
            rows.sort_unstable();
            rows.dedup();
            let mask =
                |k: usize| (if lo.contains(&k) { 0x00ff } else { 0 }) | (if hi.contains(&k) { 0xff00 } else { 0 });
            rows.into_iter().map(|k| (k, mask(k))).collect()
        })
        .collect()
}

/// The blocks of 8 of `0..n`, the last one partial.
fn blocks8(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n.div_ceil(8)).map(move |b| 8 * b..(8 * b + 8).min(n))
}

impl Layer {
    /// A layer with its (internal-order) `mask`; derives which weights the kernels read.
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_in: usize,
        l: usize,
        cond: bool,
        n_out: usize,
        in_major: bool,
        mask: Vec<f32>,
        rows: Vec<usize>,
        cols: Vec<usize>,
        names: (String, String, Option<String>),
    ) -> Layer {
        let k_in = n_in + if cond { l } else { 0 };
        let nz = |j: usize, k: usize| k >= n_in || mask[j * n_in + k] != 0.0;
        let live: Vec<bool> = (0..n_out).map(|j| cond || (0..n_in).any(|k| nz(j, k))).collect();
        let span: Vec<usize> =
            (0..n_out).map(|j| (0..k_in).rev().find(|&k| nz(j, k)).map_or(0, |k| up8(k + 1, k_in))).collect();
        let blk_rows: Vec<Vec<usize>> =
            blocks8(n_out).map(|cb| (0..k_in).filter(|&k| cb.clone().any(|j| nz(j, k))).collect()).collect();
        let row_cols = (0..k_in)
            .map(|k| match ((0..n_out).find(|&j| nz(j, k)), (0..n_out).rev().find(|&j| nz(j, k))) {
                (Some(f), Some(e)) => (f / 8 * 8, up8(e + 1, n_out)),
                _ => (0, 0),
            })
            .collect();
        let dz_rows: Vec<Vec<usize>> =
            blocks8(n_in).map(|cb| (0..n_out).filter(|&j| live[j] && cb.clone().any(|k| nz(j, k))).collect()).collect();
        let mut by_span: Vec<usize> = (0..n_out).filter(|&j| live[j]).collect();
        by_span.sort_by_key(|&j| span[j]);
        let span_groups = by_span.chunk_by(|&i, &j| span[i] == span[j]).map(<[usize]>::to_vec).collect();
        let dead = (0..n_out).filter(|&j| !live[j]).collect();
        let (blk_rows16, dz_rows16) = (pairs16(&blk_rows, n_out), pairs16(&dz_rows, n_in));
        Layer {
            n_in,
            cond,
            k_in,
            n_out,
            in_major,
            off: 0,
            mask,
            live,
            rows,
            cols,
            span,
            blk_rows,
            row_cols,
            dz_rows,
            blk_rows16,
            dz_rows16,
            span_groups,
            dead,
            rin: 0,
            rpre: 0,
            names,
        }
    }

    fn a_len(&self) -> usize {
        self.k_in * self.n_out
    }
    fn len(&self) -> usize {
        self.a_len() + self.n_out
    }
    /// Index of `A[j][k]` (output `j`, combined input `k`) in the layer's storage.
    fn idx(&self, j: usize, k: usize) -> usize {
        if self.in_major {
            k * self.n_out + j
        } else {
            j * self.k_in + k
        }
    }
}

/// The structure of a MAF for the fast path: layer shapes, masks, offsets.
#[derive(Debug, Clone)]
struct Plan {
    d: usize,
    l: usize,
    act: Activation,
    bound: f32,
    /// Layers of each block, hidden layers first, output layer last.
    blocks: Vec<Vec<Layer>>,
    /// Length of the combined weight (and gradient) buffer.
    len: usize,
    /// Scratch floats per event per block.
    rec: usize,
    /// Offset of the per-feature values (t, s, e, mu, output) in a record.
    tail: usize,
    /// The inversion schedule of each block (see [`Pass`]).
    passes: Vec<Vec<Pass>>,
    /// Spline blocks or learned mixing: the path of [`ext`] (the
    /// tiled paths here are for affine blocks with fixed orders).
    ext: Option<spline_lu::Ext>,
}

/// One pass of the inversion of a block: the features whose inputs (through
/// the masks) are all exact after the earlier passes, and which hidden layers
/// feed any of them at all. Only those outputs and layers are computed; a
/// skipped hidden layer's activations are zeros, which only meet masked-out
/// (zero) weights of the outputs computed.
#[derive(Debug, Clone)]
struct Pass {
    feats: Vec<usize>,
    hidden: Vec<bool>,
}

/// The inversion schedule of one block from its masks.
fn schedule(layers: &[Layer], d: usize) -> Option<Vec<Pass>> {
    let nl = layers.len();
    let out = &layers[nl - 1];
    // Outputs per feature: row `q * D + j` is parameter q of feature j.
    let np = out.n_out / d.max(1);
    // deps[j]: the inputs feature j depends on; need[j][li]: whether hidden layer li feeds it.
    let mut deps = Vec::with_capacity(d);
    let mut need = Vec::with_capacity(d);
    for j in 0..d {
        let mut set: Vec<bool> =
            (0..out.n_in).map(|i| (0..np).any(|q| out.mask[(q * d + j) * out.n_in + i] != 0.0)).collect();
        let mut nj = vec![false; nl - 1];
        for li in (0..nl - 1).rev() {
            let y = &layers[li];
            nj[li] = set.iter().any(|&b| b);
            let mut prev = vec![false; y.n_in];
            for (u, _) in set.iter().enumerate().filter(|(_, &b)| b) {
                for (i, pv) in prev.iter_mut().enumerate() {
                    *pv |= y.mask[u * y.n_in + i] != 0.0;
                }
            }
            set = prev;
        }
        if set.len() != d {
            return None;
        }
        deps.push(set);
        need.push(nj);
    }
    let mut done = vec![false; d];
    let mut passes = Vec::new();
    while done.iter().any(|&b| !b) {
        let feats: Vec<usize> = (0..d).filter(|&j| !done[j] && (0..d).all(|i| !deps[j][i] || done[i])).collect();
        if feats.is_empty() {
            return None;
        }
        let hidden = (0..nl - 1).map(|li| feats.iter().any(|&j| need[j][li])).collect();
        feats.iter().for_each(|&j| done[j] = true);
        passes.push(Pass { feats, hidden });
    }
    Some(passes)
}

/// The values of `t` as a row-major host `Vec<f32>`.
pub fn to_host(t: &Tensor) -> Vec<f32> {
    host(t)
}

fn host(t: &Tensor) -> Vec<f32> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

impl Plan {
    fn new(flow: &Maf) -> Result<Plan, String> {
        let cfg = flow.config();
        if flow.device() != Device::Cpu {
            return Err(format!("the flow is on {:?}, the CPU engine runs on the CPU only", flow.device()));
        }
        if cfg.activation == Activation::Gelu {
            return Err("the CPU engine has no GELU activation".into());
        }
        let dim = |v: i64, what: &str| usize::try_from(v).map_err(|_| format!("{what} {v} is negative"));
        let d = dim(cfg.features, "feature count")?;
        let l = dim(cfg.context, "label count")?;
        let params = dim(cfg.params_per_feature(), "parameters per feature")?;
        let mut len = 0;
        let mut blocks = Vec::with_capacity(flow.blocks().len());
        for (k, block) in flow.blocks().iter().enumerate() {
            let mut layers = Vec::new();
            let parts = block.parts();
            let n_layers = parts.len();
            // The previous layer's internal order of its outputs (this layer's masked inputs).
            let mut prev_rows: Option<Vec<usize>> = None;
            for (li, p) in parts.iter().enumerate() {
                let size = p.weight.size();
                let (n_out, n_in) = (dim(size[0], "layer rows")?, dim(size[1], "layer columns")?);
                if li + 1 == n_layers && n_out != params * d {
                    return Err(format!("block {k}: the output layer has {n_out} rows, expected {}", params * d));
                }
                let cond = p.cond.is_some();
                let k_in = n_in + if cond { l } else { 0 };
                let last = li + 1 == n_layers;
                let prefix = if last { format!("made{k}.out") } else { format!("made{k}.hidden{li}") };
                let mask_p = host(p.mask);
                let cols = prev_rows.take().unwrap_or_else(|| (0..n_in).collect());
                if cols.len() != n_in {
                    return Err(format!(
                        "block {k}: layer {li} reads {n_in} inputs, the layer before has {}",
                        cols.len()
                    ));
                }
                // Hidden units sorted by how many inputs they read, which orders
                // them by MADE degree; the output layer in parameter order.
                let mut rows: Vec<usize> = (0..n_out).collect();
                if !last {
                    rows.sort_by_key(|&j| cols.iter().filter(|&&i| mask_p[j * n_in + i] != 0.0).count());
                }
                let mask =
                    rows.iter().flat_map(|&j| cols.iter().map(|&i| mask_p[j * n_in + i]).collect::<Vec<_>>()).collect();
                let names =
                    (format!("{prefix}.weight"), format!("{prefix}.bias"), cond.then(|| format!("{prefix}.cond")));
                // Input-major when the outputs are the longer side, except the
                // MADE's output layer: its rows read a prefix of the sorted
                // hidden units, which an output-major dot skips to.
                let in_major = n_out >= k_in && !last;
                let mut layer = Layer::new(n_in, l, cond, n_out, in_major, mask, rows.clone(), cols, names);
                prev_rows = Some(rows);
                layer.off = len;
                len += layer.len();
                layers.push(layer);
            }
            blocks.push(layers);
        }
        // Record offsets: every layer's input, then every hidden pre-activation, then 5 D values.
        let mut tail = 0;
        for layers in &mut blocks {
            let mut acc = 0;
            for y in layers.iter_mut() {
                y.rin = acc;
                acc += y.k_in;
            }
            let n = layers.len();
            for y in layers[..n - 1].iter_mut() {
                y.rpre = acc;
                acc += y.n_out;
            }
            tail = acc;
        }
        let passes = blocks
            .iter()
            .map(|b| schedule(b, d))
            .collect::<Option<Vec<_>>>()
            .ok_or("a block's masks admit no autoregressive order of passes")?;
        let plain = cfg.transform == Transform::Affine && flow.mixings().is_empty();
        if cfg.permutation == Permutation::Lu && flow.mixings().len() + 1 != blocks.len() {
            return Err(format!("{} learned mixings for {} blocks", flow.mixings().len(), blocks.len()));
        }
        let (ext, rec) = if plain {
            (None, tail + 5 * d)
        } else {
            let mut mixes = Vec::new();
            for k in 0..flow.mixings().len() {
                let names = ["lower", "upper", "log_diag", "bias"].map(|n| format!("mix{k}.{n}"));
                mixes.push(spline_lu::Mix { off: len, names });
                len += spline_lu::mix_len(d);
            }
            let spline = cfg.spline().map(|s| (usize::try_from(s.bins).unwrap_or(0), s.bound as f32));
            let (x, rec) = spline_lu::Ext::new(d, tail, params, cfg.affine_params() > 0, spline, mixes)
                .ok_or("the spline or mixing layout does not fit the CPU engine")?;
            (Some(x), rec)
        };
        Ok(Plan { d, l, act: cfg.activation, bound: cfg.log_scale_bound as f32, blocks, len, rec, tail, passes, ext })
    }

    /// Effective combined weights from the parameters (`get(name)` → values).
    fn weights(&self, get: Getter<'_>) -> Option<Vec<f32>> {
        let mut w = vec![0f32; self.len];
        self.weights_into(get, &mut w)?;
        Some(w)
    }

    /// [`Plan::weights`] into `w` (`len` floats), which it overwrites entirely.
    fn weights_into(&self, get: Getter<'_>, w: &mut [f32]) -> Option<()> {
        let w = w.get_mut(..self.len)?;
        for y in self.blocks.iter().flatten() {
            let ws = get(&y.names.0)?;
            let bs = get(&y.names.1)?;
            let cs = match &y.names.2 {
                Some(n) => Some(get(n)?),
                None => None,
            };
            let dst = &mut w[y.off..y.off + y.len()];
            for (j, &pj) in y.rows.iter().enumerate() {
                for (i, &pi) in y.cols.iter().enumerate() {
                    dst[y.idx(j, i)] = ws[pj * y.n_in + pi] * y.mask[j * y.n_in + i];
                }
                if let Some(cs) = &cs {
                    for q in 0..self.l {
                        dst[y.idx(j, y.n_in + q)] = cs[pj * self.l + q];
                    }
                }
                dst[y.a_len() + j] = bs[pj];
            }
        }
        if let Some(x) = &self.ext {
            x.mix_weights(self.d, get, w)?;
        }
        Some(())
    }
}

/// A parameter's values by name: borrowed from the optimiser's flat copy
/// while training, owned when copied out of a flow's tensors.
type Getter<'a> = &'a dyn Fn(&str) -> Option<std::borrow::Cow<'a, [f32]>>;

#[inline(always)]
fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for q in 0..8 {
            acc[q] = x[q].mul_add(y[q], acc[q]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    // Halves, then halves again: the usual horizontal reduction of a vector register.
    let h = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    let q = [h[0] + h[2], h[1] + h[3]];
    (q[0] + q[1]) + tail
}

/// [`dot_scalar`] with AVX2 intrinsics: the same operations in the same
/// order (8 lanes, multiply then add, halves reduction), so the same bits.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let m = n / 8 * 8;
    // SAFETY: all loads are within a[..m] and b[..m].
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < m {
        let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i)) };
        let y = unsafe { _mm256_loadu_ps(b.as_ptr().add(i)) };
        acc = _mm256_fmadd_ps(x, y, acc);
        i += 8;
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let r = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    let mut tail = 0f32;
    for (x, y) in a[m..n].iter().zip(&b[m..n]) {
        tail = x.mul_add(*y, tail);
    }
    _mm_cvtss_f32(r) + tail
}

#[inline(always)]
fn dot<const AVX: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2.
        return unsafe { dot_avx2(a, b) };
    }
    dot_scalar(a, b)
}

/// `y += a * x`
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

/// `h = act(pre)` elementwise (the match is outside the loops, so each
/// branch vectorises; `tanh` and `exp` are [`crate::flow::vmath`]'s).
#[inline(always)]
fn activate<const AVX: bool>(act: Activation, pre: &[f32], h: &mut [f32]) {
    let h = &mut h[..pre.len()];
    let it = h.iter_mut().zip(pre);
    match act {
        // NaN propagates, like torch's relu.
        Activation::Relu => it.for_each(|(h, &p)| *h = if p < 0.0 { 0.0 } else { p }),
        Activation::Tanh => {
            h.copy_from_slice(pre);
            tanh_in_place::<AVX>(h);
        }
        Activation::Elu => it.for_each(|(h, &p)| *h = if p > 0.0 { p } else { p.exp_m1() }),
        Activation::Silu => {
            it.for_each(|(h, &p)| *h = -p);
            exp_in_place::<AVX>(h);
            h.iter_mut().zip(pre).for_each(|(h, &p)| *h = p / (1.0 + *h));
        }
        // Not reached: plans are not built for GELU.
        Activation::Gelu => it.for_each(|(h, &p)| *h = p),
    }
}

/// `dpre = dh * act'(pre)` elementwise, given the output `h = act(pre)`.
#[inline(always)]
fn activate_backward<const AVX: bool>(act: Activation, pre: &[f32], h: &[f32], dh: &[f32], dpre: &mut [f32]) {
    if act == Activation::Silu {
        let dpre = &mut dpre[..pre.len()];
        dpre.iter_mut().zip(pre).for_each(|(o, &p)| *o = -p);
        exp_in_place::<AVX>(dpre);
        dpre.iter_mut().zip(dh).zip(pre).for_each(|((o, &g), &p)| {
            let sg = 1.0 / (1.0 + *o);
            *o = g * (sg * (1.0 + p * (1.0 - sg)));
        });
        return;
    }
    let it = dpre.iter_mut().zip(dh).zip(pre.iter().zip(h));
    match act {
        Activation::Relu => it.for_each(|((o, &g), (&p, _))| *o = if p > 0.0 { g } else { 0.0 }),
        Activation::Tanh => it.for_each(|((o, &g), (_, &h))| *o = g * (1.0 - h * h)),
        Activation::Elu => it.for_each(|((o, &g), (&p, &h))| *o = if p > 0.0 { g } else { g * (h + 1.0) }),
        Activation::Silu | Activation::Gelu => it.for_each(|((o, &g), _)| *o = g),
    }
}

/// `out = b + A z` for one layer (`w`: the layer's weights then bias).
#[inline(always)]
fn layer_forward<const AVX: bool>(y: &Layer, w: &[f32], z: &[f32], out: &mut [f32]) {
    let (a, b) = w.split_at(y.a_len());
    out.copy_from_slice(b);
    if y.in_major {
        // Blocks of 8 outputs held in registers over all inputs; the same
        // additions in the same order as one axpy per input.
        // (Only the inputs with a nonzero weight in the block: the others add zeros.)
        let n8 = y.n_out / 8 * 8;
        for jb in (0..n8).step_by(8) {
            let mut acc = [0f32; 8];
            acc.copy_from_slice(&out[jb..jb + 8]);
            for &k in &y.blk_rows[jb / 8] {
                let (zk, ak) = (z[k], &a[k * y.n_out + jb..k * y.n_out + jb + 8]);
                for q in 0..8 {
                    acc[q] = zk.mul_add(ak[q], acc[q]);
                }
            }
            out[jb..jb + 8].copy_from_slice(&acc);
        }
        if n8 < y.n_out {
            for &k in &y.blk_rows[n8 / 8] {
                axpy(&mut out[n8..], z[k], &a[k * y.n_out + n8..(k + 1) * y.n_out]);
            }
        }
    } else {
        for (j, o) in out.iter_mut().enumerate().filter(|(j, _)| y.live[*j]) {
            let n = y.span[j];
            *o += dot::<AVX>(&a[j * y.k_in..j * y.k_in + n], &z[..n]);
        }
    }
}

/// Backward of one layer: accumulates `dA += dy z^T`, `db += dy` into `g` and,
/// when `dz` is given, writes `dz = A^T dy` restricted to the first `n_in` inputs.
#[inline(always)]
fn layer_backward<const AVX: bool>(y: &Layer, w: &[f32], g: &mut [f32], z: &[f32], dy: &[f32], dz: Option<&mut [f32]>) {
    let a = &w[..y.a_len()];
    let (ga, gb) = g.split_at_mut(y.a_len());
    for (gbj, dyj) in gb.iter_mut().zip(dy) {
        *gbj += dyj;
    }
    // Masked weights are zero and their gradients are masked out when
    // scattered: only the nonzero ranges are visited.
    if y.in_major {
        for (k, &zk) in z.iter().enumerate() {
            let (lo, hi) = y.row_cols[k];
            axpy(&mut ga[k * y.n_out + lo..k * y.n_out + hi], zk, &dy[lo..hi]);
        }
        if let Some(dz) = dz {
            for (i, dzi) in dz.iter_mut().enumerate().take(y.n_in) {
                let (lo, hi) = y.row_cols[i];
                *dzi = dot::<AVX>(&a[i * y.n_out + lo..i * y.n_out + hi], &dy[lo..hi]);
            }
        }
    } else {
        // A dead row's weight gradient is masked out when scattered, and its
        // weights are zero: it adds nothing anywhere.
        for (j, &dyj) in dy.iter().enumerate().filter(|(j, _)| y.live[*j]) {
            let n = y.span[j];
            axpy(&mut ga[j * y.k_in..j * y.k_in + n], dyj, &z[..n]);
        }
        if let Some(dz) = dz {
            dz.iter_mut().for_each(|v| *v = 0.0);
            for (j, &dyj) in dy.iter().enumerate().filter(|(j, _)| y.live[*j]) {
                let n = y.span[j].min(y.n_in);
                axpy(&mut dz[..n], dyj, &a[j * y.k_in..j * y.k_in + n]);
            }
        }
    }
}

/// Runs block `layers` forward on `u` (length D) with labels `c` up to its
/// raw outputs, recording into `rec` (layout: every layer's input, every
/// hidden pre-activation, then `t`, `s`, `exp(-s)`, `mu` and the block
/// output, D each). Writes `mu` and `raw / B` (in the `t` slot); the rest of
/// the tail is filled for a whole tile by [`finish_tile`].
#[inline(always)]
fn block_raw<const AVX: bool>(p: &Plan, layers: &[Layer], w: &[f32], u: &[f32], c: &[f32], rec: &mut [f32]) {
    let d = p.d;
    let nl = layers.len();
    rec[..d].copy_from_slice(u);
    if layers[0].cond {
        rec[d..d + p.l].copy_from_slice(c);
    }
    for (li, y) in layers.iter().enumerate() {
        let lw = &w[y.off..y.off + y.len()];
        let (head, rest) = rec.split_at_mut(y.rin + y.k_in);
        let z = &head[y.rin..];
        if li + 1 < nl {
            // Hidden layer: pre-activation into its slot, activation into the next layer's input.
            let nxt = &layers[li + 1];
            let base = y.rin + y.k_in; // == nxt.rin
            let (next_in, pres) = rest.split_at_mut(y.rpre - base);
            let pre = &mut pres[..y.n_out];
            layer_forward::<AVX>(y, lw, z, pre);
            activate::<AVX>(p.act, pre, &mut next_in[..y.n_out]);
            if nxt.cond {
                next_in[y.n_out..y.n_out + p.l].copy_from_slice(c);
            }
        } else {
            let mut o = [0f32; 64];
            let mut big;
            let out: &mut [f32] = if 2 * d <= 64 {
                &mut o[..2 * d]
            } else {
                big = vec![0f32; 2 * d];
                &mut big
            };
            layer_forward::<AVX>(y, lw, z, out);
            let tail = &mut rest[p.tail - y.rin - y.k_in..];
            for j in 0..d {
                tail[j] = out[d + j] / p.bound;
                tail[3 * d + j] = out[j];
            }
        }
    }
}

/// The log-scales of a tile: `tb` holds `raw / B` on entry and
/// `t = tanh(raw / B)` on exit, `sb` receives `s = B t` and `eb` `exp(-s)`.
#[inline(always)]
fn finish_tile<const AVX: bool>(bound: f32, tb: &mut [f32], sb: &mut [f32], eb: &mut [f32]) {
    tanh_in_place::<AVX>(tb);
    for ((t, s), e) in tb.iter().zip(sb.iter_mut()).zip(eb.iter_mut()) {
        *s = t * bound;
        *e = -*s;
    }
    exp_in_place::<AVX>(eb);
}

/// Backward of one block: `g` holds dL/d(block output) on entry and
/// dL/d(block input) on exit; `wt` is the event's weight in the loss (the
/// coefficient of its `-log|det|` term). `dscratch` holds two buffers of the
/// widest layer.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block_backward<const AVX: bool>(
    p: &Plan,
    layers: &[Layer],
    w: &[f32],
    grad: &mut [f32],
    rec: &[f32],
    g: &mut [f32],
    dscratch: &mut [f32],
    wt: f32,
) {
    let d = p.d;
    let nl = layers.len();
    let t = &rec[p.tail..p.tail + d];
    let e = &rec[p.tail + 2 * d..p.tail + 3 * d];
    let uo = &rec[p.tail + 4 * d..p.tail + 5 * d];
    let maxw = dscratch.len() / 2;
    let (dy_buf, dz_buf) = dscratch.split_at_mut(maxw);
    // dL/d(raw output) = [dmu, draw]; g becomes the direct part of dL/du.
    for j in 0..d {
        let ds = wt - g[j] * uo[j];
        dy_buf[j] = -g[j] * e[j];
        dy_buf[d + j] = ds * (1.0 - t[j] * t[j]);
        g[j] *= e[j];
    }
    let mut dy_len = 2 * d;
    for li in (0..nl).rev() {
        let y = &layers[li];
        let lw = &w[y.off..y.off + y.len()];
        let lg = &mut grad[y.off..y.off + y.len()];
        let z = &rec[y.rin..y.rin + y.k_in];
        let dz = &mut dz_buf[..y.n_in];
        layer_backward::<AVX>(y, lw, lg, z, &dy_buf[..dy_len], Some(dz));
        if li > 0 {
            // Through the activation of hidden layer li-1 (its output is z).
            let prev = &layers[li - 1];
            let pre = &rec[prev.rpre..prev.rpre + y.n_in];
            activate_backward::<AVX>(p.act, pre, &z[..y.n_in], &dz_buf[..y.n_in], &mut dy_buf[..y.n_in]);
            dy_len = y.n_in;
        } else {
            for j in 0..d {
                g[j] += dz_buf[j];
            }
        }
    }
}

/// Forward and backward of `rows` events: adds the gradient of the summed NLL
/// into `grad` and returns the summed NLL; with `wts` (one per row), of the
/// weighted sum `Σ wts[i] NLL(rows[i])`.
///
/// The forward runs block by block over a tile of [`TILE`] events (each
/// event's records kept for the backward), then each event of the tile is
/// run backward in order.
#[inline(always)]
fn train_chunk_impl<const AVX: bool>(
    p: &Plan,
    w: &[f32],
    x: &[f32],
    c: &[f32],
    rows: &[i64],
    (wts, ceil): (Option<&[f32]>, f64),
    grad: &mut [f32],
) -> f64 {
    if let Some(e) = &p.ext {
        return spline_lu::train_chunk::<AVX>(p, e, w, x, c, rows, (wts, ceil), grad);
    }
    let (d, l) = (p.d, p.l);
    let nb = p.blocks.len();
    let er = nb * p.rec;
    let mut recs = vec![0f32; TILE * er];
    let maxw = p.blocks[0].iter().map(|y| y.n_out.max(y.k_in)).max().unwrap_or(0).max(2 * d);
    let mut dscratch = vec![0f32; 2 * maxw];
    let mut g = vec![0f32; d];
    let mut tile_buf = vec![0f32; 3 * TILE * d];
    let mut total = 0f64;
    let cst = 0.5 * d as f64 * LOG_2PI;
    let tl = p.tail;
    for (ti, tile) in rows.chunks(TILE).enumerate() {
        let te = tile.len();
        let mut s_sum = [0f32; TILE];
        let (tb, rest) = tile_buf.split_at_mut(TILE * d);
        let (sb, eb) = rest.split_at_mut(TILE * d);
        for (k, layers) in p.blocks.iter().enumerate() {
            for (e, &r) in tile.iter().enumerate() {
                let r = r as usize;
                let (before, this) = recs[e * er..(e + 1) * er].split_at_mut(k * p.rec);
                let u: &[f32] = if k == 0 { &x[r * d..(r + 1) * d] } else { &before[k * p.rec - d..] };
                block_raw::<AVX>(p, layers, w, u, &c[r * l..(r + 1) * l], &mut this[..p.rec]);
                tb[e * d..(e + 1) * d].copy_from_slice(&this[tl..tl + d]);
            }
            finish_tile::<AVX>(p.bound, &mut tb[..te * d], &mut sb[..te * d], &mut eb[..te * d]);
            for (e, &r) in tile.iter().enumerate() {
                let r = r as usize;
                let (before, this) = recs[e * er..(e + 1) * er].split_at_mut(k * p.rec);
                let u: &[f32] = if k == 0 { &x[r * d..(r + 1) * d] } else { &before[k * p.rec - d..] };
                let tail = &mut this[tl..tl + 5 * d];
                let mut bs = 0f32;
                for j in 0..d {
                    let i = e * d + j;
                    tail[j] = tb[i];
                    tail[d + j] = sb[i];
                    tail[2 * d + j] = eb[i];
                    tail[4 * d + j] = (u[j] - tail[3 * d + j]) * eb[i];
                    bs += sb[i];
                }
                s_sum[e] += bs;
            }
        }
        for e in 0..te {
            let rec = &recs[e * er..(e + 1) * er];
            let uk = &rec[er - d..];
            let w0 = wts.map_or(1.0, |v| v[ti * TILE + e]);
            let mut sq = 0f32;
            for v in &uk[..d] {
                sq += v * v;
            }
            let nll = f64::from(0.5 * sq + s_sum[e]) + cst;
            let (nll_used, wt) = if wts.is_some() { floored(nll, w0, ceil + cst) } else { (nll, w0) };
            total += if wts.is_some() { nll_used * f64::from(w0) } else { nll };
            for j in 0..d {
                g[j] = uk[j] * wt;
            }
            for (k, layers) in p.blocks.iter().enumerate().rev() {
                let rk = &rec[k * p.rec..(k + 1) * p.rec];
                block_backward::<AVX>(p, layers, w, grad, rk, &mut g, &mut dscratch, wt);
            }
        }
    }
    total
}

/// `out[e][j] = b[j] + A[j] · z[e]` for the [`TILE`] events of a tile at once
/// (`z[e]` at `z[e * zs..]`, `out[e]` at `out[e * os..]`): the same operations
/// in the same order, per output, as [`layer_forward`], so the same bits. With
/// AVX2 each weight vector is loaded once per tile and the events' sums are
/// independent chains in registers.
#[inline(always)]
fn layer_forward_tile<const AVX: bool>(y: &Layer, w: &[f32], z: &[f32], zs: usize, out: &mut [f32], os: usize) {
    assert!(z.len() >= (TILE - 1) * zs + y.k_in && out.len() >= (TILE - 1) * os + y.n_out);
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2; the
        // slices were checked above to hold every row read or written.
        unsafe {
            if y.in_major {
                in_major_tile_avx2(y, w, z, zs, out, os);
            } else {
                dots_tile_avx2(y, w, z, zs, out, os, None);
            }
        }
        return;
    }
    for e in 0..TILE {
        layer_forward::<AVX>(y, w, &z[e * zs..e * zs + y.k_in], &mut out[e * os..e * os + y.n_out]);
    }
}

/// The outputs `j` with `want[j]` of one layer for the [`TILE`] events of a
/// tile (layout as [`layer_forward_tile`]); the other outputs are left as
/// they are. Per output and event the bits of [`layer_row`].
#[inline(always)]
fn layer_rows_tile<const AVX: bool>(
    y: &Layer,
    w: &[f32],
    z: &[f32],
    zs: usize,
    out: &mut [f32],
    os: usize,
    want: &[bool],
) {
    assert!(z.len() >= (TILE - 1) * zs + y.k_in && out.len() >= (TILE - 1) * os + y.n_out && want.len() >= y.n_out);
    // (The plan stores a MADE's output layer, the only one read row by row,
    // output-major; an input-major layer takes the per-event loop below.)
    #[cfg(target_arch = "x86_64")]
    if AVX && !y.in_major {
        // SAFETY: AVX is only true in code reached after detecting AVX2; the
        // slices were checked above to hold every row read or written.
        unsafe { dots_tile_avx2(y, w, z, zs, out, os, Some(want)) };
        return;
    }
    for e in 0..TILE {
        for j in (0..y.n_out).filter(|&j| want[j]) {
            out[e * os + j] = layer_row::<AVX>(y, w, &z[e * zs..e * zs + y.k_in], j);
        }
    }
}

/// `row[c] += Σ_e coef[e] · src[e * stride + c]` for every `c < row.len()`,
/// the events in order and each a product then a sum: the bits of one
/// [`axpy`] per event, with the row kept in registers over the tile (the
/// backward's weight-gradient update).
#[inline(always)]
fn axpy_tile<const AVX: bool>(row: &mut [f32], coef: &[f32; TILE], src: &[f32], stride: usize) {
    let n = row.len();
    assert!(src.len() >= (TILE - 1) * stride + n, "axpy_tile: source shorter than the tile");
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2; the
        // assert above bounds every read of `src`.
        return unsafe { axpy_tile_avx2(row, coef, src, stride) };
    }
    for (e, &ce) in coef.iter().enumerate() {
        axpy(row, ce, &src[e * stride..e * stride + n]);
    }
}

/// [`axpy_tile`] (AVX2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_tile_avx2(row: &mut [f32], coef: &[f32; TILE], src: &[f32], stride: usize) {
    use std::arch::x86_64::*;
    let n = row.len();
    let n8 = n / 8 * 8;
    let cs: [__m256; TILE] = std::array::from_fn(|e| _mm256_set1_ps(coef[e]));
    let (rp, sp) = (row.as_mut_ptr(), src.as_ptr());
    // SAFETY: as this function's (AVX-512F checked by `wide_kernels`).
    let done = if wide_kernels() { unsafe { axpy_tile_avx512(row, coef, src, stride) } } else { 0 };
    for c in (done..n8).step_by(8) {
        let mut acc = unsafe { _mm256_loadu_ps(rp.add(c)) };
        for (e, ce) in cs.iter().enumerate() {
            let x = unsafe { _mm256_loadu_ps(sp.add(e * stride + c)) };
            acc = _mm256_fmadd_ps(*ce, x, acc);
        }
        unsafe { _mm256_storeu_ps(rp.add(c), acc) };
    }
    for c in n8..n {
        let mut v = row[c];
        for (e, &ce) in coef.iter().enumerate() {
            v = ce.mul_add(src[e * stride + c], v);
        }
        row[c] = v;
    }
}

/// [`axpy_tile_avx2`]'s columns `..n / 16 * 16` in 512-bit registers (the
/// same operations per element); returns how many it did.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn axpy_tile_avx512(row: &mut [f32], coef: &[f32; TILE], src: &[f32], stride: usize) -> usize {
    use std::arch::x86_64::*;
    let n16 = row.len() / 16 * 16;
    let cs: [__m512; TILE] = std::array::from_fn(|e| _mm512_set1_ps(coef[e]));
    let (rp, sp) = (row.as_mut_ptr(), src.as_ptr());
    for c in (0..n16).step_by(16) {
        // SAFETY: `c + 16 <= row.len()`; the caller bounds `src`.
        let mut acc = unsafe { _mm512_loadu_ps(rp.add(c)) };
        for (e, ce) in cs.iter().enumerate() {
            let x = unsafe { _mm512_loadu_ps(sp.add(e * stride + c)) };
            acc = _mm512_fmadd_ps(*ce, x, acc);
        }
        unsafe { _mm512_storeu_ps(rp.add(c), acc) };
    }
    n16
}

/// The weight-gradient update of an output-major layer for a tile: for every
/// live row `j`, `ga[j * k_in + c] += Σ_e dy[e * ds + j] · z[e * zs + c]` for
/// `c < span[j]` ([`axpy_tile`] per row: the same bits), in one call per
/// layer so that the 512-bit kernel runs each row's tail as a masked block
/// rather than a per-row call of narrower kernels.
#[inline(always)]
fn grad_rows_tile<const AVX: bool>(y: &Layer, ga: &mut [f32], dy: &[f32], ds: usize, z: &[f32], zs: usize) {
    let k_in = y.k_in;
    assert!(
        !y.in_major
            && ga.len() >= y.a_len()
            && dy.len() >= (TILE - 1) * ds + y.n_out
            && z.len() >= (TILE - 1) * zs + k_in
            && y.span.iter().all(|&n| n <= k_in),
        "grad_rows_tile: buffers shorter than the layer"
    );
    #[cfg(target_arch = "x86_64")]
    if AVX && wide_kernels() {
        // SAFETY: AVX-512F (checked by `wide_kernels`); the assert above
        // bounds every row read or written.
        return unsafe { grad_rows_avx512(y, ga, dy, ds, z, zs) };
    }
    for j in (0..y.n_out).filter(|&j| y.live[j]) {
        let coef: [f32; TILE] = std::array::from_fn(|e| dy[e * ds + j]);
        axpy_tile::<AVX>(&mut ga[j * k_in..j * k_in + y.span[j]], &coef, z, zs);
    }
}

/// [`grad_rows_tile`] in 512-bit registers, a row's last partial block of 16
/// masked; two rows of equal span at a time (one load of the inputs for
/// both, and two independent chains).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn grad_rows_avx512(y: &Layer, ga: &mut [f32], dy: &[f32], ds: usize, z: &[f32], zs: usize) {
    use std::arch::x86_64::*;
    let (gp, zp) = (ga.as_mut_ptr(), z.as_ptr());
    let coefs = |j: usize| -> [__m512; TILE] { std::array::from_fn(|e| _mm512_set1_ps(dy[e * ds + j])) };
    for group in &y.span_groups {
        let n = y.span[group[0]];
        for rows in group.chunks(2) {
            // SAFETY: rows `j` of `ga` and the tile's rows of `z` hold `n`
            // values (the caller's assert).
            let r0 = unsafe { gp.add(rows[0] * y.k_in) };
            let c0 = coefs(rows[0]);
            if let [_, j1] = *rows {
                let r1 = unsafe { gp.add(j1 * y.k_in) };
                let c1 = coefs(j1);
                for c in (0..n).step_by(16) {
                    let m: __mmask16 = if n - c >= 16 { 0xffff } else { (1u16 << (n - c)) - 1 };
                    let (mut a0, mut a1) =
                        unsafe { (_mm512_maskz_loadu_ps(m, r0.add(c)), _mm512_maskz_loadu_ps(m, r1.add(c))) };
                    for e in 0..TILE {
                        let x = unsafe { _mm512_maskz_loadu_ps(m, zp.add(e * zs + c)) };
                        a0 = _mm512_fmadd_ps(c0[e], x, a0);
                        a1 = _mm512_fmadd_ps(c1[e], x, a1);
                    }
                    unsafe {
                        _mm512_mask_storeu_ps(r0.add(c), m, a0);
                        _mm512_mask_storeu_ps(r1.add(c), m, a1);
                    }
                }
            } else {
                for c in (0..n).step_by(16) {
                    let m: __mmask16 = if n - c >= 16 { 0xffff } else { (1u16 << (n - c)) - 1 };
                    let mut acc = unsafe { _mm512_maskz_loadu_ps(m, r0.add(c)) };
                    for (e, ce) in c0.iter().enumerate() {
                        let x = unsafe { _mm512_maskz_loadu_ps(m, zp.add(e * zs + c)) };
                        acc = _mm512_fmadd_ps(*ce, x, acc);
                    }
                    unsafe { _mm512_mask_storeu_ps(r0.add(c), m, acc) };
                }
            }
        }
    }
}

/// dL/d(inputs) of an output-major layer for a tile: `dz[e * ds + c] =
/// Σ_j dy[e * ds + j] · a[j * k_in + c]` over the live outputs `j` in order,
/// from zero, for `c < n_in`: the bits of one [`axpy`] per output and event,
/// with the eight events' sums kept in registers.
#[inline(always)]
fn dz_tile<const AVX: bool>(y: &Layer, a: &[f32], dy: &[f32], dz: &mut [f32], ds: usize) {
    let (n_in, k_in) = (y.n_in, y.k_in);
    assert!(
        a.len() >= y.n_out * k_in && dy.len() >= (TILE - 1) * ds + y.n_out && dz.len() >= (TILE - 1) * ds + n_in,
        "dz_tile: buffers shorter than the layer"
    );
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2; the
        // assert above bounds every access.
        return unsafe { dz_tile_avx2(y, a, dy, dz, ds) };
    }
    for e in 0..TILE {
        dz[e * ds..e * ds + n_in].iter_mut().for_each(|v| *v = 0.0);
    }
    for j in (0..y.n_out).filter(|&j| y.live[j]) {
        let n = y.span[j].min(n_in);
        let arow = &a[j * k_in..j * k_in + n];
        for e in 0..TILE {
            axpy(&mut dz[e * ds..e * ds + n], dy[e * ds + j], arow);
        }
    }
}

/// [`dz_tile`] (AVX2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dz_tile_avx2(y: &Layer, a: &[f32], dy: &[f32], dz: &mut [f32], ds: usize) {
    // SAFETY: the caller bounds every access ([`dz_tile`]'s assert).
    unsafe { rows_tile_avx2(None, |b| &y.dz_rows[b], &y.dz_rows16, a, y.k_in, dy, ds, dz, ds, y.n_in) }
}

/// `out[e * os + c] = init[c] (or 0) + Σ_k coef[e * cs + k] · a[k * stride + c]`
/// for `c < width` over the rows `k` in order, for a tile of events: 8
/// outputs of the 8 events held in registers over all rows, the same additions
/// in the same order as one [`axpy`] per row. `rows(b)` lists the rows of
/// block `b` of 8 outputs (the last one partial) in order; rows left out must
/// be zero there; `rows16` is [`pairs16`] of them, for the 512-bit kernel.
/// The forward of an input-major layer and the backward's dL/d(inputs) of an
/// output-major one.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_tile_avx2<'r>(
    init: Option<&[f32]>,
    rows: impl Fn(usize) -> &'r [usize],
    rows16: &[Vec<(usize, u16)>],
    a: &[f32],
    stride: usize,
    coef: &[f32],
    cs: usize,
    out: &mut [f32],
    os: usize,
    width: usize,
) {
    use std::arch::x86_64::*;
    let n8 = width / 8 * 8;
    let (ap, cp, op) = (a.as_ptr(), coef.as_ptr(), out.as_mut_ptr());
    let done = if wide_kernels() {
        // SAFETY: AVX-512F (checked by `wide_kernels`); the caller's bounds.
        unsafe { rows_tile_avx512(init, rows16, a, stride, coef, cs, out, os, width) }
    } else {
        0
    };
    for c in (done..n8).step_by(8) {
        let start = match init {
            Some(b) => unsafe { _mm256_loadu_ps(b.as_ptr().add(c)) },
            None => _mm256_setzero_ps(),
        };
        let mut acc = [start; TILE];
        for &k in rows(c / 8) {
            let av = unsafe { _mm256_loadu_ps(ap.add(k * stride + c)) };
            for (e, ae) in acc.iter_mut().enumerate() {
                let g = unsafe { _mm256_broadcast_ss(&*cp.add(e * cs + k)) };
                *ae = _mm256_fmadd_ps(g, av, *ae);
            }
        }
        for (e, ae) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(op.add(e * os + c), *ae) };
        }
    }
    for e in 0..TILE {
        for c in n8..width {
            let mut v = init.map_or(0.0, |b| b[c]);
            for &k in rows(n8 / 8) {
                v = coef[e * cs + k].mul_add(a[k * stride + c], v);
            }
            out[e * os + c] = v;
        }
    }
}

/// [`rows_tile_avx2`]'s columns `..width / 16 * 16` in 512-bit registers:
/// per pair of blocks of 8, the rows of either with the other block's lanes
/// masked off, so each lane does its block's operations in order; returns
/// how many columns it did.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_tile_avx512(
    init: Option<&[f32]>,
    rows16: &[Vec<(usize, u16)>],
    a: &[f32],
    stride: usize,
    coef: &[f32],
    cs: usize,
    out: &mut [f32],
    os: usize,
    width: usize,
) -> usize {
    use std::arch::x86_64::*;
    let n16 = width / 16 * 16;
    assert!(rows16.len() >= n16 / 16);
    let (ap, cp, op) = (a.as_ptr(), coef.as_ptr(), out.as_mut_ptr());
    for c in (0..n16).step_by(16) {
        let start = match init {
            // SAFETY: `init` holds `width >= c + 16` values.
            Some(b) => unsafe { _mm512_loadu_ps(b.as_ptr().add(c)) },
            None => _mm512_setzero_ps(),
        };
        let mut acc = [start; TILE];
        for &(k, mask) in &rows16[c / 16] {
            // SAFETY: the caller bounds rows `k` of `a` and `coef` to `width` columns.
            let av = unsafe { _mm512_loadu_ps(ap.add(k * stride + c)) };
            for (e, ae) in acc.iter_mut().enumerate() {
                let g = _mm512_set1_ps(unsafe { *cp.add(e * cs + k) });
                *ae = _mm512_mask3_fmadd_ps(g, av, *ae, mask);
            }
        }
        for (e, ae) in acc.iter().enumerate() {
            // SAFETY: `out` holds `TILE` rows `os` apart of `width` columns.
            unsafe { _mm512_storeu_ps(op.add(e * os + c), *ae) };
        }
    }
    n16
}

/// [`layer_forward_tile`] of an input-major layer (AVX2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn in_major_tile_avx2(y: &Layer, w: &[f32], z: &[f32], zs: usize, out: &mut [f32], os: usize) {
    let (a, b) = w.split_at(y.a_len());
    // SAFETY: the caller passes a tile of `zs`-strided inputs and `os`-strided outputs.
    unsafe { rows_tile_avx2(Some(b), |bl| &y.blk_rows[bl], &y.blk_rows16, a, y.n_out, z, zs, out, os, y.n_out) }
}

/// [`layer_forward_tile`] of an output-major layer: the AVX-512 kernel where
/// the CPU has it ([`wide_kernels`]), else eight events' [`dot_avx2`]s side by
/// side in 256-bit registers. Both give the bits of [`dot_avx2`] per event.
///
/// # Safety
/// AVX2 and FMA are available; `z` holds `TILE` rows `zs` apart of `k_in`
/// inputs and `out` `TILE` rows `os` apart of `n_out` outputs.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_tile_avx2(
    y: &Layer,
    w: &[f32],
    z: &[f32],
    zs: usize,
    out: &mut [f32],
    os: usize,
    want: Option<&[bool]>,
) {
    // SAFETY: forwarded; AVX-512F is checked by `wide_kernels`.
    unsafe {
        if wide_kernels() {
            dots_tile_avx512(y, w, z, zs, out, os, want)
        } else {
            dots_tile_ymm(y, w, z, zs, out, os, want)
        }
    }
}

thread_local! {
    /// [`dots_tile_avx512`]'s transposed tile inputs, kept per thread.
    static ZT: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`dots_tile_avx2`] with 512-bit registers. The tile's inputs are stored
/// in pairs with the events side by side (`zt[(i / 2) * 16 + 2 e + i % 2]` is
/// input `i` of event `e`), so one register holds two of a dot's eight lane
/// partials for all eight events and a weight pair is one 64-bit broadcast;
/// four rows run at once. The reduction is vertical adds and one in-lane
/// swap: per event, the operations and order of [`dot_avx2`].
///
/// # Safety
/// AVX-512F is available; as [`dots_tile_avx2`] otherwise.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn dots_tile_avx512(
    y: &Layer,
    w: &[f32],
    z: &[f32],
    zs: usize,
    out: &mut [f32],
    os: usize,
    want: Option<&[bool]>,
) {
    use std::arch::x86_64::*;
    const { assert!(TILE == 8) };
    const R: usize = 4;
    let (a, b) = w.split_at(y.a_len());
    let k = y.k_in;
    let wanted = |j: usize| want.is_none_or(|v| v[j]);
    // `a` holds every row (`span_groups` and `dead` hold rows `< n_out`).
    assert!(a.len() == y.n_out * k && z.len() >= (TILE - 1) * zs + k && out.len() >= (TILE - 1) * os + y.n_out);
    for &j in y.dead.iter().filter(|&&j| wanted(j)) {
        for e in 0..TILE {
            out[e * os + j] = b[j];
        }
    }
    // Only the inputs that the wanted rows' full blocks of 8 read (the
    // groups come by increasing span).
    let mmax = y.span_groups.iter().rev().find(|g| g.iter().any(|&j| wanted(j))).map_or(0, |g| y.span[g[0]] / 8 * 8);
    assert!(mmax <= k);
    let mut zt = ZT.take();
    if zt.len() < mmax * TILE {
        zt.resize(mmax * TILE, 0.0);
    }
    // SAFETY: asserted just above; `zt` holds `mmax * TILE` floats.
    unsafe { pair_transpose_avx2(z.as_ptr(), zs, mmax, zt.as_mut_ptr()) };
    for group in &y.span_groups {
        if !group.iter().any(|&j| wanted(j)) {
            continue;
        }
        let kj = y.span[group[0]];
        let m = kj / 8 * 8;
        assert!(m <= mmax);
        let mut rows = group.iter().copied().filter(|&j| wanted(j));
        loop {
            let mut js = [0usize; R];
            let mut n = 0;
            for slot in js.iter_mut() {
                let Some(j) = rows.next() else { break };
                *slot = j;
                n += 1;
            }
            let mut sums = [_mm256_setzero_ps(); R];
            // SAFETY: rows `j < n_out` (the groups are built so) of `a` hold `k >= kj >= m`
            // weights each, and `zt` holds `m * TILE` floats (both asserted above).
            unsafe {
                if n == R {
                    sums = pair_dots_avx512::<R>(std::array::from_fn(|r| a.as_ptr().add(js[r] * k)), m, zt.as_ptr());
                } else {
                    for r in 0..n {
                        sums[r] = pair_dots_avx512::<1>([a.as_ptr().add(js[r] * k)], m, zt.as_ptr())[0];
                    }
                }
            }
            for (&j, &s) in js.iter().zip(&sums).take(n) {
                let mut tail = [0f32; TILE];
                if kj > m {
                    let ar = &a[j * k + m..j * k + kj];
                    for (e, te) in tail.iter_mut().enumerate() {
                        for (x, yv) in z[e * zs + m..e * zs + kj].iter().zip(ar) {
                            *te = x.mul_add(*yv, *te);
                        }
                    }
                }
                // `b[j] + (sum + tail)` per event, as [`dot_avx2`] and [`layer_row`].
                let mut v = [0f32; TILE];
                // SAFETY: `tail` and `v` hold `TILE` floats.
                unsafe {
                    let t = _mm256_add_ps(s, _mm256_loadu_ps(tail.as_ptr()));
                    _mm256_storeu_ps(v.as_mut_ptr(), _mm256_add_ps(_mm256_set1_ps(b[j]), t));
                }
                for (e, ve) in v.into_iter().enumerate() {
                    // SAFETY: `j < n_out` (the groups hold only such rows) and `out` holds `TILE` rows `os` apart (asserted above).
                    unsafe { *out.get_unchecked_mut(e * os + j) = ve };
                }
            }
            if n < R {
                break;
            }
        }
    }
    ZT.set(zt);
}

/// For `R` weight rows, the eight events' dots over the first `m` (a
/// multiple of 8) inputs of the paired tile `zt` ([`dots_tile_avx512`]):
/// register `p` accumulates lane partials `2p` (even lanes) and `2p + 1`
/// (odd lanes) by fused multiply-adds in input order; then
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))` as [`dot_avx2`].
///
/// # Safety
/// AVX-512F is available; each row holds `m` floats and `zt` `m * 8`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn pair_dots_avx512<const R: usize>(
    rows: [*const f32; R],
    m: usize,
    zt: *const f32,
) -> [std::arch::x86_64::__m256; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut i = 0;
    while i < m {
        for p in 0..4 {
            // SAFETY: `i + 2p + 2 <= m` (the caller's bounds).
            let zv = unsafe { _mm512_loadu_ps(zt.add((i + 2 * p) * TILE)) };
            for (row, ar) in rows.iter().zip(acc.iter_mut()) {
                // Weights `i + 2p` and `i + 2p + 1` in every pair of lanes.
                let pair = unsafe { std::ptr::read_unaligned(row.add(i + 2 * p).cast::<f64>()) };
                let wv = _mm512_castpd_ps(_mm512_set1_pd(pair));
                ar[p] = _mm512_fmadd_ps(zv, wv, ar[p]);
            }
        }
        i += 8;
    }
    std::array::from_fn(|r| {
        let c = &acc[r];
        // Even lanes: (l0 + l4) + (l2 + l6); odd lanes: (l1 + l5) + (l3 + l7).
        let t = _mm512_add_ps(_mm512_add_ps(c[0], c[2]), _mm512_add_ps(c[1], c[3]));
        let s = _mm512_add_ps(t, _mm512_permute_ps(t, 0b10_11_00_01));
        // The even lanes, event by event.
        let even = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(even, s))
    })
}

/// `zt[(i / 2) * 16 + 2 e + i % 2] = z[e * zs + i]` for `i < m` (a multiple
/// of 8): a tile's inputs in pairs with the events side by side, an 8 × 4
/// transpose of 64-bit pairs per block of 8 inputs.
///
/// # Safety
/// `z` holds 8 rows `zs` apart of at least `m` floats; `zt` holds `m * 8`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_transpose_avx2(z: *const f32, zs: usize, m: usize, zt: *mut f32) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i < m {
        // SAFETY: rows `e < 8` at `e * zs + i .. + 8`, `i + 8 <= m`.
        let r: [__m256d; 8] = std::array::from_fn(|e| unsafe { _mm256_loadu_pd(z.add(e * zs + i).cast::<f64>()) });
        // t[2h]: pairs 0 and 2 of rows 2h, 2h + 1; t[2h + 1]: pairs 1 and 3.
        let t: [__m256d; 8] = std::array::from_fn(|q| {
            let (p, s) = (r[q / 2 * 2], r[q / 2 * 2 + 1]);
            if q % 2 == 0 {
                _mm256_unpacklo_pd(p, s)
            } else {
                _mm256_unpackhi_pd(p, s)
            }
        });
        for pair in 0..4 {
            // Events 0–3 from t[lo], t[lo + 2]; events 4–7 from t[lo + 4], t[lo + 6].
            let lo = pair % 2;
            let (first, second) = if pair < 2 {
                (_mm256_permute2f128_pd(t[lo], t[lo + 2], 0x20), _mm256_permute2f128_pd(t[lo + 4], t[lo + 6], 0x20))
            } else {
                (_mm256_permute2f128_pd(t[lo], t[lo + 2], 0x31), _mm256_permute2f128_pd(t[lo + 4], t[lo + 6], 0x31))
            };
            // SAFETY: `(i + 2 pair) * 8 + 16 <= m * 8`.
            unsafe {
                let at = zt.add((i + 2 * pair) * TILE).cast::<f64>();
                _mm256_storeu_pd(at, first);
                _mm256_storeu_pd(at.add(4), second);
            }
        }
        i += 8;
    }
}

/// [`dots_tile_avx2`] in 256-bit registers: per output, the [`dot_avx2`] of
/// each event, eight of them side by side.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_tile_ymm(y: &Layer, w: &[f32], z: &[f32], zs: usize, out: &mut [f32], os: usize, want: Option<&[bool]>) {
    use std::arch::x86_64::*;
    const { assert!(TILE == 8) };
    let (a, b) = w.split_at(y.a_len());
    let k = y.k_in;
    let zp = z.as_ptr();
    let wanted = |j: usize| want.is_none_or(|v| v[j]);
    for &j in y.dead.iter().filter(|&&j| wanted(j)) {
        for e in 0..TILE {
            out[e * os + j] = b[j];
        }
    }
    // Two rows of equal span by four events at a time: each weight vector
    // is loaded once per four events and each input vector once per two rows.
    for group in &y.span_groups {
        let mut rows = group.iter().copied().filter(|&j| wanted(j));
        while let Some(j0) = rows.next() {
            let j1 = rows.next();
            // Only the span of the rows: the masked zeros beyond add nothing.
            let kj = y.span[j0];
            let m = kj / 8 * 8;
            let a0 = &a[j0 * k..j0 * k + kj];
            let a1 = j1.map_or(a0, |j1| &a[j1 * k..j1 * k + kj]);
            for e0 in [0, 4] {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < m {
                    let (v0, v1) =
                        unsafe { (_mm256_loadu_ps(a0.as_ptr().add(i)), _mm256_loadu_ps(a1.as_ptr().add(i))) };
                    for e in 0..4 {
                        let zv = unsafe { _mm256_loadu_ps(zp.add((e0 + e) * zs + i)) };
                        acc[e] = _mm256_fmadd_ps(zv, v0, acc[e]);
                        acc[4 + e] = _mm256_fmadd_ps(zv, v1, acc[4 + e]);
                    }
                    i += 8;
                }
                let sums = hsum8_avx2(&acc);
                for (r, (j, ar)) in [(j0, a0)].into_iter().chain(j1.map(|j1| (j1, a1))).enumerate() {
                    for e in 0..4 {
                        let ze = &z[(e0 + e) * zs..];
                        let mut tail = 0f32;
                        for (x, yv) in ze[m..kj].iter().zip(&ar[m..]) {
                            tail = x.mul_add(*yv, tail);
                        }
                        out[(e0 + e) * os + j] = b[j] + (sums[r * 4 + e] + tail);
                    }
                }
            }
        }
    }
}

/// The horizontal sums of eight vectors, each in the order of [`dot_scalar`]
/// (`((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`), so the same bits,
/// computed for all eight with a handful of shuffles and adds.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum8_avx2(v: &[std::arch::x86_64::__m256; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    // h(v) = low half + high half, two vectors per register.
    let h =
        |p: __m256, q: __m256| _mm256_add_ps(_mm256_permute2f128_ps(p, q, 0x20), _mm256_permute2f128_ps(p, q, 0x31));
    let (h01, h23, h45, h67) = (h(v[0], v[1]), h(v[2], v[3]), h(v[4], v[5]), h(v[6], v[7]));
    // q = [h0 + h2, h1 + h3] of each.
    let q = |p: __m256, r: __m256| {
        _mm256_add_ps(_mm256_shuffle_ps(p, r, 0b01_00_01_00), _mm256_shuffle_ps(p, r, 0b11_10_11_10))
    };
    let (q0123, q4567) = (q(h01, h23), q(h45, h67));
    // q0 + q1 of each: lanes hold v0, v2, v4, v6, v1, v3, v5, v7.
    let r = _mm256_hadd_ps(q0123, q4567);
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), r) };
    [lanes[0], lanes[4], lanes[1], lanes[5], lanes[2], lanes[6], lanes[3], lanes[7]]
}

/// `log p(x | c)` of `rows` events into `out`, a tile of events at a time:
/// every layer of a block runs over the whole tile ([`layer_forward_tile`]).
/// A last, partial tile is padded with zero events whose results are dropped
/// (events do not interact, so the others' bits are unchanged).
#[inline(always)]
fn log_prob_chunk_impl<const AVX: bool>(p: &Plan, w: &[f32], x: &[f32], c: &[f32], out: &mut [f32]) {
    if let Some(e) = &p.ext {
        return spline_lu::log_prob_chunk::<AVX>(p, e, w, x, c, out);
    }
    let (d, l) = (p.d, p.l);
    let ys = || p.blocks.iter().flatten();
    let maxk = ys().map(|y| y.k_in).max().unwrap_or(0);
    let maxo = ys().map(|y| y.n_out).max().unwrap_or(0);
    let mut zin = vec![0f32; TILE * maxk];
    let mut znext = vec![0f32; TILE * maxk];
    let mut pre = vec![0f32; TILE * maxo];
    let mut u = vec![0f32; TILE * d];
    let mut cl = vec![0f32; TILE * l];
    let mut mu = vec![0f32; TILE * d];
    let mut tile_buf = vec![0f32; 3 * TILE * d];
    let cst = 0.5 * d as f32 * LOG_2PI as f32;
    for (ti, o_tile) in out.chunks_mut(TILE).enumerate() {
        let (te, base) = (o_tile.len(), ti * TILE);
        let (tb, rest) = tile_buf.split_at_mut(TILE * d);
        let (sb, eb) = rest.split_at_mut(TILE * d);
        u[..te * d].copy_from_slice(&x[base * d..(base + te) * d]);
        u[te * d..].iter_mut().for_each(|v| *v = 0.0);
        cl[..te * l].copy_from_slice(&c[base * l..(base + te) * l]);
        cl[te * l..].iter_mut().for_each(|v| *v = 0.0);
        let mut s_sum = [0f32; TILE];
        for layers in &p.blocks {
            let nl = layers.len();
            let k0 = layers[0].k_in;
            for e in 0..TILE {
                let ze = &mut zin[e * k0..(e + 1) * k0];
                ze[..d].copy_from_slice(&u[e * d..(e + 1) * d]);
                if layers[0].cond {
                    ze[d..d + l].copy_from_slice(&cl[e * l..(e + 1) * l]);
                }
            }
            for (li, y) in layers.iter().enumerate() {
                let lw = &w[y.off..y.off + y.len()];
                layer_forward_tile::<AVX>(y, lw, &zin, y.k_in, &mut pre, y.n_out);
                if li + 1 < nl {
                    let nxt = &layers[li + 1];
                    let kn = nxt.k_in;
                    for e in 0..TILE {
                        let ze = &mut znext[e * kn..(e + 1) * kn];
                        activate::<AVX>(p.act, &pre[e * y.n_out..(e + 1) * y.n_out], &mut ze[..y.n_out]);
                        if nxt.cond {
                            ze[y.n_out..y.n_out + l].copy_from_slice(&cl[e * l..(e + 1) * l]);
                        }
                    }
                    std::mem::swap(&mut zin, &mut znext);
                } else {
                    for e in 0..TILE {
                        for j in 0..d {
                            tb[e * d + j] = pre[e * 2 * d + d + j] / p.bound;
                            mu[e * d + j] = pre[e * 2 * d + j];
                        }
                    }
                }
            }
            finish_tile::<AVX>(p.bound, tb, sb, eb);
            for (e, se) in s_sum.iter_mut().enumerate() {
                let mut bs = 0f32;
                for j in 0..d {
                    let i = e * d + j;
                    u[i] = (u[i] - mu[i]) * eb[i];
                    bs += sb[i];
                }
                *se += bs;
            }
        }
        for (e, o) in o_tile.iter_mut().enumerate() {
            let sq: f32 = u[e * d..(e + 1) * d].iter().map(|v| v * v).sum();
            *o = -0.5 * sq - cst - s_sum[e];
        }
    }
}

/// Output `j` of one layer alone: the same operations in the same order as
/// [`layer_forward`] uses for it, so the same bits.
#[inline(always)]
fn layer_row<const AVX: bool>(y: &Layer, w: &[f32], z: &[f32], j: usize) -> f32 {
    let (a, b) = w.split_at(y.a_len());
    if y.in_major {
        let mut acc = b[j];
        for (k, &zk) in z.iter().enumerate() {
            acc = zk.mul_add(a[k * y.n_out + j], acc);
        }
        acc
    } else if y.live[j] {
        let n = y.span[j];
        b[j] + dot::<AVX>(&a[j * y.k_in..j * y.k_in + n], &z[..n])
    } else {
        b[j]
    }
}

/// One inversion pass of block `layers` for a tile of [`TILE`] events: from
/// the current block inputs `xk` (`TILE × D`, exact for the features of earlier
/// passes) and labels `cl` (`TILE × L`) it runs the pass's hidden layers over
/// the tile (a skipped layer's activations are zeros, which only meet
/// masked-out weights of the outputs computed) and writes the output rows of
/// the pass's features into `tout` (event `e` at `e * n_out`); `recs` holds one
/// block record per event (stride `p.rec`), `want` one flag per output row.
/// Per event the bits of the same pass run event by event.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass_tile<const AVX: bool>(
    p: &Plan,
    layers: &[Layer],
    pass: &Pass,
    w: &[f32],
    xk: &[f32],
    cl: &[f32],
    recs: &mut [f32],
    tout: &mut [f32],
    want: &mut [bool],
) {
    let (d, l, er) = (p.d, p.l, p.rec);
    let nl = layers.len();
    for e in 0..TILE {
        recs[e * er..e * er + d].copy_from_slice(&xk[e * d..(e + 1) * d]);
        if layers[0].cond {
            recs[e * er + d..e * er + d + l].copy_from_slice(&cl[e * l..(e + 1) * l]);
        }
    }
    for li in 0..nl - 1 {
        let (ly, nxt) = (&layers[li], &layers[li + 1]);
        if pass.hidden[li] {
            layer_forward_tile::<AVX>(ly, &w[ly.off..ly.off + ly.len()], &recs[ly.rin..], er, tout, ly.n_out);
        }
        for e in 0..TILE {
            let at = e * er + nxt.rin;
            if pass.hidden[li] {
                activate::<AVX>(p.act, &tout[e * ly.n_out..(e + 1) * ly.n_out], &mut recs[at..at + ly.n_out]);
            } else {
                recs[at..at + ly.n_out].iter_mut().for_each(|v| *v = 0.0);
            }
            if nxt.cond {
                recs[at + ly.n_out..at + ly.n_out + l].copy_from_slice(&cl[e * l..(e + 1) * l]);
            }
        }
    }
    let lo = &layers[nl - 1];
    for (row, wv) in want.iter_mut().enumerate().take(lo.n_out) {
        *wv = pass.feats.contains(&(row % d));
    }
    layer_rows_tile::<AVX>(lo, &w[lo.off..lo.off + lo.len()], &recs[lo.rin..], er, tout, lo.n_out, want);
}

/// Inverse of the flow on `us` (rows of D) into `xs`, and `log |det du/dx|`
/// into `ld`, a tile of events at a time.
#[inline(always)]
fn inverse_chunk_impl<const AVX: bool>(p: &Plan, w: &[f32], us: &[f32], c: &[f32], xs: &mut [f32], ld: &mut [f32]) {
    if let Some(e) = &p.ext {
        return spline_lu::inverse_chunk::<AVX>(p, e, w, us, c, xs, ld);
    }
    let (d, l) = (p.d, p.l);
    let maxo = p.blocks.iter().flatten().map(|y| y.n_out).max().unwrap_or(0);
    let mut recs = vec![0f32; TILE * p.rec];
    let mut tout = vec![0f32; TILE * maxo];
    let mut want = vec![false; 2 * d];
    let mut y = vec![0f32; TILE * d];
    let mut x = vec![0f32; TILE * d];
    let mut cl = vec![0f32; TILE * l];
    let mut s = vec![0f32; TILE * d];
    let mut mu = vec![0f32; TILE * d];
    let mut tile_buf = vec![0f32; 3 * TILE * d];
    for (ti, ld_tile) in ld.chunks_mut(TILE).enumerate() {
        let (te, base) = (ld_tile.len(), ti * TILE);
        let (tb, rest) = tile_buf.split_at_mut(TILE * d);
        let (sb, eb) = rest.split_at_mut(TILE * d);
        // A partial tile is padded with zero events whose results are dropped.
        y.iter_mut().for_each(|v| *v = 0.0);
        y[..te * d].copy_from_slice(&us[base * d..(base + te) * d]);
        cl.iter_mut().for_each(|v| *v = 0.0);
        cl[..te * l].copy_from_slice(&c[base * l..(base + te) * l]);
        let mut logdet = [0f32; TILE];
        for (layers, passes) in p.blocks.iter().zip(&p.passes).rev() {
            x.iter_mut().for_each(|v| *v = 0.0);
            for pass in passes {
                let nf = pass.feats.len();
                pass_tile::<AVX>(p, layers, pass, w, &x, &cl, &mut recs, &mut tout, &mut want);
                for e in 0..TILE {
                    for (q, &j) in pass.feats.iter().enumerate() {
                        mu[e * nf + q] = tout[e * 2 * d + j];
                        tb[e * nf + q] = tout[e * 2 * d + d + j] / p.bound;
                    }
                }
                // s = B tanh(raw / B); x = y exp(s) + mu
                let m = TILE * nf;
                tanh_in_place::<AVX>(&mut tb[..m]);
                for k in 0..m {
                    sb[k] = tb[k] * p.bound;
                    eb[k] = sb[k];
                }
                exp_in_place::<AVX>(&mut eb[..m]);
                for e in 0..TILE {
                    for (q, &j) in pass.feats.iter().enumerate() {
                        let (i, k) = (e * d + j, e * nf + q);
                        s[i] = sb[k];
                        x[i] = y[i] * eb[k] + mu[k];
                    }
                }
            }
            for (e, lde) in logdet.iter_mut().enumerate() {
                let s_sum: f32 = s[e * d..(e + 1) * d].iter().sum();
                *lde -= s_sum;
            }
            y.copy_from_slice(&x);
        }
        xs[base * d..(base + te) * d].copy_from_slice(&y[..te * d]);
        ld_tile.copy_from_slice(&logdet[..te]);
    }
}

/// Whether this CPU runs the engine's vector kernels (x86-64 with AVX2 and
/// FMA); elsewhere the portable kernels give the same bits, several times slower.
pub fn vector_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which kernels the CPU engine runs on this CPU: `"avx512"` (AVX2 + FMA
/// with the 512-bit kernels), `"avx2"` or `"portable"`; all give the same bits.
pub fn kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if vector_kernels() {
        return if wide_kernels() { "avx512" } else { "avx2" };
    }
    "portable"
}

macro_rules! dispatch {
    ($name:ident, $imp:ident, ($($a:ident : $t:ty),*) -> $ret:ty) => {
        fn $name($($a: $t),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) -> $ret {
                    $imp::<true>($($a),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            $imp::<false>($($a),*)
        }
    };
}

dispatch!(train_chunk, train_chunk_impl, (p: &Plan, w: &[f32], x: &[f32], c: &[f32], rows: &[i64], wts: (Option<&[f32]>, f64), grad: &mut [f32]) -> f64);

/// Above this `−log p − D/2 · ln 2π` (the standard normal's density at radius 6
/// in the flow's space) a negatively weighted data event stops pulling its
/// density down: with negative weights the weighted NLL is unbounded below (a
/// flow can push such an event's density to zero), and this floor bounds it
/// while leaving every density above it untouched.
pub const NEGATIVE_WEIGHT_NLL_CEIL: f64 = 18.0;

/// A negatively weighted event's `(nll, weight)` with the floor: beyond
/// `ceil` it counts `ceil` and gets no gradient.
#[inline(always)]
pub(crate) fn floored(nll: f64, wt: f32, ceil: f64) -> (f64, f32) {
    if wt < 0.0 && nll > ceil {
        (ceil, 0.0)
    } else {
        (nll, wt)
    }
}
dispatch!(log_prob_chunk, log_prob_chunk_impl, (p: &Plan, w: &[f32], x: &[f32], c: &[f32], out: &mut [f32]) -> ());
dispatch!(inverse_chunk, inverse_chunk_impl, (p: &Plan, w: &[f32], us: &[f32], c: &[f32], xs: &mut [f32], ld: &mut [f32]) -> ());

/// Runs `f(chunk index)` for `n` chunks on up to `threads` threads (the
/// calling one included) and returns the results in chunk order. Chunks are
/// handed out dynamically (a shared counter), so a thread slowed down by
/// other work on the machine takes fewer of them; results must not depend on
/// which thread runs a chunk.
fn par_chunks<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut parts: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in handles {
            all.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        all
    });
    parts.sort_unstable_by_key(|p| p.0);
    parts.into_iter().map(|p| p.1).collect()
}

fn threads() -> usize {
    usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1)
}

/// The fast CPU path for a MAF: its structure, built once per flow.
#[derive(Debug, Clone)]
pub struct FastMaf {
    plan: Plan,
}

impl FastMaf {
    /// The CPU engine for `flow`, or why it does not apply (not on the CPU,
    /// GELU activation); libtorch evaluates the flow then. Spline blocks and
    /// learned mixing take the path in `fast/ext.rs`.
    pub fn new(flow: &Maf) -> Result<Self, String> {
        Plan::new(flow).map(|plan| FastMaf { plan })
    }

    fn weights_from_flow(&self, flow: &Maf) -> Option<Vec<f32>> {
        let vars = flow.var_store().variables();
        self.plan.weights(&|n| vars.get(n).map(|t| std::borrow::Cow::Owned(host(t))))
    }

    /// `log p(x | c)` per event, without gradients.
    ///
    /// # Shapes
    /// `xs: [N, D]`, `cs: [N, L]` → `[N]`
    pub fn log_prob(&self, flow: &Maf, xs: &Tensor, cs: &Tensor) -> Option<Tensor> {
        let w = self.weights_from_flow(flow)?;
        let (x, c) = (host(xs), host(cs));
        let (d, l) = (self.plan.d, self.plan.l);
        let n = x.len() / d.max(1);
        if x.len() != n * d || c.len() != n * l {
            return None;
        }
        let n_chunks = n.div_ceil(CHUNK);
        let parts = par_chunks(n_chunks, threads(), |i| {
            let (a, b) = (i * CHUNK, ((i + 1) * CHUNK).min(n));
            let mut out = vec![0f32; b - a];
            log_prob_chunk(&self.plan, &w, &x[a * d..b * d], &c[a * l..b * l], &mut out);
            out
        });
        let flat: Vec<f32> = parts.concat();
        Some(Tensor::from_slice(&flat))
    }

    /// The inverse of the flow (base → data) and `log |det du/dx|` at the result.
    ///
    /// # Shapes
    /// `us: [N, D]`, `cs: [N, L]` → `(x: [N, D], logdet: [N])`
    pub fn inverse(&self, flow: &Maf, us: &Tensor, cs: &Tensor) -> Option<(Tensor, Tensor)> {
        let w = self.weights_from_flow(flow)?;
        let (u, c) = (host(us), host(cs));
        let (d, l) = (self.plan.d, self.plan.l);
        let n = u.len() / d.max(1);
        if u.len() != n * d || c.len() != n * l {
            return None;
        }
        let n_chunks = n.div_ceil(CHUNK);
        let parts = par_chunks(n_chunks, threads(), |i| {
            let (a, b) = (i * CHUNK, ((i + 1) * CHUNK).min(n));
            let mut xs = vec![0f32; (b - a) * d];
            let mut ld = vec![0f32; b - a];
            inverse_chunk(&self.plan, &w, &u[a * d..b * d], &c[a * l..b * l], &mut xs, &mut ld);
            (xs, ld)
        });
        let xs: Vec<f32> = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
        let ld: Vec<f32> = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
        Some((Tensor::from_slice(&xs).view([n as i64, d as i64]), Tensor::from_slice(&ld)))
    }
}

/// The fast training pass: the summed NLL of a batch and its gradient in
/// the optimiser's flat layout (parameters sorted by name).
#[derive(Debug)]
pub struct FastTrainer {
    plan: Plan,
    /// Offset of each parameter in the flat layout, by name.
    offsets: HashMap<String, usize>,
    /// Length of the flat layout.
    n_params: usize,
    params: Vec<f32>,
    /// Each chunk's gradient buffer, kept across steps: a fresh buffer of
    /// the whole network per chunk and step cost page faults and zeroing
    /// (8 % of a training step at D = 6).
    chunk_grads: Vec<std::sync::Mutex<Vec<f32>>>,
    /// The combined weights, their summed gradient and the gradient in the
    /// flat layout of the last step, kept across steps like `chunk_grads`.
    w: Vec<f32>,
    g: Vec<f32>,
    mapped: Vec<f32>,
}

impl FastTrainer {
    /// A trainer for `flow` whose parameters are laid out flat as `names`
    /// (with `numels` elements each), or why the CPU engine does not apply.
    pub fn new(flow: &Maf, names: &[String], numels: &[i64]) -> Result<Self, String> {
        let plan = Plan::new(flow)?;
        let mut offsets = HashMap::new();
        let mut off = 0;
        for (n, &k) in names.iter().zip(numels) {
            offsets.insert(n.clone(), off);
            off += usize::try_from(k).map_err(|_| format!("parameter {n} has {k} elements"))?;
        }
        // Every parameter of the plan must be in the layout.
        let missing = |n: &String| format!("the CPU engine's parameter {n} is not among the optimiser's");
        for y in plan.blocks.iter().flatten() {
            for n in [Some(&y.names.0), Some(&y.names.1), y.names.2.as_ref()].into_iter().flatten() {
                offsets.get(n).ok_or_else(|| missing(n))?;
            }
        }
        for m in plan.ext.iter().flat_map(|x| &x.mixes) {
            for n in &m.names {
                offsets.get(n).ok_or_else(|| missing(n))?;
            }
        }
        // And every parameter of the layout in the plan: one the plan does not
        // know would get no gradient, and the loss would leave out its part of the flow.
        if let Some(n) = names.iter().find(|n| flat_len(&plan, n).is_none()) {
            return Err(format!("the optimiser's parameter {n} is unknown to the CPU engine"));
        }
        Ok(FastTrainer {
            plan,
            offsets,
            n_params: off,
            params: vec![0f32; off],
            chunk_grads: Vec::new(),
            w: Vec::new(),
            g: Vec::new(),
            mapped: Vec::new(),
        })
    }

    /// Summed NLL of the events `rows` of `(x, c)` (row-major host copies of
    /// the whitened data, `D` and `L` columns) under the parameters `flat`
    /// (the optimiser's flat parameter tensor), and its gradient written into
    /// `grad` (length [`FastTrainer::numel`]).
    pub fn loss_and_grad(
        &mut self,
        flat: &Tensor,
        x: &[f32],
        c: &[f32],
        rows: &[i64],
        threads: usize,
        grad: &mut [f32],
    ) -> f64 {
        match self.run(flat, x, c, rows, (None, f64::INFINITY), threads) {
            Some(loss) => {
                self.scatter(&self.g, &self.w, grad);
                loss
            }
            None => f64::NAN,
        }
    }

    /// [`FastTrainer::loss_and_grad`] with a weight per row (`wts[k]` for
    /// `rows[k]`): `Σ wts[k] NLL(rows[k])` and its gradient, written into `grad`;
    /// a negatively weighted event counts at most [`NEGATIVE_WEIGHT_NLL_CEIL`]
    /// (above `D/2 ln 2π`).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grad_weighted(
        &mut self,
        flat: &Tensor,
        x: &[f32],
        c: &[f32],
        rows: &[i64],
        wts: &[f32],
        threads: usize,
        grad: &mut [f32],
    ) -> f64 {
        if wts.len() != rows.len() {
            return f64::NAN;
        }
        match self.run(flat, x, c, rows, (Some(wts), NEGATIVE_WEIGHT_NLL_CEIL), threads) {
            Some(loss) => {
                self.scatter(&self.g, &self.w, grad);
                loss
            }
            None => f64::NAN,
        }
    }

    /// The weighted NLL `Σ wts[i] NLL(x[i] | c[i])` of the events of `(x,
    /// c)` (one weight each); its gradient is *added* to `grad`. For the
    /// likelihood's acceptance terms, whose events are flow samples with a
    /// weight each (a negative weight adds `|w| log p`).
    pub fn add_weighted(
        &mut self,
        flat: &Tensor,
        x: &[f32],
        c: &[f32],
        wts: &[f32],
        threads: usize,
        grad: &mut [f32],
    ) -> f64 {
        let rows: Vec<i64> = (0..wts.len() as i64).collect();
        match self.run(flat, x, c, &rows, (Some(wts), f64::INFINITY), threads) {
            Some(loss) => {
                let mut mapped = std::mem::take(&mut self.mapped);
                mapped.resize(grad.len(), 0.0);
                self.scatter(&self.g, &self.w, &mut mapped);
                grad.iter_mut().zip(&mapped).for_each(|(a, b)| *a += b);
                self.mapped = mapped;
                loss
            }
            None => f64::NAN,
        }
    }

    /// The (weighted) summed NLL, in chunks on `threads` threads; its
    /// gradient in the combined-weight layout is left in `self.g` and the
    /// combined weights in `self.w`.
    fn run(
        &mut self,
        flat: &Tensor,
        x: &[f32],
        c: &[f32],
        rows: &[i64],
        (wts, ceil): (Option<&[f32]>, f64),
        threads: usize,
    ) -> Option<f64> {
        let n = self.n_params;
        flat.copy_data(&mut self.params, n);
        let params = &self.params;
        let offsets = &self.offsets;
        let plan = &self.plan;
        let get = |name: &str| -> Option<std::borrow::Cow<'_, [f32]>> {
            let &o = offsets.get(name)?;
            let len = flat_len(plan, name)?;
            params.get(o..o + len).map(std::borrow::Cow::Borrowed)
        };
        self.w.resize(plan.len, 0.0);
        plan.weights_into(&get, &mut self.w)?;
        let w = &self.w;
        let n_chunks = rows.len().div_ceil(CHUNK);
        let wr = w;
        while self.chunk_grads.len() < n_chunks {
            self.chunk_grads.push(std::sync::Mutex::new(vec![0f32; plan.len]));
        }
        let pool = &self.chunk_grads;
        // Each chunk accumulates into its own buffer (zeroed first, so the
        // same as a fresh one); the buffers are summed in chunk order.
        let losses = par_chunks(n_chunks, threads, |i| {
            let (a, b) = (i * CHUNK, ((i + 1) * CHUNK).min(rows.len()));
            // Chunk i is the only user of buffer i; a poisoned lock only means
            // another chunk's thread panicked, and the buffer is zeroed anyway.
            let mut g = pool[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.iter_mut().for_each(|v| *v = 0.0);
            train_chunk(plan, wr, x, c, &rows[a..b], (wts.map(|v| &v[a..b]), ceil), &mut g)
        });
        let mut total_g = std::mem::take(&mut self.g);
        total_g.clear();
        total_g.resize(plan.len, 0.0);
        let mut loss = 0f64;
        for (l, g) in losses.iter().zip(pool) {
            loss += l;
            let g = g.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (t, v) in total_g.iter_mut().zip(g.iter()) {
                *t += v;
            }
        }
        self.g = total_g;
        Some(loss)
    }

    /// Maps a gradient of the combined weights `w` to the flat parameter layout.
    fn scatter(&self, g: &[f32], w: &[f32], out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        let l = self.plan.l;
        for y in self.plan.blocks.iter().flatten() {
            let src = &g[y.off..y.off + y.len()];
            if let Some(&o) = self.offsets.get(&y.names.0) {
                for (j, &pj) in y.rows.iter().enumerate() {
                    for (i, &pi) in y.cols.iter().enumerate() {
                        out[o + pj * y.n_in + pi] = src[y.idx(j, i)] * y.mask[j * y.n_in + i];
                    }
                }
            }
            if let Some(&o) = self.offsets.get(&y.names.1) {
                for (j, &pj) in y.rows.iter().enumerate() {
                    out[o + pj] = src[y.a_len() + j];
                }
            }
            if let Some(&o) = y.names.2.as_ref().and_then(|n| self.offsets.get(n)) {
                for (j, &pj) in y.rows.iter().enumerate() {
                    for q in 0..l {
                        out[o + pj * l + q] = src[y.idx(j, y.n_in + q)];
                    }
                }
            }
        }
        if let Some(x) = &self.plan.ext {
            for (name, vals) in x.mix_grads(self.plan.d, g, w) {
                if let Some(&o) = self.offsets.get(name) {
                    out[o..o + vals.len()].copy_from_slice(&vals);
                }
            }
        }
    }

    /// Length of the flat parameter layout.
    pub fn numel(&self) -> usize {
        self.n_params
    }
}

fn flat_len(p: &Plan, name: &str) -> Option<usize> {
    let d = p.d;
    let mix = p.ext.iter().flat_map(|x| &x.mixes).find_map(|m| {
        let i = m.names.iter().position(|n| n == name)?;
        Some(if i < 2 { d * d } else { d })
    });
    mix.or_else(|| {
        p.blocks.iter().flatten().find_map(|y| {
            if name == y.names.0 {
                Some(y.n_out * y.n_in)
            } else if name == y.names.1 {
                Some(y.n_out)
            } else if y.names.2.as_deref() == Some(name) {
                Some(y.n_out * p.l)
            } else {
                None
            }
        })
    })
}

/// The parts of a MADE layer the fast path reads.
#[derive(Debug)]
pub(crate) struct LayerParts<'a> {
    /// Weight `[out, in]` (unmasked parameter).
    pub weight: &'a Tensor,
    /// Mask `[out, in]`.
    pub mask: &'a Tensor,
    /// Label weight `[out, L]`, if any.
    pub cond: Option<&'a Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-event forward that [`log_prob_chunk_impl`] replaced (one
    /// event through a block at a time, [`block_raw`]): the reference for its bits.
    fn log_prob_chunk_ref<const AVX: bool>(p: &Plan, w: &[f32], x: &[f32], c: &[f32], out: &mut [f32]) {
        let (d, l) = (p.d, p.l);
        let mut rec = vec![0f32; p.rec];
        let mut u = vec![0f32; TILE * d];
        let mut mu = vec![0f32; TILE * d];
        let mut tile_buf = vec![0f32; 3 * TILE * d];
        let cst = 0.5 * d as f32 * LOG_2PI as f32;
        let tl = p.tail;
        for (ti, o_tile) in out.chunks_mut(TILE).enumerate() {
            let (te, base) = (o_tile.len(), ti * TILE);
            let (tb, rest) = tile_buf.split_at_mut(TILE * d);
            let (sb, eb) = rest.split_at_mut(TILE * d);
            u[..te * d].copy_from_slice(&x[base * d..(base + te) * d]);
            let mut s_sum = [0f32; TILE];
            for layers in &p.blocks {
                for e in 0..te {
                    let ce = &c[(base + e) * l..(base + e + 1) * l];
                    block_raw::<AVX>(p, layers, w, &u[e * d..(e + 1) * d], ce, &mut rec);
                    tb[e * d..(e + 1) * d].copy_from_slice(&rec[tl..tl + d]);
                    mu[e * d..(e + 1) * d].copy_from_slice(&rec[tl + 3 * d..tl + 4 * d]);
                }
                finish_tile::<AVX>(p.bound, &mut tb[..te * d], &mut sb[..te * d], &mut eb[..te * d]);
                for (e, se) in s_sum.iter_mut().enumerate().take(te) {
                    let mut bs = 0f32;
                    for j in 0..d {
                        let i = e * d + j;
                        u[i] = (u[i] - mu[i]) * eb[i];
                        bs += sb[i];
                    }
                    *se += bs;
                }
            }
            for (e, o) in o_tile.iter_mut().enumerate() {
                let sq: f32 = u[e * d..(e + 1) * d].iter().map(|v| v * v).sum();
                *o = -0.5 * sq - cst - s_sum[e];
            }
        }
    }

    /// The tiled log-prob (AVX2 and portable) gives the bits of the
    /// per-event forward, for layer widths that are and are not multiples of
    /// 8, with and without labels or hidden layers, and a partial last tile.
    #[test]
    fn tiled_log_prob_gives_the_bits_of_the_per_event_forward() {
        use crate::flow::{MafConfig, Permutation};
        let configs: Vec<(i64, i64, Vec<i64>, Activation)> = vec![
            (2, 2, vec![128], Activation::Relu),
            (3, 2, vec![16, 12], Activation::Tanh),
            (4, 0, vec![10], Activation::Elu),
            (2, 3, vec![], Activation::Silu),
            (1, 1, vec![8], Activation::Relu),
            (5, 1, vec![20, 20, 20], Activation::Silu),
        ];
        for (i, (d, l, hidden, act)) in configs.into_iter().enumerate() {
            let _rng = crate::rng::seeded(40 + i as u64);
            let cfg = MafConfig {
                features: d,
                context: l,
                n_blocks: 3,
                hidden,
                activation: act,
                permutation: Permutation::Random,
                permutation_seed: 7,
                log_scale_bound: 3.0,
                transform: crate::flow::Transform::Affine,
                spline_bins: 8,
                spline_bound: 5.0,
            };
            let flow = Maf::new(cfg, Device::Cpu).unwrap();
            tch::no_grad(|| {
                for (_, mut v) in flow.var_store().variables() {
                    let _ = v.g_add_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.3));
                }
            });
            let fast = FastMaf::new(&flow).unwrap();
            let w = fast.weights_from_flow(&flow).unwrap();
            let n = 37;
            let x = host(&(Tensor::randn([n as i64, d], (Kind::Float, Device::Cpu)) * 2.0));
            let c = host(&Tensor::randn([n as i64, l], (Kind::Float, Device::Cpu)));
            let mut want = vec![0f32; n];
            log_prob_chunk_ref::<false>(&fast.plan, &w, &x, &c, &mut want);
            let mut got = vec![0f32; n];
            log_prob_chunk_impl::<false>(&fast.plan, &w, &x, &c, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "config {i}, portable");
            let mut got = vec![0f32; n];
            log_prob_chunk(&fast.plan, &w, &x, &c, &mut got);
            assert_eq!(bits(&got), bits(&want), "config {i}, dispatched (AVX2 where available)");
            #[cfg(target_arch = "x86_64")]
            {
                crate::flow::vmath::NARROW.set(true);
                let mut got = vec![0f32; n];
                log_prob_chunk(&fast.plan, &w, &x, &c, &mut got);
                crate::flow::vmath::NARROW.set(false);
                assert_eq!(bits(&got), bits(&want), "config {i}, dispatched, 256-bit kernels");
            }
            assert!(want.iter().all(|v| v.is_finite()), "config {i}");
        }
    }

    /// The backward's tile kernels: AVX2 gives the bits of the portable loops
    /// (one axpy per event / per output), for widths that are and are not
    /// multiples of 8 and with dead outputs skipped.
    #[test]
    fn avx2_backward_tile_kernels_give_the_bits_of_the_portable_ones() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let val = |i: usize, m: usize| ((i * m % 101) as f32 - 50.0) * 0.0137;
            // 256-bit kernels, then 512-bit ones where the CPU has them.
            for (narrow, n_in, n_out, k_in) in [true, false].into_iter().flat_map(|nw| {
                [
                    (128usize, 50usize, 130usize),
                    (128, 50, 128),
                    (13, 9, 13),
                    (8, 3, 10),
                    (1, 1, 1),
                    (40, 33, 41),
                    (40, 33, 40),
                ]
                .map(|t| (nw, t.0, t.1, t.2))
            }) {
                crate::flow::vmath::NARROW.set(narrow);
                let stride = k_in.max(n_out) + 3;
                let src: Vec<f32> = (0..TILE * stride).map(|i| val(i, 37)).collect();
                let coef: [f32; TILE] = std::array::from_fn(|e| val(e, 53) * 3.1);
                let row0: Vec<f32> = (0..k_in).map(|i| val(i, 71)).collect();
                let (mut want, mut got) = (row0.clone(), row0);
                axpy_tile::<false>(&mut want, &coef, &src, stride);
                axpy_tile::<true>(&mut got, &coef, &src, stride);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "axpy_tile {n_in} {n_out} {k_in}");
                // Rows with 1 in 3 masked out entirely and the rest a growing prefix.
                let mask = (0..n_out * n_in)
                    .map(|q| {
                        let (j, i) = (q / n_in, q % n_in);
                        if j % 3 != 1 && i <= (j * 5) % n_in.max(1) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f32>>();
                let (rows, cols) = ((0..n_out).collect(), (0..n_in).collect());
                let names = (String::new(), String::new(), None);
                let y = Layer::new(n_in, k_in - n_in, k_in > n_in, n_out, false, mask.clone(), rows, cols, names);
                // The weights carry the mask, as Plan::weights builds them;
                // past a row's span (without labels: the last nonzero, rounded up
                // to 8) they are NaN, which no kernel may read.
                let a: Vec<f32> = (0..n_out * k_in)
                    .map(|q| {
                        let (j, i) = (q / k_in, q % k_in);
                        if i >= y.span[j] {
                            f32::NAN
                        } else if i < n_in && mask[j * n_in + i] == 0.0 {
                            0.0
                        } else {
                            val(q, 29)
                        }
                    })
                    .collect();
                let (mut want, mut got) = (vec![7f32; TILE * stride], vec![7f32; TILE * stride]);
                dz_tile::<false>(&y, &a, &src, &mut want, stride);
                dz_tile::<true>(&y, &a, &src, &mut got, stride);
                assert_eq!(bits(&got), bits(&want), "dz_tile {n_in} {n_out} {k_in} narrow {narrow}");
                assert!(want.iter().any(|v| *v != 7.0 && *v != 0.0), "dz_tile wrote nothing");
                // The weight-gradient update, whole layer at once, against axpy_tile per row.
                let g0: Vec<f32> = (0..n_out * k_in).map(|q| val(q, 43)).collect();
                let (mut want, mut got) = (g0.clone(), g0);
                let dyv: Vec<f32> = (0..TILE * stride).map(|i| val(i, 59)).collect();
                for j in (0..n_out).filter(|&j| y.live[j]) {
                    let coef: [f32; TILE] = std::array::from_fn(|e| dyv[e * stride + j]);
                    axpy_tile::<false>(&mut want[j * k_in..j * k_in + y.span[j]], &coef, &src, stride);
                }
                grad_rows_tile::<true>(&y, &mut got, &dyv, stride, &src, stride);
                assert_eq!(bits(&got), bits(&want), "grad_rows_tile {n_in} {n_out} {k_in} narrow {narrow}");
                // The input-major forward (the same row kernel with a bias).
                let y = Layer::new(
                    k_in,
                    0,
                    false,
                    n_out,
                    true,
                    vec![1.0; n_out * k_in],
                    (0..n_out).collect(),
                    (0..k_in).collect(),
                    (String::new(), String::new(), None),
                );
                let wi: Vec<f32> = (0..k_in * n_out + n_out).map(|q| val(q, 31)).collect();
                let (mut want, mut got) = (vec![7f32; TILE * stride], vec![7f32; TILE * stride]);
                layer_forward_tile::<false>(&y, &wi, &src, stride, &mut want, stride);
                layer_forward_tile::<true>(&y, &wi, &src, stride, &mut got, stride);
                assert_eq!(bits(&got), bits(&want), "input-major forward {k_in} {n_out} narrow {narrow}");
            }
            crate::flow::vmath::NARROW.set(false);
        }
    }

    /// The output-major forward kernels (256-bit, and 512-bit where the CPU
    /// has AVX-512F) give per output and event the bits of the portable
    /// [`layer_row`], for all rows and for a subset, with spans that end
    /// on and off a block of 8, dead rows, and labels.
    #[test]
    fn output_major_tile_kernels_give_the_bits_of_the_portable_rows() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let val = |i: usize, m: usize| ((i * m % 101) as f32 - 50.0) * 0.0137;
            for (n_in, l, n_out) in [(128usize, 0usize, 150usize), (128, 2, 61), (13, 3, 9), (40, 0, 33), (3, 1, 5)] {
                let k_in = n_in + l;
                let mask = (0..n_out * n_in)
                    .map(|q| {
                        let (j, i) = (q / n_in, q % n_in);
                        if j % 5 != 1 && i < (j * 7) % (n_in + 1) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f32>>();
                let (rows, cols) = ((0..n_out).collect(), (0..n_in).collect());
                let names = (String::new(), String::new(), None);
                let y = Layer::new(n_in, l, l > 0, n_out, false, mask.clone(), rows, cols, names);
                let w: Vec<f32> = (0..n_out * k_in + n_out)
                    .map(|q| {
                        let masked = q < n_out * k_in && q % k_in < n_in && mask[q / k_in * n_in + q % k_in] == 0.0;
                        if masked {
                            0.0
                        } else {
                            val(q, 29)
                        }
                    })
                    .collect();
                let zs = k_in + 5;
                let z: Vec<f32> = (0..TILE * zs).map(|i| val(i, 37) * 2.3).collect();
                let os = n_out + 2;
                let want: Vec<bool> = (0..n_out).map(|j| j % 3 == 0).collect();
                let mut reference = vec![7f32; TILE * os];
                for e in 0..TILE {
                    for j in 0..n_out {
                        reference[e * os + j] = layer_row::<false>(&y, &w, &z[e * zs..e * zs + k_in], j);
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let only = |v: &[f32], want: &[bool]| -> Vec<u32> {
                    (0..TILE * os).map(|q| if q % os < n_out && want[q % os] { v[q].to_bits() } else { 0 }).collect()
                };
                type Kernel = unsafe fn(&Layer, &[f32], &[f32], usize, &mut [f32], usize, Option<&[bool]>);
                let mut kernels: Vec<(&str, Kernel)> = vec![("ymm", dots_tile_ymm)];
                if std::is_x86_feature_detected!("avx512f") {
                    kernels.push(("avx512", dots_tile_avx512));
                }
                for (name, f) in kernels {
                    let mut got = vec![7f32; TILE * os];
                    // SAFETY: the features were detected above; the buffers hold the tile.
                    unsafe { f(&y, &w, &z, zs, &mut got, os, None) };
                    assert_eq!(bits(&got), bits(&reference), "{name}, all rows, {n_in} {l} {n_out}");
                    let mut got = vec![7f32; TILE * os];
                    unsafe { f(&y, &w, &z, zs, &mut got, os, Some(&want)) };
                    assert_eq!(only(&got, &want), only(&reference, &want), "{name}, some rows, {n_in} {l} {n_out}");
                    let untouched = (0..TILE * os).all(|q| (q % os < n_out && want[q % os]) || got[q] == 7.0);
                    assert!(untouched, "{name} wrote rows it was not asked for");
                }
            }
        }
    }

    #[test]
    fn avx2_dot_gives_the_bits_of_the_portable_dot() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            for n in [0usize, 1, 7, 8, 9, 128, 131] {
                let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.0137).collect();
                let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.731).collect();
                // SAFETY: AVX2 detected above.
                let v = unsafe { dot_avx2(&a, &b) };
                assert_eq!(v.to_bits(), dot_scalar(&a, &b).to_bits(), "n = {n}");
            }
        }
    }
}
