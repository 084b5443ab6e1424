"""Build the leaderboard of a run directory from its ``results.jsonl`` alone.

Writes ``leaderboard.md``, ``leaderboard.html`` (self-contained), ``summary.json``, ``tables/*.csv|tex``,
``plots/*.png`` (``leaderboard.png`` too with ``--screenshot``) and ``significance.json`` (the paired tests behind the
† marks and the ◆ tie groups, so a rebuild without the per-query sidecars keeps them; see
:func:`benchmark.report.stats.mark_significance` and :func:`benchmark.report.stats.mark_ties`). Usage:
``python -m benchmark.report RUN_DIR [--track 16] [--budget-ms X | --budget-fraction F] [--quality RR@10]
[--test wilcoxon] [--out DIR] [--screenshot]``.
Tracks, the two operating points and the default latency budget are defined in :mod:`benchmark.report.tables`, the
† and tie rules in :mod:`benchmark.report.stats`.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark._io import write_json, write_text
from benchmark.records import read_records
from benchmark.registry import REFERENCE_FAMILY
from benchmark.report import plots
from benchmark.report.browser import WIDTH, browser_missing, screenshot
from benchmark.report import tables as rt
from benchmark.report.html import render_html
from benchmark.report.stats import (CACHE_FILE, TESTS, TIE, footnote, mark_significance, mark_ties, read_cache,
                                    tie_footnote)

QUALITY = ("nDCG@10", "RR@10")
SITE_INDEX = "index.html"   # the cross-report page, one folder up (benchmark.report.site)
TITLE = "vqbench leaderboard"


def report_name(out: Path) -> str:
    """A report's name: its folder's (``reports/debian-desc`` -> ``debian-desc``)."""
    return Path(out).resolve().name


def build_report(run_dir: str | Path, quality: str = "nDCG@10", budget_ms: float | None = None,
                 budget_fraction: float | None = None, track: float | None = None,
                 test: str = "ttest", out_dir: str | Path | None = None, site: bool | None = None
                 ) -> dict[str, Path]:
    """Write every report output of ``run_dir``'s records under ``out_dir`` (default ``run_dir``); return
    ``{relative name: path}`` of the files written.

    The pruned operating point: by default the largest swept nprobe ≤ nlist/16 (:func:`rt.nprobe_rule`, so no
    timing decides which point a row is ranked at); ``budget_ms`` instead fixes a p50 budget on every dataset, and
    ``budget_fraction`` a budget of that fraction of the reference's p50 per dataset. ``track`` (bytes/vector)
    restricts the report to one code budget (the exact-search reference stays)."""
    if quality not in QUALITY:
        raise ValueError(f"quality must be one of {QUALITY}, got {quality!r}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {tuple(TESTS)}, got {test!r}")
    if budget_ms is not None and not (math.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
    if budget_fraction is not None and not (math.isfinite(budget_fraction) and 0 < budget_fraction <= 1):
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction!r}")
    if track is not None and not (math.isfinite(track) and track > 0):
        raise ValueError(f"track must be a positive number of bytes per vector, got {track!r}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    records, problems = read_records(run_dir / "results.jsonl")
    doc = rt.Doc()
    # every page named after its report (the folder), not one title for all
    doc.add("heading", (1, f"{TITLE}: {report_name(out)}" + (f", track {rt.track_name(track)}" if track is not None
                                                             else "")))
    summary: dict[str, Any] = {"run_dir": str(run_dir), "quality": quality, "test": test, "records": len(records),
                               "problems": problems, "track": track, "latency_budget_ms": {}, "rows": [],
                               "glance": [], "cross_dataset": {}}
    written: dict[str, Path] = {}
    if records:
        df = rt.load_frame(records, run_dir)
        if track is not None:
            tracks = rt.tracks_of(df)
            if track not in tracks:
                raise ValueError(f"track {track:g} is not in {run_dir / 'results.jsonl'}; its tracks (bytes/vector):"
                                 f" {', '.join(f'{t:g}' for t in tracks) or 'none'}")
            df = df[(df["track"] == track) | (df["family"] == REFERENCE_FAMILY)]
        written.update(_report_records(doc, summary, df, records, run_dir, out, quality, budget_ms,
                                       budget_fraction, test))
    else:
        doc.add("text", "No records: `results.jsonl` is missing or empty, so there is nothing to rank yet.")
    doc.add("heading", (2, "Problems"))
    doc.add("list", summary["problems"] or ["none: every line of `results.jsonl` was readable"])
    written.update(_write_outputs(doc, summary, out, site))
    return written


def _report_records(doc: rt.Doc, summary: dict[str, Any], df: pd.DataFrame, records: list[dict[str, Any]],
                    run_dir: Path, out: Path, quality: str, budget_ms: float | None, fraction: float | None,
                    test: str) -> dict[str, Path]:
    points = rt.aggregate_points(df)
    datasets = sorted(df["dataset"].unique())
    budgets = {ds: (rt.nprobe_rule() if budget_ms is None and fraction is None
                    else rt.latency_budget(points, ds, budget_ms, fraction or rt.DEFAULT_BUDGET_FRACTION))
               for ds in datasets}
    cache, cache_problems = read_cache(run_dir / CACHE_FILE)
    peers, peer_problems = rt.read_peers(run_dir / rt.PEERS_FILE)
    summary["problems"] += cache_problems + peer_problems
    summary["peers"] = []
    before = dict(cache)
    views = {"exhaustive": mark_significance(rt.select_exhaustive(points), quality, test, cache),
             "pruned": mark_significance(rt.select_pruned(points, quality, budgets), quality, test, cache)}
    points_named = {"exhaustive": "exhaustive", "pruned": {ds: f"pruned, {b.text}" for ds, b in budgets.items()}}
    views = {k: mark_ties(v, quality, test, cache, points_named[k]) for k, v in views.items()}
    written: dict[str, Path] = {}
    if cache and (cache != before or out != run_dir):
        write_json(out / CACHE_FILE, cache, indent=0, ensure_ascii=False)
        written[CACHE_FILE] = out / CACHE_FILE
    compared = [v[v["baseline"].notna()] for v in views.values()]
    tested = any(not c["untested"].map(rt.is_true).all() for c in compared if not c.empty)
    from_cache = sum(int(v["cached"].map(rt.is_true).sum()) for v in views.values())
    ties_cached = sum(int(v["tie_cached"].map(rt.is_true).sum()) for v in views.values())
    ties_tested = any(v["tie_status"].isin(["tied", "not tied"]).any() for v in views.values())
    if not tested:  # no sidecar at all (e.g. a committed report): one note instead of a footnote per row
        views = {k: v.assign(untested=False) for k, v in views.items()}
    failed = int((df["status"] == "failed").sum())
    tracks = rt.tracks_of(df)
    doc.add("text", f"Generated from `results.jsonl` alone: {len(df)} records ({failed} failed), "
                    f"{len(datasets)} dataset(s), tracks (code bytes/vector): "
                    f"{', '.join(rt.track_name(t) for t in tracks) or 'none'}. Quality measure: **{quality}**. "
                    f"Values are mean ± std over seeds (plain value with one seed).")
    dev = rt.development_splits(records)
    summary["development"] = dev
    if dev:
        doc.add("text", f"**Development split, not a test result**: {', '.join(f'`{d}`' for d in dev)} "
                        f"evaluate(s) on labeled train queries held out from training to choose params (tuning, "
                        f"defaults, ablations). The test split is never loaded here; test results are in the "
                        f"reports that use the chosen params.")
    doc.add("text", "How to read it: methods compete only inside a **track** (the same code size in bytes per "
                    "vector); nothing here ranks across tracks. Each track is ranked twice: **exhaustive** (the "
                    "quantizer alone: nprobe = nlist, or no IVF) and **pruned** (IVF scanning a fixed share of its "
                    "lists, nprobe ≤ nlist/16 unless the report was built with a latency budget; the rule per "
                    "dataset is below; flat layouts cannot prune and are listed after the rows that do). "
                    "*index B/vec* counts everything the index stores per document (IVF list ids, codebooks), "
                    "*code B/vec* only the code. *Tuning*: the dev-split trials (and CPU hours) that chose a "
                    "row's params and the tuning report they come from (another collection's: params transferred), "
                    "or *defaults*. Each track "
                    f"opens with a one-line verdict per operating point; its *tie* column marks with {TIE} the rows "
                    "whose difference from the track's best is not significant after Holm's correction (the rule "
                    "is in the notes under each table).")
    notes = [footnote(quality, test), tie_footnote(quality, test)]
    if from_cache:
        notes.append(f"† of rows whose per-query sidecars are absent: read from `{CACHE_FILE}`, the paired tests "
                     f"an earlier build of this report computed from those sidecars ({from_cache} row(s)).")
    if ties_cached:
        notes.append(f"{TIE} tests of rows whose per-query sidecars are absent: read from `{CACHE_FILE}` "
                     f"({ties_cached} row(s)); Holm's correction is recomputed from their raw p-values.")
    if not ties_tested:
        notes.append(f"{TIE} no tie test anywhere in this report: no two competing rows of a track both have "
                     f"per-query values (sidecars or `{CACHE_FILE}`), so every row but each track's best is untested.")
    if not tested:
        notes.append("† not tested anywhere in this report: no per-query sidecar is in this folder (records "
                     "written before sidecars were committed, as `per_query/*.json.gz`, kept theirs out of git); "
                     "re-run the records' configs to get the marks.")
    summary["sidecars"] = tested
    summary["verdicts"] = {}
    glance = rt.glance(views, budgets, quality)
    doc.add("heading", (2, "At a glance"))
    doc.add("table", glance)
    doc.add("notes", ["Best variant per track and operating point (budgets: " + "; ".join(
        f"{ds}: {b.text}, {b.how}" for ds, b in budgets.items()) + ").", *notes])
    summary["glance"] = glance.to_dict(orient="records")
    if len(datasets) >= 2:
        _cross_dataset(doc, summary, df, points, views, datasets, tracks, quality, notes)
    for ds in datasets:
        summary["latency_budget_ms"][ds] = {"ms": _json_value(budgets[ds].ms), "how": budgets[ds].how}
        written.update(_dataset_section(doc, summary, df, points, views, ds, budgets[ds], quality, test, notes,
                                        out, [p for p in peers if p["dataset"] == ds], encode_lines(records, ds)))
    written.update(_paper_tables(doc, views["exhaustive"], datasets, tracks, quality, out))
    doc.add("heading", (2, "Provenance"))
    doc.add("list", provenance_lines(records))
    summary["row_provenance"] = row_provenance(df, records)
    return written


def _cross_dataset(doc: rt.Doc, summary: dict[str, Any], df: pd.DataFrame, points: pd.DataFrame,
                   views: dict[str, pd.DataFrame], datasets: list[str], tracks: list[float], quality: str,
                   notes: list[str]) -> None:
    doc.add("heading", (2, "Across datasets"))
    doc.add("text", f"{quality} per dataset in BEIR's layout, one table per track and operating point (pruned: "
                    "within each dataset's own latency budget); *Index B/vec* is what a row's index stores per "
                    "document (codes, IVF list ids, codebooks and centroids: the range over the datasets), the track "
                    "is its code bytes; the average is over every dataset (— when a variant "
                    f"misses one or is over the budget on one). {TIE} after a value: the row is in the tie group of "
                    "that dataset's track table at this operating point; *(untested)*: it has no tie test there.")
    ref = points[points["family"] == REFERENCE_FAMILY]
    for track in tracks:
        doc.add("heading", (3, f"Track {rt.track_name(track)}/vector"))
        for view in rt.VIEWS:
            table = rt.cross_dataset(views[view], quality, datasets, track, ref)
            doc.add("heading", (4, view))
            doc.add("table", table)
            summary["cross_dataset"][f"{track:g}/{view}"] = table.to_dict(orient="records")
    doc.add("notes", notes)


def _protocol(rows: pd.DataFrame) -> str:
    """How the latencies of ``rows`` were timed, from their records: the protocol's repetitions, or the older single
    pass (records from before the timing protocol keep no repetition count)."""
    ok = rows[(rows["status"] == "ok") & rows["p50_ms"].notna()]   # load_frame always has both columns
    reps = sorted({int(r) for r in ok["timing_repeats"].dropna()})
    old = int(ok["timing_repeats"].isna().sum())
    text = ("the timing protocol: warm-up, best of " + " or ".join(map(str, reps)) + " interleaved repetitions"
            if reps else "timed before the timing protocol: one pass per point, no load check")
    return text + (f"; {old} of {len(ok)} points timed before it, in one pass" if reps and old else "")


def _dataset_section(doc: rt.Doc, summary: dict[str, Any], df: pd.DataFrame, points: pd.DataFrame,
                     views: dict[str, pd.DataFrame], ds: str, budget: rt.Budget, quality: str, test: str,
                     notes: list[str], out: Path, peers: list[dict[str, Any]],
                     encodes: list[str] | None = None) -> dict[str, Path]:
    doc.add("heading", (2, ds))
    cpus = df.loc[df["dataset"] == ds, "cpu"].dropna().unique() if "cpu" in df else []
    hardware = ", ".join(sorted(str(c) for c in cpus if c)) or "not recorded"
    ceiling = rt.reference_line(points, ds, quality)
    doc.add("list", [*([ceiling] if ceiling else []), *rt.sanity_lines(points, ds, quality),
                     f"Latency budget of the pruned point: {budget.text} ({budget.how}).", *(encodes or [])])
    written = _dataset_plots(doc, points, views, ds, budget, quality, out, first=True)
    titles = {"exhaustive": "exhaustive (nprobe = nlist, or no IVF)",
              "pruned": f"pruned: best nprobe with {budget.text}"}
    points_named = {"exhaustive": "exhaustive", "pruned": f"pruned ({budget.text})"}
    for track in sorted(df.loc[df["dataset"] == ds, "track"].dropna().unique()):
        doc.add("heading", (3, f"Track {rt.track_name(track)}/vector"))
        verdicts = []
        for view, rows in views.items():
            here = rows[rows["dataset"] == ds]
            verdicts.append(rt.verdict_line(here[here["track"] == track], here, quality, test, points_named[view]))
            summary["verdicts"].setdefault(ds, {})[f"{track:g}/{view}"] = verdicts[-1]
        doc.add("list", verdicts)
        foot = rt.Footnotes()
        apart = {}
        for view, rows in views.items():
            full = rt.track_rows(rows, df, ds, track)
            doc.add("heading", (4, titles[view]))
            doc.add("table", rt.display_track_table(rt.ranked(full), quality, foot))
            summary["rows"] += [_summary_row(row, view, track) for _, row in full.iterrows()]
            apart[view] = full.drop(index=rt.ranked(full).index)
        for view, rows in apart.items():
            if not rows.empty:
                doc.add("heading", (4, f"{view}: ablations and label-budget runs, not ranked"))
                doc.add("table", rt.display_apart_table(rows, quality, foot))
        doc.add("notes", [*notes, *foot.lines()])
        pts = points[(points["dataset"] == ds) & (points["track"] == track)]
        ranking = rt.qps_ranking(pts, quality)
        if not ranking.empty:
            doc.add("heading", (4, f"throughput at {rt.QPS_FIDELITY} ≥ {rt.QPS_TARGET:g}"))
            doc.add("table", ranking)
            doc.add("notes", [f"big-ann-benchmarks style: each variant's highest single-thread QPS (1000 / p50 ms) "
                              f"among its operating points whose mean {rt.QPS_FIDELITY} (agreement with the exact "
                              f"top-10) is at least {rt.QPS_TARGET:g}; hardware: {hardware}, 1 search thread "
                              f"({_protocol(df[df['dataset'] == ds])})."])
            summary.setdefault("qps_ranking", {}).setdefault(ds, {})[f"{track:g}"] = ranking.to_dict(
                orient="records")
    unplaced = rt.unplaced_failures(df, ds)
    if unplaced:
        doc.add("heading", (3, "Failed in every run (no code size known, so in no track)"))
        doc.add("list", unplaced)
    if peers:
        exhaustive = views["exhaustive"]
        table = rt.peer_table(peers, exhaustive[exhaustive["dataset"] == ds], quality)
        doc.add("heading", (3, "Peers: other implementations on the same embeddings"))
        doc.add("table", table)
        split = peers[0].get("split", "eval")
        doc.add("notes", [f"Measured by another implementation on this dataset's embeddings and {split} "
                          f"split (`{rt.PEERS_FILE}`, written by `bench/peer_scann.py --out`), not by this harness's "
                          "faiss index: no per-query test; its p50 is timed by the same protocol on the same "
                          "queries (1 thread, warm-up, best of 5 interleaved repetitions; — when the peer record "
                          "has no timing); each peer record carries its params and provenance."])
        summary["peers"] += table.assign(dataset=ds).to_dict(orient="records")
    written.update(_dataset_plots(doc, points, views, ds, budget, quality, out, first=False, peers=peers))
    return written


def _slug(ds: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", ds).strip("-").lower() or "dataset"


def _dataset_plots(doc: rt.Doc, points: pd.DataFrame, views: dict[str, pd.DataFrame], ds: str, budget: rt.Budget,
                   quality: str, out: Path, first: bool, peers: list[dict[str, Any]] = ()) -> dict[str, Path]:
    """``first``: the small multiples (right under the dataset heading); else the frontier, label-budget and
    train-time plots (after the track tables)."""
    slug, plot_dir = _slug(ds), out / "plots"
    pts = points[points["dataset"] == ds]
    exhaustive = views["exhaustive"]
    here = exhaustive[(exhaustive["dataset"] == ds) & (exhaustive["family"] != REFERENCE_FAMILY)]
    ref = pts.loc[pts["family"] == REFERENCE_FAMILY, quality]
    reference = float(ref.max()) if not ref.empty else None
    if first:
        made = {"tracks": (plots.tracks_vs_latency(
            pts, quality, budget.ms, reference, f"{ds}: {quality} vs latency, one panel per code size",
            plot_dir / f"{slug}_tracks.png"), None),
                "recall_qps": (plots.tracks_recall_qps(
                    pts, rt.QPS_FIDELITY, rt.QPS_TARGET, f"{ds}: {rt.QPS_FIDELITY} vs QPS (1 thread), one panel "
                    "per code size", plot_dir / f"{slug}_recall_qps.png"), None)}
    else:
        # the frontier compares methods trained on all their data; reduced-label variants have their own plot
        full = here[here["label_fraction"].isna() | (here["label_fraction"] >= 1.0)]
        front = rt.pareto_bytes(full, quality)
        made = {
            "frontier": (plots.quality_vs_bytes(
                full, quality, reference, f"{ds}: {quality} vs code size (exhaustive)",
                plot_dir / f"{slug}_frontier.png",
                [(f"{p['peer']} {p['method']}", p["bytes_per_vector"], p["metrics"].get(quality)) for p in peers]),
                rt.pareto_table(front, quality, reference)),
            "label_budget": (plots.label_budget(
                here, quality, reference, f"{ds}: {quality} vs label budget (exhaustive)",
                plot_dir / f"{slug}_label_budget.png"), None),
            "train_time": (plots.train_time(
                here, quality, reference, f"{ds}: {quality} vs training time (exhaustive)",
                plot_dir / f"{slug}_train_time.png"), None),
        }
    captions = {"tracks": "each variant's nprobe sweep per track; black dashed = Pareto front of the panel",
                "recall_qps": f"{rt.QPS_FIDELITY} vs single-thread QPS (log) per track, ann-benchmarks style; "
                              "black dashed = Pareto front",
                "frontier": "quality vs code size; the table lists the Pareto-optimal points (peers, black stars, "
                            "are not ranked)",
                "label_budget": "quality vs fraction of labeled training queries",
                "train_time": "quality vs training seconds"}
    written = {}
    for name, (path, table) in made.items():
        if path is None:
            continue
        rel = path.relative_to(out).as_posix()
        if not first:
            doc.add("heading", (3, captions[name][0].upper() + captions[name][1:].split(";")[0]))
        doc.add("image", (rel, f"{ds}: {captions[name]}"))
        if table is not None:
            doc.add("table", table)
        written[rel] = path
    return written


def _paper_tables(doc: rt.Doc, rows: pd.DataFrame, datasets: list[str], tracks: list[float], quality: str,
                  out: Path) -> dict[str, Path]:
    doc.add("heading", (2, "Paper-style tables"))
    reference = rows[rows["family"] == REFERENCE_FAMILY]
    rows = rows[rows["family"] != REFERENCE_FAMILY]
    if rows.empty:
        doc.add("list", ["all tables skipped: no successful compressed record."])
        return {}
    view = "exhaustive operating point, mean over seeds"
    specs: dict[str, tuple[pd.DataFrame | None, str]] = {}
    for track in tracks:
        specs[f"table2_{track:g}B"] = (rt.table2(rows[rows["track"] == track], datasets, "tlabel", reference),
                                       f"Methods x datasets, track {rt.track_name(track)}/vector ({view}), rows "
                                       f"grouped by family; mean ± std over seeds, best mean in bold; † = "
                                       f"significantly better in {quality} than the track's best reconstruction "
                                       f"baseline (paired test per query, p < 0.05); exact search is a reference, "
                                       f"not ranked; ablation and label-budget runs are in their own tables.")
    specs["table3"] = (rt.table3(rows, datasets), f"Loss and candidate ablation ({view}).")
    specs["table6"] = (rt.sweep_table(rows, quality, "base_code_size", "bytes_per_vector", lambda v: f"{v:g} B"),
                       f"{quality} vs code size in bytes per vector ({view}).")
    specs["label_budget"] = (rt.sweep_table(rows, quality, "base_label_fraction", "label_fraction",
                                            lambda v: f"{v:.0%}"),
                             f"{quality} vs fraction of labeled training queries ({view}).")
    missing = {"table3": "no variant was run with two or more (loss, candidates) combinations",
               "table6": "no variant was run at two or more code sizes",
               "label_budget": "no variant was run at two or more `label_fraction` values"}
    items, written = [], {}
    for stem, (table, caption) in specs.items():
        if table is None or table.empty:
            items.append(f"{stem}: skipped, {missing.get(stem, 'no data')}.")
            continue
        write = rt.write_table2 if stem.startswith("table2_") else rt.write_table
        paths = write(table, out / "tables", stem, caption)
        written.update({p.relative_to(out).as_posix(): p for p in paths})
        items.append(f"{stem}: " + ", ".join(f"[`{p.relative_to(out).as_posix()}`]({p.relative_to(out).as_posix()})"
                                             for p in paths))
    doc.add("list", items)
    return written


def row_provenance(df: pd.DataFrame, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant label (a row of the tables): what produced it, per dataset: params, seeds, fit ids, code version,
    time span, machine, threads, encoder, setup, tuning and command lines (the HTML page links every row here)."""
    out: dict[str, dict[str, Any]] = {}
    for label, sub in df.groupby("label", sort=True):
        entry: dict[str, Any] = {"method": sub["method"].iloc[0], "family": sub["family"].iloc[0],
                                 "params": sub["params"].iloc[0], "datasets": {}}
        for ds, part in sub.groupby("dataset", sort=True):
            recs = [records[i] for i in part.index]
            prov = [r.get("provenance") or {} for r in recs]
            stamps = sorted(p["timestamp"] for p in prov if isinstance(p.get("timestamp"), str))
            first = recs[0]
            entry["datasets"][ds] = {
                "seeds": sorted({int(r["seed"]) for r in recs}), "fit_ids": sorted({r["fit_id"] for r in recs}),
                "status": sorted({r["status"] for r in recs}),
                "git_sha": sorted({str(p.get("git_sha", ""))[:12] for p in prov}),
                "written": [stamps[0], stamps[-1]] if stamps else None,
                "cpu": sorted({str(p.get("cpu")) for p in prov if p.get("cpu")}),
                "threads": prov[0].get("threads"), "encoder": first.get("encoder"), "setup": first.get("setup"),
                "tuning": first.get("tuning"), "index": first.get("index"),
                "command": sorted({" ".join(p.get("argv") or []) for p in prov})}
        out[label] = entry
    return out


def encode_lines(records: list[dict[str, Any]], ds: str) -> list[str]:
    """One line per distinct encode log (:func:`benchmark.data.encode.encode_stats`) the records of ``ds`` carry in
    ``provenance.encode``: what this project encoded, how long it took and under what load; none for embeddings
    brought as files or encoded before the log existed."""
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("dataset") == ds:
            logs = (rec.get("provenance") or {}).get("encode") or {}
            if logs:
                seen.setdefault(json.dumps(logs, sort_keys=True), logs)
    lines = []
    for logs in seen.values():
        parts = []
        for what, log in sorted(logs.items()):
            rate = log.get("texts_per_s")
            threads = "/".join(map(str, log.get("threads") or [])) or "?"
            untimed = log.get("untimed_texts") or 0
            parts.append(f"{what} {log.get('texts', 0):,} texts in {log.get('seconds', 0):,.0f} s"
                         + (f" ({rate:g} texts/s" if rate else " (") + f", {threads} torch thread(s), highest 1-min "
                         f"load {log.get('load1_max')}" + (f"; {untimed:,} texts encoded before the log, untimed"
                                                           if untimed else "") + ")")
        first = next(iter(logs.values()))
        lines.append(f"Encoded by this project with `{first.get('model')}` on {first.get('cpu')} "
                     f"({first.get('device')}): " + "; ".join(parts) + " (wall seconds of the encode chunks, pauses "
                     "between resumed runs excluded).")
    return lines


def provenance_lines(records: list[dict[str, Any]]) -> list[str]:
    """What produced the records: code version, library versions, CPU, threads, device, time span, command."""
    prov = [r.get("provenance") or {} for r in records]

    def values(get) -> str:
        seen: dict[str, int] = {}
        for p in prov:
            value = get(p)
            if value not in (None, "", {}):
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                seen[text] = seen.get(text, 0) + 1
        if not seen:
            return "not recorded"
        return "; ".join(f"`{v}`" + (f" ({n} records)" if len(seen) > 1 else "") for v, n in seen.items())

    versions = sorted({k for p in prov for k in (p.get("versions") or {})})
    stamps = sorted(p["timestamp"] for p in prov if isinstance(p.get("timestamp"), str))
    lines = [f"git sha: {values(lambda p: (p.get('git_sha') or '')[:12])}",
             "versions: " + ", ".join(f"{k} {values(lambda p, k=k: (p.get('versions') or {}).get(k))}"
                                      for k in versions),
             f"CPU: {values(lambda p: p.get('cpu'))}", f"threads: {values(lambda p: p.get('threads'))}",
             f"device: {values(lambda p: p.get('device'))}", f"platform: {values(lambda p: p.get('platform'))}",
             f"command line: {values(lambda p: ' '.join(p['argv']) if p.get('argv') else None)}"]
    if stamps:
        lines.append(f"records written from {stamps[0]} to {stamps[-1]}")
    loads = [p["loadavg"][1] for p in prov if isinstance(p.get("loadavg"), list) and len(p["loadavg"]) == 3]
    if loads:
        lines.append(f"machine load (5-minute load average when a fit's records were written): median "
                     f"{sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f} over {len(loads)} records "
                     f"(timings taken at a load above the machine's cores are inflated)")
    return lines


def _summary_row(row: pd.Series, view: str, track: float) -> dict[str, Any]:
    ok = row["status"] == "ok"
    measures = {k: {"mean": _json_value(row[k]), "std": _json_value(row[f"{k}_std"])} if ok else None
                for k in rt.NUMERIC}
    return {"dataset": row["dataset"], "view": view, "track": _json_value(track), "variant": row["label"],
            "name_in_track": row["tlabel"], "method": row["method"], "family": row["family"],
            "listed_apart": row.get("ablation") or None,
            "params": row["params"] if ok else None, "status": row["status"], "reason": row["reason"],
            "nprobe": _json_value(row["nprobe"]) if ok else None,
            "n_seeds": _json_value(row["n_seeds"]) if ok else 0,
            "fits_budget": ok and rt.is_true(row.get("fits")),
            "bytes_per_vector": _json_value(row["bytes_per_vector"]) if ok else None,
            "index_bytes_per_vector": _json_value(row["index_bpv"]) if ok else None, "values": measures,
            "baseline": row.get("baseline") if ok else None, "p_value": _json_value(row.get("p_value")),
            "significant": ok and rt.is_true(row.get("significant")),
            "tie": {"status": _json_value(row.get("tie_status")) if ok else None,
                    "best": _json_value(row.get("tie_best")) if ok else None,
                    "p_holm": _json_value(row.get("tie_p")), "p_raw": _json_value(row.get("tie_p_raw")),
                    "mean_diff_vs_best": _json_value(row.get("tie_diff")),
                    "ci95": None if _json_value(row.get("tie_diff")) is None else
                    [_json_value(row.get("tie_ci_low")), _json_value(row.get("tie_ci_high"))],
                    "holm_family": _json_value(row.get("tie_n"))}}


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return _json_value(value.item())
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53 else value


def _write_outputs(doc: rt.Doc, summary: dict[str, Any], out: Path, site: bool | None = None
                   ) -> dict[str, Path]:
    """The markdown and HTML pages and summary.json; the HTML links back to the site's index (``../index.html``)
    when ``site`` (None: when that index exists beside this report's folder)."""
    paths = {"leaderboard.md": out / "leaderboard.md", "leaderboard.html": out / "leaderboard.html",
             "summary.json": out / "summary.json"}
    write_text(paths["leaderboard.md"], doc.markdown())
    site = (out.parent / SITE_INDEX).is_file() if site is None else site
    write_text(paths["leaderboard.html"], render_html(doc, out, f"{report_name(out)} · {TITLE}",
                                                      summary.get("row_provenance"), SITE_INDEX if site else None))
    write_text(paths["summary.json"], json.dumps(summary, indent=1, default=str, ensure_ascii=False) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (also used by ``run_benchmark.py --report-only DIR``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding results.jsonl")
    parser.add_argument("--track", type=float, default=None,
                        help="only this code budget (bytes/vector); the exact-search reference stays")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="rank the pruned point within this p50 budget in ms, on every dataset (default: the "
                             "largest swept nprobe <= nlist/16, no timing involved)")
    parser.add_argument("--budget-fraction", type=float, default=None,
                        help="rank the pruned point within this fraction of the reference's p50, per dataset")
    parser.add_argument("--quality", choices=QUALITY, default="nDCG@10", help="measure to rank by")
    parser.add_argument("--test", choices=tuple(TESTS), default="ttest",
                        help="paired test for the † mark (one-sided) and the tie groups (two-sided)")
    parser.add_argument("--out", type=Path, default=None, help="write the report here (default: RUN_DIR)")
    parser.add_argument("--screenshot", action="store_true",
                        help=f"also save leaderboard.png: the page in headless Chromium, {WIDTH} px wide")
    args = parser.parse_args(argv)
    if args.screenshot and browser_missing():
        parser.error(f"--screenshot: {browser_missing()}")
    if not (args.run_dir / "results.jsonl").is_file():
        parser.error(f"{args.run_dir / 'results.jsonl'} does not exist: RUN_DIR must hold a results.jsonl")
    try:
        written = build_report(args.run_dir, args.quality, args.budget_ms, args.budget_fraction, args.track,
                               args.test, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    if args.screenshot:
        out = args.out if args.out is not None else args.run_dir
        written["leaderboard.png"] = screenshot(written["leaderboard.html"], out / "leaderboard.png")
    for name in sorted(written):
        print(written[name])
    return 0
