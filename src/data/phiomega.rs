//! Pseudo-detector model of Φ → γ ω, ω → γγ (a "two-prong"), reconstructing
//! the pair of masses `(m_Φ, m_ω)` for given true masses `(M_Φ, M_ω)`.
//!
//! It is a fast, physics-like stand-in for the full simulation, used for demos
//! and tests of the conditional flow: it has the features that make the real
//! problem hard (mass-dependent resolutions, asymmetric tails, correlations, a
//! secondary structure and an acceptance cut that truncates the distribution
//! at low `M_ω`), with every effect given by an explicit formula below.  The
//! production label grid is `M_Φ ∈ [1000, 3250]` GeV × `M_ω ∈ [0.5, 9.5]` GeV,
//! 10 × 10 points ([`LabelGrid::default`]).  All masses are in GeV.
//!
//! # Generative model (one candidate event)
//!
//! 1. **Shared energy scale.**  `s = 1 + σ_s z₀`, `z₀ ~ N(0, 1)`,
//!    multiplies *both* reconstructed masses (a common calorimeter-scale
//!    fluctuation), which correlates `m_Φ` and `m_ω` positively.  For
//!    `M_Φ = 2000, M_ω = 5` GeV and the defaults, the induced core correlation
//!    is `ρ ≈ σ_s² / √((σ_s² + r_Φ²)(σ_s² + r_ω²)) ≈ 0.13` with `r` the
//!    relative core resolutions (Pearson's ρ of the full distribution without
//!    the shoulder is ≈ 0.10, as the tails are uncorrelated; the shoulder adds
//!    a much stronger positive correlation).  (`s ≤ 0`, probability ~10⁻¹⁸⁰, is rejected.)
//! 2. **Mis-reconstructed shoulder** (photon loss / leakage).  With
//!    probability `f_sh` one photon of the two-prong loses a fraction
//!    `ε ~ U(ε_min, ε_max)` of its energy.  Since `m_γγ² = 2E₁E₂(1 − cos θ)`,
//!    the two-prong mass scales as `k_ω = √(1 − ε)`; the Φ mass, with
//!    `m_Φ² ∝ E_γ E_ω`, scales as `k_Φ = √(1 − ζ ε)`, where `ζ` is the
//!    fraction of the ω energy that is lost with the photon (not recovered).
//!    Otherwise `k_ω = k_Φ = 1`.  This produces a low-mass shoulder in `m_ω`
//!    (and a weaker one in `m_Φ`).
//! 3. **Core resolution and radiative tail.**  Standardised residuals
//!    `t_Φ, t_ω` are drawn from Crystal-Ball shapes (Gaussian core, power-law
//!    low-side tail; J. E. Gaiser, SLAC-R-255 (1982), App. F):
//!    `f(t) ∝ exp(−t²/2)` for `t > −α`, `f(t) ∝ A (B − t)^{−n}` for `t ≤ −α`,
//!    `A = (n/α)ⁿ e^{−α²/2}`, `B = n/α − α`.  Sampling is exact: the tail has
//!    weight `I_t/(I_c + I_t)` with `I_c = √(2π) Φ(α)`,
//!    `I_t = n e^{−α²/2} / (α (n − 1))`; the core is a Gaussian truncated at
//!    `−α` (rejection), the tail is the Pareto variate
//!    `t = B − (n/α) U^{−1/(n−1)}`.  (`Φ` uses the Abramowitz & Stegun 7.1.26
//!    `erf`, |error| < 1.5·10⁻⁷, which only affects the tail weight.)
//! 4. **Reconstructed masses.**
//!    `m_Φ = s (k_Φ M_Φ + σ_Φ(M_Φ) t_Φ)`, `m_ω = s (k_ω M_ω + σ_ω(M_Φ, M_ω) t_ω)`.
//! 5. **Acceptance.**  The candidate is kept if `m_ω > m_cut` (default
//!    0.415 GeV) and `m_Φ > 0`; otherwise a new candidate is drawn
//!    (rejection), so [`PhiOmegaModel::sample`] returns exactly `n` accepted
//!    events.  The efficiency `n / trials` is reported by
//!    [`PhiOmegaModel::sample_with_efficiency`] and estimated by
//!    [`PhiOmegaModel::acceptance`].
//!
//! # Resolutions
//!
//! * Φ (calorimetric, stochastic ⊕ constant term):
//!   `σ_Φ / M_Φ = √(a_Φ² / M_Φ + b_Φ²)`, defaults `a_Φ = 0.30 √GeV`,
//!   `b_Φ = 1 %` (13.8 GeV at 1 TeV, 36.7 GeV at 3.25 TeV).
//! * ω (two-prong):
//!   `σ_ω = B(M_Φ) √(σ_fl² + S(M_ω)² (a_ω² M_ω + b_ω² M_ω²))`, with the
//!   **photon-merging turn-on** `S(M) = 1 − f_m exp(−(M/M_m)²)` and the
//!   boost factor `B(M_Φ) = 1 + κ (M_Φ − M_ref)/M_ref`.  At small `M_ω` the
//!   two photons of the highly boosted ω (opening angle `≈ 4 M_ω / M_Φ`)
//!   merge into one cluster and the two-prong mass comes from a cluster-shape
//!   estimator whose absolute resolution is compressed towards the floor
//!   `σ_fl`; as the photons separate the resolution turns on steeply to the
//!   resolved calorimetric form.  A larger boost (larger `M_Φ`) merges the
//!   photons more and degrades `σ_ω` by `κ` per `M_ref`.
//!   Defaults (`σ_fl = 5 MeV`, `a_ω = 0.075 √GeV`, `b_ω = 0.08`,
//!   `f_m = 0.6`, `M_m = 0.62 GeV`, `κ = 0.1`, `M_ref = 2000 GeV`) give at
//!   `M_Φ = M_ref`: σ_ω = 0.046, 0.105, 0.151, 0.794 GeV at
//!   `M_ω` = 0.5, 1.0, 1.5, 9.5 GeV: the width more than doubles from 0.5 to
//!   1.0 GeV (σ/M rises from 9.2 % to 10.5 %) and then grows less than
//!   proportionally (σ/M falls to 8.4 % at 9.5 GeV) — a strongly non-linear,
//!   S-shaped dependence that, together with the cut at 0.415 GeV
//!   (−1.8 σ_ω at `M_ω` = 0.5 GeV), makes interpolation near the cut hard.
//!
//! Randomness comes only from the `rng` argument, so results are
//! deterministic for a seeded generator (e.g. [`PhiOmegaModel::sample_seeded`]
//! with `ChaCha8Rng`).

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::root::{TreeWriter, Values};
use super::source::{parallel_map, root_err};
use crate::error::{Error, Result as FedhexResult};

/// Range of the true Φ mass of the production grid, GeV.
pub const M_PHI_RANGE: [f64; 2] = [1000.0, 3250.0];
/// Range of the true ω mass of the production grid, GeV.
pub const M_OMEGA_RANGE: [f64; 2] = [0.5, 9.5];
/// Default acceptance cut on the reconstructed ω mass, GeV.
pub const DEFAULT_OMEGA_CUT: f64 = 0.415;

/// Errors of the Φ → γω model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhiOmegaError {
    /// A true mass is not finite or not positive.
    #[error("invalid true mass {name} = {value}: must be finite and > 0")]
    InvalidMass {
        /// "m_phi" or "m_omega".
        name: &'static str,
        /// The offending value.
        value: f64,
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
        "acceptance too low at (M_Φ = {m_phi}, M_ω = {m_omega}): {accepted} of {trials} \
         candidates accepted, below the minimum efficiency {min_efficiency}"
    )]
    AcceptanceTooLow {
        /// True Φ mass.
        m_phi: f64,
        /// True ω mass.
        m_omega: f64,
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

/// Parameters of the pseudo-detector (see the module docs for the formulas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhiOmegaModel {
    /// Stochastic term `a_Φ` of the Φ resolution, √GeV.
    pub phi_stochastic: f64,
    /// Constant term `b_Φ` of the Φ resolution (relative).
    pub phi_constant: f64,
    /// Crystal-Ball `α` of the Φ low-side tail (> 0).
    pub phi_tail_alpha: f64,
    /// Crystal-Ball `n` of the Φ low-side tail (> 1).
    pub phi_tail_n: f64,
    /// Floor `σ_fl` of the ω resolution, GeV.
    pub omega_floor: f64,
    /// Stochastic term `a_ω` of the ω resolution, √GeV.
    pub omega_stochastic: f64,
    /// Constant term `b_ω` of the ω resolution (relative).
    pub omega_constant: f64,
    /// Merging suppression `f_m ∈ [0, 1]` of the ω resolution at `M_ω → 0`.
    pub omega_merge_fraction: f64,
    /// Merging scale `M_m` of the ω resolution turn-on, GeV (> 0).
    pub omega_merge_mass: f64,
    /// Boost degradation `κ ∈ [0, 1)` of σ_ω per `omega_boost_ref` of `M_Φ`.
    pub omega_boost_slope: f64,
    /// Reference Φ mass `M_ref` of the boost factor, GeV (> 0).
    pub omega_boost_ref: f64,
    /// Crystal-Ball `α` of the ω low-side tail (> 0).
    pub omega_tail_alpha: f64,
    /// Crystal-Ball `n` of the ω low-side tail (> 1).
    pub omega_tail_n: f64,
    /// Relative width `σ_s` of the shared per-event energy scale.
    pub scale_sigma: f64,
    /// Fraction `f_sh ∈ [0, 1]` of events in the mis-reconstructed shoulder.
    pub shoulder_fraction: f64,
    /// Minimum lost photon-energy fraction `ε_min`.
    pub shoulder_loss_min: f64,
    /// Maximum lost photon-energy fraction `ε_max` (`ε_min ≤ ε_max < 1`).
    pub shoulder_loss_max: f64,
    /// Fraction `ζ ∈ [0, 1]` of the lost energy that also lowers `m_Φ`.
    pub shoulder_phi_share: f64,
    /// Acceptance cut: events need `m_ω,reco > omega_cut` (GeV).
    pub omega_cut: f64,
    /// The rejection loop gives up (error) after `n / min_efficiency + 10⁴`
    /// candidates; in `(0, 1]`.
    pub min_efficiency: f64,
}

impl Default for PhiOmegaModel {
    fn default() -> Self {
        PhiOmegaModel {
            phi_stochastic: 0.30,
            phi_constant: 0.010,
            phi_tail_alpha: 1.5,
            phi_tail_n: 4.0,
            omega_floor: 0.005,
            omega_stochastic: 0.075,
            omega_constant: 0.08,
            omega_merge_fraction: 0.6,
            omega_merge_mass: 0.62,
            omega_boost_slope: 0.1,
            omega_boost_ref: 2000.0,
            omega_tail_alpha: 1.8,
            omega_tail_n: 5.0,
            scale_sigma: 0.015,
            shoulder_fraction: 0.10,
            shoulder_loss_min: 0.2,
            shoulder_loss_max: 0.8,
            shoulder_phi_share: 0.3,
            omega_cut: DEFAULT_OMEGA_CUT,
            min_efficiency: 1e-3,
        }
    }
}

/// Events together with the rejection statistics of their generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Accepted events `[m_Φ,reco, m_ω,reco]`, exactly the requested number.
    pub events: Vec<[f64; 2]>,
    /// Candidates drawn (accepted + rejected).
    pub trials: u64,
    /// Acceptance efficiency `events.len() / trials` (1 when `trials = 0`).
    pub efficiency: f64,
}

/// Acceptance estimate from a fixed number of candidates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Acceptance {
    /// Candidates drawn.
    pub n_trials: u64,
    /// Candidates accepted.
    pub n_accepted: u64,
    /// `n_accepted / n_trials` (NaN when `n_trials = 0`).
    pub efficiency: f64,
    /// Binomial uncertainty `√(ε(1−ε)/n_trials)` (NaN when `n_trials = 0`).
    pub uncertainty: f64,
}

/// Standard normal CDF via the Abramowitz & Stegun 7.1.26 `erf`
/// (|error| < 1.5·10⁻⁷).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Exact sampler of the standardised Crystal-Ball shape (module docs, step 3;
/// shared with [`super::phiomega_nd`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrystalBall {
    alpha: f64,
    n: f64,
    p_tail: f64,
}

impl CrystalBall {
    pub(crate) fn new(alpha: f64, n: f64) -> Self {
        let core = (2.0 * std::f64::consts::PI).sqrt() * normal_cdf(alpha);
        let tail = n / (alpha * (n - 1.0)) * (-0.5 * alpha * alpha).exp();
        CrystalBall { alpha, n, p_tail: tail / (core + tail) }
    }

    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        if rng.random::<f64>() < self.p_tail {
            // Pareto tail: u = (n/α) U^{−1/(n−1)}, t = B − u.
            let u01: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u = self.n / self.alpha * u01.powf(-1.0 / (self.n - 1.0));
            (self.n / self.alpha - self.alpha) - u
        } else {
            loop {
                let z: f64 = rng.sample(StandardNormal);
                if z > -self.alpha {
                    return z;
                }
            }
        }
    }
}

fn check_mass(name: &'static str, value: f64) -> Result<(), PhiOmegaError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(PhiOmegaError::InvalidMass { name, value })
    }
}

impl PhiOmegaModel {
    /// Checks every parameter against its valid range.
    pub fn validate(&self) -> Result<(), PhiOmegaError> {
        let bad = |name, value, reason| Err(PhiOmegaError::InvalidParameter { name, value, reason });
        let non_neg = [
            ("phi_stochastic", self.phi_stochastic),
            ("phi_constant", self.phi_constant),
            ("omega_floor", self.omega_floor),
            ("omega_stochastic", self.omega_stochastic),
            ("omega_constant", self.omega_constant),
            ("scale_sigma", self.scale_sigma),
        ];
        for (name, v) in non_neg {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and ≥ 0");
            }
        }
        let positive = [
            ("phi_tail_alpha", self.phi_tail_alpha),
            ("omega_tail_alpha", self.omega_tail_alpha),
            ("omega_merge_mass", self.omega_merge_mass),
            ("omega_boost_ref", self.omega_boost_ref),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, v, "must be finite and > 0");
            }
        }
        for (name, v) in [("phi_tail_n", self.phi_tail_n), ("omega_tail_n", self.omega_tail_n)] {
            if !(v.is_finite() && v > 1.0) {
                return bad(name, v, "must be finite and > 1");
            }
        }
        for (name, v) in [
            ("omega_merge_fraction", self.omega_merge_fraction),
            ("shoulder_fraction", self.shoulder_fraction),
            ("shoulder_phi_share", self.shoulder_phi_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(name, v, "must lie in [0, 1]");
            }
        }
        if !(0.0..1.0).contains(&self.omega_boost_slope) {
            return bad("omega_boost_slope", self.omega_boost_slope, "must lie in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.shoulder_loss_min) {
            return bad("shoulder_loss_min", self.shoulder_loss_min, "must lie in [0, 1)");
        }
        if !(self.shoulder_loss_min..1.0).contains(&self.shoulder_loss_max) {
            return bad("shoulder_loss_max", self.shoulder_loss_max, "must lie in [shoulder_loss_min, 1)");
        }
        if !self.omega_cut.is_finite() {
            return bad("omega_cut", self.omega_cut, "must be finite");
        }
        if !(self.min_efficiency > 0.0 && self.min_efficiency <= 1.0) {
            return bad("min_efficiency", self.min_efficiency, "must lie in (0, 1]");
        }
        Ok(())
    }

    /// Core Φ mass resolution `σ_Φ = M_Φ √(a_Φ²/M_Φ + b_Φ²)` in GeV
    /// (per-object part, without the shared scale).
    pub fn phi_core_sigma(&self, m_phi: f64) -> f64 {
        m_phi * (self.phi_stochastic.powi(2) / m_phi + self.phi_constant.powi(2)).sqrt()
    }

    /// Core ω mass resolution
    /// `σ_ω = B(M_Φ) √(σ_fl² + S(M_ω)² (a_ω² M_ω + b_ω² M_ω²))` in GeV
    /// (per-object part, without the shared scale).
    pub fn omega_core_sigma(&self, m_phi: f64, m_omega: f64) -> f64 {
        let boost = 1.0 + self.omega_boost_slope * (m_phi - self.omega_boost_ref) / self.omega_boost_ref;
        let turn_on = 1.0 - self.omega_merge_fraction * (-(m_omega / self.omega_merge_mass).powi(2)).exp();
        let resolved = self.omega_stochastic.powi(2) * m_omega + self.omega_constant.powi(2) * m_omega.powi(2);
        boost.max(0.0) * (self.omega_floor.powi(2) + turn_on.powi(2) * resolved).sqrt()
    }

    /// One candidate event before the acceptance cut.
    fn candidate<R: Rng + ?Sized>(
        &self,
        m_phi: f64,
        m_omega: f64,
        sig_phi: f64,
        sig_omega: f64,
        cb: (&CrystalBall, &CrystalBall),
        rng: &mut R,
    ) -> Option<[f64; 2]> {
        let z0: f64 = rng.sample(StandardNormal);
        let s = 1.0 + self.scale_sigma * z0;
        let (k_phi, k_omega) = if rng.random::<f64>() < self.shoulder_fraction {
            let eps = self.shoulder_loss_min + (self.shoulder_loss_max - self.shoulder_loss_min) * rng.random::<f64>();
            ((1.0 - self.shoulder_phi_share * eps).sqrt(), (1.0 - eps).sqrt())
        } else {
            (1.0, 1.0)
        };
        let t_phi = cb.0.sample(rng);
        let t_omega = cb.1.sample(rng);
        let reco_phi = s * (k_phi * m_phi + sig_phi * t_phi);
        let reco_omega = s * (k_omega * m_omega + sig_omega * t_omega);
        (s > 0.0 && reco_phi > 0.0 && reco_omega > self.omega_cut).then_some([reco_phi, reco_omega])
    }

    /// Draws exactly `n` accepted events `[m_Φ,reco, m_ω,reco]` at the true
    /// masses `(m_phi, m_omega)` and reports the acceptance efficiency.
    pub fn sample_with_efficiency<R: Rng + ?Sized>(
        &self,
        m_phi: f64,
        m_omega: f64,
        n: usize,
        rng: &mut R,
    ) -> Result<Sample, PhiOmegaError> {
        check_mass("m_phi", m_phi)?;
        check_mass("m_omega", m_omega)?;
        self.validate()?;
        let sig_phi = self.phi_core_sigma(m_phi);
        let sig_omega = self.omega_core_sigma(m_phi, m_omega);
        let cb_phi = CrystalBall::new(self.phi_tail_alpha, self.phi_tail_n);
        let cb_omega = CrystalBall::new(self.omega_tail_alpha, self.omega_tail_n);
        let max_trials = (n as f64 / self.min_efficiency).ceil() as u64 + 10_000;
        let mut events = Vec::with_capacity(n);
        let mut trials = 0u64;
        while events.len() < n {
            if trials >= max_trials {
                return Err(PhiOmegaError::AcceptanceTooLow {
                    m_phi,
                    m_omega,
                    trials,
                    accepted: events.len() as u64,
                    min_efficiency: self.min_efficiency,
                });
            }
            trials += 1;
            if let Some(ev) = self.candidate(m_phi, m_omega, sig_phi, sig_omega, (&cb_phi, &cb_omega), rng) {
                events.push(ev);
            }
        }
        let efficiency = if trials == 0 { 1.0 } else { n as f64 / trials as f64 };
        Ok(Sample { events, trials, efficiency })
    }

    /// Draws exactly `n` accepted events `[m_Φ,reco, m_ω,reco]`.
    ///
    /// Errors for non-finite or non-positive masses, invalid parameters, or
    /// an acceptance below [`PhiOmegaModel::min_efficiency`].
    pub fn sample<R: Rng + ?Sized>(
        &self,
        m_phi: f64,
        m_omega: f64,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<[f64; 2]>, PhiOmegaError> {
        Ok(self.sample_with_efficiency(m_phi, m_omega, n, rng)?.events)
    }

    /// [`PhiOmegaModel::sample_with_efficiency`] with a `ChaCha8Rng` seeded by `seed`.
    pub fn sample_seeded(&self, m_phi: f64, m_omega: f64, n: usize, seed: u64) -> Result<Sample, PhiOmegaError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.sample_with_efficiency(m_phi, m_omega, n, &mut rng)
    }

    /// Estimates the acceptance efficiency from `n_trials` candidates.
    pub fn acceptance<R: Rng + ?Sized>(
        &self,
        m_phi: f64,
        m_omega: f64,
        rng: &mut R,
        n_trials: u64,
    ) -> Result<Acceptance, PhiOmegaError> {
        check_mass("m_phi", m_phi)?;
        check_mass("m_omega", m_omega)?;
        self.validate()?;
        let sig_phi = self.phi_core_sigma(m_phi);
        let sig_omega = self.omega_core_sigma(m_phi, m_omega);
        let cb_phi = CrystalBall::new(self.phi_tail_alpha, self.phi_tail_n);
        let cb_omega = CrystalBall::new(self.omega_tail_alpha, self.omega_tail_n);
        let mut n_accepted = 0u64;
        for _ in 0..n_trials {
            if self.candidate(m_phi, m_omega, sig_phi, sig_omega, (&cb_phi, &cb_omega), rng).is_some() {
                n_accepted += 1;
            }
        }
        let efficiency = if n_trials == 0 { f64::NAN } else { n_accepted as f64 / n_trials as f64 };
        Ok(Acceptance {
            n_trials,
            n_accepted,
            efficiency,
            uncertainty: (efficiency * (1.0 - efficiency) / n_trials as f64).sqrt(),
        })
    }
}

/// A rectangular grid of label points `[M_Φ, M_ω]`, linearly spaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelGrid {
    /// `[min, max]` of `M_Φ`, GeV.
    pub m_phi_range: [f64; 2],
    /// `[min, max]` of `M_ω`, GeV.
    pub m_omega_range: [f64; 2],
    /// Number of `M_Φ` values (≥ 1).
    pub n_phi: usize,
    /// Number of `M_ω` values (≥ 1).
    pub n_omega: usize,
}

impl Default for LabelGrid {
    /// The production grid: 10 × 10 over [`M_PHI_RANGE`] × [`M_OMEGA_RANGE`].
    fn default() -> Self {
        LabelGrid { m_phi_range: M_PHI_RANGE, m_omega_range: M_OMEGA_RANGE, n_phi: 10, n_omega: 10 }
    }
}

fn linspace(range: [f64; 2], n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![range[0]],
        _ => (0..n).map(|i| range[0] + (range[1] - range[0]) * i as f64 / (n - 1) as f64).collect(),
    }
}

impl LabelGrid {
    /// Grid with `n_phi × n_omega` points over the production ranges.
    pub fn new(n_phi: usize, n_omega: usize) -> Self {
        LabelGrid { n_phi, n_omega, ..Default::default() }
    }

    fn validate(&self) -> Result<(), PhiOmegaError> {
        if self.n_phi == 0 || self.n_omega == 0 {
            return Err(PhiOmegaError::InvalidGrid(format!(
                "need at least one point per axis, got {} × {}",
                self.n_phi, self.n_omega
            )));
        }
        for r in [self.m_phi_range, self.m_omega_range] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] > 0.0 && r[1] >= r[0]) {
                return Err(PhiOmegaError::InvalidGrid(format!("range {r:?} must be finite, positive and ordered")));
            }
        }
        Ok(())
    }

    /// The `M_Φ` values (ascending; a single point sits at the range minimum).
    pub fn phi_values(&self) -> Vec<f64> {
        linspace(self.m_phi_range, self.n_phi)
    }

    /// The `M_ω` values (ascending; a single point sits at the range minimum).
    pub fn omega_values(&self) -> Vec<f64> {
        linspace(self.m_omega_range, self.n_omega)
    }

    /// All grid points `[M_Φ, M_ω]`, `M_Φ` varying slowest.
    pub fn points(&self) -> Result<Vec<[f64; 2]>, PhiOmegaError> {
        self.validate()?;
        let omegas = self.omega_values();
        Ok(self.phi_values().into_iter().flat_map(|p| omegas.iter().map(move |&o| [p, o])).collect())
    }

    /// Off-grid points at the centres of the grid cells,
    /// `(n_phi − 1) × (n_omega − 1)` of them, `M_Φ` varying slowest.
    pub fn midpoints(&self) -> Result<Vec<[f64; 2]>, PhiOmegaError> {
        self.validate()?;
        let mids = |v: Vec<f64>| -> Vec<f64> { v.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect() };
        let omegas = mids(self.omega_values());
        Ok(mids(self.phi_values()).into_iter().flat_map(|p| omegas.iter().map(move |&o| [p, o])).collect())
    }
}

/// Label points of an `n_phi × n_omega` grid over the production ranges
/// (`grid(10, 10)` is the production grid).
pub fn grid(n_phi: usize, n_omega: usize) -> Result<Vec<[f64; 2]>, PhiOmegaError> {
    LabelGrid::new(n_phi, n_omega).points()
}

/// Cell-centre (off-grid) points of the `n_phi × n_omega` production-range grid.
pub fn midpoints(n_phi: usize, n_omega: usize) -> Result<Vec<[f64; 2]>, PhiOmegaError> {
    LabelGrid::new(n_phi, n_omega).midpoints()
}
/// Events at the label points `[M_Φ, M_ω]` of `points`, `n` per point, as an
/// [`crate::data::EventSet`] with features `phi`, `omega` and labels
/// `labelphi`, `labelomega` (reconstructed masses only). Point `i` uses the
/// seed `seed + 1000003 (i + 1)`.
///
/// # Errors
/// Invalid masses or model parameters, or too low an acceptance.
pub fn event_set(
    model: &PhiOmegaModel,
    points: &[[f64; 2]],
    n: usize,
    seed: u64,
) -> FedhexResult<crate::data::EventSet> {
    let (mut samples, mut labels) = (Vec::new(), Vec::new());
    for (i, &[m_phi, m_omega]) in points.iter().enumerate() {
        let s = model
            .sample_seeded(m_phi, m_omega, n, seed.wrapping_add(1_000_003 * (i as u64 + 1)))
            .map_err(|e| Error::Data(e.to_string()))?;
        for e in s.events {
            samples.extend([e[0] as f32, e[1] as f32]);
            labels.extend([m_phi as f32, m_omega as f32]);
        }
    }
    let rows = samples.len() / 2;
    let shape_err = |e: ndarray::ShapeError| Error::Data(format!("phi-omega events: {e}"));
    crate::data::EventSet::new(
        ndarray::Array2::from_shape_vec((rows, 2), samples).map_err(shape_err)?,
        ndarray::Array2::from_shape_vec((rows, 2), labels).map_err(shape_err)?,
        vec!["phi".into(), "omega".into()],
        vec!["labelphi".into(), "labelomega".into()],
        "phi-omega generator",
    )
}

// ---------------------------------------------------------------------------
// Production: one ROOT file per grid point
// ---------------------------------------------------------------------------

/// Writes a phi-omega Monte Carlo "production": one ROOT file per label point
/// `[M_Φ, M_ω]` of `points`, `phiomega_<index>.root` in `dir` (created if
/// needed), each with `n_per_point` events in a tree `Events` (branches in
/// the [module documentation](self)). Point `i` uses
/// `model.sample_seeded(M_Φ, M_ω, n_per_point, seed + i)` for the
/// reconstructed masses and an independent seeded stream for the rest, so
/// the files are a pure function of the arguments. Returns the paths in
/// point order (which is also their sorted order).
///
/// Beside them, `acceptance.csv` records the production's bookkeeping per
/// point (`M_phi,M_omega,generated,accepted,efficiency`: candidates drawn and
/// kept by the acceptance cut), the table `data.acceptance_efficiency` reads
/// ([`crate::data::efficiency`]).
///
/// # Errors
/// Invalid masses or model parameters, too low an acceptance, or I/O.
pub fn write_phiomega_grid(
    dir: &Path,
    model: &PhiOmegaModel,
    points: &[[f64; 2]],
    n_per_point: usize,
    seed: u64,
) -> FedhexResult<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let width = points.len().saturating_sub(1).to_string().len().max(5);
    let written = parallel_map(points.len(), |i| {
        let [m_phi, m_omega] = points[i];
        let path = dir.join(format!("phiomega_{i:0width$}.root"));
        let sample = model
            .sample_seeded(m_phi, m_omega, n_per_point, seed.wrapping_add(i as u64))
            .map_err(|e| Error::Data(format!("{}: point {i} (M_Φ = {m_phi}, M_ω = {m_omega}): {e}", path.display())))?;
        let tw = phiomega_tree(&sample.events, m_phi, m_omega, seed, i).map_err(|e| root_err(&path, e))?;
        tw.write(&path).map_err(|e| root_err(&path, e))?;
        Ok((path, sample.trials, sample.events.len()))
    })?;
    let mut csv = String::from("M_phi,M_omega,generated,accepted,efficiency\n");
    for ([m_phi, m_omega], (_, trials, kept)) in points.iter().zip(&written) {
        let eff = if *trials == 0 { 1.0 } else { *kept as f64 / *trials as f64 };
        csv.push_str(&format!("{m_phi},{m_omega},{trials},{kept},{eff:.8}\n"));
    }
    let table = dir.join("acceptance.csv");
    crate::atomic::write_synced(&table, csv.as_bytes())?;
    Ok(written.into_iter().map(|(p, _, _)| p).collect())
}

/// Builds the tree of one grid point (see the module documentation).
fn phiomega_tree(
    events: &[[f64; 2]],
    m_phi: f64,
    m_omega: f64,
    seed: u64,
    index: usize,
) -> std::result::Result<TreeWriter, super::root::RootError> {
    // An independent stream per point for everything but the masses.
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_F00D_CAFE_0001 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let n = events.len();
    let mut region = Vec::with_capacity(n);
    let mut phi = Vec::with_capacity(n);
    let (mut tp_off, mut tp_val, mut tp_idx) = (vec![0u64], Vec::new(), Vec::with_capacity(n));
    let (mut ph_off, mut ph_val, mut ph_idx) = (vec![0u64], Vec::new(), Vec::with_capacity(n));
    for &[reco_phi, reco_omega] in events {
        region.push(if rng.random::<f64>() < 0.9 { 1i32 } else { 2 });
        phi.push(reco_phi as f32);
        let u: f64 = rng.random();
        let n_tp: i32 = if u < 0.6 {
            1
        } else if u < 0.9 {
            2
        } else {
            3
        };
        let which = rng.random_range(0..n_tp);
        for k in 0..n_tp {
            tp_val.push(if k == which { reco_omega as f32 } else { rng.random_range(0.2f32..10.0) });
        }
        tp_off.push(tp_val.len() as u64);
        tp_idx.push(which);
        let n_ph: i32 = if rng.random::<f64>() < 0.7 { 1 } else { 2 };
        let which = rng.random_range(0..n_ph);
        for k in 0..n_ph {
            ph_val.push(if k == which {
                (reco_phi / 2.0 * rng.random_range(0.3..1.0)) as f32
            } else {
                rng.random_range(20.0f32..100.0)
            });
        }
        ph_off.push(ph_val.len() as u64);
        ph_idx.push(which);
    }
    // One generator particle per event.
    let one_each: Vec<u64> = (0..=n as u64).collect();
    let mut tw = TreeWriter::new("Events");
    tw.title(&format!("phi-omega pseudo-detector, M_phi = {m_phi} GeV, M_omega = {m_omega} GeV"));
    tw.add_branch("event", Values::U64((0..n as u64).collect()))?;
    tw.add_branch("CBL_Region", Values::I32(region))?;
    tw.add_branch("CBL_RecoPhi_mass", Values::F32(phi))?;
    tw.add_jagged("TwoProng_massPi0", "nTwoProng", tp_off, Values::F32(tp_val))?;
    tw.add_branch("CBL_RecoPhi_twoprongindex", Values::I32(tp_idx))?;
    tw.add_jagged("Photon_pt", "nPhoton", ph_off, Values::F32(ph_val))?;
    tw.add_branch("CBL_RecoPhi_photonindex", Values::I32(ph_idx))?;
    tw.add_jagged("GenPhi_mass", "nGenPhi", one_each.clone(), Values::F32(vec![m_phi as f32; n]))?;
    tw.add_jagged("GenOmega_mass", "nGenOmega", one_each, Values::F32(vec![m_omega as f32; n]))?;
    Ok(tw)
}
