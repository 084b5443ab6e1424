"""Wall time of ``run_benchmark.py --quick`` (budget 30 s) and of the default ``run_benchmark.py`` (budget 3 min),
each from a cold cache: a fresh ``$VQBENCH_DATA_DIR`` (no faiss inits, no mined candidates) and a fresh ``--out``.

Prints the thread policy (cores, faiss OpenMP and torch threads, load average before/after: the budgets are for an
idle 2-core machine, so a busy machine's numbers say so) and, per suite, the wall time, the CPU time of the run,
exit status, fits, records and the slowest fits by train seconds. On a shared machine, ``--threads 1`` with
``OMP_NUM_THREADS=1`` gives the CPU seconds of the work itself (no spin-waiting), a load-independent yardstick.

    .venv/bin/python bench/suite_time.py                 # both
    .venv/bin/python bench/suite_time.py --only quick    # the quick grid only
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITES = {"quick": (["--quick"], 30.0), "default": ([], 180.0)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def thread_policy() -> str:
    import faiss
    import torch
    load = os.getloadavg()
    return (f"cores {os.cpu_count()}, faiss OpenMP threads {faiss.omp_get_max_threads()}, torch threads "
            f"{torch.get_num_threads()}, latency timed on 1 thread; load average {load[0]:.1f} (1 min) "
            f"{load[1]:.1f} (5 min)")


def time_suite(name: str, extra: list[str]) -> dict:
    args, budget = SUITES[name]
    with tempfile.TemporaryDirectory(prefix=f"vqbench-{name}-") as tmp:
        env = {**os.environ, "VQBENCH_DATA_DIR": str(Path(tmp) / "cache")}
        out = Path(tmp) / "out"
        cmd = [sys.executable, str(REPO / "run_benchmark.py"), *args, *extra, "--out", str(out)]
        print(f"[{name}] {' '.join(cmd[1:])}  (cold cache: VQBENCH_DATA_DIR={env['VQBENCH_DATA_DIR']})", flush=True)
        load_before = os.getloadavg()[0]
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        records = []
        if (out / "results.jsonl").exists():
            records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    fits = {rec["fit_id"]: (rec.get("train_seconds") or 0.0, rec["method"]) for rec in records}
    slowest = sorted(fits.values(), reverse=True)[:3]
    result = {"suite": name, "wall_s": wall, "cpu_s": cpu, "budget_s": budget, "exit": proc.returncode, "fits": len(fits),
              "records": len(records), "load_before": load_before, "load_after": os.getloadavg()[0]}
    verdict = "within" if wall <= budget else "OVER"
    print(f"[{name}] {wall:.1f} s wall ({verdict} the {budget:.0f} s budget), {cpu:.1f} CPU s (user+sys; on a busy "
          f"machine OpenMP spin-waits inflate it), exit {proc.returncode}, {len(fits)} fits, "
          f"{len(records)} records; load average {load_before:.1f} -> {result['load_after']:.1f}; slowest train s: "
          + ", ".join(f"{m} {s:.1f}" for s, m in slowest), flush=True)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SUITES), help="time one suite")
    p.add_argument("--threads", type=int, default=0, help="passed to run_benchmark.py --threads (0: all cores)")
    args = p.parse_args()
    print("thread policy:", thread_policy(), flush=True)
    extra = ["--threads", str(args.threads)] if args.threads else []
    results = [time_suite(name, extra) for name in SUITES if args.only in (None, name)]
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
