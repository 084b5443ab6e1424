"""Which verdicts held and which flipped between two builds of a leaderboard.

``python -m benchmark.report.verdicts OLD NEW`` (each a report folder or its ``summary.json``) prints one Markdown
table: per dataset, track and operating point, the winner before and after (with the quality measure), the tie group
after, and what happened:

- **held**: the same winner;
- **held (tied)**: another winner, but the old one is in the new tie group (the difference is not significant);
- **flipped**: the old winner is outside the new tie group (or gone from the track);
- **new** / **gone**: the track exists in one build only.

A build from before the tie groups (its summary has no tie status) still has winners: the best mean among the rows
that fit the budget.

Rows are matched by their name inside the track (``name_in_track``), the name a reader sees. The summaries are the
report builder's own (:mod:`benchmark.report.document`), so nothing is recomputed here: a winner is the row whose
tie status is ``best``, the tie group the rows ``best`` or ``tied`` (Holm-corrected paired tests).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Key = tuple[str, str, Any]   # (dataset, view, track)


def load_summary(path: str | Path) -> dict[str, Any]:
    """A report's ``summary.json`` (``path`` is the file or its folder); a clear error when it is not one."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {file}: not a readable report summary ({type(exc).__name__}: {exc}); build it "
                         f"with run_benchmark.py --report-only <folder>")
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list) or "quality" not in summary:
        raise SystemExit(f"error: {file}: expected the report builder's summary.json (keys 'quality' and 'rows')")
    return summary


def track_verdicts(summary: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Per (dataset, view, track): the winner, its quality and the tie group (``tied``: the other rows in it). A
    summary written before the tie groups existed (no row has a tie status) names as winner the row with the best
    mean among those that fit the budget, and its tie group is unknown (``tied`` None)."""
    quality = summary["quality"]
    tested = any((row.get("tie") or {}).get("status") for row in summary["rows"])
    out: dict[Key, dict[str, Any]] = {}
    for row in summary["rows"]:
        key = (row["dataset"], row["view"], row["track"])
        value = ((row.get("values") or {}).get(quality) or {}).get("mean")
        if not tested:
            if row.get("status") == "ok" and row.get("fits_budget", True) and isinstance(value, (int, float)) and (
                    key not in out or value > out[key]["value"]):
                out[key] = {"winner": row["name_in_track"], "value": value, "tied": None}
            continue
        status = (row.get("tie") or {}).get("status")
        if status not in ("best", "tied"):
            continue
        entry = out.setdefault(key, {"winner": None, "value": None, "tied": []})
        if status == "best":
            entry["winner"], entry["value"] = row["name_in_track"], value
        else:
            entry["tied"].append(row["name_in_track"])
    return {k: v for k, v in out.items() if v["winner"] is not None}


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (dataset, view, track) of either build, sorted; see the module doc for the outcomes."""
    before, after = track_verdicts(old), track_verdicts(new)
    rows = []
    for key in sorted(set(before) | set(after), key=lambda k: (k[0], k[1], float(k[2]) if k[2] is not None
                                                                else -1.0)):
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            outcome = "new" if b is None else "gone"
        elif a["winner"] == b["winner"]:
            outcome = "held"
        elif b["winner"] in (a["tied"] or []):
            outcome = "held (tied)"
        else:
            outcome = "flipped"
        rows.append({"dataset": key[0], "point": key[1], "track": key[2], "before": b, "after": a,
                     "outcome": outcome})
    return rows


def _winner(v: dict[str, Any] | None) -> str:
    if v is None:
        return "—"
    return f"{v['winner']} ({v['value']:.3f})" if isinstance(v["value"], (int, float)) else v["winner"]


def markdown(rows: list[dict[str, Any]], quality: str) -> str:
    lines = [f"| dataset | point | track (B) | winner before ({quality}) | winner after | tied with it after | "
             f"verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tied = ("not tested" if r["after"] and r["after"]["tied"] is None else
                ", ".join(r["after"]["tied"]) if r["after"] and r["after"]["tied"] else "—")
        lines.append(f"| {r['dataset']} | {r['point']} | {r['track']} | {_winner(r['before'])} | "
                     f"{_winner(r['after'])} | {tied} | {r['outcome']} |")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("held", "held (tied)", "flipped", "new", "gone")}
    lines += ["", ", ".join(f"{n} {o}" for o, n in counts.items() if n)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report.verdicts", description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the earlier report folder (or its summary.json)")
    parser.add_argument("new", help="the later report folder (or its summary.json)")
    args = parser.parse_args(argv)
    old, new = load_summary(args.old), load_summary(args.new)
    if old["quality"] != new["quality"]:
        print(f"error: the builds rank by different measures ({old['quality']} vs {new['quality']})",
              file=sys.stderr)
        return 2
    sys.stdout.write(markdown(compare(old, new), new["quality"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
