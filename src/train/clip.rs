//! Gradient clipping (`training.clip_grad_norm`, `training.clip_grad_relative`).
//!
//! Heavy-tailed physics data hold rare events far in the tails; a batch that
//! contains one can have a gradient a thousand times the usual (measured on
//! the Φ → γω benchmark: median norm 1.9, one step at 1612 within the first
//! epoch), and a single such Adam step both moves the weights far and inflates
//! the second moment for about a thousand steps. The cap is the smaller of an
//! absolute norm and a multiple of a running average of recent (capped)
//! norms, so it adapts to the scale of any model and data set. The running
//! average is one number of state, checkpointed with the optimiser so a
//! resumed run clips exactly as an uninterrupted one.

/// Decay per step of the running average of gradient norms (~100 steps).
pub const NORM_AVG_DECAY: f64 = 0.99;

/// The clipping rule and its running state.
#[derive(Debug, Clone, PartialEq)]
pub struct GradClip {
    /// Absolute cap on the mean gradient's L2 norm (0: none).
    pub max_norm: f64,
    /// Cap as a multiple of the running average norm (0: none).
    pub relative: f64,
    /// Running average of the capped norms (None before the first step).
    pub avg: Option<f64>,
}

impl GradClip {
    /// A rule with no history.
    pub fn new(max_norm: f64, relative: f64) -> Self {
        GradClip { max_norm, relative, avg: None }
    }

    /// Whether any cap is configured (the norm must then be computed every step).
    pub fn active(&self) -> bool {
        self.max_norm > 0.0 || self.relative > 0.0
    }

    /// The cap for the next step (infinite when none applies yet).
    pub fn cap(&self) -> f64 {
        let abs = if self.max_norm > 0.0 { self.max_norm } else { f64::INFINITY };
        match self.avg {
            Some(a) if self.relative > 0.0 => abs.min(self.relative * a),
            _ => abs,
        }
    }

    /// The factor on this step's gradient (≤ 1) for a mean-gradient norm
    /// `norm`, and the history updated with the capped norm. A non-finite norm
    /// is left alone and not recorded: the non-finite loss check ends the run
    /// with a clear error instead.
    pub fn factor(&mut self, norm: f64) -> f64 {
        if !self.active() || !norm.is_finite() {
            return 1.0;
        }
        let cap = self.cap();
        let kept = norm.min(cap);
        if self.relative > 0.0 {
            self.avg = Some(match self.avg {
                Some(a) => NORM_AVG_DECAY * a + (1.0 - NORM_AVG_DECAY) * kept,
                None => kept,
            });
        }
        if norm > cap && norm > 0.0 {
            cap / norm
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_cap() {
        let mut c = GradClip::new(3.0, 0.0);
        assert_eq!(c.factor(2.0), 1.0);
        assert!((c.factor(6.0) - 0.5).abs() < 1e-15);
        assert_eq!(c.avg, None, "no history without a relative cap");
        assert_eq!(GradClip::new(0.0, 0.0).factor(1e9), 1.0, "off");
        assert_eq!(c.factor(f64::NAN), 1.0);
    }

    #[test]
    fn relative_cap_follows_the_usual_norm_and_ignores_spikes() {
        let mut c = GradClip::new(0.0, 10.0);
        assert_eq!(c.factor(2.0), 1.0, "the first step only starts the history");
        for _ in 0..500 {
            assert_eq!(c.factor(2.0), 1.0);
        }
        // A spike a thousand times the usual is cut to ten times the average...
        let f = c.factor(2000.0);
        assert!((f * 2000.0 - 20.0).abs() < 1e-9, "capped norm {}", f * 2000.0);
        // ...and moves the average only by the capped amount.
        let avg = c.avg.unwrap_or(0.0);
        assert!((avg - (0.99 * 2.0 + 0.01 * 20.0)).abs() < 1e-12, "{avg}");
        // The cap follows a slow change of scale (the norm shrinking as training converges).
        for _ in 0..2000 {
            c.factor(0.5);
        }
        assert!((c.cap() - 5.0).abs() < 1e-6, "cap {}", c.cap());
        // The smaller of both caps applies.
        let both = GradClip { max_norm: 1.0, relative: 10.0, avg: Some(2.0) };
        assert_eq!(both.cap(), 1.0);
    }
}
