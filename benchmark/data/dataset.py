"""The one dataset type the whole suite uses, its validation, and the dev split carved from train.

A :class:`RetrievalDataset` holds doc ids + doc embeddings (float32, possibly memory-mapped) and, per split,
query ids + query embeddings + graded qrels (``dict[qid, dict[docid, int]]``), plus texts when known.
This module imports no loader: the loaders import these types, and :mod:`benchmark.data.loaders` dispatches names.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

Qrels = dict[str, dict[str, int]]


class DatasetError(ValueError):
    """Bad input: the message names the file/field and what was expected."""


@dataclass
class Split:
    """Queries of one split. ``qrels`` is empty for an unlabeled query set."""

    name: str
    query_ids: list[str]
    query_emb: np.ndarray
    qrels: Qrels = field(default_factory=dict)
    query_texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def labeled(self) -> bool:
        return bool(self.qrels)


class DocMatrix:
    """Shape facts of a class's ``doc_emb`` (n, d) matrix: shared by the dataset and a method's training view."""

    doc_emb: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.doc_emb.shape[1])

    @property
    def num_docs(self) -> int:
        return int(self.doc_emb.shape[0])


@dataclass
class RetrievalDataset(DocMatrix):
    """Doc embeddings + named query splits. ``splits`` maps split name -> :class:`Split`.

    Conventional split names: ``train`` (labeled train queries), ``train-unlabeled`` (extra queries without
    labels), ``dev``/``test`` (evaluation). ``eval_split`` names the split a benchmark reports on.
    """

    name: str
    doc_ids: list[str]
    doc_emb: np.ndarray
    splits: dict[str, Split]
    eval_split: str = "test"
    doc_texts: list[str] | None = None
    ignore_identical_ids: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DatasetError(f"{self.name}: no split {name!r}; available splits: {sorted(self.splits)}")
        return self.splits[name]

    def __repr__(self) -> str:
        parts = [f"{n}: {len(s)} queries" + (f", {sum(len(v) for v in s.qrels.values())} qrels" if s.qrels else
                                              ", unlabeled") for n, s in self.splits.items()]
        return (f"RetrievalDataset({self.name!r}, {self.num_docs} docs x {self.dim}-d "
                f"{self.doc_emb.dtype}, splits {{{'; '.join(parts)}}}, eval_split={self.eval_split!r})")


def option_hint(key: str, value: bool | int | float | str) -> str:
    """How to set dataset option ``key`` to the example ``value``, both ways: in a config and on the command line."""
    toml = str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)
    cli = str(value).lower() if isinstance(value, bool) else str(value)
    return (f"set {key} = {toml} under [datasets.<alias>] in a config file, or pass --dataset-opt {key}={cli} "
            f"on the command line")


def check_embeddings(arr: np.ndarray, what: str, dim: int | None = None, rows: np.ndarray | None = None) -> None:
    """Raise :class:`DatasetError` for a non-2-d, wrong-dim, empty or non-finite embedding matrix.

    ``rows``: when ``arr`` holds rows gathered from a file (``arr[i]`` = file row ``rows[i]``), the error names the
    file's row, not the position in ``arr``.
    """
    if arr.ndim != 2:
        raise DatasetError(f"{what}: expected a 2-d array (n, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"{what}: empty (0 vectors)")
    if dim is not None and arr.shape[1] != dim:
        raise DatasetError(f"{what}: embedding dim mismatch: expected {dim}, got {arr.shape[1]}")
    step = 65536
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start:start + step])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            pos = start + int(np.argmax(bad))
            row = pos if rows is None else int(rows[pos])
            where = (f"in block starting at {start}" if rows is None else
                     f"among the {len(block)} rows read" + (f" after the first {start}" if start else ""))
            raise DatasetError(f"{what}: row {row} contains NaN/inf values ({int(bad.sum())} bad rows {where})")


def check_unique(ids: list[str], what: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]
        raise DatasetError(f"{what}: {len(dups)} duplicate ids, e.g. {dups[:5]}")


def check_qrels(qrels: Mapping[str, Mapping[str, int]], doc_ids: set[str], query_ids: set[str], what: str,
                drop_unknown: bool = False) -> Qrels:
    """Return qrels restricted to known ids; unknown doc ids raise unless ``drop_unknown``."""
    unknown_docs = [(q, d) for q, rel in qrels.items() for d in rel if d not in doc_ids]
    if unknown_docs and not drop_unknown:
        raise DatasetError(f"{what}: {len(unknown_docs)} qrels point at unknown doc ids, e.g. {unknown_docs[:5]} "
                           f"(to drop them, {option_hint('drop_unknown_qrels', True)})")
    unknown_q = [q for q in qrels if q not in query_ids]
    if unknown_q and not drop_unknown:
        raise DatasetError(f"{what}: {len(unknown_q)} qrels query ids have no query, e.g. {unknown_q[:5]} "
                           f"(to drop them, {option_hint('drop_unknown_qrels', True)})")
    out: Qrels = {}
    for q, rel in qrels.items():
        if q not in query_ids:
            continue
        kept = {d: int(r) for d, r in rel.items() if d in doc_ids}
        if kept:
            out[q] = kept
    return out


def validate(ds: RetrievalDataset) -> None:
    """Structural checks shared by every loader (cheap; NaN scan is done by loaders before heavy work)."""
    if len(ds.doc_ids) != ds.doc_emb.shape[0]:
        raise DatasetError(f"{ds.name}: {len(ds.doc_ids)} doc ids but {ds.doc_emb.shape[0]} doc embeddings")
    if ds.doc_emb.ndim != 2:
        raise DatasetError(f"{ds.name}: doc embeddings must be 2-d, got shape {ds.doc_emb.shape}")
    for name, s in ds.splits.items():
        if len(s.query_ids) == 0:
            raise DatasetError(f"{ds.name}: split {name!r} has an empty query set")
        if s.query_emb.shape != (len(s.query_ids), ds.dim):
            raise DatasetError(f"{ds.name}: split {name!r} query embeddings have shape {s.query_emb.shape}, "
                               f"expected ({len(s.query_ids)}, {ds.dim}) (embedding dim mismatch?)")
    if ds.eval_split not in ds.splits:
        raise DatasetError(f"{ds.name}: eval split {ds.eval_split!r} missing; available: {sorted(ds.splits)}")


def carve_dev(ds: RetrievalDataset, num_queries: int, seed: int = 0) -> RetrievalDataset:
    """Hold out ``num_queries`` labeled train queries (seeded) as split ``dev`` and evaluate on it.

    For tuning without touching test: the held-out queries leave ``train`` (so no method trains on them) and every
    other evaluation split of the source (``test``, ``dev``, ...) is dropped; ``train-unlabeled`` stays.
    """
    train = ds.splits.get("train")
    if train is None or not train.qrels:
        raise DatasetError(f"{ds.name}: option dev_queries needs a labeled 'train' split to carve from; "
                           f"available splits: {sorted(ds.splits)}")
    labeled = [i for i, q in enumerate(train.query_ids) if any(g > 0 for g in train.qrels.get(q, {}).values())]
    if not 0 < num_queries < len(labeled):
        example = max(1, min(1000, len(labeled) // 10))
        raise DatasetError(f"{ds.name}: option dev_queries must be in [1, {len(labeled) - 1}] (labeled train "
                           f"queries: {len(labeled)}), got {num_queries}; {option_hint('dev_queries', example)}")
    dev_rows = np.sort(np.random.default_rng(seed).choice(labeled, num_queries, replace=False))
    train_rows = np.setdiff1d(np.arange(len(train)), dev_rows)

    def subset(rows: np.ndarray, name: str) -> Split:
        ids = [train.query_ids[i] for i in rows]
        texts = None if train.query_texts is None else [train.query_texts[i] for i in rows]
        return Split(name, ids, np.asarray(train.query_emb[rows], dtype=np.float32),
                     {q: train.qrels[q] for q in ids if q in train.qrels}, texts)

    splits = {"train": subset(train_rows, "train"), "dev": subset(dev_rows, "dev")}
    if "train-unlabeled" in ds.splits:
        splits["train-unlabeled"] = ds.splits["train-unlabeled"]
    meta = {**ds.meta, "dev": {"carved_from": "train", "queries": int(num_queries), "seed": int(seed)}}
    return replace(ds, splits=splits, eval_split="dev", meta=meta)
