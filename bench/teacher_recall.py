"""The ivf teacher against the exact one on a real dataset: time, calibrated nprobe and recall@K (issue #29).

Loads a dataset as a run would (``--datasets``, ``--dataset-opt``), mines the top-K of its train queries once by the
exact teacher (a chunked scan of every doc) and once by the ivf teacher (``benchmark.vq.mining.cached_topk``: an
IVF-SQ8 index whose nprobe is calibrated to the recall target on 500 sampled queries), with no cache, and prints
each one's wall seconds, the ivf teacher's calibration curve, its recall measured on 1,000 other queries (what a
record carries) and its recall over *every* train query (what the sample stands for).

Usage: python bench/teacher_recall.py --datasets npy:../shared/data/debian-desc/minilm [--k 50] [--recall 0.96]
       [--nlist 0] [--nprobe 0] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--k", type=int, default=50, help="teacher top-K (Distill-VQ's topk)")
    ap.add_argument("--recall", type=float, default=0.0, help="calibration target (0: the default)")
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--nprobe", type=int, default=0, help="0: calibrated")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    from benchmark.data import load_dataset, parse_dataset_opt
    from benchmark.provenance import cpu, set_threads, threads
    from benchmark.vq.mining import TEACHER_RECALL, cached_topk, exact_topk
    set_threads(args.threads)
    options = dict(parse_dataset_opt(args.datasets, o) for o in args.dataset_opt)
    ds = load_dataset(args.datasets, **options)
    q = ds.split("train").query_emb
    print(f"{args.datasets}: {ds.doc_emb.shape[0]:,} docs x {ds.doc_emb.shape[1]}-d, {len(q):,} train queries, "
          f"K={args.k}, {threads()} thread(s), {cpu()}", flush=True)
    t0 = time.perf_counter()
    exact = exact_topk(ds.doc_emb, q, args.k)[1]
    exact_s = time.perf_counter() - t0
    print(f"exact teacher: {exact_s:.1f} s", flush=True)
    teacher = {"kind": "ivf", "nlist": args.nlist, "nprobe": args.nprobe, "recall": args.recall or TEACHER_RECALL}
    t0 = time.perf_counter()
    ids, info = cached_topk(ds.doc_emb, q, args.k, None, teacher=teacher)
    ivf_s = time.perf_counter() - t0
    every = float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(ids, exact)]))
    print(f"ivf teacher: {ivf_s:.1f} s ({exact_s / ivf_s:.1f}x faster; includes building its index, the calibration "
          f"and the exact top-K of its 1,500 sampled queries)")
    print(json.dumps(info, indent=1))
    print(f"recall@{args.k} on the 1,000-query check sample {info['recall_at_k']:.4f}; over all {len(q):,} train "
          f"queries {every:.4f}")


if __name__ == "__main__":
    main()
