"""Distill-VQ (Xiao et al., SIGIR 2022): learn IVF centroids and PQ codebooks by distilling the dense ranking.

Teacher: exact dense scores t = <q, d>. Students over the same candidate docs (rotated space, fixed OPQ rotation):
IVF s_a = <q, o(d)> and PQ s_b = <q, o(d) + PQ(d - o(d))>. Loss = w * f(t, s_a) + f(t, s_b), with f a listwise,
pairwise or regression similarity (:mod:`methods._distill_losses`). Each doc's IVF list o(d) is fixed (faiss's);
centroids O and codebooks C train jointly in the shared loop (:mod:`benchmark.vq.train`: AdamW, warm-up + linear
decay; the warm-up is ``int(warmup * steps)``, truncated as it always was here).

PQ codes: ``ste`` re-assigns each candidate's residual to its nearest codeword at every step, forward with the hard
assignment, gradient straight through the softmax(-||r - c||^2) soft assignment (LibVQ's estimator,
:func:`benchmark.vq.torch_vq.ste_quantize`); ``fixed`` gathers the faiss codes (JPQ's choice). Candidates: labeled
positives (``gt``), exact-dense top-K mined once and cached (``topk``), uniform ``random`` docs, in-batch (``ib``).

Defaults (measured on the default synthetic dataset, seeds 0-2; see the report of issue #6):

* ``temperature=0.05``. Embeddings are L2-normalised, so scores lie in [-1, 1]: a train query's exact top-1 / top-10
  / top-200 score about 0.41 / 0.32 / 0.23, a random doc 0.00 +- 0.08. At tau=1 (LibVQ's default, tuned for
  unnormalised 768-d scores) softmax(t/tau) over these candidates is nearly uniform (top-1 vs top-200 weigh
  e^0.19 = 1.2 : 1): ListNet has almost nothing to match; at 0.05 the top-1 : top-10 : top-200 weights are about
  e^1.8 : 1 and e^3.7 : 1. Lower (0.01-0.02) concentrates the target on the teacher's top one or two: worse.
* ``lr_pq=1e-4``, ``lr_ivf=1e-3`` (the paper's) move the quantizer in one epoch (79 steps): codebooks ~1% and
  centroids ~8% (relative Frobenius change, ``info['drift_*']``), RR@10 +0.02 over the faiss init; ``lr_pq=1e-3``
  (codebooks ~10%) or two epochs gave the same RR@10 within seed noise, ``lr_ivf`` >= 3e-3 hurt. On debian-desc
  (~450 steps per epoch; dev split of ``configs/debian-desc-dev.toml``) ``lr_pq=1e-3`` with ``temperature=0.02`` was
  clearly better (dev nDCG@10 0.449 vs 0.418 at these defaults): tune per dataset on a dev split.
* Unlabeled: ``ib+topk`` with 8 samples of the top-200 per query (128 x 8 candidates shared in a batch): RR@10
  0.680 vs 0.675 with one sample (the labeled preset's); all 200 per query costs 25x more per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.params import Param
from benchmark.registry import BaseMethod, MethodError, TrainData, register
from benchmark.vq import WRITEBACK_MODES, VQParams, check_divides, encode_docs, factory_string
from benchmark.vq.faiss_init import INIT_PARAMS, init_for
from benchmark.vq.mining import cached_topk
from benchmark.vq.torch_vq import TorchVQ, ste_quantize
from benchmark.vq.train import (M_PARAM, NLIST_PARAM, Step, Trainer, TrainSpec, num_steps, positives, timed,
                                with_defaults)
from methods._distill_losses import LOSSES

QUERY_SOURCES = ("labeled", "unlabeled", "docs")
CANDIDATE_SOURCES = ("gt", "ib", "topk", "random")
CODE_MODES = ("ste", "fixed")


PARAMS = {
    "M": M_PARAM, "nlist": NLIST_PARAM, "opq": Param(True, "fixed OPQ rotation (from the faiss init)"),
    "queries": Param("unlabeled", "training queries: labeled train ones, train + unlabeled ones, or sampled docs",
                     choices=QUERY_SOURCES),
    "candidates": Param("ib+topk", f"candidate sources joined by '+', of {'+'.join(CANDIDATE_SOURCES)}", dtype=str),
    "topk": Param(200, "exact teacher top-K mined per query (candidates 'topk')", min=1),
    "topk_sample": Param(8, "top-K candidates sampled per query and step (0 = all K)", min=0),
    "num_random": Param(16, "uniform random candidates per query and step (candidates 'random')", min=1),
    "doc_queries": Param(10000, "docs sampled as queries (queries='docs')", min=1),
    "loss": Param("listnet", "similarity f(teacher, student) (methods._distill_losses)", choices=tuple(LOSSES)),
    "temperature": Param(0.05, "softmax temperature of the listwise/pairwise losses", min=0, min_exclusive=True),
    "ivf_weight": Param("auto", "weight w of the IVF loss; 'auto' = loss_pq / loss_ivf at the first step, kept",
                        dtype=float, min=0, special=("auto",)),
    "codes": Param("ste", "PQ codes: re-assigned each step (straight-through) or the fixed faiss ones",
                   choices=CODE_MODES),
    "train_ivf": Param(True, "train the IVF centroids"), "train_pq": Param(True, "train the PQ codebooks"),
    "query_adapter": Param(False, "also train a d x d query map (identity init)"),
    "lr_pq": Param(1e-4, "learning rate of the PQ codebooks", min=0, min_exclusive=True),
    "lr_ivf": Param(1e-3, "learning rate of the IVF centroids", min=0, min_exclusive=True),
    "lr_adapter": Param(1e-4, "learning rate of the query adapter", min=0, min_exclusive=True),
    "warmup": Param(0.1, "share of the steps with a linear lr warm-up", min=0, max=1),
    "epochs": Param(1.0, "passes over the training queries", min=0, min_exclusive=True),
    "batch_size": Param(128, "queries per step", min=1),
    "writeback": Param("auto", "how the index stores docs; auto = codes for fixed codes, else preassigned",
                       choices=("auto",) + WRITEBACK_MODES),
    **INIT_PARAMS,
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


def query_set(train: TrainData, cfg: dict, sources: set[str]) -> QuerySet:
    """Assemble the training queries (and mine their teacher top-K if 'topk' is a candidate source). Unlabeled
    sources are mined separately, so top-K caches are shared across settings."""
    if cfg["queries"] == "labeled":
        pos = positives(train, "distill-vq queries='labeled'")
        order = np.lexsort((pos.docs, np.repeat(np.arange(len(pos)), pos.counts)))   # sorted within each query
        qs = QuerySet(pos.query_emb(train), pos.offsets, pos.docs[order])
        arrays = [qs.emb]
    else:
        if "gt" in sources:
            raise MethodError(f"candidates 'gt' needs labels: use queries='labeled' (got {cfg['queries']!r})")
        if cfg["queries"] == "docs":
            n = train.num_docs
            rows = np.sort(np.random.default_rng(train.seed).choice(n, min(n, cfg["doc_queries"]), replace=False))
            arrays = [np.asarray(train.doc_emb[rows], dtype=np.float32)]
        else:
            arrays = [np.asarray(a, dtype=np.float32) for a in (train.train_query_emb, train.unlabeled_query_emb)
                      if a is not None and len(a)]
            if not arrays:
                raise MethodError("queries='unlabeled' needs train or train-unlabeled queries; use queries='docs'")
        qs = QuerySet(np.concatenate(arrays))
    if "topk" in sources:
        qs.topk = np.concatenate([cached_topk(train.doc_emb, a, cfg["topk"], train.cache_dir,
                                              gpu=train.device.startswith("cuda")) for a in arrays])
    return qs


def sample_candidates(qs: QuerySet, batch: np.ndarray, rng: np.random.Generator, sources: set[str], cfg: dict,
                      num_docs: int) -> np.ndarray:
    """Per-query candidate doc indices (B, C) for a batch of query rows."""
    cols = []
    if "gt" in sources:
        off, cnt = qs.pos_off[batch], np.diff(qs.pos_off)[batch]
        cols.append(qs.pos[off + (rng.random(len(batch)) * cnt).astype(np.int64)][:, None])
    if "topk" in sources:
        top = qs.topk[batch]
        k = min(cfg["topk_sample"] or top.shape[1], top.shape[1])
        if k < top.shape[1]:
            pick = np.argpartition(rng.random(top.shape), k - 1, axis=1)
            top = np.take_along_axis(top, pick[:, :k], axis=1)
        cols.append(top)
    if "random" in sources:
        cols.append(rng.integers(0, num_docs, (len(batch), cfg["num_random"])))
    return np.concatenate(cols, axis=1)


def batch_scores(vq: TorchVQ, q: np.ndarray, cand: np.ndarray, doc_emb: np.ndarray, in_batch: bool, ste: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher, IVF and PQ scores of queries ``q`` (B, d) over their candidates ``cand`` (B, C); each distinct doc
    is gathered (and quantized) once. ``in_batch``: every query is scored against the union of the batch's
    candidates (B, U); otherwise against its own (B, C)."""
    device = vq.codebooks.device
    uniq, inv = np.unique(cand, return_inverse=True)
    docs = torch.from_numpy(np.asarray(doc_emb[uniq], dtype=np.float32)).to(device)
    q_t, doc_idx = torch.from_numpy(q).to(device), torch.from_numpy(uniq).to(device)
    q_rot, o = vq.encode_queries(q_t), vq.ivf_part(doc_idx)
    rec = ste_quantize(vq.rotate(docs) - o, vq.codebooks) + o if ste else vq.reconstruct(doc_idx)
    scores = (q_t @ docs.T, q_rot @ o.T, q_rot @ rec.T)
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


@register
class DistillVQ(BaseMethod):
    """Distill-VQ (Xiao et al., SIGIR 2022): IVF centroids + PQ codebooks distilled from dense scores (unlabeled)."""

    name = "distill-vq"
    family = "distillation"
    params = PARAMS

    def factory(self) -> str:
        return factory_string(self.config["M"], self.config["nlist"], self.config["opq"])

    def fit(self, train: TrainData) -> VQParams:
        cfg, info = self.config, {}
        check_divides(cfg["M"], train.dim, self.name)
        if not (cfg["train_ivf"] or cfg["train_pq"]):
            raise MethodError(f"{self.name}: train_ivf and train_pq are both False: nothing to train")
        sources = parse_candidates(cfg["candidates"])
        init = init_for(train, self.factory(), cfg)
        with timed(info, "mining"):
            qs = query_set(train, cfg, sources)
        lrs = {name: cfg[lr] for name, lr, on in (("codebooks", "lr_pq", cfg["train_pq"]), ("centroids", "lr_ivf",
               cfg["train_ivf"]), ("query_map", "lr_adapter", cfg["query_adapter"])) if on}
        steps = num_steps(len(qs), cfg["batch_size"], cfg["epochs"])
        spec = TrainSpec(cfg["epochs"], cfg["batch_size"], warmup_steps=int(cfg["warmup"] * steps))
        trainer = Trainer(TorchVQ(init, query_adapter=cfg["query_adapter"]), lrs, spec, train.seed, train.device,
                          self.name)
        f, tau, ste = LOSSES[cfg["loss"]], float(cfg["temperature"]), cfg["codes"] == "ste"
        w = {"ivf": None if cfg["ivf_weight"] == "auto" else float(cfg["ivf_weight"])}

        def loss(step: Step) -> torch.Tensor:
            cand = sample_candidates(qs, step.rows, step.rng, sources, cfg, train.num_docs)
            t, s_ivf, s_pq = batch_scores(trainer.vq, qs.emb[step.rows], cand, train.doc_emb, "ib" in sources, ste)
            total, w["ivf"] = combined_loss(f(t, s_ivf, tau) if cfg["train_ivf"] else None,
                                            f(t, s_pq, tau) if cfg["train_pq"] else None, w["ivf"])
            return total

        trainer.fit(loss, len(qs))
        writeback = cfg["writeback"] if cfg["writeback"] != "auto" else "preassigned" if ste else "codes"
        params = trainer.to_params(writeback, ivf_weight=w["ivf"] or 0.0, **info)
        if ste:   # the codes the trained codebooks assign (preassigned write-back re-encodes the same way)
            params.doc_codes = encode_docs(params, train.doc_emb)
        return params


@register
class DistillVQLabeled(DistillVQ):
    """Distill-VQ on labeled train queries: ground truth + in-batch + one sample of the teacher's top-200."""

    name = "distill-vq-labeled"
    params = with_defaults(PARAMS, queries="labeled", candidates="gt+ib+topk", topk_sample=1)


@register
class DistillVQIVFOnly(DistillVQ):
    """Distill-VQ training only the IVF centroids; PQ keeps faiss's OPQ codebooks (the paper's Table 4)."""

    name = "distill-vq-ivf-only"
    params = with_defaults(PARAMS, train_pq=False)


@register
class DistillVQPQOnly(DistillVQ):
    """Distill-VQ training only the PQ codebooks; IVF keeps faiss's k-means centroids."""

    name = "distill-vq-pq-only"
    params = with_defaults(PARAMS, train_ivf=False)
