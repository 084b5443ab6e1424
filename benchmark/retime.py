"""Re-time a finished run without retraining: ``run_benchmark.py --retime DIR [--config C]``.

Every fit of ``DIR/results.jsonl`` whose index was saved (``--save-index``: ``DIR/indexes/<fit_id>.faiss``, a query-side
map folded into it; one saved before that has a ``<fit_id>.query_map.npy`` beside it, folded in at load:
:func:`benchmark.vq.fold_query_map`) is loaded and all its operating points are timed again by
the timing protocol (:func:`benchmark.harness.time_points`), on the same queries the run timed, and *together with
the other fits of its dataset* (up to :data:`GROUP` per pass): the repetitions interleave every point of every fit,
so a change of the machine's speed during the pass (on a shared VM it can shift by 1.5x with no process of this
machine to show for it) hits all fits alike and fits compare fairly (``latency.timed_with`` = fits in the pass). Only the
``latency`` field of its records changes; the latency it replaces is kept, with when and where it was measured, in
``latency_history`` (oldest first), and ``retimed`` holds the new pass's provenance. Quality fields, params, run ids
and per-query files are untouched, so a report regenerated afterwards differs only in its latency columns.

Fits without a saved index keep their latency and are listed (re-run them with ``--save-index`` to make them
re-timeable), unless ``--refit-missing`` first fits them again here (:func:`refit_missing`: the index is kept only
when the refit reproduces the record's quality exactly). The records file is rewritten atomically after each pass (an interruption loses at most the pass being
timed; running the command again re-times everything once more). The folder's lock is held throughout, so a run
and a re-time never write one folder at once.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from benchmark._io import write_text
from benchmark.harness import SearchSettings, index_searchers, time_points
from benchmark.provenance import git_sha, provenance
from benchmark.vq import fold_query_map
from benchmark.records import query_map_beside, read_records, saved_index


def _saved(run_dir: Path, rec: dict[str, Any]) -> tuple[Path, Path | None] | None:
    rel = saved_index(rec)
    path = run_dir / rel
    if not path.is_file():
        return None
    qmap = run_dir / query_map_beside(rel)
    return path, qmap if qmap.is_file() else None


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


QUALITY_KEYS = ("metrics", "fidelity")   # what a refit must reproduce exactly for its index to stand in


def _refit_difference(recs: list[dict[str, Any]], result: Any) -> str | None:
    """The first way a refit (:class:`benchmark.runner.FitResult`) fails to reproduce a fit's records ``recs``, or
    None when every nprobe's quality (:data:`QUALITY_KEYS`) is equal."""
    if not result.ok:
        return f"refit failed: {result.error or '?'}"
    if result.fit_id != recs[0]["fit_id"]:
        return f"fit id {result.fit_id}"
    new = {r.get("nprobe"): r for r in result.records}
    for rec in recs:
        again = new.get(rec.get("nprobe")) or {}
        for key in QUALITY_KEYS:
            if rec.get(key) != again.get(key):
                return f"nprobe {rec.get('nprobe')}: {key} {rec.get(key)} vs {again.get(key)}"
    return None


def refit_missing(run_dir: str | Path, load: Callable[[str], Any], settings: SearchSettings, threads: int = 0,
                  only_marked: bool = False, log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Save an index for every fit of ``run_dir`` that has none, by fitting it again here (same dataset alias,
    method, recorded params and seed, ``threads`` as the run had them) and keeping the new index only when the refit
    reproduces the record's quality at every nprobe exactly (``metrics`` and ``fidelity``): then it is the index the
    record measured, and :func:`retime` can time it. Records are not touched. A refit that differs (another CPU or
    thread count can move an OPQ rotation: ``OPQ_THREADS_NOTE``) is reported and its index dropped. Returns
    ``{"saved": [fit ids], "differs": [labels with the first difference]}``. ``only_marked``: only the fits whose
    latency needs it (timed under load, or before the timing protocol: no repetitions)."""
    from benchmark.config import Job
    from benchmark.runner import default_cache_dir, execute_fit
    from benchmark._io import write_bytes
    run_dir = Path(run_dir)
    records, problems = read_records(run_dir / "results.jsonl")
    if problems:
        raise ValueError("; ".join(problems))
    fits: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        latency = rec.get("latency")
        if rec.get("status") != "ok" or not latency or _saved(run_dir, rec) is not None:
            continue
        if not only_marked or latency.get("under_load") or not latency.get("repeats"):
            fits.setdefault(rec["fit_id"], []).append(rec)
    saved, differs, datasets = [], [], {}
    for fid, recs in fits.items():
        first = recs[0]
        label = f"{first['dataset']} {first['method']} seed={first['seed']} ({fid})"
        if first["dataset"] not in datasets:
            datasets[first["dataset"]] = load(first["dataset"])
        log(f"refit (no saved index): {label}")
        result = execute_fit(Job(first["dataset"], first["method"], dict(first["params"]), int(first["seed"])),
                             datasets[first["dataset"]], settings, save_index=True, threads=threads,
                             cache_dir=default_cache_dir())   # the run's caches: its faiss inits and mined top-K
        diff = _refit_difference(recs, result)
        if diff:
            differs.append(f"{label}: {diff}")
            continue
        for rel, data in result.files.items():
            if rel.startswith("indexes/"):
                write_bytes(run_dir / rel, data)
        saved.append(fid)
    return {"saved": saved, "differs": differs}


def retime(run_dir: str | Path, load: Callable[[str], Any], settings: SearchSettings,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-time every saved fit of ``run_dir`` (see module doc). ``load(alias)`` returns the dataset a record's
    ``dataset`` names. Returns ``{"retimed": [fit ids], "missing": [fit labels without a saved index]}``."""
    run_dir = Path(run_dir)
    path = run_dir / "results.jsonl"
    records, problems = read_records(path)
    if problems:
        raise ValueError("; ".join(problems))
    fits: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.get("status") == "ok" and rec.get("latency"):
            fits.setdefault(rec["fit_id"], []).append(i)
    done, missing, datasets = [], [], {}
    stamp = {"git_sha": git_sha()}
    groups: dict[tuple, list[tuple[str, list[int], tuple[Path, Path | None]]]] = {}
    for fid, rows in fits.items():
        first = records[rows[0]]
        saved = _saved(run_dir, first)
        if saved is None:
            missing.append(f"{first['dataset']} {first['method']} seed={first['seed']} ({fid})")
            continue
        old = first["latency"]   # time as the run did: same depth, same number of timed and warm-up queries
        key = (first["dataset"], first["split"], int(old.get("k", settings.latency_k)),
               int(old.get("timed_queries", settings.latency_queries)),
               int(old.get("warmup_queries", settings.warmup_queries)))
        groups.setdefault(key, []).append((fid, rows, saved))
    for (alias, split_name, k, timed, warmup), members in groups.items():
        if alias not in datasets:
            datasets[alias] = load(alias)
        split = datasets[alias].split(split_name)
        same = replace(settings, latency_k=k, latency_queries=timed, warmup_queries=warmup)
        for start in range(0, len(members), GROUP):
            chunk = members[start:start + GROUP]
            done += _retime_group(records, chunk, split.query_emb, same, stamp, log)
            _write(path, records)
    return {"retimed": done, "missing": missing}


GROUP = 16   # fits timed together in one interleaved pass (their indexes are loaded at once)


def _retime_group(records: list[dict[str, Any]], members: list, queries: np.ndarray, settings: SearchSettings,
                  stamp: dict[str, Any], log: Callable[[str], None]) -> list[str]:
    """One timing pass over every operating point of every fit in ``members``, interleaved across the fits: a
    shift of the machine's speed during the pass hits every fit alike, so fits timed together compare fairly."""
    threads_before = faiss.omp_get_max_threads()
    batch_threads = settings.threads or threads_before
    searchers, keep = {}, []
    for fid, rows, (index_path, map_path) in members:
        # an index saved before query maps were folded in has its map beside it: folded now, as a fit does today
        # (the folded index keeps the one it wraps alive)
        index = fold_query_map(faiss.read_index(str(index_path)), np.load(map_path) if map_path is not None else None)
        keep.append(index)
        points = [records[i]["nprobe"] for i in rows]
        for point, s in index_searchers(index, points, settings.latency_k, batch_threads).items():
            searchers[(fid, point)] = s
    try:
        timings = time_points(searchers, queries, settings, batch_threads)
    finally:
        faiss.omp_set_num_threads(threads_before)
    done = []
    for fid, rows, _ in members:
        first = records[rows[0]]
        when = provenance(first["seed"])
        for i in rows:
            rec = records[i]
            before = rec.get("retimed") or rec["provenance"]
            rec["latency_history"] = [*rec.get("latency_history", []),
                                      {"latency": rec["latency"], "timestamp": before.get("timestamp"),
                                       "git_sha": before.get("git_sha"), "cpu": before.get("cpu")}]
            rec["latency"] = {**timings[(fid, rec["nprobe"])], "timed_with": len(members)}
            rec["retimed"] = {**stamp, "timestamp": when["timestamp"], "cpu": when["cpu"],
                              "threads": when["threads"], "argv": when["argv"]}
        p50 = ", ".join(f"{'-' if records[i]['nprobe'] is None else records[i]['nprobe']}: "
                        f"{records[i]['latency']['p50_ms']:.3g}" for i in rows)
        load_mark = " (under load)" if any(records[i]["latency"]["under_load"] for i in rows) else ""
        log(f"{first['dataset']} {first['method']} seed={first['seed']} ({fid}): p50 ms {p50}{load_mark}")
        done.append(fid)
    return done

