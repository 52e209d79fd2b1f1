//! Monotonic rational-quadratic spline transform (Durkan et al. 2019, "Neural
//! Spline Flows", arXiv:1906.04068), the element-wise map of a spline MAF block.
//!
//! On `[-B, B]` the map is a spline of `K` rational-quadratic pieces whose knot
//! widths, heights and interior derivatives come from the MADE's outputs; it
//! is the identity outside, with derivative 1 at both ends so the map is
//! continuously differentiable. Widths and heights are a softmax (each at
//! least [`MIN_BIN`] of the interval), interior derivatives a shifted softplus
//! (at least [`MIN_DERIVATIVE`]) such that raw outputs of zero give the
//! identity map: a freshly initialised block starts at the identity, like the
//! affine one. Every operation is a libtorch op, so autograd gives the
//! gradient for training.

use tch::{Kind, Tensor};

/// Smallest bin width and height, as a fraction of the interval `2B`.
pub const MIN_BIN: f64 = 1e-3;
/// Smallest interior derivative.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// Shape of the spline: `bins` pieces on `[-bound, bound]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplineSpec {
    /// Number of rational-quadratic pieces `K`.
    pub bins: i64,
    /// Half-width `B` of the interval the spline covers.
    pub bound: f64,
}

impl SplineSpec {
    /// Raw network outputs per feature: `K` widths, `K` heights, `K - 1` derivatives.
    pub fn params_per_feature(&self) -> i64 {
        3 * self.bins - 1
    }
}

/// Knot positions `[.., K+1]` along x and y, and the derivative at each knot.
struct Knots {
    xs: Tensor,
    ys: Tensor,
    ds: Tensor,
}

/// Cumulative knot positions on `[-B, B]` from raw bin sizes `[.., K]`; the end
/// knots are exactly `-B` and `B`.
fn positions(raw: &Tensor, spec: SplineSpec) -> Tensor {
    let k = spec.bins;
    let b = spec.bound;
    let w = raw.softmax(-1, Kind::Float) * (1.0 - MIN_BIN * k as f64) + MIN_BIN;
    let cum = w.cumsum(-1, Kind::Float).narrow(-1, 0, k - 1) * (2.0 * b) - b;
    let mut end_shape = raw.size();
    if let Some(last) = end_shape.last_mut() {
        *last = 1;
    }
    let lo = Tensor::full(&end_shape, -b, (Kind::Float, raw.device()));
    let hi = Tensor::full(&end_shape, b, (Kind::Float, raw.device()));
    Tensor::cat(&[lo, cum, hi], -1)
}

fn knots(raw: &Tensor, spec: SplineSpec) -> Knots {
    let k = spec.bins;
    let xs = positions(&raw.narrow(-1, 0, k), spec);
    let ys = positions(&raw.narrow(-1, k, k), spec);
    // softplus(0 + c0) + MIN_DERIVATIVE = 1: zero raw outputs give slope 1.
    let c0 = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let inner = (raw.narrow(-1, 2 * k, k - 1) + c0).softplus() + MIN_DERIVATIVE;
    let mut end_shape = raw.size();
    if let Some(last) = end_shape.last_mut() {
        *last = 1;
    }
    let one = Tensor::ones(&end_shape, (Kind::Float, raw.device()));
    let ds = Tensor::cat(&[one.shallow_clone(), inner, one], -1);
    Knots { xs, ys, ds }
}

/// The piece each value falls in (`0..K`), from the interior knots of `edges`.
fn bin_index(v: &Tensor, edges: &Tensor, bins: i64) -> Tensor {
    let interior = edges.narrow(-1, 1, bins - 1);
    v.unsqueeze(-1).ge_tensor(&interior).sum_dim_intlist(-1, true, Kind::Int64)
}

/// Per-element quantities of the piece at `idx`.
struct Piece {
    x0: Tensor,
    w: Tensor,
    y0: Tensor,
    h: Tensor,
    d0: Tensor,
    d1: Tensor,
}

fn piece(kn: &Knots, idx: &Tensor) -> Piece {
    let at = |t: &Tensor, i: &Tensor| t.gather(-1, i, false).squeeze_dim(-1);
    let next = idx + 1;
    let x0 = at(&kn.xs, idx);
    let y0 = at(&kn.ys, idx);
    Piece { w: at(&kn.xs, &next) - &x0, h: at(&kn.ys, &next) - &y0, x0, y0, d0: at(&kn.ds, idx), d1: at(&kn.ds, &next) }
}

/// `log dy/dx` of the piece at the relative position `t` in `[0, 1]`.
fn log_slope(p: &Piece, t: &Tensor) -> Tensor {
    let s = &p.h / &p.w;
    let tt = t * (1.0 - t);
    let one_t = 1.0 - t;
    let denom = &s + (&p.d0 + &p.d1 - &s * 2.0) * &tt;
    let num = &s * &s * (&p.d1 * t * t + &s * &tt * 2.0 + &p.d0 * &one_t * &one_t);
    num.log() - denom.log() * 2.0
}

/// Where each value lies: inside `[-B, B]` or not, the value clamped to it (so
/// that the unused branch of the final `where` stays finite: NaN there would
/// still poison the gradient), and its piece, found along x (`on_y` false) or
/// along y.
fn locate(v: &Tensor, raw: &Tensor, spec: SplineSpec, on_y: bool) -> (Tensor, Tensor, Piece) {
    let b = spec.bound;
    let inside = v.ge(-b).logical_and(&v.le(b));
    let vc = v.clamp(-b, b);
    let kn = knots(raw, spec);
    let idx = bin_index(&vc, if on_y { &kn.ys } else { &kn.xs }, spec.bins);
    (inside, vc, piece(&kn, &idx))
}

/// Data side → base side: `y = f(x)` and `log f'(x)` per element.
///
/// # Shapes
/// `x: [N, D]`, `raw: [N, D, 3K - 1]` → `(y: [N, D], logdet: [N, D])`
pub fn forward(x: &Tensor, raw: &Tensor, spec: SplineSpec) -> (Tensor, Tensor) {
    let (inside, xc, p) = locate(x, raw, spec, false);
    let t = ((&xc - &p.x0) / &p.w).clamp(0.0, 1.0);
    let s = &p.h / &p.w;
    let tt = &t * (1.0 - &t);
    let num = &p.h * (&s * &t * &t + &p.d0 * &tt);
    let denom = &s + (&p.d0 + &p.d1 - &s * 2.0) * &tt;
    let y = &p.y0 + num / denom;
    let ld = log_slope(&p, &t);
    (y.where_self(&inside, x), ld.where_self(&inside, &ld.zeros_like()))
}

/// Base side → data side: `x = f⁻¹(y)` and `log f'(x)` per element (the same
/// quantity [`forward`] returns at that `x`).
///
/// # Shapes
/// `y: [N, D]`, `raw: [N, D, 3K - 1]` → `(x: [N, D], logdet: [N, D])`
pub fn inverse(y: &Tensor, raw: &Tensor, spec: SplineSpec) -> (Tensor, Tensor) {
    let (inside, yc, p) = locate(y, raw, spec, true);
    let s = &p.h / &p.w;
    let dy = &yc - &p.y0;
    let sum_d = &p.d0 + &p.d1 - &s * 2.0;
    // Root in [0, 1] of a t² + b t + c = 0 (the stable form of the quadratic formula).
    let qa = &p.h * (&s - &p.d0) + &dy * &sum_d;
    let qb = &p.h * &p.d0 - &dy * &sum_d;
    let qc = -(&s * &dy);
    let disc = (&qb * &qb - &qa * &qc * 4.0).clamp_min(0.0);
    let t = ((&qc * 2.0) / (-&qb - disc.sqrt())).clamp(0.0, 1.0);
    let x = &t * &p.w + &p.x0;
    let ld = log_slope(&p, &t);
    (x.where_self(&inside, y), ld.where_self(&inside, &ld.zeros_like()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const SPEC: SplineSpec = SplineSpec { bins: 6, bound: 2.5 };

    /// Raw parameters for `n` rows of 3 features, far from the identity.
    fn raw(n: i64, seed: i64) -> Tensor {
        let _rng = crate::rng::seeded(seed as u64);
        Tensor::randn([n, 3, SPEC.params_per_feature()], (Kind::Float, Device::Cpu)) * 1.5
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1).contiguous()).unwrap_or_default()
    }

    /// Values across the interval, at its ends and outside.
    fn grid(n: i64) -> Tensor {
        let x = Tensor::linspace(-4.0, 4.0, n * 3, (Kind::Float, Device::Cpu)).view([n, 3]);
        let ends = Tensor::from_slice(&[-2.5f32, 2.5, 0.0, 2.5, -2.5, -2.500_001]).view([2, 3]);
        Tensor::cat(&[x, ends], 0)
    }

    #[test]
    fn zero_outputs_give_the_identity() {
        let x = grid(50);
        let r = Tensor::zeros([x.size()[0], 3, SPEC.params_per_feature()], (Kind::Float, Device::Cpu));
        let (y, ld) = forward(&x, &r, SPEC);
        assert!((&y - &x).abs().max().double_value(&[]) < 1e-5);
        assert!(ld.abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn the_spline_is_strictly_increasing_and_continuous() {
        // One row of parameters for every x: a fine grid through every piece.
        let n = 4000;
        let r = raw(1, 3).expand([n, 3, SPEC.params_per_feature()], false);
        let x = Tensor::linspace(-3.0, 3.0, n, (Kind::Float, Device::Cpu)).unsqueeze(1).expand([n, 3], false);
        let (y, ld) = forward(&x, &r, SPEC);
        let step = 6.0 / (n - 1) as f64;
        for j in 0..3 {
            let col = vals(&y.select(1, j));
            // Continuity: no step larger than the steepest slope allows.
            let steepest = ld.select(1, j).max().double_value(&[]).exp();
            for w in col.windows(2) {
                assert!(w[1] > w[0], "feature {j}: not increasing ({} then {})", w[0], w[1]);
                assert!(f64::from(w[1] - w[0]) < step * steepest * 1.5, "feature {j}: jump from {} to {}", w[0], w[1]);
            }
        }
        // Not the identity (else the test is empty).
        assert!((&y - &x).abs().max().double_value(&[]) > 0.1);
    }

    #[test]
    fn inverse_undoes_forward_including_the_bounds() {
        let x = grid(400);
        let r = raw(x.size()[0], 5);
        let (y, ld_f) = forward(&x, &r, SPEC);
        let (x2, ld_i) = inverse(&y, &r, SPEC);
        // Where the spline is nearly flat (slopes down to ~1e-5 with these
        // parameters) x is ill-conditioned given y: compare the error scaled by
        // the slope, i.e. in y units, where float rounding is what remains.
        let err = ((&x2 - &x).abs() * ld_f.exp().clamp_max(1.0)).max().double_value(&[]);
        assert!(err < 2e-6, "inverse(forward(x)) off by {err} (in y units)");
        let (y2, ld_back) = forward(&x2, &r, SPEC);
        let yerr = (&y2 - &y).abs().max().double_value(&[]);
        assert!(yerr < 2e-6, "forward(inverse(y)) off by {yerr}");
        let plain = (&x2 - &x).abs().max().double_value(&[]);
        assert!(plain < 1e-2, "inverse(forward(x)) off by {plain}");
        // The inverse's log-slope is the forward one at the x it returns.
        let derr = (&ld_back - &ld_i).abs().max().double_value(&[]);
        assert!(derr < 1e-4, "log-slopes differ by {derr}");
        // The ends map to themselves: the spline covers exactly [-B, B].
        let ends = Tensor::from_slice(&[-2.5f32, 2.5, 0.0]).view([1, 3]);
        let (ye, _) = forward(&ends, &r.narrow(0, 0, 1), SPEC);
        let v = vals(&ye);
        assert!((v[0] + 2.5).abs() < 1e-6 && (v[1] - 2.5).abs() < 1e-6, "ends moved: {v:?}");
    }

    #[test]
    fn log_slope_matches_autograd_and_gradients_are_finite() {
        let x = grid(200).set_requires_grad(true);
        let r = raw(x.size()[0], 7).set_requires_grad(true);
        let (y, ld) = forward(&x, &r, SPEC);
        // Each output depends on its own input only: the gradient of the sum is dy/dx.
        let g = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], true, false);
        let err = (g[0].log() - &ld).abs().max().double_value(&[]);
        assert!(err < 1e-3, "log dy/dx from autograd and from the formula differ by {err}");
        // The loss gradient reaches every parameter and stays finite, also from the tails.
        let gr = Tensor::run_backward(&[(&y * &y).sum(Kind::Float) - ld.sum(Kind::Float)], &[&r], false, false);
        assert!(bool::try_from(gr[0].isfinite().all()).unwrap_or(false), "non-finite parameter gradient");
    }
}
