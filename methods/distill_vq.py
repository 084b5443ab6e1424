"""Distill-VQ (Xiao et al., SIGIR 2022): learn IVF centroids and PQ codebooks by distilling the dense ranking.

Teacher: exact dense scores t = <q, d>. Students over the same candidate docs (rotated space, fixed OPQ rotation):
IVF s_a = <q', o(d)> and PQ s_b = <q', o(d) + PQ(d - o(d))>, q' = the query through an optional trained linear
adapter (the paper trains the query encoder; a d x d map is the encoder-free analogue). Loss = w * f(t, s_a) + f(t, s_b)
with f a listwise, pairwise or regression similarity (:mod:`methods._distill_losses`), ``w`` LibVQ's
'scaled_to_pqloss'. Each doc's IVF list o(d) is fixed (faiss's); the shared loop (:mod:`benchmark.vq.train`) trains.

Candidates per query (:mod:`benchmark.vq.candidates`): its teacher top-K (``topk``: all K, or ``topk_sample``
of them), labeled positives (``gt``), uniform ``random`` docs, and in-batch docs (``ib``): with ``ib_docs='top1'`` the
other queries' teacher top-1 (the shared columns of LibVQ's no-label mode, where each query's 'positive' is its
teacher top-1), with ``'all'`` the union of the batch's candidates (LibVQ's in-batch scoring); repeats are masked.
``teacher_scores='one-pass'`` (a scale knob, not a change of method: the same scores up to float summation order)
computes the teacher's scores of every top-K and positive, and keeps each query's top-1 vector, in one read of the
corpus in row order before training, for a memory-mapped corpus larger than RAM (MS MARCO: ``configs/msmarco.toml``);
the default gathers the candidates' vectors each step.

PQ codes: ``fixed`` keeps the faiss codes (JPQ's choice; written back as they are); ``ste`` re-assigns every
candidate's residual to its nearest codeword at each step, gradient straight through softmax(-||r - c||^2 / T)
(LibVQ's estimator, :func:`benchmark.vq.torch_vq.tempered_ste`), T data-derived (``ste_temperature='auto'``: the
median nearest-vs-second-nearest squared-distance gap over 8,192 sampled docs). On unit-norm debian-desc IVF256
residuals LibVQ's T = 1 gives an assignment entropy of 5.54485 nats, ln 256 = 5.54518 (uniform: no assignment
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
  which the preset keeps. ``label_scope='topk'``: the label term only for queries whose positive is in the
  teacher's top-K: 0.505 / 0.481 here, and on the wordnet-rd dev split (below) 0.153 vs 0.112 with the term on every
  query (no term 0.153): there the teacher's top-50 holds 43% of the sampled positives (``info['label_scope_kept']``),
  and pulling the others to the top wrecks the rest of the ranking (overlap@10 0.21 vs 0.46).

The defaults above: dev nDCG@10 0.492 / nprobe 16 0.466 (unlabeled), 0.505 / 0.481 (labeled).

Checked, not re-tuned, on a second collection's dev split (wordnet-rd: 117k short docs, 2,000 of its labeled train
queries held out, ``configs/wordnet-rd-dev.toml``; nDCG@10 at nprobe 256): defaults 0.157 vs faiss-opq 0.142 (+11%),
faiss-ivfopq 0.134; one change at a time: temperature 0.02 / 0.1 0.149 / 0.158, 4 epochs 0.155, top-200 0.157, no
query adapter 0.154. No single change is better on both dev splits beyond their noise (~0.003), so the defaults stand.
"""
from __future__ import annotations

import torch

from benchmark.params import Param, Space
from benchmark.registry import BaseMethod, DataFacts, TrainData, register
from benchmark.vq import WRITEBACK_MODES, VQParams, encode_docs, factory_string
from benchmark.vq.candidates import (CANDIDATE_SOURCES, IB_DOCS, QUERY_SOURCES, TEACHER_SCORES, candidate_scores,
                                    parse_candidates, sample_candidates, teacher_pass, training_queries)
from benchmark.vq.faiss_init import INIT_PARAMS, OPQ_THREADS_NOTE, init_for
from benchmark.vq.torch_vq import TorchVQ, ste_temperature
from benchmark.vq.train import (LR_SPACE, M_PARAM, NLIST_PARAM, TEMPERATURE_SPACE, Step, Trainer,
                                query_side_params, timed, train_params, train_spec, with_defaults,
                                with_search)
from methods._distill_losses import LOSSES, combined_loss, label_term

CODE_MODES = ("ste", "fixed")
LABEL_SCOPES = ("all", "topk")


QUERY_SIDE = query_side_params(adapter=True, lr=1e-3)   # its two params keep their places in PARAMS (the tuner's
# sampler draws in declaration order: a resumed tuning must ask for the same trials)
PARAMS = {
    "M": M_PARAM, "nlist": NLIST_PARAM, "opq": Param(True, "fixed OPQ rotation (from the faiss init)"),
    "queries": Param("unlabeled", "training queries: labeled train ones, train + unlabeled ones, or sampled docs",
                     choices=QUERY_SOURCES),
    "label_fraction": Param(1.0, "share of the train queries used (seeded; the same share JPQ takes at its "
                                 "label_fraction, so the label-budget curve compares like with like: unlabeled, "
                                 "their text only)", min=0, max=1, min_exclusive=True, legacy=(1.0,)),
    "candidates": Param("ib+topk", f"candidate sources joined by '+', of {'+'.join(CANDIDATE_SOURCES)}", dtype=str),
    "topk": Param(50, "exact teacher top-K mined per query (candidates 'topk')", min=1,
                  search=Space(choices=(20, 50, 100))),
    "topk_sample": Param(0, "top-K candidates sampled per query and step (0 = all K)", min=0),
    "ib_docs": Param("top1", "in-batch docs ('ib'): the other queries' teacher top-1, or all their candidates",
                     choices=IB_DOCS),
    "num_random": Param(16, "uniform random candidates per query and step (candidates 'random')", min=1),
    "doc_queries": Param(10000, "docs sampled as queries (queries='docs')", min=1),
    "loss": Param("listnet", "similarity f(teacher, student) (methods._distill_losses)", choices=tuple(LOSSES)),
    "temperature": Param(0.05, "softmax temperature of the listwise/pairwise losses", min=0, min_exclusive=True,
                         search=TEMPERATURE_SPACE),
    "ivf_weight": Param("auto", "weight w of the IVF loss; 'auto' = loss_pq / loss_ivf at the first step, kept",
                        dtype=float, min=0, special=("auto",)),
    "label_weight": Param(0.0, "weight of the label term -log softmax(s_pq/tau)[gt] (needs candidates 'gt')",
                          min=0),
    "label_scope": Param("all", "queries the label term applies to: every labeled one, or those whose positive is "
                         "in the teacher's top-K ('topk': labels the teacher agrees with)", choices=LABEL_SCOPES,
                         legacy=("all",)),
    "codes": Param("fixed", "PQ codes: the fixed faiss ones, or re-assigned each step (straight-through)",
                   choices=CODE_MODES),
    "ste_temperature": Param("auto", "T of the STE soft assignment softmax(-||r - c||^2 / T); 'auto' = median "
                             "nearest-vs-2nd squared-distance gap of sampled doc residuals", dtype=float, min=0,
                             min_exclusive=True, special=("auto",)),
    "train_ivf": Param(True, "train the IVF centroids"), "train_pq": Param(True, "train the PQ codebooks"),
    "query_adapter": QUERY_SIDE["query_adapter"],
    "lr_pq": Param(1e-3, "learning rate of the PQ codebooks", min=0, min_exclusive=True, search=LR_SPACE),
    "lr_ivf": Param(3e-4, "learning rate of the IVF centroids", min=0, min_exclusive=True, search=LR_SPACE),
    "lr_adapter": QUERY_SIDE["lr_adapter"],
    **train_params(epochs=2.0, batch_size=256, warmup=0.0, schedule="constant", optimizer="adam"),
    "writeback": Param("auto", "how the index stores docs; auto = codes for trained fixed codes, else preassigned "
                       "(each doc in its training-time list, its residual to the trained centroid encoded: STE "
                       "codes, or the untouched codebooks when only IVF is trained)",
                       choices=("auto",) + WRITEBACK_MODES),
    **INIT_PARAMS,
    "teacher_scores": Param("per-step", "teacher scores: the candidates' doc vectors gathered each step, or one read "
                            "of the corpus in row order before training (for a memory-mapped corpus larger than RAM; "
                            "benchmark.vq.candidates)", choices=TEACHER_SCORES, legacy=("per-step",)),
}


def config_problems(cfg: dict) -> list[str]:
    """Inconsistent combinations of params, one line each (checked before any data is loaded)."""
    try:
        sources = parse_candidates(cfg["candidates"])
    except ValueError as exc:
        return [f"candidates={cfg['candidates']!r}: {exc}"]
    problems = []
    if not (cfg.get("train_ivf", False) or cfg["train_pq"]):
        problems.append("train_ivf and train_pq are both False: nothing to train")
    if cfg["codes"] == "fixed" and cfg["train_pq"] and cfg["writeback"] in ("preassigned", "reencode"):
        problems.append(f"codes='fixed' trains the codebooks for the faiss codes, so writeback={cfg['writeback']!r} "
                        "(re-encoding the docs with them) would store codes they were not trained for; use "
                        "writeback='codes' (or 'auto'), or codes='ste'")
    if not cfg["train_pq"] and cfg.get("train_ivf", False) and cfg["writeback"] == "codes":
        problems.append("train_pq=False with train_ivf: the centroids move, so the faiss codes of the old residuals "
                        "no longer describe the docs; use writeback='preassigned' (or 'auto'), which encodes each "
                        "doc's residual to its moved centroid with the untouched codebooks")
    if "gt" in sources and cfg["queries"] != "labeled":
        problems.append(f"candidates 'gt' needs labels: use queries='labeled' (got {cfg['queries']!r})")
    if cfg["label_weight"] > 0 and cfg["label_scope"] == "topk" and "topk" not in sources:
        problems.append(f"label_scope='topk' keeps the label term of queries whose positive is in the teacher's "
                        f"top-K: add 'topk' to the candidates (got candidates={cfg['candidates']!r})")
    if cfg["label_weight"] > 0 and "gt" not in sources:
        problems.append(f"label_weight={cfg['label_weight']} needs the labeled positives among the candidates "
                        f"(candidates with 'gt', queries='labeled'); got candidates={cfg['candidates']!r}")
    if "ib" in sources and cfg["ib_docs"] == "top1" and "topk" not in sources:
        problems.append(f"ib_docs='top1' shares the other queries' teacher top-1: add 'topk' to the candidates or "
                        f"use ib_docs='all' (got candidates={cfg['candidates']!r})")
    return problems


@register
class DistillVQ(BaseMethod):
    """Distill-VQ (Xiao et al., SIGIR 2022): IVF centroids + PQ codebooks distilled from dense scores (unlabeled)."""

    name = "distill-vq"
    reproducibility = "threads"
    reproducibility_note = OPQ_THREADS_NOTE
    family = "distillation"
    params = PARAMS

    def factory(self) -> str:
        return factory_string(self.config["M"], self.config.get("nlist", 0), self.config["opq"])

    def check_config(self) -> list[str]:
        return super().check_config() + config_problems(self.config)

    def labels_needed(self) -> bool:
        return self.config["queries"] == "labeled"

    def writeback_mode(self) -> str:
        """``auto``: the trained codes as they are, unless the codes are STE-relaxed or the IVF centroids moved under
        fixed codebooks (then every doc is encoded into its trained list)."""
        cfg = self.config
        if cfg["writeback"] != "auto":
            return cfg["writeback"]
        train_ivf = cfg.get("train_ivf", False) and bool(cfg.get("nlist", 0))   # the flat layout has no IVF params
        return "preassigned" if cfg["codes"] == "ste" or (train_ivf and not cfg["train_pq"]) else "codes"

    def check_data(self, data: DataFacts) -> list[str]:
        problems = super().check_data(data)
        cfg = self.config
        if cfg["queries"] == "unlabeled" and data.unlabeled_queries == 0:
            problems.append("queries='unlabeled' needs train or train-unlabeled queries, but this dataset has none; "
                            "use queries='docs'")
        if "topk" in cfg["candidates"].split("+") and cfg["topk"] > data.num_docs:
            problems.append(f"topk={cfg['topk']} must be <= the number of docs ({data.num_docs})")
        return problems

    def fit(self, train: TrainData) -> VQParams:
        cfg, info = self.config, {}
        self.require_data(train)
        sources = parse_candidates(cfg["candidates"])
        init = init_for(train, self.factory(), cfg)
        with timed(info, "mining"):
            qs = training_queries(train, cfg["queries"], sources, cfg["topk"], cfg["doc_queries"], self.name,
                                  cfg["label_fraction"])
        info["train_queries_from"] = qs.origin
        if cfg["teacher_scores"] == "one-pass":
            with timed(info, "teacher_pass"):
                qs = teacher_pass(qs, train.doc_emb, progress=f"{self.name}: teacher pass")
        train_ivf = cfg.get("train_ivf", False) and init.nlist > 0     # the flat layout has no IVF params
        lrs = {name: cfg[lr] for name, lr, on in (("codebooks", "lr_pq", cfg["train_pq"]), ("centroids", "lr_ivf",
               train_ivf), ("query_map", "lr_adapter", cfg["query_adapter"])) if on}
        spec = train_spec(cfg)
        trainer = Trainer(TorchVQ(init, query_adapter=cfg["query_adapter"]), lrs, spec, train.seed, train.device,
                          self.name)
        ste_T = None
        if cfg["codes"] == "ste":
            ste_T, ste_info = ste_temperature(trainer.vq, train.doc_emb, cfg["ste_temperature"], train.seed)
            info.update(ste_info)
        f, tau = LOSSES[cfg["loss"]], float(cfg["temperature"])
        w = {"ivf": None if cfg.get("ivf_weight", "auto") == "auto" else float(cfg["ivf_weight"])}
        kept = [0, 0]   # label terms kept by label_scope='topk', of all sampled

        def loss(step: Step) -> torch.Tensor:
            cand = sample_candidates(qs, step.rows, step.rng, sources, topk_sample=cfg["topk_sample"],
                                     num_random=cfg["num_random"], ib_docs=cfg["ib_docs"], num_docs=train.num_docs)
            t, s_ivf, s_pq = candidate_scores(trainer.vq, qs.emb[step.rows], cand, train.doc_emb, ste_T)
            mask = torch.from_numpy(cand.mask).to(step.device)
            l_pq = f(t, s_pq, tau, mask) if cfg["train_pq"] or s_ivf is None else None
            if l_pq is not None and cfg["label_weight"] > 0:
                keep = None
                if cfg["label_scope"] == "topk":   # the positive (column 0) is among the query's teacher top-K
                    inside = (qs.topk[step.rows] == cand.own[:, :1]).any(1)
                    kept[0], kept[1] = kept[0] + int(inside.sum()), kept[1] + len(inside)
                    keep = torch.from_numpy(inside).to(step.device)
                l_pq = l_pq + cfg["label_weight"] * label_term(s_pq, mask, tau, keep)
            l_ivf = f(t, s_ivf, tau, mask) if train_ivf and s_ivf is not None else None
            total, w["ivf"] = combined_loss(l_ivf, l_pq, w["ivf"])
            return total

        trainer.fit(loss, len(qs))
        if kept[1]:
            info["label_scope_kept"] = kept[0] / kept[1]
        writeback = self.writeback_mode()
        params = trainer.to_params(writeback, ivf_weight=w["ivf"] or 0.0, **info)
        if writeback == "preassigned":   # the codes the index will hold (its write-back re-encodes the same)
            params.doc_codes = encode_docs(params, train.doc_emb)
        return params


@register
class DistillVQLabeled(DistillVQ):
    """Distill-VQ on labeled train queries: ground truth + the teacher's top-K + in-batch, teacher and label terms."""

    name = "distill-vq-labeled"
    params = with_search(with_defaults(PARAMS, queries="labeled", candidates="gt+ib+topk", label_weight=1.0,
                                       label_scope="topk", lr_ivf=1e-3), label_weight=Space(0.3, 3.0, log=True))


@register
class DistillVQIVFOnly(DistillVQ):
    """Distill-VQ training only the IVF centroids (and the query adapter); PQ keeps faiss's OPQ codebooks (the
    paper's Table 4).

    The centroids move, so every doc's residual is encoded again (``writeback='preassigned'``: the doc stays in its
    list, its residual to the moved centroid gets the nearest codewords of the untouched codebooks). Keeping the
    faiss codes of the old residuals instead (the preset before issue #26) scores the moved centroids plus stale
    residual codes: on the debian-desc dev split (M=16, seed 0, adapter on) 0.399 / nprobe 16 0.388 vs 0.403 / 0.392
    re-encoded (reports/debian-desc-distill-ablations/ablations.md)."""

    name = "distill-vq-ivf-only"
    ablation_of = "distill-vq"
    # the query adapter stays on, as in distill-vq: the ablation changes one thing (issue #26: with the adapter
    # dropped too, "joint adds +0.014 over PQ-only" on debian-desc dev; like for like it is -0.002 / nprobe 16 +0.008)
    params = with_defaults(PARAMS, train_pq=False, writeback="preassigned")


@register
class DistillVQPQOnly(DistillVQ):
    """Distill-VQ training only the PQ codebooks (and the query adapter); IVF keeps faiss's k-means centroids."""

    name = "distill-vq-pq-only"
    ablation_of = "distill-vq"
    params = with_defaults(PARAMS, train_ivf=False)   # the adapter stays on, like distill-vq (see ivf-only)


IVF_ONLY = ("nlist", "train_ivf", "lr_ivf", "ivf_weight")


@register
class DistillVQFlat(DistillVQ):
    """Distill-VQ in the flat layout: OPQ codebooks (+ query adapter) distilled, no IVF; starts from faiss-opq's init."""

    name = "distill-vq-flat"
    params = {k: v for k, v in PARAMS.items() if k not in IVF_ONLY}


@register
class DistillVQLabeledFlat(DistillVQ):
    """distill-vq-labeled in the flat layout (faiss-opq's init, no IVF)."""

    name = "distill-vq-labeled-flat"
    params = {k: v for k, v in DistillVQLabeled.params.items() if k not in IVF_ONLY}

