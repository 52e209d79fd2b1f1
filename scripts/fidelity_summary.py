"""Per-label summary of a `fedhex analyze` report.json against the issue #8 goals.

Usage: python scripts/fidelity_summary.py REPORT_JSON
"""
import json
import statistics
import sys


def worst(metrics):
    fs = metrics["features"]
    return (
        max(abs(f["relative"]["mean_rel_error"]["value"]) for f in fs),
        max(abs(f["relative"]["std_rel_error"]["value"]) for f in fs),
        max(f["chi2"]["chi2_per_ndf"] for f in fs),
        metrics["classifier"]["auc"],
    )


def main():
    report = json.load(open(sys.argv[1]))
    rows, floors = [], []
    print(f"{'label':>18} {'|dmu|/mu':>9} {'|dsd|/sd':>9} {'chi2/ndf':>9} {'AUC':>6} | floor: {'|dsd|/sd':>8} {'chi2/ndf':>8} {'AUC':>6}")
    for lab in report["labels"]:
        w = worst(lab["metrics"])
        rows.append(w)
        f = worst(lab["floor"]) if isinstance(lab.get("floor"), dict) else None
        if f:
            floors.append(f)
        fl = f"{100 * f[1]:7.2f}% {f[2]:8.2f} {f[3]:6.3f}" if f else "      n/a"
        print(f"{str(lab['label']):>18} {100 * w[0]:8.2f}% {100 * w[1]:8.2f}% {w[2]:9.2f} {w[3]:6.3f} |        {fl}")
    med_auc = statistics.median(r[3] for r in rows)
    ok = (
        max(r[0] for r in rows) <= 0.01
        and max(r[1] for r in rows) <= 0.05
        and med_auc <= 0.52
        and max(r[3] for r in rows) <= 0.55
    )
    print(
        f"worst |dmu|/mu {100 * max(r[0] for r in rows):.2f}%, worst |dsd|/sd {100 * max(r[1] for r in rows):.2f}%, "
        f"median chi2/ndf {statistics.median(r[2] for r in rows):.2f}, median AUC {med_auc:.3f}, "
        f"worst AUC {max(r[3] for r in rows):.3f} -> goal {'MET' if ok else 'NOT met'}"
    )
    if floors:
        print(
            f"floor (simulated vs independent simulated): worst |dmu|/mu {100 * max(r[0] for r in floors):.2f}%, "
            f"worst |dsd|/sd {100 * max(r[1] for r in floors):.2f}%, median chi2/ndf "
            f"{statistics.median(r[2] for r in floors):.2f}, median AUC {statistics.median(r[3] for r in floors):.3f}, "
            f"worst AUC {max(r[3] for r in floors):.3f}"
        )


if __name__ == "__main__":
    main()
