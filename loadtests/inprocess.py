"""What this machine allows in-process, the references the benchmark holds the servers to.

    Ceiling        throughput: decode + framing in a thread per core, batched inference (batch 64)
    batch1_floor   latency: one photo at a time, decode + framing then the classifier at batch 1,
                   on the service's runtime and threads

Both use the one preprocessing contract (glasses.preprocessing) and the one loader (glasses.runtimes),
so they measure exactly the work a worker does, without HTTP.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from glasses.config import IMAGE_SIZE, LITERT_MODEL_FILE
from loadtests.images import Upload

CEILING_BATCH = 64


class Ceiling:
    """Decode + preprocess (with the version's framing) + batched inference with one runtime, in this
    process (what the hardware allows)."""

    def __init__(self, version_dir: Path, runtime: str, framing: str = "none", batch: int = CEILING_BATCH):
        from glasses.allocator import keep_freed_buffers
        from glasses.runtimes import LiteRTClassifier, load_classifier

        keep_freed_buffers()  # as the service's workers do: the ceiling stays the best in-process pipeline
        self.runtime, self.batch, self.framing = runtime, batch, framing
        if runtime == "litert":  # in-process, nothing else runs: the interpreter gets every core
            self.classify = LiteRTClassifier(version_dir / LITERT_MODEL_FILE, IMAGE_SIZE, threads=os.cpu_count() or 1)
        else:
            self.classify = load_classifier(version_dir, runtime, IMAGE_SIZE)
        self.classify.warm_up((batch,))

    def measure(self, uploads: list, seconds: float) -> dict:
        """images/s (and its two parts) over `seconds`; CPU ms per image from this process's CPU time."""
        from glasses.preprocessing import to_uint8 as contract

        def to_uint8(data: bytes) -> np.ndarray:
            return contract(data, IMAGE_SIZE, self.framing)

        datas = [u.data for u in uploads]
        threads = os.cpu_count() or 2
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding/resizing
            self.classify(np.stack(list(pool.map(to_uint8, datas[:self.batch] * 2))[:self.batch]))
            n, decode_s, infer_s, i = 0, 0.0, 0.0, 0
            cpu0, start = time.process_time(), time.perf_counter()
            while time.perf_counter() - start < seconds:
                chunk = [datas[(i + k) % len(datas)] for k in range(self.batch)]
                i += self.batch
                t0 = time.perf_counter()
                x = np.stack(list(pool.map(to_uint8, chunk)))
                t1 = time.perf_counter()
                n += len(self.classify(x))
                infer_s += time.perf_counter() - t1
                decode_s += t1 - t0
            cpu = time.process_time() - cpu0
        return {"images_per_s": n / (decode_s + infer_s), "images": n, "decode_images_per_s": n / decode_s,
                "infer_images_per_s": n / infer_s, "cpu_ms_per_image": 1000 * cpu / n, "batch": self.batch,
                "decode_threads": threads, "runtime": self.runtime}


def batch1_floor(tag: str, uploads: list[Upload], rounds: int = 3) -> dict:
    """What one photo costs in-process, one at a time, as a worker runs it: the strict decode with the
    version's framing, then the version's classifier at batch 1 on the service's runtime and threads.
    p50 ms of each part and of their sum: the floor under the service's batch-1 latency on this CPU."""
    from glasses import registry
    from glasses.config import SERVE_RUNTIME
    from glasses.preprocessing import framed_uint8
    from glasses.runtimes import load_classifier

    model = registry.get_model(tag)
    size, framing = int(model.info.metadata.get("image_size", IMAGE_SIZE)), model.info.metadata.get("framing", "none")
    classify = load_classifier(model, SERVE_RUNTIME)
    classify.warm_up((1,))
    decode_ms, classify_ms = [], []
    for up in uploads * rounds:
        t0 = time.perf_counter()
        pixels, _ = framed_uint8(up.data, size, framing)
        t1 = time.perf_counter()
        classify(pixels[np.newaxis])
        decode_ms.append(1000 * (t1 - t0))
        classify_ms.append(1000 * (time.perf_counter() - t1))
    total = np.add(decode_ms, classify_ms)
    return {"p50_ms": float(np.median(total)), "decode_p50_ms": float(np.median(decode_ms)),
            "classify_p50_ms": float(np.median(classify_ms)), "runtime": classify.runtime, "photos": len(total)}
