"""The shared training core of learned objectives (JPQ, Distill-VQ, InfoNCE, ...).

A method supplies its trainable parts — a :class:`~benchmark.vq.torch_vq.TorchVQ` and the learning rate of each of
its tensors that trains (``{"codebooks": 1e-3, "centroids": 1e-3}``) — and a per-batch loss function of a
:class:`Step`. :class:`Trainer` owns the rest: seeding (torch, numpy, and a torch and a numpy generator for the
method's own draws), device placement, one optimiser group per tensor (AdamW / Adam / SGD), the warm-up + decay
schedule, batching (a seeded permutation of the training items per epoch), deterministic kernels, the progress
bar, timing, write-back (:meth:`Trainer.to_params`) and ``info``: steps, epochs, seconds (wall and CPU), first and
final loss, each group's lr and relative drift ``||after - before|| / ||before||``, torch threads, and the tail mean
of any extra per-step metric the loss function returns.

Also here, written once for every learned method: the qrels -> doc-row mapping (:func:`positives`) and the typed
param declarations they share.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.params import Param, Space
from benchmark.vq.params import WRITEBACK_MODES, VQParams
from benchmark.vq.torch_vq import TorchVQ, torch_device

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
SCHEDULES = ("linear", "cosine", "constant")
SHUFFLES = ("numpy", "torch")
TAIL = 10  # the last 1/TAIL of the steps (at least one) is averaged into the final loss and extra metrics

# The tuner's search spaces of the knobs every learned objective shares (benchmark.tune): one declaration, so every
# method is searched over the same ranges. Rates and temperatures on a log scale; epochs and batch sizes as choices.
LR_SPACE = Space(1e-4, 1e-2, log=True)
TEMPERATURE_SPACE = Space(0.01, 0.2, log=True)
EPOCHS_SPACE = Space(choices=(1.0, 2.0, 4.0))
BATCH_SPACE = Space(choices=(32, 64, 128, 256))
SWITCH_SPACE = Space(choices=(False, True))

M_PARAM = Param(16, "PQ sub-vectors = bytes per vector at 8 bits; must divide the embedding dim", min=1)
NLIST_PARAM = Param(256, "IVF lists", min=1)
MINE_NPROBE_PARAM = Param(None, "IVF lists probed when mining negatives from the init index; None = every list "
                          "(exhaustive: per query a scan of the whole corpus's codes). Fewer lists bound the cost at "
                          "scale (issue #29); IVF layouts only", dtype=int, min=1, special=(None,), legacy=(None,))
WRITEBACK_PARAM = Param("codes", "how the index stores docs (benchmark.vq.build_index)", choices=WRITEBACK_MODES)


def train_params(*, epochs: float = 1.0, batch_size: int = 32, warmup: float = 0.1, schedule: str = "linear",
                 optimizer: str = "adamw", warmup_key: str = "warmup") -> dict[str, Param]:
    """The loop's knobs, declared once for every learned objective (the same names, types, ranges and search spaces;
    a method only picks its defaults): epochs, batch size, warm-up (a share of the steps, or ``warmup_steps``),
    schedule, optimiser and weight decay. ``warmup_key``: the name an older method's records use for the warm-up
    share (JPQ's ``warmup_ratio``). ``warmup_steps`` and ``weight_decay`` came later: at their legacy values (None,
    0.0) they are left out of records, so earlier fits keep their ids. Read back with :func:`train_spec`."""
    return {
        "epochs": Param(epochs, "passes over the training queries", min=0, min_exclusive=True, search=EPOCHS_SPACE),
        "batch_size": Param(batch_size, "queries per step", min=1, search=BATCH_SPACE),
        warmup_key: Param(warmup, "share of the steps with a linear lr warm-up", min=0, max=1),
        "warmup_steps": Param(None, "warm-up steps (overrides the share); None = the share", dtype=int, min=0,
                              special=(None,), legacy=(None,)),
        "schedule": Param(schedule, "lr after the warm-up: linear or cosine decay to 0, or constant",
                          choices=SCHEDULES),
        "optimizer": Param(optimizer, "optimiser of every trained tensor", choices=tuple(OPTIMIZERS)),
        "weight_decay": Param(0.0, "weight decay (decoupled for adamw, L2 otherwise)", min=0, legacy=(0.0,)),
    }


def query_side_params(*, adapter: bool = False, lr: float = 1e-3, legacy: bool = False, lr_key: str = "lr_adapter",
                      lr_param: Param | None = None) -> dict[str, Param]:
    """The query side, declared once for every learned objective: none, or the linear adapter — a d x d query map
    (identity init) trained with the codebooks (:class:`~benchmark.vq.torch_vq.TorchVQ` ``query_adapter``; written
    back as ``VQParams.query_map`` and folded into the deployed index, :func:`benchmark.vq.fold_query_map`), with its
    own learning rate. Same
    names, types and search spaces everywhere; a method picks its defaults. ``legacy``: both params came after the
    method's records (left out of them at their defaults). ``lr_key`` / ``lr_param``: JPQ's older name
    (``adapter_lr``) and its declaration with the 'reference' rate."""
    return {
        "query_adapter": Param(adapter, "query side: False = none, True = also train a d x d query map (identity "
                               "init)", search=SWITCH_SPACE, legacy=(adapter,) if legacy else ()),
        lr_key: lr_param or Param(lr, "learning rate of the query adapter", min=0, min_exclusive=True,
                                  search=LR_SPACE, legacy=(lr,) if legacy else ()),
    }


def mine_nprobe_problems(cfg: dict[str, Any], ivf: bool, mines: bool) -> list[str]:
    """The checks of :data:`MINE_NPROBE_PARAM`: an IVF layout, a mining step that uses it (``mines``), at most
    ``nlist``."""
    nprobe = cfg.get("mine_nprobe")
    if nprobe is None:
        return []
    if not ivf:
        return [f"mine_nprobe={nprobe} needs an IVF layout (the -ivf variant); the flat layout has no lists to probe"]
    if not mines:
        return [f"mine_nprobe={nprobe} has nothing to mine (no negatives are mined from the init index)"]
    if nprobe > cfg["nlist"]:
        return [f"mine_nprobe must be <= nlist ({cfg['nlist']}), got {nprobe}"]
    return []


def train_spec(cfg: dict[str, Any], warmup_key: str = "warmup", **extra: Any) -> TrainSpec:
    """The :class:`TrainSpec` of a method's config declared with :func:`train_params`."""
    return TrainSpec(cfg["epochs"], cfg["batch_size"], warmup=cfg[warmup_key], schedule=cfg["schedule"],
                     optimizer=cfg["optimizer"], warmup_steps=cfg["warmup_steps"],
                     weight_decay=cfg["weight_decay"], **extra)


def with_search(params: dict[str, Param], **spaces: Space) -> dict[str, Param]:
    """``params`` with some search spaces set (a preset tunes a param its base keeps fixed)."""
    return {**params, **{key: replace(params[key], search=space) for key, space in spaces.items()}}


def with_defaults(params: dict[str, Param], **defaults: Any) -> dict[str, Param]:
    """``params`` with some defaults changed (a preset of a method), each still validated by its declaration."""
    for key, value in defaults.items():
        params[key].validate(value, key)
    return {**params, **{key: replace(params[key], default=value) for key, value in defaults.items()}}


@dataclass(frozen=True)
class TrainSpec:
    """How the loop runs. ``warmup``: the share of steps with a linear lr warm-up (rounded), unless
    ``warmup_steps`` gives the count. ``shuffle``: which seeded generator draws the per-epoch permutations (the
    torch one keeps JPQ's recorded numbers; both are seeded from the same seed)."""

    epochs: float = 1.0
    batch_size: int = 32
    warmup: float = 0.1
    schedule: str = "linear"
    optimizer: str = "adamw"
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    shuffle: str = "numpy"

    def __post_init__(self) -> None:
        for key, valid in (("schedule", SCHEDULES), ("optimizer", tuple(OPTIMIZERS)), ("shuffle", SHUFFLES)):
            if getattr(self, key) not in valid:
                raise ValueError(f"TrainSpec.{key} must be one of {valid}, got {getattr(self, key)!r}")
        if self.epochs <= 0 or self.batch_size < 1 or not 0 <= self.warmup <= 1:
            raise ValueError(f"TrainSpec: epochs must be > 0, batch_size >= 1 and warmup in [0, 1], got {self}")


@dataclass
class Step:
    """One training step as the loss function sees it: the batch's item rows (int64, into the method's training
    items), the step index, and the trainer's seeded generators (for the method's own draws) and device."""

    rows: np.ndarray
    index: int
    rng: np.random.Generator
    gen: torch.Generator
    device: torch.device


LossFn = Callable[[Step], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
BeforeStep = Callable[[Step, "list[np.ndarray]"], None]


def num_steps(num_items: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(num_items * epochs / batch_size))


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The lr multiplier at ``step``: linear warm-up to 1 over ``warmup`` steps, then ``schedule`` until ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, (total - step) / max(1, total - warmup))


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally and return a torch generator for sampling."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic torch kernels inside (the backward of the codeword/centroid gathers otherwise accumulates with
    atomics in thread order, so a seed would not fix the result); the previous setting is restored on exit."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextmanager
def timed(info: dict[str, Any], stage: str) -> Iterator[None]:
    """Record the wall seconds of the block as ``info[f"{stage}_seconds"]`` (e.g. a method's mining stage)."""
    t0 = time.perf_counter()
    yield
    info[f"{stage}_seconds"] = time.perf_counter() - t0


class Trainer:
    """Trains the tensors of ``vq`` named in ``lrs`` (its parameter names: ``codebooks``, ``centroids``,
    ``query_map``) with ``loss_fn`` (see the module doc); every other tensor of ``vq`` is frozen.

    Construction seeds everything from ``seed`` and moves ``vq`` to ``device``: build the loss function's data on
    :attr:`device` after it. :meth:`fit` runs the loop; :meth:`to_params` writes the trained tensors back.
    """

    def __init__(self, vq: TorchVQ, lrs: dict[str, float], spec: TrainSpec, seed: int, device: str,
                 desc: str) -> None:
        named = dict(vq.named_parameters())
        unknown = sorted(set(lrs) - set(named))
        if unknown or not lrs:
            raise ValueError(f"{desc}: trainable tensors must be some of {sorted(named)}, got {sorted(lrs)}")
        bad = {k: v for k, v in lrs.items() if not v > 0}
        if bad:
            raise ValueError(f"{desc}: learning rates must be > 0, got {bad}")
        self.spec, self.desc = spec, desc
        self.gen = seed_everything(seed)
        self.rng = np.random.default_rng(seed)
        self.device = torch_device(device)
        self.vq = vq.to(self.device)
        for name, p in named.items():
            p.requires_grad_(name in lrs)
        self.lrs = {name: float(lr) for name, lr in lrs.items()}
        self.info: dict[str, Any] = {}

    def batches(self, num_items: int, steps: int) -> list[np.ndarray]:
        """``steps`` batches of item rows: consecutive slices of seeded permutations, one per epoch, all drawn
        before the first step."""
        bs = self.spec.batch_size
        if self.spec.shuffle == "torch":
            def perm() -> np.ndarray:
                return torch.randperm(num_items, generator=self.gen).numpy()
        else:
            def perm() -> np.ndarray:
                return self.rng.permutation(num_items)
        order = np.concatenate([perm() for _ in range(math.ceil(steps * bs / num_items))])
        return [order[i * bs:(i + 1) * bs] for i in range(steps)]

    def fit(self, loss_fn: LossFn, num_items: int, before_step: BeforeStep | None = None) -> dict[str, Any]:
        """Run ``epochs`` over ``num_items`` training items; return (and keep) the loop's ``info``.

        ``before_step(step, batches)``, when given, runs before each step's loss with every planned batch (e.g. to
        mine the negatives of the coming steps from the current parameters); its wall and CPU seconds are recorded
        apart (``before_step_seconds``, ``before_step_cpu_seconds``) and left out of ``train_loop_seconds``."""
        if num_items < 1:
            raise ValueError(f"{self.desc}: nothing to train on (0 training items)")
        spec = self.spec
        steps = num_steps(num_items, spec.batch_size, spec.epochs)
        warmup = spec.warmup_steps if spec.warmup_steps is not None else round(spec.warmup * steps)
        tensors = {name: getattr(self.vq, name) for name in self.lrs}
        before = {name: p.detach().clone() for name, p in tensors.items()}
        groups = [{"params": [p], "lr": self.lrs[name]} for name, p in tensors.items()]
        optimizer = OPTIMIZERS[spec.optimizer](groups, weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(spec.schedule, step, warmup, steps))
        losses: list[float] = []
        extras: dict[str, list[float]] = {}
        tail = max(1, steps // TAIL)
        t0, c0 = time.perf_counter(), time.process_time()
        hook, hook_cpu = 0.0, 0.0
        batches = self.batches(num_items, steps)
        bar = tqdm(batches, desc=f"{self.desc}: train", leave=False)
        with deterministic_torch():
            for i, rows in enumerate(bar):
                step = Step(rows, i, self.rng, self.gen, self.device)
                if before_step is not None:
                    h0, hc0 = time.perf_counter(), time.process_time()
                    before_step(step, batches)
                    hook, hook_cpu = hook + time.perf_counter() - h0, hook_cpu + time.process_time() - hc0
                out = loss_fn(step)
                loss, extra = out if isinstance(out, tuple) else (out, {})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                for key, value in extra.items():
                    extras.setdefault(key, []).append(float(value))
                bar.set_postfix({"loss": f"{np.mean(losses[-tail:]):.4f}",
                                 **{k: f"{np.mean(v[-tail:]):.3f}" for k, v in extras.items()}}, refresh=False)
        seconds, cpu = time.perf_counter() - t0 - hook, time.process_time() - c0 - hook_cpu
        self.info = {
            "steps": steps, "epochs": spec.epochs, "batch_size": spec.batch_size, "train_queries": num_items,
            "optimizer": spec.optimizer, "schedule": spec.schedule, "warmup_steps": warmup,
            "loss_first": losses[0], "loss_final": float(np.mean(losses[-tail:])),
            **{k: float(np.mean(v[-tail:])) for k, v in extras.items()},
            **{f"lr_{name}": lr for name, lr in self.lrs.items()},
            **{f"drift_{name}": relative_drift(before[name], p) for name, p in tensors.items()},
            "train_loop_seconds": seconds, "train_loop_cpu_seconds": cpu,
            "queries_per_s": steps * spec.batch_size / max(seconds, 1e-9), "torch_threads": torch.get_num_threads(),
            **({"before_step_seconds": hook, "before_step_cpu_seconds": hook_cpu} if before_step else {})}
        return self.info

    def to_params(self, writeback: str = "codes", **info: Any) -> VQParams:
        """The trained parameters as :class:`VQParams`; info = the init's + the loop's + ``info``."""
        return self.vq.to_params(writeback, {**self.info, **info})


@torch.no_grad()
def relative_drift(before: torch.Tensor, after: torch.Tensor) -> float:
    """``||after - before|| / ||before||``: how far training moved a tensor."""
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


@dataclass
class Positives:
    """Labeled train queries with at least one relevant doc in the corpus: ``rows`` into the train queries and,
    per query i, its relevant doc rows and grades ``docs[offsets[i]:offsets[i+1]]`` (in qrels order)."""

    rows: np.ndarray
    offsets: np.ndarray
    docs: np.ndarray
    grades: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, keep: np.ndarray) -> "Positives":
        """The queries ``keep`` (indices into this set), in that order."""
        counts = self.counts[keep]
        flat = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in keep]).astype(np.int64)
        return Positives(self.rows[keep], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                         self.docs[flat], self.grades[flat])

    def sample(self, fraction: float, seed: int) -> "Positives":
        """A seeded ``fraction`` of the queries (at least one), in their original order."""
        keep = max(1, round(len(self) * fraction))
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:keep]))

    def query_emb(self, train: Any) -> np.ndarray:
        """The float32 embeddings of these queries (from ``train.train_query_emb``)."""
        return np.asarray(train.train_query_emb, dtype=np.float32)[self.rows]

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q, R) relevant doc rows (-1 = padding) and grades (0 = padding), R = the most relevant docs of a query."""
        width = int(self.counts.max())
        col = np.arange(len(self.docs)) - np.repeat(self.offsets[:-1], self.counts)
        idx = np.full((len(self), width), -1, dtype=np.int64)
        grade = np.zeros((len(self), width), dtype=np.float32)
        qrow = np.repeat(np.arange(len(self)), self.counts)
        idx[qrow, col], grade[qrow, col] = self.docs, self.grades
        return idx, grade

    def best(self) -> np.ndarray:
        """Each query's highest-graded relevant doc row (the first of ties)."""
        return np.array([self.docs[s + np.argmax(self.grades[s:e])]
                         for s, e in zip(self.offsets[:-1], self.offsets[1:])], dtype=np.int64)


def positives(train: Any, who: str) -> Positives:
    """The qrels of ``train`` (a :class:`benchmark.registry.TrainData`) as doc rows: queries with a relevant doc
    (grade > 0) in the corpus. A clear error if there are no labels."""
    if train.train_qrels is None or train.train_query_emb is None or train.train_query_ids is None:
        raise ValueError(f"{who} needs labeled train queries (train qrels), but this dataset has none; use an "
                         "unlabeled method or setting")
    doc_index = {doc_id: i for i, doc_id in enumerate(train.doc_ids)}
    rows, counts, docs, grades = [], [], [], []
    for row, qid in enumerate(train.train_query_ids):
        rel = [(doc_index[d], g) for d, g in train.train_qrels.get(qid, {}).items() if g > 0 and d in doc_index]
        if rel:
            rows.append(row)
            counts.append(len(rel))
            docs.extend(d for d, _ in rel)
            grades.extend(g for _, g in rel)
    if not rows:
        raise ValueError(f"{who}: no labeled train query has a relevant doc in the corpus")
    return Positives(np.asarray(rows, dtype=np.int64), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     np.asarray(docs, dtype=np.int64), np.asarray(grades, dtype=np.float32))
