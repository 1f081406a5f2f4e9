"""Multipart parsing cost of one 1024x1024 PNG upload (~1.6 MB), with Starlette's default 1 MiB
in-memory spool and with the service's (MAX_REQUEST_BYTES): CPU and wall ms per upload, in-process.

    .venv/bin/python benchmarks/bench_multipart.py
"""
import asyncio
import time

import numpy as np
from starlette.requests import Request
from starlette.formparsers import MultiPartParser
from glasses.config import LOADTEST_DIR, MAX_REQUEST_BYTES
from loadtests.images import generate_images, load_images, multipart_body

ups = [u for u in load_images(generate_images(LOADTEST_DIR / "images")) if u.name.startswith("png/")][:8]
bodies = [multipart_body("image", [u]) for u in ups]
print("mean PNG bytes", int(np.mean([len(u.data) for u in ups])))
async def parse(body, ctype):
    chunks = [body[i:i+65536] for i in range(0, len(body), 65536)]
    it = iter(chunks)
    async def receive():
        try: return {"type": "http.request", "body": next(it), "more_body": True}
        except StopIteration: return {"type": "http.request", "body": b"", "more_body": False}
    req = Request({"type": "http", "method": "POST", "headers": [(b"content-type", ctype.encode())]}, receive)
    form = await req.form()
    data = await form["image"].read()
    await form.close()
    return len(data)
async def run(n=200):
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await parse(*bodies[i % len(bodies)])
    return (time.process_time() - c0) / n * 1e3, (time.perf_counter() - t0) / n * 1e3
for spool in (1 << 20, MAX_REQUEST_BYTES) * 2:  # interleaved, twice
    MultiPartParser.spool_max_size = spool
    cpu, wall = asyncio.run(run())
    print(f"spool {spool>>20} MiB: CPU {cpu:.2f} ms, wall {wall:.2f} ms per PNG upload")
