"""Exact-dense top-K mining (the teacher's candidate lists), chunked over the docs and cached on disk.

Mined once per (docs, queries, K) and keyed by content fingerprints, so training steps only gather rows and never
scan the corpus: per-step cost does not grow with the number of docs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np

from benchmark.faiss_train import fingerprint

DOC_CHUNK = 262144
QUERY_CHUNK = 16384


def exact_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, doc_chunk: int = DOC_CHUNK
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` (scores, doc indices) of ``queries``, reading ``doc_chunk`` doc rows at a time."""
    n = doc_emb.shape[0]
    k = min(k, n)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for qs in range(0, len(q), QUERY_CHUNK):
        heap = faiss.ResultHeap(min(QUERY_CHUNK, len(q) - qs), k, keep_max=True)
        for start in range(0, n, doc_chunk):
            index = faiss.IndexFlatIP(doc_emb.shape[1])
            index.add(np.ascontiguousarray(doc_emb[start:start + doc_chunk], dtype=np.float32))
            d, i = index.search(q[qs:qs + QUERY_CHUNK], min(k, index.ntotal))
            heap.add_result(d, np.where(i >= 0, i + start, -1))
        heap.finalize()
        scores[qs:qs + QUERY_CHUNK], ids[qs:qs + QUERY_CHUNK] = heap.D, heap.I
    return scores, ids


def cached_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, cache_dir: str | None = None) -> np.ndarray:
    """Doc indices (nq, k) of each query's exact top-``k``, cached under ``cache_dir`` when given."""
    path = None
    if cache_dir:
        key = hashlib.sha1(f"{fingerprint(doc_emb)}|{fingerprint(queries)}|{k}|{faiss.__version__}".encode())
        path = Path(cache_dir) / f"topk-{key.hexdigest()[:20]}.npy"
        if path.exists():
            return np.load(path)
    _, ids = exact_topk(doc_emb, queries, k)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
        np.save(tmp, ids)
        os.replace(tmp, path)
    return ids
