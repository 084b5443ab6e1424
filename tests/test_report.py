"""Reports from a small generated results.jsonl: 2 datasets, flat + PQ/OPQ/IVF-OPQ baselines at 8 and 16 bytes/vector,
jpq, distill-vq (M sweep, loss/candidates ablation, label fractions), 2 seeds, failed records, a torn line; and from
the committed reports' records (regenerated into a temp folder, never in place)."""
from __future__ import annotations

import ast
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
NDOCS = 1000
NPROBES = {1: (-0.08, 0.1), 4: (-0.02, 0.3), 16: (0.0, 1.5)}  # nprobe: (quality offset, p50 ms); nlist = 16
DISTILL = {"M": 16, "nlist": 16, "loss": "listnet", "candidates": "ib+topk", "label_fraction": 1.0}
IVFOPQ = {"M": 16, "nlist": 16}
DISTILL_LABEL = "distill-vq (M=16)"   # params at their declared defaults are not named
DISTILL_TRACK = "distill-vq"  # its name inside track 16 B
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
        ("faiss-opq", "reconstruction", {"M": 8}, -0.15, 0.65, {}),
        ("jpq", "contrastive", {"M": 16}, -0.05, 0.7, {"fail": {0: OOM, 1: OOM}}),
        ("jpq", "contrastive", {"M": 4}, -0.05, 0.7, {"fail": {0: OOM, 1: OOM}}),  # never ran: no track known
        ("distill-vq", "distillation", DISTILL, -0.02, None, {}),
        ("distill-vq", "distillation", {**DISTILL, "M": 8}, -0.06, None, {"fail": {1: KMEANS}}),
    ],
}
FLAT_P50 = {"toy-a": 2.0, "toy-b": 1.2}  # default budgets (10%, seeds' mean p50 is 1.01x): 0.202 and 0.1212 ms


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _record(run_dir: Path, dataset: str, spec: tuple, seed: int, nprobe: int | None) -> dict:
    method, family, params, offset, p50, extra = spec
    rid = run_id(dataset, "test", method, params, seed, nprobe)
    rec = {"run_id": rid, "fit_id": run_id(dataset, "test", method, params, seed, None), "dataset": dataset,
           "split": "test", "method": method, "family": family, "params": params, "seed": seed, "nprobe": nprobe,
           "provenance": PROVENANCE, "train_seconds": 10.0 * (1 + len(params)) + seed}
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
    ivf = "nlist" in params
    factory = "Flat" if M is None else f"IVF{params['nlist']},PQ{M}" if ivf else f"PQ{M}"
    # index bytes: flat 256 B/doc + a 45-byte header; PQ M B/doc + 4096 B of codebooks; IVF + 8 B/doc of list ids
    index_bytes = 256 * NDOCS + 45 if M is None else M * NDOCS + 4096 + (8 * NDOCS if ivf else 0)
    index = {"factory": factory, "nlist": params.get("nlist", 0), "M": M or 0, "nbits": 8 if M else 32,
             "bytes_per_vector": M or 256, "index_bytes": index_bytes, "writeback": None}
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
    values = [{**r["metrics"], **r["fidelity"], **r["latency"]}[key] for r in records
              if r["dataset"] == dataset and r["method"] == method and r["params"] == params
              and r["nprobe"] == nprobe and r["status"] == "ok"]
    assert len(values) == 2
    return float(np.mean(values)), float(np.std(values, ddof=1))


def _md_tables(text: str) -> list[pd.DataFrame]:
    """Every Markdown table of ``text``, in order, indexed by its first column."""
    lines, tables, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[i:j]]
            tables.append(pd.DataFrame(rows[2:], columns=rows[0]).set_index(rows[0][0]))
            i = j
        i += 1
    return tables


def _part(md: str, heading: str) -> str:
    """The text under the Markdown heading line ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    body = md.split(f"\n{heading}\n", 1)[1]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), body, re.M)]
    return body[:ends[0]] if ends else body


def _track(md: str, dataset: str, track: int, view: str) -> pd.DataFrame:
    """The ``view`` (exhaustive/pruned) table of ``track`` on ``dataset``."""
    part = _part(_part(md, f"## {dataset}"), f"### Track {track} B/vector")
    heading = next(line for line in part.splitlines() if line.startswith(f"#### {view}"))
    return _md_tables(_part(part, heading))[0]


def _row(table: pd.DataFrame, label: str) -> pd.Series:
    hits = [i for i in table.index if i == label or i.startswith(label + " [")]
    assert len(hits) == 1, (label, list(table.index))
    return table.loc[hits[0]]


def test_outputs_written(run):
    run_dir, written, _ = run
    for name in ("leaderboard.md", "leaderboard.html", "summary.json", "significance.json", "tables/table2_16B.csv",
                 "tables/table2_8B.tex", "tables/table3.csv", "tables/table6.tex", "tables/label_budget.csv",
                 "plots/toy-a_tracks.png", "plots/toy-b_tracks.png", "plots/toy-a_frontier.png",
                 "plots/toy-a_label_budget.png", "plots/toy-a_train_time.png"):
        assert name in written and written[name] == run_dir / name, name
    for name, path in written.items():
        assert path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/toy-b_label_budget.png" not in written  # toy-b has a single label fraction


def test_tracks_hold_one_code_size_each(run):
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    for dataset in ("toy-a", "toy-b"):
        for track in (8, 16):
            for view in ("exhaustive", "pruned"):
                table = _track(md, dataset, track, view)
                ok = table[table["nDCG@10"] != "—"]
                assert set(ok["code B/vec"]) == {str(track)}, (dataset, track, view)
                assert not any(i.startswith("flat") for i in table.index)  # exact search is in no track
    assert "### Track 4 B/vector" not in md  # jpq M=4 never ran: no known size
    assert "jpq (M=4): failed: RuntimeError: CUDA out of memory (seed 0, seed 1)" in _part(md, "## toy-b")
    assert ("- Exact search (family `reference`, in no track; a reference, not an upper bound): `flat` nDCG@10"
            in _part(md, "## toy-a"))


def test_exhaustive_numbers_match_records(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    a16 = _track(md, "toy-a", 16, "exhaustive")
    row = _row(a16, DISTILL_TRACK)
    mean, std = _expected(records, "toy-a", "distill-vq", DISTILL, 16, "R@100")  # nprobe = nlist = 16
    assert row["nprobe"] == "16" and row["R@100"] == f"{mean:.3f} ± {std:.3f}" and row["seeds"] == "2"
    mean, std = _expected(records, "toy-a", "faiss-opq", {"M": 16}, None, "overlap@10")
    assert _row(a16, "faiss-opq")["overlap@10"] == f"{mean:.3f} ± {std:.3f}"
    assert _row(a16, "faiss-opq")["nprobe"] == "n/a"
    # index bytes/vector = index_bytes / docs, docs from the reference (256 B/doc + header): PQ 16 + 4.096, IVF + 8
    assert _row(a16, "faiss-pq")["index B/vec"] == "20.1" and _row(a16, "faiss-ivfopq")["index B/vec"] == "28.1"
    assert _row(a16, "faiss-pq")["train s"] == f"{20.5:.0f} ± {np.std([20, 21], ddof=1):.0f}"  # 10 * 2 + seed
    quality = [float(v.split(" ")[0]) for v in a16["nDCG@10"] if v != "—"]
    assert quality == sorted(quality, reverse=True)
    table2 = pd.read_csv(run_dir / "tables" / "table2_16B.csv", index_col=0)
    mean, _ = _expected(records, "toy-a", "faiss-opq", {"M": 16}, None, "RR@10")
    assert table2.loc["faiss-opq", "toy-a/RR@10"] == pytest.approx(mean, abs=1e-4)
    table6 = pd.read_csv(run_dir / "tables" / "table6.csv", index_col=0)
    mean, _ = _expected(records, "toy-b", "faiss-pq", {"M": 8}, None)
    assert table6.loc["faiss-pq", "toy-b/8 B"] == pytest.approx(mean, abs=1e-4)


def test_pruned_point_default_rule(run):
    """The default pruned point is a fixed share of the lists (nprobe <= nlist/16, here 1 of 16): no timing decides
    it, and flat layouts (nothing to skip) are flagged and listed after every variant that prunes."""
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    assert "nprobe ≤ nlist/16 (a fixed share of the lists, 0.0625 of nlist (no timing decides it))" in _part(
        md, "## toy-a")
    a16 = _track(md, "toy-a", 16, "pruned")
    mean, std = _expected(records, "toy-a", "distill-vq", DISTILL, 1)
    assert _row(a16, DISTILL_TRACK)["nprobe"] == "1"
    assert _row(a16, DISTILL_TRACK)["nDCG@10"] == f"{mean:.3f} ± {std:.3f} †"
    order = list(a16.index)
    over = [i for i in order if i.split(" [")[0] in ("faiss-pq", "faiss-opq", "jpq")]
    assert order[-len(over):] == over and len(over) == 3
    marker = _row(a16, "faiss-pq").name.split(" ", 1)[1]
    assert f"{marker} flat layout: no lists to skip, it scans every code" in _part(md, "## toy-a")


def test_under_load_mark(tmp_path):
    """A record timed under load gets ‡ on its p50 and the footnote that says how to re-time it; the others none."""
    records = write_fixture(tmp_path, {"toy-a": SPECS["toy-a"]}, torn=False)
    lines = []
    for rec in records:
        if rec["status"] == "ok":
            rec["latency"]["under_load"] = rec["method"] == "jpq" and rec["seed"] == 1
        lines.append(json.dumps(rec))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    a16 = _track(md, "toy-a", 16, "exhaustive")
    assert a16.loc[[i for i in a16.index if i.startswith("jpq")][0], "p50 ms"].endswith(" ‡")
    assert not any(v.endswith("‡") for i, v in a16["p50 ms"].items() if not i.startswith("jpq"))
    assert "‡ after a p50: timed under load" in md and "--retime DIR" in md


def test_budget_option(tmp_path):
    records = write_fixture(tmp_path, {"toy-a": SPECS["toy-a"]}, torn=False)
    build_report(tmp_path, budget_ms=0.35)
    md = (tmp_path / "leaderboard.md").read_text()
    row = _row(_track(md, "toy-a", 16, "pruned"), DISTILL_TRACK)
    mean, std = _expected(records, "toy-a", "distill-vq", DISTILL, 4)  # 0.303 ms fits 0.35, 1.515 does not
    assert row["nprobe"] == "4" and row["nDCG@10"].startswith(f"{mean:.3f} ± {std:.3f}")
    assert "p50 ≤ 0.35 ms (given)" in md
    build_report(tmp_path, budget_fraction=0.9)  # 1.82 ms: every point fits, pruned = best = nprobe 16
    md = (tmp_path / "leaderboard.md").read_text()
    assert _row(_track(md, "toy-a", 16, "pruned"), DISTILL_TRACK)["nprobe"] == "16"
    assert "## Across datasets" not in md  # one dataset
    for bad in ({"budget_ms": 0.0}, {"budget_ms": float("nan")}, {"budget_fraction": 1.5}, {"track": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_report(tmp_path, **bad)


def test_significance_marks(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    a16 = _track(md, "toy-a", 16, "exhaustive")
    assert _row(a16, DISTILL_TRACK)["nDCG@10"].endswith(" †")
    assert "†" not in _row(a16, "jpq")["nDCG@10"]
    assert "†" not in _row(a16, "faiss-opq")["nDCG@10"]  # baselines are never marked
    assert "one-sided paired t-test (scipy.stats.ttest_rel" in _part(md, "## toy-a")
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
    row = next(r for r in summary["rows"] if r["dataset"] == "toy-a" and r["view"] == "exhaustive"
               and r["variant"] == DISTILL_LABEL)
    assert row["significant"] and row["baseline"] == "faiss-ivfopq" and row["p_value"] < 1e-6
    assert row["track"] == 16 and row["name_in_track"] == DISTILL_TRACK
    pruned = next(r for r in summary["rows"] if r["dataset"] == "toy-a" and r["view"] == "pruned"
                  and r["variant"] == DISTILL_LABEL)
    assert pruned["baseline"] == "faiss-ivfopq" and pruned["nprobe"] == 1  # flat PQ cannot prune: no baseline


def test_significance_survives_without_sidecars(tmp_path):
    """significance.json keeps the paired tests: rebuilt without the per-query sidecars (as a committed report is),
    the † marks and p-values stay; without the cache too, the report says the marks were not tested."""
    write_fixture(tmp_path, {"toy-a": SPECS["toy-a"]}, torn=False)
    assert "significance.json" in build_report(tmp_path)

    def p_values() -> dict:
        rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
        return {(r["view"], r["variant"]): r["p_value"] for r in rows if r["p_value"] is not None}

    tested = p_values()
    assert len(tested) >= 10
    shutil.rmtree(tmp_path / "per_query")
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert p_values() == tested
    assert _row(_track(md, "toy-a", 16, "exhaustive"), DISTILL_TRACK)["nDCG@10"].endswith(" †")
    assert f"read from `significance.json`, the paired tests an earlier build of this report computed from those " \
           f"sidecars ({len(tested)} row(s))" in md
    (tmp_path / "significance.json").write_text('{"x": 1}')
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert p_values() == {} and "†" not in _row(_track(md, "toy-a", 16, "exhaustive"), DISTILL_TRACK)["nDCG@10"]
    assert "† not tested anywhere in this report" in md
    assert "significance.json: unreadable paired-test cache, ignored" in _part(md, "## Problems")


def test_peer_rows(tmp_path):
    """A peers.jsonl record (bench/peer_scann.py --out) shows as a peer row beside the best row of its family and
    code size, with the difference; a broken peer line is a named problem; the frontier plot still renders."""
    records = write_fixture(tmp_path, {"toy-a": SPECS["toy-a"]}, torn=False)
    peer = {"schema_version": 1, "dataset": "toy-a", "split": "test", "peer": "scann", "peer_version": "1.4.2",
            "family": "distillation", "method": "score_ah lut16", "bytes_per_vector": 16, "params": {"blocks": 32},
            "metrics": {"nDCG@10": 0.25, "RR@10": 0.2, "R@100": 0.5}, "fidelity": {"overlap@10": 0.4},
            "latency": {"p50_ms": 0.0123, "under_load": True}}
    untimed = {**peer, "bytes_per_vector": 8, "latency": None}   # an older peer record: no timing
    (tmp_path / "peers.jsonl").write_text(json.dumps(peer) + "\n" + '{"dataset": "toy-a"}\n' + json.dumps(untimed)
                                          + "\n")
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    table = _md_tables(_part(_part(md, "## toy-a"), "### Peers: other implementations on the same embeddings"))[0]
    row = table[table["code B/vec"] == "16"].loc["scann 1.4.2: score_ah lut16"]
    assert table[table["code B/vec"] == "8"]["p50 ms"].tolist() == ["—"]
    # the best distillation row at 16 B, exhaustive (nprobe 16 = nlist), is the DISTILL variant: its mean here
    best, std = _expected(records, "toy-a", "distill-vq", DISTILL, 16)
    assert row["code B/vec"] == "16" and row["nDCG@10"] == "0.250" and row["overlap@10"] == "0.400"
    p50, _ = _expected(records, "toy-a", "distill-vq", DISTILL, 16, "p50_ms")
    assert row["best here (same family, exhaustive)"] == f"{DISTILL_LABEL}: {best:.3f} ± {std:.3f}, p50 {p50:.3f} ms"
    assert row["p50 ms"] == "0.012 ‡"  # timed by the same protocol; under load marked
    assert row["Δ nDCG@10 (here − peer)"] == f"{best - 0.25:+.3f}"
    assert "peers.jsonl:2: unreadable peer record, skipped (missing ['peer'," in _part(md, "## Problems")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["Peer"] for p in summary["peers"]] == ["scann 1.4.2: score_ah lut16"] * 2
    assert (tmp_path / "plots" / "toy-a_frontier.png").stat().st_size > 0


def test_failed_and_missing_rows(run):
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    section = _part(md, "## toy-b")
    b16 = _track(md, "toy-b", 16, "exhaustive")
    jpq = _row(b16, "jpq")
    assert set(jpq.drop("Family")) == {"—"}
    marker = jpq.name.split(" ", 1)[1]
    assert re.search(re.escape(marker) + r" failed: RuntimeError: CUDA out of memory \(seed 0, seed 1\)", section)
    partial = _row(_track(md, "toy-b", 8, "exhaustive"), "distill-vq")
    assert partial["seeds"] == "1" and "±" not in partial["nDCG@10"]
    assert "some runs failed: ValueError: k-means did not converge (seed 1)" in section
    ablation = _row(b16, "distill-vq (loss=margin-mse)")
    assert ablation["nDCG@10"] == "—" and "not run on this dataset (no record)" in section


def test_sanity_line_and_problems(run):
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    assert "- ✓ the reference tops every compressed point in nDCG@10" in _part(md, "## toy-a")
    problems = _part(md, "## Problems")
    assert "results.jsonl:" in problems and "unreadable record" in problems
    provenance = _part(md, "## Provenance")
    assert "git sha: `0123456789ab`" in provenance and "CPU: `fixture`" in provenance


def test_provenance_reports_machine_load():
    from benchmark.provenance import provenance
    from benchmark.report.document import provenance_lines
    load = provenance(0)["loadavg"]
    assert len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load)
    recs = [{"provenance": {**PROVENANCE, "loadavg": [1.0, five, 1.0]}} for five in (0.5, 1.5, 14.0)]
    assert provenance_lines(recs)[-1] == ("machine load (5-minute load average when a fit's records were written): "
                                         "median 1.5, max 14.0 over 3 records (timings taken at a load above the "
                                         "machine's cores are inflated)")
    assert not any("machine load" in line for line in provenance_lines([{"provenance": PROVENANCE}]))


def test_glance_and_cross_dataset(run):
    run_dir, _, records = run
    md = (run_dir / "leaderboard.md").read_text()
    glance = _md_tables(_part(md, "## At a glance"))[0].reset_index()
    a16 = glance[(glance["Dataset"] == "toy-a") & (glance["Track"] == "16 B")].iloc[0]
    assert a16["best exhaustive"] == f"{DISTILL_TRACK}, nprobe 16" and a16["nDCG@10 (exhaustive)"].endswith("†")
    assert len(glance) == 4  # 2 datasets x 2 tracks, never one row over several tracks
    assert not glance.isin(["nan", "NaN"]).any().any()   # a point with no row reads "—"
    cross = _part(md, "## Across datasets")
    exhaustive = _md_tables(_part(_part(cross, "### Track 16 B/vector"), "#### exhaustive"))[0]
    assert list(exhaustive.columns) == ["Family", "Index B/vec", "toy-a", "toy-b", "Average", "Avg rank",
                                        "W / T / L vs best recon.", "In best group ◆"]
    # IVF stores a list id per doc and its centroids beside the 16 code bytes; flat PQ only its codebooks
    ivf_bpv = [float(v) for v in exhaustive.loc["faiss-ivfopq", "Index B/vec"].split("–")]
    assert all(v > 16 for v in ivf_bpv) and ivf_bpv == sorted(ivf_bpv)
    assert float(exhaustive.loc["flat (exact search, not ranked)", "Index B/vec"].split("–")[0]) >= 4 * 16
    assert exhaustive.index[0] == "flat (exact search, not ranked)"
    a, sa = _expected(records, "toy-a", "faiss-ivfopq", IVFOPQ, 16)
    b, sb = _expected(records, "toy-b", "faiss-ivfopq", IVFOPQ, 16)
    row = exhaustive.loc["faiss-ivfopq"]
    assert (row["toy-a"], row["toy-b"], row["Average"]) == (f"{a:.3f} ± {sa:.3f}", f"{b:.3f} ± {sb:.3f}",
                                                            f"{(a + b) / 2:.3f}")
    # distill-vq is the best of both datasets' 16 B track (rank 1 on each) and beats the best baseline on both
    assert exhaustive.loc[DISTILL_TRACK, "Avg rank"] == "1.0"
    assert exhaustive.loc[DISTILL_TRACK, "W / T / L vs best recon."] == "2 / 0 / 0"
    assert exhaustive.loc["jpq", "W / T / L vs best recon."] == "0 / 1 / 0"   # toy-a only, noise: a tie
    assert exhaustive.loc["faiss-ivfopq", "W / T / L vs best recon."] == "—"  # baselines are not compared
    # distill-vq is each dataset's best; a reconstruction baseline far below it is in neither tie group
    assert exhaustive.loc[DISTILL_TRACK, "In best group ◆"] == "2 / 2"
    assert exhaustive.loc["faiss-ivfopq", "In best group ◆"] == "0 / 2"
    assert exhaustive.loc["flat (exact search, not ranked)", "In best group ◆"] == "—"
    assert exhaustive.loc["jpq", "toy-b"] == "—" and exhaustive.loc["jpq", "Average"] == "—"
    averages = [float(v) for v in exhaustive["Average"].iloc[1:] if v != "—"]
    assert averages == sorted(averages, reverse=True)
    assert exhaustive.loc[DISTILL_TRACK, "toy-a"].endswith(" † ◆")  # † and the best of toy-a's track: ◆
    assert "faiss-pq" not in _md_tables(_part(_part(cross, "### Track 16 B/vector"), "#### pruned"))[0].index


def test_latex_tables(run):
    run_dir, _, records = run
    for stem in ("table2_16B", "table2_8B", "table3", "table6", "label_budget"):
        tex = (run_dir / "tables" / f"{stem}.tex").read_text()
        assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{"))
    table2 = (run_dir / "tables" / "table2_16B.tex").read_text()
    assert r"\multicolumn{3}{c}{toy-a}" in table2 and r"\cmidrule(lr){2-4}" in table2
    # a paper-ready table: the exact-search reference first (never bold), rows grouped by family, mean ± std over
    # seeds, † on the quality measure of significant rows, LaTeX-safe caption
    assert re.search(r"^flat \(exact search\) & [0-9.]+ &", table2, re.M) and "\\textit{reconstruction}" in table2
    distill = next(line for line in table2.splitlines() if line.startswith(f"{DISTILL_TRACK} &"))
    mean, std = _expected(records, "toy-a", "distill-vq", DISTILL, 16)
    assert distill.split(" & ")[1] == f"\\textbf{{{mean:.3f}}}{{\\scriptsize$\\pm${std:.3f}}}$^\\dagger$"
    assert table2.index("\\textit{reconstruction}") < table2.index("\\textit{distillation}")
    assert "$\\pm$" in table2.split("\n")[2] and "†" not in table2 and "±" not in table2
    table3 = pd.read_csv(run_dir / "tables" / "table3.csv", index_col=[0, 1, 2])
    assert {("margin-mse", "ib+topk"), ("listnet", "topk"), ("listnet", "ib+topk")} == {
        (loss, cand) for _, loss, cand in table3.index}
    budget = pd.read_csv(run_dir / "tables" / "label_budget.csv", index_col=0)
    assert list(budget.columns) == ["toy-a/10%", "toy-a/50%", "toy-a/100%", "toy-b/100%"]


def test_html_self_contained(run):
    run_dir, _, _ = run
    page = (run_dir / "leaderboard.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "<script>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count('<div class="scroll"><table class="sortable">') == page.count("<table")  # no overflow
    assert "CUDA out of memory" in page and "†" in page and "<em>index B/vec</em>" in page
    assert '<a href="tables/table2_16B.csv"><code>tables/table2_16B.csv</code></a>' in page   # files are links
    links, ids = re.findall(r'href="#([^"]+)"', page), re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)) and set(links) <= set(ids)  # the contents list points at unique anchors
    assert {"toy-a", "toy-a-track-16-b-vector", "toy-b-track-16-b-vector", "across-datasets"} <= set(links)


def test_track_option_and_errors(tmp_path):
    write_fixture(tmp_path, torn=False)
    build_report(tmp_path, quality="RR@10", track=8, test="wilcoxon")
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith(f"# vqbench leaderboard: {tmp_path.name}, track 8 B\n")   # named after its folder
    assert "### Track 8 B/vector" in md and "### Track 16 B/vector" not in md
    assert "Wilcoxon signed-rank" in md and "Quality measure: **RR@10**" in md
    assert "Exact search (family `reference`" in md  # the reference stays
    with pytest.raises(ValueError, match=r"track 5 is not in .*results.jsonl; its tracks \(bytes/vector\): 8, 16"):
        build_report(tmp_path, track=5)


def test_missing_tables_are_skipped(tmp_path):
    write_fixture(tmp_path, {"toy-a": COMMON[:3]}, torn=False)
    written = build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "table3: skipped" in md and "label_budget: skipped" in md
    assert "tables/table2_16B.csv" in written and "tables/table3.csv" not in written
    assert "plots/toy-a_label_budget.png" not in written


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


def test_cli(run, tmp_path):
    run_dir, _, _ = run
    shutil.copy(run_dir / "results.jsonl", tmp_path / "results.jsonl")
    out = tmp_path / "view"
    proc = subprocess.run([sys.executable, "-m", "benchmark.report", str(tmp_path), "--track", "16", "--budget-ms",
                           "0.35", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "leaderboard.md").read_text()
    assert "leaderboard.md" in proc.stdout and not (tmp_path / "leaderboard.md").exists()
    assert "p50 ≤ 0.35 ms (given)" in md and "### Track 8 B/vector" not in md
    assert "† not tested anywhere in this report: no per-query sidecar" in md  # sidecars were not copied
    proc = subprocess.run([sys.executable, "-m", "benchmark.report", str(tmp_path), "--track", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "its tracks (bytes/vector): 8, 16" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmark.report", str(tmp_path / "nowhere")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nowhere/results.jsonl does not exist" in proc.stderr


@pytest.mark.parametrize("name", ["synthetic", "debian-desc"])
def test_committed_reports_regenerate(tmp_path, name):
    """The committed records give tracks whose pruned point really prunes; a renamed copy of them makes a
    two-dataset run with its cross-dataset table."""
    lines = (REPO / "reports" / name / "results.jsonl").read_text().splitlines()
    copy = []
    for line in lines:
        rec = json.loads(line)
        if rec["family"] != "contrastive":  # one family missing on the copy: its average is —
            copy.append(json.dumps({**rec, "dataset": f"{name}-copy", "run_id": rec["run_id"][::-1]}))
    (tmp_path / "results.jsonl").write_text("\n".join(lines + copy) + "\n")
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["problems"] == [] and summary["records"] == len(lines) + len(copy)
    pruned = [r for r in summary["rows"] if r["view"] == "pruned" and r["dataset"] == name and r["status"] == "ok"]
    exhaustive = {r["variant"]: r for r in summary["rows"] if r["view"] == "exhaustive" and r["dataset"] == name}
    assert all(r["nprobe"] is not None and r["nprobe"] * 16 <= exhaustive[r["variant"]]["nprobe"]
               for r in pruned if r["fits_budget"])
    assert any(r["fits_budget"] for r in pruned) and not any(r["fits_budget"] for r in pruned if r["nprobe"] is None)
    cross = _part(md, "## Across datasets")
    contested = {r["track"] for r in pruned if r["family"] == "contrastive"} & {r["track"] for r in pruned
                                                                              if r["family"] == "reconstruction"}
    assert contested
    for track in contested:  # tracks holding both families (faiss-native budgets have no learned row)
        table = _md_tables(_part(_part(cross, f"### Track {track} B/vector"), "#### exhaustive"))[0]
        assert list(table.columns) == ["Family", "Index B/vec", name, f"{name}-copy", "Average", "Avg rank",
                                       "W / T / L vs best recon.", "In best group ◆"]
        learned = table[table["Family"] == "contrastive"]
        assert len(learned) and set(learned[f"{name}-copy"]) == {"—"} and set(learned["Average"]) == {"—"}
        recon = table[table["Family"] == "reconstruction"]
        assert (recon[name] == recon[f"{name}-copy"]).all()  # the copy holds the same numbers


def test_report_code_names_no_method():
    """Families come from the registry and the reference from REFERENCE_FAMILY: no string literal of the report
    code is a method name."""
    from benchmark.registry import available
    names = set(available())
    for path in sorted((REPO / "benchmark" / "report").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, (path.name, node.value)
                assert not any(re.search(rf"`{re.escape(n)}`|\b{re.escape(n)}\(", node.value) for n in names
                               if "-" in n), (path.name, node.value)


def test_frontier_leaves_out_reduced_label_variants(tmp_path):
    """A variant trained on a fraction of the labels belongs to the label-budget plot, not the frontier: even when it
    is the best point at its code size, the Pareto table lists the full-data variant instead."""
    lucky = ("distill-vq", "distillation", {**DISTILL, "M": 8, "label_fraction": 0.3}, -0.01, None, {})
    write_fixture(tmp_path, {"toy-a": SPECS["toy-a"] + [lucky]}, torn=False)
    build_report(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    front = _md_tables(_part(md, "## toy-a").split("_frontier.png)", 1)[1])[0]
    assert "distill-vq (M=8)" in front.index
    assert not any("label_fraction=0.3" in label for label in front.index)
    budget = pd.read_csv(tmp_path / "tables" / "label_budget.csv", index_col=0)  # ... which still shows it
    assert not np.isnan(budget.loc["distill-vq (M=8)", "toy-a/30%"])


def test_trained_on_names_an_approximate_teacher_and_its_recall():
    """A distillation row whose teacher top-K came from the ivf teacher says so, with the recall its record measured;
    an exact teacher adds nothing."""
    from benchmark.report.tables import setup_cells
    origin = {"queries": "unlabeled", "n": 5000, "labels_used": False,
              "teacher": {"kind": "ivf", "k": 50, "factory": "IVF4096,SQ8", "recall_at_k": 0.9712, "nprobe": 64}}
    rec = {"params": {}, "setup": {"layout": "IVF", "query_side": "adapter", "train_queries": origin}}
    assert setup_cells(rec)["trained_on"] == "unlabeled (5,000; labels unread; IVF4096,SQ8 teacher, recall@50 0.971)"
    origin["teacher"] = {"kind": "exact", "k": 50}
    assert setup_cells(rec)["trained_on"] == "unlabeled (5,000; labels unread)"


def test_ablation_rows_are_listed_apart(run):
    """Label-budget runs (label_fraction < 1) and registered ablations are not contenders: no tie test, no verdict,
    no glance, no cross-dataset or paper-table row; each track lists them in their own table with why."""
    run_dir, _, _ = run
    md = (run_dir / "leaderboard.md").read_text()
    track = _part(_part(md, "## toy-a"), "### Track 16 B/vector")
    ranked_table = _md_tables(_part(track, "#### exhaustive (nprobe = nlist, or no IVF)"))[0]
    assert not any("label_fraction" in label for label in ranked_table.index)
    apart = _md_tables(_part(track, "#### exhaustive: ablations and label-budget runs, not ranked"))[0]
    assert {label: apart.loc[label, "Listed apart"] for label in apart.index} == {
        "distill-vq (label_fraction=0.5)": "label budget 50%", "distill-vq (label_fraction=0.1)": "label budget 10%"}
    assert "tie" not in apart.columns
    summary = json.loads((run_dir / "summary.json").read_text())
    marked = {r["name_in_track"]: r["listed_apart"] for r in summary["rows"]
              if r["dataset"] == "toy-a" and r["track"] == 16}
    assert marked["distill-vq (label_fraction=0.1)"] == "label budget 10%" and marked[DISTILL_TRACK] is None
    assert all("label_fraction" not in str(g) for g in summary["glance"])
    assert not any("label_fraction" in v["variant"] for v in summary["rows"] if v["tie"]["status"])
    assert "label\\_fraction" not in (run_dir / "tables" / "table2_16B.tex").read_text()
    from benchmark.report.tables import ablation_text
    assert ablation_text("distill-vq-pq-only", float("nan")) == "ablation of distill-vq"
    assert ablation_text("distill-vq", 1.0) == "" and ablation_text("no-such-method", 0.25) == "label budget 25%"


def test_label_budget_plot_draws_a_run_without_the_param_at_100_percent(tmp_path):
    """The full-data run of a swept variant often has no label_fraction param (NaN): it is drawn at 100%, and the
    panel is drawn at all (a NaN tick once left the whole panel blank)."""
    import matplotlib.image

    from benchmark.report import plots
    rows = pd.DataFrame([{"track": 16.0, "nDCG@10": v, "nDCG@10_std": 0.002, "label_fraction": f,
                          "base_label_fraction": "distill-vq (M=16)", "tlabel": "distill-vq", "family": "distillation",
                          "method": "distill-vq"}
                         for f, v in ((float("nan"), 0.50), (0.01, 0.40), (0.1, 0.45))]
                        + [{"track": 16.0, "nDCG@10": v, "nDCG@10_std": 0.002, "label_fraction": f,
                            "base_label_fraction": "jpq (M=16)", "tlabel": "jpq", "family": "contrastive",
                            "method": "jpq"} for f, v in ((1.0, 0.52), (0.01, 0.41), (0.1, 0.46))]
                        + [{"track": 16.0, "nDCG@10": 0.39, "nDCG@10_std": 0.0, "label_fraction": float("nan"),
                            "base_label_fraction": "faiss-opq", "tlabel": "faiss-opq", "family": "reconstruction",
                            "method": "faiss-opq"}])
    path = plots.label_budget(rows, "nDCG@10", 0.6, "t", tmp_path / "lb.png")
    image = matplotlib.image.imread(path)
    panel = image[:, : image.shape[1] // 2, :3]               # the panel (the legend is on the right)
    assert (panel.mean(axis=2) < 0.9).mean() > 0.02             # ink: axes, grid, the curve; ~0.3% when blank
