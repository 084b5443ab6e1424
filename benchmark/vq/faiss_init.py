"""Train faiss reconstruction quantizers (k-means / PQ / OPQ) reproducibly, with an on-disk cache.

Learned methods start from the same faiss quantizer as their reconstruction baseline; the cache (keyed by the doc
matrix fingerprint, factory string, seed and training knobs) lets a suite train each one once.
Multithreaded faiss k-means/OPQ is not bit-deterministic across thread counts: seeds are set, and the thread count
is part of the provenance of every record.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import faiss
import numpy as np

from benchmark.vq.params import VQParams, params_from_index

MAX_POINTS_PER_CENTROID = 256
_cached_init_seconds = 0.0  # training time of inits served from the cache since the last reset


def reset_cached_init_seconds() -> None:
    global _cached_init_seconds
    _cached_init_seconds = 0.0


def cached_init_seconds() -> float:
    """Seconds the cached inits loaded since the last reset originally took to train (credited to a fit's cost)."""
    return _cached_init_seconds


def fingerprint(x: np.ndarray, sample_rows: int = 2048) -> str:
    """Cheap content fingerprint of a (possibly memory-mapped) matrix: shape, dtype and a strided row sample."""
    h = hashlib.sha1(f"{x.shape}{x.dtype}".encode())
    step = max(1, x.shape[0] // sample_rows)
    h.update(np.ascontiguousarray(x[::step]).tobytes())
    h.update(np.ascontiguousarray(x[-1:]).tobytes())
    return h.hexdigest()[:16]


def training_sample(x: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` rows of ``x`` (sorted random subset), as a float32 in-memory array."""
    n = x.shape[0]
    if n <= max_points:
        return np.ascontiguousarray(x, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    return np.ascontiguousarray(x[rows], dtype=np.float32)


def _configure(index: faiss.Index, seed: int, opq_niter: int) -> None:
    """Seed every clustering inside an index_factory index and cap k-means subsampling."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = opq_niter
                vt.max_train_points = MAX_POINTS_PER_CENTROID * 256
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVF):
        index.cp.seed = seed
        index.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
        index.cp.spherical = index.metric_type == faiss.METRIC_INNER_PRODUCT
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False  # index_factory turns it on; it only reorders codes, slowly
    if hasattr(index, "pq"):
        index.pq.cp.seed = seed
        index.pq.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID


def train_index(doc_emb: np.ndarray, factory: str, seed: int = 0, max_train_points: int = 65536,
                opq_niter: int = 20, add: bool = True) -> faiss.Index:
    """Train ``factory`` (inner product) on a seeded sample of the docs and add all docs in chunks (ids 0..n-1)."""
    index = faiss.index_factory(doc_emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    _configure(index, seed, opq_niter)
    index.train(training_sample(doc_emb, max_train_points, seed))
    if add:
        for start in range(0, doc_emb.shape[0], 65536):
            index.add(np.ascontiguousarray(doc_emb[start:start + 65536], dtype=np.float32))
    return index


def trained_params(doc_emb: np.ndarray, factory: str, seed: int = 0, cache_dir: str | None = None,
                   max_train_points: int = 65536, opq_niter: int = 20) -> VQParams:
    """:class:`VQParams` (with doc codes) of a faiss-trained ``factory``, cached under ``cache_dir`` if given."""
    path = None
    if cache_dir:
        key = hashlib.sha1(f"{fingerprint(doc_emb)}|{factory}|{seed}|{max_train_points}|{opq_niter}|"
                           f"{faiss.__version__}".encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"faiss-init-{key}.faiss"
        if path.exists():
            global _cached_init_seconds
            timing = path.with_suffix(".seconds")
            _cached_init_seconds += float(timing.read_text()) if timing.exists() else 0.0
            return params_from_index(faiss.read_index(str(path)))
    t0 = time.perf_counter()
    index = train_index(doc_emb, factory, seed, max_train_points, opq_niter)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        faiss.write_index(index, str(tmp))
        path.with_suffix(".seconds").write_text(f"{seconds:.3f}")
        os.replace(tmp, path)
    return params_from_index(index)
