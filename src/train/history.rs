//! `history.csv`: one line per epoch (losses, learning rate, timing), written
//! by training after every epoch and read back by the report's loss curves.

use crate::error::Result;
use std::path::Path;

/// Losses and timing of one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// Epochs completed (1 after the first epoch).
    pub epoch: usize,
    /// Mean NLL per training event (whitened space) over the epoch.
    pub train_nll: f64,
    /// Mean NLL per validation event after the epoch (NaN without validation).
    pub val_nll: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
    /// Training events per second (all ranks).
    pub events_per_s: f64,
    /// Seconds this rank (rank 0) spent in the gradient all-reduce.
    #[serde(default)]
    pub allreduce_seconds: f64,
}

/// Header of `history.csv`.
pub const HISTORY_HEADER: &str = "epoch,train_nll,val_nll,lr,seconds,events_per_s,allreduce_seconds";

/// Writes the loss history as CSV, atomically.
pub fn write_history(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::from(HISTORY_HEADER);
    s.push('\n');
    for r in history {
        s.push_str(&format!(
            "{},{:.8},{:.8},{:.6e},{:.3},{:.1},{:.4}\n",
            r.epoch, r.train_nll, r.val_nll, r.lr, r.seconds, r.events_per_s, r.allreduce_seconds
        ));
    }
    crate::atomic::write_atomic(path, s.as_bytes())
}

/// Reads `train_nll` and `val_nll` columns of a `history.csv`.
pub fn read_loss_curves(path: &Path) -> std::result::Result<(Vec<f64>, Vec<f64>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty file")?.split(',').map(str::trim).collect();
    let col = |n: &str| header.iter().position(|h| *h == n);
    let ti = col("train_nll").ok_or("no train_nll column")?;
    let vi = col("val_nll");
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (k, l) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let cells: Vec<&str> = l.split(',').collect();
        let get = |i: usize| -> std::result::Result<f64, String> {
            cells.get(i).and_then(|c| c.trim().parse::<f64>().ok()).ok_or(format!("line {}: bad value", k + 2))
        };
        train.push(get(ti)?);
        if let Some(vi) = vi {
            val.push(get(vi).unwrap_or(f64::NAN));
        }
    }
    if train.is_empty() {
        return Err("no epochs".into());
    }
    if val.iter().all(|v| !v.is_finite()) {
        val.clear();
    }
    Ok((train, val))
}
