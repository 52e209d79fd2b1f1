//! The fast CPU path for spline blocks ([`crate::flow::spline`]) and the
//! learned LU mixing between blocks ([`crate::flow::lu`]): the default
//! network. A tile of events at a time through every block, forward then
//! backward, reusing the MADE layer kernels of the affine path. The splines
//! run with the tile's events side by side (a feature's knots and its
//! backward cache hold the eight events' values of each quantity adjacent),
//! every lane doing the per-event operations in the per-event order; the
//! cache keeps each spline's piece and the softmax and sigmoid values the
//! backward needs, so the backward computes no transcendental function.
//!
//! The gradient of the spline is written out by hand from the formulas of
//! Durkan et al. (2019) as [`crate::flow::spline`] evaluates them (same
//! clamping and the identity outside `[-B, B]`); `tests/fast_grad.rs`
//! checks it, log-prob and the inverse against autograd.

use super::{
    activate, activate_backward, axpy_tile, dot, dz_tile, grad_rows_tile, layer_forward_tile, pass_tile, Layer, Plan,
    LOG_2PI, TILE,
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
        let raw = tail;
        let at = raw + params * d;
        let ae = at + d;
        let a = ae + d;
        let yo = a + d;
        let out = yo + d;
        let rec = out + d;
        Some((Ext { affine, spline, params, mixes, raw, at, ae, a, yo, out }, rec))
    }

    /// Writes the effective weights of the maps into `w`.
    pub(super) fn mix_weights(&self, d: usize, get: super::Getter<'_>, w: &mut [f32]) -> Option<()> {
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

/// Where one feature's knots for a tile lie in its slice (events side by
/// side: value `q` of event `e` at `[q * TILE + e]`), `K + 1` knots: the
/// positions along x and y and the derivatives at the knots, then what the
/// backward needs, the softmaxes of the widths and heights (`2K`) and the
/// sigmoids of the interior derivatives' inputs (`K - 1`), adjacent.
#[derive(Debug, Clone, Copy)]
struct KnotLayout {
    ys: usize,
    ds: usize,
    sm: usize,
    sig: usize,
    len: usize,
}

impl KnotLayout {
    fn new(k: usize) -> KnotLayout {
        let t = TILE;
        let (ys, ds, sm) = ((k + 1) * t, 2 * (k + 1) * t, 3 * (k + 1) * t);
        let sig = sm + 2 * k * t;
        KnotLayout { ys, ds, sm, sig, len: sig + (k - 1) * t }
    }
}

/// Row `q` of a tile-major buffer from `off` on: the `TILE` lanes
/// `v[off + q * TILE..]` as an array, so that loops over the lanes carry no
/// bounds checks and vectorise.
#[inline(always)]
fn row(v: &[f32], off: usize, q: usize) -> &[f32; TILE] {
    let at = off + q * TILE;
    v[at..at + TILE].try_into().expect("a row is TILE lanes")
}

/// [`row`], writable.
#[inline(always)]
fn row_mut(v: &mut [f32], off: usize, q: usize) -> &mut [f32; TILE] {
    let at = off + q * TILE;
    (&mut v[at..at + TILE]).try_into().expect("a row is TILE lanes")
}

/// `c0` with `softplus(c0) = 1 - MIN_DERIVATIVE`: a zero raw derivative input gives slope 1.
fn derivative_offset() -> f32 {
    ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln() as f32
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

/// One feature's spline knots for the `TILE` events of a tile at once, from
/// the raw parameters `r` (`K` widths, `K` heights, `K - 1` derivative
/// inputs; `r[q * TILE + e]`: parameter `q` of event `e`) into `out`, laid
/// out as [`KnotLayout`]. Each lane depends on its own event only
/// (`vmath`'s exponential and logarithm give the same bits whatever the
/// split), so a feature whose parameters are the same for every event gets
/// its knots from the same routine, its parameters copied to every lane.
#[inline(always)]
fn knots_tile<const AVX: bool>(k: usize, bound: f32, r: &[f32], ws: &mut KnotScratch, out: &mut [f32]) {
    const T: usize = TILE;
    let c0 = ws.c0;
    let n = 3 * k - 1;
    let lay = KnotLayout::new(k);
    let (ev, r, out) = (&mut ws.e[..T * n], &r[..T * n], &mut out[..lay.len]);
    let (mut mw, mut mh) = ([f32::NEG_INFINITY; T], [f32::NEG_INFINITY; T]);
    for q in 0..k {
        let (rw, rh) = (row(r, 0, q), row(r, 0, k + q));
        for e in 0..T {
            mw[e] = mw[e].max(rw[e]);
            mh[e] = mh[e].max(rh[e]);
        }
    }
    // Widths and heights less their maximum, derivatives plus c0.
    for q in 0..n {
        let (rq, m) = (
            *row(r, 0, q),
            if q < k {
                Some(&mw)
            } else if q < 2 * k {
                Some(&mh)
            } else {
                None
            },
        );
        let o = row_mut(ev, 0, q);
        for e in 0..T {
            o[e] = match m {
                Some(m) => rq[e] - m[e],
                None => rq[e] + c0,
            };
        }
    }
    exp_in_place::<AVX>(ev);
    let sp = &mut ws.sp[..T * (k - 1)];
    sp.copy_from_slice(&ev[2 * k * T..]);
    ln1p_in_place::<AVX>(sp);
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let (min_bin, two_b) = (MIN_BIN as f32, 2.0 * bound);
    for (half, pos) in [(0, 0), (k, lay.ys)] {
        let mut sum = [0f32; T];
        for q in 0..k {
            let eq = row(ev, 0, half + q);
            for e in 0..T {
                sum[e] += eq[e];
            }
        }
        let mut cum = [0f32; T];
        *row_mut(out, pos, 0) = [-bound; T];
        *row_mut(out, pos, k) = [bound; T];
        for q in 0..k {
            let eq = row(ev, 0, half + q);
            let (mut sv, mut pv) = ([0f32; T], [0f32; T]);
            for e in 0..T {
                sv[e] = eq[e] / sum[e];
                cum[e] += sv[e] * scale + min_bin;
                pv[e] = cum[e] * two_b - bound;
            }
            *row_mut(out, lay.sm, half + q) = sv;
            if q + 1 < k {
                *row_mut(out, pos, q + 1) = pv;
            }
        }
    }
    *row_mut(out, lay.ds, 0) = [1.0; T];
    *row_mut(out, lay.ds, k) = [1.0; T];
    for q in 0..k - 1 {
        let (rq, eq, spq) = (row(r, 0, 2 * k + q), row(ev, 0, 2 * k + q), row(sp, 0, q));
        let (mut dv, mut gv) = ([0f32; T], [0f32; T]);
        for e in 0..T {
            let v = rq[e] + c0;
            // softplus with libtorch's threshold: the identity above 20.
            (dv[e], gv[e]) = if v > 20.0 { (v, 1.0) } else { (spq[e], eq[e] / (1.0 + eq[e])) };
            dv[e] += MIN_DERIVATIVE as f32;
        }
        *row_mut(out, lay.ds, q + 1) = dv;
        *row_mut(out, lay.sig, q) = gv;
    }
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

/// Fields of the per-piece part of a spline's backward cache, after the
/// softmaxes and sigmoids: `w, h, d0, d1, t, t inside [0, 1], inside [-B, B], bin`.
const PIECE: usize = 8;

/// Floats (per lane) of one feature's backward cache: the softmaxes and
/// sigmoids of its knots (`3K - 1`), then the [`PIECE`] fields.
fn cache_len(k: usize) -> usize {
    3 * k - 1 + PIECE
}

/// The spline of one feature (knots `kn`, [`KnotLayout`]) at `a` (data →
/// base) for a tile's events side by side: `(y, log dy/da)` per event,
/// caching what [`spline_backward_tile`] needs in `sc` (`cache_len` values
/// of `TILE` lanes) when `CACHE` (training).
#[inline(always)]
fn spline_forward_tile<const CACHE: bool>(
    k: usize,
    bound: f32,
    kn: &[f32],
    a: &[f32; TILE],
    sc: &mut [f32],
) -> ([f32; TILE], [f32; TILE]) {
    const T: usize = TILE;
    let lay = KnotLayout::new(k);
    let kn = &kn[..lay.len];
    let ac: [f32; T] = std::array::from_fn(|e| a[e].clamp(-bound, bound));
    // The piece containing each event: the knots it is at or beyond.
    let mut b = [0usize; T];
    for q in 1..k {
        let xq = row(kn, 0, q);
        for e in 0..T {
            b[e] += usize::from(ac[e] >= xq[e]);
        }
    }
    let at = |base: usize, q: [usize; T]| -> [f32; T] { std::array::from_fn(|e| kn[base + q[e] * T + e]) };
    let b1 = b.map(|v| v + 1);
    let (x0, x1, y0, y1) = (at(0, b), at(0, b1), at(lay.ys, b), at(lay.ys, b1));
    let (d0, d1) = (at(lay.ds, b), at(lay.ds, b1));
    let (mut y, mut ls) = ([0f32; T], [0f32; T]);
    let mut piece = [[0f32; T]; PIECE];
    for e in 0..T {
        let inside = a[e] >= -bound && a[e] <= bound;
        let (w, h) = (x1[e] - x0[e], y1[e] - y0[e]);
        let t_raw = (ac[e] - x0[e]) / w;
        let t = t_raw.clamp(0.0, 1.0);
        let t_in = (0.0..=1.0).contains(&t_raw);
        let s = h / w;
        let tt = t * (1.0 - t);
        let num = h * (s * t * t + d0[e] * tt);
        let den = s + (d0[e] + d1[e] - s * 2.0) * tt;
        (y[e], ls[e]) = if inside { (y0[e] + num / den, log_slope(s, d0[e], d1[e], t)) } else { (a[e], 0.0) };
        if CACHE {
            let fields = [w, h, d0[e], d1[e], t, f32::from(u8::from(t_in)), f32::from(u8::from(inside)), b[e] as f32];
            for (f, v) in fields.into_iter().enumerate() {
                piece[f][e] = v;
            }
        }
    }
    if CACHE {
        let n = (3 * k - 1) * T;
        sc[..n].copy_from_slice(&kn[lay.sm..lay.sm + n]);
        for (f, lanes) in piece.iter().enumerate() {
            sc[n + f * T..n + (f + 1) * T].copy_from_slice(lanes);
        }
    }
    (y, ls)
}

/// Backward of [`spline_forward_tile`] for one feature: from its cache `sc`,
/// `gy` = dL/dy and `gl` = dL/d(log slope) per event give dL/d(raw
/// parameters) in `dr` (`dr[q * TILE + e]`, `3K - 1` parameters) and dL/da,
/// which it returns. Per lane the formulas of Durkan et al. (2019) as
/// [`crate::flow::spline`] evaluates them: the piece's derivatives, the
/// softmax chains in closed form (a knot's gradient reaches the softmax
/// entries before it), then the derivatives.
#[inline(always)]
fn spline_backward_tile(
    k: usize,
    bound: f32,
    sc: &[f32],
    gy: &[f32; TILE],
    gl: &[f32; TILE],
    dr: &mut [f32],
) -> [f32; TILE] {
    const T: usize = TILE;
    let n = 3 * k - 1;
    let (sc, dr) = (&sc[..cache_len(k) * T], &mut dr[..n * T]);
    let field = |f: usize| -> [f32; T] { *row(sc, 0, n + f) };
    let (w, h, d0, d1, t) = (field(0), field(1), field(2), field(3), field(4));
    let (t_in, inside, b) = (field(5), field(6), field(7));
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
            // The end knots are constants: X_{b+1} has a gradient only if b + 1 < K.
            let upper = b[e] + 1.0 < k as f32;
            (g_lo[0][e], g_hi[0][e]) = (g_x0 - g_w, if upper { g_w } else { 0.0 });
            (g_lo[1][e], g_hi[1][e]) = (g_y0 - g_h, if upper { g_h } else { 0.0 });
            g_d0[e] = gy * dy_dd0 + gl * dl_dd0;
            g_d1[e] = gy * dy_dd1 + gl * dl_dd1;
            ga[e] = g_t / w;
        }
    }
    // Knots: x0 = X_b, w = X_{b+1} - X_b (and y alike).
    let scale = 1.0 - (MIN_BIN * k as f64) as f32;
    let two_b = 2.0 * bound;
    for (hi, half) in [0, k].into_iter().enumerate() {
        // X_i = -B + 2B Σ_{q<i} (sm_q scale + min) for 0 < i < K: dL/dsm_q =
        // 2B scale Σ_{i>q} dL/dX_i, where only X_b (b > 0) and X_{b+1} have one.
        // dL/dsm_q goes into its parameter's row of `dr` first; the
        // softmax's backward then turns it into dL/d(raw) in place.
        let mut dot = [-0f32; T];
        for qi in 0..k {
            let (qf, smq) = (qi as f32, *row(sc, 0, half + qi));
            let dq = row_mut(dr, 0, half + qi);
            for e in 0..T {
                let mut acc = 0f32;
                if qf <= b[e] {
                    acc += g_hi[hi][e];
                }
                if qf < b[e] {
                    acc += g_lo[hi][e];
                }
                dq[e] = acc * two_b * scale;
                dot[e] += smq[e] * dq[e];
            }
        }
        for qi in 0..k {
            let smq = *row(sc, 0, half + qi);
            let o = row_mut(dr, 0, half + qi);
            for e in 0..T {
                o[e] = smq[e] * (o[e] - dot[e]);
            }
        }
    }
    // Interior derivatives D_i = softplus(r + c0) + min, i = 1..K-1.
    for qi in 0..k - 1 {
        let (qf, sig) = (qi as f32, *row(sc, 0, 2 * k + qi));
        let o = row_mut(dr, 0, 2 * k + qi);
        for e in 0..T {
            let mut v = 0f32;
            if qf + 1.0 == b[e] {
                v += g_d0[e] * sig[e];
            }
            if qf == b[e] {
                v += g_d1[e] * sig[e];
            }
            o[e] = v;
        }
    }
    ga
}

/// The inverse of one feature's spline (knots `kn`, [`KnotLayout`]) for
/// event `e` of the tile at `y` (base → data): `(x, log dy/dx)`.
#[inline(always)]
fn spline_inverse(k: usize, bound: f32, kn: &[f32], e: usize, y: f32) -> (f32, f32) {
    if !(y >= -bound && y <= bound) {
        return (y, 0.0);
    }
    let lay = KnotLayout::new(k);
    let kn = &kn[..lay.len];
    let b = (1..k).filter(|&q| y >= kn[lay.ys + q * TILE + e]).count();
    let knot = |base: usize, q: usize| kn[base + q * TILE + e];
    let (x0, w) = (knot(0, b), knot(0, b + 1) - knot(0, b));
    let (y0, h) = (knot(lay.ys, b), knot(lay.ys, b + 1) - knot(lay.ys, b));
    let (d0, d1) = (knot(lay.ds, b), knot(lay.ds, b + 1));
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
/// (`k * D + j`), every lane alike: a feature whose output rows read nothing
/// (the first in a MADE's order) has its biases as parameters, the same for
/// every event, so its knots are computed once per call instead of per tile.
fn constant_knots<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32]) -> Vec<Option<Vec<f32>>> {
    let d = p.d;
    let skip = if x.affine { 2 } else { 0 };
    let mut out = Vec::with_capacity(p.blocks.len() * d);
    let mut scratch: Option<KnotScratch> = None;
    for layers in &p.blocks {
        let lo = &layers[layers.len() - 1];
        for j in 0..d {
            out.push(x.spline.and_then(|(nk, bound)| {
                let rows = (0..3 * nk - 1).map(|q| (skip + q) * d + j);
                if rows.clone().any(|row| lo.live[row]) {
                    return None;
                }
                let bias = &w[lo.off + lo.a_len()..lo.off + lo.len()];
                let r: Vec<f32> = rows.flat_map(|row| [bias[row]; TILE]).collect();
                let mut kn = vec![0f32; KnotLayout::new(nk).len];
                let ws = scratch.get_or_insert_with(|| KnotScratch::new(nk));
                knots_tile::<AVX>(nk, bound, &r, ws, &mut kn);
                Some(kn)
            }));
        }
    }
    out
}

/// The element-wise part of block `k` for a tile of events, after its MADE:
/// shift and scale, spline and the learned map, from the raw outputs in each
/// event's block record (from `x.raw` on, `recs[e * er + kb..]`) and the
/// block inputs `u(e)`. Fills the rest of the records, caches the splines'
/// backward values in `cache` when `CACHE`, and adds the block's `log |det|`
/// to `ld` (per event, summed feature by feature in the order shift and
/// scale, spline, map).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block_tail_tile<const AVX: bool, const CACHE: bool>(
    p: &Plan,
    x: &Ext,
    w: &[f32],
    s: &mut Scratch,
    k: usize,
    er: usize,
    ld: &mut [f32; TILE],
) {
    let d = p.d;
    let kb = k * p.rec;
    let mut ldb = [0f32; TILE];
    for (e, lde) in ldb.iter_mut().enumerate() {
        let (before, this) = s.recs.split_at_mut(e * er + kb);
        let u: &[f32] = if k == 0 { &s.u0[e * d..(e + 1) * d] } else { &before[e * er + kb - p.rec + x.out..] };
        let rec = &mut this[..p.rec];
        if x.affine {
            let (raw, rest) = rec[x.raw..].split_at_mut(x.params * d);
            let (at, rest) = rest.split_at_mut(d);
            let (ae, rest) = rest.split_at_mut(d);
            let a = &mut rest[..d];
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
                *lde -= at[j] * p.bound;
            }
        } else {
            rec[x.a..x.a + d].copy_from_slice(&u[..d]);
        }
    }
    let base = |e: usize| e * er + kb;
    match x.spline {
        Some((nk, bound)) => {
            let cl = cache_len(nk) * TILE;
            for j in 0..d {
                let kn = knots_of(&s.consts, &s.tk, d, nk, k, j);
                let a: [f32; TILE] = std::array::from_fn(|e| s.recs[base(e) + x.a + j]);
                let sc = if CACHE { &mut s.cache[(k * d + j) * cl..(k * d + j + 1) * cl] } else { &mut [] };
                let (y, ls) = spline_forward_tile::<CACHE>(nk, bound, kn, &a, sc);
                for e in 0..TILE {
                    s.recs[base(e) + x.yo + j] = y[e];
                    ldb[e] += ls[e];
                }
            }
        }
        None => {
            for e in 0..TILE {
                s.recs.copy_within(base(e) + x.a..base(e) + x.a + d, base(e) + x.yo);
            }
        }
    }
    match x.mixes.get(k) {
        Some(m) => {
            // out = b + W yo, the events side by side: per output and event
            // the bias, then each product added in input order.
            let wm = &w[m.off..m.off + mix_len(d)];
            let yt = &mut s.yt[..d * TILE];
            for e in 0..TILE {
                for (j, &v) in s.recs[base(e) + x.yo..base(e) + x.yo + d].iter().enumerate() {
                    yt[j * TILE + e] = v;
                }
            }
            for (i, wrow) in wm[..d * d].chunks_exact(d).enumerate() {
                let mut acc = [wm[d * d + i]; TILE];
                for (j, &wv) in wrow.iter().enumerate() {
                    let yj = row(yt, 0, j);
                    for e in 0..TILE {
                        acc[e] += wv * yj[e];
                    }
                }
                for (e, &v) in acc.iter().enumerate() {
                    s.recs[base(e) + x.out + i] = v;
                }
            }
            for lde in &mut ldb {
                *lde += wm[d * d + d];
            }
        }
        None => {
            for e in 0..TILE {
                s.recs.copy_within(base(e) + x.yo..base(e) + x.yo + d, base(e) + x.out);
            }
        }
    }
    for (l, lb) in ld.iter_mut().zip(ldb) {
        *l += lb;
    }
}

/// The knots of feature `j` of block `k` for a tile ([`KnotLayout`]): its
/// constant knots if it has them, else the tile's in `tk`.
fn knots_of<'a>(consts: &'a [Option<Vec<f32>>], tk: &'a [f32], d: usize, nk: usize, k: usize, j: usize) -> &'a [f32] {
    let kl = KnotLayout::new(nk).len;
    consts[k * d + j].as_deref().unwrap_or(&tk[j * kl..(j + 1) * kl])
}

/// `dst[r * TILE + e] = src[e * ss + r]` for `r < n` and the [`TILE`]
/// events `e`: a tile's per-event rows turned into rows of one value per
/// event (8 × 8 blocks in registers with AVX2).
#[inline(always)]
fn transpose_tile<const AVX: bool>(src: &[f32], ss: usize, n: usize, dst: &mut [f32]) {
    assert!(src.len() >= (TILE - 1) * ss + n && dst.len() >= n * TILE, "transpose_tile: buffers too short");
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2; the
        // assert above bounds every access.
        done = unsafe { transpose_tile_avx2(src, ss, n, dst) };
    }
    for r in done..n {
        for e in 0..TILE {
            dst[r * TILE + e] = src[e * ss + r];
        }
    }
}

/// [`transpose_tile`]'s rows `..n / 8 * 8`, eight at a time; returns how many.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose_tile_avx2(src: &[f32], ss: usize, n: usize, dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    const _: () = assert!(TILE == 8, "the 8 x 8 transpose assumes tiles of 8 events");
    let n8 = n / 8 * 8;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..n8).step_by(8) {
        // SAFETY: rows `e < 8` of `src` hold `n >= r0 + 8` values (the caller's assert).
        let v: [__m256; 8] = std::array::from_fn(|e| unsafe { _mm256_loadu_ps(sp.add(e * ss + r0)) });
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[i / 2 * 2], v[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[q]: values q and q + 4 of events 0-3 (u[q]) and 4-7 (u[4 + q]).
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let h = i / 4 * 4;
            let (a, b) = (t[h + (i % 4) / 2], t[h + 2 + (i % 4) / 2]);
            if i % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xee>(a, b)
            }
        });
        for q in 0..4 {
            // SAFETY: `dst` holds `n * 8` values.
            unsafe {
                _mm256_storeu_ps(dp.add((r0 + q) * 8), _mm256_permute2f128_ps::<0x20>(u[q], u[4 + q]));
                _mm256_storeu_ps(dp.add((r0 + q + 4) * 8), _mm256_permute2f128_ps::<0x31>(u[q], u[4 + q]));
            }
        }
    }
    n8
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
    consts: Vec<Option<Vec<f32>>>,
    /// The knots of a tile's events per feature ([`KnotLayout`] each) and
    /// what [`knots_tile`] needs: raw parameters (`TILE × (3K - 1)`) and scratch.
    tk: Vec<f32>,
    kr: Vec<f32>,
    kw: KnotScratch,
    /// A tile's inputs of the learned map, `D × TILE` (events side by side).
    yt: Vec<f32>,
    /// A tile's raw outputs of a block, `params · D × TILE` (events side by side).
    rawt: Vec<f32>,
    /// The splines' backward caches of a tile (training): `cache_len × TILE`
    /// per block and feature, at `(k * D + j) * cache_len * TILE`.
    cache: Vec<f32>,
}

impl Scratch {
    fn new<const AVX: bool>(p: &Plan, x: &Ext, w: &[f32], training: bool) -> Scratch {
        let widest = p.blocks.iter().flatten().map(|y| y.n_out.max(y.k_in)).max().unwrap_or(0);
        let maxw = widest.max(x.params * p.d);
        let nk = x.spline.map_or(0, |(k, _)| k);
        let (kl, cl) = if nk > 0 { (KnotLayout::new(nk).len, cache_len(nk) * TILE) } else { (0, 0) };
        Scratch {
            recs: vec![0f32; TILE * p.blocks.len() * p.rec],
            tout: vec![0f32; TILE * maxw],
            dy: vec![0f32; TILE * maxw],
            dz: vec![0f32; TILE * maxw],
            maxw,
            u0: vec![0f32; TILE * p.d],
            c0: vec![0f32; TILE * p.l],
            consts: constant_knots::<AVX>(p, x, w),
            tk: vec![0f32; kl * p.d],
            kr: vec![0f32; TILE * (3 * nk).saturating_sub(1)],
            kw: KnotScratch::new(nk.max(2)),
            yt: vec![0f32; TILE * p.d],
            rawt: vec![0f32; TILE * x.params * p.d],
            cache: vec![0f32; if training { cl * p.d * p.blocks.len() } else { 0 }],
        }
    }

    /// The knots of feature `j` of block `k` for every event of the tile into
    /// `tk`, from the raw outputs `raw(e)` of event `e` (one parameter after
    /// the other, each for every feature); nothing for a feature with
    /// constant knots.
    #[inline(always)]
    fn tile_knots<'r, const AVX: bool>(
        &mut self,
        d: usize,
        x: &Ext,
        k: usize,
        j: usize,
        raw: impl Fn(usize) -> &'r [f32],
    ) {
        // Parameter by parameter, the tile's events side by side.
        self.knots_from::<AVX>(d, x, k, j, |kr, _, n, skip| {
            for e in 0..TILE {
                let re = raw(e);
                for q in 0..n {
                    kr[q * TILE + e] = re[(skip + q) * d + j];
                }
            }
        });
    }

    /// [`Scratch::tile_knots`] from `self.rawt`, the tile's raw outputs
    /// already turned into rows of one value per event ([`transpose_tile`]).
    #[inline(always)]
    fn tile_knots_t<const AVX: bool>(&mut self, d: usize, x: &Ext, k: usize, j: usize) {
        self.knots_from::<AVX>(d, x, k, j, |kr, rawt, _, skip| {
            for (q, kq) in kr.chunks_exact_mut(TILE).enumerate() {
                let at = ((skip + q) * d + j) * TILE;
                kq.copy_from_slice(&rawt[at..at + TILE]);
            }
        });
    }

    /// What [`Scratch::tile_knots`] and [`Scratch::tile_knots_t`] share:
    /// `fill(kr, rawt, n, skip)` puts the `n` spline parameters of feature `j`
    /// (after `skip` affine ones) into the rows of `kr`, one value per event;
    /// then the knots go into `tk`. Nothing for a feature with constant knots.
    #[inline(always)]
    fn knots_from<const AVX: bool>(
        &mut self,
        d: usize,
        x: &Ext,
        k: usize,
        j: usize,
        fill: impl FnOnce(&mut [f32], &[f32], usize, usize),
    ) {
        let Some((nk, bound)) = x.spline else { return };
        if self.consts[k * d + j].is_some() {
            return;
        }
        let (n, skip) = (3 * nk - 1, if x.affine { 2 } else { 0 });
        fill(&mut self.kr[..n * TILE], &self.rawt, n, skip);
        let kl = KnotLayout::new(nk).len;
        knots_tile::<AVX>(nk, bound, &self.kr, &mut self.kw, &mut self.tk[j * kl..(j + 1) * kl]);
    }

    /// The knots of feature `j` of block `k` for the tile ([`KnotLayout`]).
    fn knots(&self, d: usize, nk: usize, k: usize, j: usize) -> &[f32] {
        knots_of(&self.consts, &self.tk, d, nk, k, j)
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
/// recording into `s.recs` (and the splines' backward values into `s.cache`
/// when `CACHE`). Returns `log |det du/dx|` per event; `u` is the last block
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
            // The output layer's values (still in `tout`), one row per output.
            let np = x.params * d;
            transpose_tile::<AVX>(&s.tout, np, np, &mut s.rawt);
            for j in 0..d {
                s.tile_knots_t::<AVX>(d, x, k, j);
            }
        }
        block_tail_tile::<AVX, CACHE>(p, x, w, s, k, er, &mut ld);
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
        grad_rows_tile::<AVX>(y, ga, dy, ds, z, zs);
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
    let mut s = Scratch::new::<AVX>(p, x, w, true);
    let maxw = s.maxw;
    let mut g = vec![0f32; TILE * d];
    let mut gn = vec![0f32; d];
    let mut dr = [0f32; 3 * MAX_BINS * TILE];
    let mut dyt = vec![0f32; x.params * d * TILE];
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
                    let (gw, gb) = gm.split_at_mut(d * d);
                    for ((grow, gbi), &gi) in gw.chunks_exact_mut(d).zip(gb.iter_mut()).zip(ge.iter()) {
                        for (gv, y) in grow.iter_mut().zip(yo) {
                            *gv += gi * y;
                        }
                        *gbi += gi;
                    }
                    gb[d] -= wt[e];
                    // gn = Wᵀ ge, each sum over i in order from -0 (as `Sum`).
                    gn.iter_mut().for_each(|v| *v = -0.0);
                    for (wrow, &gi) in wm[..d * d].chunks_exact(d).zip(ge.iter()) {
                        for (v, wv) in gn.iter_mut().zip(wrow) {
                            *v += wv * gi;
                        }
                    }
                    ge.copy_from_slice(&gn);
                }
            }
            // Every one of an event's `np` values of dL/d(outputs) is written
            // below: the spline's from `skip * D` on, the shift and log-scale's before.
            if let Some((nk, bound)) = x.spline {
                let (n, cl) = (3 * nk - 1, cache_len(nk));
                let gl: [f32; TILE] = std::array::from_fn(|e| -wt[e]);
                for j in 0..d {
                    let gy: [f32; TILE] = std::array::from_fn(|e| g[e * d + j]);
                    let sc = &s.cache[(k * d + j) * cl * TILE..(k * d + j + 1) * cl * TILE];
                    let ga = spline_backward_tile(nk, bound, sc, &gy, &gl, &mut dr);
                    for e in 0..TILE {
                        g[e * d + j] = ga[e];
                    }
                    // dL/d(raw output (skip + q) D + j), the events side by side.
                    for (q, dq) in dr[..n * TILE].chunks_exact(TILE).enumerate() {
                        let at = ((skip + q) * d + j) * TILE;
                        dyt[at..at + TILE].copy_from_slice(dq);
                    }
                }
                // Into each event's row of dL/d(outputs).
                let cols = dyt[skip * d * TILE..np * TILE].chunks_exact(TILE);
                for e in 0..TILE {
                    let row = &mut s.dy[e * maxw + skip * d..e * maxw + np];
                    for (v, col) in row.iter_mut().zip(cols.clone()) {
                        *v = col[e];
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
    let mut s = Scratch::new::<AVX>(p, x, w, false);
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
    let mut s = Scratch::new::<AVX>(p, x, w, false);
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
                            Some((nk, bound)) => spline_inverse(nk, bound, s.knots(d, nk, k, j), e, yj),
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

    /// The tile transpose puts value `r` of event `e` at `r * TILE + e`, in
    /// the AVX2 path (8 × 8 blocks) as in the portable loop, for row lengths
    /// on and off a multiple of 8, and leaves the rest of `dst` alone.
    #[test]
    fn transpose_tile_turns_event_rows_into_value_rows() {
        for (n, ss) in [(1usize, 3usize), (7, 7), (8, 8), (13, 21), (300, 304), (16, 40)] {
            let src: Vec<f32> = (0..TILE * ss).map(|i| i as f32 + 0.5).collect();
            for avx in [false, true] {
                if avx && !(cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2")) {
                    continue;
                }
                let mut dst = vec![-1f32; n * TILE + 5];
                if avx {
                    transpose_tile::<true>(&src, ss, n, &mut dst);
                } else {
                    transpose_tile::<false>(&src, ss, n, &mut dst);
                }
                for r in 0..n {
                    for e in 0..TILE {
                        assert_eq!(dst[r * TILE + e], src[e * ss + r], "n {n} value {r} event {e} avx {avx}");
                    }
                }
                assert!(dst[n * TILE..].iter().all(|&v| v == -1.0), "wrote past n rows (n {n}, avx {avx})");
            }
        }
    }

    /// Each lane of a tile's knots depends on its own event only: lane by
    /// lane, the knots equal those of the event's parameters copied to every
    /// lane (how constant features get theirs), bit for bit, in the portable
    /// and the AVX2 path, with the softplus threshold crossed; and they are
    /// the spline's knots (the formulas in f64).
    #[test]
    fn knots_of_a_tile_are_each_events_own() {
        let bound = 3.0f32;
        for k in [2usize, 5, 8] {
            let n = 3 * k - 1;
            let lay = KnotLayout::new(k);
            // Raw parameters of every size, some derivative inputs above softplus's threshold.
            let raw: Vec<f32> =
                (0..TILE * n).map(|i| if i % 7 == 5 { 30.0 } else { ((i * 37 % 101) as f32 - 50.0) * 0.07 }).collect();
            let soa = |e0: Option<usize>| -> Vec<f32> {
                let mut v = vec![0f32; TILE * n];
                for e in 0..TILE {
                    for q in 0..n {
                        v[q * TILE + e] = raw[e0.unwrap_or(e) * n + q];
                    }
                }
                v
            };
            let above =
                (0..TILE).any(|e| raw[e * n + 2 * k..(e + 1) * n].iter().any(|&v| v + derivative_offset() > 20.0));
            assert!(above, "no derivative input above the threshold");
            let mut ws = KnotScratch::new(k);
            let run = |avx: bool, r: &[f32], ws: &mut KnotScratch| -> Vec<f32> {
                let mut out = vec![0f32; lay.len];
                if avx {
                    knots_tile::<true>(k, bound, r, ws, &mut out);
                } else {
                    knots_tile::<false>(k, bound, r, ws, &mut out);
                }
                out
            };
            let lane =
                |kn: &[f32], e: usize| -> Vec<u32> { kn.iter().skip(e).step_by(TILE).map(|v| v.to_bits()).collect() };
            let mut avx_paths = vec![false];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                avx_paths.push(true);
            }
            let portable = run(false, &soa(None), &mut ws);
            for avx in avx_paths {
                let tile = run(avx, &soa(None), &mut ws);
                assert_eq!(lane(&tile, 0).len(), lay.len / TILE);
                for e in 0..TILE {
                    let alone = run(avx, &soa(Some(e)), &mut ws);
                    let what = format!("K = {k}, event {e}, avx {avx}");
                    assert_eq!(lane(&tile, e), lane(&alone, e), "{what}: tile vs the event alone");
                    assert_eq!(lane(&tile, e), lane(&portable, e), "{what}: AVX2 vs portable");
                }
            }
            // The formulas in f64, per event.
            let scale = 1.0 - MIN_BIN * k as f64;
            let c0 = f64::from(derivative_offset());
            for e in 0..TILE {
                let r = |q: usize| f64::from(raw[e * n + q]);
                let got = |at: usize, q: usize| f64::from(portable[at + q * TILE + e]);
                for (half, pos) in [(0, 0), (k, lay.ys)] {
                    let m = (0..k).map(|q| r(half + q)).fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = (0..k).map(|q| (r(half + q) - m).exp()).sum();
                    let mut cum = 0.0;
                    for q in 0..=k {
                        let want = -f64::from(bound) + 2.0 * f64::from(bound) * cum;
                        assert!(
                            (got(pos, q) - want).abs() < 1e-5,
                            "K = {k}, event {e}, knot {q}: {} vs {want}",
                            got(pos, q)
                        );
                        if q < k {
                            let sm = (r(half + q) - m).exp() / sum;
                            assert!((got(lay.sm, half + q) - sm).abs() < 1e-6);
                            cum += sm * scale + MIN_BIN;
                        }
                    }
                }
                for q in 0..k - 1 {
                    let v = r(2 * k + q) + c0;
                    let sp = if v > 20.0 { v } else { v.exp().ln_1p() };
                    assert!(
                        (got(lay.ds, q + 1) - (sp + MIN_DERIVATIVE)).abs() < 1e-5 * (1.0 + sp),
                        "K = {k}, derivative {q}"
                    );
                    assert!((got(lay.sig, q) - 1.0 / (1.0 + (-v).exp())).abs() < 1e-6);
                }
                assert_eq!((got(lay.ds, 0), got(lay.ds, k)), (1.0, 1.0));
            }
        }
    }
}
