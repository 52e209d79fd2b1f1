//! Learning-rate schedules, evaluated at a fractional epoch (step-exact, so a
//! resumed run gets the same rates).

use crate::config::{Schedule, TrainingConfig};

/// Learning rate at fractional epoch `t` (0 at the start of training).
pub fn learning_rate(cfg: &TrainingConfig, t: f64) -> f64 {
    let span = if cfg.lr_decay_epochs > 0.0 { cfg.lr_decay_epochs } else { cfg.epochs as f64 };
    let warm = cfg.warmup_epochs;
    if t < warm {
        return cfg.lr_initial * (t / warm).max(1e-3);
    }
    let f = ((t - warm) / (span - warm).max(1e-12)).clamp(0.0, 1.0);
    let (a, b) = (cfg.lr_initial, cfg.lr_final);
    match cfg.schedule {
        Schedule::Constant => a,
        Schedule::Linear => a + (b - a) * f,
        Schedule::Exponential => a * (b / a).powf(f),
        Schedule::Cosine => b + 0.5 * (a - b) * (1.0 + (std::f64::consts::PI * f).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule) -> TrainingConfig {
        TrainingConfig {
            epochs: 10,
            lr_initial: 1e-2,
            lr_final: 1e-4,
            schedule,
            warmup_epochs: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn every_schedule_goes_from_initial_to_final() {
        for s in [Schedule::Exponential, Schedule::Linear, Schedule::Cosine] {
            let c = cfg(s);
            assert!((learning_rate(&c, 0.0) - 1e-2).abs() < 1e-12, "{s:?}");
            assert!((learning_rate(&c, 10.0) - 1e-4).abs() < 1e-12, "{s:?}");
            assert!((learning_rate(&c, 25.0) - 1e-4).abs() < 1e-12, "{s:?} holds after the span");
            let mid = learning_rate(&c, 5.0);
            assert!(mid < 1e-2 && mid > 1e-4, "{s:?} {mid}");
        }
        assert_eq!(learning_rate(&cfg(Schedule::Constant), 7.0), 1e-2);
    }

    #[test]
    fn exponential_is_geometric_midway() {
        let c = cfg(Schedule::Exponential);
        assert!((learning_rate(&c, 5.0) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn warmup_rises_linearly() {
        let c = TrainingConfig { warmup_epochs: 2.0, ..cfg(Schedule::Cosine) };
        assert!((learning_rate(&c, 1.0) - 5e-3).abs() < 1e-12);
        assert!((learning_rate(&c, 2.0) - 1e-2).abs() < 1e-12);
    }
}
