"""Resume never trusts a partial sweep: SIGKILL / SIGINT in the middle of a fit's nprobe sweep, then the same command.

The run is a real ``run_benchmark.py`` in a subprocess; a wrapper around the runner's ``evaluate`` pauses inside
the second fit's sweep (after one of its nprobe values is evaluated) and touches a marker file, so the signal always
lands mid-sweep.
"""
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.harness import SearchSettings
from benchmark.records import read_records
from benchmark.runner import Runner, is_complete
from benchmark.config import Job

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--quick", "--methods", "faiss-ivfpq,faiss-ivfopq,flat", "--nprobes", "1,4,32"]
SWEEP = {"faiss-ivfpq": [1, 4, 32], "faiss-ivfopq": [1, 4, 32], "flat": [None]}
PAUSING = """
import os, sys, time
from pathlib import Path
import benchmark.runner as runner
real, calls = runner.evaluate, []
def evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["PAUSE_AT"]):
        Path(os.environ["MARKER"]).write_text("mid-sweep")
        time.sleep(300)
    return real(*args, **kwargs)
runner.evaluate = evaluate
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "VQBENCH_DATA_DIR": str(tmp_path / "cache"), **extra}


def default_sigint() -> None:
    """A child of a background job inherits SIGINT ignored (and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_paused(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """Start the CLI paused inside the 2nd fit's sweep (evaluate call 5 = faiss-ivfopq's 2nd nprobe)."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", PAUSING, *ARGS, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(tmp_path, PAUSE_AT="5", MARKER=str(marker)), preexec_fn=default_sigint)
    deadline = time.time() + 600
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the pause: {proc.communicate()[1][-3000:]}")
        assert time.time() < deadline, "no pause within 600 s"
        time.sleep(0.2)
    return proc, marker


def check_complete(out: Path) -> list[dict]:
    """Every planned fit has its full sweep, ok; no run_id appears twice in the file."""
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    ids = collections.Counter(r["run_id"] for r in lines)
    assert max(ids.values()) == 1, [rid for rid, n in ids.items() if n > 1]
    sweeps = collections.defaultdict(list)
    for rec in lines:
        assert rec["status"] == "ok", rec.get("error")
        sweeps[rec["method"]].append(rec["nprobe"])
    assert {m: sorted(v, key=lambda p: p or 0) for m, v in sweeps.items()} == SWEEP
    return lines


def resume(tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), *ARGS, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=env(tmp_path))


def test_sigkill_mid_sweep_then_resume_completes_every_sweep(tmp_path):
    out = tmp_path / "out"
    proc, _ = start_paused(tmp_path, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["nprobe"] for r in killed) == [1, 4, 32] and {r["method"] for r in killed} == {"faiss-ivfpq"}
    done = resume(tmp_path, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skip (recorded): synthetic:quick faiss-ivfpq" in done.stdout + done.stderr
    assert "skip (recorded): synthetic:quick faiss-ivfopq" not in done.stdout + done.stderr
    lines = check_complete(out)
    assert lines[:3] == killed  # the complete fit was kept as it was, not refitted
    for rec in lines:
        assert (out / rec["per_query"]).is_file()


def test_sigint_mid_sweep_exits_130_with_the_resume_command(tmp_path):
    out = tmp_path / "out"
    proc, _ = start_paused(tmp_path, out)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted: 1 fit(s) completed and recorded this run" in stderr
    assert "2 not run (of 3)" in stderr  # faiss-ivfopq (interrupted mid-sweep) and flat
    command = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert shlex.split(command)[2:] == [*ARGS, "--out", str(out)]
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    done = resume(tmp_path, out)
    assert done.returncode == 0, done.stderr[-3000:]
    check_complete(out)


def test_partial_sweep_in_the_file_is_refitted_not_skipped(tmp_path):
    """What an older runner (one append per nprobe) or a write cut short leaves: 1 of 3 records and a torn line."""
    settings = SearchSettings(nprobes=[1, 4, 32], latency_queries=5, warmup_queries=1)
    job = Job("synthetic:quick", "faiss-ivfpq", {"nlist": 32}, 0)
    runner = Runner(tmp_path, settings, cache_dir=tmp_path / "cache")
    first = runner.run([job])
    assert len(first) == 3 and is_complete(first, settings)
    results = tmp_path / "results.jsonl"
    results.write_text(results.read_text().splitlines()[0] + "\n" + results.read_text().splitlines()[1][:40])
    assert runner.complete_fits() == set()
    again = runner.run([job])
    assert [r["nprobe"] for r in again] == [1, 4, 32] and runner.summary.completed == [job.label()]
    records, problems = read_records(results)
    assert len(problems) == 1 and "results.jsonl:2" in problems[0]  # the torn line is reported, never used
    assert is_complete(records, settings) and len(records) == 3
    # a later run planning a wider sweep (nprobe 8 too) does not trust the narrower one
    wider = SearchSettings(nprobes=[1, 4, 8, 32], latency_queries=5, warmup_queries=1)
    assert not is_complete(records, wider) and is_complete(records, settings)


def test_a_failed_fit_is_not_complete(tmp_path):
    ok = {"status": "ok", "nprobe": 1, "index": {"nlist": 2}}
    settings = SearchSettings()
    assert not is_complete([{"status": "failed", "nprobe": None, "index": {}}], settings)
    assert not is_complete([ok], settings)  # nprobe 2 missing
    assert is_complete([ok, {**ok, "nprobe": 2}], settings)
    assert is_complete([{"status": "ok", "nprobe": None, "index": {"nlist": 0}}], settings)  # no IVF: one record


def test_a_param_at_its_legacy_value_keeps_earlier_records_resumable(tmp_path, monkeypatch):
    """A param declared after records were written is left out of the record's params and ids at its ``legacy``
    value (what the method did before it existed): the earlier record still counts as that fit. At another value
    (set, or a preset's default) it is a different fit, recorded with the param."""
    from benchmark.params import Param
    from benchmark.registry import get_method, make_method
    settings = SearchSettings(nprobes=[1], latency_queries=5, warmup_queries=1)
    job = Job("synthetic:quick", "faiss-pq", {"M": 8}, 0)
    runner = Runner(tmp_path, settings, cache_dir=tmp_path / "cache")
    before = runner.run([job])
    cls = get_method("faiss-pq")
    monkeypatch.setattr(cls, "params", {**cls.params, "later": Param("old", "added later", choices=("old", "new"),
                                                                      legacy=("old",))})
    assert "later" in make_method("faiss-pq", {"M": 8}).config
    assert make_method("faiss-pq", {"M": 8}).record_params() == before[0]["params"]
    assert runner.run([job]) == [] and runner.summary.skipped == [job.label()]
    changed = Job("synthetic:quick", "faiss-pq", {"M": 8, "later": "new"}, 0)
    after = runner.run([changed])
    assert after[0]["params"] == {**before[0]["params"], "later": "new"}
    assert after[0]["fit_id"] != before[0]["fit_id"]
    # a preset defaulting to the new behaviour records it: its fits never pass for the earlier records
    monkeypatch.setattr(cls, "params", {**cls.params, "later": Param("new", "preset", choices=("old", "new"),
                                                                      legacy=("old",))})
    assert make_method("faiss-pq", {"M": 8}).record_params() == after[0]["params"]
