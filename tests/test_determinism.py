"""Same seed, same numbers: a fit's metrics are decided by its seed, the package versions and the run's thread
policy (``--threads``), never by the environment it runs in; methods declared ``reproducibility = "exact"`` give the
same numbers at any thread count.

Every run here is a fresh process with its own empty cache (no faiss init or mined top-K is shared), so each side
trains everything itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import torch

from benchmark.provenance import set_threads, thread_policy
from benchmark.records import read_records
from benchmark.registry import REPRODUCIBILITY, available, describe_methods

REPO = Path(__file__).resolve().parent.parent
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _ours() -> dict[str, type]:
    """The methods shipped in ``methods/`` (not test plug-ins other test modules register)."""
    return {name: cls for name, cls in available().items() if cls.__module__.startswith("methods.")}


def _runs(tmp: Path, methods: list[str], *sides: tuple[str, int, dict[str, str]]) -> list[dict[str, dict]]:
    """One fresh ``--quick`` process per side ``(name, threads, env)``, all at once (independent processes: the
    metrics may not depend on what else the machine runs, so running them side by side also halves the wait)."""
    base = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    procs = []
    for name, threads, env in sides:   # stderr (progress bars) to a file: a full pipe would stall a side
        with open(tmp / f"{name}.err", "w") as err:
            procs.append(subprocess.Popen([sys.executable, "run_benchmark.py", "--quick", "--methods",
                                           ",".join(methods), "--threads", str(threads), "--out", str(tmp / name)],
                                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                          env={**base, "VQBENCH_DATA_DIR": str(tmp / f"cache-{name}"), **env}))
    out = []
    for proc, (name, _, _) in zip(procs, sides):
        proc.wait(timeout=900)
        assert proc.returncode == 0, (tmp / f"{name}.err").read_text()[-3000:]
        records, problems = read_records(tmp / name / "results.jsonl")
        assert not problems
        out.append({r["run_id"]: r for r in records})
    return out


def _numbers(rec: dict) -> dict[str, float]:
    return {**rec["metrics"], **rec["fidelity"]}


def test_the_same_threads_in_other_thread_environments_give_identical_numbers(tmp_path):
    """Every method, two fresh processes whose environments ask for other thread counts (as Ray's workers' do):
    ``--threads 1`` decides, and every metric of every fit is bit-identical."""
    methods = sorted(_ours())
    a, b = _runs(tmp_path, methods,
                 ("a", 1, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}),
                 ("b", 1, {"OMP_NUM_THREADS": "1"}))
    assert sorted(a) == sorted(b) and {r["method"] for r in a.values()} == set(methods)
    for rid, rec in a.items():
        assert _numbers(rec) == _numbers(b[rid]), (rec["method"], rec["nprobe"])
        rep = rec["provenance"]["reproducibility"]
        assert rep["threads"]["faiss_omp"] == rep["threads"]["torch"] == 1
        assert rep["env"]["OMP_NUM_THREADS"] == "2" and b[rid]["provenance"]["reproducibility"]["env"] == {
            "OMP_NUM_THREADS": "1"}
        assert rep["blas"]["faiss"] and rep["blas"]["torch"] and rep["cpu_flags"]


def test_methods_declared_exact_give_identical_numbers_at_one_and_two_threads(tmp_path):
    exact = sorted(name for name, cls in _ours().items() if cls.reproducibility == "exact")
    assert {"flat", "faiss-pq", "faiss-ivfpq", "score-aware"} <= set(exact)
    one, two = _runs(tmp_path, exact, ("one", 1, {}), ("two", 2, {}))
    assert sorted(one) == sorted(two)
    for rid, rec in one.items():
        assert _numbers(rec) == _numbers(two[rid]), (rec["method"], rec["nprobe"])
        assert two[rid]["provenance"]["reproducibility"]["threads"]["faiss_omp"] == 2


def test_every_method_states_its_reproducibility_in_list_methods():
    lines = describe_methods().splitlines()
    for name, cls in _ours().items():
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}  ["))
        assert lines[at + 1].startswith(f"    reproducible: {REPRODUCIBILITY[cls.reproducibility]}"), name
        if cls.reproducibility == "threads":
            assert cls.reproducibility_note, f"{name} must say why another thread count changes its numbers"
    assert _ours()["faiss-ivfopq"].reproducibility == "threads"   # its OPQ rotation is fitted with BLAS sgemm


def test_a_fit_runs_under_the_runs_thread_policy_and_restores_the_processs():
    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    with thread_policy(1) as count:
        assert count == 1 and faiss.omp_get_max_threads() == 1 and torch.get_num_threads() == 1
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before
    assert set_threads(0) == len(os.sched_getaffinity(0))          # 0 = every core this process may use
    set_threads(before[0])


def test_the_faiss_init_cache_is_keyed_by_thread_count(tmp_path):
    """A cached OPQ init is what this run would train: one trained at another thread count is not reused."""
    import numpy as np
    from benchmark.vq.faiss_init import trained_params
    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    with thread_policy(1):
        trained_params(x, "OPQ4,PQ4", cache_dir=str(tmp_path), opq_niter=2)
        assert trained_params(x, "OPQ4,PQ4", cache_dir=str(tmp_path), opq_niter=2).info["init_cached"]
    with thread_policy(2):
        assert not trained_params(x, "OPQ4,PQ4", cache_dir=str(tmp_path), opq_niter=2).info["init_cached"]
    assert len(list(tmp_path.glob("faiss-init-*.faiss"))) == 2
