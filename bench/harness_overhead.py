"""Latency the harness adds over calling faiss ``search`` directly (same index, nprobe, k, 1 thread).

Prints p50 of both and their ratio; the goal is <= 1.05. Usage: python bench/harness_overhead.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from benchmark.data import load_dataset
from benchmark.vq.faiss_init import train_index
from benchmark.harness import SearchSettings, set_nprobe, time_search


def direct_p50(index: faiss.Index, queries: np.ndarray, k: int, warmup: int) -> float:
    faiss.omp_set_num_threads(1)
    for i in range(warmup):
        index.search(queries[i:i + 1], k)
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i:i + 1], k)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ds = load_dataset("synthetic:quick" if args.quick else "synthetic")
    queries = np.ascontiguousarray(ds.split("test").query_emb[:500])
    settings = SearchSettings(latency_queries=len(queries), warmup_queries=20)
    for factory, nprobe in (("IVF256,PQ16x8" if not args.quick else "IVF32,PQ16x8", 16), ("PQ16x8", None)):
        index = train_index(ds.doc_emb, factory, seed=0)
        set_nprobe(index, nprobe)
        direct, harness = [], []
        for _ in range(args.repeats):  # interleave to cancel drift in machine load
            direct.append(direct_p50(index, queries, settings.latency_k, settings.warmup_queries))
            harness.append(time_search(index, queries, settings)["p50_ms"])
        d, h = float(np.median(direct)), float(np.median(harness))
        print(f"{factory:16s} nprobe={nprobe}: direct p50 {d:.4f} ms, harness p50 {h:.4f} ms, "
              f"ratio {h / d:.3f} (threads=1, k={settings.latency_k}, {len(queries)} queries x {args.repeats})")


if __name__ == "__main__":
    main()
