"""Slow clients and large uploads against a real `bentoml serve` on 127.0.0.1 (LiteRT runtime).

- Half-sent request heads (and a trickled one, and silent connections) are closed by the server
  within the head timeout (set to 2 s here); half-sent bodies get 408 and are closed; afterwards the
  worker's file handles are back near where they started and it still answers.
- Eight concurrent 30 MB uploads all get verdicts while the worker's peak RSS (VmHWM) stays under
  UPLOAD_PEAK_MB. Every wait is bounded; nothing here depends on the CPU's speed beyond generous bounds.
"""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from _service import ServiceServer, register_model

HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
CLOSE_BOUND_S = 20.0  # generous: the server must close well before this on a loaded machine
UPLOAD_PEAK_MB = 600  # goal for one LiteRT worker under eight concurrent 30 MB uploads
UPLOADS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("limits-store") / "bentoml"
    register_model(home, seed=0)
    env = {"GLASSES_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S), "GLASSES_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
           "GLASSES_RUNTIME": "litert", "GLASSES_SERVE_WORKERS": "1"}  # the limits are per worker: one, measured
    with ServiceServer(home, env=env) as srv:
        yield srv


def worker(server) -> psutil.Process:
    """The one BentoML worker process serving HTTP."""
    [proc] = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
              if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    return proc


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(server closed the connection before `seconds`, bytes it sent meanwhile)."""
    sock.settimeout(0.5)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_half_sent_heads_and_silent_connections_are_closed(server):
    fds_before = worker(server).num_fds()
    socks = [connect(server) for _ in range(30)]
    for i, sock in enumerate(socks):
        if i % 3:  # two in three send half a request head; the rest send nothing at all
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-")
    peak, deadline = worker(server).num_fds(), time.monotonic() + 1.5  # accepts may lag on a busy machine
    while peak < fds_before + 25 and time.monotonic() < deadline:
        time.sleep(0.05)
        peak = max(peak, worker(server).num_fds())
    start = time.monotonic()
    results = [closed_within(sock, CLOSE_BOUND_S) for sock in socks]
    waited = time.monotonic() - start
    for sock in socks:
        sock.close()
    assert all(closed for closed, _ in results), f"{sum(not c for c, _ in results)} of 30 connections still open"
    assert peak >= fds_before + 25  # the connections really reached the worker
    time.sleep(1)
    assert worker(server).num_fds() <= fds_before + 5
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    print(f"\nlimits: 30 half-sent/silent connections closed {waited:.1f} s after the last was opened "
          f"(head timeout {HEAD_TIMEOUT_S} s); worker fds {fds_before} -> {peak} -> {worker(server).num_fds()}")


def test_a_trickled_head_is_closed_at_the_deadline(server):
    """Slowloris: one byte of header every 0.3 s never completes the head, and is cut off."""
    sock = connect(server)
    head = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    start, closed = time.monotonic(), False
    try:
        for byte in head:
            sock.sendall(bytes([byte]))
            time.sleep(0.3)
            if time.monotonic() - start > CLOSE_BOUND_S:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    if not closed:
        closed, _ = closed_within(sock, 1.0)
    sock.close()
    assert closed and time.monotonic() - start < CLOSE_BOUND_S


def test_a_half_sent_body_gets_408_and_is_closed(server):
    sock = connect(server)
    boundary = "x-limits"
    sock.sendall((f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
                 + f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n".encode())
    closed, data = closed_within(sock, CLOSE_BOUND_S)
    sock.close()
    assert closed, "the server kept a half-sent body open"
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"status": 408' in data and b"not received within" in data
    # a normal request on a new connection still works
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200


def large_png(megabytes: float = 30) -> bytes:
    """A noisy RGB PNG of about `megabytes` MB (noise does not compress)."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_eight_concurrent_30mb_uploads_stay_under_the_peak(server, tmp_path: Path):
    body = large_png(30)
    assert 29e6 < len(body) < 32 * 2**20, len(body)
    proc = worker(server)

    def post(_: int) -> int:
        return requests.post(f"{server.url}/predict", files={"image": ("big.png", body, "image/png")},
                             timeout=180).status_code

    start = time.monotonic()
    with ThreadPoolExecutor(UPLOADS) as pool:
        statuses = list(pool.map(post, range(UPLOADS)))
    seconds = time.monotonic() - start
    peak_mb = _vm_hwm_kb(proc) / 1024
    print(f"\nlimits: {UPLOADS} concurrent {len(body) / 1e6:.1f} MB uploads in {seconds:.1f} s, "
          f"worker peak RSS {peak_mb:.0f} MB (bound {UPLOAD_PEAK_MB} MB)")
    assert statuses == [200] * UPLOADS, statuses
    assert peak_mb <= UPLOAD_PEAK_MB


def _vm_hwm_kb(proc: psutil.Process) -> int:
    """Peak resident memory of a process since it started (Linux VmHWM), in KiB."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")
