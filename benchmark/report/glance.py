"""The README's results at a glance: one track and operating point of a report's cross-dataset table, in markdown.

``python -m benchmark.report.glance reports/real-text --track 16 --point exhaustive`` prints the table (rows and
cells as the report's ``summary.json`` holds them: mean ± std over seeds, † and ◆ marks, index bytes, average, rank,
wins / ties / losses; the best value of each dataset column in bold). ``--write README.md`` replaces, in that file,
every block between ``<!-- glance REPORT TRACK POINT -->`` and ``<!-- /glance -->`` with the table of the report it
names, and every block between ``<!-- winners REPORT TRACKS -->`` and ``<!-- /winners -->`` with the report's winner
of each dataset and track (``TRACKS``: comma-separated code bytes) at the exhaustive point, its value and who is tied
with it: the README's numbers are the committed report's (``tests/test_setup.py`` checks they still are).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmark._io import write_text
from benchmark.report.tables import CROSS_SUMMARY

BLOCK = re.compile(r"<!-- (glance|winners) (\S+) (\S+)(?: (\S+))? -->\n.*?<!-- /\1 -->", re.S)
VALUE = re.compile(r"^-?\d+\.\d+")
REFERENCE = "(exact search, not ranked)"


def glance_table(report: str | Path, track: str = "16", point: str = "exhaustive", link_root: str | None = None
                 ) -> str:
    """The markdown table of ``report``'s cross-dataset table at ``track`` (code bytes) and ``point``; its dataset
    headers link to the report page (``link_root``: the report folder as the reader's file sees it, default as
    given)."""
    folder = Path(report)
    summary = json.loads((folder / "summary.json").read_text())
    key = f"{track}/{point}"
    rows: list[dict[str, Any]] = summary.get("cross_dataset", {}).get(key) or []
    if not rows:
        known = ", ".join(summary.get("cross_dataset", {})) or "none: a report of one dataset"
        raise ValueError(f"{folder / 'summary.json'}: no cross-dataset table {key!r} (it has: {known})")
    columns = list(rows[0])
    fixed = {"Method", "Family", "Index B/vec", *CROSS_SUMMARY}
    datasets = [c for c in columns if c not in fixed]
    best = {d: max((v for r in rows if REFERENCE not in r["Method"] and (v := _value(r[d])) is not None),
                   default=None) for d in datasets}
    page = f"{link_root or folder.as_posix()}/leaderboard.md"
    head = [f"[{c}]({page})" if c in datasets else c for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            text = str(r[c])
            if c in datasets and best[c] is not None and _value(text) == best[c] and REFERENCE not in r["Method"]:
                number = VALUE.match(text).group(0)
                text = f"**{number}**{text[len(number):]}"
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value(cell: Any) -> float | None:
    match = VALUE.match(str(cell))
    return float(match.group(0)) if match else None


def winners_text(report: str | Path, tracks: str = "8,16,32,48") -> str:
    """One markdown bullet per dataset of ``report`` (nested: under a README bullet): per track of ``tracks`` (code
    bytes), the best variant at the exhaustive point, its quality (with †) and its tie group, from the report's
    ``summary.json``."""
    folder = Path(report)
    summary = json.loads((folder / "summary.json").read_text())
    wanted = [t.strip() for t in tracks.split(",")]
    quality = summary.get("quality", "nDCG@10")
    by_dataset: dict[str, list[str]] = {}
    for g in summary.get("glance", []):
        track = str(g["Track"]).split(" ")[0]
        best = g.get("best exhaustive")
        if track not in wanted or not best or best == "—":
            continue
        name = best.split(", nprobe")[0]
        tied = g.get("tied with it (exhaustive)", "")
        tie = ("alone in its tie group" if tied == "alone" else "" if not tied or tied == "—"
               else f"tied {tied}" if tied.startswith("with ") else f"tied with {tied}")
        by_dataset.setdefault(g["Dataset"], []).append(
            (int(track), f"{track} B `{name}` {g.get(f'{quality} (exhaustive)', '')}" + (f" ({tie})" if tie else "")))
    if not by_dataset:
        raise ValueError(f"{folder / 'summary.json'}: no winner at tracks {tracks}")
    return "".join(f"  - **{dataset}**: " + "; ".join(text for _, text in sorted(items)) + "\n"
                   for dataset, items in by_dataset.items())


def glance_blocks(text: str, root: Path) -> list[tuple[str, str]]:
    """Each glance / winners block of ``text`` (a README under ``root``) as (what it holds now, what the report
    says)."""
    out = []
    for m in BLOCK.finditer(text):
        kind, report, first, second = m.groups()
        if kind == "glance":
            body = glance_table(root / report, first, second or "exhaustive", link_root=report)
        else:
            body = winners_text(root / report, first)
        head = " ".join(x for x in (kind, report, first, second) if x)
        out.append((m.group(0), f"<!-- {head} -->\n{body}<!-- /{kind} -->"))
    return out


def write_blocks(readme: str | Path) -> int:
    """Rewrite ``readme``'s glance blocks from their reports; returns how many changed."""
    readme = Path(readme)
    text = readme.read_text()
    blocks = glance_blocks(text, readme.parent)
    if not blocks:
        raise ValueError(f"{readme}: no '<!-- glance REPORT TRACK POINT -->' ... '<!-- /glance -->' (or winners) "
                         f"block")
    changed = sum(old != new for old, new in blocks)
    for old, new in blocks:
        text = text.replace(old, new)
    write_text(readme, text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report.glance", description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, help="a report folder (holding summary.json)")
    parser.add_argument("--track", default="16", help="code bytes per vector (default 16)")
    parser.add_argument("--point", default="exhaustive", choices=("exhaustive", "pruned"))
    parser.add_argument("--write", metavar="README", type=Path,
                        help="rewrite this file's glance blocks from the reports they name")
    args = parser.parse_args(argv)
    try:
        if args.write:
            print(f"{args.write}: {write_blocks(args.write)} glance block(s) changed")
        elif args.report:
            print(glance_table(args.report, args.track, args.point), end="")
        else:
            parser.error("give a report folder, or --write README.md")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
