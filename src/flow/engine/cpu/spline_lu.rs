//! The fast CPU path for spline blocks ([`crate::flow::spline`]) and the
//! learned LU mixing between blocks ([`crate::flow::lu`]): the default
//! network. A tile of events at a time through every block, forward then
//! backward, reusing the MADE layer kernels of the affine path; each event's
//! record keeps its spline's piece and the softmax and sigmoid values the
//! backward needs, so the backward computes no transcendental function.
//!
//! The gradient of the spline is written out by hand from the formulas of
//! Durkan et al. (2019) as [`crate::flow::spline`] evaluates them (same
//! clamping and the identity outside `[-B, B]`); `tests/fast_grad.rs`
//! checks it, log-prob and the inverse against autograd.

use super::{
    activate, activate_backward, axpy_tile, dot, dz_tile, layer_forward_tile, pass_tile, Layer, Plan, LOG_2PI, TILE,
};
use crate::flow::spline::{MIN_BIN, MIN_DERIVATIVE};
use crate::flow::vmath::{exp_in_place, exp_scalar, ln1p_in_place, tanh_in_place, tanh_scalar};

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

/// A feature's spline knots and the values its backward needs.
#[derive(Debug, Clone)]
struct KnotSet {
    /// Knot positions along x and y, and the derivatives at the knots (`K + 1`).
    xs: [f32; MAX_BINS + 1],
    ys: [f32; MAX_BINS + 1],
    ds: [f32; MAX_BINS + 1],
    /// The softmaxes of the widths and heights (`2K`).
    sm: [f32; 2 * MAX_BINS],
    /// The sigmoids of the interior derivatives' inputs (`K - 1`).
    sig: [f32; MAX_BINS],
}

impl KnotSet {
    /// An empty set, filled by [`knots_tile`].
    fn empty() -> KnotSet {
        KnotSet {
            xs: [0.0; MAX_BINS + 1],
            ys: [0.0; MAX_BINS + 1],
            ds: [0.0; MAX_BINS + 1],
            sm: [0.0; 2 * MAX_BINS],
            sig: [0.0; MAX_BINS],
        }
    }
}

/// `c0` with `softplus(c0) = 1 - MIN_DERIVATIVE`: a zero raw derivative input gives slope 1.
fn derivative_offset() -> f32 {
    ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln() as f32
}

/// The arguments of the exponentials of one feature's knots from its raw
/// parameters `r` (`K` widths, `K` heights, `K - 1` derivatives) into `e`
/// (`3K - 1`): widths and heights less their maximum, derivatives plus `c0`.
#[inline(always)]
fn knot_exponents(k: usize, c0: f32, r: &[f32], e: &mut [f32]) {
    let mw = r[..k].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mh = r[k..2 * k].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for q in 0..k {
        e[q] = r[q] - mw;
        e[k + q] = r[k + q] - mh;
    }
    for q in 0..k - 1 {
        e[2 * k + q] = r[2 * k + q] + c0;
    }
}

/// One feature's knots from its raw parameters `r`, the exponentials `e` of
/// [`knot_exponents`] and `sp = ln(1 + e)` of the derivative part (`K - 1`),
/// into `ks`: positions `xs`, `ys` and derivatives `ds` (`K + 1` each), and
/// the softmaxes and sigmoids the backward needs (`sm`: `2K`, `sig`: `K - 1`).
#[inline(always)]
fn knots_finish(k: usize, bound: f32, c0: f32, r: &[f32], e: &[f32], sp: &[f32], ks: &mut KnotSet) {
    let KnotSet { xs, ys, ds, sm, sig } = ks;
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let (min_bin, two_b) = (MIN_BIN as f32, 2.0 * bound);
    for (half, pos) in [(0, &mut xs[..]), (k, &mut ys[..])] {
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
        let ev = e[2 * k + q];
        // softplus with libtorch's threshold: the identity above 20.
        let (spv, sg) = if v > 20.0 { (v, 1.0) } else { (sp[q], ev / (1.0 + ev)) };
        ds[q + 1] = spv + MIN_DERIVATIVE as f32;
        sig[q] = sg;
    }
}

/// Knots of one feature's spline from its raw parameters `r` (`3K - 1`); see [`knots_finish`].
#[inline(always)]
fn knots<const AVX: bool>(k: usize, bound: f32, r: &[f32]) -> KnotSet {
    let mut ks = KnotSet::empty();
    let c0 = derivative_offset();
    let n = 3 * k - 1;
    let mut e = [0f32; 3 * MAX_BINS];
    knot_exponents(k, c0, r, &mut e);
    exp_in_place::<AVX>(&mut e[..n]);
    let mut sp = [0f32; MAX_BINS];
    sp[..k - 1].copy_from_slice(&e[2 * k..n]);
    ln1p_in_place::<AVX>(&mut sp[..k - 1]);
    knots_finish(k, bound, c0, r, &e, &sp, &mut ks);
    ks
}

/// Scratch of [`knots_tile`]: the exponentials and logarithms of a tile.
struct KnotScratch {
    e: Vec<f32>,
    sp: Vec<f32>,
    /// [`derivative_offset`], computed once.
    c0: f32,
}

impl KnotScratch {
    fn new(k: usize) -> KnotScratch {
        KnotScratch { e: vec![0.0; TILE * (3 * k - 1)], sp: vec![0.0; TILE * (k - 1)], c0: derivative_offset() }
    }
}

/// [`knots`] of one feature for the `TILE` events of a tile at once, with
/// the events side by side (`r[q * TILE + e]`: parameter `q` of event `e`)
/// into `out`: every step is the per-event one of [`knot_exponents`] and
/// [`knots_finish`] in the same order, on eight lanes, so the same bits
/// (`vmath`'s exponential and logarithm give the same bits whatever the split).
#[inline(always)]
fn knots_tile<const AVX: bool>(k: usize, bound: f32, r: &[f32], ws: &mut KnotScratch, out: &mut [KnotSet]) {
    const T: usize = TILE;
    let c0 = ws.c0;
    let n = 3 * k - 1;
    let (ev, r) = (&mut ws.e[..T * n], &r[..T * n]);
    let (mut mw, mut mh) = ([f32::NEG_INFINITY; T], [f32::NEG_INFINITY; T]);
    for q in 0..k {
        for e in 0..T {
            mw[e] = mw[e].max(r[q * T + e]);
            mh[e] = mh[e].max(r[(k + q) * T + e]);
        }
    }
    for q in 0..k {
        for e in 0..T {
            ev[q * T + e] = r[q * T + e] - mw[e];
            ev[(k + q) * T + e] = r[(k + q) * T + e] - mh[e];
        }
    }
    for i in 2 * k * T..n * T {
        ev[i] = r[i] + c0;
    }
    exp_in_place::<AVX>(ev);
    let sp = &mut ws.sp[..T * (k - 1)];
    sp.copy_from_slice(&ev[2 * k * T..]);
    ln1p_in_place::<AVX>(sp);
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let (min_bin, two_b) = (MIN_BIN as f32, 2.0 * bound);
    for half in [0, k] {
        let mut sum = [0f32; T];
        for q in 0..k {
            for e in 0..T {
                sum[e] += ev[(half + q) * T + e];
            }
        }
        let mut cum = [0f32; T];
        for q in 0..k {
            let (mut sv, mut pv) = ([0f32; T], [0f32; T]);
            for e in 0..T {
                sv[e] = ev[(half + q) * T + e] / sum[e];
                cum[e] += sv[e] * scale + min_bin;
                pv[e] = cum[e] * two_b - bound;
            }
            for (e, ks) in out.iter_mut().enumerate().take(T) {
                ks.sm[half + q] = sv[e];
                if q + 1 < k {
                    let pos = if half == 0 { &mut ks.xs } else { &mut ks.ys };
                    pos[q + 1] = pv[e];
                }
            }
        }
    }
    for q in 0..k - 1 {
        let (mut dv, mut gv) = ([0f32; T], [0f32; T]);
        for e in 0..T {
            let i = (2 * k + q) * T + e;
            let v = r[i] + c0;
            let x = ev[i];
            // softplus with libtorch's threshold: the identity above 20.
            let (spv, sg) = if v > 20.0 { (v, 1.0) } else { (sp[q * T + e], x / (1.0 + x)) };
            dv[e] = spv + MIN_DERIVATIVE as f32;
            gv[e] = sg;
        }
        for (e, ks) in out.iter_mut().enumerate().take(T) {
            ks.ds[q + 1] = dv[e];
            ks.sig[q] = gv[e];
        }
    }
    for ks in out.iter_mut().take(T) {
        ks.xs[0] = -bound;
        ks.ys[0] = -bound;
        ks.xs[k] = bound;
        ks.ys[k] = bound;
        ks.ds[0] = 1.0;
        ks.ds[k] = 1.0;
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
/// what [`spline_backward`] needs in `sc` when `CACHE` (training).
#[inline(always)]
fn spline_forward<const CACHE: bool>(k: usize, bound: f32, ks: &KnotSet, a: f32, sc: &mut [f32]) -> (f32, f32) {
    let KnotSet { xs, ys, ds, .. } = ks;
    let inside = a >= -bound && a <= bound;
    let b = bin(xs, k, a.clamp(-bound, bound));
    let (x0, w, y0, h, d0, d1) = (xs[b], xs[b + 1] - xs[b], ys[b], ys[b + 1] - ys[b], ds[b], ds[b + 1]);
    let t_raw = (a.clamp(-bound, bound) - x0) / w;
    let t = t_raw.clamp(0.0, 1.0);
    let t_in = (0.0..=1.0).contains(&t_raw);
    if CACHE {
        let (sm, rest) = sc.split_at_mut(2 * k);
        let (sig, piece) = rest.split_at_mut(k - 1);
        sm.copy_from_slice(&ks.sm[..2 * k]);
        sig.copy_from_slice(&ks.sig[..k - 1]);
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
    }
    if !inside {
        return (a, 0.0);
    }
    let s = h / w;
    let tt = t * (1.0 - t);
    let num = h * (s * t * t + d0 * tt);
    let den = s + (d0 + d1 - s * 2.0) * tt;
    (y0 + num / den, log_slope(s, d0, d1, t))
}

/// Backward of [`spline_forward`] for one feature of a tile's events side by
/// side: `sc(e)` is event `e`'s cache, `gy` = dL/dy and `gl` = dL/d(log
/// slope) per event give dL/d(raw parameters) in `dr` (`r[q * TILE + e]`,
/// `3K - 1` parameters) and dL/da, which it returns. Every lane computes
/// what the per-event formula did, in the same order (the same bits): the
/// piece's derivatives, then the softmax chains in closed form (a knot's
/// gradient reaches the softmax entries before it), then the derivatives.
#[inline(always)]
fn spline_backward_tile<'c>(
    k: usize,
    bound: f32,
    sc: impl Fn(usize) -> &'c [f32],
    gy: &[f32; TILE],
    gl: &[f32; TILE],
    dr: &mut [f32],
) -> [f32; TILE] {
    const T: usize = TILE;
    let piece = |f: usize| -> [f32; T] { std::array::from_fn(|e| sc(e)[3 * k - 1 + f]) };
    let (w, h, d0, d1, t) = (piece(1), piece(3), piece(4), piece(5), piece(6));
    let (t_in, inside, bf) = (piece(7), piece(8), piece(9));
    let b: [usize; T] = std::array::from_fn(|e| bf[e] as usize);
    // Per lane: the gradients of the piece's knots (x then y: lower, upper)
    // and derivatives, zero where the event lies outside [-B, B].
    let (mut g_lo, mut g_hi) = ([[0f32; T]; 2], [[0f32; T]; 2]);
    let (mut g_d0, mut g_d1) = ([0f32; T], [0f32; T]);
    let mut ga = [0f32; T];
    for e in 0..T {
        let (w, h, d0, d1, t, gy, gl) = (w[e], h[e], d0[e], d1[e], t[e], gy[e], gl[e]);
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
        let g_t = (gy * dy_dt + gl * dl_dt) * t_in[e];
        let g_s = gy * dy_ds + gl * dl_ds;
        // s = h / w, t = (a - x0) / w.
        let g_h = gy * sn / den + g_s / w;
        let g_w = -g_s * h / (w * w) - g_t * t / w;
        let g_x0 = -g_t / w;
        let g_y0 = gy;
        if inside[e] == 0.0 {
            ga[e] = gy;
        } else {
            (g_lo[0][e], g_hi[0][e]) = (g_x0 - g_w, g_w);
            (g_lo[1][e], g_hi[1][e]) = (g_y0 - g_h, g_h);
            g_d0[e] = gy * dy_dd0 + gl * dl_dd0;
            g_d1[e] = gy * dy_dd1 + gl * dl_dd1;
            ga[e] = g_t / w;
        }
    }
    // Knots: x0 = X_b, w = X_{b+1} - X_b (and y alike); the end knots are constants.
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let two_b = 2.0 * bound;
    for (hi, half) in [0, k].into_iter().enumerate() {
        // X_i = -B + 2B Σ_{q<i} (sm_q scale + min) for 0 < i < K: dL/dsm_q =
        // 2B scale Σ_{i>q} dL/dX_i, where only X_b (b > 0) and X_{b+1} (b + 1 < K) have one.
        let dsm = |qi: usize, e: usize| -> f32 {
            let mut acc = 0f32;
            if qi <= b[e] && b[e] + 1 < k {
                acc += g_hi[hi][e];
            }
            if qi < b[e] {
                acc += g_lo[hi][e];
            }
            acc * two_b * scale
        };
        let mut dot = [-0f32; T];
        for qi in 0..k {
            let sm = &sc;
            for (e, dv) in dot.iter_mut().enumerate() {
                *dv += sm(e)[half + qi] * dsm(qi, e);
            }
        }
        for qi in 0..k {
            for e in 0..T {
                dr[(half + qi) * T + e] = sc(e)[half + qi] * (dsm(qi, e) - dot[e]);
            }
        }
    }
    // Interior derivatives D_i = softplus(r + c0) + min, i = 1..K-1.
    for qi in 0..k - 1 {
        for e in 0..T {
            let sig = sc(e)[2 * k + qi];
            let mut v = 0f32;
            if qi + 1 == b[e] {
                v += g_d0[e] * sig;
            }
            if qi == b[e] {
                v += g_d1[e] * sig;
            }
            dr[(2 * k + qi) * T + e] = v;
        }
    }
    ga
}

/// The inverse of one feature's spline at `y` (base → data): `(x, log dy/dx)`.
#[inline(always)]
fn spline_inverse(k: usize, bound: f32, ks: &KnotSet, y: f32) -> (f32, f32) {
    if !(y >= -bound && y <= bound) {
        return (y, 0.0);
    }
    let KnotSet { xs, ys, ds, .. } = ks;
    let b = bin(ys, k, y);
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

/// The knots of every (block, feature) whose spline parameters are constant
/// (`k * D + j`): a feature whose output rows read nothing (the first in a
/// MADE's order) has its biases as parameters, the same for every event, so
/// its knots are computed once per call instead of once per event.
fn constant_knots<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32]) -> Vec<Option<KnotSet>> {
    let d = p.d;
    let skip = if x.affine { 2 } else { 0 };
    let mut out = Vec::with_capacity(p.blocks.len() * d);
    for layers in &p.blocks {
        let lo = &layers[layers.len() - 1];
        for j in 0..d {
            out.push(x.spline.and_then(|(nk, bound)| {
                let rows = (0..3 * nk - 1).map(|q| (skip + q) * d + j);
                if rows.clone().any(|row| lo.live[row]) {
                    return None;
                }
                let bias = &w[lo.off + lo.a_len()..lo.off + lo.len()];
                let r: Vec<f32> = rows.map(|row| bias[row]).collect();
                Some(knots::<AVX>(nk, bound, &r))
            }));
        }
    }
    out
}

/// The element-wise part of block `k` for one event, after its MADE: shift
/// and scale, spline and the learned map, from the raw outputs at the start
/// of `tail` (the block record from `x.raw` on) and the block input `u`.
/// Fills the rest of `tail` and returns the block's `log |det|`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_tail<'a, const AVX: bool, const CACHE: bool>(
    p: &Plan,
    x: &Ext,
    w: &[f32],
    knots_of: impl Fn(usize) -> &'a KnotSet,
    k: usize,
    u: &[f32],
    tail: &mut [f32],
) -> f32 {
    let d = p.d;
    let mut ld = 0f32;
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
            let cl = cache_len(nk);
            for j in 0..d {
                let sc = &mut sc[j * cl..(j + 1) * cl];
                let (y, ls) = spline_forward::<CACHE>(nk, bound, knots_of(j), a[j], sc);
                yo[j] = y;
                ld += ls;
            }
        }
        None => yo.copy_from_slice(a),
    }
    match x.mixes.get(k) {
        Some(m) => {
            let wm = &w[m.off..m.off + mix_len(d)];
            for (i, o) in out[..d].iter_mut().enumerate() {
                let mut acc = wm[d * d + i];
                for (j, yj) in yo.iter().enumerate() {
                    acc += wm[i * d + j] * yj;
                }
                *o = acc;
            }
            ld += wm[d * d + d];
        }
        None => out[..d].copy_from_slice(yo),
    }
    ld
}

/// Scratch of one chunk: the records of a tile of events and the layer buffers.
struct Scratch {
    /// `TILE` event records of `nb * rec` floats each.
    recs: Vec<f32>,
    /// A layer's outputs for the tile, `TILE × widest layer`.
    tout: Vec<f32>,
    /// dL/d(layer output) and dL/d(layer input) per event, `TILE × maxw` each.
    dy: Vec<f32>,
    dz: Vec<f32>,
    maxw: usize,
    /// The tile's inputs and labels (padding rows are zeros).
    u0: Vec<f32>,
    c0: Vec<f32>,
    /// [`constant_knots`] of the weights.
    consts: Vec<Option<KnotSet>>,
    /// The knots of a tile's events, feature-major (`j * TILE + e`), and
    /// what [`knots_tile`] needs: raw parameters (`TILE × (3K - 1)`) and scratch.
    tk: Vec<KnotSet>,
    kr: Vec<f32>,
    kw: KnotScratch,
}

impl Scratch {
    fn new<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32]) -> Scratch {
        let widest = p.blocks.iter().flatten().map(|y| y.n_out.max(y.k_in)).max().unwrap_or(0);
        let maxw = widest.max(x.params * p.d);
        let nk = x.spline.map_or(0, |(k, _)| k);
        Scratch {
            recs: vec![0f32; TILE * p.blocks.len() * p.rec],
            tout: vec![0f32; TILE * maxw],
            dy: vec![0f32; TILE * maxw],
            dz: vec![0f32; TILE * maxw],
            maxw,
            u0: vec![0f32; TILE * p.d],
            c0: vec![0f32; TILE * p.l],
            consts: constant_knots::<AVX>(p, x, w),
            tk: if nk > 0 { vec![KnotSet::empty(); TILE * p.d] } else { Vec::new() },
            kr: vec![0f32; TILE * (3 * nk).saturating_sub(1)],
            kw: KnotScratch::new(nk.max(2)),
        }
    }

    /// The knots of feature `j` of block `k` for every event of the tile into
    /// `tk[j * TILE..]`, from the raw outputs `raw(e)` of event `e` (one
    /// parameter after the other, each for every feature); nothing for a
    /// feature with constant knots.
    #[inline(always)]
    fn tile_knots<'r, const AVX: bool>(
        &mut self,
        d: usize,
        x: &Ext,
        k: usize,
        j: usize,
        raw: impl Fn(usize) -> &'r [f32],
    ) {
        let Some((nk, bound)) = x.spline else { return };
        if self.consts[k * d + j].is_some() {
            return;
        }
        let (n, skip) = (3 * nk - 1, if x.affine { 2 } else { 0 });
        // Parameter by parameter, the tile's events side by side.
        for e in 0..TILE {
            let re = raw(e);
            for q in 0..n {
                self.kr[q * TILE + e] = re[(skip + q) * d + j];
            }
        }
        knots_tile::<AVX>(nk, bound, &self.kr, &mut self.kw, &mut self.tk[j * TILE..(j + 1) * TILE]);
    }

    /// Loads the events `rows` (at most `TILE`) of `(xd, c)` as the tile's
    /// inputs; the remaining rows are zeros.
    fn load(&mut self, p: &Plan, xd: &[f32], c: &[f32], rows: impl Iterator<Item = usize>) -> usize {
        let (d, l) = (p.d, p.l);
        self.u0.iter_mut().for_each(|v| *v = 0.0);
        self.c0.iter_mut().for_each(|v| *v = 0.0);
        let mut n = 0;
        for (e, r) in rows.enumerate().take(TILE) {
            self.u0[e * d..(e + 1) * d].copy_from_slice(&xd[r * d..(r + 1) * d]);
            self.c0[e * l..(e + 1) * l].copy_from_slice(&c[r * l..(r + 1) * l]);
            n = e + 1;
        }
        n
    }
}

/// A tile of [`TILE`] events (`s.u0`, `s.c0`) through every block (data →
/// base), each layer of a block over the whole tile ([`layer_forward_tile`]),
/// recording into `s.recs` (with the spline values the backward needs when
/// `CACHE`). Returns `log |det du/dx|` per event; `u` is the last block
/// record's output.
#[inline(always)]
fn tile_forward<const AVX: bool, const CACHE: bool>(p: &Plan, x: &Ext, w: &[f32], s: &mut Scratch) -> [f32; TILE] {
    let (d, l) = (p.d, p.l);
    let er = p.blocks.len() * p.rec;
    let mut ld = [0f32; TILE];
    for (k, layers) in p.blocks.iter().enumerate() {
        let kb = k * p.rec;
        for e in 0..TILE {
            let base = e * er + kb;
            if k == 0 {
                s.recs[base..base + d].copy_from_slice(&s.u0[e * d..(e + 1) * d]);
            } else {
                let prev = e * er + kb - p.rec + x.out;
                s.recs.copy_within(prev..prev + d, base);
            }
            if layers[0].cond {
                s.recs[base + d..base + d + l].copy_from_slice(&s.c0[e * l..(e + 1) * l]);
            }
        }
        let nl = layers.len();
        for (li, y) in layers.iter().enumerate() {
            let lw = &w[y.off..y.off + y.len()];
            layer_forward_tile::<AVX>(y, lw, &s.recs[kb + y.rin..], er, &mut s.tout, y.n_out);
            for e in 0..TILE {
                let base = e * er + kb;
                let o = &s.tout[e * y.n_out..(e + 1) * y.n_out];
                if li + 1 < nl {
                    let nxt = &layers[li + 1];
                    s.recs[base + y.rpre..base + y.rpre + y.n_out].copy_from_slice(o);
                    activate::<AVX>(p.act, o, &mut s.recs[base + nxt.rin..base + nxt.rin + y.n_out]);
                    if nxt.cond {
                        let at = base + nxt.rin + y.n_out;
                        s.recs[at..at + l].copy_from_slice(&s.c0[e * l..(e + 1) * l]);
                    }
                } else {
                    s.recs[base + x.raw..base + x.raw + y.n_out].copy_from_slice(o);
                }
            }
        }
        if x.spline.is_some() {
            for j in 0..d {
                let recs = std::mem::take(&mut s.recs);
                s.tile_knots::<AVX>(d, x, k, j, |e| &recs[e * er + kb + x.raw..e * er + kb + x.raw + x.params * d]);
                s.recs = recs;
            }
        }
        for (e, lde) in ld.iter_mut().enumerate() {
            let (before, this) = s.recs.split_at_mut(e * er + kb);
            let u: &[f32] = if k == 0 { &s.u0[e * d..(e + 1) * d] } else { &before[e * er + kb - p.rec + x.out..] };
            let (consts, tk) = (&s.consts, &s.tk);
            let knots_of = |j: usize| consts[k * d + j].as_ref().unwrap_or_else(|| &tk[j * TILE + e]);
            *lde += block_tail::<AVX, CACHE>(p, x, w, knots_of, k, &u[..d], &mut this[x.raw..p.rec]);
        }
    }
    ld
}

/// Backward of one layer for a tile of events: `z` the layer inputs (event
/// `e` at `z[e * zs..]`), `dy` dL/d(outputs) (at `dy[e * ds..]`, `dy_len`
/// wide); accumulates the weight and bias gradients into `g` (each gradient
/// row is updated by the whole tile while it is in cache) and writes
/// dL/d(inputs) for the first `n_in` inputs into `dz` (at `dz[e * ds..]`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_backward_tile<const AVX: bool>(
    y: &Layer,
    w: &[f32],
    g: &mut [f32],
    z: &[f32],
    zs: usize,
    dy: &[f32],
    dz: &mut [f32],
    ds: usize,
) {
    let a = &w[..y.a_len()];
    let (ga, gb) = g.split_at_mut(y.a_len());
    let (n_out, k_in, n_in) = (y.n_out, y.k_in, y.n_in);
    for e in 0..TILE {
        for (gbj, dyj) in gb.iter_mut().zip(&dy[e * ds..e * ds + n_out]) {
            *gbj += dyj;
        }
    }
    // Only the nonzero ranges of the masked weights (see `Layer`): the rest
    // adds zeros, and its gradient is masked out when scattered.
    if y.in_major {
        for k in 0..k_in {
            let (lo, hi) = y.row_cols[k];
            if hi > lo {
                let coef: [f32; TILE] = std::array::from_fn(|e| z[e * zs + k]);
                axpy_tile::<AVX>(&mut ga[k * n_out + lo..k * n_out + hi], &coef, &dy[lo..], ds);
            }
        }
        for e in 0..TILE {
            for i in 0..n_in {
                let (lo, hi) = y.row_cols[i];
                dz[e * ds + i] = dot::<AVX>(&a[i * n_out + lo..i * n_out + hi], &dy[e * ds + lo..e * ds + hi]);
            }
        }
    } else {
        for j in (0..n_out).filter(|&j| y.live[j]) {
            let coef: [f32; TILE] = std::array::from_fn(|e| dy[e * ds + j]);
            axpy_tile::<AVX>(&mut ga[j * k_in..j * k_in + y.span[j]], &coef, z, zs);
        }
        dz_tile::<AVX>(y, a, dy, dz, ds);
    }
}

/// Forward and backward of `rows` events, weighted by `wts` if given (see
/// [`super::train_chunk_impl`]), a tile of events at a time: every layer's
/// forward and backward runs over the whole tile. A partial last tile is
/// padded with zero events of weight zero, which add exactly nothing.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn train_chunk<const AVX: bool>(
    p: &Plan,
    x: &Ext,
    w: &[f32],
    xd: &[f32],
    c: &[f32],
    rows: &[i64],
    (wts, ceil): (Option<&[f32]>, f64),
    grad: &mut [f32],
) -> f64 {
    let d = p.d;
    let nb = p.blocks.len();
    let er = nb * p.rec;
    let mut s = Scratch::new::<AVX>(p, x, w);
    let maxw = s.maxw;
    let mut g = vec![0f32; TILE * d];
    let mut gn = vec![0f32; d];
    let mut dr = [0f32; 3 * MAX_BINS * TILE];
    let cst = 0.5 * d as f64 * LOG_2PI;
    let skip = if x.affine { 2 } else { 0 };
    let np = x.params * d;
    let mut total = 0f64;
    for (ti, tile) in rows.chunks(TILE).enumerate() {
        let te = s.load(p, xd, c, tile.iter().map(|&r| r as usize));
        let ld = tile_forward::<AVX, true>(p, x, w, &mut s);
        let mut wt = [0f32; TILE];
        for e in 0..TILE {
            let uk = &s.recs[e * er + (nb - 1) * p.rec + x.out..e * er + nb * p.rec];
            if e < te {
                wt[e] = wts.map_or(1.0, |v| v[ti * TILE + e]);
                let sq: f32 = uk.iter().map(|v| v * v).sum();
                let nll = f64::from(0.5 * sq) - f64::from(ld[e]) + cst;
                total += match wts {
                    None => nll,
                    Some(_) => {
                        let w0 = wt[e];
                        let (nll, w) = super::floored(nll, w0, ceil + cst);
                        wt[e] = w;
                        nll * f64::from(w0)
                    }
                };
            }
            for (gj, u) in g[e * d..(e + 1) * d].iter_mut().zip(uk) {
                *gj = u * wt[e];
            }
        }
        for (k, layers) in p.blocks.iter().enumerate().rev() {
            let kb = k * p.rec;
            for e in 0..TILE {
                let rec = &s.recs[e * er + kb..e * er + kb + p.rec];
                let ge = &mut g[e * d..(e + 1) * d];
                if let Some(m) = x.mixes.get(k) {
                    let wm = &w[m.off..m.off + mix_len(d)];
                    let gm = &mut grad[m.off..m.off + mix_len(d)];
                    let yo = &rec[x.yo..x.yo + d];
                    for i in 0..d {
                        for j in 0..d {
                            gm[i * d + j] += ge[i] * yo[j];
                        }
                        gm[d * d + i] += ge[i];
                    }
                    gm[d * d + d] -= wt[e];
                    for (j, v) in gn.iter_mut().enumerate() {
                        *v = (0..d).map(|i| wm[i * d + j] * ge[i]).sum();
                    }
                    ge.copy_from_slice(&gn);
                }
                s.dy[e * maxw..e * maxw + np].iter_mut().for_each(|v| *v = 0.0);
            }
            if let Some((nk, bound)) = x.spline {
                let (n, cl) = (3 * nk - 1, cache_len(nk));
                let gl: [f32; TILE] = std::array::from_fn(|e| -wt[e]);
                for j in 0..d {
                    let gy: [f32; TILE] = std::array::from_fn(|e| g[e * d + j]);
                    let at = kb + x.sc + j * cl;
                    let recs = &s.recs;
                    let ga =
                        spline_backward_tile(nk, bound, |e| &recs[e * er + at..e * er + at + cl], &gy, &gl, &mut dr);
                    for e in 0..TILE {
                        g[e * d + j] = ga[e];
                        for q in 0..n {
                            s.dy[e * maxw + (skip + q) * d + j] = dr[q * TILE + e];
                        }
                    }
                }
            }
            for e in 0..TILE {
                let rec = &s.recs[e * er + kb..e * er + kb + p.rec];
                let ge = &mut g[e * d..(e + 1) * d];
                let dy = &mut s.dy[e * maxw..e * maxw + np];
                if x.affine {
                    let (t, ex, a) = (&rec[x.at..x.at + d], &rec[x.ae..x.ae + d], &rec[x.a..x.a + d]);
                    for j in 0..d {
                        let ds = wt[e] - ge[j] * a[j];
                        dy[j] = -ge[j] * ex[j];
                        dy[d + j] = ds * (1.0 - t[j] * t[j]);
                        ge[j] *= ex[j];
                    }
                }
            }
            for li in (0..layers.len()).rev() {
                let y = &layers[li];
                let lw = &w[y.off..y.off + y.len()];
                let lg = &mut grad[y.off..y.off + y.len()];
                layer_backward_tile::<AVX>(y, lw, lg, &s.recs[kb + y.rin..], er, &s.dy, &mut s.dz, maxw);
                for e in 0..TILE {
                    let dze = &s.dz[e * maxw..e * maxw + y.n_in];
                    if li > 0 {
                        // Through the activation of hidden layer li-1 (its output is this layer's input).
                        let prev = &layers[li - 1];
                        let base = e * er + kb;
                        let pre = &s.recs[base + prev.rpre..base + prev.rpre + y.n_in];
                        let h = &s.recs[base + y.rin..base + y.rin + y.n_in];
                        activate_backward::<AVX>(p.act, pre, h, dze, &mut s.dy[e * maxw..e * maxw + y.n_in]);
                    } else {
                        for (gj, dzj) in g[e * d..(e + 1) * d].iter_mut().zip(dze) {
                            *gj += dzj;
                        }
                    }
                }
            }
        }
    }
    total
}

/// `log p(x | c)` of the events of `xd` into `out`, a tile at a time.
#[inline(always)]
pub(super) fn log_prob_chunk<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32], xd: &[f32], c: &[f32], out: &mut [f32]) {
    let d = p.d;
    let nb = p.blocks.len();
    let er = nb * p.rec;
    let mut s = Scratch::new::<AVX>(p, x, w);
    let cst = 0.5 * d as f32 * LOG_2PI as f32;
    for (ti, o_tile) in out.chunks_mut(TILE).enumerate() {
        s.load(p, xd, c, ti * TILE..ti * TILE + o_tile.len());
        let ld = tile_forward::<AVX, false>(p, x, w, &mut s);
        for (e, o) in o_tile.iter_mut().enumerate() {
            let uk = &s.recs[e * er + (nb - 1) * p.rec + x.out..e * er + nb * p.rec];
            let sq: f32 = uk.iter().map(|v| v * v).sum();
            *o = -0.5 * sq - cst + ld[e];
        }
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
    let d = p.d;
    // s.recs: one block record per event of a tile (the inversion keeps nothing across blocks).
    let mut s = Scratch::new::<AVX>(p, x, w);
    let (mut xk, mut lds, mut v) = (vec![0f32; TILE * d], vec![0f32; TILE * d], vec![0f32; d]);
    let mut raw = vec![0f32; x.params];
    let n_out = x.params * d;
    let mut want = vec![false; n_out];
    for (ti, ld_tile) in ld.chunks_mut(TILE).enumerate() {
        let te = ld_tile.len();
        // s.u0 holds the tile's current values on the base side of each block.
        s.load(p, us, c, ti * TILE..ti * TILE + te);
        let mut logdet = [0f32; TILE];
        for (k, (layers, passes)) in p.blocks.iter().zip(&p.passes).enumerate().rev() {
            if let Some(m) = x.mixes.get(k) {
                let wm = &w[m.off..m.off + mix_len(d)];
                let (b, ldsum) = (&wm[d * d..d * d + d], wm[d * d + d]);
                let lm = &wm[d * d + d + 1..2 * d * d + d + 1];
                let um = &wm[2 * d * d + d + 1..];
                for (e, lde) in logdet.iter_mut().enumerate() {
                    let y = &mut s.u0[e * d..(e + 1) * d];
                    // L U x = Pᵀ (z - b): forward then back substitution.
                    for i in 0..d {
                        let r = y[d - 1 - i] - b[d - 1 - i];
                        v[i] = r - (0..i).map(|q| lm[i * d + q] * v[q]).sum::<f32>();
                    }
                    for i in (0..d).rev() {
                        let r = v[i] - (i + 1..d).map(|q| um[i * d + q] * y[q]).sum::<f32>();
                        y[i] = r / um[i * d + i];
                    }
                    *lde += ldsum;
                }
            }
            xk.iter_mut().for_each(|v| *v = 0.0);
            for pass in passes {
                pass_tile::<AVX>(p, layers, pass, w, &xk, &s.c0, &mut s.recs, &mut s.tout, &mut want);
                for &j in &pass.feats {
                    let tout = std::mem::take(&mut s.tout);
                    s.tile_knots::<AVX>(d, x, k, j, |e| &tout[e * n_out..(e + 1) * n_out]);
                    s.tout = tout;
                }
                for e in 0..TILE {
                    for &j in &pass.feats {
                        for (q, rv) in raw.iter_mut().enumerate() {
                            *rv = s.tout[e * n_out + q * d + j];
                        }
                        let yj = s.u0[e * d + j];
                        let (a, ls) = match x.spline {
                            Some((nk, bound)) => {
                                let ks = s.consts[k * d + j].as_ref().unwrap_or(&s.tk[j * TILE + e]);
                                spline_inverse(nk, bound, ks, yj)
                            }
                            None => (yj, 0.0),
                        };
                        let (xj, ldj) = if x.affine {
                            let sv = tanh_scalar(raw[1] / p.bound) * p.bound;
                            (a * exp_scalar(sv) + raw[0], ls - sv)
                        } else {
                            (a, ls)
                        };
                        lds[e * d + j] = ldj;
                        xk[e * d + j] = xj;
                    }
                }
            }
            for (e, lde) in logdet.iter_mut().enumerate() {
                *lde += lds[e * d..(e + 1) * d].iter().sum::<f32>();
            }
            s.u0.copy_from_slice(&xk);
        }
        xs[ti * TILE * d..(ti * TILE + te) * d].copy_from_slice(&s.u0[..te * d]);
        ld_tile.copy_from_slice(&logdet[..te]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The knots of a tile (events side by side) are those of [`knots`] per
    /// event, bit for bit: constant features use the one, the others the
    /// other, and the backward relies on both alike.
    #[test]
    fn knots_of_a_tile_are_the_bits_of_knots_per_event() {
        for k in [2usize, 5, 8] {
            let n = 3 * k - 1;
            // Raw parameters of every size, some derivative inputs above softplus's threshold.
            let raw: Vec<f32> =
                (0..TILE * n).map(|i| if i % 7 == 5 { 30.0 } else { ((i * 37 % 101) as f32 - 50.0) * 0.07 }).collect();
            let mut soa = vec![0f32; TILE * n];
            for e in 0..TILE {
                for q in 0..n {
                    soa[q * TILE + e] = raw[e * n + q];
                }
            }
            let above =
                (0..TILE).any(|e| raw[e * n + 2 * k..(e + 1) * n].iter().any(|&v| v + derivative_offset() > 20.0));
            assert!(above, "no derivative input above the threshold");
            let mut ws = KnotScratch::new(k);
            let mut tile = vec![KnotSet::empty(); TILE];
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for avx in [false, true] {
                #[cfg(target_arch = "x86_64")]
                if avx && !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
                    continue;
                }
                if avx {
                    knots_tile::<true>(k, 3.0, &soa, &mut ws, &mut tile);
                } else {
                    knots_tile::<false>(k, 3.0, &soa, &mut ws, &mut tile);
                }
                for (e, got) in tile.iter().enumerate() {
                    let want = knots::<false>(k, 3.0, &raw[e * n..(e + 1) * n]);
                    let what = format!("K = {k}, event {e}, avx {avx}");
                    assert_eq!(bits(&got.xs[..=k]), bits(&want.xs[..=k]), "xs {what}");
                    assert_eq!(bits(&got.ys[..=k]), bits(&want.ys[..=k]), "ys {what}");
                    assert_eq!(bits(&got.ds[..=k]), bits(&want.ds[..=k]), "ds {what}");
                    assert_eq!(bits(&got.sm[..2 * k]), bits(&want.sm[..2 * k]), "sm {what}");
                    assert_eq!(bits(&got.sig[..k - 1]), bits(&want.sig[..k - 1]), "sig {what}");
                }
            }
        }
    }
}
