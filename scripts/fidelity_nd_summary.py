"""Per-label, per-feature summary of a `fedhex analyze` report.json of the N-dimensional benchmark.

Usage: python scripts/fidelity_nd_summary.py REPORT_JSON [--train-seconds S] [--ranks R]
       [--epochs E] [--history RUN/history.csv] [--zuko ZUKO_JSON]

Per label and feature: |Δμ|/μ for mass- and p_T-like features (positive,
scale-like), |Δμ|/σ for features centred near zero or pinned at an edge (η,
and Δφ, whose mean sits near π so that |Δμ|/μ would hide shifts of a large
fraction of its width), |Δσ|/σ for every feature, the median χ²/ndf over the
features and the classifier AUC, each beside the statistical floor
(simulated vs. independent simulated sample). Then the targets as PASS/FAIL
lines: |Δμ|/μ ≤ 1 %, |Δμ|/σ ≤ 0.05, |Δσ|/σ ≤ 5 % (every label, per feature),
median χ²/ndf ≤ 1.3 (over all labels and features), AUC median ≤ 0.515 and
none above 0.53; and FEDHEX's training time beside zuko's (benches/zuko_train.py):
the wall time of the whole `mpirun` and, from the run's history.csv, the time
in the epochs (the like-for-like number: zuko's is its training loop only).
"""
import argparse
import csv
import json
import math
import statistics

# Features whose mean is compared relative to itself; every other one in units of its std.
SCALE_LIKE = {"m_phi", "m_omega", "pt_g", "pt_w"}
TARGETS = {"mean_rel": 0.01, "mean_in_std": 0.05, "std_rel": 0.05, "chi2": 1.3, "auc_median": 0.515, "auc_max": 0.53}


def est(rel, key):
    v = rel.get(key)
    return abs(v["value"]) if isinstance(v, dict) and v.get("value") is not None else math.nan


def per_feature(metrics):
    """{feature: (|Δμ| in its unit, |Δσ|/σ, χ²/ndf)} and the AUC of one sample comparison."""
    out = {}
    for f in metrics["features"]:
        name, rel = f["feature"], f["relative"]
        mean = est(rel, "mean_rel_error") if name in SCALE_LIKE else est(rel, "mean_shift_in_std")
        out[name] = (mean, est(rel, "std_rel_error"), f["chi2"]["chi2_per_ndf"])
    clf = metrics.get("classifier") or {}
    return out, clf.get("auc", math.nan)


def fmt_mean(name, v):
    if math.isnan(v):
        return "n/a"
    return f"{100 * v:.2f}%" if name in SCALE_LIKE else f"{v:.3f}s"


def worst(values):
    vals = [v for v in values if not math.isnan(v)]
    return max(vals) if len(vals) == len(values) and vals else math.nan


def check(ok_value, limit, what, floor=None, fmt=lambda v: f"{v:.3f}"):
    ok = not math.isnan(ok_value) and ok_value <= limit
    fl = f" (floor {fmt(floor)})" if floor is not None and not math.isnan(floor) else ""
    print(f"{'PASS' if ok else 'FAIL'}  {what} {fmt(ok_value)} <= {fmt(limit)}{fl}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--train-seconds", type=float)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--history", nargs="+", help="history.csv of each trained flow (summed)")
    ap.add_argument("--members", type=int, default=1, help="flows trained (an ensemble when > 1)")
    ap.add_argument("--zuko")
    a = ap.parse_args()
    report = json.load(open(a.report))
    labels = report["labels"]
    if not labels:
        raise SystemExit(f"{a.report}: no labels")
    names = [f["feature"] for f in labels[0]["metrics"]["features"]]
    flow, floor = [], []
    head = "".join(f"{n:>9}" for n in names)
    for lab in labels:
        m, auc = per_feature(lab["metrics"])
        f_ = per_feature(lab["floor"]) if isinstance(lab.get("floor"), dict) else None
        flow.append((m, auc))
        if f_:
            floor.append(f_)
        label = ", ".join(f"{v:g}" for v in lab["label"])
        print(f"label ({label})  (|dmu|: % of the mean, or 's' = in units of the std)")
        print(f"  {'':12}{head}{'chi2/ndf':>10}{'AUC':>7}")
        rows = [("|dmu|", m, auc, 0), ("|dsd|/sd", m, auc, 1)]
        for title, d, au, k in rows:
            cells = "".join(
                f"{fmt_mean(n, d[n][0]) if k == 0 else f'{100 * d[n][1]:.2f}%':>9}" for n in names
            )
            tail = f"{statistics.median(d[n][2] for n in names):>10.2f}{au:>7.3f}" if k == 0 else ""
            print(f"  {title:<12}{cells}{tail}")
            if f_:
                fd, fa = f_
                cells = "".join(
                    f"{fmt_mean(n, fd[n][0]) if k == 0 else f'{100 * fd[n][1]:.2f}%':>9}" for n in names
                )
                tail = f"{statistics.median(fd[n][2] for n in names):>10.2f}{fa:>7.3f}" if k == 0 else ""
                print(f"  {'  floor':<12}{cells}{tail}")
    print()
    print("targets (worst over the labels; the statistical floor beside):")
    ok = True
    for n in names:
        wm = worst([m[n][0] for m, _ in flow])
        fm = worst([m[n][0] for m, _ in floor]) if floor else None
        if n in SCALE_LIKE:
            ok &= check(wm, TARGETS["mean_rel"], f"{n:8} |dmu|/mu", fm, lambda v: f"{100 * v:.2f}%")
        else:
            ok &= check(wm, TARGETS["mean_in_std"], f"{n:8} |dmu|/sd", fm)
    for n in names:
        ws = worst([m[n][1] for m, _ in flow])
        fs = worst([m[n][1] for m, _ in floor]) if floor else None
        ok &= check(ws, TARGETS["std_rel"], f"{n:8} |dsd|/sd", fs, lambda v: f"{100 * v:.2f}%")
    chi = statistics.median(m[n][2] for m, _ in flow for n in names)
    fchi = statistics.median(m[n][2] for m, _ in floor for n in names) if floor else None
    ok &= check(chi, TARGETS["chi2"], "median chi2/ndf (all labels and features)", fchi, lambda v: f"{v:.2f}")
    aucs = [au for _, au in flow]
    faucs = [au for _, au in floor]
    ok &= check(statistics.median(aucs), TARGETS["auc_median"], "median AUC", statistics.median(faucs) if faucs else None)
    ok &= check(max(aucs), TARGETS["auc_max"], "worst AUC", max(faucs) if faucs else None)
    print(f"=> {'all targets met' if ok else 'targets NOT met'} at {len(labels)} evaluation points")
    if a.train_seconds is not None:
        ep = f", {a.epochs} epochs" if a.epochs else ""
        ens = f", {a.members} flows trained one after the other (an ensemble)" if a.members > 1 else ""
        line = f"training time: fedhex {a.train_seconds:.1f} s wall ({a.ranks} MPI ranks x 1 thread{ep}{ens}"
        fedhex_s = a.train_seconds
        if a.history:
            fedhex_s = 0.0
            for h in a.history:
                with open(h) as f:
                    fedhex_s += sum(float(r["seconds"]) for r in csv.DictReader(f))
            line += f"; {fedhex_s:.1f} s in the epochs"
        line += ")"
        if a.zuko:
            z = json.load(open(a.zuko))
            # Per epoch when zuko trained another number of epochs (ZUKO_EPOCHS).
            scale = a.epochs / z["epochs"] if a.epochs and z.get("epochs") else 1.0
            per = " per epoch" if scale != 1.0 else ""
            for kind in ("nsf", "maf"):
                if kind in z:
                    s = z[kind]["train_s"]
                    line += f"; zuko {kind.upper()} {s:.1f} s (fedhex/zuko{per} {fedhex_s / (s * scale):.2f})"
            line += f" [zuko {z['zuko']}: {z['threads']} threads, {z['epochs']} epochs, batch {z['batch']}, training loop only]"
        print(line)


if __name__ == "__main__":
    main()
