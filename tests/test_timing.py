"""The timing protocol (benchmark.harness.timing_pass, LoadWatch) and --retime (benchmark.retime)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from benchmark.cli import main
from benchmark.harness import LoadWatch, SearchSettings, timing_pass


def _ivf(n: int = 4000, d: int = 32, nlist: int = 16) -> tuple[faiss.Index, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    return index, rng.standard_normal((60, d)).astype(np.float32)


def test_timing_pass_times_every_point_in_repetitions():
    index, queries = _ivf()
    settings = SearchSettings(latency_queries=25, warmup_queries=3, timing_repeats=4)
    out = timing_pass(index, queries, [1, 4, 16], settings)
    assert list(out) == [1, 4, 16]
    for t in out.values():
        assert len(t["p50_reps"]) == 4 and t["repeats"] == 4 and t["timed_queries"] == 25
        assert t["p50_ms"] == pytest.approx(min(t["p50_reps"]), rel=1e-3)             # the best repetition
        assert t["p50_median_ms"] == pytest.approx(float(np.median(t["p50_reps"])), rel=1e-3)
        assert t["spread"] == pytest.approx((max(t["p50_reps"]) - min(t["p50_reps"])) / t["p50_median_ms"], abs=1e-3)
        assert t["latency_threads"] == 1 and t["qps"] > 0 and t["p95_ms"] >= t["p50_ms"] * 0.999
        assert isinstance(t["under_load"], bool) and t["load_threshold"] == 0.25
    assert faiss.extract_index_ivf(index).nprobe == 16   # left at the last point timed
    assert faiss.omp_get_max_threads() >= 1


def test_load_watch_sees_another_process():
    """A busy process beside the pass is measured as other processes' CPU and marks the pass under load."""
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.3)
        with LoadWatch(threshold=0.25) as watch:
            time.sleep(1.0)
    finally:
        busy.wait()
    if watch.other_cores is None:
        pytest.skip("no /proc/stat on this platform")
    assert watch.other_cores > 0.6 and watch.under_load
    assert watch.fields()["under_load"] is True and watch.fields()["other_cpu_cores"] == round(watch.other_cores, 3)
    assert not LoadWatch(threshold=0.25, other_cores=0.1).under_load
    assert LoadWatch(threshold=0.25, other_cores=0.3).under_load


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_retime_changes_latency_only(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quick", "--methods", "flat,faiss-ivfpq,faiss-pq", "--out", str(out), "--save-index",
                 "--nprobes", "1,8,32"]) == 0
    before = _records(out / "results.jsonl")
    assert all(r["latency"]["repeats"] == 2 and len(r["latency"]["p50_reps"]) == 2 for r in before)  # --quick
    pq = next(r for r in before if r["method"] == "faiss-pq")
    (out / pq["index"]["path"]).unlink()   # a fit without its saved index keeps its latency
    capsys.readouterr()
    assert main(["--retime", str(out)]) == 0
    printed = capsys.readouterr()
    assert "re-timed 2 fit(s)" in printed.out and "faiss-pq seed=0" in printed.err
    after = _records(out / "results.jsonl")
    assert [r["run_id"] for r in after] == [r["run_id"] for r in before]
    for old, new in zip(before, after):
        assert {k: v for k, v in old.items() if k != "latency"} == {
            k: v for k, v in new.items() if k not in ("latency", "latency_history", "retimed")}
        if new["method"] == "faiss-pq":
            assert new["latency"] == old["latency"] and "latency_history" not in new
            continue
        assert new["latency_history"] == [{"latency": old["latency"], "timestamp": old["provenance"]["timestamp"],
                                           "git_sha": old["provenance"]["git_sha"], "cpu": old["provenance"]["cpu"]}]
        assert new["latency"]["timed_queries"] == old["latency"]["timed_queries"] == 50
        assert new["latency"]["p50_reps"] != old["latency"]["p50_reps"] and new["retimed"]["timestamp"]
    assert (out / "leaderboard.md").stat().st_mtime >= (out / "results.jsonl").stat().st_mtime - 1
    assert main(["--retime", str(out)]) == 0   # twice: the history keeps both earlier timings
    again = next(r for r in _records(out / "results.jsonl") if r["method"] == "flat")
    assert len(again["latency_history"]) == 2


def test_retime_refit_missing_saves_the_index_a_refit_reproduces(tmp_path, capsys):
    """A fit whose index was not saved is fitted again (same params, seed, threads); its index is kept only because
    the refit reproduces the record's metrics exactly, and then it is re-timed like the others (records keep every
    field but the latency)."""
    out = tmp_path / "run"
    assert main(["--quick", "--methods", "faiss-ivfpq,faiss-pq", "--out", str(out), "--nprobes", "1,32",
                 "--threads", "1"]) == 0
    before = _records(out / "results.jsonl")
    assert not (out / "indexes").exists()
    # a record the refit cannot reproduce (as from another CPU): its refit's index must not stand in for it
    # ... and whose latency carries no load mark, while faiss-ivfpq's does
    tampered = [dict(r, metrics={**r["metrics"], "nDCG@10": r["metrics"]["nDCG@10"] + 0.01},
                     latency={**r["latency"], "under_load": False}) if r["method"] == "faiss-pq"
                else dict(r, latency={**r["latency"], "under_load": True}) for r in before]
    (out / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in tampered))
    capsys.readouterr()
    assert main(["--retime", str(out), "--refit-missing", "marked", "--threads", "1"]) == 0
    printed = capsys.readouterr()      # only the marked fit is refitted (and re-timed)
    assert "refitted 1 fit(s)" in printed.out and "re-timed 1 fit(s)" in printed.out and "faiss-pq" not in printed.out
    retimed_once = _records(out / "results.jsonl")
    assert main(["--retime", str(out), "--refit-missing", "--threads", "1"]) == 0
    printed = capsys.readouterr()      # every fit without an index: faiss-pq's refit differs from its record
    assert "refitted 0 fit(s)" in printed.out and "re-timed 1 fit(s)" in printed.out
    assert "refit differs, index not used: synthetic:quick faiss-pq seed=0" in printed.err
    ivf = {r["fit_id"] for r in before if r["method"] == "faiss-ivfpq"}
    assert sorted(p.name for p in (out / "indexes").iterdir()) == [f"{fid}.faiss" for fid in ivf]
    after = _records(out / "results.jsonl")
    for old, once, new in zip(tampered, retimed_once, after):
        assert new["metrics"] == old["metrics"] and new["run_id"] == old["run_id"]
        if old["method"] == "faiss-pq":
            assert new["latency"] == old["latency"] and "latency_history" not in new
        else:
            # re-timed by both passes: its recorded latency first, then the first pass's
            assert [h["latency"] for h in new["latency_history"]] == [old["latency"], once["latency"]]
    assert main(["--refit-missing", "--out", str(out)]) == 2
    assert "--refit-missing: only with --retime" in capsys.readouterr().err


def test_retime_refuses_a_folder_without_records(tmp_path, capsys):
    assert main(["--retime", str(tmp_path / "nowhere")]) == 2
    assert "--retime" in capsys.readouterr().err


def test_the_timing_pass_is_separate_from_quality():
    """Quality and fidelity come from the batch search alone: with or without the timing pass, and whatever it
    leaves the index at, the same metrics and per-query values."""
    from benchmark.data import load_dataset
    from benchmark.harness import ExactReference, evaluate
    ds = load_dataset("synthetic:quick")
    split = ds.split(ds.eval_split)
    index = faiss.index_factory(ds.dim, "IVF32,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(ds.doc_emb[:3000]))
    index.add(np.ascontiguousarray(ds.doc_emb))
    exact = ExactReference().top_k(ds, split, 100)
    settings = SearchSettings(latency_queries=20, warmup_queries=2)
    plain = evaluate(index, ds, split, exact, settings, nprobe=8, timed=False)
    timing_pass(index, split.query_emb, [1, 32], settings)             # leaves the index at nprobe 32
    timed = evaluate(index, ds, split, exact, settings, nprobe=8, timed=True)
    assert plain.latency == {} and timed.latency["p50_ms"] > 0
    assert plain.metrics == timed.metrics and plain.fidelity == timed.fidelity
    assert plain.per_query == timed.per_query
