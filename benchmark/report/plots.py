"""Report plots (matplotlib, Agg canvas, no pyplot state), one panel per code-budget track.

Style: colour = family (Okabe & Ito 2008 colour-blind-safe hues; black is the exact-search reference and the Pareto
front), marker = method, line style and a darker/lighter shade of the family hue = variant of the same
method. Every figure has one legend, grouped by family
(a bold family heading above its variants), so a panel may hold more than 8 series and stay readable; a variant keeps
its style in every panel and every figure of a report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from benchmark._io import atomic_path
from benchmark.registry import FAMILIES, REFERENCE_FAMILY
from benchmark.report.tables import FAMILY_ORDER, pareto_bytes, pareto_front, track_name

# Okabe-Ito hues given to the non-reference families of FAMILIES in registry order (reconstruction blue,
# score-aware green, contrastive vermillion, distillation reddish purple, then orange, sky blue, grey)
PALETTE = ("#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9", "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
LINESTYLES = ("-", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
SHADES = (0.0, -0.4, 0.4, -0.65, 0.6, -0.2, 0.2)  # variant k of a method: darker/lighter family hue
PANEL_W, PANEL_H, COLS = 4.2, 4.2, 3
DPI = 110


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    linestyle: object


def family_colour(family: str) -> str:
    """Black for the reference; else the family's hue by its position in FAMILIES (grey if unregistered)."""
    if family == REFERENCE_FAMILY:
        return "#000000"
    others = [f for f in FAMILIES if f != REFERENCE_FAMILY]
    return PALETTE[others.index(family) % len(PALETTE)] if family in others else "#777777"


def styles(rows: pd.DataFrame) -> dict[str, Style]:
    """A style per ``tlabel`` of ``rows`` (compressed rows): family colour, method marker, variant line style."""
    order = rows.drop_duplicates("tlabel").assign(_f=lambda d: d["family"].map(FAMILY_ORDER).fillna(99))
    order = order.sort_values(["_f", "method", "tlabel"])
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(dict.fromkeys(order["method"]))}
    out, seen = {}, {}
    for tlabel, method, family in zip(order["tlabel"], order["method"], order["family"]):
        k = seen.get(method, 0)
        seen[method] = k + 1
        out[tlabel] = Style(shade(family_colour(family), SHADES[k % len(SHADES)]), markers[method],
                            LINESTYLES[k % len(LINESTYLES)])
    return out


def shade(colour: str, amount: float) -> str:
    """``colour`` mixed with white (``amount`` > 0) or black (< 0) by ``|amount|``: variants of one method."""
    rgb = to_rgb(colour)
    target = 1.0 if amount > 0 else 0.0
    return to_hex(tuple(c + (target - c) * abs(amount) for c in rgb))


def _panels(n: int, sharey: bool = True) -> tuple[Figure, list]:
    cols = min(n, COLS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_W * cols, PANEL_H * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharey=sharey, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:
        ax.grid(True, which="major", color="#dddddd", lw=0.6)
    return fig, axes[:n]


def _legend(fig: Figure, rows: pd.DataFrame, style: dict[str, Style], extra: list[tuple[Line2D, str]]) -> None:
    """One figure legend right of the panels: a bold heading per family, then its variants; then ``extra``."""
    handles, labels, headings = [], [], []
    present = rows.drop_duplicates("tlabel")
    for family in sorted(present["family"].unique(), key=lambda f: FAMILY_ORDER.get(f, 99)):
        headings.append(len(labels))
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(family)
        for tlabel in [t for t in style if t in set(present.loc[present["family"] == family, "tlabel"])]:
            s = style[tlabel]
            handles.append(Line2D([], [], color=s.colour, marker=s.marker, linestyle=s.linestyle, markersize=6))
            labels.append(tlabel)
    if extra:
        headings.append(len(labels))
        handles.append(Line2D([], [], linestyle="none"))
        labels.append("reading aids")
        for handle, label in extra:
            handles.append(handle)
            labels.append(label)
    # room for the legend beside the panels: ~0.062 in per character at 8 pt, ~0.17 in per entry
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 0.9 + 0.062 * max(map(len, labels)), max(height, 0.8 + 0.17 * len(labels)))
    legend = fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False, handlelength=2.6,
                        labelspacing=0.35)
    for i in headings:
        legend.get_texts()[i].set_fontweight("bold")


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _log_x(ax) -> None:
    """Log x axis labelled at 1-2-5 steps in plain numbers (no 10^x, no crowded minor labels)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _aids(reference: float | None, budget: float | None, front: bool) -> list[tuple[Line2D, str]]:
    out: list[tuple[Line2D, str]] = []
    if reference is not None:
        out.append((Line2D([], [], color="black", lw=1.2), f"exact search ({reference:.3f})"))
    if front:
        out.append((Line2D([], [], color="black", ls="--", lw=1.6, alpha=0.6), "Pareto front of the panel"))
    if budget is not None:
        out.append((Line2D([], [], color="grey", ls=":", lw=1.4), f"latency budget ({budget:.3g} ms)"))
    return out


def _track_panels(points: pd.DataFrame, x: str, y: str) -> tuple[Figure, dict[str, Style], list]:
    """A panel per track with each variant's operating points drawn as a line (sorted by ``x``) in its style;
    returns the figure, the styles and ``(axis, track, the track's points)`` per panel, for the caller's extras."""
    tracks = sorted(points["track"].unique())
    style = styles(points)
    fig, axes = _panels(len(tracks))
    panels = []
    for ax, track in zip(axes, tracks):
        sub = points[points["track"] == track]
        for tlabel, s in style.items():
            line = sub[sub["tlabel"] == tlabel].sort_values(x)
            if not line.empty:
                ax.plot(line[x], line[y], color=s.colour, marker=s.marker, ls=s.linestyle, markersize=5, lw=1.3)
        panels.append((ax, track, sub))
    return fig, style, panels


def tracks_vs_latency(points: pd.DataFrame, quality: str, budget: float, reference: float | None, title: str,
                      path: Path) -> Path | None:
    """Small multiples: a panel per track; each variant's nprobe sweep (x = p50 ms, log), the panel's Pareto
    front, the latency budget and the exact-search reference."""
    points = points.dropna(subset=["track", "p50_ms", quality])
    if points.empty:
        return None
    fig, style, panels = _track_panels(points, "p50_ms", quality)
    for ax, track, sub in panels:
        front = pareto_front(sub, "p50_ms", quality)
        ax.step(front["p50_ms"], front[quality], where="post", ls="--", lw=1.6, color="black", alpha=0.6, zorder=5)
        if math.isfinite(budget):
            ax.axvline(budget, color="grey", ls=":", lw=1.4)
        if reference is not None:
            ax.axhline(reference, color="black", lw=1.2)
        _log_x(ax)
        ax.set_title(f"{track_name(track)}/vector")
        ax.set_xlabel("p50 latency per query (ms, log)")
    panels[0][0].set_ylabel(f"{quality} (mean over seeds)")
    _legend(fig, points, style, _aids(reference, budget if math.isfinite(budget) else None, True))
    fig.suptitle(title)
    return _save(fig, path)


def tracks_recall_qps(points: pd.DataFrame, fidelity: str, target: float, title: str, path: Path) -> Path | None:
    """ann-benchmarks style, a panel per track: x = ``fidelity`` (overlap with the exact top-k, i.e. recall of the
    dense ranking), y = single-thread queries per second (1000 / p50 ms, log); each variant's nprobe sweep, the
    panel's Pareto front (no point both more faithful and faster) and the fidelity target of the QPS ranking."""
    points = points.dropna(subset=["track", "p50_ms", fidelity]).query("p50_ms > 0")
    points = points[points["family"] != REFERENCE_FAMILY].assign(qps1=lambda d: 1e3 / d["p50_ms"])
    if points.empty:
        return None
    fig, style, panels = _track_panels(points, fidelity, "qps1")
    for ax, track, sub in panels:
        front = qps_front(sub, fidelity)
        ax.step(front[fidelity], front["qps1"], where="pre", ls="--", lw=1.6, color="black", alpha=0.6, zorder=5)
        ax.axvline(target, color="grey", ls=":", lw=1.4)
        ax.set_yscale("log")
        ax.set_title(f"{track_name(track)}/vector")
        ax.set_xlabel(f"{fidelity} (agreement with the exact top-k)")
    panels[0][0].set_ylabel("queries per second, 1 thread (log)")
    _legend(fig, points, style, [(Line2D([], [], color="black", ls="--", lw=1.6, alpha=0.6),
                                  "Pareto front of the panel"),
                                 (Line2D([], [], color="grey", ls=":", lw=1.4), f"target {fidelity} ≥ {target:g}")])
    fig.suptitle(title)
    return _save(fig, path)


def qps_front(points: pd.DataFrame, fidelity: str) -> pd.DataFrame:
    """Points no other point beats on both ``fidelity`` and ``qps1`` (higher is better on both), by fidelity."""
    ordered = points.dropna(subset=[fidelity, "qps1"]).sort_values([fidelity, "qps1"], ascending=[False, False])
    front = ordered[ordered["qps1"] > ordered["qps1"].cummax().shift(fill_value=-math.inf)]
    return front.sort_values(fidelity)


def quality_vs_bytes(rows: pd.DataFrame, quality: str, reference: float | None, title: str,
                     path: Path, peers: Sequence[tuple[str, float, float | None]] = ()) -> Path | None:
    """Quality vs code bytes/vector (log2 x): every compressed variant, the Pareto front, the exact-search reference,
    and ``peers`` (name, bytes/vector, quality: other implementations) as labelled black stars.
    None unless the rows hold >= 2 code sizes."""
    rows = rows.dropna(subset=["track", quality])
    if rows["track"].nunique() < 2:
        return None
    style = styles(rows)
    fig, (ax,) = _panels(1)
    fig.set_size_inches(PANEL_W * 1.5, PANEL_H * 1.15)
    for tlabel, s in style.items():
        line = rows[rows["tlabel"] == tlabel].sort_values("bytes_per_vector")
        ax.plot(line["bytes_per_vector"], line[quality], color=s.colour, marker=s.marker, ls=s.linestyle,
                markersize=6, lw=1.2)
    front = pareto_bytes(rows, quality)
    ax.plot(front["bytes_per_vector"], front[quality], ls="--", lw=1.6, color="black", alpha=0.6)
    if reference is not None:
        ax.axhline(reference, color="black", lw=1.2)
    for name, x, y in peers:
        if y is not None:
            ax.plot([x], [y], marker="*", markersize=11, color="black", ls="none", zorder=5)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7)
    ax.set_xscale("log", base=2)
    ticks = sorted(rows["bytes_per_vector"].unique())
    ax.set_xticks(ticks, [f"{t:g}" if i == 0 or t >= 1.2 * ticks[i - 1] else "" for i, t in enumerate(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("code size (bytes per vector, log2)")
    ax.set_ylabel(f"{quality} (mean over seeds)")
    _legend(fig, rows, style, _aids(reference, None, True))
    fig.suptitle(title)
    return _save(fig, path)


def label_budget(rows: pd.DataFrame, quality: str, reference: float | None, title: str,
                 path: Path) -> Path | None:
    """Per track, ``quality`` vs ``label_fraction`` (mean ± std over seeds) of every variant run at >= 2
    fractions; the best variant of each other family without a label fraction as a flat line. None when no
    variant was run at >= 2 fractions."""
    rows = rows.dropna(subset=["track", quality])
    counts = rows.dropna(subset=["label_fraction"]).groupby(["track", "base_label_fraction"])["label_fraction"]
    swept = counts.nunique()
    swept = swept[swept >= 2]
    if swept.empty:
        return None
    tracks = sorted({t for t, _ in swept.index})
    curves = rows[rows.set_index(["track", "base_label_fraction"]).index.isin(swept.index)]
    # a swept variant's run without the param trains on every labeled query: its point sits at 100%
    curves = curves.assign(label_fraction=curves["label_fraction"].fillna(1.0))
    style = styles(curves.assign(tlabel=curves["base_label_fraction"]))
    fig, axes = _panels(len(tracks))
    flat_handles = []
    for ax, track in zip(axes, tracks):
        sub = curves[curves["track"] == track]
        for base, line in sub.groupby("base_label_fraction"):
            s, line = style[base], line.sort_values("label_fraction")
            ax.errorbar(line["label_fraction"], line[quality], yerr=line[f"{quality}_std"].fillna(0.0),
                        color=s.colour, marker=s.marker, ls=s.linestyle, markersize=5, capsize=3, lw=1.3)
        others = rows[(rows["track"] == track) & rows["label_fraction"].isna()
                      & ~rows["family"].isin(sub["family"].unique())]
        for family, fam in others.groupby("family"):
            best = fam.loc[fam[quality].idxmax()]
            ax.axhline(best[quality], color=family_colour(family), ls="--", lw=1.2)
            ax.annotate(f"{best['tlabel']} (no label_fraction param)", (0.98, best[quality]),   # right: the
                        xycoords=("axes fraction", "data"), fontsize=7, color=family_colour(family), va="bottom",
                        ha="right")                                      # curves start low at the left
            flat_handles.append(family)
        if reference is not None:
            ax.axhline(reference, color="black", lw=1.2)
        ticks = sorted(sub["label_fraction"].dropna().unique())
        ax.set_xscale("log")   # fractions span 1% to 100%: log spacing keeps their ticks apart
        ax.set_xticks(ticks, [f"{t:.0%}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(f"{track_name(track)}/vector")
        ax.set_xlabel("fraction of labeled training queries")
    axes[0].set_ylabel(f"{quality} (mean ± std over seeds)")
    extra = _aids(reference, None, False)
    if flat_handles:
        extra.append((Line2D([], [], color="grey", ls="--", lw=1.2), "best of another family, no label_fraction"))
    _legend(fig, curves.assign(tlabel=curves["base_label_fraction"]), style, extra)
    fig.suptitle(title)
    return _save(fig, path)


def train_time(rows: pd.DataFrame, quality: str, reference: float | None, title: str, path: Path) -> Path | None:
    """Per track, quality vs training seconds (log x): one marker per variant."""
    rows = rows.dropna(subset=["track", quality, "train_seconds"])
    rows = rows[rows["train_seconds"] > 0]
    if rows.empty:
        return None
    tracks = sorted(rows["track"].unique())
    style = styles(rows)
    fig, axes = _panels(len(tracks))
    for ax, track in zip(axes, tracks):
        sub = rows[rows["track"] == track]
        for tlabel, s in style.items():
            point = sub[sub["tlabel"] == tlabel]
            if not point.empty:
                ax.errorbar(point["train_seconds"], point[quality], xerr=point["train_seconds_std"].fillna(0.0),
                            color=s.colour, marker=s.marker, ls="none", markersize=7, capsize=2)
        if reference is not None:
            ax.axhline(reference, color="black", lw=1.2)
        _log_x(ax)
        ax.set_title(f"{track_name(track)}/vector")
        ax.set_xlabel("training seconds (log scale)")
    axes[0].set_ylabel(f"{quality} (mean over seeds)")
    _legend(fig, rows, style, _aids(reference, None, False))
    fig.suptitle(title)
    return _save(fig, path)
