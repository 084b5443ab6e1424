"""The scale report (issue #29): ``bench/scale.py`` results -> per-stage tables, a growth table and a growth plot.

Reads the finished ``result-<method>.json`` of every size folder under one or more ``--workdir`` of
``bench/scale.py`` (or its ``--json`` files), and writes into ``--out``:

* ``STAGES.md``   one table per (size, method): every stage's wall and CPU seconds, peak anonymous / file-backed RSS,
                  the ``--dry-run`` model's estimate for the same shape and measured / estimated; then the growth
                  table (wall seconds per stage and size) with the fitted exponent b of ``seconds ~ a * n^b``
* ``growth.png``  wall seconds per stage vs docs (log-log), one panel per method, and peak anonymous / file RSS
* ``runs/``       the result JSONs it was built from (provenance: args, threads, CPU, load, estimate rates)
* with ``--dry-run CONFIG`` (e.g. configs/msmarco.toml, whose ``npy:`` folder is ``${VQBENCH_MSMARCO}``): the largest
  size's synthetic written in the ``npy:`` layout (its corpus a symlink to the generated ``docs.npy``, its 100k train
  and 6,980 eval queries as ``qrels/train.tsv`` and ``qrels/dev.tsv``), that config's own ``--dry-run`` text run on
  it (``dry-run.txt``) and, in ``STAGES.md``, each stage's estimate by the config's model against what was measured

Every number comes from the result files; rerun it after a resumed run to regenerate the report.

Usage: python bench/scale_report.py --workdir /work/scale-paper [--workdir ...] --out reports/scale/paper
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 1024.0
SHARED_STAGES = ("generate", "init", "exact")   # done once per size by its first method; cached for the others
GiB = 1024.0 ** 3
TABLE_STAGES = ("generate", "init", "mining", "teacher_pass", "train", "fit", "build", "exact", "eval")
PLOT_STAGES = ("init", "mining", "teacher_pass", "train", "build", "exact", "eval", "total")
STAGE_TEXT = {"generate": "generate the corpus (once per size)", "init": "faiss init (OPQ, IVF lists, PQ; in fit)",
              "mining": "teacher top-K / negative pool (in fit)",
              "teacher_pass": "teacher scores, one read of the corpus (in fit)", "train": "training loop (in fit)",
              "fit": "fit (init + mining + training + glue)", "build": "index build (write-back)",
              "exact": "exact reference top-k of the eval queries", "eval": "evaluation (search + latency passes)"}


def _scale_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_results(paths: list[Path]) -> list[dict]:
    """Finished results from size folders (``n*/result-*.json``) or results JSON files, one per (n, method): a later
    path wins. Failed runs are kept out (they have no stages)."""
    found: dict[tuple[int, str], dict] = {}
    for path in paths:
        if path.is_dir():
            docs = [json.loads(f.read_text()) for f in sorted(path.glob("n*/result-*.json"))]
        elif path.is_file():
            doc = json.loads(path.read_text())
            docs = doc.get("results", [doc]) if isinstance(doc, dict) else doc
        else:
            raise SystemExit(f"scale_report: {path} is neither a bench/scale.py workdir nor a results JSON file")
        for r in docs:
            if r.get("status", "ok") == "ok" and r.get("stages"):
                found[(int(r["n"]), str(r["method"]))] = r
    if not found:
        raise SystemExit("scale_report: no finished results (n*/result-*.json) under " + ", ".join(map(str, paths)))
    return [found[k] for k in sorted(found)]


def _f(x: float | None, spec: str = ",.1f") -> str:
    return "—" if x is None else format(x, spec)


def stage_table(r: dict) -> list[str]:
    """One markdown table for one (size, method): a row per stage."""
    est = (r.get("estimate") or {}).get("seconds", {})
    m = r.get("metrics", {})
    fid = r.get("fidelity", {})
    teacher = r.get("teacher_info") or {}
    head = (f"### n = {r['n']:,} · {r['method']} · `{r.get('factory', '—')}` · nprobe {r.get('nprobe') or '—'}\n\n"
            f"{r['train_queries']:,} train / {r['test_queries']:,} eval queries, K = {r['K']}, teacher "
            f"{r.get('teacher', 'exact')}"
            + (f" (recall@K {teacher['recall_at_k']:.3f})" if teacher.get("recall_at_k") is not None else "")
            + f", threads {r['threads']}, {r.get('cpu', '?')}; nDCG@10 {_f(m.get('nDCG@10'), '.4f')}, "
            f"overlap@10 with exact {_f(fid.get('overlap@10'), '.3f')}; peak RSS of the process (ru_maxrss) "
            f"{r['child_maxrss_mb'] / MiB:.2f} GiB; docs {r['docs_bytes'] / GiB:.1f} GiB on disk, the size's folder "
            f"{r.get('disk_bytes', 0) / GiB:.1f} GiB")
    lines = [head, "", "| stage | wall s | CPU s | peak anon GiB | peak file GiB | 1-min load | dry-run est. s "
                       "| measured / est. |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for name in TABLE_STAGES:
        s = r["stages"].get(name)
        if s is None:
            continue
        mark = " \\*" if s.get("cached") else ""
        load = s.get("loadavg")
        anon, file = s.get("peak_anon_mb"), s.get("peak_file_mb")
        ratio = s["seconds"] / est[name] if est.get(name) else None
        lines.append(f"| {STAGE_TEXT[name]}{mark} | {_f(s['seconds'])} | {_f(s.get('cpu_seconds'))} | "
                     f"{_f(None if anon is None else anon / MiB, '.2f')} | "
                     f"{_f(None if file is None else file / MiB, '.2f')} | "
                     f"{'—' if not load else f'{load[0]:.1f}→{load[1]:.1f}'} | {_f(est.get(name))} | "
                     f"{_f(ratio, '.2f')} |")
    if any(s.get("cached") for s in r["stages"].values()):
        lines.append("")
        lines.append("\\* done once for the size by an earlier method (or run) and read from its cache here: the "
                     "time it took then.")
    return lines


def growth_table(results: list[dict], scale) -> list[str]:
    """Wall seconds per stage and size, per method, with the fitted growth exponent."""
    lines = []
    for method in sorted({r["method"] for r in results}):
        mine = [r for r in results if r["method"] == method]
        exps = scale.exponents(mine)
        lines += [f"#### {method}", "",
                  "| stage | " + " | ".join(f"n = {r['n']:,}" for r in mine) + " | b (wall) |",
                  "|---|" + "---:|" * (len(mine) + 1)]
        for name in TABLE_STAGES + ("total",):
            vals = [scale._stage_value(r, name, "seconds") for r in mine]
            if all(v is None for v in vals):
                continue
            lines.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + f" | {_f(exps.get(name), '.2f')} |")
        lines.append("| peak anon GiB | " + " | ".join(_f(_peak(r, 'peak_anon_mb'), '.2f') for r in mine) + " | |")
        lines.append("| peak file GiB | " + " | ".join(_f(_peak(r, 'peak_file_mb'), '.2f') for r in mine) + " | |")
        lines.append("")
    return lines


def _peak(r: dict, key: str) -> float | None:
    vals = [s.get(key) for s in r["stages"].values() if s.get(key) is not None]
    return max(vals) / MiB if vals else None


def growth_plot(results: list[dict], out: Path, scale) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from benchmark._io import atomic_path
    methods = sorted({r["method"] for r in results})
    fig = Figure(figsize=(4.4 * (len(methods) + 1), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(methods) + 1, squeeze=False)[0]
    colours = dict(zip(PLOT_STAGES, ("#0072B2", "#D55E00", "#999999", "#CC79A7", "#E69F00", "#56B4E9", "#009E73",
                                     "#000000")))
    for ax, method in zip(axes, methods):
        mine = [r for r in results if r["method"] == method]
        ns = [r["n"] for r in mine]
        for name in PLOT_STAGES:
            pts = [(n, v) for n, v in zip(ns, (scale._stage_value(r, name, "seconds") for r in mine))
                   if v is not None and v > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colours[name], lw=2.2 if name == "total" else 1.4,
                        label=name)
        ax.set(xscale="log", yscale="log", title=method, xlabel="docs", ylabel="wall seconds (2 cores)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    ax = axes[-1]
    for i, method in enumerate(methods):
        mine = [r for r in results if r["method"] == method]
        style = dict(marker=("o", "s", "^", "D")[i % 4], color=("#0072B2", "#D55E00", "#CC79A7", "#009E73")[i % 4])
        ax.plot([r["n"] for r in mine], [_peak(r, "peak_anon_mb") for r in mine], ls="-", label=f"{method} anon",
                **style)
        ax.plot([r["n"] for r in mine], [_peak(r, "peak_file_mb") for r in mine], ls=":", label=f"{method} file",
                mfc="none", **style)
    ax.axhline(8, color="grey", ls="--", lw=1)
    ax.text(min(r["n"] for r in results), 8, " 8 GiB anon budget", va="bottom",
            fontsize=8, color="grey")
    ax.set(xscale="log", title="peak RSS per process", xlabel="docs", ylabel="GiB")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")


def npy_layout(size_dir: Path, out: Path) -> Path:
    """A scale size folder in the ``npy:`` layout (benchmark/data/npy.py): ``corpus.npy`` a symlink to its docs,
    the train and eval queries in ``queries.npy`` with their qrels as ``qrels/train.tsv`` and ``qrels/dev.tsv``."""
    import pickle

    import numpy as np
    ds = pickle.loads((size_dir / "splits.pkl").read_bytes())
    n = np.load(size_dir / "docs.npy", mmap_mode="r").shape[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    corpus = out / "corpus.npy"
    corpus.unlink(missing_ok=True)
    corpus.symlink_to((size_dir / "docs.npy").resolve())
    (out / "corpus_ids.txt").write_text("".join(f"{i}\n" for i in (ds.doc_ids or range(n))))
    splits = [("train", ds.splits["train"]), ("dev", ds.splits[ds.eval_split])]
    np.save(out / "queries.npy", np.concatenate([s.query_emb for _, s in splits]).astype(np.float32))
    (out / "queries_ids.txt").write_text("".join(f"{q}\n" for _, s in splits for q in s.query_ids))
    for name, split in splits:
        (out / "qrels" / f"{name}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{rel}\n" for q, docs in split.qrels.items() for d, rel in docs.items()))
    return out


def dry_run_check(config: Path, size_dir: Path, measured: dict[str, dict], out: Path, scale) -> list[str]:
    """``run_benchmark.py --config CONFIG --dry-run`` on the synthetic in the npy: layout (its text saved as
    ``dry-run.txt``) and a table of the config's per-stage estimates, by the same model (fit_stages) at this
    machine's rates, against the stages measured on that size (``measured``: its results by method). The evaluation
    is estimated at the measured run's nprobe (the config sweeps five)."""
    import os

    from benchmark.config import plan
    from benchmark.data.encode import cache_root
    from benchmark.estimate import STEP_SECONDS, dataset_facts, dry_run, fit_stages, measure_machine
    from benchmark.registry import make_method
    layout = npy_layout(size_dir, size_dir.parent / f"npy-{size_dir.name}")
    before = os.environ.get("VQBENCH_MSMARCO")
    os.environ["VQBENCH_MSMARCO"] = str(layout)      # the config's npy: folder (configs/msmarco.toml)
    try:
        planned = plan(config=str(config))
    finally:
        if before is None:
            del os.environ["VQBENCH_MSMARCO"]
        else:
            os.environ["VQBENCH_MSMARCO"] = before
    text = dry_run(planned, REPO / planned.out)
    (out / "dry-run.txt").write_text(f"$ VQBENCH_MSMARCO={layout} python run_benchmark.py --config {config} "
                                     f"--dry-run\n{text}\n")
    rates = measure_machine(cache_root()).rates()
    lines = [f"## The `--dry-run` of {config} against the measured {next(iter(measured.values()))['n']:,}-doc run", "",
             "The config's own dry-run on this synthetic in the `npy:` layout: [dry-run.txt](dry-run.txt). Below, "
             "its model's estimate per stage (the same `fit_stages`, this machine's rates measured now, idle) "
             "against the measured stage; a stage a method read from an earlier method's cache counts where it "
             "ran. Issue #29 asks for a factor of 2 at most.", "",
             "| method | stage | dry-run est. s | measured s | measured / est. |", "|---|---|---:|---:|---:|"]
    seen: set[tuple] = set()
    for alias, (loader, options) in planned.datasets.items():
        facts = dataset_facts(loader, options)
        teacher = options.get("teacher") and {"kind": options.get("teacher"), "nlist": options.get("teacher_nlist", 0),
                                              "nprobe": options.get("teacher_nprobe", 0)}
        for job in planned.jobs:
            r = measured.get(job.method)
            if job.dataset != alias or r is None or int(job.params.get("M", 0)) != int(r["params"]["M"]) \
                    or (job.method, job.params.get("M")) in seen:
                continue
            seen.add((job.method, job.params.get("M")))
            method = make_method(job.method, job.params)
            est: dict[str, float] = {}
            for st in fit_stages(method, facts, [r["nprobe"]] if r.get("nprobe") else [], teacher=teacher):
                key = next(v for k, v in scale.ESTIMATE_STAGES.items() if st.name.startswith(k))
                est[key] = est.get(key, 0.0) + st.seconds(rates, STEP_SECONDS)
            for name in ("init", "mining", "teacher_pass", "train", "build", "exact", "eval"):
                s = r["stages"].get(name)
                if s is None or name not in est or s.get("cached") and name in SHARED_STAGES:
                    continue
                what, value = STAGE_TEXT[name], est[name]
                if name == "train":   # the config's epochs against the measured run's: compared per epoch
                    planned, ran = float(method.config.get("epochs") or 1), float(r["train_info"].get("epochs") or 1)
                    if planned != ran:
                        what, value = f"{what}, the estimate's {planned:g} epochs scaled to the run's {ran:g}", \
                            value * ran / planned
                ratio = s["seconds"] / value if value > 1 else None
                lines.append(f"| {job.method} | {what} | {value:,.1f} | {s['seconds']:,.1f} | {_f(ratio, '.2f')} |")
    return lines + [""]


def write_report(paths: list[Path], out: Path, dry_run_config: Path | None = None) -> Path:
    scale = _scale_module()
    results = load_results(paths)
    biggest = max(r["n"] for r in results)
    size_dirs = [p / f"n{biggest}" for p in paths if (p / f"n{biggest}" / "splits.pkl").is_file()]
    if dry_run_config is not None and not size_dirs:       # checked before any work
        raise SystemExit(f"scale_report: --dry-run needs the n{biggest} folder (docs.npy, splits.pkl) in a --workdir")
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    for r in results:
        (runs / f"n{r['n']}-{r['method']}.json").write_text(json.dumps(r, indent=1, default=str))
    growth_plot(results, out / "growth.png", scale)
    lines = ["# Scale: per-stage measurements", "",
             "Generated by `python bench/scale_report.py` from the `bench/scale.py` results in [runs/](runs/) "
             "(each carries its args, threads, CPU, load and the dry-run model's rates). Wall and CPU seconds per "
             "stage; peak RSS sampled per stage from /proc/self/status: *anon* is heap (numpy, faiss, torch), *file* "
             "the memory-mapped corpus pages resident in the process (reclaimable).", "",
             "![growth](growth.png)", "", "## Growth with the number of docs", ""]
    lines += growth_table(results, scale)
    if dry_run_config is not None:
        lines += dry_run_check(dry_run_config, size_dirs[0], {r["method"]: r for r in results if r["n"] == biggest},
                               out, scale)
    lines += ["## Per size and method", ""]
    for r in results:
        lines += stage_table(r) + [""]
    from benchmark._io import atomic_path
    with atomic_path(out / "STAGES.md") as tmp:
        Path(tmp).write_text("\n".join(lines))
    return out / "STAGES.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", action="append", required=True, type=Path,
                    help="a bench/scale.py --workdir (its n*/result-*.json) or a results JSON; repeatable")
    ap.add_argument("--out", type=Path, help="report folder (STAGES.md, growth.png, runs/)")
    ap.add_argument("--layout", type=int, default=None, metavar="N",
                    help="only write the size of N docs of the (first) --workdir in the npy: layout, as "
                         "<workdir>/npy-n<N> (e.g. for configs/msmarco-jpq-dev.toml), and stop")
    ap.add_argument("--dry-run", type=Path, default=None, metavar="CONFIG",
                    help="also check CONFIG's --dry-run (its npy: folder is ${VQBENCH_MSMARCO}) against the largest "
                         "size, written in the npy: layout beside it")
    args = ap.parse_args(argv)
    if args.layout is not None:
        size_dir = args.workdir[0] / f"n{args.layout}"
        if not (size_dir / "splits.pkl").is_file():
            ap.error(f"--layout {args.layout}: {size_dir} holds no generated size (splits.pkl); run bench/scale.py "
                     f"--sizes {args.layout} --resume --keep-docs --workdir {args.workdir[0]} first")
        print(npy_layout(size_dir, args.workdir[0] / f"npy-n{args.layout}"))
        return
    if args.out is None:
        ap.error("--out is required (unless --layout)")
    print(write_report(args.workdir, args.out, args.dry_run))


if __name__ == "__main__":
    main()
