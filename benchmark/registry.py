"""The plug-in contract (modelled on ann-benchmarks' ``BaseANN``) and the method registry.

A method is one class: a ``name``, a ``family``, declared typed ``params`` (:class:`benchmark.params.Param`), and
``fit(train) -> VQParams | BuiltIndex``. It knows nothing about evaluation: the harness builds the faiss index from
the learned parameters (or takes the built one) and measures. Register with ``@register``;
classes in ``methods/*.py`` are discovered automatically, and other packages register through the entry-point group
``vqbench.methods`` (each entry point names a module to import or a ``BaseMethod`` subclass).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from benchmark.data.dataset import DocMatrix
from benchmark.params import Param, ParamError, as_param, describe
from benchmark.vq import BuiltIndex, VQParams

# The one list of method families (report order): every other module reads it from here.
FAMILIES = ("reference", "reconstruction", "score-aware", "contrastive", "distillation")
# What a method's ``reproducibility`` level promises (``--list-methods``).
REPRODUCIBILITY = {
    "exact": "bit-identical for the same seed and package versions, at any thread count",
    "threads": "bit-identical for the same seed, package versions and --threads; another thread count moves the last "
               "float bits, so near-ties may flip",
}
# The family whose method is uncompressed exact search (reports draw it as a line, never rank it in a budget).
REFERENCE_FAMILY = "reference"


class MethodError(ValueError):
    """A method was asked for something it cannot do (unknown param, bad value, missing labels, ...)."""


@dataclass(frozen=True)
class DataFacts:
    """What the checks before any training know of a dataset (read from the loaded dataset, nothing trained)."""

    dim: int
    num_docs: int
    labeled_queries: int | None = None    # train queries with qrels (None = unknown: not checked)
    unlabeled_queries: int | None = None  # train queries usable without labels (train + train-unlabeled)

    @classmethod
    def of(cls, train: "TrainData") -> "DataFacts":
        labeled = 0 if train.train_qrels is None or train.train_query_emb is None else len(train.train_query_emb)
        unlabeled = sum(len(a) for a in (train.train_query_emb, train.unlabeled_query_emb) if a is not None)
        return cls(train.dim, train.num_docs, labeled, unlabeled)


@dataclass
class TrainData(DocMatrix):
    """Everything a method may use to train. ``train_qrels`` is None in unlabeled settings; test data never appears."""

    doc_emb: np.ndarray
    doc_ids: list[str]
    train_query_emb: np.ndarray | None = None
    train_query_ids: list[str] | None = None
    train_qrels: dict[str, dict[str, int]] | None = None
    unlabeled_query_emb: np.ndarray | None = None
    seed: int = 0
    device: str = "cpu"
    cache_dir: str | None = None
    teacher: dict | None = None   # how the dense teacher's top-K is mined (dataset option; None = exact)


class BaseMethod:
    """Subclass, set ``name``/``family``/``params``, implement ``fit``. Params arrive as keyword arguments.

    ``params`` are *build-time* parameters (what ``fit`` needs), each a :class:`Param` (type, default,
    description, allowed values); a bare default is accepted and typed from itself. Search-time parameters
    (nprobe) belong to the harness: one trained index, many sweeps. The class docstring's first line is the
    method's description (``--list-methods``).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    # What decides whether its numbers repeat (``--list-methods`` shows it). "exact": bit-identical metrics for the
    # same seed and versions whatever the thread count (tests/test_determinism.py checks it on synthetic:quick 1 vs 2
    # threads). "threads": bit-identical for the same seed, versions and ``--threads``; another thread count changes
    # the last float bits somewhere (``reproducibility_note`` says where) and so, near a tie, a code or a list.
    reproducibility: ClassVar[str] = "exact"
    reproducibility_note: ClassVar[str] = ""
    # The method this one ablates (one of its parts switched off, e.g. a paper's ablation table): reports list it
    # apart from the ranked rows of a track, never in a tie group or a verdict ("" = a method of its own).
    ablation_of: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        declared = self.declared_params()
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise MethodError(f"method {self.name!r}: unknown param(s) {unknown}; valid params: "
                              f"{sorted(declared)}")
        config = {k: p.default for k, p in declared.items()}
        for key, value in params.items():
            try:
                config[key] = declared[key].validate(value, key)
            except ParamError as exc:
                raise MethodError(f"method {self.name!r}: {exc}") from None
        self.config: dict[str, Any] = config

    def record_params(self) -> dict[str, Any]:
        """The config as records keep it (their ``params``, hashed into fit and run ids): every param, except one
        at a ``legacy`` value (a later addition, set to what the method did before it existed)."""
        declared = self.declared_params()
        return {k: v for k, v in self.config.items()
                if not any(v == old and type(v) is type(old) for old in declared[k].legacy)}

    @classmethod
    def declared_params(cls) -> dict[str, Param]:
        """The build-time params as :class:`Param` declarations."""
        return {k: as_param(v) for k, v in cls.params.items()}

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def code_layout(self) -> tuple[int, int] | None:
        """(sub-quantizers, bits per code) of this configuration's PQ, or None without one. Default: ``M``
        sub-quantizers of 8 bits when the method declares ``M``; a method with another layout (4-bit fast-scan,
        ScaNN's 2*M blocks) overrides it, and :meth:`check_data` checks whichever layout it returns."""
        M = self.config.get("M")
        return (M, 8) if isinstance(M, int) and not isinstance(M, bool) else None

    def writeback_mode(self) -> str:
        """How this configuration's index will store the docs (:func:`benchmark.vq.build_index`: ``codes`` as
        trained, ``preassigned`` encoded into the trained lists, ``reencode`` assigned and encoded afresh); what the
        dry run counts for the index build. Default: the ``writeback`` param, else ``codes``."""
        return str(self.config.get("writeback", "codes"))

    def check_config(self) -> list[str]:
        """Problems of the configuration alone (combinations of params no single :class:`Param` can reject), one
        line each. Checked when the grid is planned (before any data is loaded) and again by :meth:`check_data`;
        override and extend ``super().check_config()``."""
        return []

    def labels_needed(self) -> bool:
        """True when this configuration trains on labeled train queries (qrels); checked before any training."""
        return False

    def check_data(self, data: DataFacts) -> list[str]:
        """Problems this configuration has with a dataset (:class:`DataFacts`), found before any training:
        :meth:`check_config`, the labels (:meth:`labels_needed`), and the data's size and dim.

        The default covers the shared params: the PQ layout (:meth:`code_layout`: the sub-quantizers divide the
        dim, and k-means of 2^bits codewords per sub-quantizer needs as many training points) and ``nlist`` (IVF
        k-means needs >= nlist training points); the training points are ``min(num_docs, max_train_points)`` when
        the method declares ``max_train_points``. Override (and extend ``super().check_data``) for other needs.
        """
        cfg, problems = self.config, self.check_config()
        dim, num_docs = data.dim, data.num_docs
        if self.labels_needed() and data.labeled_queries == 0:
            problems.append("needs labeled train queries (a train split with qrels), but this dataset has none; use "
                            "a method or setting that trains without labels")
        points = min(num_docs, cfg.get("max_train_points") or num_docs)
        layout = self.code_layout()
        if layout is not None:
            subs, bits = layout
            what = f"M={cfg.get('M')}" + (f" makes {subs} sub-quantizers of {bits} bits, which" if
                                           (subs, bits) != (cfg.get("M"), 8) else "")
            if subs < 1 or dim % subs:
                problems.append(f"{what} must be a positive divisor of the embedding dim {dim}")
            if points < 2 ** bits:
                problems.append(f"{bits}-bit PQ trains {2 ** bits} codewords per sub-quantizer by k-means and needs "
                                f">= {2 ** bits} training points; this corpus gives {points} ({num_docs} docs)")
        nlist = cfg.get("nlist")
        if isinstance(nlist, int) and not isinstance(nlist, bool) and not 1 <= nlist <= points:
            problems.append(f"nlist={nlist} must be in [1, {points}] (IVF k-means needs >= nlist training points; "
                            f"this corpus gives {points})")
        return problems

    def require_data(self, train: TrainData) -> None:
        """:meth:`check_data` for a ``fit`` called directly (the runner checks every job before any training, so
        there it finds nothing): one :class:`MethodError` listing the problems."""
        problems = self.check_data(DataFacts.of(train))
        if problems:
            raise MethodError(f"{self.name}: " + "; ".join(problems))

    def fit(self, train: TrainData) -> VQParams | BuiltIndex:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


_REGISTRY: dict[str, type[BaseMethod]] = {}
_DISCOVERED = False


def register(cls: type[BaseMethod]) -> type[BaseMethod]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    if not cls.name:
        raise MethodError(f"{cls.__name__} has no name")
    if cls.family not in FAMILIES:
        raise MethodError(f"{cls.__name__}.family must be one of {FAMILIES}, got {cls.family!r}")
    if cls.reproducibility not in REPRODUCIBILITY:
        raise MethodError(f"{cls.__name__}.reproducibility must be one of {tuple(REPRODUCIBILITY)}, got "
                          f"{cls.reproducibility!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        existing = _REGISTRY[cls.name]
        if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise MethodError(f"method name {cls.name!r} registered twice ({existing.__module__} and "
                              f"{cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def discover() -> None:
    """Import every module of the ``methods`` package and every ``vqbench.methods`` entry point (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import methods
    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    for ep in entry_points(group="vqbench.methods"):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, BaseMethod):
            register(obj)


def available() -> dict[str, type[BaseMethod]]:
    discover()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[BaseMethod]:
    methods = available()
    if name not in methods:
        near = difflib.get_close_matches(name, list(methods), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise MethodError(f"unknown method {name!r}{hint}; valid methods: {', '.join(methods)}")
    return methods[name]


def describe_methods() -> str:
    """Every registered method: name, family, description, then one line per param (default, expected, meaning)."""
    lines = []
    for name, cls in available().items():
        desc = cls.description if isinstance(cls.description, str) else cls.description()  # a plain attribute too
        lines.append(f"{name}  [{cls.family}]  {desc}")
        lines.append(f"    reproducible: {REPRODUCIBILITY[cls.reproducibility]}"
                     + (f" ({cls.reproducibility_note})" if cls.reproducibility_note else ""))
        if cls.ablation_of:
            lines.append(f"    an ablation of {cls.ablation_of}: listed apart from the ranked rows")
        params = cls.declared_params()
        lines += [f"    {line}" for line in describe(params)] if params else ["    (no params)"]
    return "\n".join(lines)


def make_method(name: str, params: dict[str, Any] | None = None) -> BaseMethod:
    """Instantiate a registered method; unknown names/params raise :class:`MethodError` listing the valid ones."""
    return get_method(name)(**(params or {}))


def ablation_of(name: str) -> str:
    """The method that registered method ``name`` ablates ("" for a method of its own or an unknown name)."""
    cls = available().get(name)
    return cls.ablation_of if cls is not None else ""
