"""`keep_freed_buffers` stops every decoded photo from faulting in fresh pages (glasses/allocator.py),
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

import pytest

from glasses.config import REPO_ROOT
from loadtests.server import QUIET_ENV

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Decode a generated 1024² PNG (the benchmark's PNG size) through the shared preprocessing contract, and
# count this process's minor page faults per image after a warm-up.
FAULTS_PER_DECODE = """
import io, json, resource, sys
import numpy as np
from PIL import Image
from glasses.allocator import keep_freed_buffers
from glasses.preprocessing import to_uint8
kept = keep_freed_buffers() if sys.argv[1] == "keep" else None
if sys.argv[1] == "service":
    import service.service  # what each `bentoml serve` worker imports
rng = np.random.default_rng(0)
buf = io.BytesIO()
Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
data = buf.getvalue()
for _ in range(3):
    to_uint8(data, 128, "none")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    to_uint8(data, 128, "none")
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""


def faults_per_decode(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_DECODE, mode], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_decoded_photos_reuse_heap_memory():
    control, kept = faults_per_decode("default"), faults_per_decode("keep")
    print(f"\nallocator: minor faults per 1024² PNG decode {control['faults']:.0f} by default, "
          f"{kept['faults']:.0f} with keep_freed_buffers()")
    assert kept["kept"] is True
    assert control["faults"] > 500  # the control: a decoded 1024² photo is ~3 MB or more of fresh pages
    assert kept["faults"] < control["faults"] / 10


def test_the_service_module_sets_it_for_its_workers(tmp_path):
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GLASSES_MODEL", None)  # an empty store: the import resolves nothing and writes nothing
    control, served = faults_per_decode("default", env), faults_per_decode("service", env)
    print(f"\nallocator: minor faults per decode after importing service.service {served['faults']:.0f} "
          f"(control {control['faults']:.0f})")
    assert served["faults"] < control["faults"] / 10
