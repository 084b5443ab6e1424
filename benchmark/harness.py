"""The search harness: one way to search, measure quality, fidelity and speed for every method."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
    timing_repeats: int = 5       # interleaved repetitions of the timing pass (a point's p50 = the best of them)
    load_threshold: float = 0.25  # other processes' CPU (cores) during a timing pass above which it is under load
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


def prepare_queries(emb: np.ndarray, query_map: np.ndarray | None = None) -> np.ndarray:
    """Queries as faiss takes them (contiguous float32), optionally through a query-side map ``q @ M.T`` (the
    reference that :func:`benchmark.vq.fold_query_map`'s folded index must agree with)."""
    q = np.ascontiguousarray(emb, dtype=np.float32)
    return q if query_map is None else np.ascontiguousarray(q @ query_map.T, dtype=np.float32)


def _cpu_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)   # idle + iowait
    busy = sum(ticks[:8]) - idle                             # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadWatch:
    """The machine's load around a timing pass: 1-min load average before and after, and the CPU that *other*
    processes used during it (machine busy CPU seconds minus this process's, per wall second, in cores)."""

    threshold: float
    load_before: float = 0.0
    load_after: float = 0.0
    other_cores: float | None = None
    _t0: tuple[float, float | None, float] = (0.0, None, 0.0)

    def __enter__(self) -> "LoadWatch":
        self.load_before = os.getloadavg()[0]
        self._t0 = (time.perf_counter(), _cpu_busy_seconds(), time.process_time())
        return self

    def __exit__(self, *exc: Any) -> None:
        wall0, busy0, own0 = self._t0
        wall, busy, own = time.perf_counter() - wall0, _cpu_busy_seconds(), time.process_time() - own0
        self.load_after = os.getloadavg()[0]
        if busy is not None and busy0 is not None and wall > 0:
            self.other_cores = max(0.0, (busy - busy0 - own) / wall)

    @property
    def under_load(self) -> bool:
        """Other processes used more than ``threshold`` cores during the pass (without ``/proc/stat``: the 1-min
        load average, which counts the timing thread itself, exceeded ``1 + threshold``)."""
        if self.other_cores is not None:
            return self.other_cores > self.threshold
        return max(self.load_before, self.load_after) > 1 + self.threshold

    def fields(self) -> dict[str, Any]:
        return {"load_before": round(self.load_before, 2), "load_after": round(self.load_after, 2),
                "other_cpu_cores": None if self.other_cores is None else round(self.other_cores, 3),
                "load_threshold": self.threshold, "under_load": self.under_load}


def _single_query_seconds(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> np.ndarray:
    times = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search_one(queries[i:i + 1])
        times[i] = time.perf_counter() - t0
    return times


@dataclass
class Searcher:
    """One operating point as the timing protocol drives it: ``prepare`` selects the point (e.g. sets nprobe),
    ``one`` searches a single query (1 thread), ``batch`` searches all queries (the batch threads)."""

    prepare: Callable[[], None]
    one: Callable[[np.ndarray], Any]
    batch: Callable[[np.ndarray], Any]


def time_points(searchers: dict[Any, Searcher], queries: np.ndarray, settings: SearchSettings,
                batch_threads: int) -> dict[Any, dict[str, Any]]:
    """The timing protocol over the operating points ``searchers`` (see :func:`timing_pass`); any search library
    can be timed by it (``bench/peer_scann.py`` times ScaNN with it)."""
    n = min(len(queries), settings.latency_queries)
    timed = np.ascontiguousarray(queries[:n])
    single: dict[Any, list[np.ndarray]] = {p: [] for p in searchers}
    batch: dict[Any, list[float]] = {p: [] for p in searchers}
    with LoadWatch(settings.load_threshold) as watch:
        for s in searchers.values():
            s.prepare()
            _single_query_seconds(s.one, queries[:settings.warmup_queries])
        for _ in range(settings.timing_repeats):
            for p, s in searchers.items():
                s.prepare()
                single[p].append(_single_query_seconds(s.one, timed))
                t0 = time.perf_counter()
                s.batch(queries)
                batch[p].append(time.perf_counter() - t0)
    load = watch.fields()
    out = {}
    for p in searchers:
        p50s = np.array([np.percentile(t, 50) for t in single[p]]) * 1e3
        p95s = np.array([np.percentile(t, 95) for t in single[p]]) * 1e3
        p50, median = float(p50s.min()), float(np.median(p50s))
        out[p] = {"p50_ms": p50, "p95_ms": float(p95s.min()), "p50_median_ms": median,
                  "p50_reps": [round(float(x), 6) for x in p50s],
                  "spread": float((p50s.max() - p50s.min()) / median) if median > 0 else 0.0,
                  "qps": float(len(queries) / min(batch[p])), "threads": int(batch_threads),
                  "latency_threads": 1, "k": settings.latency_k, "timed_queries": int(n),
                  "repeats": settings.timing_repeats, "warmup_queries": settings.warmup_queries, **load}
    return out


def timing_pass(index: faiss.Index, queries: np.ndarray, points: Sequence[int | None], settings: SearchSettings
                ) -> dict[int | None, dict[str, Any]]:
    """Time every operating point (nprobe; None = no IVF) of one index in one pass: the timing protocol.

    Single-query latency runs on 1 thread: first ``warmup_queries`` searches at every point, then
    ``timing_repeats`` repetitions, each timing ``latency_queries`` single-query searches at *every* point in turn
    (interleaved, so a burst of load hits all points alike, not one). A point's ``p50_ms`` / ``p95_ms`` are the best
    (lowest) of the repetitions' percentiles, as ann-benchmarks keeps the fastest of its runs; ``p50_median_ms``,
    every repetition's p50 (``p50_reps``) and ``spread`` ((max - min) / median) are kept. Why best-of and not the
    median: on this project's shared 2-vCPU machine the speed shifts by up to 1.5x for tens of seconds with no
    process of the machine to show for it (other VMs of the host); re-timing the same debian-desc indexes twice, quiet,
    5 repetitions, the best-of p50s of all 17 points agreed within 3%, the medians within 15% (issue #27's check).
    Batch QPS (all ``threads``) is the best of the same repetitions of one batch search of all queries. The machine's
    load around the pass is recorded (:class:`LoadWatch`) and ``under_load`` marks a pass during which other
    processes used more than ``load_threshold`` cores.
    """
    threads_before = faiss.omp_get_max_threads()
    batch_threads = settings.threads or threads_before
    try:
        return time_points(index_searchers(index, points, settings.latency_k, batch_threads), queries,
                           settings, batch_threads)
    finally:
        faiss.omp_set_num_threads(threads_before)


def index_searchers(index: faiss.Index, points: Sequence[int | None], k: int, batch_threads: int
                    ) -> dict[int | None, Searcher]:
    """The operating points (nprobe; None = no IVF) of one faiss index as :class:`Searcher` s for
    :func:`time_points` (the caller restores faiss's thread count afterwards). A query-side map is part of the
    index (:func:`benchmark.vq.fold_query_map`), so what is timed is one faiss search per query and nothing else."""
    def searcher(p: int | None) -> Searcher:
        def prepare() -> None:   # the point's nprobe, and 1 thread for the single queries (set once, not per query)
            set_nprobe(index, p)
            faiss.omp_set_num_threads(1)

        def one(q: np.ndarray) -> Any:
            return index.search(q, k)

        def batch(q: np.ndarray) -> Any:
            faiss.omp_set_num_threads(batch_threads)
            try:
                return index.search(q, k)
            finally:
                faiss.omp_set_num_threads(1)
        return Searcher(prepare, one, batch)
    return {p: searcher(p) for p in points}


def time_search(index: faiss.Index, queries: np.ndarray, settings: SearchSettings) -> dict[str, Any]:
    """The timing protocol (:func:`timing_pass`) at the index's current nprobe only."""
    ivf = ivf_nlist(index)
    return timing_pass(index, queries, [faiss.extract_index_ivf(index).nprobe if ivf else None],
                       settings).popitem()[1]


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
             settings: SearchSettings, nprobe: int | None = None, timed: bool = True) -> Evaluation:
    """Search ``split``'s queries at ``nprobe``; per-query IR measures, overlap with exact top-k, and (``timed``)
    the timing protocol at that point alone. A fit's runner passes ``timed=False`` and times all its points in one
    :func:`timing_pass` (interleaved repetitions), then fills ``latency``. A method's query-side map is folded into
    ``index`` first (:func:`benchmark.vq.fold_query_map`)."""
    set_nprobe(index, nprobe)
    extra = 1 if ds.ignore_identical_ids else 0
    k = min(settings.k + extra, ds.num_docs)
    scores, indices = index.search(prepare_queries(split.query_emb), k)
    run = ranked_run(split.query_ids, np.asarray(ds.doc_ids, dtype=object), scores, indices,
                     ds.ignore_identical_ids, depth=settings.k)
    per_query = per_query_measures(run, split.qrels) if split.qrels else {}
    for kk in FIDELITY_KS:
        values = overlap_at_k(indices, exact_top, kk)
        per_query[f"overlap@{kk}"] = dict(zip(split.query_ids, values.tolist()))
    metrics = {name: mean(per_query[name]) for name in MEASURES if name in per_query}
    fidelity = {f"overlap@{kk}": mean(per_query[f"overlap@{kk}"]) for kk in FIDELITY_KS}
    latency = (timing_pass(index, split.query_emb, [nprobe], settings)[nprobe] if timed else {})
    return Evaluation(nprobe, metrics, fidelity, latency, per_query)
