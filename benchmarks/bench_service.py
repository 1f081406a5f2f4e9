"""Benchmark a running prediction service: batch-1 latency and throughput under concurrency.

    python benchmarks/bench_service.py --url http://127.0.0.1:3000 [--images DIR] [--concurrency 32]

Uploads 178x218 JPEGs (CelebA-sized; real photos from --images when given, else generated), first
`--sequential` single requests one after another (latency p50/p95 at batch 1), then `--requests`
requests with `--concurrency` in flight (throughput, latency, errors, mean adaptive batch size read
from /metrics). With --ceiling it also measures the in-process ceiling (decode + preprocess + the
compiled model at batch 64, no HTTP) in a subprocess and prints the service/ceiling ratio.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageFilter

REPO_ROOT = Path(__file__).resolve().parent.parent
JPEG_SIZE = (178, 218)


def generated_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """CelebA-like uploads: smooth random 178x218 pictures with noise, JPEG quality 90 (~6-9 KB)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(JPEG_SIZE, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (JPEG_SIZE[1], JPEG_SIZE[0], 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def load_images(folder: Path | None, n: int) -> list[bytes]:
    """`n` JPEG uploads: the first files of `folder` (recursively) or generated ones."""
    if folder is None:
        return generated_jpegs(n)
    files = sorted(p for p in folder.rglob("*.jp*g"))[:n]
    if not files:
        raise SystemExit(f"no JPEG files under {folder}")
    return [p.read_bytes() for p in files]


def server_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by a server process and all its children."""
    if pid is None:
        return float("nan")
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def post_one(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, float]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="face.jpg", content_type="image/jpeg")
    t0 = time.perf_counter()
    async with session.post(f"{url}/predict", data=form) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - t0


async def sequential(url: str, images: list[bytes], n: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        for data in images[:3]:  # warm the connection and the dispatcher
            await post_one(session, url, data)
        lat = []
        for i in range(n):
            status, dt = await post_one(session, url, images[i % len(images)])
            if status == 200:
                lat.append(dt)
        return lat


async def concurrent(url: str, images: list[bytes], n: int, concurrency: int) -> dict:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(n))
        lat: list[float] = []
        statuses: dict[int, int] = {}

        async def worker() -> None:
            for i in counter:
                try:
                    status, dt = await post_one(session, url, images[i % len(images)])
                except aiohttp.ClientError:
                    status, dt = -1, 0.0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    lat.append(dt)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"requests": n, "seconds": elapsed, "rps": statuses.get(200, 0) / elapsed,
            "p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "statuses": statuses}


async def batch_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of BentoML's adaptive batch size histogram on /metrics."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
    total = sum(float(v) for v in re.findall(r"adaptive_batch_size_sum\{[^}]*\} ([0-9.e+]+)", text))
    count = sum(float(v) for v in re.findall(r"adaptive_batch_size_count\{[^}]*\} ([0-9.e+]+)", text))
    return total, count


CEILING_CODE = """
import sys, json, time, numpy as np
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from service.inference import Classifier, decode_upload
from glasses.config import IMAGE_SIZE
images = [Path(p).read_bytes() for p in sys.argv[3:]]
clf = Classifier(Path(sys.argv[2]), IMAGE_SIZE); clf.warm_up((1, 64))
def run(batch):
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < 4:
        x = np.stack([decode_upload(images[(n + i) % len(images)], IMAGE_SIZE) for i in range(batch)])
        clf(x); n += batch
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3
(b1, c1), (b64, c64) = run(1), run(64)
print(json.dumps({"batch1": b1, "batch64": b64, "cpu_ms_per_image_batch64": c64}))
"""


def ceiling(model_file: Path, images: list[bytes]) -> dict:
    """In-process img/s (decode + preprocess + compiled model), at batch 1 and 64, in a subprocess."""
    tmp = Path("/tmp/glasses-bench-images")
    tmp.mkdir(exist_ok=True)
    paths = []
    for i, data in enumerate(images[:64]):
        (tmp / f"{i}.jpg").write_bytes(data)
        paths.append(str(tmp / f"{i}.jpg"))
    out = subprocess.run([sys.executable, "-c", CEILING_CODE, str(REPO_ROOT), str(model_file), *paths],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: generated)")
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--ceiling", type=Path, default=None, help="model.keras for the in-process ceiling")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="pid of `bentoml serve`: also report server CPU ms per request (load-independent)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    images = load_images(args.images, 256)
    results: dict = {"url": args.url, "images": str(args.images or "generated 178x218 JPEG"),
                     "mean_upload_bytes": statistics.mean(len(b) for b in images)}
    lat = asyncio.run(sequential(args.url, images, args.sequential))
    results["batch1"] = {"n": len(lat), "p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3}
    s0, c0 = asyncio.run(batch_histogram(args.url))
    cpu0 = server_cpu_seconds(args.server_pid)
    results["concurrent"] = asyncio.run(concurrent(args.url, images, args.requests, args.concurrency))
    results["concurrent"]["server_cpu_ms_per_request"] = (server_cpu_seconds(args.server_pid) - cpu0) / args.requests * 1e3
    s1, c1 = asyncio.run(batch_histogram(args.url))
    lat = asyncio.run(sequential(args.url, images, args.sequential))
    results["batch1_after_burst"] = {"n": len(lat), "p50_ms": pct(lat, 50) * 1e3, "p95_ms": pct(lat, 95) * 1e3}
    results["concurrent"]["mean_batch"] = (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
    if args.ceiling:
        results["ceiling_img_s"] = ceiling(args.ceiling, images)
        results["ratio_to_ceiling"] = results["concurrent"]["rps"] / results["ceiling_img_s"]["batch64"]
        results["cpu_efficiency"] = (results["ceiling_img_s"]["cpu_ms_per_image_batch64"]
                                     / results["concurrent"]["server_cpu_ms_per_request"])
    if args.json:
        print(json.dumps(results, indent=2))
        return
    b, c = results["batch1"], results["concurrent"]
    print(f"uploads: {results['images']}, mean {results['mean_upload_bytes'] / 1024:.1f} KiB")
    print(f"batch 1, sequential ({b['n']} requests): p50 {b['p50_ms']:.1f} ms, p95 {b['p95_ms']:.1f} ms")
    print(f"concurrency {args.concurrency} ({c['requests']} requests): {c['rps']:.0f} req/s, "
          f"p50 {c['p50_ms']:.0f} ms, p95 {c['p95_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms, "
          f"mean adaptive batch {c['mean_batch']:.1f}, statuses {c['statuses']}")
    b = results["batch1_after_burst"]
    print(f"batch 1, sequential again after the burst: p50 {b['p50_ms']:.1f} ms, p95 {b['p95_ms']:.1f} ms")
    if args.server_pid:
        print(f"server CPU per request under concurrency: {c['server_cpu_ms_per_request']:.2f} ms "
              f"(2 cores => at most {2000 / c['server_cpu_ms_per_request']:.0f} req/s on an idle machine)")
    if args.ceiling:
        ce = results["ceiling_img_s"]
        print(f"in-process ceiling: {ce['batch1']:.0f} img/s at batch 1, {ce['batch64']:.0f} img/s at batch 64; "
              f"service/ceiling = {results['ratio_to_ceiling']:.2f}")
        if args.server_pid:
            print(f"CPU per image: in-process {ce['cpu_ms_per_image_batch64']:.2f} ms, service "
                  f"{c['server_cpu_ms_per_request']:.2f} ms per request => CPU efficiency "
                  f"{results['cpu_efficiency']:.2f} (the throughput ratio on an otherwise idle machine)")


if __name__ == "__main__":
    main()
