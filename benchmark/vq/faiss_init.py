"""Train faiss reconstruction quantizers (k-means / PQ / OPQ) reproducibly, with an on-disk cache.

Learned methods start from the same faiss quantizer as their reconstruction baseline; the cache (keyed by the doc
matrix fingerprint, factory string, seed, training knobs, faiss version and thread count) lets a suite train each one
once.

Thread count: faiss's k-means (IVF, PQ) gave bit-identical centroids at 1 and 2 threads here, but OPQ does not: its
rotation is fitted with BLAS sgemm (and applied with it to every doc and query), and OpenBLAS's sgemm rounds the last
float bit differently with another thread count (:data:`OPQ_THREADS_NOTE`). So the thread count is part of the cache
key: a cached init is exactly what this run would have trained, whichever run trained it first.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmark._io import atomic_path, write_text
from benchmark.params import Param
from benchmark.vq.params import VQParams, params_from_index

MAX_POINTS_PER_CENTROID = 256
# why methods with an OPQ rotation are reproducible for the same --threads only (``BaseMethod.reproducibility``)
OPQ_THREADS_NOTE = ("faiss's OPQ rotation is fitted and applied with BLAS sgemm, whose last float bits depend on the "
                    "thread count; measured 1 vs 2 threads on synthetic:quick: metrics moved by up to 0.0015")
# faiss prints "WARNING clustering N points to K centroids" below 39 points per centroid (only a print: the
# clustering is the same). Small samples are deliberate here (the quick preset, OPQ's sample, small corpora), so
# the warning is off and the sample size is recorded in the init's info instead.
MIN_POINTS_PER_CENTROID = 1
OPQ_TRAIN_POINTS = MAX_POINTS_PER_CENTROID * 256   # faiss's OPQMatrix default, 256 points per PQ centroid
# how IVF lists are trained; "two-level" came later, so "kmeans" is left out of records and fit ids (legacy)
COARSE = Param("kmeans", "how the IVF lists are trained (IVF layouts only): kmeans = faiss's spherical k-means on the "
                         "sample; two-level = faiss.contrib.clustering.two_level_clustering (sqrt(nlist) clusters, "
                         "each split in proportion to its size: ~sqrt(nlist)/2 times less work, for thousands of "
                         "lists)",
               choices=("kmeans", "two-level"), legacy=("kmeans",))
# how sub-vectors are assigned to PQ codewords in the faiss init; "flat-index" came later, so "tables" is left out of
# records and fit ids (legacy)
PQ_ASSIGN = Param("tables", "how the faiss init assigns sub-vectors to PQ codewords (in OPQ's alternations and for "
                            "every doc's code): tables = faiss's compute_codes (a distance table per vector, faiss's "
                            "default); flat-index = compute_codes_with_assign_index (an IndexFlatL2 search per "
                            "sub-quantizer: ~12x faster at 16-d sub-vectors). The same codes up to float near-ties "
                            "(2 in 3.1M codes at 768-d here), so an OPQ rotation may end in another local optimum",
                  choices=("tables", "flat-index"), legacy=("tables",))
INIT_PARAMS = {
    "max_train_points": Param(65536, "docs sampled (seeded) to train the faiss init", min=1),
    "opq_niter": Param(20, "OPQ alternating iterations of the faiss init", min=1),
    "opq_train_points": Param(OPQ_TRAIN_POINTS, "sample points OPQ's rotation is fitted on (faiss's default; each "
                                                "alternation trains a PQ on them)", min=256,
                              legacy=(OPQ_TRAIN_POINTS,)),
    "coarse": COARSE,
    "pq_assign": PQ_ASSIGN,
}


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


def _quiet(cp: Any) -> None:
    cp.min_points_per_centroid = MIN_POINTS_PER_CENTROID


def _configure(index: faiss.Index, seed: int, opq_niter: int, opq_points: int = OPQ_TRAIN_POINTS,
               pq_assign: str = "tables") -> list:
    """Seed every clustering inside an index_factory index, cap k-means subsampling, silence small-sample warnings;
    with ``pq_assign = "flat-index"`` OPQ's alternations encode through an IndexFlatL2 per sub-quantizer.

    Returns (OPQ, its PQ, its assign index) triples: faiss only points to them, so they must outlive training (then
    they are unset).
    """
    keep = []
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = opq_niter
                vt.max_train_points = opq_points
                # faiss trains OPQ's PQ on a default ProductQuantizer(d, M, 8) unless given one: give an identical
                # one (same default seed and knobs) that does not warn
                pq = faiss.ProductQuantizer(vt.d_out, vt.M, 8)
                _quiet(pq.cp)
                assign = faiss.IndexFlatL2(pq.dsub) if pq_assign == "flat-index" else None
                pq.assign_index = assign   # OPQMatrix.train encodes with it when set
                vt.pq = pq
                keep.append((vt, pq, assign))
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexIVF):
        index.cp.seed = seed
        index.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
        index.cp.spherical = index.metric_type == faiss.METRIC_INNER_PRODUCT
        _quiet(index.cp)
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False  # index_factory turns it on; it only reorders codes, slowly
    if hasattr(index, "pq"):
        index.pq.cp.seed = seed
        index.pq.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
        _quiet(index.pq.cp)
    return keep


def two_level_centroids(x: np.ndarray, nlist: int, seed: int, spherical: bool, niter: int = 25) -> np.ndarray:
    """``nlist`` k-means centroids of ``x`` in two levels (faiss.contrib.clustering.two_level_clustering):
    round(sqrt(nlist)) clusters (``niter`` iterations), each split in proportion to its size (faiss.Kmeans defaults:
    25 iterations, at most 256 points per centroid); small-sample warnings off. Float32 (nlist, d)."""
    from faiss.contrib.clustering import two_level_clustering
    centroids, _ = two_level_clustering(x, max(1, int(round(nlist ** 0.5))), nlist, seed=seed, clustering_niter=niter,
                                        spherical=spherical, min_points_per_centroid=MIN_POINTS_PER_CENTROID)
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _two_level_lists(index: faiss.Index, sample: np.ndarray, seed: int) -> None:
    """Fill the IVF quantizer of ``index`` with two-level k-means centroids of ``sample`` (after the index's own
    pre-transforms, trained on it first), so that ``index.train`` finds the lists done and trains the rest."""
    x = sample
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = index.chain.at(i)
            vt.train(x)
            x = vt.apply(x)
        index = faiss.downcast_index(index.index)
    ivf = faiss.extract_index_ivf(index)   # level 1 with the IVF's own iterations and metric
    ivf.quantizer.add(two_level_centroids(x, ivf.nlist, seed, bool(ivf.cp.spherical), ivf.cp.niter))


def train_index(doc_emb: np.ndarray, factory: str, seed: int = 0, max_train_points: int = 65536,
                opq_niter: int = 20, add: bool = True, coarse: str = "kmeans",
                opq_train_points: int = OPQ_TRAIN_POINTS, pq_assign: str = "tables") -> faiss.Index:
    """Train ``factory`` (inner product) on a seeded sample of the docs and add all docs in chunks (ids 0..n-1);
    ``coarse``: how its IVF lists (if any) are trained (:data:`COARSE`); ``pq_assign``: how sub-vectors are encoded
    (:data:`PQ_ASSIGN`)."""
    index = faiss.index_factory(doc_emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    keep = _configure(index, seed, opq_niter, opq_train_points, pq_assign)
    sample = training_sample(doc_emb, max_train_points, seed)
    if coarse == "two-level" and "IVF" in factory:
        _two_level_lists(index, sample, seed)
    index.train(sample)
    for vt, pq, _ in keep:
        vt.pq = None
        pq.assign_index = None
    if add:
        add_docs(index, doc_emb, pq_assign)
    return index


ADD_CHUNK = 65536   # docs encoded and added at a time


def add_docs(index: faiss.Index, doc_emb: np.ndarray, pq_assign: str = "tables") -> None:
    """Add every doc (ids 0..n-1, in chunks) to a trained ``[OPQ,][IVF,]PQ{M}x8`` index. ``pq_assign = "tables"``:
    faiss's own ``add``. ``"flat-index"``: the same steps spelled out (pre-transform, coarse assignment, residual) with
    the codes from ``compute_codes_with_assign_index``, added as faiss's standalone codes (``add_sa_codes``: list
    number + PQ code); other index types are added by faiss."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    chain = ([index.chain.at(i) for i in range(index.chain.size())]
             if isinstance(index, faiss.IndexPreTransform) else [])
    direct = pq_assign == "flat-index" and type(inner) in (faiss.IndexPQ, faiss.IndexIVFPQ) and inner.pq.nbits == 8
    if direct:
        pq = inner.pq
        pq.assign_index = faiss.IndexFlatL2(pq.dsub)
    try:
        for start in range(0, doc_emb.shape[0], ADD_CHUNK):
            x = np.ascontiguousarray(doc_emb[start:start + ADD_CHUNK], dtype=np.float32)
            if not direct:
                index.add(x)
                continue
            for vt in chain:
                x = vt.apply(x)
            prefix = np.empty((len(x), 0), dtype=np.uint8)
            if isinstance(inner, faiss.IndexIVF):
                lists = inner.quantizer.assign(x, 1).ravel()
                if inner.by_residual:
                    x = x - inner.quantizer.reconstruct_batch(lists)
                prefix = lists.astype("<i8").view(np.uint8).reshape(len(x), 8)[:, :inner.coarse_code_size()]
            codes = np.empty((len(x), pq.code_size), dtype=np.uint8)
            pq.compute_codes_with_assign_index(faiss.swig_ptr(x), faiss.swig_ptr(codes), len(x))
            inner.add_sa_codes(np.ascontiguousarray(np.hstack([prefix, codes])))
            index.ntotal = inner.ntotal
    finally:
        if direct:
            pq.assign_index = None


def trained_params(doc_emb: np.ndarray, factory: str, seed: int = 0, cache_dir: str | None = None,
                   max_train_points: int = 65536, opq_niter: int = 20, coarse: str = "kmeans",
                   opq_train_points: int = OPQ_TRAIN_POINTS, pq_assign: str = "tables") -> VQParams:
    """:class:`VQParams` (with doc codes) of a faiss-trained ``factory``, cached under ``cache_dir`` if given.

    Its ``info``: ``init`` (the factory), ``init_sample`` (docs it trained on), ``init_seconds`` (what training it
    took: measured now, or read from the cache's ``.seconds`` file), ``init_cached`` (served from the cache) and
    ``cached_init_seconds`` (``init_seconds`` if cached else 0.0: the cost a fit pays for an init it did not train;
    the runner adds it to the fit's wall time).
    """
    path = None
    if cache_dir:
        key = hashlib.sha1(f"{fingerprint(doc_emb)}|{factory}|{seed}|{max_train_points}|{opq_niter}|"
                           f"{faiss.__version__}|threads={faiss.omp_get_max_threads()}"
                           f"{'' if coarse == 'kmeans' else '|coarse=' + coarse}"
                           f"{'' if opq_train_points == OPQ_TRAIN_POINTS else f'|opq_points={opq_train_points}'}"
                           f"{'' if pq_assign == 'tables' else '|pq_assign=' + pq_assign}"
                           .encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"faiss-init-{key}.faiss"
    cached = path is not None and path.exists()
    if cached:
        index = faiss.read_index(str(path))
        timing = path.with_suffix(".seconds")
        seconds = float(timing.read_text()) if timing.exists() else 0.0
    else:
        t0 = time.perf_counter()
        index = train_index(doc_emb, factory, seed, max_train_points, opq_niter, coarse=coarse,
                            opq_train_points=opq_train_points, pq_assign=pq_assign)
        seconds = time.perf_counter() - t0
        if path is not None:
            write_text(path.with_suffix(".seconds"), f"{seconds:.3f}")
            with atomic_path(path) as tmp:
                faiss.write_index(index, str(tmp))
    vq = params_from_index(index)
    vq.info = {"init": factory, "init_sample": min(doc_emb.shape[0], max_train_points), "init_seconds": seconds,
               **({"init_coarse": coarse} if "IVF" in factory else {}),
               **({} if pq_assign == "tables" else {"init_pq_assign": pq_assign}),
               "init_cached": cached, "cached_init_seconds": seconds if cached else 0.0}
    return vq


def init_for(train: Any, factory: str, config: dict[str, Any]) -> VQParams:
    """The faiss init of a method: ``trained_params`` on ``train``'s docs, seed and cache with the method's
    ``max_train_points`` / ``opq_niter`` / ``opq_train_points`` / ``coarse`` / ``pq_assign`` (:data:`INIT_PARAMS`),
    shared with every method using the same init."""
    return trained_params(train.doc_emb, factory, seed=train.seed, cache_dir=train.cache_dir,
                          max_train_points=config["max_train_points"], opq_niter=config["opq_niter"],
                          coarse=config.get("coarse", "kmeans"),
                          opq_train_points=config.get("opq_train_points", OPQ_TRAIN_POINTS),
                          pq_assign=config.get("pq_assign", "tables"))
