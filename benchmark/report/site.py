"""The static leaderboard site: ``index.html`` across every report folder under a root (``reports/``), each report's
own ``leaderboard.html`` one click away, and back.

``python -m benchmark.report.site [reports] [--index-only]`` rebuilds every report folder's pages from its
``results.jsonl`` (:func:`benchmark.report.build_report`, with the link back to the index), then writes the index:

- **At a glance**: one sortable table over every report and dataset: per track, the best variant at the exhaustive
  and the pruned point, its quality and the rows tied with it (each report's ``summary.json`` ``glance``).
- **Across datasets**: each multi-dataset report's BEIR-shaped tables (a column per collection x encoder, mean ± std,
  † and ◆ marks, average, average rank, wins / ties / losses against the best reconstruction baseline), one per
  track and operating point, chosen with a track and a point selector.
- **Reports**: every report with its datasets (each linked to its section of the report page), tracks, records and
  the time span its records were written in.

Plain HTML, CSS and a few lines of JS, no CDN and no fetch: the pages work offline and from ``file://``.
"""
from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

from benchmark._io import write_text
from benchmark.report.document import SITE_INDEX, TITLE, build_report
from benchmark.report.html import CSS, SORT_JS, slug, table_cell
from benchmark.report.stats import TIE

PAGE = "leaderboard.html"

SELECT_JS = """
function applyFilters() {
  var track = document.getElementById('track').value, point = document.getElementById('point').value;
  document.querySelectorAll('[data-track]').forEach(function (el) {
    var ok = (track === 'all' || el.getAttribute('data-track') === track) &&
             (!el.hasAttribute('data-point') || point === 'all' || el.getAttribute('data-point') === point);
    el.style.display = ok ? '' : 'none';
  });
}
['track', 'point'].forEach(function (id) { document.getElementById(id).addEventListener('change', applyFilters); });
applyFilters();
"""


def report_dirs(root: Path) -> list[Path]:
    """The report folders directly under ``root``: those holding a ``results.jsonl``."""
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "results.jsonl").is_file())


def build_site(root: str | Path, rebuild: bool = True) -> Path:
    """Rebuild every report page under ``root`` (unless ``rebuild`` is False: their current ``summary.json`` is
    read) and write ``root/index.html``; return its path."""
    root = Path(root)
    dirs = report_dirs(root)
    if not dirs:
        raise ValueError(f"{root}: no report folder (a folder holding results.jsonl) to index")
    for d in dirs:
        if rebuild or not (d / "summary.json").is_file():
            build_report(d, site=True)
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in dirs}
    index = root / SITE_INDEX
    write_text(index, render_index(summaries))
    return index


SITE_CSS = """
table.wrap td { white-space: normal; text-align: left; max-width: 24rem; vertical-align: top; }
p.filters { position: sticky; top: 0; background: #fff; padding: 0.4rem 0; z-index: 1; }
"""


def _table(columns: list[str], rows: list[list[Any]], attrs: list[dict[str, str]] | None = None,
           links: dict[int, list[str | None]] | None = None, wrap: bool = False) -> str:
    """A sortable table; ``attrs[i]``: data attributes of row i; ``links[col][i]``: an href for that cell."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            href = (links or {}).get(j, [None] * len(rows))[i]
            cells.append(f'<td><a href="{html.escape(href)}">{html.escape(str(value))}</a></td>' if href
                         else table_cell(value))
        data = "".join(f' data-{k}="{html.escape(v)}"' for k, v in ((attrs or [{}] * len(rows))[i]).items())
        body.append(f"<tr{data}>{''.join(cells)}</tr>")
    kind = "sortable wrap" if wrap else "sortable"
    return (f'<div class="scroll"><table class="{kind}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table></div>")


def _track_of(key: str) -> str:
    return key.split("/")[0]


def render_index(summaries: dict[str, dict[str, Any]]) -> str:
    """The index page of the report ``summaries`` (folder name -> its ``summary.json``)."""
    tracks = sorted({str(g["Track"]).split(" ")[0] for s in summaries.values() for g in s.get("glance", [])} |
                    {_track_of(k) for s in summaries.values() for k in s.get("cross_dataset", {})}, key=float)
    parts = [f"<h1>{html.escape(TITLE)}: every report</h1>",
             "<p>Vector-quantization training objectives for dense retrieval, compared inside code-size tracks "
             "(bytes per vector). Each report's page holds its tables, tie groups, plots and the provenance of every "
             f"row. {TIE} marks the rows whose difference from the track's best is not significant (paired test, "
             "Holm-corrected); † a row significantly better than the best reconstruction baseline.</p>",
             '<p class="filters"><label>Track <select id="track"><option value="all">all</option>' +
             "".join(f'<option value="{t}"{" selected" if t == "16" else ""}>{t} B</option>' for t in tracks) +
             '</select></label> <label>Operating point <select id="point"><option value="all">all</option>'
             '<option value="exhaustive" selected>exhaustive</option><option value="pruned">pruned</option>'
             "</select></label></p>"]
    # at a glance: one row per report, dataset and track
    columns = ["Report", "Split", "Dataset", "Track", "best exhaustive", "exhaustive", "tied with it (exhaustive)",
               "best pruned", "pruned"]
    rows, attrs, report_links, dataset_links = [], [], [], []
    for name, s in summaries.items():
        for g in s.get("glance", []):
            pruned_key = next((k for k in g if k.startswith("best ") and k != "best exhaustive"), None)
            quality = s.get("quality", "nDCG@10")
            rows.append([name, "dev" if g["Dataset"] in s.get("development", []) else "test", g["Dataset"],
                         g["Track"], g.get("best exhaustive", "—"),
                         g.get(f"{quality} (exhaustive)", "—"), g.get("tied with it (exhaustive)", "—"),
                         g.get(pruned_key, "—") if pruned_key else "—", g.get(f"{quality} (pruned)", "—")])
            attrs.append({"track": str(g["Track"]).split(" ")[0]})
            report_links.append(f"{name}/{PAGE}")
            dataset_links.append(f"{name}/{PAGE}#{slug(str(g['Dataset']))}")
    parts += ['<h2 id="glance">At a glance</h2>',
              "<p>The best variant of every report, dataset and track (click a header to sort; the selectors "
              "filter by track; *dev* rows are development splits that chose params, not test results).</p>",
              _table(columns, rows, attrs, {0: report_links, 2: dataset_links}, wrap=True)]
    # across datasets
    cross = [(name, s) for name, s in summaries.items() if s.get("cross_dataset")]
    if cross:
        parts += ['<h2 id="across">Across datasets</h2>',
                  "<p>Per report with several datasets: a column per collection (× encoder), mean ± std over seeds, "
                  "the average over datasets, the average rank and wins / ties / losses against each dataset's best "
                  "reconstruction baseline.</p>"]
        for name, s in cross:
            parts.append(f'<h3 id="across-{slug(name)}"><a href="{name}/{PAGE}">{html.escape(name)}</a></h3>')
            for key, table in s["cross_dataset"].items():
                track, point = key.split("/", 1)
                if not table:
                    continue
                columns = list(table[0])
                parts.append(f'<div data-track="{track}" data-point="{point}"><h4>{track} B/vector, '
                             f'{html.escape(point)}</h4>{_table(columns, [[r[c] for c in columns] for r in table])}'
                             "</div>")
    # the reports
    columns = ["Report", "Split", "Datasets", "Tracks (B)", "Records", "Quality measure", "Pruned point"]
    rows, links = [], []
    for name, s in summaries.items():
        datasets = sorted({g["Dataset"] for g in s.get("glance", [])})
        rule = "; ".join(f"{ds}: {b.get('how', '')}" for ds, b in (s.get("latency_budget_ms") or {}).items())
        split = "development (tuning, not test)" if s.get("development") else "test"
        rows.append([name, split, ", ".join(datasets),
                     ", ".join(sorted({str(g["Track"]) for g in s.get("glance", [])})),
                     s.get("records", 0), s.get("quality", ""), rule[:160]])
        links.append(f"{name}/{PAGE}")
    parts += ['<h2 id="reports">Reports</h2>', _table(columns, rows, None, {0: links}, wrap=True)]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>every report · {html.escape(TITLE)}</title>\n'
            f"<style>{CSS}{SITE_CSS}</style>\n</head>\n<body>\n{body}\n<script>{SORT_JS}{SELECT_JS}</script>\n</body>\n</html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report.site", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="reports", type=Path, help="folder of report folders")
    parser.add_argument("--index-only", action="store_true",
                        help="write the index from the reports' current summary.json, rebuilding no report")
    args = parser.parse_args(argv)
    try:
        index = build_site(args.root, rebuild=not args.index_only)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
