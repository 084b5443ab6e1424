"""Score-aware (anisotropic) product quantization: Guo et al., ICML 2020, "Accelerating Large-Scale Inference with
Anisotropic Vector Quantization" (the quantizer inside Google's ScaNN).

For a datapoint x and its quantization x~, the residual r = x - x~ is split into the part parallel to x and the part
orthogonal to it; the loss h_par ||r_par||^2 + h_perp ||r_perp||^2 is proportional to

    ||r_perp||^2 + eta ||r_par||^2  =  ||r||^2 + (eta - 1) (r . x/||x||)^2          (eta = h_par / h_perp)

so eta = 1 is plain reconstruction (k-means PQ). The weights come from the score-aware weight w(t) = 1[t >= T]: only
query/datapoint pairs with inner product at least T count (Theorem 3.2 gives h_par, h_perp as integrals over the
angle; Theorem 3.4 its large-d limit eta = (d-1) (T/||x||)^2 / (1 - (T/||x||)^2), which is what ScaNN computes,
``ComputeParallelCostMultiplier``). At d = 384, T = 0.2 the exact integrals give eta = 17.94, the limit 15.96; both are
offered (``eta_formula``).

Codebooks start as seeded faiss k-means PQ (k-means++ seeding and 10 iterations, as ScaNN's ``GmmUtils`` and
``training_iterations``). With ``codebook_update=True`` training then alternates, as the paper's Section 4 does:

* **assignment**: per datapoint, coordinate descent over the sub-codes (each block in turn takes the codeword that
  minimises the anisotropic loss with the other blocks fixed; rounds until no code changes, at most 10, as ScaNN's
  ``NoiseShapeQuantizedVector``), starting from the nearest-codeword (L2) codes;
* **codebook update**: the least-squares minimiser of the anisotropic loss for the fixed codes. The paper writes it as
  one linear system in all K*d codebook entries (98,304 unknowns at 8 bits and d = 384, a 77 GB matrix); here it is
  solved block by block (Gauss-Seidel over the sub-codebooks): with the other blocks fixed the loss separates into one
  dsub x dsub system per codeword, solved exactly, so every step is a closed-form minimiser and the loss never
  increases (recorded in ``info["loss_history"]``). ``codebook_sweeps`` sets how many block sweeps per iteration.

Every doc is then encoded with the anisotropic assignment and written into a faiss index (inner product) with
``writeback="codes"``: the index stores the trained codes, never a re-encoding of the docs (the anisotropic codes are
not the nearest-codeword ones). ``M`` is the budget in bytes per vector: ``nbits=4`` gives ScaNN's layout (2*M blocks
of 16 codewords, ``PQ{2M}x4``), ``nbits=8`` the usual ``PQ{M}x8``.

What is searched (``search``). ScaNN scans its 4-bit codes with SIMD over 8-bit quantized lookup tables (LUT16);
faiss's analogue is fast-scan. ``search="fastscan"`` builds the plain ``IndexPQ`` with the codes and converts it with
faiss's ``IndexPQFastScan(IndexPQ)`` constructor, which packs the stored codes into blocks of 32 as they are
(:func:`benchmark.vq.params.to_fastscan`; ``PQ{2M}x4fs``, the layout ``faiss-pq-fastscan`` searches). Its scores
are approximate: each query's LUT is quantized to 8 bits, so a score is within (2M + 1)/2 quantization steps of the
exact score of the codes (tests/test_fastscan.py) and near-ties may swap. ``search="plain"`` scans the same codes in
the ``IndexPQ`` with float LUTs (exact scores of the codes, one code at a time, no SIMD); 8-bit codes have no
fast-scan kernel and are always searched plain. Measured on debian-desc (61,314 docs, 2,000 test queries, seed 0,
``bench/fastscan_check.py --threads 1``, single-query p50 at k=100, median of 3 interleaved repetitions on 2 shared
cores at load 2-5), nDCG@10 plain / fast-scan and p50 plain / fast-scan / ``faiss-pq-fastscan``:
8 B 0.2409 / 0.2403, 1.87 / 0.069 / 0.069 ms; 16 B 0.4141 / 0.4141, 3.50 / 0.090 / 0.090 ms;
32 B 0.5270 / 0.5272, 7.24 / 0.130 / 0.129 ms; 48 B 0.5646 / 0.5641, 10.7 / 0.163 / 0.162 ms.
Fast-scan is 27-66x faster at the same codes and matches ``faiss-pq-fastscan``'s latency (same kernel, same layout);
nDCG@10 moves by at most 0.0006. The default is fast-scan (issue #27: ScaNN's own 4-bit scan is SIMD, so the plain
scan made the method look 27-66x slower than what it is); ``search="plain"`` stays as an option for comparison.
Records written before the default changed carry no ``search`` param and were searched plain (``legacy``).

Default (``codebook_update=False``) = ScaNN's own ``score_ah``: k-means codebooks, anisotropic loss only when encoding
("noise shaping"; ScaNN's ``use_noise_shaped_training`` defaults to false). Given ScaNN's codebooks, this encoder
reproduces ScaNN's codes (debian-desc 16 B: nDCG@10 0.4211 vs ScaNN's 0.4210). Deviation from the paper: its
anisotropic codebook update is implemented (``codebook_update=True``) but is not the default, because on debian-desc
(d = 384, 4-bit blocks of 12 dims, ||r||^2 ~ 0.6) it did not help nDCG@10 at 16 B, seed 0 (random k-means init):
0.392 (4 iterations x 1 sweep) and 0.411 (8 x 2) vs 0.409 without it. These were measured on the test split, before
the dev split existed (not a choice tuned on test: the default is ScaNN's own recipe, and the update lost or tied);
the variant left the test grid of configs/debian-desc.toml. Most of the loss it removes (4.76 -> 1.58) is the
uniform shrink of k-means reconstructions along x (mean parallel residual 0.53), which scales every score alike and
so cannot reorder.
"""
from __future__ import annotations

import time

import faiss
import numpy as np
from scipy import integrate
from tqdm import tqdm

from benchmark.params import Param
from benchmark.registry import BaseMethod, TrainData, register
from benchmark.vq import VQParams
from benchmark.vq.params import SEARCH_MODES
from benchmark.vq.faiss_init import training_sample

MAX_CD_ROUNDS = 10     # ScaNN's kMaxIters for the per-datapoint coordinate descent
ENCODE_CHUNK = 2048    # datapoints per vectorised assignment chunk (D and P tables: chunk x blocks x K floats)


# ---------------------------------------------------------------------------------------------------------------- eta

def eta_exact(t: float, dim: int) -> float:
    """eta = h_par / h_perp of Theorem 3.2 for w = 1[<q,x> >= T], t = T/||x|| (< 1), unit-norm queries in R^dim.

    h_par = (d-1) int_0^a (sin^(d-2) - sin^d), h_perp = int_0^a sin^d, a = arccos(t). Below t = 0 every angle counts
    (and the isotropic weighting tends to eta = 1 as t -> -1); ``t >= 1`` (no pair reaches T) is an error.
    """
    if not -1.0 < t < 1.0:
        raise ValueError(f"eta_exact: T/||x|| must lie in (-1, 1), got {t}")
    a = float(np.arccos(t))
    # sin^(d-2) - sin^d = sin^(d-2) cos^2: integrating it directly avoids cancelling two nearly equal integrals
    par = integrate.quad(lambda th: np.sin(th) ** (dim - 2) * np.cos(th) ** 2, 0.0, a, limit=400)[0]
    perp = integrate.quad(lambda th: np.sin(th) ** dim, 0.0, a, limit=400)[0]
    return float((dim - 1) * par / perp)


def eta_limit(t: np.ndarray | float, dim: int) -> np.ndarray:
    """Theorem 3.4's large-d eta = (d-1) t^2 / (1 - t^2), t = T/||x|| (ScaNN's ``ComputeParallelCostMultiplier``)."""
    t2 = np.square(np.asarray(t, dtype=np.float64))
    return (dim - 1) * t2 / (1.0 - t2)


def point_etas(norms: np.ndarray, threshold: float, dim: int, formula: str) -> np.ndarray:
    """Per-datapoint eta from its norm. Points with ||x|| <= T (no query reaches T) get eta = 1 (plain
    reconstruction), and eta is floored at 1 (an orthogonal error is never worth more than a parallel one)."""
    norms = np.asarray(norms, dtype=np.float64)
    t = np.where(norms > threshold, threshold / np.maximum(norms, 1e-30), 0.0)
    if formula == "limit":
        eta = eta_limit(t, dim)
    else:  # exact: tabulate Theorem 3.2 on a grid of t and interpolate (unit-norm data hits one grid point exactly)
        uniq = np.unique(np.round(t, 6))
        if len(uniq) <= 64:
            table = {u: eta_exact(u, dim) if u > 0 else 1.0 for u in uniq}
            eta = np.array([table[u] for u in np.round(t, 6)])
        else:
            grid = np.linspace(0.0, min(0.999, float(t.max())), 257)
            vals = np.array([eta_exact(g, dim) if g > 0 else 1.0 for g in grid])
            eta = np.interp(t, grid, vals)
    return np.maximum(1.0, np.where(norms > threshold, eta, 1.0))


# ------------------------------------------------------------------------------------------------------- loss/encode

def anisotropic_loss(x: np.ndarray, x_rec: np.ndarray, eta: np.ndarray | float) -> np.ndarray:
    """Per-row eta ||r_par||^2 + ||r_perp||^2 with r = x - x_rec split along x (rows with x = 0: ||r||^2)."""
    x = np.asarray(x, dtype=np.float64)
    r = x - np.asarray(x_rec, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    xhat = x / np.where(norms > 0, norms, 1.0)[:, None]
    par = np.einsum("nd,nd->n", r, xhat)
    perp_sq = np.einsum("nd,nd->n", r, r) - par ** 2
    return np.asarray(eta, dtype=np.float64) * par ** 2 + np.maximum(perp_sq, 0.0)


def decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Reconstruction (n, d) of block codes (n, B) under codebooks (B, K, dsub)."""
    B = codebooks.shape[0]
    return np.concatenate([codebooks[m][codes[:, m]] for m in range(B)], axis=1)


def _tables(xb: np.ndarray, xhb: np.ndarray, codebooks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D[m,i,k] = ||x_im - C_mk||^2 and P[m,i,k] = xhat_im . (x_im - C_mk) for one chunk; xb, xhb are (B, n, dsub)
    block views (block-major, so each block's (n, K) table is contiguous)."""
    D = (np.einsum("mid,mid->mi", xb, xb)[:, :, None] - 2.0 * np.matmul(xb, codebooks.transpose(0, 2, 1))
         + np.einsum("mkd,mkd->mk", codebooks, codebooks)[:, None, :])
    P = np.einsum("mid,mid->mi", xhb, xb)[:, :, None] - np.matmul(xhb, codebooks.transpose(0, 2, 1))
    return D, P


def assign(x: np.ndarray, codebooks: np.ndarray, eta: np.ndarray, codes: np.ndarray | None = None,
           progress: bool = False) -> tuple[np.ndarray, int]:
    """Anisotropic codes (n, B) by per-datapoint coordinate descent over the blocks.

    Starts from ``codes`` (or the nearest-codeword codes), sweeps the blocks in order; each block takes the codeword
    minimising ``D + (eta-1) (s_other + P)^2``; stops when a round changes nothing (at most ``MAX_CD_ROUNDS``).
    Returns the codes and the number of rounds of the slowest chunk.
    """
    n, d = x.shape
    B, K, dsub = codebooks.shape
    cb = codebooks.astype(np.float32)
    out = np.empty((n, B), dtype=np.int64)
    max_rounds = 0
    starts = range(0, n, ENCODE_CHUNK)
    for start in tqdm(starts, desc="anisotropic assign", unit="chunk", disable=not progress, leave=False):
        rows = slice(start, min(n, start + ENCODE_CHUNK))
        xc = np.asarray(x[rows], dtype=np.float32)
        nrm = np.linalg.norm(xc.astype(np.float64), axis=1)
        xh = (xc / np.where(nrm > 0, nrm, 1.0)[:, None]).astype(np.float32)
        xb = np.ascontiguousarray(xc.reshape(-1, B, dsub).transpose(1, 0, 2))
        xhb = np.ascontiguousarray(xh.reshape(-1, B, dsub).transpose(1, 0, 2))
        D, P = _tables(xb, xhb, cb)
        w = (np.asarray(eta, dtype=np.float64)[rows] - 1.0)[:, None]
        c = (D.argmin(axis=2) if codes is None else np.asarray(codes[rows], dtype=np.int64).T).copy()  # (B, n)
        idx = np.arange(len(xc))
        s = P[np.arange(B)[:, None], idx[None, :], c].sum(axis=0, dtype=np.float64)
        rounds = 0
        for rounds in range(1, MAX_CD_ROUNDS + 1):
            changed = 0
            for m in range(B):
                Pm = P[m]
                s_other = s - Pm[idx, c[m]]
                cost = D[m] + w * np.square(s_other[:, None] + Pm)
                new = cost.argmin(axis=1)
                changed += int(np.count_nonzero(new != c[m]))
                c[m] = new
                s = s_other + Pm[idx, new]
            if not changed:
                break
        max_rounds = max(max_rounds, rounds)
        out[rows] = c.T
    return out, max_rounds


def update_codebooks(x: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, eta: np.ndarray,
                     sweeps: int = 1) -> np.ndarray:
    """Least-squares codebooks for fixed codes, block by block (each block's step is its exact minimiser).

    For block m, with the other blocks fixed, the loss of codeword k over its datapoints I_k is
    sum ||x_im - c||^2 + (eta_i - 1)(a_i - xhat_im . c)^2, a_i = ||x_i|| - sum_{m' != m} xhat_im' . C_m'[c_im'];
    its minimiser solves (|I_k| I + sum (eta_i-1) xhat_im xhat_im^T) c = sum x_im + sum (eta_i-1) a_i xhat_im.
    A codeword with no datapoint keeps its value. With eta = 1 this is the k-means (Lloyd) mean.
    """
    x = np.asarray(x, dtype=np.float64)
    B, K, dsub = codebooks.shape
    cb = codebooks.astype(np.float64).copy()
    norms = np.linalg.norm(x, axis=1)
    xh = x / np.where(norms > 0, norms, 1.0)[:, None]
    xb, xhb = x.reshape(-1, B, dsub), xh.reshape(-1, B, dsub)
    w = np.asarray(eta, dtype=np.float64) - 1.0
    proj = np.stack([np.einsum("id,id->i", xhb[:, m], cb[m][codes[:, m]]) for m in range(B)], axis=1)
    p_total = proj.sum(axis=1)
    order = [np.argsort(codes[:, m], kind="stable") for m in range(B)]
    eye = np.eye(dsub)
    for _ in range(sweeps):
        for m in range(B):
            a = norms - (p_total - proj[:, m])
            srt = order[m]
            bounds = np.searchsorted(codes[srt, m], np.arange(K + 1))
            for k in range(K):
                rows = srt[bounds[k]:bounds[k + 1]]
                if len(rows) == 0:
                    continue
                z = xhb[rows, m]
                wk = w[rows]
                A = len(rows) * eye + (z * wk[:, None]).T @ z
                rhs = xb[rows, m].sum(axis=0) + (wk * a[rows]) @ z
                cb[m, k] = np.linalg.solve(A, rhs)
            new_proj = np.einsum("id,id->i", xhb[:, m], cb[m][codes[:, m]])
            p_total += new_proj - proj[:, m]
            proj[:, m] = new_proj
    return cb


KMEANS_INITS = {"kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS", "random": "ClusteringInitMethod_RANDOM"}


def kmeans_pq(x: np.ndarray, blocks: int, nbits: int, seed: int, niter: int = 25, init: str = "kmeans++"
              ) -> np.ndarray:
    """Seeded faiss k-means PQ codebooks (blocks, 2^nbits, d/blocks): the isotropic starting point.

    ``init``: faiss's k-means++ seeding (ScaNN's ``GmmUtils`` default) or faiss's usual random sample of points."""
    d = x.shape[1]
    pq = faiss.ProductQuantizer(d, blocks, nbits)
    pq.cp.seed = seed
    pq.cp.niter = niter
    pq.cp.init_method = getattr(faiss, KMEANS_INITS[init])
    pq.cp.max_points_per_centroid = 1 << 20  # use every training point (faiss would subsample to 256 per centroid)
    pq.train(np.ascontiguousarray(x, dtype=np.float32))
    return faiss.vector_to_array(pq.centroids).reshape(blocks, 1 << nbits, d // blocks).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------ method

@register
class ScoreAwarePQ(BaseMethod):
    """Score-aware (anisotropic) PQ, Guo et al. 2020 / ScaNN: docs encoded to minimise the anisotropic loss."""

    name = "score-aware"
    family = "score-aware"
    params = {
        "M": Param(16, "budget in bytes per vector (2*M blocks at nbits=4, M at nbits=8)", min=1),
        "nbits": Param(4, "bits per sub-code: 4 = ScaNN's layout PQ{2M}x4, 8 = PQ{M}x8", choices=(4, 8)),
        "threshold": Param(0.2, "score-aware threshold T (ScaNN's anisotropic_quantization_threshold); eta from "
                                "T/||x|| per datapoint", min=0.0, max=1.0, min_exclusive=True),
        "eta": Param(None, "fixed eta = h_par/h_perp for every datapoint (overrides threshold); None: from T",
                     dtype=float, min=1.0, special=(None,)),
        "eta_formula": Param("exact", "eta from T: 'exact' (Theorem 3.2 integrals) or 'limit' (Theorem 3.4, "
                                      "ScaNN's formula)", choices=("exact", "limit")),
        "codebook_update": Param(False, "train the codebooks on the anisotropic loss too (the paper's Section 4; "
                                        "False: k-means codebooks, anisotropic encoding, as ScaNN's score_ah)"),
        "iterations": Param(4, "with codebook_update: alternations of anisotropic assignment and codebook "
                               "update", min=0),
        "codebook_sweeps": Param(1, "block Gauss-Seidel sweeps of the least-squares codebook update per iteration",
                                 min=1),
        "kmeans_niter": Param(10, "faiss k-means iterations of the initial PQ (ScaNN's training_iterations)",
                              min=1),
        "kmeans_init": Param("kmeans++", "k-means seeding of the initial PQ: 'kmeans++' (as ScaNN) or 'random' "
                                         "(faiss's default)", choices=tuple(KMEANS_INITS)),
        "max_train_points": Param(65536, "docs sampled (seeded) to train the codebooks", min=1),
        # records without this param were searched plain (legacy: "plain" is left out of ids)
        "search": Param("fastscan", "how the 4-bit codes are searched: 'fastscan' (faiss IndexPQFastScan, SIMD over "
                                 "8-bit quantized lookup tables, as ScaNN's LUT16; 27-66x faster on debian-desc, "
                                 "nDCG@10 within 0.001) or 'plain' (IndexPQ, float lookup tables, exact scores "
                                 "of the codes); 8-bit codes are always searched plain", choices=SEARCH_MODES,
                        legacy=("plain",)),
    }

    def code_layout(self) -> tuple[int, int]:
        return self.config["M"] * 8 // self.config["nbits"], self.config["nbits"]

    def fit(self, train: TrainData) -> VQParams:
        cfg = self.config
        self.require_data(train)
        d, (blocks, nbits) = train.dim, self.code_layout()
        t0 = time.perf_counter()
        x_train = training_sample(train.doc_emb, cfg["max_train_points"], train.seed)
        codebooks = kmeans_pq(x_train, blocks, nbits, train.seed, cfg["kmeans_niter"], cfg["kmeans_init"])
        kmeans_seconds = time.perf_counter() - t0
        eta_train = self._etas(x_train, d)
        history: list[float] = []
        codes = None
        update = cfg["codebook_update"] and cfg["iterations"] > 0
        for _ in tqdm(range(cfg["iterations"] if update else 0), desc=f"{self.name} M={cfg['M']}", unit="it"):
            codes, _ = assign(x_train, codebooks, eta_train, codes)
            history.append(float(anisotropic_loss(x_train, decode(codebooks, codes), eta_train).mean()))
            codebooks = update_codebooks(x_train, codes, codebooks, eta_train,
                                         cfg["codebook_sweeps"]).astype(np.float32)
            history.append(float(anisotropic_loss(x_train, decode(codebooks, codes), eta_train).mean()))
        train_seconds = time.perf_counter() - t0
        eta_docs = self._etas(train.doc_emb, d)
        doc_codes = np.empty((train.num_docs, blocks), dtype=np.uint8)
        for start in tqdm(range(0, train.num_docs, 65536), desc="encode docs", unit="chunk", leave=False):
            rows = slice(start, min(train.num_docs, start + 65536))
            xc = np.asarray(train.doc_emb[rows], dtype=np.float32)
            doc_codes[rows] = assign(xc, codebooks, eta_docs[rows])[0]
        info = {"blocks": blocks, "eta_mean": float(eta_train.mean()), "loss_history": history,
                "kmeans_seconds": kmeans_seconds, "anisotropic_train_seconds": train_seconds - kmeans_seconds,
                "train_points": int(len(x_train))}
        return VQParams(pq_codebooks=codebooks, doc_codes=doc_codes, writeback="codes", info=info,
                        search=cfg["search"])

    def _etas(self, x: np.ndarray, dim: int) -> np.ndarray:
        n = x.shape[0]
        if self.config["eta"] is not None:
            return np.full(n, float(self.config["eta"]))
        norms = np.concatenate([np.linalg.norm(np.asarray(x[s:s + 65536], dtype=np.float64), axis=1)
                                for s in range(0, n, 65536)])
        return point_etas(norms, self.config["threshold"], dim, self.config["eta_formula"])
