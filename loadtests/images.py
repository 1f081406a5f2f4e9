"""Upload sets for load tests and the benchmark: generated synthetic faces, or any folder of images.

Generated images have realistic sizes and file weights, so decode and transfer costs match the real
data: 178x218 JPEG at quality 90 (~7 KB, like the CelebA photos) and 1024x1024 PNG (~1.6 MB, like the
Kaggle GAN faces). Pure PIL + numpy: the locustfile imports this module, and locust (gevent) must
never share a process with TensorFlow.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from glasses.config import LOADTEST_IMAGE_COUNTS, LOADTEST_JPEG_SIZE, LOADTEST_PNG_SIZE, SEED

IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}
KINDS = {"jpeg": (LOADTEST_JPEG_SIZE, "JPEG", ".jpg"), "png": (LOADTEST_PNG_SIZE, "PNG", ".png")}


@dataclass(frozen=True)
class Upload:
    """One file to upload: its name, bytes and MIME type."""

    name: str
    data: bytes
    content_type: str


def synthetic_face(width: int, height: int, rng: np.random.Generator, glasses: bool) -> Image.Image:
    """A blurred cartoon face (background, skin ellipse, eyes, optional frames) with sensor-like noise."""
    colour = lambda lo, hi: tuple(int(v) for v in rng.integers(lo, hi, 3))  # noqa: E731
    img = Image.new("RGB", (width, height), colour(30, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse([width * 0.2, height * 0.12, width * 0.8, height * 0.92], fill=colour(110, 240))
    for cx in (0.37, 0.63):
        draw.ellipse([width * (cx - 0.05), height * 0.42, width * (cx + 0.05), height * 0.48], fill=(40, 30, 30))
        if glasses:
            draw.rectangle([width * (cx - 0.1), height * 0.38, width * (cx + 0.1), height * 0.52],
                           outline=(10, 10, 10), width=max(1, width // 60))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 150))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    """PIL image -> file bytes (JPEG at quality 90, PNG at PIL's default compression)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def generate_images(out_dir: Path, counts: dict[str, int] | None = None, seed: int = SEED) -> Path:
    """Write the generated set as out_dir/jpeg/*.jpg and out_dir/png/*.png (deterministic per seed).

    Files already present are kept, so a cached set is reused across runs. Returns out_dir.
    """
    counts = LOADTEST_IMAGE_COUNTS if counts is None else counts
    out_dir = Path(out_dir)
    for kind, count in counts.items():
        (width, height), fmt, suffix = KINDS[kind]
        rng = np.random.default_rng([seed, width, height])
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = synthetic_face(width, height, rng, glasses=bool(i % 2))  # draw even when cached: same stream
            path = out_dir / kind / f"face-{i:03d}{suffix}"
            if not path.exists():
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent generators never share a file
                tmp.write_bytes(encode(img, fmt))
                tmp.replace(path)
    return out_dir


def load_images(directory: Path) -> list[Upload]:
    """Every image file under `directory` (recursively, sorted), read into memory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    uploads = [
        Upload(str(p.relative_to(directory)), p.read_bytes(), IMAGE_SUFFIXES[p.suffix.lower()])
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not uploads:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {directory}")
    return uploads


def check_uploads(uploads: list[Upload]) -> None:
    """Raise ValueError naming the files the service would refuse (decoded as the service decodes)."""
    from glasses.preprocessing import ImageDecodeError, decode

    bad = []
    for upload in uploads:
        try:
            decode(upload.data)
        except ImageDecodeError as exc:
            bad.append(f"{upload.name} ({exc})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"{len(bad)} of {len(uploads)} files are not usable images: {'; '.join(bad[:3])}{more}")


def bad_uploads(good: Upload) -> list[Upload]:
    """Uploads the service must refuse with a 4xx: non-image, empty, truncated, SVG text."""
    return [
        Upload("not-an-image.jpg", b"this is plain text, not an image\n" * 8, "image/jpeg"),
        Upload("empty.png", b"", "image/png"),
        Upload("truncated-" + Path(good.name).name, good.data[: max(len(good.data) // 2, 64)], good.content_type),
        Upload("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', "image/svg+xml"),
    ]


def multipart_body(field: str, uploads: list[Upload], boundary: str = "glassesloadtestboundary") -> tuple[bytes, str]:
    """Encode uploads as one multipart/form-data body (each under `field`); returns (body, content type).

    Built once per image set, so the load generator spends no CPU encoding requests.
    """
    parts = []
    for up in uploads:
        header = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{Path(up.name).name}"\r\n'
            f"Content-Type: {up.content_type}\r\n\r\n"
        )
        parts.append(header.encode() + up.data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
