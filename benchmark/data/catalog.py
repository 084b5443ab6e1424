"""``datasets/catalog.toml``: the BEIR datasets vqbench knows by name (``beir/<name>``, ``msmarco``).

Reading the catalog, naming its datasets (subsets expanded) and listing them; no loading happens here.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from urllib.parse import urlsplit

from benchmark.data.dataset import DatasetError
from benchmark.data.encode import REPO_ROOT

import tomllib

CATALOG_PATH = REPO_ROOT / "datasets" / "catalog.toml"


def load_catalog() -> dict[str, dict]:
    """``datasets/catalog.toml`` as ``{name: entry}``."""
    with open(CATALOG_PATH, "rb") as f:
        return tomllib.load(f)


def catalog_names(catalog: dict[str, dict] | None = None) -> list[str]:
    """Every loadable catalog name: ``msmarco`` and ``beir/<name>`` (``beir/<name>/<subset>`` for split datasets)."""
    catalog = load_catalog() if catalog is None else catalog
    names = []
    for name, e in catalog.items():
        if name == "msmarco":
            names.append(name)
        names += [f"beir/{name}/{s}" for s in e["subsets"]] if "subsets" in e else [f"beir/{name}"]
    return names


def did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    """``" (did you mean 'x'?)"`` (up to 3 close matches by :func:`difflib.get_close_matches`, each shown with
    ``prefix``), else ``""``."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)" if close else ""


def check_catalog_name(key: str, catalog: dict[str, dict] | None = None) -> tuple[str, str]:
    """Split ``<name>[/<subset>]`` (the part after ``beir/``) into ``(base, subset)``; raise with close matches."""
    catalog = load_catalog() if catalog is None else catalog
    base, _, subset = key.partition("/")
    if base not in catalog:
        raise DatasetError(f"unknown BEIR dataset {base!r}{did_you_mean(base, list(catalog), 'beir/')}; "
                           f"known: {sorted(catalog)} (or use beir:<folder-or-zip>)")
    subsets = catalog[base].get("subsets", [])
    if subsets and subset not in subsets:
        hint = did_you_mean(subset, subsets, f"beir/{base}/") if subset else ""
        raise DatasetError(f"beir/{base} is {len(subsets)} datasets evaluated separately: load beir/{base}/<subset> "
                           f"with <subset> in {subsets}{hint}")
    if subset and not subsets:
        raise DatasetError(f"beir/{base} has no subsets (got 'beir/{key}')")
    return base, subset


def catalog_label(name: str, entry: dict) -> str:
    """How ``name`` is loaded: ``msmarco``, ``beir/<name>`` or ``beir/<name>/<subset>``."""
    return name if name == "msmarco" else f"beir/{name}" + ("/<subset>" if "subsets" in entry else "")


def cache_state(folder: Path, entry: dict) -> str:
    """Whether catalog dataset ``entry`` is in ``folder`` (``<cache>/beir/<name>``, where the loader looks):
    ``"yes"``, ``"no"`` (the loader will download it), ``"incomplete (missing ...)"`` or ``"unreadable (...)"``
    (the loader will not download it and fails on it: delete the folder to download it again)."""
    try:
        if not folder.is_dir():
            return "no"
        parts = [folder / s for s in entry.get("subsets", [])] or [folder]
        missing = [f"{p.relative_to(folder.parent)}/{f}" for p in parts for f in ("corpus.jsonl", "queries.jsonl")
                   if not (p / f).is_file()]
        missing += [f"{p.relative_to(folder.parent)}/qrels/" for p in parts if not (p / "qrels").is_dir()]
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if missing:
        return f"incomplete (missing {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''})"
    return "yes"


def catalog_table(cache_dir: Path) -> list[tuple[str, str, str, str]]:
    """``(name, source, size, cached)`` per catalog dataset, in catalog order: source = the download URL's host or
    ``local`` (not public: built by hand, see its ``obtain``), size = docs and evaluation queries, cached =
    :func:`cache_state` of ``cache_dir/<name>`` (``cache_dir`` = the ``beir/`` folder of the data cache)."""
    rows = []
    for name, e in load_catalog().items():
        source = (urlsplit(e["url"]).hostname or e["url"]) if "url" in e else "local"
        size = f"{e['num_docs']:,} docs, {e['num_queries']:,} {e['eval_split']} queries"
        rows.append((catalog_label(name, e), source, size, cache_state(cache_dir / name, e)))
    return rows


def catalog_rows(names: list[str] | None = None, cache_dir: Path | None = None) -> list[tuple[str, str]]:
    """``(label, description)`` per catalog dataset (those in ``names`` if given); ``[cached]`` marks a dataset
    found complete under ``cache_dir`` (the ``beir/`` folder of the data cache)."""
    rows = []
    for name, e in load_catalog().items():
        if names is not None and name not in names:
            continue
        desc = f"{e['description']}; {e['num_docs']:,} docs, {e['num_queries']:,} {e['eval_split']} queries"
        if "url" not in e:
            desc += "; manual download"
        if cache_dir is not None and cache_state(cache_dir / name, e) == "yes":
            desc += " [cached]"
        rows.append((catalog_label(name, e), desc))
    return rows
