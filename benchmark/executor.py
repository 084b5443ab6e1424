"""Executors: where the fits of a plan run. The runner stays the one writer; an executor only yields results.

- serial (default, no executor object): every fit in this process, one after the other (:class:`Runner`).
- :class:`RayExecutor` (``--executor ray``): every fit is a Ray core task that declares its resources (CPUs = the
  fit's threads, one GPU when the method trains on ``--device cuda``) and returns its :class:`FitResult` (records +
  sidecar bytes) to the driver, which validates and appends them exactly as a serial run does — so the resume rules
  ("a fit is done only when its whole sweep is recorded") are the same. A task lost with its worker (killed,
  preempted, out of memory) is retried ``max_retries`` times by Ray; a fit that still fails becomes a ``failed``
  record with the error, never a silent gap. Ctrl-C cancels the outstanding tasks and keeps what completed.

Shared inputs are sent once per dataset, not per task: a dataset whose doc matrix is a memory-mapped file (the
embedding cache, ``npy:`` corpora) is re-opened by each worker from the same path (which every node must see, e.g.
``$VQBENCH_DATA_DIR`` on a shared filesystem); any other dataset goes into the object store once
(``ray.put``) and workers read it zero-copy. The exact top-k reference of each evaluated split is computed once by
the driver and shipped the same way. Caches (faiss inits, mined top-K) live under the runner's cache folder, which
must be on a path all workers see.

Latency: the p50/p95 of a fit are measured single-threaded while other fits may run on the same node; give each
fit a whole node (``--threads`` = the node's cores) when latency numbers are to be reported.
"""
from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from benchmark.config import ConfigError, Job
from benchmark.data import RetrievalDataset, load_dataset
from benchmark.harness import ExactReference
from benchmark.registry import BaseMethod
from benchmark.runner import FitContext, FitResult, exact_top_k, execute_fit, failed_result

EXECUTORS = ("serial", "ray")


@dataclass
class _DatasetRef:
    """How a worker gets a dataset: re-open the same memory-mapped files (``spec``) or the object store (``ref``)."""

    name: str
    spec: tuple[str, dict[str, Any]] | None = None
    ref: Any = None


def _worker_dataset(handle: _DatasetRef) -> RetrievalDataset:
    import ray
    if handle.spec is not None:
        loader, kwargs = handle.spec
        ds = load_dataset(loader, **kwargs)
        ds.name = handle.name
        return ds
    return ray.get(handle.ref)


def _run_fit_task(job: Job, method: BaseMethod, handle: _DatasetRef, ctx: FitContext,
                  exact: ExactReference) -> FitResult:
    """One fit on a Ray worker: the method (built and checked by the driver), the dataset and the exact reference
    come from the driver, the records go back to it. The fit runs under the run's thread policy (``ctx.threads``,
    applied by :func:`execute_fit`), not under the ``OMP_NUM_THREADS`` Ray gives its workers."""
    import ray
    ds = _worker_dataset(handle)
    result = execute_fit(job, ds, ctx.settings, device=ctx.device, cache_dir=ctx.cache_dir, exact=exact,
                         save_index=ctx.save_index, method=method, threads=ctx.threads)
    _mark_ray(result.records, node_id=ray.get_runtime_context().get_node_id(), hostname=socket.gethostname(),
              pid=os.getpid())
    return result


def _mark_ray(records: list[dict[str, Any]], **node: Any) -> None:
    """Provenance of a fit the Ray executor ran (the node's facts where the task got that far)."""
    import ray
    for rec in records:
        rec["provenance"] = {**rec["provenance"], "executor": "ray", "ray_version": ray.__version__, **node}


class RayExecutor:
    """Runs each fit as a Ray task. ``address=None`` starts a local Ray runtime on this machine's cores (stopped by
    :meth:`close`); ``'auto'`` or ``'ray://host:port'`` joins a running cluster (only disconnected by :meth:`close`).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2, num_cpus: int | None = None,
                 specs: dict[str, tuple[str, dict[str, Any]]] | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]'") from exc
        if max_retries < 0:
            raise ConfigError(f"RayExecutor: max_retries must be >= 0, got {max_retries}")
        self.ray = ray
        self.address = address
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.specs = specs or {}  # dataset alias -> (loader name, options): how a worker re-opens mapped files

    def _start(self) -> None:
        if self.ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if self.address:
                self.ray.init(address=self.address, **kwargs)
            else:  # a private local runtime; its workers inherit this environment (threads, VQBENCH_DATA_DIR, ...)
                self.ray.init(num_cpus=self.num_cpus or os.cpu_count(), **kwargs)
        except Exception as exc:  # Ray raises bare Exception/ConnectionError for an unreachable or overloaded node
            self.close()
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray runtime"
            raise ConfigError(f"--executor ray: could not start or join {where}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _handle(self, name: str, ds: RetrievalDataset) -> _DatasetRef:
        if isinstance(ds.doc_emb, np.memmap):
            return _DatasetRef(name, spec=self.specs.get(name, (name, {})))
        return _DatasetRef(name, ref=self.ray.put(ds))

    def results(self, todo: list[tuple[Job, BaseMethod]], loaded: dict[str, RetrievalDataset], ctx: FitContext,
                exact: ExactReference, stage: Callable[[Job, str], None]) -> Iterator[FitResult]:
        if not todo:
            return
        jobs = [job for job, _ in todo]
        self._start()
        ray = self.ray
        handles = {name: self._handle(name, ds) for name, ds in loaded.items()
                   if any(j.dataset == name for j in jobs)}
        for name in handles:  # computed once here, then shared read-only with every task
            exact_top_k(loaded[name], ctx.settings, exact)
        exact_ref = ray.put(exact)
        cpus = ctx.threads if ctx.threads > 0 else int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        gpus = 1 if ctx.device.startswith("cuda") else 0
        task = ray.remote(_run_fit_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries)
        pending = {task.remote(job, method, handles[job.dataset], ctx, exact_ref): (job, method)
                   for job, method in todo}
        stage(jobs[0], f"{len(jobs)} fit(s) submitted to ray")
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job, method = pending.pop(ref)
                stage(job, f"done on ray; {len(pending)} still running or queued")
                try:
                    yield ray.get(ref)
                except (ray.exceptions.RayError, ray.exceptions.RayTaskError) as exc:
                    # the worker died more often than max_retries allows: record the fit as failed, don't drop it
                    result = failed_result(job, method, loaded[job.dataset], ctx.device,
                                           f"{type(exc).__name__}: ray task failed after {self.max_retries} "
                                           f"retries: {str(exc).splitlines()[0][:300]}")
                    _mark_ray(result.records)
                    yield result
        except (KeyboardInterrupt, GeneratorExit):
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        """Stop the local runtime with all its processes (or only disconnect from a cluster); safe to call twice,
        and after a failed start (which may have left a half-started node behind)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the daemons
        try:
            self.ray.shutdown()
        finally:
            signal.signal(signal.SIGINT, previous)



def make_executor(name: str, address: str | None = None, max_retries: int = 2,
                  specs: dict[str, tuple[str, dict[str, Any]]] | None = None) -> RayExecutor | None:
    """The executor called ``name`` (one of :data:`EXECUTORS`; ``None`` = serial, in this process)."""
    if name == "serial":
        if address:
            raise ConfigError("--ray-address needs --executor ray")
        return None
    if name == "ray":
        return RayExecutor(address, max_retries, specs=specs)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
