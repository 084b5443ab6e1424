"""The results record: schema validation, atomic appends, torn lines reported (never silently skipped)."""
import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmark.records import (SCHEMA_VERSION, RecordError, append_record, append_records, merge_results,
                               read_records, read_sidecar, run_id, sidecar_bytes, validate_record)

RECORD = {
    "run_id": "r1", "fit_id": "0123456789abcdef", "schema_version": SCHEMA_VERSION, "dataset": "synthetic",
    "split": "test", "method": "faiss-pq", "family": "reconstruction",
    "params": {"M": 16}, "seed": 0, "nprobe": None, "status": "ok", "train_seconds": 1.5,
    "index": {"factory": "PQ16x8", "nlist": 0, "M": 16, "nbits": 8, "bytes_per_vector": 16, "writeback": "codes"},
    "metrics": {"nDCG@10": 0.5, "RR@10": 0.6, "R@10": 0.55, "R@100": 0.9, "R@1000": 0.99},
    "fidelity": {"overlap@10": 0.7, "overlap@100": 0.8},
    "latency": {"p50_ms": 0.1, "p95_ms": 0.2, "qps": 1000.0, "threads": 2},
    "per_query": "per_query/r1.json",
    "provenance": {"git_sha": "abc", "cpu": "x", "timestamp": "2026-01-01T00:00:00+00:00",
                   "versions": {"torch": "2", "faiss": "1", "ir_measures": "0", "beir": "2", "python": "3.11"}},
}


def test_valid_record_passes_and_each_missing_field_is_named():
    validate_record(RECORD)
    for key in ("run_id", "metrics", "provenance", "status"):
        broken = {k: v for k, v in RECORD.items() if k != key}
        with pytest.raises(RecordError, match=repr(key)):
            validate_record(broken)
    broken = copy.deepcopy(RECORD)
    del broken["metrics"]["R@1000"]
    with pytest.raises(RecordError, match="metrics missing 'R@1000'"):
        validate_record(broken)
    broken = copy.deepcopy(RECORD)
    broken["fidelity"]["overlap@10"] = 1.5
    with pytest.raises(RecordError, match=r"in \[0, 1\]"):
        validate_record(broken)


def test_failed_record_needs_a_reason():
    failed = {**RECORD, "status": "failed", "metrics": None, "fidelity": None, "latency": None}
    with pytest.raises(RecordError, match="error"):
        validate_record(failed)
    validate_record({**failed, "error": "MethodError: no labels"})


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, RECORD)
    append_record(path, {**RECORD, "run_id": "r2"})
    append_record(path, {**RECORD, "metrics": {**RECORD["metrics"], "RR@10": 0.7}})  # re-run replaces r1
    records, problems = read_records(path)
    assert problems == []
    assert {r["run_id"]: r["metrics"]["RR@10"] for r in records} == {"r1": 0.7, "r2": 0.6}


def test_interrupted_append_leaves_a_readable_file(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, RECORD)
    with open(path, "a") as f:  # a writer killed mid-line
        f.write(json.dumps({**RECORD, "run_id": "torn"})[:57])
    append_record(path, {**RECORD, "run_id": "r3"})
    records, problems = read_records(path)
    assert sorted(r["run_id"] for r in records) == ["r1", "r3"]
    assert len(problems) == 1 and "results.jsonl:2" in problems[0]
    with pytest.raises(RecordError, match="results.jsonl:2"):
        read_records(path, strict=True)


def test_invalid_record_is_refused_before_writing(tmp_path):
    path = tmp_path / "results.jsonl"
    with pytest.raises(RecordError):
        append_record(path, {"run_id": "x"})
    assert not path.exists() or path.read_text() == ""


def test_run_id_is_stable_and_param_sensitive():
    a = run_id("d", "test", "m", {"M": 16, "lr": 1e-3}, 0, 4)
    assert a == run_id("d", "test", "m", {"lr": 1e-3, "M": 16}, 0, 4)
    assert a != run_id("d", "test", "m", {"M": 32, "lr": 1e-3}, 0, 4)
    assert a != run_id("d", "test", "m", {"M": 16, "lr": 1e-3}, 1, 4)


def test_merge_deduplicates_by_run_id(tmp_path):
    for shard, ids in (("s0", ["r1", "r2"]), ("s1", ["r2", "r3"])):
        for rid in ids:
            append_record(tmp_path / shard / "results.jsonl", {**RECORD, "run_id": rid})
    n = merge_results([tmp_path / "s0" / "results.jsonl", tmp_path / "s1" / "results.jsonl"],
                      tmp_path / "all" / "results.jsonl")
    assert n == 3
    records, problems = read_records(tmp_path / "all" / "results.jsonl")
    assert sorted(r["run_id"] for r in records) == ["r1", "r2", "r3"] and not problems


def test_git_sha_dirty_ignores_report_outputs(tmp_path, monkeypatch):
    from benchmark import provenance
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "results.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setattr(provenance, "REPO", tmp_path)

    def sha() -> str:
        provenance.git_sha.cache_clear()
        return provenance.git_sha()

    (tmp_path / "reports" / "results.jsonl").write_text("{}\n{}\n")    # a run appending to a committed report
    assert sha() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert sha() == head + "-dirty"
    provenance.git_sha.cache_clear()


def test_fit_id_and_schema_version_are_validated():
    for bad in (None, "xyz", "0123456789ABCDEF", "0123456789abcde", 12):
        with pytest.raises(RecordError, match="fit_id must be 16 lowercase hex digits"):
            validate_record({**RECORD, "fit_id": bad})
    with pytest.raises(RecordError, match="'fit_id'"):
        validate_record({k: v for k, v in RECORD.items() if k != "fit_id"})
    for bad in (0, SCHEMA_VERSION + 1, "2", True):
        with pytest.raises(RecordError, match="schema_version must be an int in"):
            validate_record({**RECORD, "schema_version": bad})
    validate_record({k: v for k, v in RECORD.items() if k != "schema_version"})  # files written before it existed


def test_committed_reports_still_load():
    reports = sorted(Path(__file__).resolve().parent.parent.glob("reports/*/results.jsonl"))
    assert reports
    for path in reports:
        records, problems = read_records(path, strict=True)
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        assert not problems and len(records) == lines, path


def test_committed_records_have_their_per_query_sidecars():
    # sidecars written as per_query/*.json.gz are committed with their report (the paired tests rebuild from them)
    reports = sorted(Path(__file__).resolve().parent.parent.glob("reports/**/results.jsonl"))
    checked = 0
    for path in reports:
        records, _ = read_records(path)
        for rec in records:
            if str(rec.get("per_query") or "").endswith(".json.gz"):
                values = read_sidecar(path.parent / rec["per_query"])["nDCG@10"]
                assert np.mean(list(values.values())) == pytest.approx(rec["metrics"]["nDCG@10"]), rec["per_query"]
                checked += 1
    assert checked > 0


def test_append_records_writes_a_fit_in_one_write_and_refuses_any_invalid_one(tmp_path, monkeypatch):
    import os
    path = tmp_path / "results.jsonl"
    recs = [{**RECORD, "run_id": f"r{i}", "nprobe": i} for i in range(5)]
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(len(data)) or real_write(fd, data))
    append_records(path, recs)
    assert len(writes) == 1 and writes[0] == path.stat().st_size
    assert [json.loads(line)["run_id"] for line in path.read_text().splitlines()] == [f"r{i}" for i in range(5)]
    with pytest.raises(RecordError):
        append_records(path, [{**RECORD, "run_id": "r9"}, {**RECORD, "run_id": "bad", "fit_id": "nope"}])
    assert len(path.read_text().splitlines()) == 5  # nothing of the refused batch was written


def test_merge_into_a_results_file_keeps_its_records(tmp_path):
    """Merging a shard into a report that already holds other records adds to it (a record of the same run_id is
    replaced by the shard's), never drops what was there."""
    dest = tmp_path / "report" / "results.jsonl"
    def rec(rid: str, grade: float) -> dict:
        return {**RECORD, "run_id": rid, "metrics": {**RECORD["metrics"], "nDCG@10": grade}}

    for rid, grade in (("r1", 0.1), ("r2", 0.2)):
        append_record(dest, rec(rid, grade))
    for rid, grade in (("r2", 0.25), ("r3", 0.3)):
        append_record(tmp_path / "s0" / "results.jsonl", rec(rid, grade))
    assert merge_results([tmp_path / "s0" / "results.jsonl"], dest) == 3
    records, problems = read_records(dest)
    assert {r["run_id"]: r["metrics"]["nDCG@10"] for r in records} == {"r1": 0.1, "r2": 0.25, "r3": 0.3}
    with open(dest, "a") as f:
        f.write('{"run_id": "torn')
    before = dest.read_text()
    with pytest.raises(RecordError):
        merge_results([tmp_path / "s0" / "results.jsonl"], dest)
    assert dest.read_text() == before                    # refused whole: nothing rewritten


def test_merge_refuses_a_missing_shard_before_writing(tmp_path):
    append_record(tmp_path / "s0" / "results.jsonl", RECORD)
    with pytest.raises(RecordError, match="no results file at .*nope"):
        merge_results([tmp_path / "s0" / "results.jsonl", tmp_path / "nope" / "results.jsonl"],
                      tmp_path / "all" / "results.jsonl")
    assert not (tmp_path / "all").exists()


def test_sidecars_are_compact_lossless_and_the_old_keyed_form_still_reads(tmp_path):
    rng = np.random.default_rng(0)
    queries = [f"q{i}" for i in rng.permutation(2000)]
    per_query = {"nDCG@10": dict(zip(queries, rng.choice([0.0, 0.5, 0.6309297535714575, 1.0], 2000).tolist())),
                 "R@100": dict(zip(queries, rng.integers(0, 2, 2000).astype(float).tolist()))}
    data = sidecar_bytes(per_query)
    assert data == sidecar_bytes({k: dict(reversed(v.items())) for k, v in per_query.items()})   # same bytes
    assert len(data) < 12_000 < len(json.dumps(per_query))
    (tmp_path / "a.json.gz").write_bytes(data)
    (tmp_path / "b.json").write_text(json.dumps(per_query))
    assert read_sidecar(tmp_path / "a.json.gz") == per_query == read_sidecar(tmp_path / "b.json")   # exact floats
    with pytest.raises(ValueError, match="'nDCG@10' covers other queries than 'R@100'"):
        sidecar_bytes({"nDCG@10": per_query["nDCG@10"], "R@100": {"q1": 1.0}})
