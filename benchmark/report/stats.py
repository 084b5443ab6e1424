"""Paired significance tests on per-query values, and the † rule of the leaderboard.

† rule: a row of a learned family (every family of :data:`benchmark.registry.FAMILIES` but the reference and
:data:`BASELINE_FAMILY`) gets a † when it beats the *best reconstruction baseline* of the same dataset, operating
point and track (family :data:`BASELINE_FAMILY`, best = highest mean quality) chosen among the baselines with the
same bytes/vector when one exists, else among all of them. "Beats" = one-sided paired test in the direction of
improvement, p < 0.05, on the per-query values of the quality measure, each query's value first averaged over seeds
(only queries present for both rows count).

Tie rule (◆, "tied with the best"): per dataset, track and operating point, the *best row* is the row with the highest
mean quality among the rows within the operating point's latency budget (ties -> lower p50). Every other such row is
compared with it by a two-sided paired test (:data:`TIE_TESTS`, the same test family as †) on the per-query values of
the quality measure, each query's value first averaged over seeds and only queries present for both rows paired;
the p-values of the rows of one (dataset, track, operating point) are corrected together by Holm's step-down method
(``statsmodels.stats.multitest.multipletests(method="holm")``). Rows whose corrected p >= :data:`ALPHA` form the tie
group with the best row; a row with no per-query values (no sidecar and no cached test) is *untested*, never counted
as outside the group. The paired t-test is the default: the ranking is by the mean, the t-test's null hypothesis is
"equal means", and with >= 1,000 queries per split the mean difference is close to normal whatever the shape of
per-query nDCG; Wilcoxon (``--test wilcoxon``) tests a location shift of the differences, drops the (many) queries
whose top-10 is identical, and can disagree with the mean-based order.

:data:`CACHE_FILE` keeps every test under a readable key (measure, test, dataset, track, and each row as
``method {params} nprobe N``) with the names of the sidecars it was computed from; files written before that used
:func:`cache_key` (hashes only) and are still read.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from benchmark.records import read_sidecar
from benchmark.registry import FAMILIES, REFERENCE_FAMILY

ALPHA = 0.05
TESTS = {"ttest": "one-sided paired t-test (scipy.stats.ttest_rel, alternative='greater')",
         "wilcoxon": "one-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, alternative='greater')"}
TIE_TESTS = {"ttest": "two-sided paired t-test (scipy.stats.ttest_rel)",
             "wilcoxon": "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon)"}
SHORT_TESTS = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
TIE = "◆"
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


@dataclass(frozen=True)
class TieResult:
    """Two-sided paired comparison of ``a`` with ``b``: the test, its raw p-value, the number of paired queries, the
    mean per-query difference a - b and its 95% confidence interval (t interval of the paired differences)."""

    test: str
    statistic: float
    p_value: float
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float


def paired_test(a: np.ndarray, b: np.ndarray, test: str = "ttest") -> PairedResult:
    """One-sided paired test that ``a`` > ``b``; a degenerate input (no differences) gives p = 1."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid tests: {', '.join(TESTS)}")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(a - b)) if len(a) else math.nan
    statistic, p_value = _run_test(a, b, test, "greater")
    return PairedResult(test, statistic, p_value, len(a), diff)


def two_sided_test(a: np.ndarray, b: np.ndarray, test: str = "ttest") -> TieResult:
    """Two-sided paired test of ``a`` against ``b`` (the tie rule); no differences at all gives p = 1."""
    if test not in TIE_TESTS:
        raise ValueError(f"unknown test {test!r}; valid tests: {', '.join(TIE_TESTS)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(np.mean(d)) if n else math.nan
    sem = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * sem) if n > 1 else math.nan
    statistic, p_value = _run_test(np.asarray(a, dtype=float), np.asarray(b, dtype=float), test, "two-sided")
    return TieResult(test, statistic, p_value, n, mean, mean - half, mean + half)


def _run_test(a: np.ndarray, b: np.ndarray, test: str, alternative: str) -> tuple[float, float]:
    try:
        fn = stats.ttest_rel if test == "ttest" else stats.wilcoxon
        with warnings.catch_warnings():  # identical inputs: scipy warns and answers NaN, read as p = 1 below
            warnings.simplefilter("ignore", RuntimeWarning)
            result = fn(a, b, alternative=alternative)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    except ValueError:
        statistic, p_value = math.nan, 1.0
    return statistic, 1.0 if math.isnan(p_value) else p_value


def seed_mean(paths: list[str], measure: str) -> pd.Series | None:
    """Per-query ``measure`` averaged over the seeds' sidecars (index = query id); None when none is readable."""
    columns = []
    for path in paths:
        try:
            columns.append(pd.Series(read_sidecar(path)[measure], dtype=float))
        except (OSError, KeyError, ValueError):
            continue
    return pd.concat(columns, axis=1).mean(axis=1) if columns else None


def _paired(paths_a: list[str], paths_b: list[str], measure: str,
            memo: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The seed-averaged per-query values of two variants on their common queries; None when either has none
    readable or fewer than 2 queries are shared. ``memo`` keeps each variant's values for one build."""
    def values(paths: list[str]) -> pd.Series | None:
        if memo is None:
            return seed_mean(paths, measure)
        key = (tuple(paths), measure)
        if key not in memo:
            memo[key] = seed_mean(paths, measure)
        return memo[key]
    a, b = values(paths_a), values(paths_b)
    if a is None or b is None:
        return None
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    return a[common].to_numpy(), b[common].to_numpy()


def compare(paths_a: list[str], paths_b: list[str], measure: str, test: str = "ttest") -> PairedResult | None:
    """Paired test of variant ``a`` over ``b`` on their common queries; None without per-query values."""
    pair = _paired(paths_a, paths_b, measure)
    return None if pair is None else paired_test(*pair, test)


def best_baseline(rows: pd.DataFrame, row: pd.Series, quality: str) -> pd.Series | None:
    """The best reconstruction row of ``row``'s dataset at its bytes/vector, else the best overall (see module);
    rows flagged ``fits = False`` (over the latency budget) are never a baseline."""
    recon = rows[(rows["dataset"] == row["dataset"]) & (rows["family"] == BASELINE_FAMILY)].dropna(subset=[quality])
    if "fits" in recon:  # at the pruned point, a baseline over the latency budget is no baseline
        recon = recon[recon["fits"].map(_true)]
    same = recon[recon["bytes_per_vector"] == row["bytes_per_vector"]]
    pool = same if not same.empty else recon
    return None if pool.empty else pool.loc[pool[quality].idxmax()]


def _true(value: Any) -> bool:
    return value is True or value is np.True_


# ---------------------------------------------------------------- cache keys (significance.json)

def cache_key(row: pd.Series, base: pd.Series, quality: str, test: str) -> str | None:
    """The key of a † test in cache files written before readable keys: the measure, the test and the two rows'
    per-query sidecars (named by their records' run ids). None when a row names no sidecar. Still read."""
    a, b = sidecar_names(row), sidecar_names(base)
    return json.dumps([quality, test, a, b]) if a and b else None


def sidecar_names(row: pd.Series) -> list[str]:
    """The file names of a row's per-query sidecars (one per seed), sorted."""
    return sorted(Path(p).name for p in (row["per_query"] or []))


def describe(row: pd.Series) -> str:
    """A row as a reader names it: ``method {params} nprobe N`` (no nprobe without IVF)."""
    params = json.dumps(row["params"], sort_keys=True)
    nprobe = row["nprobe"]
    return f"{row['method']} {params}" + ("" if nprobe is None or pd.isna(nprobe) else f" nprobe {int(nprobe)}")


def _where(row: pd.Series) -> str:
    track = row.get("track")
    return f"{row['dataset']} | " + ("no track" if track is None or pd.isna(track) else f"{track:g} B")


def dagger_key(row: pd.Series, base: pd.Series, quality: str, test: str) -> str:
    return f"dagger {quality} {test} one-sided | {_where(row)} | {describe(row)} > {describe(base)}"


def tie_key(row: pd.Series, best: pd.Series, quality: str, test: str) -> str:
    return f"tie {quality} {test} two-sided | {_where(row)} | {describe(row)} vs {describe(best)}"


def group_key(dataset: str, track: float, point: str, quality: str, test: str) -> str:
    return f"tie-group {quality} {test} Holm | {dataset} | {track:g} B | {point}"


def _lookup(cache: dict[str, dict] | None, key: str, names: list[list[str]]) -> dict | None:
    """The cached entry ``key`` when it was computed from the same sidecars."""
    entry = None if cache is None else cache.get(key)
    return entry if entry is not None and entry.get("sidecars") == names else None


# ---------------------------------------------------------------- † (vs the best reconstruction baseline)

def mark_significance(rows: pd.DataFrame, quality: str, test: str = "ttest",
                      cache: dict[str, dict] | None = None) -> pd.DataFrame:
    """Add ``baseline``, ``p_value``, ``significant``, ``untested`` (no per-query values to compare) and ``cached``
    to selected leaderboard rows.

    ``cache`` (:data:`CACHE_FILE`'s content) keeps every test computed here under :func:`dagger_key` with the
    sidecars' names, and answers for a pair whose sidecars are gone (they are not committed with a report), so †
    survives a rebuild from records. An entry under the older :func:`cache_key` is read and moved to the new key."""
    baselines, p_values, marks, untested, cached = [], [], [], [], []
    for _, row in rows.iterrows():
        base = best_baseline(rows, row, quality) if row["family"] in COMPARED_FAMILIES else None
        result, hit = None, False
        if base is not None:
            result = compare(row["per_query"], base["per_query"], quality, test)
            names = [sidecar_names(row), sidecar_names(base)]
            if cache is not None and all(names):
                key, legacy = dagger_key(row, base, quality, test), cache_key(row, base, quality, test)
                if result is not None:
                    cache[key] = {"kind": "dagger", **asdict(result), "sidecars": names}
                    cache.pop(legacy, None)
                elif (entry := _lookup(cache, key, names)) is not None:
                    result, hit = _result(PairedResult, entry), True
                elif legacy in cache:
                    result, hit = _result(PairedResult, cache.pop(legacy)), True
                    cache[key] = {"kind": "dagger", **asdict(result), "sidecars": names}
        baselines.append(None if base is None else base["label"])
        p_values.append(None if result is None else result.p_value)
        marks.append(False if result is None else result.significant)
        untested.append(base is not None and result is None)
        cached.append(hit)
    columns = {"baseline": baselines, "p_value": p_values, "significant": marks, "untested": untested,
               "cached": cached}
    return rows.assign(**{k: pd.Series(v, index=rows.index, dtype=object) for k, v in columns.items()})


def _result(cls: type, entry: dict) -> Any:
    return cls(**{f.name: entry[f.name] for f in fields(cls)})


# ---------------------------------------------------------------- ◆ (tied with the best row)

TIE_COLUMNS = ("tie_status", "tie_best", "tie_p", "tie_p_raw", "tie_diff", "tie_ci_low", "tie_ci_high", "tie_n",
               "tie_cached")


def competing(rows: pd.DataFrame, quality: str) -> pd.DataFrame:
    """The rows that compete at an operating point: compressed, in a track, with a quality value, within the latency
    budget (``fits``), not an ablation (a label-budget run or a registered ablation: listed apart), ordered best first
    (quality, then lower p50)."""
    sub = rows[(rows["family"] != REFERENCE_FAMILY) & rows["track"].notna() & rows[quality].notna()]
    if "ablation" in sub:
        sub = sub[~sub["ablation"].fillna("").astype(bool)]
    if "fits" in sub:
        sub = sub[sub["fits"].map(_true)]
    return sub.sort_values([quality, "p50_ms"], ascending=[False, True], kind="stable")


def mark_ties(rows: pd.DataFrame, quality: str, test: str = "ttest", cache: dict[str, dict] | None = None,
              point: str | Mapping[str, str] = "exhaustive") -> pd.DataFrame:
    """Add the tie-rule columns (see module) to selected leaderboard rows (one operating point):

    ``tie_status`` "best" / "tied" / "not tied" / "untested" (None: not competing, e.g. over the budget),
    ``tie_best`` (label of the track's best row), ``tie_p`` (Holm-corrected p vs the best), ``tie_p_raw``,
    ``tie_diff`` / ``tie_ci_low`` / ``tie_ci_high`` (mean per-query difference row - best and its 95% CI),
    ``tie_n`` (rows in the Holm family), ``tie_cached`` (the test was read from ``cache``).

    ``cache`` keeps each pair's test under :func:`tie_key` (with the sidecars' names) so a rebuild without the
    sidecars gets the same groups, and each group's outcome under :func:`group_key` (``point`` names the operating
    point there, per dataset when a mapping)."""
    cols: dict[str, dict[Any, Any]] = {c: {} for c in TIE_COLUMNS}
    memo: dict = {}
    for (dataset, track), sub in competing(rows, quality).groupby(["dataset", "track"], sort=True):
        best = sub.iloc[0]
        results: dict[Any, TieResult | None] = {}
        hits: dict[Any, bool] = {}
        for i, row in sub.iloc[1:].iterrows():
            results[i], hits[i] = _tie_test(row, best, quality, test, cache, memo)
        tested = [i for i, r in results.items() if r is not None]
        corrected = multipletests([results[i].p_value for i in tested], alpha=ALPHA, method="holm")[1] \
            if tested else []
        p_holm = dict(zip(tested, (float(p) for p in corrected)))
        for i in sub.index:
            r = results.get(i)
            cols["tie_best"][i], cols["tie_n"][i], cols["tie_cached"][i] = best["label"], len(tested), hits.get(i)
            if i == sub.index[0]:
                cols["tie_status"][i] = "best"
            elif r is None:
                cols["tie_status"][i] = "untested"
            else:
                cols["tie_status"][i] = "tied" if p_holm[i] >= ALPHA else "not tied"
                cols["tie_p"][i], cols["tie_p_raw"][i] = p_holm[i], r.p_value
                cols["tie_diff"][i], cols["tie_ci_low"][i], cols["tie_ci_high"][i] = r.mean_diff, r.ci_low, r.ci_high
        if cache is not None:
            where = point if isinstance(point, str) else point.get(dataset, "")
            cache[group_key(dataset, track, where, quality, test)] = _group_entry(sub, cols, quality, test)
    return rows.assign(**{c: pd.Series([v.get(i) for i in rows.index], index=rows.index, dtype=object)
                          for c, v in cols.items()})


def _tie_test(row: pd.Series, best: pd.Series, quality: str, test: str, cache: dict[str, dict] | None,
              memo: dict) -> tuple[TieResult | None, bool]:
    pair = _paired(row["per_query"], best["per_query"], quality, memo)
    result = None if pair is None else two_sided_test(*pair, test)
    names = [sidecar_names(row), sidecar_names(best)]
    if cache is None or not all(names):
        return result, False
    key = tie_key(row, best, quality, test)
    if result is not None:
        cache[key] = {"kind": "tie", **asdict(result), "sidecars": names}
        return result, False
    entry = _lookup(cache, key, names)
    return (None, False) if entry is None else (_result(TieResult, entry), True)


GROUP_FIELDS = ("kind", "measure", "test", "correction", "alpha", "best", "best_mean", "tied", "rows")


def _group_entry(sub: pd.DataFrame, cols: dict[str, dict], quality: str, test: str) -> dict[str, Any]:
    """A readable record of one tie group: the best row, the members, and each other row's test."""
    def num(value: Any) -> float | None:
        return None if value is None or pd.isna(value) else float(value)
    rows = {}
    for i, row in sub.iloc[1:].iterrows():
        rows[describe(row)] = {"status": cols["tie_status"][i], "mean": num(row[quality]),
                               "p_raw": num(cols["tie_p_raw"].get(i)), "p_holm": num(cols["tie_p"].get(i)),
                               "mean_diff": num(cols["tie_diff"].get(i))}
    best = sub.iloc[0]
    return {"kind": "tie-group", "measure": quality, "test": TIE_TESTS[test], "correction": "holm", "alpha": ALPHA,
            "best": describe(best), "best_mean": num(best[quality]),
            "tied": [describe(best)] + [d for d, r in rows.items() if r["status"] == "tied"], "rows": rows}


# ---------------------------------------------------------------- cache file and notes

_ENTRY_FIELDS = {None: {f.name for f in fields(PairedResult)},
                 "dagger": {f.name for f in fields(PairedResult)} | {"kind", "sidecars"},
                 "tie": {f.name for f in fields(TieResult)} | {"kind", "sidecars"},
                 "tie-group": set(GROUP_FIELDS)}


def read_cache(path: Path) -> tuple[dict[str, dict], list[str]]:
    """The paired-test cache at ``path`` (empty when absent) and the problems found reading it."""
    if not path.exists():
        return {}, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
                isinstance(v, dict) and set(v) == _ENTRY_FIELDS.get(v.get("kind"), set()) for v in data.values()):
            raise ValueError("expected an object of {key: {test, statistic, p_value, n, mean_diff, ...}} "
                             "(kinds: dagger, tie, tie-group)")
    except ValueError as exc:
        return {}, [f"{path}: unreadable paired-test cache, ignored ({exc})"]
    return data, []


def footnote(quality: str, test: str) -> str:
    """The text printed under each leaderboard table."""
    return (f"† significantly better than the best reconstruction baseline (same bytes/vector when one exists, "
            f"else the best overall) in {quality}: {TESTS[test]} on per-query {quality} averaged over seeds, "
            f"p < {ALPHA}.")


def tie_footnote(quality: str, test: str) -> str:
    """The tie rule, printed under each leaderboard table."""
    return (f"{TIE} tied with the best: each row of a track and operating point (within its latency budget) is "
            f"compared with the track's best row (highest mean {quality}) by a {TIE_TESTS[test]} on per-query "
            f"{quality}, each query's value averaged over seeds, pairing the queries both rows have; the p-values of "
            f"the track and operating point are corrected together by Holm's method "
            f"(statsmodels multipletests, method='holm'); rows with corrected p ≥ {ALPHA} are tied with the best "
            f"(the best row is in its group). *tie* column: {TIE} best, {TIE} p=… (tied, Holm-corrected p), p=… "
            f"(not tied), untested (no per-query values to pair: neither sidecars nor a cached test), n/a (not "
            f"competing: over the latency budget). The 95% CI of a difference is the t interval of the mean "
            f"per-query difference.")
