"""IR quality with ir_measures (per query) and fidelity to the exact dense ranking (overlap@k)."""
from __future__ import annotations

from itertools import islice

import ir_measures
import numpy as np
from ir_measures import R, RR, nDCG

from benchmark.data import Qrels

MEASURES = {"nDCG@10": nDCG @ 10, "RR@10": RR @ 10, "R@10": R @ 10, "R@100": R @ 100, "R@1000": R @ 1000}
FIDELITY_KS = (10, 100)
TOP_DEPTH = 100  # the ranked prefix the measures with cut-off <= 100 need


def ranked_run(query_ids: list[str], doc_ids: np.ndarray, scores: np.ndarray, indices: np.ndarray,
               ignore_identical_ids: bool = False, depth: int | None = None) -> dict[str, dict[str, float]]:
    """faiss output (rows of scores/indices, -1 = no result) -> ``{qid: {docid: score}}`` truncated to ``depth``."""
    run: dict[str, dict[str, float]] = {}
    depth = depth or indices.shape[1]
    for qid, row_s, row_i in zip(query_ids, scores, indices):
        keep = row_i >= 0
        docs = doc_ids[row_i[keep]]
        vals = row_s[keep]
        if ignore_identical_ids:
            same = docs == qid
            docs, vals = docs[~same], vals[~same]
        run[qid] = dict(zip(docs[:depth].tolist(), vals[:depth].astype(float).tolist()))
    return run


def per_query_measures(run: dict[str, dict[str, float]], qrels: Qrels) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10, RR@10, R@10, R@100, R@1000 with ir_measures, over every query with a relevant doc.

    A query with no retrieved doc scores 0. For speed, the measures with cut-off <= 100 see the top-100 prefix and
    R@1000 sees only the relevant docs retrieved in the top 1000 (neither changes any value: R@k only counts
    relevant docs at rank <= k).
    """
    judged = {q: rel for q, rel in qrels.items() if any(r > 0 for r in rel.values())}
    out: dict[str, dict[str, float]] = {name: {q: 0.0 for q in judged} for name in MEASURES}
    top = {q: _prefix(run.get(q, {}), TOP_DEPTH) for q in judged}
    top = {q: docs for q, docs in top.items() if docs}
    shallow = [m for name, m in MEASURES.items() if name != "R@1000"]
    names = {str(m): name for name, m in MEASURES.items()}
    for res in ir_measures.iter_calc(shallow, judged, top):
        out[names[str(res.measure)]][res.query_id] = float(res.value)
    rel_only = {}
    for q, rel in judged.items():
        deep = _prefix(run.get(q, {}), 1000)
        found = {d: deep[d] for d, grade in rel.items() if grade > 0 and d in deep}
        if found:
            rel_only[q] = found
    for res in ir_measures.iter_calc([MEASURES["R@1000"]], judged, rel_only):
        out["R@1000"][res.query_id] = float(res.value)
    return out


def _prefix(docs: dict[str, float], n: int) -> dict[str, float]:
    """The first ``n`` entries of a ranked ``{docid: score}`` (itself when it is no longer)."""
    return docs if len(docs) <= n else dict(islice(docs.items(), n))


def overlap_at_k(indices: np.ndarray, exact_indices: np.ndarray, k: int) -> np.ndarray:
    """Per-query |top-k ∩ exact top-k| / k (ann-benchmarks' recall), ids as faiss row numbers."""
    out = np.empty(len(indices))
    for i, (row, ref) in enumerate(zip(indices[:, :k], exact_indices[:, :k])):
        out[i] = len(np.intersect1d(row[row >= 0], ref[ref >= 0], assume_unique=True)) / k
    return out


def mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else 0.0
