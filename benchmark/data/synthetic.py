"""The embedded default dataset: a deterministic synthetic *retrieval* problem.

Rationale. A reconstruction objective (k-means / PQ / OPQ) spends its bits where the *documents* have variance; a
ranking objective (contrastive, distillation) spends them where the *queries* look. The generator makes those two
places differ, as they do for real dual encoders, so that the training objective matters:

* The space splits into a hidden **signal** subspace S (``signal_dim`` dims) and a **nuisance** subspace N (the
  rest), mixed by a random rotation so no coordinate axis lines up with either.
* Documents are hierarchical: topic -> parent -> doc. Each level adds an offset in S and in N. N carries most of the
  document energy (``nuisance_energy``, with a decaying, anisotropic spectrum), so distortion-minimising quantizers and
  k-means lists are shaped by N.
* Queries come from a *different distribution* (asymmetric, like a query tower): a query is generated from one
  source document by keeping its S part, passing it through a fixed random query-side linear map close to identity,
  adding noise, and keeping only a little of N. Scores ⟨q, d⟩ therefore depend almost only on S.
* Relevance comes from the generative relation, not from nearest neighbours: the source doc is grade 2 and its
  siblings (same parent) are grade 1. Query noise makes the exact dense ranking imperfect (the ceiling is < 1).

All embeddings are L2-normalised float32. The same seed gives bit-identical arrays.
"""
from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmark.data.dataset import DatasetError, RetrievalDataset, Split
from benchmark.params import Param

CHUNK = 65536
SPILL_BYTES = 256 * 2 ** 20   # with out_path, a parent-offset array larger than this lives in a file beside it
SYNTHETIC_PRESETS: dict[str, dict] = {
    "default": {},
    "quick": {"num_docs": 4000, "dim": 64, "num_topics": 32, "num_train": 800, "num_unlabeled": 800,
              "num_test": 200, "signal_dim": 24},
}

OPTIONS: dict[str, Param] = {
    "num_docs": Param(50_000, "documents", min=1),
    "dim": Param(128, "embedding dimension", min=2),
    "num_topics": Param(256, "top-level topics (each parent belongs to one)", min=1),
    "docs_per_parent": Param(4, "documents per parent; siblings are the grade-1 docs of a query", min=1),
    "num_train": Param(5000, "labeled train queries (0: no train split)", min=0),
    "num_unlabeled": Param(5000, "unlabeled train queries (0: no train-unlabeled split)", min=0),
    "num_test": Param(1500, "test queries (the evaluation split)", min=1),
    "signal_dim": Param(40, "dimension of the hidden signal subspace (< dim)", min=1),
    "nuisance_energy": Param(0.75, "share of document energy in the nuisance subspace", min=0.0, max=1.0),
    "query_noise": Param(1.2, "query noise in the signal subspace (relative to the signal amplitude)", min=0.0),
    "seed": Param(0, "generator seed (same seed, bit-identical arrays)", min=0),
    "out_path": Param(None, "write the docs to this memory-mapped .npy (large sizes); None: in memory", dtype=str,
                      special=(None,)),
}


def preset_options(preset: str) -> dict[str, Param]:
    """The generator options with the defaults of ``preset`` (a key of :data:`SYNTHETIC_PRESETS`)."""
    values = SYNTHETIC_PRESETS[preset]
    return {k: replace(p, default=values[k]) if k in values else p for k, p in OPTIONS.items()}


def check_options(label: str, options: dict) -> None:
    """Cross-option checks of a validated option set (each value is already of its declared type and range)."""
    dim, signal_dim = options["dim"], options["signal_dim"]
    if signal_dim >= dim:
        raise DatasetError(f"dataset {label!r} option signal_dim: expected < dim ({dim}), got {signal_dim} "
                           f"(the nuisance subspace needs at least one dimension)")


def _orthonormal(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_synthetic(num_docs: int = 50_000, dim: int = 128, num_topics: int = 256, docs_per_parent: int = 4,
                   num_train: int = 5000, num_unlabeled: int = 5000, num_test: int = 1500, signal_dim: int = 40,
                   nuisance_energy: float = 0.75, query_noise: float = 1.2, seed: int = 0,
                   name: str | None = None, out_path: str | None = None) -> RetrievalDataset:
    """Generate the synthetic dataset (see the module docstring for the design).

    Docs are generated in chunks; with ``out_path`` they are written to a memory-mapped ``.npy`` (large sizes), and
    the per-parent offsets, when larger than :data:`SPILL_BYTES` (8.8M docs x 768-d: 6.4 GB of nuisance offsets),
    are kept in a temporary memory-mapped file beside it instead of RAM (same values; removed when done).
    """
    with (tempfile.TemporaryDirectory(dir=Path(out_path).parent, prefix=".synthetic-") if out_path
          else nullcontext()) as spill:
        return _make(num_docs, dim, num_topics, docs_per_parent, num_train, num_unlabeled, num_test, signal_dim,
                     nuisance_energy, query_noise, seed, name, out_path, Path(spill) if spill else None)


def _make(num_docs: int, dim: int, num_topics: int, docs_per_parent: int, num_train: int, num_unlabeled: int,
          num_test: int, signal_dim: int, nuisance_energy: float, query_noise: float, seed: int, name: str | None,
          out_path: str | None, spill: Path | None) -> RetrievalDataset:
    rng = np.random.default_rng(seed)
    basis = _orthonormal(rng, dim)
    sig, nui = basis[:, :signal_dim], basis[:, signal_dim:]
    nui_dim = dim - signal_dim
    # anisotropic nuisance spectrum: a few directions carry most of the nuisance energy
    nui_scale = 1.0 / np.sqrt(1.0 + np.arange(nui_dim) / 4.0)
    nui_scale *= np.sqrt(nui_dim / np.sum(nui_scale ** 2))
    s_amp = np.sqrt((1 - nuisance_energy) / signal_dim)
    n_amp = np.sqrt(nuisance_energy / nui_dim)

    def offsets(n: int, s_std: float, n_std: float) -> tuple[np.ndarray, np.ndarray]:
        """Signal and nuisance offsets of ``n`` nodes, stored float32 and drawn in row blocks (the generator fills
        rows in order, so the values are those of one (n, k) draw, without its float64 copy: 0.7 GB at 1M docs)."""
        out = []
        for k, scale in ((signal_dim, s_std * s_amp), (nui_dim, nui_scale * n_std * n_amp)):
            big = spill is not None and n * k * 4 > SPILL_BYTES
            arr = (np.lib.format.open_memmap(spill / f"offsets-{n}x{k}.npy", mode="w+", dtype=np.float32,
                                             shape=(n, k)) if big else np.empty((n, k), dtype=np.float32))
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                arr[start:stop] = rng.standard_normal((stop - start, k)) * scale
            out.append(arr)
        return out[0], out[1]

    num_parents = -(-num_docs // docs_per_parent)
    topic_of_parent = rng.integers(0, num_topics, num_parents)
    t_s, t_n = offsets(num_topics, 1.0, 1.0)
    p_s, p_n = offsets(num_parents, 0.8, 0.8)
    parent_of_doc = np.repeat(np.arange(num_parents), docs_per_parent)[:num_docs]
    doc_emb = (np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(num_docs, dim))
               if out_path else np.empty((num_docs, dim), dtype=np.float32))
    for chunk, start in enumerate(range(0, num_docs, CHUNK)):  # chunked: 1M x 384 never needs float64 copies
        rows = slice(start, min(num_docs, start + CHUNK))
        crng = np.random.default_rng([seed, chunk])
        n = rows.stop - rows.start
        parents = parent_of_doc[rows]
        doc_s = t_s[topic_of_parent[parents]] + p_s[parents] + crng.standard_normal((n, signal_dim)) * 0.5 * s_amp
        doc_n = (t_n[topic_of_parent[parents]] + p_n[parents]
                 + crng.standard_normal((n, nui_dim)) * nui_scale * 0.6 * n_amp)
        doc_emb[rows] = _normalise(doc_s @ sig.T + doc_n @ nui.T)
    doc_ids = [f"d{i}" for i in range(num_docs)]

    # fixed query-side map in S: identity + a random perturbation (the "query tower")
    query_map = np.eye(signal_dim) + 0.3 * rng.standard_normal((signal_dim, signal_dim)) / np.sqrt(signal_dim)

    def queries(n: int, prefix: str) -> tuple[list[str], np.ndarray, dict[str, dict[str, int]]]:
        src = rng.integers(0, num_docs, n)
        source = np.asarray(doc_emb[src], dtype=np.float64)   # unit docs: their S and N coordinates
        q_s = (source @ sig) @ query_map.T
        q_s += rng.standard_normal(q_s.shape) * query_noise * s_amp
        q_n = 0.1 * (source @ nui)
        emb = _normalise(q_s @ sig.T + q_n @ nui.T)
        ids = [f"{prefix}{i}" for i in range(n)]
        qrels = {}
        for qid, s in zip(ids, src):
            first = int(parent_of_doc[s]) * docs_per_parent   # siblings: the docs of the same parent
            rel = {f"d{d}": 1 for d in range(first, min(num_docs, first + docs_per_parent))}
            rel[f"d{s}"] = 2
            qrels[qid] = rel
        return ids, emb, qrels

    splits = {}
    for split_name, n, prefix, keep_labels in (("train", num_train, "tr", True),
                                               ("train-unlabeled", num_unlabeled, "tu", False),
                                               ("test", num_test, "te", True)):
        if n <= 0:
            continue
        ids, emb, qrels = queries(n, prefix)
        splits[split_name] = Split(split_name, ids, emb, qrels if keep_labels else {})
    params = dict(num_docs=num_docs, dim=dim, num_topics=num_topics, docs_per_parent=docs_per_parent,
                  num_train=num_train, num_unlabeled=num_unlabeled, num_test=num_test, signal_dim=signal_dim,
                  nuisance_energy=nuisance_energy, query_noise=query_noise, seed=seed)
    return RetrievalDataset(name=name or "synthetic", doc_ids=doc_ids, doc_emb=doc_emb, splits=splits,
                            eval_split="test", meta={"generator": "benchmark.data.synthetic", "params": params})
