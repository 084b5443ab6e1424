"""Report plots (matplotlib, Agg canvas, no pyplot state): Okabe-Ito colours, one marker per family.

Colours are the Okabe & Ito (2008) colour-blind-safe set without yellow (too faint on white) and black (kept for the
Pareto front and the ``flat`` reference line); after six variants the line style changes. Legends list variants in
family order (reference, reconstruction, contrastive, distillation).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmark.report.tables import FAMILY_ORDER

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
LINESTYLES = ("-", ":", "-.", (0, (6, 1, 1, 1, 1, 1)))  # "--" is the Pareto front's
MARKERS = {"reference": "*", "reconstruction": "s", "contrastive": "^", "distillation": "o"}


def _lines(rows: pd.DataFrame, group: str, x: str):
    """Yield ``(label, rows sorted by x, colour, linestyle, marker)`` per ``group`` value, in family order."""
    order = rows.assign(_f=rows["family"].map(FAMILY_ORDER)).sort_values(["_f", group])
    styles = itertools.cycle([(c, ls) for ls in LINESTYLES for c in OKABE_ITO])
    for label in dict.fromkeys(order[group]):
        sub = rows[rows[group] == label].sort_values(x)
        color, ls = next(styles)
        yield label, sub, color, ls, MARKERS.get(sub["family"].iloc[0], "D")


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated by a faster-or-equal point of higher ``y`` (lower ``x`` is better), sorted by ``x``."""
    ordered = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    return ordered[ordered[y] > ordered[y].cummax().shift(fill_value=-float("inf"))]


def quality_vs_latency(points: pd.DataFrame, quality: str, budget: float, title: str, path: Path) -> Path | None:
    """One line per variant across its nprobe sweep (x = p50 ms, log), the Pareto front, the latency budget."""
    points = points.dropna(subset=["p50_ms", quality])
    if points.empty:
        return None
    fig, ax = _figure()
    for label, sub, color, ls, marker in _lines(points, "label", "p50_ms"):
        ax.plot(sub["p50_ms"], sub[quality], ls=ls, color=color, marker=marker, markersize=7, label=label)
    front = pareto_front(points, "p50_ms", quality)
    ax.step(front["p50_ms"], front[quality], where="post", ls="--", lw=1.5, color="black", label="Pareto front",
            zorder=5)
    if budget != float("inf"):
        ax.axvline(budget, color="grey", ls=":", lw=1.2, label=f"latency budget ({budget:.3g} ms)")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if points["p50_ms"].max() / points["p50_ms"].min() < 30 else NullFormatter())
    ax.set_xlabel("p50 latency per query (ms, log scale)")
    return _finish(fig, ax, quality, title, path)


def quality_vs_x(rows: pd.DataFrame, quality: str, group: str, x: str, xlabel: str, title: str, path: Path,
                 reference: float | None = None, log2: bool = False,
                 tick_text: Callable[[float], str] = str) -> Path | None:
    """One line per ``group`` value (a variant without the swept param) over ``x``; ``reference`` = flat."""
    rows = rows.dropna(subset=[x, quality])
    if rows.empty:
        return None
    fig, ax = _figure()
    for label, sub, color, ls, marker in _lines(rows, group, x):
        ax.plot(sub[x], sub[quality], ls=ls, color=color, marker=marker, markersize=7, label=label)
    if reference is not None and not pd.isna(reference):
        ax.axhline(reference, color="black", ls="--", lw=1.2, label=f"flat, uncompressed ({reference:.3f})")
    if log2:
        ax.set_xscale("log", base=2)
    ticks = sorted(rows[x].unique())
    ax.set_xticks(ticks, [tick_text(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    return _finish(fig, ax, quality, title, path)


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(8.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.grid(True, which="major", color="#dddddd", lw=0.6)
    return fig, ax


def _finish(fig: Figure, ax, quality: str, title: str, path: Path) -> Path:
    ax.set_ylabel(f"{quality} (mean over seeds)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
