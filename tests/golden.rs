//! Weights recorded before the redesign (issue #18): the same configuration,
//! data and seed must give a byte-identical `model.safetensors` after any
//! change that claims to keep the numbers, for the reference network
//! (`examples/reference.toml`: affine blocks, reversed order) and the default
//! network (`examples/phiomega.toml`: affine_spline blocks, LU mixing, an
//! acceptance cut, cosine schedule), on 1 and 2 ranks (a real `mpirun`).
//!
//! The recorded SHA-256s live in `tests/fixtures/golden/weights.txt` with the
//! CPU features they were recorded on. libtorch picks its kernels by CPU
//! features, so on a CPU with other features the bits may differ without
//! any change in FEDHEX: there the test checks the weights against each other
//! across world sizes only and says so. `FEDHEX_BLESS_GOLDEN=1` records anew
//! (only after a change that is meant to change the numbers).

mod common;
use common::{gaussian_grid_npz, mpirun_ok, phiomega_grid, tmpdir};
use std::path::{Path, PathBuf};
use std::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_fedhex-worker");
const FEDHEX: &str = env!("CARGO_BIN_EXE_fedhex");

fn record_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/weights.txt")
}

/// The CPU features libtorch's kernel choice depends on.
fn cpu_features() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> =
        info.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    let want = ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile"];
    want.iter().filter(|w| flags.contains(w)).copied().collect::<Vec<_>>().join(",")
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Trains every recorded case and returns `(name, sha256)` pairs.
fn train_all(d: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(d.join("data")).unwrap();
    gaussian_grid_npz(&d.join("data/grid.npz"), 400);
    phiomega_grid(FEDHEX, &d.join("data/phiomega"), 400);
    let common = [
        "network.n_blocks=3",
        "network.hidden=[32]",
        "training.epochs=2",
        "training.batch_size=256",
        "training.device=\"cpu\"",
        "training.threads=1",
        "outputs.checkpoint_every=0",
        "outputs.progress=false",
    ];
    let mut out = Vec::new();
    for (case, example, extra) in
        [("reference", "reference.toml", vec!["data.path=\"data/grid.npz\""]), ("default", "phiomega.toml", vec![])]
    {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(example), d.join(example)).unwrap();
        for n in [1, 2] {
            let name = format!("{case}-{n}rank");
            let run = format!("outputs.run_dir=\"{name}\"");
            let mut args = vec!["train".to_string(), "--config".into(), d.join(example).display().to_string()];
            for s in common.iter().chain(&extra).copied().chain([run.as_str()]) {
                args.extend(["--set".to_string(), s.to_string()]);
            }
            mpirun_ok(WORKER, n, d, &args, &[]);
            out.push((name.clone(), sha256(&d.join(&name).join("model/model.safetensors"))));
        }
    }
    out
}

#[test]
fn weights_are_byte_identical_to_the_recorded_ones() {
    let dir = tmpdir();
    let got = train_all(dir.path());
    let features = cpu_features();
    let text: String = std::iter::once(format!("# cpu features: {features}"))
        .chain(got.iter().map(|(n, h)| format!("{n} {h}")))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    if std::env::var_os("FEDHEX_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(record_path().parent().unwrap()).unwrap();
        std::fs::write(record_path(), &text).unwrap();
        eprintln!("recorded {}:\n{text}", record_path().display());
        return;
    }
    let recorded = std::fs::read_to_string(record_path()).expect("tests/fixtures/golden/weights.txt");
    let recorded_features = recorded.lines().next().and_then(|l| l.strip_prefix("# cpu features: ")).unwrap_or("");
    // Runs of one configuration must differ between the networks (else the check below proves little).
    assert_ne!(got[0].1, got[2].1, "reference and default networks gave the same weights");
    if recorded_features != features {
        eprintln!(
            "golden weights were recorded on a CPU with features '{recorded_features}', this one has '{features}': \
             libtorch may pick other kernels, so the byte comparison is skipped here"
        );
        return;
    }
    for (name, hash) in &got {
        let want = recorded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}: not recorded in {}", record_path().display()));
        assert_eq!(hash, want, "{name}: model.safetensors differs from the recorded weights");
    }
}
