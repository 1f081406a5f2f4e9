"""`keep_freed_buffers` stops every framed photo from faulting in fresh pages (glasses/allocator.py),
and the service's workers call it (they import service/service.py, which does).

Counted in minor page faults, not time, so nothing depends on the CPU. Each count runs in a fresh
interpreter: malloc settings last for the life of a process. The control (the same loop without the
call) shows what the test would catch.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from glasses.config import REPO_ROOT
from loadtests.images import generate_images
from loadtests.server import QUIET_ENV

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Frame the benchmark's generated 1024² PNG faces through the shared preprocessing contract, as a
# worker does for a version with framing "face" (in its DECODE_THREADS decode threads, so in malloc's
# thread arenas), and count minor page faults per photo after a warm-up.
FAULTS_PER_PHOTO = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from glasses.allocator import keep_freed_buffers
from glasses.config import DECODE_THREADS
from glasses.preprocessing import to_uint8
kept = keep_freed_buffers() if sys.argv[1] == "keep" else None
if sys.argv[1] == "service":
    import service.service  # what each `bentoml serve` worker imports
datas = [p.read_bytes() for p in sorted(Path(sys.argv[2]).glob("*.png"))[:6]]
pool = ThreadPoolExecutor(DECODE_THREADS)
frame = lambda data: to_uint8(data, 128, "face")
list(pool.map(frame, datas))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
list(pool.map(frame, datas * 6))
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (6 * len(datas))}))
"""


@pytest.fixture(scope="module")
def png_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_images(tmp_path_factory.mktemp("allocator"), counts={"png": 6}) / "png"


def faults_per_photo(mode: str, photos: Path, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_PHOTO, mode, str(photos)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_framed_photos_reuse_heap_memory(png_faces: Path):
    control, kept = faults_per_photo("default", png_faces), faults_per_photo("keep", png_faces)
    print(f"\nallocator: minor faults per framed 1024² PNG {control['faults']:.0f} by default, "
          f"{kept['faults']:.0f} with keep_freed_buffers()")
    assert kept["kept"] is True
    assert control["faults"] > 500  # the control: a framed 1024² photo is several MB of fresh pages
    assert kept["faults"] < control["faults"] / 5


def test_the_service_module_sets_it_for_its_workers(png_faces: Path, tmp_path: Path):
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GLASSES_MODEL", None)  # an empty store: the import resolves nothing and writes nothing
    control, served = faults_per_photo("default", png_faces, env), faults_per_photo("service", png_faces, env)
    print(f"\nallocator: minor faults per framed photo after importing service.service {served['faults']:.0f} "
          f"(control {control['faults']:.0f})")
    assert served["faults"] < control["faults"] / 5
