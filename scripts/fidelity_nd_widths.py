#!/usr/bin/env python3
"""Widths from large samples: the worst |Δσ|/σ per feature over the
evaluation points, generated events against a large simulated sample.

At 20k against 20k events the width of a heavy-tailed feature (Δφ: kurtosis
~30) has a standard error of ~2.7 % per point between two samples, so the
worst of 12 points is ~5.4 % even for a perfect model (docs/fidelity.md,
"Ensembles"). With 200k simulated and 100k generated events per point that
noise is ~3x smaller; an independent simulated sample of the generated size
is printed beside as the floor.

usage: fidelity_nd_widths.py MODEL_DIR BIG_REF.root GENERATED.npz [--floor SIM2.root]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import uproot


def read_root(path, feats, labs):
    t = uproot.open(path)["Events"].arrays(feats + labs, library="np")
    return np.stack([t[k] for k in feats], 1), np.stack([t[k] for k in labs], 1)


def worst_widths(ref_x, ref_l, x, lab):
    points = np.unique(ref_l, axis=0)
    worst = np.zeros(ref_x.shape[1])
    for p in points:
        mr = np.all(np.isclose(ref_l, p, rtol=1e-6), 1)
        mg = np.all(np.isclose(lab, p, rtol=1e-6), 1)
        if not mg.any():
            raise SystemExit(f"no generated events at label {tuple(p)}")
        worst = np.maximum(worst, np.abs(x[mg].std(0) / ref_x[mr].std(0) - 1))
    return worst, len(points), int(mg.sum()), int(mr.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="the model directory (feature and label names from its model.json)")
    ap.add_argument("ref")
    ap.add_argument("generated")
    ap.add_argument("--floor", help="an independent simulated sample (ROOT) of about the generated size")
    a = ap.parse_args()
    z = np.load(a.generated)
    meta = json.loads((Path(a.model) / "model.json").read_text())
    feats = [d["name"] for d in meta["features"]["dims"]]
    labs = [d["name"] for d in meta["labels"]["dims"]]
    if len(feats) != z["samples"].shape[1]:
        raise SystemExit(f"{a.ref}: {len(feats)} features, {a.generated}: {z['samples'].shape[1]}")
    rx, rl = read_root(a.ref, feats, labs)
    w, k, ng, nr = worst_widths(rx, rl, z["samples"], z["labels"])
    fl = None
    if a.floor:
        fx, flab = read_root(a.floor, feats, labs)
        fl, *_ = worst_widths(rx, rl, fx, flab)
    print(f"widths from large samples ({ng} generated vs {nr} simulated events at each of {k} points; "
          "worst |dsd|/sd over the points, the floor beside):")
    for i, f in enumerate(feats):
        verdict = "PASS" if w[i] <= 0.05 else "FAIL"
        floor = f" (floor {100 * fl[i]:.2f}%)" if fl is not None else ""
        print(f"{verdict}  {f:8} |dsd|/sd {100 * w[i]:.2f}% <= 5.00%{floor}")


if __name__ == "__main__":
    main()
