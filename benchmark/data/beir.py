"""BEIR-layout datasets: ``beir/<catalog name>``, ``msmarco``, ``beir:<folder or .zip>``.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv``. Every qrels file becomes a split holding the queries judged in it. The files are parsed here
rather than by beir's ``GenericDataLoader``, which keeps the last of duplicate ids, stops at the first bad JSON line
without a line number, always skips the first qrels line as a header and reads no TREC-format qrels: here bad input
raises one :class:`DatasetError` (file:line) before any encoding. Docs are encoded as
``(title + " " + text).strip()``; texts are kept in the dataset.

Catalog datasets live in ``<cache>/beir/<name>/`` (``<cache>`` = ``data_dir``, ``$VQBENCH_DATA_DIR`` or
``datasets/cache``) and are downloaded there when missing by :func:`fetch` (requests; size and md5 checked, then
extracted and renamed into place, so a failed download leaves nothing behind). A ``.zip`` given as ``beir:<file>`` is
extracted once to ``<cache>/beir-zip/<content hash>/``.

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

from benchmark.data.catalog import CATALOG_PATH, check_catalog_name, load_catalog
from benchmark.data.dataset import (DatasetError, Qrels, RetrievalDataset, Split, check_embeddings, check_qrels,
                                    check_unique, option_hint)
from benchmark.data.encode import DEFAULT_MODEL, cache_root, encode_stats, encode_texts
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


DOWNLOAD_TIMEOUT = (30, 120)  # seconds: to connect, and the longest wait for the next bytes of the body
BEIR_LAYOUT = ("corpus.jsonl", "queries.jsonl", "qrels/")


def _download(base: str, entry: dict, target: Path, beir_dir: Path) -> None:
    """Fetch catalog dataset ``base`` into ``beir_dir/base`` (``target`` is the folder the loader reads)."""
    url = entry.get("url")
    put = (f"so that {target}/corpus.jsonl, {target}/queries.jsonl and {target}/qrels/<split>.tsv exist (or set "
           f"VQBENCH_DATA_DIR / data_dir=, or load any folder or zip with 'beir:<path>')")
    if not url:
        how = entry.get("obtain", "the catalog gives no url")
        raise DatasetError(f"beir/{base} is not publicly downloadable: {how}; put the files in place {put}")
    manual = f"Download {url} by hand and unzip it in {beir_dir}/ {put}."
    try:
        import requests  # noqa: F401  (only downloads need it)
    except ImportError as exc:
        raise DatasetError(f"cannot download beir/{base}: downloading needs the 'requests' package ({exc}; pip "
                           f"install requests). {manual}") from exc
    layout = [f"{s}/{f}" for s in entry["subsets"] for f in BEIR_LAYOUT] if "subsets" in entry else BEIR_LAYOUT
    log.info("downloading %s to %s", url, beir_dir / base)
    try:
        fetch(url, entry.get("md5"), beir_dir / base, layout)
    except DatasetError as exc:
        raise DatasetError(f"download of beir/{base} (URL and md5 from {CATALOG_PATH.name}) failed: {exc}. "
                           f"{manual}") from exc


def fetch(url: str, md5: str | None, dest: Path, layout: tuple[str, ...] | list[str] = BEIR_LAYOUT) -> Path:
    """Download the zip at ``url`` and unpack it as folder ``dest``; return ``dest``.

    Every step works in ``dest.parent``, so the last one is an atomic rename: stream the body to a hidden temp file,
    check its size against the Content-Length and its md5 against ``md5`` (if given), extract it into a hidden temp
    folder, check that ``layout`` (paths, ``/`` ending a folder) exists in the zip's folder ``<dest.name>/`` (BEIR's
    zips) or else at its top level, and rename that folder to ``dest``. Any failure raises one
    :class:`DatasetError` naming ``url`` and leaves neither a temp file nor a partial ``dest`` behind. (beir's
    ``util.download_and_unzip`` is not used: it saves an HTTP error page as the zip, does not notice a short body,
    reuses a leftover partial zip and extracts in place.)
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".zip.part")
        os.close(fd)
    except OSError as exc:
        raise DatasetError(f"{url}: cannot write in the cache folder {dest.parent} "
                           f"({type(exc).__name__}: {exc})") from exc
    part = Path(name)
    try:
        got = _stream(url, part)
        if md5 and got != md5:
            raise DatasetError(f"{url}: md5 mismatch: expected {md5}, got {got}; the download was deleted (a broken "
                               f"transfer, or the upstream file changed)")
        _place(part, dest, url, layout)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _stream(url: str, path: Path) -> str:
    """Write the body of ``GET url`` to ``path``; return its md5. An HTTP error status, a failed connection or a
    body shorter or longer than its Content-Length raise :class:`DatasetError`."""
    import requests
    digest = hashlib.md5()
    received, total = 0, None
    try:
        # identity: the bytes on the wire are the file, so they can be counted against Content-Length
        with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT, headers={"Accept-Encoding": "identity"}) as r:
            r.raise_for_status()
            length = r.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            with open(path, "wb") as f, tqdm(desc=f"downloading {url}", total=total, unit="B", unit_scale=True,
                                             unit_divisor=1024) as bar:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        if total is not None:  # the body had started: what came is less than the Content-Length announced
            raise DatasetError(f"{url}: truncated download: the transfer broke off before the {total:,} bytes "
                               f"announced (Content-Length) had arrived ({type(exc).__name__}: {exc})") from exc
        hint = "; is the network unavailable?" if isinstance(exc, (requests.ConnectionError, requests.Timeout)) else ""
        raise DatasetError(f"{url}: {type(exc).__name__}: {exc}{hint}") from exc
    except OSError as exc:
        raise DatasetError(f"{url}: writing {path} failed ({type(exc).__name__}: {exc})") from exc
    if total is not None and received != total:
        raise DatasetError(f"{url}: size mismatch: got {received:,} bytes, the server announced {total:,} "
                           f"(Content-Length)")
    return digest.hexdigest()


def _place(zip_path: Path, dest: Path, url: str, layout: tuple[str, ...] | list[str]) -> None:
    """Extract ``zip_path`` into a temp folder beside ``dest``, check ``layout``, rename it to ``dest``."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".unzip"))
    try:
        _extract(zip_path, tmp, url)
        src = tmp / dest.name if (tmp / dest.name).is_dir() else tmp
        missing = [p for p in layout if not ((src / p).is_dir() if p.endswith("/") else (src / p).is_file())]
        if missing:
            top = sorted(p.name + "/" * p.is_dir() for p in tmp.iterdir())
            where = (f"its folder {dest.name}/ lacks" if src != tmp else
                     f"the zip has neither a folder {dest.name}/ nor the files at its top level: missing")
            raise DatasetError(f"{url}: not the expected BEIR layout: {where} {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''} (its top level holds {top[:10]})")
        try:
            os.replace(src, dest)
        except OSError as exc:
            if not dest.is_dir():  # else another process placed it first
                raise DatasetError(f"{url}: cannot move the extracted files to {dest} ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(zip_path: Path, folder: Path, what: str | Path) -> None:
    """Extract every member of ``zip_path`` into ``folder`` (``what`` names the zip in errors)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(folder)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{what}: not a readable zip file ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{what}: extracting into {folder} failed ({type(exc).__name__}: {exc})") from exc


def _unzip_cached(zip_path: Path, root: Path) -> Path:
    """Extract ``zip_path`` once to ``root/beir-zip/<sha256 prefix>/``; return the folder holding corpus.jsonl."""
    target = root / "beir-zip" / _file_hash(zip_path, "sha256")[:16]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            _extract(zip_path, tmp, zip_path)
            try:
                os.replace(tmp, target)
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
    """Return the split names under ``folder/qrels``; raise if the BEIR layout is incomplete or unreadable."""
    try:
        missing = [str(p) for p in (folder / "corpus.jsonl", folder / "queries.jsonl") if not p.is_file()]
        if not (folder / "qrels").is_dir():
            missing.append(f"{folder / 'qrels'}/")
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if not missing else []
        if not missing:  # an unreadable file fails here, before any reading or encoding
            for path in (folder / "corpus.jsonl", folder / "queries.jsonl", *(folder / "qrels" / f"{s}.tsv"
                                                                               for s in splits)):
                open(path, "rb").close()
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot read the BEIR folder ({type(exc).__name__}: {exc})") from exc
    if missing:
        raise DatasetError(f"{folder}: not a BEIR folder, missing {', '.join(missing)}")
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
    if embeddings is None:   # how long the encodes took, where they were timed (encodes cached before the log: none)
        logs = {"corpus": encode_stats(doc_emb), "queries": encode_stats(query_emb)}
        meta["encode"] = {k: v for k, v in logs.items() if v is not None}
    return RetrievalDataset(name=name, doc_ids=doc_ids, doc_emb=doc_emb, splits=splits, eval_split=eval_split,
                            doc_texts=doc_texts, meta=meta,
                            ignore_identical_ids=bool(entry.get("ignore_identical_ids", False)
                                                      if ignore_identical_ids is None else ignore_identical_ids))
