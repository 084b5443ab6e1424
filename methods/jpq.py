"""JPQ: contrastive training of PQ codebooks (and IVF centroids) over fixed doc codes (Zhan et al., CIKM 2021).

A faiss init (OPQ + PQ, shared with the reconstruction baselines through the init cache) fixes each doc's PQ code
(and IVF list); the shared loop (:mod:`benchmark.vq.train`) moves only the codewords (and centroids), so the index
built from the result scores exactly as the trained model did (``writeback='codes'``).

Each step retrieves the batch's top-``top_k`` from the *current* index, appends the relevant docs not retrieved and
ranks them. ``negatives='pool'`` (default): each query's top-``pool_size`` in the *initial* index is mined once
(faiss, every list, cached; ``mine_nprobe`` probes that many lists instead — not in the paper, a scale knob: at MS
MARCO size an every-list pool is a PQ scan of 8.8M codes per train query, hours on 2 cores, so
``configs/msmarco*.toml`` mine from nlist/16 of the lists; the default stays every list) and re-scored each step
with the current codebooks (lookup tables, as faiss scores), so per-step cost is independent of the corpus.
``pool_refresh = R`` (not in the paper either: a pool that follows the model, :class:`PoolMiner`) re-mines the
pools of each block of R steps' queries from the *current* index just before that block, for the same total mining
work as the one-time pool. ``info['pool_recall']`` is the share of the exhaustive current
top-``top_k`` inside the pool (256 queries, after training). ``'dynamic'``: every doc ranked by the current codebooks
every step, as in JPQ (per-step cost linear in the corpus): on CPU by faiss's scan of the fixed codes with the current
codebooks copied in (:meth:`TorchVQ.scan_topk`, as JPQ retrieves with its faiss index), on a GPU by torch scores.

Losses: ``lambda`` (JPQ's): for every pair (i more relevant than j) ``softplus((s_j - s_i) / temperature) *
|1/r_i - 1/r_j|``, r the retrieval rank, 1/r zeroed beyond ``lambda_cut`` (0 = no cut), averaged over the query's
pairs, then the batch (graded qrels add the pairs between grades); ``softmax``: cross-entropy of softmax(scores /
temperature) over the candidates against grade-proportional targets.

Temperature. JPQ scores unnormalised 768-d dot products, where a well-ordered pair's logistic loss saturates. Here
embeddings are L2-normalised, scores live in [-1, 1] and ``softplus(s_j - s_i)`` is nearly linear: every pair pulls
equally whatever its order, and as ``|1/r_i - 1/r_j|`` is largest when the relevant doc is already at rank 1, solved
queries dominate the gradient. On the synthetic default (seed 0, RR@10 of the faiss top-10; faiss-opq 0.589)
temperature 1 gives 0.576 at lr 1e-3 and 0.308 at lr 1e-2 (the loss falls while the ranking degrades); 0.02 gives
0.619 (0.05: 0.608, 0.01: 0.615).

Learning rates. JPQ's rule (``lr='reference'``: 1e-4 for M>=48, 2e-5 for M=32, 5e-6 for M<=24, over 6 epochs of ~400k MS
MARCO queries) leaves the init unchanged here: one epoch is ~160 steps, so Adam moves a codeword coordinate (size ~0.09)
by at most ~lr * steps ~ 1e-3 (RR@10 0.5896 vs 0.5894). :data:`DEFAULT_LR` 1e-3 was the best of 3e-4 / 1e-3 / 3e-3
(0.605 / 0.619 / 0.592); more epochs overfit the 5k train queries (3 epochs: train RR@10 0.81, test 0.61). On debian-
desc's dev split (``configs/debian-desc-dev.toml``) lr 1e-3 / temperature 0.02 were again the best of lr {3e-4, 1e-3,
3e-3} x temperature {0.02, 0.05}. ``ivf_lr`` (None = ``lr``) beat 1e-4 and 1e-2. Longer epochs want less: in
configs/msmarco.toml's setting (IVF10000, M = 32, ~3,000 steps an epoch) lr 1e-3 collapses (nDCG@10 0.149 on the dev
split of the 1M-doc synthetic, ``configs/msmarco-jpq-dev.toml``, faiss-ivfopq 0.317); 3e-4 / 1e-4 / 'reference' (2e-5)
gave 0.301 / 0.347 / 0.337, so the MS MARCO configs set ``lr = 1e-4``; a pool re-mined every 100 steps lifted 1e-3 only
to 0.206 and left 2e-5 at 0.337. The query adapter (a d x d map, identity init, returned as ``VQParams.query_map``):
:data:`DEFAULT_ADAPTER_LR` was the best of 1e-3 / 3e-3 / 1e-2 / 3e-2 (RR@10 0.702 / 0.794 / 0.855 / 0.827);
``'reference'`` is JPQ's query-encoder lr 5e-6.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.params import Param, Space
from benchmark.registry import BaseMethod, DataFacts, TrainData, register
from benchmark.vq import VQParams, factory_string, fold_single_centroid
from benchmark.vq.faiss_init import INIT_PARAMS, OPQ_THREADS_NOTE, init_for
from benchmark.vq.mining import index_topk
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.train import (LR_SPACE, M_PARAM, MINE_NPROBE_PARAM, NLIST_PARAM, TEMPERATURE_SPACE,
                                WRITEBACK_PARAM, Step, Trainer, mine_nprobe_problems, positives, query_side_params,
                                timed, train_params, train_spec)

LOSSES = ("lambda", "softmax")
NEGATIVES = ("pool", "dynamic")
POOL_CHECK_QUERIES = 256
DEFAULT_LR = 1e-3
DEFAULT_ADAPTER_LR = 1e-2
REFERENCE_ENCODER_LR = 5e-6  # JPQ's query-encoder lr: what adapter_lr='reference' means


def _lr(desc: str, search: Space | None = None) -> Param:
    return Param(None, desc, dtype=float, min=0, min_exclusive=True, special=(None, "reference"), search=search)


def reference_lr(M: int) -> float:
    """JPQ's centroid learning rate for ``M`` sub-vectors."""
    return 1e-4 if M >= 48 else 2e-5 if M >= 32 else 5e-6


def resolve_lr(lr: float | str | None, reference: float, default: float) -> float:
    """``None`` -> ``default``; ``'reference'`` -> ``reference``; a number -> itself."""
    return default if lr is None else reference if lr == "reference" else float(lr)


@dataclass
class Labels:
    """Labeled train queries: embeddings and relevant doc indices/grades, padded with -1 / 0."""

    query_emb: torch.Tensor      # (Q, d)
    rel_idx: torch.Tensor        # (Q, R) int64, -1 = padding
    rel_grade: torch.Tensor      # (Q, R) float32, 0 = padding
    pool: torch.Tensor | None = None  # (Q, P) int32 candidate pool per query (negatives='pool')

    def to(self, device: torch.device) -> "Labels":
        return Labels(*(None if t is None else t.to(device)
                        for t in (self.query_emb, self.rel_idx, self.rel_grade, self.pool)))


def labeled_queries(train: TrainData, fraction: float, seed: int) -> Labels:
    """Queries with at least one relevant doc, subsampled to ``fraction`` of them (seeded)."""
    pos = positives(train, "JPQ").sample(fraction, seed)
    return Labels(*(torch.from_numpy(a) for a in (pos.query_emb(train), *pos.padded())))


def build_candidates(top: torch.Tensor, rel_idx: torch.Tensor, rel_grade: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieved ``top`` (B, K) + relevant docs not retrieved, appended in order -> (idx, grade, valid), (B, K+R).
    Invalid slots (padding, relevant docs already retrieved) are stably sorted to the end: valid = ranks 1, 2, ..."""
    hit = top[:, :, None] == rel_idx[:, None, :]                          # (B, K, R)
    top_grade = (hit * rel_grade[:, None, :]).sum(-1)                      # (B, K)
    missing = (rel_idx >= 0) & ~hit.any(1)                                 # (B, R)
    idx = torch.cat([top, rel_idx.clamp(min=0)], 1)
    grade = torch.cat([top_grade, rel_grade], 1)
    valid = torch.cat([torch.ones_like(top, dtype=torch.bool), missing], 1)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    return idx.gather(1, order), grade.gather(1, order), valid.gather(1, order)


def lambda_loss(scores: torch.Tensor, grade: torch.Tensor, valid: torch.Tensor, lambda_cut: int,
                temperature: float = 1.0) -> torch.Tensor:
    """JPQ's rank-weighted pairwise logistic loss on ``scores / temperature``; rows are candidates in retrieval
    order (rank = position + 1).

    Only a candidate graded above the row's lowest valid grade can be the upper one of a pair, and there are at most
    the query's relevant docs of those: the pairs are formed from those rows only, (B, U, K) with U the batch's most
    (1-3 here) instead of all (B, K, K) — the same sums (up to float summation order), ~27x cheaper at K = 201."""
    rank = torch.arange(1, scores.shape[1] + 1, dtype=scores.dtype, device=scores.device)
    weight = (1.0 / rank).expand_as(scores)
    if lambda_cut > 0:
        weight = weight * (rank <= lambda_cut)
    floor = grade.masked_fill(~valid, float("inf")).amin(1, keepdim=True)   # grades are float
    upper = valid & (grade > floor)
    n_upper = int(upper.sum(1).max()) if upper.numel() else 0
    if n_upper == 0:                         # no pair anywhere: zero, still on the graph
        return scores.sum() * 0.0
    rows = torch.sort((~upper).to(torch.int8), dim=1, stable=True).indices[:, :n_upper]     # (B, U) uppers first
    g_up, s_up, w_up = grade.gather(1, rows), scores.gather(1, rows), weight.gather(1, rows)
    pairs = (g_up[:, :, None] > grade[:, None, :]) & upper.gather(1, rows)[:, :, None] & valid[:, None, :]
    pair_weight = (w_up[:, :, None] - weight[:, None, :]).abs()
    pair_loss = F.softplus((scores[:, None, :] - s_up[:, :, None]) / temperature) * pair_weight * pairs
    return (pair_loss.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)).mean()


def lambda_loss_all_pairs(scores: torch.Tensor, grade: torch.Tensor, valid: torch.Tensor, lambda_cut: int,
                          temperature: float = 1.0) -> torch.Tensor:
    """:func:`lambda_loss` as first written, over all (B, K, K) candidate pairs: the definition it is tested against
    (tests/test_jpq.py) and timed against (bench/train_step.py); not used in training."""
    rank = torch.arange(1, scores.shape[1] + 1, dtype=scores.dtype, device=scores.device)
    weight = (1.0 / rank).expand_as(scores) * ((rank <= lambda_cut) if lambda_cut > 0 else 1)
    pairs = (grade[:, :, None] > grade[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    pair_weight = (weight[:, :, None] - weight[:, None, :]).abs()
    pair_loss = F.softplus((scores[:, None, :] - scores[:, :, None]) / temperature) * pair_weight * pairs
    return (pair_loss.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)).mean()


def softmax_loss(scores: torch.Tensor, grade: torch.Tensor, valid: torch.Tensor, temperature: float
                 ) -> torch.Tensor:
    """Cross-entropy of softmax(scores / temperature) over valid candidates against grade-proportional targets."""
    logits = (scores / temperature).masked_fill(~valid, float("-inf"))
    target = grade * valid
    target = target / target.sum(1, keepdim=True).clamp(min=1e-12)
    return -(target * torch.log_softmax(logits, 1).masked_fill(~valid, 0.0)).sum(1).mean()


def first_relevant_rr(grade: torch.Tensor, valid: torch.Tensor, depth: int = 10) -> float:
    """Mean RR@depth of the retrieved candidates (JPQ's training MRR), for the progress bar / info."""
    hit = (grade[:, :depth] > 0) & valid[:, :depth]
    return float((hit / torch.arange(1, hit.shape[1] + 1, device=hit.device)).max(1).values.mean())


class PoolMiner:
    """``pool_refresh``: before step ``i`` with ``i % every == 0``, each query of steps ``i .. i + every - 1`` gets
    its pool re-mined, its top-``pool_size`` in the faiss index of the *current* parameters (the fixed codes with the
    codebooks and centroids as trained so far; ``mine_nprobe`` lists or every list, uncached). Every query is mined
    once per epoch, just before its use, so the total mining work is the one-time pool's (plus one index build per
    block), while a pool is never older than ``every`` steps. A :data:`benchmark.vq.train.BeforeStep` hook."""

    def __init__(self, vq: TorchVQ, labels: Labels, doc_emb: np.ndarray, every: int, nprobe: int | None) -> None:
        self.vq, self.labels, self.doc_emb, self.every, self.nprobe = vq, labels, doc_emb, every, nprobe
        self.blocks, self.mined, self.refilled = 0, 0, 0
        self.last: dict = {}

    def __call__(self, step: Step, batches: list[np.ndarray]) -> None:
        if step.index % self.every:
            return
        rows = np.unique(np.concatenate(batches[step.index:step.index + self.every]))
        idx = torch.from_numpy(rows).to(self.labels.pool.device)     # the labels live on the trainer's device
        pool, self.last = index_topk(self.vq.to_params(), self.doc_emb, self.labels.query_emb[idx].cpu().numpy(),
                                     self.labels.pool.shape[1], None, self.nprobe)
        self.labels.pool[idx] = torch.from_numpy(pool).to(idx.device)
        self.blocks, self.mined = self.blocks + 1, self.mined + len(rows)
        self.refilled += self.last["refilled"]

    def info(self) -> dict:
        """What mined the pools (the last block's search) and how often."""
        return {**self.last, "refilled": self.refilled, "refresh_every_steps": self.every, "blocks": self.blocks,
                "queries_mined": self.mined, "from": "the current index, before each block of steps"}


@register
class JPQ(BaseMethod):
    """JPQ (Zhan et al. 2021): flat PQ codebooks trained for ranking on hard negatives from the current index."""

    name = "jpq"
    reproducibility = "threads"
    reproducibility_note = OPQ_THREADS_NOTE
    family = "contrastive"
    ivf = False
    params = {
        "M": M_PARAM,
        # schedule / optimizer / warmup_steps / weight_decay came after JPQ's records: at what it always did (linear
        # decay, AdamW, no decay) they stay out of its records and ids
        **{k: replace(v, legacy=(v.default,)) if k in ("schedule", "optimizer") else v
           for k, v in train_params(warmup_key="warmup_ratio").items()},
        "lr": _lr(f"codebook lr; None = {DEFAULT_LR:g}, 'reference' = JPQ's rule for M (module doc)", search=LR_SPACE),
        "loss": Param("lambda", "ranking loss (module doc)", choices=LOSSES, search=Space(choices=LOSSES)),
        "lambda_cut": Param(200, "1/rank is zeroed beyond this rank in the lambda loss (0 = no cut)", min=0),
        "temperature": Param(0.02, "scores are divided by it in both losses", min=0, min_exclusive=True,
                             search=TEMPERATURE_SPACE),
        "top_k": Param(200, "candidates retrieved from the current index per query and step", min=1),
        "negatives": Param("pool", "where the top_k come from (module doc)", choices=NEGATIVES,
                           search=Space(choices=NEGATIVES)),
        "pool_size": Param(1000, "per-query pool mined from the init index (negatives='pool'), >= top_k", min=1),
        "pool_refresh": Param(0, "negatives='pool': re-mine each query's pool from the current index just before "
                              "the block of this many steps that uses it (0 = mined once from the init index; "
                              "module doc)", min=0, legacy=(0,)),
        "mine_nprobe": MINE_NPROBE_PARAM,
        "label_fraction": Param(1.0, "share of the labeled queries used (seeded)", min=0, max=1, min_exclusive=True),
        **query_side_params(lr_key="adapter_lr", lr_param=_lr(
            f"query adapter lr; None = {DEFAULT_ADAPTER_LR:g}, 'reference' = JPQ's encoder lr 5e-6", search=LR_SPACE)),
        "writeback": WRITEBACK_PARAM,
        **INIT_PARAMS,
    }

    def factory(self) -> str:
        return factory_string(self.config["M"], self.config["nlist"] if self.ivf else 1, opq=True)

    def labels_needed(self) -> bool:
        return True

    def check_config(self) -> list[str]:
        cfg = self.config
        problems = super().check_config()
        if cfg["negatives"] == "pool" and not cfg["top_k"] <= cfg["pool_size"]:
            problems.append(f"pool_size must be >= top_k ({cfg['top_k']}), got {cfg['pool_size']}")
        if cfg["pool_refresh"] and cfg["negatives"] != "pool":
            problems.append(f"pool_refresh={cfg['pool_refresh']} needs negatives='pool' (there is no pool to re-mine)")
        problems += mine_nprobe_problems(cfg, self.ivf, cfg["negatives"] == "pool")
        return problems

    def check_data(self, data: DataFacts) -> list[str]:
        problems = super().check_data(data)
        if self.config["top_k"] > data.num_docs:
            problems.append(f"top_k must be in [1, {data.num_docs}] (the number of docs), got {self.config['top_k']}")
        return problems

    def init_params(self, train: TrainData) -> VQParams:
        """The faiss init (cached under ``train.cache_dir``, shared with other methods)."""
        vq = init_for(train, self.factory(), self.config)
        return vq if self.ivf else fold_single_centroid(vq)

    def learning_rates(self) -> dict[str, float]:
        cfg = self.config
        rates = {"codebooks": resolve_lr(cfg["lr"], reference_lr(cfg["M"]), DEFAULT_LR)}
        if cfg["query_adapter"]:
            rates["query_map"] = resolve_lr(cfg["adapter_lr"], REFERENCE_ENCODER_LR, DEFAULT_ADAPTER_LR)
        return rates

    def fit(self, train: TrainData) -> VQParams:
        self.require_data(train)
        cfg = self.config
        labels = labeled_queries(train, cfg["label_fraction"], train.seed)
        init, info = self.init_params(train), {}
        info["train_queries_from"] = {"queries": "labeled", "labels_used": True, "n": len(labels.query_emb),
                                      "fraction": cfg["label_fraction"], "from": "train split, with its qrels"}
        refresh = cfg["negatives"] == "pool" and cfg["pool_refresh"] > 0
        if refresh:    # mined block by block during training (PoolMiner); -1 = not mined yet
            labels = replace(labels, pool=torch.full((len(labels.query_emb), cfg["pool_size"]), -1,
                                                     dtype=torch.int32))
        elif cfg["negatives"] == "pool":   # each query's top-pool_size in the init index, mined once (cached)
            with timed(info, "mining"):
                pool, info["negative_mining"] = index_topk(init, train.doc_emb, labels.query_emb.numpy(),
                                                           cfg["pool_size"], train.cache_dir, cfg["mine_nprobe"])
            labels = replace(labels, pool=torch.from_numpy(pool))
        spec = train_spec(cfg, warmup_key="warmup_ratio", shuffle="torch")
        trainer = Trainer(TorchVQ(init, query_adapter=cfg["query_adapter"]), self.learning_rates(), spec,
                          train.seed, train.device, self.name)
        labels = labels.to(trainer.device)
        miner = (PoolMiner(trainer.vq, labels, train.doc_emb, cfg["pool_refresh"], cfg["mine_nprobe"]) if refresh
                 else None)
        loop = trainer.fit(partial(self.step_loss, trainer.vq, labels), len(labels.query_emb), miner)
        if miner is not None:
            info["mining_seconds"] = loop["before_step_seconds"]
            info["negative_mining"] = miner.info()
        if labels.pool is not None:   # measured on a seeded sample of the (mined) queries
            mined = torch.nonzero(labels.pool[:, 0] >= 0).flatten()
            rows = mined[torch.randperm(len(mined), generator=trainer.gen)[:POOL_CHECK_QUERIES].to(mined.device)]
            info["pool_recall"] = trainer.vq.pool_recall(labels.query_emb[rows], labels.pool[rows], cfg["top_k"])
        return trainer.to_params(cfg["writeback"], **info)

    def step_loss(self, model: TorchVQ, labels: Labels, step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        """Retrieve from the current index, append missing relevant docs, and score the candidates."""
        cfg = self.config
        rows = torch.from_numpy(step.rows).to(step.device)
        q_rot = model.encode_queries(labels.query_emb[rows])
        top = model.topk(q_rot.detach(), cfg["top_k"], None if labels.pool is None else labels.pool[rows])
        idx, grade, valid = build_candidates(top, labels.rel_idx[rows], labels.rel_grade[rows])
        scores = model.scores(q_rot, idx)
        loss = (lambda_loss(scores, grade, valid, cfg["lambda_cut"], cfg["temperature"]) if cfg["loss"] == "lambda"
                else softmax_loss(scores, grade, valid, cfg["temperature"]))
        return loss, {"train_rr@10": first_relevant_rr(grade, valid)}


@register
class JPQIVF(JPQ):
    """JPQ over an IVF index: trains the PQ codebooks and the IVF centroids; each doc keeps its list."""

    name = "jpq-ivf"
    ivf = True
    params = {**JPQ.params, "nlist": NLIST_PARAM,
              "ivf_lr": _lr("IVF centroid lr; None = lr, 'reference' = JPQ's centroid rule for M", search=LR_SPACE)}

    def learning_rates(self) -> dict[str, float]:
        rates = super().learning_rates()
        return {**rates, "centroids": resolve_lr(self.config["ivf_lr"], reference_lr(self.config["M"]),
                                                 rates["codebooks"])}
