"""Throughput of zuko's MAF (or NSF) for side-by-side comparison with `fedhex bench`.

Usage: python benches/zuko_bench.py --threads 1 --batch 1024 [--seconds 3] [--device cuda]
       [--kind maf|nsf] [--dim D] [--labels L] [--blocks K] [--hidden 128,128]
Prints one JSON line per batch size with the same fields as `fedhex bench --json`.
"""
import argparse
import json
import time

import torch
import zuko


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, events, seconds, device):
    fn()
    sync(device)
    start, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < seconds:
        fn()
        n += 1
    sync(device)
    return n * events / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--hidden", default="128")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--labels", type=int, default=None, help="labels (default: --dim, as fedhex bench)")
    ap.add_argument("--kind", choices=["maf", "nsf"], default="maf")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hidden = [int(h) for h in a.hidden.split(",")]
    n_labels = a.dim if a.labels is None else a.labels
    make = zuko.flows.MAF if a.kind == "maf" else zuko.flows.NSF
    flow = make(features=a.dim, context=n_labels, transforms=a.blocks, hidden_features=hidden).to(dev)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    for b in a.batch or [1024]:
        x, c = torch.randn(b, a.dim, device=dev), torch.randn(b, n_labels, device=dev)

        def train():
            loss = -flow(c).log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        def sample():
            with torch.no_grad():
                flow(c).sample()

        def logp():
            with torch.no_grad():
                flow(c).log_prob(x)

        print(json.dumps({
            "impl": f"zuko {zuko.__version__} {a.kind.upper()}",
            "dim": a.dim,
            "device": a.device,
            "threads": a.threads,
            "batch": b,
            "train_events_per_s": timed(train, b, a.seconds, dev),
            "sample_events_per_s": timed(sample, b, a.seconds, dev),
            "log_prob_events_per_s": timed(logp, b, a.seconds, dev),
        }), flush=True)


if __name__ == "__main__":
    main()
