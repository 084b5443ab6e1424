"""Tune every method of a grid on a dev split with Optuna, at one declared budget, then hand the chosen configs on.

``python -m benchmark.tune --config configs/tune-debian-desc.toml`` (or ``run_benchmark.py``-style flags, see
``--help``; ``--status`` prints where a tuning stands, beside a running one: trials per study, best so far, CPU seconds
spent and left). The config is an ordinary grid config (datasets, ``[search]``, ``[[runs]]`` naming the methods and the
params held fixed, e.g. ``M = 16``) plus a ``[tune]`` table::

    [tune]
    trials = 24          # per (dataset, method, fixed params): the same budget for every method
    sampler_seed = 0     # Optuna's TPESampler seed
    measure = "nDCG@10"  # the dev measure maximised (an ir_measures name the records keep)
    nprobe = "max"       # the operating point it is read at: "max" (exhaustive for IVF) or an int

What is tuned is what each method declares: every param with a ``search`` space (:class:`benchmark.params.Space`,
listed by ``--list-methods``); the shared knobs (learning rates, temperature, epochs, batch size, query adapter) have
one space for all methods (:mod:`benchmark.vq.train`). Trial 0 is the method's defaults, so the chosen config is
never worse on dev than the defaults.

Rules:

- **Dev only.** Every dataset must evaluate on a dev split that holds no test queries (``dev_queries`` carves one out
  of the labeled train queries and drops the test split, or ``split = "dev"``); a test split anywhere is refused
  before any work (exit 2).
- **Trials are fits** the runner knows: each is recorded in ``<out>/results.jsonl`` (with its per-query sidecars)
  and resumed like any fit. The sampler is seeded and told the trials in order, so a resumed study asks for the same
  params again, finds those fits recorded and goes on where it stopped: no trial is lost or run twice.
- **Round robin.** Trial n of every study runs before trial n + 1 of any, so a tuning stopped half way has given
  every method the same number of trials (give or take one).
- **The budget in both currencies.** ``<out>/tuning/trials.jsonl`` holds every trial (params, dev score, wall and
  CPU seconds of this process, train seconds); ``tuning.md`` sums them per method, so a cheap objective is not
  hidden behind an expensive one. ``best.toml`` holds each method's chosen params as ``[[runs]]`` tables for the
  test config.
- **Shards.** ``--shard i/n`` tunes every n-th study (round robin over the plan's studies) into its own ``--out``;
  each study's trials are the same as in one process (a study's sampler sees only its own trials), so n processes
  or machines share the budget's wall time, not its trials. ``--merge DIR [DIR ...]`` joins the shards' records and
  traces into ``--out`` (or the config's out) and writes the chosen configs and the budget table of the whole tuning;
  per study the shard that ran it (the one holding most of its trials) is kept whole; two shards that ran the same
  study with different fits are refused.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark._io import write_text
from benchmark.config import ConfigError, Job, Plan, load_config, plan, select_shard
from benchmark.data import RetrievalDataset
from benchmark.metrics import MEASURES
from benchmark.params import Space, search_space
from benchmark.records import RecordError, merge_results, read_records
from benchmark.registry import MethodError, get_method

TUNE_KEYS = ("trials", "sampler_seed", "measure", "nprobe")
TRIALS_FILE = "tuning/trials.jsonl"


@dataclass(frozen=True)
class TuneSettings:
    """The ``[tune]`` table: the budget and what is maximised."""

    trials: int = 24
    sampler_seed: int = 0
    measure: str = "nDCG@10"
    nprobe: int | str = "max"


def tune_settings(table: Any, where: str) -> TuneSettings:
    """``[tune]`` validated: one :class:`ConfigError` line per problem."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} [tune]: expected a table (trials, sampler_seed, measure, nprobe), got {table!r}")
    problems = [f"{where} [tune]: unknown key {k!r}; valid keys: {list(TUNE_KEYS)}" for k in table
                if k not in TUNE_KEYS]
    s = TuneSettings(**{k: v for k, v in table.items() if k in TUNE_KEYS})
    if not isinstance(s.trials, int) or isinstance(s.trials, bool) or s.trials < 1:
        problems.append(f"{where} [tune] trials: expected an integer >= 1, got {s.trials!r}")
    if not isinstance(s.sampler_seed, int) or isinstance(s.sampler_seed, bool):
        problems.append(f"{where} [tune] sampler_seed: expected an integer, got {s.sampler_seed!r}")
    if s.measure not in MEASURES:
        problems.append(f"{where} [tune] measure: expected one of {list(MEASURES)}, got {s.measure!r}")
    if s.nprobe != "max" and (not isinstance(s.nprobe, int) or isinstance(s.nprobe, bool) or s.nprobe < 1):
        problems.append(f"{where} [tune] nprobe: expected \"max\" or an integer >= 1, got {s.nprobe!r}")
    if problems:
        raise ConfigError(problems)
    return s


def check_dev_only(loaded: dict[str, RetrievalDataset]) -> None:
    """Refuse any dataset a tuner could learn test data from: it must evaluate on 'dev' and hold no 'test' split."""
    problems = [f"dataset {name!r}: tuning evaluates on a dev split, but this one evaluates on {ds.eval_split!r} "
                f"and holds splits {sorted(ds.splits)}; set dev_queries = <n> (held-out labeled train queries) "
                f"or split = \"dev\" under [datasets.{name}]"
                for name, ds in loaded.items() if ds.eval_split != "dev" or "test" in ds.splits]
    if problems:
        raise ConfigError(problems)


def distributions(spaces: dict[str, Space], types: dict[str, type]) -> dict[str, Any]:
    """Optuna distributions of the tunable params: categorical for choices, else a float / int range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for name, space in spaces.items():
        if space.choices is not None:
            out[name] = CategoricalDistribution(list(space.choices))
        elif types[name] is int:
            out[name] = IntDistribution(int(space.low), int(space.high), log=space.log)
        else:
            out[name] = FloatDistribution(float(space.low), float(space.high), log=space.log)
    return out


def _inside(dist: Any, value: Any) -> bool:
    """Whether a default lies in a distribution (``None`` / ``'auto'`` defaults do not: the sampler never sees them)."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Study:
    """One study: a method with its fixed params on a dataset (its seed is the plan's first)."""

    dataset: str
    method: str
    fixed: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.fixed)
        return f"{self.dataset} {self.method}" + (f"({extra})" if extra else "")


def studies(jobs: list[Job]) -> list[Study]:
    """The plan's jobs as studies (a job's seeds beyond the first are not tuned on: one seed per trial)."""
    seen: dict[tuple, Study] = {}
    for job in jobs:
        key = (job.dataset, job.method, tuple(sorted(job.params.items())))
        seen.setdefault(key, Study(job.dataset, job.method, key[2], job.seed))
    return list(seen.values())


def trial_score(records: list[dict[str, Any]], fit_id: str, settings: TuneSettings) -> tuple[float | None, Any]:
    """(dev measure, nprobe) of a recorded fit at the study's operating point; (None, None) if it failed."""
    ok = [r for r in records if r["fit_id"] == fit_id and r["status"] == "ok"]
    if not ok:
        return None, None
    if settings.nprobe == "max" or ok[0]["nprobe"] is None:
        rec = max(ok, key=lambda r: -1 if r["nprobe"] is None else r["nprobe"])
    else:
        below = [r for r in ok if r["nprobe"] is not None and r["nprobe"] <= settings.nprobe]
        rec = max(below or ok, key=lambda r: r["nprobe"])
    return float(rec["metrics"][settings.measure]), rec["nprobe"]


class Tuner:
    """Runs the studies of a plan through a :class:`benchmark.runner.Runner` writing into ``runner.out_dir``."""

    def __init__(self, runner: Any, settings: TuneSettings, log=print) -> None:
        self.runner = runner
        self.settings = settings
        self.log = log
        self.trials_path = runner.out_dir / TRIALS_FILE
        self._file: list[dict[str, Any]] = []   # the trace file as this run found it

    def _previous(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Trials of the trace file this run found, by (dataset, method, fit_id): their seconds survive a resume."""
        # a repeat costs nothing: the seconds are the first trial's
        return {(t["dataset"], t["method"], t["fit_id"]): t for t in self._file if t["state"] != "repeat"}

    def run(self, plan_: Plan) -> list[dict[str, Any]]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        loaded = self.runner.load(plan_.datasets)
        check_dev_only(loaded)
        todo = studies(plan_.jobs)
        for st in todo:   # every study's defaults checked against its data before the first trial trains
            self.runner.check([Job(st.dataset, st.method, dict(st.fixed), st.seed)], loaded)
            if not search_space(get_method(st.method).declared_params()):
                raise ConfigError(f"{st.label}: {st.method} declares no search space (Param(search=...)); "
                                  "nothing to tune")
        self._file = read_trace(self.trials_path)   # kept in every write: studies this run does not tune (--methods)
        previous, trace = self._previous(), []
        setups = []
        for st in todo:
            declared = get_method(st.method).declared_params()
            spaces = {k: v for k, v in search_space(declared).items() if k not in dict(st.fixed)}
            study = optuna.create_study(direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=self.settings.sampler_seed))
            setups.append((st, declared, spaces, distributions(spaces, {k: declared[k].type for k in spaces}), study))
        # round robin, trial number first: an interrupted tuning has spent the same budget (+-1 trial) on every
        # study; each study's own ask/tell order is unchanged, so a resumed run asks for the same params again
        for number in range(self.settings.trials):
            for st, declared, spaces, dists, study in setups:
                if number == 0:   # the defaults, told to the sampler where they lie inside its space
                    params = {**dict(st.fixed), **{k: declared[k].default for k in spaces}}
                    value = self._trial(st, number, params, loaded, trace, previous)
                    inside = {k: params[k] for k in spaces if _inside(dists[k], params[k])}
                    study.add_trial(optuna.trial.create_trial(
                        params=inside, distributions={k: dists[k] for k in inside}, value=value,
                        state=optuna.trial.TrialState.COMPLETE if value is not None else
                        optuna.trial.TrialState.FAIL))
                    continue
                trial = study.ask(dists)
                value = self._trial(st, number, {**dict(st.fixed), **trial.params}, loaded, trace, previous)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
        self._write(trace)
        return trace

    def _trial(self, st: Study, number: int, params: dict[str, Any], loaded: dict[str, RetrievalDataset],
               trace: list[dict[str, Any]], previous: dict[tuple[str, str, str], dict[str, Any]]) -> float | None:
        """Fit (or find recorded) one trial's config, append it to ``trace`` (written at once); its dev value."""
        from benchmark.runner import job_fit_id
        job = Job(st.dataset, st.method, params, st.seed)
        problems = get_method(st.method)(**params).check_config()
        if problems:   # a sampled combination the method rejects: a failed trial, nothing trained
            trace.append(self._record(st, number, params, None, None, "rejected", 0.0, 0.0, None,
                                      "; ".join(problems)))
            return None
        fid = job_fit_id(job, loaded[st.dataset].eval_split)
        repeat = next((t for t in trace if t["fit_id"] == fid), None)
        if repeat is not None:   # the sampler asked for a config it already has: its value again, nothing fitted
            trace.append({**repeat, "trial": number, "state": "repeat", "wall_seconds": 0.0, "cpu_seconds": 0.0,
                          "repeat_of": repeat["trial"]})
            return repeat["value"]
        t0, c0 = time.perf_counter(), time.process_time()
        self.runner.run([job], loaded)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        records, _ = read_records(self.runner.results)
        value, nprobe = trial_score(records, fid, self.settings)
        if job.label() in self.runner.summary.skipped:   # fitted by an earlier run: its seconds, if traced
            before = previous.get((st.dataset, st.method, fid))
            wall, cpu = (before["wall_seconds"], before["cpu_seconds"]) if before else (None, None)
        train_s = next((r["train_seconds"] for r in records if r["fit_id"] == fid and r["status"] == "ok"), None)
        machine = next((r["provenance"].get("cpu") for r in records if r["fit_id"] == fid), None)
        trace.append(self._record(st, number, params, fid, value, "ok" if value is not None else "failed",
                                  wall, cpu, train_s, None, nprobe, machine))
        self.log(f"{st.label} trial {number + 1}/{self.settings.trials}: {self.settings.measure} "
                 f"{'failed' if value is None else f'{value:.4f}'}")
        self._write(trace)   # after every trial
        return value

    def _record(self, st: Study, number: int, params: dict[str, Any], fid: str | None, value: float | None,
                state: str, wall: float | None, cpu: float | None, train_s: float | None, error: str | None,
                nprobe: Any = None, machine: str | None = None) -> dict[str, Any]:
        """One trial of the trace; ``machine``: the CPU its fit ran on (its record's provenance), as the same
        params can score a little differently on another CPU (OPQ's BLAS rounding)."""
        return {"dataset": st.dataset, "method": st.method, "fixed": dict(st.fixed), "seed": st.seed,
                "machine": machine,
                "trial": number, "params": params, "fit_id": fid, "value": value, "state": state,
                "measure": self.settings.measure, "nprobe": nprobe,
                "wall_seconds": None if wall is None else round(wall, 3),
                "cpu_seconds": None if cpu is None else round(cpu, 3), "train_seconds": train_s, "error": error,
                "sampler": f"optuna.TPESampler(seed={self.settings.sampler_seed})"}

    def _write(self, trace: list[dict[str, Any]]) -> None:
        """``trace`` with the trials of the file this run started from that it has not (yet) redone (other studies'
        in a run of some --methods, or its own beyond where a resumed run has got), in round-robin order."""
        mine = {(*_study_key(t), t["trial"]) for t in trace}
        rank: dict[tuple, int] = {}   # round-robin order: trial, then the study's place in the file (or this run)
        for t in self._file + trace:
            rank.setdefault(_study_key(t), len(rank))
        whole = trace + [t for t in self._file if (*_study_key(t), t["trial"]) not in mine]
        write_trace(self.trials_path, sorted(whole, key=lambda t: (t["trial"], rank[_study_key(t)])), self.settings)


def write_trace(path: Path, trace: list[dict[str, Any]], settings: TuneSettings) -> None:
    """The whole trace at ``path`` (a run's view, resumed trials included) and beside it the chosen configs
    (best.json, best.toml) and the budget table (tuning.md)."""
    folder = path.parent
    write_text(path, "".join(json.dumps(t, sort_keys=True) + "\n" for t in trace))
    write_text(folder / "best.json", json.dumps(best_configs(trace), indent=1, sort_keys=True) + "\n")
    write_text(folder / "best.toml", best_toml(trace, path.as_posix()))
    write_text(folder / "tuning.md", budget_table(trace, settings))


def _study_key(t: dict[str, Any] | Study) -> tuple[str, str, str]:
    """A study's key, of a trial of the trace or of a :class:`Study`."""
    if isinstance(t, Study):
        return t.dataset, t.method, json.dumps(dict(t.fixed), sort_keys=True)
    return t["dataset"], t["method"], json.dumps(t["fixed"], sort_keys=True)


def shard_jobs(jobs: list[Job], shard: str | None) -> list[Job]:
    """The jobs of the studies in shard ``i/n`` (every n-th study of the plan, from the i-th)."""
    keep = {(st.dataset, st.method, st.fixed) for st in select_shard(studies(jobs), shard)}
    return [j for j in jobs if (j.dataset, j.method, tuple(sorted(j.params.items()))) in keep]


def merge_traces(traces: dict[str, list[dict[str, Any]]], order: list[Study]) -> tuple[list[dict[str, Any]],
                                                                                  list[str]]:
    """One trace from several (by where each was read) and what was set aside. Per study, the trace holding the most
    of its trials is the one that ran it (a shard folder starts as a copy of the main one, so the others hold an older
    view of that study, or none): its entries are taken whole, in round-robin order (trial, then the plan's study
    order). An older view that differs from it (a trial refitted with another value, so the sampler went another way
    from there) is listed in the second value. Two traces holding the same number of trials of a study with different
    fits are not shards of one tuning: :class:`ConfigError`."""
    rank = {_study_key(st): k for k, st in enumerate(order)}
    views: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for where, trace in traces.items():
        for t in trace:
            views.setdefault(_study_key(t), {}).setdefault(where, []).append(t)

    def fits(ts: list[dict[str, Any]]) -> list[tuple]:
        return sorted((t["trial"], t["fit_id"], t["value"]) for t in ts)
    merged, superseded, problems = [], [], []
    for key, by_where in views.items():
        where, chosen = max(by_where.items(), key=lambda item: len(item[1]))   # the first of equals
        for other, ts in by_where.items():
            if other == where or fits(ts) == fits(chosen)[:len(ts)]:
                continue
            if len(ts) == len(chosen):
                problems.append(f"{key[0]} {key[1]} {key[2]}: {len(ts)} trials with different fits in {other} and "
                                f"{where}")
            else:
                first = min(a[0] for a, b in zip(fits(ts), fits(chosen)) if a != b)
                superseded.append(f"{key[0]} {key[1]}: {other} held {len(ts)} trials, from trial {first} on not "
                                  f"those of {where} ({len(chosen)} trials), which are kept")
        merged += chosen
    if problems:
        raise ConfigError(problems + ["--merge: these traces are not shards of one tuning (same config, same "
                                      "code): merge only the shards of one run"])
    return sorted(merged, key=lambda t: (t["trial"], rank.get(_study_key(t), len(rank)))), superseded


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trials of a trace file (none when it is missing)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def best_configs(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study, the trial with the best dev value (the earliest of ties: the defaults win a tie)."""
    best: dict[tuple, dict[str, Any]] = {}
    for t in trace:
        key = _study_key(t)
        if t["value"] is not None and (key not in best or t["value"] > best[key]["value"]):
            best[key] = t
    spent: dict[tuple, list[dict[str, Any]]] = {}
    for t in trace:
        spent.setdefault(_study_key(t), []).append(t)
    return [{"dataset": t["dataset"], "method": t["method"], "params": t["params"], "dev_value": t["value"],
             "trial": t["trial"], "measure": t["measure"], "trials": len(spent[key]),
             "cpu_seconds": round(sum(x["cpu_seconds"] or 0.0 for x in spent[key]), 1),
             "wall_seconds": round(sum(x["wall_seconds"] or 0.0 for x in spent[key]), 1)}
            for key, t in best.items()]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def best_toml(trace: list[dict[str, Any]], trace_path: str = TRIALS_FILE) -> str:
    """The chosen configs as [[runs]] tables of a run config; each carries ``tuning = {...}`` (the trace, the trials
    and seconds spent, the dev value), which the runner copies into its records (the report's *tuning* column)."""
    lines = ["# Chosen on the dev split by benchmark.tune (tuning/trials.jsonl): a test config's runs table "
             "reads them with tuned = \"<this file>\".", ""]
    for b in best_configs(trace):
        # TOML has no null: a None value is the param's default (trial 0), which leaving it out also gives
        params = ", ".join(f"{k} = {_toml_value(v)}" for k, v in sorted(b["params"].items()) if v is not None)
        tuning = {"trace": trace_path, "split": "dev", "trials": b["trials"], "cpu_seconds": b["cpu_seconds"],
                  "wall_seconds": b["wall_seconds"], "measure": b["measure"], "dev_value": round(b["dev_value"], 5),
                  "best_trial": b["trial"]}
        lines += [f"[[runs]]   # {b['dataset']}: dev {b['measure']} {b['dev_value']:.4f} (trial {b['trial']})",
                  f"methods = [\"{b['method']}\"]", f"params = {{ {params} }}",
                  "tuning = { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in tuning.items()) + " }", ""]
    return "\n".join(lines)


def budget_table(trace: list[dict[str, Any]], settings: TuneSettings) -> str:
    """Per study: trials (ok / repeated configs / failed / rejected), CPU and wall seconds, the defaults' and the
    best dev value."""
    lines = [f"# Tuning budget ({settings.measure} on dev at nprobe {settings.nprobe}; "
             f"optuna TPESampler seed {settings.sampler_seed}; trial 0 = defaults)", "",
             "| dataset | method | fixed | trials | fitted | repeats | failed | rejected | CPU s | wall s | defaults | "
             "best | best trial |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for t in trace:
        groups.setdefault(_study_key(t), []).append(t)
    for (dataset, method, fixed), ts in groups.items():
        ok = [t for t in ts if t["value"] is not None]
        best = max(ok, key=lambda t: t["value"], default=None)
        fitted = sum(t["state"] == "ok" for t in ts)
        first = next((t for t in ts if t["trial"] == 0), None)

        def fmt(v: float | None) -> str:
            return "—" if v is None or math.isnan(v) else f"{v:.4f}"
        lines.append(f"| {dataset} | {method} | {fixed} | {len(ts)} | {fitted} | "
                     f"{sum(t['state'] == 'repeat' for t in ts)} | "
                     f"{sum(t['state'] == 'failed' for t in ts)} | {sum(t['state'] == 'rejected' for t in ts)} | "
                     f"{_seconds(ts, 'cpu_seconds')} | {_seconds(ts, 'wall_seconds')} | "
                     f"{fmt(first['value'] if first else None)} | {fmt(best['value'] if best else None)} | "
                     f"{best['trial'] if best else '—'} |")
    machines: dict[str, list[int]] = {}
    for t in trace:
        if t.get("machine"):
            machines.setdefault(t["machine"], []).append(t["trial"])
    if len(machines) > 1:   # a tuning resumed on another machine type: say which trials ran where
        lines += ["", "Trials ran on " + "; ".join(f"{m}: trials {_runs(ts)} ({len(ts)} fits)"
                                                   for m, ts in machines.items())
                  + ". OPQ-based fits of the same params differ a little between CPUs (BLAS rounding), about as "
                    "much as between seeds; round robin gave every study the same trials on each machine (give or "
                    "take the one in progress at a stop)."]
    return "\n".join(lines) + "\n"


def _runs(numbers: list[int]) -> str:
    """Trial numbers as runs of consecutive ones: [0, 1, 2, 3, 6, 7, 9] -> '0-3, 6-7, 9'."""
    out: list[str] = []
    for _, run in itertools.groupby(enumerate(sorted(set(numbers))), key=lambda p: p[1] - p[0]):
        nums = [n for _, n in run]
        out.append(str(nums[0]) if len(nums) == 1 else f"{nums[0]}-{nums[-1]}")
    return ", ".join(out)


def _seconds(trials: list[dict[str, Any]], key: str) -> str:
    """The sum of ``key`` over ``trials``; ``>= sum`` when some trial's seconds are unknown (fitted by a run killed
    before it traced them)."""
    known = [t[key] for t in trials if t[key] is not None]
    return ("" if len(known) == len(trials) else ">= ") + f"{sum(known):.0f}"


def status(study_list: list[Study], trace: list[dict[str, Any]], settings: TuneSettings) -> str:
    """Where a tuning stands, from its trace alone (nothing loaded, nothing locked): per study the trials recorded of
    the budget, the best dev value so far, the CPU seconds spent and what the rest would cost at the study's own mean
    CPU seconds per fitted trial; then the total, also in wall hours at the wall / CPU ratio of the trials so far."""
    lines = [f"{'study':<44}{'trials':>9}{'best':>8}{'CPU s':>10}{'CPU s/trial':>13}{'CPU s left':>12}"]
    spent = left = wall = cpu_known = 0.0
    unknown = []
    for st in study_list:
        ts = [t for t in trace if _study_key(t) == _study_key(st)]
        done = len({t["trial"] for t in ts})
        values = [t["value"] for t in ts if t["value"] is not None]
        fitted = [t for t in ts if t["state"] in ("ok", "failed") and t["cpu_seconds"] is not None]
        cpu = sum(t["cpu_seconds"] for t in fitted)
        wall += sum(t["wall_seconds"] or 0.0 for t in fitted)
        cpu_known += cpu
        per = cpu / len(fitted) if fitted else None
        rest = max(0, settings.trials - done)
        if per is None and rest:
            unknown.append(st.label)
        spent += cpu
        left += rest * (per or 0.0)
        lines.append(f"{st.label:<44}{f'{done}/{settings.trials}':>9}"
                     f"{(f'{max(values):.4f}' if values else '—'):>8}{cpu:>10.0f}"
                     f"{(f'{per:.0f}' if per is not None else '—'):>13}{rest * (per or 0.0):>12.0f}")
    ratio = wall / cpu_known if cpu_known else 1.0
    lines.append(f"total: {spent:,.0f} CPU s spent; ~{left:,.0f} CPU s left (~{left * ratio / 3600:.1f} h of wall "
                 f"time at this tuning's wall/CPU ratio {ratio:.2f})"
                 + (f"; not counted: {', '.join(unknown)} (no fitted trial yet)" if unknown else ""))
    return "\n".join(lines)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _merge(out: Path, shards: list[Path], order: list[Study], settings: TuneSettings,
           argv: list[str] | None) -> int:
    """``--merge``: the shards' records and traces joined into ``out`` (under its lock; a shard still being tuned
    is refused), then the whole tuning's chosen configs and budget table."""
    from benchmark.lock import check_unlocked, folder_lock
    shards = [d for d in shards if d.resolve() != out.resolve()]
    problems = [f"--merge: {d} holds no tuning (no {d / 'results.jsonl'} and {d / TRIALS_FILE})" for d in shards
                if not ((d / "results.jsonl").is_file() and (d / TRIALS_FILE).is_file())]
    problems += [p for d in shards for p in check_unlocked(d, "--merge")]
    if problems:
        raise ConfigError(problems)
    trace, superseded = merge_traces({str(d / TRIALS_FILE): read_trace(d / TRIALS_FILE) for d in [out, *shards]},
                                     order)
    with folder_lock(out, " ".join(["python -m benchmark.tune", *(argv or sys.argv[1:])])):
        n = merge_results([d / "results.jsonl" for d in shards], out / "results.jsonl")
        write_trace(out / TRIALS_FILE, trace, settings)
    print(f"merged {len(shards)} shard(s) into {out}: {n} records, {len(trace)} trials")
    for line in superseded:   # the records of those older trials stay in results.jsonl: fits, not trials
        print(f"superseded: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmark.harness import SearchSettings
    from benchmark.lock import folder_lock
    from benchmark.provenance import set_threads
    from benchmark.runner import Runner

    p = argparse.ArgumentParser(prog="python -m benchmark.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="grid config with a [tune] table (configs/tune-*.toml)")
    p.add_argument("--methods", help="tune only these methods of the config (comma-separated)")
    p.add_argument("--trials", type=int, help="override [tune] trials (the same for every method)")
    p.add_argument("--out", help="output folder (default: the config's out)")
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads of every trial (0 = every core)")
    p.add_argument("--status", action="store_true", help="print where the tuning stands (trials per study, best dev "
                                                         "value, CPU seconds spent and left) and exit: reads the "
                                                         "trace only, safe beside a running tuning")
    p.add_argument("--shard", metavar="I/N", help="tune only every N-th study of the plan, from the I-th (0-based), "
                                                  "into this shard's own --out; join the shards with --merge")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="join shard folders (each tuned with --shard) into "
                                                             "--out (default: the config's out): records, sidecars "
                                                             "and traces; then the chosen configs and budget table")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        settings = tune_settings(cfg.get("tune", {}), args.config)
        if args.trials is not None:
            settings = tune_settings({**cfg.get("tune", {}), "trials": args.trials}, "--trials")
        planned = plan(config=args.config, methods=args.methods)
        planned = Plan(shard_jobs(planned.jobs, args.shard), planned.datasets, planned.search, planned.out)
        out = Path(args.out or planned.out or "reports/tuning")
        if args.status:
            print(status(studies(planned.jobs), read_trace(out / TRIALS_FILE), settings))
            return 0
        if args.merge:
            return _merge(out, [Path(d) for d in args.merge], studies(planned.jobs), settings, argv)
        _, problems = read_records(out / "results.jsonl")   # a torn line anywhere: refused before any work
        if problems:
            raise ConfigError(problems + [f"{out / 'results.jsonl'} has unreadable lines (above): move them aside "
                                          f"with run_benchmark.py --repair --out {out}"])
        set_threads(args.threads)
        previous = signal.signal(signal.SIGTERM, _sigterm)   # preemption stops like Ctrl-C: the lock is released
        try:
            with folder_lock(out, " ".join(["python -m benchmark.tune", *(argv or sys.argv[1:])])):   # one writer
                runner = Runner(out, SearchSettings(**planned.search), datasets=planned.datasets,
                                threads=args.threads, log=lambda text: None)
                Tuner(runner, settings).run(planned)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except (ConfigError, MethodError, RecordError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the trial in progress was not recorded; every recorded trial is kept. Resume with the "
              f"same command: python -m benchmark.tune {' '.join(argv or sys.argv[1:])}", file=sys.stderr)
        return 130
    print(f"tuning trace: {out / TRIALS_FILE}; chosen configs: {out / 'tuning' / 'best.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
