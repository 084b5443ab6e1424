"""Plan a grid of fits (datasets x methods x params x seeds) from the command line and a TOML config, validating
everything a run needs before any data is loaded or any training starts.

Every problem found becomes one line naming the flag, file or key and what is expected; :class:`ConfigError` carries
all of them (the CLI prints them and exits 2). Planning reads no data: dataset names are checked by form, method
params against their typed :class:`benchmark.params.Param` declarations; what needs the data (M divides the dim,
enough documents for k-means) is checked by the runner right after loading, still before any training.

Config file keys (``configs/*.toml``)::

    out = "reports/x"          # default --out
    seeds = 3                  # or a list of seeds [0, 4]
    [datasets.<alias>]         # name = loader name (npy:<dir>, beir/<name>, ...; ${VAR:-default} expanded),
    name = "npy:..."           # hint = shown when a local path is missing; other keys go to the loader
                               # (split, drop_unknown_qrels, dev_queries, dev_seed, model, ...: on the command
                               # line, --dataset-opt KEY=VALUE sets one for every selected dataset)
    [search]                   # SearchSettings fields: nprobes, k, latency_k, latency_queries, warmup_queries, threads
    [[runs]]                   # methods = [...], params = {key = value or [grid values]}, seeds = N (first N)
                               # tuned = "<best.toml>": each method's params chosen by benchmark.tune, params on top
                               # datasets = ["<alias>", ...]: the run applies to these datasets only (default: all)
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import tomllib

from benchmark.data import DatasetError, check_dataset, check_dataset_name, parse_dataset_opt
from benchmark.harness import SearchSettings
from benchmark.params import ParamError
from benchmark.registry import MethodError, available, make_method

# --quick: a smoke run, not results. Tiny sizes for every method that declares these params (defaults untouched):
# 32 IVF lists for 4k docs, 5 OPQ iterations (of 20) and half an epoch of training. Measured single-threaded
# (OMP_NUM_THREADS=1, --threads 1, shared machine) at 274afdf: the quick grid's 11 fits took 51.4 CPU s with only
# nlist=32 (three OPQ inits at 20 iterations ~10 s each), 31.4 CPU s with these; bench/suite_time.py times it.
QUICK_DATASET = "synthetic:quick"
QUICK_PARAMS = {"nlist": 32, "opq_niter": 5, "epochs": 0.5}
QUICK_SEARCH = {"latency_queries": 50, "warmup_queries": 5, "timing_repeats": 2}   # a smoke run

CONFIG_KEYS = ("out", "seeds", "datasets", "search", "runs", "tune")   # [tune]: read by benchmark.tune
RUN_KEYS = ("methods", "params", "seeds", "tuning", "tuned", "datasets")
# [[runs]] tuning = {...}: how the run's params were chosen (written by benchmark.tune into best.toml), copied into
# every record of the run as provenance (the report's *tuning* column); not part of the params or fit ids
TUNING_KEYS = {"trace": str, "trials": int, "cpu_seconds": (int, float), "wall_seconds": (int, float),
               "measure": str, "dev_value": (int, float), "best_trial": int, "split": str}
# [[runs]] tuned = "<best.toml>": each listed method takes the params benchmark.tune chose for it (and their tuning
# provenance), the run's own params on top (e.g. M = [16, 32]): the test config follows the tuning, nothing is pasted
DATASET_KEYS = ("name", "hint", "dev_queries", "dev_seed")  # besides the loader's own keyword arguments


class ConfigError(ValueError):
    """A bad command line, config file or plan: one line per problem, each naming where and what is expected."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(dict.fromkeys(problems))
        super().__init__("\n".join(self.problems))


@dataclass
class Job:
    """One fit: a method with its build-time params on a dataset, with a seed."""

    dataset: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tuning: dict[str, Any] | None = None   # how the params were chosen ([[runs]] tuning = {...}): provenance only

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.dataset} {self.method}" + (f"({extra})" if extra else "") + f" seed={self.seed}"


@dataclass
class Plan:
    """What a run will do: the jobs, the dataset specs (alias -> (loader name, kwargs)), the search settings and
    the config's ``out`` folder (``None`` when it has none)."""

    jobs: list[Job]
    datasets: dict[str, tuple[str, dict[str, Any]]]
    search: dict[str, Any]
    out: str | None = None

    def settings(self) -> SearchSettings:
        return SearchSettings(**self.search)


def close(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x' or 'y'?)`` with the (up to 3) names of ``valid`` closest to ``name``, else ``''``."""
    match = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(m) for m in match)}?)" if match else ""


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell style) in a config string."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def parse_value(text: str) -> Any:
    """A ``--param`` value: a TOML literal (``16``, ``1e-3``, ``true``, ``[1, 2]``), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def csv(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_config(path: str | Path) -> dict[str, Any]:
    """Parse a TOML config (one :class:`ConfigError` line when it is missing or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {path} does not exist" if not path.exists() else f"--config: {path} is not a file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None


def _check_int_list(values: Any, where: str, lo: int, what: str, problems: list[str]) -> list[int]:
    if not isinstance(values, list) or not values or not all(_is_int(v) and v >= lo for v in values):
        problems.append(f"{where}: expected a non-empty list of integers >= {lo} ({what}), got {values!r}")
        return []
    return list(values)


def _seed_list(value: Any, where: str, problems: list[str]) -> list[int]:
    """``seeds = N`` (seeds 0..N-1, N >= 1) or an explicit list of seeds >= 0."""
    if _is_int(value):
        if value < 1:
            problems.append(f"{where}: expected a number of seeds >= 1, got {value}")
            return []
        return list(range(value))
    return _check_int_list(value, where, 0, "seed values", problems)


def _search_settings(search: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(search, dict):
        problems.append(f"{where}: expected a table of search settings, got {search!r}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(SearchSettings)}
    out: dict[str, Any] = {}
    for key, value in search.items():
        if key not in fields:
            problems.append(f"{where}: unknown key {key!r}{close(key, list(fields))}; valid keys: {sorted(fields)}")
        elif key == "nprobes":
            out[key] = _check_int_list(value, f"{where}.nprobes", 1, "nprobe values", problems) or None
        elif not _is_int(value) or value < (0 if key == "threads" else 1):
            problems.append(f"{where}.{key}: expected an integer >= {0 if key == 'threads' else 1}, got {value!r}")
        else:
            out[key] = value
    return out


def _check_dataset(name: str, options: dict[str, Any], label: str, where: str, hint: str | None,
                   check_paths: bool, problems: list[str]) -> None:
    """The data layer's checks of a dataset spec (name, typed options, files unless ``check_paths`` is False)."""
    try:
        check_dataset(name, options, label=label, check_paths=check_paths)
    except DatasetError as exc:
        for line in str(exc).splitlines():
            missing = hint and ("exist" in line or "not found" in line)
            problems.append(f"{where}{line}" + (f" ({hint})" if missing else ""))


def _datasets(config: dict[str, Any], where: str, problems: list[str],
              check_paths: bool = True) -> dict[str, tuple[str, dict[str, Any]]]:
    table = config.get("datasets", {})
    if not isinstance(table, dict):
        problems.append(f"{where}: 'datasets' must be a table of [datasets.<alias>] entries, got {table!r}")
        return {}
    out = {}
    for alias, spec in table.items():
        at = f"{where}: [datasets.{alias}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            problems.append(f"{at} needs name = \"<loader name>\" (synthetic, npy:<dir>, beir/<name>, ...)")
            continue
        name = expand_env(spec["name"])
        try:
            check_dataset_name(name)
        except DatasetError as exc:
            problems.append(f"{at} name: {exc}")
            continue
        out[alias] = (name, {k: v for k, v in spec.items() if k not in ("name", "hint")})
        _check_dataset(name, out[alias][1], alias, f"{where}: ", spec.get("hint"), check_paths, problems)
    return out


def _runs(config: dict[str, Any], where: str, problems: list[str]) -> list[dict[str, Any]]:
    runs = config.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        problems.append(f"{where}: 'runs' must be an array of [[runs]] tables, got {runs!r}")
        return []
    groups = []
    for i, run in enumerate(runs, 1):
        at = f"{where}: [[runs]] #{i}"
        for key in run:
            if key not in RUN_KEYS:
                problems.append(f"{at}: unknown key {key!r}{close(key, RUN_KEYS)}; valid keys: {list(RUN_KEYS)}")
        methods = run.get("methods")
        if methods is None:
            problems.append(f"{at}: needs methods = [\"<method>\", ...]")
            continue
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            problems.append(f"{at} methods: expected a list of method names like [\"faiss-pq\"], got {methods!r}")
            continue
        params = run.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{at} params: expected a table {{key = value or [values]}}, got {params!r}")
            params = {}
        group = {"methods": methods, "params": params, "where": at}
        if "datasets" in run:
            scope = run["datasets"]
            if not isinstance(scope, list) or not scope or not all(isinstance(d, str) for d in scope):
                problems.append(f"{at} datasets: expected a non-empty list of dataset aliases of this config "
                                f"(e.g. [\"debian-desc\"]), got {scope!r}")
            else:
                aliases = list(config.get("datasets", {}) if isinstance(config.get("datasets"), dict) else {})
                unknown = [d for d in scope if d not in aliases]
                problems += [f"{at} datasets: {d!r} is not a [datasets.<alias>] of this config{close(d, aliases)}; "
                             f"aliases: {aliases}" for d in unknown]
                group["datasets"] = scope
        if "seeds" in run:
            if not _is_int(run["seeds"]) or run["seeds"] < 1:
                problems.append(f"{at} seeds: expected a number of seeds >= 1, got {run['seeds']!r}")
            else:
                group["seeds"] = run["seeds"]
        if "tuned" in run:
            if "tuning" in run:
                problems.append(f"{at}: give either tuned = \"<best.toml>\" (params and provenance from the tuner) or "
                                f"tuning = {{...}}, not both")
            groups += [{**group, **tuned} for tuned in _tuned_groups(run["tuned"], methods, params, at, problems)]
            continue
        if "tuning" in run and _check_tuning(run["tuning"], at, problems):
            group["tuning"] = run["tuning"]
        groups.append(group)
    return groups


def _check_tuning(tuning: Any, at: str, problems: list[str]) -> bool:
    """A ``tuning = {...}`` table against :data:`TUNING_KEYS`; False (and problem lines) when it is not one."""
    if not isinstance(tuning, dict):
        problems.append(f"{at} tuning: expected a table {{trials = N, cpu_seconds = S, ...}}, got {tuning!r}")
        return False
    ok = True
    for key, value in tuning.items():
        if key not in TUNING_KEYS:
            problems.append(f"{at} tuning: unknown key {key!r}{close(key, TUNING_KEYS)}; valid keys: "
                            f"{list(TUNING_KEYS)}")
            ok = False
        elif not isinstance(value, TUNING_KEYS[key]) or isinstance(value, bool):
            problems.append(f"{at} tuning.{key}: expected {TUNING_KEYS[key]}, got {value!r}")
            ok = False
    return ok


def _tuned_groups(path: Any, methods: list[str], params: dict[str, Any], at: str,
                  problems: list[str]) -> list[dict[str, Any]]:
    """One group per method of a ``tuned = "<best.toml>"`` run: the tuner's chosen params for that method under the
    run's own (which win, e.g. ``M``), and the chosen run's ``tuning`` provenance."""
    if not isinstance(path, str) or not path:
        problems.append(f"{at} tuned: expected the path of a tuner's best.toml, got {path!r}")
        return []
    file = Path(expand_env(path))
    try:
        chosen = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"{at} tuned: cannot read {file} ({type(exc).__name__}: {exc}); write it with "
                        f"python -m benchmark.tune --config <tune config>")
        return []
    by_method = {}
    for entry in chosen.get("runs", []):
        for name in entry.get("methods", []) if isinstance(entry, dict) else []:
            by_method[name] = entry
    groups = []
    for name in methods:
        entry = by_method.get(name)
        if entry is None:
            problems.append(f"{at} tuned: {file} has no chosen params for {name!r}{close(name, list(by_method))}; "
                            f"tuned methods: {sorted(by_method)}")
            continue
        group = {"methods": [name], "params": {**entry.get("params", {}), **params}}
        if "tuning" in entry and _check_tuning(entry["tuning"], f"{at} tuned ({file}, {name})", problems):
            group["tuning"] = entry["tuning"]
        groups.append(group)
    return groups


def _check_methods(names: list[str], where: str, problems: list[str]) -> list[str]:
    valid = list(available())
    good = []
    for name in names:
        if name in valid:
            good.append(name)
        else:
            problems.append(f"{where}: unknown method {name!r}{close(name, valid)}; valid methods: {', '.join(valid)}")
    return good


def _param_grid(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product of list-valued params (scalars stay fixed)."""
    keys = sorted(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _check_value(method: str, key: str, value: Any, where: str, problems: list[str]) -> bool:
    """``value`` against ``method``'s declaration of ``key``; a problem line naming ``where`` when it fails."""
    declared = available()[method].declared_params()
    try:
        declared[key].validate(value, key)
        return True
    except ParamError as exc:
        problems.append(f"{where}: {method}: {exc}")
        return False


def parse_params(items: Sequence[str], problems: list[str], flag: str = "--param") -> dict[str, tuple[str, Any]]:
    """``--param KEY=VALUE`` items -> ``{key: (raw text, parsed value)}``."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} M=32")
            continue
        out[key] = (raw, parse_value(raw.strip()))
    return out


def plan(*, datasets: str | None = None, methods: str | None = None, config: str | None = None,
         seeds: str | int | None = None, params: Sequence[str] = (), nprobes: str | None = None,
         quick: bool = False, check_paths: bool = True, dataset_opts: Sequence[str] = ()) -> Plan:
    """Validate the inputs and plan the jobs (every method's first seed before any second seed). Reads no data.

    Raises :class:`ConfigError` with one line per problem found (all of them, not only the first).
    ``check_paths=False`` skips the existence check of local dataset folders (planning a config elsewhere).
    """
    problems: list[str] = []
    cfg: dict[str, Any] = {}
    where = config or "config"
    if config:
        cfg = load_config(config)
        for key in cfg:
            if key not in CONFIG_KEYS:
                problems.append(f"{where}: unknown key {key!r}{close(key, CONFIG_KEYS)}; "
                                f"valid keys: {list(CONFIG_KEYS)}")
        if "out" in cfg and not isinstance(cfg["out"], str):
            problems.append(f"{where} out: expected a folder path string, got {cfg['out']!r}")
    specs = _datasets(cfg, where, problems, check_paths)
    cfg_specs = set(specs)
    groups = _runs(cfg, where, problems)

    names = csv(datasets) or list(specs) or [QUICK_DATASET if quick else "synthetic"]
    for name in names:
        if name not in specs:
            try:
                check_dataset_name(name)
                specs[name] = (name, {})
            except DatasetError as exc:
                problems.append(f"--datasets: {exc}")
    names = [n for n in names if n in specs]
    for name in names:
        loader, kwargs = specs[name]
        cli_options = {}
        for text in dataset_opts:
            try:
                key, value = parse_dataset_opt(loader, text)
                cli_options[key] = value
            except DatasetError as exc:
                problems.append(str(exc))
        if cli_options or name not in cfg_specs:  # config datasets were checked with their own options
            specs[name] = (loader, {**kwargs, **cli_options})
            where_cli = "--dataset-opt: " if cli_options else "--datasets: "
            _check_dataset(loader, specs[name][1], name, where_cli, None, check_paths, problems)

    if seeds is not None:
        text = str(seeds).strip()
        if re.fullmatch(r"-?\d+", text) and int(text) >= 1:
            seed_list = list(range(int(text)))
        else:
            problems.append(f"--seeds: expected a number of seeds >= 1, got {text!r}")
            seed_list = []
    else:
        seed_list = _seed_list(cfg.get("seeds", 1), f"{where} seeds", problems)

    search = _search_settings(cfg.get("search", {}), f"{where} [search]", problems)
    if nprobes is not None:
        values = csv(nprobes)
        if values and all(re.fullmatch(r"\d+", v) and int(v) >= 1 for v in values):
            search["nprobes"] = sorted({int(v) for v in values})
        else:
            problems.append(f"--nprobes: expected comma-separated integers >= 1 (e.g. 1,4,16), got {nprobes!r}")
    if quick:
        search.update(QUICK_SEARCH)

    selected = csv(methods)
    if selected:
        selected = _check_methods(selected, "--methods", problems)
    if groups:
        for group in groups:
            group["methods"] = _check_methods(group["methods"], f"{group['where']} methods", problems)
            if methods:
                group["methods"] = [m for m in group["methods"] if m in selected]
    else:
        groups = [{"methods": selected if methods else list(available()), "params": {}, "where": "--methods"}]

    cli_params = parse_params(params, problems)
    chosen = sorted({m for g in groups for m in g["methods"]})
    declared = {m: available()[m].declared_params() for m in chosen}
    orphans = sorted(k for k in cli_params if not any(k in declared[m] for m in chosen))
    if orphans:
        problems.append(f"--param {orphans}: no selected method declares it; params of the selected methods: "
                        f"{sorted({k for m in chosen for k in declared[m]})}")
    for key, (raw, value) in cli_params.items():
        for m in chosen:
            if key in declared[m] and not _check_value(m, key, value, f"--param {key}={raw}", problems):
                break

    jobs: list[Job] = []
    for group in groups:
        group_params = group["params"]
        orphans = sorted(k for k in group_params if not any(k in declared[m] for m in group["methods"]))
        if orphans and group["methods"]:
            problems.append(f"{group['where']} params: {orphans} declared by none of {group['methods']}")
        for method in group["methods"]:
            own = {k: v for k, v in group_params.items() if k in declared[method]}
            for key, value in own.items():
                for v in value if isinstance(value, list) else [value]:
                    _check_value(method, key, v, f"{group['where']} params.{key}", problems)
            quick_params = {k: v for k, v in QUICK_PARAMS.items() if quick and k in declared[method]}
            cli = {k: v for k, (_, v) in cli_params.items() if k in declared[method]}
            group_seeds = seed_list[:group["seeds"]] if "seeds" in group else seed_list
            for combo in _param_grid(own):
                job_params = {**quick_params, **combo, **cli}
                for name in names:
                    if name in group.get("datasets", names):
                        jobs += [Job(name, method, job_params, seed, group.get("tuning")) for seed in group_seeds]
    if not problems:   # the methods' own config rules (combinations of params), before any data is loaded
        for method, params in {(j.method, repr(sorted(j.params.items()))): (j.method, j.params) for j in jobs}.values():
            try:
                problems += [f"{method}({_params_text(params)}): {p}"
                             for p in make_method(method, params).check_config()]
            except MethodError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    if not jobs:
        raise ConfigError("the plan has no fits: check --methods/--datasets against the config's [[runs]]")
    # the same fit planned twice (overlapping [[runs]] grids) runs once
    jobs = list({(j.dataset, j.method, repr(sorted(j.params.items())), j.seed): j for j in reversed(jobs)}.values())
    jobs.reverse()
    jobs.sort(key=lambda job: job.seed)  # every method's first seed before any second seed
    return Plan(jobs, {n: specs[n] for n in names}, search, cfg.get("out"))


def _params_text(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def select_shard(jobs: list[Job], shard: str | None) -> list[Job]:
    """Jobs of shard ``i/n`` (0-based i; round robin over the planned order, so shards are balanced and disjoint)."""
    if not shard:
        return jobs
    match = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n (0-based, e.g. 0/4 .. 3/4), got {shard!r}")
    i, n = int(match[1]), int(match[2])
    return jobs[i::n]


def check_out(path: str | Path, flag: str = "--out") -> list[str]:
    """Problems with writing into folder ``path``: it must not be a file, and it (or its nearest existing parent)
    must be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return [f"{flag}: {path} is a file; expected a folder (it is created if missing)"]
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return [f"{flag}: {probe} is a file, so {path} cannot be created"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"{flag}: {probe} is not writable"]
    return []


def check_results_dir(path: str | Path, flag: str) -> list[str]:
    """``path`` must be an existing folder holding a ``results.jsonl``."""
    path = Path(path)
    if not path.is_dir():
        return [f"{flag}: {path} does not exist" if not path.exists() else f"{flag}: {path} is not a folder"]
    if not (path / "results.jsonl").is_file():
        return [f"{flag}: {path} holds no results.jsonl"]
    return []

