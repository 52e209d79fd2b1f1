//! The `fedhex` binary end to end, and its answers to bad input: one clear
//! error line, a non-zero exit, no output file.

mod common;
use common::tmpdir;
use fedhex::data::npy::write_npz;
use ndarray::Array2;
use std::path::Path;
use std::process::{Command, Output};

fn fedhex(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedhex"))
        .args(args)
        .current_dir(cwd)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap()
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}':\n{err}");
    assert!(!err.contains("panicked"), "panic instead of an error:\n{err}");
}

const CFG: &str = r#"
[data]
path = "grid.npz"
[network]
n_blocks = 2
hidden = [16]
[training]
epochs = 2
batch_size = 128
device = "cpu"
[outputs]
run_dir = "run"
"#;

#[test]
fn gen_train_sample_moments_end_to_end() {
    let dir = tmpdir();
    let d = dir.path();
    let o = fedhex(&["gen", "--points", "3", "-n", "300", "--cov", "full", "--out", "grid.npz"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(d.join("run.toml"), CFG).unwrap();
    let o = fedhex(&["train", "--config", "run.toml", "--set", "network.hidden=[8,8]"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("run/model/model.json").exists() && d.join("run/history.csv").exists());
    let saved = std::fs::read_to_string(d.join("run/config.toml")).unwrap();
    assert!(saved.contains("hidden = [8, 8]"), "override not recorded: {saved}");
    let o = fedhex(&["sample", "--model", "run/model", "--label", "0.25,0.75", "-n", "500", "--out", "gen.npz"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = fedhex::data::npy::read_npz(&d.join("gen.npz"), vec![], vec![]).unwrap();
    assert_eq!(events.len(), 500);
    assert!(events.labels.iter().zip([0.25f32, 0.75].iter().cycle()).all(|(a, b)| a == b));
    let o = fedhex(&["moments", "--truth", "grid.gen.json", "--samples", "gen.npz"], d);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("worst mean offset"));
}

#[test]
fn config_default_prints_a_commented_full_configuration() {
    let dir = tmpdir();
    let o = fedhex(&["config", "--default"], dir.path());
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(fedhex::config::RunConfig::from_toml(&text, &[], "stdout").unwrap(), Default::default());
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 20);
}

#[test]
fn bad_inputs_give_one_clear_error_and_no_output() {
    let dir = tmpdir();
    let d = dir.path();
    std::fs::write(d.join("run.toml"), CFG).unwrap();

    // Missing input file.
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "grid.npz");
    // NaN in samples.
    let mut xs = Array2::<f32>::from_elem((50, 2), 0.5);
    xs[[17, 1]] = f32::NAN;
    write_npz(&d.join("grid.npz"), &xs, &Array2::zeros((50, 2))).unwrap();
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "samples[17, 1] is NaN");
    // Infinity in labels.
    let mut ls = Array2::<f32>::zeros((50, 2));
    ls[[3, 0]] = f32::INFINITY;
    write_npz(&d.join("grid.npz"), &Array2::zeros((50, 2)), &ls).unwrap();
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "labels[3, 0] is inf");
    // Empty input.
    write_npz(&d.join("grid.npz"), &Array2::zeros((0, 2)), &Array2::zeros((0, 2))).unwrap();
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "no events");
    // Row counts disagree.
    write_npz(&d.join("grid.npz"), &Array2::zeros((10, 2)), &Array2::zeros((9, 2))).unwrap();
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "10 rows of samples but 9 rows of labels");
    // Not an npz.
    std::fs::write(d.join("grid.npz"), b"definitely not a zip archive").unwrap();
    fails_with(&fedhex(&["train", "--config", "run.toml"], d), "not a readable .npz");
    // Unknown configuration keys, in the file and on the command line.
    std::fs::write(d.join("bad.toml"), format!("{CFG}\n[extra]\nx = 1\n")).unwrap();
    fails_with(&fedhex(&["train", "--config", "bad.toml"], d), "extra");
    fails_with(&fedhex(&["train", "--config", "run.toml", "--set", "network.widths=[3]"], d), "widths");
    assert!(!d.join("run").exists(), "a failed run left a run directory behind");

    // Sampling: label dimension mismatch and a missing model.
    let ok = fedhex(&["gen", "--points", "2", "-n", "100", "--out", "grid.npz"], d);
    assert!(ok.status.success());
    assert!(fedhex(&["train", "--config", "run.toml"], d).status.success());
    fails_with(
        &fedhex(&["sample", "--model", "run/model", "--label", "0.5", "-n", "10", "--out", "gen.npz"], d),
        "has 1 values but the model is conditioned on 2 labels",
    );
    fails_with(
        &fedhex(&["sample", "--model", "run/model", "--label", "0.5,x", "-n", "10", "--out", "gen.npz"], d),
        "'x' is not a number",
    );
    fails_with(
        &fedhex(&["sample", "--model", "nowhere", "--label", "0.5,0.5", "-n", "10", "--out", "gen.npz"], d),
        "no such model directory",
    );
    assert!(!d.join("gen.npz").exists(), "a failed sample left an output file");
    let stray: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(stray.is_empty(), "temporary files left behind");
}

#[test]
fn doctor_reports_libtorch_without_ld_library_path() {
    let dir = tmpdir();
    let o = fedhex(&["doctor"], dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("libtorch    2.11.0"), "{out}");
    assert!(out.contains("cuda") && out.contains("threads"), "{out}");
}

#[test]
fn binary_links_libtorch_cuda_and_carries_an_rpath() {
    let bin = env!("CARGO_BIN_EXE_fedhex");
    let o = Command::new("ldd").arg(bin).env_remove("LD_LIBRARY_PATH").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("libtorch_cuda.so =>"), "libtorch_cuda not linked:\n{text}");
    assert!(!text.contains("not found"), "unresolved libraries without LD_LIBRARY_PATH:\n{text}");
}

#[test]
fn phi_omega_root_files_train_and_sample_to_root() {
    let dir = tmpdir();
    let d = dir.path();
    let o = fedhex(&["gen", "--model", "phi-omega", "--grid", "3x3", "-n", "300", "--out", "mc"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = r#"
[data.root]
files = ["mc/"]
cut = "CBL_Region == 1"
features = [{ name = "phi", expr = "CBL_RecoPhi_mass" }, { name = "omega", expr = "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]" }]
labels = [{ name = "labelphi", expr = "GenPhi_mass[0]" }, { name = "labelomega", expr = "GenOmega_mass[0]" }]
[network]
n_blocks = 2
hidden = [16]
[training]
epochs = 1
device = "cpu"
[outputs]
run_dir = "run"
"#;
    std::fs::write(d.join("po.toml"), cfg).unwrap();
    let o = fedhex(&["train", "--config", "po.toml"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = fedhex::flow::Model::load(&d.join("run/model"), tch::Device::Cpu).unwrap();
    assert_eq!(m.features.names(), vec!["phi", "omega"]);
    assert_eq!(m.labels.names(), vec!["labelphi", "labelomega"]);
    let o = fedhex(&["sample", "--model", "run/model", "--label", "1500,3", "-n", "400", "--out", "gen.root"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = fedhex::data::root::RootFile::open(&d.join("gen.root")).unwrap();
    let t = f.tree("Events").unwrap();
    assert_eq!(t.entries(), 400);
    let lab = t.read("labelphi").unwrap();
    match lab {
        fedhex::data::root::Column::Scalar(v) => assert!(v.to_f64().iter().all(|&x| x == 1500.0)),
        other => panic!("labelphi should be flat, got {other:?}"),
    }
    // A missing branch: one error naming it, no run directory.
    std::fs::write(
        d.join("bad.toml"),
        cfg.replace("CBL_RecoPhi_mass", "CBL_RecoPhi_mas").replace("\"run\"", "\"badrun\""),
    )
    .unwrap();
    fails_with(&fedhex(&["train", "--config", "bad.toml"], d), "CBL_RecoPhi_mas");
    assert!(!d.join("badrun").exists());
}

#[test]
fn holdout_labels_are_left_out_of_training_and_recorded() {
    let dir = tmpdir();
    let d = dir.path();
    assert!(fedhex(&["gen", "--points", "3", "-n", "200", "--out", "grid.npz"], d).status.success());
    std::fs::write(d.join("run.toml"), CFG).unwrap();
    let o = fedhex(&["train", "--config", "run.toml", "--set", "data.holdout_labels=[[0.5, 0.5]]"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = fedhex::flow::Model::load(&d.join("run/model"), tch::Device::Cpu).unwrap();
    assert_eq!(m.training["holdout_labels"], serde_json::json!([[0.5, 0.5]]));
    // 9 labels x 200 events, one label held out: 1600 events, 10% validation.
    assert_eq!(m.training["train_events"].as_u64().unwrap() + m.training["validation_events"].as_u64().unwrap(), 1600);
    fails_with(
        &fedhex(
            &[
                "train",
                "--config",
                "run.toml",
                "--set",
                "data.holdout_labels=[[0.3, 0.5]]",
                "--set",
                "outputs.run_dir=\"r2\"",
            ],
            d,
        ),
        "no events at label [0.3, 0.5]",
    );
}

#[test]
fn sample_on_a_grid_from_a_reference_and_with_range_cuts() {
    let dir = tmpdir();
    let d = dir.path();
    assert!(fedhex(&["gen", "--points", "3", "-n", "200", "--out", "grid.npz"], d).status.success());
    std::fs::write(d.join("run.toml"), CFG).unwrap();
    assert!(fedhex(&["train", "--config", "run.toml"], d).status.success());
    // A 3 x 2 grid of labels with a range cut that removes a good part of the events.
    let o = fedhex(
        &[
            "sample",
            "--model",
            "run/model",
            "--grid",
            "0:1:3",
            "--grid",
            "0.25:0.75:2",
            "--range",
            "x0=0.1:",
            "-n",
            "300",
            "--out",
            "g.npz",
        ],
        d,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = fedhex::data::npy::read_npz(&d.join("g.npz"), vec![], vec![]).unwrap();
    assert_eq!(ev.len(), 6 * 300, "n events survive at every label");
    assert_eq!(ev.label_groups().len(), 6);
    assert!(ev.samples.column(0).iter().all(|&v| v >= 0.1), "the range cut holds");
    // The labels of a reference file.
    let o = fedhex(&["sample", "--model", "run/model", "--labels-from", "grid.npz", "-n", "10", "--out", "r.npz"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fedhex::data::npy::read_npz(&d.join("r.npz"), vec![], vec![]).unwrap().label_groups().len(), 9);
    fails_with(
        &fedhex(&["sample", "--model", "run/model", "--label", "0.5,0.5", "--range", "mass=0:1", "--out", "x.npz"], d),
        "no feature 'mass'",
    );
    fails_with(&fedhex(&["sample", "--model", "run/model", "--out", "x.npz"], d), "no labels to generate at");
    assert!(!d.join("x.npz").exists());
}

/// Acceptance cuts as expressions over the features (training, sampling, the
/// fit), a bad one refused before the run directory exists, and `fedhex fit`
/// on observed `.npz` events that carry no labels (one pooled fit).
#[test]
fn acceptance_expressions_and_a_fit_of_unlabeled_events() {
    let dir = tmpdir();
    let d = dir.path();
    let o = fedhex(&["gen", "--points", "3", "-n", "300", "--out", "grid.npz"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Cut the data as the declared acceptance says: |x0 - x1| < 0.3.
    let ev = fedhex::data::npy::read_npz(&d.join("grid.npz"), vec![], vec![]).unwrap();
    let keep: Vec<usize> = (0..ev.len()).filter(|&i| (ev.samples[[i, 0]] - ev.samples[[i, 1]]).abs() < 0.3).collect();
    assert!(keep.len() < ev.len(), "the cut must remove events");
    let cut = ev.select(&keep);
    write_npz(&d.join("cut.npz"), &cut.samples, &cut.labels).unwrap();
    std::fs::write(d.join("run.toml"), CFG.replace("grid.npz", "cut.npz")).unwrap();
    let accept = "data.acceptance=[\"abs(x0 - x1) < 0.3\"]";
    let o = fedhex(&["train", "--config", "run.toml", "--set", accept], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = std::fs::read_to_string(d.join("run/model/model.json")).unwrap();
    assert!(json.contains("abs(x0 - x1) < 0.3"), "the expression is not stored with the model");
    // Generated events obey the expression.
    let o = fedhex(&["sample", "--model", "run/model", "--label", "0.5,0.5", "-n", "800", "--out", "gen.npz"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = fedhex::data::npy::read_npz(&d.join("gen.npz"), vec![], vec![]).unwrap();
    assert_eq!(g.len(), 800);
    assert!(g.samples.outer_iter().all(|r| (r[0] - r[1]).abs() < 0.3), "a generated event fails the acceptance");
    // Data outside the declared expression are refused, naming the cut.
    let o = fedhex(
        &[
            "train",
            "--config",
            "run.toml",
            "--set",
            "data.acceptance=[\"abs(x0 - x1) < 0.1\"]",
            "--set",
            "outputs.run_dir=\"r2\"",
        ],
        d,
    );
    fails_with(&o, "abs(x0 - x1) < 0.1");
    // Bad expressions: one error naming the cut, no run directory.
    for (bad, needle) in
        [("abs(x9) < 1", "no feature 'x9'"), ("x0 < ", "data.acceptance 'x0 < '"), ("x0[0] > 1", "x0[0] > 1")]
    {
        let set = format!("data.acceptance=[\"{bad}\"]");
        let o = fedhex(&["train", "--config", "run.toml", "--set", &set, "--set", "outputs.run_dir=\"badrun\""], d);
        fails_with(&o, needle);
        assert!(!d.join("badrun").exists(), "{bad}: a run directory was written");
    }
    // Observed events without labels: one pooled fit.
    let obs = Array2::from_shape_vec((g.len(), 2), g.samples.iter().copied().collect()).unwrap();
    let file = std::fs::File::create(d.join("observed.npz")).unwrap();
    let mut npz = ndarray_npy::NpzWriter::new(file);
    npz.add_array("samples", &obs).unwrap();
    npz.finish().unwrap();
    let mut fits = Vec::new();
    for pool in [false, true] {
        let mut args =
            vec!["fit", "--model", "run/model", "--events", "observed.npz", "--scan", "none", "--iterations", "30"];
        args.extend(["--acceptance-samples", "2000"]);
        if pool {
            args.push("--pool");
        }
        args.extend(["--out", if pool { "fit_pool" } else { "fit" }]);
        let o = fedhex(&args, d);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("800 events: best ("), "{out}");
        let fit: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.join(if pool { "fit_pool" } else { "fit" }).join("fit.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(fit["n_events"], 800);
        let best: Vec<f64> = fit["best"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(best.len() == 2 && best.iter().all(|v| v.is_finite()), "{best:?}");
        fits.push(best);
    }
    // Without labels both ways are the same single fit.
    assert_eq!(fits[0], fits[1]);
}

/// `analyze`, `fit` and `sample --labels-from` read a NanoAOD-style reference
/// (jagged branches, a region cut) through the training run's `[data.root]`
/// selection (`--config RUN/config.toml`) — the same events the training saw
/// — and refuse a selection that describes other columns.
#[test]
fn commands_read_references_through_the_training_selection() {
    let d = tmpdir();
    let p = d.path();
    common::phiomega_grid(env!("CARGO_BIN_EXE_fedhex"), &p.join("data/phiomega"), 300);
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/phiomega.toml"), p.join("phiomega.toml"))
        .unwrap();
    let sets = [
        "network.n_blocks=2",
        "network.hidden=[16]",
        "training.epochs=1",
        "training.device=\"cpu\"",
        "outputs.run_dir=\"run\"",
        "outputs.progress=false",
    ];
    let mut args = vec!["train", "--config", "phiomega.toml"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let t = fedhex(&args, p);
    assert!(t.status.success(), "train: {}", String::from_utf8_lossy(&t.stderr));
    let file = "data/phiomega/phiomega_00004.root";
    // The events the selection keeps, counted independently through the training loader.
    let cfg = fedhex::config::RunConfig::load(&p.join("run/config.toml"), &[]).unwrap();
    let mut input = cfg.data.root.clone().unwrap();
    input.files = vec![p.join(file).display().to_string()];
    input.thresh = 0;
    let (want, _) = fedhex::data::source::load(&input).unwrap();
    assert!(want.len() > 200 && want.len() < 300, "region cut keeps {} of 300", want.len());

    // Without the selection the flat-branch reader cannot find the model's columns.
    let plain = fedhex(&["analyze", "--model", "run/model", "--reference", file, "--out", "r0", "-n", "500"], p);
    fails_with(&plain, "phi");
    assert!(!p.join("r0").exists(), "no partial report");

    let a = fedhex(
        &[
            "analyze",
            "--model",
            "run/model",
            "--reference",
            file,
            "--config",
            "run/config.toml",
            "--out",
            "r1",
            "-n",
            "500",
        ],
        p,
    );
    assert!(a.status.success(), "analyze: {}", String::from_utf8_lossy(&a.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("r1/report.json")).unwrap()).unwrap();
    let n_ref = report["labels"][0]["metrics"]["n_reference"].as_u64().unwrap();
    assert_eq!(n_ref as usize, want.len(), "the reference is the selected events");

    let f = fedhex(
        &[
            "fit",
            "--model",
            "run/model",
            "--events",
            file,
            "--config",
            "run/config.toml",
            "--iterations",
            "20",
            "--acceptance-samples",
            "500",
        ],
        p,
    );
    assert!(f.status.success(), "fit: {}", String::from_utf8_lossy(&f.stderr));

    let s = fedhex(
        &[
            "sample",
            "--model",
            "run/model",
            "--labels-from",
            file,
            "--config",
            "run/config.toml",
            "-n",
            "100",
            "--out",
            "s.npz",
            "--device",
            "cpu",
        ],
        p,
    );
    assert!(s.status.success(), "sample: {}", String::from_utf8_lossy(&s.stderr));
    let g = fedhex::data::npy::read_npz(&p.join("s.npz"), vec![], vec![]).unwrap();
    assert_eq!(g.len(), 100, "one label in the file");
    assert_eq!(g.labels.row(0).to_vec(), want.labels.row(0).to_vec());

    // A selection naming other columns is refused, naming both.
    let other =
        std::fs::read_to_string(p.join("run/config.toml")).unwrap().replacen("name = \"phi\"", "name = \"mphi\"", 1);
    std::fs::write(p.join("other.toml"), other).unwrap();
    let bad =
        fedhex(&["analyze", "--model", "run/model", "--reference", file, "--config", "other.toml", "--out", "r2"], p);
    fails_with(&bad, "mphi");
    assert!(!p.join("r2").exists());
    let none = fedhex(&["fit", "--model", "run/model", "--events", file, "--config", "phiomega_missing.toml"], p);
    fails_with(&none, "phiomega_missing.toml");
}
