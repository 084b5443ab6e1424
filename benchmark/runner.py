"""Run planned fits (dataset x method x params x seed): fit, build the faiss index, sweep nprobe, record.

Two halves, so that any executor (this process, a pool, a cluster) can run fits and one writer records them:

- :func:`execute_fit` computes one fit and returns a :class:`FitResult`: every record of its planned nprobe sweep
  (or one ``failed`` record) plus the files they refer to (per-query sidecars, an optional saved index). It writes
  nothing, so it can run anywhere.
- :func:`write_fit` writes a result into an output folder: the files first (atomically), then all of the fit's
  records in one locked, fsynced append (:func:`benchmark.records.append_records`).

Resume: a fit counts as done only when every record it should produce (each nprobe of its planned sweep) is present
with status ok (:func:`is_complete`); a fit killed anywhere, even mid-write, is fitted again.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np
from tqdm.auto import tqdm

from benchmark.config import Job, ConfigError
from benchmark.data import RetrievalDataset, load_dataset
from benchmark.data.encode import cache_root
from benchmark.data.encoders import encoder_info
from benchmark.harness import (ExactReference, LoadWatch, SearchSettings, evaluate, ivf_nlist, nprobe_sweep,
                               timing_pass)
from benchmark.provenance import peak_rss_mb, provenance, thread_policy
from benchmark.records import SCHEMA_VERSION, append_records, read_records, run_id, sidecar_bytes
from benchmark.registry import BaseMethod, DataFacts, MethodError, TrainData, make_method
from benchmark._io import write_bytes
from benchmark.vq import BuiltIndex, VQParams, build_index, fold_query_map

__all__ = ["FitContext", "FitResult", "Job", "RunSummary", "Runner", "default_cache_dir", "execute_fit", "fit_id",
           "is_complete", "planned_sweep", "train_data", "write_fit"]


def default_cache_dir() -> Path:
    """Where faiss inits and mined candidates are cached: ``$VQBENCH_DATA_DIR/train`` (or datasets/cache/train)."""
    return cache_root() / "train"


def fit_id(dataset: str, split: str, method: str, config: dict[str, Any], seed: int) -> str:
    """Id shared by all records of one fit (all nprobe values): what resume groups by."""
    return run_id(dataset, split, method, config, seed, "fit")


def job_fit_id(job: Job, split: str, method: BaseMethod | None = None) -> str:
    """The fit id ``job`` (built as ``method``, when the caller has it) gets when evaluated on ``split``: what resume
    looks up before any work."""
    method = method or make_method(job.method, job.params)
    return fit_id(job.dataset, split, job.method, method.record_params(), job.seed)


def planned_sweep(nlist: int, settings: SearchSettings) -> list[int | None]:
    """The nprobe values a fit with an ``nlist``-list IVF is evaluated at (``[None]`` without an IVF)."""
    return list(nprobe_sweep(nlist, settings.nprobes)) if nlist else [None]


def is_complete(records: Iterable[dict[str, Any]], settings: SearchSettings) -> bool:
    """True when ``records`` (those of one fit) hold an ok record for every nprobe of the fit's planned sweep."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return False
    nlist = int(ok[0]["index"].get("nlist") or 0)
    return set(planned_sweep(nlist, settings)) <= {r["nprobe"] for r in ok}


def data_facts(ds: RetrievalDataset) -> DataFacts:
    """What the checks before training know of ``ds``: its size, dim and the train queries a method may use."""
    return DataFacts.of(train_data(ds, 0, "cpu", None))


def train_data(ds: RetrievalDataset, seed: int, device: str, cache_dir: str | None) -> TrainData:
    """What a method may see: docs, labeled train queries + qrels, unlabeled queries. Never the eval split."""
    labeled = ds.splits.get("train")
    unlabeled = ds.splits.get("train-unlabeled")
    if labeled is not None and labeled.name == ds.eval_split:
        labeled = None
    return TrainData(doc_emb=ds.doc_emb, doc_ids=ds.doc_ids,
                     train_query_emb=None if labeled is None else labeled.query_emb,
                     train_query_ids=None if labeled is None else labeled.query_ids,
                     train_qrels=None if labeled is None or not labeled.qrels else labeled.qrels,
                     unlabeled_query_emb=None if unlabeled is None else unlabeled.query_emb,
                     seed=seed, device=device, cache_dir=cache_dir, teacher=ds.meta.get("teacher"))


@dataclass
class FitContext:
    """What every fit of a run shares besides its dataset (what an executor needs to call :func:`execute_fit`)."""

    settings: SearchSettings
    device: str = "cpu"
    cache_dir: str | None = None
    save_index: bool = False
    threads: int = 0  # 0 = faiss/torch defaults (all cores)


@dataclass
class FitResult:
    """Everything one fit produced: its records and the files they refer to (out-folder-relative path -> bytes)."""

    job: Job
    fit_id: str
    records: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.records) and all(r["status"] == "ok" for r in self.records)

    @property
    def error(self) -> str | None:
        return next((r["error"] for r in self.records if r["status"] == "failed"), None)


def _index_facts(vq: VQParams | None, index: faiss.Index, info: dict[str, Any]) -> dict[str, Any]:
    """What the searched index is: its factory string, size and code layout (code bytes exclude IVF list ids,
    as for ``VQParams``; ``index_bytes`` counts everything)."""
    index_bytes = int(faiss.serialize_index(index).nbytes)
    if vq is not None:
        return {"factory": vq.factory, "nlist": vq.nlist, "M": vq.M, "nbits": vq.nbits,
                "bytes_per_vector": vq.bytes_per_vector, "index_bytes": index_bytes, "writeback": vq.writeback}
    # an index the method built itself: described from faiss (an uncompressed IndexFlat stores 32-bit floats)
    if isinstance(index, faiss.IndexFlat):
        return {"factory": "Flat", "nlist": 0, "M": 0, "nbits": 32, "bytes_per_vector": 4 * index.d,
                "index_bytes": index_bytes, "writeback": None}
    base = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    pq = getattr(base, "pq", None)
    nlist = ivf_nlist(index)
    code = int(faiss.extract_index_ivf(index).code_size) if nlist else int(index.sa_code_size())
    return {"factory": info.get("factory") or type(base).__name__, "nlist": nlist,
            "M": int(pq.M) if pq is not None else 0, "nbits": int(pq.nbits) if pq is not None else 0,
            "bytes_per_vector": code, "index_bytes": index_bytes, "writeback": None}


def exact_top_k(ds: RetrievalDataset, settings: SearchSettings, exact: ExactReference) -> np.ndarray:
    """The exact top-k of ``ds``'s evaluated split that fidelity is measured against (cached in ``exact``)."""
    return exact.top_k(ds, ds.split(ds.eval_split), max(100, settings.latency_k))


def record_header(job: Job, method: BaseMethod, split: str, device: str) -> dict[str, Any]:
    """The fields every record of a fit starts with (ok or failed): who, on what, with which params and seed."""
    params = method.record_params()
    return {"dataset": job.dataset, "split": split, "method": job.method, "family": method.family,
            "params": params, "seed": job.seed, "fit_id": fit_id(job.dataset, split, job.method, params, job.seed),
            "schema_version": SCHEMA_VERSION, "provenance": provenance(job.seed, device)}


def declared_encoder(options: dict[str, Any]) -> dict[str, Any] | None:
    """What encoded a dataset, from its loader options (a config's ``[datasets.<alias>]`` or a loaded dataset's
    ``meta``): ``npy:`` files name it with ``encoder``, texts with ``model`` (+ ``max_length`` / ``normalize``);
    None when neither is given. Nothing is loaded."""
    if options.get("encoder"):   # embeddings brought as files, their encoder declared (npy: encoder = "minilm")
        return encoder_info(options["encoder"])
    if options.get("model"):
        return encoder_info(options["model"], options.get("max_length"), options.get("normalize"))
    return None


def dataset_encoder(ds: RetrievalDataset) -> dict[str, Any]:
    """What encoded ``ds`` (model id, dim, max length, normalisation: :func:`benchmark.data.encoders.encoder_info`),
    for every record; embeddings brought as files without an ``encoder`` option say only their dim."""
    return declared_encoder(ds.meta) or {"encoder": None, "model_id": None, "dim": ds.dim, "max_length": None,
                                         "normalize": None}


def execute_fit(job: Job, ds: RetrievalDataset, settings: SearchSettings, *, device: str = "cpu",
                cache_dir: str | Path | None = None, exact: ExactReference | None = None,
                save_index: bool = False, method: BaseMethod | None = None, threads: int = 0,
                stage: Callable[[str], None] | None = None) -> FitResult:
    """Fit ``job`` on ``ds``, build its index and evaluate every nprobe of its sweep; write nothing.

    ``method``: the job's method as the runner built (and checked) it; built here when not given. ``threads``: the
    run's thread policy (:func:`benchmark.provenance.set_threads`: > 0 threads, 0 = every core), applied here for
    the whole fit and restored after, so the same job gives the same numbers in this process, a Ray worker or a
    shard, whatever the environment's thread variables say. An exception in the fit or the evaluation becomes one
    ``failed`` record (the suite goes on); an interruption (KeyboardInterrupt, SystemExit) propagates and the fit
    leaves no record. ``train_seconds`` is the fit's wall time plus ``info["cached_init_seconds"]`` (what a faiss init
    served from the shared cache took to train); ``train_cpu_seconds`` this process's CPU time during the fit (all
    its threads; load from other processes inflates wall time, not this) and ``train_load`` the machine's load
    around the fit (:class:`benchmark.harness.LoadWatch`: ``under_load`` when other processes used more than
    ``load_threshold`` cores on average).
    """
    method = method or make_method(job.method, job.params)
    with thread_policy(threads):
        return _execute_fit(job, ds, settings, device, cache_dir, exact or ExactReference(), save_index, method,
                            stage or (lambda _text: None))


def _execute_fit(job: Job, ds: RetrievalDataset, settings: SearchSettings, device: str,
                 cache_dir: str | Path | None, exact: ExactReference, save_index: bool, method: BaseMethod,
                 stage: Callable[[str], None]) -> FitResult:
    split = ds.split(ds.eval_split)
    try:
        stage("fit")
        t0, cpu0 = time.perf_counter(), time.process_time()
        with LoadWatch(settings.load_threshold) as train_load:
            out = method.fit(train_data(ds, job.seed, device, None if cache_dir is None else str(cache_dir)))
        fit_seconds, fit_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if isinstance(out, BuiltIndex):
            vq, index, info, query_map = None, out.index, dict(out.info), out.query_map
        else:
            stage("build index")
            vq, index, info, query_map = out, build_index(out, ds.doc_emb), dict(out.info), out.query_map
        if index.ntotal != ds.num_docs:
            raise MethodError(f"{job.method}: the index holds {index.ntotal} docs, the corpus {ds.num_docs}")
        # a query-side map is folded into the index's query transform (one d x d product per query, inside faiss):
        # what is evaluated, timed and saved is the index a user deploys, with nothing applied around it
        index, query_side = fold_query_map(index, query_map), "adapter" if query_map is not None else "none"
        train_seconds = fit_seconds + float(info.get("cached_init_seconds", 0.0))
        stage("exact top-k")
        exact_top = exact_top_k(ds, settings, exact)
        facts = _index_facts(vq, index, info)
        header = {**record_header(job, method, split.name, device), "encoder": dataset_encoder(ds)}
        if ds.meta.get("encode"):   # the dataset's encodes by this project: seconds, threads, load, CPU
            header["provenance"]["encode"] = ds.meta["encode"]
        fid = header["fit_id"]
        files: dict[str, bytes] = {}
        if save_index:
            path = f"indexes/{fid}.faiss"
            files[path] = faiss.serialize_index(index).tobytes()
            facts["path"] = path
        dev = ds.meta.get("dev") or {}
        setup = {"layout": "IVF" if ivf_nlist(index) else "no IVF",
                 "query_side": query_side,
                 "train_queries": info.get("train_queries_from"),
                 # a split carved out of the labeled train queries (dev_queries) is a tuning split, not a test one
                 "eval_split": {"name": split.name, **({"carved_from_train": int(dev["queries"]),
                                                        "seed": int(dev.get("seed", 0))} if dev else {})}}
        records = []
        sweep = planned_sweep(ivf_nlist(index), settings)
        for nprobe in sweep:
            stage(f"search nprobe={nprobe}" if nprobe is not None else "search")
            ev = evaluate(index, ds, split, exact_top, settings, nprobe, timed=False)
            rid = run_id(job.dataset, split.name, job.method, header["params"], job.seed, nprobe)
            sidecar = f"per_query/{rid}.json.gz"
            files[sidecar] = sidecar_bytes(ev.per_query)
            records.append({**header, "run_id": rid, "nprobe": nprobe, "index": facts, "metrics": ev.metrics,
                            "fidelity": ev.fidelity, "latency": None, "train_seconds": train_seconds,
                            "train_cpu_seconds": fit_cpu, "train_load": train_load.fields(), "setup": setup,
                            **({"tuning": job.tuning} if job.tuning else {}),
                            "per_query": sidecar, "provenance": {**header["provenance"],
                                                                 "peak_rss_mb": peak_rss_mb()},
                            "train_info": info, "status": "ok"})
        stage("timing")
        timings = timing_pass(index, split.query_emb, sweep, settings)
        for rec in records:
            rec["latency"] = timings[rec["nprobe"]]
        return FitResult(job, fid, records, files)
    except Exception as exc:  # one failed fit must not stop the suite; the record keeps the reason
        return failed_result(job, method, ds, device, f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc(limit=8))


def failed_result(job: Job, method: BaseMethod, ds: RetrievalDataset, device: str, error: str,
                  **extra: Any) -> FitResult:
    """The one ``failed`` record of a fit that produced no index (``extra``: more record fields, e.g. traceback)."""
    header = record_header(job, method, ds.eval_split, device)
    rec = {**header, "run_id": run_id(job.dataset, ds.eval_split, job.method, header["params"], job.seed, None),
           "nprobe": None, "index": {}, "metrics": None, "fidelity": None, "latency": None, "train_seconds": None,
           "per_query": None, "status": "failed", "error": error, **extra}
    return FitResult(job, header["fit_id"], [rec])


def write_fit(out_dir: str | Path, result: FitResult) -> None:
    """Record one fit in ``out_dir``: its files (each written atomically), then all its records in one append."""
    out_dir = Path(out_dir)
    for rel, data in result.files.items():
        write_bytes(out_dir / rel, data)
    append_records(out_dir / "results.jsonl", result.records)


@dataclass
class RunSummary:
    """What a run did with its planned fits (labels); ``remaining`` were not reached (an interruption)."""

    planned: int = 0
    skipped: list[str] = field(default_factory=list)      # complete in the results file already
    completed: list[str] = field(default_factory=list)    # fitted and recorded by this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, error), recorded as failed

    @property
    def remaining(self) -> int:
        return self.planned - len(self.skipped) - len(self.completed) - len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed and self.remaining == 0


class Runner:
    """Executes jobs into ``out_dir/results.jsonl`` (+ ``per_query/`` sidecars, optional ``indexes/``)."""

    def __init__(self, out_dir: str | Path, settings: SearchSettings | None = None, save_index: bool = False,
                 device: str = "cpu", cache_dir: str | Path | None | bool = True,
                 datasets: dict[str, tuple[str, dict[str, Any]]] | None = None, resume: bool = True,
                 log: Callable[[str], None] = tqdm.write, executor: Any = None, threads: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.results = self.out_dir / "results.jsonl"
        self.settings = settings or SearchSettings()
        self.save_index = save_index
        self.device = device
        # True: the default cache under $VQBENCH_DATA_DIR; None/False: no cache; else that folder
        self.cache_dir = default_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
        self.datasets = datasets or {}  # alias -> (loader name, loader kwargs); default: the alias itself
        self.resume = resume
        self.log = log
        self.exact = ExactReference()
        self.summary = RunSummary()
        self.executor = executor  # None: fits run in this process, one after the other
        self.threads = threads

    def complete_fits(self) -> set[str]:
        """fit_ids whose planned sweep is fully recorded with status ok (what a resumed run skips)."""
        if not self.resume:
            return set()
        records, _ = read_records(self.results)
        by_fit: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_fit.setdefault(rec["fit_id"], []).append(rec)
        return {fid for fid, recs in by_fit.items() if is_complete(recs, self.settings)}

    def load(self, names: Iterable[str]) -> dict[str, RetrievalDataset]:
        """Load each dataset once (by alias)."""
        loaded = {}
        for name in names:
            loader, kwargs = self.datasets.get(name, (name, {}))
            self.log(f"loading dataset {name}" + (f" ({loader})" if loader != name else ""))
            ds = load_dataset(loader, **kwargs)
            ds.name = name
            loaded[name] = ds
        return loaded

    def check(self, jobs: list[Job], loaded: dict[str, RetrievalDataset]) -> list[BaseMethod]:
        """Every job against its dataset and the grid as a whole, before any training; returns each job's method,
        built once (the run passes it on to its fit).

        Per job: the method's params and :meth:`BaseMethod.check_data` (its config rules, the labels it needs, the
        data's size and dim). For the grid: an nprobe that no planned IVF fit can use is an error; one that some fits
        can use and others cannot is evaluated at their nlist, printed as an adjustment. All problems are raised
        together (:class:`ConfigError`, one line each).
        """
        problems: list[str] = []
        methods: list[BaseMethod] = []
        facts = {name: data_facts(ds) for name, ds in loaded.items()}
        for job in jobs:
            try:
                method = make_method(job.method, job.params)
            except MethodError as exc:
                problems.append(f"{job.label()}: {exc}")
                continue
            methods.append(method)
            problems += [f"{job.label()}: {p}" for p in method.check_data(facts[job.dataset])]
        if not problems:
            problems += self._check_nprobes(jobs, methods)
        problems = list(dict.fromkeys(problems))
        if problems:
            raise ConfigError(problems)
        return methods

    def _check_nprobes(self, jobs: list[Job], methods: list[BaseMethod]) -> list[str]:
        """An explicit nprobe sweep against the planned fits' IVF lists (``nlist``): problems; adjustments logged."""
        asked = self.settings.nprobes
        if not asked:
            return []
        nlists = {job.label(): m.config["nlist"] for job, m in zip(jobs, methods)
                  if isinstance(m.config.get("nlist"), int)}
        if not nlists:
            self.log(f"note: nprobes {asked} unused: no planned fit has an IVF (only methods with an nlist param do)")
            return []
        largest = max(nlists.values())
        unusable = [p for p in asked if p > largest]
        if unusable:
            return [f"nprobes: {unusable} exceed the nlist of every planned IVF fit (largest nlist {largest}); "
                    f"nprobe can be at most nlist"]
        for label, nlist in nlists.items():
            clamped = [p for p in asked if p > nlist]
            if clamped:
                self.log(f"adjusted: {label}: nprobes {clamped} > nlist {nlist}, evaluated at nprobe {nlist}")
        return []

    def run(self, jobs: list[Job], loaded: dict[str, RetrievalDataset] | None = None) -> list[dict[str, Any]]:
        """Run every job whose fit is not complete in the results file; return the records written.

        Datasets are loaded and every job is checked against them first (:meth:`check`, which builds each job's
        method once); then the fits run (in this process, or on ``self.executor``: any object with
        ``results(jobs, methods, loaded, ctx, exact, stage)`` yielding :class:`FitResult` in any order) and this
        process writes each result whole as it arrives. ``self.summary`` tracks progress, also when a
        KeyboardInterrupt stops the run. ``loaded``: datasets the caller already loaded (by alias), e.g. a tuner
        running one trial after another.
        """
        self.summary = RunSummary(planned=len(jobs))
        loaded = loaded if loaded is not None else self.load(dict.fromkeys(job.dataset for job in jobs))
        methods = self.check(jobs, loaded)
        done = self.complete_fits()
        todo: list[tuple[Job, BaseMethod]] = []
        for job, method in zip(jobs, methods):
            if job_fit_id(job, loaded[job.dataset].eval_split, method) in done:
                self.log(f"skip (recorded): {job.label()}")
                self.summary.skipped.append(job.label())
            else:
                todo.append((job, method))
        written: list[dict[str, Any]] = []
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="fits", unit="fit", dynamic_ncols=True)

        def stage(job: Job, text: str) -> None:
            bar.set_description_str(f"{job.dataset} {job.method} seed={job.seed}: {text}"[:80])

        try:
            for result in self._results(todo, loaded, stage):
                write_fit(self.out_dir, result)
                written += result.records
                if result.ok:
                    self.summary.completed.append(result.job.label())
                else:
                    self.log(f"FAILED {result.job.label()}: {result.error}")
                    self.summary.failed.append((result.job.label(), result.error or "?"))
                bar.update(1)
        finally:
            bar.close()
        return written

    def _results(self, todo: list[tuple[Job, BaseMethod]], loaded: dict[str, RetrievalDataset],
                 stage: Callable[[Job, str], None]) -> Iterable[FitResult]:
        if self.executor is not None:
            ctx = FitContext(self.settings, self.device, None if self.cache_dir is None else str(self.cache_dir),
                             self.save_index, self.threads)
            yield from self.executor.results(todo, loaded, ctx, self.exact, stage)
            return
        for job, method in todo:
            yield execute_fit(job, loaded[job.dataset], self.settings, device=self.device, cache_dir=self.cache_dir,
                              exact=self.exact, save_index=self.save_index, method=method, threads=self.threads,
                              stage=lambda text, job=job: stage(job, text))
