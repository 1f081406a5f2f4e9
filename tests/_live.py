"""Helpers for the live-registry tests: a bounded background load, the registry CLI, metrics scraping.

    with Load(server.url) as load:                 # 3 threads POSTing /predict until stopped
        glasses_train(home, "registry", "promote", tag)
        load.wait_for(lambda answers: ..., timeout=90)
    load.answers                                   # [Answer(sent, status, model, verdict), ...]
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image

from _service import REPO_ROOT, _env

MAX_LOAD_SECONDS = 240.0  # a Load never runs longer than this, whatever the test does


def jpeg(seed: int, size: tuple[int, int] = (178, 218)) -> bytes:
    """A smooth random picture as JPEG (the test models' P(glasses) spreads over (0, 1) on these)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


IMAGES = [jpeg(seed) for seed in range(16)]


@dataclass
class Answer:
    sent: float  # time.monotonic() when the request was sent
    status: int  # HTTP status, 0 = connection failed
    model: str | None
    verdict: str | None
    error: str = ""  # the client's exception or the error body


class Load:
    """Threads POSTing /predict back to back (bounded in time); every answer is recorded."""

    def __init__(self, url: str, threads: int = 3, path: str = "/predict") -> None:
        self.url, self.path, self.answers = url, path, []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, index: int) -> None:
        session, deadline, n = requests.Session(), time.monotonic() + MAX_LOAD_SECONDS, index
        while not self._stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                resp = session.post(self.url + self.path, files={"image": ("f.jpg", IMAGES[n % len(IMAGES)])},
                                    timeout=60)
                body = resp.json() if resp.status_code == 200 else {}
                answer = Answer(sent, resp.status_code, body.get("model"), body.get("verdict"),
                                "" if resp.status_code == 200 else resp.text[:200])
            except (requests.RequestException, ValueError) as exc:
                answer = Answer(sent, 0, None, None, repr(exc)[:300])
            with self._lock:
                self.answers.append(answer)
            n += 3

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.sent >= t]

    def wait_for(self, condition: Callable[[list[Answer]], bool], timeout: float) -> bool:
        """Poll `condition(all answers so far)` until true or `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                answers = list(self.answers)
            if condition(answers):
                return True
            time.sleep(0.25)
        return False


def converged(tag: str, last: int = 40) -> Callable[[list[Answer]], bool]:
    """Condition: the last `last` answers all come from `tag`."""
    return lambda answers: len(answers) >= last and all(a.model == tag for a in answers[-last:])


def glasses_train(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m training ARGS` on the store at `home` (the real CLI, in its own process)."""
    out = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO_ROOT, env=_env(home),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series over every worker (BentoML's /metrics), filtered by label values."""
    text = requests.get(url + "/metrics", timeout=30).text
    total = 0.0
    for match in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_metric(url: str, name: str, at_least: float, timeout: float = 120.0, **labels: str) -> float:
    """Wait until the metric's sum reaches `at_least`; returns the last value seen."""
    deadline, value = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        value = metric_sum(url, name, **labels)
        if value >= at_least:
            break
        time.sleep(0.5)
    return value
