//! Generation over ranks (`fedhex-worker sample`, `generate::distributed`)
//! under a real `mpirun`: with 1, 2 and 3 ranks, and split into `--part`s,
//! the part files read in manifest order are the events of `fedhex sample`
//! (same model, labels, seed, batch), bit for bit, in `.npz` and `.root`;
//! the manifest's counts and draws are right; bad input gives one clear
//! error and leaves no output directory.

mod common;
use clap::Parser;
use common::{gaussian_grid_npz, random_model, tmpdir};
use fedhex::comm::SingleProcess;
use fedhex::data::EventSet;
use fedhex::generate::distributed::{sample_parts, PartsArgs};
use fedhex::generate::distributed::{Manifest, Part};
use fedhex::generate::LabelDraws;
use std::path::Path;
use std::process::{Command, Output};

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");
const FEDHEX: &str = env!("CARGO_BIN_EXE_fedhex");

/// One MPI job at a time: Open MPI ranks busy-poll, so concurrent jobs on a
/// 2-core machine would starve each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn mpirun(n: usize, dir: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-n", &n.to_string(), WORKER])
        .args(args)
        .current_dir(dir)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("mpirun")
}

fn fedhex(args: &[&str], dir: &Path) -> Output {
    Command::new(FEDHEX).args(args).current_dir(dir).env_remove("LD_LIBRARY_PATH").output().expect("fedhex")
}

fn ok(what: &str, o: &Output) {
    assert!(o.status.success(), "{what} failed ({:?}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

fn fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure:\n{err}");
    assert!(err.contains(needle), "stderr lacks '{needle}':\n{err}");
    assert!(!err.contains("panicked"), "a panic instead of an error:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "one error line, not one per rank:\n{err}");
}

const CFG: &str = r#"
[data]
path = "grid.npz"
[network]
n_blocks = 2
hidden = [16]
transform = "affine"
permutation = "reverse"
[training]
epochs = 2
batch_size = 128
device = "cpu"
[outputs]
run_dir = "run"
progress = false
"#;

/// The request of every run: labels from all three sources (1 + 6 + 9 = 16),
/// a range cut (so blocks are sized by the acceptance seen so far), several
/// network calls per label, and small chunks (several per file).
const REQUEST: &[&str] = &[
    "--model",
    "run/model",
    "--label",
    "0.25,0.75",
    "--grid",
    "0:1:3",
    "--grid",
    "0.25:0.75:2",
    "--labels-from",
    "grid.npz",
    "--range",
    "x0=-0.2:",
    "-n",
    "150",
    "--seed",
    "7",
    "--batch",
    "64",
    "--chunk",
    "100",
    "--device",
    "cpu",
];
const LABELS: usize = 16;
const N: u64 = 150;

/// A model trained for two epochs on a 3 x 3 Gaussian grid (run/model).
fn train(d: &Path) {
    gaussian_grid_npz(&d.join("grid.npz"), 200);
    std::fs::write(d.join("run.toml"), CFG).unwrap();
    ok("fedhex train", &fedhex(&["train", "--config", "run.toml"], d));
}

/// [`train`], and the reference: `fedhex sample` of [`REQUEST`] to ref.npz and ref.root.
fn setup(d: &Path) {
    train(d);
    for out in ["ref.npz", "ref.root"] {
        ok("fedhex sample", &fedhex(&[&["sample"], REQUEST, &["--out", out]].concat(), d));
    }
}

fn sample(ranks: usize, d: &Path, extra: &[&str]) -> Output {
    mpirun(ranks, d, &[&["sample"], REQUEST, extra].concat())
}

fn read(paths: &[std::path::PathBuf]) -> EventSet {
    let names = |p: &str| vec![format!("{p}0"), format!("{p}1")];
    fedhex::data::files::read_events(paths, &names("x"), &names("label"), "Events", true).unwrap()
}

fn bits(a: &ndarray::Array2<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn assert_same_events(got: &EventSet, want: &EventSet, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: event count");
    assert!(bits(&got.samples) == bits(&want.samples), "{what}: samples differ");
    assert!(bits(&got.labels) == bits(&want.labels), "{what}: labels differ");
}

fn ref_draws(d: &Path, name: &str) -> Vec<LabelDraws> {
    serde_json::from_str(&std::fs::read_to_string(d.join(name)).unwrap()).unwrap()
}

/// Checks `dir`'s manifest against `ranks` ranks holding `part` of the request.
fn check_manifest(dir: &Path, ranks: usize, part: Part, format: &str) -> Manifest {
    let m = Manifest::read(dir).unwrap();
    let slice = fedhex::generate::distributed::slice(LABELS, part.count, part.index);
    assert_eq!((m.part, m.first_label, m.labels, m.labels_total), (part, slice.start, slice.len(), LABELS));
    assert_eq!((m.ranks, m.seed, m.batch, m.n_per_label), (ranks, 7, 64, N as usize));
    assert_eq!(m.files.len(), ranks.min(slice.len()), "one file per rank with labels");
    assert_eq!(m.events, slice.len() as u64 * N);
    let mut next = slice.start;
    for (r, f) in m.files.iter().enumerate() {
        assert_eq!(f.rank, r);
        assert_eq!(f.file, format!("part-{r:05}.{format}"));
        assert_eq!(f.first_label, next, "contiguous labels in rank order");
        let mine = fedhex::generate::distributed::slice(slice.len(), ranks, r);
        assert_eq!(f.labels.len(), mine.len(), "balanced split");
        assert!(f.events_per_label.iter().all(|&e| e == N));
        assert_eq!(f.events, N * f.labels.len() as u64);
        assert_eq!(f.draws.len(), f.labels.len());
        assert!(f.draws.iter().zip(&f.labels).all(|(d, l)| &d.label == l && d.kept == N));
        assert_eq!(f.device, "cpu");
        next += f.labels.len();
    }
    assert_eq!(next, slice.end);
    // Nothing else in the directory (no temporary files).
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = m.files.iter().map(|f| f.file.clone()).collect();
    want.push("manifest.json".into());
    want.sort();
    assert_eq!(names, want);
    m
}

/// No hidden temporary sibling left next to the outputs.
fn no_leftovers(d: &Path) {
    let hidden: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "leftovers: {hidden:?}");
}

#[test]
fn parts_over_one_two_and_three_ranks_are_the_events_of_fedhex_sample() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    setup(d);
    let want = read(&[d.join("ref.npz")]);
    assert_eq!(want.len() as u64, LABELS as u64 * N);
    let want_root = read(&[d.join("ref.root")]);
    assert_same_events(&want_root, &want, "fedhex sample .root vs .npz");
    let draws = ref_draws(d, "ref.draws.json");
    assert!(draws.iter().any(|s| s.rejected_range > 0), "the range cut redraws");
    for ranks in [1, 2, 3] {
        let out = format!("npz-{ranks}");
        let o = sample(ranks, d, &["--format", "npz", "--out", &out]);
        ok(&format!("{ranks} ranks"), &o);
        let m = check_manifest(&d.join(&out), ranks, Part::WHOLE, "npz");
        assert_same_events(&read(&m.paths(&d.join(&out))), &want, &format!("{ranks} ranks, npz"));
        assert_eq!(m.draws(), draws, "{ranks} ranks: draws accounting");
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("wrote {} events", LABELS as u64 * N)));
    }
    // ROOT parts (the default format), 3 ranks.
    ok("root parts", &sample(3, d, &["--out", "root-3"]));
    let m = check_manifest(&d.join("root-3"), 3, Part::WHOLE, "root");
    assert_same_events(&read(&m.paths(&d.join("root-3"))), &want, "3 ranks, root");
    // An array job's tasks: slice 0 of 3 on one rank, 1 of 3 on two, 2 of 3 on three.
    let mut union = Vec::new();
    let mut union_draws = Vec::new();
    for (i, ranks) in [(0, 1), (1, 2), (2, 3)] {
        let out = format!("task-{i}");
        ok(
            &format!("--part {i}/3"),
            &sample(ranks, d, &["--format", "npz", "--part", &format!("{i}/3"), "--out", &out]),
        );
        let m = check_manifest(&d.join(&out), ranks, Part { index: i, count: 3 }, "npz");
        union.extend(m.paths(&d.join(&out)));
        union_draws.extend(m.draws());
    }
    assert_same_events(&read(&union), &want, "--part 0/3, 1/3, 2/3");
    assert_eq!(union_draws, draws, "draws of the parts");
    no_leftovers(d);
}

#[test]
fn bad_input_gives_one_error_and_no_output_directory() {
    let _serial = serial();
    let dir = tmpdir();
    let d = dir.path();
    train(d);
    let run = |ranks: usize, args: &[&str]| mpirun(ranks, d, &[&["sample"], args].concat());
    // A missing model, named.
    let o = run(2, &["--model", "nowhere", "--label", "0.5,0.5", "-n", "10", "--out", "gen"]);
    fails_with(&o, "nowhere");
    // A label of the wrong size.
    let o = run(3, &["--model", "run/model", "--label", "0.5", "-n", "10", "--out", "gen"]);
    fails_with(&o, "conditioned on 2 labels");
    // A range on a feature the model lacks.
    let o = run(2, &["--model", "run/model", "--label", "0.5,0.5", "--range", "mass=0:1", "--out", "gen"]);
    fails_with(&o, "no feature 'mass'");
    // More parts than labels.
    let o = run(2, &["--model", "run/model", "--label", "0.5,0.5", "-n", "10", "--part", "1/2", "--out", "gen"]);
    fails_with(&o, "has no labels");
    assert!(!d.join("gen").exists(), "a failed run left its output directory");
    no_leftovers(d);
    // Ranks that disagree on the request (an MPMD launch with different seeds).
    let o = Command::new("timeout")
        .args(["-s", "KILL", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-n", "1", WORKER, "sample", "--model", "run/model", "--label", "0.5,0.5", "-n", "10"])
        .args(["--seed", "1", "--out", "gen", ":"])
        .args(["-n", "1", WORKER, "sample", "--model", "run/model", "--label", "0.5,0.5", "-n", "10"])
        .args(["--seed", "2", "--out", "gen"])
        .current_dir(d)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    fails_with(&o, "ranks disagree on the sample request");
    assert!(!d.join("gen").exists());
    // An existing non-empty directory is refused and left alone; --force replaces it.
    std::fs::create_dir(d.join("gen")).unwrap();
    std::fs::write(d.join("gen/keep.txt"), "mine").unwrap();
    let args = ["--model", "run/model", "--label", "0.5,0.5", "-n", "10", "--format", "npz", "--out", "gen"];
    fails_with(&run(2, &args), "not empty (--force replaces it)");
    assert_eq!(std::fs::read_to_string(d.join("gen/keep.txt")).unwrap(), "mine");
    ok("--force", &run(2, &[&args[..], &["--force"]].concat()));
    check_manifest_files(&d.join("gen"), &["manifest.json", "part-00000.npz"]);
    // An existing empty directory is filled.
    std::fs::create_dir(d.join("empty")).unwrap();
    ok("empty --out", &run(1, &["--model", "run/model", "--label", "0.5,0.5", "-n", "10", "--out", "empty"]));
    check_manifest_files(&d.join("empty"), &["manifest.json", "part-00000.root"]);
    no_leftovers(d);
}

fn check_manifest_files(dir: &Path, want: &[&str]) {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, want);
    let m = Manifest::read(dir).unwrap();
    assert_eq!(m.events, 10);
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: PartsArgs,
}

/// The library alone (`sample_parts` with a single-process communicator):
/// three `--part`s of a request in one process give, in order, the events
/// and draws of `sample_with_draws` on the whole request.
#[test]
fn parts_in_one_process_are_the_events_of_the_whole_request() {
    let dir = tmpdir();
    let d = dir.path();
    let model = random_model(2, &[8], 3);
    model.save(&d.join("model")).unwrap();
    let labels = fedhex::generate::label_grid(&["0:1:5".into(), "0.25:0.75:2".into()]).unwrap();
    let (want, want_draws) = fedhex::generate::sample_with_draws(&model, &labels, 120, 9, 50, &[]).unwrap();
    let (mut union, mut draws) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let out = d.join(format!("part-{i}"));
        let (m, o, p) = (d.join("model"), out.display().to_string(), format!("{i}/3"));
        let cli = Cli::parse_from([
            "x",
            "--model",
            m.to_str().unwrap(),
            "--grid",
            "0:1:5",
            "--grid",
            "0.25:0.75:2",
            "-n",
            "120",
            "--seed",
            "9",
            "--batch",
            "50",
            "--device",
            "cpu",
            "--format",
            "npz",
            "--part",
            &p,
            "--out",
            &o,
        ]);
        let manifest = sample_parts(&SingleProcess, &cli.args).unwrap();
        assert_eq!(manifest, Manifest::read(&out).unwrap(), "returned = written manifest");
        assert_eq!(manifest.files.len(), 1);
        union.extend(manifest.paths(&out));
        draws.extend(manifest.draws());
    }
    let got = fedhex::data::files::read_events(&union, &model.features.names(), &model.labels.names(), "Events", true)
        .unwrap();
    assert_same_events(&got, &want, "three parts in one process");
    assert_eq!(draws, want_draws);
}
