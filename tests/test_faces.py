"""Face framing: the detector on real photos, the crop to the training framing, no-face refusals, the
served face box and 422, and `glasses-train frame` end to end (real BlazeFace, real LiteRT, real CLI)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glasses import faces
from glasses.config import FACE_DETECTOR_FILE, FACE_FRAME_BOX_W, FACE_FRAME_CENTRE
from glasses.preprocessing import NoFaceError, framed_or_whole, framed_uint8, load_rgb, to_uint8

from _service import REPO_ROOT, bundled_server, register_model

pytestmark = pytest.mark.skipif(not FACE_DETECTOR_FILE.exists(), reason="no face detector (scripts/setup.sh)")


def _photos(celeba_dir: Path, n: int, label: str = "glasses") -> list[Path]:
    return sorted((celeba_dir / label).iterdir())[:n]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_detector_finds_every_face_of_real_photos(celeba_dir):
    """40 real photos, both classes: a face in each, its box inside the photo around its centre."""
    paths = _photos(celeba_dir, 20) + _photos(celeba_dir, 20, "no_glasses")
    for path in paths:
        img = load_rgb(path)
        face = faces.find_face(img)
        assert face is not None, f"no face found in {path.name}"
        x0, y0, x1, y1 = face.box
        w, h = img.size
        assert -0.05 * w <= x0 < w / 2 < x1 <= 1.05 * w and -0.05 * h <= y0 < h / 2 < y1 <= 1.05 * h, (path.name, face)
        assert 0.3 * w < x1 - x0 < 0.9 * w  # an aligned CelebA face fills about half the width


def test_framing_undoes_a_small_off_centre_face(celeba_dir):
    """The photo pasted at 1/2.5 into a plain frame, near a corner: framed, it matches the framed original."""
    img = load_rgb(_photos(celeba_dir, 1)[0])
    w, h = img.size
    frame = Image.new("RGB", (round(w * 2.5), round(h * 2.5)), (90, 120, 150))
    frame.paste(img, (round(w * 1.4), round(h * 0.1)))
    original, face0 = framed_uint8(img, 128, "face")
    moved, face1 = framed_uint8(_png(frame), 128, "face")
    assert np.allclose(np.subtract(face1.box, face0.box), [w * 1.4, h * 0.1] * 2, atol=0.05 * w)
    assert abs((face1.box[2] - face1.box[0]) / (face0.box[2] - face0.box[0]) - 1) < 0.06  # same scale
    unframed = to_uint8(_png(frame), 128)
    centre = np.s_[26:102, 26:102]  # the face; the borders differ (edge pixels vs the plain frame)
    diff = np.abs(moved[centre].astype(float) - original[centre]).mean()
    assert diff < 0.5 * np.abs(unframed[centre].astype(float) - original[centre]).mean(), diff


def test_frame_puts_the_box_where_training_photos_have_it():
    """frame() on a known box: the output's size and the box's place follow FACE_FRAME_*; past the
    border the edge pixels repeat."""
    img = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (200, 1, 3)), "RGB")
    face = faces.Face((10.0, 20.0, 90.0, 100.0), 0.9)  # 80 px square box near the top-left corner
    left, top, right, bottom = faces.frame_region(face)
    assert right - left == round(80 / FACE_FRAME_BOX_W) and left < 0 and top < 0
    assert abs((50 - left) / (right - left) - FACE_FRAME_CENTRE[0]) < 0.01
    out = np.asarray(faces.frame(img, face))
    assert out.shape[:2] == (bottom - top, right - left)
    assert (out[:, : -left, 0] == 0).all()  # columns left of the photo repeat its first column (value 0)
    assert out[0, -left + 5, 0] == 5  # inside the photo, unchanged


@pytest.mark.parametrize("dx, dy", [(-60, -60), (60, 60), (-60, 50), (50, -60), (0, 0), (-150, 0), (0, 150)])
def test_frame_pads_exactly_like_numpys_edge_mode(dx, dy):
    """frame() repeats edge pixels in PIL; it must match numpy.pad(mode="edge") pixel for pixel, past
    every border, the corners included (a face near each edge and corner of a noisy photo)."""
    img = Image.fromarray(np.random.default_rng(abs(dx * 7 + dy)).integers(0, 256, (120, 160, 3), dtype=np.uint8), "RGB")
    face = faces.Face((50.0 + dx, 30.0 + dy, 110.0 + dx, 90.0 + dy), 0.9)
    left, top, right, bottom = faces.frame_region(face)
    x0, y0 = min(max(left, 0), 159), min(max(top, 0), 119)
    x1, y1 = max(min(right, 160), x0 + 1), max(min(bottom, 120), y0 + 1)
    pad = ((max(y0 - top, 0), max(bottom - y1, 0)), (max(x0 - left, 0), max(right - x1, 0)), (0, 0))
    expected = np.pad(np.asarray(img)[y0:y1, x0:x1], pad, mode="edge")
    assert np.array_equal(np.asarray(faces.frame(img, face)), expected)


def test_a_face_filling_the_frame_is_found_on_a_second_look(celeba_dir):
    """Tight grayscale face crops (150 px, brows to chin): the border retry finds faces the first look
    misses, and the box it returns is in the crop's own pixels."""
    crops = []
    for path in _photos(celeba_dir, 30) + _photos(celeba_dir, 30, "no_glasses"):
        img = load_rgb(path)
        side = 0.62 * min(img.size)
        cx, cy = img.width / 2, 0.56 * img.height
        box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
        crops.append(img.crop(box).convert("L").resize((150, 150)).convert("RGB"))
    first = [faces.detector().detect(c) for c in crops]
    found = [faces.find_face(c) for c in crops]
    n_first, n_found = sum(f is not None for f in first), sum(f is not None for f in found)
    assert n_first < n_found >= len(crops) - 2, (n_first, n_found)  # 56 and 58 of these 60 when written
    for face in filter(None, found):
        x0, y0, x1, y1 = face.box
        assert -40 < x0 < 75 < x1 < 190 and -40 < y0 < 75 < y1 < 190, face


@pytest.mark.parametrize("kind", ["blank", "noise", "landscape"])
def test_no_face_is_a_clear_refusal(kind):
    rng = np.random.default_rng(0)
    img = {"blank": Image.new("RGB", (300, 300), (128, 128, 128)),
           "noise": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB"),
           "landscape": Image.fromarray(np.concatenate([np.full((100, 300, 3), (120, 170, 230), np.uint8),
                                                         np.full((100, 300, 3), (60, 130, 40), np.uint8)]), "RGB")}[kind]
    with pytest.raises(NoFaceError, match="no face found"):
        to_uint8(_png(img), 128, "face")
    assert to_uint8(_png(img), 128).shape == (128, 128, 3)  # framing "none" is unchanged
    kept, missing = framed_or_whole(_png(img), 128, "face")  # training and evaluation keep it whole
    assert missing and np.array_equal(kept, to_uint8(_png(img), 128))


def test_served_verdict_carries_the_face_and_refuses_no_face(request, tmp_path_factory, celeba_dir):
    import requests

    server = bundled_server(request, tmp_path_factory)
    card = requests.get(f"{server.url}/model", timeout=10).json()
    if card["preprocessing"]["framing"] != "face":
        pytest.skip("the bundled default does not frame faces")
    photo = _photos(celeba_dir, 1)[0].read_bytes()
    blank = _png(Image.new("RGB", (300, 300), (128, 128, 128)))
    ok = requests.post(f"{server.url}/predict", files={"image": ("p.jpg", photo)}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["face"]["box"]) == 4 and ok.json()["face"]["score"] >= 0.5
    refused = requests.post(f"{server.url}/predict", files={"image": ("blank.png", blank)}, timeout=30)
    assert refused.status_code == 422 and refused.json()["error"].startswith("no face found")
    batch = requests.post(f"{server.url}/predict_batch", timeout=30,
                          files=[("images", ("blank.png", blank)), ("images", ("p.jpg", photo))]).json()
    assert batch[0]["status"] == 422 and batch[0]["index"] == 0 and "no face found" in batch[0]["error"]
    assert batch[1]["verdict"] == ok.json()["verdict"] and batch[1]["face"] == ok.json()["face"]


def _subset(celeba_dir: Path, root: Path, people: int = 40, per_person: int = 4) -> Path:
    """A folders source of real photos: `per_person` photos of the first people, glasses wearers included."""
    with open(celeba_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_person: dict[str, list[dict]] = {}
    for row in rows:
        by_person.setdefault(row["celeba_identity"], []).append(row)
    wearers = [p for p, r in by_person.items() if any(x["eyeglasses"] == "1" for x in r)]
    chosen = wearers[: people // 2] + [p for p in by_person if p not in wearers][: people - people // 2]
    kept = []
    for person in chosen:
        mine = sorted(by_person[person], key=lambda r: r["eyeglasses"], reverse=True)[:per_person]
        for row in mine:
            (root / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(celeba_dir / row["file"], root / row["file"])
            kept.append(row)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return root


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENTOML_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "training", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT)


_POOLED_THRESHOLD = """
import json, sys
import numpy as np
from glasses import calibration as cal, registry
from glasses.config import SEED
from training.data import read_manifest
from training.evaluate import choose_threshold
from training.framing import _raw_classifier
from training.robustness import score_conditions, split_photo_bytes
version, manifest = registry.get_model(sys.argv[1]), read_manifest(sys.argv[2])
raw = _raw_classifier(version, int(version.info.metadata["image_size"]))
probs, _ = score_conditions(raw, split_photo_bytes(manifest, "val"), size=int(manifest["size"]), seed=SEED, framing="face")
p = cal.apply(probs.ravel(), version.info.metadata["calibration"])
y = np.asarray(manifest["splits"]["val"]["labels"])
print(json.dumps([choose_threshold(y, cal.apply(probs[0], version.info.metadata["calibration"])),
                  choose_threshold(np.tile(y, len(probs)), p)]))
"""


def test_frame_cli_registers_a_recalibrated_framed_copy(celeba_dir, tmp_path):
    """prepare real photos -> a test CNN -> `glasses-train frame`: a promoted copy with framing "face",
    its own calibration, threshold, robustness (no-face counts) and reports; framing it again, or a
    missing manifest, is one line and a non-zero exit."""
    home = tmp_path / "bentoml"
    source = _subset(celeba_dir, tmp_path / "photos")
    prepared = _cli(["prepare", "--source", f"folders:{source}", "--work-dir", str(tmp_path / "work")], home)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    manifest = next(line.split(": ", 1)[1] for line in prepared.stdout.splitlines() if line.startswith("manifest: "))
    tag = register_model(home, seed=3)
    out = tmp_path / "framing"
    done = _cli(["frame", tag, "--manifest", manifest, "--out-dir", str(out)], home)
    assert done.returncode == 0, done.stderr[-2000:]
    new_tag = done.stdout.split()[1]
    meta = json.loads((out / "framing.json").read_text())
    assert meta["no_face"]["test"] <= 1 and meta["no_face"]["test_photos"] > 0
    assert set(meta["robustness"]) >= {"untouched", "small_face", "tight_crop"}
    assert (out / "reliability.png").stat().st_size > 0 and "no face found" in (out / "robustness.md").read_text()
    show = subprocess.run([sys.executable, "-c", "import json, bentoml; from glasses import registry; "
                           f"m = registry.get_model({new_tag!r}); print(json.dumps([m.info.metadata.get('framing'), "
                           "m.info.metadata.get('framed_from'), m.info.metadata.get('threshold'), registry.promoted_tag()]))"],
                          env=dict(os.environ, BENTOML_HOME=str(home)), capture_output=True, text=True, cwd=REPO_ROOT)
    framing, framed_from, threshold, promoted = json.loads(show.stdout.strip().splitlines()[-1])
    assert (framing, framed_from, promoted) == ("face", tag, new_tag) and threshold == meta["threshold"]
    # the threshold is chosen on framed validation photos as users send them: every condition, pooled
    assert "conditions pooled" in meta["threshold_method"]
    pooled = subprocess.run([sys.executable, "-c", _POOLED_THRESHOLD, new_tag, manifest], capture_output=True, text=True,
                            env=dict(os.environ, BENTOML_HOME=str(home)), cwd=REPO_ROOT)
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    untouched_only, pooled_threshold = json.loads(pooled.stdout.strip().splitlines()[-1])
    assert pooled_threshold == pytest.approx(meta["threshold"], abs=1e-12)
    assert meta["validation_metrics"]["threshold"] == meta["threshold"] and untouched_only > 0
    again = _cli(["frame", new_tag, "--manifest", manifest, "--out-dir", str(out)], home)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1 and "already has framing" in again.stderr
    missing = _cli(["frame", tag, "--manifest", str(tmp_path / "nope.json")], home)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1 and "does not exist" in missing.stderr


def test_run_serve_framing_registers_the_framed_copy(celeba_dir, tmp_path):
    """`run --serve-framing face`: the run's version is registered, then its framed copy, which is the
    run's tag; the framing reports are in the run directory (promotion: the frame CLI test above)."""
    home = tmp_path / "bentoml"
    source = _subset(celeba_dir, tmp_path / "photos", people=24, per_person=3)
    done = _cli(["run", "--source", f"folders:{source}", "--profile", "smoke", "--size", "64", "--serve-framing", "face",
                 "--no-promote", "--force", "--work-dir", str(tmp_path / "work")], home)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines() if line.startswith("   ") and line.split()}
    assert "== frame" in done.stdout and fields["unframed_tag"] != fields["tag"] and fields["promoted"] == "no"
    run_dir = Path(fields["run_dir"])
    assert (run_dir / "framing" / "framing.json").is_file() and (run_dir / "framing" / "robustness.md").is_file()
    show = subprocess.run([sys.executable, "-c", "import json; from glasses import registry; "
                           f"m = registry.get_model({fields['tag']!r}); "
                           "print(json.dumps([m.info.metadata.get('framing'), m.info.metadata.get('framed_from'), "
                           "registry.promoted_tag()]))"],
                          env=dict(os.environ, BENTOML_HOME=str(home)), capture_output=True, text=True, cwd=REPO_ROOT)
    assert json.loads(show.stdout.strip().splitlines()[-1]) == ["face", fields["unframed_tag"], None]


def test_prepare_frames_the_cache_and_records_it(celeba_dir, tmp_path):
    """`prepare --framing face`: its own cache (another fingerprint), every photo cropped as the
    contract crops it, the manifest says framing "face" and lists photos without a face."""
    from training.data import load_split, read_manifest

    source = _subset(celeba_dir, tmp_path / "photos", people=20, per_person=2)
    manifests = {}
    for framing in ("none", "face"):
        done = _cli(["prepare", "--source", f"folders:{source}", "--work-dir", str(tmp_path / "work"),
                     "--framing", framing], tmp_path / "bentoml")
        assert done.returncode == 0, done.stderr[-2000:]
        manifests[framing] = next(line.split(": ", 1)[1] for line in done.stdout.splitlines()
                                  if line.startswith("manifest: "))
    assert Path(manifests["none"]).parent != Path(manifests["face"]).parent
    framed = read_manifest(manifests["face"])
    assert framed["framing"] == "face" and framed["unframed"] == [] and read_manifest(manifests["none"])["framing"] == "none"
    pixels, _ = load_split(manifests["face"], "train")
    first = framed["splits"]["train"]["files"][0]
    assert np.array_equal(pixels[0], to_uint8(source / first, 128, "face"))
    assert not np.array_equal(pixels[0], to_uint8(source / first, 128))
    bad = _cli(["prepare", "--source", f"folders:{source}", "--framing", "eyes"], tmp_path / "bentoml")
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
