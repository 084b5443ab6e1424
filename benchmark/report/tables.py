"""Leaderboard tables from results records: flatten, label variants, average over seeds, pick nprobe, format, write.

A *variant* is a method plus the params that tell its rows apart. Its label shows the params that take several
values within at least one dataset (``distill-vq (M=16)``): the same variant gets the same label on every dataset,
even when a dataset-dependent param (e.g. nlist) differs between datasets.

Latency budget (default): the p50 latency of the uncompressed reference (``flat``) on the same dataset, i.e. a
compressed index may not be slower than exhaustive search; without a ``flat`` record, the median p50 over all
measured points of the dataset. Each IVF variant is shown at its best nprobe (highest mean quality, ties -> faster)
among those with mean p50 <= budget; when none fits, its fastest nprobe is shown and flagged.

Fixed nprobe (default): the nprobe of each sweep closest to nlist/16 (in log2 distance, ties -> the larger).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmark.records import FIDELITY, MEASURES

NUMERIC = (*MEASURES, *FIDELITY, "p50_ms", "p95_ms", "qps", "train_seconds")
FAMILY_ORDER = {"reference": 0, "reconstruction": 1, "contrastive": 2, "distillation": 3}
DASH = "—"
PAPER_METRICS = ("nDCG@10", "RR@10", "R@100")
# label columns without the swept params: one row per "method" of a sweep table
SWEEPS = {"base_code_size": ("M", "nbits"), "base_label_fraction": ("label_fraction",),
          "base_ablation": ("loss", "candidates")}
DISPLAY = (("nDCG@10", 3), ("RR@10", 3), ("R@10", 3), ("R@100", 3), ("overlap@10", 3))


# ---------------------------------------------------------------- loading and labels

def load_frame(records: list[dict[str, Any]], run_dir: Path) -> pd.DataFrame:
    """One row per record, nested fields flattened; ``per_query`` becomes an absolute path (or None)."""
    df = pd.DataFrame([_flatten(rec, Path(run_dir)) for rec in records])
    splits = df.groupby("dataset")["split"].transform("nunique")
    df["dataset"] = df["dataset"].where(splits == 1, df["dataset"] + " (" + df["split"] + ")")
    keys = varying_params(df)
    df["label"] = variant_labels(df, keys)
    for column, dropped in SWEEPS.items():
        df[column] = variant_labels(df, keys, dropped)
    return df


def _flatten(rec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    index, latency = rec.get("index") or {}, rec.get("latency") or {}
    values = {**(rec.get("metrics") or {}), **(rec.get("fidelity") or {}), **latency}
    sidecar = rec.get("per_query")
    row = {"dataset": rec["dataset"], "split": rec["split"], "method": rec["method"], "family": rec["family"],
           "params": rec["params"], "seed": rec["seed"], "nprobe": _num(rec["nprobe"]),
           "nlist": _num(index.get("nlist")), "bytes_per_vector": _num(index.get("bytes_per_vector")),
           "label_fraction": _num(rec["params"].get("label_fraction")), "status": rec["status"],
           "error": rec.get("error") or "", "per_query": str(run_dir / sidecar) if sidecar else None,
           "train_seconds": _num(rec.get("train_seconds")),
           "git_sha": str((rec.get("provenance") or {}).get("git_sha") or "")}
    row.update({key: _num(values.get(key)) for key in NUMERIC if key != "train_seconds"})
    return row


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def varying_params(df: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the param names that take at least two values within some dataset."""
    out: dict[str, list[str]] = {}
    for method, sub in df.groupby("method"):
        names = sorted({name for params in sub["params"] for name in params})
        out[method] = [name for name in names
                       if any(part["params"].map(lambda p, n=name: _fmt(p.get(n))).nunique() > 1
                              for _, part in sub.groupby("dataset"))]
    return out


def variant_labels(df: pd.DataFrame, keys: dict[str, list[str]], drop: tuple[str, ...] = ()) -> pd.Series:
    """``method (k=v, ...)`` over the varying params ``keys`` of each method, minus ``drop``."""
    def label(method: str, params: dict[str, Any]) -> str:
        shown = [f"{k}={_fmt(params[k])}" for k in keys.get(method, []) if k in params and k not in drop]
        return f"{method} ({', '.join(shown)})" if shown else method
    return pd.Series([label(m, p) for m, p in zip(df["method"], df["params"])], index=df.index, dtype=object)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------- seed aggregation and nprobe selection

def aggregate_points(df: pd.DataFrame) -> pd.DataFrame:
    """Ok records averaged over seeds: one row per (dataset, label, nprobe) with means, ``<col>_std``,
    ``n_seeds`` and the list of per-query sidecars."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*df.columns, *(f"{c}_std" for c in NUMERIC), "n_seeds"])
    groups = ok.groupby(["dataset", "label", "nprobe"], dropna=False, sort=True)
    first = groups[["method", "family", "params", "nlist", "bytes_per_vector", "label_fraction", *SWEEPS]].first()
    numeric = list(NUMERIC)
    parts = [first, groups[numeric].mean(), groups[numeric].std().add_suffix("_std"),
             groups["seed"].nunique().rename("n_seeds"),
             groups["per_query"].apply(lambda s: [p for p in s if p]).rename("per_query")]
    return pd.concat(parts, axis=1).reset_index()


def default_budget(points: pd.DataFrame, dataset: str) -> tuple[float, str]:
    """``(budget_ms, how)``: the p50 of ``flat`` on ``dataset``, else the median p50 of its points (see module doc)."""
    sub = points[points["dataset"] == dataset]
    flat = sub.loc[sub["method"] == "flat", "p50_ms"].dropna()
    if not flat.empty:
        return float(flat.median()), "default: the p50 of `flat` on this dataset"
    p50 = sub["p50_ms"].dropna()
    if not p50.empty:
        return float(p50.median()), "default: the median p50 of all points (no `flat` record)"
    return math.inf, "no latency measured"


def select_budget(points: pd.DataFrame, quality: str, budgets: dict[str, float]) -> pd.DataFrame:
    """Per (dataset, label) the best-quality point with p50 <= the dataset's budget (``flag`` says when none fits)."""
    def pick(sub: pd.DataFrame) -> pd.DataFrame:
        within = sub[sub["p50_ms"] <= budgets[sub["dataset"].iloc[0]]]
        if within.empty:
            return sub.sort_values("p50_ms").head(1).assign(flag="no nprobe within the latency budget; "
                                                                  "the fastest is shown")
        return within.sort_values([quality, "p50_ms"], ascending=[False, True]).head(1).assign(flag="")
    return _per_variant(points, pick)


def select_fixed(points: pd.DataFrame, nprobe: int | None = None) -> pd.DataFrame:
    """Per (dataset, label) the point at ``nprobe`` (default nlist/16), else the closest in log2 (ties -> larger)."""
    def pick(sub: pd.DataFrame) -> pd.DataFrame:
        ivf = sub.dropna(subset=["nprobe"])
        if ivf.empty:
            return sub.head(1).assign(flag="")
        nlist = ivf["nlist"].iloc[0]
        target = nprobe if nprobe is not None else (nlist / 16 if nlist > 0 else ivf["nprobe"].median())
        distance = (np.log2(ivf["nprobe"]) - math.log2(max(target, 1e-9))).abs()
        best = ivf.assign(_d=distance).sort_values(["_d", "nprobe"], ascending=[True, False]).head(1)
        missed = nprobe is not None and best["nprobe"].iloc[0] != nprobe
        return best.drop(columns="_d").assign(flag=f"nprobe {nprobe} is not in the sweep; the closest is shown"
                                              if missed else "")
    return _per_variant(points, pick)


def _per_variant(points: pd.DataFrame, pick: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    parts = [pick(sub) for _, sub in points.groupby(["dataset", "label"], sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else points.assign(flag="").iloc[0:0]


# ---------------------------------------------------------------- leaderboard rows

class Footnotes:
    """Numbered footnotes; the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {text}" for i, text in enumerate(self.texts, 1)]


def complete_rows(selected: pd.DataFrame, df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Every variant of the run on ``dataset``: the selected (significance-marked) ok rows plus failed/missing ones,
    with ``status`` and ``reason`` (failures, flags, untested †)."""
    variants = df.drop_duplicates("label")[["label", "method", "family"]]
    sel = selected[selected["dataset"] == dataset].drop(columns=["method", "family", "dataset"])
    out = variants.merge(sel, on="label", how="left").assign(dataset=dataset)
    here = df[df["dataset"] == dataset]
    failed = here[here["status"] == "failed"]
    status, reasons = [], []
    for label, flag, no_test in zip(out["label"], out["flag"].fillna(""), out["untested"].map(is_true)):
        fails = failed[failed["label"] == label]
        if label in set(sel["label"]):
            status.append("ok")
            no_test_text = "† not tested: per-query values missing" if no_test else ""
            reasons.append("; ".join(filter(None, [flag, _failure_text(fails, "some runs failed"), no_test_text])))
        elif not fails.empty:
            status.append("failed")
            reasons.append(_failure_text(fails, "failed"))
        else:
            status.append("missing")
            reasons.append("not run on this dataset (no record)")
    return out.assign(status=status, reason=reasons)


def _failure_text(fails: pd.DataFrame, prefix: str) -> str:
    if fails.empty:
        return ""
    parts = []
    for error, sub in fails.groupby("error", sort=True):
        where = [f"seed {int(s)}" + ("" if math.isnan(n) else f" nprobe {int(n)}")
                 for s, n in zip(sub["seed"], sub["nprobe"])]
        parts.append(f"{error} ({', '.join(where)})")
    return f"{prefix}: " + "; ".join(parts)


def display_table(rows: pd.DataFrame, quality: str, notes: Footnotes) -> pd.DataFrame:
    """Formatted leaderboard: mean ± std over seeds (plain with one seed), — for failed/missing rows, † on the
    quality cell of significant rows, footnote markers after the method."""
    rows = rows.assign(_ok=rows["status"] == "ok").sort_values(["_ok", quality, "label"],
                                                                ascending=[False, False, True])
    out = []
    for _, r in rows.iterrows():
        ok, n = r["status"] == "ok", int(r["n_seeds"]) if r["status"] == "ok" else 0
        cells = {"Method": r["label"] + (f" {notes.mark(r['reason'])}" if r["reason"] else ""),
                 "Family": r["family"], "nprobe": _int_cell(r["nprobe"], ok, "n/a"), "Seeds": n if ok else DASH}
        for key, digits in DISPLAY:
            cells[key] = format_cell(r[key], r[f"{key}_std"], n, digits) if ok else DASH
            if key == quality and ok and is_true(r.get("significant")):
                cells[key] += " †"
        cells["B/vec"] = _int_cell(r["bytes_per_vector"], ok, DASH)
        cells["p50 ms"] = format_cell(r["p50_ms"], r["p50_ms_std"], n, 3) if ok else DASH
        cells["QPS"] = format_cell(r["qps"], r["qps_std"], n, 0) if ok else DASH
        cells["Train s"] = format_cell(r["train_seconds"], r["train_seconds_std"], n, 1) if ok else DASH
        out.append(cells)
    return pd.DataFrame(out)


def format_cell(mean: float, std: float, n: int, digits: int) -> str:
    """``0.512 ± 0.004`` over ``n`` seeds; the plain mean with one seed; — when missing."""
    if mean is None or pd.isna(mean):
        return DASH
    text = f"{mean:.{digits}f}"
    return text + f" ± {std:.{digits}f}" if n > 1 and not pd.isna(std) else text


def is_true(value: Any) -> bool:
    """True for a Python or numpy True (not for NaN/None)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _int_cell(value: float, ok: bool, empty: str) -> str:
    if not ok:
        return DASH
    return empty if pd.isna(value) else str(int(value))


# ---------------------------------------------------------------- sanity checks and cross-dataset summary

def sanity_lines(points: pd.DataFrame, dataset: str, measure: str = "nDCG@10") -> list[str]:
    """Two checks the issue asks for: ``flat`` tops every compressed point; faiss-opq beats faiss-pq per size."""
    sub = points[points["dataset"] == dataset]
    return [_flat_tops(sub, measure), _opq_beats_pq(sub, measure)]


def _flat_tops(sub: pd.DataFrame, measure: str) -> str:
    flat = sub.loc[sub["method"] == "flat", measure].dropna()
    compressed = sub[(sub["family"] != "reference") & sub[measure].notna()]
    if flat.empty or compressed.empty:
        return f"– flat vs compressed ({measure}): not checked, `flat` or compressed rows missing"
    top = compressed.loc[compressed[measure].idxmax()]
    where = top["label"] + ("" if pd.isna(top["nprobe"]) else f", nprobe {int(top['nprobe'])}")
    ok = flat.max() > top[measure]
    verb = "tops every compressed point" if ok else "does NOT top every compressed point"
    return (f"{'✓' if ok else '✗'} `flat` {verb} in {measure}: flat {flat.max():.3f} vs best compressed "
            f"{top[measure]:.3f} ({where})")


def _opq_beats_pq(sub: pd.DataFrame, measure: str) -> str:
    best = {m: sub[sub["method"] == m].groupby("bytes_per_vector")[measure].max() for m in ("faiss-opq", "faiss-pq")}
    sizes = sorted(set(best["faiss-opq"].index) & set(best["faiss-pq"].index))
    if not sizes:
        return f"– faiss-opq vs faiss-pq ({measure}): not checked, not both run at the same bytes/vector"
    wins = [best["faiss-opq"][b] > best["faiss-pq"][b] for b in sizes]
    detail = "; ".join(f"{int(b)} B: {best['faiss-opq'][b]:.3f} vs {best['faiss-pq'][b]:.3f} {'✓' if w else '✗'}"
                       for b, w in zip(sizes, wins))
    verb = "beats" if all(wins) else "does NOT always beat"
    return f"{'✓' if all(wins) else '✗'} faiss-opq {verb} faiss-pq at the same bytes/vector in {measure}: {detail}"


def cross_dataset(rows: pd.DataFrame, quality: str) -> pd.DataFrame:
    """Per variant: mean rank of ``quality`` across datasets (1 = best) and mean relative gain (%) over the best
    reconstruction row of each dataset."""
    ok = rows.dropna(subset=[quality]).copy()
    n_datasets = rows["dataset"].nunique()
    ok["rank"] = ok.groupby("dataset")[quality].rank(ascending=False, method="average")
    best = ok[ok["family"] == "reconstruction"].groupby("dataset")[quality].max()
    ok["gain"] = (ok[quality] / ok["dataset"].map(best) - 1.0) * 100.0
    table = ok.groupby("label").agg(family=("family", "first"), datasets=("dataset", "nunique"),
                                    rank=("rank", "mean"), gain=("gain", "mean")).reset_index()
    table = table.sort_values(["rank", "label"])
    return pd.DataFrame({"Method": table["label"], "Family": table["family"],
                         "Datasets": [f"{n}/{n_datasets}" for n in table["datasets"]],
                         "Mean rank": [f"{r:.2f}" for r in table["rank"]],
                         f"Gain in {quality} vs best reconstruction": [DASH if pd.isna(g) else f"{g:+.1f}%"
                                                                       for g in table["gain"]]})


# ---------------------------------------------------------------- paper-shaped tables

def _by_family(rows: pd.DataFrame, index: str) -> list[str]:
    order = rows.assign(_f=rows["family"].map(FAMILY_ORDER)).sort_values(["_f", index])
    return list(dict.fromkeys(order[index]))


def _wide(rows: pd.DataFrame, index: list[str], metrics: tuple[str, ...], datasets: list[str]) -> pd.DataFrame:
    wide = rows.set_index([*index, "dataset"])[list(metrics)].unstack("dataset").swaplevel(axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([datasets, list(metrics)]))


def table2(rows: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """Methods x (dataset, metric), like Distill-VQ's Table 2 (means over seeds)."""
    table = _wide(rows, ["label"], PAPER_METRICS, datasets).reindex(_by_family(rows, "label"))
    return table.rename_axis("Method")


def table3(rows: pd.DataFrame, datasets: list[str]) -> pd.DataFrame | None:
    """Loss x candidates ablation of the variants that were run with >= 2 (loss, candidates) combinations."""
    sub = rows[rows["params"].map(lambda p: "loss" in p or "candidates" in p)]
    combos = sub.groupby("base_ablation")["label"].nunique()
    sub = sub[sub["base_ablation"].isin(combos[combos >= 2].index)]
    if sub.empty:
        return None
    sub = sub.assign(loss=sub["params"].map(lambda p: _fmt(p.get("loss", DASH))),
                     candidates=sub["params"].map(lambda p: _fmt(p.get("candidates", DASH))))
    table = _wide(sub, ["base_ablation", "loss", "candidates"], PAPER_METRICS, datasets).sort_index()
    return table.rename_axis(["Method", "loss", "candidates"])


def swept(rows: pd.DataFrame, quality: str, base: str, x: str) -> pd.DataFrame:
    """The compressed rows whose ``base`` variant was run at >= 2 values of ``x``."""
    sub = rows[rows["family"] != "reference"].dropna(subset=[x, quality])
    counts = sub.groupby(base)[x].nunique()
    return sub[sub[base].isin(counts[counts >= 2].index)]


def sweep_table(rows: pd.DataFrame, quality: str, base: str, x: str,
                x_text: Callable[[float], str]) -> pd.DataFrame | None:
    """Rows = variants without the swept param (``base`` label column), columns = (dataset, value of ``x``),
    cell = mean ``quality``; only variants run at >= 2 values of ``x``."""
    sub = swept(rows, quality, base, x)
    if sub.empty:
        return None
    table = sub.pivot_table(index=base, columns=["dataset", x], values=quality, aggfunc="max")
    table.columns = pd.MultiIndex.from_tuples([(d, x_text(v)) for d, v in table.columns])
    return table.reindex(_by_family(sub, base)).rename_axis("Method")


def write_table(table: pd.DataFrame, directory: Path, stem: str, caption: str,
                skip_bold: frozenset = frozenset()) -> list[Path]:
    """Write ``stem.csv`` (4 decimals, columns ``dataset/metric``) and ``stem.tex`` (booktabs); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    csv, tex = directory / f"{stem}.csv", directory / f"{stem}.tex"
    flat = table.copy()
    flat.columns = ["/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    flat.to_csv(csv, float_format="%.4f")
    tex.write_text(to_latex(table, caption, f"tab:{stem}", skip_bold), encoding="utf-8")
    return [csv, tex]


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", DASH: "--"}


def latex_escape(text: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, caption: str, label: str, skip_bold: frozenset = frozenset()) -> str:
    """A booktabs table (\\toprule/\\midrule/\\bottomrule), grouped headers for 2-level columns, 3 decimals, the
    best (max) value of each column in bold among rows not in ``skip_bold``."""
    names = [latex_escape(n or "") for n in table.index.names]
    eligible = [i not in skip_bold for i in table.index]
    best = {c: table.loc[eligible, c].max() for c in table.columns}
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{'l' * len(names)}{'r' * len(table.columns)}}}", r"\toprule"]
    if isinstance(table.columns, pd.MultiIndex):
        top, rules, start = [""] * len(names), [], len(names) + 1
        for group in dict.fromkeys(table.columns.get_level_values(0)):
            width = int((table.columns.get_level_values(0) == group).sum())
            top.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(top) + r" \\", " ".join(rules)]
        header = names + [latex_escape(c[1]) for c in table.columns]
    else:
        header = names + [latex_escape(c) for c in table.columns]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for index, ok in zip(table.index, eligible):
        keys = index if isinstance(index, tuple) else (index,)
        cells = [latex_escape(k) for k in keys]
        for column in table.columns:
            value = table.at[index, column]
            text = "--" if pd.isna(value) else f"{value:.3f}"
            cells.append(rf"\textbf{{{text}}}" if ok and not pd.isna(value) and value == best[column] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the document (rendered to Markdown and HTML)

@dataclass
class Doc:
    """An ordered list of blocks: ``(kind, payload)`` with kind in heading/text/table/list/notes/image."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))

    def markdown(self) -> str:
        out = []
        for kind, payload in self.blocks:
            if kind == "heading":
                out.append("#" * payload[0] + " " + payload[1])
            elif kind == "text":
                out.append(payload)
            elif kind == "table":
                out.append(to_markdown(payload))
            elif kind in ("list", "notes"):
                out.append("\n".join(f"- {item}" for item in payload))
            elif kind == "image":
                out.append(f"![{payload[1]}]({payload[0]})")
        return "\n\n".join(out) + "\n"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no index)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")
    header = [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
