//! Exact resume as a property of every training option that carries state.
//!
//! Each case is a shipped example configuration (`examples/*.toml`), shrunk
//! to a small network and data set through `--set`, plus the options under
//! test. For 1 and 2 ranks (a real `mpirun`), a run stopped at an epoch
//! boundary and a run stopped mid-epoch (the `fedhex-ctl stop --now` path,
//! injected at a fixed step with `FEDHEX_FAULT`) are resumed, and each must
//! write the same `model.safetensors` bytes and the same loss history as the
//! uninterrupted run.
//!
//! | case | example | state under test |
//! | --- | --- | --- |
//! | phiomega_truncated | phiomega.toml | acceptance cut (truncated likelihood), affine_spline blocks, LU mixing, relative clipping, cosine schedule with warm-up |
//! | phiomega_censored | phiomega.toml | acceptance cut with efficiencies (censored likelihood), spline blocks |
//! | reference_clipped | reference.toml | absolute gradient clipping, weight averaging |
//! | gaussian_early_stop | gaussian.toml | early stopping (best weights), balanced batches, weight averaging, relative clipping |
//! | phiomega_nd | phiomega_nd.toml | seven features, three labels, five acceptance cuts, a quarter of the events sampled for the normaliser, weight averaging |

mod common;
use common::{gaussian_grid_npz, mpirun_ok, phiomega_grid, tmpdir};
use fedhex::train::checkpoint;
use std::path::Path;

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");
const FEDHEX: &str = env!("CARGO_BIN_EXE_fedhex");

/// Where a case's events come from.
#[derive(Clone, Copy)]
enum Data {
    /// `fedhex gen --model phi-omega` ROOT files (with acceptance.csv) under data/phiomega.
    PhiOmega,
    /// A Gaussian grid in data/grid.npz.
    Gaussian,
    /// `fedhex gen --model phi-omega-nd` ROOT files under data/phiomega_nd.
    PhiOmegaNd,
}

struct Case {
    name: &'static str,
    example: &'static str,
    data: Data,
    /// Options under test (beside the shrinking ones).
    sets: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case { name: "phiomega_truncated", example: "phiomega.toml", data: Data::PhiOmega, sets: &[] },
    Case {
        name: "phiomega_censored",
        example: "phiomega.toml",
        data: Data::PhiOmega,
        sets: &["data.acceptance_efficiency=\"data/phiomega/acceptance.csv\"", "network.transform=\"spline\""],
    },
    Case {
        name: "reference_clipped",
        example: "reference.toml",
        data: Data::Gaussian,
        sets: &["training.clip_grad_norm=0.5", "training.clip_grad_relative=0.0", "training.ema_decay=0.9"],
    },
    Case {
        name: "gaussian_early_stop",
        example: "gaussian.toml",
        data: Data::Gaussian,
        sets: &[
            "training.early_stopping_patience=2",
            "training.batch_strata=0",
            "training.ema_decay=0.8",
            "training.clip_grad_relative=1.2",
            "training.lr_initial=0.02",
        ],
    },
    Case { name: "phiomega_nd", example: "phiomega_nd.toml", data: Data::PhiOmegaNd, sets: &[] },
];

const EPOCHS: usize = 4;

/// Keys that shrink any example to a test's size and keep every run's output apart.
fn shrink(data: Data, run: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "network.n_blocks=2",
        "network.hidden=[16]",
        "training.batch_size=200",
        "training.device=\"cpu\"",
        "training.threads=1",
        "outputs.checkpoint_every=0",
        "outputs.keep_checkpoints=100",
        "outputs.progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("training.epochs={EPOCHS}"));
    v.push(format!("outputs.run_dir=\"{run}\""));
    if let Data::Gaussian = data {
        v.push("data.path=\"data/grid.npz\"".into());
    }
    v
}

fn make_data(dir: &Path, data: Data) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    match data {
        Data::PhiOmega => phiomega_grid(FEDHEX, &dir.join("data/phiomega"), 400),
        Data::Gaussian => gaussian_grid_npz(&dir.join("data/grid.npz"), 250),
        Data::PhiOmegaNd => {
            let o = std::process::Command::new(FEDHEX)
                .args(["gen", "--model", "phi-omega-nd", "--grid", "2x2x2", "-n", "200", "--seed", "5", "--out"])
                .arg(dir.join("data/phiomega_nd"))
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .unwrap();
            assert!(o.status.success(), "fedhex gen: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

fn mpirun(n: usize, dir: &Path, config: &str, sets: &[String], resume: bool, fault: Option<String>) {
    let mut args = vec!["train".to_string(), "--config".into(), config.to_string()];
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    if resume {
        args.push("--resume".into());
    }
    let env: Vec<(&str, String)> = fault.into_iter().map(|f| ("FEDHEX_FAULT", f)).collect();
    mpirun_ok(WORKER, n, dir, &args, &env);
}

/// history.csv without its timing columns: epoch, train NLL, validation NLL, learning rate.
fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
        .collect()
}

/// Steps per epoch of a finished run, from its model facts.
fn steps_per_epoch(run: &Path) -> u64 {
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("model/model.json")).unwrap()).unwrap();
    let t = &facts["training"];
    let (steps, epochs) = (t["steps"].as_u64().unwrap(), t["epochs"].as_u64().unwrap());
    assert!(epochs > 0 && steps % epochs == 0, "{t}");
    steps / epochs
}

/// One case on `n` ranks: uninterrupted, stopped at an epoch boundary, stopped mid-epoch.
fn check(case: &Case, dir: &Path, config: &str, n: usize) {
    let whole = format!("{}-{n}-whole", case.name);
    let sets = |run: &str| [shrink(case.data, run), case.sets.iter().map(|s| s.to_string()).collect()].concat();
    mpirun(n, dir, config, &sets(&whole), false, None);
    let model = std::fs::read(dir.join(&whole).join("model/model.safetensors")).unwrap();
    let history = losses(&dir.join(&whole));
    let steps = steps_per_epoch(&dir.join(&whole));
    assert!(steps >= 3, "{}: {steps} steps per epoch are too few for a mid-epoch stop", case.name);
    // Stop in the second epoch: at its end, or after `steps / 2` of its steps.
    for (kind, fault, mid) in [
        ("boundary", format!("stop-after-epoch:{}", steps + 1), false),
        ("mid", format!("stop:{}", steps + steps / 2), true),
    ] {
        let run = format!("{}-{n}-{kind}", case.name);
        mpirun(n, dir, config, &sets(&run), false, Some(fault));
        let stopped = dir.join(&run);
        assert!(!stopped.join("model").exists(), "{run}: the stop came too late, the run finished");
        let (state, path) = checkpoint::list(&stopped.join("checkpoints")).pop().expect("a checkpoint");
        assert_eq!(state.mid_epoch(), mid, "{run}: {}", path.display());
        assert_eq!(state.epoch, if mid { 1 } else { 2 }, "{run}: {}", path.display());
        mpirun(n, dir, config, &sets(&run), true, None);
        let resumed = std::fs::read(stopped.join("model/model.safetensors")).unwrap();
        assert_eq!(losses(&stopped), history, "{run}: history.csv losses differ from the uninterrupted run's");
        assert!(resumed == model, "{run}: model.safetensors differs from the uninterrupted run's");
    }
}

#[test]
fn every_stateful_option_resumes_bit_identically_at_boundaries_and_mid_epoch() {
    for case in CASES {
        let dir = tmpdir();
        let d = dir.path();
        make_data(d, case.data);
        let config = d.join(case.example);
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(case.example), &config).unwrap();
        for n in [1, 2] {
            check(case, d, config.to_str().unwrap(), n);
        }
    }
}
