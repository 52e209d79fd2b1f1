//! A whole training run as the binaries perform it, on any
//! [`Communicator`]: check the configuration agrees across ranks, read the
//! data and keep this rank's shard, pick the device, resume if asked, train
//! with checkpoints, write the final model (rank 0).

use super::checkpoint;
use super::driver::{train, write_history, Controls, Hooks, Observer, TrainOutcome};
use super::shard::ShardPlan;
use crate::comm::{agree, check_same, local_rank, local_size, Communicator};
use crate::config::{Resume, RunConfig};
use crate::data::npy::read_npz;
use crate::data::EventSet;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Options of a run beyond the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint (as `training.resume = "auto"`).
    pub resume: bool,
    /// Requests (signals, control plane).
    pub controls: Arc<Controls>,
    /// Progress observer (rank 0).
    pub observer: Option<Arc<dyn Observer>>,
}

/// Reads the input and keeps this rank's shard; every rank computes the same
/// label grouping and plan, and rank 0's grouping is checked against the others'.
pub fn load_shard(cfg: &RunConfig, comm: &dyn Communicator) -> Result<(EventSet, ShardPlan)> {
    let events = agree(comm, read_npz(&cfg.data.path, cfg.data.features.clone(), cfg.data.labels.clone()))?;
    let groups = events.label_groups();
    let sizes: Vec<usize> = groups.members.iter().map(Vec::len).collect();
    let digest: Vec<u8> = sizes.iter().flat_map(|s| (*s as u64).to_le_bytes()).collect();
    check_same(comm, "input data (events per label)", &digest)?;
    if comm.size() > events.len() {
        return Err(Error::Data(format!(
            "{} ranks but only {} events in {}: use at most as many ranks as events",
            comm.size(),
            events.len(),
            cfg.data.path.display()
        )));
    }
    let plan = ShardPlan::new(&sizes, comm.size(), comm.rank(), cfg.data.validation_fraction, cfg.training.seed);
    let rows: Vec<usize> =
        plan.local_rows().into_iter().flat_map(|(g, lo, hi)| groups.members[g][lo..hi].iter().copied()).collect();
    Ok((events.select(&rows), plan))
}

/// Runs training as configured; rank 0 writes `model/`, `history.csv` and
/// `config.toml` into the run directory at the end.
pub fn run(cfg: &RunConfig, comm: &dyn Communicator, opts: RunOptions) -> Result<TrainOutcome> {
    check_same(comm, "configuration", cfg.to_toml()?.as_bytes())?;
    let run_dir = cfg.outputs.run_dir.clone();
    let ckpt_dir = run_dir.join("checkpoints");
    let prepared = (|| -> Result<_> {
        let per_rank_cores = (crate::device::available_cores() / local_size().max(1)).max(1);
        let threads = crate::device::set_threads(if cfg.training.threads == 0 {
            per_rank_cores.min(crate::device::available_cores())
        } else {
            cfg.training.threads
        });
        let device = crate::device::resolve(crate::device::parse_device(&cfg.training.device)?, local_rank())?;
        if comm.is_root() {
            std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
            let probe = run_dir.join(".write-test");
            std::fs::write(&probe, b"").map_err(|e| Error::io(&run_dir, e))?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok((threads, device))
    })();
    let (threads, device) = agree(comm, prepared)?;
    let (local, plan) = load_shard(cfg, comm)?;
    tracing::info!(
        rank = comm.rank(),
        world = comm.size(),
        ?device,
        threads,
        local_events = local.len(),
        train_events = plan.n_train,
        validation_events = plan.n_val,
        "shard ready"
    );
    let resume = opts.resume || cfg.training.resume == Resume::Auto;
    let loaded = if resume {
        // Every rank reads the same checkpoint (shared file system); rank 0 picks it.
        let mut name = if comm.is_root() {
            checkpoint::latest(&ckpt_dir).map(|p| p.display().to_string()).unwrap_or_default().into_bytes()
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(0, &mut name)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        if name.is_empty() {
            if comm.is_root() {
                tracing::info!("no checkpoint in {}: starting from scratch", ckpt_dir.display());
            }
            None
        } else {
            Some(agree(comm, checkpoint::load(std::path::Path::new(&name), device))?)
        }
    } else {
        None
    };
    let hooks =
        Hooks { checkpoint_dir: Some(ckpt_dir), controls: opts.controls, observer: opts.observer, resume: loaded };
    let outcome = agree(comm, train(cfg, &local, &plan, comm, device, hooks))?;
    if comm.is_root() {
        let cfg_path = run_dir.join("config.toml");
        std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
        write_history(&run_dir.join("history.csv"), &outcome.history)?;
        if outcome.finish == super::driver::Finish::Completed {
            outcome.model.save(&run_dir.join("model"))?;
        }
    }
    Ok(outcome)
}

/// Installs SIGTERM/SIGUSR1 handlers (Slurm's warning before a time limit or
/// preemption) that ask the trainer to stop at the next step boundary.
pub fn stop_on_signals(controls: Arc<Controls>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGUSR1, SIGINT])
        .map_err(|e| Error::Train(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("fedhex-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                tracing::warn!(signal = sig, "stop requested: saving a resumable checkpoint at the next step");
                controls.stop_now.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .map_err(|e| Error::Train(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}
