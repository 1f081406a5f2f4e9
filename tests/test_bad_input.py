"""Bad input gets a 4xx JSON that says what is wrong, never a 5xx, and never poisons other requests.

Every case then checks the server is still healthy (/readyz 200, a good upload still answered).
Statuses (docs/service.md): 400 malformed request, 413 too large, 415 not multipart, 422 not a usable
image. The concurrency test sends 30 good + 1 truncated upload at once, several times: the bad one
fails alone even though they share adaptive batches.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import zlib
import struct

import aiohttp
import numpy as np
import pytest
import requests
from PIL import Image

from _service import shared_server
from glasses.config import MAX_BATCH_IMAGES, MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


def _jpeg(seed: int = 0, size: tuple[int, int] = (178, 218)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (decompression bomb) with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


GOOD = _jpeg()
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>'

BAD_UPLOADS = {
    "non-image bytes": (bytes(range(256)) * 8, "not a recognised image"),
    "zero bytes": (b"", "zero bytes"),
    "truncated JPEG": (GOOD[: len(GOOD) // 2], "truncated"),
    "truncated PNG": (_png(Image.new("RGB", (300, 300), (9, 9, 9)))[:120], "truncated"),
    "SVG": (SVG, "not a recognised image"),
    "PDF": (PDF, "not a recognised image"),
    "HTML": (b"<!doctype html><html><body>face</body></html>", "not a recognised image"),
    "text": (b"just some text, no image here\n", "not a recognised image"),
    "pixel bomb": (_png_header_only(9000, 9000), "pixels"),
    "unsupported format (ICO)": (b"", "format"),  # filled in below
}
_ico = io.BytesIO()
Image.new("RGB", (32, 32)).save(_ico, "ICO")
BAD_UPLOADS["unsupported format (ICO)"] = (_ico.getvalue(), "unsupported image format")


def _assert_healthy(server) -> None:
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    resp = requests.post(f"{server.url}/predict", files={"image": ("ok.jpg", GOOD)}, timeout=60)
    assert resp.status_code == 200 and resp.json()["verdict"] in ("glasses", "no_glasses")


def _assert_client_error(resp: requests.Response, status: int, words: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body, dict) and body["status"] == status, body
    assert re.search(words, body["error"], re.IGNORECASE), body["error"]


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_422_then_healthy(server, case):
    data, words = BAD_UPLOADS[case]
    resp = requests.post(f"{server.url}/predict", files={"image": ("upload.bin", data)}, timeout=60)
    _assert_client_error(resp, 422, words)
    _assert_healthy(server)


def test_pixel_limit_is_the_configured_one():
    import glasses.preprocessing  # noqa: F401  (the service decodes through it; importing it sets the guard)

    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS and 9000 * 9000 > MAX_IMAGE_PIXELS


def test_multi_frame_image_uses_the_first_frame(server):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((250, 10, 10), (10, 10, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    first = io.BytesIO()
    frames[0].save(first, "GIF")
    animated = requests.post(f"{server.url}/predict", files={"image": ("a.gif", buf.getvalue())}, timeout=60)
    single = requests.post(f"{server.url}/predict", files={"image": ("f.gif", first.getvalue())}, timeout=60)
    assert animated.status_code == single.status_code == 200
    assert abs(animated.json()["probability"] - single.json()["probability"]) <= 1e-5


REQUEST_CASES = {
    "missing field": (dict(files={"photo": ("a.jpg", GOOD)}), 400, r"missing file field 'image'.*'photo'"),
    "no file, only a text field": (dict(files={"x": (None, "1")}), 400, "missing file field 'image'"),
    "text instead of file": (dict(files={"image": (None, "http://127.0.0.1/face.jpg")}), 400, "must be a file upload"),
    "two images on /predict": (dict(files=[("image", ("a.jpg", GOOD)), ("image", ("b.jpg", GOOD))]), 400,
                               "exactly one image"),
    "JSON body": (dict(json={"image": "aGVsbG8="}), 415, "multipart/form-data"),
    "urlencoded form": (dict(data={"image": "face.jpg"}), 415, "multipart/form-data"),
    "raw image bytes": (dict(data=GOOD, headers={"Content-Type": "image/jpeg"}), 415, "multipart/form-data"),
    "no content type": (dict(data=GOOD, headers={"Content-Type": ""}), 415, "multipart/form-data"),
    "multipart without boundary": (dict(data=b"xx", headers={"Content-Type": "multipart/form-data"}), 400,
                                   "malformed multipart"),
    "garbage multipart": (dict(data=b"--zz\r\nnot headers at all", headers={
        "Content-Type": "multipart/form-data; boundary=zz"}), 400, "malformed multipart|missing file field"),
}


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_bad_request_shape_is_4xx_then_healthy(server, case):
    kwargs, status, words = REQUEST_CASES[case]
    resp = requests.post(f"{server.url}/predict", timeout=60, **kwargs)
    _assert_client_error(resp, status, words)
    _assert_healthy(server)


@pytest.mark.parametrize("extra", [1, 10])  # 10: past the point where the multipart parser itself stops
def test_too_many_images_in_one_batch(server, extra):
    files = [("images", (f"{i}.jpg", GOOD)) for i in range(MAX_BATCH_IMAGES + extra)]
    resp = requests.post(f"{server.url}/predict_batch", files=files, timeout=60)
    _assert_client_error(resp, 413, rf"too many images: .*{MAX_BATCH_IMAGES + 1}.* limit is {MAX_BATCH_IMAGES}|"
                                    rf"too many images: more than .* limit is {MAX_BATCH_IMAGES}")
    _assert_healthy(server)


def test_several_images_on_predict_point_to_predict_batch(server):
    for count in (2, 8):
        resp = requests.post(f"{server.url}/predict", files=[("image", (f"{i}.jpg", GOOD)) for i in range(count)],
                             timeout=60)
        _assert_client_error(resp, 400, r"send exactly one image .* /predict_batch")
    _assert_healthy(server)


def test_batch_reports_a_bad_item_in_place(server):
    files = [("images", ("a.jpg", GOOD)), ("images", ("cut.jpg", GOOD[:500])), ("images", ("c.jpg", _jpeg(3)))]
    resp = requests.post(f"{server.url}/predict_batch", files=files, timeout=60)
    assert resp.status_code == 200, resp.text
    good_a, bad, good_c = resp.json()
    assert good_a["verdict"] in ("glasses", "no_glasses") and good_c["verdict"] in ("glasses", "no_glasses")
    assert bad["index"] == 1 and bad["filename"] == "cut.jpg" and bad["status"] == 422
    assert "truncated" in bad["error"].lower()
    _assert_healthy(server)


def _raw_http(server, head: bytes, body_chunks=(), read_timeout: float = 30.0) -> tuple[int, dict]:
    """Send a raw HTTP request (headers, then body chunks while the server keeps reading)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                head_end = data.index(b"\r\n\r\n") + 4
                length = int(re.search(rb"content-length: (\d+)", data[:head_end], re.I).group(1))
                if len(data) >= head_end + length:
                    break
    status = int(data.split(b" ", 2)[1])
    body = data[data.index(b"\r\n\r\n") + 4:]
    import json

    return status, json.loads(body)


def test_declared_body_over_limit_is_413_without_reading_it(server):
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n").encode()
    status, body = _raw_http(server, head)  # no body sent at all: the answer comes from the header
    assert status == 413 and "too large" in body["error"] and f"{MAX_REQUEST_BYTES:,}" in body["error"]
    _assert_healthy(server)


def test_streamed_body_over_limit_is_413(server):
    head = (b"POST /predict_batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"x" * (1024 * 1024)
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    chunks = [chunk] * (MAX_REQUEST_BYTES // len(block) + 2) + [b"0\r\n\r\n"]
    status, body = _raw_http(server, head, chunks)
    assert status == 413 and "too large" in body["error"]
    _assert_healthy(server)


def test_infer_rejects_bad_arrays_before_batching(server):
    for payload in ({"pixels": [[1, 2, 3]]}, {"pixels": np.full((1, 128, 128, 3), 300).tolist()}, {"x": 1}):
        resp = requests.post(f"{server.url}/infer", json=payload, timeout=60)
        assert resp.status_code == 400, (resp.status_code, resp.text[:300])
        assert "error" in resp.json()
    _assert_healthy(server)


async def _burst(url: str, uploads: list[bytes]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def post(data: bytes) -> int:
            form = aiohttp.FormData()
            form.add_field("image", data, filename="x.jpg", content_type="image/jpeg")
            async with session.post(f"{url}/predict", data=form) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(post(d) for d in uploads))


def _batch_stats(server) -> tuple[float, float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = sum(map(float, re.findall(r'adaptive_batch_size_sum\{method_name="infer"[^}]*\} (\S+)', text)))
    count = sum(map(float, re.findall(r'adaptive_batch_size_count\{method_name="infer"[^}]*\} (\S+)', text)))
    return total, count


def test_one_truncated_upload_never_fails_the_others(server):
    good = [_jpeg(seed) for seed in range(30)]
    truncated = GOOD[: len(GOOD) // 3]
    sum0, count0 = _batch_stats(server)
    for round_ in range(3):
        uploads = good[:15] + [truncated] + good[15:]
        statuses = asyncio.run(_burst(server.url, uploads))
        assert statuses[15] == 422, (round_, statuses)
        assert statuses[:15] + statuses[16:] == [200] * 30, (round_, statuses)
    sum1, count1 = _batch_stats(server)
    assert sum1 - sum0 == 90  # every good upload went through the batchable infer API...
    assert (sum1 - sum0) / (count1 - count0) > 1.0  # ...sharing adaptive batches
    _assert_healthy(server)
