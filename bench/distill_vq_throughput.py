"""Distill-VQ training throughput on the default synthetic dataset (50k docs x 128-d).

Fits a Distill-VQ preset once to warm the caches (faiss init, top-K mining; shared with the suite's cache dir),
then times the fit again and prints training queries/s (the distillation loop alone and the whole fit), peak RSS
of the process (ru_maxrss: dataset + faiss init + training) and the threads used.
Usage: python bench/distill_vq_throughput.py [--method distill-vq] [--threads 2] [--param key=json ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import faiss
import torch

from benchmark.data import load_dataset
from benchmark.registry import make_method
from benchmark.runner import default_cache_dir, train_data


def parse_params(items: list[str]) -> dict:
    """``key=value`` pairs; values are JSON when they parse, else strings."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", default="distill-vq")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--threads", type=int, default=2, help="torch and faiss threads (0 = library default)")
    ap.add_argument("--param", action="append", default=[], help="method param override, key=value")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()), help="faiss init / top-K cache")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    method = make_method(args.method, parse_params(args.param))
    train = train_data(ds, 0, "cpu", args.cache_dir)
    t0 = time.perf_counter()
    method.fit(train)                                           # first: may train the faiss init / mine top-K
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    vq = method.fit(train)                                      # warm: caches hit
    warm = time.perf_counter() - t0
    info = vq.info
    n = info["steps"] * info["batch_size"]
    print(f"{args.method} on {args.dataset}: {ds.num_docs} docs x {ds.dim}-d, {info['train_queries']} queries, "
          f"{info['steps']} steps x batch {info['batch_size']}, candidates={method.config['candidates']}")
    print(f"  training loop: {info['train_loop_seconds']:.2f} s (CPU {info['train_loop_cpu_seconds']:.2f} s) = "
          f"{info['queries_per_s']:.0f} queries/s")
    print(f"  warm fit (cached init + top-K): {warm:.2f} s = {n / warm:.0f} queries/s; first fit: {first:.2f} s")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}")


if __name__ == "__main__":
    main()
