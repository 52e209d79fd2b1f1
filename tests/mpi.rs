//! Distributed training with a real `mpirun` and several ranks on this
//! machine: equivalence of world sizes, epoch-exact checkpoints, failure and
//! exact resume (kill -9, kill while checkpointing, SIGTERM), bad set-ups.
//! The configuration keeps a weight average (`training.ema_decay`), so exact resume covers it too.

mod common;
use common::tmpdir;
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::flow::model::read_named_tensors;
use fedhex::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");

/// One MPI job at a time: Open MPI ranks busy-poll, so concurrent jobs on a
/// 2-core machine would starve each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn mpirun_cmd(n: usize, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "180", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.args(["-n", &n.to_string(), WORKER]).args(args).current_dir(dir);
    c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none").env_remove("LD_LIBRARY_PATH");
    c
}

fn mpirun(n: usize, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    mpirun_cmd(n, dir, args, env).output().expect("mpirun")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "mpirun failed ({:?}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

fn data(dir: &Path, points: usize, n: usize) {
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: points, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Full { sigma: 0.1, rho: 0.5 },
        n_per_label: n,
        seed: 4,
    };
    let ev = spec.generate().unwrap();
    fedhex::data::npy::write_npz(&dir.join("grid.npz"), &ev.samples, &ev.labels).unwrap();
}

fn config(dir: &Path, run: &str, epochs: usize, batch: usize, every: usize) -> PathBuf {
    let p = dir.join(format!("{run}.toml"));
    std::fs::write(
        &p,
        format!(
            "[data]\npath = \"grid.npz\"\nvalidation_fraction = 0.1\n[network]\nn_blocks = 3\nhidden = [16, 16]\n\
             [training]\nepochs = {epochs}\nbatch_size = {batch}\ndevice = \"cpu\"\nthreads = 1\nseed = 3\nema_decay = 0.9\n\
             clip_grad_relative = 1.5\n\
             [outputs]\nrun_dir = \"{run}\"\ncheckpoint_every = {every}\nkeep_checkpoints = 100\nprogress = false\n"
        ),
    )
    .unwrap();
    p
}

/// Weights of a model directory as bit patterns, sorted by name.
fn weights(model_dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(model_dir.join("model.safetensors")).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = read_named_tensors(&bytes)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

fn bits(w: &[(String, Vec<f32>)]) -> Vec<(String, Vec<u32>)> {
    w.iter().map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect())).collect()
}

fn train_args(cfg: &Path) -> Vec<String> {
    vec!["train".into(), "--config".into(), cfg.display().to_string()]
}

#[test]
fn two_ranks_give_the_weights_of_one_rank() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 3, 400);
    // The plain shuffle (the default), and batches with an even share of each rank's
    // shard: two ranks with `batch_strata = 0` (the world size) draw them, and one rank
    // told to use two strata draws the same ones.
    let runs = [
        (1, "one", None),
        (2, "two", None),
        (1, "one_even", Some("training.batch_strata=2")),
        (2, "two_even", Some("training.batch_strata=0")),
    ];
    for (n, run, extra) in runs {
        let cfg = config(d, run, 3, 256, 0);
        // --resume with no checkpoint yet starts from scratch (the Slurm scripts always pass it).
        let mut args = train_args(&cfg);
        args.push("--resume".into());
        if let Some(set) = extra {
            args.extend(["--set".into(), set.into()]);
        }
        ok(&mpirun(n, d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    }
    let w = |run: &str| weights(&d.join(run).join("model"));
    // Stated tolerance: same global batches, only the order of float summation differs.
    for (a, b) in [("one", "two"), ("one_even", "two_even")] {
        let diff = max_diff(&w(a), &w(b));
        assert!(diff < 5e-4, "{a} vs {b}: weights differ by {diff}");
    }
    let other = max_diff(&w("one"), &w("two_even"));
    assert!(other > 1e-3, "other batches should give other weights: {other}");
    for run in ["one", "two"] {
        let h = std::fs::read_to_string(d.join(run).join("history.csv")).unwrap();
        assert_eq!(h.lines().count(), 4);
    }
}

#[test]
fn checkpoints_land_on_exact_epochs_for_awkward_sizes() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 2, 250); // 1000 events: 900 for training, batch 300 -> 3 steps per epoch
    let cfg = config(d, "run", 7, 300, 2);
    let args = train_args(&cfg);
    ok(&mpirun(2, d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    let list = checkpoint::list(&d.join("run/checkpoints"));
    let epochs: Vec<usize> = list.iter().map(|(s, _)| s.epoch).collect();
    assert_eq!(epochs, vec![2, 4, 6, 7], "every 2 epochs plus the end");
    for (s, p) in &list {
        assert_eq!(s.step_in_epoch, 0);
        assert_eq!(s.global_step, 3 * s.epoch as u64, "{}: steps are not whole epochs", p.display());
        assert_eq!(p.file_name().unwrap().to_string_lossy(), format!("epoch-{:06}", s.epoch));
        assert_eq!(s.history.len(), s.epoch);
    }
}

/// An uninterrupted 2-rank reference run.
fn reference(d: &Path, epochs: usize, batch: usize) -> Vec<(String, Vec<u32>)> {
    let cfg = config(d, "reference", epochs, batch, 2);
    let args = train_args(&cfg);
    ok(&mpirun(2, d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    bits(&weights(&d.join("reference/model")))
}

fn no_incomplete_checkpoint_visible(ckpts: &Path) {
    for e in std::fs::read_dir(ckpts).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("epoch-") {
            for f in ["model.json", "model.safetensors", "optimizer.safetensors", "state.json"] {
                assert!(p.join(f).exists(), "{name} lacks {f}: a half-written checkpoint is visible");
            }
            fedhex::flow::Model::load(&p, tch::Device::Cpu).expect("a visible checkpoint loads");
        }
    }
}

#[test]
fn kill_9_of_one_rank_fails_cleanly_and_resume_is_bit_identical() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 3, 300);
    let expected = reference(d, 6, 200);
    let cfg = config(d, "killed", 6, 200, 2);
    let args = train_args(&cfg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // 2430 training events, batch 200 -> 13 steps per epoch; die in epoch 4.
    let o = mpirun(2, d, &args, &[("FEDHEX_FAULT", "kill:1:45")]);
    assert!(!o.status.success(), "the job must fail when a rank is killed");
    let ckpts = d.join("killed/checkpoints");
    no_incomplete_checkpoint_visible(&ckpts);
    let latest = checkpoint::latest(&ckpts).unwrap();
    assert!(latest.ends_with("epoch-000002"), "{}", latest.display());
    assert!(!d.join("killed/model").exists(), "no final model from a failed run");
    let mut resume = args.clone();
    resume.push("--resume");
    ok(&mpirun(2, d, &resume, &[]));
    assert_eq!(bits(&weights(&d.join("killed/model"))), expected, "resumed run differs from an uninterrupted one");
}

#[test]
fn kill_while_writing_a_checkpoint_leaves_no_corrupt_checkpoint() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 3, 300);
    let expected = reference(d, 6, 200);
    let cfg = config(d, "killed", 6, 200, 2);
    let args = train_args(&cfg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = mpirun(2, d, &args, &[("FEDHEX_FAULT", "kill-in-checkpoint:4")]);
    assert!(!o.status.success());
    let ckpts = d.join("killed/checkpoints");
    no_incomplete_checkpoint_visible(&ckpts);
    let names: Vec<String> =
        checkpoint::list(&ckpts).iter().map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["epoch-000002"], "the interrupted epoch-4 checkpoint must not be visible");
    let mut resume = args.clone();
    resume.push("--resume");
    ok(&mpirun(2, d, &resume, &[]));
    assert_eq!(bits(&weights(&d.join("killed/model"))), expected);
}

#[test]
fn sigterm_saves_a_resumable_state_and_resume_is_bit_identical() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 4, 300);
    let expected = reference(d, 14, 64);
    let cfg = config(d, "stopped", 14, 64, 2);
    let args = train_args(&cfg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = mpirun_cmd(2, d, &args, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let ckpts = d.join("stopped/checkpoints");
    let t0 = Instant::now();
    while checkpoint::latest(&ckpts).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Slurm's way: SIGTERM to every task of the job.
    let pids = Command::new("pgrep").args(["-x", "fedhex-worker"]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .map(|p| p.trim().to_string())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&cfg.display().to_string()))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(pids.len(), 2, "worker processes not found: {pids:?}");
    for pid in &pids {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a stop on SIGTERM exits 0:\n{}", String::from_utf8_lossy(&out.stderr));
    let (state, path) = checkpoint::list(&ckpts).pop().unwrap();
    assert!(state.epoch < 14, "the run finished before the signal arrived; the test proves nothing");
    assert!(state.mid_epoch(), "expected a mid-epoch checkpoint, got {}", path.display());
    assert!(!d.join("stopped/model").exists(), "a stopped run writes no final model");
    let mut resume = args.clone();
    resume.push("--resume");
    ok(&mpirun(2, d, &resume, &[]));
    assert_eq!(bits(&weights(&d.join("stopped/model"))), expected, "resumed after SIGTERM differs");
}

fn fails_everywhere(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure:\n{err}");
    assert!(err.contains(needle), "stderr lacks '{needle}':\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_setups_end_every_rank_with_one_clear_error() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    let cfg = config(d, "bad", 2, 64, 0);
    let c = cfg.display().to_string();
    // Missing input: rank 0 alone indexes it, and its error ends every rank; no run directory.
    let o = mpirun(2, d, &["train", "--config", &c], &[]);
    fails_everywhere(&o, "grid.npz");
    assert!(!d.join("bad").exists(), "a refused run leaves no directory");
    // Ranks disagree on the configuration (MPMD launch with different seeds).
    data(d, 2, 50);
    let o = Command::new("timeout")
        .args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-n", "1", WORKER, "train", "--config", &c, "--set", "training.seed=1", ":"])
        .args(["-n", "1", WORKER, "train", "--config", &c, "--set", "training.seed=2"])
        .current_dir(d)
        .output()
        .unwrap();
    fails_everywhere(&o, "ranks disagree on the configuration");
    // An unreadable shard on one rank only (node-local storage): MPMD launch with
    // a different working directory per rank; rank 1 finds a corrupt file.
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&cfg, other.join("bad.toml")).unwrap();
    std::fs::write(other.join("grid.npz"), b"PK\x03\x04 truncated").unwrap();
    let o = Command::new("timeout")
        .args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-n", "1", "-wdir", d.to_str().unwrap(), WORKER, "train", "--config", "bad.toml", ":"])
        .args(["-n", "1", "-wdir", other.to_str().unwrap(), WORKER, "train", "--config", "bad.toml"])
        .output()
        .unwrap();
    fails_everywhere(&o, "rank 1: data: grid.npz: not a readable .npz archive");
    // More ranks than events.
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 1, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Diagonal { sigma: 0.1 },
        n_per_label: 3,
        seed: 1,
    };
    let ev = spec.generate().unwrap();
    fedhex::data::npy::write_npz(&d.join("grid.npz"), &ev.samples, &ev.labels).unwrap();
    fails_everywhere(&mpirun(4, d, &["train", "--config", &c], &[]), "4 ranks but only 3 events");
    // Unwritable run directory.
    std::fs::write(d.join("blocker"), b"").unwrap();
    fails_everywhere(
        &mpirun(2, d, &["train", "--config", &c, "--set", "outputs.run_dir=\"blocker/run\""], &[]),
        "blocker",
    );
}

/// Validation on the unseen centre label of a 3 x 3 grid with early stopping,
/// on 2 ranks: the stop comes `patience` epochs after the best epoch, and a
/// rank killed after the best epoch resumes to the same stop and bit-identical
/// weights (the best weights and the early-stopping state are checkpointed).
#[test]
fn early_stopping_on_a_validation_label_resumes_bit_identically_on_two_ranks() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    data(d, 3, 30); // 270 events, 30 at the centre label
    let (epochs, patience) = (60, 3);
    let cfg = |run: &str| {
        let p = d.join(format!("{run}.toml"));
        std::fs::write(
            &p,
            format!(
                "[data]\npath = \"grid.npz\"\nvalidation_fraction = 0.0\nvalidation_labels = [[0.5, 0.5]]\n\
                 [network]\nn_blocks = 3\nhidden = [16, 16]\n[training]\nepochs = {epochs}\nbatch_size = 32\n\
                 lr_initial = 1e-2\nschedule = \"constant\"\ndevice = \"cpu\"\nthreads = 1\nseed = 3\nema_decay = 0.9\n\
                 early_stopping_patience = {patience}\n\
                 [outputs]\nrun_dir = \"{run}\"\ncheckpoint_every = 1\nkeep_checkpoints = 2\nprogress = false\n\
                 [control]\nenabled = false\n"
            ),
        )
        .unwrap();
        train_args(&p)
    };
    let args = cfg("reference");
    ok(&mpirun(2, d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    let vals: Vec<f64> = std::fs::read_to_string(d.join("reference/history.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    eprintln!("validation NLL per epoch: {vals:.4?}");
    assert!(vals.len() < epochs, "no early stop in {epochs} epochs");
    let best = (0..vals.len()).fold(0, |b, i| if vals[i] < vals[b] { i } else { b });
    assert_eq!(vals.len(), best + 1 + patience);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("reference/model/model.json")).unwrap()).unwrap();
    let t = &m["training"];
    assert_eq!((t["stopped_early"].as_bool(), t["best_epoch"].as_u64()), (Some(true), Some(best as u64 + 1)));
    assert_eq!((t["validation_events"].as_u64(), t["train_events"].as_u64()), (Some(30), Some(240)));
    let expected = bits(&weights(&d.join("reference/model")));

    // 240 training events, batch 32 -> 8 steps per epoch; die one step into epoch best + 2.
    let args = cfg("killed");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let step = format!("kill:1:{}", 8 * (best + 1) + 1);
    let o = mpirun(2, d, &args, &[("FEDHEX_FAULT", &step)]);
    assert!(!o.status.success(), "the job must fail when a rank is killed");
    let latest = checkpoint::latest(&d.join("killed/checkpoints")).unwrap();
    assert!(latest.ends_with(format!("epoch-{:06}", best + 1)), "{}", latest.display());
    let mut resume = args.clone();
    resume.push("--resume");
    ok(&mpirun(2, d, &resume, &[]));
    let h = std::fs::read_to_string(d.join("killed/history.csv")).unwrap();
    assert_eq!(h.lines().count(), 1 + vals.len(), "the resumed run stopped at another epoch");
    assert_eq!(bits(&weights(&d.join("killed/model"))), expected, "resumed run differs from an uninterrupted one");
}

/// One rank of `scatter_in_rounds_gives_each_rank_its_part` (run by it
/// under `mpirun`; does nothing when run alone).
#[test]
#[ignore]
fn scatter_rank() {
    use fedhex::comm::mpi::MpiComm;
    use fedhex::comm::Communicator;
    let Ok(done) = std::env::var("FEDHEX_SCATTER_TEST") else { return };
    let comm = MpiComm::init().unwrap();
    let (rank, size) = (comm.rank(), comm.size());
    // Parts of different lengths, rank 1's empty; each byte tells its rank and position.
    let sizes: Vec<usize> = (0..size).map(|r| if r == 1 { 0 } else { 5 + 13 * r }).collect();
    let byte = |r: usize, i: usize| (i * 31 + r * 7) as u8;
    let data: Vec<u8> = (0..size).flat_map(|r| (0..sizes[r]).map(move |i| byte(r, i))).collect();
    let want: Vec<u8> = (0..sizes[rank]).map(|i| byte(rank, i)).collect();
    // Rounds of 1 byte per rank, rounds that copy, one round straight from the data.
    for round in [1, 6, 17, 10_000] {
        let (d, s) = if rank == 0 { (&data[..], &sizes[..]) } else { (&[][..], &[][..]) };
        assert_eq!(comm.scatter_bytes_in_rounds(0, d, s, round).unwrap(), want, "rank {rank}, rounds of {round}");
    }
    // The trait's scatter from another root, and a root's bad sizes: an error there, empty parts elsewhere.
    let root = size - 1;
    let (d, s) = if rank == root { (&data[..], &sizes[..]) } else { (&[][..], &[][..]) };
    assert_eq!(comm.scatter_bytes(root, d, s).unwrap(), want);
    let bad = comm.scatter_bytes(0, &data, &sizes[1..]);
    assert_eq!(bad.is_err(), rank == 0);
    assert!(bad.map_or(true, |b| b.is_empty()));
    comm.barrier().unwrap();
    std::fs::write(Path::new(&done).join(format!("rank-{rank}")), b"ok").unwrap();
}

/// `MpiComm`'s scatter (a scatterv, in rounds below MPI's int limit) gives
/// every rank exactly its part on 3 ranks, for any round size.
#[test]
fn scatter_in_rounds_gives_each_rank_its_part() {
    let _serial = serial();
    let dir = tmpdir();
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("timeout")
        .args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-x", &format!("FEDHEX_SCATTER_TEST={}", dir.path().display()), "-n", "3"])
        .arg(&exe)
        .args(["--ignored", "--exact", "scatter_rank", "--test-threads", "1", "--color", "never"])
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for r in 0..3 {
        assert!(dir.path().join(format!("rank-{r}")).exists(), "rank {r} did not finish:\n{out}");
    }
}
