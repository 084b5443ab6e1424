"""Provenance attached to every record: code version, package versions, machine and threading policy."""
from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def git_sha() -> str:
    """HEAD commit of the checkout (``-dirty`` when tracked files outside ``reports/`` differ: a run writing into a
    committed report folder does not dirty its own provenance), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import faiss
    return {"torch": _version("torch"), "faiss": faiss.__version__, "ir_measures": _version("ir-measures"),
            "beir": _version("beir"), "python": platform.python_version(), "numpy": _version("numpy"),
            "vqbench": _version("vqbench")}


@lru_cache(maxsize=1)
def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def set_threads(n: int) -> None:
    """The threading policy of a run: ``n`` > 0 threads for faiss (OpenMP) and torch; 0 leaves their defaults."""
    if n > 0:
        import faiss
        import torch
        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)


def threads() -> dict[str, int]:
    import faiss
    import torch
    return {"faiss_omp": faiss.omp_get_max_threads(), "torch": torch.get_num_threads(), "latency": 1}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def provenance(seed: int, device: str = "cpu") -> dict:
    return {"git_sha": git_sha(), "versions": versions(), "cpu": cpu(), "threads": threads(), "device": device,
            "seed": seed, "platform": platform.platform(), "argv": sys.argv[1:],
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "deterministic_note": "faiss k-means/OPQ are seeded but multithreaded training is not bit-identical "
                                  "across thread counts"}
