"""``run_benchmark.py``: plan a grid of jobs (datasets x methods x params x seeds), run it, write the report."""
from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from benchmark.data import DatasetError, check_dataset_name
from benchmark.harness import SearchSettings
from benchmark.registry import MethodError, available, get_method
from benchmark.runner import Job, Runner

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "latest"
QUICK_PARAMS = {"nlist": 32}          # --quick: small IVF for the tiny dataset (where a method declares it)
QUICK_SEARCH = {"latency_queries": 50, "warmup_queries": 5}


class ConfigError(ValueError):
    """A bad command line or config file: the message lists the valid choices."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__)
    p.add_argument("--datasets", help="comma-separated: synthetic, synthetic:quick, beir/<name>, beir:<path>, "
                                      "msmarco, npy:<dir> (default: synthetic)")
    p.add_argument("--methods", help="comma-separated registered method names (default: all)")
    p.add_argument("--config", help="TOML grid file (datasets x methods x params x seeds); see configs/")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1); default 1")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a build-time param for every method that declares it (repeatable)")
    p.add_argument("--nprobes", help="comma-separated nprobe sweep (default: powers of two up to nlist)")
    p.add_argument("--out", help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes (synthetic:quick, nlist=32): a smoke run")
    p.add_argument("--save-index", action="store_true", help="write each trained index as a .faiss file")
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads for training and batch search")
    p.add_argument("--device", default="cpu",
                   help="torch device for training (cpu, cuda, cuda:N); with cuda, faiss-GPU mines when installed")
    p.add_argument("--shard", help="run only shard i of n (0-based, e.g. 0/4); merge shards with --merge")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR", help="merge shard folders into --out, then report")
    p.add_argument("--no-resume", action="store_true", help="re-run fits already recorded in --out")
    p.add_argument("--report-only", metavar="DIR", help="rebuild the report of DIR from its results.jsonl")
    p.add_argument("--list-methods", action="store_true")
    p.add_argument("--list-datasets", action="store_true")
    return p.parse_args(argv)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell style) in a config string."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def _check_local_data(alias: str, name: str, hint: str | None) -> None:
    """A config dataset backed by local files must exist before any work starts."""
    for prefix in ("npy:", "beir:"):
        if name.startswith(prefix) and not Path(name[len(prefix):]).exists():
            raise ConfigError(f"dataset {alias!r}: {name[len(prefix):]} does not exist. {hint or ''}".strip())


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _param_grid(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product of list-valued params (scalars stay fixed)."""
    keys = sorted(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _check_methods(names: list[str]) -> None:
    valid = available()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; valid methods: {', '.join(valid)}")


def _method_params(method: str, params: dict[str, Any], strict: bool) -> dict[str, Any]:
    declared = get_method(method).params
    unknown = sorted(set(params) - set(declared))
    if unknown and strict:
        raise ConfigError(f"method {method!r}: unknown param(s) {unknown}; valid params: {sorted(declared)}")
    return {k: v for k, v in params.items() if k in declared}


def plan_from_args(args: argparse.Namespace
                   ) -> tuple[list[Job], dict[str, tuple[str, dict]], dict[str, Any], str | None]:
    """Jobs, dataset specs (alias -> (loader name, kwargs)), search settings and the config's ``out`` folder."""
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    datasets: dict[str, tuple[str, dict]] = {}
    for alias, spec in config.get("datasets", {}).items():
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{args.config}: [datasets.{alias}] needs a 'name' (a loader name like npy:<dir>)")
        name = expand_env(spec["name"])
        _check_local_data(alias, name, spec.get("hint"))
        datasets[alias] = (name, {k: v for k, v in spec.items() if k not in ("name", "hint")})
    names = _csv(args.datasets) or list(datasets) or (["synthetic:quick"] if args.quick else ["synthetic"])
    for n in names:
        datasets.setdefault(n, (n, {}))
    seeds_cfg = args.seeds if args.seeds is not None else config.get("seeds", 1)
    seeds = list(range(seeds_cfg)) if isinstance(seeds_cfg, int) else list(seeds_cfg)
    cli_params = dict(kv.split("=", 1) for kv in args.param)
    cli_params = {k: _parse_value(v) for k, v in cli_params.items()}
    groups = config.get("runs") or [{"methods": _csv(args.methods) or list(available()), "params": {}}]
    if args.methods and config.get("runs"):
        keep = set(_csv(args.methods))
        groups = [{**g, "methods": [m for m in g["methods"] if m in keep]} for g in groups]
    for n in names:
        check_dataset_name(datasets[n][0])
    jobs: list[Job] = []
    for group in groups:
        _check_methods(group["methods"])
        orphans = sorted(k for k in group.get("params", {})
                         if not any(k in get_method(m).params for m in group["methods"]))
        if orphans:
            raise ConfigError(f"{args.config}: params {orphans} are declared by none of {group['methods']}")
        for method in group["methods"]:
            grid = _param_grid(_method_params(method, group.get("params", {}), strict=False))
            for params in grid:
                params = {**(_method_params(method, QUICK_PARAMS, False) if args.quick else {}), **params,
                          **_method_params(method, cli_params, strict=False)}
                group_seeds = seeds[:group["seeds"]] if "seeds" in group else seeds
                for ds in names:
                    jobs += [Job(ds, method, params, seed) for seed in group_seeds]
    unknown_cli = sorted(k for k in cli_params if not any(k in get_method(j.method).params for j in jobs))
    if unknown_cli:
        raise ConfigError(f"--param {unknown_cli}: no selected method declares it")
    jobs.sort(key=lambda job: job.seed)  # every method's first seed before any second seed
    search = {**config.get("search", {}), **(QUICK_SEARCH if args.quick else {})}
    if args.nprobes:
        search["nprobes"] = [int(x) for x in _csv(args.nprobes)]
    return jobs, datasets, search, config.get("out")


def select_shard(jobs: list[Job], shard: str | None) -> list[Job]:
    """Jobs of shard ``i/n`` (round robin over the planned order, so shards are balanced and disjoint)."""
    if not shard:
        return jobs
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n, got {shard!r}") from None
    return jobs[i::n]


def list_methods() -> str:
    lines = []
    for name, cls in available().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        params = ", ".join(f"{k}={v!r}" for k, v in cls.params.items())
        lines.append(f"{name:24s} [{cls.family}] {doc}\n{'':24s} params: {params or '-'}")
    return "\n".join(lines)


def list_datasets() -> str:
    try:
        from benchmark.data.beir import list_datasets as beir_list
        return "\n".join(f"{name:28s} {desc}" for name, desc in beir_list())
    except ImportError:
        return "synthetic\nsynthetic:quick\nnpy:<dir>\nbeir/<name>\nmsmarco"


def _report(out: Path) -> None:
    from benchmark.report import build_report
    paths = build_report(out)
    print(f"report: {paths.get('leaderboard.md', out / 'leaderboard.md')}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list_methods:
            print(list_methods())
            return 0
        if args.list_datasets:
            print(list_datasets())
            return 0
        if args.report_only:
            _report(Path(args.report_only))
            return 0
        out = Path(args.out) if args.out else DEFAULT_OUT
        if args.merge:
            from benchmark.records import merge_results
            n = merge_results([Path(d) / "results.jsonl" for d in args.merge], out / "results.jsonl")
            print(f"merged {n} records from {len(args.merge)} shard(s) into {out / 'results.jsonl'}")
            _report(out)
            return 0
        check_device(args.device)
        jobs, datasets, search, config_out = plan_from_args(args)
        out = Path(args.out) if args.out else Path(config_out) if config_out else DEFAULT_OUT
        jobs = select_shard(jobs, args.shard)
        _configure_threads(args.threads)
        runner = Runner(out, SearchSettings(**search), save_index=args.save_index, device=args.device,
                        datasets=datasets, resume=not args.no_resume)
        t0 = time.perf_counter()
        runner.run(jobs)
        print(f"{len(jobs)} fit(s) in {time.perf_counter() - t0:.1f} s; records: {runner.results}")
        _report(out)
        return 0
    except (ConfigError, MethodError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check_device(name: str) -> None:
    """``--device`` must name a usable torch device before any work starts."""
    from benchmark.vq.torch_vq import torch_device
    try:
        torch_device(name)
    except ValueError as exc:
        raise ConfigError(f"--device: {exc}") from exc


def _configure_threads(threads: int) -> None:
    if threads > 0:
        import faiss
        import torch
        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
