//! The control plane with a real job under `mpirun -n 2`, the real
//! `fedhex-ctl`, and an independent Python client generated from the proto.

mod common;
use common::tmpdir;
use fedhex::control::grpc::ControlFile;
use fedhex::data::gaussian::{Covariance, GaussianSpec, Layout};
use fedhex::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");
const CTL: &str = env!("CARGO_BIN_EXE_fedhex-ctl");

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn python() -> String {
    std::env::var("FEDHEX_PYTHON").expect("set FEDHEX_PYTHON to a Python with grpcio-tools (make test does)")
}

/// A long 2-rank job (many epochs) with the control plane on.
fn start_job(d: &Path, epochs: usize, extra: &[&str]) -> (Child, PathBuf) {
    let spec = GaussianSpec {
        layout: Layout::Grid2d { n: 3, lo: 0.0, hi: 1.0 },
        covariance: Covariance::Diagonal { sigma: 0.1 },
        n_per_label: 300,
        seed: 2,
    };
    let ev = spec.generate().unwrap();
    fedhex::data::npy::write_npz(&d.join("grid.npz"), &ev.samples, &ev.labels).unwrap();
    std::fs::write(
        d.join("run.toml"),
        format!(
            "[data]\npath = \"grid.npz\"\n[network]\nn_blocks = 2\nhidden = [16]\ntransform = \"affine\"\npermutation = \"reverse\"\n[training]\nepochs = {epochs}\n\
             batch_size = 64\ndevice = \"cpu\"\nthreads = 1\n[outputs]\nrun_dir = \"run\"\ncheckpoint_every = 0\n\
             keep_checkpoints = 100\nprogress = false\n"
        ),
    )
    .unwrap();
    let child = Command::new("timeout")
        .args(["-s", "KILL", "240", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", "2"])
        .args([WORKER, "train", "--config", "run.toml"])
        .args(extra.iter().flat_map(|e| ["--set", e]))
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = d.join("run");
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "control.json never appeared");
        if let Ok(f) = std::fs::read_to_string(run.join("control.json")) {
            if serde_json::from_str::<ControlFile>(&f).is_ok() {
                let st = status_json(&run);
                if st["state"] == "training" && st["epoch"].as_u64().unwrap_or(0) >= 1 {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, run)
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

fn history_lines(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("history.csv")).map_or(0, |h| h.lines().count().saturating_sub(1) as u64)
}

fn cf(run: &Path) -> ControlFile {
    serde_json::from_str(&std::fs::read_to_string(run.join("control.json")).unwrap()).unwrap()
}

#[test]
fn status_watch_checkpoint_and_stop_steer_a_real_two_rank_job() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmpdir();
    let (job, run) = start_job(dir.path(), 4000, &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(run.join("control.json")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control.json must be private");

    // Status reports the true progress: epochs completed match history.csv,
    // which rank 0 writes right after each epoch (read before and after the call).
    let before = history_lines(&run);
    let st = status_json(&run);
    let after = history_lines(&run);
    let epoch = st["epoch"].as_u64().unwrap();
    assert!(before <= epoch && epoch <= after + 1, "status epoch {epoch} vs history.csv {before}..{after} lines");
    assert_eq!(st["epochs"], 4000);
    assert_eq!(st["world_size"], 2);
    assert!(st["step"].as_u64().unwrap() <= st["steps_per_epoch"].as_u64().unwrap());
    assert_eq!(st["ranks"].as_array().unwrap().len(), 2);
    let human = ctl(&run, &["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("epoch"), "{human:?}");
    // Ranks as JSON: the proto's fields, one object per rank.
    let o = ctl(&run, &["ranks", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let ranks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ranks = ranks.as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    assert!(ranks.iter().all(|r| r["host"].is_string() && r["threads"].as_u64().is_some()), "{ranks:?}");

    // Watch in the background until the run ends, in words and as JSON lines.
    let watcher = Command::new(CTL)
        .arg("--run")
        .arg(&run)
        .args(["watch", "--rate", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let json_watcher = Command::new(CTL)
        .arg("--run")
        .arg(&run)
        .args(["watch", "--rate", "20", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Checkpoint: written exactly at the epoch the reply names.
    let o = ctl(&run, &["checkpoint"]);
    assert!(o.status.success(), "{o:?}");
    let reply = String::from_utf8_lossy(&o.stdout).into_owned();
    let at: usize = reply.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let t0 = Instant::now();
    while checkpoint::list(&run.join("checkpoints")).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "requested checkpoint never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (state, path) = checkpoint::list(&run.join("checkpoints")).remove(0);
    assert_eq!(state.epoch, at, "checkpoint at {} but the reply said epoch {at}", path.display());
    assert_eq!(state.step_in_epoch, 0);

    // Stop: every rank ends with exit 0 after a final checkpoint.
    let o = ctl(&run, &["stop"]);
    assert!(o.status.success(), "{o:?}");
    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "job after stop: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let last = checkpoint::list(&run.join("checkpoints")).pop().unwrap().0;
    assert!(last.epoch > at && last.epoch < 4000 && !last.mid_epoch(), "final checkpoint {last:?}");
    assert_eq!(history_lines(&run), last.epoch as u64);

    let w = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&w.stdout);
    assert!(w.status.success(), "watch exit {:?}", w.status);
    assert!(text.contains("epoch ") && text.contains("ckpt") && text.contains("state  finished"), "{text}");
    let w = json_watcher.wait_with_output().unwrap();
    assert!(w.status.success(), "watch --json exit {:?}", w.status);
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&w.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["kind"]["epoch"]["train_loss"].is_number()), "no epoch event");
    assert!(events.iter().any(|e| e["kind"]["state"] == "finished"), "no final state by name");

    // After the end: a distinct exit code and one line.
    let o = ctl(&run, &["status"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

#[test]
fn independent_python_client_and_bad_callers() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmpdir();
    let (job, run) = start_job(dir.path(), 4000, &[]);
    let f = cf(&run);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc/client.py");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let gen = dir.path().join("py");
    let py = |mode: &[&str]| -> serde_json::Value {
        let o = Command::new(python())
            .args([script, proto, gen.to_str().unwrap(), &f.endpoint, &f.token])
            .args(mode)
            .output()
            .unwrap();
        assert!(o.status.success(), "python client: {}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let r = py(&["status"]);
    assert_eq!(r["ok"]["world_size"], 2);
    assert_eq!(r["ok"]["state"], "TRAINING");
    assert_eq!(r["no_token"], "UNAUTHENTICATED");
    assert_eq!(r["wrong_token"], "UNAUTHENTICATED");
    assert_eq!(r["stop_without_token"], "UNAUTHENTICATED");
    assert_eq!(status_json(&run)["state"], "training", "an unauthenticated stop changed nothing");

    let g = py(&["garbage"]);
    for k in ["malformed", "oversized", "unknown_method"] {
        assert_ne!(g[k], "ACCEPTED", "{k} request was accepted: {g}");
    }
    assert_eq!(g["after"], "TRAINING");

    // fedhex-ctl: wrong token and dead endpoint give distinct codes.
    let o = Command::new(CTL).args(["--endpoint", &f.endpoint, "--token", "wrong", "status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let o = Command::new(CTL).args(["--endpoint", "http://127.0.0.1:9", "--token", "x", "status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = Command::new(CTL).args(["--run", "/nonexistent", "status"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    // 40 watchers that never read: training goes on, memory stays bounded.
    let before = status_json(&run);
    let rss0 = before["ranks"][0]["rss_bytes"].as_f64().unwrap();
    let mut lazy = Command::new(python())
        .args([script, proto, gen.to_str().unwrap(), &f.endpoint, &f.token, "watchers", "40", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let during = status_json(&run);
    assert!(
        during["global_step"].as_u64().unwrap() > before["global_step"].as_u64().unwrap() + 50,
        "training stalled with lazy watchers: {before} -> {during}"
    );
    let rss1 = during["ranks"][0]["rss_bytes"].as_f64().unwrap();
    assert!(rss1 - rss0 < 150e6, "rank 0 grew by {} MB with lazy watchers", (rss1 - rss0) / 1e6);
    assert!(lazy.wait().unwrap().success());

    let o = ctl(&run, &["stop", "--now"]);
    assert!(o.status.success(), "{o:?}");
    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = checkpoint::list(&run.join("checkpoints")).pop().unwrap().0;
    assert!(last.mid_epoch(), "stop --now saves a mid-epoch checkpoint: {last:?}");
}

#[test]
fn tls_with_a_ca_signed_certificate() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmpdir();
    let d = dir.path();
    let sh = |script: &str| {
        let o = Command::new("sh").arg("-c").arg(script).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=fedhex-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj /CN=localhost");
    sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf");
    let (job, run) = start_job(
        d,
        4000,
        &["control.tls_cert=\"cert.pem\"", "control.tls_key=\"key.pem\"", "control.tls_ca=\"ca.pem\""],
    );
    let f = cf(&run);
    assert!(f.endpoint.starts_with("https://"), "{}", f.endpoint);
    assert_eq!(status_json(&run)["state"], "training", "status over TLS");
    // Plaintext to a TLS endpoint fails; so does TLS without trusting the CA.
    let plain = f.endpoint.replace("https://", "http://");
    let o = Command::new(CTL).args(["--endpoint", &plain, "--token", &f.token, "status"]).output().unwrap();
    assert!(!o.status.success());
    let o = Command::new(CTL)
        .args(["--endpoint", &f.endpoint, "--token", &f.token, "--ca", "/dev/null", "status"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "an untrusted certificate was accepted");
    assert!(ctl(&run, &["stop", "--now"]).status.success());
    assert!(job.wait_with_output().unwrap().status.success());
}

/// The service in-process: a bound `127.0.0.1:0` listener and a shutdown
/// future (no thread, no run): a wrong token is refused, status reads the
/// state, a stop command reaches the trainer's flags, and the server ends
/// when the shutdown future completes.
#[test]
fn the_service_runs_in_process_on_a_bound_listener_until_shutdown() {
    use fedhex::control::{client, grpc, ControlState};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let controls = Arc::new(fedhex::train::Controls::default());
        let state = ControlState::new("in-process".into(), 3, 1, 64, controls.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(grpc::serve(listener, state, Arc::new("secret".into()), None, async {
            let _ = rx.await;
        }));
        let mut bad = client::connect(&endpoint, "wrong", None).await.unwrap();
        assert!(client::status(&mut bad, &endpoint).await.is_err(), "a wrong token must be refused");
        let mut c = client::connect(&endpoint, "secret", None).await.unwrap();
        let st = client::status(&mut c, &endpoint).await.unwrap();
        assert_eq!((st.run_id.as_str(), st.epochs), ("in-process", 3));
        assert!(!controls.stop_now.load(Ordering::Relaxed));
        client::stop(&mut c, &endpoint, true).await.unwrap();
        assert!(controls.stop_now.load(Ordering::Relaxed), "the stop command did not reach the flags");
        tx.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the server did not end on shutdown: {ended:?}");
    });
}
