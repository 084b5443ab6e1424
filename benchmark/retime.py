"""Re-time a finished run without retraining: ``run_benchmark.py --retime DIR [--config C]``.

Every fit of ``DIR/results.jsonl`` whose index was saved (``--save-index``: ``DIR/indexes/<fit_id>.faiss`` and, for a
method with a query-side map, ``<fit_id>.query_map.npy``) is loaded and all its operating points are timed again in
one pass of the timing protocol (:func:`benchmark.harness.timing_pass`), on the same queries the run timed. Only the
``latency`` field of its records changes; the latency it replaces is kept, with when and where it was measured, in
``latency_history`` (oldest first), and ``retimed`` holds the new pass's provenance. Quality fields, params, run ids
and per-query files are untouched, so a report regenerated afterwards differs only in its latency columns.

Fits without a saved index keep their latency and are listed (re-run them with ``--save-index`` to make them
re-timeable). The records file is rewritten atomically after each fit (an interruption loses at most the fit being
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
from benchmark.harness import SearchSettings, timing_pass
from benchmark.provenance import git_sha, provenance
from benchmark.records import read_records


def _saved(run_dir: Path, rec: dict[str, Any]) -> tuple[Path, Path | None] | None:
    rel = (rec.get("index") or {}).get("path")
    path = run_dir / (rel or f"indexes/{rec['fit_id']}.faiss")
    if not path.is_file():
        return None
    qmap = path.with_name(path.name[:-len(".faiss")] + ".query_map.npy")
    return path, qmap if qmap.is_file() else None


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


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
    for n, (fid, rows) in enumerate(fits.items(), 1):
        first = records[rows[0]]
        label = f"{first['dataset']} {first['method']} seed={first['seed']} ({fid})"
        saved = _saved(run_dir, first)
        if saved is None:
            missing.append(label)
            continue
        if first["dataset"] not in datasets:
            datasets[first["dataset"]] = load(first["dataset"])
        ds = datasets[first["dataset"]]
        split = ds.split(first["split"])
        index = faiss.read_index(str(saved[0]))
        query_map = np.load(saved[1]) if saved[1] is not None else None
        points = [records[i]["nprobe"] for i in rows]
        old = first["latency"]   # time as the run did: same depth, same number of timed and warm-up queries
        same = replace(settings, latency_k=int(old.get("k", settings.latency_k)),
                       latency_queries=int(old.get("timed_queries", settings.latency_queries)),
                       warmup_queries=int(old.get("warmup_queries", settings.warmup_queries)))
        timings = timing_pass(index, split.query_emb, points, same, query_map)
        when = provenance(first["seed"])
        for i in rows:
            rec = records[i]
            before = rec.get("retimed") or rec["provenance"]
            rec["latency_history"] = [*rec.get("latency_history", []),
                                      {"latency": rec["latency"], "timestamp": before.get("timestamp"),
                                       "git_sha": before.get("git_sha"), "cpu": before.get("cpu")}]
            rec["latency"] = timings[rec["nprobe"]]
            rec["retimed"] = {**stamp, "timestamp": when["timestamp"], "cpu": when["cpu"],
                              "threads": when["threads"], "argv": when["argv"]}
        _write(path, records)
        p50 = ", ".join(f"{'-' if p is None else p}: {t['p50_ms']:.3g}" for p, t in timings.items())
        load_mark = " (under load)" if any(t["under_load"] for t in timings.values()) else ""
        log(f"[{n}/{len(fits)}] {label}: p50 ms {p50}{load_mark}")
        done.append(fid)
    return {"retimed": done, "missing": missing}
