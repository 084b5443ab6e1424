"""The results record: one JSON object per line of ``results.jsonl``, appended atomically, validated on read.

Schema (every report is rebuilt from these records alone)::

    run_id, dataset, split, method, family, params{}, seed, nprobe,
    index{factory, nlist, M, nbits, bytes_per_vector, index_bytes, writeback},
    metrics{"nDCG@10","RR@10","R@10","R@100","R@1000"}, fidelity{"overlap@10","overlap@100"},
    latency{"p50_ms","p95_ms","qps","threads"}, train_seconds, per_query (sidecar path, relative to the file),
    provenance{git_sha, versions{torch, faiss, ir_measures, beir, python, numpy}, cpu, threads{...}, timestamp, ...}
    status ("ok" or "failed") and error (the reason, for a failed run: metrics etc. are then null)
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from benchmark import metrics

MEASURES = tuple(metrics.MEASURES)
FIDELITY = tuple(f"overlap@{k}" for k in metrics.FIDELITY_KS)
LATENCY = ("p50_ms", "p95_ms", "qps", "threads")
INDEX_KEYS = ("factory", "nlist", "M", "nbits", "bytes_per_vector", "writeback")
PROVENANCE_KEYS = ("git_sha", "versions", "cpu", "timestamp")
VERSION_KEYS = ("torch", "faiss", "ir_measures", "beir", "python")
TOP_KEYS = ("run_id", "dataset", "split", "method", "family", "params", "seed", "nprobe", "index", "metrics",
            "fidelity", "latency", "train_seconds", "per_query", "provenance", "status")


class RecordError(ValueError):
    """A record (or a line of results.jsonl) does not follow the schema."""


def run_id(dataset: str, split: str, method: str, params: dict[str, Any], seed: int, nprobe: int | None) -> str:
    """Stable id of one measurement: the same (dataset, split, method, params, seed, nprobe) gives the same id."""
    key = json.dumps([dataset, split, method, params, seed, nprobe], sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def validate_record(rec: dict[str, Any]) -> None:
    """Raise :class:`RecordError` naming the first missing/mistyped field."""
    for key in TOP_KEYS:
        if key not in rec:
            raise RecordError(f"record {rec.get('run_id', '?')}: missing key {key!r}")
    if rec["status"] not in ("ok", "failed"):
        raise RecordError(f"record {rec['run_id']}: status must be 'ok' or 'failed', got {rec['status']!r}")
    if not isinstance(rec["params"], dict):
        raise RecordError(f"record {rec['run_id']}: params must be a dict")
    prov = rec["provenance"]
    for key in PROVENANCE_KEYS:
        if key not in prov:
            raise RecordError(f"record {rec['run_id']}: provenance missing {key!r}")
    for key in VERSION_KEYS:
        if key not in prov["versions"]:
            raise RecordError(f"record {rec['run_id']}: provenance.versions missing {key!r}")
    if rec["status"] == "failed":
        if not rec.get("error"):
            raise RecordError(f"record {rec['run_id']}: a failed record needs an 'error' reason")
        return
    for group, keys in (("index", INDEX_KEYS), ("metrics", MEASURES), ("fidelity", FIDELITY),
                        ("latency", LATENCY)):
        for key in keys:
            if key not in rec[group]:
                raise RecordError(f"record {rec['run_id']}: {group} missing {key!r}")
    for key in MEASURES + FIDELITY:
        group = "metrics" if key in MEASURES else "fidelity"
        value = rec[group][key]
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise RecordError(f"record {rec['run_id']}: {group}[{key!r}] must be a number in [0, 1], got {value!r}")


def append_record(path: str | Path, rec: dict[str, Any]) -> None:
    """Validate and append one record as a single ``write`` of a complete line, under an exclusive lock.

    If the file ends in a torn line (a crash mid-write by an older writer), a newline is written first so the new
    record starts on its own line; the reader reports the torn line instead of silently skipping it.
    """
    validate_record(rec)
    line = (json.dumps(rec, sort_keys=True, default=_json_default) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def read_records(path: str | Path, strict: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Read every record; return ``(records, problems)``.

    Nothing is skipped silently: each unreadable/invalid line yields a problem string naming ``file:line`` (with
    ``strict=True`` the first one raises :class:`RecordError`). A later record with the same ``run_id`` replaces an
    earlier one (a re-run), and that is not a problem.
    """
    path = Path(path)
    by_id: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if not path.exists():
        return [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise RecordError("not a JSON object")
                validate_record(rec)
            except (json.JSONDecodeError, RecordError) as exc:
                msg = f"{path}:{lineno}: unreadable record ({exc})"
                if strict:
                    raise RecordError(msg) from exc
                problems.append(msg)
                continue
            by_id[rec["run_id"]] = rec
    return list(by_id.values()), problems


def recorded_ids(path: str | Path) -> set[str]:
    """run_ids already recorded with status ok (what a resumed run skips)."""
    records, _ = read_records(path)
    return {r["run_id"] for r in records if r["status"] == "ok"}


def merge_results(sources: Iterable[str | Path], dest: str | Path) -> int:
    """Merge several results.jsonl files into ``dest`` (deduplicated by run_id, sorted for a stable file).

    Per-query sidecars are copied next to ``dest``. Returns the number of records written. Written atomically.
    """
    import shutil

    dest = Path(dest)
    merged: dict[str, dict[str, Any]] = {}
    for src in sources:
        src = Path(src)
        records, problems = read_records(src, strict=True)
        for rec in records:
            if rec.get("per_query"):
                sidecar = src.parent / rec["per_query"]
                target = dest.parent / rec["per_query"]
                if sidecar.exists() and sidecar.resolve() != target.resolve():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(sidecar, target)
            merged[rec["run_id"]] = rec
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rid in sorted(merged):
            f.write(json.dumps(merged[rid], sort_keys=True) + "\n")
    os.replace(tmp, dest)
    return len(merged)
