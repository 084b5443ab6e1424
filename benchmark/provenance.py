"""Provenance attached to every record: code version, package versions, machine and threading policy."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import resource
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or Slurm's share), else ``os.cpu_count``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int) -> int:
    """Apply the threading policy of a run and return its thread count: ``n`` > 0 threads, 0 = every core this
    process may use (:func:`available_cores`). Set explicitly for faiss (OpenMP, which also sizes its OpenBLAS) and
    torch (intra-op), so environment variables such as ``OMP_NUM_THREADS`` (which Ray sets in its workers) never
    decide it: the same ``--threads`` gives the same thread count, and so the same numbers, in any environment."""
    import faiss
    import torch
    count = n if n > 0 else available_cores()
    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)
    return count


@contextmanager
def thread_policy(n: int) -> Iterator[int]:
    """:func:`set_threads` for the duration of a block (one fit), then the previous counts again."""
    import faiss
    import torch
    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    try:
        yield set_threads(n)
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


def threads() -> dict[str, int]:
    import faiss
    import torch
    return {"faiss_omp": faiss.omp_get_max_threads(), "torch": torch.get_num_threads(), "latency": 1}


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS", "KMP_AFFINITY", "OMP_PROC_BIND")


@lru_cache(maxsize=1)
def blas() -> dict[str, str]:
    """Which BLAS each numeric library runs on (their kernels decide the last float bits of a matmul)."""
    import faiss
    import numpy as np
    import torch
    libs = sorted(p.name for p in (Path(faiss.__file__).parent.parent / "faiss_cpu.libs").glob("*blas*"))
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    torch_blas = found.group(1) if found else "unknown"
    try:
        np_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        np_text = f"{np_blas.get('name')} {np_blas.get('version')}"
    except Exception:  # numpy's config API differs across versions: record what is there, never fail a fit
        np_text = "unknown"
    return {"faiss": f"{', '.join(libs) or 'system'} ({faiss.get_compile_options().strip()})", "torch": torch_blas,
            "numpy": np_text}


@lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The SIMD levels of this CPU that BLAS and faiss dispatch on (another level may round differently)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
                                if f in have)
    except OSError:
        pass
    return platform.machine()


def reproducibility(device: str) -> dict:
    """What decides whether a fit's numbers repeat: thread counts, BLAS, CPU SIMD level, device, thread env vars."""
    import torch
    return {"threads": {**threads(), "torch_interop": torch.get_num_interop_threads()}, "blas": blas(),
            "cpu_flags": cpu_flags(), "device": device,
            "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def provenance(seed: int, device: str = "cpu") -> dict:
    return {"git_sha": git_sha(), "versions": versions(), "cpu": cpu(), "threads": threads(), "device": device,
            "seed": seed, "platform": platform.platform(), "argv": sys.argv[1:],
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "reproducibility": reproducibility(device)}
