"""Build the leaderboard of a run directory from its ``results.jsonl`` alone.

Writes ``leaderboard.md``, ``leaderboard.html`` (self-contained), ``summary.json``, ``tables/*.csv|tex`` and
``plots/*.png``. Usage: ``python -m benchmark.report RUN_DIR [--quality RR@10] [--latency-budget-ms X]
[--nprobe N] [--test wilcoxon]``. The latency budget, the fixed nprobe and the † rule are defined in
:mod:`benchmark.report.tables` and :mod:`benchmark.report.stats`.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.report import plots
from benchmark.report import tables as rt
from benchmark.records import read_records
from benchmark.report.html import render_html
from benchmark.report.stats import TESTS, footnote, mark_significance

QUALITY = ("nDCG@10", "RR@10")


def build_report(run_dir: str | Path, quality: str = "nDCG@10", latency_budget_ms: float | None = None,
                 fixed_nprobe: int | None = None, test: str = "ttest") -> dict[str, Path]:
    """Write every report output under ``run_dir``; return ``{relative name: path}`` of the files written."""
    if quality not in QUALITY:
        raise ValueError(f"quality must be one of {QUALITY}, got {quality!r}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {tuple(TESTS)}, got {test!r}")
    run_dir = Path(run_dir)
    records, problems = read_records(run_dir / "results.jsonl")
    doc, written = rt.Doc(), {}
    doc.add("heading", (1, "vqbench leaderboard"))
    summary: dict[str, Any] = {"run_dir": str(run_dir), "quality": quality, "test": test, "records": len(records),
                               "problems": problems, "latency_budget_ms": {}, "rows": [], "cross_dataset": []}
    if records:
        written.update(_report_records(doc, summary, rt.load_frame(records, run_dir), run_dir, quality,
                                       latency_budget_ms, fixed_nprobe, test))
    else:
        doc.add("text", "No records: `results.jsonl` is missing or empty, so there is nothing to rank yet.")
    doc.add("heading", (2, "Problems"))
    doc.add("list", problems or ["none: every line of `results.jsonl` was readable"])
    written.update(_write_outputs(doc, summary, run_dir))
    return written


def _report_records(doc: rt.Doc, summary: dict[str, Any], df: pd.DataFrame, run_dir: Path, quality: str,
                    budget_ms: float | None, fixed_nprobe: int | None, test: str) -> dict[str, Path]:
    points = rt.aggregate_points(df)
    datasets = sorted(df["dataset"].unique())
    budgets = {ds: (budget_ms, "given") if budget_ms is not None else rt.default_budget(points, ds)
               for ds in datasets}
    views = {"budget": mark_significance(rt.select_budget(points, quality, {d: b[0] for d, b in budgets.items()}),
                                         quality, test),
             "fixed": mark_significance(rt.select_fixed(points, fixed_nprobe), quality, test)}
    failed = int((df["status"] == "failed").sum())
    doc.add("text", f"Generated from `results.jsonl` alone: {len(df)} records ({failed} failed), "
                    f"{len(datasets)} dataset(s). Quality measure: **{quality}**. Values are mean ± std over seeds "
                    f"(plain value with one seed).")
    doc.add("text", _provenance(df))
    cross = rt.cross_dataset(views["budget"], quality)
    doc.add("heading", (2, "Summary across datasets"))
    doc.add("table", cross)
    doc.add("notes", [f"Each variant at its best nprobe within the latency budget. Mean rank of {quality} over the "
                      "datasets the variant has results on (1 = best); gain = mean relative difference to the best "
                      "reconstruction baseline of each dataset."])
    summary["cross_dataset"] = cross.to_dict(orient="records")
    written: dict[str, Path] = {}
    for ds in datasets:
        summary["latency_budget_ms"][ds] = {"ms": _json_value(budgets[ds][0]), "how": budgets[ds][1]}
        written.update(_dataset_section(doc, summary, df, points, views, ds, budgets[ds], fixed_nprobe, quality,
                                        test, run_dir))
    written.update(_paper_tables(doc, views["budget"], datasets, quality, run_dir))
    return written


def _provenance(df: pd.DataFrame) -> str:
    shas = sorted({sha[:10] for sha in df["git_sha"] if sha})
    return f"Code version (git): {', '.join(shas) or 'unknown'}; full provenance is in each record."


def _dataset_section(doc: rt.Doc, summary: dict[str, Any], df: pd.DataFrame, points: pd.DataFrame,
                     views: dict[str, pd.DataFrame], ds: str, budget: tuple[float, str], fixed_nprobe: int | None,
                     quality: str, test: str, run_dir: Path) -> dict[str, Path]:
    doc.add("heading", (2, ds))
    doc.add("list", rt.sanity_lines(points, ds))
    fixed_text = f"nprobe = {fixed_nprobe}" if fixed_nprobe is not None else "the nprobe closest to nlist/16"
    limit = f"p50 ≤ {budget[0]:.3f} ms" if math.isfinite(budget[0]) else "none"
    titles = {"budget": f"Best nprobe within a latency budget: {limit} ({budget[1]})",
              "fixed": f"At a fixed nprobe: {fixed_text} (non-IVF methods: their single row)"}
    for view, rows in views.items():
        notes = rt.Footnotes()
        full = rt.complete_rows(rows, df, ds)
        doc.add("heading", (3, titles[view]))
        doc.add("table", rt.display_table(full, quality, notes))
        doc.add("notes", [footnote(quality, test), *notes.lines()])
        summary["rows"] += [_summary_row(row, view) for _, row in full.iterrows()]
    return _dataset_plots(doc, points, views["budget"], ds, budget[0], quality, run_dir)


def _dataset_plots(doc: rt.Doc, points: pd.DataFrame, rows: pd.DataFrame, ds: str, budget: float, quality: str,
                   run_dir: Path) -> dict[str, Path]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ds).strip("-").lower() or "dataset"
    pts, here = points[points["dataset"] == ds], rows[rows["dataset"] == ds]
    flat = here.loc[here["method"] == "flat", quality]
    reference = float(flat.max()) if not flat.empty else None
    made = {
        "quality_vs_latency": plots.quality_vs_latency(
            pts, quality, budget, f"{ds}: {quality} vs latency (nprobe sweep)",
            run_dir / "plots" / f"{slug}_quality_vs_latency.png"),
        "quality_vs_bytes": plots.quality_vs_x(
            rt.swept(here, quality, "base_code_size", "bytes_per_vector"), quality, "base_code_size",
            "bytes_per_vector", "code size (bytes per vector, log2 scale)",
            f"{ds}: {quality} vs code size (best nprobe within the budget)",
            run_dir / "plots" / f"{slug}_quality_vs_bytes.png", reference, log2=True,
            tick_text=lambda v: f"{v:g}"),
        "label_budget": plots.quality_vs_x(
            rt.swept(here, quality, "base_label_fraction", "label_fraction"), quality, "base_label_fraction",
            "label_fraction", "fraction of labeled training queries",
            f"{ds}: {quality} vs label budget (best nprobe within the budget)",
            run_dir / "plots" / f"{slug}_label_budget.png", reference, tick_text=lambda v: f"{v:.0%}"),
    }
    written = {}
    for name, path in made.items():
        if path is not None:
            rel = path.relative_to(run_dir).as_posix()
            doc.add("image", (rel, f"{ds}: {name.replace('_', ' ')}"))
            written[rel] = path
    return written


def _paper_tables(doc: rt.Doc, rows: pd.DataFrame, datasets: list[str], quality: str,
                  run_dir: Path) -> dict[str, Path]:
    doc.add("heading", (2, "Paper-style tables"))
    if rows.empty:
        doc.add("list", ["all tables skipped: no successful record."])
        return {}
    view = "each variant at its best nprobe within the latency budget, mean over seeds"
    reference = frozenset(rows.loc[rows["family"] == "reference", "label"])
    specs = {
        "table2": (rt.table2(rows, datasets), f"Methods x datasets ({view}); best compressed value in bold.",
                   reference),
        "table3": (rt.table3(rows, datasets), f"Loss and candidate ablation ({view}).", frozenset()),
        "table6": (rt.sweep_table(rows, quality, "base_code_size", "bytes_per_vector", lambda v: f"{v:g} B"),
                   f"{quality} vs code size in bytes per vector ({view}).", frozenset()),
        "label_budget": (rt.sweep_table(rows, quality, "base_label_fraction", "label_fraction",
                                        lambda v: f"{v:.0%}"),
                         f"{quality} vs fraction of labeled training queries ({view}).", frozenset()),
    }
    missing = {"table3": "no variant was run with two or more (loss, candidates) combinations",
               "table6": "no variant was run at two or more code sizes",
               "label_budget": "no variant was run at two or more `label_fraction` values"}
    items, written = [], {}
    for stem, (table, caption, skip) in specs.items():
        if table is None or table.empty:
            items.append(f"{stem}: skipped, {missing.get(stem, 'no data')}.")
            continue
        paths = rt.write_table(table, run_dir / "tables", stem, caption, skip)
        written.update({p.relative_to(run_dir).as_posix(): p for p in paths})
        items.append(f"{stem}: " + ", ".join(f"`{p.relative_to(run_dir).as_posix()}`" for p in paths))
    doc.add("list", items)
    return written


def _summary_row(row: pd.Series, view: str) -> dict[str, Any]:
    ok = row["status"] == "ok"
    measures = {k: {"mean": _json_value(row[k]), "std": _json_value(row[f"{k}_std"])} if ok else None
                for k in rt.NUMERIC}
    return {"dataset": row["dataset"], "view": view, "variant": row["label"], "method": row["method"],
            "family": row["family"], "params": row["params"] if ok else None, "status": row["status"],
            "reason": row["reason"], "nprobe": _json_value(row["nprobe"]) if ok else None,
            "n_seeds": _json_value(row["n_seeds"]) if ok else 0,
            "bytes_per_vector": _json_value(row["bytes_per_vector"]) if ok else None, "values": measures,
            "baseline": row.get("baseline") if ok else None, "p_value": _json_value(row.get("p_value")),
            "significant": ok and rt.is_true(row.get("significant"))}


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return _json_value(value.item())
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53 else value


def _write_outputs(doc: rt.Doc, summary: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"leaderboard.md": run_dir / "leaderboard.md", "leaderboard.html": run_dir / "leaderboard.html",
             "summary.json": run_dir / "summary.json"}
    paths["leaderboard.md"].write_text(doc.markdown(), encoding="utf-8")
    paths["leaderboard.html"].write_text(render_html(doc, run_dir, "vqbench leaderboard"), encoding="utf-8")
    paths["summary.json"].write_text(json.dumps(summary, indent=1, default=str, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (also used by ``run_benchmark.py --report-only DIR``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding results.jsonl")
    parser.add_argument("--quality", choices=QUALITY, default="nDCG@10", help="measure to rank by")
    parser.add_argument("--latency-budget-ms", type=float, default=None,
                        help="p50 budget in ms (default: the p50 of flat on each dataset)")
    parser.add_argument("--nprobe", type=int, default=None, help="fixed nprobe (default: closest to nlist/16)")
    parser.add_argument("--test", choices=tuple(TESTS), default="ttest", help="paired test for the † mark")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        parser.error(f"{args.run_dir} is not a directory")
    written = build_report(args.run_dir, args.quality, args.latency_budget_ms, args.nprobe, args.test)
    for name in sorted(written):
        print(written[name])
    return 0

