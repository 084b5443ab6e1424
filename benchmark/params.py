"""Typed build-time parameters (in the spirit of ir_measures' ``ParamInfo``): type, default, description, and the
allowed values or range, validated in one place with one clear error.

A method declares ``params = {"M": Param(16, "PQ sub-vectors (bytes per vector at 8 bits)", min=1), ...}``.
``validate`` checks a value (an int is a valid float; a string from the command line is parsed by the caller) and
raises :class:`ParamError` naming the method, the param, what was given and what is expected.
A plug-in that declares bare defaults (``params = {"M": 16}``) gets a ``Param`` inferred from each default.

A tunable param also declares its search space, ``Param(1e-3, "lr", min=0, search=Space(1e-4, 1e-2, log=True))`` or
``search=Space(choices=(1.0, 2.0))``: what the tuner (:mod:`benchmark.tune`) samples, the same for every method that
declares it, shown by ``--list-methods``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ParamError(ValueError):
    """A param value of the wrong type or outside its allowed values/range."""


_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Space:
    """A param's search space for the tuner: ``choices``, or a numeric range ``[low, high]`` (``log``: sampled on a
    log scale, as learning rates and temperatures are; an int param samples integers)."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ParamError("a Space is either choices=(...) or a range low, high")
        if self.choices is None and not (self.low < self.high and (not self.log or self.low > 0)):
            raise ParamError(f"a Space range needs low < high (and low > 0 on a log scale), got "
                             f"{self.low}, {self.high}")
        if self.choices is not None and not self.choices:
            raise ParamError("a Space needs at least one choice")

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(repr(c) for c in self.choices) + "}"
        return f"{'log-' if self.log else ''}[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Param:
    """One build-time parameter.

    ``dtype``: bool, int, float or str (inferred from ``default`` when omitted; ``None`` defaults need it).
    ``choices``: the allowed values (for a str or int param). ``min``/``max``: an inclusive range for numbers
    (``min_exclusive`` makes the lower bound strict, e.g. a learning rate > 0). ``special``: literal values allowed
    besides the typed ones (``None``, ``"auto"``, ``"reference"``), each with its meaning in ``desc``.
    ``search``: the :class:`Space` the tuner samples (None: not tuned).
    ``legacy``: for a param declared after records were written, the value(s) that do what the method did before it
    existed; at such a value the param is left out of a record's params and ids
    (:meth:`benchmark.registry.BaseMethod.record_params`), so those records still identify the same fit (resume skips
    them, reports group them with new ones). A preset may default to another value: then it is recorded.
    """

    default: Any
    desc: str = ""
    dtype: type | None = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    special: tuple[Any, ...] = field(default_factory=tuple)
    legacy: tuple[Any, ...] = ()
    search: Space | None = None

    def __post_init__(self) -> None:
        if self.search is not None and self.search.choices is not None:   # every choice must be a valid value
            for choice in self.search.choices:
                self.validate(choice, "search choice")
        elif self.search is not None:
            for bound in (self.search.low, self.search.high):
                self.validate(self.type(bound) if self.type in (int, float) else bound, "search bound")

    @property
    def type(self) -> type:
        if self.dtype is not None:
            return self.dtype
        if self.default is None:
            raise ParamError("a Param with default None needs a dtype")
        return type(self.default)

    def expected(self) -> str:
        """What a valid value looks like, for error messages and ``--list-methods``."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _TYPE_NAMES.get(self.type, self.type.__name__)
            lo = None if self.min is None else f"{'>' if self.min_exclusive else '>='} {self.min:g}"
            hi = None if self.max is None else f"<= {self.max:g}"
            bounds = " and ".join(b for b in (lo, hi) if b)
            text += f" {bounds}" if bounds else ""
        if self.special:
            text += " or " + ", ".join(repr(s) for s in self.special)
        return text

    def validate(self, value: Any, where: str = "param") -> Any:
        """Return ``value`` if it is valid (an int is a valid float, kept as given), else raise :class:`ParamError`."""
        if any(value is s or (value == s and type(value) is type(s)) for s in self.special):
            return value
        t = self.type
        ok = True
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)  # kept as given: run ids hash it
        elif t is str:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, t)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
                ok = False
            if self.max is not None and value > self.max:
                ok = False
        if not ok:
            raise ParamError(f"{where}={value!r}: expected {self.expected()}")
        return value


def as_param(value: Any) -> Param:
    """A declared ``Param`` as it is; a bare default becomes a ``Param`` of its type (a plug-in's shorthand)."""
    if isinstance(value, Param):
        return value
    return Param(value, dtype=None if value is not None else object)


def describe(params: dict[str, Param]) -> list[str]:
    """One line per param: ``name=default  (expected)  description  [tuned over <space>]``."""
    return [f"{name}={p.default!r}  ({p.expected()})  {p.desc}".rstrip()
            + (f"  [tuned over {p.search.describe()}]" if p.search is not None else "") for name, p in params.items()]


def search_space(params: dict[str, Param]) -> dict[str, Space]:
    """The tunable params of a declaration and their spaces."""
    return {name: p.search for name, p in params.items() if p.search is not None}
