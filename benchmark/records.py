"""The results record: one JSON object per line of ``results.jsonl``, appended atomically, validated on read.

Schema (every report is rebuilt from these records alone)::

    run_id, dataset, split, method, family, params{}, seed, nprobe,
    index{factory, nlist, M, nbits, bytes_per_vector, index_bytes, writeback},
    metrics{"nDCG@10","RR@10","R@10","R@100","R@1000"}, fidelity{"overlap@10","overlap@100"},
    latency{"p50_ms","p95_ms","qps","threads"}, train_seconds, per_query (sidecar path, relative to the file:
    :func:`sidecar_bytes` / :func:`read_sidecar`),
    provenance{git_sha, versions{torch, faiss, ir_measures, beir, python, numpy}, cpu, threads{...}, timestamp, ...}
    status ("ok" or "failed") and error (the reason, for a failed run: metrics etc. are then null),
    fit_id (16 hex digits, shared by every record of one fit: what resume groups by),
    schema_version (int; absent in files written before it existed, read as version 1)

All records of one fit (its whole nprobe sweep, or its one failed record) are appended by one locked ``write`` of
all their lines (:func:`append_records`), so a crash leaves either the whole fit or a torn tail that the reader
reports; resume (``benchmark.runner``) additionally checks that every planned nprobe of a fit is present. A write
that fails (disk full, quota, I/O error) is undone: the file is truncated back to its size before the append and
:class:`RecordWriteError` names the file and the reason. :func:`repair_records` moves unreadable lines to
``results.rejected.jsonl`` (the CLI's ``--repair``).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import hashlib
import json
import os
import re
import signal
import time
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


class RecordWriteError(OSError):
    """Appending records failed in the environment (disk full, quota, I/O error); the file was left as it was."""


REJECTED_NAME = "results.rejected.jsonl"  # where repair_records moves the lines it takes out of results.jsonl


def run_id(dataset: str, split: str, method: str, params: dict[str, Any], seed: int, nprobe: int | None) -> str:
    """Stable id of one measurement: the same (dataset, split, method, params, seed, nprobe) gives the same id."""
    key = json.dumps([dataset, split, method, params, seed, nprobe], sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def sidecar_bytes(per_query: dict[str, dict[str, float]]) -> bytes:
    """A record's per-query values as its sidecar file (``per_query/<run_id>.json.gz``): gzip'd JSON, columnar
    (``{"queries": [ids...], "<measure>": [values in that order], ...}``), lossless and byte-identical for the same
    values (gzip mtime 0). ~14 KB for 2,000 queries x 7 measures (a keyed plain-JSON sidecar was ~220 KB), small
    enough to commit beside the records, so the paired tests of a report rebuild from a clean checkout."""
    first = min(per_query, default=None)                      # the measure whose queries every other must cover
    queries = sorted(per_query[first]) if first is not None else []
    columns = {"queries": queries}
    for measure, values in sorted(per_query.items()):
        if set(values) != set(queries):
            raise ValueError(f"per-query measure {measure!r} covers other queries than {first!r}")
        columns[measure] = [values[q] for q in queries]
    return gzip.compress(json.dumps(columns, separators=(",", ":")).encode(), compresslevel=9, mtime=0)


def read_sidecar(path: str | Path) -> dict[str, dict[str, float]]:
    """A sidecar as ``{measure: {query id: value}}``: the gzip'd columnar form of :func:`sidecar_bytes`, or a plain
    keyed ``.json`` (sidecars written before it, never committed)."""
    path = Path(path)
    if path.suffix != ".gz":
        return json.loads(path.read_text(encoding="utf-8"))
    columns = json.loads(gzip.decompress(path.read_bytes()))
    queries = columns.pop("queries")
    return {measure: dict(zip(queries, values, strict=True)) for measure, values in columns.items()}


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

    A failed ``write``/``fsync`` (ENOSPC, EDQUOT, EIO, ...) truncates the file back to its size before this append,
    still under the lock, so no part of these records stays, and raises :class:`RecordWriteError` naming the file and
    the reason (with the errno of the failure).
    """
    for rec in recs:
        validate_record(rec)
    if not recs:
        return
    data = _lines(recs).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise RecordWriteError(exc.errno, f"cannot open {path} to append records: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                raise _undo_append(fd, path, size, len(recs), exc) from exc
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _undo_append(fd: int, path: Path, size: int, n: int, exc: OSError) -> RecordWriteError:
    """Truncate ``fd`` back to ``size`` after a failed append; the error to raise (it says whether that worked)."""
    what = f"appending {n} line(s) to {path} failed: {exc.strerror or exc}"
    try:
        os.ftruncate(fd, size)
        try:
            os.fsync(fd)
        except OSError:
            pass
    except OSError as undo:
        return RecordWriteError(exc.errno, f"{what}; truncating it back to {size} bytes failed too "
                                           f"({undo.strerror}): a torn last line may remain (run with --repair)")
    return RecordWriteError(exc.errno, f"{what}; the file was truncated back to its {size} bytes (nothing of "
                                       f"these lines was kept)")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _lines(records: Iterable[dict[str, Any]]) -> str:
    """``records`` as results.jsonl lines (sorted keys, one record per line)."""
    return "".join(json.dumps(rec, sort_keys=True, default=_json_default) + "\n" for rec in records)


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
    for lineno, _raw, rec, reason in _scan(path):
        if reason is not None:
            msg = f"{path}:{lineno}: unreadable record ({reason})"
            if strict:
                raise RecordError(msg)
            problems.append(msg)
        elif rec is not None:
            by_id[rec["run_id"]] = rec
    return list(by_id.values()), problems


def _read_locked(path: Path) -> bytes:
    """The file's bytes, read under a shared flock (so never half of an append in progress)."""
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        try:
            return f.read()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _scan(path: Path, data: bytes | None = None) -> list[tuple[int, bytes, dict[str, Any] | None, str | None]]:
    """Every line of ``path``: ``(line number, raw bytes with its newline, record or None, reason or None)``.
    A blank line has neither a record nor a reason; a bad one (not UTF-8, not JSON, not an object, not the schema,
    or a last line without its newline: a torn write) has a reason."""
    data = _read_locked(path) if data is None else data
    out = []
    parts = data.split(b"\n")  # only "\n" ends a line (as for grep -n and editors), each kept with its line
    lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            out.append((lineno, raw, None, None))
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict):
                raise RecordError(f"not a JSON object but {type(rec).__name__}")
            validate_record(rec)
        except UnicodeDecodeError as exc:
            out.append((lineno, raw, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
            continue
        except json.JSONDecodeError as exc:
            if not raw.endswith(b"\n"):
                reason = f"torn last line: {len(raw)} bytes without the newline that ends every record"
            elif exc.pos >= len(exc.doc.rstrip()):
                reason = f"incomplete JSON: the line ends after {len(raw) - 1} bytes (a write cut short)"
            else:
                reason = f"not JSON: {exc}"
            out.append((lineno, raw, None, reason))
            continue
        except RecordError as exc:
            out.append((lineno, raw, None, str(exc)))
            continue
        out.append((lineno, raw, rec, None))
    return out


def repair_records(path: str | Path) -> list[str]:
    """Move every bad line of ``path`` (those :func:`read_records` reports: torn, not JSON, not an object, not the
    schema) to ``results.rejected.jsonl`` beside it, appended as ``{"file", "line", "reason", "raw", "moved_at"}``
    (``raw``: the line's text as it was), then rewrite ``path`` atomically with the good lines only (byte for byte;
    blank lines dropped). Returns one ``file:line: reason`` per moved line (empty: nothing to repair, nothing
    written). The caller holds the folder's lock; the side file is fsynced before ``path`` is replaced, so a crash
    in between duplicates a rejected line in the side file but never loses one."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # no append lands between the read and the rewrite
        try:
            lines = _scan(path, f.read())
            bad = [(n, raw, reason) for n, raw, _rec, reason in lines if reason is not None]
            if not bad:
                return []
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            side = "".join(json.dumps({"file": path.name, "line": n, "reason": reason, "moved_at": stamp,
                                       "raw": raw.decode("utf-8", "backslashreplace").rstrip("\n")},
                                      sort_keys=True) + "\n" for n, raw, reason in bad)
            rejected = path.with_name(REJECTED_NAME)
            try:
                fd = os.open(rejected, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise RecordWriteError(exc.errno, f"cannot open {rejected}: {exc.strerror}; {path} was not "
                                                  f"changed") from exc
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(side.encode())
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as exc:
                    undo = _undo_append(fd, rejected, size, len(bad), exc)
                    raise RecordWriteError(exc.errno, f"{undo.strerror}; {path} was not changed") from exc
            finally:
                os.close(fd)
            write_bytes(path, b"".join(raw if raw.endswith(b"\n") else raw + b"\n"
                                       for _n, raw, rec, _reason in lines if rec is not None))
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return [f"{path}:{n}: {reason}" for n, _raw, reason in bad]


def merge_results(sources: Iterable[str | Path], dest: str | Path, rename: dict[str, str] | None = None,
                  only_fits: set[str] | None = None) -> int:
    """Merge several results.jsonl files into ``dest``: the records already in ``dest`` stay, a source's record
    replaces one with the same run_id (deduplicated, sorted for a stable file).

    ``rename`` (old dataset name -> new) takes only the sources' records of those datasets, under their new name: the
    same fits of the same data, planned in another config under another alias. Their run and fit ids are those of
    the new name (:func:`run_id`: what a run of that config would have written), their sidecar (and saved index, when
    the source has it) is copied under the new id, and ``provenance.merged_from`` keeps the file, name and ids they
    came from. ``only_fits``: only records whose (new) fit id is in it are taken.

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
            files = {rec["per_query"]: rec["per_query"]} if rec.get("per_query") else {}
            if rename is not None:
                if rec["dataset"] not in rename:
                    continue
                rec, files = _renamed(rec, rename[rec["dataset"]], src)
            if only_fits is not None and rec["fit_id"] not in only_fits:
                continue
            for old, new in files.items():
                for a, b in [(old, new)] + ([(query_map_beside(old), query_map_beside(new))]
                                            if old.endswith(".faiss") else []):
                    source, target = src.parent / a, dest.parent / b
                    if source.exists() and source.resolve() != target.resolve():
                        write_bytes(target, source.read_bytes())
            merged[rec["run_id"]] = rec
    write_text(dest, _lines(merged[rid] for rid in sorted(merged)))
    return len(merged)


def saved_index(rec: dict[str, Any]) -> str:
    """Where a fit's ``--save-index`` index is, relative to its results folder (the record's ``index.path``, or the
    rule it was written by)."""
    return (rec.get("index") or {}).get("path") or f"indexes/{rec['fit_id']}.faiss"


def query_map_beside(index_path: str) -> str:
    """The ``<fit>.query_map.npy`` an index saved before query maps were folded into it keeps beside it."""
    return index_path[:-len(".faiss")] + ".query_map.npy"


def _renamed(rec: dict[str, Any], name: str, src: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``rec`` as dataset ``name`` would have recorded it, and its files (old relative path -> new)."""
    new = json.loads(json.dumps(rec, default=_json_default))
    new["dataset"] = name
    new["run_id"] = run_id(name, rec["split"], rec["method"], rec["params"], rec["seed"], rec["nprobe"])
    new["fit_id"] = run_id(name, rec["split"], rec["method"], rec["params"], rec["seed"], "fit")
    new["provenance"]["merged_from"] = {"results": str(src), "dataset": rec["dataset"], "run_id": rec["run_id"],
                                        "fit_id": rec["fit_id"]}
    files = {}
    if rec.get("per_query"):
        suffix = Path(rec["per_query"]).name.split(".", 1)[1]        # json or json.gz, as written
        new["per_query"] = f"per_query/{new['run_id']}.{suffix}"
        files[rec["per_query"]] = new["per_query"]
    saved = saved_index(rec)
    if (src.parent / saved).is_file():
        new["index"]["path"] = f"indexes/{new['fit_id']}.faiss"
        files[saved] = new["index"]["path"]
    elif (rec.get("index") or {}).get("path"):
        del new["index"]["path"]     # not in the source: the new folder has no such file
    return new, files


def stamp_encoders(path: str | Path, encoders: dict[str, dict[str, Any]], source: str) -> dict[str, int]:
    """Name the encoder of records written without one: every record of a dataset in ``encoders`` (alias -> what
    :func:`benchmark.runner.declared_encoder` says) whose ``encoder`` names no model gets that encoder, and
    ``provenance.encoder_stamped`` = ``{"by": source, "timestamp"}`` says it came afterwards. Metrics, ids and every
    other field stay. Returns the records stamped per dataset. A record whose dimension differs from the declared
    encoder's, or that already names another model, raises :class:`RecordError` (every such line listed) before
    anything is written; the file is rewritten atomically, in its order, only when something changed."""
    path = Path(path)
    records, _ = read_records(path, strict=True)
    problems, stamped, todo = [], {}, []
    for rec in records:
        declared = encoders.get(rec["dataset"])
        have = rec.get("encoder") or {}
        if declared is None or have.get("model_id") == declared["model_id"]:
            continue
        if have.get("model_id") is not None:
            problems.append(f"{path}: {rec['dataset']} record {rec['run_id']} names encoder {have['model_id']!r}, "
                            f"the config declares {declared['model_id']!r}")
        elif have.get("dim") not in (None, declared["dim"]):
            problems.append(f"{path}: {rec['dataset']} record {rec['run_id']} holds {have['dim']}-d vectors, the "
                            f"declared encoder {declared['model_id']!r} makes {declared['dim']}-d")
        else:
            stamped[rec["dataset"]] = stamped.get(rec["dataset"], 0) + 1
            todo.append(rec)
    if problems:
        raise RecordError("\n".join(problems))
    if todo:
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for rec in todo:
            rec["encoder"] = dict(encoders[rec["dataset"]])
            rec["provenance"]["encoder_stamped"] = {"by": source, "timestamp": when}
        write_text(path, _lines(records))
    return stamped
