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
from benchmark.vq.faiss_init import fingerprint, two_level_centroids
from benchmark.vq.params import VQParams, build_index

DOC_CHUNK = 262144
QUERY_CHUNK = 16384


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def torch_exact_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, device: str,
                     doc_chunk: int = DOC_CHUNK, query_chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_topk` by torch on ``device`` (a GPU without faiss-GPU): each block of ``doc_chunk`` doc rows is
    copied to the device once per query block, scored by one matmul, and its top-``k`` merged into the running one
    (``torch.topk`` over the concatenation). Same results as faiss up to ties and float rounding (test)."""
    import torch
    n = doc_emb.shape[0]
    k = min(k, n)
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for qs in range(0, len(queries), query_chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[qs:qs + query_chunk], dtype=np.float32)).to(device)
        best_s = torch.full((len(q), 0), float("-inf"), device=device)
        best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
        for start in range(0, n, doc_chunk):
            d = torch.from_numpy(np.ascontiguousarray(doc_emb[start:start + doc_chunk], dtype=np.float32)).to(device)
            s, i = (q @ d.T).topk(min(k, len(d)), dim=1)
            best_s, pick = torch.cat([best_s, s], dim=1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + start], dim=1).gather(1, pick)
        scores[qs:qs + len(q)], ids[qs:qs + len(q)] = best_s.cpu().numpy(), best_i.cpu().numpy()
    return scores, ids


def exact_topk(doc_emb: np.ndarray, queries: np.ndarray, k: int, doc_chunk: int = DOC_CHUNK, gpu: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` (scores, doc indices) of ``queries``, reading ``doc_chunk`` doc rows at a time;
    ``gpu``: on the GPU, by faiss-GPU when it is installed and sees one, else by torch matmuls on CUDA
    (:func:`torch_exact_topk`; same results, up to ties)."""
    on_gpu = gpu and faiss_gpus() > 0
    if gpu and not on_gpu and _torch_cuda():
        return torch_exact_topk(doc_emb, queries, k, "cuda", doc_chunk)
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
    ``{"kind": "ivf", "nlist": n, "nprobe": p, "recall": r}`` searches an IVF-SQ8 index over the corpus
    (:func:`ivf_teacher`, built once and cached). Its nprobe, when 0, is calibrated: the smallest power of two whose
    recall@k against exact reaches ``r`` on :data:`TEACHER_CALIBRATION` sampled queries; its recall is then measured
    on :data:`TEACHER_CHECK` *other* sampled queries (so the recorded recall is not the one the nprobe was picked on)
    and recorded in the returned info with the calibration curve. A cache hit loads neither the teacher index nor the
    corpus scan again: the ids and their info (the measured recall included) are cached together."""
    teacher = teacher or {"kind": "exact"}
    if teacher.get("kind", "exact") == "exact":
        key = f"{fingerprint(doc_emb)}|{fingerprint(queries)}|{k}|{faiss.__version__}"
        return _cached_ids(cache_dir, key,
                           lambda: (exact_topk(doc_emb, queries, k, gpu=gpu)[1], {"kind": "exact", "k": int(k)}))
    nlist = teacher_nlist(doc_emb.shape[0], teacher.get("nlist", 0))
    given = int(teacher.get("nprobe", 0) or 0)
    target = float(teacher.get("recall", TEACHER_RECALL) or TEACHER_RECALL)
    k = min(k, doc_emb.shape[0])
    q = np.ascontiguousarray(queries, dtype=np.float32)

    def recall(ids: np.ndarray, exact: np.ndarray) -> float:
        return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, exact)]))

    def search() -> tuple[np.ndarray, dict]:
        index, built = ivf_teacher(doc_emb, nlist, cache_dir, seed)
        ivf = faiss.extract_index_ivf(index)
        check, calib = teacher_samples(len(q), seed)
        info = {"kind": "ivf", "k": int(k), "nlist": nlist, **built}
        if given:
            nprobe = min(given, nlist)
            info["nprobe_rule"] = "given"
        else:   # the smallest power of two reaching the target on the calibration queries (all lists at most)
            exact = exact_topk(doc_emb, q[calib], k, gpu=gpu)[1]
            curve = {}
            for nprobe in [min(1 << i, nlist) for i in range(nlist.bit_length() + 1)]:
                ivf.nprobe = nprobe
                curve[nprobe] = round(recall(index.search(q[calib], k)[1], exact), 5)
                if curve[nprobe] >= target or nprobe == nlist:
                    break
            info.update(nprobe_rule=f"calibrated: smallest power of two with recall@{k} >= {target} on "
                                    f"{len(calib)} other sampled queries", recall_target=target,
                        calibration={str(p): r for p, r in curve.items()}, calibration_sample=int(len(calib)))
        ivf.nprobe = nprobe
        ids = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), QUERY_CHUNK):
            ids[start:start + QUERY_CHUNK] = index.search(q[start:start + QUERY_CHUNK], k)[1]
        info.update(nprobe=int(nprobe), recall_at_k=round(recall(ids[check], exact_topk(doc_emb, q[check], k,
                                                                                         gpu=gpu)[1]), 5),
                    recall_sample=int(len(check)))
        return ids, info
    key = (f"ivf-teacher|{fingerprint(doc_emb)}|{fingerprint(queries)}|{k}|{nlist}|{given or target}|{seed}|"
           f"{faiss.__version__}|v2")
    return _cached_ids(cache_dir, key, search)


TEACHER_CHECK = 1000         # queries whose ivf-teacher top-K is compared with the exact one (the recorded recall)
TEACHER_CALIBRATION = 500    # other queries the teacher's nprobe is calibrated on
TEACHER_RECALL = 0.96        # the recall@K a calibrated nprobe reaches on the calibration queries: above 0.95 by
                             # about the spread of a 500-query sample, so the recall measured on the check queries
                             # clears 0.95
TEACHER_POINTS_PER_LIST = 64   # k-means sample of the ivf teacher (faiss asks for at least 39 per list)
TEACHER_MAX_NLIST = 4096     # the default nlist's cap: assigning docs costs n * nlist * d, so past a few thousand
                             # lists the assignment outgrows the scan it saves (8.8M docs: ~10 min at 4,096 lists,
                             # ~40 at 16,384 on 2 cores; an HNSW graph over the centroids was no faster at 768-d:
                             # 0.53 vs 0.56 ms per doc at 16,384 centroids for 99.8% of the assignments)


def teacher_nlist(num_docs: int, nlist: int = 0) -> int:
    """The ivf teacher's number of lists: ``nlist``, or 0 = 4 * sqrt(docs) as a power of two, at most
    :data:`TEACHER_MAX_NLIST` and at most the largest power of two that leaves faiss's 39 training points per list;
    any nlist is clamped to docs / 39."""
    if not nlist:
        nlist = min(1 << max(0, round(np.log2(4 * np.sqrt(max(num_docs, 1))))), TEACHER_MAX_NLIST,
                    1 << max(0, int(np.log2(max(num_docs // 39, 1)))))
    return max(1, min(nlist, num_docs // 39 or 1))


def teacher_samples(num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded samples of query rows (sorted): the recall check (at most :data:`TEACHER_CHECK`, at most
    half the queries) and the nprobe calibration (at most :data:`TEACHER_CALIBRATION` of the rest)."""
    perm = np.random.default_rng(seed).permutation(num_queries)
    n_check = min(TEACHER_CHECK, max(1, num_queries // 2))
    return np.sort(perm[:n_check]), np.sort(perm[n_check:n_check + TEACHER_CALIBRATION])


def ivf_teacher(doc_emb: np.ndarray, nlist: int, cache_dir: str | None, seed: int = 0) -> tuple[faiss.Index, dict]:
    """An IVF inner-product index over every doc with 8-bit scalar-quantized vectors (d bytes per doc, a quarter of
    the float32 corpus, so no N x d float array is ever held), cached as a .faiss file under ``cache_dir``, and how it
    was built. Its lists: two-level spherical k-means (faiss.contrib.clustering.two_level_clustering: sqrt(nlist)
    clusters, each split in proportion to its size) on a seeded sample of at most 64 points per list, so training
    grows like nlist^1.5 instead of nlist^2 (4,096 lists from 262k points at 768-d: ~1 TFLOP instead of ~16). Docs
    are added in chunks. Only the top-K *set* comes from it: the teacher's scores of the mined candidates are computed
    exactly in training."""
    n, d = doc_emb.shape
    built = {"factory": f"IVF{nlist},SQ8", "coarse": "two-level spherical k-means"}
    key = f"{fingerprint(doc_emb)}|{nlist}|{seed}|{faiss.__version__}|two-level"
    path = Path(cache_dir) / f"ivf-teacher-{hashlib.sha1(key.encode()).hexdigest()[:20]}.faiss" if cache_dir else None
    if path is not None and path.exists():
        return faiss.read_index(str(path)), built
    rows = np.sort(np.random.default_rng(seed).permutation(n)[:min(n, TEACHER_POINTS_PER_LIST * nlist)])
    sample = np.ascontiguousarray(doc_emb[rows], dtype=np.float32)
    index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).quantizer.add(two_level_centroids(sample, nlist, seed, spherical=True))
    index.train(sample)          # the quantizer is full: only the 8-bit ranges are trained
    del sample
    for start in range(0, n, DOC_CHUNK):
        index.add(np.ascontiguousarray(doc_emb[start:start + DOC_CHUNK], dtype=np.float32))
    if path is not None:
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
    return index, built


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
