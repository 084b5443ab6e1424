"""Distill-VQ (Xiao et al., SIGIR 2022): learn IVF centroids and PQ codebooks by distilling the dense ranking.

Teacher: exact dense scores t = <q, d>. Students over the same candidate docs (rotated space, fixed OPQ rotation):
IVF s_a = <q', o(d)> and PQ s_b = <q', o(d) + PQ(d - o(d))>, q' = the query through an optional trained linear
adapter (the paper trains the query encoder; a d x d map is the encoder-free analogue). Loss = w * f(t, s_a) + f(t, s_b)
with f a listwise, pairwise or regression similarity (:mod:`methods._distill_losses`), ``w`` LibVQ's
'scaled_to_pqloss'. Each doc's IVF list o(d) is fixed (faiss's); the shared loop (:mod:`benchmark.vq.train`) trains.

Candidates per query: its teacher top-K (``topk``: all K, or ``topk_sample`` of them), labeled positives (``gt``),
uniform ``random`` docs, and in-batch docs (``ib``): with ``ib_docs='top1'`` the other queries' teacher top-1 (the
shared columns of LibVQ's no-label mode, where each query's 'positive' is its teacher top-1), with ``'all'`` the union
of every query's candidates (LibVQ's in-batch scoring). A doc listed twice for a query counts once (masked).

PQ codes: ``fixed`` keeps the faiss codes (JPQ's choice; written back as they are); ``ste`` re-assigns every candidate's
residual to its nearest codeword at each step, gradient straight through softmax(-||r - c||^2 / T) (LibVQ's
estimator), T data-derived (``ste_temperature='auto'``: the median gap between a residual's nearest and second-nearest
squared codeword distance, over 8,192 sampled docs). Embeddings here are unit-norm: on debian-desc IVF256 residuals
(24-d sub-spaces) LibVQ's T = 1 gives an assignment entropy of 5.54485 nats, ln 256 = 5.54518 (uniform: no assignment
information in the backward pass); the auto T = 0.0029 gives 1.84. ``info`` records T and both entropies.

Defaults: chosen on the debian-desc **dev** split (2,000 labeled train queries held out, ``dev_seed=0``; the methods
train on the other 56,030 queries, labels unused; M=16, nDCG@10 at nprobe 256 = exhaustive / 16 = pruned, 1 seed;
grid and raw records in the issue #15 findings). Reference points: faiss-ivfopq 0.401 / 0.385; the issue's plain
recipe below with IVF fixed 0.478 / 0.443.

* ``lr_pq=1e-3`` constant, Adam, ``epochs=2``, ``batch_size=256``: training the codebooks is most of the gain
  (faiss-ivfopq 0.401 -> 0.478, codebooks move 51%, relative Frobenius); lr_pq 3e-4 / 3e-3: 0.470 / 0.474;
  1 / 4 epochs: 0.477 / 0.480; 10% warm-up + linear decay (the previous loop, a quarter of the integrated step at
  1 epoch): 0.477. The previous defaults (lr_pq 1e-4, AdamW, 1 epoch, 8 sampled of the top-200) gave 0.418 on dev
  (``reports/debian-desc-dev``).
* ``candidates='ib+topk'``, ``topk=50`` all of them (``topk_sample=0``), ``ib_docs='top1'``: every query's full
  teacher top-50 plus the batch's teacher top-1s (the paper's best unlabeled setting, its Table 3, is in-batch +
  top-K). Top-20 / 50 / 100 / 200: 0.479 / 0.478 / 0.480 / 0.481 (nprobe 16: 0.445 / 0.443 / 0.443 / 0.444), without
  in-batch 0.478, + 64 random docs 0.479: within the dev noise (~0.003); top-200 costs 4x per step.
* ``temperature=0.05`` (ListNet): 0.02 / 0.05 / 0.1 gave 0.470 / 0.478 / 0.480.
* ``train_ivf=True``, Adam ``lr_ivf=3e-4`` (``ivf_weight='auto'``): the IVF term matters where lists are pruned:
  IVF fixed 0.478 / nprobe 16 0.443 vs trained 0.480 / 0.457 (lr_ivf 1e-3); with the adapter, lr_ivf 3e-4 / 1e-3:
  0.492 / 0.466 vs 0.487 / 0.464 (centroids move 15% / 33%), lr_ivf 3e-3 hurts (0.464). LibVQ updates centroids with
  plain SGD at lr 1e-3: here that moves them 0.4% (0.479 / 0.444 = IVF fixed); SGD at lr 0.1 (15%) gives
  0.485 / 0.457, as Adam at 3e-4 does: the shared trainer's one optimiser (Adam) serves both.
* ``query_adapter=True``, ``lr_adapter=1e-3``: the paper trains the query encoder jointly; with fixed embeddings a
  d x d query map (identity init) is the analogue: joint without / with adapter (lr 1e-4 / 1e-3 / 3e-3):
  0.480 / 0.486 / 0.487 / 0.472 (nprobe 16: 0.457 / 0.461 / 0.464 / 0.452).
* ``codes='fixed'``: STE (auto T) vs fixed codes at equal steps (top-20 + in-batch, joint, 0.5 epoch): 0.470 /
  nprobe 16 0.453 vs 0.477 / 0.454, at 32x the training time (every candidate re-quantized each step).
* ``distill-vq-labeled``: labeled train queries, candidates ``gt+ib+topk`` (a sampled positive first, then the
  teacher top-50 and the batch's top-1s), loss = ListNet(teacher) + ``label_weight`` * -log softmax(s_pq/tau)[gt];
  label_weight 0 / 1 / 3: 0.487 / 0.504 / 0.482 (nprobe 16: 0.464 / 0.479 / 0.458), measured with ``lr_ivf=1e-3``,
  which the preset keeps.

The defaults above: dev nDCG@10 0.492 / nprobe 16 0.466 (unlabeled), 0.504 / 0.479 (labeled).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.params import Param
from benchmark.registry import BaseMethod, MethodError, TrainData, register
from benchmark.vq import WRITEBACK_MODES, VQParams, check_divides, encode_docs, factory_string
from benchmark.vq.faiss_init import INIT_PARAMS, init_for
from benchmark.vq.mining import cached_topk
from benchmark.vq.torch_vq import TorchVQ, ste_quantize
from benchmark.vq.train import (M_PARAM, NLIST_PARAM, OPTIMIZERS, SCHEDULES, Step, Trainer, TrainSpec, positives,
                                timed, with_defaults)
from methods._distill_losses import LOSSES

QUERY_SOURCES = ("labeled", "unlabeled", "docs")
CANDIDATE_SOURCES = ("gt", "ib", "topk", "random")
CODE_MODES = ("ste", "fixed")
IB_DOCS = ("top1", "all")
STE_SAMPLE = 8192   # docs sampled to derive the STE temperature and measure the assignment entropy


PARAMS = {
    "M": M_PARAM, "nlist": NLIST_PARAM, "opq": Param(True, "fixed OPQ rotation (from the faiss init)"),
    "queries": Param("unlabeled", "training queries: labeled train ones, train + unlabeled ones, or sampled docs",
                     choices=QUERY_SOURCES),
    "candidates": Param("ib+topk", f"candidate sources joined by '+', of {'+'.join(CANDIDATE_SOURCES)}", dtype=str),
    "topk": Param(50, "exact teacher top-K mined per query (candidates 'topk')", min=1),
    "topk_sample": Param(0, "top-K candidates sampled per query and step (0 = all K)", min=0),
    "ib_docs": Param("top1", "in-batch docs ('ib'): the other queries' teacher top-1, or all their candidates",
                     choices=IB_DOCS),
    "num_random": Param(16, "uniform random candidates per query and step (candidates 'random')", min=1),
    "doc_queries": Param(10000, "docs sampled as queries (queries='docs')", min=1),
    "loss": Param("listnet", "similarity f(teacher, student) (methods._distill_losses)", choices=tuple(LOSSES)),
    "temperature": Param(0.05, "softmax temperature of the listwise/pairwise losses", min=0, min_exclusive=True),
    "ivf_weight": Param("auto", "weight w of the IVF loss; 'auto' = loss_pq / loss_ivf at the first step, kept",
                        dtype=float, min=0, special=("auto",)),
    "label_weight": Param(0.0, "weight of the label term -log softmax(s_pq/tau)[gt] (needs candidates 'gt')",
                          min=0),
    "codes": Param("fixed", "PQ codes: the fixed faiss ones, or re-assigned each step (straight-through)",
                   choices=CODE_MODES),
    "ste_temperature": Param("auto", "T of the STE soft assignment softmax(-||r - c||^2 / T); 'auto' = median "
                             "nearest-vs-2nd squared-distance gap of sampled doc residuals", dtype=float, min=0,
                             min_exclusive=True, special=("auto",)),
    "train_ivf": Param(True, "train the IVF centroids"), "train_pq": Param(True, "train the PQ codebooks"),
    "query_adapter": Param(True, "also train a d x d query map (identity init)"),
    "lr_pq": Param(1e-3, "learning rate of the PQ codebooks", min=0, min_exclusive=True),
    "lr_ivf": Param(3e-4, "learning rate of the IVF centroids", min=0, min_exclusive=True),
    "lr_adapter": Param(1e-3, "learning rate of the query adapter", min=0, min_exclusive=True),
    "optimizer": Param("adam", "optimiser of every trained tensor (no weight decay)", choices=tuple(OPTIMIZERS)),
    "schedule": Param("constant", "lr after the warm-up: constant, or linear / cosine decay to 0",
                      choices=SCHEDULES),
    "warmup": Param(0.0, "share of the steps with a linear lr warm-up", min=0, max=1),
    "epochs": Param(2.0, "passes over the training queries", min=0, min_exclusive=True),
    "batch_size": Param(256, "queries per step", min=1),
    "writeback": Param("auto", "how the index stores docs; auto = codes for fixed codes, else preassigned "
                       "(fixed codes allow only 'codes')", choices=("auto",) + WRITEBACK_MODES),
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


def check_config(cfg: dict, sources: set[str], who: str) -> None:
    """Inconsistent combinations, rejected before any work."""
    if not (cfg["train_ivf"] or cfg["train_pq"]):
        raise MethodError(f"{who}: train_ivf and train_pq are both False: nothing to train")
    if cfg["codes"] == "fixed" and cfg["writeback"] in ("preassigned", "reencode"):
        raise MethodError(f"{who}: codes='fixed' trains the codebooks for the faiss codes, so writeback="
                          f"{cfg['writeback']!r} (re-encoding the docs with them) would store codes they were not "
                          "trained for; use writeback='codes' (or 'auto'), or codes='ste'")
    if cfg["label_weight"] > 0 and "gt" not in sources:
        raise MethodError(f"{who}: label_weight={cfg['label_weight']} needs the labeled positives among the "
                          f"candidates (candidates with 'gt', queries='labeled'); got candidates={cfg['candidates']!r}")
    if "ib" in sources and cfg["ib_docs"] == "top1" and "topk" not in sources:
        raise MethodError(f"{who}: ib_docs='top1' shares the other queries' teacher top-1: add 'topk' to the "
                          f"candidates or use ib_docs='all' (got candidates={cfg['candidates']!r})")


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


@dataclass
class Candidates:
    """A batch's candidates: per-query docs ``own`` (B, C), docs every query of the batch scores ``shared`` (S,)
    (or None), and ``mask`` (B, C + S), True where a column repeats a doc already listed for that query. With labels,
    column 0 of ``own`` is the sampled positive."""

    own: np.ndarray
    shared: np.ndarray | None
    mask: np.ndarray


def sample_candidates(qs: QuerySet, batch: np.ndarray, rng: np.random.Generator, sources: set[str], cfg: dict,
                      num_docs: int) -> Candidates:
    """The candidates of a batch of query rows (see :class:`Candidates`)."""
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
    own = np.concatenate(cols, axis=1).astype(np.int64)
    shared = None
    if "ib" in sources:
        shared = qs.topk[batch, 0] if cfg["ib_docs"] == "top1" else own.ravel()
        shared = np.unique(shared).astype(np.int64)
    every = own if shared is None else np.concatenate([own, np.broadcast_to(shared, (len(own), len(shared)))], 1)
    return Candidates(own, shared, _repeats(every))


def _repeats(docs: np.ndarray) -> np.ndarray:
    """(B, C) bool: True where ``docs[b, c]`` already occurs in ``docs[b, :c]`` (each doc counts once per query)."""
    order = np.argsort(docs, axis=1, kind="stable")
    srt = np.take_along_axis(docs, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, axis=1)
    return out


def tempered_ste(residual: torch.Tensor, codebooks: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`~benchmark.vq.torch_vq.ste_quantize` with the soft assignment softmax(-||r - c||^2 / T): residual and
    codebooks scaled by 1/sqrt(T) (the hard assignment is unchanged), the output scaled back, so value and gradient
    are those of the tempered estimator."""
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


def ste_setup(vq: TorchVQ, doc_emb: np.ndarray, cfg: dict, seed: int) -> tuple[float, dict]:
    """The STE temperature (``ste_temperature``, 'auto' = :func:`auto_temperature`) and the soft assignment's
    entropy at it and at T = 1 (LibVQ's), on the residuals of ``STE_SAMPLE`` seeded docs, for ``info``."""
    n = doc_emb.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, STE_SAMPLE), replace=False))
    with torch.no_grad():
        idx = torch.from_numpy(rows).to(vq.codebooks.device)
        x = vq.rotate(torch.from_numpy(np.asarray(doc_emb[rows], dtype=np.float32)).to(vq.codebooks.device))
        o = vq.ivf_part(idx)
        d = sq_distances(x if o is None else x - o, vq.codebooks)
    T = auto_temperature(d) if cfg["ste_temperature"] == "auto" else float(cfg["ste_temperature"])
    return T, {"ste_temperature": T, "assignment_entropy": assignment_entropy(d, T),
               "assignment_entropy_T1": assignment_entropy(d, 1.0), "assignment_entropy_max": math.log(d.shape[-1])}


def _gather_docs(doc_emb: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(doc_emb[idx.ravel()], dtype=np.float32)).to(device).reshape(*idx.shape, -1)


def batch_scores(vq: TorchVQ, q: np.ndarray, cand: Candidates, doc_emb: np.ndarray, ste_T: float | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Teacher, IVF and PQ scores (B, C + S) of queries ``q`` (B, d) over their own then the shared candidates.

    Fixed codes: the PQ scores of the own candidates come from their stored codes (reconstructed per query), the
    shared ones once for the batch. STE (``ste_T`` set): each distinct doc is re-quantized once per step."""
    device = vq.codebooks.device
    q_t = torch.from_numpy(q).to(device)
    q_rot = vq.encode_queries(q_t)
    own = torch.from_numpy(cand.own).to(device)
    teacher = [torch.einsum("bd,bcd->bc", q_t, _gather_docs(doc_emb, cand.own, device))]
    ivf_tab = None if vq.centroids is None else q_rot @ vq.centroids.T          # (B, nlist)
    ivf = [None if ivf_tab is None else ivf_tab.gather(1, vq.assign[own])]
    if ste_T is None:
        pq = [vq.scores(q_rot, own)]
    else:
        uniq, inv = np.unique(np.concatenate([cand.own.ravel(), [] if cand.shared is None else cand.shared]),
                              return_inverse=True)
        uidx = torch.from_numpy(uniq).to(device)
        o = vq.ivf_part(uidx)
        x = vq.rotate(_gather_docs(doc_emb, uniq, device))
        rec = tempered_ste(x if o is None else x - o, vq.codebooks, ste_T)
        rec = rec if o is None else rec + o
        s_all = q_rot @ rec.T                                                     # (B, U)
        inv_t = torch.from_numpy(inv.astype(np.int64)).to(device)
        pq = [s_all.gather(1, inv_t[:own.numel()].reshape(own.shape))]
        if cand.shared is not None:
            pq.append(s_all[:, inv_t[own.numel():]])
    if cand.shared is not None:
        sh = torch.from_numpy(cand.shared).to(device)
        teacher.append(q_t @ _gather_docs(doc_emb, cand.shared, device).T)
        if ivf_tab is not None:
            ivf.append(ivf_tab[:, vq.assign[sh]])
        if ste_T is None:
            pq.append(q_rot @ vq.reconstruct(sh).T)
    return (torch.cat(teacher, 1), None if ivf_tab is None else torch.cat(ivf, 1), torch.cat(pq, 1))


def combined_loss(loss_ivf: torch.Tensor | None, loss_pq: torch.Tensor | None, w: float | None
                  ) -> tuple[torch.Tensor, float | None]:
    """``loss_pq + w * loss_ivf`` (either may be absent); ``w=None`` ('auto', LibVQ's 'scaled_to_pqloss') is set
    once, at the first step, to loss_pq / loss_ivf and kept."""
    if loss_pq is None or loss_ivf is None:
        return (loss_ivf if loss_pq is None else loss_pq), w
    if w is None:
        w = float(loss_pq.detach() / (loss_ivf.detach() + 1e-6))
    return loss_pq + w * loss_ivf, w


def label_term(s_pq: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """-log softmax(s_pq / tau) at column 0 (the sampled labeled positive), over the query's unmasked candidates."""
    logits = (s_pq / tau).masked_fill(mask, -1e4)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


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
        sources = parse_candidates(cfg["candidates"])
        check_config(cfg, sources, self.name)
        check_divides(cfg["M"], train.dim, self.name)
        init = init_for(train, self.factory(), cfg)
        with timed(info, "mining"):
            qs = query_set(train, cfg, sources)
        lrs = {name: cfg[lr] for name, lr, on in (("codebooks", "lr_pq", cfg["train_pq"]), ("centroids", "lr_ivf",
               cfg["train_ivf"] and init.nlist > 0), ("query_map", "lr_adapter", cfg["query_adapter"])) if on}
        spec = TrainSpec(cfg["epochs"], cfg["batch_size"], warmup=cfg["warmup"], schedule=cfg["schedule"],
                         optimizer=cfg["optimizer"])
        trainer = Trainer(TorchVQ(init, query_adapter=cfg["query_adapter"]), lrs, spec, train.seed, train.device,
                          self.name)
        ste_T = None
        if cfg["codes"] == "ste":
            ste_T, ste_info = ste_setup(trainer.vq, train.doc_emb, cfg, train.seed)
            info.update(ste_info)
        f, tau = LOSSES[cfg["loss"]], float(cfg["temperature"])
        w = {"ivf": None if cfg["ivf_weight"] == "auto" else float(cfg["ivf_weight"])}

        def loss(step: Step) -> torch.Tensor:
            cand = sample_candidates(qs, step.rows, step.rng, sources, cfg, train.num_docs)
            t, s_ivf, s_pq = batch_scores(trainer.vq, qs.emb[step.rows], cand, train.doc_emb, ste_T)
            mask = torch.from_numpy(cand.mask).to(step.device)
            l_pq = f(t, s_pq, tau, mask) if cfg["train_pq"] or s_ivf is None else None
            if l_pq is not None and cfg["label_weight"] > 0:
                l_pq = l_pq + cfg["label_weight"] * label_term(s_pq, mask, tau)
            l_ivf = f(t, s_ivf, tau, mask) if cfg["train_ivf"] and s_ivf is not None else None
            total, w["ivf"] = combined_loss(l_ivf, l_pq, w["ivf"])
            return total

        trainer.fit(loss, len(qs))
        writeback = cfg["writeback"] if cfg["writeback"] != "auto" else "preassigned" if ste_T else "codes"
        params = trainer.to_params(writeback, ivf_weight=w["ivf"] or 0.0, **info)
        if ste_T is not None:   # the codes the trained codebooks assign (preassigned write-back re-encodes the same)
            params.doc_codes = encode_docs(params, train.doc_emb)
        return params


@register
class DistillVQLabeled(DistillVQ):
    """Distill-VQ on labeled train queries: ground truth + the teacher's top-K + in-batch, teacher and label terms."""

    name = "distill-vq-labeled"
    params = with_defaults(PARAMS, queries="labeled", candidates="gt+ib+topk", label_weight=1.0, lr_ivf=1e-3)


@register
class DistillVQIVFOnly(DistillVQ):
    """Distill-VQ training only the IVF centroids; PQ keeps faiss's OPQ codebooks (the paper's Table 4)."""

    name = "distill-vq-ivf-only"
    params = with_defaults(PARAMS, train_pq=False, query_adapter=False)


@register
class DistillVQPQOnly(DistillVQ):
    """Distill-VQ training only the PQ codebooks; IVF keeps faiss's k-means centroids."""

    name = "distill-vq-pq-only"
    params = with_defaults(PARAMS, train_ivf=False, query_adapter=False)
