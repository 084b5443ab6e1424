"""Peer check: Google's ScaNN asymmetric hashing (``score_ah``) beside the project's ``score-aware`` method.

Both quantize the same doc embeddings at the same budget, brute force (no tree, no re-ordering): ScaNN with 4-bit
codes (``lut16``, 16 codewords per block) over 2*M blocks of d/(2M) dims and ``anisotropic_quantization_threshold``
T; the project's method with ``M`` bytes at ``nbits=4`` (the same 2*M blocks) and the same T, written into a faiss
``IndexPQ`` and searched by the project's harness. nDCG@10 (ir_measures, the harness's measures) and overlap@10 with
the exact top 10 on the eval split, printed side by side.

Usage (from the repository root; ScaNN is an optional peer: ``pip install scann==1.4.2``, no TensorFlow needed)::

    .venv/bin/python bench/peer_scann.py                       # debian-desc (as configs/debian-desc.toml names it)
    .venv/bin/python bench/peer_scann.py --budgets 16,32 --threshold 0.2 --params '{"eta_formula": "limit"}'
    .venv/bin/python bench/peer_scann.py --dataset synthetic:quick --budgets 8
    .venv/bin/python bench/peer_scann.py --skip-project --out reports/debian-desc   # ScaNN rows into the report

``--out DIR`` writes ScaNN's results to ``DIR/peers.jsonl`` (one record per dataset, peer and budget, replaced when
measured again, with provenance); the report of ``DIR`` shows them as peer rows beside its own (``python -m
benchmark.report DIR``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmark._io import write_text  # noqa: E402
from benchmark.config import expand_env  # noqa: E402
from benchmark.data import load_dataset  # noqa: E402
from benchmark.harness import SearchSettings, Searcher, evaluate, time_points  # noqa: E402
from benchmark.metrics import MEASURES, mean, overlap_at_k, per_query_measures, ranked_run  # noqa: E402
from benchmark.provenance import provenance  # noqa: E402
from benchmark.registry import make_method  # noqa: E402
from benchmark.runner import train_data  # noqa: E402
from benchmark.vq import build_index  # noqa: E402
from benchmark.vq.mining import exact_topk  # noqa: E402

DEPTH = 100  # nDCG@10 and overlap@10 need the top 10; 100 keeps R@100 comparable too


PEERS_FILE = "peers.jsonl"   # read by benchmark.report (peer rows)
PEER_SCHEMA = 1


def config_dataset(config: Path, alias: str | None) -> tuple[str, str]:
    """(alias, loader name) of a dataset entry in a run config (``${VAR:-default}`` expanded), relative paths
    resolved against the repository root (where the runner is started)."""
    spec = tomllib.loads(config.read_text())["datasets"]
    alias = alias or next(iter(spec))
    name = expand_env(spec[alias]["name"])
    prefix, _, path = name.partition(":")
    if prefix == "npy" and not Path(path).is_absolute():
        name = f"npy:{(REPO / path).resolve()}"
    return alias, name


def write_peers(out: Path, new: list[dict]) -> None:
    """Merge ``new`` peer records into ``out/peers.jsonl`` (same dataset, peer, method and budget: replaced)."""
    def key(r: dict) -> tuple:
        return r["dataset"], r["peer"], r["method"], r["bytes_per_vector"], json.dumps(r["params"], sort_keys=True)
    path = out / PEERS_FILE
    old = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    merged = {key(r): r for r in old + new}
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged.values()))
    print(f"wrote {len(new)} peer record(s) to {path}")


def scann_ah(docs: np.ndarray, queries: np.ndarray, budget: int, threshold: float, hash_type: str,
             train_size: int, iterations: int, settings: SearchSettings
             ) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """ScaNN brute-force AH at ``budget`` bytes/vector: (indices, scores, build seconds, latency), the latency by
    the harness's timing protocol (:func:`benchmark.harness.time_points`: single-query ``search`` on one thread,
    warm-up, median of interleaved repetitions; batch QPS by ``search_batched_parallel``)."""
    import scann
    bits = 4 if hash_type == "lut16" else 8
    blocks = budget * 8 // bits
    d = docs.shape[1]
    if d % blocks:
        raise SystemExit(f"--budgets: {budget} B makes {blocks} blocks of {bits} bits, which must divide d={d}")
    t0 = time.perf_counter()
    searcher = (scann.scann_ops_pybind.builder(docs, DEPTH, "dot_product")
                .score_ah(d // blocks, anisotropic_quantization_threshold=threshold, hash_type=hash_type,
                          training_sample_size=train_size, training_iterations=iterations)
                .build())
    seconds = time.perf_counter() - t0
    idx, scores = searcher.search_batched(queries, final_num_neighbors=DEPTH)
    k = settings.latency_k
    point = Searcher(lambda: None, lambda q: searcher.search(q[0], final_num_neighbors=k),
                     lambda q: searcher.search_batched_parallel(q, final_num_neighbors=k))
    latency = time_points({None: point}, queries, settings, batch_threads=os.cpu_count() or 1)[None]
    return np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float32), seconds, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "debian-desc.toml"),
                        help="run config whose dataset entry names the data (default: configs/debian-desc.toml)")
    parser.add_argument("--dataset", default=None, help="a loader name instead (npy:<dir>, synthetic:quick, ...)")
    parser.add_argument("--budgets", default="16,32", help="bytes per vector, comma-separated")
    parser.add_argument("--threshold", type=float, default=0.2, help="anisotropic threshold T (both sides)")
    parser.add_argument("--params", default="{}", help="extra score-aware params as JSON")
    parser.add_argument("--hash-type", default="lut16", choices=("lut16", "lut256"),
                        help="ScaNN codes: lut16 = 4-bit (the issue's peer), lut256 = 8-bit (compare nbits=8)")
    parser.add_argument("--scann-train-size", type=int, default=100000, help="ScaNN training_sample_size")
    parser.add_argument("--scann-iterations", type=int, default=10, help="ScaNN training_iterations (k-means)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timed-queries", type=int, default=200,
                        help="single-query searches per timing repetition (both sides; the runner's default)")
    parser.add_argument("--skip-project", action="store_true", help="ScaNN only")
    parser.add_argument("--out", default=None, help=f"write ScaNN's results to OUT/{PEERS_FILE} (report peer rows)")
    args = parser.parse_args()

    alias, name = (args.dataset, args.dataset) if args.dataset else config_dataset(Path(args.config), None)
    ds = load_dataset(name)
    split = ds.split(ds.eval_split)
    docs = np.ascontiguousarray(ds.doc_emb, dtype=np.float32)
    queries = np.ascontiguousarray(split.query_emb, dtype=np.float32)
    print(f"{name}: {ds.num_docs} docs x {docs.shape[1]}-d, {len(queries)} {split.name} queries", flush=True)
    _, exact = exact_topk(docs, queries, DEPTH)
    settings = SearchSettings(k=DEPTH, latency_queries=args.timed_queries, warmup_queries=20)
    extra = json.loads(args.params)
    nbits = 4 if args.hash_type == "lut16" else 8
    rows, peers = [], []
    for budget in [int(b) for b in args.budgets.split(",")]:
        idx, scores, secs, latency = scann_ah(docs, queries, budget, args.threshold, args.hash_type,
                                              args.scann_train_size, args.scann_iterations, settings)
        run = ranked_run(split.query_ids, np.asarray(ds.doc_ids, dtype=object), scores, idx)
        measures = per_query_measures(run, split.qrels)
        ndcg = mean(measures["nDCG@10"])
        ov = float(np.mean(overlap_at_k(idx, exact, 10)))
        peers.append({"schema_version": PEER_SCHEMA, "dataset": alias, "split": split.name, "peer": "scann",
                      "peer_version": metadata.version("scann"), "family": "score-aware",
                      "method": f"score_ah {args.hash_type}", "bytes_per_vector": budget,
                      "params": {"blocks": budget * 8 // nbits,
                                 "threshold": args.threshold, "training_sample_size": args.scann_train_size,
                                 "training_iterations": args.scann_iterations, "tree": None, "reorder": None},
                      "metrics": {m: mean(measures[m]) for m in MEASURES if m in measures},
                      "fidelity": {"overlap@10": ov}, "build_seconds": secs, "latency": latency,
                      "provenance": provenance(args.seed)})
        rows.append((budget, f"scann score_ah {args.hash_type}", ndcg, ov, secs, latency))
        print(f"{budget:>3} B  scann  nDCG@10 {ndcg:.4f}  overlap@10 {ov:.3f}  build {secs:.0f} s  "
              f"p50 {latency['p50_ms']:.3f} ms", flush=True)
        if args.skip_project:
            continue
        method = make_method("score-aware", {"M": budget, "nbits": nbits, "threshold": args.threshold, **extra})
        t0 = time.perf_counter()
        vq = method.fit(train_data(ds, args.seed, "cpu", None))
        index = build_index(vq, ds.doc_emb)
        secs = time.perf_counter() - t0
        ev = evaluate(index, ds, split, exact, settings)
        rows.append((budget, f"score-aware {json.dumps(method.config, sort_keys=True)}", ev.metrics["nDCG@10"],
                     ev.fidelity["overlap@10"], secs, ev.latency))
        print(f"{budget:>3} B  score-aware  nDCG@10 {ev.metrics['nDCG@10']:.4f}  overlap@10 "
              f"{ev.fidelity['overlap@10']:.3f}  fit {secs:.0f} s  p50 {ev.latency['p50_ms']:.3f} ms", flush=True)
    if args.out:
        write_peers(Path(args.out), peers)
    print(f"\n| B/vec | quantizer | nDCG@10 | overlap@10 | build s | p50 ms (1 thread) |\n|---|---|---|---|---|---|")
    for budget, who, ndcg, ov, secs, lat in rows:
        mark = " (under load)" if lat.get("under_load") else ""
        print(f"| {budget} | {who} | {ndcg:.4f} | {ov:.3f} | {secs:.0f} | {lat['p50_ms']:.3f}{mark} |")


if __name__ == "__main__":
    main()
