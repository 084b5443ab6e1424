"""The leaderboard as one self-contained static HTML page: inline CSS, a few lines of inline JS to sort a table by
clicking a header, plots embedded as base64 PNG."""
from __future__ import annotations

import base64
import html
import json
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
details.prov { font-size: 0.8rem; margin: 0.2rem 0; } details.prov pre { background: #f7f7f7; padding: 0.5rem;
  overflow-x: auto; max-width: 100%; } details.prov:target { outline: 2px solid #e69f00; }
p.site { font-size: 0.85rem; margin: 0 0 0.5rem; }
@media (max-width: 700px) { nav ul.toc { columns: 1; } body { padding: 0 0.4rem; } }
"""

# Click a header: sort its column (numbers by value, first click descending; text alphabetically, first click
# ascending; "—" and empty cells always last). The leading number of "0.512 ± 0.004 †" is its value.
SORT_JS = """
function openTarget() { var el = document.getElementById(location.hash.slice(1));
  if (el && el.tagName === 'DETAILS') { el.open = true; } }
window.addEventListener('hashchange', openTarget); openTarget();
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


def render_html(doc: Doc, base_dir: Path, title: str, provenance: dict[str, dict] | None = None,
                site_index: str | None = None) -> str:
    """The page for ``doc``; image paths are relative to ``base_dir`` and get inlined; a contents list of the
    level-2 and level-3 headings follows the title. ``provenance`` (variant label -> what produced it): a table row
    whose ``attrs["row_links"]`` names its label links to that label's entry in a "Row provenance" section at the
    end. ``site_index``: a link back to the site's index page (``../<site_index>``)."""
    ids = _heading_ids(doc)
    anchors = {label: f"prov-{slug(label)}" for label in provenance or {}}
    parts, contents = [], []
    for i, (kind, payload) in enumerate(doc.blocks):
        if kind == "heading" and i in ids:
            level, text = payload
            parts.append(f'<h{level} id="{ids[i]}">{_inline(text)}</h{level}>')
            if level in (2, 3):
                contents.append(f'<li class="toc{level}"><a href="#{ids[i]}">{_inline(text)}</a></li>')
        else:
            parts.append(_table(payload, anchors) if kind == "table" else _block(kind, payload, Path(base_dir)))
    if provenance:
        parts.append('<h2 id="row-provenance">Row provenance</h2><p>What produced each row of the tables (click a '
                     'method name in any table to land here): params, seeds, fit ids, code version, machine, '
                     'threads, encoder, layout and query side, tuning, command lines.</p>')
        for label, entry in provenance.items():
            text = html.escape(json.dumps(entry, indent=1, sort_keys=True, default=str))
            parts.append(f'<details class="prov" id="{anchors[label]}"><summary>{html.escape(label)}</summary>'
                         f'<pre>{text}</pre></details>')
        contents.append('<li class="toc2"><a href="#row-provenance">Row provenance</a></li>')
    if contents:
        first = next((n for n, part in enumerate(parts) if not part.startswith("<h1")), len(parts))
        parts.insert(first, f'<nav><ul class="toc">{"".join(contents)}</ul></nav>')
    if site_index:
        parts.insert(0, f'<p class="site"><a href="../{html.escape(site_index)}">&larr; all reports</a></p>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{html.escape(title)}</title>\n'
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
        base = "-".join(filter(None, [parents.get(level - 1, "") if level > 2 else "", slug(text)]))
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


def slug(text: str) -> str:
    """An anchor id from ``text`` (lower case, runs of other characters as one dash)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _table(table: pd.DataFrame, anchors: dict[str, str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    links = table.attrs.get("row_links") or []
    rows = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = [table_cell(v) for v in row]
        target = (anchors or {}).get(links[i]) if i < len(links) and links[i] else None
        if target and cells:
            text = html.escape(str(row[0]))
            cells[0] = f'<td><a href="#{target}" title="provenance of this row">{text}</a></td>'
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows = "".join(rows)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f'</table></div>')


def table_cell(value) -> str:
    """A table cell; a cell of the tie group (◆ before, after or inside its text) or an untested one gets a class
    that colours it; ``None`` is an empty cell."""
    text = "" if value is None else str(value)
    kind = "tie" if text.startswith(TIE) or text.endswith(f" {TIE}") or f" {TIE} " in text else \
        "untested" if text == "untested" or text.endswith("(untested)") else ""
    return f'<td class="{kind}">{html.escape(text)}</td>' if kind else f"<td>{html.escape(text)}</td>"


def _inline(text: str) -> str:
    """Escape, then turn Markdown links ``[text](relative/path)``, ``code``, **bold** and *italic* spans into tags."""
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', html.escape(text, quote=False))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", text)
