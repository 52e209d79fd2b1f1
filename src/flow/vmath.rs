//! `exp`, `tanh` and `log1p` of f32 slices, eight lanes at a time with AVX2,
//! for the fast CPU path ([`super::fast`]).
//!
//! Both are polynomial approximations after Cephes' `expf`/`tanhf`
//! (S. L. Moshier, *Methods and Programs for Mathematical Functions*, 1989):
//!
//! * `exp(x) = 2^n · P(r)` with `n = round(x·log2 e)` and
//!   `r = x − n·ln 2` (ln 2 split in two constants, so `r` is nearly exact);
//!   the scale `2^n` is applied as two powers of two, so results between
//!   `f32::MAX / 2` and overflow, and subnormal results, are rounded once.
//!   Above 89 the result is `+inf`, below −104 it is `0`, NaN stays NaN.
//! * `tanh(x) = x + x·z·Q(z)` (`z = x²`) for `|x| < 0.625`, else
//!   `sign(x)·(1 − 2/(exp(2|x|) + 1))`; the sign of `x` is kept (also of −0).
//! * `log1p(t)` for `t ≥ 0` (the spline's softplus): `u = 1 + t`, `ln u`
//!   after Cephes' `logf` (`u = m·2^e`, `m ∈ [√½, √2)`, `ln m = r − r²/2 +
//!   r³·R(r)` with `r = m − 1`), times `t / (u − 1)` to restore the bits of `t`
//!   lost in `1 + t` (Goldberg's trick); `+inf` and NaN pass through.
//!
//! Determinism: the AVX2 code and the portable scalar code perform the same
//! IEEE operations in the same order (separate multiply and add, never a
//! fused multiply-add; `min`/`max` with the semantics of `minps`/`maxps`;
//! round-half-to-even), so every value has the same bits whichever path
//! computes it, on any x86-64 and for any split of a slice between the two.
//! Relative error: about 1e-7 for `exp`, 2e-7 for `tanh` (tested against
//! f64 in this module).

/// Above this `exp` overflows (to `+inf`; `ln(f32::MAX) ≈ 88.72`).
const EXP_HI: f32 = 89.0;
/// Below this `exp` is `0` (the smallest subnormal is `e^-103.28`).
const EXP_LO: f32 = -104.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2 = C1 − C2`, `C1` with 9 significant bits so `n·C1` is exact.
const C1: f32 = 0.693_359_4; // 0.693359375 exactly
const C2: f32 = -2.121_944_4e-4;
const EP: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
/// Below this `|x|`, `tanh` uses its odd polynomial.
const TANH_SMALL: f32 = 0.625;
const TP: [f32; 5] = [-5.704_988_7e-3, 2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1];
const SIGN: u32 = 0x8000_0000;
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
const LP: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// `minps(a, b)`: `a < b ? a : b` (so a NaN in `b` is returned).
#[inline(always)]
fn min_ps(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// `maxps(a, b)`: `a > b ? a : b` (so a NaN in `b` is returned).
#[inline(always)]
fn max_ps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `2^n` for `n` in `-126..=127`.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// `e^x`, the portable lane of [`exp_in_place`].
#[inline(always)]
pub fn exp_scalar(x: f32) -> f32 {
    let x = max_ps(EXP_LO, min_ps(EXP_HI, x));
    let fx = (x * LOG2E).round_ties_even();
    let r = x - fx * C1;
    let r = r - fx * C2;
    let z = r * r;
    let mut p = EP[0];
    for &c in &EP[1..] {
        p = p * r + c;
    }
    let y = (p * z + r) + 1.0;
    // fx is an integer in -150..=129 (or NaN, where y is NaN too).
    let n = fx as i32;
    let n1 = n >> 1;
    (y * pow2(n1)) * pow2(n - n1)
}

/// `tanh(x)`, the portable lane of [`tanh_in_place`].
#[inline(always)]
pub fn tanh_scalar(x: f32) -> f32 {
    let a = f32::from_bits(x.to_bits() & !SIGN);
    let z = x * x;
    let mut p = TP[0];
    for &c in &TP[1..] {
        p = p * z + c;
    }
    let small = (p * z) * x + x;
    let e = exp_scalar(a + a);
    let large = 1.0 - 2.0 / (e + 1.0);
    let r = if a < TANH_SMALL { small } else { large };
    // The sign of x (the small branch has it already, except for -0).
    f32::from_bits(r.to_bits() | (x.to_bits() & SIGN))
}

/// `ln(u)` for a positive, normal, finite `u` (the lane of [`ln1p_scalar`]).
#[inline(always)]
fn ln_core(u: f32) -> f32 {
    let bits = u.to_bits();
    let fe = (((bits >> 23) as i32) - 126) as f32;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    // m in [0.5, 1): move it to [√½, √2) so that r = m - 1 is small.
    let small = m < SQRT_HALF;
    let fe = if small { fe - 1.0 } else { fe };
    let r = if small { (m + m) - 1.0 } else { m - 1.0 };
    let z = r * r;
    let mut p = LP[0];
    for &c in &LP[1..] {
        p = p * r + c;
    }
    let y = ((p * r) * z + fe * C2) - z * 0.5;
    (r + y) + fe * C1
}

/// `ln(1 + t)` for `t ≥ 0`, the portable lane of [`ln1p_in_place`].
#[inline(always)]
pub fn ln1p_scalar(t: f32) -> f32 {
    let u = t + 1.0;
    // u == 1: t is below half an ulp of 1 and ln(1 + t) = t to within rounding.
    let v = if u == 1.0 { t } else { ln_core(u) * (t / (u - 1.0)) };
    if u < f32::INFINITY {
        v
    } else {
        u
    }
}

/// Whether the CPU runs the 512-bit kernels (AVX-512F), here and in the CPU
/// engine: the same bits as the 256-bit ones with twice the lanes per
/// instruction. `FEDHEX_NO_AVX512=1` keeps the 256-bit kernels (for comparisons).
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_kernels() -> bool {
    #[cfg(test)]
    if NARROW.get() {
        return false;
    }
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f") && std::env::var_os("FEDHEX_NO_AVX512").is_none_or(|v| v == "0")
    })
}

#[cfg(test)]
thread_local! {
    /// Tests: run the 256-bit kernels on this thread even where AVX-512F is.
    pub(crate) static NARROW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Sixteen lanes of [`exp_scalar`], operation for operation (as `avx2::exp8`).
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_set1_ps(EXP_LO), _mm512_min_ps(_mm512_set1_ps(EXP_HI), x));
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_sub_ps(x, _mm512_mul_ps(fx, _mm512_set1_ps(C1)));
        let r = _mm512_sub_ps(r, _mm512_mul_ps(fx, _mm512_set1_ps(C2)));
        let z = _mm512_mul_ps(r, r);
        let mut p = _mm512_set1_ps(EP[0]);
        for &c in &EP[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, z), r), _mm512_set1_ps(1.0));
        let n = _mm512_cvtps_epi32(fx);
        let n1 = _mm512_srai_epi32::<1>(n);
        let n2 = _mm512_sub_epi32(n, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        _mm512_mul_ps(_mm512_mul_ps(y, s1), s2)
    }

    /// Sixteen lanes of [`tanh_scalar`], operation for operation (as `avx2::tanh8`).
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    fn tanh16(x: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(SIGN as i32);
        let xi = _mm512_castps_si512(x);
        let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(TP[0]);
        for &c in &TP[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, z), _mm512_set1_ps(c));
        }
        let small = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, z), x), x);
        let e = exp16(_mm512_add_ps(a, a));
        let one = _mm512_set1_ps(1.0);
        let large = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)));
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(TANH_SMALL));
        let v = _mm512_castps_si512(_mm512_mask_blend_ps(is_small, large, small));
        _mm512_castsi512_ps(_mm512_or_si512(v, _mm512_and_si512(xi, sign)))
    }

    /// Sixteen lanes of [`ln1p_scalar`], operation for operation (as `avx2::ln1p8`).
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    fn ln1p16(t: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let u = _mm512_add_ps(t, one);
        let bits = _mm512_castps_si512(u);
        let e = _mm512_sub_epi32(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(126));
        let fe = _mm512_cvtepi32_ps(e);
        let m = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x3f00_0000),
        ));
        let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m, _mm512_set1_ps(SQRT_HALF));
        let fe = _mm512_mask_blend_ps(small, fe, _mm512_sub_ps(fe, one));
        let r = _mm512_mask_blend_ps(small, _mm512_sub_ps(m, one), _mm512_sub_ps(_mm512_add_ps(m, m), one));
        let z = _mm512_mul_ps(r, r);
        let mut p = _mm512_set1_ps(LP[0]);
        for &c in &LP[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), z), _mm512_mul_ps(fe, _mm512_set1_ps(C2)));
        let y = _mm512_sub_ps(y, _mm512_mul_ps(z, _mm512_set1_ps(0.5)));
        let ln = _mm512_add_ps(_mm512_add_ps(r, y), _mm512_mul_ps(fe, _mm512_set1_ps(C1)));
        let v = _mm512_mul_ps(ln, _mm512_div_ps(t, _mm512_sub_ps(u, one)));
        let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(u, one), v, t);
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(u, _mm512_set1_ps(f32::INFINITY)), u, v)
    }

    /// `f` on the full groups of sixteen of `v`; returns the length done.
    #[inline(always)]
    fn groups(v: &mut [f32], f: impl Fn(__m512) -> __m512) -> usize {
        let m = v.len() / 16 * 16;
        for c in v[..m].chunks_exact_mut(16) {
            // SAFETY: `c` holds exactly sixteen floats.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
        }
        m
    }

    /// [`super::exp_in_place`] on full groups of sixteen; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) fn exp_groups(v: &mut [f32]) -> usize {
        groups(v, |x| exp16(x))
    }

    /// [`super::tanh_in_place`] on full groups of sixteen; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) fn tanh_groups(v: &mut [f32]) -> usize {
        groups(v, |x| tanh16(x))
    }

    /// [`super::ln1p_in_place`] on full groups of sixteen; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) fn ln1p_groups(v: &mut [f32]) -> usize {
        groups(v, |x| ln1p16(x))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Eight lanes of [`exp_scalar`], operation for operation.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), x));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(C1)));
        let r = _mm256_sub_ps(r, _mm256_mul_ps(fx, _mm256_set1_ps(C2)));
        let z = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(EP[0]);
        for &c in &EP[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), r), _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(fx);
        let n1 = _mm256_srai_epi32::<1>(n);
        let n2 = _mm256_sub_epi32(n, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        _mm256_mul_ps(_mm256_mul_ps(y, s1), s2)
    }

    /// Eight lanes of [`tanh_scalar`], operation for operation.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn tanh8(x: __m256) -> __m256 {
        let sign = _mm256_castsi256_ps(_mm256_set1_epi32(SIGN as i32));
        let a = _mm256_andnot_ps(sign, x);
        let z = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(TP[0]);
        for &c in &TP[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, z), _mm256_set1_ps(c));
        }
        let small = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, z), x), x);
        let e = exp8(_mm256_add_ps(a, a));
        let one = _mm256_set1_ps(1.0);
        let large = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)));
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(TANH_SMALL));
        _mm256_or_ps(_mm256_blendv_ps(large, small, is_small), _mm256_and_ps(x, sign))
    }

    /// Eight lanes of [`ln1p_scalar`], operation for operation.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn ln1p8(t: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let u = _mm256_add_ps(t, one);
        let bits = _mm256_castps_si256(u);
        let e = _mm256_sub_epi32(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(126));
        let fe = _mm256_cvtepi32_ps(e);
        let m = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x3f00_0000),
        ));
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(m, _mm256_set1_ps(SQRT_HALF));
        let fe = _mm256_blendv_ps(fe, _mm256_sub_ps(fe, one), small);
        let r = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), small);
        let z = _mm256_mul_ps(r, r);
        let mut p = _mm256_set1_ps(LP[0]);
        for &c in &LP[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), z), _mm256_mul_ps(fe, _mm256_set1_ps(C2)));
        let y = _mm256_sub_ps(y, _mm256_mul_ps(z, _mm256_set1_ps(0.5)));
        let ln = _mm256_add_ps(_mm256_add_ps(r, y), _mm256_mul_ps(fe, _mm256_set1_ps(C1)));
        let v = _mm256_mul_ps(ln, _mm256_div_ps(t, _mm256_sub_ps(u, one)));
        let v = _mm256_blendv_ps(v, t, _mm256_cmp_ps::<_CMP_EQ_OQ>(u, one));
        _mm256_blendv_ps(u, v, _mm256_cmp_ps::<_CMP_LT_OQ>(u, _mm256_set1_ps(f32::INFINITY)))
    }

    /// [`super::ln1p_in_place`] on full groups of eight; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn ln1p_groups(v: &mut [f32]) -> usize {
        // SAFETY: AVX-512F checked by `wide_kernels`.
        let done = if wide_kernels() { unsafe { super::avx512::ln1p_groups(v) } } else { 0 };
        let m = done + (v.len() - done) / 8 * 8;
        for c in v[done..m].chunks_exact_mut(8) {
            // SAFETY: `c` holds exactly eight floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), ln1p8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        m
    }

    /// [`super::exp_in_place`] on full groups of eight; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn exp_groups(v: &mut [f32]) -> usize {
        // SAFETY: AVX-512F checked by `wide_kernels`.
        let done = if wide_kernels() { unsafe { super::avx512::exp_groups(v) } } else { 0 };
        let m = done + (v.len() - done) / 8 * 8;
        for c in v[done..m].chunks_exact_mut(8) {
            // SAFETY: `c` holds exactly eight floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        m
    }

    /// [`super::tanh_in_place`] on full groups of eight; returns the length done.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn tanh_groups(v: &mut [f32]) -> usize {
        // SAFETY: AVX-512F checked by `wide_kernels`.
        let done = if wide_kernels() { unsafe { super::avx512::tanh_groups(v) } } else { 0 };
        let m = done + (v.len() - done) / 8 * 8;
        for c in v[done..m].chunks_exact_mut(8) {
            // SAFETY: `c` holds exactly eight floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), tanh8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        m
    }
}

/// `v[i] = e^v[i]`. `AVX` may only be true where AVX2 has been detected.
#[inline(always)]
pub(crate) fn exp_in_place<const AVX: bool>(v: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2.
        done = unsafe { avx2::exp_groups(v) };
    }
    v[done..].iter_mut().for_each(|x| *x = exp_scalar(*x));
}

/// `v[i] = tanh(v[i])`. `AVX` may only be true where AVX2 has been detected.
#[inline(always)]
pub(crate) fn tanh_in_place<const AVX: bool>(v: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2.
        done = unsafe { avx2::tanh_groups(v) };
    }
    v[done..].iter_mut().for_each(|x| *x = tanh_scalar(*x));
}

/// `v[i] = ln(1 + v[i])` for `v[i] ≥ 0`. `AVX` may only be true where AVX2
/// has been detected.
#[inline(always)]
pub(crate) fn ln1p_in_place<const AVX: bool>(v: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true in code reached after detecting AVX2.
        done = unsafe { avx2::ln1p_groups(v) };
    }
    v[done..].iter_mut().for_each(|x| *x = ln1p_scalar(*x));
}

/// [`ln1p_in_place`], choosing AVX2 at run time where the CPU has it.
pub fn ln1p_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return ln1p_in_place::<true>(v);
    }
    ln1p_in_place::<false>(v)
}

/// [`exp_in_place`], choosing AVX2 at run time where the CPU has it.
pub fn exp_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return exp_in_place::<true>(v);
    }
    exp_in_place::<false>(v)
}

/// [`tanh_in_place`], choosing AVX2 at run time where the CPU has it.
pub fn tanh_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return tanh_in_place::<true>(v);
    }
    tanh_in_place::<false>(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test points: a dense grid over `[lo, hi]` plus specials.
    fn points(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..=n).map(|i| lo + (hi - lo) * (i as f32 / n as f32)).collect();
        v.extend([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.625, -0.625, 0.624_999_94, 0.5, 1.0, -1.0]);
        v
    }

    fn rel(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            f64::from(a).abs()
        } else {
            ((f64::from(a) - b) / b).abs()
        }
    }

    #[test]
    fn exp_is_within_2e7_of_f64() {
        let xs = points(-87.0, 88.7, 2_000_003);
        let worst = xs.iter().map(|&x| rel(exp_scalar(x), f64::from(x).exp())).fold(0.0, f64::max);
        eprintln!("exp: worst relative error {worst:e}");
        assert!(worst < 2e-7, "exp: worst relative error {worst:e}");
        // Near zero the relative error is that of the polynomial alone.
        let worst =
            points(-0.4, 0.4, 200_001).iter().map(|&x| rel(exp_scalar(x), f64::from(x).exp())).fold(0.0, f64::max);
        assert!(worst < 1.5e-7, "exp near 0: worst relative error {worst:e}");
    }

    #[test]
    fn tanh_is_within_3e7_of_f64() {
        let xs = points(-12.0, 12.0, 2_000_003);
        let worst = xs.iter().map(|&x| rel(tanh_scalar(x), f64::from(x).tanh())).fold(0.0, f64::max);
        eprintln!("tanh: worst relative error {worst:e}");
        assert!(worst < 3e-7, "tanh: worst relative error {worst:e}");
    }

    #[test]
    fn exp_and_tanh_edges_follow_libm() {
        assert_eq!(exp_scalar(0.0), 1.0);
        assert_eq!(exp_scalar(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_scalar(89.5), f32::INFINITY);
        assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_scalar(-200.0), 0.0);
        assert!(exp_scalar(f32::NAN).is_nan());
        assert!(exp_scalar(88.72).is_finite() && exp_scalar(88.72) > 3.0e38);
        // Subnormal results are rounded once, as by libm.
        for x in [-88.0f32, -95.0, -100.0, -103.0] {
            let (got, want) = (exp_scalar(x), f64::from(x).exp());
            assert!((f64::from(got) - want).abs() <= f64::from(f32::from_bits(1)), "exp({x}) = {got:e}, want {want:e}");
        }
        assert_eq!(tanh_scalar(f32::INFINITY), 1.0);
        assert_eq!(tanh_scalar(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_scalar(30.0), 1.0);
        assert_eq!(tanh_scalar(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(tanh_scalar(f32::NAN).is_nan());
        assert!(tanh_scalar(-3.0) < 0.0 && tanh_scalar(3.0) == -tanh_scalar(-3.0));
    }

    #[test]
    fn ln1p_is_within_3e7_of_f64() {
        // t ≥ 0 from far below an ulp of 1 up to e^20 (the softplus threshold) and beyond.
        let mut ts: Vec<f32> = (0..=2_000_000).map(|i| (i as f32 / 2_000_000.0 * 45.0 - 30.0).exp()).collect();
        ts.extend([0.0, 1e-30, 1e-8, 5.9e-8, 6.0e-8, 1.0, 0.414_213_6, 0.414_213_5, 3.0e38]);
        let worst = ts.iter().map(|&t| rel(ln1p_scalar(t), f64::from(t).ln_1p())).fold(0.0, f64::max);
        eprintln!("ln1p: worst relative error {worst:e}");
        assert!(worst < 3e-7, "ln1p: worst relative error {worst:e}");
        assert_eq!(ln1p_scalar(0.0), 0.0);
        assert_eq!(ln1p_scalar(f32::INFINITY), f32::INFINITY);
        assert!(ln1p_scalar(f32::NAN).is_nan());
    }

    #[test]
    fn avx2_lanes_give_the_bits_of_the_scalar_lanes() {
        // 256-bit lanes, then 512-bit ones where the CPU has them.
        for narrow in [true, false] {
            NARROW.set(narrow);
            vector_lanes_give_the_bits_of_the_scalar_lanes();
        }
        NARROW.set(false);
    }

    fn vector_lanes_give_the_bits_of_the_scalar_lanes() {
        let mut ts: Vec<f32> = (0..=400_003).map(|i| (i as f32 / 400_003.0 * 60.0 - 40.0).exp()).collect();
        ts.extend([0.0, 1e-30, 1.0, 0.414_213_6, f32::MAX, f32::INFINITY, f32::NAN]);
        let mut lv = ts.clone();
        ln1p_slice(&mut lv);
        for (i, &t) in ts.iter().enumerate() {
            let want = ln1p_scalar(t);
            assert!(lv[i].to_bits() == want.to_bits() || (want.is_nan() && lv[i].is_nan()), "ln1p({t})");
        }
        let mut xs = points(-110.0, 95.0, 400_003);
        xs.extend(points(-10.0, 10.0, 400_003));
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 88.72, 88.73]);
        let (mut ev, mut tv) = (xs.clone(), xs.clone());
        exp_slice(&mut ev);
        tanh_slice(&mut tv);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(ev[i].to_bits(), exp_scalar(x).to_bits(), "exp({x})");
            assert_eq!(tv[i].to_bits(), tanh_scalar(x).to_bits(), "tanh({x})");
        }
        let (mut en, mut tn) = (vec![f32::NAN; 9], vec![f32::NAN; 9]);
        exp_slice(&mut en);
        tanh_slice(&mut tn);
        assert!(en.iter().chain(&tn).all(|v| v.is_nan()));
    }
}
