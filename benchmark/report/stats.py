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
from dataclasses import asdict, dataclass
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
# paired-test results kept beside results.jsonl (see mark_significance)
CACHE_FILE = "significance.json"
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


def cache_key(row: pd.Series, base: pd.Series, quality: str, test: str) -> str | None:
    """What a paired test depends on: the measure, the test and the two rows' per-query sidecars (named by their
    records' run ids). None when a row names no sidecar."""
    a, b = sorted(Path(p).name for p in row["per_query"]), sorted(Path(p).name for p in base["per_query"])
    return json.dumps([quality, test, a, b]) if a and b else None


def mark_significance(rows: pd.DataFrame, quality: str, test: str = "ttest",
                      cache: dict[str, dict] | None = None) -> pd.DataFrame:
    """Add ``baseline``, ``p_value``, ``significant``, ``untested`` (no per-query values to compare) and ``cached``
    to selected leaderboard rows.

    ``cache`` (:data:`CACHE_FILE`'s content) keeps every test computed here under :func:`cache_key`, and answers for
    a pair whose sidecars are gone (they are not committed with a report), so † survives a rebuild from records."""
    baselines, p_values, marks, untested, cached = [], [], [], [], []
    for _, row in rows.iterrows():
        base = best_baseline(rows, row, quality) if row["family"] in COMPARED_FAMILIES else None
        result = compare(row["per_query"], base["per_query"], quality, test) if base is not None else None
        key = cache_key(row, base, quality, test) if base is not None and cache is not None else None
        hit = False
        if key is not None and result is not None:
            cache[key] = asdict(result)
        elif key is not None and key in cache:
            result, hit = PairedResult(**cache[key]), True
        baselines.append(None if base is None else base["label"])
        p_values.append(None if result is None else result.p_value)
        marks.append(False if result is None else result.significant)
        untested.append(base is not None and result is None)
        cached.append(hit)
    columns = {"baseline": baselines, "p_value": p_values, "significant": marks, "untested": untested,
               "cached": cached}
    return rows.assign(**{k: pd.Series(v, index=rows.index, dtype=object) for k, v in columns.items()})


def read_cache(path: Path) -> tuple[dict[str, dict], list[str]]:
    """The paired-test cache at ``path`` (empty when absent) and the problems found reading it."""
    if not path.exists():
        return {}, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, dict) and set(v) == set(PairedResult.__annotations__)
                                                 for v in data.values()):
            raise ValueError("expected an object of {key: {test, statistic, p_value, n, mean_diff}}")
    except ValueError as exc:
        return {}, [f"{path}: unreadable paired-test cache, ignored ({exc})"]
    return data, []


def footnote(quality: str, test: str) -> str:
    """The text printed under each leaderboard table."""
    return (f"† significantly better than the best reconstruction baseline (same bytes/vector when one exists, "
            f"else the best overall) in {quality}: {TESTS[test]} on per-query {quality} averaged over seeds, "
            f"p < {ALPHA}.")
