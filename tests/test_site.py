"""The static site (benchmark.report.site) in headless Chromium: the index over two report folders sorts by any
column, its track selector filters, every link of the index and of each report page resolves (file and anchor), a
table row's method links to its provenance, nothing overflows at 1400 px and a phone width stays usable (tables
scroll inside their box, the page does not). Skips, saying what is missing, where no browser can be driven."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from benchmark.report.browser import browser_missing, chromium
from benchmark.report.site import build_site, main

REASON = browser_missing()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from test_report import COMMON, SPECS, write_fixture  # the records fixture of the report tests

    root = tmp_path_factory.mktemp("site")
    write_fixture(root / "two-datasets", {"toy-a": SPECS["toy-a"][:8], "toy-b": COMMON}, torn=False)
    write_fixture(root / "one-dataset", {"toy-a": COMMON}, torn=False)
    (root / "not-a-report").mkdir()
    return root, build_site(root)


def test_index_lists_every_report_and_pages_link_back(site):
    root, index = site
    text = index.read_text()
    assert index == root / "index.html"
    for name in ("two-datasets", "one-dataset"):
        assert f'href="{name}/leaderboard.html"' in text
        page = (root / name / "leaderboard.html").read_text()
        assert '<a href="../index.html">&larr; all reports</a>' in page and 'id="row-provenance"' in page
    assert "not-a-report" not in text and "cdn" not in text.lower() and "http" not in text
    assert 'data-track="16" data-point="exhaustive"' in text        # a cross-dataset table per track and point
    assert "<td>test</td>" in text and "development (tuning" not in text   # the fixtures evaluate on test splits


def test_development_splits_are_named():
    """A dataset evaluated on a split carved from its labeled train queries is a development split (recorded since
    setup.eval_split existed; older records by the "-dev" alias convention); MS MARCO's dev split is not one."""
    from benchmark.report.tables import development_splits
    carved = {"dataset": "wn", "split": "dev", "setup": {"eval_split": {"name": "dev", "carved_from_train": 2000}}}
    old = {"dataset": "debian-desc-dev", "split": "dev", "setup": {}}
    msmarco = {"dataset": "msmarco", "split": "dev", "setup": {"eval_split": {"name": "dev"}}}
    assert development_splits([carved, old, msmarco, {"dataset": "x", "split": "test"}]) == ["debian-desc-dev", "wn"]


def test_site_cli_refuses_an_empty_root(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2 and "no report folder" in capsys.readouterr().out


pytestmark_browser = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _links(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")


@pytestmark_browser
def test_sorting_filtering_links_and_widths(site):
    root, index = site
    driver = chromium(width=1400)
    try:
        driver.get(index.as_uri())
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
        table = driver.find_element("css selector", "#glance + p + div table")
        first = lambda: driver.execute_script(  # noqa: E731
            "return Array.from(arguments[0].tBodies[0].rows).filter(r => r.style.display !== 'none')"
            ".map(r => r.cells[2].textContent);", table)
        driver.execute_script("document.getElementById('track').value = 'all'; applyFilters();")
        before = first()
        head = table.find_elements("css selector", "th")[2]      # Dataset: text, first click ascending
        head.click()
        after = first()
        assert len(set(before)) == 2 and after == sorted(before)
        head.click()
        assert first() == sorted(before, reverse=True) != after      # sorting changed the row order
        driver.execute_script("document.getElementById('track').value = '8'; applyFilters();")
        shown = driver.execute_script("return Array.from(document.querySelectorAll('tr[data-track]'))"
                                      ".filter(r => r.style.display !== 'none').map(r => r.dataset.track);")
        assert shown and set(shown) == {"8"}
        pages = {index.as_uri()}
        for href in _links(driver):
            assert href.startswith("file://"), href
            pages.add(href.split("#")[0])
        for page in sorted(pages):                                  # every linked page and every anchor exists
            path = Path(unquote(urlparse(page).path))
            assert path.is_file(), page
            driver.get(page)
            assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400, page
            for href in _links(driver):
                target = Path(unquote(urlparse(href).path))
                assert target.is_file(), (page, href)
                frag = urlparse(href).fragment
                if frag and target == path:
                    assert driver.execute_script("return !!document.getElementById(arguments[0])", frag), href
        page = (root / "two-datasets" / "leaderboard.html").as_uri()
        driver.get(page)
        link = driver.find_element("css selector", "table a[href^='#prov-']")
        target = link.get_attribute("href").split("#")[1]
        link.click()
        assert driver.execute_script("return document.getElementById(arguments[0]).open", target)
        driver.set_window_size(390, 800)                            # a phone: the page itself never scrolls sideways
        for url in (index.as_uri(), page):
            driver.get(url)
            width = driver.execute_script("return window.innerWidth")
            assert driver.execute_script("return document.documentElement.scrollWidth") <= width + 1, url
    finally:
        driver.quit()
