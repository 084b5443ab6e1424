"""The tie rule (◆ "tied with the best"): per track and operating point, two-sided paired tests of every row against
the track's best row on per-query values averaged over seeds, Holm-corrected; rows with corrected p >= 0.05 are tied
with the best, rows without per-query values are untested. Fixture runs (records + per-query sidecars) built by the
report builder itself."""
from __future__ import annotations

import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from benchmark.records import FIDELITY, MEASURES, append_record, run_id
from benchmark.report import build_report

N = 300
QIDS = [f"q{i:03d}" for i in range(N)]
SEEDS = (0, 1)
DATASET = "toy"
PROVENANCE = {"git_sha": "0123456789abcdef", "cpu": "fixture", "threads": {"faiss": 1}, "timestamp": "2024-01-01",
              "versions": {"torch": "2.1", "faiss": "1.8", "ir_measures": "0.3", "beir": "2.0", "python": "3.11"}}
FAMILY = {"flat": "reference", "faiss-opq": "reconstruction", "jpq": "contrastive", "infonce-pq": "contrastive",
          "distill-vq": "distillation", "score-aware": "score-aware"}


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


BASE = _rng("base").uniform(0.3, 0.7, N)


def noise(name: str, seed: int, scale: float = 0.02) -> np.ndarray:
    """Small per-query noise of mean exactly 0 (so "equal in distribution" rows have equal means)."""
    z = _rng(name, seed).standard_normal(N)
    return scale * (z - z.mean())


def write_run(run_dir: Path, rows: dict[str, tuple[list[np.ndarray], bool]]) -> None:
    """``rows``: method -> (per-query nDCG@10 per seed, whether its records keep per-query sidecars). Every method
    runs at 16 B/vector without IVF (one track, the same rows at both operating points); a flat reference makes the
    latency budget 10% of 10 ms, which every row fits."""
    recs = [_record(run_dir, "flat", {}, seed, np.clip(BASE + 0.2, 0, 1), True) for seed in SEEDS]
    for method, (values, sidecars) in rows.items():
        recs += [_record(run_dir, method, {"M": 16}, seed, values[seed], sidecars) for seed in SEEDS]
    for rec in recs:
        append_record(run_dir / "results.jsonl", rec)


def _record(run_dir: Path, method: str, params: dict, seed: int, values: np.ndarray, sidecar: bool) -> dict:
    assert values.min() >= 0 and values.max() <= 1
    rid = run_id(DATASET, "test", method, params, seed, None)
    per_query = {key: dict(zip(QIDS, values.tolist())) for key in (*MEASURES, *FIDELITY)}
    path = None
    if sidecar:
        path = Path("per_query") / f"{rid}.json"
        (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / path).write_text(json.dumps(per_query))
    mean = float(np.mean(values))
    flat = method == "flat"
    p50 = 10.0 if flat else 0.5
    index = {"factory": "Flat" if flat else "PQ16", "nlist": 0, "M": 0 if flat else 16, "nbits": 32 if flat else 8,
             "bytes_per_vector": 256 if flat else 16, "index_bytes": 256_045 if flat else 20_096, "writeback": None}
    return {"run_id": rid, "fit_id": rid, "dataset": DATASET, "split": "test", "method": method,
            "family": FAMILY[method], "params": params, "seed": seed, "nprobe": None, "provenance": PROVENANCE,
            "train_seconds": 1.0, "index": index, "metrics": {k: mean for k in MEASURES},
            "fidelity": {k: mean for k in FIDELITY},
            "latency": {"p50_ms": p50, "p95_ms": 1.5 * p50, "qps": 1000.0 / p50, "threads": 1},
            "per_query": None if path is None else str(path), "status": "ok"}


def shifted(name: str, shift: float) -> list[np.ndarray]:
    """BASE + ``shift`` plus this row's own small noise, per seed."""
    return [BASE + shift + noise(name, seed) for seed in SEEDS]


# ---------------------------------------------------------------- reading the report

def _part(md: str, heading: str) -> str:
    level = heading.split(" ", 1)[0]
    body = md.split(f"\n{heading}\n", 1)[1]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), body, re.M)]
    return body[:ends[0]] if ends else body


def track_table(md: str, view: str = "exhaustive") -> pd.DataFrame:
    part = _part(_part(md, f"## {DATASET}"), "### Track 16 B/vector")
    heading = next(line for line in part.splitlines() if line.startswith(f"#### {view}"))
    lines = [line for line in _part(part, heading).splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    table = pd.DataFrame(rows[2:], columns=rows[0]).set_index("Method")
    return table.rename(index=lambda name: name.split(" [")[0])  # without footnote markers


def verdict(md: str, view: str = "exhaustive") -> str:
    part = _part(_part(md, f"## {DATASET}"), "### Track 16 B/vector")
    return next(line for line in part.splitlines() if line.startswith(f"- {view}"))


def ties(run_dir: Path, view: str = "exhaustive") -> dict[str, dict]:
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    return {r["variant"]: r["tie"] for r in rows if r["view"] == view and r["dataset"] == DATASET}


def build(run_dir: Path, **kwargs) -> tuple[str, dict[str, dict]]:
    build_report(run_dir, **kwargs)
    return (run_dir / "leaderboard.md").read_text(), ties(run_dir)


# ---------------------------------------------------------------- the tests

def test_clearly_better_row_is_alone(tmp_path):
    """Two rows equal in distribution (same per-query values plus small noise) and one clearly better: the better
    one wins and is alone in its tie group; the equal two are not tied with it."""
    write_run(tmp_path, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "jpq": (shifted("jpq", 0.0), True),
                         "distill-vq": (shifted("distill-vq", 0.05), True)})
    md, tie = build(tmp_path, budget_fraction=0.1)  # a latency budget: flat rows compete when pruned
    # the fixture is what it claims: the two equal rows do not differ, the better one differs from both
    a, b, c = (np.mean(shifted(m, s), axis=0) for m, s in (("faiss-opq", 0.0), ("jpq", 0.0), ("distill-vq", 0.05)))
    assert sps.ttest_rel(a, b).pvalue > 0.5 and sps.ttest_rel(c, a).pvalue < 1e-20
    assert tie["distill-vq"]["status"] == "best"
    assert tie["jpq"]["status"] == tie["faiss-opq"]["status"] == "not tied"
    assert tie["jpq"]["best"] == "distill-vq" and tie["jpq"]["holm_family"] == 2
    assert tie["jpq"]["mean_diff_vs_best"] == pytest.approx(-0.05, abs=1e-9)
    low, high = tie["jpq"]["ci95"]
    assert low < -0.05 < high and high - low < 0.01
    table = track_table(md)
    assert list(table.columns[:9]) == ["Family", "Layout", "Query side", "Trained on", "Tuning", "nprobe", "nDCG@10",
                                       "tie", "RR@10"]
    assert table.loc["distill-vq", "tie"] == "◆ best" and table.loc["distill-vq", "nDCG@10"].endswith(" †")
    assert table.loc["jpq", "tie"] == table.loc["faiss-opq", "tie"] == "p<0.001"
    assert track_table(md, "pruned").loc["distill-vq", "tie"] == "◆ best"  # every row fits the budget
    line = verdict(md)
    assert line.startswith("- exhaustive: winner **distill-vq** (nDCG@10 ")
    assert re.search(r"Δ to runner-up (jpq|faiss-opq) \+0\.050 \(95% CI \+0\.04\d to \+0\.05\d, paired per query; "
                     r"p = \S+ Holm-corrected, \S+ raw\)", line), line
    assert "alone in its tie group ◆" in line
    opq = float(table.loc["faiss-opq", "nDCG@10"].split(" ")[0])
    assert line.endswith(f"† = better than faiss-opq ({opq:.3f}), the best reconstruction baseline, one-sided "
                         f"paired t-test p < 0.05.")
    notes = _part(md, f"## {DATASET}")
    assert ("◆ tied with the best: each row of a track and operating point (within its latency budget) is compared "
            "with the track's best row (highest mean nDCG@10) by a two-sided paired t-test (scipy.stats.ttest_rel) "
            "on per-query nDCG@10, each query's value averaged over seeds, pairing the queries both rows have; the "
            "p-values of the track and operating point are corrected together by Holm's method") in notes
    assert "rows with corrected p ≥ 0.05 are tied with the best" in notes
    glance = _part(md, "## At a glance")
    assert "| tied with it (exhaustive) |" in glance and "| alone |" in glance


def test_equal_best_rows_are_both_in_the_group(tmp_path):
    """The two rows equal in distribution are the best ones: both are in the tie group, the worse row is not."""
    write_run(tmp_path, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "jpq": (shifted("jpq", 0.05), True),
                         "distill-vq": (shifted("distill-vq", 0.049), True)})
    md, tie = build(tmp_path)
    assert tie["jpq"]["status"] == "best" and tie["distill-vq"]["status"] == "tied"
    assert tie["distill-vq"]["p_holm"] >= 0.05 and tie["faiss-opq"]["status"] == "not tied"
    table = track_table(md)
    assert table.loc["jpq", "tie"] == "◆ best" and table.loc["distill-vq", "tie"].startswith("◆ p=")
    assert "tied with the best ◆: jpq, distill-vq;" in verdict(md)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "<th>tie</th>" in page and '<td class="tie">◆ best</td>' in page
    # the Wilcoxon variant of the rule gives the same groups here and says so
    md, tie = build(tmp_path, test="wilcoxon")
    assert [tie[m]["status"] for m in ("jpq", "distill-vq", "faiss-opq")] == ["best", "tied", "not tied"]
    assert "by a two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon)" in md


def _at_p(best: np.ndarray, p: float, name: str, scale: float = 0.02) -> np.ndarray:
    """Values below ``best`` whose paired differences give exactly a two-sided t-test p of ``p``."""
    z = _rng(name).standard_normal(N)
    z = (z - z.mean()) / z.std(ddof=1)
    shift = sps.t.ppf(1 - p / 2, N - 1) * scale / np.sqrt(N)
    return best - (shift + scale * z)


def test_holm_correction_turns_raw_significance_into_ties(tmp_path):
    """Three rows each significantly worse than the best uncorrected (p 0.02 / 0.03 / 0.04) are tied with it after
    Holm's correction across the four rows of the track (0.02 x 3 = 0.06 ≥ 0.05); the clearly worse row stays out."""
    best = BASE + 0.06
    raw = {"jpq": 0.02, "infonce-pq": 0.03, "score-aware": 0.04}
    rows = {"distill-vq": ([best, best], True), "faiss-opq": (shifted("faiss-opq", 0.0), True)}
    rows.update({m: ([_at_p(best, p, m)] * 2, True) for m, p in raw.items()})
    write_run(tmp_path, rows)
    md, tie = build(tmp_path)
    assert tie["distill-vq"]["status"] == "best"
    for method, p in raw.items():
        assert tie[method]["p_raw"] == pytest.approx(p, rel=1e-6)  # < 0.05: "better" without the correction
        assert tie[method]["p_holm"] >= 0.05 and tie[method]["status"] == "tied"
        assert tie[method]["holm_family"] == 4
    assert tie["faiss-opq"]["status"] == "not tied"
    order = ["faiss-opq", *raw]
    expected = multipletests([tie[m]["p_raw"] for m in order], method="holm")[1]
    assert [tie[m]["p_holm"] for m in order] == pytest.approx(list(expected))
    assert tie["jpq"]["p_holm"] == pytest.approx(0.06)
    table = track_table(md)
    assert table.loc["jpq", "tie"] == "◆ p=0.06" and table.loc["score-aware", "tie"] == "◆ p=0.06"
    assert "tied with the best ◆: distill-vq, score-aware, infonce-pq, jpq;" in verdict(md)


def test_rows_without_sidecars_are_untested(tmp_path):
    """A row whose records keep no per-query values is "untested" (table, verdict, summary), outside the Holm
    family, never shown as not tied; when the best row has none, nothing is tested."""
    write_run(tmp_path, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "jpq": (shifted("jpq", 0.0), True),
                         "distill-vq": (shifted("distill-vq", 0.05), True),
                         "infonce-pq": (shifted("infonce-pq", 0.03), False)})
    md, tie = build(tmp_path)
    assert tie["infonce-pq"] == {"status": "untested", "best": "distill-vq", "p_holm": None, "p_raw": None,
                                 "mean_diff_vs_best": None, "ci95": None, "holm_family": 2}
    assert track_table(md).loc["infonce-pq", "tie"] == "untested"
    line = verdict(md)
    assert "Δ to runner-up infonce-pq +0.020 (untested: no per-query values to pair)" in line
    assert "alone in its tie group ◆ among the tested rows; untested: infonce-pq;" in line
    assert '<td class="untested">untested</td>' in (tmp_path / "leaderboard.html").read_text()

    other = tmp_path / "best-untested"
    other.mkdir()
    write_run(other, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "jpq": (shifted("jpq", 0.0), True),
                      "distill-vq": (shifted("distill-vq", 0.05), False)})
    md, tie = build(other)
    assert [tie[m]["status"] for m in ("distill-vq", "jpq", "faiss-opq")] == ["best", "untested", "untested"]
    assert set(track_table(md)["tie"]) == {"◆ best", "untested"}
    assert "; tie group not tested: no per-query values to pair with the best for the other 2 row(s);" in verdict(md)
    assert "◆ no tie test anywhere in this report" in md


def test_ties_survive_a_rebuild_without_sidecars(tmp_path):
    """significance.json keeps the pairs' tests under readable keys and each group's outcome: rebuilt from the
    records alone (sidecars gone, as in a committed report) the groups, p-values and verdicts are the same."""
    write_run(tmp_path, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "jpq": (shifted("jpq", 0.05), True),
                         "distill-vq": (shifted("distill-vq", 0.049), True)})
    md, tie = build(tmp_path, budget_fraction=0.1)
    cache = json.loads((tmp_path / "significance.json").read_text())
    pair = 'tie nDCG@10 ttest two-sided | toy | 16 B | distill-vq {"M": 16} vs jpq {"M": 16}'
    assert cache[pair]["kind"] == "tie" and cache[pair]["p_value"] == pytest.approx(tie["distill-vq"]["p_raw"])
    group = cache["tie-group nDCG@10 ttest Holm | toy | 16 B | exhaustive"]
    assert group["best"] == 'jpq {"M": 16}' and group["tied"] == ['jpq {"M": 16}', 'distill-vq {"M": 16}']
    assert group["rows"]['faiss-opq {"M": 16}']["status"] == "not tied" and group["correction"] == "holm"
    assert "tie-group nDCG@10 ttest Holm | toy | 16 B | pruned, p50 ≤ 1 ms" in cache
    dagger = 'dagger nDCG@10 ttest one-sided | toy | 16 B | distill-vq {"M": 16} > faiss-opq {"M": 16}'
    assert cache[dagger]["kind"] == "dagger"
    shutil.rmtree(tmp_path / "per_query")
    md2, tie2 = build(tmp_path, budget_fraction=0.1)
    assert tie2 == tie and verdict(md2) == verdict(md)
    assert track_table(md2)["tie"].equals(track_table(md)["tie"])
    assert "◆ tests of rows whose per-query sidecars are absent: read from `significance.json` (4 row(s))" in md2
    assert json.loads((tmp_path / "significance.json").read_text()) == cache


def test_legacy_cache_is_read_and_rekeyed(tmp_path):
    """A significance.json written before readable keys (hash-only † entries) still gives the † marks of a rebuild
    without sidecars; its entries move to readable keys, and the rows without any tie test say untested."""
    write_run(tmp_path, {"faiss-opq": (shifted("faiss-opq", 0.0), True), "distill-vq": (shifted("distill-vq", 0.05),
                                                                                         True)})
    build(tmp_path)
    cache = json.loads((tmp_path / "significance.json").read_text())
    legacy = {json.dumps(["nDCG@10", "ttest", *v["sidecars"]]): {k: v[k] for k in ("test", "statistic", "p_value",
                                                                                    "n", "mean_diff")}
              for v in cache.values() if v["kind"] == "dagger"}
    assert len(legacy) == 1
    (tmp_path / "significance.json").write_text(json.dumps(legacy))
    shutil.rmtree(tmp_path / "per_query")
    md, tie = build(tmp_path)
    assert track_table(md).loc["distill-vq", "nDCG@10"].endswith(" †")
    assert tie["faiss-opq"]["status"] == "untested" and track_table(md).loc["faiss-opq", "tie"] == "untested"
    rekeyed = json.loads((tmp_path / "significance.json").read_text())
    assert not set(legacy) & set(rekeyed)
    assert rekeyed['dagger nDCG@10 ttest one-sided | toy | 16 B | distill-vq {"M": 16} > faiss-opq {"M": 16}'][
        "p_value"] == next(iter(legacy.values()))["p_value"]
