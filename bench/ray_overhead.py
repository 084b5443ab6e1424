"""Ray executor overhead: the same grid run serially and with ``--executor ray`` (a local runtime on this machine's
cores), each from a cold faiss-init cache, printing both wall times and their ratio.

    .venv/bin/python bench/ray_overhead.py                  # the synthetic default (every method)
    .venv/bin/python bench/ray_overhead.py --quick          # the quick grid
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_run(extra: list[str], out: Path, data_dir: Path) -> float:
    env = {**os.environ, "VQBENCH_DATA_DIR": str(data_dir)}  # a cold cache per run: both pay the faiss inits
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "run_benchmark.py", "--out", str(out), *extra], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="per fit (0: each fit gets the whole machine)")
    args = p.parse_args()
    grid = (["--quick"] if args.quick else []) + ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        serial = timed_run(grid, tmp / "serial", tmp / "cache-serial")
        ray = timed_run(grid + ["--executor", "ray"], tmp / "ray", tmp / "cache-ray")
    load = os.getloadavg()[0]
    print(f"grid: {'quick' if args.quick else 'synthetic default'}, threads per fit {args.threads or 'all'}, "
          f"{os.cpu_count()} cores, load average after {load:.1f}")
    print(f"serial {serial:.1f} s, ray {ray:.1f} s, ratio {ray / serial:.2f}")


if __name__ == "__main__":
    main()
