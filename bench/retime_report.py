"""Every timing of every operating point of a run folder, side by side: the run's own and each ``--retime`` pass.

Issue #27's checks read from it: the same saved index re-timed twice on an idle machine (p50 within 10%?) and two
methods of one layout at the same nprobe (same index bytes, same lists: p50 within 10%?). Prints markdown tables;
reads ``DIR/results.jsonl`` only.

Usage::

    .venv/bin/python bench/retime_report.py reports/latency-check [--compare distill-vq,jpq-ivf]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.records import read_records  # noqa: E402


def timings(rec: dict) -> list[dict]:
    """The record's timings, oldest first: each ``latency_history`` entry, then the current ``latency``."""
    return [h["latency"] for h in rec.get("latency_history", [])] + [rec["latency"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--compare", default="distill-vq,jpq-ivf",
                        help="two methods of one layout whose latest p50s are compared per nprobe")
    args = parser.parse_args()
    records, problems = read_records(args.run_dir / "results.jsonl")
    if problems:
        raise SystemExit("\n".join(problems))
    ok = [r for r in records if r["status"] == "ok" and r.get("latency")]
    width = max(len(timings(r)) for r in ok)
    print("| method | factory | nprobe | " + " | ".join(f"p50 ms #{i + 1}" for i in range(width)) +
          " | last two: ratio | under load |")
    print("|---|---|---|" + "---|" * width + "---|---|")
    for r in sorted(ok, key=lambda r: (r["method"], r["nprobe"] or 0)):
        ts = timings(r)
        p50 = [t["p50_ms"] for t in ts]
        ratio = max(p50[-2:]) / min(p50[-2:]) if len(p50) >= 2 else float("nan")
        cells = [f"{p:.4f}" for p in p50] + [""] * (width - len(p50))
        load = ", ".join("yes" if t.get("under_load") else "no" if "under_load" in t else "?" for t in ts)
        print(f"| {r['method']} | {r['index'].get('factory', '')} | {r['nprobe'] if r['nprobe'] is not None else '-'}"
              f" | {' | '.join(cells)} | {ratio:.3f} | {load} |")
    a, b = args.compare.split(",")
    latest = {(r["method"], r["nprobe"]): r for r in ok}
    pairs = sorted(n for (m, n) in latest if m == a and (b, n) in latest)
    if pairs:
        print(f"\n| nprobe | {a} p50 ms | {b} p50 ms | ratio | same factory |\n|---|---|---|---|---|")
        for n in pairs:
            ra, rb = latest[(a, n)], latest[(b, n)]
            pa, pb = ra["latency"]["p50_ms"], rb["latency"]["p50_ms"]
            same = ra["index"].get("factory") == rb["index"].get("factory")
            print(f"| {n} | {pa:.4f} | {pb:.4f} | {max(pa, pb) / min(pa, pb):.3f} | {same} |")
    print("\n" + json.dumps({"cpu": sorted({(r.get('retimed') or r['provenance']).get('cpu') for r in ok})}))


if __name__ == "__main__":
    main()
