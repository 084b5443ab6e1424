"""Reconstruction baselines (faiss k-means / PQ / OPQ, minimising distortion) and the exact ``flat`` reference."""
from __future__ import annotations


from benchmark.params import Param
from benchmark.registry import BaseMethod, TrainData, register
from benchmark.vq import BuiltIndex, VQParams, exact_index
from benchmark.vq.faiss_init import COARSE, INIT_PARAMS, OPQ_THREADS_NOTE, OPQ_TRAIN_POINTS, trained_params


@register
class Flat(BaseMethod):
    """Exact inner-product search over the uncompressed embeddings (IndexFlatIP): the exact-search reference."""

    name = "flat"
    family = "reference"
    params: dict = {}

    def fit(self, train: TrainData) -> BuiltIndex:
        return BuiltIndex(exact_index(train.doc_emb))


class FaissQuantizer(BaseMethod):
    """A faiss ``index_factory`` quantizer trained for reconstruction; subclasses set the factory shape."""

    family = "reconstruction"
    opq = False
    ivf = False
    params = {
        "M": Param(16, "PQ sub-quantizers = bytes per vector (8-bit codes); must divide the embedding dim", min=1),
        "max_train_points": Param(65536, "docs sampled (seeded) to train k-means / PQ / OPQ", min=256),
        "pq_assign": INIT_PARAMS["pq_assign"],
    }

    def factory(self) -> str:
        M = self.config["M"]
        parts = [f"OPQ{M}"] if self.opq else []
        if self.ivf:
            parts.append(f"IVF{self.config['nlist']}")
        parts.append(f"PQ{M}x8")
        return ",".join(parts)

    def fit(self, train: TrainData) -> VQParams:
        self.require_data(train)
        vq = trained_params(train.doc_emb, self.factory(), seed=train.seed, cache_dir=train.cache_dir,
                            max_train_points=self.config["max_train_points"],
                            opq_niter=self.config.get("opq_niter", 20), coarse=self.config.get("coarse", "kmeans"),
                            opq_train_points=self.config.get("opq_train_points", OPQ_TRAIN_POINTS),
                            pq_assign=self.config["pq_assign"])
        vq.writeback = "codes"
        return vq


OPQ_PARAMS = {**FaissQuantizer.params, "opq_niter": Param(20, "OPQ alternating-optimisation iterations", min=1),
              "opq_train_points": INIT_PARAMS["opq_train_points"]}
NLIST = Param(256, "IVF lists (coarse k-means centroids); needs >= nlist training points", min=1)


@register
class FaissPQ(FaissQuantizer):
    """Flat product quantization, ``PQ{M}x8``."""

    name = "faiss-pq"


@register
class FaissOPQ(FaissQuantizer):
    """OPQ rotation + flat PQ, ``OPQ{M},PQ{M}x8``."""

    name = "faiss-opq"
    reproducibility = "threads"
    reproducibility_note = OPQ_THREADS_NOTE
    opq = True
    params = OPQ_PARAMS


@register
class FaissIVFPQ(FaissQuantizer):
    """Spherical k-means IVF + residual PQ, ``IVF{nlist},PQ{M}x8``."""

    name = "faiss-ivfpq"
    ivf = True
    params = {**FaissQuantizer.params, "nlist": NLIST, "coarse": COARSE}


@register
class FaissIVFOPQ(FaissQuantizer):
    """OPQ rotation + IVF + residual PQ, ``OPQ{M},IVF{nlist},PQ{M}x8``."""

    name = "faiss-ivfopq"
    reproducibility = "threads"
    reproducibility_note = OPQ_THREADS_NOTE
    opq = True
    ivf = True
    params = {**OPQ_PARAMS, "nlist": NLIST, "coarse": COARSE}
