"""Time JPQ training on the default synthetic dataset (50k docs x 128-d, 5k labeled train queries, 1 epoch).

Usage: ``python bench/jpq_train_time.py [--method jpq|jpq-ivf] [--threads N] [--params '{"top_k": 200}']``.
Stage times come from the fit's recorded info (benchmark.vq.train): faiss init (trained now or read from the
cache), negative-pool mining, training loop (wall and CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import torch  # noqa: E402

from benchmark.data import load_dataset  # noqa: E402
from benchmark.registry import make_method  # noqa: E402
from benchmark.runner import default_cache_dir, train_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="jpq", choices=("jpq", "jpq-ivf"))
    parser.add_argument("--threads", type=int, default=0, help="torch + faiss threads (0 = library default)")
    parser.add_argument("--params", default="{}", help="method params as JSON (default: the method defaults)")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    ds = load_dataset("synthetic")
    train = train_data(ds, args.seed, "cpu", args.cache_dir)
    method = make_method(args.method, {"epochs": 1.0, **json.loads(args.params)})
    t0 = time.perf_counter()
    vq = method.fit(train)
    fit_s = time.perf_counter() - t0
    info = vq.info
    train_s = info["train_loop_seconds"]
    queries = vq.info["train_queries"] * vq.info["epochs"]
    print(f"{args.method} {method.config}")
    print(f"data: {ds.num_docs} docs x {ds.dim}-d, {vq.info['train_queries']} train queries, "
          f"{vq.info['epochs']} epoch(s), {vq.info['steps']} steps")
    print(f"threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}")
    print(f"fit: {fit_s:.1f} s; faiss init {info['init_seconds']:.1f} s ({'cached' if info['init_cached'] else 'trained'}"
          f"), negative pool {info.get('mining_seconds', 0.0):.1f} s")
    print(f"training loop: {train_s:.1f} s (CPU {info['train_loop_cpu_seconds']:.1f} s), {queries / train_s:.0f} "
          f"queries/s, {info['steps'] / train_s:.1f} steps/s")


if __name__ == "__main__":
    main()
