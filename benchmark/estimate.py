"""What a planned run will need, before any work: ``run_benchmark.py --config C --dry-run``.

Reads no vectors: a dataset's sizes come from the ``.npy`` headers (``npy:``), line counts (``beir:<folder>``), the
BEIR catalog (``msmarco``, ``beir/<name>``) or the generator's options (``synthetic``). Per dataset and distinct
(method, params) it prints every stage of a fit (faiss init, teacher top-K / negative mining, training, index build,
exact reference top-k, evaluation) with its estimated seconds on this machine and on a GPU, its anonymous memory and
its disk, then the totals for the planned seeds. The totals are what the command would do now: fits already recorded
in the output folder are resumed, not run again, and a stage whose result is cached (the faiss init per layout and
seed, the teacher's top-K per dataset, the exact reference per run) is counted once, not once per fit.

The model is operation counts over rates measured now (:class:`Rates`), nothing fitted, each on all cores: float work
in large matrix products (IVF k-means and assignment, the OPQ rotation, exact top-k) at the sgemm rate; sub-quantizer
k-means (PQ training, OPQ's alternations: products of d/M-dim sub-vectors, about half the sgemm rate here) at a faiss
k-means rate on 16-d points; PQ encoding (faiss's ``compute_codes``: a distance table per vector, ~10x below sgemm
here) at its own rate, at 16-d sub-vectors (768-d, M = 48: the slowest case; wider sub-vectors encode faster); PQ code
scans (JPQ's and InfoNCE's negative pools, evaluation) at faiss's PQ scan rate (bytes of codes per second, 1 thread,
times the cores; the timing protocol's single-query searches at the 1-thread rate); the ivf teacher's 8-bit
scalar-quantized lists at faiss's SQ8 scan rate (d bytes per doc; on 1 loaded thread here ~4.4 GB/s, i.e. at
nprobe = nlist/16 about 3x less time per doc than the exact sgemm scan, which the PQ scan rate would have hidden).
On a GPU, float work at :data:`GPU_FLOPS` (an H100's fp32 matrix rate, half of its peak; the reference when no GPU is
visible), sub-quantizer work at :data:`GPU_PQ_FLOPS` and code scans at :data:`GPU_SCAN` bytes/s; the ivf teacher
searches faiss's CPU index there too. Without the two sub-quantizer rates
(everything at the sgemm rate) the faiss init of the 1M x 768 case (OPQ48,IVF4096,PQ48x8) was estimated 2.6x below its
measured 270 s (reports/scale/NOTES.md). Text encodes use the encoder catalog's ``texts_per_second`` (measured on this
project's machines). It is an estimate: ``bench/scale.py`` measures, and prints this estimate of its own shape beside
every measured stage.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

GPU_FLOPS = 25e12        # fp32 matrix products on one H100, half of its peak
GPU_SCAN = 200e9         # bytes of PQ codes scanned per second on a GPU (ADC lookups)
GPU_PQ_FLOPS = GPU_FLOPS / 8   # sub-quantizer k-means and encoding on a GPU: small products (assumed, not measured)
# a training step's fixed cost (Python, small kernels) beside its counted work (the candidates' scores, the PQ lookup
# tables, the IVF score table, the optimiser's updates): distill-vq-flat's 64-query steps on debian-desc took 5.5 ms
# (2 cores, committed records), ~1.5 ms of it counted work
STEP_SECONDS = 0.004
GPU_STEP_SECONDS = 0.004
GPU_UPDATES = 5e10       # trainable parameters updated per second by Adam(W) on a GPU (assumed: memory-bound)
# a step scores each query against every IVF centroid (benchmark.vq.torch_vq.TorchVQ.scores, Distill-VQ's IVF term):
# JPQ ranks its pool with it, scores the candidates with it and back-propagates into the centroids (3 passes),
# Distill-VQ scores twice with gradients (4): counted as 4 passes of (queries x nlist x d) products
IVF_TABLE_PASSES = 4
KMEANS_ITERS = 25        # faiss's default k-means iterations
IVF_KMEANS_ITERS = 10    # faiss IndexIVF's coarse k-means iterations
# the ivf teacher's nprobe is calibrated on the data (benchmark.vq.mining): its cost is estimated at nlist / this
TEACHER_ASSUMED_SHARE = 16
RUN_DEPTH = 1000         # depth of the evaluated run (SearchSettings.k)
GiB = 1024 ** 3


@dataclass
class Facts:
    """A dataset's sizes, known without loading its vectors."""

    docs: int
    dim: int
    train_queries: int
    eval_queries: int
    texts: bool          # its vectors are encoded from texts (unless cached)
    encoder: str | None
    source: str
    split: str = "test"  # the split evaluated (what a record's fit id names)


@dataclass
class Machine:
    cores: int
    ram: float           # bytes
    disk_free: float     # bytes, where the caches live
    flops: float         # measured sgemm rate, all cores
    scan: float          # measured PQ code bytes scanned per second, all cores
    gpu: str
    pq_train: float      # measured faiss k-means rate on 16-d points (flop/s as fit_stages counts), all cores
    pq_encode: float     # measured faiss PQ encoding rate at 16-d sub-vectors (flop/s as counted), all cores
    sq8_scan: float      # measured bytes of 8-bit scalar-quantized vectors scanned per second, all cores
    updates: float       # measured trainable parameters updated per second by torch's AdamW (one thread)

    def rates(self) -> "Rates":
        return Rates(self.flops, self.scan, self.pq_train, self.pq_encode, self.scan / self.cores, self.sq8_scan,
                     self.updates)


class Rates(NamedTuple):
    """What a :class:`Stage`'s work is divided by: flop/s of large products, code bytes/s scanned on all cores,
    flop/s of sub-quantizer k-means and of PQ encoding, code bytes/s scanned by one thread (single-query timing),
    bytes/s of 8-bit scalar-quantized vectors scanned on all cores (the ivf teacher's lists), trainable parameters
    updated per second by the optimiser (a training step's AdamW over every trained tensor)."""

    flops: float
    scan: float
    pq_train: float
    pq_encode: float
    scan_single: float
    sq8_scan: float
    updates: float


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def _qrels_queries(path: Path) -> int:
    """How many queries ``path`` judges (0 when the split has no file), read by the loaders' own qrels parser."""
    from benchmark.data.npy import read_qrels
    return len(read_qrels(path)) if path.is_file() else 0


def dataset_facts(loader: str, options: dict[str, Any]) -> Facts:
    """The sizes of dataset ``loader`` (with its options), read from headers, line counts or the catalog."""
    from benchmark.data.catalog import load_catalog
    from benchmark.data.encoders import encoder_info
    from benchmark.data.synthetic import OPTIONS, SYNTHETIC_PRESETS

    dev = int(options.get("dev_queries") or 0)
    prefix, _, rest = loader.partition(":")
    if prefix == "npy":
        from benchmark.data.npy import _find_qrels_dir
        folder = Path(rest)
        docs, dim = np.load(folder / "corpus.npy", mmap_mode="r").shape
        split = options.get("split") or "test"
        qrels = _find_qrels_dir(folder, options.get("qrels_dir"))
        train = _qrels_queries(qrels / "train.tsv")
        evaluated = dev or _qrels_queries(qrels / f"{split}.tsv")
        return Facts(docs, dim, train - dev, evaluated, False, options.get("encoder"), "npy headers, qrels",
                     "dev" if dev else split)
    if loader.startswith("synthetic"):
        values = {k: p.default for k, p in OPTIONS.items()}
        values.update(SYNTHETIC_PRESETS.get(rest or "default", {}))
        values.update({k: v for k, v in options.items() if k in values})
        return Facts(values["num_docs"], values["dim"], values["num_train"] + values["num_unlabeled"] - dev,
                     dev or values["num_test"], False, None, "generator options", "dev" if dev else "test")
    model = options.get("model") or "minilm"
    dim = encoder_info(model).get("dim") or 768
    if prefix == "beir" and rest:
        folder = Path(rest)
        split = options.get("split") or "test"
        return Facts(_count_lines(folder / "corpus.jsonl"), dim, _qrels_queries(folder / "qrels" / "train.tsv") - dev,
                     dev or _qrels_queries(folder / "qrels" / f"{split}.tsv"), True, model, "line counts",
                     "dev" if dev else split)
    name = loader.split("/", 1)[1] if "/" in loader else loader
    entry = load_catalog().get(name, {})
    return Facts(int(entry.get("num_docs", 0)), dim, int(entry.get("num_train_queries", 0)) - dev,
                 dev or int(entry.get("num_queries", 0)), True, model, "BEIR catalog",
                 "dev" if dev else options.get("split") or entry.get("eval_split", "test"))


def measure_machine(cache: Path) -> Machine:
    """Cores, RAM and free disk, and the rates of :class:`Rates` measured now (about a second): sgemm, faiss's PQ
    scan, its 8-bit scalar-quantizer scan, its sub-quantizer k-means and PQ encoding."""
    import faiss
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    probe = cache if cache.exists() else Path(".")
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    flops = 3 * 2 * 1024 ** 3 / (time.perf_counter() - t0)
    pq = faiss.IndexPQ(64, 16, 8, faiss.METRIC_INNER_PRODUCT)
    x = np.random.default_rng(1).standard_normal((20000, 64)).astype(np.float32)
    pq.train(x[:10000])
    pq.add(np.tile(x, (10, 1)))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    pq.search(x[:8], 10)
    scan = 8 * pq.ntotal * 16 / (time.perf_counter() - t0) * cores
    sq = faiss.IndexScalarQuantizer(256, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    y = np.random.default_rng(3).standard_normal((40000, 256)).astype(np.float32)
    sq.train(y[:10000])
    sq.add(y)
    sq.search(y[:2], 50)
    t0 = time.perf_counter()
    sq.search(y[:8], 50)
    sq8_scan = 8 * sq.ntotal * 256 / (time.perf_counter() - t0) * cores
    faiss.omp_set_num_threads(before)
    pq_train, pq_encode = _subquantizer_rates()
    updates = _update_rate()
    import torch     # a dependency: _update_rate above already needs it
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    return Machine(cores, ram, float(shutil.disk_usage(probe).free), flops, scan, gpu, pq_train, pq_encode,
                   sq8_scan, updates)


def _update_rate(n: int = 1 << 23, steps: int = 3) -> float:
    """Parameters per second that torch's AdamW updates (one tensor of ``n``, gradients given), on one thread, the
    best of three: a training step's optimiser work, memory-bound elementwise passes. Its state (4 x 32 MiB) outgrows
    the L3 cache, as a step's does once the step's other work has run (4M parameters fit: 2.5x faster here), and one
    thread, as more did not speed it up here (profiled at MS MARCO's IVF10000 x 768 centroids: ~29 ms of a 69 ms
    jpq-ivf step on 1 thread; the whole step took 59 ms on 2 idle threads). About 0.5 s."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.ones(n)
        opt = torch.optim.AdamW([p], lr=1e-3)
        opt.step()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return n * steps / best


def _subquantizer_rates(n: int = 65536, dsub: int = 16, m: int = 16) -> tuple[float, float]:
    """faiss's k-means of ``n`` ``dsub``-dim points into 256 centroids (4 iterations) and its PQ encoding of ``n``
    / 4 vectors of ``m`` x ``dsub`` dims, as flop/s counted the way :func:`fit_stages` counts them (points x 256 x
    dims x 2 per iteration / per encoding), all cores. About half a second on an idle 2-core machine."""
    import faiss
    rng = np.random.default_rng(2)
    points = rng.standard_normal((n, dsub)).astype(np.float32)
    km = faiss.Kmeans(dsub, 256, niter=4, seed=1, min_points_per_centroid=1)
    t0 = time.perf_counter()
    km.train(points)
    train = n * 256 * dsub * 2 * 4 / (time.perf_counter() - t0)
    pq = faiss.ProductQuantizer(m * dsub, m, 8)
    faiss.copy_array_to_vector(rng.standard_normal(256 * m * dsub).astype(np.float32), pq.centroids)
    x = rng.standard_normal((n // 4, m * dsub)).astype(np.float32)
    pq.compute_codes(x[:256])
    t0 = time.perf_counter()
    pq.compute_codes(x)
    encode = len(x) * 256 * m * dsub * 2 / (time.perf_counter() - t0)
    return train, encode


@dataclass
class Stage:
    name: str
    flops: float = 0.0      # float work
    scan: float = 0.0       # bytes of PQ codes scanned
    ram: float = 0.0        # anonymous bytes held at this stage's peak
    disk: float = 0.0       # bytes written to disk (caches, indexes)
    steps: float = 0.0      # training steps (each with a fixed cost)
    updates: float = 0.0    # trainable parameters updated, summed over the steps (the optimiser's work)
    pq_train: float = 0.0   # float work in sub-quantizer k-means (PQ training, OPQ's alternations)
    pq_encode: float = 0.0  # float work in PQ encoding (faiss's compute_codes)
    scan_single: float = 0.0  # bytes of codes scanned by single-query searches on 1 thread (the timing protocol)
    sq8_scan: float = 0.0   # bytes of 8-bit scalar-quantized vectors scanned (the ivf teacher's search)
    cached: str = ""        # "": every fit does it; "seed": once per seed and key; "once": once per key (a dataset's)
    key: str = ""           # what the cache is keyed on besides the dataset (and the seed)

    def seconds(self, rates: Rates, step_seconds: float) -> float:
        return (self.flops / rates.flops + self.scan / rates.scan + self.pq_train / rates.pq_train
                + self.pq_encode / rates.pq_encode + self.scan_single / rates.scan_single
                + self.sq8_scan / rates.sq8_scan + self.updates / rates.updates + self.steps * step_seconds)


def fit_stages(method: Any, f: Facts, sweep: list[int], save_index: bool = False,
               teacher: dict | None = None) -> list[Stage]:
    """The stages of one fit of ``method`` (a built method) on ``f`` evaluated at the nprobes ``sweep`` (ignored
    without IVF), as operation counts and bytes."""
    from benchmark.harness import SearchSettings
    from benchmark.vq.faiss_init import OPQ_TRAIN_POINTS
    from benchmark.vq.mining import TEACHER_CALIBRATION, TEACHER_CHECK, TEACHER_POINTS_PER_LIST, teacher_nlist
    cfg = method.config
    n, d, q, e = f.docs, f.dim, max(f.train_queries, 0), f.eval_queries
    m = int(cfg.get("M") or 0)
    nlist = int(cfg.get("nlist") or 0) if "nlist" in cfg else 0
    sample = min(n, int(cfg.get("max_train_points") or n))
    code = m if m else 4 * d
    stages = []
    factory = method.factory() if hasattr(method, "factory") else ""
    if m:
        opq = int(cfg.get("opq_niter") or 20) if "OPQ" in factory else 0
        opq_n = min(sample, int(cfg.get("opq_train_points") or OPQ_TRAIN_POINTS))
        pq_n = min(sample, OPQ_TRAIN_POINTS)          # faiss caps PQ training at 256 points per centroid
        # OPQ: per alternation a rotation (two d x d products), 4 PQ k-means iterations (its first PQ gets 40) and an
        # encoding of its sample
        per_pass = opq_n * 256 * d * 2
        opq_kmeans = opq * per_pass * 4 + (per_pass * 36 if opq else 0)
        if cfg.get("coarse") == "two-level":          # sqrt(nlist) clusters, then each point meets ~sqrt(nlist)
            root = math.sqrt(nlist)
            lists = min(sample, 2000 * root) * root * IVF_KMEANS_ITERS + sample * root * KMEANS_ITERS
        else:
            lists = sample * nlist * IVF_KMEANS_ITERS
        big = (opq * opq_n * d * d * 4 + lists * d * 2 + sample * nlist * d * 2 * bool(nlist)   # + the sample's lists
               + n * nlist * d * 2 + n * d * d * 2 * bool(opq))     # + assigning (and rotating) every doc
        encode = opq * per_pass + n * 256 * d * 2     # OPQ's sample each pass, every doc
        # pq_assign = "flat-index" encodes with the IndexFlatL2 search that faiss's k-means assigns with: its rate
        flat = cfg.get("pq_assign") == "flat-index"
        stages.append(Stage(f"faiss init ({factory or 'k-means'})", flops=big, ram=sample * d * 4 * 2,
                            pq_train=opq_kmeans + pq_n * 256 * d * 2 * KMEANS_ITERS + encode * flat,
                            pq_encode=encode * (not flat), cached="seed",   # benchmark.vq.faiss_init's cache key
                            key=f"init|{factory}|{sample}|{opq}|{opq_n}|{cfg.get('pq_assign')}|{cfg.get('coarse')}"))
    candidates = str(cfg.get("candidates", ""))
    epochs = float(cfg.get("epochs") or 0)
    if "topk" in candidates.split("+"):
        k = int(cfg.get("topk") or 50)
        kind = (teacher or {}).get("kind", "exact")
        if kind == "ivf":
            tl = teacher_nlist(n, (teacher or {}).get("nlist", 0))
            tp = min(tl, int((teacher or {}).get("nprobe", 0) or max(1, tl // TEACHER_ASSUMED_SHARE)))
            points = min(n, TEACHER_POINTS_PER_LIST * tl)
            check = min(TEACHER_CHECK, q // 2) + min(TEACHER_CALIBRATION, q - q // 2)
            flops = (n * tl * d * 2 + points * 2 * math.sqrt(tl) * d * 2 * KMEANS_ITERS   # assignment, 2-level k-means
                     + check * n * d * 2 + q * tl * d * 2)          # exact top-K of the check samples, coarse search
            how = "given" if (teacher or {}).get("nprobe") else f"calibrated; assumed nlist/{TEACHER_ASSUMED_SHARE}"
            stages.append(Stage(f"teacher top-{k} (IVF{tl},SQ8, nprobe {tp}: {how})", flops=flops,
                                sq8_scan=q * tp / tl * n * d, ram=n * d + q * k * 8, disk=n * d + q * k * 8,
                                cached="seed"))
        else:   # benchmark.vq.mining's top-K cache: the docs, the queries (a seeded label fraction's) and K
            stages.append(Stage(f"teacher top-{k} (exact)", flops=q * n * d * 2.0, ram=q * k * 8, disk=q * k * 8,
                                cached="once" if float(cfg.get("label_fraction") or 1.0) >= 1.0 else "seed",
                                key=f"teacher|{method.name}|{k}|{cfg.get('label_fraction')}"))
    negatives = cfg.get("negatives")
    if negatives is not None or "hard_k" in cfg:
        pool = int(cfg.get("pool_size") or cfg.get("hard_k") or 200)
        probe = cfg.get("mine_nprobe")
        share = min(1.0, probe / nlist) if probe and nlist and negatives != "dynamic" else 1.0
        scans = q * n * code * share * (epochs if negatives == "dynamic" else 1.0)
        what = f"{probe} of {nlist} lists probed" if share < 1.0 else "PQ scans of every doc"
        refresh = int(cfg.get("pool_refresh") or 0) if negatives == "pool" else 0
        kind = f"pool re-mined every {refresh} steps" if refresh else negatives or "init index"
        # a re-mined pool: each query once per epoch, from the current index (one index build per block: small)
        scans *= epochs if refresh else 1.0
        stages.append(Stage(f"negatives ({kind}: {what})", scan=scans, ram=q * pool * 4))
    if epochs:
        batch = int(cfg.get("batch_size") or 32)
        steps = math.ceil(epochs * q / batch)
        candidates = int(cfg.get("topk") or cfg.get("top_k") or 0) + batch + 2 + int(cfg.get("hard_negatives") or 0)
        trains_lists = bool(nlist) and cfg.get("train_ivf", True) is not False
        trains_codebooks = bool(m) and cfg.get("train_pq", True) is not False
        adapter = bool(cfg.get("query_adapter"))
        # per query: its candidates' scores and their gradients, the PQ lookup tables (256 codewords x d), the IVF
        # score table (every centroid), the query adapter (d x d); per step: Adam(W) over the trained tensors
        per_query = (candidates * d * 2 * 3 + (256 * d * 2 * 3 if m else 0)
                     + nlist * d * 2 * IVF_TABLE_PASSES * bool(nlist) + d * d * 2 * 3 * adapter)
        trained = 256 * d * trains_codebooks + nlist * d * trains_lists + d * d * adapter
        stages.append(Stage(f"training ({epochs:g} epochs, {steps:,} steps)", flops=epochs * q * per_query,
                            steps=steps, updates=steps * trained, ram=n * (code + 8)))
    mode = method.writeback_mode()      # codes: written as trained; preassigned: encoded into the trained lists
    rotate_assign = {"codes": 0, "preassigned": d * d * 2, "reencode": d * d * 2 + nlist * d * 2}
    stages.append(Stage(f"index build ({'the trained codes' if mode == 'codes' else 'encode every doc'})",
                        flops=n * rotate_assign.get(mode, rotate_assign["reencode"]), ram=n * (code + 8),
                        pq_encode=0 if mode == "codes" else n * 256 * d * 2,
                        disk=n * (code + 8) if save_index else 0))
    stages.append(Stage(f"exact reference top-{RUN_DEPTH} ({e:,} queries)", flops=e * n * d * 2.0,
                        ram=e * RUN_DEPTH * 8, cached="once"))   # the runner's ExactReference: once per run
    # each operating point: the evaluated run (all queries, k = RUN_DEPTH), then the timing protocol's repetitions,
    # each a batch search of all queries and latency_queries single-query searches on 1 thread (after a warm-up)
    timing = SearchSettings()
    shares = [p / nlist for p in sweep] if nlist else [1.0]   # the share of the codes each operating point scans
    docs_scanned = n * sum(shares)
    batch = e * (1 + timing.timing_repeats) * docs_scanned
    single = (timing.warmup_queries + timing.timing_repeats * min(e, timing.latency_queries)) * docs_scanned
    stages.append(Stage(f"evaluation ({len(shares)} operating point(s), timed)", scan=batch * code if m else 0.0,
                        scan_single=single * code if m else 0.0, flops=0.0 if m else (batch + single) * d * 2,
                        ram=e * RUN_DEPTH * 16))
    return stages


def _fmt_s(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    return f"{seconds:,.0f} s" if seconds < 3600 else f"{seconds / 3600:,.1f} h"


def _fmt_b(size: float) -> str:
    return f"{size / GiB:,.2f} GiB" if size >= 0.1 * GiB else f"{size / 1024 ** 2:,.0f} MiB"


def dry_run(plan: Any, out: Path, save_index: bool = False) -> str:
    """The plan and its estimate, as text (see module doc)."""
    from benchmark.data.encode import cache_root
    from benchmark.data.encoders import get_encoder
    from benchmark.harness import nprobe_sweep
    from benchmark.registry import make_method
    from benchmark.runner import Runner, job_fit_id

    recorded = Runner(out, settings=plan.settings(), datasets=plan.datasets).complete_fits() if out.is_dir() else set()
    machine = measure_machine(cache_root())
    load = os.getloadavg()[0]
    busy = (f" (at a 1-min load average of {load:.1f} on {machine.cores} cores: an idle machine is faster)"
            if load > 0.5 * machine.cores else "")
    lines = ["dry run: {n} fit(s) into {out}{done}; nothing is loaded, trained or written",
             f"this machine: {machine.cores} cores, {_fmt_b(machine.ram)} RAM, {_fmt_b(machine.disk_free)} free "
             f"for the caches; measured now{busy}: sgemm {machine.flops / 1e9:,.0f} GFLOP/s, PQ scan "
             f"{machine.scan / 1e9:,.1f} GB/s, sub-quantizer k-means {machine.pq_train / 1e9:,.0f} and PQ encoding "
             f"{machine.pq_encode / 1e9:,.1f} GFLOP/s, optimiser {machine.updates / 1e6:,.0f}M parameter updates/s; "
             f"GPU: {machine.gpu} (the GPU column assumes one H100: "
             f"{GPU_FLOPS / 1e12:g} TFLOP/s fp32 matrix work, {GPU_PQ_FLOPS / 1e12:g} sub-quantizer work, "
             f"{GPU_SCAN / 1e9:g} GB/s code scans, {GPU_UPDATES / 1e9:g}G parameter updates/s)"]
    here = machine.rates()   # on a GPU machine the evaluation and its timing still run on faiss's CPU index
    # the ivf teacher searches faiss's CPU index on a GPU machine too (an exact teacher is what runs on the GPU)
    gpu_rates = Rates(GPU_FLOPS, GPU_SCAN, GPU_PQ_FLOPS, GPU_PQ_FLOPS, here.scan_single, here.sq8_scan, GPU_UPDATES)
    totals = {"cpu": 0.0, "gpu": 0.0, "disk": 0.0, "ram": 0.0}
    done_fits, seen = 0, set()   # recorded fits; the cached stages already counted, by (dataset, key, seed)
    for alias, (loader, options) in plan.datasets.items():
        f = dataset_facts(loader, options)
        jobs = [j for j in plan.jobs if j.dataset == alias]
        lines += ["", f"dataset {alias} ({loader}; sizes from {f.source}): {f.docs:,} docs x {f.dim}-d, "
                      f"{f.train_queries:,} train queries, {f.eval_queries:,} evaluated queries; "
                      f"corpus float32 {_fmt_b(f.docs * f.dim * 4.0)} (memory-mapped: file pages, not anonymous)"]
        if f.texts:
            rate = float(get_encoder(f.encoder).get("texts_per_second", 10.0)) if f.encoder else 10.0
            texts = f.docs + f.train_queries + f.eval_queries
            enc = texts / rate
            lines.append(f"  encode {texts:,} texts with {f.encoder} (unless cached): {_fmt_s(enc)} on this machine "
                         f"(~{rate:g} texts/s, the catalog's measurement), {_fmt_s(texts / (rate * 40))} on a GPU; "
                         f"cache {_fmt_b(texts * f.dim * 4.0)}")
            totals["cpu"] += enc
            totals["gpu"] += texts / (rate * 40)
            totals["disk"] += texts * f.dim * 4.0
        groups: dict[str, list] = {}
        shown: set[str] = set()
        for job in jobs:
            groups.setdefault(job.label().split(" ", 1)[1].rsplit(" seed=", 1)[0], []).append(job)
        for label, group in groups.items():
            method = make_method(group[0].method, group[0].params)
            nlist = int(method.config.get("nlist") or 0)
            sweep = nprobe_sweep(nlist, plan.search.get("nprobes")) if nlist else []
            stages = fit_stages(method, f, sweep, save_index, options.get("teacher") and {
                "kind": options.get("teacher"), "nlist": options.get("teacher_nlist", 0),
                "nprobe": options.get("teacher_nprobe", 0)})
            todo = [j for j in group if job_fit_id(j, f.split, method) not in recorded]
            done_fits += len(group) - len(todo)
            cpu = sum(s.seconds(here, STEP_SECONDS) for s in stages)
            gpu = sum(s.seconds(gpu_rates, GPU_STEP_SECONDS) for s in stages)
            ram = max(s.ram for s in stages)
            disk = sum(s.disk for s in stages)
            for job in todo:     # a cached stage once per cache key, every other stage once per fit
                for st in stages:
                    key = (alias, st.key or st.name, job.seed if st.cached == "seed" else None)
                    if st.cached and key in seen:
                        continue
                    seen.add(key)
                    totals["cpu"] += st.seconds(here, STEP_SECONDS)
                    totals["gpu"] += st.seconds(gpu_rates, GPU_STEP_SECONDS)
                    totals["disk"] += st.disk
            left = f", {len(todo)} to run" if len(todo) < len(group) else ""
            lines.append(f"  {label} x {len(group)} seed(s){left}: {_fmt_s(cpu)} per fit here, {_fmt_s(gpu)} on a GPU "
                         f"(cached stages included); peak anonymous memory ~{_fmt_b(ram)}; disk {_fmt_b(disk)}")
            if todo:
                totals["ram"] = max(totals["ram"], ram)
            if group[0].method in shown:   # each method's stages once per dataset; its other variants in one line
                continue
            shown.add(group[0].method)
            for st in stages:
                once = {"seed": "  (cached: once per seed)", "once": "  (cached: once per dataset)"}.get(st.cached, "")
                lines.append(f"    {st.name:<58} {_fmt_s(st.seconds(here, STEP_SECONDS)):>10} here "
                             f"{_fmt_s(st.seconds(gpu_rates, GPU_STEP_SECONDS)):>10} GPU  RAM {_fmt_b(st.ram):>10}"
                             f"{once}")
    lines[0] = lines[0].format(n=len(plan.jobs), out=out, done=f" ({done_fits} recorded there: resumed, not run "
                               f"again; the totals count the rest)" if done_fits else "")
    warn = []
    if totals["ram"] > 0.8 * machine.ram:
        warn.append(f"peak anonymous memory {_fmt_b(totals['ram'])} is over 80% of this machine's RAM")
    if totals["disk"] > machine.disk_free:
        warn.append(f"needs {_fmt_b(totals['disk'])} of disk, {_fmt_b(machine.disk_free)} is free")
    lines += ["", f"total: {_fmt_s(totals['cpu'])} on this machine, {_fmt_s(totals['gpu'])} on a GPU; peak anonymous "
                  f"memory ~{_fmt_b(totals['ram'])}; disk ~{_fmt_b(totals['disk'])}"]
    lines += [f"warning: {w}" for w in warn]
    return "\n".join(lines)

