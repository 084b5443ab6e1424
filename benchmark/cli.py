"""``run_benchmark.py``: plan a grid of fits (datasets x methods x params x seeds), run it, write the report.

Exit status: 0 when every planned fit succeeded; 1 when any fit failed (a summary of the failures is printed, the
records keep them); 2 for bad input (one line per problem, before any work), which includes an output folder that
another run is writing (its lock, ``<out>/.vqbench.lock``, is held: :mod:`benchmark.lock`) and a ``results.jsonl``
with unreadable lines (each printed as ``file:line: reason``; ``--repair`` moves them aside); 3 when writing the
results failed in the environment (disk full, quota, I/O error, read-only filesystem: one line naming the file; the
records file is left as it was before the fit being written, so the same command resumes once there is room); 130
after Ctrl-C or SIGTERM (what completed and the command that resumes are printed).
"""
from __future__ import annotations

import argparse
import errno
import functools
import shlex
import signal
import sys
import time
from pathlib import Path

from benchmark.config import (ConfigError, check_out, check_results_dir, close, plan, select_shard)
from benchmark.data import DatasetError
from benchmark.harness import SearchSettings
from benchmark.lock import check_unlocked, folder_lock, holder
from benchmark.provenance import set_threads
from benchmark.registry import MethodError, describe_methods
from benchmark.records import REJECTED_NAME, RecordError, RecordWriteError, read_records, repair_records

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "latest"
SUMMARY_LINES = 20  # failed fits listed on exit (the rest are counted; every one is in results.jsonl)
# an OSError with one of these while writing the results is the environment's (exit 3), not the input's
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


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
                        "a method declares them, 50 timed queries in 2 repetitions")
    p.add_argument("--save-index", action="store_true", help="write each trained index as a .faiss file")
    p.add_argument("--dry-run", action="store_true",
                   help="check the grid and print the plan with each stage's estimated time (this machine and a "
                        "GPU), memory and disk, from the datasets' sizes (headers, line counts, the catalog): no data "
                        "is loaded, nothing trained or written")
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
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="with --merge and --config (repeatable): take the merged folders' records of dataset OLD as "
                        "the config's dataset NEW (the same data and encoder under another alias: ids recomputed, "
                        "provenance.merged_from kept), and only the fits the config plans")
    p.add_argument("--no-resume", action="store_true", help="re-run fits already recorded in --out")
    p.add_argument("--report-only", metavar="DIR", help="rebuild the report of DIR from its results.jsonl (a folder "
                                                         "another run is writing is read as it is, with a note)")
    p.add_argument("--retime", metavar="DIR",
                   help="time every fit of DIR again without retraining, from its saved indexes (--save-index), in "
                        "one pass of the timing protocol; only the latency fields change (the old ones are kept in "
                        "latency_history), then the report is rebuilt. With --config, its datasets and [search] "
                        "settings are used; run it on an idle machine")
    p.add_argument("--refit-missing", nargs="?", const="all", choices=("all", "marked"),
                   help="with --retime: first fit again every fit of DIR that has no saved index (its dataset, "
                        "method, params and seed; use the run's --threads) and keep the new index only when the "
                        "refit reproduces the record's metrics exactly; then re-time them with the others. 'marked': "
                        "only the fits whose latency was timed under load or before the timing protocol")
    p.add_argument("--repair", action="store_true",
                   help=f"move the unreadable lines of results.jsonl (torn, not JSON, not the record schema) to "
                        f"{REJECTED_NAME} beside it (appended, each with its line number, reason and text) and "
                        f"rewrite results.jsonl with the good lines. Alone (with --out) it repairs and exits; with "
                        f"other options it repairs the folder, then does what the command without --repair does "
                        f"(a run, --merge, --report-only). A run refuses a results file with unreadable lines "
                        f"(exit 2) until it is repaired")
    p.add_argument("--stamp-encoders", metavar="DIR",
                   help="with --config: name the encoder in DIR's records written without one (npy: datasets before "
                        "their config declared encoder = ...), from the config's dataset declarations; metrics and "
                        "ids stay, provenance.encoder_stamped says so; then the report is rebuilt")
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


def _script() -> str:
    return sys.argv[0] if sys.argv and sys.argv[0].endswith("run_benchmark.py") else "run_benchmark.py"


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run (``--no-resume`` dropped: it would start over)."""
    return shlex.join([Path(sys.executable).name if "python" in Path(sys.executable).name else sys.executable,
                       _script(), *[a for a in argv if a != "--no-resume"]])


def _command(argv: list[str]) -> str:
    """This command, as the folder lock records it (shown to a run the lock refuses)."""
    return shlex.join([_script(), *argv])


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
            return _report_only(args, argv)
        if args.refit_missing and not args.retime:
            raise ConfigError("--refit-missing: only with --retime DIR (it saves the indexes a re-time needs)")
        if args.retime:
            return _retime(args, argv)
        if args.rename and not args.merge:
            raise ConfigError("--rename: only with --merge (it renames the datasets of the merged folders)")
        if args.merge:
            return _merge(args, argv)
        if args.stamp_encoders:
            return _stamp_encoders(args, argv)
        if args.repair and not _runs_a_grid(args):
            return _repair_only(args, argv)
        return _run(args, argv)
    except (ConfigError, MethodError, DatasetError, RecordError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the fits (the run's own handler reports those): planning, lock, report
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if not isinstance(exc, RecordWriteError) and exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {_environment_error(exc)}", file=sys.stderr)
        if not (args.report_only or args.merge or args.retime or args.stamp_encoders
                or args.repair and not _runs_a_grid(args)):
            print(f"resume with: {resume_command(argv)}", file=sys.stderr)
        return 3


def _environment_error(exc: OSError) -> str:
    """One line for a write the environment refused: what, where, why (with the errno's name)."""
    code = f" [{errno.errorcode.get(exc.errno, exc.errno)}]" if exc.errno else ""
    if isinstance(exc, RecordWriteError):
        return f"{exc.strerror}{code}"
    where = f"cannot write {exc.filename}: " if exc.filename else "a write failed: "
    return f"{where}{exc.strerror or exc}{code}; results.jsonl holds whole fits only"


def _runs_a_grid(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a run (any option besides --out and --repair differs from its default):
    ``--repair --out DIR`` alone only repairs."""
    defaults = vars(parse_args([]))
    return any(value != defaults.get(key) for key, value in vars(args).items() if key not in ("out", "repair"))


def _records_problems(folder: Path, flag: str) -> list[str]:
    """``folder/results.jsonl``'s unreadable lines (``file:line: reason`` each) and what to do, or nothing."""
    results = folder / "results.jsonl"
    try:
        _, problems = read_records(results)
    except OSError as exc:
        return [f"{flag}: cannot read {results}: {exc.strerror or exc}"]
    if not problems:
        return []
    return problems + [f"{flag}: {results} has {len(problems)} unreadable line(s) (above); nothing was done. Move "
                       f"them to {REJECTED_NAME} with: {_script()} --repair --out {shlex.quote(str(folder))}"]


def _repair(folder: Path) -> None:
    """Repair ``folder/results.jsonl`` (the caller holds its lock) and print what moved."""
    results = folder / "results.jsonl"
    moved = repair_records(results)
    if not moved:
        print(f"repair: nothing to repair, every line of {results} is readable"
              if results.exists() else f"repair: nothing to repair, {folder} holds no results.jsonl")
        return
    print(f"repair: moved {len(moved)} unreadable line(s) from {results} to {results.with_name(REJECTED_NAME)}:")
    for line in moved:
        print(f"  {line}")


def _repair_only(args: argparse.Namespace, argv: list[str]) -> int:
    out = Path(args.out) if args.out else DEFAULT_OUT
    if not out.is_dir():
        raise ConfigError(f"--out: {out} does not exist; --repair needs the folder holding results.jsonl"
                          if not out.exists() else f"--out: {out} is a file; --repair needs a folder")
    problems = check_out(out)
    if problems:
        raise ConfigError(problems)
    with folder_lock(out, command=_command(argv)):
        _repair(out)
    return 0


def _report_only(args: argparse.Namespace, argv: list[str]) -> int:
    """Rebuild DIR's report. It takes no lock (reading is safe: appends are whole lines under the file's lock); a
    folder another run is writing gets a note, and that run's own report replaces this one when it ends."""
    folder = Path(args.report_only)
    problems = check_results_dir(folder, "--report-only")
    if problems:
        raise ConfigError(problems)
    if args.repair:
        with folder_lock(folder, command=_command(argv), flag="--report-only"):
            _repair(folder)
    problems = _records_problems(folder, "--report-only")
    if problems:
        raise ConfigError(problems)
    busy = holder(folder)
    if busy:
        print(f"note: {folder} is being written by {busy}: this report holds the records written so far",
              file=sys.stderr)
    _report(folder)
    return 0


def _retime(args: argparse.Namespace, argv: list[str]) -> int:
    """``--retime DIR``: re-time DIR's saved indexes (:mod:`benchmark.retime`) under DIR's lock, then report."""
    from benchmark.data import load_dataset
    from benchmark.retime import refit_missing, retime

    folder = Path(args.retime)
    problems = check_results_dir(folder, "--retime")
    problems += [] if problems else _records_problems(folder, "--retime")
    problems += [] if args.threads >= 0 else [f"--threads: expected an integer >= 0, got {args.threads}"]
    datasets, search = {}, {}
    if args.config:
        try:
            planned = plan(config=args.config)
            datasets, search = planned.datasets, planned.search
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    with folder_lock(folder, command=_command(argv), flag="--retime"):
        set_threads(args.threads)

        @functools.cache   # the refit and the re-time read the same datasets: load each once
        def load(alias: str):
            loader, kwargs = datasets.get(alias, (alias, {}))
            print(f"loading dataset {alias}" + (f" ({loader})" if loader != alias else ""))
            return load_dataset(loader, **kwargs)

        if args.refit_missing:
            refits = refit_missing(folder, load, SearchSettings(**search), threads=args.threads,
                                   only_marked=args.refit_missing == "marked")
            print(f"refitted {len(refits['saved'])} fit(s) without a saved index, their indexes saved")
            for line in refits["differs"]:
                print(f"  refit differs, index not used: {line}", file=sys.stderr)
        done = retime(folder, load, SearchSettings(**search))
        print(f"re-timed {len(done['retimed'])} fit(s) in {folder / 'results.jsonl'}")
        if done["missing"]:
            print(f"{len(done['missing'])} fit(s) have no saved index and keep their latency (re-run them with "
                  f"--save-index to make them re-timeable):", file=sys.stderr)
            for label in done["missing"][:SUMMARY_LINES]:
                print(f"  {label}", file=sys.stderr)
        _report(folder)
    return 0


def _merge(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmark.records import merge_results
    out = Path(args.out) if args.out else DEFAULT_OUT
    problems = [p for d in args.merge for p in check_results_dir(d, "--merge")] + check_out(out)
    rename, planned, problems = _renames(args, problems)
    if problems:
        raise ConfigError(problems)
    # a shard another run is still writing is refused; every unreadable line (shards and target) is listed
    shards = [Path(d) for d in args.merge if Path(d).resolve() != out.resolve()]
    problems = [p for d in shards for p in check_unlocked(d, "--merge") + _records_problems(d, "--merge")]
    if not args.repair:
        problems += _records_problems(out, "--out")
    if rename and not problems:
        problems += _rename_problems([Path(d) for d in args.merge], rename, planned)
    if problems:
        raise ConfigError(problems)
    with folder_lock(out, command=_command(argv)):
        if args.repair:
            _repair(out)
        n = merge_results([Path(d) / "results.jsonl" for d in args.merge], out / "results.jsonl",
                          rename=rename or None, only_fits=set(planned) if rename else None)
        what = f" (datasets {', '.join(f'{a} as {b}' for a, b in rename.items())})" if rename else ""
        print(f"merged {len(args.merge)} folder(s){what} into {out / 'results.jsonl'}: {n} records there")
        _report(out)
    return 0


def _renames(args: argparse.Namespace, problems: list[str]) -> tuple[dict[str, str], dict[str, dict], list[str]]:
    """``--rename OLD=NEW`` as {OLD: NEW}, the fits ``--config`` plans ({fit id: NEW's declared encoder or None}),
    and the problems found so far plus those of the options."""
    from benchmark.estimate import dataset_facts
    from benchmark.runner import declared_encoder, job_fit_id

    rename: dict[str, str] = {}
    for item in args.rename:
        old, eq, new = item.partition("=")
        if not (eq and old and new):
            problems.append(f"--rename {item!r}: expected OLD=NEW (dataset names), e.g. --rename "
                            f"debian-desc=debian-desc/minilm")
        else:
            rename[old] = new
    if not rename:
        return rename, {}, problems
    if not args.config:
        return rename, {}, problems + ["--rename: needs --config (the config that plans the renamed datasets' fits)"]
    try:
        planned = plan(config=args.config)
    except ConfigError as exc:
        return rename, {}, problems + exc.problems
    for old, new in rename.items():
        if new not in planned.datasets:
            problems.append(f"--rename {old}={new}: {args.config} has no dataset {new!r}"
                            f"{close(new, list(planned.datasets))}")
    if len(set(rename.values())) < len(rename):
        problems.append("--rename: two datasets renamed to one name")
    fits = {}
    for alias in set(rename.values()) & set(planned.datasets):
        loader, options = planned.datasets[alias]
        split = dataset_facts(loader, options).split
        encoder = declared_encoder(options)
        fits.update((job_fit_id(job, split), encoder) for job in planned.jobs if job.dataset == alias)
    return rename, fits, problems


def _rename_problems(folders: list[Path], rename: dict[str, str], planned: dict[str, dict]) -> list[str]:
    """A renamed dataset missing from every folder, or whose records name another encoder than the config declares
    for its new name (the same data under another alias is what --rename asserts)."""
    from benchmark.records import run_id
    seen, problems, told = set(), [], set()
    for folder in folders:
        for rec in read_records(folder / "results.jsonl")[0]:
            new = rename.get(rec["dataset"])
            if new is None:
                continue
            seen.add(rec["dataset"])
            fid = run_id(new, rec["split"], rec["method"], rec["params"], rec["seed"], "fit")
            declared, have = planned.get(fid), (rec.get("encoder") or {})
            if declared and have.get("model_id") != declared["model_id"] and (folder, new) not in told:
                told.add((folder, new))      # one line per folder and dataset
                problems.append(f"--rename {rec['dataset']}={new}: {folder / 'results.jsonl'} record "
                                f"{rec['run_id']} names encoder {have.get('model_id')!r}, the config declares "
                                f"{declared['model_id']!r} for {new!r}")
    problems += [f"--rename {old}={new}: no record of dataset {old!r} in {', '.join(map(str, folders))}"
                 for old, new in rename.items() if old not in seen]
    return problems


def _stamp_encoders(args: argparse.Namespace, argv: list[str]) -> int:
    """``--stamp-encoders DIR --config C``: name the encoder of DIR's records from C's datasets, under DIR's lock."""
    from benchmark.records import stamp_encoders
    from benchmark.runner import declared_encoder

    folder = Path(args.stamp_encoders)
    problems = check_results_dir(folder, "--stamp-encoders")
    problems += [] if problems else _records_problems(folder, "--stamp-encoders")
    encoders = {}
    if not args.config:
        problems.append("--stamp-encoders: needs --config (its [datasets.<alias>] declare each dataset's encoder)")
    else:
        try:
            encoders = {alias: enc for alias, (_, options) in plan(config=args.config).datasets.items()
                        if (enc := declared_encoder(options)) is not None}
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    with folder_lock(folder, command=_command(argv), flag="--stamp-encoders"):
        stamped = stamp_encoders(folder / "results.jsonl", encoders, source=_command(argv))
        for alias, n in sorted(stamped.items()):
            print(f"{alias}: {n} record(s) now name encoder {encoders[alias]['model_id']}")
        if not stamped:
            print(f"nothing to stamp: every record of {folder / 'results.jsonl'} of a dataset {args.config} declares "
                  f"an encoder for already names it")
        _report(folder)
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
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
    if not args.repair and not args.dry_run:
        problems += _records_problems(out, "--out")
    if problems or planned is None:
        raise ConfigError(problems)
    if args.dry_run:
        from benchmark.estimate import dry_run
        print(dry_run(planned, out, args.save_index))
        return 0
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        # one writer per folder: held from here to the end (report included), by this process only (a Ray
        # executor's workers return results; this process writes them)
        with folder_lock(out, command=_command(argv)):
            return _run_locked(args, argv, out, planned, jobs, executor)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if executor is not None:
            executor.close()


def _run_locked(args: argparse.Namespace, argv: list[str], out: Path, planned, jobs, executor) -> int:
    from benchmark.runner import Runner

    if args.repair:
        _repair(out)
    set_threads(args.threads)
    runner = Runner(out, SearchSettings(**planned.search), save_index=args.save_index, device=args.device,
                    datasets=planned.datasets, resume=not args.no_resume, threads=args.threads, executor=executor)
    t0 = time.perf_counter()
    try:
        runner.run(jobs)
    except KeyboardInterrupt:
        s = runner.summary
        print(f"\ninterrupted: {len(s.completed)} fit(s) completed and recorded this run, {len(s.skipped)} were "
              f"already complete, {len(s.failed)} failed, {s.remaining} not run (of {s.planned}); the fit in "
              f"progress was not recorded.\nresume with: {resume_command(argv)}", file=sys.stderr)
        return 130
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
