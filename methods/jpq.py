"""JPQ: contrastive training of PQ codebooks (and IVF centroids) over fixed doc codes (Zhan et al., CIKM 2021).

The index is initialised by faiss (OPQ rotation + PQ, shared with the reconstruction baselines through the init
cache). Each doc keeps its PQ code (and IVF list); training moves only the codewords (and the IVF centroids), so the
index the harness builds from the returned parameters scores exactly as the trained model did (``writeback='codes'``).

Every step retrieves the top-``top_k`` docs of the batch's queries from the *current* index, appends the relevant
docs that were not retrieved, and ranks them with the loss below. Retrieval (``negatives``):

* ``pool`` (default): each train query's top-``pool_size`` docs in the *initial* faiss index are mined once (faiss,
  every list probed, cached under the init cache); each step re-scores that pool with the current codebooks (lookup
  tables, as faiss scores) and keeps its top-``top_k``. Per-step cost is independent of the corpus size. The share
  of the exhaustive current top-``top_k`` that lies in the pool is measured on 256 queries after training and
  recorded as ``train_info['pool_recall']``.
* ``dynamic``: exhaustive torch scores of every doc's current reconstruction (equal to faiss's) each step, as in JPQ;
  per-step cost grows linearly with the corpus.

The losses:

* ``lambda`` (JPQ's loss): for every pair (i more relevant than j) ``softplus((s_j - s_i) / temperature) *
  |1/r_i - 1/r_j|``, where ``r`` is the retrieval rank and ``1/r`` is zeroed beyond ``lambda_cut`` (0 = no cut),
  averaged over the query's pairs, then over the batch. For binary qrels this is JPQ's rel x irrel pairwise loss;
  graded qrels add the pairs between relevance grades.
* ``softmax``: cross-entropy between the softmax of ``scores / temperature`` over the candidates and the target
  distribution proportional to the relevance grade.

Temperature. JPQ scores unnormalised 768-d dot products (a wide range), where the logistic loss of a well-ordered
pair saturates. Here embeddings are L2-normalised, scores live in [-1, 1] and ``softplus(s_j - s_i)`` is nearly
linear: every pair pulls equally whatever its order, and since ``|1/r_i - 1/r_j|`` is largest when the relevant doc
is already at rank 1, solved queries dominate the gradient. On the synthetic default (seed 0, RR@10 of the faiss
top-10; faiss-opq 0.589) temperature 1 gives 0.576 at lr 1e-3 and 0.308 at lr 1e-2 (the loss falls while the ranking degrades);
temperature 0.02 gives 0.619 (0.05: 0.608, 0.01: 0.615). So both losses divide scores by ``temperature`` (0.02).

Learning rates. JPQ's rule (``lr='reference'``) is centroid lr 1e-4 for M>=48, 2e-5 for M=32, 5e-6 for M<=24, for
6 epochs over ~400k MS MARCO queries. One epoch here is ~160 steps, so Adam moves a codeword coordinate (typical
size ~0.09) by at most ~lr * steps ~ 1e-3: the reference rule leaves the init unchanged (RR@10 0.5896 vs 0.5894).
:data:`DEFAULT_LR` 1e-3 was the best of 3e-4 / 1e-3 / 3e-3 (0.605 / 0.619 / 0.592); more epochs overfit the 5k
train queries (3 epochs: train RR@10 0.81, test 0.61). On debian-desc's dev split (``configs/debian-desc-dev.toml``)
lr 1e-3 / temperature 0.02 were again the best of lr {3e-4, 1e-3, 3e-3} x temperature {0.02, 0.05}.
``ivf_lr`` (None = ``lr``; JPQ trains no IVF, so ``'reference'`` applies the same rule) beat 1e-4 and 1e-2. The
query adapter (a d x d map, identity init, returned as ``VQParams.query_map``) has its own ``adapter_lr``:
:data:`DEFAULT_ADAPTER_LR` was the best of 1e-3 / 3e-3 / 1e-2 / 3e-2 (RR@10 0.702 / 0.794 / 0.855 / 0.827);
``'reference'`` is JPQ's query-encoder lr 5e-6.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.vq.faiss_init import trained_params
from benchmark.vq.mining import index_topk
from benchmark.registry import BaseMethod, MethodError, TrainData, register
from benchmark.vq import WRITEBACK_MODES, VQParams
from benchmark.vq.torch_vq import (deterministic_torch, TorchVQ, num_steps, seed_everything, torch_device,
                               warmup_linear)

LOSSES = ("lambda", "softmax")
NEGATIVES = ("pool", "dynamic")
POOL_CHECK_QUERIES = 256
DEFAULT_LR = 1e-3
DEFAULT_ADAPTER_LR = 1e-2
REFERENCE_ENCODER_LR = 5e-6  # JPQ's query-encoder lr: what adapter_lr='reference' means
LOG_TAIL = 20  # steps averaged into the recorded final loss / train RR@10


def reference_lr(M: int) -> float:
    """JPQ's centroid learning rate for ``M`` sub-vectors."""
    if M >= 48:
        return 1e-4
    if M >= 32:
        return 2e-5
    return 5e-6


def resolve_lr(lr: float | str | None, reference: float, default: float) -> float:
    """``None`` -> ``default``; ``'reference'`` -> ``reference``; a positive number -> itself."""
    if lr is None:
        return default
    if lr == "reference":
        return reference
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
        return float(lr)
    raise MethodError(f"lr must be None, 'reference' or a positive number, got {lr!r}")


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
    if train.train_qrels is None or train.train_query_emb is None or train.train_query_ids is None:
        raise MethodError("JPQ needs labeled train queries (train_qrels), but this dataset has none; "
                          "use an unlabeled method (e.g. a reconstruction or distillation one)")
    doc_index = {doc_id: i for i, doc_id in enumerate(train.doc_ids)}
    rows, rels = [], []
    for row, qid in enumerate(train.train_query_ids):
        rel = [(doc_index[d], g) for d, g in train.train_qrels.get(qid, {}).items() if g > 0 and d in doc_index]
        if rel:
            rows.append(row)
            rels.append(rel)
    if not rows:
        raise MethodError("JPQ: no train query has a relevant doc in the corpus")
    keep = max(1, round(len(rows) * fraction))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(rows))[:keep])
    width = max(len(rels[i]) for i in chosen)
    rel_idx = np.full((keep, width), -1, dtype=np.int64)
    rel_grade = np.zeros((keep, width), dtype=np.float32)
    for out, i in enumerate(chosen):
        idx, grade = zip(*rels[i])
        rel_idx[out, :len(idx)] = idx
        rel_grade[out, :len(idx)] = grade
    emb = np.asarray(train.train_query_emb, dtype=np.float32)[np.asarray(rows)[chosen]]
    return Labels(torch.from_numpy(emb), torch.from_numpy(rel_idx), torch.from_numpy(rel_grade))


def build_candidates(top: torch.Tensor, rel_idx: torch.Tensor, rel_grade: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieved ``top`` (B, K) + relevant docs not retrieved, appended in order -> (idx, grade, valid), (B, K+R).

    Invalid slots (padding, or relevant docs already retrieved) sit at the end of each row, after every valid one
    is placed by a stable sort, so a row's valid candidates are exactly its retrieval ranks 1, 2, ...
    """
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
    order (rank = position + 1)."""
    rank = torch.arange(1, scores.shape[1] + 1, dtype=scores.dtype, device=scores.device)
    weight = (1.0 / rank).expand_as(scores)
    if lambda_cut > 0:
        weight = weight * (rank <= lambda_cut)
    pairs = (grade[:, :, None] > grade[:, None, :]) & valid[:, :, None] & valid[:, None, :]   # i above j
    pair_weight = (weight[:, :, None] - weight[:, None, :]).abs()
    pair_loss = F.softplus((scores[:, None, :] - scores[:, :, None]) / temperature) * pair_weight * pairs
    per_query = pair_loss.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return per_query.mean()


def softmax_loss(scores: torch.Tensor, grade: torch.Tensor, valid: torch.Tensor, temperature: float
                 ) -> torch.Tensor:
    """Cross-entropy of softmax(scores / temperature) over valid candidates against grade-proportional targets."""
    logits = (scores / temperature).masked_fill(~valid, float("-inf"))
    target = grade * valid
    target = target / target.sum(1, keepdim=True).clamp(min=1e-12)
    log_prob = torch.log_softmax(logits, 1).masked_fill(~valid, 0.0)
    return -(target * log_prob).sum(1).mean()


def fold_single_centroid(vq: VQParams) -> VQParams:
    """``OPQ,IVF1,PQ`` -> ``OPQ,PQ`` with the same reconstructions: codebook[m] += centroid[m-th slice]."""
    M, _, dsub = vq.pq_codebooks.shape
    offset = vq.ivf_centroids[0].reshape(M, 1, dsub)
    return replace(vq, pq_codebooks=(vq.pq_codebooks + offset).astype(np.float32), ivf_centroids=None,
                   doc_assign=None)


def retrieve(model: TorchVQ, q_rot: torch.Tensor, pool: torch.Tensor | None, k: int) -> torch.Tensor:
    """Top-``k`` doc indices (B, k) under the current model: of each query's ``pool`` row, or of every doc."""
    if pool is None:
        return model.all_doc_scores(q_rot).topk(k, dim=1).indices
    pool = pool.long()
    return pool.gather(1, model.lookup_scores(q_rot, pool).topk(k, dim=1).indices)


@torch.no_grad()
def pool_recall(model: TorchVQ, labels: Labels, k: int, gen: torch.Generator) -> float:
    """Share of the exhaustive current top-``k`` found by re-scoring the pool, on a seeded sample of queries."""
    rows = torch.randperm(len(labels.query_emb), generator=gen)[:POOL_CHECK_QUERIES].to(labels.query_emb.device)
    found = []
    for chunk in rows.split(32):  # (32, n) exhaustive scores at a time: 128 MB at 1M docs
        exact = retrieve(model, model.encode_queries(labels.query_emb[chunk]), None, k)
        found.append((exact[:, :, None] == labels.pool[chunk].long()[:, None, :]).any(-1).flatten())
    return float(torch.cat(found).float().mean())


def first_relevant_rr(grade: torch.Tensor, valid: torch.Tensor, depth: int = 10) -> float:
    """Mean RR@depth of the retrieved candidates (JPQ's training MRR), for the progress bar / info."""
    hit = (grade[:, :depth] > 0) & valid[:, :depth]
    rank = torch.arange(1, hit.shape[1] + 1, dtype=torch.float32, device=hit.device)
    return float(torch.where(hit, 1.0 / rank, torch.zeros((), device=hit.device)).max(1).values.mean())


@register
class JPQ(BaseMethod):
    """JPQ: OPQ-initialised flat PQ, codebooks trained on hard negatives from the current index (module doc)."""

    name = "jpq"
    family = "contrastive"
    description = "JPQ (Zhan et al. 2021): PQ codebooks trained for ranking with dynamic top-k hard negatives"
    ivf = False
    params: dict[str, Any] = {
        "M": 16, "epochs": 1.0, "batch_size": 32, "lr": None, "warmup_ratio": 0.1, "loss": "lambda",
        "lambda_cut": 200, "temperature": 0.02, "top_k": 200, "negatives": "pool", "pool_size": 1000,
        "label_fraction": 1.0, "query_adapter": False,
        "adapter_lr": None, "writeback": "codes", "max_train_points": 65536, "opq_niter": 20,
    }

    def factory(self) -> str:
        M = self.config["M"]
        return f"OPQ{M},IVF{self.config['nlist'] if self.ivf else 1},PQ{M}x8"

    def check(self, train: TrainData) -> None:
        cfg = self.config
        if train.dim % cfg["M"]:
            raise MethodError(f"{self.name}: M={cfg['M']} must divide the embedding dim {train.dim}")
        if cfg["loss"] not in LOSSES:
            raise MethodError(f"{self.name}: loss must be one of {LOSSES}, got {cfg['loss']!r}")
        if cfg["writeback"] not in WRITEBACK_MODES:
            raise MethodError(f"{self.name}: writeback must be one of {WRITEBACK_MODES}, got {cfg['writeback']!r}")
        if not 0 < cfg["label_fraction"] <= 1:
            raise MethodError(f"{self.name}: label_fraction must be in (0, 1], got {cfg['label_fraction']}")
        if not 0 < cfg["top_k"] <= train.num_docs:
            raise MethodError(f"{self.name}: top_k must be in [1, {train.num_docs}], got {cfg['top_k']}")
        if cfg["negatives"] not in NEGATIVES:
            raise MethodError(f"{self.name}: negatives must be one of {NEGATIVES}, got {cfg['negatives']!r}")
        if cfg["negatives"] == "pool" and not cfg["top_k"] <= cfg["pool_size"]:
            raise MethodError(f"{self.name}: pool_size must be >= top_k ({cfg['top_k']}), got {cfg['pool_size']}")
        if cfg["temperature"] <= 0 or cfg["batch_size"] < 1 or cfg["epochs"] <= 0:
            raise MethodError(f"{self.name}: temperature and epochs must be > 0 and batch_size >= 1")

    def init_params(self, train: TrainData) -> VQParams:
        """The faiss init (cached under ``train.cache_dir``, shared with other methods)."""
        vq = trained_params(train.doc_emb, self.factory(), seed=train.seed, cache_dir=train.cache_dir,
                            max_train_points=self.config["max_train_points"], opq_niter=self.config["opq_niter"])
        return vq if self.ivf else fold_single_centroid(vq)

    def learning_rates(self) -> dict[str, float]:
        cfg = self.config
        rates = {"lr": resolve_lr(cfg["lr"], reference_lr(cfg["M"]), DEFAULT_LR)}
        if cfg["query_adapter"]:
            rates["adapter_lr"] = resolve_lr(cfg["adapter_lr"], REFERENCE_ENCODER_LR, DEFAULT_ADAPTER_LR)
        return rates

    def param_groups(self, model: TorchVQ, rates: dict[str, float]) -> list[dict[str, Any]]:
        groups = [{"params": [model.codebooks], "lr": rates["lr"]}]
        if self.config["query_adapter"]:
            groups.append({"params": [model.query_map], "lr": rates["adapter_lr"]})
        return groups

    def fit(self, train: TrainData) -> VQParams:
        self.check(train)
        cfg = self.config
        gen = seed_everything(train.seed)
        labels = labeled_queries(train, cfg["label_fraction"], train.seed)
        init = self.init_params(train)
        t0 = time.perf_counter()
        if cfg["negatives"] == "pool":
            labels = replace(labels, pool=torch.from_numpy(self.negative_pool(train, init, labels)))
        pool_seconds = time.perf_counter() - t0
        device = torch_device(train.device)
        labels = labels.to(device)
        model = TorchVQ(init, train_centroids=self.ivf, query_adapter=cfg["query_adapter"]).to(device)
        rates = self.learning_rates()
        steps = num_steps(len(labels.query_emb), cfg["batch_size"], cfg["epochs"])
        optimizer = torch.optim.AdamW(self.param_groups(model, rates), weight_decay=0.0)
        scheduler = warmup_linear(optimizer, round(cfg["warmup_ratio"] * steps), steps)
        t0 = time.perf_counter()
        with deterministic_torch():
            losses, rrs = self.train_loop(model, labels, optimizer, scheduler, steps, gen)
        info = {"final_loss": float(np.mean(losses[-LOG_TAIL:])), "first_loss": losses[0],
                "train_rr@10": float(np.mean(rrs[-LOG_TAIL:])), "steps": steps, "epochs": cfg["epochs"],
                "train_queries": len(labels.query_emb), "init": self.factory(), **rates,
                "train_loop_seconds": time.perf_counter() - t0, "pool_seconds": pool_seconds}
        if labels.pool is not None:
            info["pool_recall"] = pool_recall(model, labels, cfg["top_k"], gen)
        return model.to_params(cfg["writeback"], info)

    def negative_pool(self, train: TrainData, init: VQParams, labels: Labels) -> np.ndarray:
        """Each labeled query's top-``pool_size`` docs in the initial faiss index (mined once, cached)."""
        return index_topk(init, train.doc_emb, labels.query_emb.numpy(), self.config["pool_size"], train.cache_dir)

    def batches(self, num_queries: int, steps: int, gen: torch.Generator, device: torch.device
                ) -> Iterator[torch.Tensor]:
        """``steps`` batches of query rows; a fresh seeded permutation per epoch."""
        bs = self.config["batch_size"]
        order = torch.empty(0, dtype=torch.int64)
        for _ in range(steps):
            if len(order) < bs:
                order = torch.cat([order, torch.randperm(num_queries, generator=gen)])
            yield order[:bs].to(device)
            order = order[bs:]

    def step_loss(self, model: TorchVQ, labels: Labels, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Retrieve from the current index, append missing relevant docs, and score the candidates."""
        cfg = self.config
        q_rot = model.encode_queries(labels.query_emb[rows])
        top = retrieve(model, q_rot.detach(), None if labels.pool is None else labels.pool[rows], cfg["top_k"])
        idx, grade, valid = build_candidates(top, labels.rel_idx[rows], labels.rel_grade[rows])
        scores = model.scores(q_rot, idx)
        if cfg["loss"] == "lambda":
            loss = lambda_loss(scores, grade, valid, cfg["lambda_cut"], cfg["temperature"])
        else:
            loss = softmax_loss(scores, grade, valid, cfg["temperature"])
        return loss, first_relevant_rr(grade, valid)

    def train_loop(self, model: TorchVQ, labels: Labels, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int, gen: torch.Generator
                   ) -> tuple[list[float], list[float]]:
        losses, rrs = [], []
        batches = self.batches(len(labels.query_emb), steps, gen, labels.query_emb.device)
        bar = tqdm(batches, total=steps, desc=self.name, leave=False)
        for rows in bar:
            loss, rr = self.step_loss(model, labels, rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            rrs.append(rr)
            bar.set_postfix(loss=f"{np.mean(losses[-LOG_TAIL:]):.4f}", rr10=f"{np.mean(rrs[-LOG_TAIL:]):.3f}")
        return losses, rrs


@register
class JPQIVF(JPQ):
    """JPQ over an IVF index: trains the PQ codebooks and the IVF centroids; each doc keeps its list."""

    name = "jpq-ivf"
    description = "JPQ with IVF: PQ codebooks and IVF centroids trained for ranking, fixed list assignment"
    ivf = True
    params = {**JPQ.params, "nlist": 256, "ivf_lr": None}

    def learning_rates(self) -> dict[str, float]:
        """``ivf_lr``: None -> the codebook lr; 'reference' -> JPQ's centroid rule (JPQ itself trains no IVF)."""
        rates = super().learning_rates()
        rates["ivf_lr"] = resolve_lr(self.config["ivf_lr"], reference_lr(self.config["M"]), rates["lr"])
        return rates

    def param_groups(self, model: TorchVQ, rates: dict[str, float]) -> list[dict[str, Any]]:
        return super().param_groups(model, rates) + [{"params": [model.centroids], "lr": rates["ivf_lr"]}]
