"""``run_benchmark.py``: plan a grid of fits (datasets x methods x params x seeds), run it, write the report.

Exit status: 0 when every planned fit succeeded; 1 when any fit failed (a summary of the failures is printed, the
records keep them); 2 for bad input (one line per problem, before any work); 130 after Ctrl-C (what completed and
the command that resumes are printed).
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmark.config import (ConfigError, check_out, check_results_dir, plan, select_shard)
from benchmark.data import DatasetError
from benchmark.harness import SearchSettings
from benchmark.provenance import set_threads
from benchmark.registry import MethodError, describe_methods
from benchmark.records import RecordError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "latest"
SUMMARY_LINES = 20  # failed fits listed on exit (the rest are counted; every one is in results.jsonl)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", help="comma-separated: synthetic, synthetic:quick, beir/<name>, beir:<path>, "
                                      "msmarco, npy:<dir> (default: synthetic)")
    p.add_argument("--dataset-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a loader option for every selected dataset (repeatable): split=dev, drop_unknown_qrels=true, "
                        "dev_queries=2000, dev_seed=0, model=<sentence-transformers name>, ... (a config sets them "
                        "under [datasets.<alias>])")
    p.add_argument("--methods", help="comma-separated registered method names (default: all; see --list-methods)")
    p.add_argument("--config", help="TOML grid file (datasets x methods x params x seeds); see configs/")
    p.add_argument("--seeds", help="number of seeds N >= 1 (seeds 0..N-1); default 1")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a build-time param for every selected method that declares it (repeatable)")
    p.add_argument("--nprobes", help="comma-separated nprobe sweep, integers >= 1 (default: powers of two up to "
                                     "nlist)")
    p.add_argument("--out", help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run, seconds: synthetic:quick (4k docs), nlist=32, opq_niter=5, epochs=0.5 where "
                        "a method declares them, 50 timed queries")
    p.add_argument("--save-index", action="store_true", help="write each trained index as a .faiss file")
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads for training and batch search")
    p.add_argument("--device", default="cpu",
                   help="torch device for training (cpu, cuda, cuda:N); with cuda, faiss-GPU mines when installed")
    p.add_argument("--executor", default="serial",
                   help="where the fits run: serial (this process, default) or ray (one Ray task per fit; "
                        "pip install -e '.[ray]'); this process writes every record either way")
    p.add_argument("--ray-address", help="address of a running Ray cluster (with --executor ray; default: a local "
                                         "Ray on this machine)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N, 0-based: 0/4, 1/4, 2/4, 3/4 cover a grid "
                                                  "(round robin); merge the shard folders with --merge")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR", help="merge shard folders into --out, then report")
    p.add_argument("--no-resume", action="store_true", help="re-run fits already recorded in --out")
    p.add_argument("--report-only", metavar="DIR", help="rebuild the report of DIR from its results.jsonl")
    p.add_argument("--list-methods", action="store_true", help="each method's description and typed params")
    p.add_argument("--list-datasets", action="store_true")
    return p.parse_args(argv)


def list_datasets() -> str:
    """``--list-datasets``: every name form of the loader table, then every catalog dataset with its source (URL host
    or local), size and whether it is in the data cache (where the loader looks: ``$VQBENCH_DATA_DIR`` or
    ``datasets/cache``, then ``beir/<name>``)."""
    from benchmark.data import LOADERS
    from benchmark.data.catalog import CATALOG_PATH, catalog_table
    from benchmark.data.encode import cache_root
    lines = ["dataset names (--datasets):"]
    for entry in LOADERS:
        rows = entry.rows()
        desc = rows[0][1] if len(rows) == 1 else f"one of the {len(rows)} catalog datasets below"
        lines.append(f"  {entry.form:22s} {desc}")
    cache = cache_root() / "beir"
    table = [("name", "source", "size", "cached"), *catalog_table(cache)]
    width = [max(len(row[i]) for row in table) for i in range(3)]
    lines += ["", f"catalog {CATALOG_PATH} (cache: {cache}):"]
    lines += [f"  {n:{width[0]}s}  {s:{width[1]}s}  {z:{width[2]}s}  {c}" for n, s, z, c in table]
    lines.append(f"(downloaded into {cache}/<name>/ on first use; source 'local': not public, build it as the "
                 f"catalog's 'obtain' says and put it there)")
    return "\n".join(lines)


def _report(out: Path) -> None:
    from benchmark.report import build_report
    paths = build_report(out)
    print(f"report: {paths.get('leaderboard.md', out / 'leaderboard.md')}")


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run (``--no-resume`` dropped: it would start over)."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("run_benchmark.py") else "run_benchmark.py"
    return shlex.join([Path(sys.executable).name if "python" in Path(sys.executable).name else sys.executable,
                       script, *[a for a in argv if a != "--no-resume"]])


def _failure_summary(failed: list[tuple[str, str]], results: Path) -> str:
    lines = [f"{len(failed)} fit(s) failed (errors recorded in {results}):"]
    for label, error in failed[:SUMMARY_LINES]:
        lines.append(f"  {label}: {error.splitlines()[0][:160] if error else '?'}")
    if len(failed) > SUMMARY_LINES:
        lines.append(f"  ... and {len(failed) - SUMMARY_LINES} more")
    return "\n".join(lines)


def _sigterm(signum, frame):  # a scheduler's preemption: stop like Ctrl-C (the current fit is not recorded)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        if args.list_methods:
            print(describe_methods())
            return 0
        if args.list_datasets:
            print(list_datasets())
            return 0
        if args.report_only:
            problems = check_results_dir(args.report_only, "--report-only")
            if problems:
                raise ConfigError(problems)
            _report(Path(args.report_only))
            return 0
        if args.merge:
            return _merge(args)
        return _run(args, argv)
    except (ConfigError, MethodError, DatasetError, RecordError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


def _merge(args: argparse.Namespace) -> int:
    from benchmark.records import merge_results
    out = Path(args.out) if args.out else DEFAULT_OUT
    problems = [p for d in args.merge for p in check_results_dir(d, "--merge")] + check_out(out)
    if problems:
        raise ConfigError(problems)
    n = merge_results([Path(d) / "results.jsonl" for d in args.merge], out / "results.jsonl")
    print(f"merged {n} records from {len(args.merge)} shard(s) into {out / 'results.jsonl'}")
    _report(out)
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmark.runner import Runner

    check_device(args.device)
    problems = [] if args.threads >= 0 else [f"--threads: expected an integer >= 0, got {args.threads}"]
    try:
        planned = plan(datasets=args.datasets, methods=args.methods, config=args.config, seeds=args.seeds,
                       params=args.param, nprobes=args.nprobes, quick=args.quick,
                       dataset_opts=args.dataset_opt)
    except ConfigError as exc:
        problems += exc.problems
        planned = None
    out = Path(args.out) if args.out else Path(planned.out) if planned and planned.out else DEFAULT_OUT
    problems += check_out(out)
    try:
        jobs = select_shard(planned.jobs if planned else [], args.shard)
    except ConfigError as exc:
        problems += exc.problems
    executor = None
    if args.executor != "serial" or args.ray_address:
        from benchmark.executor import make_executor  # the Ray layer only when asked for
        try:
            executor = make_executor(args.executor, args.ray_address,
                                     specs=planned.datasets if planned else None)
        except ConfigError as exc:
            problems += exc.problems
    if problems or planned is None:
        raise ConfigError(problems)
    set_threads(args.threads)
    runner = Runner(out, SearchSettings(**planned.search), save_index=args.save_index, device=args.device,
                    datasets=planned.datasets, resume=not args.no_resume, threads=args.threads, executor=executor)
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        runner.run(jobs)
    except KeyboardInterrupt:
        s = runner.summary
        print(f"\ninterrupted: {len(s.completed)} fit(s) completed and recorded this run, {len(s.skipped)} were "
              f"already complete, {len(s.failed)} failed, {s.remaining} not run (of {s.planned}); the fit in "
              f"progress was not recorded.\nresume with: {resume_command(argv)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if executor is not None:
            executor.close()
    s = runner.summary
    print(f"{len(jobs)} fit(s) in {time.perf_counter() - t0:.1f} s ({len(s.completed)} run, {len(s.skipped)} "
          f"already recorded, {len(s.failed)} failed); records: {runner.results}")
    _report(out)
    if s.failed:
        print(_failure_summary(s.failed, runner.results), file=sys.stderr)
        return 1
    return 0


def check_device(name: str) -> None:
    """``--device`` must name a usable torch device before any work starts."""
    from benchmark.vq.torch_vq import torch_device
    try:
        torch_device(name)
    except ValueError as exc:
        raise ConfigError(f"--device: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
