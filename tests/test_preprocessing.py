"""The preprocessing contract: every PIL mode, EXIF orientation, sizes, strict decoding, rescale == TF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from glasses.config import ALLOWED_SIZES
from glasses.preprocessing import ImageDecodeError, decode, preprocess, rescale, to_uint8

from _fixtures import face_image


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "HSV", "LAB", "PA"]


def _in_mode(mode: str) -> Image.Image:
    """The synthetic face in `mode` (16/32-bit and float built from the 8-bit grey version)."""
    base = face_image(3, True, 40)
    grey = np.asarray(base.convert("L"))
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257).convert("I")
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32))
    if mode == "PA":
        return base.convert("P").convert("PA")
    return base.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_uint8_rgb(mode: str) -> None:
    img = _in_mode(mode)
    assert img.mode == mode
    out = to_uint8(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    f = preprocess(img, 64)
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0
    if mode in ("1", "L", "I;16", "I", "F", "LA"):  # grey in -> three equal channels
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if mode in ("I;16", "I", "F"):  # deep / float grey lands on the same 8-bit values as plain L
        assert np.array_equal(out, to_uint8(_in_mode("L"), 64))


def test_sixteen_bit_scaled_to_eight() -> None:
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[:4] = 257 * 100
    out = to_uint8(Image.fromarray(arr), 64)
    assert out[0, 0, 0] == 100 and out[-1, -1, 0] == 255


def test_transparency_becomes_white() -> None:
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    assert (to_uint8(rgba, 64) == 255).all()
    p = Image.new("P", (16, 16), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0  # palette index 0 transparent
    decoded = decode(_png(p))
    assert (to_uint8(decoded, 64) == 255).all()


def test_exif_orientation_applied() -> None:
    # 64x32: left half red, right half blue; orientation 6 = rotate 90 degrees clockwise to display
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _png(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = to_uint8(data, 64).astype(int)
    top, bottom = out[:24].mean(axis=(0, 1)), out[-24:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, top  # red on top after rotation
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    no_exif = to_uint8(_png(img, "JPEG", quality=95), 64).astype(int)
    assert no_exif[:, :24].mean(axis=(0, 1))[0] > 200  # without EXIF red stays left


@pytest.mark.parametrize("size", ALLOWED_SIZES)
def test_sizes(size: int) -> None:
    data = _png(face_image(1, False, 100))
    assert to_uint8(data, size).shape == (size, size, 3)
    assert preprocess(data, size).shape == (size, size, 3)


def test_bad_size_rejected() -> None:
    with pytest.raises(ValueError, match="one of"):
        to_uint8(_png(face_image(1, False, 32)), 100)


def test_bytes_path_and_pil_agree(tmp_path) -> None:
    data = _png(face_image(2, True, 90))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    a, b, c = to_uint8(data), to_uint8(path), to_uint8(str(path))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.array_equal(to_uint8(Image.open(io.BytesIO(data))), a)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, not an image" * 5, "not a recognised image"),
])
def test_strict_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode(data)


def test_truncated_files_rejected() -> None:
    for fmt in ("PNG", "JPEG"):
        data = _png(face_image(5, False, 64), fmt)
        with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
            decode(data[: len(data) // 2])


def test_rescale_matches_tensorflow_bit_for_bit() -> None:
    tf = pytest.importorskip("tensorflow")
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    ours = rescale(x)
    theirs = (tf.cast(x, tf.float32) / 255.0).numpy()
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
