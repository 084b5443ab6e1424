"""The leaderboard as one self-contained static HTML page: inline CSS, a few lines of inline JS to sort a table by
clicking a header, plots embedded as base64 PNG."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from benchmark.report.tables import Doc

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
table.sortable th { cursor: pointer; background: #f3f3f3; }
table.sortable th:hover { background: #e4e4e4; }
tbody tr:nth-child(even) { background: #fafafa; }
ul.notes { font-size: 0.8rem; color: #555; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], col = th.cellIndex;
    var dir = th.dataset.dir === 'desc' ? 1 : -1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    var key = function (tr) { var t = tr.cells[col].textContent.trim(), n = parseFloat(t); return isNaN(n) ? t : n; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""


def render_html(doc: Doc, base_dir: Path, title: str) -> str:
    """The page for ``doc``; image paths are relative to ``base_dir`` and get inlined."""
    body = "\n".join(_block(kind, payload, Path(base_dir)) for kind, payload in doc.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n<script>{SORT_JS}</script>\n</body>\n</html>\n")


def _block(kind: str, payload, base_dir: Path) -> str:
    if kind == "heading":
        return f"<h{payload[0]}>{_inline(payload[1])}</h{payload[0]}>"
    if kind == "text":
        return f"<p>{_inline(payload)}</p>"
    if kind == "table":
        return _table(payload)
    if kind in ("list", "notes"):
        items = "".join(f"<li>{_inline(item)}</li>" for item in payload)
        return f'<ul class="{kind}">{items}</ul>'
    if kind == "image":
        data = base64.b64encode((base_dir / payload[0]).read_bytes()).decode("ascii")
        alt = html.escape(payload[1])
        return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
    raise ValueError(f"unknown block kind {kind!r}")


def _table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _inline(text: str) -> str:
    """Escape, then turn Markdown ``code`` and **bold** spans into tags."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
