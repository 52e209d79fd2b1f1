//! Multi-feature pseudo-detector of Φ → γ ω with three labels: the true Φ
//! mass `M_Φ`, the true two-prong (ω) mass `M_ω` and the Φ's relative natural
//! width `W = Γ/M_Φ`.  Each event is a produced and decayed Φ whose photon and
//! two-prong four-momenta pass through a detector model; the features are
//! seven observables of the reconstructed pair:
//!
//! | feature   | meaning                                              |
//! | --------- | ---------------------------------------------------- |
//! | `m_phi`   | invariant mass of the reconstructed γ + two-prong    |
//! | `m_omega` | reconstructed two-prong mass                         |
//! | `pt_g`    | photon transverse momentum                           |
//! | `pt_w`    | two-prong transverse momentum                        |
//! | `eta_g`   | photon pseudorapidity                                |
//! | `eta_w`   | two-prong pseudorapidity                             |
//! | `dphi`    | `|φ_γ − φ_ω|` wrapped to `[0, π]`                    |
//!
//! The labels are stored as the branches `M_phi`, `M_omega`, `W_phi`.  It is
//! the N-dimensional sibling of [`super::phiomega`] (two features): the
//! reconstructed Φ mass is computed from the smeared four-vectors, so it is
//! correlated with every other feature, and the acceptance cuts are on
//! features only while their efficiency depends on all three labels.  The
//! production grid ([`NdGrid::default`]) is `M_Φ ∈ [1000, 3000]` GeV (5
//! values) × `M_ω ∈ [0.5, 8.5]` GeV (5) × `W ∈ [0.005, 0.045]` (3): 75
//! points; [`default_eval_points`] lists 12 off-grid points (every label at a
//! cell centre).  Energies, momenta and masses are in GeV, angles in radians.
//!
//! # Generative model (one candidate event)
//!
//! 1. **Line shape.**  The Φ mass of the event follows a Breit–Wigner
//!    (Cauchy) distribution of full width `Γ = W M_Φ`, truncated at
//!    `|m* − M_Φ| ≤ k_BW Γ` (default `k_BW = 3`), sampled exactly by the
//!    inverse CDF: `m* = M_Φ + (Γ/2) tan u`, `u ~ U(−atan(2 k_BW), atan(2 k_BW))`.
//!    `W = 0` gives `m* = M_Φ`.
//! 2. **Production.**  Transverse momentum from the falling spectrum
//!    `f(p_T) ∝ p_T exp(−p_T/λ)` (a Gamma(2, λ) variate,
//!    `p_T = −λ ln(U₁ U₂)`) with the mass-dependent scale
//!    `λ(M_Φ) = λ₀ + λ₁ M_Φ` (defaults 20 GeV + 0.04 M_Φ: mean `p_T = 2λ`,
//!    120 GeV at 1 TeV, 280 GeV at 3 TeV); rapidity `y ~ N(0, σ_y²)` with
//!    `σ_y(M_Φ) = c_y ln(√s / M_Φ)` (defaults `c_y = 0.5`, `√s = 13.6` TeV:
//!    1.31 at 1 TeV, 0.76 at 3 TeV: heavier states are more central);
//!    azimuth `φ ~ U(0, 2π)`.  Then `m_T = √(m*² + p_T²)`,
//!    `P_Φ = (m_T cosh y, p_T cos φ, p_T sin φ, m_T sinh y)`.
//! 3. **Decay.**  Isotropic in the Φ rest frame (`cos θ* ~ U(−1, 1)`,
//!    `φ* ~ U(0, 2π)`): the photon has momentum
//!    `p* = (m*² − M_ω²) / (2 m*)` along `n̂`, the ω (mass `M_ω`) `−p* n̂`.
//!    Both are boosted to the lab with `β = P_Φ / E_Φ`
//!    (`E' = γ(E + β·p)`, `p' = p + ((γ − 1)(β·p)/β² + γ E) β`).
//! 4. **Shared energy scale.**  `s = 1 + σ_s z₀`, `z₀ ~ N(0, 1)`
//!    (default `σ_s = 0.5 %`), multiplies the photon energy, the two-prong
//!    energy and the two-prong mass.
//! 5. **Mis-reconstructed shoulder** (as in [`super::phiomega`]).  With
//!    probability `f_sh` one photon of the two-prong (carrying on average half
//!    its energy) loses a fraction `ε ~ U(ε_min, ε_max)` of its energy; since
//!    `m_γγ² = 2 E₁ E₂ (1 − cos θ)`, the two-prong mass scales as
//!    `k_m = √(1 − ε)` and its energy as `k_E = 1 − ε/2`.  Otherwise
//!    `k_m = k_E = 1`.  This gives a low-side shoulder in `m_omega`, and,
//!    through the energy, in `pt_w` and `m_phi`.
//! 6. **Photon energy.**  `E_γ,reco = s E_γ (1 + r_γ(E_γ) t_γ)` with the
//!    calorimetric resolution `r_γ(E) = √(a_γ²/E + b_γ²)` (stochastic ⊕
//!    constant, defaults `a_γ = 0.10 √GeV`, `b_γ = 0.7 %`) and `t_γ` a
//!    standardised Crystal-Ball variate (`α_γ = 1.5`, `n_γ = 4`; the exact
//!    sampler of [`super::phiomega`], Gaiser SLAC-R-255 App. F): leakage
//!    gives a low-side power-law tail.
//! 7. **Two-prong energy.**  `E_ω,reco = s k_E E_ω (1 + r_ω(E_ω) z_ω)`,
//!    `z_ω ~ N(0, 1)`, `r_ω(E) = √(a_E²/E + b_E²)` (defaults
//!    `a_E = 0.15 √GeV`, `b_E = 1.5 %`).
//! 8. **Two-prong mass with photon merging.**  The two photons of the ω open
//!    by `θ_open ≈ 2 M_ω / E_ω` (true lab energy); below the cluster size
//!    `θ_m` they merge and the mass comes from a cluster-shape estimator whose
//!    resolution is compressed towards a floor:
//!    `σ_m = √(σ_fl² + S² (a_m² M_ω + b_m² M_ω²))`,
//!    `S = 1 − f_m exp(−(θ_open/θ_m)²)` (defaults `σ_fl = 5 MeV`,
//!    `a_m = 0.075 √GeV`, `b_m = 8 %`, `f_m = 0.6`, `θ_m = 0.01`), and
//!    `m_ω,reco = s (k_m M_ω + σ_m t_m)` with `t_m` Crystal Ball
//!    (`α_m = 1.8`, `n_m = 5`).  The merging depends on the ω energy, so the
//!    `m_omega` resolution is correlated with `pt_w` and falls with `M_Φ`.
//! 9. **Directions.**  Pseudorapidity and azimuth of each object are
//!    smeared by Gaussians: `σ_η,γ = σ_φ,γ = 0.001`,
//!    `σ_η,ω = σ_φ,ω = 0.002` (the true values from `η = asinh(p_z/p_T)`).
//! 10. **Reconstruction.**  Photon: massless, `p_T,γ = E_γ,reco / cosh η_γ`.
//!     Two-prong: `|p| = √(E_ω,reco² − m_ω,reco²)`, `p_T,ω = |p| / cosh η_ω`.
//!     Each four-vector is `(E, p_T cos φ, p_T sin φ, p_T sinh η)`;
//!     `m_phi = √((E_γ + E_ω)² − |p_γ + p_ω|²)`,
//!     `dphi = |φ_γ − φ_ω|` wrapped to `[0, π]`.
//! 11. **Acceptance.**  The candidate is kept if `pt_g > 50`, `pt_w > 50`,
//!     `|eta_g| < 2.5`, `|eta_w| < 2.5` and `m_omega > 0.4` (defaults;
//!     [`PhiOmegaNdModel::cuts`] writes them in the configuration's cut
//!     language), and every feature is finite (`E_γ,reco > 0`,
//!     `m_ω,reco < E_ω,reco`); otherwise a new candidate is drawn
//!     (rejection).  The cuts are on features only, so a flow can apply the
//!     same cuts to its samples; their *efficiency* depends on all labels
//!     (the η cut on `M_Φ` through `σ_y`, the mass cut on `M_ω` and on the
//!     merging, the `p_T` cuts on `M_Φ`), and is recorded per point
//!     ([`NdSample::efficiency`], `acceptance.csv`).
//!
//! Randomness comes only from the `rng` argument, so results are
//! deterministic for a seeded generator ([`PhiOmegaNdModel::sample_seeded`]
//! uses `ChaCha8Rng`).

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use super::phiomega::CrystalBall;
use super::source::parallel_map;
use crate::error::{Error, Result as FedhexResult};

/// Number of features per event.
pub const N_FEATURES: usize = 7;
/// Feature (branch) names, in column order.
pub const FEATURES: [&str; N_FEATURES] = ["m_phi", "m_omega", "pt_g", "pt_w", "eta_g", "eta_w", "dphi"];
/// Label (branch) names, in column order: true Φ mass, true ω mass, relative width Γ/M_Φ.
pub const LABELS: [&str; 3] = ["M_phi", "M_omega", "W_phi"];
/// Range of the true Φ mass of the production grid, GeV.
pub const M_PHI_RANGE: [f64; 2] = [1000.0, 3000.0];
/// Range of the true ω mass of the production grid, GeV.
pub const M_OMEGA_RANGE: [f64; 2] = [0.5, 8.5];
/// Range of the relative Φ width `Γ/M_Φ` of the production grid.
pub const WIDTH_RANGE: [f64; 2] = [0.005, 0.045];

/// A label point `[M_Φ, M_ω, W]`.
pub type NdLabel = [f64; 3];
/// One event: the features in the order of [`FEATURES`].
pub type NdEvent = [f64; N_FEATURES];

/// Errors of the N-dimensional Φ → γω model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhiOmegaNdError {
    /// A label value is outside its valid range.
    #[error("invalid label {name} = {value}: {reason}")]
    InvalidLabel {
        /// `M_phi`, `M_omega` or `W_phi`.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// Valid range.
        reason: String,
    },
    /// A model parameter is outside its valid range.
    #[error("invalid model parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// Valid range.
        reason: &'static str,
    },
    /// The acceptance is so low that the rejection loop gave up.
    #[error(
        "acceptance too low at (M_phi = {m_phi}, M_omega = {m_omega}, W_phi = {width}): {accepted} of {trials} \
         candidates accepted, below the minimum efficiency {min_efficiency}"
    )]
    AcceptanceTooLow {
        /// True Φ mass.
        m_phi: f64,
        /// True ω mass.
        m_omega: f64,
        /// Relative width.
        width: f64,
        /// Candidates drawn.
        trials: u64,
        /// Candidates accepted.
        accepted: u64,
        /// The model's minimum efficiency.
        min_efficiency: f64,
    },
    /// Invalid grid specification.
    #[error("invalid label grid: {0}")]
    InvalidGrid(String),
}

/// Parameters of the generator and pseudo-detector (formulas in the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhiOmegaNdModel {
    /// Truncation `k_BW` of the Breit–Wigner, in units of `Γ` (> 0).
    pub bw_truncation: f64,
    /// Constant part `λ₀` of the `p_T` scale, GeV (≥ 0).
    pub pt_scale_const: f64,
    /// Slope `λ₁` of the `p_T` scale per GeV of `M_Φ` (≥ 0; `λ₀ + λ₁ M_Φ > 0`).
    pub pt_scale_slope: f64,
    /// Factor `c_y` of the rapidity width (≥ 0).
    pub rapidity_factor: f64,
    /// Collision energy `√s`, GeV (above every `M_Φ`).
    pub sqrt_s: f64,
    /// Relative width `σ_s` of the shared energy scale (≥ 0).
    pub scale_sigma: f64,
    /// Fraction `f_sh ∈ [0, 1]` of events in the mis-reconstructed shoulder.
    pub shoulder_fraction: f64,
    /// Minimum lost photon-energy fraction `ε_min ∈ [0, 1)`.
    pub shoulder_loss_min: f64,
    /// Maximum lost photon-energy fraction `ε_max ∈ [ε_min, 1)`.
    pub shoulder_loss_max: f64,
    /// Stochastic term `a_γ` of the photon energy resolution, √GeV.
    pub photon_stochastic: f64,
    /// Constant term `b_γ` of the photon energy resolution.
    pub photon_constant: f64,
    /// Crystal-Ball `α_γ` of the photon response (> 0).
    pub photon_tail_alpha: f64,
    /// Crystal-Ball `n_γ` of the photon response (> 1).
    pub photon_tail_n: f64,
    /// Stochastic term `a_E` of the two-prong energy resolution, √GeV.
    pub twoprong_stochastic: f64,
    /// Constant term `b_E` of the two-prong energy resolution.
    pub twoprong_constant: f64,
    /// Floor `σ_fl` of the two-prong mass resolution, GeV.
    pub mass_floor: f64,
    /// Stochastic term `a_m` of the two-prong mass resolution, √GeV.
    pub mass_stochastic: f64,
    /// Constant term `b_m` of the two-prong mass resolution.
    pub mass_constant: f64,
    /// Merging suppression `f_m ∈ [0, 1]` of the two-prong mass resolution.
    pub merge_fraction: f64,
    /// Cluster size `θ_m` below which the two photons merge, rad (> 0).
    pub merge_angle: f64,
    /// Crystal-Ball `α_m` of the two-prong mass (> 0).
    pub mass_tail_alpha: f64,
    /// Crystal-Ball `n_m` of the two-prong mass (> 1).
    pub mass_tail_n: f64,
    /// Photon angular resolution `σ_η,γ = σ_φ,γ` (≥ 0).
    pub photon_angle_sigma: f64,
    /// Two-prong angular resolution `σ_η,ω = σ_φ,ω` (≥ 0).
    pub twoprong_angle_sigma: f64,
    /// Cut `pt_g > pt_g_min`, GeV.
    pub pt_g_min: f64,
    /// Cut `pt_w > pt_w_min`, GeV.
    pub pt_w_min: f64,
    /// Cut `|eta_g| < eta_max` and `|eta_w| < eta_max` (> 0).
    pub eta_max: f64,
    /// Cut `m_omega > m_omega_min`, GeV.
    pub m_omega_min: f64,
    /// The rejection loop gives up (error) after `n / min_efficiency + 10⁴`
    /// candidates; in `(0, 1]`.
    pub min_efficiency: f64,
}

impl Default for PhiOmegaNdModel {
    fn default() -> Self {
        PhiOmegaNdModel {
            bw_truncation: 3.0,
            pt_scale_const: 20.0,
            pt_scale_slope: 0.04,
            rapidity_factor: 0.5,
            sqrt_s: 13_600.0,
            scale_sigma: 0.005,
            shoulder_fraction: 0.10,
            shoulder_loss_min: 0.2,
            shoulder_loss_max: 0.8,
            photon_stochastic: 0.10,
            photon_constant: 0.007,
            photon_tail_alpha: 1.5,
            photon_tail_n: 4.0,
            twoprong_stochastic: 0.15,
            twoprong_constant: 0.015,
            mass_floor: 0.005,
            mass_stochastic: 0.075,
            mass_constant: 0.08,
            merge_fraction: 0.6,
            merge_angle: 0.01,
            mass_tail_alpha: 1.8,
            mass_tail_n: 5.0,
            photon_angle_sigma: 0.001,
            twoprong_angle_sigma: 0.002,
            pt_g_min: 50.0,
            pt_w_min: 50.0,
            eta_max: 2.5,
            m_omega_min: 0.4,
            min_efficiency: 1e-3,
        }
    }
}

/// Accepted events together with the rejection statistics of their generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NdSample {
    /// Accepted events (features in the order of [`FEATURES`]), exactly the requested number.
    pub events: Vec<NdEvent>,
    /// Candidates drawn (accepted + rejected).
    pub trials: u64,
    /// Acceptance efficiency `events.len() / trials` (1 when `trials = 0`).
    pub efficiency: f64,
}

/// Four-vector `(E, p_x, p_y, p_z)`.
type P4 = [f64; 4];

/// Boosts `v` by the velocity `b` (`|b| < 1`).
fn boost(v: P4, b: [f64; 3]) -> P4 {
    let b2 = b[0] * b[0] + b[1] * b[1] + b[2] * b[2];
    if b2 <= 0.0 {
        return v;
    }
    let gamma = 1.0 / (1.0 - b2).sqrt();
    let bp = b[0] * v[1] + b[1] * v[2] + b[2] * v[3];
    let k = (gamma - 1.0) * bp / b2 + gamma * v[0];
    [gamma * (v[0] + bp), v[1] + k * b[0], v[2] + k * b[1], v[3] + k * b[2]]
}

/// `(p_T, η, φ)` of a momentum; `η` is infinite along the beam.
fn pt_eta_phi(v: P4) -> (f64, f64, f64) {
    let pt = v[1].hypot(v[2]);
    (pt, (v[3] / pt).asinh(), v[2].atan2(v[1]))
}

/// Four-vector from energy, `|p|`, η and φ.
fn from_e_p_eta_phi(e: f64, p: f64, eta: f64, phi: f64) -> P4 {
    let pt = p / eta.cosh();
    [e, pt * phi.cos(), pt * phi.sin(), pt * eta.sinh()]
}

/// `|a − b|` wrapped to `[0, π]`.
fn delta_phi(a: f64, b: f64) -> f64 {
    let d = (a - b).abs().rem_euclid(2.0 * PI);
    if d > PI {
        2.0 * PI - d
    } else {
        d
    }
}

/// Crystal-Ball samplers of one model, built once per sample.
struct Shapes {
    photon: CrystalBall,
    mass: CrystalBall,
}

impl PhiOmegaNdModel {
    /// Checks every parameter against its valid range.
    pub fn validate(&self) -> Result<(), PhiOmegaNdError> {
        let bad = |name, value, reason| Err(PhiOmegaNdError::InvalidParameter { name, value, reason });
        for (name, v) in [
            ("pt_scale_const", self.pt_scale_const),
            ("pt_scale_slope", self.pt_scale_slope),
            ("rapidity_factor", self.rapidity_factor),
            ("scale_sigma", self.scale_sigma),
            ("photon_stochastic", self.photon_stochastic),
            ("photon_constant", self.photon_constant),
            ("twoprong_stochastic", self.twoprong_stochastic),
            ("twoprong_constant", self.twoprong_constant),
            ("mass_floor", self.mass_floor),
            ("mass_stochastic", self.mass_stochastic),
            ("mass_constant", self.mass_constant),
            ("photon_angle_sigma", self.photon_angle_sigma),
            ("twoprong_angle_sigma", self.twoprong_angle_sigma),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and ≥ 0");
            }
        }
        for (name, v) in [
            ("bw_truncation", self.bw_truncation),
            ("sqrt_s", self.sqrt_s),
            ("photon_tail_alpha", self.photon_tail_alpha),
            ("mass_tail_alpha", self.mass_tail_alpha),
            ("merge_angle", self.merge_angle),
            ("eta_max", self.eta_max),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, v, "must be finite and > 0");
            }
        }
        for (name, v) in [("photon_tail_n", self.photon_tail_n), ("mass_tail_n", self.mass_tail_n)] {
            if !(v.is_finite() && v > 1.0) {
                return bad(name, v, "must be finite and > 1");
            }
        }
        for (name, v) in [("shoulder_fraction", self.shoulder_fraction), ("merge_fraction", self.merge_fraction)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(name, v, "must lie in [0, 1]");
            }
        }
        if !(0.0..1.0).contains(&self.shoulder_loss_min) {
            return bad("shoulder_loss_min", self.shoulder_loss_min, "must lie in [0, 1)");
        }
        if !(self.shoulder_loss_min..1.0).contains(&self.shoulder_loss_max) {
            return bad("shoulder_loss_max", self.shoulder_loss_max, "must lie in [shoulder_loss_min, 1)");
        }
        for (name, v) in [("pt_g_min", self.pt_g_min), ("pt_w_min", self.pt_w_min), ("m_omega_min", self.m_omega_min)] {
            if !v.is_finite() {
                return bad(name, v, "must be finite");
            }
        }
        if !(self.min_efficiency > 0.0 && self.min_efficiency <= 1.0) {
            return bad("min_efficiency", self.min_efficiency, "must lie in (0, 1]");
        }
        Ok(())
    }

    /// Checks a label point `[M_Φ, M_ω, W]` against the model: finite
    /// positive masses, `W ≥ 0`, `M_Φ < √s` and every Φ mass of the
    /// truncated line shape above `M_ω` (`M_Φ (1 − k_BW W) > M_ω`).
    pub fn check_label(&self, label: NdLabel) -> Result<(), PhiOmegaNdError> {
        let [m_phi, m_omega, width] = label;
        let bad = |name, value, reason: String| Err(PhiOmegaNdError::InvalidLabel { name, value, reason });
        if !(m_phi.is_finite() && m_phi > 0.0 && m_phi < self.sqrt_s) {
            return bad("M_phi", m_phi, format!("must be finite, > 0 and below sqrt_s = {}", self.sqrt_s));
        }
        if !(m_omega.is_finite() && m_omega > 0.0) {
            return bad("M_omega", m_omega, "must be finite and > 0".into());
        }
        if !(width.is_finite() && width >= 0.0) {
            return bad("W_phi", width, "must be finite and ≥ 0".into());
        }
        if m_phi * (1.0 - self.bw_truncation * width) <= m_omega {
            return bad(
                "W_phi",
                width,
                format!(
                    "the line shape (truncated at {} widths) reaches below M_omega = {m_omega} at M_phi = {m_phi}",
                    self.bw_truncation
                ),
            );
        }
        Ok(())
    }

    /// Scale `λ(M_Φ) = λ₀ + λ₁ M_Φ` of the `p_T` spectrum, GeV.
    pub fn pt_scale(&self, m_phi: f64) -> f64 {
        self.pt_scale_const + self.pt_scale_slope * m_phi
    }

    /// Rapidity width `σ_y(M_Φ) = c_y ln(√s / M_Φ)`.
    pub fn rapidity_sigma(&self, m_phi: f64) -> f64 {
        self.rapidity_factor * (self.sqrt_s / m_phi).ln()
    }

    /// Relative photon energy resolution `r_γ(E) = √(a_γ²/E + b_γ²)`.
    pub fn photon_resolution(&self, e: f64) -> f64 {
        (self.photon_stochastic.powi(2) / e + self.photon_constant.powi(2)).sqrt()
    }

    /// Relative two-prong energy resolution `r_ω(E) = √(a_E²/E + b_E²)`.
    pub fn twoprong_resolution(&self, e: f64) -> f64 {
        (self.twoprong_stochastic.powi(2) / e + self.twoprong_constant.powi(2)).sqrt()
    }

    /// Two-prong mass resolution `σ_m` (GeV) at true mass `m_omega` and true
    /// lab energy `e_omega`, with the merging of the photons at
    /// `θ_open = 2 M_ω / E_ω` (module docs, step 8).
    pub fn mass_sigma(&self, m_omega: f64, e_omega: f64) -> f64 {
        let theta = 2.0 * m_omega / e_omega;
        let turn_on = 1.0 - self.merge_fraction * (-(theta / self.merge_angle).powi(2)).exp();
        let resolved = self.mass_stochastic.powi(2) * m_omega + self.mass_constant.powi(2) * m_omega.powi(2);
        (self.mass_floor.powi(2) + turn_on.powi(2) * resolved).sqrt()
    }

    /// The acceptance cuts in the configuration's cut language
    /// (`data.acceptance`), over the names of [`FEATURES`].
    pub fn cuts(&self) -> Vec<String> {
        vec![
            format!("pt_g > {}", self.pt_g_min),
            format!("pt_w > {}", self.pt_w_min),
            format!("abs(eta_g) < {}", self.eta_max),
            format!("abs(eta_w) < {}", self.eta_max),
            format!("m_omega > {}", self.m_omega_min),
        ]
    }

    /// Whether an event passes the acceptance cuts (module docs, step 11).
    pub fn accepts(&self, ev: &NdEvent) -> bool {
        ev.iter().all(|v| v.is_finite())
            && ev[0] > 0.0
            && ev[2] > self.pt_g_min
            && ev[3] > self.pt_w_min
            && ev[4].abs() < self.eta_max
            && ev[5].abs() < self.eta_max
            && ev[1] > self.m_omega_min
    }

    /// One candidate event before the acceptance cuts (`None`: unphysical
    /// reconstruction, counted as rejected).
    fn candidate<R: Rng + ?Sized>(&self, label: NdLabel, shapes: &Shapes, rng: &mut R) -> Option<NdEvent> {
        let [m_res, m_omega, width] = label;
        // 1. Line shape.
        let gamma_w = width * m_res;
        let u_max = (2.0 * self.bw_truncation).atan();
        let u = (2.0 * rng.random::<f64>() - 1.0) * u_max;
        let m_star = m_res + 0.5 * gamma_w * u.tan();
        // 2. Production.
        let lambda = self.pt_scale(m_res);
        let (u1, u2) = (1.0 - rng.random::<f64>(), 1.0 - rng.random::<f64>());
        let pt = -lambda * (u1 * u2).ln();
        let y = self.rapidity_sigma(m_res) * rng.sample::<f64, _>(StandardNormal);
        let phi = 2.0 * PI * rng.random::<f64>();
        let mt = m_star.hypot(pt);
        let p_phi = [mt * y.cosh(), pt * phi.cos(), pt * phi.sin(), mt * y.sinh()];
        // 3. Decay.
        let cos_t = 2.0 * rng.random::<f64>() - 1.0;
        let sin_t = (1.0 - cos_t * cos_t).max(0.0).sqrt();
        let phi_star = 2.0 * PI * rng.random::<f64>();
        let p_star = (m_star * m_star - m_omega * m_omega) / (2.0 * m_star);
        let n = [sin_t * phi_star.cos(), sin_t * phi_star.sin(), cos_t];
        let beta = [p_phi[1] / p_phi[0], p_phi[2] / p_phi[0], p_phi[3] / p_phi[0]];
        let photon = boost([p_star, p_star * n[0], p_star * n[1], p_star * n[2]], beta);
        let e_omega_rest = p_star.hypot(m_omega);
        let omega = boost([e_omega_rest, -p_star * n[0], -p_star * n[1], -p_star * n[2]], beta);
        // 4.–5. Shared scale and shoulder.
        let s = 1.0 + self.scale_sigma * rng.sample::<f64, _>(StandardNormal);
        let (k_m, k_e) = if rng.random::<f64>() < self.shoulder_fraction {
            let eps = self.shoulder_loss_min + (self.shoulder_loss_max - self.shoulder_loss_min) * rng.random::<f64>();
            ((1.0 - eps).sqrt(), 1.0 - 0.5 * eps)
        } else {
            (1.0, 1.0)
        };
        // 6. Photon energy.
        let e_g = s * photon[0] * (1.0 + self.photon_resolution(photon[0]) * shapes.photon.sample(rng));
        // 7. Two-prong energy.
        let z_w: f64 = rng.sample(StandardNormal);
        let e_w = s * k_e * omega[0] * (1.0 + self.twoprong_resolution(omega[0]) * z_w);
        // 8. Two-prong mass.
        let m_w = s * (k_m * m_omega + self.mass_sigma(m_omega, omega[0]) * shapes.mass.sample(rng));
        // 9. Directions.
        let (_, eta_g0, phi_g0) = pt_eta_phi(photon);
        let (_, eta_w0, phi_w0) = pt_eta_phi(omega);
        let mut smear = |sigma: f64| sigma * rng.sample::<f64, _>(StandardNormal);
        let eta_g = eta_g0 + smear(self.photon_angle_sigma);
        let phi_g = phi_g0 + smear(self.photon_angle_sigma);
        let eta_w = eta_w0 + smear(self.twoprong_angle_sigma);
        let phi_w = phi_w0 + smear(self.twoprong_angle_sigma);
        // 10. Reconstruction.
        if !(s > 0.0 && e_g > 0.0 && m_w < e_w && eta_g.is_finite() && eta_w.is_finite()) {
            return None;
        }
        let p_w = (e_w * e_w - m_w * m_w).sqrt();
        let g = from_e_p_eta_phi(e_g, e_g, eta_g, phi_g);
        let w = from_e_p_eta_phi(e_w, p_w, eta_w, phi_w);
        let sum = [g[0] + w[0], g[1] + w[1], g[2] + w[2], g[3] + w[3]];
        let m2 = sum[0] * sum[0] - sum[1] * sum[1] - sum[2] * sum[2] - sum[3] * sum[3];
        let ev = [m2.max(0.0).sqrt(), m_w, g[1].hypot(g[2]), w[1].hypot(w[2]), eta_g, eta_w, delta_phi(phi_g, phi_w)];
        Some(ev)
    }

    /// Draws exactly `n` accepted events at `label = [M_Φ, M_ω, W]` and
    /// reports the acceptance efficiency.
    ///
    /// # Errors
    /// An invalid label ([`PhiOmegaNdModel::check_label`]) or parameter, or an
    /// acceptance below [`PhiOmegaNdModel::min_efficiency`].
    pub fn sample_with_efficiency<R: Rng + ?Sized>(
        &self,
        label: NdLabel,
        n: usize,
        rng: &mut R,
    ) -> Result<NdSample, PhiOmegaNdError> {
        self.validate()?;
        self.check_label(label)?;
        let shapes = Shapes {
            photon: CrystalBall::new(self.photon_tail_alpha, self.photon_tail_n),
            mass: CrystalBall::new(self.mass_tail_alpha, self.mass_tail_n),
        };
        let max_trials = (n as f64 / self.min_efficiency).ceil() as u64 + 10_000;
        let mut events = Vec::with_capacity(n);
        let mut trials = 0u64;
        while events.len() < n {
            if trials >= max_trials {
                return Err(PhiOmegaNdError::AcceptanceTooLow {
                    m_phi: label[0],
                    m_omega: label[1],
                    width: label[2],
                    trials,
                    accepted: events.len() as u64,
                    min_efficiency: self.min_efficiency,
                });
            }
            trials += 1;
            if let Some(ev) = self.candidate(label, &shapes, rng).filter(|ev| self.accepts(ev)) {
                events.push(ev);
            }
        }
        let efficiency = if trials == 0 { 1.0 } else { n as f64 / trials as f64 };
        Ok(NdSample { events, trials, efficiency })
    }

    /// [`PhiOmegaNdModel::sample_with_efficiency`] with a `ChaCha8Rng` seeded by `seed`.
    ///
    /// # Errors
    /// As [`PhiOmegaNdModel::sample_with_efficiency`].
    pub fn sample_seeded(&self, label: NdLabel, n: usize, seed: u64) -> Result<NdSample, PhiOmegaNdError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.sample_with_efficiency(label, n, &mut rng)
    }
}

/// A rectangular grid of label points `[M_Φ, M_ω, W]`, linearly spaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NdGrid {
    /// `[min, max]` of `M_Φ`, GeV.
    pub m_phi_range: [f64; 2],
    /// `[min, max]` of `M_ω`, GeV.
    pub m_omega_range: [f64; 2],
    /// `[min, max]` of `W = Γ/M_Φ`.
    pub width_range: [f64; 2],
    /// Number of values along each axis `[M_Φ, M_ω, W]` (each ≥ 1).
    pub counts: [usize; 3],
}

impl Default for NdGrid {
    /// The production grid: 5 × 5 × 3 over [`M_PHI_RANGE`] × [`M_OMEGA_RANGE`] × [`WIDTH_RANGE`].
    fn default() -> Self {
        NdGrid { m_phi_range: M_PHI_RANGE, m_omega_range: M_OMEGA_RANGE, width_range: WIDTH_RANGE, counts: [5, 5, 3] }
    }
}

fn linspace(range: [f64; 2], n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![range[0]],
        _ => (0..n).map(|i| range[0] + (range[1] - range[0]) * i as f64 / (n - 1) as f64).collect(),
    }
}

impl NdGrid {
    /// Grid with `counts = [n_phi, n_omega, n_width]` points over the production ranges.
    pub fn new(counts: [usize; 3]) -> Self {
        NdGrid { counts, ..Default::default() }
    }

    /// Parses `"AxBxC"` (points along `M_Φ`, `M_ω`, `W`, each ≥ 1) into a
    /// grid over the production ranges.
    ///
    /// # Errors
    /// Not three positive integers separated by `x`.
    pub fn parse(spec: &str) -> Result<Self, PhiOmegaNdError> {
        let parts: Vec<&str> = spec.split('x').map(str::trim).collect();
        let counts: Option<Vec<usize>> = parts.iter().map(|p| p.parse::<usize>().ok().filter(|&n| n > 0)).collect();
        match counts.as_deref() {
            Some(&[a, b, c]) => Ok(NdGrid::new([a, b, c])),
            _ => Err(PhiOmegaNdError::InvalidGrid(format!(
                "'{spec}': expected three positive counts AxBxC (points along M_phi, M_omega, W_phi), e.g. 5x5x3"
            ))),
        }
    }

    fn validate(&self) -> Result<(), PhiOmegaNdError> {
        if self.counts.contains(&0) {
            return Err(PhiOmegaNdError::InvalidGrid(format!(
                "need at least one point per axis, got {:?}",
                self.counts
            )));
        }
        for (name, r) in [("M_phi", self.m_phi_range), ("M_omega", self.m_omega_range)] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] > 0.0 && r[1] >= r[0]) {
                return Err(PhiOmegaNdError::InvalidGrid(format!(
                    "{name} range {r:?} must be finite, positive and ordered"
                )));
            }
        }
        let r = self.width_range;
        if !(r[0].is_finite() && r[1].is_finite() && r[0] >= 0.0 && r[1] >= r[0]) {
            return Err(PhiOmegaNdError::InvalidGrid(format!("W_phi range {r:?} must be finite, ≥ 0 and ordered")));
        }
        Ok(())
    }

    /// The values along each axis `[M_Φ, M_ω, W]` (ascending; a single point
    /// sits at the range minimum).
    pub fn axes(&self) -> [Vec<f64>; 3] {
        [
            linspace(self.m_phi_range, self.counts[0]),
            linspace(self.m_omega_range, self.counts[1]),
            linspace(self.width_range, self.counts[2]),
        ]
    }

    /// All grid points `[M_Φ, M_ω, W]`, `M_Φ` varying slowest and `W` fastest.
    ///
    /// # Errors
    /// An empty axis or an invalid range.
    pub fn points(&self) -> Result<Vec<NdLabel>, PhiOmegaNdError> {
        self.validate()?;
        let [p, o, w] = self.axes();
        let mut points = Vec::with_capacity(p.len() * o.len() * w.len());
        for &a in &p {
            for &b in &o {
                points.extend(w.iter().map(|&c| [a, b, c]));
            }
        }
        Ok(points)
    }
}

/// The 12 default off-grid evaluation points of the production grid: every
/// label at a cell centre of [`NdGrid::default`] (`M_Φ` ∈ {1250, 1750, 2250,
/// 2750}, `M_ω` ∈ {1.5, 3.5, 5.5, 7.5}, `W` ∈ {0.015, 0.035}); each `M_Φ`
/// with three `M_ω` values, each `M_ω` three times, each width six times.
pub fn default_eval_points() -> Vec<NdLabel> {
    vec![
        [1250.0, 1.5, 0.015],
        [1250.0, 3.5, 0.035],
        [1250.0, 5.5, 0.015],
        [1750.0, 3.5, 0.015],
        [1750.0, 5.5, 0.035],
        [1750.0, 7.5, 0.015],
        [2250.0, 5.5, 0.035],
        [2250.0, 7.5, 0.015],
        [2250.0, 1.5, 0.035],
        [2750.0, 7.5, 0.035],
        [2750.0, 1.5, 0.015],
        [2750.0, 3.5, 0.035],
    ]
}

fn to_event_set(parts: &[(NdLabel, &[NdEvent])], source: &str) -> FedhexResult<crate::data::EventSet> {
    let rows: usize = parts.iter().map(|(_, e)| e.len()).sum();
    let mut samples = Vec::with_capacity(rows * N_FEATURES);
    let mut labels = Vec::with_capacity(rows * LABELS.len());
    for (label, events) in parts {
        for ev in events.iter() {
            samples.extend(ev.iter().map(|&v| v as f32));
            labels.extend(label.iter().map(|&v| v as f32));
        }
    }
    let shape_err = |e: ndarray::ShapeError| Error::Data(format!("{source}: {e}"));
    crate::data::EventSet::new(
        ndarray::Array2::from_shape_vec((rows, N_FEATURES), samples).map_err(shape_err)?,
        ndarray::Array2::from_shape_vec((rows, LABELS.len()), labels).map_err(shape_err)?,
        FEATURES.iter().map(|s| s.to_string()).collect(),
        LABELS.iter().map(|s| s.to_string()).collect(),
        source,
    )
}

/// Events at the label points of `points`, `n` per point, as an
/// [`crate::data::EventSet`] with the features [`FEATURES`] and labels
/// [`LABELS`]. Point `i` uses the seed `seed + 1000003 (i + 1)`; points are
/// generated in parallel.
///
/// # Errors
/// Invalid labels or model parameters, or too low an acceptance.
pub fn event_set(
    model: &PhiOmegaNdModel,
    points: &[NdLabel],
    n: usize,
    seed: u64,
) -> FedhexResult<crate::data::EventSet> {
    let samples = parallel_map(points.len(), |i| {
        model
            .sample_seeded(points[i], n, seed.wrapping_add(1_000_003 * (i as u64 + 1)))
            .map_err(|e| Error::Data(format!("point {i} {:?}: {e}", points[i])))
    })?;
    let parts: Vec<(NdLabel, &[NdEvent])> =
        points.iter().zip(&samples).map(|(l, s)| (*l, s.events.as_slice())).collect();
    to_event_set(&parts, "phi-omega-nd generator")
}

/// Writes an N-dimensional Φ → γω production: one ROOT file per label point
/// of `points`, `phiomega_nd_<index>.root` in `dir` (created if needed), each
/// with `n_per_point` events in a tree `Events` with one float branch per
/// feature ([`FEATURES`]) and per label ([`LABELS`]). Point `i` uses
/// `model.sample_seeded(point, n_per_point, seed + i)`, so the files are a
/// pure function of the arguments; points are generated in parallel.
/// Returns the paths in point order (which is also their sorted order).
///
/// Beside them, `acceptance.csv` records per point
/// `M_phi,M_omega,W_phi,generated,accepted,efficiency` (candidates drawn and
/// kept by the acceptance cuts), the table `data.acceptance_efficiency` reads
/// ([`crate::data::efficiency`]).
///
/// # Errors
/// `n_per_point = 0`, invalid labels or model parameters, too low an
/// acceptance, or I/O.
pub fn write_nd_grid(
    dir: &Path,
    model: &PhiOmegaNdModel,
    points: &[NdLabel],
    n_per_point: usize,
    seed: u64,
) -> FedhexResult<Vec<PathBuf>> {
    if n_per_point == 0 {
        return Err(Error::Data("phi-omega-nd production: the number of events per point must be > 0".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let width = points.len().saturating_sub(1).to_string().len().max(5);
    let written = parallel_map(points.len(), |i| {
        let label = points[i];
        let path = dir.join(format!("phiomega_nd_{i:0width$}.root"));
        let sample = model
            .sample_seeded(label, n_per_point, seed.wrapping_add(i as u64))
            .map_err(|e| Error::Data(format!("{}: point {i} {label:?}: {e}", path.display())))?;
        let events = to_event_set(&[(label, &sample.events)], &path.display().to_string())?;
        super::files::write_root(&path, &events, "Events")?;
        Ok((path, sample.trials, sample.events.len()))
    })?;
    let mut csv = String::from("M_phi,M_omega,W_phi,generated,accepted,efficiency\n");
    for ([m_phi, m_omega, w], (_, trials, kept)) in points.iter().zip(&written) {
        let eff = if *trials == 0 { 1.0 } else { *kept as f64 / *trials as f64 };
        csv.push_str(&format!("{m_phi},{m_omega},{w},{trials},{kept},{eff:.8}\n"));
    }
    crate::atomic::write_synced(&dir.join("acceptance.csv"), csv.as_bytes())?;
    Ok(written.into_iter().map(|(p, _, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boost_preserves_mass_and_delta_phi_wraps() {
        let v = [5.0, 1.0, 2.0, 3.0];
        let b = boost(v, [0.3, -0.2, 0.5]);
        let m2 = |v: P4| v[0] * v[0] - v[1] * v[1] - v[2] * v[2] - v[3] * v[3];
        assert!((m2(v) - m2(b)).abs() < 1e-9, "{} vs {}", m2(v), m2(b));
        assert!((delta_phi(3.0, -3.0) - (2.0 * PI - 6.0)).abs() < 1e-12);
        assert!((delta_phi(0.5, 0.1) - 0.4).abs() < 1e-12);
    }
}
