"""Reports from a small generated results.jsonl: 2 datasets, flat + PQ/OPQ/IVF-OPQ baselines, jpq, distill-vq (M sweep,
loss/candidates ablation, label fractions), 2 seeds, failed records, a torn line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.records import FIDELITY, MEASURES, append_record, run_id
from benchmark.report import build_report
from benchmark.report.stats import paired_test, seed_mean

REPO = Path(__file__).resolve().parents[1]
QIDS = [f"q{i:02d}" for i in range(40)]
SEEDS = (0, 1)
NPROBES = {1: (-0.08, 0.2), 4: (-0.02, 0.5), 16: (0.0, 1.5)}  # nprobe: (quality offset, p50 ms)
DISTILL = {"M": 16, "nlist": 64, "loss": "listnet", "candidates": "ib+topk", "label_fraction": 1.0}
IVFOPQ = {"M": 16, "nlist": 64}
DISTILL_LABEL = "distill-vq (M=16, candidates=ib+topk, label_fraction=1, loss=listnet)"
PROVENANCE = {"git_sha": "0123456789abcdef", "cpu": "fixture", "threads": {"faiss": 1}, "timestamp": "2024-01-01",
              "versions": {"torch": "2.1", "faiss": "1.8", "ir_measures": "0.3", "beir": "2.0", "python": "3.11"}}
OOM = "RuntimeError: CUDA out of memory"
KMEANS = "ValueError: k-means did not converge"

# (method, family, params, quality offset vs flat, p50 ms of non-IVF rows, extras)
COMMON = [
    ("flat", "reference", {}, 0.0, None, {}),
    ("faiss-pq", "reconstruction", {"M": 8}, -0.14, 0.6, {}),
    ("faiss-pq", "reconstruction", {"M": 16}, -0.10, 0.7, {}),
    ("faiss-opq", "reconstruction", {"M": 16}, -0.08, 0.75, {}),
    ("faiss-ivfopq", "reconstruction", IVFOPQ, -0.07, None, {}),
]
SPECS = {
    "toy-a": COMMON + [
        ("faiss-opq", "reconstruction", {"M": 8}, -0.12, 0.65, {}),
        ("jpq", "contrastive", {"M": 16}, -0.068, 0.7, {"noise": 0.15}),
        ("distill-vq", "distillation", DISTILL, -0.02, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "M": 8}, -0.06, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "loss": "margin-mse"}, -0.03, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "candidates": "topk"}, -0.035, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "label_fraction": 0.5}, -0.03, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "label_fraction": 0.1}, -0.05, None, {}),
    ],
    "toy-b": COMMON + [
        ("faiss-opq", "reconstruction", {"M": 8}, -0.15, 0.65, {}),  # OPQ worse than PQ at 8 B: sanity ✗
        ("jpq", "contrastive", {"M": 16}, -0.05, 0.7, {"fail": {0: OOM, 1: OOM}}),
        ("distill-vq", "distillation", DISTILL, -0.02, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "M": 8}, -0.06, None, {"fail": {1: KMEANS}}),
    ],
}
FLAT_P50 = {"toy-a": 2.0, "toy-b": 1.0}  # toy-b: nprobe 16 (1.5 ms) is over the default budget


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _record(run_dir: Path, dataset: str, spec: tuple, seed: int, nprobe: int | None) -> dict:
    method, family, params, offset, p50, extra = spec
    rid = run_id(dataset, "test", method, params, seed, nprobe)
    rec = {"run_id": rid, "dataset": dataset, "split": "test", "method": method, "family": family,
           "params": params, "seed": seed, "nprobe": nprobe, "provenance": PROVENANCE, "train_seconds": 10.0 + seed}
    if seed in extra.get("fail", {}):
        return {**rec, "index": {}, "metrics": None, "fidelity": None, "latency": None, "per_query": None,
                "train_seconds": None, "status": "failed", "error": extra["fail"][seed]}
    if nprobe is not None:
        offset, p50 = offset + NPROBES[nprobe][0], NPROBES[nprobe][1]
    p50 = (p50 or FLAT_P50[dataset]) * (1 + 0.02 * seed)
    base = _rng(dataset).uniform(0.3, 0.7, size=(len(MEASURES) + len(FIDELITY), len(QIDS)))
    noise = extra.get("noise", 0.01) * _rng(dataset, method, json.dumps(params), seed, nprobe).standard_normal(
        base.shape)
    values = np.clip(base + offset + noise, 0.0, 1.0)
    per_query = {key: dict(zip(QIDS, row.tolist())) for key, row in zip((*MEASURES, *FIDELITY), values)}
    sidecar = Path("per_query") / f"{rid}.json"
    (run_dir / sidecar).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / sidecar).write_text(json.dumps(per_query))
    means = {key: float(np.mean(list(v.values()))) for key, v in per_query.items()}
    M = params.get("M")
    factory = "Flat" if M is None else f"IVF{params['nlist']},PQ{M}" if "nlist" in params else f"PQ{M}"
    index = {"factory": factory, "nlist": params.get("nlist", 0), "M": M or 0, "nbits": 8 if M else 32, "bytes_per_vector": M or 256, "index_bytes": 1000,
             "writeback": None}
    return {**rec, "index": index, "metrics": {k: means[k] for k in MEASURES},
            "fidelity": {k: means[k] for k in FIDELITY},
            "latency": {"p50_ms": p50, "p95_ms": 1.5 * p50, "qps": 1000.0 / p50, "threads": 1},
            "per_query": str(sidecar), "status": "ok"}


def write_fixture(run_dir: Path, specs: dict[str, list[tuple]] = SPECS, torn: bool = True) -> list[dict]:
    """Write results.jsonl + sidecars; a fit that fails gives one record with nprobe None (as the runner does)."""
    records = []
    for dataset, rows in specs.items():
        for spec in rows:
            for seed in SEEDS:
                failed = seed in spec[5].get("fail", {})
                sweep = list(NPROBES) if "nlist" in spec[2] and not failed else [None]
                records += [_record(run_dir, dataset, spec, seed, nprobe) for nprobe in sweep]
    for rec in records:
        append_record(run_dir / "results.jsonl", rec)
    if torn:
        with open(run_dir / "results.jsonl", "a") as f:
            f.write('{"run_id": "torn-line", "dataset": ')
    return records


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    run_dir = tmp_path_factory.mktemp("run")
    records = write_fixture(run_dir)
    return run_dir, build_report(run_dir), records


def _expected(records: list[dict], dataset: str, method: str, params: dict, nprobe: int | None,
              key: str = "nDCG@10") -> tuple[float, float]:
    values = [{**r["metrics"], **r["fidelity"]}[key] for r in records if r["dataset"] == dataset and r["method"] == method
              and r["params"] == params and r["nprobe"] == nprobe and r["status"] == "ok"]
    assert len(values) == 2
    return float(np.mean(values)), float(np.std(values, ddof=1))


def _md_table(md: str, heading_start: str) -> pd.DataFrame:
    """The first Markdown table after the heading line that starts with ``heading_start``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_start))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next(i for i in range(first, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[first:end]]
    return pd.DataFrame(rows[2:], columns=rows[0]).set_index("Method")


def _section(md: str, dataset: str) -> str:
    return md.split(f"\n## {dataset}\n", 1)[1].split("\n## ", 1)[0]


def _row(table: pd.DataFrame, label: str) -> pd.Series:
    hits = [i for i in table.index if i == label or i.startswith(label + " [")]
    assert len(hits) == 1, (label, list(table.index))
    return table.loc[hits[0]]


def test_outputs_written(run):
    run_dir, written, _ = run
    for name in ("leaderboard.md", "leaderboard.html", "summary.json", "tables/table2.csv", "tables/table2.tex",
                 "tables/table3.csv", "tables/table6.tex", "tables/label_budget.csv",
                 "plots/toy-a_quality_vs_latency.png", "plots/toy-b_quality_vs_latency.png",
                 "plots/toy-a_quality_vs_bytes.png", "plots/toy-a_label_budget.png"):
        assert name in written and written[name] == run_dir / name
    for name, path in written.items():
        assert path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/toy-b_label_budget.png" not in written  # toy-b has a single label fraction


def test_budget_table_numbers_match_records(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    a = _md_table(_section(md, "toy-a"), "### Best nprobe")
    mean, std = _expected(records, "toy-a", "flat", {}, None)
    assert _row(a, "flat")["nDCG@10"] == f"{mean:.3f} ± {std:.3f}"
    mean, std = _expected(records, "toy-a", "distill-vq", DISTILL, 16, "R@100")  # budget 2 ms: nprobe 16 fits
    assert _row(a, DISTILL_LABEL)["nprobe"] == "16" and _row(a, DISTILL_LABEL)["R@100"] == f"{mean:.3f} ± {std:.3f}"
    assert _row(a, DISTILL_LABEL)["B/vec"] == "16" and _row(a, DISTILL_LABEL)["Seeds"] == "2"
    mean, std = _expected(records, "toy-a", "faiss-opq", {"M": 8}, None, "overlap@10")
    assert _row(a, "faiss-opq (M=8)")["overlap@10"] == f"{mean:.3f} ± {std:.3f}"
    b = _md_table(_section(md, "toy-b"), "### Best nprobe")
    mean, std = _expected(records, "toy-b", "faiss-ivfopq", IVFOPQ, 4)  # budget 1 ms: nprobe 16 (1.5 ms) is out
    assert _row(b, "faiss-ivfopq")["nprobe"] == "4" and _row(b, "faiss-ivfopq")["nDCG@10"] == f"{mean:.3f} ± {std:.3f}"
    fixed = _md_table(_section(md, "toy-a"), "### At a fixed nprobe")
    assert _row(fixed, "faiss-ivfopq")["nprobe"] == "4"  # nlist 64 / 16
    table2 = pd.read_csv(run_dir / "tables" / "table2.csv", index_col=0)
    mean, _ = _expected(records, "toy-a", "faiss-opq", {"M": 16}, None, "RR@10")
    assert table2.loc["faiss-opq (M=16)", "toy-a/RR@10"] == pytest.approx(mean, abs=1e-4)
    table6 = pd.read_csv(run_dir / "tables" / "table6.csv", index_col=0)
    mean, _ = _expected(records, "toy-b", "faiss-pq", {"M": 8}, None)
    assert table6.loc["faiss-pq", "toy-b/8 B"] == pytest.approx(mean, abs=1e-4)


def test_significance_marks(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    a = _md_table(_section(md, "toy-a"), "### Best nprobe")
    assert _row(a, DISTILL_LABEL)["nDCG@10"].endswith(" †")
    assert "†" not in _row(a, "jpq")["nDCG@10"]
    assert "†" not in _row(a, "faiss-opq (M=16)")["nDCG@10"]  # baselines are never marked
    assert "one-sided paired t-test (scipy.stats.ttest_rel" in _section(md, "toy-a")
    # the fixture is what it claims: distill-vq clearly better than the best 16-byte baseline, jpq only noise
    sidecars = {}
    for rec in records:
        if rec["dataset"] == "toy-a" and rec["status"] == "ok":
            key = (rec["method"], json.dumps(rec["params"], sort_keys=True), rec["nprobe"])
            sidecars.setdefault(key, []).append(str(run_dir / rec["per_query"]))
    base = seed_mean(sidecars[("faiss-ivfopq", json.dumps(IVFOPQ, sort_keys=True), 16)], "nDCG@10")
    distill = seed_mean(sidecars[("distill-vq", json.dumps(DISTILL, sort_keys=True), 16)], "nDCG@10")
    jpq = seed_mean(sidecars[("jpq", json.dumps({"M": 16}), None)], "nDCG@10")
    assert sps.ttest_rel(distill, base, alternative="greater").pvalue < 1e-6
    assert sps.ttest_rel(jpq, base, alternative="greater").pvalue > 0.05
    summary = json.loads((run_dir / "summary.json").read_text())
    row = next(r for r in summary["rows"] if r["dataset"] == "toy-a" and r["view"] == "budget"
               and r["variant"] == DISTILL_LABEL)
    assert row["significant"] and row["baseline"] == "faiss-ivfopq" and row["p_value"] < 1e-6


def test_failed_and_missing_rows(run):
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    section = _section(md, "toy-b")
    b = _md_table(section, "### Best nprobe")
    jpq = _row(b, "jpq")
    assert set(jpq.drop("Family")) == {"—"}
    marker = jpq.name.split(" ", 1)[1]
    assert re.search(re.escape(marker) + r" failed: RuntimeError: CUDA out of memory \(seed 0, seed 1\)", section)
    partial = _row(b, "distill-vq (M=8, candidates=ib+topk, label_fraction=1, loss=listnet)")
    assert partial["Seeds"] == "1" and "±" not in partial["nDCG@10"]
    assert "some runs failed: ValueError: k-means did not converge (seed 1)" in section
    ablation = _row(b, "distill-vq (M=16, candidates=ib+topk, label_fraction=1, loss=margin-mse)")
    assert ablation["nDCG@10"] == "—" and "not run on this dataset (no record)" in section


def test_sanity_lines(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    a, b = _section(md, "toy-a"), _section(md, "toy-b")
    assert "- ✓ `flat` tops every compressed point in nDCG@10" in a
    assert "- ✓ `flat` tops every compressed point in nDCG@10" in b
    assert "- ✓ faiss-opq beats faiss-pq at the same bytes/vector" in a
    opq8, _ = _expected(records, "toy-b", "faiss-opq", {"M": 8}, None)
    pq8, _ = _expected(records, "toy-b", "faiss-pq", {"M": 8}, None)
    assert "- ✗ faiss-opq does NOT always beat faiss-pq" in b and f"8 B: {opq8:.3f} vs {pq8:.3f} ✗" in b


def test_cross_dataset_summary_and_problems(run):
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    summary = _md_table(md, "## Summary across datasets")
    assert summary.loc["flat", "Mean rank"] == "1.00" and summary.loc["flat", "Datasets"] == "2/2"
    assert summary.loc[DISTILL_LABEL, "Gain in nDCG@10 vs best reconstruction"].startswith("+")
    assert summary.loc["jpq", "Datasets"] == "1/2"
    problems = md.split("## Problems", 1)[1]
    assert "results.jsonl:" in problems and "unreadable record" in problems


def test_latex_tables(run):
    run_dir, _, _ = run
    for stem in ("table2", "table3", "table6", "label_budget"):
        tex = (run_dir / "tables" / f"{stem}.tex").read_text()
        assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{"))
    table2 = (run_dir / "tables" / "table2.tex").read_text()
    assert r"\multicolumn{3}{c}{toy-a}" in table2 and r"\cmidrule(lr){2-4}" in table2
    assert not re.search(r"^flat &.*\\textbf", table2, re.M)  # the uncompressed reference is never bold
    table3 = pd.read_csv(run_dir / "tables" / "table3.csv", index_col=[0, 1, 2])
    assert {("margin-mse", "ib+topk"), ("listnet", "topk"), ("listnet", "ib+topk")} == {
        (loss, cand) for _, loss, cand in table3.index}
    budget = pd.read_csv(run_dir / "tables" / "label_budget.csv", index_col=0)
    assert list(budget.columns) == ["toy-a/10%", "toy-a/50%", "toy-a/100%", "toy-b/100%"]


def test_html_self_contained(run):
    run_dir, _, _ = run
    page = (run_dir / "leaderboard.html").read_text()
    assert "<table" in page and page.count("data:image/png;base64,") >= 4 and "<script>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "CUDA out of memory" in page and "†" in page


def test_options_budget_and_fixed_nprobe(tmp_path):
    records = write_fixture(tmp_path, {"toy-a": SPECS["toy-a"]}, torn=False)
    for rec in records:
        if rec["method"] == "jpq":
            (tmp_path / rec["per_query"]).unlink()  # no per-query values: no test, said in a footnote
    build_report(tmp_path, quality="RR@10", latency_budget_ms=0.3, fixed_nprobe=16, test="wilcoxon")
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    pick = {(r["view"], r["variant"]): r for r in rows}
    assert pick[("budget", DISTILL_LABEL)]["nprobe"] == 1
    assert pick[("budget", "faiss-pq (M=8)")]["reason"].startswith("no nprobe within the latency budget")
    assert pick[("fixed", DISTILL_LABEL)]["nprobe"] == 16
    assert pick[("fixed", "jpq")]["reason"] == "† not tested: per-query values missing"
    md = (tmp_path / "leaderboard.md").read_text()
    assert "p50 ≤ 0.300 ms (given)" in md and "Wilcoxon signed-rank" in md and "Quality measure: **RR@10**" in md
    assert "## Problems\n\n- none" in md


def test_missing_tables_are_skipped(tmp_path):
    write_fixture(tmp_path, {"toy-a": COMMON[:3]}, torn=False)
    written = build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "table3: skipped" in md and "label_budget: skipped" in md
    assert "tables/table2.csv" in written and "tables/table3.csv" not in written


def test_empty_results(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    written = build_report(tmp_path)
    assert "No records" in (tmp_path / "leaderboard.md").read_text()
    assert set(written) == {"leaderboard.md", "leaderboard.html", "summary.json"}
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == []


def test_paired_test_degenerate_and_wilcoxon():
    same = np.linspace(0, 1, 20)
    assert not paired_test(same, same).significant
    assert paired_test(same + 0.1, same, "wilcoxon").significant
    with pytest.raises(ValueError):
        paired_test(same, same, "sign")


def test_cli_runs(run, tmp_path):
    run_dir, _, _ = run
    shutil.copy(run_dir / "results.jsonl", tmp_path / "results.jsonl")
    shutil.copytree(run_dir / "per_query", tmp_path / "per_query")
    proc = subprocess.run([sys.executable, "-m", "benchmark.report", str(tmp_path), "--quality", "RR@10"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "leaderboard.html").exists() and "leaderboard.md" in proc.stdout
