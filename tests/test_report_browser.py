"""The report page in a real browser (headless Chromium via selenium and chromedriver, Debian's ``chromium`` and
``chromium-driver``): it loads without console errors or network fetches, its tables are there and fit 1400 px, and
clicking a header sorts that column. Skips, saying what is missing, where no browser can be driven."""
from __future__ import annotations

import pytest

from benchmark.report import build_report
from benchmark.report.browser import browser_missing, chromium

REASON = browser_missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from test_report import COMMON, SPECS, write_fixture  # the records fixture of the report tests

    run_dir = tmp_path_factory.mktemp("browser")
    write_fixture(run_dir, {"toy-a": SPECS["toy-a"][:8], "toy-b": COMMON})  # 2 datasets, 2 tracks, kept small
    build_report(run_dir)
    driver = chromium(width=1400)
    try:
        driver.get((run_dir / "leaderboard.html").as_uri())
        yield driver
    finally:
        driver.quit()


def _column(driver, table, index: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).map(r => r.cells[arguments[1]].textContent.trim());",
        table, index)


def _key(text: str) -> float | None:
    head = text.split(" ")[0]
    try:
        return float(head)
    except ValueError:
        return None


def test_loads_without_errors_or_fetches(page):
    errors = [entry for entry in page.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert page.execute_script("return document.readyState") == "complete"
    assert page.title.startswith("browser") and page.title.endswith(" · vqbench leaderboard")   # its folder's name
    # self-contained: no resource fetched (images are data: URIs, CSS/JS inline), every image decoded
    assert page.execute_script("return performance.getEntriesByType('resource').length") == 0
    images = page.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(images) >= 5 and all(done and width > 0 for done, width in images)


def test_tables_present_and_fit_1400px(page):
    from selenium.webdriver.common.by import By

    tables = page.find_elements(By.CSS_SELECTOR, "table.sortable")
    assert len(tables) >= 10  # glance, 2 tracks x 2 views across datasets, 2 datasets x 2 tracks x 2 views
    assert all(len(_column(page, t, 0)) > 0 for t in tables)
    # the page never scrolls sideways at 1400 px: wide tables scroll inside their own container
    assert page.execute_script("return document.documentElement.scrollWidth") <= 1400
    overflow = page.execute_script(
        "return Array.from(document.querySelectorAll('div.scroll')).filter(d => d.getBoundingClientRect().right"
        " > document.documentElement.clientWidth).length")
    assert overflow == 0


def test_click_sorts_a_column(page):
    from selenium.webdriver.common.by import By

    def unsorted_p50(t) -> bool:
        heads = [h.text.strip() for h in t.find_elements(By.TAG_NAME, "th")]
        if "p50 ms" not in heads:
            return False
        keys = [_key(v) for v in _column(page, t, heads.index("p50 ms"))]
        return keys != sorted(keys, key=lambda k: -k if k is not None else float("inf"))

    table = next(t for t in page.find_elements(By.CSS_SELECTOR, "table.sortable") if unsorted_p50(t))
    col = [h.text.strip() for h in table.find_elements(By.TAG_NAME, "th")].index("p50 ms")
    before = _column(page, table, col)
    header = table.find_elements(By.TAG_NAME, "th")[col]
    header.click()  # numbers: first click sorts descending, "—" last
    after = _column(page, table, col)
    assert sorted(after) == sorted(before) and after != before
    values = [_key(v) for v in after]
    numbers = [v for v in values if v is not None]
    assert numbers == sorted(numbers, reverse=True) and values[:len(numbers)] == numbers
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    ascending = [_key(v) for v in _column(page, table, col)]
    assert [v for v in ascending if v is not None] == sorted(numbers)
    assert header.get_attribute("aria-sort") == "ascending"
    method = table.find_elements(By.TAG_NAME, "th")[0]
    method.click()  # text: first click sorts A to Z
    names = _column(page, table, 0)
    assert names == sorted(names, key=str.lower) and method.get_attribute("aria-sort") == "ascending"
    assert header.get_attribute("aria-sort") is None
