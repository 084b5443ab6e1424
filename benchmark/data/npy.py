"""Bring-your-own embeddings: ``npy:<dir>``.

Layout of ``<dir>``::

    corpus.npy (or docs.npy)        (num_docs, dim) float32 or float16
    corpus_ids.txt (or docs_ids.txt) one doc id per line, same order as the rows
    queries.npy + queries_ids.txt    all queries (rows of each split are picked by id)
    queries_<split>.npy + queries_<split>_ids.txt   optional per-split queries (take precedence over queries.npy)
    qrels/<split>.tsv                BEIR style (``query-id corpus-id score``, header optional) or TREC style
                                     (``qid 0 docid rel``, no header); format is detected per file

``qrels/`` is looked up in ``<dir>`` and then in its parent (so ``npy:data/minilm`` finds ``data/qrels``), unless
``qrels_dir`` is given. Every ``qrels/<split>.tsv`` is a split holding the queries judged in it; a per-split query
file without a qrels file is an unlabeled split. Memory: a float32 doc matrix stays memory-mapped (read-only, pages
loaded on demand); a float16 one is converted once, by blocks, into a float32 file in the cache and memory-mapped
from there (:func:`float32_file`: twice its size on disk, no N x d float32 array in RAM). Query rows are always
copied to memory as float32.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from benchmark.data.dataset import (DatasetError, Qrels, RetrievalDataset, Split, check_embeddings, check_qrels,
                                    check_unique, option_hint)
from benchmark.data.encoders import get_encoder
from benchmark.params import Param

UNLABELED_SPLIT = "train-unlabeled"

OPTIONS: dict[str, Param] = {
    "split": Param(None, "evaluation split: a qrels/<split>.tsv file (None: test)", dtype=str, special=(None,)),
    "qrels_dir": Param(None, "folder of the qrels/<split>.tsv files (None: <dir>/qrels, else <dir>/../qrels)",
                       dtype=str, special=(None,)),
    "drop_unknown_qrels": Param(False, "drop judgments naming an unknown doc or query id instead of failing"),
    "include_unlabeled": Param(False, f"add the queries of queries.npy judged in no qrels file as split "
                                      f"{UNLABELED_SPLIT!r}"),
    "ignore_identical_ids": Param(False, "drop a retrieved doc whose id equals the query id"),
    "encoder": Param(None, "the encoder that made these vectors, a name of datasets/encoders.toml (minilm, mpnet): "
                           "every record names it; None = not said", dtype=str, special=(None,)),
}


def read_ids(path: Path) -> list[str]:
    """One id per line (surrounding whitespace stripped; trailing blank lines ignored, inner blank lines rejected)."""
    ids = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: a leading UTF-8 BOM is dropped
    while ids and not ids[-1].strip():
        ids.pop()
    ids = [i.strip() for i in ids]
    if "" in ids:
        raise DatasetError(f"{path}:{ids.index('') + 1}: empty id")
    check_unique(ids, str(path))
    return ids


def open_matrix(npy: Path, ids_file: Path) -> tuple[list[str], np.ndarray]:
    """Memory-map ``npy`` (any float dtype) and read its ids; checks shape and ids-file length."""
    try:
        arr = np.load(npy, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{npy}: not a readable .npy array ({exc})") from exc
    if arr.dtype.kind != "f":
        raise DatasetError(f"{npy}: expected float16/float32 embeddings, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DatasetError(f"{npy}: expected a 2-d array (n, dim), got shape {arr.shape}")
    if not ids_file.is_file():
        raise DatasetError(f"{ids_file}: missing (one id per line for the rows of {npy.name})")
    ids = read_ids(ids_file)
    if len(ids) != arr.shape[0]:
        raise DatasetError(f"{ids_file}: {len(ids)} ids but {npy} has {arr.shape[0]} rows")
    return ids, arr


def as_float32(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 without ever holding an N x d float32 copy of a file in RAM: the array itself when it is
    float32 (a memmap stays a memmap); a memory-mapped file of another dtype (float16 embeddings) converted once, by
    blocks, into a float32 ``.npy`` in the cache (:func:`float32_file`) and memory-mapped read-only; an in-memory
    array of another dtype copied."""
    if arr.dtype == np.float32:
        return arr
    if isinstance(arr, np.memmap) and arr.filename:
        return float32_file(arr)
    return np.asarray(arr, dtype=np.float32)


CONVERT_BLOCK = 65536   # rows converted at a time by float32_file


def float32_file(arr: np.memmap) -> np.memmap:
    """A read-only float32 memmap of memory-mapped ``arr``, written once to ``<cache>/float32/`` (keyed by the source
    file's path, size and mtime, so an edited file is converted again) block by block with a progress bar; the write
    is atomic, so an interrupted conversion leaves nothing half-written behind."""
    from tqdm.auto import tqdm

    from benchmark._io import atomic_path
    from benchmark.data.encode import cache_root

    src = Path(arr.filename).resolve()
    stat = src.stat()
    key = hashlib.sha1(f"{src}|{stat.st_size}|{stat.st_mtime_ns}|{arr.shape}|{arr.dtype}|{arr.offset}".encode())
    path = cache_root() / "float32" / f"{src.stem}-{key.hexdigest()[:16]}.npy"
    if not path.is_file():
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=arr.shape)
            for start in tqdm(range(0, arr.shape[0], CONVERT_BLOCK), desc=f"{src.name} -> float32 (cached once)",
                              unit="block", disable=arr.shape[0] < 16 * CONVERT_BLOCK):
                out[start:start + CONVERT_BLOCK] = arr[start:start + CONVERT_BLOCK]
            out.flush()
            del out
    return np.load(path, mmap_mode="r")


def read_qrels(path: Path) -> Qrels:
    """Parse BEIR-style (3 columns, optional header) or TREC-style (4 columns) qrels; errors name file:line.

    A leading UTF-8 byte-order mark is dropped (as for the jsonl and id files), header line or not."""
    qrels: Qrels = {}
    ncols = 0
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            cols = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if not ncols:
                if len(cols) not in (3, 4):
                    raise DatasetError(f"{path}:{lineno}: expected 3 columns (query-id corpus-id score) or 4 "
                                       f"(TREC: qid 0 docid rel), got {len(cols)}")
                ncols = len(cols)
                if ncols == 3 and not _is_int(cols[2]):
                    continue  # header line
            if len(cols) != ncols:
                raise DatasetError(f"{path}:{lineno}: expected {ncols} columns like the first line, got {len(cols)}")
            qid, did, rel = (cols[0], cols[1], cols[2]) if ncols == 3 else (cols[0], cols[2], cols[3])
            if not qid.strip() or not did.strip():
                raise DatasetError(f"{path}:{lineno}: empty query or doc id")
            if not _is_int(rel):
                raise DatasetError(f"{path}:{lineno}: relevance {rel!r} is not an integer")
            qrels.setdefault(qid.strip(), {})[did.strip()] = int(rel)
    return qrels


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _check_dim(query_npy: Path, queries: np.ndarray, doc_npy: Path, docs: np.ndarray) -> None:
    if queries.shape[1] != docs.shape[1]:
        raise DatasetError(f"{query_npy}: embedding dim mismatch: queries are {queries.shape[1]}-d but docs "
                           f"({doc_npy}) are {docs.shape[1]}-d")


def _find_qrels_dir(root: Path, qrels_dir: str | Path | None) -> Path:
    candidates = [Path(qrels_dir)] if qrels_dir is not None else [root / "qrels", root.parent / "qrels"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DatasetError(f"no qrels folder: looked for {' and '.join(map(str, candidates))} "
                       f"(expected qrels/<split>.tsv files)")


def find_file(root: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DatasetError(f"{root}: no {what} file (expected one of {', '.join(names)})")


def load_npy_dataset(path: str | Path, qrels_dir: str | Path | None = None, split: str | None = None,
                     name: str | None = None, drop_unknown_qrels: bool = False, include_unlabeled: bool = False,
                     ignore_identical_ids: bool = False, encoder: str | None = None) -> RetrievalDataset:
    """Load precomputed embeddings + qrels (layout in the module docstring).

    ``split`` picks the evaluation split (default ``test``). ``include_unlabeled`` adds the queries of
    ``queries.npy`` judged in no qrels file as split ``train-unlabeled`` (unless a per-split file provides it).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"npy dataset folder {root} does not exist")
    declared = None if encoder is None else get_encoder(encoder)      # an unknown name: close matches, no loading
    doc_npy = find_file(root, ("corpus.npy", "docs.npy"), "doc embeddings")
    doc_ids, doc_raw = open_matrix(doc_npy, root / f"{doc_npy.stem}_ids.txt")
    if declared is not None and doc_raw.shape[1] != int(declared["dim"]):
        raise DatasetError(f"{doc_npy}: option encoder={encoder!r} makes {declared['dim']}-d vectors, but these are "
                           f"{doc_raw.shape[1]}-d")
    qdir = _find_qrels_dir(root, qrels_dir)
    qrels_files = {p.stem: p for p in sorted(qdir.glob("*.tsv"))}
    per_split = {p.stem[len("queries_"):]: p for p in sorted(root.glob("queries_*.npy"))}
    names = list(qrels_files) + [s for s in per_split if s not in qrels_files]
    derive_unlabeled = include_unlabeled and UNLABELED_SPLIT not in names
    if derive_unlabeled:
        names.append(UNLABELED_SPLIT)
    if not qrels_files:
        raise DatasetError(f"{qdir}: no <split>.tsv qrels files")
    eval_split = split or "test"
    if eval_split not in qrels_files:
        raise DatasetError(f"{root}: split {eval_split!r} not found; available splits: {list(qrels_files)} "
                           f"(labeled splits are the files in {qdir}; to pick one, "
                           f"{option_hint('split', next(iter(qrels_files)))})")

    doc_set = set(doc_ids)
    shared: list[tuple[list[str], np.ndarray]] = []

    def queries_of(s: str) -> tuple[Path, list[str], np.ndarray]:
        if s in per_split:
            return (per_split[s], *open_matrix(per_split[s], root / f"queries_{s}_ids.txt"))
        npy = find_file(root, ("queries.npy",), "query embeddings")
        if not shared:
            shared.append(open_matrix(npy, root / "queries_ids.txt"))
        return (npy, *shared[0])

    picked: dict[str, tuple[Path, list[str], np.ndarray, list[str], Qrels]] = {}
    judged: set[str] = set()
    for s in names:
        if derive_unlabeled and s == UNLABELED_SPLIT:
            continue
        src, qids, qraw = queries_of(s)
        _check_dim(src, qraw, doc_npy, doc_raw)
        if s in qrels_files:
            qrels = check_qrels(read_qrels(qrels_files[s]), doc_set, set(qids), str(qrels_files[s]),
                                drop_unknown=drop_unknown_qrels)
            wanted = list(qrels)
            if not wanted:
                raise DatasetError(f"{qrels_files[s]}: split {s!r} has an empty query set (no usable judgments)")
            judged.update(wanted)
        else:
            qrels, wanted = {}, qids
        picked[s] = (src, qids, qraw, wanted, qrels)
    if derive_unlabeled:
        src, qids, qraw = queries_of(UNLABELED_SPLIT)
        _check_dim(src, qraw, doc_npy, doc_raw)
        wanted = [q for q in qids if q not in judged]
        if not wanted:
            raise DatasetError(f"{src}: every query is judged, so split {UNLABELED_SPLIT!r} would be empty")
        picked[UNLABELED_SPLIT] = (src, qids, qraw, wanted, {})

    doc_emb = as_float32(doc_raw)
    check_embeddings(doc_emb, str(doc_npy))
    splits: dict[str, Split] = {}
    for s, (src, qids, qraw, wanted, qrels) in picked.items():
        row = {q: i for i, q in enumerate(qids)}
        rows = np.asarray([row[q] for q in wanted])
        emb = as_float32(qraw[rows])
        check_embeddings(emb, f"{src} (split {s!r})", dim=doc_emb.shape[1], rows=rows)
        splits[s] = Split(s, wanted, emb, qrels)
    return RetrievalDataset(name=name or f"npy:{root}", doc_ids=doc_ids, doc_emb=doc_emb, splits=splits,
                            eval_split=eval_split, ignore_identical_ids=ignore_identical_ids,
                            meta={"source": str(root), "qrels_dir": str(qdir), "doc_dtype_on_disk": str(doc_raw.dtype),
                                  "encoder": encoder})
