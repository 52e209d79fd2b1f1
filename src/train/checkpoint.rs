//! Checkpoints: epoch-exact (or, after a stop signal, step-exact) snapshots
//! from which training continues bit-identically.
//!
//! ```text
//! RUN_DIR/checkpoints/epoch-000012/              after 12 complete epochs
//! RUN_DIR/checkpoints/epoch-000012-step-000345/  12 epochs + 345 steps (stopped mid-epoch)
//!     model.json, model.safetensors   the model (usable directly by `fedhex sample`)
//!     optimizer.safetensors           Adam moments and step count
//!     best.safetensors                with early stopping: the best-validation epoch's weights
//!     state.json                      epoch, step, seed, world size, history, config, partial loss,
//!                                     early-stopping state
//! ```
//!
//! A checkpoint is written into `.NAME.tmp.PID`, every file fsynced, then
//! renamed: a directory with a final name is always complete. Names count
//! real epochs, whatever the dataset or batch size. Pruning keeps the last
//! `keep_last` plus the one with the best validation loss.

use super::early_stop::EarlyStopping;
use super::history::EpochRecord;
use super::optim::Adam;
use crate::atomic::{replace_dir, sibling, write_synced};
use crate::error::{Error, Result};
use crate::flow::model::{named_tensors_bytes, read_named_tensors};
use crate::flow::Model;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// File holding the training state inside a checkpoint.
pub const STATE_JSON: &str = "state.json";
/// File holding the optimiser state inside a checkpoint.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// File holding the best-validation weights inside a checkpoint (early stopping only).
pub const BEST: &str = "best.safetensors";

/// Where training stood when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Complete epochs.
    pub epoch: usize,
    /// Steps done in the next (incomplete) epoch; 0 at an epoch boundary.
    pub step_in_epoch: usize,
    /// Optimiser steps since the start.
    pub global_step: u64,
    /// Shuffle seed.
    pub seed: u64,
    /// World size of the run.
    pub world_size: usize,
    /// Sum of training NLL over the steps done in the incomplete epoch.
    pub partial_loss_sum: f64,
    /// One record per complete epoch.
    pub history: Vec<EpochRecord>,
    /// The configuration (TOML) the run used.
    pub config: String,
    /// Version of FEDHEX that wrote it.
    pub fedhex_version: String,
    /// Early-stopping state (runs with `training.early_stopping_patience > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Running average of the gradient norm for relative clipping
    /// ([`super::clip::GradClip`]; JSON keeps the f64 exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_avg: Option<f64>,
    /// Mid-epoch checkpoints of runs with acceptance cuts: the weight of each
    /// training label's flow samples in the acceptance term, as estimated at
    /// the start of the epoch in progress. A resume uses these instead of
    /// estimating them again from the mid-epoch weights, so it is exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_weights: Option<Vec<LabelWeight>>,
}

/// One training label and a weight that belongs to it (JSON keeps both `f32` exact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelWeight {
    /// The label point (raw label values).
    pub label: Vec<f32>,
    /// Its weight.
    pub weight: f32,
}

impl TrainState {
    /// Whether the checkpoint was taken inside an epoch.
    pub fn mid_epoch(&self) -> bool {
        self.step_in_epoch > 0
    }

    /// Directory name for this state.
    pub fn name(&self) -> String {
        if self.mid_epoch() {
            format!("epoch-{:06}-step-{:06}", self.epoch, self.step_in_epoch)
        } else {
            format!("epoch-{:06}", self.epoch)
        }
    }
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Loaded {
    /// Its directory.
    pub path: PathBuf,
    /// The model.
    pub model: Model,
    /// Optimiser state tensors.
    pub optimizer: HashMap<String, Tensor>,
    /// Training state.
    pub state: TrainState,
    /// The best-validation weights by parameter name, when the checkpoint has them.
    pub best: Option<HashMap<String, Tensor>>,
}

/// Test-only fault injection (`FEDHEX_FAULT=kill-in-checkpoint:EPOCH`): kill
/// this process half-way through writing that checkpoint.
fn fault_in_checkpoint(state: &TrainState) {
    if let Ok(f) = std::env::var("FEDHEX_FAULT") {
        if f.strip_prefix("kill-in-checkpoint:").and_then(|e| e.parse::<usize>().ok()) == Some(state.epoch) {
            // SAFETY: raise() only delivers a signal to this process.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}

/// Writes a checkpoint under `dir` atomically and returns its final path;
/// `best` (named weights) goes into [`BEST`] when given.
pub fn write(
    dir: &Path,
    model: &Model,
    opt: &Adam,
    state: &TrainState,
    best: Option<&HashMap<String, Tensor>>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let final_path = dir.join(state.name());
    let tmp = sibling(&final_path, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    model.write_into(&tmp)?;
    fault_in_checkpoint(state);
    let opt_state: HashMap<String, Tensor> = opt.state().into_iter().collect();
    write_synced(&tmp.join(OPTIMIZER), &named_tensors_bytes(&opt_state)?)?;
    if let Some(best) = best {
        write_synced(&tmp.join(BEST), &named_tensors_bytes(best)?)?;
    }
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Train(format!("checkpoint state: {e}")))?;
    write_synced(&tmp.join(STATE_JSON), &json)?;
    replace_dir(&tmp, &final_path)?;
    Ok(final_path)
}

/// Complete checkpoints under `dir`, oldest first (by epoch, then step).
pub fn list(dir: &Path) -> Vec<(TrainState, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut out: Vec<(TrainState, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("epoch-"))
        .filter_map(|e| {
            let p = e.path();
            let s: TrainState = serde_json::from_slice(&std::fs::read(p.join(STATE_JSON)).ok()?).ok()?;
            Some((s, p))
        })
        .collect();
    out.sort_by_key(|(s, _)| (s.epoch, s.step_in_epoch));
    out
}

/// The newest complete checkpoint under `dir`.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    list(dir).pop().map(|(_, p)| p)
}

/// Reads a checkpoint onto `device`.
pub fn load(path: &Path, device: Device) -> Result<Loaded> {
    let sp = path.join(STATE_JSON);
    let bytes = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Train(format!("{}: not a checkpoint state: {e}", sp.display())))?;
    let model = Model::load(path, device)?;
    let op = path.join(OPTIMIZER);
    let ob = std::fs::read(&op).map_err(|e| Error::io(&op, e))?;
    let optimizer = read_named_tensors(&ob).map_err(|m| Error::Train(format!("{}: {m}", op.display())))?;
    let bp = path.join(BEST);
    let best = if bp.exists() {
        let bb = std::fs::read(&bp).map_err(|e| Error::io(&bp, e))?;
        Some(read_named_tensors(&bb).map_err(|m| Error::Train(format!("{}: {m}", bp.display())))?)
    } else {
        None
    };
    Ok(Loaded { path: path.to_path_buf(), model, optimizer, state, best })
}

/// Deletes all but the newest `keep_last` checkpoints and the best one by
/// validation loss (epoch-boundary checkpoints only compete for best).
pub fn prune(dir: &Path, keep_last: usize) -> Result<()> {
    let all = list(dir);
    let best = all
        .iter()
        .filter(|(s, _)| !s.mid_epoch())
        .filter_map(|(s, p)| s.history.last().filter(|r| r.val_nll.is_finite()).map(|r| (r.val_nll, p.clone())))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, p)| p);
    let n = all.len();
    for (i, (_, p)) in all.into_iter().enumerate() {
        if i + keep_last.max(1) >= n || Some(&p) == best.as_ref() {
            continue;
        }
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}
