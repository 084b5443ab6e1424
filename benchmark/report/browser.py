"""Headless Chromium for the report: a screenshot of the page as a reader sees it, and the driver the browser test
uses. Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` Python package; without them
:func:`browser_missing` says what is absent and nothing else here is called.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from benchmark._io import atomic_path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
WIDTH = 1400


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def browser_missing() -> str | None:
    """None when a headless Chromium can be driven here, else the reason (what to install)."""
    missing = []
    if _which(CHROMIUM) is None:
        missing.append("a Chromium binary (apt-get install chromium)")
    if _which(DRIVER) is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install selenium)")
    return "no headless browser: missing " + ", ".join(missing) if missing else None


def chromium(width: int = WIDTH, height: int = 900):
    """A headless Chromium webdriver (the caller quits it) that keeps the page's console log and forbids any
    network access beyond ``file://`` (a self-contained page needs none)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(_which(DRIVER)))


def screenshot(page: str | Path, png: str | Path, width: int = WIDTH) -> Path:
    """Render ``page`` (an HTML file) at ``width`` CSS px and save the whole page's height as ``png``."""
    reason = browser_missing()
    if reason:
        raise RuntimeError(f"cannot take a screenshot of {page}: {reason}")
    driver = chromium(width)
    try:
        driver.get(Path(page).resolve().as_uri())
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, height)
        data = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    png = Path(png)
    with atomic_path(png) as tmp:
        tmp.write_bytes(data)
    return png
