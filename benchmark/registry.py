"""The plug-in contract (modelled on ann-benchmarks' ``BaseANN``) and the method registry.

A method is one class: a ``name``, a ``family``, declared ``params`` with defaults, and ``fit(train) -> VQParams``.
It knows nothing about evaluation: the harness builds the faiss index and measures. Register with ``@register``;
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

from benchmark.vq import VQParams

FAMILIES = ("reference", "reconstruction", "contrastive", "distillation")


class MethodError(ValueError):
    """A method was asked for something it cannot do (unknown param, missing labels, ...)."""


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
    threads: int = 0
    device: str = "cpu"
    dataset: str = ""
    cache_dir: str | None = None

    @property
    def dim(self) -> int:
        return int(self.doc_emb.shape[1])

    @property
    def num_docs(self) -> int:
        return int(self.doc_emb.shape[0])


class BaseMethod:
    """Subclass, set ``name``/``family``/``params``, implement ``fit``. Params arrive as keyword arguments.

    ``params`` are *build-time* parameters (what ``fit`` needs). Search-time parameters (nprobe) belong to the
    harness: one trained index, many sweeps.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise MethodError(f"method {self.name!r}: unknown params {unknown}; valid params: "
                              f"{sorted(self.params)}")
        self.config: dict[str, Any] = {**self.params, **params}

    def fit(self, train: TrainData) -> VQParams:
        raise NotImplementedError

    def exact(self) -> bool:
        """True for the uncompressed reference (the harness then searches an IndexFlatIP instead of a VQ)."""
        return False

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
