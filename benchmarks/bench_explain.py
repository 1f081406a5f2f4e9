"""Does /explain slow /predict? Batch-1 /predict latency alone and with explanations in flight, on
two real `bentoml serve` servers (127.0.0.1, the bundled model on LiteRT): one where /explain shares
the batches' interpreter (GLASSES_EXPLAIN_RUNTIME=shared, the old way) and one where it runs its own
replica (own, the default).

    .venv/bin/python benchmarks/bench_explain.py [--rounds 4] [--requests 150] [--explainers 2]

Both servers run at once and the phases are interleaved round by round (shared alone, shared with
/explain, own alone, own with /explain), so a change in the machine's load hits both alike. "With"
means `--explainers` client threads post /explain back to back (one explanation runs, the other
waits for its slot), so one is always in flight while /predict is timed by one sequential client.
Prints the machine banner (CPU, load average), per-phase p50/p90 and the medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _fixtures import face_image  # noqa: E402
from _service import ServiceServer  # noqa: E402
from glasses.config import EXPLAIN_RUNTIMES  # noqa: E402
from glasses.machine import banner  # noqa: E402

CELEBA_GLASSES = REPO.parent / "shared" / "data" / "celeba-glasses" / "glasses"


def photo() -> tuple[str, bytes]:
    """One real CelebA glasses photo when ../shared has them, else a generated face (JPEG)."""
    found = sorted(CELEBA_GLASSES.glob("*.jpg"))[:1] if CELEBA_GLASSES.is_dir() else []
    if found:
        return f"CelebA {found[0].name}", found[0].read_bytes()
    import io

    buf = io.BytesIO()
    face_image(1, True, 178).save(buf, "JPEG", quality=92)
    return "generated face 178 px", buf.getvalue()


def predict_latencies(url: str, data: bytes, n: int) -> list[float]:
    """Milliseconds of `n` sequential batch-1 /predict requests (any non-200 stops the benchmark)."""
    out = []
    with requests.Session() as session:
        for _ in range(n):
            start = time.perf_counter()
            resp = session.post(f"{url}/predict", files={"image": ("face.jpg", data)}, timeout=60)
            out.append((time.perf_counter() - start) * 1e3)
            if resp.status_code != 200:
                raise SystemExit(f"/predict answered {resp.status_code}: {resp.text[:200]}")
    return out


class Explainers:
    """`n` threads posting /explain back to back until stopped; counts answers by status."""

    def __init__(self, url: str, data: bytes, n: int) -> None:
        self.url, self.data, self.stop_flag = url, data, threading.Event()
        self.statuses: dict[int, int] = {}
        self.first = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def _loop(self) -> None:
        with requests.Session() as session:
            while not self.stop_flag.is_set():
                self.first.set()
                resp = session.post(f"{self.url}/explain", files={"image": ("face.jpg", self.data)}, timeout=120)
                with self._lock:
                    self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1

    def __enter__(self) -> "Explainers":
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()
        self.first.wait()
        time.sleep(0.3)  # the first explanation is running, the second waiting for its slot
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join()
        self.seconds = time.perf_counter() - self.started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=150, help="/predict requests per phase")
    parser.add_argument("--explainers", type=int, default=2, help="client threads posting /explain")
    args = parser.parse_args(argv)
    name, data = photo()
    print(banner())
    print(f"photo: {name} ({len(data) / 1024:.1f} KiB); {args.rounds} rounds x {args.requests} sequential "
          f"/predict per phase; {args.explainers} /explain clients; LiteRT, GLASSES_LITERT_THREADS="
          f"{os.environ.get('GLASSES_LITERT_THREADS', '1')}", flush=True)
    p50: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        servers = {}
        try:
            for mode in EXPLAIN_RUNTIMES:  # empty stores: each imports and serves the bundled model
                home = Path(tmp) / mode / "bentoml"
                home.mkdir(parents=True)
                servers[mode] = ServiceServer(home, env={"GLASSES_RUNTIME": "litert", "GLASSES_EXPLAIN_RUNTIME": mode})
            for server in servers.values():  # warm both paths (and build the replica) before timing
                predict_latencies(server.url, data, 20)
                requests.post(f"{server.url}/explain", files={"image": ("face.jpg", data)}, timeout=120)
            for r in range(args.rounds):
                for mode in ("shared", "own"):
                    server = servers[mode]
                    alone = predict_latencies(server.url, data, args.requests)
                    with Explainers(server.url, data, args.explainers) as load:
                        busy = predict_latencies(server.url, data, args.requests)
                    done = load.statuses.get(200, 0)
                    for phase, lat in (("alone", alone), ("with /explain", busy)):
                        p50.setdefault((mode, phase), []).append(statistics.median(lat))
                        print(f"round {r + 1} {mode:>6} {phase:<13}: /predict p50 {statistics.median(lat):6.1f} ms, "
                              f"p90 {percentile(lat, 90):6.1f} ms", flush=True)
                    print(f"round {r + 1} {mode:>6} /explain answers {dict(sorted(load.statuses.items()))} "
                          f"({done / load.seconds:.1f}/s); load average {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(banner())
    print("median over rounds of /predict batch-1 p50:")
    for mode in ("shared", "own"):
        alone, busy = statistics.median(p50[(mode, "alone")]), statistics.median(p50[(mode, "with /explain")])
        print(f"  explain runtime {mode:>6}: alone {alone:6.1f} ms, with /explain {busy:6.1f} ms ({busy / alone:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
