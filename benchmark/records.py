"""The results record: one JSON object per line of ``results.jsonl``, appended atomically, validated on read.

Schema (every report is rebuilt from these records alone)::

    run_id, dataset, split, method, family, params{}, seed, nprobe,
    index{factory, nlist, M, nbits, bytes_per_vector, index_bytes, writeback},
    metrics{"nDCG@10","RR@10","R@10","R@100","R@1000"}, fidelity{"overlap@10","overlap@100"},
    latency{"p50_ms","p95_ms","qps","threads"}, train_seconds, per_query (sidecar path, relative to the file),
    provenance{git_sha, versions{torch, faiss, ir_measures, beir, python, numpy}, cpu, threads{...}, timestamp, ...}
    status ("ok" or "failed") and error (the reason, for a failed run: metrics etc. are then null),
    fit_id (16 hex digits, shared by every record of one fit: what resume groups by),
    schema_version (int; absent in files written before it existed, read as version 1)

All records of one fit (its whole nprobe sweep, or its one failed record) are appended by one locked ``write`` of
all their lines (:func:`append_records`), so a crash leaves either the whole fit or a torn tail that the reader
reports; resume (``benchmark.runner``) additionally checks that every planned nprobe of a fit is present.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
from pathlib import Path
from typing import Any, Iterable

from benchmark import metrics
from benchmark._io import write_bytes, write_text

MEASURES = tuple(metrics.MEASURES)
FIDELITY = tuple(f"overlap@{k}" for k in metrics.FIDELITY_KS)
LATENCY = ("p50_ms", "p95_ms", "qps", "threads")
INDEX_KEYS = ("factory", "nlist", "M", "nbits", "bytes_per_vector", "writeback")
PROVENANCE_KEYS = ("git_sha", "versions", "cpu", "timestamp")
VERSION_KEYS = ("torch", "faiss", "ir_measures", "beir", "python")
TOP_KEYS = ("run_id", "fit_id", "dataset", "split", "method", "family", "params", "seed", "nprobe", "index",
            "metrics", "fidelity", "latency", "train_seconds", "per_query", "provenance", "status")
# 2: fit_id validated, schema_version written, a fit's records appended together. Files without the field are 1.
SCHEMA_VERSION = 2
_ID = re.compile(r"[0-9a-f]{16}")


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
    version = rec.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise RecordError(f"record {rec['run_id']}: schema_version must be an int in [1, {SCHEMA_VERSION}] "
                          f"(this reader's version), got {version!r}")
    if not isinstance(rec["fit_id"], str) or not _ID.fullmatch(rec["fit_id"]):
        raise RecordError(f"record {rec['run_id']}: fit_id must be 16 lowercase hex digits, got {rec['fit_id']!r}")
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
    """Validate and append one record (see :func:`append_records`)."""
    append_records(path, [rec])


def append_records(path: str | Path, recs: list[dict[str, Any]]) -> None:
    """Validate every record, then append all of them as one ``write`` of complete lines under an exclusive lock,
    fsynced; SIGINT/SIGTERM are held back (delivered right after) so Ctrl-C never lands inside the write.

    If the file ends in a torn line (a writer killed mid-write), a newline is written first so the new records start
    on their own line; the reader reports the torn line instead of silently skipping it.
    """
    for rec in recs:
        validate_record(rec)
    if not recs:
        return
    data = "".join(json.dumps(rec, sort_keys=True, default=_json_default) + "\n" for rec in recs).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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


def merge_results(sources: Iterable[str | Path], dest: str | Path) -> int:
    """Merge several results.jsonl files into ``dest``: the records already in ``dest`` stay, a source's record
    replaces one with the same run_id (deduplicated, sorted for a stable file).

    Per-query sidecars are copied next to ``dest``. Returns the number of records written. Written atomically.
    A missing source, or an unreadable line in a source or in ``dest``, raises :class:`RecordError` before anything
    is written.
    """
    sources = [Path(src) for src in sources]
    missing = [str(src) for src in sources if not src.is_file()]
    if missing:
        raise RecordError(f"no results file at {', '.join(missing)}")
    dest = Path(dest)
    merged: dict[str, dict[str, Any]] = {}
    if dest.is_file():
        merged.update((rec["run_id"], rec) for rec in read_records(dest, strict=True)[0])
    for src in sources:
        records, _ = read_records(src, strict=True)
        for rec in records:
            if rec.get("per_query"):
                sidecar = src.parent / rec["per_query"]
                target = dest.parent / rec["per_query"]
                if sidecar.exists() and sidecar.resolve() != target.resolve():
                    write_bytes(target, sidecar.read_bytes())
            merged[rec["run_id"]] = rec
    write_text(dest, "".join(json.dumps(merged[rid], sort_keys=True, default=_json_default) + "\n"
                             for rid in sorted(merged)))
    return len(merged)
