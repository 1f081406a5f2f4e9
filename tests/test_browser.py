"""The page at / and the API docs in a real browser (Debian chromium + chromedriver, selenium).

A real glasses photo chosen in the file input shows "glasses", its probability and the heat-map
overlay; a text file shows the API's own error; nothing comes from another origin and the console
stays clean. The server serves the bundled default model (trained on real photos), so a real glasses
photo gets the verdict "glasses". Skips only where the browser is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from _browser import browser_missing, chrome, console_errors, foreign, requested_urls
from _fixtures import face_image
from loadtests.images import synthetic_face
from _service import bundled_server
from conftest import CELEBA_DIR

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
WAIT_S = 120


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return bundled_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def driver():
    with chrome() as d:
        yield d


def _photo(server, tmp_path: Path) -> tuple[Path, dict]:
    """A real glasses photo the served model calls 'glasses' (a generated face without CelebA), and its verdict."""
    candidates = sorted((CELEBA_DIR / "glasses").glob("*.jpg"))[:10] if (CELEBA_DIR / "glasses").is_dir() else []
    if not candidates:  # a generated face the face detector finds (the bundled default frames faces)
        path = tmp_path / "generated-face.png"
        synthetic_face(178, 218, np.random.default_rng(11), True).save(path)
        candidates = [path]
    for path in candidates:
        result = requests.post(f"{server.url}/predict", files={"image": (path.name, path.read_bytes())}, timeout=60)
        if result.json()["verdict"] == "glasses" or path == candidates[-1]:
            return path, result.json()
    raise AssertionError("unreachable")


def _wait(driver, script: str, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(lambda d: d.execute_script(script), what)


def test_page_shows_verdict_probability_and_overlay(server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    photo, expected = _photo(server, tmp_path)
    driver.get(f"{server.url}/")
    tag = _wait(driver, "const t = document.querySelector('#model-tag').textContent; return t.includes(':') && t",
                "the served tag")
    assert tag == expected["model"]
    driver.find_element(By.ID, "files").send_keys(str(photo))
    _wait(driver, "const r = document.querySelector('.result'); return r && r.dataset.state === 'done'",
          "the verdict and the explanation")
    card = driver.find_element(By.CSS_SELECTOR, ".result")
    verdict = card.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-verdict") == expected["verdict"]
    if CELEBA_DIR.is_dir():
        assert expected["verdict"] == "glasses" and verdict.text == "glasses"
    assert f"P(glasses) = {expected['probability']:.3f}" in card.find_element(By.CSS_SELECTOR, ".numbers").text
    assert expected["model"] in card.find_element(By.CSS_SELECTOR, ".tag").text
    if "face" in expected:  # the bundled default frames faces: the box the model looked at, drawn and said
        face = card.find_element(By.CSS_SELECTOR, ".face").text
        assert face.startswith("face found") and f"{expected['face']['score']:.2f}" in face
        box = card.find_element(By.CSS_SELECTOR, ".face-box")
        _wait(driver, "return !document.querySelector('.result .face-box').hidden", "the face box")
        thumb = card.find_element(By.CSS_SELECTOR, ".thumb")
        assert box.is_displayed() and 0.2 < box.size["width"] / thumb.size["width"] <= 1.0
    fill = driver.execute_script("return document.querySelector('.result .fill').style.width")
    assert float(fill.rstrip("%")) == pytest.approx(expected["probability"] * 100, abs=0.06)
    overlay = card.find_element(By.CSS_SELECTOR, ".explanation .overlay")
    assert overlay.is_displayed()
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
    assert card.find_element(By.CSS_SELECTOR, ".error").get_attribute("hidden")
    assert console_errors(driver) == []
    assert foreign(requested_urls(driver), server.url) == []


def test_page_shows_the_api_error_for_a_text_file(server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n" * 20)
    api = requests.post(f"{server.url}/predict", files={"image": (notes.name, notes.read_bytes())}, timeout=60).json()
    driver.get(f"{server.url}/")
    _wait(driver, "return document.querySelector('#model-tag').textContent.includes(':')", "the served tag")
    driver.find_element(By.ID, "files").send_keys(str(notes))
    _wait(driver, "const r = document.querySelector('.result'); return r && r.dataset.state === 'error'", "the error")
    shown = driver.find_element(By.CSS_SELECTOR, ".result .error").text
    assert shown == f"{api['status']}: {api['error']}"
    assert api["status"] == 422
    # the refused upload itself is the only console message (Chromium logs every 4xx response)
    errors = console_errors(driver)
    assert all("/predict" in e and "status of 422" in e for e in errors), errors
    assert foreign(requested_urls(driver), server.url) == []


def test_docs_page_renders_the_real_openapi_without_other_origins(server, driver):
    driver.get(f"{server.url}/docs")
    title = _wait(driver, "const t = document.querySelector('.swagger-ui .info .title'); return t && t.textContent",
                  "the Swagger UI title")
    assert title.startswith("Glasses verdict service")
    _wait(driver, "return document.querySelectorAll('.opblock').length >= 6", "the operations")
    text = driver.find_element("css selector", ".swagger-ui").text
    assert "/explain" in text and "/model" in text and "internal" in text
    assert "googletagmanager" not in driver.page_source
    assert console_errors(driver) == []
    assert foreign(requested_urls(driver), server.url) == []


def test_no_console_error_on_an_idle_page(server, driver):
    driver.get(f"{server.url}/")
    _wait(driver, "return document.querySelector('#model-tag').textContent.includes(':')", "the served tag")
    assert console_errors(driver) == []
    urls = requested_urls(driver)
    assert any(u.endswith("/static/app.js") for u in urls) and foreign(urls, server.url) == []


def test_report_opens_with_every_figure_and_nothing_fetched(driver, tmp_path):
    from training.evaluate import binary_metrics
    from training.report import render

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1)
    images = np.stack([np.asarray(face_image(i, bool(y[i]), 64)) for i in range(60)])
    evaluation = {"metrics": binary_metrics(y, p, 0.5), "threshold": {"value": 0.5, "method": "fixed"}}
    report = tmp_path / "report.html"
    report.write_text(render(evaluation, title="Evaluation report: generated faces", y=y, p=p, images=images,
                             files=[f"f{i}.png" for i in range(60)]))
    driver.get(report.as_uri())
    assert driver.title == "Evaluation report: generated faces"
    sizes = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    wrong = int(((p >= 0.5) != (y == 1)).sum())
    assert len(sizes) == 3 + wrong and all(w > 0 for w in sizes)
    assert console_errors(driver) == []
    assert [u for u in requested_urls(driver) if not u.startswith(("data:", "about:"))] == [report.as_uri()]
