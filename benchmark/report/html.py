"""The leaderboard as one self-contained static HTML page: inline CSS, a few lines of inline JS to sort a table by
clicking a header, plots embedded as base64 PNG."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from benchmark.report.stats import TIE
from benchmark.report.tables import Doc

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1320px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { margin-top: 1.6rem; } h4 { margin: 1rem 0 0.3rem; color: #444; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4rem 0 0.8rem; font-size: 0.82rem; }
th, td { padding: 0.22rem 0.5rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
td:first-child { white-space: normal; min-width: 12rem; max-width: 26rem; }
table.sortable th { cursor: pointer; background: #f0f0f0; user-select: none; position: relative;
                    padding-right: 1.1rem; }
table.sortable th:hover { background: #e2e2e2; }
table.sortable th::after { content: "\\2195"; position: absolute; right: 0.25rem; color: #aaa; }
table.sortable th[aria-sort="ascending"]::after { content: "\\25B2"; color: #333; }
table.sortable th[aria-sort="descending"]::after { content: "\\25BC"; color: #333; }
tbody tr:nth-child(even) { background: #fafafa; }
ul.notes { font-size: 0.8rem; color: #555; }
td.tie { background: #dff0d8; color: #1d5e1d; font-weight: 600; }
td.untested { color: #9a6700; font-style: italic; }
figure { margin: 0.8rem 0; } figcaption { font-size: 0.8rem; color: #555; }
img { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
nav ul.toc { columns: 3; font-size: 0.85rem; background: #f7f7f7; padding: 0.6rem 1rem 0.6rem 2rem; }
nav li.toc3 { margin-left: 1rem; list-style: circle; }
"""

# Click a header: sort its column (numbers by value, first click descending; text alphabetically, first click
# ascending; "—" and empty cells always last). The leading number of "0.512 ± 0.004 †" is its value.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (tr) {
        var t = tr.cells[col].textContent.trim(), m = t.match(/^[-+]?\\d*\\.?\\d+(e[-+]?\\d+)?/i);
        return m ? parseFloat(m[0]) : (t === '\\u2014' || t === '' ? null : t.toLowerCase());
      };
      var numeric = rows.some(function (tr) { return typeof key(tr) === 'number'; });
      var current = th.getAttribute('aria-sort');
      var dir = current ? (current === 'descending' ? 1 : -1) : (numeric ? -1 : 1);
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
      rows.map(function (tr, i) { return [key(tr), i, tr]; }).sort(function (a, b) {
        if (a[0] === null || b[0] === null) { return a[0] === b[0] ? a[1] - b[1] : (a[0] === null ? 1 : -1); }
        if (typeof a[0] !== typeof b[0]) { return typeof a[0] === 'number' ? -1 : 1; }
        return (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]) * (a[0] === b[0] ? 1 : dir);
      }).forEach(function (item) { body.appendChild(item[2]); });
    });
  });
});
"""


def render_html(doc: Doc, base_dir: Path, title: str) -> str:
    """The page for ``doc``; image paths are relative to ``base_dir`` and get inlined; a contents list of the
    level-2 and level-3 headings follows the title."""
    ids = _heading_ids(doc)
    parts, contents = [], []
    for i, (kind, payload) in enumerate(doc.blocks):
        if kind == "heading" and i in ids:
            level, text = payload
            parts.append(f'<h{level} id="{ids[i]}">{_inline(text)}</h{level}>')
            if level in (2, 3):
                contents.append(f'<li class="toc{level}"><a href="#{ids[i]}">{_inline(text)}</a></li>')
        else:
            parts.append(_block(kind, payload, Path(base_dir)))
    if contents:
        first = next((n for n, part in enumerate(parts) if not part.startswith("<h1")), len(parts))
        parts.insert(first, f'<nav><ul class="toc">{"".join(contents)}</ul></nav>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n<script>{SORT_JS}</script>\n</body>\n</html>\n")


def _heading_ids(doc: Doc) -> dict[int, str]:
    """Block index -> a unique anchor id for every heading (its text as a slug, under its parent heading's)."""
    ids: dict[int, str] = {}
    used: set[str] = set()
    parents: dict[int, str] = {}
    for i, (kind, payload) in enumerate(doc.blocks):
        if kind != "heading":
            continue
        level, text = payload
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        base = "-".join(filter(None, [parents.get(level - 1, "") if level > 2 else "", slug]))
        anchor, n = base, 2
        while anchor in used:
            anchor, n = f"{base}-{n}", n + 1
        used.add(anchor)
        ids[i] = anchor
        parents[level] = anchor
    return ids


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
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.itertuples(index=False))
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f'</table></div>')


def _cell(value) -> str:
    """A table cell; a cell of the tie group (◆ ...) or an untested one gets a class that colours it."""
    text = str(value)
    kind = "tie" if text.startswith(TIE) or text.endswith(f" {TIE}") else \
        "untested" if text == "untested" or text.endswith("(untested)") else ""
    return f'<td class="{kind}">{html.escape(text)}</td>' if kind else f"<td>{html.escape(text)}</td>"


def _inline(text: str) -> str:
    """Escape, then turn Markdown ``code``, **bold** and *italic* spans into tags."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", text)
