"""The prediction service end to end: a real `bentoml serve` on 127.0.0.1 serving a real Keras CNN.

Parity: for real photos and generated files in every colour mode, the HTTP probability equals the
in-process prediction of the same model on `glasses.preprocessing.preprocess(file)` (the training
pipeline's tensor) within 1e-5. One server for the session (tests/_service.py: shared_server).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from _service import REPO_ROOT, ServiceServer, bundled_server, model_file, shared_server
from glasses import preprocessing
from glasses.config import BUNDLED_MODEL_FILE, CLASS_MAP, IMAGE_SIZE, MAX_REQUEST_BYTES
from glasses.registry import archive_tag

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def card(server) -> dict:
    resp = requests.get(f"{server.url}/model", timeout=30)
    assert resp.status_code == 200
    return resp.json()


@pytest.fixture(scope="module")
def reference(server, card):
    """In-process P(glasses) of the served model on the training contract's tensor for a file."""
    import keras

    model = keras.saving.load_model(model_file(server.home, card["tag"]), compile=False)

    def predict(data: bytes) -> float:
        x = preprocessing.preprocess(data)[np.newaxis]
        return float(np.asarray(model(x, training=False))[0, 0])

    return predict


# --- generated uploads --------------------------------------------------------------------------
def _picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (so the model's output depends on where things are)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def generated_uploads() -> dict[str, bytes]:
    """One file per format / colour mode the contract handles (names say what each exercises)."""
    rgb = _picture(178, 218, seed=1)
    rgba = rgb.convert("RGBA")
    alpha = np.full((218, 178), 255, np.uint8)
    alpha[:, :60] = 0  # a transparent band: composited onto white
    rgba.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    frames = [_picture(120, 100, seed=s) for s in (2, 3)]
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    return {
        "rgb.png": _save(rgb, "PNG"),
        "rgb.jpg": _save(rgb, "JPEG", quality=90),
        "grey.png": _save(rgb.convert("L"), "PNG"),
        "grey.jpg": _save(rgb.convert("L"), "JPEG", quality=90),
        "grey16.png": _save(grey16, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "palette.png": _save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"),
        "exif-rotated.jpg": _save(rgb, "JPEG", quality=90, exif=exif),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG", quality=90),
        "rgb.webp": _save(rgb, "WEBP", quality=90),
        "rgb.bmp": _save(rgb, "BMP"),
        "rgb.tiff": _save(rgb, "TIFF"),
        "square-large.png": _save(_picture(1024, 1024, seed=4), "PNG"),
        # ~3 MB: past Starlette's default 1 MiB in-memory spool (service/uploads.py keeps it in memory)
        "noisy-large.png": _save(Image.fromarray(np.random.default_rng(5).integers(0, 256, (1024, 1024, 3), np.uint8)), "PNG"),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
    }


def _predict(server, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{server.url}/predict", files={"image": (name, data)}, timeout=60)


def _check_verdict(result: dict, card: dict) -> None:
    assert set(result) == {"verdict", "probability", "threshold", "model"}
    assert 0.0 <= result["probability"] <= 1.0
    assert result["threshold"] == card["threshold"]
    assert result["model"] == card["tag"]
    expected = "glasses" if result["probability"] >= result["threshold"] else "no_glasses"
    assert result["verdict"] == expected


# --- tests --------------------------------------------------------------------------------------
def test_predict_matches_training_contract_for_every_format(server, card, reference):
    uploads = generated_uploads()
    probabilities = {}
    for name, data in uploads.items():
        resp = _predict(server, name, data)
        assert resp.status_code == 200, (name, resp.text)
        result = resp.json()
        _check_verdict(result, card)
        assert abs(result["probability"] - reference(data)) <= TOLERANCE, name
        probabilities[name] = result["probability"]
    # the model is not constant: parity would be vacuous otherwise
    assert max(probabilities.values()) - min(probabilities.values()) > 0.05


def test_exif_orientation_is_applied(server, reference):
    upright = _picture(178, 218, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes with orientation 6
    tagged = _predict(server, "tagged.png", _save(stored, "PNG", exif=exif)).json()["probability"]
    plain = _predict(server, "upright.png", _save(upright, "PNG")).json()["probability"]
    untagged = _predict(server, "untagged.png", _save(stored, "PNG")).json()["probability"]
    assert abs(tagged - plain) <= TOLERANCE
    assert abs(untagged - plain) > 10 * TOLERANCE  # the rotation matters to this model


def test_predict_batch_keeps_input_order(server, card, reference):
    uploads = list(generated_uploads().items())
    resp = requests.post(f"{server.url}/predict_batch",
                         files=[("images", (name, data)) for name, data in uploads], timeout=120)
    assert resp.status_code == 200, resp.text
    results = resp.json()
    assert len(results) == len(uploads)
    for (name, data), result in zip(uploads, results):
        _check_verdict(result, card)
        assert abs(result["probability"] - reference(data)) <= TOLERANCE, name


def test_real_photos(server, card, reference, celeba_dir: Path):
    lines = (celeba_dir / "labels.csv").read_text().splitlines()[1:]
    glasses = [line.split(",")[0] for line in lines if line.split(",")[2] == "1"][:6]
    plain = [line.split(",")[0] for line in lines if line.split(",")[2] == "0"][:6]
    files = [celeba_dir / f for f in glasses + plain]
    resp = requests.post(f"{server.url}/predict_batch",
                         files=[("images", (f.name, f.read_bytes())) for f in files], timeout=120)
    assert resp.status_code == 200, resp.text
    for path, result in zip(files, resp.json()):
        _check_verdict(result, card)
        assert abs(result["probability"] - reference(path.read_bytes())) <= TOLERANCE, path
    single = _predict(server, files[0].name, files[0].read_bytes()).json()
    assert abs(single["probability"] - resp.json()[0]["probability"]) <= TOLERANCE


def test_model_endpoint_describes_the_promoted_model(server, card):
    promoted = json.loads((server.home / "glasses_registry.json").read_text())["promoted"]
    assert card["tag"] == promoted
    assert card["name"] == "glasses_classifier" and card["version"] == promoted.split(":")[1]
    assert card["threshold"] == 0.5
    assert card["metrics"] == {"accuracy": 0.5, "roc_auc": 0.5}
    assert card["class_map"] == CLASS_MAP
    assert card["preprocessing"] == {"version": preprocessing.PREPROCESSING_VERSION, "image_size": IMAGE_SIZE,
                                     "served_version": preprocessing.PREPROCESSING_VERSION, "framing": "none"}
    assert re.match(r"\d{4}-\d\d-\d\dT", card["created"])
    assert card["runtimes"] == ["tf", "litert"] and card["runtime"] == "litert"  # auto: LiteRT when present
    assert card["litert"]["accepted"] and card["litert"]["max_abs_dp"] <= TOLERANCE


def test_tf_runtime_on_request_gives_the_same_probabilities(server, tmp_path):
    """GLASSES_RUNTIME=tf serves the same version on TensorFlow; both runtimes agree within 1e-5."""
    home = tmp_path / "bentoml"
    shutil.copytree(server.home / "models", home / "models")
    shutil.copy(server.home / "glasses_registry.json", home / "glasses_registry.json")
    uploads = generated_uploads()
    with ServiceServer(home, env={"GLASSES_RUNTIME": "tf"}) as tf_server:
        assert requests.get(f"{tf_server.url}/model", timeout=30).json()["runtime"] == "tf"
        for name in ("rgb.jpg", "grey16.png", "square-large.png"):
            on_tf = _predict(tf_server, name, uploads[name]).json()["probability"]
            on_litert = _predict(server, name, uploads[name]).json()["probability"]
            assert abs(on_tf - on_litert) <= TOLERANCE, name


def test_infer_api_takes_decoded_pixels(server, reference):
    data = generated_uploads()["rgb.png"]
    pixels = preprocessing.to_uint8(data)[np.newaxis].tolist()
    resp = requests.post(f"{server.url}/infer", json={"pixels": pixels}, timeout=60)
    assert resp.status_code == 200, resp.text
    [probability] = resp.json()
    assert abs(probability - reference(data)) <= TOLERANCE


def test_bentoml_endpoints_keep_working(server):
    for path in ("/healthz", "/livez", "/readyz"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'bentoml_service_request_total{' in metrics and 'endpoint="/predict"' in metrics
    assert 'bentoml_service_adaptive_batch_size_count{method_name="infer"' in metrics
    spec = requests.get(f"{server.url}/docs.json", timeout=10).json()
    assert {"/predict", "/predict_batch", "/infer"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_client_cli(server, tmp_path):
    uploads = generated_uploads()
    good = tmp_path / "face.jpg"
    good.write_bytes(uploads["rgb.jpg"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(uploads["rgb.png"][:200])
    cmd = [sys.executable, "-m", "service.client", "--url", server.url]
    one = subprocess.run([*cmd, str(good)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert one.returncode == 0, one.stderr
    assert re.fullmatch(rf"{re.escape(str(good))}: (glasses|no_glasses) \(P\(glasses\)=0\.\d\d, threshold 0\.50\)\n",
                        one.stdout)
    both = subprocess.run([*cmd, "--json", str(good), str(bad)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert both.returncode == 1
    results = json.loads(both.stdout)
    assert results[0]["file"] == str(good) and results[0]["verdict"] in ("glasses", "no_glasses")
    assert results[1]["file"] == str(bad) and results[1]["status"] == 422 and "PNG" in results[1]["error"]
    huge = tmp_path / "huge.png"  # over the body limit on its own: refused alone, the others still answered
    huge.write_bytes(uploads["rgb.png"] + bytes(MAX_REQUEST_BYTES))
    mixed = subprocess.run([*cmd, "--json", str(good), str(huge), str(good)], capture_output=True, text=True,
                           cwd=REPO_ROOT, timeout=120)
    assert mixed.returncode == 1, mixed.stderr
    assert [r.get("verdict") is not None for r in json.loads(mixed.stdout)] == [True, False, True]
    assert json.loads(mixed.stdout)[1]["status"] == 413
    missing = subprocess.run([*cmd, str(tmp_path / "nope.jpg")], capture_output=True, text=True, cwd=REPO_ROOT,
                             timeout=60)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope.jpg'}"]


def test_client_chunks_by_count_and_bytes():
    from service.client import chunk_files

    assert chunk_files([]) == []
    assert [list(c) for c in chunk_files([1] * 5, max_files=2, max_bytes=100)] == [[0, 1], [2, 3], [4]]
    assert [list(c) for c in chunk_files([60, 30, 20, 500, 10], max_files=32, max_bytes=100)] == [[0, 1], [2], [3], [4]]


# --- the release rule (no server) ----------------------------------------------------------------
def _run_dispatcher(max_latency_ms: int, hold_first: float) -> tuple[list[int], list]:
    """Submit 1 request, then 10 more while the first batch is held for `hold_first` seconds."""
    import asyncio

    from service.batching import GreedyDispatcher

    sizes: list[int] = []

    async def scenario() -> list:
        dispatcher = GreedyDispatcher(max_latency_ms, 64, fallback=lambda: "shed", get_batch_size=lambda _: 1)

        async def model(batch):
            sizes.append(len(batch))
            if len(sizes) == 1:
                await asyncio.sleep(hold_first)
            return [x * 2 for x in batch]

        call = dispatcher(model)
        first = asyncio.create_task(call(1))
        while not sizes:  # the idle dispatcher released the first request on its own
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(call(i)) for i in range(2, 12)]
        results = await asyncio.gather(first, *rest)
        dispatcher.shutdown()
        return results

    return sizes, asyncio.run(scenario())


def test_greedy_dispatcher_releases_when_free_and_batches_what_queued():
    sizes, results = _run_dispatcher(max_latency_ms=10_000, hold_first=0.2)
    assert sizes == [1, 10]
    assert results == [2 * i for i in range(1, 12)]


def test_greedy_dispatcher_sheds_requests_queued_past_max_latency():
    sizes, results = _run_dispatcher(max_latency_ms=50, hold_first=0.5)
    assert sizes == [1]
    assert results == [2] + ["shed"] * 10


def test_importing_the_service_leaves_an_empty_store_empty(tmp_path):
    home = tmp_path / "bentoml"
    home.mkdir()
    code = "import service.service as s; print(s.MODEL_TAG)"
    env = {k: v for k, v in os.environ.items() if k != "GLASSES_MODEL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "BENTOML_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == ("None" if BUNDLED_MODEL_FILE.exists() else "")
    assert list(home.iterdir()) == []


def test_start_up_imports_and_promotes_the_bundled_default_into_an_empty_store(request, tmp_path_factory):
    if not BUNDLED_MODEL_FILE.exists():
        pytest.skip(f"no bundled model at {BUNDLED_MODEL_FILE}")
    server = bundled_server(request, tmp_path_factory)
    tag = archive_tag(BUNDLED_MODEL_FILE)
    card = requests.get(f"{server.url}/model", timeout=30).json()
    assert card["tag"] == tag and card["aliases"]["production"]["tag"] == tag
    log = server.log_tail(400)
    assert log.count("imported into the empty store and promoted") == 1, log
