"""Scale sweep on the synthetic generator: per-stage time and peak RSS vs number of docs (issues #8, #29).

Each size and method runs in a fresh subprocess, so the reported peak RSS (the child's ``ru_maxrss``, read with
``wait4``) is its own peak, not a high-water mark carried over from another. Docs are generated once per size into a
memory-mapped ``.npy`` under ``--workdir/n<N>/`` (queries and qrels beside it); the methods of a size share it, its
faiss-init and mined top-K cache (the first method pays for them: ``init`` and ``mining`` say which) and its exact
reference top-k. The number of train/test queries is the same at every size. Stages, timed separately:

* ``generate``   make_synthetic(out_path=...) (memmap, float32), flushed and reopened read-only (once per size)
* ``fit``        ``method.fit``: faiss init (or its cache), mining (or its cache) and training
* ``init``, ``mining``, ``train`` are read from the core's recorded timings in ``VQParams.info`` (no patching of
                 method internals): ``init_seconds`` (faiss ``OPQ{M},IVF{nlist},PQ{M}x8`` training), ``mining_seconds``
                 (the teacher top-K for distill-vq, the init index's negative pool for jpq),
                 ``train_loop_seconds`` / ``train_loop_cpu_seconds`` (:class:`benchmark.vq.train.Trainer`);
                 ``train/epoch`` is ``train`` divided by epochs. They are parts of ``fit`` (not added to the total)
* ``build``      ``build_index`` (chunked write-back)
* ``exact``      exact top-k of the test queries (chunked ``ExactReference``; once per size)
* ``eval``       ``harness.evaluate`` at one nprobe (batch search + single-thread latency)

Beside each measured stage the table prints what ``run_benchmark.py --dry-run`` estimates for the same shape
(:func:`benchmark.estimate.fit_stages` with this machine's rates measured at the start of the run, at its threads) and
measured / estimated, so the dry-run's model is checked against every run (issue #29 asks for a factor of 2 at most).

**Resume** (``--resume``): a size's folder is kept; a finished generation (``generated.json``, written last), the
caches, the exact top-k and each finished method's ``result-<method>.json`` are reused, so an interrupted sweep of
hours goes on where it stopped. ``--paper``: MS MARCO passage's shape (8,841,823 x 768, 6,980 evaluated and 100k
train queries, 32 B, IVF10000 as configs/msmarco.toml, faiss-ivfopq / jpq-ivf / distill-vq, the IVF teacher, nprobe and
JPQ's negatives from nlist/16 = 625 lists) at 100k / 1M / 8.8M docs.

Choices (overridable): nlist = 4*sqrt(n) rounded to the nearest power of two, M = 48 (8 dims per sub-vector at d=384,
48 bytes/doc = 32x compression of float32, i.e. the 96-sub-vector setting of JPQ/Distill-VQ at d=768),
K = 200 mined candidates, faiss training sample = min(n, max(65536, 39*nlist)) (faiss' 39 points per centroid),
nprobe = nlist/16. Then the growth exponent b of ``seconds ~ a * n^b`` is fitted per stage and method (least squares
in log-log). The key number: per-epoch training time should be flat in the number of docs (b ~ 0); its CPU seconds
(``process_time`` around the method's training loop) are reported too, as wall time on a shared machine is noisy.

Memory: peak RSS includes the memory-mapped corpus pages this process touched (``RssFile``, ~one float32 copy at most:
they are file-backed and reclaimable); per-stage peaks of ``RssAnon`` (heap) are sampled from /proc/self/status.
On a loaded machine prefer ``--threads 1``: oversubscribed OpenMP made faiss PQ training ~3x slower with 2 threads.

Usage: python bench/scale.py [--sizes 10000,100000,1000000] [--dim 384] [--methods distill-vq,jpq-ivf] [--epochs 1]
       [--train-queries 5000] [--test-queries 1000] [--teacher exact|ivf] [--mine-nprobe P] [--workdir DIR]
       [--resume] [--paper] [--threads N] [--device cpu|cuda] [--coarse kmeans|two-level] [--opq-niter N]
       [--opq-train-points N] [--pq-assign tables|flat-index] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = ("generate", "fit", "init", "mining", "teacher_pass", "train", "train/epoch", "build", "exact", "eval")
PARTS_OF_FIT = ("init", "mining", "teacher_pass", "train", "train/epoch")  # from info; inside ``fit``
MiB = 1024.0


def _number_or_word(value: str | float | None) -> float | str | None:
    """A flag's value as a method param: a number when it parses as one, else the word ('reference')."""
    try:
        return None if value is None else float(value)
    except ValueError:
        return value


def nlist_for(n: int) -> int:
    """4*sqrt(n) rounded (in log2) to the nearest power of two."""
    return 1 << max(0, round(math.log2(4 * math.sqrt(n))))


def train_points_for(n: int, nlist: int) -> int:
    return min(n, max(65536, 39 * nlist))


# ----------------------------------------------------------------------------------------------------- memory
def _status_mb() -> dict[str, float]:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1]) / MiB
    except OSError:
        pass
    return out


class RssSampler:
    """Samples /proc/self/status every ``interval`` s; :meth:`window` gives the peaks since the last call.

    ``ru_maxrss`` is a process-lifetime high-water mark, so per-stage peaks come from sampling (may miss spikes
    shorter than the interval). ``RssFile`` is the memory-mapped corpus pages resident in this process; ``RssAnon``
    is heap (numpy/faiss/torch allocations).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._peak: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        s = _status_mb()
        with self._lock:
            for key in ("VmRSS", "RssAnon", "RssFile"):
                if key in s:
                    self._peak[key] = max(self._peak.get(key, 0.0), s[key])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def window(self) -> dict[str, float]:
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, {}
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MiB


# ------------------------------------------------------------------------------------------------------ child
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _size_dir(args: argparse.Namespace, n: int) -> Path:
    return Path(args.workdir) / f"n{n}"


def _load_or_generate(args: argparse.Namespace, n: int, stage: Callable) -> tuple[Any, dict | None]:
    """The size's dataset: generated into ``n<N>/docs.npy`` (+ its queries and qrels in ``splits.pkl``), or, when a
    finished generation is there (``generated.json``, written last), read back with the docs memory-mapped
    read-only. Returns the dataset and the generation's recorded stage when it was read back."""
    import pickle

    import numpy as np

    from benchmark.data.synthetic import make_synthetic
    size_dir = _size_dir(args, n)
    docs_path, splits_path, done = size_dir / "docs.npy", size_dir / "splits.pkl", size_dir / "generated.json"
    if done.is_file() and docs_path.is_file() and splits_path.is_file():
        ds = pickle.loads(splits_path.read_bytes())
        ds.doc_emb = np.load(docs_path, mmap_mode="r")
        return ds, json.loads(done.read_text())
    done.unlink(missing_ok=True)
    size_dir.mkdir(parents=True, exist_ok=True)
    with stage("generate"):
        ds = make_synthetic(num_docs=n, dim=args.dim, num_train=args.train_queries, num_unlabeled=0,
                            num_test=args.test_queries, seed=args.seed, name=f"synthetic-scale-{n}",
                            out_path=str(docs_path))
        ds.doc_emb.flush()
        mm = ds.doc_emb
        ds.doc_emb = np.load(docs_path, mmap_mode="r")  # read-only reopen, as a user of a saved corpus would
        del mm
        docs, ds.doc_emb = ds.doc_emb, None
        splits_path.write_bytes(pickle.dumps(ds))       # ids, queries, qrels: everything but the docs
        ds.doc_emb = docs
    return ds, None


def run_size(args: argparse.Namespace, n: int, method_name: str) -> dict:
    """One size and method, in this (fresh) process: every stage timed, per-stage peak RSS sampled. The size's data,
    its faiss inits and mined top-K (``n<N>/cache``) and its exact reference top-k are shared by the size's methods
    and kept with ``--resume``."""
    import numpy as np

    from benchmark.harness import ExactReference, SearchSettings, evaluate
    from benchmark.provenance import cpu, set_threads, threads
    set_threads(args.threads)
    from benchmark.registry import make_method
    from benchmark.runner import train_data
    from benchmark.vq import build_index, fold_query_map

    size_dir = _size_dir(args, n)
    if not args.resume:
        shutil.rmtree(size_dir, ignore_errors=True)
    cache_dir = size_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    nlist = args.nlist or nlist_for(n)
    probe = args.nprobe or max(1, nlist // 16)
    probe = min(probe, nlist)
    plain = make_method(method_name)
    cls_params = plain.params
    wanted = {"nlist": nlist, "M": args.M, "epochs": args.epochs, "topk": args.K,
              "max_train_points": args.max_train_points or train_points_for(n, nlist),
              "mine_nprobe": max(1, nlist // 16) if args.mine_nprobe == -1 else args.mine_nprobe,
              "coarse": None if args.coarse == "kmeans" else args.coarse, "opq_niter": args.opq_niter or None,
              "opq_train_points": args.opq_train_points or None,
              "pq_assign": None if args.pq_assign == "tables" else args.pq_assign,
              "teacher_scores": None if args.teacher_scores == "per-step" else args.teacher_scores,
              "pool_refresh": args.pool_refresh or None, "lr": _number_or_word(args.lr)}
    params = {k: v for k, v in wanted.items() if k in cls_params and v is not None
              and not (k == "mine_nprobe" and not getattr(plain, "ivf", False))}
    method = make_method(method_name, params)
    cfg = method.config
    result: dict = {"n": n, "dim": args.dim, "method": method_name, "params": params, "nlist": nlist,
                    "nprobe": probe if "nlist" in cfg else None, "K": args.K, "train_queries": args.train_queries,
                    "test_queries": args.test_queries, "teacher": args.teacher, "device": args.device,
                    "threads": threads(),
                    "cpu": cpu(), "stages": {}}
    log(f"n={n}: {method_name} {params} | teacher {args.teacher} | threads {result['threads']} | {result['cpu']}")
    result["estimate"] = estimate(method, n, args, [probe] if "nlist" in cfg else [], cache_dir)

    sampler = RssSampler()

    @contextmanager
    def stage(name: str):
        sampler.window()
        load0 = os.getloadavg()[0]
        log(f"n={n}: {name} ...")
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        secs, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        peak = sampler.window()
        result["stages"][name] = {"seconds": secs, "cpu_seconds": cpu_s, "peak_rss_mb": peak.get("VmRSS"),
                                  "peak_anon_mb": peak.get("RssAnon"), "peak_file_mb": peak.get("RssFile"),
                                  "maxrss_after_mb": maxrss_mb(), "loadavg": [load0, os.getloadavg()[0]]}
        log(f"n={n}: {name} {secs:.2f} s, peak RSS {peak.get('VmRSS', 0):.0f} MiB "
            f"(anon {peak.get('RssAnon', 0):.0f}, file {peak.get('RssFile', 0):.0f})")

    ds, generated = _load_or_generate(args, n, stage)
    if generated is None:
        _atomic_json(size_dir / "generated.json", {**result["stages"]["generate"], "cached": True})
    else:
        result["stages"]["generate"] = generated      # measured when the size was generated, not now
    if hasattr(method, "factory"):
        result["factory"] = method.factory()
    train = train_data(ds, args.seed, args.device, str(cache_dir))
    if args.teacher != "exact":
        train = replace(train, teacher={"kind": args.teacher, "nlist": 0, "nprobe": 0})
    mined_before = {p.name for p in cache_dir.glob("topk-*.npy")}
    with stage("fit"):   # the first method of a size trains the faiss init and mines; later ones read the cache
        vq = method.fit(train)
    info = vq.info
    epochs = float(info.get("epochs", cfg.get("epochs", 1.0)))
    for name, key in (("init", "init_seconds"), ("mining", "mining_seconds"), ("teacher_pass", "teacher_pass_seconds"),
                      ("train", "train_loop_seconds")):
        if key in info:
            cpu_key = "train_loop_cpu_seconds" if name == "train" else None
            result["stages"][name] = {"seconds": float(info[key]),
                                      "cpu_seconds": float(info[cpu_key]) if cpu_key in info else None}
    if "mining" in result["stages"]:   # the size's mining ledger: what a method's mining took when it ran; a
        ledger = size_dir / "mining-seconds.json"     # later (resumed) fit that read its top-K from the cache is
        known = json.loads(ledger.read_text()) if ledger.is_file() else {}   # marked, with that time
        refreshed = "refresh_every_steps" in (info.get("negative_mining") or {})   # mined in training, uncached
        if refreshed or {p.name for p in cache_dir.glob("topk-*.npy")} - mined_before:
            _atomic_json(ledger, {**known, method_name: {"seconds": result["stages"]["mining"]["seconds"]}})
        elif method_name in known:
            result["stages"]["mining"] = {**known[method_name], "cpu_seconds": None, "cached": True}
    if info.get("init_cached"):   # read from the size's cache: measured when an earlier method trained it
        result["stages"]["init"] = {"seconds": float(info["cached_init_seconds"]), "cpu_seconds": None,
                                    "cached": True}
    if "train" in result["stages"]:
        result["stages"]["train/epoch"] = {k: None if v is None else v / epochs
                                           for k, v in result["stages"]["train"].items()}
    result["train_seconds_source"] = "info (benchmark.vq.train)" if "train" in result["stages"] else "-"
    result["train_info"] = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}
    result["teacher_info"] = (info.get("train_queries_from") or {}).get("teacher")

    with stage("build"):
        index = build_index(vq, ds.doc_emb)
    split = ds.split(ds.eval_split)
    settings = SearchSettings()
    exact_path = size_dir / f"exact-top{max(100, settings.latency_k)}.npy"
    if exact_path.is_file():
        exact_top = np.load(exact_path)
        result["stages"]["exact"] = json.loads(exact_path.with_suffix(".json").read_text())
    else:
        with stage("exact"):
            exact_top = ExactReference().top_k(ds, split, max(100, settings.latency_k))
        np.save(exact_path, exact_top)
        _atomic_json(exact_path.with_suffix(".json"), {**result["stages"]["exact"], "cached": True})
    with stage("eval"):
        ev = evaluate(fold_query_map(index, vq.query_map), ds, split, exact_top, settings,
                      probe if vq.nlist else None)
    result["metrics"], result["fidelity"], result["latency"] = ev.metrics, ev.fidelity, ev.latency
    sampler.stop()
    result["maxrss_mb"] = maxrss_mb()
    result["docs_bytes"] = int(n * args.dim * 4)
    result["disk_bytes"] = sum(f.stat().st_size for f in size_dir.rglob("*") if f.is_file())
    return result


# the --dry-run model's stage names (benchmark.estimate.fit_stages) -> this script's stages
ESTIMATE_STAGES = {"faiss init": "init", "teacher": "mining", "negatives": "mining", "training": "train",
                   "index build": "build", "exact reference": "exact", "evaluation": "eval"}


def estimate(method: Any, n: int, args: argparse.Namespace, sweep: list[int], cache_dir: Path) -> dict:
    """What ``run_benchmark.py --dry-run`` would estimate for this run's shape, per stage (seconds on this machine,
    its rates measured now at this run's threads), so each measured stage can be set against its estimate."""
    from benchmark.estimate import STEP_SECONDS, Facts, fit_stages, measure_machine
    machine = measure_machine(cache_dir)
    facts = Facts(n, args.dim, args.train_queries, args.test_queries, False, None, "bench/scale.py")
    teacher = {"kind": args.teacher, "nlist": 0, "nprobe": 0}
    seconds: dict[str, float] = {}
    for st in fit_stages(method, facts, sweep, teacher=teacher):
        key = next(v for k, v in ESTIMATE_STAGES.items() if st.name.startswith(k))
        seconds[key] = seconds.get(key, 0.0) + st.seconds(machine.rates(), STEP_SECONDS)
    return {"seconds": seconds, "rates": machine.rates()._asdict(), "cores": machine.cores}


def _atomic_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------- parent
def spawn(args: argparse.Namespace, n: int, method: str) -> dict:
    """Run one size and method in a fresh interpreter; its peak RSS is the child's own ru_maxrss (via wait4). With
    ``--resume`` a finished (size, method) is read back from its result file instead."""
    out = _size_dir(args, n) / f"result-{method}.json"
    if args.resume and out.is_file():
        result = json.loads(out.read_text())
        result["resumed"] = True
        return result
    out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    child_out = out.with_name(f".{out.name}.child")
    child_out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--child-method", method,
           "--child-out", str(child_out), *args.argv]
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not child_out.exists():
        return {"n": n, "method": method, "status": "failed", "returncode": proc.returncode,
                "child_maxrss_mb": usage.ru_maxrss / MiB}
    result = json.loads(child_out.read_text())
    result["status"] = "ok"
    result["child_maxrss_mb"] = usage.ru_maxrss / MiB  # peak RSS of that child (ru_maxrss), per size and method
    _atomic_json(out, result)                          # the finished record, kept for --resume
    child_out.unlink()
    return result


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def size_table(r: dict) -> str:
    lines = [f"n={r['n']:,}  d={r['dim']}  {r['method']}  factory={r.get('factory', '-')}  nprobe={r['nprobe']}  "
             f"K={r['K']}  queries train/test={r['train_queries']}/{r['test_queries']}  "
             f"threads={r['threads']}",
             f"{'stage':<12}{'seconds':>10}{'cpu s':>9}{'peak RSS':>10}{'anon':>8}{'file':>8}{'maxrss':>9}  (MiB)"
             f"{'dry-run est s':>15}{'measured/est':>14}"]
    est = (r.get("estimate") or {}).get("seconds", {})
    for name in STAGES:
        s = r["stages"].get(name)
        if s is None:
            continue
        mark = "*" if s.get("cached") else ""
        lines.append(f"{name + mark:<12}{s['seconds']:>10.2f}{fmt(s.get('cpu_seconds')):>9}"
                     f"{fmt(s.get('peak_rss_mb'), '.0f'):>10}"
                     f"{fmt(s.get('peak_anon_mb'), '.0f'):>8}{fmt(s.get('peak_file_mb'), '.0f'):>8}"
                     f"{fmt(s.get('maxrss_after_mb'), '.0f'):>9}"
                     f"{fmt(est.get(name), '.1f'):>15}"
                     f"{fmt(s['seconds'] / est[name] if est.get(name) else None):>14}")
    m = r.get("metrics", {})
    if any(s.get("cached") for s in r["stages"].values()):
        lines.append("* done once for the size (by an earlier method or run) and reused here: its measured time")
    lines.append(f"peak RSS of the process (ru_maxrss): {r['child_maxrss_mb']:.0f} MiB; docs on disk "
                 f"{r['docs_bytes'] / 2**20:.0f} MiB, the size's folder {r.get('disk_bytes', 0) / 2**20:.0f} MiB; "
                 f"teacher {r.get('teacher', 'exact')}"
                 + (f" (recall@K {r['teacher_info']['recall_at_k']})" if (r.get("teacher_info") or {}).get(
                     "recall_at_k") is not None else "") + f"; train loop from {r['train_seconds_source']}; "
                 + ", ".join(f"{k}={v:.4f}" for k, v in {**m, **r.get('fidelity', {})}.items()
                             if k in ("nDCG@10", "ndcg@10", "RR@10", "overlap@10", "overlap@100")))
    return "\n".join(lines)


def _stage_value(r: dict, name: str, key: str) -> float | None:
    if name == "total":  # every stage the method needs run alone: the timed ones (init, mining, ... are parts of
        # fit) and the parts of fit it read from the size's cache, at the time they took when they ran
        vals = [s.get(key) for k, s in r["stages"].items() if k not in PARTS_OF_FIT or s.get("cached")]
        return None if any(v is None for v in vals) else float(sum(vals))
    return r["stages"].get(name, {}).get(key)


def _slope(ns: list[int], values: list[float | None]) -> float | None:
    import numpy as np
    pts = [(n, v) for n, v in zip(ns, values) if v is not None and v > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    return float(np.polyfit(np.log([n for n, _ in pts]), np.log([v for _, v in pts]), 1)[0])


def exponents(results: list[dict]) -> dict[str, float | None]:
    """b of ``value ~ a * n^b`` per stage (wall seconds; ``<stage> cpu`` for CPU seconds) and for peak RSS."""
    ok = [r for r in results if r.get("status") == "ok"]
    ns = [r["n"] for r in ok]
    out: dict[str, float | None] = {}
    for name in STAGES + ("total",):
        out[name] = _slope(ns, [_stage_value(r, name, "seconds") for r in ok])
        out[f"{name} cpu"] = _slope(ns, [_stage_value(r, name, "cpu_seconds") for r in ok])
    out["peak_rss"] = _slope(ns, [r["child_maxrss_mb"] for r in ok])
    return out


def summary(results: list[dict], exps: dict[str, float | None]) -> str:
    ok = [r for r in results if r.get("status") == "ok"]
    cols = "".join(f"{'n=' + format(r['n'], ','):>20}" for r in ok)
    lines = ["wall (cpu) seconds per stage vs docs; b = slope of log(seconds) on log(n) (numpy.polyfit), "
             "wall (cpu)", f"{'stage':<12}{cols}{'b wall':>9}{'b cpu':>8}"]
    for name in STAGES + ("total",):
        row = f"{name:<12}"
        for r in ok:
            w, c = _stage_value(r, name, "seconds"), _stage_value(r, name, "cpu_seconds")
            row += f"{fmt(w) + ' (' + fmt(c) + ')':>20}"
        lines.append(row + f"{fmt(exps.get(name), '.3f'):>9}{fmt(exps.get(name + ' cpu'), '.3f'):>8}")
    lines.append(f"{'peak RSS MiB':<12}" + "".join(f"{r['child_maxrss_mb']:>20.0f}" for r in ok)
                 + f"{fmt(exps.get('peak_rss'), '.3f'):>9}")
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"n={r['n']}: FAILED (exit {r.get('returncode')})")
    if exps.get("train/epoch") is not None:
        per = [r["stages"]["train/epoch"]["seconds"] for r in ok]
        lines.append(f"per-epoch training time vs docs: b = {exps['train/epoch']:.3f} wall, "
                     f"{fmt(exps.get('train/epoch cpu'), '.3f')} cpu; wall max/min over sizes = "
                     f"{max(per) / min(per):.2f} (flat: b ~ 0)")
    loads = [s.get("loadavg") for r in ok for s in r["stages"].values() if s.get("loadavg")]
    if loads:
        lo, hi = min(min(x) for x in loads), max(max(x) for x in loads)
        lines.append(f"1-min load average during stages: {lo:.1f}..{hi:.1f} on {os.cpu_count()} cores "
                     "(shared machine: wall times include contention)")
    return "\n".join(lines)


PAPER = {"sizes": "100000,1000000,8841823", "dim": 768, "M": 32, "train_queries": 100_000, "test_queries": 6980,
         "K": 50, "nlist": 10000, "methods": "faiss-ivfopq,jpq-ivf,distill-vq", "teacher": "ivf",
         "coarse": "two-level", "pq_assign": "flat-index", "teacher_scores": "one-pass", "lr": 1e-4}
# --paper: MS MARCO passage's shape (8,841,823 docs x 768-d, the 6,980 dev.small queries, >= 100k train queries,
# 32 B codes, IVF10000 by two-level lists and the flat-index PQ assignment, all as configs/msmarco.toml, so that its
# --dry-run is checked against this run's stages) on the structured synthetic generator, at three sizes for the growth
# plot; nprobe and jpq-ivf's negatives from nlist/16 = 625 of the lists (--mine-nprobe 0 = nlist/16 under --paper)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of docs")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--methods", default="distill-vq", help="comma-separated registered methods (default "
                    "distill-vq); each runs in its own process on the size's shared data and caches")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-queries", type=int, default=5000, help="same at every size")
    ap.add_argument("--test-queries", type=int, default=1000)
    ap.add_argument("--M", type=int, default=48, help="PQ sub-vectors (must divide --dim)")
    ap.add_argument("--K", type=int, default=200, help="mined teacher top-K per training query")
    ap.add_argument("--nlist", type=int, default=0, help="0 = 4*sqrt(n) rounded to a power of two")
    ap.add_argument("--nprobe", type=int, default=0, help="0 = nlist/16")
    ap.add_argument("--max-train-points", type=int, default=0,
                    help="faiss training sample; 0 = min(n, max(65536, 39*nlist))")
    ap.add_argument("--coarse", choices=("kmeans", "two-level"), default="kmeans",
                    help="how the faiss init's IVF lists are trained (the methods' coarse param)")
    ap.add_argument("--opq-niter", type=int, default=0, help="OPQ iterations of the faiss init (0 = the methods' "
                    "default, 20); each costs ~6.5 s at d=768 on 2 cores")
    ap.add_argument("--opq-train-points", type=int, default=0, help="sample OPQ's rotation is fitted on (0 = the "
                    "methods' default, 65,536)")
    ap.add_argument("--pq-assign", choices=("tables", "flat-index"), default="tables",
                    help="how the faiss init encodes sub-vectors (the methods' pq_assign param): faiss's distance "
                         "tables, or an IndexFlatL2 search per sub-quantizer (~12x faster encoding at 16-d)")
    ap.add_argument("--teacher-scores", choices=("per-step", "one-pass"), default="per-step",
                    help="distill-vq's teacher_scores: the candidates' doc vectors gathered each step, or one read of "
                         "the corpus in row order (a memory-mapped corpus larger than RAM)")
    ap.add_argument("--lr", default=None, help="the lr param of the methods that declare one (jpq-ivf's codebook and "
                    "centroid lr): a number or 'reference' (JPQ's rule for M); default: each method's")
    ap.add_argument("--pool-refresh", type=int, default=0,
                    help="jpq-ivf's pool_refresh: its negative pool re-mined from the current index every this many "
                         "steps (0 = mined once from the init index)")
    ap.add_argument("--teacher", choices=("exact", "ivf"), default="exact",
                    help="how the teacher's top-K is mined: exact scan, or the IVF-SQ8 teacher (recall recorded)")
    ap.add_argument("--mine-nprobe", type=int, default=None,
                    help="lists probed to mine negatives (jpq-ivf, infonce-pq-ivf); 0 = nlist/16; default: all")
    ap.add_argument("--paper", action="store_true", help="MS MARCO's shape at 100k / 1M / 8.8M docs: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in PAPER.items()) + ", --mine-nprobe 0 (explicit flags win)")
    ap.add_argument("--resume", action="store_true", help="keep each size's folder (data, caches, finished "
                    "methods' results) and go on where a previous run stopped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/vqbench-scale", help="memmapped docs and caches live here")
    ap.add_argument("--threads", type=int, default=0, help="faiss omp and torch threads (0 = library defaults)")
    ap.add_argument("--device", default="cpu", help="torch device for training and the exact teacher (cpu, cuda)")
    ap.add_argument("--json", default=None, help="also write the results JSON here")
    ap.add_argument("--keep-docs", action="store_true", help="keep each size's folder after its last method "
                    "(default: delete it unless --resume)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.paper:
        given = {a.split("=")[0] for a in args.argv if a.startswith("--")}
        for key, value in PAPER.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
        if "--mine-nprobe" not in given:
            args.mine_nprobe = 0
    if args.mine_nprobe == 0:
        args.mine_nprobe = -1      # resolved per size: nlist/16
    if args.dim % args.M:
        ap.error(f"--M {args.M} must divide --dim {args.dim}")
    args.method_list = [m for m in args.methods.split(",") if m.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        result = run_size(args, args.child, args.child_method)
        Path(args.child_out).write_text(json.dumps(result, indent=1, default=str))
        return
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    results: list[dict] = []
    out_paths = [Path(args.workdir) / "scale-results.json"] + ([Path(args.json)] if args.json else [])
    runs = [(n, m) for n in sizes for m in args.method_list]
    for i, (n, method) in enumerate(runs):
        print(f"=== {i + 1}/{len(runs)}: n={n:,} {method} (fresh subprocess) ===", flush=True)
        t0 = time.perf_counter()
        r = spawn(args, n, method)
        r.setdefault("wall_seconds", time.perf_counter() - t0)
        results.append(r)
        if r.get("status") == "ok":
            print(size_table(r), flush=True)
        else:
            print(f"n={n} {method}: FAILED (exit {r.get('returncode')}), peak RSS {r['child_maxrss_mb']:.0f} MiB",
                  flush=True)
        if method == args.method_list[-1] and not (args.keep_docs or args.resume):
            shutil.rmtree(_size_dir(args, n), ignore_errors=True)
        kept = {k: v for k, v in vars(args).items() if not k.startswith("child") and k != "argv"}
        doc = {"args": kept, "results": results,
               "exponents": {m: exponents([r for r in results if r.get("method") == m]) for m in args.method_list}}
        for p in out_paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            _atomic_json(p, doc)
    for m in args.method_list:
        mine = [r for r in results if r.get("method") == m]
        print(f"--- {m} ---\n" + summary(mine, exponents(mine)), flush=True)
    print("results JSON: " + ", ".join(map(str, out_paths)), flush=True)


if __name__ == "__main__":
    main()
