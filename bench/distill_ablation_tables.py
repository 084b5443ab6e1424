"""The Distill-VQ paper's ablation tables (Xiao et al., SIGIR 2022: Tables 3-5 and the query sources), read from the
records of ``configs/debian-desc-distill-ablations.toml``: one row per setting, nDCG@10 / RR@10 at the exhaustive
(nprobe = nlist) and the pruned (nprobe = nlist/16) point, and the change against the defaults. Each setting changes
ONE thing against the ``distill-vq`` defaults; a setting with no record prints "not run".

Usage: ``.venv/bin/python bench/distill_ablation_tables.py [reports/debian-desc-distill-ablations] > tables.md``
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.records import read_records  # noqa: E402
from benchmark.registry import make_method  # noqa: E402

M = 16
DEFAULTS = ("distill-vq", {})
TABLES = {   # title -> [(row label, method, params changed against the method's defaults)]
    "Candidates (paper Table 3)": [
        ("in-batch top-1s + all teacher top-50 (defaults)", *DEFAULTS),
        ("teacher top-50 only", "distill-vq", {"candidates": "topk"}),
        ("+ 16 random docs", "distill-vq", {"candidates": "ib+topk+random"}),
        ("16 random docs only", "distill-vq", {"candidates": "random"}),
        ("top-20", "distill-vq", {"topk": 20}), ("top-100", "distill-vq", {"topk": 100}),
        ("top-200", "distill-vq", {"topk": 200}),
        ("8 sampled of the top-200, in-batch union (previous default)", "distill-vq",
         {"topk": 200, "topk_sample": 8, "ib_docs": "all"})],
    "What is trained (paper Table 4)": [
        ("IVF + PQ + query adapter (defaults)", *DEFAULTS),
        ("IVF + PQ, no query adapter", "distill-vq", {"query_adapter": False}),
        ("IVF only (+ adapter, residuals re-encoded to the moved centroids)", "distill-vq-ivf-only", {}),
        ("PQ only (+ adapter)", "distill-vq-pq-only", {}),
        ("IVF only, no adapter, stale faiss codes (the preset before issue #26)", "distill-vq-ivf-only",
         {"query_adapter": False, "writeback": "auto"}),
        ("PQ only, no adapter (the preset before issue #26)", "distill-vq-pq-only", {"query_adapter": False})],
    "Similarity function (paper Table 5)": [
        ("ListNet (defaults)", *DEFAULTS), ("pairwise KL", "distill-vq", {"loss": "kl"}),
        ("RankNet", "distill-vq", {"loss": "ranknet"}), ("Margin-MSE", "distill-vq", {"loss": "margin_mse"}),
        ("MSE", "distill-vq", {"loss": "mse"})],
    "Training queries": [
        ("train + unlabeled queries, labels unused (defaults)", *DEFAULTS),
        ("labeled train queries, labels unused", "distill-vq", {"queries": "labeled"}),
        ("10,000 sampled docs as queries", "distill-vq", {"queries": "docs"}),
        ("labeled queries, positives among the candidates, no label term", "distill-vq-labeled",
         {"label_weight": 0.0, "label_scope": "all"}),
        ("labeled queries + label term on every query", "distill-vq-labeled", {"label_scope": "all"}),
        ("labeled queries + label term where the teacher's top-50 holds the positive (distill-vq-labeled)",
         "distill-vq-labeled", {})],
    "Codes": [
        ("fixed faiss codes (defaults)", *DEFAULTS),
        ("re-assigned each step (STE, data-derived temperature)", "distill-vq", {"codes": "ste"})],
}
REFERENCES = [("faiss-opq (flat, the PQ init)", "faiss-opq", {}), ("faiss-ivfopq (the IVF init)", "faiss-ivfopq", {})]


def points(records: list[dict], method: str, change: dict) -> dict[int | None, dict]:
    """nprobe -> metrics of the records of ``method`` at M=16 with ``change`` on its defaults."""
    want = json.loads(json.dumps(make_method(method, {"M": M, **change}).record_params()))
    return {r["nprobe"]: r["metrics"] for r in records
            if r["status"] == "ok" and r["method"] == method and r["params"] == want}


def main() -> None:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "reports" / "debian-desc-distill-ablations")
    records, _ = read_records(run_dir / "results.jsonl")
    base = points(records, *DEFAULTS)
    nlist = max(k for k in base if k is not None)
    pruned = nlist // 16
    splits = sorted({r["split"] for r in records})
    print(f"Dataset {', '.join(sorted({r['dataset'] for r in records}))}, split {', '.join(splits)}, M = {M} "
          f"(16 B/vector), 1 seed; exhaustive = nprobe {nlist}, pruned = nprobe {pruned}. Δ = change of nDCG@10 "
          f"against the defaults at the same nprobe.\n")
    print("References: " + "; ".join(
        f"{label} nDCG@10 {p[max(p, key=lambda k: k or 0)]['nDCG@10']:.3f}" + (
            f" / {p[pruned]['nDCG@10']:.3f}" if pruned in p else "")
        for label, method, change in REFERENCES if (p := points(records, method, change))) + ".\n")
    for title, rows in TABLES.items():
        print(f"### {title}\n")
        print(f"| setting | nDCG@10 @{nlist} | Δ | RR@10 @{nlist} | nDCG@10 @{pruned} | Δ | RR@10 @{pruned} |")
        print("|---|---|---|---|---|---|---|")
        for label, method, change in rows:
            p = points(records, method, change)
            if not p:
                print(f"| {label} | not run | | | | | |")
                continue
            cells = []
            for nprobe in (nlist, pruned):
                m = p.get(nprobe)
                delta = None if m is None else m["nDCG@10"] - base[nprobe]["nDCG@10"]
                cells += (["—"] * 3 if m is None else [f"{m['nDCG@10']:.3f}", f"{delta:+.3f}", f"{m['RR@10']:.3f}"])
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
