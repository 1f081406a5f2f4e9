"""Multipart parsing cost of one 1024x1024 PNG upload (~1.6 MB), in-process, with Starlette's default
1 MiB in-memory spool and with the service's (MAX_REQUEST_BYTES, set in service/uploads.py).

    .venv/bin/python benchmarks/bench_multipart.py

Parses through `Request.form()` as the service does, the body fed in 64 KiB chunks like uvicorn's,
then reads the file. Prints CPU and wall ms per upload for both settings, interleaved, twice.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from glasses.config import LOADTEST_DIR, MAX_REQUEST_BYTES
from glasses.machine import banner
from loadtests.images import generate_images, load_images, multipart_body

CHUNK = 64 * 1024
DEFAULT_SPOOL = 1024 * 1024  # Starlette's


async def parse(body: bytes, content_type: str) -> int:
    """Parse one multipart body like the service; returns the file's size."""
    chunks = iter([body[i:i + CHUNK] for i in range(0, len(body), CHUNK)])

    async def receive() -> dict:
        chunk = next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    request = Request({"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]},
                      receive)
    form = await request.form()
    size = len(await form["image"].read())
    await form.close()
    return size


async def measure(bodies: list[tuple[bytes, str]], n: int = 200) -> tuple[float, float]:
    """(CPU ms, wall ms) per upload over `n` parses."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await parse(*bodies[i % len(bodies)])
    return (time.process_time() - cpu0) / n * 1e3, (time.perf_counter() - wall0) / n * 1e3


def main() -> None:
    uploads = [u for u in load_images(generate_images(LOADTEST_DIR / "images")) if u.name.startswith("png/")][:8]
    bodies = [multipart_body("image", [u]) for u in uploads]
    print(banner())
    print(f"{len(uploads)} generated 1024x1024 PNGs, mean {np.mean([len(u.data) for u in uploads]) / 1e6:.2f} MB")
    for spool in (DEFAULT_SPOOL, MAX_REQUEST_BYTES) * 2:
        MultiPartParser.spool_max_size = spool
        cpu, wall = asyncio.run(measure(bodies))
        print(f"spool {spool >> 20:>2} MiB: CPU {cpu:.2f} ms, wall {wall:.2f} ms per upload")


if __name__ == "__main__":
    main()
