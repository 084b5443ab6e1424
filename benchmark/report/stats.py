"""Paired significance tests on per-query values, and the † rule of the leaderboard.

† rule: a row of a learned family (every family of :data:`benchmark.registry.FAMILIES` but the reference and
:data:`BASELINE_FAMILY`) gets a † when it beats the *best reconstruction baseline* of the same dataset, operating
point and track (family :data:`BASELINE_FAMILY`, best = highest mean quality) chosen among the baselines with the
same bytes/vector when one exists, else among all of them. "Beats" = one-sided paired test in the direction of
improvement, p < 0.05, on the per-query values of the quality measure, each query's value first averaged over seeds
(only queries present for both rows count).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.registry import FAMILIES, REFERENCE_FAMILY

ALPHA = 0.05
TESTS = {"ttest": "one-sided paired t-test (scipy.stats.ttest_rel, alternative='greater')",
         "wilcoxon": "one-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, alternative='greater')"}
# the family the learned objectives are tested against (faiss k-means / PQ / OPQ)
BASELINE_FAMILY = "reconstruction"
if BASELINE_FAMILY not in FAMILIES:
    raise ImportError(f"benchmark.registry.FAMILIES {FAMILIES} lacks the † baseline family {BASELINE_FAMILY!r}")
COMPARED_FAMILIES = tuple(f for f in FAMILIES if f not in (REFERENCE_FAMILY, BASELINE_FAMILY))


@dataclass(frozen=True)
class PairedResult:
    """Outcome of one paired comparison of ``a`` against ``b``."""

    test: str
    statistic: float
    p_value: float
    n: int
    mean_diff: float

    @property
    def significant(self) -> bool:
        return self.mean_diff > 0 and self.p_value < ALPHA


def paired_test(a: np.ndarray, b: np.ndarray, test: str = "ttest") -> PairedResult:
    """One-sided paired test that ``a`` > ``b``; a degenerate input (no differences) gives p = 1."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid tests: {', '.join(TESTS)}")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(a - b)) if len(a) else math.nan
    try:
        fn = stats.ttest_rel if test == "ttest" else stats.wilcoxon
        result = fn(a, b, alternative="greater")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    except ValueError:
        statistic, p_value = math.nan, 1.0
    return PairedResult(test, statistic, 1.0 if math.isnan(p_value) else p_value, len(a), diff)


@lru_cache(maxsize=4096)
def _sidecar(path: str) -> dict[str, dict[str, float]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def seed_mean(paths: list[str], measure: str) -> pd.Series | None:
    """Per-query ``measure`` averaged over the seeds' sidecars (index = query id); None when none is readable."""
    columns = []
    for path in paths:
        try:
            columns.append(pd.Series(_sidecar(path)[measure], dtype=float))
        except (OSError, KeyError, ValueError):
            continue
    return pd.concat(columns, axis=1).mean(axis=1) if columns else None


def compare(paths_a: list[str], paths_b: list[str], measure: str, test: str = "ttest") -> PairedResult | None:
    """Paired test of variant ``a`` over ``b`` on their common queries; None without per-query values."""
    a, b = seed_mean(paths_a, measure), seed_mean(paths_b, measure)
    if a is None or b is None:
        return None
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    return paired_test(a[common].to_numpy(), b[common].to_numpy(), test)


def best_baseline(rows: pd.DataFrame, row: pd.Series, quality: str) -> pd.Series | None:
    """The best reconstruction row of ``row``'s dataset at its bytes/vector, else the best overall (see module);
    rows flagged ``fits = False`` (over the latency budget) are never a baseline."""
    recon = rows[(rows["dataset"] == row["dataset"]) & (rows["family"] == BASELINE_FAMILY)].dropna(subset=[quality])
    if "fits" in recon:  # at the pruned point, a baseline over the latency budget is no baseline
        recon = recon[recon["fits"].map(lambda v: v is True or v is np.True_)]
    same = recon[recon["bytes_per_vector"] == row["bytes_per_vector"]]
    pool = same if not same.empty else recon
    return None if pool.empty else pool.loc[pool[quality].idxmax()]


def mark_significance(rows: pd.DataFrame, quality: str, test: str = "ttest") -> pd.DataFrame:
    """Add ``baseline``, ``p_value``, ``significant`` and ``untested`` (no per-query values to compare) to
    selected leaderboard rows."""
    baselines, p_values, marks, untested = [], [], [], []
    for _, row in rows.iterrows():
        base = best_baseline(rows, row, quality) if row["family"] in COMPARED_FAMILIES else None
        result = compare(row["per_query"], base["per_query"], quality, test) if base is not None else None
        baselines.append(None if base is None else base["label"])
        p_values.append(None if result is None else result.p_value)
        marks.append(False if result is None else result.significant)
        untested.append(base is not None and result is None)
    columns = {"baseline": baselines, "p_value": p_values, "significant": marks, "untested": untested}
    return rows.assign(**{k: pd.Series(v, index=rows.index, dtype=object) for k, v in columns.items()})


def footnote(quality: str, test: str) -> str:
    """The text printed under each leaderboard table."""
    return (f"† significantly better than the best reconstruction baseline (same bytes/vector when one exists, "
            f"else the best overall) in {quality}: {TESTS[test]} on per-query {quality} averaged over seeds, "
            f"p < {ALPHA}.")
