"""A real headless browser for tests and scripts: Debian's chromium driven by its chromedriver (selenium).

    with chrome(tmp_dir) as driver:           # skips the test when chromium / chromedriver are absent
        driver.get(url)
        requested_urls(driver), console_errors(driver)

The driver path is given explicitly and SE_AVOID_STATS is set, so selenium-manager never runs (it
would try to reach the internet to look up drivers and send usage statistics). The browser starts
with a fresh profile and without background networking, component updates, sync or a first-run
page, so every request it makes is one the page asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars")


def browser_missing() -> str | None:
    """Why no browser can run here (None when chromium and chromedriver are installed)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return f"{' and '.join(missing)} not installed (scripts/setup.sh installs them as root)" if missing else None


@contextlib.contextmanager
def chrome(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A headless chromium WebDriver with a fresh profile; browser and performance logs enabled."""
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="glasses-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get("about:blank")  # leave the start page; its internal chrome:// loads are not the page's
        driver.get_log("performance")
        driver.get_log("browser")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (Network.requestWillBeSent events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign(urls: list[str], origin: str) -> list[str]:
    """The URLs that are neither from `origin` nor inline (data:, blob:, about:)."""
    return [u for u in urls if not (u.startswith(origin) or u.startswith(("data:", "blob:", "about:")))]


def console_errors(driver: Any) -> list[str]:
    """SEVERE console messages since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
