"""BEIR-layout datasets: ``beir/<catalog name>``, ``msmarco``, ``beir:<folder or .zip>``.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv``. Every qrels file becomes a split holding the queries judged in it. The files are parsed here
rather than by beir's ``GenericDataLoader``, which keeps the last of duplicate ids, stops at the first bad JSON line
without a line number, always skips the first qrels line as a header and reads no TREC-format qrels: here bad input
raises one :class:`DatasetError` (file:line) before any encoding; beir itself is used for downloads only. Docs are
encoded as ``(title + " " + text).strip()``; texts are kept in the dataset.

Catalog datasets live in ``<cache>/beir/<name>/`` (``<cache>`` = ``data_dir``, ``$VQBENCH_DATA_DIR`` or
``datasets/cache``) and are downloaded there when missing. A ``.zip`` given as ``beir:<file>`` is extracted once to
``<cache>/beir-zip/<content hash>/``.

MS MARCO: ``msmarco`` is BEIR's copy, evaluated on ``dev`` = the official dev.small (6,980 queries, the BEIR msmarco
number); BEIR's ``test`` is TREC DL 2019 (43 queries). ``qrels/dl19.tsv`` / ``qrels/dl20.tsv`` (TREC or BEIR format)
become splits ``dl19`` / ``dl20``; their queries must be in ``queries.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from benchmark.data.catalog import check_catalog_name, load_catalog
from benchmark.data.dataset import (DatasetError, Qrels, RetrievalDataset, Split, check_embeddings, check_qrels,
                                    check_unique, option_hint)
from benchmark.data.encode import DEFAULT_MODEL, cache_root, encode_texts
from benchmark.data.npy import UNLABELED_SPLIT, as_float32, find_file, open_matrix, read_qrels
from benchmark.params import Param

log = logging.getLogger(__name__)

OPTIONS: dict[str, Param] = {
    "split": Param(None, "evaluation split (default: the catalog's eval_split, else test; dev for msmarco)",
                   dtype=str, special=(None,)),
    "model": Param(DEFAULT_MODEL, "sentence-transformers model: a hub name, a local folder or an installed "
                                  "gt-* model package"),
    "embeddings": Param(None, "folder of precomputed corpus.npy + corpus_ids.txt and queries.npy + queries_ids.txt, "
                              "used instead of model", dtype=str, special=(None,)),
    "data_dir": Param(None, "data cache folder (default: $VQBENCH_DATA_DIR, else datasets/cache)", dtype=str,
                      special=(None,)),
    "max_length": Param(None, "model token limit (None: the model's own max_seq_length)", dtype=int, min=1,
                        special=(None,)),
    "normalize": Param(True, "L2-normalise the embeddings"),
    "batch_size": Param(64, "encoding batch size (not part of the embedding cache key)", min=1),
    "drop_unknown_qrels": Param(False, "drop judgments naming an unknown doc or query id instead of failing"),
    "device": Param("cpu", "torch device for encoding (cpu, cuda, cuda:N)"),
    "include_unlabeled": Param(False, f"add the queries judged in no qrels file as split {UNLABELED_SPLIT!r}"),
    "ignore_identical_ids": Param(None, "drop a retrieved doc whose id equals the query id (None: the catalog's "
                                        "flag, true for arguana and quora)", dtype=bool, special=(None,)),
}


def _file_hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(base: str, entry: dict, target: Path, beir_dir: Path) -> None:
    """Fetch catalog dataset ``base`` into ``beir_dir`` (its zip unpacks to ``beir_dir/base``)."""
    url = entry.get("url")
    put = (f"so that {target}/corpus.jsonl, {target}/queries.jsonl and {target}/qrels/<split>.tsv exist (or set "
           f"VQBENCH_DATA_DIR / data_dir=, or load any folder or zip with 'beir:<path>')")
    if not url:
        raise DatasetError(f"beir/{base} is not publicly downloadable: {entry['obtain']}; put the files in place {put}")
    manual = f"Download {url} by hand and unzip it in {beir_dir}/ {put}."
    try:
        from beir import util as beir_util
    except ImportError as exc:
        raise DatasetError(f"cannot download beir/{base}: importing beir.util failed ({exc}; it needs the 'requests' "
                           f"package: pip install requests). {manual}") from exc
    zip_path = beir_dir / url.rsplit("/", 1)[-1]
    log.info("downloading %s to %s", url, beir_dir)
    try:
        beir_util.download_and_unzip(url, str(beir_dir))
    except Exception as exc:
        zip_path.unlink(missing_ok=True)
        shutil.rmtree(beir_dir / base, ignore_errors=True)
        raise DatasetError(f"download of beir/{base} failed; is the network unavailable? "
                           f"({type(exc).__name__}: {exc}). URL: {url}. {manual}") from exc
    if entry.get("md5") and zip_path.is_file() and _file_hash(zip_path, "md5") != entry["md5"]:
        log.warning("%s: md5 differs from the catalog (%s); the upstream file may have changed", zip_path, entry["md5"])
    zip_path.unlink(missing_ok=True)


def _unzip_cached(zip_path: Path, root: Path) -> Path:
    """Extract ``zip_path`` once to ``root/beir-zip/<sha256 prefix>/``; return the folder holding corpus.jsonl."""
    target = root / "beir-zip" / _file_hash(zip_path, "sha256")[:16]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            os.replace(tmp, target)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{zip_path}: not a readable zip file ({exc})") from exc
        except OSError:
            if not target.is_dir():  # else another process extracted it first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if (target / "corpus.jsonl").is_file():
        return target
    inner = [d for d in target.iterdir() if d.is_dir() and (d / "corpus.jsonl").is_file()]
    if len(inner) != 1:
        raise DatasetError(f"{zip_path}: expected corpus.jsonl at the top level or in exactly one top-level folder, "
                           f"found it in {len(inner)} folders")
    return inner[0]


def _resolve(name: str, root: Path) -> tuple[Path, str | None]:
    """Return the BEIR folder for ``name`` (downloading a catalog dataset if needed) and its catalog name."""
    catalog = load_catalog()
    if name.startswith("beir:"):
        src = Path(name[len("beir:"):]).expanduser()
        if src.is_dir():
            folder = src
        elif src.is_file() and src.suffix.lower() == ".zip":
            folder = _unzip_cached(src, root)
        else:
            raise DatasetError(f"{src}: no such folder or .zip file (expected BEIR layout: corpus.jsonl, "
                               f"queries.jsonl, qrels/<split>.tsv)")
        stem = src.name.removesuffix(".zip")
        return folder, stem if stem in catalog else None
    key = name.removeprefix("beir/")
    base, _ = check_catalog_name(key, catalog)
    folder = root / "beir" / key
    if not (root / "beir" / base).is_dir():
        _download(base, catalog[base], folder, root / "beir")
    return folder, base


def _records(path: str) -> Iterator[tuple[str, str, str]]:
    """Yield ``(_id, text, title)`` per non-blank jsonl line; bad JSON or fields raise DatasetError (file:line)."""
    with open(path, "rb") as f:
        lines = tqdm(f, desc=f"reading {path}", unit=" lines", disable=os.path.getsize(path) < 64 << 20)
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: malformed JSON: {exc.msg} at column {exc.colno}") from None
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            for fld in ("_id", "text"):
                if fld not in rec:
                    raise DatasetError(f"{path}:{lineno}: missing field {fld!r}")
            rid, text, title = rec["_id"], rec["text"], rec.get("title") or ""
            if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
                raise DatasetError(f"{path}:{lineno}: field '_id' must be a non-empty string, got {rid!r}")
            if not isinstance(text, str) or not isinstance(title, str):
                raise DatasetError(f"{path}:{lineno}: fields 'text' and 'title' must be strings")
            yield str(rid), text, title


def _read_corpus(path: Path) -> dict[str, tuple[str, str]]:
    """``{doc id: (title, text)}`` in file order; empty or duplicate ids raise."""
    corpus = {}
    ids = []
    for did, text, title in _records(str(path)):
        ids.append(did)
        corpus[did] = (title, text)
    if not ids:
        raise DatasetError(f"{path}: no documents")
    check_unique(ids, f"{path} (field '_id')")
    return corpus


def _read_queries(path: Path) -> dict[str, str]:
    """``{query id: text}`` in file order; empty or duplicate ids raise."""
    queries = {}
    ids = []
    for qid, text, _ in _records(str(path)):
        ids.append(qid)
        queries[qid] = text
    if not ids:
        raise DatasetError(f"{path}: no queries")
    check_unique(ids, f"{path} (field '_id')")
    return queries


def _read_split(path: Path, doc_ids: set[str] | dict, queries: dict[str, str], drop_unknown_qrels: bool,
                dropped: dict[str, int]) -> tuple[dict[str, str], Qrels]:
    """``(queries judged in qrels file `path`, in first-judged order; their qrels)``; counts drops in ``dropped``."""
    raw = read_qrels(path)
    qrels = check_qrels(raw, doc_ids, queries.keys(), str(path), drop_unknown=drop_unknown_qrels)
    n_dropped = sum(map(len, raw.values())) - sum(map(len, qrels.values()))
    if n_dropped:
        dropped[path.stem] = n_dropped
        log.warning("%s: dropped %d judgments with unknown doc or query ids", path, n_dropped)
    if not qrels:
        raise DatasetError(f"{path}: empty query set (no judgments for known queries and docs)")
    return {q: queries[q] for q in qrels}, qrels


def _check_layout(folder: Path) -> list[str]:
    """Return the split names under ``folder/qrels``; raise if the BEIR layout is incomplete."""
    missing = [str(p) for p in (folder / "corpus.jsonl", folder / "queries.jsonl") if not p.is_file()]
    if not (folder / "qrels").is_dir():
        missing.append(f"{folder / 'qrels'}/")
    if missing:
        raise DatasetError(f"{folder}: not a BEIR folder, missing {', '.join(missing)}")
    splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    if not splits:
        raise DatasetError(f"{folder / 'qrels'}: no <split>.tsv files")
    return splits


def _precomputed(emb_dir: Path, doc_ids: list[str], doc_texts: list[str],
                 query_ids: list[str]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Doc ids/texts in the embedding file's order, doc embeddings, and query embeddings in ``query_ids`` order."""
    doc_npy = find_file(emb_dir, ("corpus.npy", "docs.npy"), "doc embeddings")
    emb_ids, doc_raw = open_matrix(doc_npy, emb_dir / f"{doc_npy.stem}_ids.txt")
    known = set(emb_ids)
    if known != set(doc_ids):
        missing = [d for d in doc_ids if d not in known]
        extra = sorted(known.difference(doc_ids))
        raise DatasetError(f"{emb_dir / (doc_npy.stem + '_ids.txt')}: ids differ from corpus.jsonl: {len(missing)} "
                           f"docs without embedding (e.g. {missing[:5]}), {len(extra)} unknown ids (e.g. {extra[:5]})")
    q_npy = find_file(emb_dir, ("queries.npy",), "query embeddings")
    q_ids, q_raw = open_matrix(q_npy, emb_dir / "queries_ids.txt")
    if q_raw.shape[1] != doc_raw.shape[1]:
        raise DatasetError(f"{q_npy}: embedding dim mismatch: queries are {q_raw.shape[1]}-d but docs ({doc_npy}) "
                           f"are {doc_raw.shape[1]}-d")
    row = {q: i for i, q in enumerate(q_ids)}
    missing = [q for q in query_ids if q not in row]
    if missing:
        raise DatasetError(f"{emb_dir / 'queries_ids.txt'}: {len(missing)} queries have no embedding, "
                           f"e.g. {missing[:5]}")
    text_of = dict(zip(doc_ids, doc_texts))
    doc_emb = as_float32(doc_raw)
    check_embeddings(doc_emb, str(doc_npy))
    q_rows = np.asarray([row[q] for q in query_ids])
    q_emb = as_float32(q_raw[q_rows])
    check_embeddings(q_emb, str(q_npy), dim=doc_emb.shape[1], rows=q_rows)
    return emb_ids, [text_of[d] for d in emb_ids], doc_emb, q_emb


def load_beir_dataset(name: str, split: str | None = None, model: str = DEFAULT_MODEL,
                      embeddings: str | Path | None = None, data_dir: str | Path | None = None,
                      max_length: int | None = None, normalize: bool = True, batch_size: int = 64,
                      drop_unknown_qrels: bool = False, device: str = "cpu", include_unlabeled: bool = False,
                      ignore_identical_ids: bool | None = None) -> RetrievalDataset:
    """Load a BEIR dataset and embed it.

    ``name``: ``beir/<catalog name>`` (``beir/cqadupstack/<subset>``), ``msmarco``, or ``beir:<folder-or-zip>``.
    ``split``: evaluation split (default: the catalog's, else ``test``; ``dev`` for msmarco). ``embeddings``: a folder
    with precomputed ``corpus.npy`` + ``corpus_ids.txt`` and ``queries.npy`` + ``queries_ids.txt`` (see
    :mod:`benchmark.data.npy`) used instead of ``model``. ``max_length=None`` keeps the model's own limit.
    ``include_unlabeled`` adds the queries judged in no qrels file as split ``train-unlabeled``.
    ``ignore_identical_ids`` defaults to the catalog flag (true for arguana and quora).
    """
    root = Path(data_dir).expanduser() if data_dir is not None else cache_root()
    folder, cat = _resolve(name, root)
    entry = load_catalog().get(cat, {}) if cat else {}
    split_names = _check_layout(folder)
    eval_split = split or entry.get("eval_split", "test")
    if eval_split not in split_names:
        raise DatasetError(f"{folder}: split {eval_split!r} not found; available splits: {split_names} (to pick "
                           f"one, {option_hint('split', split_names[0])})")

    corpus = _read_corpus(folder / "corpus.jsonl")
    query_file = folder / "queries.jsonl"
    all_queries = _read_queries(query_file)
    dropped: dict[str, int] = {}
    per_split = {s: _read_split(folder / "qrels" / f"{s}.tsv", corpus, all_queries, drop_unknown_qrels, dropped)
                 for s in split_names}
    if include_unlabeled:
        judged = {q for queries, _ in per_split.values() for q in queries}
        unlabeled = {q: t for q, t in all_queries.items() if q not in judged}
        if not unlabeled:
            raise DatasetError(f"{query_file}: every query is judged, so split {UNLABELED_SPLIT!r} would be empty")
        per_split[UNLABELED_SPLIT] = (unlabeled, {})

    doc_ids = list(corpus)
    doc_texts = [f"{title} {text}".strip() for title, text in corpus.values()]
    query_ids = list(dict.fromkeys(q for queries, _ in per_split.values() for q in queries))
    if embeddings is None:
        enc = dict(model=model, batch_size=batch_size, max_length=max_length, normalize=normalize, device=device,
                   cache_dir=root / "embeddings")
        doc_emb = encode_texts(doc_texts, desc=f"{name} corpus", **enc)
        query_emb = encode_texts([all_queries[q] for q in query_ids], desc=f"{name} queries", **enc)
    else:
        doc_ids, doc_texts, doc_emb, query_emb = _precomputed(Path(embeddings).expanduser(), doc_ids, doc_texts,
                                                              query_ids)
    row = {q: i for i, q in enumerate(query_ids)}
    splits = {s: Split(s, list(queries), np.asarray(query_emb[[row[q] for q in queries]]), qrels,
                       list(queries.values()))
              for s, (queries, qrels) in per_split.items()}
    meta = {"source": str(folder.resolve()), "embeddings": str(embeddings) if embeddings is not None else None,
            "model": None if embeddings is not None else model, "max_length": max_length, "normalize": normalize,
            "dropped_qrels": dropped}
    return RetrievalDataset(name=name, doc_ids=doc_ids, doc_emb=doc_emb, splits=splits, eval_split=eval_split,
                            doc_texts=doc_texts, meta=meta,
                            ignore_identical_ids=bool(entry.get("ignore_identical_ids", False)
                                                      if ignore_identical_ids is None else ignore_identical_ids))
