"""The Ray executor: the same run_ids and metrics as a serial run, a killed worker retried, no process left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from benchmark.config import plan  # noqa: E402
from benchmark.executor import RayExecutor, make_executor  # noqa: E402
from benchmark.harness import SearchSettings  # noqa: E402
from benchmark.records import read_records  # noqa: E402
from benchmark.runner import Runner  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# a few fits of every kind (exact, faiss-trained, torch-trained) keep the test short on 2 cores
METHODS = "flat,faiss-pq,faiss-ivfopq,jpq-ivf,distill-vq"


def _ray_processes() -> list[int]:
    """PIDs of Ray's own daemons (gcs_server, raylet) and workers on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "gcs_server" in cmd or "/raylet" in cmd or cmd.startswith("ray::"):
            pids.append(int(entry.name))
    return pids


def _run(out: Path, executor: RayExecutor | None, cache: Path) -> list[dict]:
    planned = plan(methods=METHODS, quick=True)
    runner = Runner(out, SearchSettings(**planned.search), datasets=planned.datasets, cache_dir=cache,
                    executor=executor, threads=1)
    try:
        runner.run(planned.jobs)
    finally:
        if executor is not None:
            executor.close()
    assert runner.summary.ok, runner.summary.failed
    records, problems = read_records(out / "results.jsonl")
    assert not problems
    return records


@pytest.fixture(scope="module")
def serial_and_ray(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    serial = _run(base / "serial", None, base / "cache-serial")
    before = set(_ray_processes())
    parallel = _run(base / "ray", make_executor("ray", max_retries=1), base / "cache-ray")
    return serial, parallel, before


def test_ray_run_has_the_serial_run_ids_and_metrics(serial_and_ray):
    serial, parallel, _ = serial_and_ray
    by_id = {r["run_id"]: r for r in serial}
    assert sorted(by_id) == sorted(r["run_id"] for r in parallel)
    assert len(parallel) == len({r["run_id"] for r in parallel})  # each sweep recorded once
    for rec in parallel:
        ref = by_id[rec["run_id"]]
        for group in ("metrics", "fidelity"):
            for key, value in rec[group].items():
                assert value == pytest.approx(ref[group][key], abs=1e-9), (rec["method"], rec["nprobe"], key)
        assert rec["provenance"]["executor"] == "ray"
        assert rec["provenance"]["ray_version"] == ray.__version__
        assert rec["provenance"]["node_id"] and rec["provenance"]["hostname"]


def test_local_ray_runtime_stops_with_the_run(serial_and_ray):
    _, _, before = serial_and_ray
    assert not ray.is_initialized()
    deadline = time.time() + 20
    while set(_ray_processes()) - before and time.time() < deadline:
        time.sleep(0.5)
    assert not set(_ray_processes()) - before


def test_a_worker_killed_mid_fit_is_retried_and_every_sweep_recorded_once(tmp_path):
    """SIGKILL the first worker that runs a fit; Ray re-runs the task and the driver records each fit once."""
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            for pid in _ray_processes():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "_run_fit_task" in cmd:
                    time.sleep(1.0)  # let it get into the fit
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        continue
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    planned = plan(methods="faiss-ivfopq,jpq-ivf", quick=True)
    runner = Runner(tmp_path / "out", SearchSettings(**planned.search), datasets=planned.datasets,
                    cache_dir=tmp_path / "cache", executor=make_executor("ray", max_retries=2), threads=1)
    try:
        runner.run(planned.jobs)
    finally:
        runner.executor.close()
    thread.join(timeout=5)
    assert killed, "no Ray worker running a fit was found to kill"
    assert runner.summary.ok and len(runner.summary.completed) == len(planned.jobs)
    records, problems = read_records(tmp_path / "out" / "results.jsonl")
    assert not problems
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    ids = [json.loads(line)["run_id"] for line in lines]
    assert len(ids) == len(set(ids))  # nothing recorded twice
    sweep = len(planned.search.get("nprobes") or []) or None
    by_fit: dict[str, list[dict]] = {}
    for rec in records:
        by_fit.setdefault(rec["fit_id"], []).append(rec)
    assert len(by_fit) == len(planned.jobs)
    sizes = {len(v) for v in by_fit.values()}
    assert len(sizes) == 1 and (sweep is None or sizes == {sweep})


def test_executor_flags_are_checked_before_any_work(tmp_path):
    cmd = [sys.executable, "run_benchmark.py", "--quick", "--methods", "flat", "--out", str(tmp_path / "o")]
    bad = subprocess.run(cmd + ["--executor", "dask"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--executor must be one of serial, ray, got 'dask'" in bad.stderr
    bad = subprocess.run(cmd + ["--ray-address", "auto"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--ray-address needs --executor ray" in bad.stderr
    assert not (tmp_path / "o" / "results.jsonl").exists()
