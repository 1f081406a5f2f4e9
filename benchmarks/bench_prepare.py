"""Benchmark the prepare stage: decode+resize throughput serial vs dask (threads, processes), and
cached vs uncached `prepare` time. Prints figures and ratios; asserts nothing.

    .venv/bin/python benchmarks/bench_prepare.py [--n 96] [--celeba-n 1200] [--size 128]

Inputs: N generated 1024x1024 RGB PNGs in Kaggle's layout (the real set is 4500 such GAN faces) and,
when ../shared/data/celeba-glasses exists, its 178x218 JPEG photos (first --celeba-n of them for the
throughput part, the whole folder for the cached/uncached part).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from glasses.machine import banner  # noqa: E402
from glasses.preprocessing import decode, to_uint8  # noqa: E402
from training.cache import decode_all  # noqa: E402
from training.prepare import prepare  # noqa: E402
from training.sources import Inventory  # noqa: E402

CELEBA = Path(os.environ.get("GLASSES_SHARED_DIR", REPO.parent / "shared")) / "data" / "celeba-glasses"


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (dask's process pool is shut down after compute)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def make_kaggle_pngs(root: Path, n: int) -> Path:
    """A Kaggle-layout dir with n photo-like 1024x1024 PNGs (smooth upscaled noise + a face, ~1-2 MB each)."""
    from _fixtures import kaggle_csv_text

    img_dir = root / "faces-spring-2020" / "faces-spring-2020"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, n + 1):
        small = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        big = small.resize((1024, 1024), Image.Resampling.BICUBIC)
        arr = np.asarray(big).astype(np.int16) + rng.integers(-6, 7, (1024, 1024, 3))  # sensor-like noise
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(img_dir / f"face-{i}.png")
        rows.append((i, i % 2))
    (root / "train.csv").write_text(kaggle_csv_text(rows))
    return root


def inventory_of(root: Path, files: list[str]) -> Inventory:
    return Inventory(kind="bench", root=root, source="bench", ids=files, files=files, labels=[0] * len(files),
                     groups=None, grouped_by=None)


def throughput(label: str, root: Path, files: list[str], size: int, tmp: Path, repeats: int) -> None:
    """img/s for a plain loop, dask threads and dask processes over the same files (best of `repeats`).

    "cores busy" = CPU seconds / wall seconds: how much parallelism a run got on this (shared) machine.
    """
    out = tmp / "bench-images.npy"

    def serial() -> None:
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        for k, f in enumerate(files):
            arr[k] = to_uint8(root / f, size)
        arr.flush()

    def with_dask(scheduler: str):
        def run() -> None:
            np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
            errors = decode_all(inventory_of(root, files), out, size, scheduler, progress=False)
            assert not errors, errors[:3]
        return run

    results = {}
    for name, fn in (("serial", serial), ("dask threads", with_dask("threads")),
                     ("dask processes", with_dask("processes"))):
        best = None
        for _ in range(repeats):
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            if best is None or wall < best[0]:
                best = (wall, cpu)
        results[name] = best
    print(f"\n{label}: {len(files)} images -> {size}x{size}, best of {repeats}   ({load()})")
    for name, (wall, cpu) in results.items():
        print(f"  {name:<16} {wall:7.2f} s  {len(files) / wall:8.1f} img/s  x{results['serial'][0] / wall:4.2f} vs serial"
              f"   cores busy {cpu / wall:4.2f}")


def gil_probe(pngs: list[bytes], jpgs: list[bytes], seconds: float = 4.0) -> None:
    """How much a pure-Python loop keeps running while another thread decodes/resizes.

    ~1.0: the work releases the GIL (threads can run it in parallel); a pure-Python worker (the
    control) drops it far lower. Robust to machine load because both rates are measured in this process.
    """
    big = decode(pngs[0])

    def count(duration: float) -> int:
        n, end = 0, time.perf_counter() + duration
        while time.perf_counter() < end:
            n += 1
        return n

    def probe(work) -> float:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                work()

        base = count(seconds)
        t = threading.Thread(target=loop)
        t.start()
        busy = count(seconds)
        stop.set()
        t.join()
        return busy / base

    print(f"\nGIL probe: Python loop rate while a second thread works / alone   ({load()})")
    cases = [("idle thread (sleep)", lambda: time.sleep(0.05)),
             ("PNG 1024x1024 decode", lambda: [decode(b) for b in pngs[:4]]),
             ("resize 1024 -> 128", lambda: big.resize((128, 128), Image.Resampling.BILINEAR))]
    if jpgs:
        cases.append(("JPEG 178x218 decode", lambda: [decode(b) for b in jpgs]))
    cases.append(("pure Python (control)", lambda: sum(i * i for i in range(200_000))))
    for name, work in cases:
        print(f"  {name:<24} {probe(work):5.2f}")


def cached_vs_uncached(label: str, source: str, work: Path, size: int) -> None:
    t0 = time.perf_counter()
    first = prepare(source, work_dir=work, size=size, progress=False)
    t1 = time.perf_counter()
    second = prepare(source, work_dir=work, size=size, progress=False)
    t2 = time.perf_counter()
    assert not first.reused and second.reused
    n = sum(sum(c.values()) for c in first.counts.values())
    print(f"\n{label}: prepare of {n} images   ({load()})")
    print(f"  uncached (first run)  {t1 - t0:7.2f} s")
    print(f"  cached (second run)   {t2 - t1:7.3f} s  = {100 * (t2 - t1) / (t1 - t0):.1f}% of the first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="generated 1024x1024 PNGs (default %(default)s)")
    ap.add_argument("--celeba-n", type=int, default=1200, help="CelebA JPEGs for throughput (default %(default)s)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, best kept (default %(default)s)")
    ap.add_argument("--gil-only", action="store_true", help="only the GIL probe (quick)")
    args = ap.parse_args()
    print(banner() + "   (machine shared with other jobs: figures are indicative)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        kaggle = make_kaggle_pngs(tmp / "kaggle", args.n)
        files = sorted((p.relative_to(kaggle).as_posix() for p in kaggle.rglob("*.png")))
        mb = sum((kaggle / f).stat().st_size for f in files) / len(files) / 1e6
        jpgs = [p.read_bytes() for p in sorted(CELEBA.rglob("*.jpg"))[:50]] if CELEBA.exists() else []
        gil_probe([(kaggle / f).read_bytes() for f in files[:4]], jpgs)
        if args.gil_only:
            return
        throughput(f"Kaggle-like 1024x1024 PNG ({mb:.1f} MB each)", kaggle, files, args.size, tmp, args.repeats)
        if (CELEBA / "labels.csv").exists():
            cfiles = sorted(p.relative_to(CELEBA).as_posix() for p in CELEBA.rglob("*.jpg"))[: args.celeba_n]
            throughput("CelebA 178x218 JPEG", CELEBA, cfiles, args.size, tmp, args.repeats)
        cached_vs_uncached("Kaggle-like kaggle-dir", f"kaggle-dir:{kaggle}", tmp / "work", args.size)
        if (CELEBA / "labels.csv").exists():
            cached_vs_uncached("CelebA folders (all)", f"folders:{CELEBA}", tmp / "work", args.size)
        else:
            print(f"\n(CelebA not found at {CELEBA}: skipped)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
