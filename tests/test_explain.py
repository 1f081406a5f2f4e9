"""POST /explain end to end: a PNG with an occlusion heat map for good photos, the /predict 4xx rules
for bad ones, and on real photos the heat lands on the eyes (the bundled model, CelebA test split)."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import numpy as np
import pytest
import requests
from PIL import Image

from _fixtures import face_image
from _service import bundled_server, shared_server
from service.inference import UploadError

EYE_BAND = (0.33, 0.60)  # fraction of the height: aligned CelebA eyes sit at ~0.40-0.50, plus half a patch
MIN_EYE_SHARE = 0.75


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _explain(url: str, data: bytes, name: str = "face.jpg", fmt: str | None = None) -> requests.Response:
    params = {"format": fmt} if fmt else None
    return requests.post(f"{url}/explain", files={"image": (name, data)}, params=params, timeout=120)


def test_explain_answers_a_png_with_the_verdict_of_predict(server):
    data = _jpeg(face_image(3, True, 160))
    resp = _explain(server.url, data)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(resp.content))
    assert overlay.format == "PNG" and overlay.size == (160, 160)  # the photo's own size (under 512 px)
    predicted = requests.post(f"{server.url}/predict", files={"image": ("face.jpg", data)}, timeout=60).json()
    assert abs(float(resp.headers["X-Probability"]) - predicted["probability"]) <= 1e-5
    assert resp.headers["X-Verdict"] == predicted["verdict"]
    assert resp.headers["X-Model"] == predicted["model"]
    assert float(resp.headers["X-Threshold"]) == predicted["threshold"]
    assert resp.headers["X-Explain-Method"] == "occlusion"
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
    assert np.abs(np.asarray(overlay, np.float64) - original).mean() > 1.0  # something was drawn over it


def test_explain_json_variant_has_a_non_uniform_heatmap(server):
    resp = _explain(server.url, _jpeg(face_image(5, True, 128)), fmt="json")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {"verdict", "probability", "threshold", "model", "method", "peak", "heatmap", "positions"} <= set(body)
    heat = np.asarray(body["heatmap"])
    assert heat.shape == (16, 16) and heat.min() >= 0 and heat.max() <= 1
    assert heat.max() - heat.min() > 0.2, "the heat map is (nearly) uniform"
    assert 0 <= body["peak"]["x"] <= 1 and 0 <= body["peak"]["y"] <= 1 and body["positions"] > 50


def test_explain_refuses_bad_input_like_predict(server, tmp_path):
    png = io.BytesIO()
    face_image(1, False, 64).save(png, "PNG")
    cases = {
        "text file": ({"files": {"image": ("notes.txt", b"just some text\n" * 20)}}, 422),
        "empty file": ({"files": {"image": ("empty.jpg", b"")}}, 422),
        "truncated PNG": ({"files": {"image": ("cut.png", png.getvalue()[:120])}}, 422),
        "wrong field": ({"files": {"photo": ("face.png", png.getvalue())}}, 400),
        "two images": ({"files": [("image", ("a.png", png.getvalue())), ("image", ("b.png", png.getvalue()))]}, 400),
        "JSON body": ({"json": {"image": "face.png"}}, 415),
        "unknown format": ({"files": {"image": ("face.png", png.getvalue())}, "params": {"format": "gif"}}, 400),
    }
    for name, (kwargs, status) in cases.items():
        resp = requests.post(f"{server.url}/explain", timeout=60, **kwargs)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        body = resp.json()
        assert body["status"] == status and isinstance(body["error"], str) and body["error"], name
    too_big = requests.post(f"{server.url}/explain", files={"image": ("big.png", bytes(40 * 1024 * 1024))}, timeout=60)
    assert too_big.status_code == 413 and too_big.json()["status"] == 413
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_explain_runs_its_own_interpreter_not_the_one_predict_batches_on(tmp_path):
    """LiteRT's interpreter takes one call at a time: /explain gets a replica per served version."""
    import tarfile

    from glasses.config import BUNDLED_MODEL_FILE
    from glasses.runtimes import load_classifier
    from service.live import Version
    from service.pages import explain_classifier

    with tarfile.open(BUNDLED_MODEL_FILE) as archive:
        archive.extractall(tmp_path, filter="data")
    served = load_classifier(tmp_path, "litert")

    def version(classifier) -> Version:
        return Version(tag="glasses_classifier:x", card={}, classifier=classifier, load_s=0.0, parity=None,
                       reference=None)

    current = version(served)
    mine = explain_classifier(current)
    assert mine is not served and mine._interpreter is not served._interpreter and mine._lock is not served._lock
    assert explain_classifier(current) is mine  # made once per version
    pixels = np.stack([np.asarray(face_image(i, i % 2 == 0, 128)) for i in range(4)])
    assert np.allclose(mine(pixels), served(pixels), atol=1e-6)
    promoted = version(load_classifier(tmp_path, "litert"))
    assert explain_classifier(promoted) is not mine  # a new served version brings a new replica
    assert explain_classifier(current, mode="shared") is served  # the old way, kept for the benchmark


def test_explain_admission_refuses_past_running_plus_waiting():
    from service.pages import ExplainSlots

    async def scenario() -> list[int]:
        slots = ExplainSlots(running=1, waiting=1, wait_s=0.3)
        release = anyio.Event()
        statuses: list[int] = []

        async def hold() -> None:
            async with slots.hold():
                await release.wait()

        async def attempt() -> None:
            try:
                async with slots.hold():
                    statuses.append(200)
            except UploadError as exc:
                statuses.append(exc.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await anyio.sleep(0.05)
            tg.start_soon(attempt)  # waits, then times out: 503
            await anyio.sleep(0.05)
            await attempt()  # running + waiting full: 429 at once
            await anyio.sleep(0.5)
            release.set()
        await attempt()  # free again
        return statuses

    assert anyio.run(scenario) == [429, 503, 200]


def _celeba_test_glasses(celeba_dir: Path) -> list[Path]:
    """The glasses photos of the seed-1234 test split, by person, as `glasses-train prepare` splits them."""
    from training.sources import label_folders, scan_folders
    from training.split import split_assignments

    inv = label_folders(scan_folders(str(celeba_dir)))
    split = split_assignments(inv.labels, inv.groups)
    return [celeba_dir / f for f, label, s in zip(inv.files, inv.labels, split) if s == 2 and label == 1]


def test_heat_peaks_on_the_eyes_of_real_glasses_photos(request, tmp_path_factory, celeba_dir):
    server = bundled_server(request, tmp_path_factory)
    photos = _celeba_test_glasses(celeba_dir)
    assert len(photos) >= 10
    peaks = []
    for path in photos:
        resp = _explain(server.url, path.read_bytes(), path.name, fmt="json")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        heat = np.asarray(body["heatmap"])
        assert heat.max() - heat.min() > 0.2, f"uniform heat map for {path.name}"
        peaks.append(body["peak"]["y"])
    in_band = [EYE_BAND[0] <= y <= EYE_BAND[1] for y in peaks]
    share = sum(in_band) / len(in_band)
    print(f"\nexplain: peak in the eye band {EYE_BAND} for {sum(in_band)}/{len(in_band)} = {share:.2f} "
          f"of the test split's glasses photos")
    assert share >= MIN_EYE_SHARE, sorted(peaks)
