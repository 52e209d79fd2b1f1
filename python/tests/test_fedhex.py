"""The Python package against the `fedhex` command line: a tiny model trained
by the CLI, then sampling (byte for byte the CLI's), log-densities (against
`fedhex fit`'s NLL and a numerical normalisation), fits, bad input, threads,
memory, import order and the documented example.

The binaries are found in $FEDHEX_BIN_DIR, else $CARGO_TARGET_DIR/release,
else target/release of the repository (`make test` builds them first).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fedhex

REPO = Path(__file__).resolve().parents[2]


def _bin_dir() -> Path:
    for d in (
        os.environ.get("FEDHEX_BIN_DIR"),
        os.environ.get("CARGO_TARGET_DIR") and os.path.join(os.environ["CARGO_TARGET_DIR"], "release"),
        str(REPO / "target" / "release"),
    ):
        if d and (Path(d) / "fedhex").exists():
            return Path(d)
    raise RuntimeError("no fedhex binary: build it (cargo build --release --bins) or set FEDHEX_BIN_DIR")


FEDHEX = str(_bin_dir() / "fedhex")


def run_cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([FEDHEX, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"fedhex {' '.join(args)} failed:\n{out.stderr}"
    return out


CFG = """
[data]
path = "grid.npz"
features = ["x", "y"]
labels = ["mu_x", "mu_y"]
[network]
n_blocks = 2
hidden = [16, 16]
[training]
epochs = 2
batch_size = 128
device = "cpu"
seed = 3
[outputs]
run_dir = "run"
"""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fedhex")
    run_cli(["gen", "--points", "3", "-n", "400", "--cov", "full", "--out", "grid.npz"], d)
    (d / "run.toml").write_text(CFG)
    run_cli(["train", "--config", "run.toml"], d)
    return d


@pytest.fixture(scope="session")
def model(workdir):
    return fedhex.load(str(workdir / "run" / "model"))


def test_model_describes_itself(model, workdir):
    assert model.features == ["x", "y"]
    assert model.labels == ["mu_x", "mu_y"]
    assert model.device == "cpu"
    assert model.acceptance == []
    assert len(model.label_ranges) == 2 and all(lo < hi for lo, hi in model.label_ranges)
    tl = model.training_labels
    assert tl is not None and len(tl) >= 5 and all(len(p) == 2 for p in tl)
    recorded = json.loads((workdir / "run" / "model" / "model.json").read_text())["training"]["training_labels"]
    assert tl == recorded
    text = model.description()
    assert "mu_x" in text and "x, y" in text and "2 epochs" in text, text
    assert "fedhex.Model(" in repr(model)


def _cli_sample(workdir, labels, n, extra, name):
    args = ["sample", "--model", "run/model", "-n", str(n), "--device", "cpu", "--out", name]
    for lab in labels:
        args += ["--label", ",".join(str(v) for v in lab)]
    run_cli(args + extra, workdir)
    z = np.load(workdir / name)
    return z["samples"], z["labels"]


@pytest.mark.parametrize("seed,batch", [(7, 256), (123, 100_000)])
def test_sample_is_byte_identical_to_cli(model, workdir, seed, batch):
    labels = [[0.25, 0.75], [0.6, 0.4]]
    cli_x, cli_c = _cli_sample(workdir, labels, 700, ["--seed", str(seed), "--batch", str(batch)], f"cli_{seed}.npz")
    x, c = model.sample(labels, 700, seed=seed, batch=batch)
    assert x.dtype == np.float32 and c.dtype == np.float32
    assert x.shape == (1400, 2) and c.shape == (1400, 2)
    assert x.tobytes() == cli_x.astype(np.float32).tobytes()
    assert c.tobytes() == cli_c.astype(np.float32).tobytes()


@pytest.fixture(scope="session")
def cut_model(workdir):
    """A model whose training data had the acceptance cut x > 0.3 (declared in the config)."""
    z = np.load(workdir / "grid.npz")
    keep = z["samples"][:, 0] > 0.3
    np.savez(workdir / "grid_cut.npz", samples=z["samples"][keep], labels=z["labels"][keep])
    cfg = CFG.replace('path = "grid.npz"', 'path = "grid_cut.npz"\nacceptance = ["x > 0.3"]')
    (workdir / "cut.toml").write_text(cfg.replace('run_dir = "run"', 'run_dir = "run_cut"'))
    run_cli(["train", "--config", "cut.toml"], workdir)
    return fedhex.load(str(workdir / "run_cut" / "model"))


def test_sample_applies_acceptance_as_the_cli(cut_model, workdir):
    assert cut_model.acceptance == ["0.3 < x < inf"]
    args = ["sample", "--model", "run_cut/model", "--label", "0.6,0.5", "-n", "800", "--seed", "5"]
    run_cli(args + ["--batch", "300", "--device", "cpu", "--out", "cut.npz"], workdir)
    cli = np.load(workdir / "cut.npz")["samples"]
    x, _ = cut_model.sample([0.6, 0.5], 800, seed=5, batch=300)
    assert x.shape == (800, 2) and np.all(x[:, 0] > 0.3)
    assert x.tobytes() == cli.astype(np.float32).tobytes()


def test_sample_defaults_are_the_cli_defaults(model, workdir):
    cli_x, _ = _cli_sample(workdir, [[0.4, 0.5]], 300, [], "cli_default.npz")
    x, _ = model.sample([0.4, 0.5], 300)
    assert x.tobytes() == cli_x.astype(np.float32).tobytes()


def test_sample_label_forms(model):
    one, c1 = model.sample([0.3, 0.3], 50, seed=5)
    rows, c2 = model.sample(np.array([[0.3, 0.3]]), 50, seed=5)
    assert one.tobytes() == rows.tobytes() and c1.tobytes() == c2.tobytes()
    x, c = model.sample([[0.3, 0.3], [0.7, 0.2], [0.5, 0.5]], 40, seed=5)
    assert x.shape == (120, 2)
    assert np.all(c[:40] == np.float32(0.3)) and np.all(c[80:] == np.float32(0.5))
    other, _ = model.sample([0.3, 0.3], 50, seed=6)
    assert other.tobytes() != one.tobytes()
    with pytest.warns(UserWarning, match="extrapolation"):
        model.sample([1.1, 0.5], 10)


def test_log_prob_matches_cli_fit_nll(model, workdir):
    x, c = model.sample([0.45, 0.55], 1000, seed=11)
    np.savez(workdir / "obs.npz", samples=x)
    args = ["fit", "--model", "run/model", "--events", "obs.npz", "--pool", "--iterations", "20", "--out", "fitout"]
    run_cli(args, workdir)
    cli = json.loads((workdir / "fitout" / "fit.json").read_text())
    logp = model.log_prob(x, cli["best"])
    assert logp.shape == (1000,) and logp.dtype == np.float64
    assert np.all(np.isfinite(logp))
    assert -logp.sum() == pytest.approx(cli["nll"], rel=1e-5, abs=1e-3)
    # The same fit from Python: the library's fit_label with the CLI's options.
    py = fedhex.fit(model, x, iterations=20)
    assert py["n_events"] == cli["n_events"] == 1000
    np.testing.assert_allclose(py["best"], cli["best"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(py["uncertainty"], cli["uncertainty"], rtol=1e-5)
    assert py["nll"] == pytest.approx(cli["nll"], rel=1e-7)
    assert set(py) == set(cli)
    with_truth = fedhex.fit(model, x[:200], truth=[0.45, 0.55], iterations=20)
    assert with_truth["pulls"] is not None and len(with_truth["pulls"]) == 2


def test_log_prob_is_a_normalised_density(model):
    lab = [0.5, 0.5]
    x, _ = model.sample(lab, 4000, seed=2)
    lo, hi = x.min(0), x.max(0)
    pad = 0.6 * (hi - lo)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 301)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 301)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    p = np.exp(model.log_prob(pts, lab)).reshape(xx.shape)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2.0 / older
    integral = trapezoid(trapezoid(p, gy, axis=1), gx)
    print(f"integral of exp(log_prob) over the grid: {integral:.4f}")
    assert integral == pytest.approx(1.0, abs=0.03)


@pytest.fixture(scope="session")
def ensemble(workdir):
    """The fixture's model and one trained alike with another seed, combined by `fedhex ensemble`."""
    (workdir / "seed4.toml").write_text(CFG.replace("seed = 3", "seed = 4").replace('run_dir = "run"', 'run_dir = "run4"'))
    run_cli(["train", "--config", "seed4.toml"], workdir)
    run_cli(["ensemble", "--out", "ens", "run/model", "run4/model"], workdir)
    return fedhex.load(str(workdir / "ens"))


def test_an_ensemble_is_the_mixture_of_its_flows(ensemble, model, workdir):
    other = fedhex.load(str(workdir / "run4" / "model"))
    assert model.members == 1 and ensemble.members == 2
    assert "ensemble of 2 flows" in ensemble.description()
    lab = [0.4, 0.6]
    x, _ = ensemble.sample(lab, 3000, seed=9)
    # Byte for byte the command line's events.
    run_cli(["sample", "--model", "ens", "--label", "0.4,0.6", "-n", "3000", "--seed", "9", "--out", "ens.npz"], workdir)
    assert x.tobytes() == np.load(workdir / "ens.npz")["samples"].astype(np.float32).tobytes()
    # The density is the mean of the two flows' densities.
    want = np.logaddexp(model.log_prob(x, lab), other.log_prob(x, lab)) - np.log(2.0)
    np.testing.assert_allclose(ensemble.log_prob(x, lab), want, rtol=1e-5, atol=1e-5)


def test_log_prob_inputs(model):
    x, c = model.sample([0.2, 0.8], 100, seed=4)
    broadcast = model.log_prob(x, [0.2, 0.8])
    full = model.log_prob(x, c)
    assert broadcast.tobytes() == full.tobytes()
    assert np.array_equal(model.log_prob(x.tolist(), (0.2, 0.8)), full)
    assert np.array_equal(model.log_prob(x.astype(np.float64), c.astype(np.float64)), full)

    class HasArray:
        def __array__(self, dtype=None, copy=None):
            return x

    assert np.array_equal(model.log_prob(HasArray(), [0.2, 0.8]), full)
    # Events at different labels in one call: each row its own label.
    c2 = c.copy()
    c2[50:] = [0.7, 0.3]
    mixed = model.log_prob(x, c2)
    assert np.array_equal(mixed[:50], full[:50])
    assert np.array_equal(mixed[50:], model.log_prob(x[50:], [0.7, 0.3]))
    assert model.log_prob(np.zeros((0, 2)), [0.2, 0.8]).shape == (0,)


@pytest.mark.parametrize(
    "x,labels,needle",
    [
        (np.zeros((5, 3)), [0.5, 0.5], r"x: expected shape \[N, 2\].*got \[5, 3\]"),
        (np.zeros(4), [0.5, 0.5], r"x: expected shape \[N, 2\].*got \[4\]"),
        (np.zeros((5, 2)), [0.5], r"labels: expected shape \[2\].*\[5, 2\].*got \[1\]"),
        (np.zeros((5, 2)), np.zeros((4, 2)), r"labels: .*\[5, 2\].*got \[4, 2\]"),
        (np.zeros((5, 2)), np.zeros((5, 2, 1)), r"labels: .*got \[5, 2, 1\]"),
        (np.zeros((5, 2)), "abc", r"labels: not convertible"),
    ],
)
def test_log_prob_bad_shapes(model, x, labels, needle):
    with pytest.raises(ValueError, match=needle):
        model.log_prob(x, labels)


def test_bad_inputs_raise(model, workdir, tmp_path):
    with pytest.raises(ValueError, match=r"labels: expected shape \[2\] \(one label point\) or \[K, 2\]"):
        model.sample([[0.5, 0.5, 0.5]], 10)
    with pytest.raises(ValueError, match="n must be at least 1"):
        model.sample([0.5, 0.5], 0)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        model.sample([0.5, 0.5], 10, batch=0)
    with pytest.raises(ValueError, match="non-finite"):
        model.sample([np.nan, 0.5], 10)
    with pytest.raises(OverflowError):
        model.sample([0.5, 0.5], -1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fedhex.load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="device 'tpu'"):
        fedhex.load(str(workdir / "run" / "model"), device="tpu")
    with pytest.raises(ValueError, match="events: expected shape"):
        fedhex.fit(model, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="truth: expected 2 values"):
        fedhex.fit(model, np.zeros((10, 2)), truth=[0.5])
    # A corrupt weights file: the library's digest check, as an exception.
    bad = tmp_path / "corrupt"
    shutil.copytree(workdir / "run" / "model", bad)
    w = bytearray((bad / "model.safetensors").read_bytes())
    w[len(w) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(w))
    with pytest.raises(fedhex.FedhexError, match="digest differs"):
        fedhex.load(str(bad))
    # A truncated model.json.
    shutil.copytree(workdir / "run" / "model", tmp_path / "trunc")
    j = tmp_path / "trunc" / "model.json"
    j.write_text(j.read_text()[:100])
    with pytest.raises(fedhex.FedhexError, match="not a valid model description"):
        fedhex.load(str(tmp_path / "trunc"))
    # A model directory without weights.
    shutil.copytree(workdir / "run" / "model", tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        fedhex.load(str(tmp_path / "noweights"))
    assert issubclass(fedhex.FedhexError, Exception)


def test_threads_give_the_sequential_results(model):
    jobs = [([0.1 * (i % 9) + 0.05, 0.5], 500, 100 + i) for i in range(12)]
    sequential = [model.sample(lab, n, seed=s) for lab, n, s in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda j: model.sample(j[0], j[1], seed=j[2]), jobs))
    for (a, la), (b, lb) in zip(sequential, concurrent):
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    # log_prob from threads too.
    x, c = sequential[0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        lps = list(pool.map(lambda _: model.log_prob(x, c), range(8)))
    assert all(lp.tobytes() == lps[0].tobytes() for lp in lps)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_repeated_load_and_sample_keeps_memory_bounded(workdir):
    path = str(workdir / "run" / "model")

    def once():
        m = fedhex.load(path)
        x, c = m.sample([[0.3, 0.6], [0.6, 0.3]], 2000, seed=9)
        m.log_prob(x, c)
        del m

    for _ in range(5):
        once()
    before = _rss_mib()
    for _ in range(50):
        once()
    after = _rss_mib()
    print(f"RSS before {before:.1f} MiB, after 50 load/sample/log_prob: {after:.1f} MiB (+{after - before:.1f})")
    assert after - before < 64, f"RSS grew by {after - before:.1f} MiB over 50 loads"


@pytest.mark.parametrize("order", ["torch_first", "torch_after", "no_torch"])
def test_import_order_with_torch(workdir, order):
    imports = {
        "torch_first": "import torch\nimport fedhex\n",
        "torch_after": "import fedhex\nimport torch\n",
        "no_torch": "import fedhex\n",
    }[order]
    code = imports + textwrap.dedent(
        f"""
        import sys
        m = fedhex.load({str(workdir / "run" / "model")!r})
        x, c = m.sample([0.5, 0.5], 100, seed=3)
        assert x.shape == (100, 2)
        if "torch" in sys.modules:
            t = sys.modules["torch"]
            assert t.from_numpy(x).shape == (100, 2)
            assert t.__version__.split("+")[0] == fedhex.libtorch_version().split("+")[0], (t.__version__, fedhex.libtorch_version())
        with open("/proc/self/maps") as f:
            libs = {{line.split()[-1] for line in f if "libtorch_cpu.so" in line}}
        assert len(libs) == 1, libs  # one libtorch in the process
        print("ok", fedhex.libtorch_version())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_to_uproot_round_trip(model, tmp_path):
    uproot = pytest.importorskip("uproot")
    x, c = model.sample([0.35, 0.65], 300, seed=8)
    cols = fedhex.to_uproot(x, c, model.features, model.labels)
    assert list(cols) == ["x", "y", "mu_x", "mu_y"]
    with uproot.recreate(tmp_path / "gen.root") as f:
        f["Events"] = cols
    with uproot.open(tmp_path / "gen.root") as f:
        back = f["Events"].arrays(library="np")
    assert np.array_equal(back["x"], x[:, 0]) and np.array_equal(back["mu_y"], c[:, 1])
    with pytest.raises(ValueError, match="samples: expected shape"):
        fedhex.to_uproot(x, c, ["x"], model.labels)


def test_docs_example_runs(workdir):
    doc = (REPO / "docs" / "python.md").read_text()
    blocks = re.findall(r"<!-- example -->\s*```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 1, "docs/python.md must mark its example with <!-- example -->"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=workdir, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (workdir / "generated.root").exists()
    print(out.stdout)
