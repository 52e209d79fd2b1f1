//! Early stopping on the validation NLL (`training.early_stopping_patience`).
//!
//! After every epoch the validation NLL is compared with the best so far: an
//! epoch *improves* when its NLL is strictly lower (no minimum delta: any
//! decrease counts, ties keep the earlier epoch). Training stops once
//! `patience` epochs in a row have not improved, i.e. `patience` epochs after
//! the best one. The state is a few numbers, checkpointed with the training
//! state so that a resumed run stops at the same epoch.

use serde::{Deserialize, Serialize};

/// The best epoch so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestEpoch {
    /// Epochs completed at that point (1 after the first epoch).
    pub epoch: usize,
    /// Its mean validation NLL.
    pub val_nll: f64,
}

/// Where early stopping stands after the epochs seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// The epoch with the lowest validation NLL (None before the first epoch).
    pub best: Option<BestEpoch>,
    /// Epochs since the best one.
    pub since_best: usize,
}

impl EarlyStopping {
    /// Records the validation NLL after `epoch`; returns whether it is the new best.
    pub fn observe(&mut self, epoch: usize, val_nll: f64) -> bool {
        let improved = self.best.is_none_or(|b| val_nll < b.val_nll);
        if improved {
            self.best = Some(BestEpoch { epoch, val_nll });
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        improved
    }

    /// Whether training should stop with this `patience` (never for 0).
    pub fn should_stop(&self, patience: usize) -> bool {
        patience > 0 && self.best.is_some() && self.since_best >= patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_patience_epochs_after_the_best() {
        let vals = [3.0, 2.0, 2.5, 1.5, 1.6, 1.5, 1.7, 0.9];
        let mut es = EarlyStopping::default();
        let mut stopped = None;
        for (i, &v) in vals.iter().enumerate() {
            es.observe(i + 1, v);
            if es.should_stop(3) {
                stopped = Some(i + 1);
                break;
            }
        }
        // Best at epoch 4 (1.5); the tie at epoch 6 does not improve.
        assert_eq!(es.best, Some(BestEpoch { epoch: 4, val_nll: 1.5 }));
        assert_eq!(stopped, Some(7));
        assert!(!es.should_stop(0), "patience 0 never stops");
        assert!(!EarlyStopping::default().should_stop(1));
    }
}
