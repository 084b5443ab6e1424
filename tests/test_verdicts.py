"""benchmark.report.verdicts: which track verdicts held and which flipped between two builds of a leaderboard."""
from __future__ import annotations

import json

import pytest

from benchmark.report.verdicts import compare, load_summary, main


def _row(track, name, status, mean, view="exhaustive", dataset="d"):
    return {"dataset": dataset, "view": view, "track": track, "name_in_track": name,
            "values": {"nDCG@10": {"mean": mean, "std": 0.0}}, "tie": {"status": status}}


OLD = {"quality": "nDCG@10", "rows": [
    _row(16, "distill-vq", "best", 0.51), _row(16, "jpq-ivf", "not tied", 0.49),
    _row(32, "jpq-ivf", "best", 0.56), _row(32, "distill-vq", "tied", 0.555),
    _row(8, "faiss-ivfopq", "best", 0.30), _row(8, "jpq", "not tied", 0.28),
    _row(48, "flat-ish", "best", 0.60)]}
NEW = {"quality": "nDCG@10", "rows": [
    _row(16, "distill-vq", "best", 0.52), _row(16, "jpq-ivf", "tied", 0.515),      # held, now tied
    _row(32, "distill-vq", "best", 0.57), _row(32, "jpq-ivf", "tied", 0.565),      # another winner, old one tied
    _row(8, "jpq", "best", 0.33), _row(8, "faiss-ivfopq", "not tied", 0.30),       # the old winner lost
    _row(24, "distill-vq", "best", 0.54)]}                                          # a new track; 48 B is gone


def test_outcomes_per_track():
    got = {r["track"]: r["outcome"] for r in compare(OLD, NEW)}
    assert got == {8: "flipped", 16: "held", 24: "new", 32: "held (tied)", 48: "gone"}
    rows = compare(OLD, NEW)
    assert [r["track"] for r in rows] == [8, 16, 24, 32, 48]                # numeric order, not text order
    assert next(r for r in rows if r["track"] == 16)["after"] == {"winner": "distill-vq", "value": 0.52,
                                                                  "tied": ["jpq-ivf"]}


def test_cli_prints_the_table_and_refuses_what_is_not_a_summary(tmp_path, capsys):
    for name, summary in (("old", OLD), ("new", NEW)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert main([str(tmp_path / "old"), str(tmp_path / "new" / "summary.json")]) == 0
    out = capsys.readouterr().out
    assert "| d | exhaustive | 8 | faiss-ivfopq (0.300) | jpq (0.330) | — | flipped |" in out
    assert "1 held, 1 held (tied), 1 flipped, 1 new, 1 gone" in out
    (tmp_path / "bad.json").write_text(json.dumps({"rows": "x"}))
    with pytest.raises(SystemExit, match="bad.json: expected the report builder's summary.json"):
        load_summary(tmp_path / "bad.json")
    with pytest.raises(SystemExit, match="missing.*not a readable report summary"):
        load_summary(tmp_path / "missing")
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "summary.json").write_text(json.dumps({**NEW, "quality": "RR@10"}))
    assert main([str(tmp_path / "old"), str(tmp_path / "rr")]) == 2


def test_a_build_from_before_the_tie_groups_still_has_winners():
    """Older summaries carry no tie status: the winner is the best mean of the rows that fit the budget."""
    old = {"quality": "nDCG@10", "rows": [
        {**_row(16, "jpq-ivf", None, 0.53), "status": "ok", "fits_budget": True},
        {**_row(16, "flat-slow", None, 0.60), "status": "ok", "fits_budget": False},   # over the latency budget
        {**_row(16, "distill-vq", None, 0.51), "status": "ok", "fits_budget": True},
        {**_row(8, "broken", None, None), "status": "failed"}]}
    for r in old["rows"]:
        r.pop("tie")
    got = {r["track"]: (r["before"], r["outcome"]) for r in compare(old, NEW)}
    assert got[16] == ({"winner": "jpq-ivf", "value": 0.53, "tied": None}, "held (tied)")   # jpq-ivf is tied after
    assert got[8][1] == "new"                                                               # no ok row before
