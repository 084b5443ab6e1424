"""Fast-scan vs plain scan of the same learned 4-bit codes (issue #27 item 2's acceptance check).

Fits ``score-aware`` once (``--M`` bytes: 2*M blocks of 4 bits, seed 0), writes its anisotropic codes into a plain
``IndexPQ`` (float lookup tables) and into an ``IndexPQFastScan`` (SIMD, 8-bit quantized lookup tables) and evaluates
both with the harness (nDCG@10, overlap@10 with the exact top 10), then fits ``faiss-pq-fastscan`` at the same budget.
Latency: the harness's single-thread per-query timing (warm-up, then ``--queries`` single-query searches at k=100),
repeated ``--reps`` times interleaved over the three indexes; the median of the repetitions' p50 is printed with
their spread, and the 1-min load average before and after.

Usage (from the repository root)::

    .venv/bin/python bench/fastscan_check.py --threads 1                 # debian-desc, M=16
    .venv/bin/python bench/fastscan_check.py --dataset synthetic:quick --M 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.peer_scann import config_dataset  # noqa: E402
from benchmark.data import load_dataset  # noqa: E402
from benchmark.harness import ExactReference, SearchSettings, evaluate, time_search  # noqa: E402
from benchmark.provenance import set_threads  # noqa: E402
from benchmark.registry import make_method  # noqa: E402
from benchmark.runner import train_data  # noqa: E402
from benchmark.vq import build_index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "debian-desc.toml"),
                        help="run config whose dataset entry names the data (default: configs/debian-desc.toml)")
    parser.add_argument("--dataset", default=None, help="a loader name instead (npy:<dir>, synthetic:quick, ...)")
    parser.add_argument("--M", type=int, default=16, help="bytes per vector (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads for fitting and batch search (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved timing repetitions (default 3)")
    parser.add_argument("--queries", type=int, default=200, help="single-query searches timed per repetition")
    args = parser.parse_args()

    set_threads(args.threads)
    name = args.dataset or config_dataset(Path(args.config), None)[1]
    ds = load_dataset(name)
    split = ds.split(ds.eval_split)
    settings = SearchSettings(latency_queries=args.queries, threads=args.threads)
    exact = ExactReference().top_k(ds, split, 100)
    print(f"{name}: {ds.num_docs} docs, d={ds.dim}, {len(split.query_emb)} {split.name} queries, "
          f"{args.threads} thread(s), M={args.M} B")

    t0 = time.perf_counter()
    vq = make_method("score-aware", {"M": args.M}).fit(train_data(ds, args.seed, "cpu", None))
    fit_sa = time.perf_counter() - t0
    t0 = time.perf_counter()
    native = make_method("faiss-pq-fastscan", {"M": args.M}).fit(train_data(ds, args.seed, "cpu", None))
    fit_fs = time.perf_counter() - t0
    indexes = {"score-aware plain (IndexPQ)": build_index(replace(vq, search="plain"), ds.doc_emb),
               "score-aware fast-scan (IndexPQFastScan)": build_index(replace(vq, search="fastscan"), ds.doc_emb),
               f"faiss-pq-fastscan (PQ{2 * args.M}x4fs)": native.index}
    quality = {label: evaluate(index, ds, split, exact, replace(settings, latency_queries=1, warmup_queries=1))
               for label, index in indexes.items()}
    load_before = os.getloadavg()[0]
    p50: dict[str, list[float]] = {label: [] for label in indexes}
    for _ in range(args.reps):
        for label, index in indexes.items():
            p50[label].append(time_search(index, split.query_emb, settings)["p50_ms"])
    load_after = os.getloadavg()[0]

    print(f"fit seconds: score-aware {fit_sa:.1f}, faiss-pq-fastscan {fit_fs:.1f}")
    print(f"{'index':44s} {'nDCG@10':>8s} {'overlap@10':>10s} {'p50 ms (median)':>16s}  reps")
    for label, ev in quality.items():
        reps = " ".join(f"{v:.3f}" for v in p50[label])
        print(f"{label:44s} {ev.metrics.get('nDCG@10', float('nan')):8.4f} {ev.fidelity['overlap@10']:10.4f} "
              f"{np.median(p50[label]):16.3f}  {reps}")
    labels = list(quality)
    d_ndcg = quality[labels[1]].metrics.get("nDCG@10", np.nan) - quality[labels[0]].metrics.get("nDCG@10", np.nan)
    print(f"nDCG@10 fast-scan - plain: {d_ndcg:+.4f}; p50 fast-scan / faiss-pq-fastscan: "
          f"{np.median(p50[labels[1]]) / np.median(p50[labels[2]]):.2f}x; "
          f"1-min load average {load_before:.2f} before, {load_after:.2f} after timing")


if __name__ == "__main__":
    main()
