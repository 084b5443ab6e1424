"""Run jobs (dataset x method x params x seed): fit, build the faiss index, sweep nprobe, append records."""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
from tqdm.auto import tqdm

from benchmark.vq import faiss_init
from benchmark.data import RetrievalDataset, load_dataset
from benchmark.harness import (Evaluation, ExactReference, SearchSettings, evaluate, ivf_nlist,
                               nprobe_sweep)
from benchmark.provenance import peak_rss_mb, provenance
from benchmark.records import append_record, read_records, run_id
from benchmark.registry import BaseMethod, TrainData, make_method
from benchmark.vq import BuiltIndex, VQParams, build_index

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "datasets" / "cache" / "train"  # faiss inits and mined candidates


@dataclass
class Job:
    """One fit: a method with its build-time params on a dataset, with a seed."""

    dataset: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.dataset} {self.method}" + (f"({extra})" if extra else "") + f" seed={self.seed}"


def fit_id(dataset: str, split: str, method: str, config: dict[str, Any], seed: int) -> str:
    """Id shared by all records of one fit (all nprobe values): what resume looks up."""
    return run_id(dataset, split, method, config, seed, "fit")


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
                     seed=seed, device=device, cache_dir=cache_dir)


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def _index_facts(vq: VQParams | None, index: faiss.Index, writeback: str | None) -> dict[str, Any]:
    index_bytes = int(faiss.serialize_index(index).nbytes)
    if vq is None:
        return {"factory": "Flat", "nlist": 0, "M": 0, "nbits": 32, "bytes_per_vector": 4 * index.d,
                "index_bytes": index_bytes, "writeback": None}
    return {"factory": vq.factory, "nlist": vq.nlist, "M": vq.M, "nbits": vq.nbits,
            "bytes_per_vector": vq.bytes_per_vector, "index_bytes": index_bytes, "writeback": writeback}


class Runner:
    """Executes jobs into ``out_dir/results.jsonl`` (+ ``per_query/`` sidecars, optional ``indexes/``)."""

    def __init__(self, out_dir: str | Path, settings: SearchSettings | None = None, save_index: bool = False,
                 device: str = "cpu", cache_dir: str | Path | None = DEFAULT_CACHE,
                 datasets: dict[str, tuple[str, dict[str, Any]]] | None = None, resume: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.out_dir = Path(out_dir)
        self.results = self.out_dir / "results.jsonl"
        self.settings = settings or SearchSettings()
        self.save_index = save_index
        self.device = device
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.datasets = datasets or {}  # alias -> (loader name, loader kwargs); default: the alias itself
        self.resume = resume
        self.log = log
        self.exact = ExactReference()

    def done_fits(self) -> set[str]:
        records, _ = read_records(self.results)
        return {r.get("fit_id") for r in records if r["status"] == "ok"} if self.resume else set()

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Run every job not already recorded; return the records written."""
        written: list[dict[str, Any]] = []
        done = self.done_fits()
        by_dataset: dict[str, list[Job]] = {}
        for job in jobs:
            by_dataset.setdefault(job.dataset, []).append(job)
        bar = tqdm(total=len(jobs), desc="jobs", unit="fit")
        for name, ds_jobs in by_dataset.items():
            loader, kwargs = self.datasets.get(name, (name, {}))
            ds = load_dataset(loader, **kwargs)
            ds.name = name
            for job in ds_jobs:
                method = make_method(job.method, job.params)
                fid = fit_id(job.dataset, ds.eval_split, job.method, method.config, job.seed)
                bar.set_postfix_str(job.label()[:60])
                if fid in done:
                    self.log(f"skip (recorded): {job.label()}")
                else:
                    written += self.run_one(job, method, ds, fid)
                bar.update(1)
        bar.close()
        return written

    def run_one(self, job: Job, method: BaseMethod, ds: RetrievalDataset, fid: str) -> list[dict[str, Any]]:
        """Fit one method and evaluate its index over the nprobe sweep; a failure becomes a ``failed`` record."""
        split = ds.split(ds.eval_split)
        base = {"dataset": job.dataset, "split": split.name, "method": job.method, "family": method.family,
                "params": method.config, "seed": job.seed, "fit_id": fid}
        try:
            vq, index, train_seconds = self._fit(method, ds, job.seed)
            exact_top = self.exact.top_k(ds, split, max(100, self.settings.latency_k))
            nlist = ivf_nlist(index)
            sweep: list[int | None] = nprobe_sweep(nlist, self.settings.nprobes) if nlist else [None]
            writeback = None if vq is None else vq.writeback
            facts = _index_facts(vq, index, writeback)
            if self.save_index:
                facts["path"] = self._save(index, vq, fid)
            records = []
            for nprobe in sweep:
                ev = evaluate(index, ds, split, exact_top, self.settings, nprobe,
                              None if vq is None else vq.query_map)
                records.append(self._record(base, ev, facts, train_seconds, vq))
            return records
        except Exception as exc:  # one failed fit must not stop the suite; the report shows the reason
            self.log(f"FAILED {job.label()}: {type(exc).__name__}: {exc}")
            rec = {**base, "run_id": run_id(job.dataset, split.name, job.method, method.config, job.seed, None),
                   "nprobe": None, "index": {}, "metrics": None, "fidelity": None, "latency": None,
                   "train_seconds": None, "per_query": None, "provenance": provenance(job.seed, self.device),
                   "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8)}
            append_record(self.results, rec)
            return [rec]

    def _fit(self, method: BaseMethod, ds: RetrievalDataset, seed: int
             ) -> tuple[VQParams | None, faiss.Index, float]:
        t0 = time.perf_counter()
        faiss_init.reset_cached_init_seconds()
        vq = method.fit(train_data(ds, seed, self.device, self.cache_dir))
        if isinstance(vq, BuiltIndex):  # exact search (flat) or a faiss-native index, searched as built
            return None, vq.index, time.perf_counter() - t0
        # a faiss init served from the shared cache still counts: add what it took to train it
        cached = faiss_init.cached_init_seconds()
        vq.info = {**vq.info, "cached_init_seconds": cached}
        train_seconds = time.perf_counter() - t0 + cached
        return vq, build_index(vq, ds.doc_emb), train_seconds

    def _save(self, index: faiss.Index, vq: VQParams | None, fid: str) -> str:
        path = self.out_dir / "indexes" / f"{fid}.faiss"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        if vq is not None and vq.query_map is not None:
            np.save(path.with_suffix(".query_map.npy"), vq.query_map)
        return str(path.relative_to(self.out_dir))

    def _record(self, base: dict[str, Any], ev: Evaluation, facts: dict[str, Any], train_seconds: float,
                vq: VQParams | None) -> dict[str, Any]:
        rid = run_id(base["dataset"], base["split"], base["method"], base["params"], base["seed"], ev.nprobe)
        sidecar = Path("per_query") / f"{rid}.json"
        _write_json_atomic(self.out_dir / sidecar, ev.per_query)
        rec = {**base, "run_id": rid, "nprobe": ev.nprobe, "index": facts, "metrics": ev.metrics,
               "fidelity": ev.fidelity, "latency": ev.latency, "train_seconds": train_seconds,
               "per_query": str(sidecar), "provenance": {**provenance(base["seed"], self.device),
                                                         "peak_rss_mb": peak_rss_mb()},
               "train_info": {} if vq is None else vq.info, "status": "ok"}
        append_record(self.results, rec)
        return rec
