//! A learned invertible linear map between MAF blocks, `z = W x + b` with
//! `W = P L U` (the LU-decomposed 1×1 convolution of Glow, Kingma & Dhariwal
//! 2018, arXiv:1807.03039, as in nflows' `LULinear`).
//!
//! - `P` is fixed: the reversal, `(P v)_i = v_{D-1-i}`.
//! - `L` is unit lower triangular: its strictly-lower part is the variable
//!   `lower` (`[D, D]`; entries on and above the diagonal are ignored and get
//!   no gradient).
//! - `U` is upper triangular with the positive diagonal `exp(log_diag)`: its
//!   strictly-upper part is the variable `upper` (`[D, D]`; entries on and
//!   below the diagonal are ignored).
//! - `b` is the variable `bias`.
//!
//! So `log |det W| = Σ log_diag`, and the inverse is two triangular solves,
//! `x = U⁻¹ L⁻¹ Pᵀ (z - b)`. Every variable starts at zero: `W = P`, `b = 0`,
//! which makes an untrained map exactly the reversal of the features.

use tch::{nn, nn::Init, Kind, Tensor};

/// One learned mixing `z = P L U x + b`; its variables live in the flow's store.
#[derive(Debug)]
pub struct LuMixing {
    /// `[D, D]`, strictly-lower part used: the off-diagonal of `L`.
    pub lower: Tensor,
    /// `[D, D]`, strictly-upper part used: the off-diagonal of `U`.
    pub upper: Tensor,
    /// `[D]`: the log of `U`'s diagonal.
    pub log_diag: Tensor,
    /// `[D]`: the shift `b`.
    pub bias: Tensor,
}

/// Builds a mixing of `d` features under `vs` (names `lower`, `upper`,
/// `log_diag`, `bias`), initialised to the reversal. Draws nothing from the RNG.
pub fn lu_mixing(vs: &nn::Path, d: i64) -> LuMixing {
    let zero = Init::Const(0.0);
    LuMixing {
        lower: vs.var("lower", &[d, d], zero),
        upper: vs.var("upper", &[d, d], zero),
        log_diag: vs.var("log_diag", &[d], zero),
        bias: vs.var("bias", &[d], zero),
    }
}

impl LuMixing {
    /// The unit lower-triangular factor `L`.
    pub fn l(&self) -> Tensor {
        let d = self.log_diag.size()[0];
        self.lower.tril(-1) + Tensor::eye(d, (Kind::Float, self.lower.device()))
    }

    /// The upper-triangular factor `U` with diagonal `exp(log_diag)`.
    pub fn u(&self) -> Tensor {
        self.upper.triu(1) + self.log_diag.exp().diag_embed(0, -2, -1)
    }

    /// The matrix `W = P L U` (`P` the reversal: the rows of `L U` reversed).
    pub fn weight(&self) -> Tensor {
        self.l().matmul(&self.u()).flip([0])
    }

    /// `log |det W| = Σ log_diag` (a scalar; the same for every event).
    pub fn log_abs_det(&self) -> Tensor {
        self.log_diag.sum(Kind::Float)
    }

    /// Data → base: `z = W x + b` and `log |det dz/dx|` per event.
    ///
    /// # Shapes
    /// `xs: [N, D]` → `(z: [N, D], logdet: [N])`
    pub fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let z = self.bias.addmm(xs, &self.weight().tr());
        let logdet = self.log_abs_det().expand([xs.size()[0]], false);
        (z, logdet)
    }

    /// Base → data: `x = U⁻¹ L⁻¹ Pᵀ (z - b)` by two triangular solves.
    ///
    /// # Shapes
    /// `zs: [N, D]` → `[N, D]`
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        // Rows: x = Pᵀ(z - b) · L⁻ᵀ · U⁻ᵀ, each a solve of X A = B (left = false).
        let y = (zs - &self.bias).flip([1]);
        let r = self.l().tr().linalg_solve_triangular(&y, true, false, true);
        self.u().tr().linalg_solve_triangular(&r, false, false, false)
    }
}
