//! A whole training run as the binaries perform it, on any
//! [`Communicator`]: check the configuration agrees across ranks, read the
//! data and keep this rank's shard, pick the device, start the control plane,
//! install the signal handlers, resume if asked, train with checkpoints,
//! write the final model (rank 0). The composition root: it uses `train` and
//! `control`, neither of which knows the other's wiring.

use crate::comm::heartbeat::{BeforeAbort, Diagnosis, Report, Watchdog, WatchdogConfig};
use crate::comm::progress::{unix_ms, Activity, Progress, Watched};
use crate::comm::{agree, check_same, local_rank, local_size, Communicator};
use crate::config::{Resume, RunConfig};
use crate::control::grpc::ControlServer;
use crate::control::{ControlObserver, ControlState, RankActivity, RankInfo};
use crate::data::input::{InputIndex, ShardLocator};
use crate::data::npy::read_npz;
use crate::data::EventSet;
use crate::data::LabelGroups;
use crate::error::{Error, Result};
use crate::train::checkpoint;
use crate::train::driver::train;
use crate::train::history::write_history;
use crate::train::observe::{Controls, Hooks, Observer, TrainOutcome};
use crate::train::plan::{drop_holdout, make_plan, GroupSummary};
use crate::train::shard::ShardPlan;
use std::sync::Arc;

/// Options of a run beyond the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint (as `training.resume = "auto"`).
    pub resume: bool,
    /// Requests (signals, control plane).
    pub controls: Arc<Controls>,
    /// Progress observer (rank 0), in addition to the control plane.
    pub observer: Option<Arc<dyn Observer>>,
}

/// Forwards every observation to several observers.
struct Fanout(Vec<Arc<dyn Observer>>);

impl Observer for Fanout {
    fn on_step(&self, e: usize, s: usize, n: usize, g: u64, l: f64) {
        self.0.iter().for_each(|o| o.on_step(e, s, n, g, l));
    }
    fn on_epoch(&self, r: &crate::train::EpochRecord) {
        self.0.iter().for_each(|o| o.on_epoch(r));
    }
    fn on_checkpoint_start(&self) {
        self.0.iter().for_each(|o| o.on_checkpoint_start());
    }
    fn on_checkpoint(&self, s: &checkpoint::TrainState, p: &std::path::Path) {
        self.0.iter().for_each(|o| o.on_checkpoint(s, p));
    }
    fn on_rank_facts(&self, f: &[crate::train::RankFacts]) {
        self.0.iter().for_each(|o| o.on_rank_facts(f));
    }
}

/// Tells this rank's [`Progress`] about steps and checkpoints (every rank),
/// for the stall watchdog: two atomic stores per step.
struct ProgressObserver(Arc<Progress>);

impl Observer for ProgressObserver {
    fn on_step(&self, _e: usize, _s: usize, _n: usize, global_step: u64, _l: f64) {
        self.0.step_done(global_step);
    }
    fn on_checkpoint_start(&self) {
        self.0.set_activity(Activity::Checkpoint);
    }
    fn on_checkpoint(&self, _s: &checkpoint::TrainState, _p: &std::path::Path) {
        self.0.set_activity(Activity::Training);
    }
}

/// Collects every rank's host, device and threads on rank 0 (once, at start).
fn rank_infos(comm: &dyn Communicator, device: tch::Device, threads: usize) -> Result<Vec<RankInfo>> {
    let (dev, mem) = match device {
        tch::Device::Cuda(i) => (format!("cuda:{i}"), 0u64),
        _ => {
            let mut sys = sysinfo::System::new();
            sys.refresh_memory();
            ("cpu".to_string(), sys.total_memory())
        }
    };
    let mine = serde_json::json!({
        "host": crate::control::grpc::host_name(),
        "device": dev,
        "mem": mem,
        "threads": threads,
        "pid": std::process::id(),
    });
    let mut out = Vec::with_capacity(comm.size());
    for r in 0..comm.size() {
        let mut buf = if r == comm.rank() { mine.to_string().into_bytes() } else { Vec::new() };
        comm.broadcast_bytes(r, &mut buf)?;
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap_or_default();
        out.push(RankInfo {
            rank: r as u32,
            host: v["host"].as_str().unwrap_or("?").into(),
            device: v["device"].as_str().unwrap_or("?").into(),
            device_memory_bytes: v["mem"].as_u64().unwrap_or(0),
            threads: v["threads"].as_u64().unwrap_or(0) as u32,
            pid: v["pid"].as_u64().unwrap_or(0) as u32,
            seconds_since_progress: f64::NAN,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Reads the configured input: ROOT files through `[data.root]`, else the `.npz` at `data.path`.
pub fn read_input(cfg: &RunConfig) -> Result<EventSet> {
    match &cfg.data.root {
        Some(root) => {
            let (events, report) = crate::data::source::load(root)?;
            tracing::info!("{report}");
            Ok(events)
        }
        None => read_npz(&cfg.data.path, cfg.data.features.clone(), cfg.data.labels.clone()),
    }
}

/// This rank's shard of the input and the plan. Rank 0 alone indexes the
/// input (labels, weights, where each event lives; [`InputIndex`]), groups
/// the labels and sends every rank the group labels and sizes (broadcast,
/// O(labels)) and its own [`ShardLocator`] (scatter: labels, weights and
/// file + entry ranges of its events only; rank 0 keeps its own). Every
/// rank computes its plan from the groups, as before, and reads the
/// features of its own events only. The local events equal those of [`load_shard_full`], so training
/// gives the same weights. Rank 0's index errors reach every rank
/// ([`agree`]). With `data.weight_smoothing` > 1 the whole input is read on
/// every rank ([`load_shard_full`]): a smoothed weight averages over an
/// event's neighbours in feature space at its label, which needs every
/// event's features, not just the shard's.
pub fn load_shard(cfg: &RunConfig, comm: &dyn Communicator) -> Result<(EventSet, ShardPlan)> {
    if cfg.data.weight_smoothing > 1 {
        return load_shard_full(cfg, comm);
    }
    let t0 = std::time::Instant::now();
    let indexed = agree(comm, if comm.is_root() { root_index(cfg).map(Some) } else { Ok(None) })?;
    let mut bytes = indexed.as_ref().map(|(_, g)| GroupSummary::of(g).to_bytes()).unwrap_or_default();
    comm.broadcast_bytes(0, &mut bytes)?;
    let summary = GroupSummary::from_bytes(&bytes)?;
    let plan = shard_plan(cfg, comm, &summary)?;
    let n_events = summary.n_events();
    let (own, data, sizes) = match indexed {
        Some((index, groups)) => locators(&index, &groups, comm.size()),
        None => (None, Vec::new(), Vec::new()),
    };
    let mine = comm.scatter_bytes(0, &data, &sizes);
    drop(data);
    let t1 = std::time::Instant::now();
    // A scatter error (rank 0 only) or a read error on any rank ends every rank.
    let read = mine
        .and_then(|mine| own.map_or_else(|| ShardLocator::from_bytes(&mine), Ok))
        .and_then(|l| l.read(cfg.data.root.as_ref()));
    let local = agree(comm, read)?;
    tracing::info!(
        rank = comm.rank(),
        events = n_events,
        local_events = local.len(),
        index_seconds = format!("{:.2}", (t1 - t0).as_secs_f64()),
        read_seconds = format!("{:.2}", t1.elapsed().as_secs_f64()),
        peak_rss_mib = format!("{:.0}", crate::resources::peak_rss_mib()),
        "input indexed (rank 0) and this rank's shard read"
    );
    Ok((local, plan))
}

/// Rank 0's part of [`load_shard`]: the training index and its label groups.
fn root_index(cfg: &RunConfig) -> Result<(InputIndex, LabelGroups)> {
    let index = training_index(cfg)?;
    let groups = crate::data::group_labels(&index.labels);
    Ok((index, groups))
}

/// Rank 0's own [`ShardLocator`], and every other rank's as bytes, one
/// after the other, with the size of each (rank 0's: none) for
/// [`Communicator::scatter_bytes`].
fn locators(index: &InputIndex, groups: &LabelGroups, world: usize) -> (Option<ShardLocator>, Vec<u8>, Vec<usize>) {
    let own = index.locator(&rank_rows(groups, world, 0));
    let mut data = Vec::new();
    let mut sizes = vec![0];
    for r in 1..world {
        let before = data.len();
        index.locator(&rank_rows(groups, world, r)).write_bytes(&mut data);
        sizes.push(data.len() - before);
    }
    (Some(own), data, sizes)
}

/// The input's index with the held-out labels removed and the weights
/// rescaled for training ([`crate::train::plan::normalized_training_weights`]).
fn training_index(cfg: &RunConfig) -> Result<InputIndex> {
    let d = &cfg.data;
    let index = InputIndex::build(d.root.as_ref(), &d.path, &d.features, &d.labels)?;
    let mut index = match crate::train::plan::holdout_keep(&index.labels, &d.holdout_labels)? {
        Some(keep) => index.select(&keep),
        None => index,
    };
    if let Some(w) = &index.weights {
        index.weights =
            Some(crate::train::plan::normalized_training_weights(cfg, &index.labels, &index.label_names, w)?);
    }
    Ok(index)
}

/// Reads the whole input, then keeps this rank's shard: the loader
/// [`load_shard`] falls back to with `data.weight_smoothing`, and its reference in tests.
pub fn load_shard_full(cfg: &RunConfig, comm: &dyn Communicator) -> Result<(EventSet, ShardPlan)> {
    let events = agree(
        comm,
        read_input(cfg).and_then(|e| drop_holdout(e, &cfg.data.holdout_labels)).and_then(|mut e| {
            // Smoothed and rescaled to mean 1 per label, before sharding.
            e.weights = crate::train::plan::training_weights(cfg, &e)?;
            Ok(e)
        }),
    )?;
    let groups = events.label_groups();
    let summary = GroupSummary::of(&groups);
    // Every rank read the input itself: check they all grouped it alike.
    let digest: Vec<u8> = summary.sizes.iter().flat_map(|s| (*s as u64).to_le_bytes()).collect();
    check_same(comm, "input data (events per label)", &digest)?;
    let plan = shard_plan(cfg, comm, &summary)?;
    let rows = rank_rows(&groups, comm.size(), comm.rank());
    Ok((events.select(&rows), plan))
}

/// The plan of this rank from the input's label groups (every rank holds
/// the same: rank 0's, or every rank's full read of the same configuration).
fn shard_plan(cfg: &RunConfig, comm: &dyn Communicator, groups: &GroupSummary) -> Result<ShardPlan> {
    let n_events = groups.n_events();
    if comm.size() > n_events {
        return Err(Error::Data(format!(
            "{} ranks but only {n_events} events in the input: use at most as many ranks as events",
            comm.size(),
        )));
    }
    let n_labels = groups.labels.first().map_or(0, Vec::len);
    make_plan(cfg, groups, n_labels, comm.size(), comm.rank())
}

/// The input rows of rank `rank`'s shard of `world`, group by group (what
/// [`ShardPlan::local_rows`] names: chunk `rank` of every group).
fn rank_rows(groups: &LabelGroups, world: usize, rank: usize) -> Vec<usize> {
    groups
        .members
        .iter()
        .flat_map(|m| {
            let (lo, hi) = crate::train::shard::chunk(m.len(), world, rank);
            m[lo..hi].iter().copied()
        })
        .collect()
}

/// An identifier of this start of a run, the same on every rank (rank 0's
/// pid and clock): heartbeats of an earlier start are told apart by it.
fn job_id(comm: &dyn Communicator) -> Result<String> {
    let mut id = if comm.is_root() { format!("{}-{}", std::process::id(), unix_ms()).into_bytes() } else { vec![] };
    comm.broadcast_bytes(0, &mut id)?;
    Ok(String::from_utf8_lossy(&id).into_owned())
}

/// Starts this rank's stall watchdog ([`crate::comm::heartbeat`]) where it
/// has work: heartbeats with several ranks (for the control plane's stall
/// report or the step timeout), the report on rank 0 with a control plane.
fn start_watchdog(
    cfg: &RunConfig,
    comm: &dyn Communicator,
    progress: &Arc<Progress>,
    job: String,
    ranks: &[RankInfo],
    server: Option<&ControlServer>,
) -> Result<Option<Watchdog>> {
    let several = comm.size() > 1;
    let step_timeout = (several && cfg.training.step_timeout > 0.0).then_some(cfg.training.step_timeout);
    let write_beats = several && (cfg.control.enabled || step_timeout.is_some());
    let report = server.map(|s| {
        let state = s.state().clone();
        state.set_stall_seconds(cfg.control.stall_seconds);
        Box::new(move |d: &Diagnosis| {
            let ranks: Vec<RankActivity> = d
                .ranks
                .iter()
                .map(|r| RankActivity {
                    rank: r.rank,
                    pid: r.pid,
                    seconds_since_progress: r.seconds_since_progress,
                    activity: r.activity(),
                    holds_up: r.holds_up,
                })
                .collect();
            state.report_progress(&ranks, &d.summary());
        }) as Report
    });
    if !write_beats && report.is_none() {
        return Ok(None);
    }
    let before_abort = server.map(|s| {
        let failure = s.failure();
        Box::new(move |m: &str| failure.fail(m)) as BeforeAbort
    });
    let ckpt_dir = cfg.outputs.run_dir.join("checkpoints");
    let watchdog = WatchdogConfig {
        run_dir: cfg.outputs.run_dir.clone(),
        job,
        rank: comm.rank(),
        size: comm.size(),
        host: crate::control::grpc::host_name(),
        hosts: ranks.iter().map(|r| r.host.clone()).collect(),
        write_beats,
        step_timeout,
        stall_seconds: cfg.control.stall_seconds,
        abort: comm.aborter(),
        abort_hint: format!("the newest complete checkpoint in {} continues the run (--resume)", ckpt_dir.display()),
        report,
        before_abort,
    };
    Watchdog::start(watchdog, progress.clone()).map(Some)
}

/// Runs training as configured; rank 0 writes `model/`, `history.csv` and
/// `config.toml` into the run directory at the end.
pub fn run(cfg: &RunConfig, comm: &dyn Communicator, opts: RunOptions) -> Result<TrainOutcome> {
    // Every collective from here on is counted for the stall watchdog.
    let progress = Progress::new();
    let watched = Watched::new(comm, progress.clone());
    let comm: &dyn Communicator = &watched;
    check_same(comm, "configuration", cfg.to_toml()?.as_bytes())?;
    let run_dir = cfg.outputs.run_dir.clone();
    let prepared = (|| -> Result<_> {
        let per_rank_cores = (crate::device::available_cores() / local_size().max(1)).max(1);
        let threads = crate::device::set_threads(if cfg.training.threads == 0 {
            per_rank_cores.min(crate::device::available_cores())
        } else {
            cfg.training.threads
        });
        let device = crate::device::resolve(crate::device::parse_device(&cfg.training.device)?, local_rank())?;
        Ok((threads, device))
    })();
    let (threads, device) = agree(comm, prepared)?;
    // Read and check the data before anything is written: bad input leaves no run directory.
    let (local, plan) = load_shard(cfg, comm)?;
    let efficiency_ok = match &cfg.data.acceptance_efficiency {
        Some(path) => crate::data::efficiency::EfficiencyTable::read(path, local.n_labels())
            .and_then(|t| t.for_labels(&local.label_groups().labels))
            .map(|_| ()),
        None => Ok(()),
    };
    agree(comm, efficiency_ok)?;
    // Acceptance cuts name features and may be expressions: refuse bad ones before writing anything.
    let acceptance_ok = cfg
        .data
        .acceptance
        .iter()
        .try_for_each(|a| crate::data::transform::Acceptance::parse(a, &local.feature_names).map(|_| ()));
    agree(comm, acceptance_ok)?;
    let made_dir = if comm.is_root() {
        (|| -> Result<()> {
            std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
            let probe = run_dir.join(".write-test");
            std::fs::write(&probe, b"").map_err(|e| Error::io(&run_dir, e))?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        })()
    } else {
        Ok(())
    };
    agree(comm, made_dir)?;
    let ranks = if cfg.control.enabled { rank_infos(comm, device, threads)? } else { vec![] };
    let job = job_id(comm)?;
    let server = if cfg.control.enabled && comm.is_root() {
        let run_id = format!(
            "{}-{}",
            run_dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()),
            crate::control::unix_now() as u64
        );
        let state =
            ControlState::new(run_id, cfg.training.epochs, comm.size(), cfg.training.batch_size, opts.controls.clone());
        state.set_ranks(ranks.clone());
        let tls = (!cfg.control.tls_cert.as_os_str().is_empty()).then(|| crate::control::grpc::Tls {
            cert: cfg.control.tls_cert.clone(),
            key: cfg.control.tls_key.clone(),
            ca: if cfg.control.tls_ca.as_os_str().is_empty() {
                cfg.control.tls_cert.clone()
            } else {
                cfg.control.tls_ca.clone()
            },
        });
        Some(
            crate::control::grpc::bind(&cfg.control.listen).and_then(|l| ControlServer::start(l, &run_dir, state, tls)),
        )
    } else {
        None
    };
    let server = agree(comm, server.transpose())?;
    let watchdog = agree(comm, start_watchdog(cfg, comm, &progress, job, &ranks, server.as_ref()))?;
    let control = server.as_ref().map(|s| s.state().clone());
    let result = run_with(cfg, comm, opts, device, (local, plan), control, &progress);
    if let Some(w) = watchdog {
        w.finish();
    }
    if let Some(s) = server {
        match &result {
            Ok(o) => s.finish(true, Some(format!("{:?}", o.finish))),
            Err(e) => s.finish(false, Some(e.to_string())),
        }
    }
    result
}

fn run_with(
    cfg: &RunConfig,
    comm: &dyn Communicator,
    opts: RunOptions,
    device: tch::Device,
    (local, plan): (EventSet, ShardPlan),
    control: Option<Arc<ControlState>>,
    progress: &Arc<Progress>,
) -> Result<TrainOutcome> {
    let run_dir = cfg.outputs.run_dir.clone();
    let ckpt_dir = run_dir.join("checkpoints");
    tracing::info!(
        rank = comm.rank(),
        world = comm.size(),
        ?device,
        threads = tch::get_num_threads(),
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
    let mut observers: Vec<Arc<dyn Observer>> = opts.observer.into_iter().collect();
    observers.push(Arc::new(ProgressObserver(progress.clone())));
    if let Some(state) = control {
        observers.push(Arc::new(ControlObserver(state)));
    }
    let observer: Option<Arc<dyn Observer>> = match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(Fanout(observers))),
    };
    let hooks = Hooks {
        checkpoint_dir: Some(ckpt_dir),
        controls: opts.controls,
        observer,
        resume: loaded,
        gather_rank_facts: cfg.control.enabled,
    };
    // The step timeout applies while training: reading input and writing the
    // model may keep ranks apart for longer.
    progress.set_activity(Activity::Training);
    progress.arm(true);
    let trained = train(cfg, local, &plan, comm, device, hooks);
    progress.arm(false);
    progress.set_activity(Activity::Finishing);
    let outcome = agree(comm, trained)?;
    if comm.is_root() {
        let cfg_path = run_dir.join("config.toml");
        std::fs::write(&cfg_path, cfg.to_toml()?).map_err(|e| Error::io(&cfg_path, e))?;
        write_history(&run_dir.join("history.csv"), &outcome.history)?;
        if outcome.finish.is_final() {
            outcome.model.save(&run_dir.join("model"))?;
        }
    }
    Ok(outcome)
}

/// The end-of-run summary printed on rank 0 (`None` on the other ranks): every
/// rank's peak resident memory and step time per local event (a slow rank or
/// node stands out), how training ended and its last losses. A collective:
/// every rank calls it.
pub fn summary(comm: &dyn Communicator, cfg: &RunConfig, out: &TrainOutcome) -> Result<Option<String>> {
    let mut rss = vec![0.0; comm.size()];
    rss[comm.rank()] = crate::resources::peak_rss_mib();
    comm.allreduce_sum_f64(&mut rss)?;
    let mut busy = vec![0.0; comm.size()];
    busy[comm.rank()] = 1e6 * out.busy.0 / (out.busy.1.max(1) as f64);
    comm.allreduce_sum_f64(&mut busy)?;
    if !comm.is_root() {
        return Ok(None);
    }
    let rss: Vec<String> = rss.iter().map(|m| format!("{m:.0}")).collect();
    let busy: Vec<String> = busy.iter().map(|u| format!("{u:.2}")).collect();
    let last = out.history.last();
    Ok(Some(format!(
        "peak resident memory per rank (MiB): {}\n\
         step time per local event per rank (us, before the all-reduce): {}\n\
         {:?} after {} epochs: train NLL {:.4}, validation NLL {:.4}; run directory {}",
        rss.join(" "),
        busy.join(" "),
        out.finish,
        out.history.len(),
        last.map_or(f64::NAN, |r| r.train_nll),
        last.map_or(f64::NAN, |r| r.val_nll),
        cfg.outputs.run_dir.display()
    )))
}

/// Installs SIGTERM/SIGUSR1/SIGINT handlers (Slurm's warning before a time
/// limit or preemption, Ctrl-C) that ask the trainer to stop at the next step
/// boundary; a second SIGINT exits at once.
pub fn stop_on_signals(controls: Arc<Controls>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGUSR1, SIGINT])
        .map_err(|e| Error::Train(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("fedhex-signals".into())
        .spawn(move || {
            let mut interrupts = 0;
            for sig in signals.forever() {
                if sig == SIGINT {
                    interrupts += 1;
                    if interrupts > 1 {
                        // A second Ctrl-C: the user does not want to wait for the checkpoint.
                        eprintln!("second interrupt: exiting now, without a checkpoint");
                        std::process::exit(130);
                    }
                }
                tracing::warn!(
                    signal = sig,
                    "stop requested: saving a resumable checkpoint at the next step (Ctrl-C again exits at once)"
                );
                controls.stop_now.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .map_err(|e| Error::Train(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}
