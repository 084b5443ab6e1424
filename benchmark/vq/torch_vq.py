"""Torch side of a VQ: trainable IVF centroids and PQ codebooks over fixed doc assignments/codes.

Learned methods (JPQ, Distill-VQ, ...) train a :class:`TorchVQ` (through :mod:`benchmark.vq.train`) and hand back
:meth:`TorchVQ.to_params`; the harness then searches a faiss index built from exactly these tensors, so torch and
faiss scores agree.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.vq.params import VQParams, add_codes, empty_index


class TorchVQ(nn.Module):
    """IVF centroids O (nlist, d), PQ codebooks C (M, K, d/M), fixed rotation R, per-doc list a(d) and codes."""

    def __init__(self, vq: VQParams, train_centroids: bool = True, train_codebooks: bool = True,
                 query_adapter: bool = False) -> None:
        super().__init__()
        if vq.doc_codes is None or (vq.nlist and vq.doc_assign is None):
            raise ValueError("TorchVQ needs the docs' PQ codes (and IVF assignment for an IVF index)")
        self.codebooks = nn.Parameter(torch.from_numpy(np.array(vq.pq_codebooks, dtype=np.float32)),
                                      requires_grad=train_codebooks)
        self.centroids = (nn.Parameter(torch.from_numpy(np.array(vq.ivf_centroids, dtype=np.float32)),
                                       requires_grad=train_centroids) if vq.nlist else None)
        rot = None if vq.rotation is None else torch.from_numpy(np.array(vq.rotation, dtype=np.float32))
        self.register_buffer("rotation", rot)
        # uint8 as faiss stores them (8x smaller than int64 at 1M docs); widened per gather in reconstruct()
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(vq.doc_codes, dtype=np.uint8)))
        assign = None if not vq.nlist else torch.from_numpy(np.asarray(vq.doc_assign, dtype=np.int64))
        self.register_buffer("assign", assign)
        d = vq.dim
        self.query_map = nn.Parameter(torch.eye(d)) if query_adapter else None
        if query_adapter and vq.query_map is not None:
            self.query_map.data.copy_(torch.from_numpy(np.asarray(vq.query_map, dtype=np.float32)))
        self.writeback = vq.writeback
        self.init_info = dict(vq.info)   # the init's facts (faiss init time, ...), carried into to_params
        self._m_index = torch.arange(vq.M)
        self._scan: faiss.Index | None = None   # faiss index of the fixed codes, for exhaustive top-k on CPU

    @property
    def M(self) -> int:
        return int(self.codebooks.shape[0])

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation.T

    def encode_queries(self, q: torch.Tensor) -> torch.Tensor:
        """Queries as faiss sees them: optional adapter, then the rotation."""
        if self.query_map is not None:
            q = q @ self.query_map.T
        return self.rotate(q)

    def pq_part(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of codewords: (..., M) codes -> (..., d) reconstruction of the residual."""
        words = self.codebooks[self._m_index.to(codes.device), codes]          # (..., M, dsub)
        return words.reshape(*codes.shape[:-1], -1)

    def ivf_part(self, doc_idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.centroids is None else self.centroids[self.assign[doc_idx]]

    def reconstruct(self, doc_idx: torch.Tensor) -> torch.Tensor:
        """o(d) + PQ(codes of d) in the rotated space, for doc indices of any shape."""
        rec = self.pq_part(self.codes[doc_idx].long())
        ivf = self.ivf_part(doc_idx)
        return rec if ivf is None else rec + ivf

    def scores(self, q_rot: torch.Tensor, doc_idx: torch.Tensor) -> torch.Tensor:
        """⟨q, o(d) + PQ(d)⟩ for q_rot (B, d) and doc_idx (B, K) -> (B, K), differentiable in the query, codebooks and
        centroids, computed as faiss does: per-query tables of ⟨q_m, codeword⟩ (B, M, 256) summed over each doc's
        codes, + ⟨q, centroid of d⟩. Equal to ``einsum(q, reconstruct(doc_idx))`` up to float rounding (test), and
        10-40x cheaper forward + backward at JPQ's batch (B=32, K=201, M=16, 1 thread; ``bench/train_step.py``):
        no (B, K, d) gather whose backward is a scatter into the codebooks."""
        B = q_rot.shape[0]
        lut = torch.einsum("bmd,mkd->bmk", q_rot.reshape(B, self.M, -1), self.codebooks)   # (B, M, 256)
        out = lut.gather(2, self.codes[doc_idx].long().transpose(1, 2)).sum(1)            # (B, K)
        if self.centroids is None:
            return out
        return out + (q_rot @ self.centroids.T).gather(1, self.assign[doc_idx])

    @torch.no_grad()
    def lookup_scores(self, q_rot: torch.Tensor, doc_idx: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` without gradients (candidate ranking, mining)."""
        return self.scores(q_rot, doc_idx)

    @torch.no_grad()
    def all_doc_scores(self, q_rot: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Scores of queries against every doc's current reconstruction, (B, n)."""
        n = self.codes.shape[0]
        rows = (torch.arange(s, min(n, s + chunk), device=self.codes.device) for s in range(0, n, chunk))
        out = [q_rot @ self.reconstruct(idx).T for idx in rows]
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def scan_topk(self, q_rot: torch.Tensor, k: int) -> torch.Tensor:
        """Top-``k`` of every doc (B, k) under the current parameters, searched by faiss as the deployed index is:
        an ``IndexPQ`` / ``IndexIVFPQ`` (nprobe = nlist) holding the fixed codes and list ids, written once, into which
        each call copies the current codebooks and centroids. The same scores as :meth:`all_doc_scores` (lookup
        tables instead of reconstructions: equal up to float rounding, test), without reconstructing every doc at
        every step: the cost of ``negatives = "dynamic"``, 3.1x lower at JPQ's batch on wordnet-rd's size (117,659
        docs, B = 128, top-200, OPQ-free IVF256,PQ16x8, 2 threads, idle: 109 vs 338 ms; ``bench/train_step.py``)."""
        if self._scan is None:
            vq = replace(self.to_params(), rotation=None, query_map=None)   # queries come rotated
            self._scan = add_codes(empty_index(vq), vq)
        faiss.copy_array_to_vector(self.codebooks.detach().cpu().numpy().astype(np.float32).ravel(),
                                   self._scan.pq.centroids)
        if self.centroids is not None:
            quantizer = faiss.downcast_index(self._scan.quantizer)
            quantizer.reset()
            quantizer.add(self.centroids.detach().cpu().numpy().astype(np.float32))
            self._scan.nprobe = self._scan.nlist
        _, idx = self._scan.search(np.ascontiguousarray(q_rot.detach().cpu().numpy(), dtype=np.float32), k)
        return torch.from_numpy(idx).to(q_rot.device)

    def topk(self, q_rot: torch.Tensor, k: int, pool: torch.Tensor | None = None) -> torch.Tensor:
        """Top-``k`` doc indices (B, k) under the current parameters: of each query's ``pool`` row (lookup-table
        scores, as faiss computes them), or of every doc (exhaustive: :meth:`scan_topk` on CPU, all scores on a
        GPU)."""
        if pool is None:
            if q_rot.device.type == "cpu":
                return self.scan_topk(q_rot, k)
            return self.all_doc_scores(q_rot).topk(k, dim=1).indices
        pool = pool.long()
        return pool.gather(1, self.lookup_scores(q_rot, pool).topk(k, dim=1).indices)

    @torch.no_grad()
    def pool_recall(self, queries: torch.Tensor, pool: torch.Tensor, k: int, chunk: int = 32) -> float:
        """Share of each query's exhaustive top-``k`` that lies in its ``pool`` row (how much re-scoring a fixed
        candidate pool misses), ``chunk`` queries at a time ((chunk, n) scores: 128 MB at 1M docs)."""
        found = [(self.topk(self.encode_queries(q), k)[:, :, None] == p.long()[:, None, :]).any(-1).flatten()
                 for q, p in zip(queries.split(chunk), pool.split(chunk))]
        return float(torch.cat(found).float().mean())

    def to_params(self, writeback: str = "codes", info: dict | None = None) -> VQParams:
        """Current parameters + the fixed codes/assignments as :class:`VQParams`; ``info`` is added to the init's."""
        def np32(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy().astype(np.float32)
        return VQParams(pq_codebooks=np32(self.codebooks), ivf_centroids=np32(self.centroids),
                        rotation=np32(self.rotation),
                        doc_assign=None if self.assign is None else self.assign.cpu().numpy(),
                        doc_codes=self.codes.cpu().numpy(), query_map=np32(self.query_map),
                        writeback=writeback, info={**self.init_info, **(info or {})})


def ste_quantize(residual: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """PQ of ``residual`` (N, d): forward = nearest codewords (hard), backward through softmax(-||r - c||^2).

    ``assign = hard + (soft - soft.detach())`` is exactly one-hot in value, so the output equals the hard
    reconstruction bit for bit; gradients reach the codebooks (selected codewords directly, all through the soft
    assignment) and the residual (hence the IVF centroids). LibVQ's straight-through estimator.
    """
    M, K, dsub = codebooks.shape
    r = residual.reshape(-1, M, dsub).transpose(0, 1)                                    # (M, N, dsub)
    logits = (2 * torch.bmm(r, codebooks.transpose(1, 2)) - (codebooks ** 2).sum(-1).unsqueeze(1)
              - (r ** 2).sum(-1, keepdim=True))                                         # (M, N, K) = -||r-c||^2
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), K).to(soft.dtype)
    words = torch.bmm(hard + (soft - soft.detach()), codebooks)                          # (M, N, dsub)
    return words.transpose(0, 1).reshape(-1, M * dsub)


def tempered_ste(residual: torch.Tensor, codebooks: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`ste_quantize` with the soft assignment softmax(-||r - c||^2 / T): residual and codebooks scaled by
    1/sqrt(T) (the hard assignment is unchanged), the output scaled back, so value and gradient are those of the
    tempered estimator."""
    s = math.sqrt(temperature)
    return ste_quantize(residual / s, codebooks / s) * s


@torch.no_grad()
def sq_distances(residual: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Squared distances (M, N, K) of the residuals' (N, d) sub-vectors to every codeword."""
    M, K, dsub = codebooks.shape
    r = residual.reshape(-1, M, dsub).transpose(0, 1)
    return ((r ** 2).sum(-1, keepdim=True) - 2 * torch.bmm(r, codebooks.transpose(1, 2))
            + (codebooks ** 2).sum(-1).unsqueeze(1)).clamp_min(0)


@torch.no_grad()
def auto_temperature(d: torch.Tensor) -> float:
    """The median gap between each sub-vector's nearest and second-nearest squared codeword distance."""
    two = d.topk(2, dim=-1, largest=False).values
    return float((two[..., 1] - two[..., 0]).median().clamp_min(1e-12))


@torch.no_grad()
def assignment_entropy(d: torch.Tensor, temperature: float) -> float:
    """Mean entropy (nats) of the soft assignment softmax(-d / T) over the codewords (ln K = uniform)."""
    logp = torch.log_softmax(-d / temperature, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def ste_temperature(vq: TorchVQ, doc_emb: np.ndarray, temperature: float | str, seed: int, sample: int = 8192
                    ) -> tuple[float, dict]:
    """The STE temperature (``'auto'`` = :func:`auto_temperature`) and the soft assignment's entropy at it and at
    T = 1 (LibVQ's), on the residuals of ``sample`` seeded docs, for a method's ``info``."""
    n = doc_emb.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
    with torch.no_grad():
        idx = torch.from_numpy(rows).to(vq.codebooks.device)
        x = vq.rotate(torch.from_numpy(np.asarray(doc_emb[rows], dtype=np.float32)).to(vq.codebooks.device))
        o = vq.ivf_part(idx)
        d = sq_distances(x if o is None else x - o, vq.codebooks)
    T = auto_temperature(d) if temperature == "auto" else float(temperature)
    return T, {"ste_temperature": T, "assignment_entropy": assignment_entropy(d, T),
               "assignment_entropy_T1": assignment_entropy(d, 1.0), "assignment_entropy_max": math.log(d.shape[-1])}


def torch_device(name: str) -> torch.device:
    """The torch device a method trains on (``cpu``, ``cuda``, ``cuda:1``, ...); a clear error if it is not usable."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown torch device {name!r}: use cpu or cuda[:N]") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); install a CUDA build of torch or use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        # deterministic cuBLAS (torch.use_deterministic_algorithms) needs a fixed workspace, set before first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported: use cpu or cuda[:N]")
    return device
