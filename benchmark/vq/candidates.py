"""Training queries and their candidate docs for objectives that learn from a teacher's scores (Distill-VQ and
kin), and the teacher / IVF-student / PQ-student scores over those candidates.

Query sources: the labeled train queries (with their positives, as doc rows), all train + unlabeled queries, or
sampled docs used as queries. Candidate sources per query: its exact teacher top-K (``topk``, mined once with faiss
and cached: :func:`benchmark.vq.mining.cached_topk`), a labeled positive (``gt``), uniform ``random`` docs, and
in-batch docs (``ib``): the other queries' teacher top-1 (``ib_docs='top1'``) or every candidate of the batch
(``'all'``). A doc listed twice for a query is masked, so it counts once.

Teacher scores ⟨q, d⟩ come from the doc vectors gathered each step (``per-step``), or, with :func:`teacher_pass`
(``one-pass``), from one read of the corpus in row order before training: the scores of every query's top-K and
labeled positives and the vectors of its top-1 (the in-batch docs) kept in memory, so that a memory-mapped corpus
larger than RAM is never read at random (8.8M x 768 on 2 cores: 11.5 s per step of 256 queries, each reading 12,800
rows at random from a disk-backed corpus, before). The two give the same scores up to float summation order; random
candidates, ``ib_docs='all'`` and straight-through codes still gather their docs per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from benchmark.vq.mining import DOC_CHUNK, cached_topk
from benchmark.vq.torch_vq import TorchVQ, tempered_ste
from benchmark.vq.train import positives

QUERY_SOURCES = ("labeled", "unlabeled", "docs")
CANDIDATE_SOURCES = ("gt", "ib", "topk", "random")
IB_DOCS = ("top1", "all")
TEACHER_SCORES = ("per-step", "one-pass")
PAIR_CHUNK = 65536   # (query, doc) pairs scored at once by teacher_pass: two (PAIR_CHUNK, d) float32 arrays


@dataclass
class QuerySet:
    """Training queries, their labeled positives (ragged: ``pos[pos_off[i]:pos_off[i+1]]``) and teacher top-K."""

    emb: np.ndarray
    pos_off: np.ndarray | None = None
    pos: np.ndarray | None = None
    topk: np.ndarray | None = None
    origin: dict = field(default_factory=dict)   # where the queries come from, whether labels are used
    topk_scores: np.ndarray | None = None   # (Q, K) teacher scores of ``topk`` (teacher_pass)
    pos_scores: np.ndarray | None = None    # teacher scores of ``pos`` (teacher_pass)
    top1_emb: np.ndarray | None = None      # (Q, d) vector of each query's teacher top-1 (teacher_pass)

    def __len__(self) -> int:
        return len(self.emb)


def parse_candidates(spec: str) -> set[str]:
    """'gt+ib+topk' -> {'gt', 'ib', 'topk'}; at least one source besides 'ib' (ValueError otherwise)."""
    parts = {p.strip() for p in spec.split("+") if p.strip()}
    unknown = sorted(parts - set(CANDIDATE_SOURCES))
    if unknown:
        raise ValueError(f"unknown candidate sources {unknown}; valid: {'+'.join(CANDIDATE_SOURCES)}")
    if not parts - {"ib"}:
        raise ValueError("candidates need a source besides 'ib' (in-batch only shares the others' candidates)")
    return parts


def training_queries(train: Any, source: str, sources: set[str], topk: int, doc_queries: int, who: str,
                     fraction: float = 1.0) -> QuerySet:
    """The training queries of ``source`` (:data:`QUERY_SOURCES`) from ``train`` (a TrainData), with their teacher
    top-``topk`` when 'topk' is a candidate source. Each query array is mined on its own, so top-K caches are shared
    across settings. ``qs.origin`` says where they come from and whether their labels are used.

    ``fraction`` < 1 (the label-budget sweep): labeled, the same seeded share of the labeled train queries that JPQ
    and InfoNCE take at that ``label_fraction``; unlabeled, the text of that same share (labels unused) when the
    dataset has labels, else that share of its unlabeled queries: so at every fraction the objectives see the same
    queries and differ only in whether they read the labels."""
    if source == "labeled":
        pos = positives(train, f"{who} queries='labeled'").sample(fraction, train.seed)
        order = np.lexsort((pos.docs, np.repeat(np.arange(len(pos)), pos.counts)))   # sorted within each query
        qs = QuerySet(pos.query_emb(train), pos.offsets, pos.docs[order])
        arrays = [qs.emb]
        qs.origin = {"queries": "labeled", "labels_used": True, "n": len(pos), "fraction": fraction,
                     "from": "train split, with its qrels"}
    else:
        if source == "docs":
            n = train.num_docs
            rows = np.sort(np.random.default_rng(train.seed).choice(n, min(n, doc_queries), replace=False))
            arrays = [np.asarray(train.doc_emb[rows], dtype=np.float32)]
            origin = "sampled corpus docs as queries"
        elif fraction < 1 and train.train_qrels is not None and train.train_query_emb is not None:
            pos = positives(train, who).sample(fraction, train.seed)
            arrays = [pos.query_emb(train)]
            origin = "text of the labeled train queries' seeded share (labels unused)"
        else:
            arrays = [np.asarray(a, dtype=np.float32) for a in (train.train_query_emb, train.unlabeled_query_emb)
                      if a is not None and len(a)]
            if not arrays:
                raise ValueError(f"{who}: queries='unlabeled' needs train or train-unlabeled queries; use "
                                 "queries='docs'")
            if fraction < 1:
                pool = np.concatenate(arrays)
                keep = max(1, round(len(pool) * fraction))
                arrays = [pool[np.sort(np.random.default_rng(train.seed).permutation(len(pool))[:keep])]]
            labeled = train.train_qrels is not None
            origin = ("train split text" + (" (labels unused)" if labeled else "") +
                      (" + train-unlabeled" if train.unlabeled_query_emb is not None
                       and len(train.unlabeled_query_emb) else ""))
        qs = QuerySet(np.concatenate(arrays))
        qs.origin = {"queries": source, "labels_used": False, "n": len(qs), "fraction": fraction, "from": origin}
    if "topk" in sources:
        mined = [cached_topk(train.doc_emb, a, topk, train.cache_dir, gpu=train.device.startswith("cuda"),
                             teacher=getattr(train, "teacher", None), seed=train.seed) for a in arrays]
        qs.topk = np.concatenate([ids for ids, _ in mined])
        qs.origin["teacher"] = mined[0][1] if len(mined) == 1 else {**mined[0][1], "parts": [m for _, m in mined]}
    return qs


def teacher_pass(qs: QuerySet, doc_emb: np.ndarray, block: int = DOC_CHUNK, progress: str = "") -> QuerySet:
    """``qs`` with the teacher scores of its top-K and positives and its top-1 vectors, from one read of ``doc_emb``
    in row order by blocks of ``block`` rows (see module doc). Memory: (Q, K + 1) floats, a (Q, d) array, one block
    of rows and :data:`PAIR_CHUNK` pairs' vectors at a time."""
    from tqdm.auto import tqdm
    pairs_q, pairs_d = [], []
    if qs.topk is not None:
        pairs_q.append(np.repeat(np.arange(len(qs)), qs.topk.shape[1]))
        pairs_d.append(qs.topk.ravel())
    if qs.pos is not None:
        pairs_q.append(np.repeat(np.arange(len(qs)), np.diff(qs.pos_off)))
        pairs_d.append(qs.pos)
    qrow = np.concatenate(pairs_q) if pairs_q else np.zeros(0, np.int64)
    doc = np.concatenate(pairs_d).astype(np.int64) if pairs_d else np.zeros(0, np.int64)
    top1 = qs.topk[:, 0].astype(np.int64) if qs.topk is not None else np.zeros(0, np.int64)
    scores = np.empty(len(doc), np.float32)
    vectors = np.empty((len(top1), doc_emb.shape[1]), np.float32)
    by_doc, top_by_doc = np.argsort(doc, kind="stable"), np.argsort(top1, kind="stable")
    doc_sorted, top_sorted = doc[by_doc], top1[top_by_doc]
    emb = np.asarray(qs.emb, dtype=np.float32)
    for start in tqdm(range(0, doc_emb.shape[0], block), desc=progress or "teacher pass", unit="block",
                      disable=not progress):
        lo, hi = np.searchsorted(doc_sorted, (start, start + block))
        tlo, thi = np.searchsorted(top_sorted, (start, start + block))
        if lo == hi and tlo == thi:
            continue
        rows = np.asarray(doc_emb[start:start + block], dtype=np.float32)
        for a in range(lo, hi, PAIR_CHUNK):            # a block may hold every pair (a small corpus): chunked
            b = min(a + PAIR_CHUNK, hi)
            sel = by_doc[a:b]
            scores[sel] = np.einsum("ij,ij->i", emb[qrow[sel]], rows[doc_sorted[a:b] - start])
        vectors[top_by_doc[tlo:thi]] = rows[top_sorted[tlo:thi] - start]
    n_top = qs.topk.size if qs.topk is not None else 0
    return replace(qs, topk_scores=None if qs.topk is None else scores[:n_top].reshape(qs.topk.shape),
                   pos_scores=None if qs.pos is None else scores[n_top:],
                   top1_emb=vectors if qs.topk is not None else None)


@dataclass
class Candidates:
    """A batch's candidates: per-query docs ``own`` (B, C), docs every query of the batch scores ``shared`` (S,)
    (or None), and ``mask`` (B, C + S), True where a column repeats a doc already listed for that query. With labels,
    column 0 of ``own`` is the sampled positive."""

    own: np.ndarray
    shared: np.ndarray | None
    mask: np.ndarray
    own_teacher: np.ndarray | None = None   # (B, C) teacher scores from :func:`teacher_pass`, NaN = gather per step
    shared_emb: np.ndarray | None = None    # (S, d) vectors of ``shared`` from :func:`teacher_pass`


def sample_candidates(qs: QuerySet, batch: np.ndarray, rng: np.random.Generator, sources: set[str], *,
                      topk_sample: int, num_random: int, ib_docs: str, num_docs: int) -> Candidates:
    """The candidates of a batch of query rows: a labeled positive, the top-K (all, or ``topk_sample`` of them),
    ``num_random`` random docs, then the in-batch docs, as ``sources`` asks (see :class:`Candidates`)."""
    cols, known = [], []     # known: the teacher's scores of each column block, when teacher_pass computed them
    passed = qs.topk_scores is not None or qs.pos_scores is not None
    if "gt" in sources:
        off, cnt = qs.pos_off[batch], np.diff(qs.pos_off)[batch]
        at = off + (rng.random(len(batch)) * cnt).astype(np.int64)
        cols.append(qs.pos[at][:, None])
        known.append(qs.pos_scores[at][:, None] if qs.pos_scores is not None else None)
    if "topk" in sources:
        top = qs.topk[batch]
        top_s = None if qs.topk_scores is None else qs.topk_scores[batch]
        k = min(topk_sample or top.shape[1], top.shape[1])
        if k < top.shape[1]:
            pick = np.argpartition(rng.random(top.shape), k - 1, axis=1)
            top = np.take_along_axis(top, pick[:, :k], axis=1)
            top_s = None if top_s is None else np.take_along_axis(top_s, pick[:, :k], axis=1)
        cols.append(top)
        known.append(top_s)
    if "random" in sources:
        cols.append(rng.integers(0, num_docs, (len(batch), num_random)))
        known.append(None)
    own = np.concatenate(cols, axis=1).astype(np.int64)
    own_teacher = None
    if passed:
        own_teacher = np.concatenate([np.full(c.shape, np.nan, np.float32) if t is None else t
                                      for c, t in zip(cols, known)], axis=1)
    shared = shared_emb = None
    if "ib" in sources:
        if ib_docs == "top1":
            shared, first = np.unique(qs.topk[batch, 0].astype(np.int64), return_index=True)
            if qs.top1_emb is not None:
                shared_emb = qs.top1_emb[batch[first]]
        else:
            shared = np.unique(own.ravel()).astype(np.int64)
    every = own if shared is None else np.concatenate([own, np.broadcast_to(shared, (len(own), len(shared)))], 1)
    return Candidates(own, shared, repeats(every), own_teacher, shared_emb)


def repeats(docs: np.ndarray) -> np.ndarray:
    """(B, C) bool: True where ``docs[b, c]`` already occurs in ``docs[b, :c]`` (each doc counts once per query)."""
    order = np.argsort(docs, axis=1, kind="stable")
    srt = np.take_along_axis(docs, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, axis=1)
    return out


def _gather_docs(doc_emb: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(doc_emb[idx.ravel()], dtype=np.float32)).to(device).reshape(*idx.shape, -1)


def candidate_scores(vq: TorchVQ, q: np.ndarray, cand: Candidates, doc_emb: np.ndarray, ste_T: float | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Teacher, IVF and PQ scores (B, C + S) of queries ``q`` (B, d) over their own then the shared candidates.

    Fixed codes: the PQ scores of the own candidates come from their stored codes (reconstructed per query), the
    shared ones once for the batch. STE (``ste_T`` set): each distinct doc is re-quantized once per step through
    :func:`~benchmark.vq.torch_vq.tempered_ste`."""
    device = vq.codebooks.device
    q_t = torch.from_numpy(q).to(device)
    q_rot = vq.encode_queries(q_t)
    own = torch.from_numpy(cand.own).to(device)
    if cand.own_teacher is None:
        teacher = [torch.einsum("bd,bcd->bc", q_t, _gather_docs(doc_emb, cand.own, device))]
    else:   # from teacher_pass; the columns it could not know (random docs) gathered now
        known = torch.tensor(cand.own_teacher, device=device)     # a copy: the candidates stay as sampled
        gaps = np.isnan(cand.own_teacher).any(0)
        if gaps.any():
            cols = torch.from_numpy(np.flatnonzero(gaps)).to(device)
            known[:, cols] = torch.einsum("bd,bcd->bc", q_t, _gather_docs(doc_emb, cand.own[:, gaps], device))
        teacher = [known]
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
        teacher.append(q_t @ (_gather_docs(doc_emb, cand.shared, device) if cand.shared_emb is None
                              else torch.from_numpy(cand.shared_emb).to(device)).T)
        if ivf_tab is not None:
            ivf.append(ivf_tab[:, vq.assign[sh]])
        if ste_T is None:
            pq.append(q_rot @ vq.reconstruct(sh).T)
    return (torch.cat(teacher, 1), None if ivf_tab is None else torch.cat(ivf, 1), torch.cat(pq, 1))
