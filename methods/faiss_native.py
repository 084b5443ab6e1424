"""faiss's own compact codes as references at matched budgets: 4-bit fast-scan PQ, scalar quantization, RaBitQ and
binary sign codes. Each fit returns a :class:`benchmark.vq.BuiltIndex` (every doc added, ids 0..n-1, inner product),
searched as built: no refinement / exact re-scoring anywhere, so the codes are all the index stores besides faiss's
per-vector factors. Bytes per vector are read from the index (``sa_code_size()``, the bytes one encoded vector takes)
and put in ``info["bytes_per_vector"]`` with the factory string.
"""
from __future__ import annotations

import time

import faiss
import numpy as np

from benchmark.params import Param
from benchmark.registry import BaseMethod, DataFacts, TrainData, register
from benchmark.vq import BuiltIndex, add_in_chunks
from benchmark.vq.faiss_init import MAX_POINTS_PER_CENTROID, training_sample

MAX_TRAIN = Param(65536, "docs sampled (seeded) to train the quantizer", min=1)


def _built(index: faiss.Index, factory: str, train_seconds: float, **extra) -> BuiltIndex:
    return BuiltIndex(index, info={"factory": factory, "bytes_per_vector": int(index.sa_code_size()),
                                   "faiss_train_seconds": train_seconds, **extra})


def _train_add(index: faiss.Index, train: TrainData, max_points: int) -> float:
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(training_sample(train.doc_emb, max_points, train.seed))
    seconds = time.perf_counter() - t0
    add_in_chunks(index, train.doc_emb)
    return seconds


@register
class FaissPQFastScan(BaseMethod):
    """4-bit fast-scan PQ, ``PQ{2M}x4fs`` (M bytes/vector, SIMD LUT search, refine off)."""

    name = "faiss-pq-fastscan"
    family = "reconstruction"
    params = {"M": Param(16, "bytes per vector (2*M sub-quantizers of 16 centroids)", min=1),
              "max_train_points": MAX_TRAIN}

    def code_layout(self) -> tuple[int, int]:
        return 2 * self.config["M"], 4

    def fit(self, train: TrainData) -> BuiltIndex:
        self.require_data(train)
        M2, _ = self.code_layout()
        factory = f"PQ{M2}x4fs"
        index = faiss.index_factory(train.dim, factory, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = train.seed
        index.pq.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
        seconds = _train_add(index, train, self.config["max_train_points"])
        return _built(index, factory, seconds)


@register
class FaissSQ(BaseMethod):
    """Scalar quantization, ``SQ{bits}`` (per-dimension uniform range trained on the docs)."""

    name = "faiss-sq"
    family = "reconstruction"
    params = {"bits": Param(8, "bits per dimension", choices=(4, 6, 8)), "max_train_points": MAX_TRAIN}

    def fit(self, train: TrainData) -> BuiltIndex:
        factory = f"SQ{self.config['bits']}"
        index = faiss.index_factory(train.dim, factory, faiss.METRIC_INNER_PRODUCT)
        seconds = _train_add(index, train, self.config["max_train_points"])  # min/max: no randomness
        return _built(index, factory, seconds)


@register
class FaissRaBitQ(BaseMethod):
    """RaBitQ (Gao & Long 2024) and its multi-bit extension, faiss ``IndexRaBitQ`` behind a seeded random rotation.

    ``info["bytes_per_vector"]`` counts faiss's per-vector float factors besides the nb_bits*d code bits."""

    name = "faiss-rabitq"
    reproducibility = "threads"
    reproducibility_note = ("the seeded random rotation is applied by BLAS sgemm, whose last float bits "
                            "depend on the thread count")
    family = "reconstruction"
    params = {
        "nb_bits": Param(1, "bits per dimension of the code (1 = RaBitQ; 2..9 = extended RaBitQ)", min=1, max=9),
        "qb": Param(8, "bits of the scalar-quantized query (faiss's default is 4; 0 = float query)", min=0, max=8),
        "rotate": Param(True, "apply a seeded random orthogonal rotation first (RaBitQ's analysis assumes it)"),
        "max_train_points": MAX_TRAIN,
    }

    def fit(self, train: TrainData) -> BuiltIndex:
        d, cfg = train.dim, self.config
        metric = faiss.METRIC_INNER_PRODUCT
        if cfg.get("nlist"):
            quantizer = faiss.IndexFlatIP(d)
            base = faiss.IndexIVFRaBitQ(quantizer, d, cfg["nlist"], metric, True, cfg["nb_bits"])
            base.own_fields = True
            quantizer.this.disown()
            base.cp.seed = train.seed
            base.cp.spherical = True
            base.cp.max_points_per_centroid = MAX_POINTS_PER_CENTROID
            factory = f"IVF{cfg['nlist']},RaBitQ{cfg['nb_bits']}"
        else:
            base = faiss.IndexRaBitQ(d, metric, cfg["nb_bits"])
            factory = f"RaBitQ{cfg['nb_bits']}"
        base.qb = cfg["qb"]
        index = base
        if cfg["rotate"]:
            rr = faiss.RandomRotationMatrix(d, d)
            rr.init(train.seed)
            index = faiss.IndexPreTransform(rr, base)
            index.own_fields = True
            base.this.disown()
            rr.this.disown()
            factory = f"RR{d}," + factory
        seconds = _train_add(index, train, cfg["max_train_points"])
        return _built(index, factory, seconds, qb=cfg["qb"])


@register
class FaissIVFRaBitQ(FaissRaBitQ):
    """Spherical k-means IVF + RaBitQ codes of the residuals, faiss ``IndexIVFRaBitQ`` (seeded rotation first)."""

    name = "faiss-ivfrabitq"
    params = {**FaissRaBitQ.params, "nlist": Param(256, "IVF lists (searched at the harness's nprobe sweep)", min=1)}


def sign_codebooks(dim: int) -> np.ndarray:
    """PQ codebooks (dim/8, 256, 8) whose codeword j of every block is the sign pattern of j's bits, /sqrt(dim):
    all codewords have one norm, so the nearest (L2) codeword of a block is its sign pattern."""
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
    block = np.where(bits == 1, 1.0, -1.0) / np.sqrt(dim)
    return np.broadcast_to(block, (dim // 8, 256, 8)).astype(np.float32)


@register
class BinarySign(BaseMethod):
    """Binary sign quantization (1 bit per dimension, d/8 bytes), scored asymmetrically: float query . sign(doc)."""

    name = "binary-sign"
    family = "reconstruction"
    params: dict = {}

    def check_data(self, data: DataFacts) -> list[str]:
        problems = super().check_data(data)
        if data.dim % 8:
            problems.append(f"the embedding dim {data.dim} must be a multiple of 8 (8 sign bits per byte)")
        return problems

    def fit(self, train: TrainData) -> BuiltIndex:
        self.require_data(train)
        d = train.dim
        # An IndexPQ over 8-dim blocks whose 256 codewords are the 256 sign patterns: its encoder stores exactly the
        # sign bits, its search scores q . sign(x) / sqrt(d) in float (no Hamming approximation of the query, no
        # re-scoring). faiss's IndexBinaryFlat / IndexLSH would also binarize the query and return Hamming
        # distances, which the harness (ranking by score, higher first) cannot take as they are.
        index = faiss.IndexPQ(d, d // 8, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(sign_codebooks(d).ravel(), index.pq.centroids)
        index.is_trained = True
        add_in_chunks(index, train.doc_emb)
        return _built(index, f"PQ{d // 8}x8(sign)", 0.0)
