"""Regenerate the README's screenshots (docs/images/page.png, docs/images/report.png) in headless chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/images]

Only generated images appear in them (tests/_fixtures.py synthetic faces; CelebA photos are
non-commercial research data and never committed):
  - the page: `bentoml serve` over an empty store (so it serves the bundled default model) on a free
    127.0.0.1 port, two generated faces chosen in the file input and one text file;
  - the report: a small CNN fitted for a few epochs on 200 generated faces, evaluated by the real
    `training.evaluate.evaluate`, so report.html is exactly what a run writes.
The browser setup is the tests' own (tests/_browser.py). Each PNG is reduced to a palette to stay
under 200 KB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _browser import browser_missing, chrome  # noqa: E402
from _fixtures import make_folders  # noqa: E402
from loadtests.images import synthetic_face  # noqa: E402

MAX_BYTES = 200 * 1024


def save_small(png: bytes, path: Path, width: int) -> int:
    """Resize a screenshot to `width` and store it with a 96-colour palette; its size in bytes."""
    import io

    from PIL import Image

    import numpy as np

    img = Image.open(io.BytesIO(png)).convert("RGB")
    rows = np.flatnonzero((np.asarray(img.convert("L")) < 245).any(axis=1))  # drop the blank bottom
    img = img.crop((0, 0, img.width, min(img.height, int(rows[-1]) + 24))) if len(rows) else img
    img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def make_report(work: Path) -> Path:
    """report.html of a small CNN on generated faces, written by the real evaluate."""
    import keras
    import tensorflow as tf

    from training.data import load_split
    from training.evaluate import evaluate
    from training.prepare import prepare

    root = make_folders(work / "faces", n_glasses=70, n_no_glasses=130, persons=40, image_size=96)
    manifest = prepare(f"folders:{root}", size=64, work_dir=work / "work", progress=False).manifest_path
    keras.utils.set_random_seed(3)
    tf.config.experimental.enable_op_determinism()  # the same figures on every run
    model = keras.Sequential([keras.Input((64, 64, 3)),
                              keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(4),
                              keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    x, y = load_split(manifest, "train")
    xv, yv = load_split(manifest, "val")
    history = model.fit(x / 255.0, y, validation_data=(xv / 255.0, yv), epochs=3, batch_size=32, verbose=0).history
    return_value = evaluate(model, manifest, threshold="val_balanced_accuracy", history=history, out_dir=work / "run",
             title="generated faces (screenshot fixture)")
    print(f"report fixture: test accuracy {return_value['metrics']['accuracy']:.3f}")
    return work / "run" / "report.html"


def shoot_page(driver, url: str, work: Path) -> bytes:
    """The page after two generated faces and a text file went through it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = []
    for seed, glasses in ((21, True), (22, False)):
        path = work / f"generated-{'glasses' if glasses else 'plain'}.png"
        synthetic_face(178, 218, np.random.default_rng(seed), glasses).save(path)  # one the face detector finds
        files.append(path)
    (work / "notes.txt").write_text("not a photo\n")
    driver.get(f"{url}/")
    for path in [work / "notes.txt", *reversed(files)]:
        driver.find_element(By.ID, "files").send_keys(str(path))
    WebDriverWait(driver, 180).until(lambda d: d.execute_script(
        "const r = [...document.querySelectorAll('.result')];"
        "return r.length === 3 && r.every(x => x.dataset.state === 'done' || x.dataset.state === 'error')"))
    return driver.get_screenshot_as_png()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    if browser_missing():
        print(f"error: {browser_missing()}", file=sys.stderr)
        return 2
    from _service import ServiceServer

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glasses-screens-") as tmp:
        work = Path(tmp)
        report = make_report(work)
        home = work / "bentoml"
        home.mkdir()
        with ServiceServer(home) as server, chrome(width=1000, height=1250) as driver:
            page = shoot_page(driver, server.url, work)
            driver.get(report.as_uri())
            driver.set_window_size(1150, driver.execute_script("return document.body.scrollHeight") + 40)
            report_png = driver.get_screenshot_as_png()
    for name, png, width in (("page.png", page, 760), ("report.png", report_png, 760)):
        size = save_small(png, args.out / name, width)
        print(f"{args.out / name}: {size / 1024:.0f} KB")
        if size > MAX_BYTES:
            print(f"error: {args.out / name} is over {MAX_BYTES // 1024} KB", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
