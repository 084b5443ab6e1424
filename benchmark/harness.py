"""The search harness: one way to search, measure quality, fidelity and speed for every method."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from benchmark.data import RetrievalDataset, Split
from benchmark.metrics import FIDELITY_KS, MEASURES, mean, overlap_at_k, per_query_measures, ranked_run
from benchmark.vq.mining import exact_topk


@dataclass
class SearchSettings:
    """Search-time settings shared by every method (not part of any method's params)."""

    k: int = 1000                 # depth of the evaluated run
    latency_k: int = 100          # depth of the timed searches
    latency_queries: int = 200    # single-query searches timed (after warm-up)
    warmup_queries: int = 20
    threads: int = 0              # threads for batch search / QPS (0 = faiss default, all cores)
    nprobes: list[int] | None = None  # None = powers of two up to nlist


@dataclass
class Evaluation:
    nprobe: int | None
    metrics: dict[str, float]
    fidelity: dict[str, float]
    latency: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False)


def nprobe_sweep(nlist: int, nprobes: list[int] | None = None) -> list[int]:
    """The nprobe values evaluated for an IVF index with ``nlist`` lists (1, 2, 4, ..., nlist by default)."""
    if nprobes:
        return sorted({min(int(p), nlist) for p in nprobes})
    values = [1 << i for i in range(nlist.bit_length()) if (1 << i) <= nlist]
    return sorted(set(values + [nlist]))


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)


def ivf_nlist(index: faiss.Index) -> int:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 0


def prepare_queries(emb: np.ndarray, query_map: np.ndarray | None) -> np.ndarray:
    q = np.ascontiguousarray(emb, dtype=np.float32)
    return q if query_map is None else np.ascontiguousarray(q @ query_map.T, dtype=np.float32)


def time_search(index: faiss.Index, queries: np.ndarray, settings: SearchSettings,
                query_map: np.ndarray | None = None) -> dict[str, float]:
    """Single-thread per-query latency (p50/p95 ms, after warm-up) and all-thread batch QPS."""
    threads_before = faiss.omp_get_max_threads()
    n = min(len(queries), settings.latency_queries)
    try:
        faiss.omp_set_num_threads(1)
        for i in range(min(settings.warmup_queries, len(queries))):
            index.search(prepare_queries(queries[i:i + 1], query_map), settings.latency_k)
        times = np.empty(n)
        for i in range(n):
            t0 = time.perf_counter()
            index.search(prepare_queries(queries[i:i + 1], query_map), settings.latency_k)
            times[i] = time.perf_counter() - t0
        faiss.omp_set_num_threads(settings.threads or threads_before)
        batch_threads = faiss.omp_get_max_threads()
        t0 = time.perf_counter()
        index.search(prepare_queries(queries, query_map), settings.latency_k)
        batch = time.perf_counter() - t0
    finally:
        faiss.omp_set_num_threads(threads_before)
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
            "qps": float(len(queries) / batch), "threads": int(batch_threads), "latency_threads": 1,
            "k": settings.latency_k, "timed_queries": int(n)}


class ExactReference:
    """Exact top-k (IndexFlatIP) per dataset split: the teacher ranking that fidelity is measured against."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int], np.ndarray] = {}

    def top_k(self, ds: RetrievalDataset, split: Split, k: int) -> np.ndarray:
        """Doc indices (nq, k) of the exact top-``k``, -1-padded past ``num_docs``.

        Searched chunk by chunk over the docs (:func:`benchmark.vq.mining.exact_topk`), so a memory-mapped corpus is
        never copied whole into RAM (an IndexFlatIP of all docs would be a second full float32 copy).
        """
        key = (ds.name, split.name, k)
        if key not in self._cache:
            _, idx = exact_topk(ds.doc_emb, split.query_emb, k)
            if idx.shape[1] < k:  # fewer docs than k: pad like faiss does
                idx = np.hstack([idx, np.full((len(idx), k - idx.shape[1]), -1, dtype=idx.dtype)])
            self._cache[key] = idx
        return self._cache[key]


def evaluate(index: faiss.Index, ds: RetrievalDataset, split: Split, exact_top: np.ndarray,
             settings: SearchSettings, nprobe: int | None = None, query_map: np.ndarray | None = None
             ) -> Evaluation:
    """Search ``split``'s queries at ``nprobe``; per-query IR measures, overlap with exact top-k, and timings."""
    set_nprobe(index, nprobe)
    extra = 1 if ds.ignore_identical_ids else 0
    k = min(settings.k + extra, ds.num_docs)
    scores, indices = index.search(prepare_queries(split.query_emb, query_map), k)
    run = ranked_run(split.query_ids, np.asarray(ds.doc_ids, dtype=object), scores, indices,
                     ds.ignore_identical_ids, depth=settings.k)
    per_query = per_query_measures(run, split.qrels) if split.qrels else {}
    for kk in FIDELITY_KS:
        values = overlap_at_k(indices, exact_top, kk)
        per_query[f"overlap@{kk}"] = dict(zip(split.query_ids, values.tolist()))
    metrics = {name: mean(per_query[name]) for name in MEASURES if name in per_query}
    fidelity = {f"overlap@{kk}": mean(per_query[f"overlap@{kk}"]) for kk in FIDELITY_KS}
    latency = time_search(index, split.query_emb, settings, query_map)
    return Evaluation(nprobe, metrics, fidelity, latency, per_query)
