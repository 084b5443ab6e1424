"""Top-K mining, cached on disk: exact dense top-K (Distill-VQ's teacher candidates), chunked over the docs, and
the top-K of a faiss VQ index (JPQ's negative pool).

Mined once per (docs, queries, K) and keyed by content fingerprints, so training steps only gather rows and never
scan the corpus: per-step cost does not grow with the number of docs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from benchmark._io import atomic_path
from benchmark.vq.faiss_init import fingerprint
from benchmark.vq.params import VQParams, build_index

DOC_CHUNK = 262144
QUERY_CHUNK = 16384


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def exact_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, doc_chunk: int = DOC_CHUNK, gpu: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` (scores, doc indices) of ``queries``, reading ``doc_chunk`` doc rows at a time;
    ``gpu``: search each chunk with faiss-GPU when it is installed and sees a GPU (same results, up to ties)."""
    on_gpu = gpu and faiss_gpus() > 0
    n = doc_emb.shape[0]
    k = min(k, n)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    if on_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    for qs in range(0, len(q), QUERY_CHUNK):
        heap = faiss.ResultHeap(min(QUERY_CHUNK, len(q) - qs), k, keep_max=True)
        for start in range(0, n, doc_chunk):
            index.reset()
            index.add(np.ascontiguousarray(doc_emb[start:start + doc_chunk], dtype=np.float32))
            d, i = index.search(q[qs:qs + QUERY_CHUNK], min(k, index.ntotal))
            heap.add_result(d, np.where(i >= 0, i + start, -1))
        heap.finalize()
        scores[qs:qs + QUERY_CHUNK], ids[qs:qs + QUERY_CHUNK] = heap.D, heap.I
    return scores, ids


def _cached_ids(cache_dir: str | None, key: str,
                compute: Callable[[], tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """``compute() -> (ids, info)`` once per ``key`` under ``cache_dir`` (ids as .npy, info as .json beside it, both
    written atomically, the .json last, so a hit needs both), else straight through."""
    if not cache_dir:
        return compute()
    stem = Path(cache_dir) / f"topk-{hashlib.sha1(key.encode()).hexdigest()[:20]}"
    ids_path, info_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if ids_path.exists() and info_path.exists():
        return np.load(ids_path), json.loads(info_path.read_text())
    ids, info = compute()
    with atomic_path(ids_path) as tmp, open(tmp, "wb") as f:
        np.save(f, ids)
    with atomic_path(info_path) as tmp:
        Path(tmp).write_text(json.dumps(info, sort_keys=True))
    return ids, info


def cached_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, cache_dir: str | None = None, gpu: bool = False,
                teacher: dict | None = None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Doc indices (nq, k) of each query's top-``k`` by the dense teacher, cached under ``cache_dir`` when given, and
    what mined them. ``teacher``: ``{"kind": "exact"}`` (default) scans every doc (chunked; on a GPU with ``gpu``);
    ``{"kind": "ivf", "nlist": n, "nprobe": p}`` searches an IVF-SQ8 index over the corpus (:func:`ivf_teacher`,
    built once and cached) and measures its recall@k against exact on a seeded sample of the queries
    (:data:`TEACHER_CHECK` of them), recorded in the returned info. A cache hit loads neither the teacher index nor
    the corpus scan again: the ids and their info (the measured recall included) are cached together."""
    teacher = teacher or {"kind": "exact"}
    if teacher.get("kind", "exact") == "exact":
        key = f"{fingerprint(doc_emb)}|{fingerprint(queries)}|{k}|{faiss.__version__}"
        return _cached_ids(cache_dir, key,
                           lambda: (exact_topk(doc_emb, queries, k, gpu=gpu)[1], {"kind": "exact", "k": int(k)}))
    nlist, nprobe = teacher_layout(doc_emb.shape[0], teacher.get("nlist", 0), teacher.get("nprobe", 0))
    k = min(k, doc_emb.shape[0])
    q = np.ascontiguousarray(queries, dtype=np.float32)

    def search() -> tuple[np.ndarray, dict]:
        index = ivf_teacher(doc_emb, nlist, cache_dir, seed)
        faiss.extract_index_ivf(index).nprobe = nprobe
        ids = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), QUERY_CHUNK):
            ids[start:start + QUERY_CHUNK] = index.search(q[start:start + QUERY_CHUNK], k)[1]
        sample = np.sort(np.random.default_rng(seed).permutation(len(q))[:TEACHER_CHECK])
        exact = exact_topk(doc_emb, q[sample], k, gpu=gpu)[1]
        recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids[sample], exact)]))
        return ids, {"kind": "ivf", "k": int(k), "nlist": nlist, "nprobe": nprobe, "recall_at_k": round(recall, 5),
                     "recall_sample": int(len(sample)), "factory": f"IVF{nlist},SQ8"}
    key = f"ivf-teacher|{fingerprint(doc_emb)}|{fingerprint(queries)}|{k}|{nlist}|{nprobe}|{seed}|{faiss.__version__}"
    return _cached_ids(cache_dir, key, search)


TEACHER_CHECK = 1000   # queries whose ivf-teacher top-K is compared with the exact one
TEACHER_POINTS_PER_LIST = 64   # k-means sample of the ivf teacher (faiss asks for at least 39 per list)
TEACHER_KMEANS_ITERS = 10


def teacher_layout(num_docs: int, nlist: int = 0, nprobe: int = 0) -> tuple[int, int]:
    """The ivf teacher's (nlist, nprobe): 0 = defaults (4 * sqrt(docs) as a power of two; nlist / 8, at least 32),
    both clamped to what the corpus allows."""
    if not nlist:   # a power of two, with faiss's 39 training points per list
        nlist = min(1 << max(0, round(np.log2(4 * np.sqrt(max(num_docs, 1))))),
                    1 << max(0, int(np.log2(max(num_docs // 39, 1)))))
    nlist = max(1, min(nlist, num_docs // 39 or 1))
    nprobe = nprobe or max(32, nlist // 8)
    return nlist, min(nprobe, nlist)


def ivf_teacher(doc_emb: np.ndarray, nlist: int, cache_dir: str | None, seed: int = 0) -> faiss.Index:
    """An IVF inner-product index over every doc with 8-bit scalar-quantized vectors (``IVF{nlist},SQ8``: d bytes
    per doc, a quarter of the float32 corpus, so no N x d float array is ever held): k-means (10 iterations) on a
    seeded sample (at most 64 points per list), docs added in chunks; cached as a .faiss file under ``cache_dir``.
    Only the top-K *set* comes from it: the teacher's scores of the mined candidates are computed exactly in
    training."""
    key = f"{fingerprint(doc_emb)}|{nlist}|{seed}|{faiss.__version__}"
    path = Path(cache_dir) / f"ivf-teacher-{hashlib.sha1(key.encode()).hexdigest()[:20]}.faiss" if cache_dir else None
    if path is not None and path.exists():
        return faiss.read_index(str(path))
    n, d = doc_emb.shape
    rows = np.sort(np.random.default_rng(seed).permutation(n)[:min(n, TEACHER_POINTS_PER_LIST * nlist)])
    index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.seed = seed
    faiss.extract_index_ivf(index).cp.niter = TEACHER_KMEANS_ITERS
    index.train(np.ascontiguousarray(doc_emb[rows], dtype=np.float32))
    for start in range(0, n, DOC_CHUNK):
        index.add(np.ascontiguousarray(doc_emb[start:start + DOC_CHUNK], dtype=np.float32))
    if path is not None:
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
    return index


def index_topk(vq: VQParams, doc_emb: np.ndarray, queries: np.ndarray, k: int, cache_dir: str | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, dict]:
    """Doc indices (nq, k) int32 of each query's top-``k`` in the faiss index of ``vq``, searched in query chunks and
    cached under ``cache_dir`` when given, and what mined them. ``nprobe``: IVF lists probed; None = every list (an
    exhaustive scan of the codes: exact for this index, a cost linear in the corpus per query). With fewer lists
    probed, a query whose probed lists hold fewer than ``k`` docs is searched again over every list, so every row
    is full; the info counts them (``refilled``)."""
    def search() -> tuple[np.ndarray, dict]:
        index = build_index(vq, doc_emb)
        ivf = faiss.extract_index_ivf(index) if vq.nlist else None
        probe = vq.nlist if ivf is None or nprobe is None else min(nprobe, vq.nlist)
        if ivf is not None:
            ivf.nprobe = probe
        q = np.asarray(queries, dtype=np.float32)
        if vq.query_map is not None:
            q = q @ vq.query_map.T
        out = np.empty((len(q), min(k, doc_emb.shape[0])), dtype=np.int32)
        for start in range(0, len(q), QUERY_CHUNK):
            out[start:start + QUERY_CHUNK] = index.search(np.ascontiguousarray(q[start:start + QUERY_CHUNK]),
                                                          out.shape[1])[1]
        short = np.flatnonzero((out < 0).any(axis=1))
        if len(short):   # their probed lists held fewer than k docs: every list for them
            ivf.nprobe = vq.nlist
            for start in range(0, len(short), QUERY_CHUNK):
                rows = short[start:start + QUERY_CHUNK]
                out[rows] = index.search(np.ascontiguousarray(q[rows]), out.shape[1])[1]
        return out, {"kind": "index", "k": int(out.shape[1]), "nprobe": int(probe), "nlist": int(vq.nlist or 0),
                     "refilled": int(len(short))}
    model = hashlib.sha1()
    for part in (vq.pq_codebooks, vq.ivf_centroids, vq.rotation, vq.query_map, vq.doc_codes, vq.doc_assign):
        model.update(b"-" if part is None else np.ascontiguousarray(part))   # hashed in place, no bytes copy
    # the thread count: an OPQ rotation applied with another one may round a near-tie the other way (faiss_init)
    key = f"index|{model.hexdigest()}|{fingerprint(queries)}|{k}|{faiss.__version__}|{faiss.omp_get_max_threads()}"
    if nprobe is not None and vq.nlist and nprobe < vq.nlist:
        key += f"|nprobe={nprobe}"
    return _cached_ids(cache_dir, key, search)
