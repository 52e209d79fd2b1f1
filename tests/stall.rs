//! A rank that stalls (SIGSTOP, not death) under a real `mpirun -n 2`: the
//! control plane names it (`fedhex-ctl status`, `watch`), `fedhex-ctl` names
//! a stopped rank 0 from the heartbeat files, `training.step_timeout` aborts
//! the job naming the rank and its host with the last checkpoint complete
//! and resumable to the weights of an undisturbed run, and with the defaults
//! a short stop changes nothing.

mod common;
use common::tmpdir;
use fedhex::control::grpc::{host_name, ControlFile};
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::flow::model::read_named_tensors;
use fedhex::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");
const CTL: &str = env!("CARGO_BIN_EXE_fedhex-ctl");

/// One MPI job at a time: Open MPI ranks busy-poll, and these tests time things.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seconds without progress after which the tests' runs report a rank stalled.
const STALL_SECONDS: f64 = 5.0;
/// The tests' step timeout.
const STEP_TIMEOUT: f64 = 6.0;

/// A 3 x 3 grid of 300 events per label (2430 training events: 38 steps of 64 per epoch).
fn data(d: &Path) {
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Diagonal { sigma: 0.1 },
        n_per_label: 300,
        seed: 2,
    };
    let ev = spec.generate().unwrap();
    fedhex::data::npy::write_npz(&d.join("grid.npz"), &ev.samples, &ev.labels).unwrap();
}

/// A small 2-rank configuration with the control plane on; `extra` lines go
/// to the end of `[training]`.
fn config(d: &Path, run: &str, epochs: usize, every: usize, training_extra: &str, control_extra: &str) -> PathBuf {
    let p = d.join(format!("{run}.toml"));
    std::fs::write(
        &p,
        format!(
            "[data]\npath = \"grid.npz\"\n[network]\nn_blocks = 2\nhidden = [16]\ntransform = \"affine\"\n\
             permutation = \"reverse\"\n[training]\nepochs = {epochs}\nbatch_size = 64\ndevice = \"cpu\"\nthreads = 1\n\
             seed = 5\nema_decay = 0.9\n{training_extra}\n[outputs]\nrun_dir = \"{run}\"\ncheckpoint_every = {every}\n\
             keep_checkpoints = 100\nprogress = false\n[control]\n{control_extra}\n"
        ),
    )
    .unwrap();
    p
}

/// `mpirun -n 2` of the worker with `args` after the configuration and the
/// environment variables `env` passed to both ranks.
fn mpirun(d: &Path, cfg: &Path, args: &[&str], env: &[String]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", "2"]);
    for e in env {
        c.args(["-x", e]);
    }
    c.arg(WORKER)
        .args(["train", "--config"])
        .arg(cfg)
        .args(args)
        .current_dir(d)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("LD_LIBRARY_PATH");
    c
}

fn spawn(d: &Path, cfg: &Path) -> Child {
    mpirun(d, cfg, &[], &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Starts the job with `FEDHEX_FAULT=sigstop:RANK:STEP`: rank `rank` stops
/// itself before global step `step`, however fast the machine runs.
fn spawn_stopping(d: &Path, cfg: &Path, rank: usize, step: u64) -> Child {
    let fault = format!("FEDHEX_FAULT=sigstop:{rank}:{step}");
    mpirun(d, cfg, &[], &[fault]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

/// Waits until rank `rank` of the run has stopped itself; returns its pid.
fn wait_stopped(run: &Path, rank: usize) -> i32 {
    let pid = pid_of(&wait_training(run, 0), rank);
    let t0 = Instant::now();
    while !is_stopped(pid) {
        assert!(t0.elapsed() < Duration::from_secs(60), "rank {rank} (pid {pid}) never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

fn ok(o: &Output) {
    assert!(o.status.success(), "mpirun failed ({:?}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

fn ctl(run: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--run")
        .arg(run)
        .args(args)
        .env_remove("FEDHEX_TOKEN")
        .env_remove("FEDHEX_ENDPOINT")
        .output()
        .unwrap()
}

fn status_json(run: &Path) -> serde_json::Value {
    let o = ctl(run, &["status", "--json"]);
    if !o.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Waits until the job's control plane reports `global_step >= step`; returns the status.
fn wait_training(run: &Path, step: u64) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "the run never reached global step {step}");
        if std::fs::read_to_string(run.join("control.json"))
            .is_ok_and(|f| serde_json::from_str::<ControlFile>(&f).is_ok())
        {
            let st = status_json(run);
            if st["global_step"].as_u64().unwrap_or(0) >= step {
                return st;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_of(st: &serde_json::Value, rank: usize) -> i32 {
    let pid = st["ranks"][rank]["pid"].as_u64().unwrap_or(0) as i32;
    assert!(pid > 0, "no pid for rank {rank} in the status: {st}");
    pid
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill() only sends a signal to the worker process of this test.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Weights of a model directory as bit patterns, sorted by name.
fn weight_bits(model_dir: &Path) -> Vec<(String, Vec<u32>)> {
    let bytes = std::fs::read(model_dir.join("model.safetensors")).unwrap();
    let mut v: Vec<(String, Vec<u32>)> = read_named_tensors(&bytes)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap().iter().map(|x| x.to_bits()).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The epochs of the runs compared with an undisturbed one.
const EPOCHS: usize = 20;
/// Steps per epoch of [`data`] with batch 64.
const STEPS_PER_EPOCH: u64 = 38;

/// The weights of an undisturbed run of `config(.., "reference", EPOCHS, 2, "", "")`.
fn reference(d: &Path) -> Vec<(String, Vec<u32>)> {
    let cfg = config(d, "reference", EPOCHS, 2, "", "");
    ok(&mpirun(d, &cfg, &[], &[]).output().unwrap());
    weight_bits(&d.join("reference/model"))
}

#[test]
fn a_stopped_rank_is_reported_stalled_by_status_and_watch_and_cleared_when_it_moves() {
    let _s = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d);
    let cfg = config(d, "run", 4000, 0, "", &format!("stall_seconds = {STALL_SECONDS}"));
    let job = spawn(d, &cfg);
    let run = d.join("run");
    let st = wait_training(&run, 20);
    assert_eq!(st["stall_seconds"], STALL_SECONDS);
    assert_eq!(st["stall"], "");
    assert!(st["ranks"].as_array().unwrap().iter().all(|r| r["stalled"] == false), "{st}");
    let watcher = Command::new(CTL).arg("--run").arg(&run).args(["watch", "--json"]).stdout(Stdio::piped()).spawn();
    let watcher = watcher.unwrap();
    let pid = pid_of(&st, 1);
    let host = host_name();

    signal(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    let stalled = loop {
        let st = status_json(&run);
        if st["ranks"][1]["stalled"] == true {
            break st;
        }
        assert!(t0.elapsed().as_secs_f64() < STALL_SECONDS + 8.0, "rank 1 not reported stalled in time: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let after = t0.elapsed().as_secs_f64();
    eprintln!("reported stalled {after:.1} s after SIGSTOP (stall_seconds = {STALL_SECONDS})");
    let r1 = &stalled["ranks"][1];
    assert!(r1["seconds_since_progress"].as_f64().unwrap() >= STALL_SECONDS, "{r1}");
    assert!(r1["activity"].as_str().unwrap().starts_with("not responding"), "{r1}");
    assert_eq!(stalled["ranks"][0]["stalled"], false, "rank 0 only waits: {stalled}");
    assert_eq!(stalled["ranks"][0]["activity"], "waiting in a collective");
    let stall = stalled["stall"].as_str().unwrap();
    assert!(stall.contains(&format!("rank 1 (host {host}, pid {pid})")) && stall.contains("no progress"), "{stall}");
    let human = ctl(&run, &["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("stall       rank 1 (host") && text.contains("STALLED: not responding"), "{text}");

    signal(pid, libc::SIGCONT);
    let t1 = Instant::now();
    while status_json(&run)["ranks"][1]["stalled"] != false {
        assert!(t1.elapsed() < Duration::from_secs(10), "rank 1 still stalled after SIGCONT");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status_json(&run)["stall"], "");
    assert!(ctl(&run, &["stop", "--now"]).status.success());
    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stalled: rank 1 (host") && err.contains("rank 1 moves again"), "rank 0's log: {err}");

    let w = watcher.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&w.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stalls: Vec<&serde_json::Value> = events.iter().filter_map(|e| e["kind"].get("stall")).collect();
    assert_eq!(stalls.len(), 2, "one stall and one all-clear: {stalls:?}");
    assert_eq!((stalls[0]["rank"].as_u64(), stalls[0]["cleared"].as_bool()), (Some(1), Some(false)));
    assert_eq!(stalls[0]["host"], host.as_str());
    assert_eq!((stalls[1]["rank"].as_u64(), stalls[1]["cleared"].as_bool()), (Some(1), Some(true)));
}

#[test]
fn fedhex_ctl_names_a_stopped_rank_0_from_the_heartbeats() {
    let _s = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d);
    let cfg = config(d, "run", 4000, 0, "", &format!("stall_seconds = {STALL_SECONDS}"));
    let job = spawn(d, &cfg);
    let run = d.join("run");
    let st = wait_training(&run, 20);
    let pid = pid_of(&st, 0);
    signal(pid, libc::SIGSTOP);
    // Rank 1's heartbeats start once it has waited a second; rank 0 is silent.
    std::thread::sleep(Duration::from_secs(5));
    let t0 = Instant::now();
    let o = ctl(&run, &["status"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("fedhex-ctl status took {:.1} s:\n{err}", t0.elapsed().as_secs_f64());
    signal(pid, libc::SIGCONT);
    assert_eq!(o.status.code(), Some(3), "a stopped server is unreachable: {o:?}");
    assert!(err.contains("no answer"), "{err}");
    let named = format!("rank 0 (host {}, pid {pid}) has made no progress", host_name());
    assert!(err.contains(&named) && !err.contains("after global step 0:"), "{err}");
    assert!(err.contains("its process has not responded") && err.contains("rank 1 waits for it"), "{err}");
    assert!(ctl(&run, &["stop", "--now"]).status.success());
    ok(&job.wait_with_output().unwrap());
}

#[test]
fn the_step_timeout_aborts_naming_the_stopped_rank_and_the_last_checkpoint_resumes_exactly() {
    let _s = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d);
    let expected = reference(d);
    let cfg = config(d, "stalled", EPOCHS, 2, &format!("step_timeout = {STEP_TIMEOUT}"), "");
    // Rank 1 stops a few steps after the epoch-2 checkpoint.
    let job = spawn_stopping(d, &cfg, 1, 2 * STEPS_PER_EPOCH + 5);
    let run = d.join("stalled");
    let ckpts = run.join("checkpoints");
    let pid = wait_stopped(&run, 1);
    let stopped = Instant::now();
    let out = job.wait_with_output().unwrap();
    let took = stopped.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("aborted {took:.1} s after SIGSTOP (step_timeout = {STEP_TIMEOUT}), {:?}", out.status);
    assert_eq!(out.status.code(), Some(fedhex::comm::heartbeat::STALL_EXIT_CODE), "a stalled job fails:\n{err}");
    assert_eq!(err.matches("step timeout:").count(), 1, "one rank reports, once:\n{err}");
    assert!(took < STEP_TIMEOUT + 10.0, "the abort took {took:.1} s:\n{err}");
    let host = host_name();
    assert!(err.contains("step timeout: rank 0 has waited"), "{err}");
    assert!(err.contains(&format!("rank 1 (host {host}, pid {pid}) has made no progress")), "{err}");
    assert!(err.contains("--resume"), "{err}");
    // The control plane recorded why the run ended.
    let o = ctl(&run, &["status"]);
    assert_eq!(o.status.code(), Some(5), "the run has ended: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed"), "{o:?}");
    // Every checkpoint under a final name is complete; the run was cut short.
    for e in std::fs::read_dir(&ckpts).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("epoch-") {
            checkpoint::load(&p, tch::Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    let (last, _) = checkpoint::list(&ckpts).pop().unwrap();
    // The epoch-2 checkpoint, or the stop-now checkpoint after the step the
    // rank stopped in: MPI_Abort continues stopped ranks (SIGCONT) and asks
    // every rank to end (SIGTERM) before it kills them, and a rank that gets
    // through that step in the grace time saves it as `fedhex-ctl stop --now` does.
    let at = (last.epoch, last.step_in_epoch);
    assert!(at == (2, 0) || at == (2, 6), "the last checkpoint before the stop: {at:?}");
    assert!(!run.join("model").exists(), "no final model from an aborted run");
    ok(&mpirun(d, &cfg, &["--resume"], &[]).output().unwrap());
    assert_eq!(weight_bits(&run.join("model")), expected, "resumed after the abort differs from an undisturbed run");
}

#[test]
fn with_the_defaults_a_short_stop_leaves_training_unaffected() {
    let _s = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d);
    let expected = reference(d);
    let cfg = config(d, "paused", EPOCHS, 2, "", "");
    let at = 7 * STEPS_PER_EPOCH + 11;
    let job = spawn_stopping(d, &cfg, 1, at);
    let run = d.join("paused");
    let pid = wait_stopped(&run, 1);
    std::thread::sleep(Duration::from_secs(3));
    let during = status_json(&run);
    signal(pid, libc::SIGCONT);
    assert_eq!(during["state"], "training");
    assert_eq!(during["global_step"].as_u64(), Some(at), "rank 0 waits at the step rank 1 stopped before");
    assert_eq!(during["stall"], "", "below stall_seconds nothing is stalled: {during}");
    assert_eq!(during["ranks"][1]["stalled"], false);
    let out = job.wait_with_output().unwrap();
    ok(&out);
    assert_eq!(weight_bits(&run.join("model")), expected, "a paused rank changed the weights");
}
