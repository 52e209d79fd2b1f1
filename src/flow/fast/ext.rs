//! The fast CPU path for spline blocks ([`crate::flow::spline`]) and the
//! learned LU mixing between blocks ([`crate::flow::lu`]): the default
//! network. One event at a time through every block, forward then backward,
//! reusing the MADE layers of the affine path; the spline's knots, its piece
//! and the softmax and softplus values the backward needs are kept in the
//! event's record, so the backward computes no transcendental function.
//!
//! The gradient of the spline is written out by hand from the formulas of
//! Durkan et al. (2019) as [`crate::flow::spline`] evaluates them (same
//! clamping and the identity outside `[-B, B]`); `tests/fast_grad.rs`
//! checks it, log-prob and the inverse against autograd.

use super::{layer_row, made_backward, made_forward, pass_hidden, Layer, Plan, LOG_2PI};
use crate::flow::spline::{MIN_BIN, MIN_DERIVATIVE};
use crate::flow::vmath::{exp_in_place, exp_scalar, tanh_in_place, tanh_scalar};

/// Largest number of spline bins the fixed-size scratch arrays hold.
const MAX_BINS: usize = 64;

/// The extension of a [`Plan`] for spline blocks and learned mixing.
#[derive(Debug, Clone)]
pub(super) struct Ext {
    /// Shift and log-scale come first in each block's outputs.
    affine: bool,
    /// Spline bins `K` and half-width `B`, if the blocks have splines.
    spline: Option<(usize, f32)>,
    /// Raw outputs per feature.
    params: usize,
    /// The learned maps between blocks (block `k`'s output goes through `mixes[k]`).
    pub(super) mixes: Vec<Mix>,
    /// Offsets in a block's record (after the MADE's part, which ends at `Plan::tail`).
    raw: usize,
    at: usize,
    ae: usize,
    a: usize,
    sc: usize,
    yo: usize,
    out: usize,
}

/// One learned map `z = W y + b`; in the weight buffer at `off`: `W` (`D×D`,
/// row-major), `b`, `Σ log_diag`, then `L` and `U` for the inverse. The
/// gradient buffer has the same layout (only `W`, `b` and the sum are used).
#[derive(Debug, Clone)]
pub(super) struct Mix {
    pub(super) off: usize,
    /// Variable names: lower, upper, log_diag, bias.
    pub(super) names: [String; 4],
}

/// Floats of one mix in the weight buffer.
pub(super) fn mix_len(d: usize) -> usize {
    3 * d * d + d + 1
}

/// Floats cached per feature of a spline: the two softmaxes, the sigmoids
/// of the derivative inputs, then `x0, w, y0, h, d0, d1, t, t inside [0, 1],
/// inside [-B, B], bin`.
fn cache_len(k: usize) -> usize {
    3 * k - 1 + 10
}

impl Ext {
    /// The extension for blocks with `params` raw outputs per feature, the
    /// given spline and `n_mix` learned maps; `tail` is where the MADE's part
    /// of a block record ends. Returns it and the record length.
    pub(super) fn new(
        d: usize,
        tail: usize,
        params: usize,
        affine: bool,
        spline: Option<(usize, f32)>,
        mixes: Vec<Mix>,
    ) -> Option<(Ext, usize)> {
        if let Some((k, _)) = spline {
            if !(2..=MAX_BINS).contains(&k) {
                return None;
            }
        }
        let sc_len = spline.map_or(0, |(k, _)| cache_len(k));
        let raw = tail;
        let at = raw + params * d;
        let ae = at + d;
        let a = ae + d;
        let sc = a + d;
        let yo = sc + d * sc_len;
        let out = yo + d;
        let rec = out + d;
        Some((Ext { affine, spline, params, mixes, raw, at, ae, a, sc, yo, out }, rec))
    }

    /// Writes the effective weights of the maps into `w`.
    pub(super) fn mix_weights(&self, d: usize, get: &dyn Fn(&str) -> Option<Vec<f32>>, w: &mut [f32]) -> Option<()> {
        for m in &self.mixes {
            let lower = get(&m.names[0])?;
            let upper = get(&m.names[1])?;
            let log_diag = get(&m.names[2])?;
            let bias = get(&m.names[3])?;
            if lower.len() < d * d || upper.len() < d * d || log_diag.len() < d || bias.len() < d {
                return None;
            }
            let dst = &mut w[m.off..m.off + mix_len(d)];
            let (wm, rest) = dst.split_at_mut(d * d);
            let (b, rest) = rest.split_at_mut(d);
            let (ld, rest) = rest.split_at_mut(1);
            let (l, u) = rest.split_at_mut(d * d);
            for i in 0..d {
                for j in 0..d {
                    l[i * d + j] = match i.cmp(&j) {
                        std::cmp::Ordering::Greater => lower[i * d + j],
                        std::cmp::Ordering::Equal => 1.0,
                        std::cmp::Ordering::Less => 0.0,
                    };
                    u[i * d + j] = match i.cmp(&j) {
                        std::cmp::Ordering::Less => upper[i * d + j],
                        std::cmp::Ordering::Equal => log_diag[i].exp(),
                        std::cmp::Ordering::Greater => 0.0,
                    };
                }
            }
            // W = P L U: row i of W is row D-1-i of L U.
            for i in 0..d {
                let r = d - 1 - i;
                for j in 0..d {
                    let mut acc = 0f32;
                    for q in 0..d {
                        acc += l[r * d + q] * u[q * d + j];
                    }
                    wm[i * d + j] = acc;
                }
            }
            b.copy_from_slice(&bias[..d]);
            ld[0] = log_diag[..d].iter().sum();
        }
        Some(())
    }

    /// The gradients of the map variables from the gradient `g` of the
    /// effective weights (`w`: the weights they were taken at), as
    /// `(name, values)` in the variables' layouts.
    pub(super) fn mix_grads(&self, d: usize, g: &[f32], w: &[f32]) -> Vec<(&str, Vec<f32>)> {
        let mut out = Vec::with_capacity(4 * self.mixes.len());
        for m in &self.mixes {
            let gm = &g[m.off..m.off + mix_len(d)];
            let wm = &w[m.off..m.off + mix_len(d)];
            let l = &wm[d * d + d + 1..2 * d * d + d + 1];
            let u = &wm[2 * d * d + d + 1..];
            // dM = Pᵀ dW (rows reversed), dL = dM Uᵀ, dU = Lᵀ dM.
            let dm = |i: usize, j: usize| gm[(d - 1 - i) * d + j];
            let mut lower = vec![0f32; d * d];
            let mut upper = vec![0f32; d * d];
            let mut log_diag = vec![0f32; d];
            for i in 0..d {
                for j in 0..d {
                    if i > j {
                        lower[i * d + j] = (0..d).map(|q| dm(i, q) * u[j * d + q]).sum();
                    } else {
                        let du: f32 = (0..d).map(|q| l[q * d + i] * dm(q, j)).sum();
                        if i < j {
                            upper[i * d + j] = du;
                        } else {
                            // d/d log_diag of exp(log_diag), and the log-determinant term.
                            log_diag[i] = du * u[i * d + i] + gm[d * d + d];
                        }
                    }
                }
            }
            let bias = gm[d * d..d * d + d].to_vec();
            out.push((m.names[0].as_str(), lower));
            out.push((m.names[1].as_str(), upper));
            out.push((m.names[2].as_str(), log_diag));
            out.push((m.names[3].as_str(), bias));
        }
        out
    }
}

/// Knots of one feature's spline from its raw parameters `r` (`K` widths, `K`
/// heights, `K - 1` derivatives): positions `xs`, `ys` and derivatives `ds`
/// (`K + 1` each), and the softmaxes and sigmoids the backward needs
/// (`sm`: `2K` values, `sig`: `K - 1`).
#[inline(always)]
fn knots<const AVX: bool>(
    k: usize,
    bound: f32,
    r: &[f32],
    xs: &mut [f32],
    ys: &mut [f32],
    ds: &mut [f32],
    sm: &mut [f32],
    sig: &mut [f32],
) {
    let c0 = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln() as f32;
    let mut e = [0f32; 3 * MAX_BINS];
    let n = 3 * k - 1;
    let mw = r[..k].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mh = r[k..2 * k].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for q in 0..k {
        e[q] = r[q] - mw;
        e[k + q] = r[k + q] - mh;
    }
    for q in 0..k - 1 {
        e[2 * k + q] = r[2 * k + q] + c0;
    }
    exp_in_place::<AVX>(&mut e[..n]);
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let (min_bin, two_b) = (MIN_BIN as f32, 2.0 * bound);
    for (half, pos) in [(0, &mut *xs), (k, &mut *ys)] {
        let sum: f32 = e[half..half + k].iter().sum();
        pos[0] = -bound;
        let mut cum = 0f32;
        for q in 0..k {
            let s = e[half + q] / sum;
            sm[half + q] = s;
            cum += s * scale + min_bin;
            if q + 1 < k {
                pos[q + 1] = cum * two_b - bound;
            }
        }
        pos[k] = bound;
    }
    ds[0] = 1.0;
    ds[k] = 1.0;
    for q in 0..k - 1 {
        let v = r[2 * k + q] + c0;
        // softplus with libtorch's threshold: the identity above 20.
        let (sp, sg) = if v > 20.0 { (v, 1.0) } else { (e[2 * k + q].ln_1p(), e[2 * k + q] / (1.0 + e[2 * k + q])) };
        ds[q + 1] = sp + MIN_DERIVATIVE as f32;
        sig[q] = sg;
    }
}

/// The piece containing `v` along the knots `pos` (`0..K`).
#[inline(always)]
fn bin(pos: &[f32], k: usize, v: f32) -> usize {
    pos[1..k].iter().filter(|&&p| v >= p).count()
}

/// `log dy/dx` of a piece at the relative position `t`.
#[inline(always)]
fn log_slope(s: f32, d0: f32, d1: f32, t: f32) -> f32 {
    let tt = t * (1.0 - t);
    let one_t = 1.0 - t;
    let den = s + (d0 + d1 - s * 2.0) * tt;
    let q = d1 * t * t + s * tt * 2.0 + d0 * one_t * one_t;
    (s * s * q).ln() - den.ln() * 2.0
}

/// The spline of one feature at `a` (data → base): `(y, log dy/da)`, caching
/// what [`spline_backward`] needs in `sc`.
#[inline(always)]
fn spline_forward<const AVX: bool>(k: usize, bound: f32, r: &[f32], a: f32, sc: &mut [f32]) -> (f32, f32) {
    let (mut xs, mut ys, mut ds) = ([0f32; MAX_BINS + 1], [0f32; MAX_BINS + 1], [0f32; MAX_BINS + 1]);
    let (sm, rest) = sc.split_at_mut(2 * k);
    let (sig, piece) = rest.split_at_mut(k - 1);
    knots::<AVX>(k, bound, r, &mut xs, &mut ys, &mut ds, sm, sig);
    let inside = a >= -bound && a <= bound;
    let b = bin(&xs, k, a.clamp(-bound, bound));
    let (x0, w, y0, h, d0, d1) = (xs[b], xs[b + 1] - xs[b], ys[b], ys[b + 1] - ys[b], ds[b], ds[b + 1]);
    let t_raw = (a.clamp(-bound, bound) - x0) / w;
    let t = t_raw.clamp(0.0, 1.0);
    let t_in = (0.0..=1.0).contains(&t_raw);
    piece[..10].copy_from_slice(&[
        x0,
        w,
        y0,
        h,
        d0,
        d1,
        t,
        f32::from(u8::from(t_in)),
        f32::from(u8::from(inside)),
        b as f32,
    ]);
    if !inside {
        return (a, 0.0);
    }
    let s = h / w;
    let tt = t * (1.0 - t);
    let num = h * (s * t * t + d0 * tt);
    let den = s + (d0 + d1 - s * 2.0) * tt;
    (y0 + num / den, log_slope(s, d0, d1, t))
}

/// Backward of [`spline_forward`] for one feature: `gy` = dL/dy and `gl` =
/// dL/d(log slope) give dL/d(raw parameters) in `dr` (`3K - 1`) and dL/da,
/// which it returns.
#[inline(always)]
fn spline_backward(k: usize, bound: f32, sc: &[f32], gy: f32, gl: f32, dr: &mut [f32]) -> f32 {
    let (sm, rest) = sc.split_at(2 * k);
    let (sig, piece) = rest.split_at(k - 1);
    dr[..3 * k - 1].iter_mut().for_each(|v| *v = 0.0);
    let [_x0, w, _y0, h, d0, d1, t, t_in, inside, b] = piece[..10] else { return gy };
    if inside == 0.0 {
        return gy;
    }
    let b = b as usize;
    let s = h / w;
    let tt = t * (1.0 - t);
    let one_t = 1.0 - t;
    let dt_tt = 1.0 - 2.0 * t;
    let c = d0 + d1 - 2.0 * s;
    let sn = s * t * t + d0 * tt;
    let den = s + c * tt;
    let q = d1 * t * t + 2.0 * s * tt + d0 * one_t * one_t;
    let den2 = den * den;
    // y = y0 + h sn / den, log slope = 2 log s + log q - 2 log den.
    let dy_dt = h * ((2.0 * s * t + d0 * dt_tt) * den - sn * c * dt_tt) / den2;
    let dy_ds = h * (t * t * den - sn * (1.0 - 2.0 * tt)) / den2;
    let dy_dd0 = h * (tt * den - sn * tt) / den2;
    let dy_dd1 = -h * sn * tt / den2;
    let dl_dt = 2.0 * (d1 * t + s * dt_tt - d0 * one_t) / q - 2.0 * c * dt_tt / den;
    let dl_ds = 2.0 / s + 2.0 * tt / q - 2.0 * (1.0 - 2.0 * tt) / den;
    let dl_dd0 = one_t * one_t / q - 2.0 * tt / den;
    let dl_dd1 = t * t / q - 2.0 * tt / den;
    let g_t = (gy * dy_dt + gl * dl_dt) * t_in;
    let g_s = gy * dy_ds + gl * dl_ds;
    let g_d0 = gy * dy_dd0 + gl * dl_dd0;
    let g_d1 = gy * dy_dd1 + gl * dl_dd1;
    // s = h / w, t = (a - x0) / w.
    let g_h = gy * sn / den + g_s / w;
    let g_w = -g_s * h / (w * w) - g_t * t / w;
    let g_x0 = -g_t / w;
    let g_y0 = gy;
    // Knots: x0 = X_b, w = X_{b+1} - X_b (and y alike); the end knots are constants.
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let two_b = 2.0 * bound;
    for (half, g_lo, g_hi) in [(0, g_x0 - g_w, g_w), (k, g_y0 - g_h, g_h)] {
        // X_i = -B + 2B Σ_{q<i} (sm_q scale + min) for 0 < i < K: dL/dsm_q = 2B scale Σ_{i>q} dL/dX_i.
        let dpos = |i: usize| -> f32 {
            let mut v = 0.0;
            if i == b && i > 0 && i < k {
                v += g_lo;
            }
            if i == b + 1 && i < k {
                v += g_hi;
            }
            v
        };
        let mut acc = 0f32;
        let mut dsm = [0f32; MAX_BINS];
        for qi in (0..k).rev() {
            if qi + 1 < k {
                acc += dpos(qi + 1);
            }
            dsm[qi] = acc * two_b * scale;
        }
        let dot: f32 = (0..k).map(|qi| sm[half + qi] * dsm[qi]).sum();
        for qi in 0..k {
            dr[half + qi] = sm[half + qi] * (dsm[qi] - dot);
        }
    }
    // Interior derivatives D_i = softplus(r + c0) + min, i = 1..K-1.
    if b > 0 {
        dr[2 * k + b - 1] += g_d0 * sig[b - 1];
    }
    if b + 1 < k {
        dr[2 * k + b] += g_d1 * sig[b];
    }
    g_t / w
}

/// The inverse of one feature's spline at `y` (base → data): `(x, log dy/dx)`.
#[inline(always)]
fn spline_inverse<const AVX: bool>(k: usize, bound: f32, r: &[f32], y: f32) -> (f32, f32) {
    if !(y >= -bound && y <= bound) {
        return (y, 0.0);
    }
    let (mut xs, mut ys, mut ds) = ([0f32; MAX_BINS + 1], [0f32; MAX_BINS + 1], [0f32; MAX_BINS + 1]);
    let mut sm = [0f32; 2 * MAX_BINS];
    let mut sig = [0f32; MAX_BINS];
    knots::<AVX>(k, bound, r, &mut xs, &mut ys, &mut ds, &mut sm, &mut sig);
    let b = bin(&ys, k, y);
    let (x0, w, y0, h, d0, d1) = (xs[b], xs[b + 1] - xs[b], ys[b], ys[b + 1] - ys[b], ds[b], ds[b + 1]);
    let s = h / w;
    let dy = y - y0;
    let sum_d = d0 + d1 - s * 2.0;
    let qa = h * (s - d0) + dy * sum_d;
    let qb = h * d0 - dy * sum_d;
    let qc = -(s * dy);
    let disc = (qb * qb - qa * qc * 4.0).max(0.0);
    let t = ((qc * 2.0) / (-qb - disc.sqrt())).clamp(0.0, 1.0);
    (t * w + x0, log_slope(s, d0, d1, t))
}

/// The spline parameters of feature `j` from a block's raw outputs (parameter
/// by parameter, each for every feature), skipping the first `skip`.
#[inline(always)]
fn gather(raw: &[f32], d: usize, j: usize, skip: usize, n: usize, r: &mut [f32]) {
    for (q, v) in r[..n].iter_mut().enumerate() {
        *v = raw[(skip + q) * d + j];
    }
}

/// One event through every block (data → base), recording into `recs`
/// (`nb` block records). Returns `log |det du/dx|`; `u` is the last block
/// record's output.
#[inline(always)]
fn event_forward<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32], u0: &[f32], c: &[f32], recs: &mut [f32]) -> f32 {
    let d = p.d;
    let skip = if x.affine { 2 } else { 0 };
    let mut ld = 0f32;
    let mut r = [0f32; 3 * MAX_BINS];
    for (k, layers) in p.blocks.iter().enumerate() {
        let (before, this) = recs.split_at_mut(k * p.rec);
        let this = &mut this[..p.rec];
        let u: &[f32] = if k == 0 { u0 } else { &before[(k - 1) * p.rec + x.out..k * p.rec] };
        let (head, tail) = this.split_at_mut(x.raw);
        let tail = &mut tail[..p.rec - x.raw];
        made_forward::<AVX>(p, layers, w, u, c, head, &mut tail[..x.params * d]);
        let (raw, rest) = tail.split_at_mut(x.params * d);
        let (at, rest) = rest.split_at_mut(d);
        let (ae, rest) = rest.split_at_mut(d);
        let (a, rest) = rest.split_at_mut(d);
        let (sc, rest) = rest.split_at_mut(x.yo - x.sc);
        let (yo, out) = rest.split_at_mut(d);
        if x.affine {
            for j in 0..d {
                at[j] = raw[d + j] / p.bound;
            }
            tanh_in_place::<AVX>(at);
            for j in 0..d {
                ae[j] = -(at[j] * p.bound);
            }
            exp_in_place::<AVX>(ae);
            for j in 0..d {
                a[j] = (u[j] - raw[j]) * ae[j];
                ld -= at[j] * p.bound;
            }
        } else {
            a.copy_from_slice(u);
        }
        match x.spline {
            Some((nk, bound)) => {
                let (n, cl) = (3 * nk - 1, cache_len(nk));
                for j in 0..d {
                    gather(raw, d, j, skip, n, &mut r);
                    let (y, ls) = spline_forward::<AVX>(nk, bound, &r[..n], a[j], &mut sc[j * cl..(j + 1) * cl]);
                    yo[j] = y;
                    ld += ls;
                }
            }
            None => yo.copy_from_slice(a),
        }
        match x.mixes.get(k) {
            Some(m) => {
                let wm = &w[m.off..m.off + mix_len(d)];
                for (i, o) in out.iter_mut().enumerate() {
                    let mut acc = wm[d * d + i];
                    for (j, yj) in yo.iter().enumerate() {
                        acc += wm[i * d + j] * yj;
                    }
                    *o = acc;
                }
                ld += wm[d * d + d];
            }
            None => out.copy_from_slice(yo),
        }
    }
    ld
}

/// Forward and backward of `rows` events, weighted by `wts` if given (see
/// [`super::train_chunk_impl`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn train_chunk<const AVX: bool>(
    p: &Plan,
    x: &Ext,
    w: &[f32],
    xd: &[f32],
    c: &[f32],
    rows: &[i64],
    wts: Option<&[f32]>,
    grad: &mut [f32],
) -> f64 {
    let (d, l) = (p.d, p.l);
    let nb = p.blocks.len();
    let mut recs = vec![0f32; nb * p.rec];
    let maxw = p.blocks[0].iter().map(|y| y.n_out.max(y.k_in)).max().unwrap_or(0).max(x.params * d);
    let (mut dy, mut dz) = (vec![0f32; maxw], vec![0f32; maxw]);
    let mut g = vec![0f32; d];
    let mut gn = vec![0f32; d];
    let mut dr = [0f32; 3 * MAX_BINS];
    let cst = 0.5 * d as f64 * LOG_2PI;
    let skip = if x.affine { 2 } else { 0 };
    let mut total = 0f64;
    for (i, &row) in rows.iter().enumerate() {
        let row = row as usize;
        let wt = wts.map_or(1.0, |v| v[i]);
        let ld = event_forward::<AVX>(p, x, w, &xd[row * d..(row + 1) * d], &c[row * l..(row + 1) * l], &mut recs);
        let uk = &recs[(nb - 1) * p.rec + x.out..nb * p.rec];
        let sq: f32 = uk.iter().map(|v| v * v).sum();
        let nll = f64::from(0.5 * sq) - f64::from(ld) + cst;
        total += if wts.is_some() { nll * f64::from(wt) } else { nll };
        g.iter_mut().zip(uk).for_each(|(g, u)| *g = u * wt);
        for (k, layers) in p.blocks.iter().enumerate().rev() {
            let rec = &recs[k * p.rec..(k + 1) * p.rec];
            if let Some(m) = x.mixes.get(k) {
                let wm = &w[m.off..m.off + mix_len(d)];
                let gm = &mut grad[m.off..m.off + mix_len(d)];
                let yo = &rec[x.yo..x.yo + d];
                for i in 0..d {
                    for j in 0..d {
                        gm[i * d + j] += g[i] * yo[j];
                    }
                    gm[d * d + i] += g[i];
                }
                gm[d * d + d] -= wt;
                for (j, v) in gn.iter_mut().enumerate() {
                    *v = (0..d).map(|i| wm[i * d + j] * g[i]).sum();
                }
                g.copy_from_slice(&gn);
            }
            dy[..x.params * d].iter_mut().for_each(|v| *v = 0.0);
            if let Some((nk, bound)) = x.spline {
                let (n, cl) = (3 * nk - 1, cache_len(nk));
                for j in 0..d {
                    let sc = &rec[x.sc + j * cl..x.sc + (j + 1) * cl];
                    g[j] = spline_backward(nk, bound, sc, g[j], -wt, &mut dr);
                    for q in 0..n {
                        dy[(skip + q) * d + j] = dr[q];
                    }
                }
            }
            if x.affine {
                let (t, e, a) = (&rec[x.at..x.at + d], &rec[x.ae..x.ae + d], &rec[x.a..x.a + d]);
                for j in 0..d {
                    let ds = wt - g[j] * a[j];
                    dy[j] = -g[j] * e[j];
                    dy[d + j] = ds * (1.0 - t[j] * t[j]);
                    g[j] *= e[j];
                }
            }
            made_backward::<AVX>(p, layers, w, grad, rec, &mut dy, &mut dz, x.params * d, &mut g);
        }
    }
    total
}

/// `log p(x | c)` of the events of `xd` into `out`.
#[inline(always)]
pub(super) fn log_prob_chunk<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32], xd: &[f32], c: &[f32], out: &mut [f32]) {
    let (d, l) = (p.d, p.l);
    let nb = p.blocks.len();
    let mut recs = vec![0f32; nb * p.rec];
    let cst = 0.5 * d as f32 * LOG_2PI as f32;
    for (e, o) in out.iter_mut().enumerate() {
        let ld = event_forward::<AVX>(p, x, w, &xd[e * d..(e + 1) * d], &c[e * l..(e + 1) * l], &mut recs);
        let uk = &recs[(nb - 1) * p.rec + x.out..nb * p.rec];
        let sq: f32 = uk.iter().map(|v| v * v).sum();
        *o = -0.5 * sq - cst + ld;
    }
}

/// Base → data for the events of `us` into `xs`, and `log |det du/dx|` into `ld`.
#[inline(always)]
pub(super) fn inverse_chunk<const AVX: bool>(
    p: &Plan,
    x: &Ext,
    w: &[f32],
    us: &[f32],
    c: &[f32],
    xs: &mut [f32],
    ld: &mut [f32],
) {
    let (d, l) = (p.d, p.l);
    let skip = if x.affine { 2 } else { 0 };
    let mut rec = vec![0f32; p.rec];
    let (mut y, mut xk, mut lds) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
    let mut v = vec![0f32; d];
    let mut raw = vec![0f32; x.params];
    for (e, lde) in ld.iter_mut().enumerate() {
        let ce = &c[e * l..(e + 1) * l];
        y.copy_from_slice(&us[e * d..(e + 1) * d]);
        let mut logdet = 0f32;
        for (k, (layers, passes)) in p.blocks.iter().zip(&p.passes).enumerate().rev() {
            if let Some(m) = x.mixes.get(k) {
                let wm = &w[m.off..m.off + mix_len(d)];
                let (b, ldsum) = (&wm[d * d..d * d + d], wm[d * d + d]);
                let lm = &wm[d * d + d + 1..2 * d * d + d + 1];
                let um = &wm[2 * d * d + d + 1..];
                // L U x = Pᵀ (z - b): forward then back substitution.
                for i in 0..d {
                    let r = y[d - 1 - i] - b[d - 1 - i];
                    v[i] = r - (0..i).map(|q| lm[i * d + q] * v[q]).sum::<f32>();
                }
                for i in (0..d).rev() {
                    let r = v[i] - (i + 1..d).map(|q| um[i * d + q] * y[q]).sum::<f32>();
                    y[i] = r / um[i * d + i];
                }
                logdet += ldsum;
            }
            xk.iter_mut().for_each(|v| *v = 0.0);
            let lo: &Layer = &layers[layers.len() - 1];
            let lw = &w[lo.off..lo.off + lo.len()];
            for pass in passes {
                let z = pass_hidden::<AVX>(p, layers, pass, w, &xk, ce, &mut rec);
                // The pass's features are exact once it is done; rec holds its own copy of xk.
                for &j in &pass.feats {
                    for (q, rv) in raw.iter_mut().enumerate() {
                        *rv = layer_row::<AVX>(lo, lw, z, q * d + j);
                    }
                    let (a, ls) = match x.spline {
                        Some((nk, bound)) => spline_inverse::<AVX>(nk, bound, &raw[skip..skip + 3 * nk - 1], y[j]),
                        None => (y[j], 0.0),
                    };
                    let (xj, ldj) = if x.affine {
                        let s = tanh_scalar(raw[1] / p.bound) * p.bound;
                        (a * exp_scalar(s) + raw[0], ls - s)
                    } else {
                        (a, ls)
                    };
                    lds[j] = ldj;
                    xk[j] = xj;
                }
            }
            logdet += lds.iter().sum::<f32>();
            y.copy_from_slice(&xk);
        }
        xs[e * d..(e + 1) * d].copy_from_slice(&y);
        *lde = logdet;
    }
}
