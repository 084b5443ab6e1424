"""Leaderboard tables from results records: flatten, label variants, average over seeds, pick operating points,
group into code-budget tracks, format, write.

A *variant* is a method plus the params that tell its rows apart. Its label shows the params that take several
values within at least one dataset (``distill-vq (M=16)``): the same variant gets the same label on every dataset,
even when a dataset-dependent param (e.g. nlist) differs between datasets.

Tracks (as in big-ann-benchmarks): variants are grouped by code budget, the ``index.bytes_per_vector`` of their
records; nothing is ranked across tracks. The reference family (:data:`benchmark.registry.REFERENCE_FAMILY`, the
uncompressed exact search) is in no track: it is shown as a reference line. Inside a track a variant is named by its
label without the code-size params (``M``, ``nbits``), unless two variants of the track would then share a name.

Two operating points per variant:

- **exhaustive**: the quantizer alone, nprobe = nlist for an IVF sweep (the largest nprobe, flagged, when nlist was
  not swept); a variant without IVF has a single row.
- **pruned**: by default (:func:`nprobe_rule`, issue #27) the largest swept nprobe ≤ nlist ·
  :data:`DEFAULT_NPROBE_FRACTION` (1/16: 16 of 256 lists), a point that really prunes and that no timing noise can
  move (the previous rule, the best nprobe within 10% of the reference's p50, landed at nprobe 128 of 256 on
  debian-desc, and which rows fit was decided by load). A flat layout has no lists to skip: it shows its only point,
  flagged, after every variant that prunes. A latency budget is still available (``budget_ms`` on every dataset, or
  ``budget_fraction`` of the reference's p50): then the pruned point is the best mean quality (ties -> faster) among
  the nprobes with mean p50 <= the budget, and a variant with no point within it shows its fastest point, flagged.

Index bytes/vector = ``index.index_bytes`` / number of docs (so IVF's list ids and every codebook count; code
bytes/vector does not). The number of docs is ``index.ntotal`` when records hold it, else the reference's
``index_bytes // bytes_per_vector`` (an uncompressed flat index: 4·dim bytes per doc plus a header of < 100 bytes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmark._io import write_text
from benchmark.records import FIDELITY, MEASURES
from benchmark.registry import FAMILIES, REFERENCE_FAMILY, ablation_of, available
from benchmark.report.stats import ALPHA, SHORT_TESTS, TIE, competing

NUMERIC = (*MEASURES, *FIDELITY, "p50_ms", "p95_ms", "qps", "spread", "under_load", "train_seconds",
           "train_cpu_seconds", "train_under_load")
FAMILY_ORDER = {family: i for i, family in enumerate(FAMILIES)}
DEFAULT_BUDGET_FRACTION = 0.1
DEFAULT_NPROBE_FRACTION = 1 / 16
UNDER_LOAD = "‡"
DASH = "—"
PAPER_METRICS = ("nDCG@10", "RR@10", "R@100")
# label columns without the swept params: one row per "method" of a sweep table
SWEEPS = {"base_code_size": ("M", "nbits"), "base_label_fraction": ("label_fraction",),
          "base_ablation": ("loss", "candidates")}
TRACK_METRICS = (("nDCG@10", 3), ("RR@10", 3), ("R@100", 3), ("overlap@10", 3))
VIEWS = ("exhaustive", "pruned")


# ---------------------------------------------------------------- loading and labels

def load_frame(records: list[dict[str, Any]], run_dir: Path) -> pd.DataFrame:
    """One row per record, nested fields flattened; ``per_query`` becomes an absolute path (or None); ``track``
    (code bytes/vector of the variant, NaN for the reference), ``tlabel`` (its name inside the track) and
    ``index_bpv`` (index bytes per doc) are added."""
    df = pd.DataFrame([_flatten(rec, Path(run_dir)) for rec in records])
    splits = df.groupby("dataset")["split"].transform("nunique")
    df["dataset"] = df["dataset"].where(splits == 1, df["dataset"] + " (" + df["split"] + ")")
    keys = varying_params(df)
    df["label"] = variant_labels(df, keys)
    for column, dropped in SWEEPS.items():
        df[column] = variant_labels(df, keys, dropped)
    docs = docs_per_dataset(df)
    df["index_bpv"] = df["index_bytes"] / df["dataset"].map(docs).astype(float)
    ok = df[(df["status"] == "ok") & (df["family"] != REFERENCE_FAMILY)]
    sizes = ok.groupby("label")["bytes_per_vector"].first()
    df["track"] = df["label"].map(sizes).where(df["family"] != REFERENCE_FAMILY)
    df["tlabel"] = track_labels(df)
    df["ablation"] = [ablation_text(m, f) for m, f in zip(df["method"], df["label_fraction"])]
    return df


def ablation_text(method: str, label_fraction: float) -> str:
    """Why a row is listed apart from a track's ranked rows: a run on a fraction of the labels (the label-budget
    curve) or a registered ablation of another method (``BaseMethod.ablation_of``); "" for a ranked row."""
    parent = ablation_of(method)
    if parent:
        return f"ablation of {parent}"
    if not pd.isna(label_fraction) and label_fraction < 1.0:
        return f"label budget {label_fraction:.0%}"
    return ""


def development_splits(records: list[dict[str, Any]]) -> list[str]:
    """The datasets of ``records`` evaluated on a development split: one carved out of the labeled train queries
    (``setup.eval_split.carved_from_train``, recorded since it existed; before that, split ``dev`` of a dataset alias
    ending in ``-dev``, the convention of every dev config here). MS MARCO's ``dev`` (dev.small) is its evaluation
    split, not a development one."""
    out = set()
    for rec in records:
        carved = ((rec.get("setup") or {}).get("eval_split") or {}).get("carved_from_train")
        if carved or (rec.get("split") == "dev" and str(rec.get("dataset", "")).endswith("-dev")):
            out.add(str(rec.get("dataset")))
    return sorted(out)


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a track ranks: every row but the ablations (:func:`ablation_text`)."""
    return rows[~rows["ablation"].fillna("").astype(bool)] if "ablation" in rows else rows


def _flatten(rec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    index, latency = rec.get("index") or {}, rec.get("latency") or {}
    values = {**(rec.get("metrics") or {}), **(rec.get("fidelity") or {}), **latency}
    sidecar = rec.get("per_query")
    row = {"dataset": rec["dataset"], "split": rec["split"], "method": rec["method"], "family": rec["family"],
           "params": rec["params"], "seed": rec["seed"], "nprobe": _num(rec["nprobe"]),
           "nlist": _num(index.get("nlist")), "bytes_per_vector": _num(index.get("bytes_per_vector")),
           "index_bytes": _num(index.get("index_bytes")), "ntotal": _num(index.get("ntotal")),
           "label_fraction": _num(rec["params"].get("label_fraction")), "status": rec["status"],
           "error": rec.get("error") or "", "per_query": str(run_dir / sidecar) if sidecar else None,
           "train_seconds": _num(rec.get("train_seconds")),
           "train_cpu_seconds": _num(rec.get("train_cpu_seconds")),
           "train_under_load": _bool_num((rec.get("train_load") or {}).get("under_load")),
           "git_sha": str((rec.get("provenance") or {}).get("git_sha") or ""),
           "cpu": str((rec.get("retimed") or rec.get("provenance") or {}).get("cpu") or "")}
    row.update(setup_cells(rec))
    row.update({key: _num(values.get(key)) for key in NUMERIC
                if key not in ("train_seconds", "train_cpu_seconds", "train_under_load", "under_load")})
    row["under_load"] = _bool_num(latency.get("under_load"))
    row["timing_repeats"] = _num(latency.get("repeats"))   # NaN: timed before the timing protocol (one pass)
    return row


def _tuning_source(trace: str) -> str:
    """The tuning report a trace belongs to (``reports/tuning-x/tuning/trials.jsonl`` -> ``tuning-x``)."""
    parent = PurePosixPath(trace).parent
    return (parent.parent if parent.name == "tuning" and parent.parent.name else parent).name or trace


def setup_cells(rec: dict[str, Any]) -> dict[str, str]:
    """What a row is, beside its method: ``layout`` (IVF, or no IVF: one flat scan), ``query_side`` (the linear
    adapter or none), ``trained_on`` (the training queries, whether their labels were read, and an approximate
    teacher's index and measured recall when the teacher's top-K was not exact) and ``tuning`` (the trials and CPU
    time that chose its params and the tuning report they come from, or "defaults"). From the record's ``setup`` /
    ``tuning`` fields; records written before those existed: layout from nlist, query side from the
    ``query_adapter`` param, training queries unknown (—)."""
    setup = rec.get("setup") or {}
    nlist = (rec.get("index") or {}).get("nlist")
    layout = setup.get("layout") or ("IVF" if nlist else "no IVF" if nlist == 0 else DASH)
    query = setup.get("query_side") or ("adapter" if rec["params"].get("query_adapter") else "none")
    origin = setup.get("train_queries") or (rec.get("train_info") or {}).get("train_queries_from")
    if origin:
        fraction = origin.get("fraction", 1.0)
        share = f", {fraction:.0%}" if fraction < 1 else ""
        teacher = origin.get("teacher") or {}
        approx = (f"; {teacher.get('factory', 'ivf')} teacher, recall@{teacher.get('k')} {teacher['recall_at_k']:.3f}"
                  if teacher.get("kind") == "ivf" and "recall_at_k" in teacher else "")
        labels = "read" if origin["labels_used"] else "unread"
        trained = f"{origin['queries']} ({origin['n']:,}{share}; labels {labels}{approx})"
    else:
        trained = DASH
    tuning = rec.get("tuning")
    tuned = (f"{tuning.get('trials', '?')} trials, {tuning['cpu_seconds'] / 3600:.1f} CPU-h"
             if tuning and "cpu_seconds" in tuning else f"{tuning.get('trials', '?')} trials" if tuning
             else "defaults")
    if tuning and tuning.get("trace"):   # where the params were chosen: a collection's own tuning, or another's
        tuned += f" ({_tuning_source(tuning['trace'])})"
    return {"layout": layout, "query_side": query, "trained_on": trained, "tuning": tuned}


def _bool_num(value: Any) -> float:
    return float(value) if isinstance(value, bool) else math.nan


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def docs_per_dataset(df: pd.DataFrame) -> dict[str, float]:
    """Number of docs per dataset: ``index.ntotal`` when recorded, else from the reference's index size (see
    module doc); datasets with neither are left out (their index bytes/vector shows as —)."""
    out: dict[str, float] = {}
    for dataset, sub in df[df["status"] == "ok"].groupby("dataset"):
        ntotal = sub["ntotal"].dropna()
        ref = sub[sub["family"] == REFERENCE_FAMILY].dropna(subset=["index_bytes", "bytes_per_vector"])
        if not ntotal.empty:
            out[dataset] = float(ntotal.iloc[0])
        elif not ref.empty and ref["bytes_per_vector"].iloc[0] > 0:
            out[dataset] = float(ref["index_bytes"].iloc[0] // ref["bytes_per_vector"].iloc[0])
    return out


def varying_params(df: pd.DataFrame) -> dict[str, list[str]]:
    """Per method, the param names that take at least two values within some dataset."""
    out: dict[str, list[str]] = {}
    for method, sub in df.groupby("method"):
        names = sorted({name for params in sub["params"] for name in params})
        out[method] = [name for name in names
                       if any(part["params"].map(lambda p, n=name: _fmt(p.get(n))).nunique() > 1
                              for _, part in sub.groupby("dataset"))]
    return out


def _defaults(method: str) -> dict[str, str]:
    """The method's declared param defaults, formatted as labels show them ({} for a method not installed here)."""
    cls = available().get(method)
    return {k: _fmt(p.default) for k, p in cls.declared_params().items()} if cls else {}


def variant_labels(df: pd.DataFrame, keys: dict[str, list[str]], drop: tuple[str, ...] = ()) -> pd.Series:
    """``method (k=v, ...)`` over the varying params ``keys`` of each method, minus ``drop``. A param at the
    method's declared default is not shown (code-size params always are): the label-budget curve's full-data point
    of ``jpq`` is ``jpq``, not ``jpq (label_fraction=1)``, and reads the same in every track."""
    defaults = {m: _defaults(m) for m in df["method"].unique()}

    def label(method: str, params: dict[str, Any]) -> str:
        shown = [f"{k}={_fmt(params[k])}" for k in keys.get(method, [])
                 if k in params and k not in drop
                 and (k in SWEEPS["base_code_size"] or defaults[method].get(k) != _fmt(params[k]))]
        return f"{method} ({', '.join(shown)})" if shown else method
    return pd.Series([label(m, p) for m, p in zip(df["method"], df["params"])], index=df.index, dtype=object)


def track_labels(df: pd.DataFrame) -> pd.Series:
    """The label without code-size params when that name is unique inside the variant's track, else the label."""
    out = df["label"].copy()
    for _, sub in df.dropna(subset=["track"]).groupby("track"):
        clash = sub.groupby("base_code_size")["label"].nunique()
        unique = sub["base_code_size"].map(clash) == 1
        out.loc[sub.index[unique.to_numpy()]] = sub.loc[unique, "base_code_size"]
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def track_name(track: float) -> str:
    return f"{track:g} B"


def tracks_of(df: pd.DataFrame) -> list[float]:
    """The code budgets (bytes/vector) of the run, ascending."""
    return sorted(df["track"].dropna().unique())


# ---------------------------------------------------------------- seed aggregation and operating points

def aggregate_points(df: pd.DataFrame) -> pd.DataFrame:
    """Ok records averaged over seeds: one row per (dataset, label, nprobe) with means, ``<col>_std``,
    ``n_seeds`` and the list of per-query sidecars."""
    ok = df[df["status"] == "ok"]
    firsts = ["method", "family", "params", "nlist", "bytes_per_vector", "label_fraction", "ablation", "track",
              "tlabel", "layout", "query_side", "trained_on", "tuning", *SWEEPS]
    if ok.empty:
        return pd.DataFrame(columns=[*df.columns, *(f"{c}_std" for c in NUMERIC), "n_seeds"])
    groups = ok.groupby(["dataset", "label", "nprobe"], dropna=False, sort=True)
    numeric = [*NUMERIC, "index_bpv"]
    parts = [groups[firsts].first(), groups[numeric].mean(), groups[list(NUMERIC)].std().add_suffix("_std"),
             groups["seed"].nunique().rename("n_seeds"),
             groups["per_query"].apply(lambda s: [p for p in s if isinstance(p, str) and p]).rename("per_query")]
    return pd.concat(parts, axis=1).reset_index()


@dataclass(frozen=True)
class Budget:
    """The pruned operating point's rule and how it was set: a latency budget (``ms``, p50 per query, 1 thread)
    or, when ``nprobe_fraction`` is set, a fixed share of the IVF lists (``ms`` is then infinite)."""

    ms: float
    how: str
    nprobe_fraction: float | None = None

    @property
    def text(self) -> str:
        if self.nprobe_fraction is not None:
            return f"nprobe ≤ nlist/{1 / self.nprobe_fraction:g}"
        return f"p50 ≤ {self.ms:.3g} ms" if math.isfinite(self.ms) else "no latency budget"


def nprobe_rule(fraction: float = DEFAULT_NPROBE_FRACTION) -> Budget:
    """The default pruned point (see module doc): the largest swept nprobe ≤ ``fraction`` · nlist."""
    return Budget(math.inf, f"a fixed share of the lists, {fraction:.3g} of nlist (no timing decides it)",
                  nprobe_fraction=fraction)


def latency_budget(points: pd.DataFrame, dataset: str, budget_ms: float | None = None,
                   fraction: float = DEFAULT_BUDGET_FRACTION) -> Budget:
    """The pruning budget of ``dataset`` (see module doc): ``budget_ms`` when given, else ``fraction`` of the
    reference's p50, else ``fraction`` of the slowest measured p50."""
    if budget_ms is not None:
        return Budget(float(budget_ms), "given")
    sub = points[points["dataset"] == dataset]
    ref = sub.loc[sub["family"] == REFERENCE_FAMILY, "p50_ms"].dropna()
    if not ref.empty:
        return Budget(fraction * float(ref.median()),
                      f"{fraction:.0%} of the reference's p50, {float(ref.median()):.3g} ms")
    p50 = sub["p50_ms"].dropna()
    if not p50.empty:
        return Budget(fraction * float(p50.max()),
                      f"{fraction:.0%} of the slowest measured p50 ({float(p50.max()):.3g} ms; no reference record)")
    return Budget(math.inf, "no latency measured")


def select_exhaustive(points: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, label) the point at nprobe = nlist (no IVF: its single point); ``flag`` says when nlist was
    not in the sweep and the largest nprobe is shown."""
    def pick(sub: pd.DataFrame) -> pd.DataFrame:
        ivf = sub.dropna(subset=["nprobe"])
        if ivf.empty:
            return sub.head(1).assign(flag="", fits=True)
        nlist = ivf["nlist"].iloc[0]
        at = ivf[ivf["nprobe"] == nlist]
        if not at.empty:
            return at.head(1).assign(flag="", fits=True)
        top = ivf.sort_values("nprobe").tail(1)
        return top.assign(flag=f"nprobe = nlist ({nlist:g}) not in the sweep; the largest nprobe is shown",
                          fits=True)
    return _per_variant(points, pick)


def _pick_nprobe_share(sub: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The nprobe-share rule for one variant: its largest swept nprobe ≤ fraction · nlist; a flat layout (or a sweep
    with no such nprobe) does not fit and shows its fastest point."""
    ivf = sub.dropna(subset=["nprobe"])
    if ivf.empty:
        return sub.sort_values("p50_ms").head(1).assign(
            flag="flat layout: no lists to skip, it scans every code (its only point is shown)", fits=False)
    limit = float(ivf["nlist"].iloc[0]) * fraction
    within = ivf[ivf["nprobe"] <= limit + 1e-9]
    if within.empty:
        return ivf.sort_values("nprobe").head(1).assign(
            flag=f"no swept nprobe ≤ {limit:g} (nlist/{1 / fraction:g}); its smallest is shown", fits=False)
    return within.sort_values("nprobe").tail(1).assign(flag="", fits=True)


def select_pruned(points: pd.DataFrame, quality: str, budgets: dict[str, Budget]) -> pd.DataFrame:
    """Per (dataset, label) the pruned point of the dataset's rule: with an nprobe share (the default), the largest
    swept nprobe ≤ share · nlist; with a latency budget, the best-quality point with p50 <= it. ``fits`` is False
    (and ``flag`` says why) when no point qualifies (a flat layout under the nprobe rule, or every point over the
    latency budget) and the fastest point is shown instead."""
    def pick(sub: pd.DataFrame) -> pd.DataFrame:
        rule = budgets[sub["dataset"].iloc[0]]
        if rule.nprobe_fraction is not None:
            return _pick_nprobe_share(sub, rule.nprobe_fraction)
        budget = rule.ms
        within = sub[sub["p50_ms"] <= budget]
        if within.empty:
            return sub.sort_values("p50_ms").head(1).assign(
                flag=f"over the latency budget at every nprobe ({budget:.3g} ms); its fastest point is shown",
                fits=False)
        return within.sort_values([quality, "p50_ms"], ascending=[False, True]).head(1).assign(flag="", fits=True)
    return _per_variant(points, pick)


def _per_variant(points: pd.DataFrame, pick: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    parts = [pick(sub) for _, sub in points.groupby(["dataset", "label"], sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else points.assign(flag="", fits=True).iloc[0:0]


# ---------------------------------------------------------------- track tables

UNDER_LOAD_NOTE = (f"{UNDER_LOAD} after a p50: timed under load (other processes used more than the record's "
                   "load_threshold cores during its timing pass, in at least one seed); re-time it on an idle "
                   "machine with run_benchmark.py --retime DIR.")

TRAIN_LOAD_NOTE = (f"{UNDER_LOAD} after train s: other processes used more than the record's load_threshold cores "
                   "during the fit (at least one seed), so its wall time is inflated; its train_cpu_seconds (in the "
                   "records) is this process's own CPU time.")


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


def track_rows(selected: pd.DataFrame, df: pd.DataFrame, dataset: str, track: float) -> pd.DataFrame:
    """Every variant of ``track`` in the run, on ``dataset``: the selected (significance-marked) ok rows plus
    failed/missing ones, with ``status`` and ``reason`` (failures, flags, untested †)."""
    variants = df[df["track"] == track].drop_duplicates("label")[["label", "tlabel", "method", "family", "ablation"]]
    sel = selected[(selected["dataset"] == dataset) & (selected["track"] == track)]
    sel = sel.drop(columns=["method", "family", "dataset", "tlabel", "ablation"], errors="ignore")
    out = variants.merge(sel, on="label", how="left").assign(dataset=dataset)
    failed = df[(df["dataset"] == dataset) & (df["status"] == "failed")]
    status, reasons = [], []
    untested = out["untested"] if "untested" in out else pd.Series(False, index=out.index)
    for label, flag, no_test in zip(out["label"], out["flag"].fillna(""), untested.map(is_true)):
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


def unplaced_failures(df: pd.DataFrame, dataset: str) -> list[str]:
    """Failures of variants with no successful record anywhere (so no known code size, hence no track)."""
    failed = df[(df["dataset"] == dataset) & (df["status"] == "failed") & df["track"].isna()
                & (df["family"] != REFERENCE_FAMILY)]
    return [f"{label}: " + _failure_text(sub, "failed") for label, sub in failed.groupby("label", sort=True)]


def _failure_text(fails: pd.DataFrame, prefix: str) -> str:
    if fails.empty:
        return ""
    parts = []
    for error, sub in fails.groupby("error", sort=True):
        where = [f"seed {int(s)}" + ("" if math.isnan(n) else f" nprobe {int(n)}")
                 for s, n in zip(sub["seed"], sub["nprobe"])]
        parts.append(f"{error} ({', '.join(where)})")
    return f"{prefix}: " + "; ".join(parts)


def rank_order(rows: pd.DataFrame, quality: str) -> pd.DataFrame:
    """Ok rows within the budget by quality (best first), then ok rows over the budget, then failed/missing."""
    fits = rows["fits"].map(is_true) if "fits" in rows else pd.Series(True, index=rows.index)
    key = np.where(rows["status"] == "ok", np.where(fits, 0, 1), 2)
    return rows.assign(_k=key).sort_values(["_k", quality, "tlabel"], ascending=[True, False, True]).drop(
        columns="_k")


def display_track_table(rows: pd.DataFrame, quality: str, notes: Footnotes) -> pd.DataFrame:
    """Formatted track table: mean ± std over seeds (plain with one seed), — for failed/missing rows, † on the
    quality cell of significant rows, the *tie* column (:func:`tie_cell`) after the quality column, footnote markers
    after the method."""
    out, links = [], []
    for _, r in rank_order(rows, quality).iterrows():
        links.append(r["label"])
        ok = r["status"] == "ok"
        n = int(r["n_seeds"]) if ok else 0
        cells = {"Method": r["tlabel"] + (f" {notes.mark(r['reason'])}" if r["reason"] else ""),
                 "Family": r["family"], "Layout": _text_cell(r.get("layout")),
                 "Query side": _text_cell(r.get("query_side")), "Trained on": _text_cell(r.get("trained_on")),
                 "Tuning": _text_cell(r.get("tuning")), "nprobe": _int_cell(r["nprobe"], ok, "n/a")}
        for key, digits in TRACK_METRICS:
            cells[key] = format_cell(r[key], r[f"{key}_std"], n, digits) if ok else DASH
            if key == quality and ok and is_true(r.get("significant")):
                cells[key] += " †"
            if key == quality:
                cells["tie"] = tie_cell(r)
        cells["p50 ms"] = format_cell(r["p50_ms"], r["p50_ms_std"], n, 3) if ok else DASH
        if ok and r.get("under_load", 0) > 0:
            cells["p50 ms"] += f" {UNDER_LOAD}"
            notes.mark(UNDER_LOAD_NOTE)
        cells["code B/vec"] = _int_cell(r["bytes_per_vector"], ok, DASH)
        cells["index B/vec"] = format_cell(r["index_bpv"], math.nan, 1, 1) if ok else DASH
        cells["train s"] = format_cell(r["train_seconds"], r["train_seconds_std"], n, 0) if ok else DASH
        if ok and r.get("train_under_load", 0) > 0:
            cells["train s"] += f" {UNDER_LOAD}"
            notes.mark(TRAIN_LOAD_NOTE)
        cells["seeds"] = str(n) if ok else DASH
        out.append(cells)
    metrics = [c for k, _ in TRACK_METRICS for c in ((k, "tie") if k == quality else (k,))]
    columns = ["Method", "Family", "Layout", "Query side", "Trained on", "Tuning", "nprobe", *metrics, "p50 ms",
               "code B/vec", "index B/vec", "train s", "seeds"]
    table = pd.DataFrame(out, columns=columns)
    table.attrs["row_links"] = links   # each row's variant label: the HTML page links it to its provenance
    return table


def display_apart_table(rows: pd.DataFrame, quality: str, notes: Footnotes) -> pd.DataFrame:
    """The ablation rows of a track (:func:`ranked` leaves them out), formatted as the track table with why each is
    apart in place of the *tie* column: they are in no tie group and no verdict; † keeps its meaning."""
    table = display_track_table(rows, quality, notes)
    order = list(rank_order(rows, quality)["ablation"].fillna(""))
    table = table.drop(columns=["tie"])
    table.insert(1, "Listed apart", order)
    table.attrs["row_links"] = list(rank_order(rows, quality)["label"])
    return table


def _text_cell(value: Any) -> str:
    return value if isinstance(value, str) and value else DASH


def p_text(p: float) -> str:
    """A p-value in two significant digits (``3.2e-05``, ``0.31``)."""
    return f"{p:.2g}"


def tie_cell(r: pd.Series) -> str:
    """The *tie* cell of a track-table row: ``◆ best``, ``◆ p=0.31`` (tied with the best, Holm-corrected p),
    ``p<0.001`` / ``p=0.012`` (not tied), ``untested`` (no per-query values), ``n/a`` (not competing: over the
    latency budget), — (failed or missing)."""
    if r["status"] != "ok":
        return DASH
    status = r.get("tie_status")
    p = r.get("tie_p")
    p_cell = "" if p is None or pd.isna(p) else ("p<0.001" if p < 0.001 else f"p={p_text(p)}")
    return {"best": f"{TIE} best", "tied": f"{TIE} {p_cell}", "not tied": p_cell,
            "untested": "untested"}.get(status if isinstance(status, str) else "", "n/a")


def _in_group(status: Any) -> bool:
    return status in ("best", "tied")


def tie_group_text(rows: pd.DataFrame, quality: str) -> str:
    """The other members of the best row's tie group among ``rows`` (one dataset, track and operating point):
    ``alone``, ``with a, b``, plus how many rows are untested; ``untested`` when no other row was tested."""
    comp = competing(rows, quality)
    if comp.empty or "tie_status" not in comp:
        return DASH
    if len(comp) == 1:
        return "the only row"
    status = comp["tie_status"].iloc[1:]
    tied = list(comp.loc[status.index[status == "tied"], "tlabel"])
    untested = int((status == "untested").sum())
    if untested and untested == len(status):
        return "untested"
    text = f"with {', '.join(tied)}" if tied else "alone"
    return text + (f"; {untested} untested" if untested else "")


def verdict_line(rows: pd.DataFrame, others: pd.DataFrame, quality: str, test: str, point: str) -> str:
    """One line on a track at one operating point: the winner, Δ to the runner-up with its 95% CI and Holm-corrected
    p, the tie group, the untested rows and the † baseline by name. ``rows``: the track's selected rows on one
    dataset (tie and † columns added); ``others``: every selected row of the dataset (to find the baseline)."""
    comp = competing(rows, quality)
    if comp.empty:
        return f"{point}: no row within the latency budget, nothing ranked."
    best = comp.iloc[0]
    parts = [f"{point}: winner **{best['tlabel']}** ({quality} {best[quality]:.3f})"]
    if len(comp) == 1:
        parts.append("the only row competing")
    else:
        run = comp.iloc[1]
        if run.get("tie_status") in ("tied", "not tied"):
            parts.append(f"Δ to runner-up {run['tlabel']} {-run['tie_diff']:+.3f} (95% CI {-run['tie_ci_high']:+.3f} "
                         f"to {-run['tie_ci_low']:+.3f}, paired per query; p = {p_text(run['tie_p'])} "
                         f"Holm-corrected, {p_text(run['tie_p_raw'])} raw)")
        else:
            parts.append(f"Δ to runner-up {run['tlabel']} {best[quality] - run[quality]:+.3f} (untested: no "
                         f"per-query values to pair)")
        status = comp["tie_status"].iloc[1:]
        tied = list(comp.loc[status.index[status == "tied"], "tlabel"])
        untested = list(comp.loc[status.index[status == "untested"], "tlabel"])
        if len(untested) == len(status):
            parts.append(f"tie group not tested: no per-query values to pair with the best for the other "
                         f"{len(untested)} row(s)")
        else:
            parts.append(f"tied with the best {TIE}: {', '.join([best['tlabel'], *tied])}" if tied else
                         f"alone in its tie group {TIE}" + (" among the tested rows" if untested else ""))
            if untested:
                parts.append(f"untested: {', '.join(untested)}" if len(untested) <= 4 else
                             f"{len(untested)} rows untested (see the tie column)")
    dagger = _dagger_text(rows, others, quality, test)
    return "; ".join(parts + ([dagger] if dagger else [])) + "."


def _dagger_text(rows: pd.DataFrame, others: pd.DataFrame, quality: str, test: str) -> str:
    if "baseline" not in rows:
        return ""
    names = list(dict.fromkeys(rows["baseline"].dropna()))
    texts = []
    for name in names:
        base = others[others["label"] == name]
        if "fits" in base:
            base = base[base["fits"].map(is_true)]
        if base.empty:
            continue
        b = base.iloc[0]
        where = "" if b["track"] in set(rows["track"]) else f" at {b['bytes_per_vector']:g} B, none at this size"
        texts.append(f"{b['tlabel']} ({b[quality]:.3f}{where})")
    if not texts:
        return ""
    return (f"† = better than {' / '.join(texts)}, the best reconstruction baseline, one-sided {SHORT_TESTS[test]} "
            f"p < {ALPHA}")


def reference_line(points: pd.DataFrame, dataset: str, quality: str) -> str | None:
    """One sentence on the exact-search reference of ``dataset`` (None without a reference record): the
    quality of the uncompressed embeddings, not an upper bound (a compressed index can score a little above it)."""
    ref = points[(points["dataset"] == dataset) & (points["family"] == REFERENCE_FAMILY)]
    if ref.empty:
        return None
    r = ref.sort_values(quality, ascending=False).iloc[0]
    return (f"Exact search (family `{REFERENCE_FAMILY}`, in no track; a reference, not an upper bound): "
            f"`{r['label']}` {quality} {r[quality]:.3f}, "
            f"R@100 {r['R@100']:.3f}, {r['bytes_per_vector']:g} B/vector, p50 {r['p50_ms']:.3f} ms.")


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


# ---------------------------------------------------------------- summaries (never across tracks)

def sanity_lines(points: pd.DataFrame, dataset: str, measure: str = "nDCG@10") -> list[str]:
    """The reference tops every compressed point of ``dataset`` (a broken metric or index would show here)."""
    sub = points[points["dataset"] == dataset]
    ref = sub.loc[sub["family"] == REFERENCE_FAMILY, measure].dropna()
    compressed = sub[(sub["family"] != REFERENCE_FAMILY) & sub[measure].notna()]
    if ref.empty or compressed.empty:
        return [f"– reference vs compressed ({measure}): not checked, reference or compressed rows missing"]
    top = compressed.loc[compressed[measure].idxmax()]
    where = top["label"] + ("" if pd.isna(top["nprobe"]) else f", nprobe {int(top['nprobe'])}")
    ok = ref.max() > top[measure]
    verb = "tops every compressed point" if ok else "does NOT top every compressed point"
    return [f"{'✓' if ok else '✗'} the reference {verb} in {measure}: {ref.max():.3f} vs best compressed "
            f"{top[measure]:.3f} ({where})"]


def glance(views: dict[str, pd.DataFrame], budgets: dict[str, Budget], quality: str) -> pd.DataFrame:
    """One row per (dataset, track): the best variant at each operating point, its quality (†) and the rest of its
    tie group (:func:`tie_group_text`)."""
    out = []
    for (dataset, track), _ in views["exhaustive"].dropna(subset=["track"]).groupby(["dataset", "track"]):
        cells = {"Dataset": dataset, "Track": track_name(track)}
        for view, title in (("exhaustive", "exhaustive"), ("pruned", budgets[dataset].text)):
            rows = views[view]
            sub = ranked(rows[(rows["dataset"] == dataset) & (rows["track"] == track) & rows["fits"].map(is_true)])
            sub = sub.dropna(subset=[quality])
            if sub.empty:
                cells[f"best {title}"] = cells[f"{quality} ({view})"] = cells[f"tied with it ({view})"] = DASH
                continue
            best = sub.sort_values([quality, "p50_ms"], ascending=[False, True]).iloc[0]
            nprobe = "" if pd.isna(best["nprobe"]) else f", nprobe {int(best['nprobe'])}"
            mark = " †" if is_true(best.get("significant")) else ""
            cells[f"best {title}"] = f"{best['tlabel']}{nprobe}"
            cells[f"{quality} ({view})"] = f"{best[quality]:.3f}{mark}"
            cells[f"tied with it ({view})"] = tie_group_text(sub, quality)
        out.append(cells)
    return pd.DataFrame(out)


BEST_GROUP = f"In best group {TIE}"
CROSS_SUMMARY = ("Average", "Avg rank", "W / T / L vs best recon.", BEST_GROUP)   # cross_dataset's columns after
#                                                                                   the datasets'


def cross_dataset(rows: pd.DataFrame, quality: str, datasets: list[str], track: float,
                  reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """BEIR-shaped table of one track: a row per variant, a column per dataset (mean ± std of ``quality`` over
    seeds, † marks, ◆ for the dataset's tie group, "(untested)" for a row with no tie test), the index bytes per
    document (its range over the datasets: IVF rows store list ids and centroids beside the track's code bytes), the
    average over datasets
    (— unless the variant has every dataset), the average rank (per dataset the variants of the track ranked by mean
    quality, 1 = best, ties share the mean rank; averaged over the datasets the variant has) and wins / ties / losses
    against each dataset's best reconstruction baseline (:func:`wins_ties_losses`), and in how many of the datasets
    where it has a tie test the variant is in the best row's tie group (◆: the verdict that holds, or not, across
    datasets). Rows by average, best first; the reference row, when given, comes first and is not ranked."""
    sub = ranked(rows[(rows["track"] == track)]).dropna(subset=[quality])
    sub = sub[sub["fits"].map(is_true)]
    table = sub.pivot_table(index=["tlabel", "family"], columns="dataset", values=quality, aggfunc="first")
    table = table.reindex(columns=datasets)
    std_col = f"{quality}_std"
    stds = (sub.pivot_table(index=["tlabel", "family"], columns="dataset", values=std_col, aggfunc="first")
            .reindex(index=table.index, columns=datasets) if std_col in sub and sub[std_col].notna().any()
            else pd.DataFrame(math.nan, index=table.index, columns=datasets))
    significant = sub["significant"].map(is_true) if "significant" in sub else pd.Series(False, index=sub.index)
    status = sub["tie_status"] if "tie_status" in sub else pd.Series(None, index=sub.index, dtype=object)
    suffix = [(" †" if s else "") + (f" {TIE}" if _in_group(t) else " (untested)" if t == "untested" else "")
              for s, t in zip(significant, status)]
    tested = status.isin(["best", "tied", "not tied"])
    group = (sub.assign(_in=status.map(_in_group) & tested, _tested=tested)
             .groupby(["tlabel", "family"])[["_in", "_tested"]].sum())
    marks = sub.assign(_m=suffix).pivot_table(index=["tlabel", "family"], columns="dataset", values="_m",
                                              aggfunc="first").reindex(index=table.index, columns=datasets)
    bpv = (sub.pivot_table(index=["tlabel", "family"], columns="dataset", values="index_bpv", aggfunc="first")
           .reindex(index=table.index, columns=datasets) if "index_bpv" in sub else
           pd.DataFrame(math.nan, index=table.index, columns=datasets))
    avg = table.mean(axis=1).where(table.notna().all(axis=1))
    ranks = table.rank(axis=0, ascending=False, method="average").mean(axis=1)
    wtl = wins_ties_losses(sub, table.index)
    order = avg.fillna(-1.0).sort_values(ascending=False, kind="stable").index
    out = []
    if reference is not None and not reference.empty:
        ref = reference.groupby("dataset")[quality].max().reindex(datasets)
        ref_bpv = (reference.groupby("dataset")["index_bpv"].max().reindex(datasets) if "index_bpv" in reference
                   else pd.Series(math.nan, index=datasets))
        out.append({"Method": f"{reference['label'].iloc[0]} (exact search, not ranked)", "Family": REFERENCE_FAMILY,
                    "Index B/vec": _bpv_range(ref_bpv), **{d: _cell(ref[d]) for d in datasets},
                    "Average": _cell(ref.mean() if ref.notna().all() else math.nan), "Avg rank": DASH,
                    "W / T / L vs best recon.": DASH, BEST_GROUP: DASH})
    for tlabel, family in order:
        cells = {"Method": tlabel, "Family": family, "Index B/vec": _bpv_range(bpv.loc[(tlabel, family)])}
        for d in datasets:
            value, spread = table.at[(tlabel, family), d], stds.at[(tlabel, family), d]
            mark = marks.at[(tlabel, family), d]
            cells[d] = (_cell(value) + (f" ± {spread:.3f}" if pd.notna(value) and pd.notna(spread) else "")
                        + (mark if isinstance(mark, str) else ""))
        cells["Average"] = _cell(avg[(tlabel, family)])
        cells["Avg rank"] = DASH if pd.isna(ranks[(tlabel, family)]) else f"{ranks[(tlabel, family)]:.1f}"
        cells["W / T / L vs best recon."] = wtl.get((tlabel, family), DASH)
        n_in, n_tested = (int(v) for v in group.loc[(tlabel, family)])
        cells[BEST_GROUP] = f"{n_in} / {n_tested}" if n_tested else DASH
        out.append(cells)
    table = pd.DataFrame(out, columns=["Method", "Family", "Index B/vec", *datasets, *CROSS_SUMMARY])
    labels = dict(zip(sub["tlabel"], sub["label"]))
    table.attrs["row_links"] = ([None] if len(out) > len(order) else []) + [labels.get(t) for t, _ in order]
    return table


def _bpv_range(values: pd.Series) -> str:
    """Index bytes per vector of one row over the datasets: one value, or the range when the datasets differ (IVF's
    list ids and centroids weigh more on a smaller corpus)."""
    values = values.dropna()
    if values.empty:
        return DASH
    low, high = f"{values.min():.1f}", f"{values.max():.1f}"
    return low if low == high else f"{low}–{high}"


def wins_ties_losses(sub: pd.DataFrame, index: pd.Index) -> dict[tuple[str, str], str]:
    """Per variant of a track with a † test (learned and score-aware rows), over the datasets: a **win** where it is
    significantly better than the dataset's best reconstruction baseline (the † test, one-sided), a **loss** where
    the same test in the other direction is significant (1 - p < α), else a **tie**; datasets without per-query
    values to test are counted apart ("n untested")."""
    out: dict[tuple[str, str], str] = {}
    if "baseline" not in sub:
        return out
    for key in index:
        here = sub[(sub["tlabel"] == key[0]) & (sub["family"] == key[1]) & sub["baseline"].notna()]
        if here.empty:
            continue
        w = t = l = u = 0
        for _, r in here.iterrows():
            p = r.get("p_value")
            if p is None or pd.isna(p):
                u += 1
            elif is_true(r.get("significant")):
                w += 1
            elif 1 - float(p) < ALPHA:
                l += 1
            else:
                t += 1
        out[key] = f"{w} / {t} / {l}" + (f" ({u} untested)" if u else "")
    return out


def _cell(value: float) -> str:
    return DASH if value is None or pd.isna(value) else f"{value:.3f}"


QPS_FIDELITY = "overlap@10"
QPS_TARGET = 0.5


def qps_ranking(points: pd.DataFrame, quality: str, fidelity: str = QPS_FIDELITY,
                target: float = QPS_TARGET) -> pd.DataFrame:
    """big-ann-benchmarks style ranking of one track: per variant, the highest single-thread QPS (1000 / p50 ms)
    among its operating points with mean ``fidelity`` ≥ ``target``; variants that never reach it are listed last
    with their best fidelity. Compressed variants only."""
    pts = points[(points["family"] != REFERENCE_FAMILY) & points["status"].eq("ok")] if "status" in points else \
        points[points["family"] != REFERENCE_FAMILY]
    rows = []
    for tlabel, sub in pts.dropna(subset=["p50_ms", fidelity]).groupby("tlabel"):
        ok = sub[sub[fidelity] >= target]
        if ok.empty:
            best = sub.sort_values(fidelity).iloc[-1]
            rows.append({"Method": tlabel, "Family": best["family"], "QPS (1 thread)": DASH,
                         "nprobe": _int_cell(best["nprobe"], True, "n/a"),
                         fidelity: f"{best[fidelity]:.3f} (never ≥ {target:g})", quality: f"{best[quality]:.3f}",
                         "p50 ms": f"{best['p50_ms']:.3f}", "_q": -1.0})
            continue
        best = ok.assign(q=1e3 / ok["p50_ms"]).sort_values("q").iloc[-1]
        rows.append({"Method": tlabel, "Family": best["family"], "QPS (1 thread)": f"{best['q']:,.0f}",
                     "nprobe": _int_cell(best["nprobe"], True, "n/a"), fidelity: f"{best[fidelity]:.3f}",
                     quality: f"{best[quality]:.3f}", "p50 ms": f"{best['p50_ms']:.3f}", "_q": float(best["q"])})
    out = pd.DataFrame(rows, columns=["Method", "Family", "QPS (1 thread)", "nprobe", fidelity, quality, "p50 ms",
                                      "_q"])
    out = out.sort_values(["_q", "Method"], ascending=[False, True]).drop(columns="_q").reset_index(drop=True)
    out.insert(0, "Rank", [str(i + 1) if q != DASH else DASH for i, q in enumerate(out["QPS (1 thread)"])])
    return out


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated by a smaller-or-equal ``x`` of higher ``y`` (lower ``x`` is better), sorted by ``x``."""
    ordered = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    return ordered[ordered[y] > ordered[y].cummax().shift(fill_value=-math.inf)]


def pareto_bytes(rows: pd.DataFrame, quality: str) -> pd.DataFrame:
    """Compressed rows (one dataset, one operating point) on the quality-vs-code-size Pareto front: no row with
    fewer or equal bytes/vector has a higher quality. Sorted by bytes/vector."""
    return pareto_front(rows[rows["family"] != REFERENCE_FAMILY], "bytes_per_vector", quality)


def pareto_table(front: pd.DataFrame, quality: str, reference: float | None) -> pd.DataFrame:
    return pd.DataFrame({
        "Method": list(front["label"]), "Family": list(front["family"]),
        "code B/vec": [f"{b:g}" for b in front["bytes_per_vector"]],
        "index B/vec": [DASH if pd.isna(v) else f"{v:.1f}" for v in front["index_bpv"]],
        quality: [f"{v:.3f}" for v in front[quality]],
        "vs exact search": [DASH if not reference else f"{v / reference:.1%}" for v in front[quality]]})


# ---------------------------------------------------------------- peers (other implementations)

PEERS_FILE = "peers.jsonl"   # written by bench/peer_scann.py --out DIR
PEER_KEYS = ("dataset", "peer", "peer_version", "family", "method", "bytes_per_vector", "params", "metrics")


def read_peers(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Peer records (another implementation measured on the same embeddings and split) and the problems found:
    a line that is not a JSON object with :data:`PEER_KEYS` is skipped and named."""
    if not path.exists():
        return [], []
    peers, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            missing = [k for k in PEER_KEYS if k not in rec] if isinstance(rec, dict) else list(PEER_KEYS)
            if missing:
                raise ValueError(f"missing {missing}")
        except ValueError as exc:
            problems.append(f"{path}:{n}: unreadable peer record, skipped ({exc})")
            continue
        peers.append(rec)
    return peers, problems


def peer_table(peers: list[dict[str, Any]], rows: pd.DataFrame, quality: str) -> pd.DataFrame:
    """One line per peer record: its measures beside the best row of the same family and code size here (``rows``:
    one dataset's exhaustive view) and the difference in ``quality``."""
    lines = []
    for p in sorted(peers, key=lambda r: (r["bytes_per_vector"], r["peer"], r["method"])):
        same = rows[(rows["family"] == p["family"]) & (rows["bytes_per_vector"] == p["bytes_per_vector"])]
        same = same.dropna(subset=[quality])
        best = None if same.empty else same.loc[same[quality].idxmax()]
        q = p["metrics"].get(quality, math.nan)
        lines.append({
            "Peer": f"{p['peer']} {p['peer_version']}: {p['method']}", "code B/vec": f"{p['bytes_per_vector']:g}",
            quality: _cell(q), "RR@10": _cell(p["metrics"].get("RR@10", math.nan)),
            "R@100": _cell(p["metrics"].get("R@100", math.nan)),
            "overlap@10": _cell(p.get("fidelity", {}).get("overlap@10", math.nan)),
            "p50 ms": DASH if not (p.get("latency") or {}).get("p50_ms") else
            f"{p['latency']['p50_ms']:.3f}" + (f" {UNDER_LOAD}" if p["latency"].get("under_load") else ""),
            "best here (same family, exhaustive)": DASH if best is None else
            f"{best['label']}: {format_cell(best[quality], best[f'{quality}_std'], int(best['n_seeds']), 3)}, "
            f"p50 {best['p50_ms']:.3f} ms",
            f"Δ {quality} (here − peer)": DASH if best is None else f"{best[quality] - q:+.3f}"})
    return pd.DataFrame(lines)


# ---------------------------------------------------------------- paper-shaped tables

def _by_family(rows: pd.DataFrame, index: str) -> list[str]:
    order = rows.assign(_f=rows["family"].map(FAMILY_ORDER)).sort_values(["_f", index])
    return list(dict.fromkeys(order[index]))


def _wide(rows: pd.DataFrame, index: list[str], metrics: tuple[str, ...], datasets: list[str]) -> pd.DataFrame:
    wide = rows.set_index([*index, "dataset"])[list(metrics)].unstack("dataset").swaplevel(axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([datasets, list(metrics)]))


def table2(rows: pd.DataFrame, datasets: list[str], index: str = "label",
           reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Methods x (dataset, metric), like Distill-VQ's Table 2 (means over seeds); call it on one track. Ablation rows
    are left out (the label-budget and ablation tables have them); ``reference`` rows (exact search), when given, come
    first as "<label> (exact search)". ``attrs``: ``std`` (the seeds' std, same shape), ``marks`` ("†" where the row
    is significantly better than the track's best reconstruction baseline, quality measure only), ``family`` (per
    row) and ``reference`` (the reference row's name or None): :func:`write_table2` prints them."""
    rows = ranked(rows)
    order = _by_family(rows, index)
    table = _wide(rows, [index], PAPER_METRICS, datasets).reindex(order)
    seeds = rows["n_seeds"] if "n_seeds" in rows else pd.Series(1, index=rows.index)
    std_src, sig_src = rows[[index, "dataset"]].copy(), rows[[index, "dataset"]].copy()
    for m in PAPER_METRICS:   # the seeds' std (none with one seed); † only on the quality measure (the first)
        std_src[m] = rows[f"{m}_std"].where(seeds > 1) if f"{m}_std" in rows else math.nan
        sig_src[m] = (rows["significant"].map(lambda v: "†" if is_true(v) else "")
                      if m == PAPER_METRICS[0] and "significant" in rows else "")
    std = _wide(std_src, [index], PAPER_METRICS, datasets).reindex(order)
    marks = _wide(sig_src, [index], PAPER_METRICS, datasets).reindex(order).fillna("")
    family = rows.drop_duplicates(index).set_index(index)["family"].reindex(order)
    name = None
    if reference is not None and not reference.empty:
        ref = reference.drop_duplicates("dataset")
        name = f"{ref['label'].iloc[0]} (exact search)"
        line = _wide(ref.assign(_name=name), ["_name"], PAPER_METRICS, datasets)
        table = pd.concat([line.set_axis([name]), table])
        std = pd.concat([line.set_axis([name]) * math.nan, std])
        marks = pd.concat([pd.DataFrame("", index=[name], columns=line.columns), marks])
        family = pd.concat([pd.Series({name: REFERENCE_FAMILY}), family])
    table = table.rename_axis("Method")
    table.attrs.update(std=std.set_axis(table.index), marks=marks.set_axis(table.index),
                       family=family.set_axis(table.index), reference=name)
    return table


def write_table2(table: pd.DataFrame, directory: Path, stem: str, caption: str) -> list[Path]:
    """``stem.csv`` (family, then per dataset and metric the mean and its std over seeds, 4 decimals) and ``stem.tex``:
    booktabs, rows grouped by family under an italic family line, "mean ± std" cells (the std in small type, none
    with one seed), † after the quality measure of significant rows, the best mean of each column in bold (the
    exact-search reference row first, never bold)."""
    std, marks, family = table.attrs["std"], table.attrs["marks"], table.attrs["family"]
    csv, tex = directory / f"{stem}.csv", directory / f"{stem}.tex"
    flat = pd.DataFrame({"Family": family}, index=table.index)
    for column in table.columns:
        flat["/".join(column)] = table[column]
        flat["/".join(column) + " std"] = std[column]
    write_text(csv, flat.to_csv(float_format="%.4f"))
    ranked_rows = [i for i in table.index if i != table.attrs["reference"]]
    best = {c: table.loc[ranked_rows, c].max() for c in table.columns}
    groups = list(dict.fromkeys(table.columns.get_level_values(0)))
    width = 1 + len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{tab:{stem}}}",
             rf"\begin{{tabular}}{{l{'r' * len(table.columns)}}}", r"\toprule",
             " & ".join([""] + [rf"\multicolumn{{{int((table.columns.get_level_values(0) == g).sum())}}}{{c}}"
                                rf"{{{latex_escape(g)}}}" for g in groups]) + r" \\",
             " ".join(rf"\cmidrule(lr){{{2 + i * len(PAPER_METRICS)}-{1 + (i + 1) * len(PAPER_METRICS)}}}"
                      for i in range(len(groups))),
             " & ".join(["Method"] + [latex_escape(c[1]) for c in table.columns]) + r" \\"]
    current = None
    for name in table.index:
        if family[name] != current:
            current = family[name]
            lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(current)}}}}} \\"]
        cells = [latex_escape(name)]
        for column in table.columns:
            value = table.at[name, column]
            if pd.isna(value):
                cells.append("--")
                continue
            text = f"{value:.3f}"
            if name != table.attrs["reference"] and value == best[column]:
                text = rf"\textbf{{{text}}}"
            if not pd.isna(std.at[name, column]):
                text += rf"{{\scriptsize$\pm${std.at[name, column]:.3f}}}"
            if marks.at[name, column]:
                text += r"$^\dagger$"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    write_text(tex, "\n".join(lines) + "\n")
    return [csv, tex]


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
    csv, tex = directory / f"{stem}.csv", directory / f"{stem}.tex"
    flat = table.copy()
    flat.columns = ["/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    write_text(csv, flat.to_csv(float_format="%.4f"))
    write_text(tex, to_latex(table, caption, f"tab:{stem}", skip_bold))
    return [csv, tex]


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", DASH: "--",
                  "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "◆": r"$\diamond$", "≤": r"$\le$",
                  "≥": r"$\ge$", "Δ": r"$\Delta$", "×": r"$\times$"}


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
