"""Distill-VQ (Xiao et al., SIGIR 2022): learn IVF centroids and PQ codebooks by distilling the dense ranking.

Teacher: exact dense scores t = <q, d>. Students over the same candidate docs (rotated space, fixed OPQ rotation):
IVF s_a = <q, o(d)> and PQ s_b = <q, o(d) + PQ(d - o(d))>. Loss = w * f(t, s_a) + f(t, s_b), with f a listwise,
pairwise or regression similarity (:mod:`methods._distill_losses`). The IVF assignment o(d) of every doc is fixed
(the faiss one); centroids O and codebooks C are trained jointly with AdamW, warm-up + linear decay.

PQ codes: ``ste`` re-assigns each candidate's residual to its nearest codeword at every step, forward with the hard
assignment and the gradient passed straight through the softmax(-||r - c||^2) soft assignment (LibVQ's estimator);
``fixed`` gathers the faiss codes (JPQ's choice). Candidates: labeled positives (``gt``), exact-dense top-K mined
once and cached (``topk``), uniform ``random`` docs, and in-batch sharing (``ib``).

Defaults (measured on the default synthetic dataset, seeds 0-2; see the report of issue #6):

* ``temperature=0.05``. Embeddings are L2-normalised, so scores lie in [-1, 1]: a train query's exact top-1 / top-10
  / top-200 score about 0.41 / 0.32 / 0.23, a random doc 0.00 +- 0.08. At tau=1 (LibVQ's default, tuned for
  unnormalised 768-d scores) softmax(t/tau) over these candidates is nearly uniform (top-1 vs top-200 weigh
  e^0.19 = 1.2 : 1), so ListNet has almost nothing to match; at 0.05 the top-1 : top-10 : top-200 weights are about
  e^1.8 : 1 and e^3.7 : 1. Lower (0.01-0.02) concentrates the target on the teacher's top one or two and was worse.
* ``lr_pq=1e-4``, ``lr_ivf=1e-3`` (the paper's). They do move the quantizer in one epoch (79 steps): codebooks
  ~1% and centroids ~8% (relative Frobenius change, recorded in ``info``), RR@10 +0.02 over the faiss init;
  ``lr_pq=1e-3`` (codebooks ~10%) or two epochs gave the same RR@10 within seed noise, ``lr_ivf`` >= 3e-3 hurt.
  On debian-desc (~450 steps per epoch; its dev split, ``configs/debian-desc-dev.toml``) ``lr_pq=1e-3`` with
  ``temperature=0.02`` was clearly better (dev nDCG@10 0.449 vs 0.418 at these defaults): tune per dataset on a dev
  split, as that config does.
* Unlabeled: ``ib+topk`` with 8 samples of the top-200 per query (128 x 8 candidates shared in a batch): RR@10
  0.680 vs 0.675 with one sample (the labeled preset's); all 200 per query costs 25x more per step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.vq.faiss_init import trained_params
from benchmark.vq.mining import cached_topk
from benchmark.registry import BaseMethod, MethodError, TrainData, register
from benchmark.vq import VQParams, WRITEBACK_MODES, encode_pq, rotate
from benchmark.vq.torch_vq import (deterministic_torch, TorchVQ, num_steps, seed_everything, torch_device,
                               warmup_linear)
from methods._distill_losses import LOSSES

QUERY_SOURCES = ("labeled", "unlabeled", "docs")
CANDIDATE_SOURCES = ("gt", "ib", "topk", "random")
CODE_MODES = ("ste", "fixed")
ENCODE_CHUNK = 65536

PARAMS = {
    "M": 16, "nlist": 256, "opq": True,
    "queries": "unlabeled", "candidates": "ib+topk", "topk": 200, "topk_sample": 8, "num_random": 16,
    "doc_queries": 10000,
    "loss": "listnet", "temperature": 0.05, "ivf_weight": "auto",
    "codes": "ste", "train_ivf": True, "train_pq": True, "query_adapter": False,
    "lr_pq": 1e-4, "lr_ivf": 1e-3, "lr_adapter": 1e-4, "warmup": 0.1, "epochs": 1.0, "batch_size": 128,
    "writeback": "auto", "max_train_points": 65536, "opq_niter": 20,
}


@dataclass
class QuerySet:
    """Training queries, their labeled positives (ragged: ``pos[pos_off[i]:pos_off[i+1]]``) and teacher top-K."""

    emb: np.ndarray
    pos_off: np.ndarray | None = None
    pos: np.ndarray | None = None
    topk: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.emb)


def parse_candidates(spec: str) -> set[str]:
    """'gt+ib+topk' -> {'gt', 'ib', 'topk'}; at least one source besides 'ib'."""
    parts = {p.strip() for p in spec.split("+") if p.strip()}
    unknown = sorted(parts - set(CANDIDATE_SOURCES))
    if unknown:
        raise MethodError(f"unknown candidate sources {unknown}; valid: {'+'.join(CANDIDATE_SOURCES)}")
    if not parts - {"ib"}:
        raise MethodError("candidates need a source besides 'ib' (in-batch only shares the others' candidates)")
    return parts


def _labeled(train: TrainData) -> QuerySet:
    """Train queries with at least one positive doc in the corpus."""
    if train.train_qrels is None or train.train_query_emb is None:
        raise MethodError("queries='labeled' needs labeled train queries (train qrels); this dataset has none — "
                          "use queries='unlabeled' or 'docs'")
    doc_index = {d: i for i, d in enumerate(train.doc_ids)}
    keep, counts, flat = [], [], []
    for row, qid in enumerate(train.train_query_ids):
        pos = [doc_index[d] for d, g in train.train_qrels.get(qid, {}).items() if g > 0 and d in doc_index]
        if pos:
            keep.append(row)
            counts.append(len(pos))
            flat.extend(sorted(pos))
    if not keep:
        raise MethodError("queries='labeled': no train query has a relevant doc in the corpus")
    return QuerySet(np.asarray(train.train_query_emb[keep], dtype=np.float32),
                    np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.asarray(flat, dtype=np.int64))


def _sources(train: TrainData, queries: str, doc_queries: int) -> list[np.ndarray]:
    """The query arrays of an unlabeled source (mined separately so top-K caches are shared across settings)."""
    if queries == "docs":
        n = train.num_docs
        rows = np.sort(np.random.default_rng(train.seed).choice(n, min(n, doc_queries), replace=False))
        return [np.asarray(train.doc_emb[rows], dtype=np.float32)]
    arrays = [np.asarray(a, dtype=np.float32) for a in (train.train_query_emb, train.unlabeled_query_emb)
              if a is not None and len(a)]
    if not arrays:
        raise MethodError("queries='unlabeled' needs train or train-unlabeled queries; use queries='docs'")
    return arrays


def query_set(train: TrainData, cfg: dict, sources: set[str]) -> QuerySet:
    """Assemble the training queries (and mine their teacher top-K if 'topk' is a candidate source)."""
    if cfg["queries"] == "labeled":
        qs = _labeled(train)
        arrays = [qs.emb]
    else:
        if "gt" in sources:
            raise MethodError(f"candidates 'gt' needs labels: use queries='labeled' (got {cfg['queries']!r})")
        arrays = _sources(train, cfg["queries"], cfg["doc_queries"])
        qs = QuerySet(np.concatenate(arrays))
    if "topk" in sources:
        qs.topk = np.concatenate([cached_topk(train.doc_emb, a, cfg["topk"], train.cache_dir,
                                              gpu=train.device.startswith("cuda")) for a in arrays])
    return qs


class CandidateSampler:
    """Per-query candidate doc indices (B, C) for a batch of query rows."""

    def __init__(self, qs: QuerySet, sources: set[str], topk_sample: int | None, num_random: int,
                 num_docs: int, rng: np.random.Generator) -> None:
        self.qs, self.sources, self.num_docs, self.rng = qs, sources, num_docs, rng
        k = 0 if qs.topk is None else qs.topk.shape[1]
        self.topk_sample = k if not topk_sample else min(int(topk_sample), k)
        self.num_random = num_random

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        cols = []
        if "gt" in self.sources:
            off, cnt = self.qs.pos_off[batch], np.diff(self.qs.pos_off)[batch]
            cols.append(self.qs.pos[off + (self.rng.random(len(batch)) * cnt).astype(np.int64)][:, None])
        if "topk" in self.sources:
            top = self.qs.topk[batch]
            if self.topk_sample < top.shape[1]:
                pick = np.argpartition(self.rng.random(top.shape), self.topk_sample - 1, axis=1)
                top = np.take_along_axis(top, pick[:, :self.topk_sample], axis=1)
            cols.append(top)
        if "random" in self.sources:
            cols.append(self.rng.integers(0, self.num_docs, (len(batch), self.num_random)))
        return np.concatenate(cols, axis=1)


def ste_quantize(residual: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """PQ of ``residual`` (N, d): forward = nearest codewords (hard), backward through softmax(-||r - c||^2).

    ``assign = hard + (soft - soft.detach())`` is exactly one-hot in value, so the output equals the hard
    reconstruction bit for bit; gradients reach the codebooks (selected codewords directly, all through the soft
    assignment) and the residual (hence the IVF centroids).
    """
    M, K, dsub = codebooks.shape
    r = residual.reshape(-1, M, dsub).transpose(0, 1)                                    # (M, N, dsub)
    logits = (2 * torch.bmm(r, codebooks.transpose(1, 2)) - (codebooks ** 2).sum(-1).unsqueeze(1)
              - (r ** 2).sum(-1, keepdim=True))                                         # (M, N, K) = -||r-c||^2
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), K).to(soft.dtype)
    words = torch.bmm(hard + (soft - soft.detach()), codebooks)                          # (M, N, dsub)
    return words.transpose(0, 1).reshape(-1, M * dsub)


class DistillStudent(nn.Module):
    """The IVF and PQ students over a :class:`TorchVQ` (fixed doc assignment)."""

    def __init__(self, vq: VQParams, codes: str, train_ivf: bool, train_pq: bool, query_adapter: bool) -> None:
        super().__init__()
        self.vq = TorchVQ(vq, train_centroids=train_ivf, train_codebooks=train_pq, query_adapter=query_adapter)
        self.ste = codes == "ste"

    def forward(self, q: torch.Tensor, docs: torch.Tensor, doc_idx: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """IVF and PQ scores (B, U) of queries q (B, d) against docs (U, d) with indices doc_idx (U,)."""
        q_rot = self.vq.encode_queries(q)
        o = self.vq.ivf_part(doc_idx)
        if self.ste:
            rec = ste_quantize(self.vq.rotate(docs) - o, self.vq.codebooks) + o
        else:
            rec = self.vq.reconstruct(doc_idx)
        return q_rot @ o.T, q_rot @ rec.T

    def fresh_codes(self, doc_emb: np.ndarray) -> np.ndarray:
        """Nearest-codeword codes of every doc's residual under the current centroids and codebooks."""
        params = self.vq.to_params()
        out = np.empty((doc_emb.shape[0], params.M), dtype=np.uint8)
        for s in range(0, len(out), ENCODE_CHUNK):
            rows = slice(s, min(len(out), s + ENCODE_CHUNK))
            residual = rotate(params, doc_emb[rows]) - params.ivf_centroids[params.doc_assign[rows]]
            out[rows] = encode_pq(params.pq_codebooks, residual)
        return out


@dataclass
class TrainLog:
    """Per-step losses, the IVF loss weight used and the loop's wall time."""

    losses: list[float]
    ivf_weight: float
    seconds: float


def _optimizer(student: DistillStudent, cfg: dict) -> torch.optim.Optimizer:
    """AdamW with one group per trained tensor (codebooks lr_pq, centroids lr_ivf, adapter lr_adapter), no decay."""
    groups = [{"params": [student.vq.codebooks], "lr": cfg["lr_pq"]}] if cfg["train_pq"] else []
    if cfg["train_ivf"]:
        groups.append({"params": [student.vq.centroids], "lr": cfg["lr_ivf"]})
    if student.vq.query_map is not None:
        groups.append({"params": [student.vq.query_map], "lr": cfg["lr_adapter"]})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(steps * batch_size / n))])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def batch_scores(student: DistillStudent, q: np.ndarray, cand: np.ndarray, doc_emb: np.ndarray, in_batch: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher, IVF and PQ scores of queries ``q`` (B, d) over their candidates ``cand`` (B, C).

    Each distinct doc is gathered (and quantized) once. ``in_batch``: every query is scored against the union of
    the batch's candidates (B, U); otherwise against its own (B, C).
    """
    device = student.vq.codebooks.device
    uniq, inv = np.unique(cand, return_inverse=True)
    docs = torch.from_numpy(np.asarray(doc_emb[uniq], dtype=np.float32)).to(device)
    q_t = torch.from_numpy(q).to(device)
    scores = (q_t @ docs.T, *student(q_t, docs, torch.from_numpy(uniq).to(device)))
    if in_batch:
        return scores
    cols = torch.from_numpy(inv.reshape(cand.shape)).to(device)
    return tuple(x.gather(1, cols) for x in scores)


def combined_loss(loss_ivf: torch.Tensor | None, loss_pq: torch.Tensor | None, w: float | None
                  ) -> tuple[torch.Tensor, float | None]:
    """``loss_pq + w * loss_ivf`` (either may be absent); ``w=None`` ('auto', LibVQ's 'scaled_to_pqloss') is set
    once, at the first step, to loss_pq / loss_ivf and kept."""
    if loss_pq is None or loss_ivf is None:
        return (loss_ivf if loss_pq is None else loss_pq), w
    if w is None:
        w = float(loss_pq.detach() / (loss_ivf.detach() + 1e-6))
    return loss_pq + w * loss_ivf, w


def train_student(student: DistillStudent, qs: QuerySet, doc_emb: np.ndarray, sampler: CandidateSampler,
                  cfg: dict, rng: np.random.Generator, in_batch: bool) -> TrainLog:
    """The distillation loop: sample candidates, teacher and student scores, weighted loss, AdamW step."""
    f, tau = LOSSES[cfg["loss"]], float(cfg["temperature"])
    steps = num_steps(len(qs), cfg["batch_size"], cfg["epochs"])
    opt = _optimizer(student, cfg)
    sched = warmup_linear(opt, int(cfg["warmup"] * steps), steps)
    w = None if cfg["ivf_weight"] == "auto" else float(cfg["ivf_weight"])
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(_batches(len(qs), cfg["batch_size"], steps, rng), desc="distill-vq", leave=False)
    for batch in bar:
        t, s_ivf, s_pq = batch_scores(student, qs.emb[batch], sampler(batch), doc_emb, in_batch)
        loss, w = combined_loss(f(t, s_ivf, tau) if cfg["train_ivf"] else None,
                                f(t, s_pq, tau) if cfg["train_pq"] else None, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return TrainLog(losses, 0.0 if w is None else w, time.perf_counter() - t0)


def _check(cfg: dict, train: TrainData) -> set[str]:
    """Validate the config; return the candidate sources."""
    choices = {"queries": QUERY_SOURCES, "loss": tuple(LOSSES), "codes": CODE_MODES,
               "writeback": ("auto",) + WRITEBACK_MODES}
    for key, valid in choices.items():
        if cfg[key] not in valid:
            raise MethodError(f"distill-vq: {key} must be one of {valid}, got {cfg[key]!r}")
    if not (cfg["train_ivf"] or cfg["train_pq"]):
        raise MethodError("distill-vq: train_ivf and train_pq are both False: nothing to train")
    if train.dim % cfg["M"]:
        raise MethodError(f"distill-vq: M={cfg['M']} must divide the embedding dim {train.dim}")
    if cfg["ivf_weight"] != "auto" and not isinstance(cfg["ivf_weight"], (int, float)):
        raise MethodError(f"distill-vq: ivf_weight must be 'auto' or a number, got {cfg['ivf_weight']!r}")
    return parse_candidates(cfg["candidates"])


def _shift(before: np.ndarray, after: np.ndarray) -> float:
    """Relative change ||after - before|| / ||before|| (how far training moved a parameter)."""
    return float(np.linalg.norm(after - before) / max(np.linalg.norm(before), 1e-12))


@register
class DistillVQ(BaseMethod):
    """Distill-VQ: IVF + PQ trained jointly to reproduce the dense teacher's ranking (unlabeled by default)."""

    name = "distill-vq"
    family = "distillation"
    params = PARAMS
    description = "Distill-VQ (Xiao et al., SIGIR 2022): IVF centroids + PQ codebooks distilled from dense scores"

    def factory(self) -> str:
        M, nlist = self.config["M"], self.config["nlist"]
        return (f"OPQ{M}," if self.config["opq"] else "") + f"IVF{nlist},PQ{M}x8"

    def writeback(self) -> str:
        wb = self.config["writeback"]
        return wb if wb != "auto" else ("codes" if self.config["codes"] == "fixed" else "preassigned")

    def fit(self, train: TrainData) -> VQParams:
        cfg = self.config
        sources = _check(cfg, train)
        seed_everything(train.seed)
        rng = np.random.default_rng(train.seed)
        init = trained_params(train.doc_emb, self.factory(), seed=train.seed, cache_dir=train.cache_dir,
                              max_train_points=cfg["max_train_points"], opq_niter=cfg["opq_niter"])
        qs = query_set(train, cfg, sources)
        sampler = CandidateSampler(qs, sources, cfg["topk_sample"], cfg["num_random"], train.num_docs, rng)
        student = DistillStudent(init, cfg["codes"], cfg["train_ivf"], cfg["train_pq"], cfg["query_adapter"])
        student.to(torch_device(train.device))
        with deterministic_torch():
            log = train_student(student, qs, train.doc_emb, sampler, cfg, rng, in_batch="ib" in sources)
        params = student.vq.to_params(self.writeback(), self._info(cfg, qs, log))
        params.info.update(codebook_shift=_shift(init.pq_codebooks, params.pq_codebooks),
                           centroid_shift=_shift(init.ivf_centroids, params.ivf_centroids))
        if cfg["codes"] == "ste":
            params.doc_codes = student.fresh_codes(train.doc_emb)
        return params

    @staticmethod
    def _info(cfg: dict, qs: QuerySet, log: TrainLog) -> dict:
        tail = log.losses[-max(1, len(log.losses) // 10):]
        return {"loss_first": log.losses[0], "loss_final": float(np.mean(tail)), "steps": len(log.losses),
                "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr_pq": cfg["lr_pq"],
                "lr_ivf": cfg["lr_ivf"], "ivf_weight": log.ivf_weight, "temperature": cfg["temperature"],
                "loss": cfg["loss"], "candidates": cfg["candidates"], "queries": cfg["queries"],
                "num_queries": len(qs), "train_loop_seconds": log.seconds,
                "queries_per_s": len(log.losses) * cfg["batch_size"] / max(log.seconds, 1e-9),
                "torch_threads": torch.get_num_threads()}


@register
class DistillVQLabeled(DistillVQ):
    """Distill-VQ on labeled train queries: ground truth + in-batch + one sample of the teacher's top-200."""

    name = "distill-vq-labeled"
    params = {**PARAMS, "queries": "labeled", "candidates": "gt+ib+topk", "topk_sample": 1}


@register
class DistillVQIVFOnly(DistillVQ):
    """Distill-VQ training only the IVF centroids; PQ keeps faiss's OPQ codebooks (the paper's Table 4)."""

    name = "distill-vq-ivf-only"
    params = {**PARAMS, "train_pq": False}


@register
class DistillVQPQOnly(DistillVQ):
    """Distill-VQ training only the PQ codebooks; IVF keeps faiss's k-means centroids."""

    name = "distill-vq-pq-only"
    params = {**PARAMS, "train_ivf": False}
