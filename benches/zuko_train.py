"""Training time of zuko's NSF and MAF on the phi-omega-nd grid that `make fidelity-nd` trains FEDHEX on.

Usage: python benches/zuko_train.py --files DIR [--epochs 8] [--batch 1024] [--threads 2]
       [--kinds nsf,maf] [--out zuko.json]

Reads every ROOT file in DIR (tree `Events`, the flat branches written by
`fedhex gen --model phi-omega-nd`) with uproot and applies the preprocessing of
examples/phiomega_nd.toml: m_phi, m_omega as ln(reco/true mass); pt_g, pt_w as
ln(p_T/M_phi); eta as is; dphi as ln(dphi / (3.1416 - dphi)); labels ln. Then
standardises every column (mean 0, variance 1), keeps 90 % of the events
(examples/phiomega_nd.toml's validation_fraction = 0.1) and trains, for the
same epochs and batch size as FEDHEX:

  NSF: zuko.flows.NSF(7, 3, transforms=5, hidden_features=[128, 128])
  MAF: zuko.flows.MAF(7, 3, transforms=10, hidden_features=[128])

with Adam, the learning rate 1e-3 -> 1e-4 on the cosine schedule with a
0.5-epoch warm-up (as the config). Only the training loop is timed (data
loading and preprocessing are not). The plain maximum likelihood is used: the
acceptance-truncation term FEDHEX adds for its declared cuts is not, so zuko
does slightly less work per step. Prints one line per flow and writes JSON.
"""
import argparse
import glob
import json
import math
import os
import time

import numpy as np
import torch
import uproot
import zuko

FEATURES = ["m_phi", "m_omega", "pt_g", "pt_w", "eta_g", "eta_w", "dphi"]
LABELS = ["M_phi", "M_omega", "W_phi"]


def load(directory):
    files = sorted(glob.glob(os.path.join(directory, "*.root")))
    if not files:
        raise SystemExit(f"{directory}: no .root files")
    cols = {k: [] for k in FEATURES + LABELS}
    for f in files:
        arrays = uproot.open(f)["Events"].arrays(FEATURES + LABELS, library="np")
        for k in cols:
            cols[k].append(arrays[k].astype(np.float64))
    c = {k: np.concatenate(v) for k, v in cols.items()}
    x = np.stack(
        [
            np.log(c["m_phi"] / c["M_phi"]),
            np.log(c["m_omega"] / c["M_omega"]),
            np.log(c["pt_g"] / c["M_phi"]),
            np.log(c["pt_w"] / c["M_phi"]),
            c["eta_g"],
            c["eta_w"],
            np.log(c["dphi"] / (3.1416 - c["dphi"])),
        ],
        axis=1,
    )
    y = np.log(np.stack([c[k] for k in LABELS], axis=1))
    return x, y, len(files)


def standardise(a):
    return (a - a.mean(axis=0)) / a.std(axis=0)


def lr_at(step, steps, steps_per_epoch, lr0=1e-3, lr1=1e-4, warmup_epochs=0.5):
    warm = warmup_epochs * steps_per_epoch
    if step < warm:
        return lr0 * (step + 1) / warm
    t = (step - warm) / max(1.0, steps - warm)
    return lr1 + 0.5 * (lr0 - lr1) * (1.0 + math.cos(math.pi * t))


def train(kind, x, c, xv, cv, epochs, batch, seed):
    torch.manual_seed(seed)
    if kind == "nsf":
        flow = zuko.flows.NSF(features=x.shape[1], context=c.shape[1], transforms=5, hidden_features=[128, 128])
    else:
        flow = zuko.flows.MAF(features=x.shape[1], context=c.shape[1], transforms=10, hidden_features=[128])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    n = x.shape[0]
    steps_per_epoch = n // batch
    steps = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step, loss = 0, float("nan")
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, steps_per_epoch)
            loss_t = -flow(c[idx]).log_prob(x[idx]).mean()
            opt.zero_grad()
            loss_t.backward()
            opt.step()
            step += 1
        loss = float(loss_t.detach())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        val = float(-flow(cv).log_prob(xv).mean())
    return {"train_s": seconds, "steps": steps, "last_batch_nll": loss, "validation_nll": val}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", required=True, help="directory of the grid's ROOT files")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="nsf,maf")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y, n_files = load(a.files)
    x, y = standardise(x), standardise(y)
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(x))
    n_val = len(x) // 10
    val, tr = perm[:n_val], perm[n_val:]
    t = lambda a_: torch.from_numpy(a_.astype(np.float32))
    xt, ct, xv, cv = t(x[tr]), t(y[tr]), t(x[val]), t(y[val])
    result = {
        "zuko": zuko.__version__,
        "torch": torch.__version__,
        "files": n_files,
        "train_events": int(len(tr)),
        "epochs": a.epochs,
        "batch": a.batch,
        "threads": a.threads,
    }
    for kind in a.kinds.split(","):
        r = train(kind, xt, ct, xv, cv, a.epochs, a.batch, a.seed)
        result[kind] = r
        print(
            f"zuko {kind.upper()}: {r['train_s']:.1f} s for {a.epochs} epoch(s) of {len(tr)} events "
            f"({r['steps']} steps), validation NLL {r['validation_nll']:.3f} (standardised space)",
            flush=True,
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
