"""Events per second of `Model.sample` beside `fedhex sample` (issue #21).

    python python/bench_sample.py RUN/model [--label 0.55,0.45] [-n 200000] [--repeat 3]

The CLI is timed end to end (process start, model load, generation, writing
an .npz); the Python number is generation alone on an already loaded model,
and, for comparison, load + generation. Same seed and batch, so both produce
the same events (checked). The binary is $FEDHEX_BIN_DIR/fedhex, else
$CARGO_TARGET_DIR/release/fedhex, else target/release/fedhex.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as a script, python/ would come first on sys.path and its fedhex/ (the
# sources, without the built extension) would shadow the installed package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import fedhex  # noqa: E402


def fedhex_bin() -> str:
    repo = Path(__file__).resolve().parents[1]
    for d in (os.environ.get("FEDHEX_BIN_DIR"),
              os.environ.get("CARGO_TARGET_DIR") and os.path.join(os.environ["CARGO_TARGET_DIR"], "release"),
              str(repo / "target" / "release")):
        if d and (Path(d) / "fedhex").exists():
            return str(Path(d) / "fedhex")
    raise SystemExit("no fedhex binary: build it or set FEDHEX_BIN_DIR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--label", default=None, help="comma separated; default: the middle of the training range")
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    m = fedhex.load(a.model, device=a.device)
    label = ([float(v) for v in a.label.split(",")] if a.label
             else [0.5 * (lo + hi) for lo, hi in m.label_ranges])
    seed, batch = 1, fedhex.DEFAULT_BATCH

    py_best, load_best = float("inf"), float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        x, _ = m.sample(label, a.n, seed=seed, batch=batch)
        py_best = min(py_best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        fedhex.load(a.model, device=a.device).sample(label, a.n, seed=seed, batch=batch)
        load_best = min(load_best, time.perf_counter() - t0)

    exe, cli_best = fedhex_bin(), float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gen.npz")
        args = [exe, "sample", "--model", a.model, "--label", ",".join(map(str, label)), "-n", str(a.n),
                "--seed", str(seed), "--batch", str(batch), "--device", a.device, "--out", out]
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            cli_best = min(cli_best, time.perf_counter() - t0)
        same = np.load(out)["samples"].tobytes() == x.tobytes()

    print(f"{a.n} events at label {label} ({a.device}, batch {batch}, best of {a.repeat}):")
    print(f"  python Model.sample           {a.n / py_best:12.0f} events/s  ({py_best:.3f} s)")
    print(f"  python load + Model.sample    {a.n / load_best:12.0f} events/s  ({load_best:.3f} s)")
    print(f"  fedhex sample (CLI, to .npz)  {a.n / cli_best:12.0f} events/s  ({cli_best:.3f} s)")
    print(f"  same events: {same}")


if __name__ == "__main__":
    main()
