"""The plug-in contract (modelled on ann-benchmarks' ``BaseANN``) and the method registry.

A method is one class: a ``name``, a ``family``, declared typed ``params`` (:class:`benchmark.params.Param`), and
``fit(train) -> VQParams | BuiltIndex``. It knows nothing about evaluation: the harness builds the faiss index from
the learned parameters (or takes the built one) and measures. Register with ``@register``;
classes in ``methods/*.py`` are discovered automatically, and other packages register through the entry-point group
``vqbench.methods`` (each entry point names a module to import or a ``BaseMethod`` subclass).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from benchmark.params import Param, ParamError, as_param
from benchmark.vq import BuiltIndex, VQParams

# The one list of method families (report order): every other module reads it from here.
FAMILIES = ("reference", "reconstruction", "score-aware", "contrastive", "distillation")
# The family whose method is the uncompressed ceiling (reports draw it as a line, never rank it in a budget).
REFERENCE_FAMILY = "reference"


class MethodError(ValueError):
    """A method was asked for something it cannot do (unknown param, bad value, missing labels, ...)."""


@dataclass
class TrainData:
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

    @property
    def dim(self) -> int:
        return int(self.doc_emb.shape[1])

    @property
    def num_docs(self) -> int:
        return int(self.doc_emb.shape[0])


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

    @classmethod
    def declared_params(cls) -> dict[str, Param]:
        """The build-time params as :class:`Param` declarations."""
        return {k: as_param(v) for k, v in cls.params.items()}

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

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
        raise MethodError(f"unknown method {name!r}; valid methods: {', '.join(methods)}")
    return methods[name]


def make_method(name: str, params: dict[str, Any] | None = None) -> BaseMethod:
    """Instantiate a registered method; unknown names/params raise :class:`MethodError` listing the valid ones."""
    return get_method(name)(**(params or {}))
