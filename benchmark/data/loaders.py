"""Dataset names -> loaders: the one table that maps a name to the function loading it, and its options.

A name is an exact name (``synthetic``, ``synthetic:quick``, ``msmarco``) or a prefix form (``beir/<name>``,
``beir:<folder-or-zip>``, ``npy:<dir>``); :func:`resolve` is the one place a name is dispatched, and an unknown name is
answered with its close matches. Each loader declares its options as typed :class:`~benchmark.params.Param`
(type, default, description, range); :func:`check_dataset` validates a dataset spec's options before any loading,
and every loader also takes ``dev_queries`` / ``dev_seed`` (:data:`COMMON_OPTIONS`, see
:func:`~benchmark.data.dataset.carve_dev`).

An option is set in a config under ``[datasets.<alias>]`` (``drop_unknown_qrels = true``) or on the command line
(``--dataset-opt drop_unknown_qrels=true``); :func:`parse_dataset_opt` reads the command-line form.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

from benchmark.data import beir, npy, synthetic
from benchmark.data.catalog import catalog_names, catalog_rows, check_catalog_name, did_you_mean, load_catalog
from benchmark.data.dataset import DatasetError, RetrievalDataset, carve_dev
from benchmark.data.encode import cache_root
from benchmark.params import Param, describe

COMMON_OPTIONS: dict[str, Param] = {
    "dev_queries": Param(0, "hold out this many labeled train queries (seeded) as split dev and evaluate on it "
                            "instead of test (0: off)", min=0),
    "dev_seed": Param(0, "seed of the dev_queries draw", min=0),
    "teacher": Param("exact", "how the dense teacher's top-K of the training queries is mined: exact (a chunked "
                              "scan of every doc; faiss-GPU with --device cuda) or ivf (an IVF-SQ8 index over the "
                              "corpus, d bytes per doc, built once and cached; its recall against exact is measured on a "
                              "sample and recorded)", choices=("exact", "ivf")),
    "teacher_nlist": Param(0, "lists of the ivf teacher (0: 4 * sqrt(docs), rounded to a power of two)", min=0),
    "teacher_nprobe": Param(0, "lists the ivf teacher probes (0: calibrated, the smallest power of two whose "
                               "recall@K reaches teacher_recall on 500 sampled train queries)", min=0),
    "teacher_recall": Param(0.96, "the recall@K against exact that a calibrated ivf teacher nprobe reaches (on "
                                  "other queries than the 1,000 its recorded recall is measured on)",
                            min=0.0, max=1.0, min_exclusive=True),
}
HOW_TO_SET = ("set an option under [datasets.<alias>] in a config file (drop_unknown_qrels = true) or on the command "
              "line (--dataset-opt drop_unknown_qrels=true)")


@dataclass(frozen=True)
class DatasetLoader:
    """One row of :data:`LOADERS`.

    ``key``: the exact name, or the prefix when ``prefix`` (the rest of the name is the loader's argument).
    ``form``: the name as users write it (``npy:<dir>``). ``load(name, rest, options)`` gets every option of
    ``options`` filled (declared defaults for those not given). ``check_name(rest)``: the name alone (no file
    access beyond the catalog); ``check(label, rest, options)``: cheap checks of the files named and the option
    values together. Both run before any loading. ``rows()``: the ``--list-datasets`` rows; ``names()``: concrete
    names offered as close matches.
    """

    key: str
    prefix: bool
    form: str
    load: Callable[[str, str, dict[str, Any]], RetrievalDataset]
    options: Mapping[str, Param]
    rows: Callable[[], list[tuple[str, str]]]
    check: Callable[[str, str, dict[str, Any]], None] | None = None
    check_name: Callable[[str], None] | None = None
    names: Callable[[], list[str]] = list

    def all_options(self) -> dict[str, Param]:
        return {**self.options, **COMMON_OPTIONS}


# ------------------------------------------------------------------ the loaders

def _synthetic_load(name: str, rest: str, options: dict[str, Any]) -> RetrievalDataset:
    return synthetic.make_synthetic(name=name, **options)


def _synthetic_rows(preset: str, name: str) -> list[tuple[str, str]]:
    p = {k: v.default for k, v in synthetic.preset_options(preset).items()}
    return [(name, f"embedded deterministic synthetic retrieval data: {p['num_docs']:,} docs x {p['dim']}-d, "
                   f"{p['num_train']:,} train / {p['num_unlabeled']:,} unlabeled / {p['num_test']:,} test queries")]


def _beir_load(name: str, rest: str, options: dict[str, Any]) -> RetrievalDataset:
    return beir.load_beir_dataset(name, **options)


def _beir_path_check(label: str, rest: str, options: dict[str, Any]) -> None:
    src = Path(rest).expanduser()
    if not (src.is_dir() or src.is_file() and src.suffix.lower() == ".zip"):
        hint = did_you_mean(rest, list(load_catalog()), "beir/") if "/" not in rest else ""
        raise DatasetError(f"dataset {label!r}: {src}: no such folder or .zip file (expected BEIR layout: "
                           f"corpus.jsonl, queries.jsonl, qrels/<split>.tsv){hint}")


def _npy_load(name: str, rest: str, options: dict[str, Any]) -> RetrievalDataset:
    return npy.load_npy_dataset(rest, name=name, **options)


def _npy_check(label: str, rest: str, options: dict[str, Any]) -> None:
    root = Path(rest).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset {label!r}: npy dataset folder {root} does not exist (expected corpus.npy + "
                           f"corpus_ids.txt, queries.npy + queries_ids.txt, qrels/<split>.tsv)")


def _synthetic_check(label: str, rest: str, options: dict[str, Any]) -> None:
    synthetic.check_options(label, options)


def _cached_beir() -> Path:
    return cache_root() / "beir"


LOADERS: tuple[DatasetLoader, ...] = (
    *(DatasetLoader(key, False, key, _synthetic_load, synthetic.preset_options(preset),
                    partial(_synthetic_rows, preset, key), _synthetic_check)
      for preset, key in ((p, "synthetic" if p == "default" else f"synthetic:{p}")
                          for p in synthetic.SYNTHETIC_PRESETS)),
    DatasetLoader("msmarco", False, "msmarco", _beir_load, beir.OPTIONS,
                  lambda: catalog_rows(["msmarco"], _cached_beir())),
    DatasetLoader("beir/", True, "beir/<name>", _beir_load, beir.OPTIONS,
                  lambda: catalog_rows([n for n in load_catalog() if n != "msmarco"], _cached_beir()),
                  check_name=check_catalog_name, names=catalog_names),
    DatasetLoader("beir:", True, "beir:<folder-or-zip>", _beir_load, beir.OPTIONS,
                  lambda: [("beir:<folder-or-zip>", "any folder or .zip in BEIR layout (corpus.jsonl, queries.jsonl, "
                                                    "qrels/)")],
                  _beir_path_check),
    DatasetLoader("npy:", True, "npy:<dir>", _npy_load, npy.OPTIONS,
                  lambda: [("npy:<dir>", "your own embeddings: corpus.npy + corpus_ids.txt, queries.npy + "
                                         "queries_ids.txt, qrels/<split>.tsv (see benchmark.data.npy)")],
                  _npy_check),
)


# ------------------------------------------------------------------ resolving names and options

def dataset_forms() -> str:
    """The valid name forms, for error messages."""
    return ", ".join(repr(entry.form) for entry in LOADERS)


def resolve(name: str) -> tuple[DatasetLoader, str]:
    """``(loader, rest of the name after its prefix)``; an unknown name raises with its close matches."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; valid forms: {dataset_forms()}")
    for entry in LOADERS:
        if not entry.prefix and name == entry.key:
            return entry, ""
    for entry in sorted((e for e in LOADERS if e.prefix), key=lambda e: -len(e.key)):
        if name.startswith(entry.key) and len(name) > len(entry.key):
            return entry, name[len(entry.key):]
    shown = {entry.key: entry.form for entry in LOADERS}  # a bare prefix ("npy:") is shown as its form
    for entry in LOADERS:
        shown.update((n, n) for n in entry.names())
    hint = did_you_mean(name, list(shown))
    for key, form in shown.items():
        hint = hint.replace(repr(key), repr(form))
    raise DatasetError(f"unknown dataset {name!r}{hint}; valid forms: {dataset_forms()}")


def dataset_options(name: str) -> dict[str, Param]:
    """The options dataset ``name`` takes (its loader's, then ``dev_queries``/``dev_seed``), defaults as for it."""
    return resolve(name)[0].all_options()


def describe_dataset_options(name: str) -> list[str]:
    """One line per option of ``name``: ``key=default  (expected)  description``."""
    return describe(dataset_options(name))


def check_dataset(name: str, options: Mapping[str, Any] | None = None, label: str | None = None,
                  check_paths: bool = True) -> dict[str, Any]:
    """Validate a dataset spec before any loading; return every option's value (defaults filled in).

    Raises one :class:`DatasetError` for an unknown name (with close matches) or listing, one per line, every
    unknown option (with close matches), every value of the wrong type or out of range, and the loader's own checks
    (catalog name, folder exists, option combinations; skipped with ``check_paths=False``, for planning a config
    away from its data). ``label`` (e.g. a config alias) names the dataset in the messages; default ``name``.
    """
    entry, rest = _resolve_name(name)
    label = name if label is None else label
    declared = entry.all_options()
    problems = []
    values = {k: p.default for k, p in declared.items()}
    for key, value in (options or {}).items():
        if key not in declared:
            problems.append(f"dataset {label!r}: unknown option {key!r}{did_you_mean(key, list(declared))}; options "
                            f"of {entry.form}: {', '.join(declared)}; {HOW_TO_SET}")
            continue
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        try:
            values[key] = declared[key].validate(value)
        except ValueError:
            problems.append(f"dataset {label!r} option {key}: expected {declared[key].expected()}, got {value!r}")
    if problems:
        raise DatasetError("\n".join(problems))
    if check_paths and entry.check is not None:
        entry.check(label, rest, {k: v for k, v in values.items() if k in entry.options})
    return values


def check_dataset_name(name: str) -> None:
    """Raise :class:`DatasetError` (close matches, the valid forms) unless ``name`` is a valid dataset name.

    The name alone: a folder named by ``npy:<dir>`` / ``beir:<path>`` is checked by :func:`check_dataset`."""
    _resolve_name(name)


def _resolve_name(name: str) -> tuple[DatasetLoader, str]:
    entry, rest = resolve(name)
    if entry.check_name is not None:
        entry.check_name(rest)
    return entry, rest


def parse_dataset_opt(name: str, text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line -> ``(key, value)`` typed as dataset ``name`` declares ``key``.

    ``true``/``false`` for bool, ``none`` for an option whose default is None; a str value is taken as written.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DatasetError(f"--dataset-opt {text!r}: expected KEY=VALUE, e.g. drop_unknown_qrels=true")
    declared = dataset_options(name)
    if key not in declared:
        raise DatasetError(f"--dataset-opt {text!r}: dataset {name!r} has no option {key!r}"
                           f"{did_you_mean(key, list(declared))}; options: {', '.join(declared)}")
    p = declared[key]
    raw = raw.strip()
    if None in p.special and raw.lower() in ("none", "null"):
        return key, None
    t = p.type
    try:
        if t is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return key, raw.lower() == "true"
        if t is int:
            return key, int(raw)
        if t is float:
            return key, float(raw)
    except ValueError:
        raise DatasetError(f"--dataset-opt {text!r}: dataset {name!r} option {key}: expected {p.expected()}, "
                           f"got {raw!r}") from None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        raw = raw[1:-1]
    return key, raw


def load_dataset(name: str, **options: Any) -> RetrievalDataset:
    """Load a dataset by name (forms: :func:`dataset_forms`), after :func:`check_dataset` validated its options.

    - ``synthetic`` (``synthetic:quick``): the embedded deterministic generator; options are its parameters.
    - ``beir/<name>`` or ``beir:<folder-or-zip>``: a BEIR dataset (catalog name, folder or .zip), encoded with a
      sentence-transformers model (``model``) unless precomputed ``embeddings`` are given.
    - ``msmarco``: MS MARCO passage via the BEIR loader (dev = dev.small; TREC DL 19/20 if present).
    - ``npy:<dir>``: your own embeddings (see :mod:`benchmark.data.npy`).

    ``dev_queries`` > 0 evaluates on that many labeled train queries held out from training (:func:`carve_dev`,
    seeded by ``dev_seed``) instead of the test split: the split to tune hyper-parameters on.
    """
    values = check_dataset(name, options)
    entry, rest = resolve(name)
    ds = entry.load(name, rest, {k: v for k, v in values.items() if k in entry.options})
    ds = carve_dev(ds, values["dev_queries"], values["dev_seed"]) if values["dev_queries"] else ds
    ds.meta["teacher"] = {"kind": values["teacher"], "nlist": values["teacher_nlist"],
                          "nprobe": values["teacher_nprobe"], "recall": values["teacher_recall"]}
    return ds


def list_datasets() -> list[tuple[str, str]]:
    """``(name, short description)`` rows for ``--list-datasets``, in table order; ``[cached]`` marks BEIR data
    already on disk."""
    return [row for entry in LOADERS for row in entry.rows()]
